/* SPDX-License-Identifier: MIT */
/*
 * Preflight reports in every mode, blockers that stop every save path
 * before anything leaves the process, and the detached stream (a sealed
 * memfd plus an fd array) that restart mode puts in the fd store,
 * loaded with and without its seals.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "io.h"
#include "testutil.h"

#define RAM_SIZE (2u << 20)

struct fixture {
	cprxfer_state *st;
	struct cprxfer_ram mem, file;
	int sock[2];
	int hfd; /* hugetlb memfd, -1 if the kernel has none */
	char *dir;
};

static void fixture_init(struct fixture *f, bool with_file)
{
	char path[512];

	memset(f, 0, sizeof(*f));
	f->mem.fd = f->file.fd = -1;
	f->st = cprxfer_state_new();
	assert_non_null(f->st);
	assert_int_equal(cprxfer_put_u64(f->st, "counter", 42), 0);
	assert_int_equal(cprxfer_put_str(f->st, "name", "vm0"), 0);
	assert_int_equal(
		socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, f->sock), 0);
	assert_int_equal(cprxfer_put_fd(f->st, "listen", f->sock[0]), 0);
	assert_int_equal(cprxfer_ram_create("ram.main", RAM_SIZE, 0, &f->mem),
			 0);
	assert_int_equal(cprxfer_ram_put(f->st, "ram.main", &f->mem), 0);
	f->hfd = memfd_create("huge", MFD_CLOEXEC | MFD_HUGETLB);
	if (f->hfd >= 0)
		assert_int_equal(cprxfer_put_fd(f->st, "huge", f->hfd), 0);
	if (with_file) {
		f->dir = tu_tmpdir();
		snprintf(path, sizeof(path), "%s/ram.img", f->dir);
		assert_int_equal(
			cprxfer_ram_open_file(path, RAM_SIZE, 0, &f->file), 0);
		assert_int_equal(cprxfer_ram_put(f->st, "ram.file", &f->file),
				 0);
	}
}

static void fixture_fini(struct fixture *f)
{
	cprxfer_state_free(f->st);
	cprxfer_ram_release(&f->mem);
	if (f->file.fd >= 0)
		cprxfer_ram_release(&f->file);
	close(f->sock[0]);
	close(f->sock[1]);
	if (f->hfd >= 0)
		close(f->hfd);
	if (f->dir) {
		tu_rmdir(f->dir);
		free(f->dir);
	}
}

static int verdict_of(const cprxfer_report *r, const char *name)
{
	size_t i;

	for (i = 0; i < cprxfer_report_count(r); i++) {
		const char *n, *why;
		int v;

		assert_int_equal(cprxfer_report_entry(r, i, &n, &v, &why), 0);
		assert_non_null(why);
		if (n && !strcmp(n, name))
			return v;
	}
	return 0;
}

struct expect {
	uint32_t mode;
	int listen, ram_main, ram_file, huge, blocking;
};

static void test_preflight_reports_each_mode(void **unused)
{
	static const struct expect ex[] = {
		{ CPRXFER_MODE_TRANSFER, CPRXFER_TRAVELS, CPRXFER_TRAVELS,
		  CPRXFER_TRAVELS, CPRXFER_TRAVELS, 0 },
		{ CPRXFER_MODE_EXEC, CPRXFER_TRAVELS, CPRXFER_TRAVELS,
		  CPRXFER_TRAVELS, CPRXFER_TRAVELS, 0 },
		{ CPRXFER_MODE_FILE, CPRXFER_BLOCKS, CPRXFER_BLOCKS,
		  CPRXFER_RECREATE, CPRXFER_BLOCKS, 2 },
		{ CPRXFER_MODE_RESTART, CPRXFER_TRAVELS, CPRXFER_TRAVELS,
		  CPRXFER_TRAVELS, CPRXFER_TRAVELS, 0 },
		{ CPRXFER_MODE_KEXEC, CPRXFER_BLOCKS, CPRXFER_TRAVELS,
		  CPRXFER_BLOCKS, CPRXFER_BLOCKS, 2 },
	};
	struct fixture f;
	size_t i;

	fixture_init(&f, true);
	for (i = 0; i < sizeof(ex) / sizeof(ex[0]); i++) {
		cprxfer_report *r = NULL;
		int n = cprxfer_preflight(f.st, ex[i].mode, &r);
		int huge = f.hfd >= 0;

		assert_non_null(r);
		print_message("%s", cprxfer_report_text(r));
		assert_int_equal(
			n, ex[i].blocking +
				   (huge && ex[i].huge == CPRXFER_BLOCKS));
		assert_int_equal(cprxfer_report_count(r), huge ? 6 : 5);
		assert_int_equal(verdict_of(r, "counter"), CPRXFER_TRAVELS);
		assert_int_equal(verdict_of(r, "name"), CPRXFER_TRAVELS);
		assert_int_equal(verdict_of(r, "listen"), ex[i].listen);
		assert_int_equal(verdict_of(r, "ram.main"), ex[i].ram_main);
		assert_int_equal(verdict_of(r, "ram.file"), ex[i].ram_file);
		if (huge)
			assert_int_equal(verdict_of(r, "huge"), ex[i].huge);
		assert_non_null(strstr(cprxfer_report_text(r),
				       n ? "BLOCKED" : "possible"));
		assert_int_equal(cprxfer_report_entry(r, 99, NULL, NULL, NULL),
				 -ERANGE);
		cprxfer_report_free(r);
	}
	if (f.hfd < 0)
		print_message("no hugetlb memfd on this kernel: not checked\n");
	assert_int_equal(cprxfer_preflight(f.st, 0, &(cprxfer_report *){ 0 }),
			 -EINVAL);
	assert_int_equal(
		cprxfer_preflight(f.st, CPRXFER_MODE_FILE | CPRXFER_MODE_EXEC,
				  &(cprxfer_report *){ 0 }),
		-EINVAL);
	assert_int_equal(cprxfer_preflight(NULL, CPRXFER_MODE_FILE,
					   &(cprxfer_report *){ 0 }),
			 -EINVAL);
	cprxfer_report_free(NULL);
	assert_int_equal(cprxfer_report_count(NULL), 0);
	fixture_fini(&f);
}

static void test_blockers_listed_until_removed(void **unused)
{
	cprxfer_blockers *b = cprxfer_blockers_new();
	cprxfer_state *st = cprxfer_state_new();
	cprxfer_report *r = NULL;
	uint32_t id1 = 0, id2 = 0;
	const char *name = "x", *why = NULL;
	int v = 0;

	assert_non_null(b);
	assert_non_null(st);
	assert_int_equal(cprxfer_put_u64(st, "n", 1), 0);
	assert_int_equal(cprxfer_blocker_add(b, CPRXFER_MODE_FILE,
					     "vhost device open", &id1),
			 0);
	assert_int_equal(
		cprxfer_blocker_add(b, CPRXFER_MODE_EXEC | CPRXFER_MODE_FILE,
				    "migration of the disk running", &id2),
		0);
	assert_int_not_equal(id1, id2);
	assert_int_equal(cprxfer_state_set_blockers(st, b), 0);

	assert_int_equal(cprxfer_preflight(st, CPRXFER_MODE_FILE, &r), 2);
	assert_int_equal(cprxfer_report_count(r), 3);
	assert_int_equal(cprxfer_report_entry(r, 1, &name, &v, &why), 0);
	assert_null(name);
	assert_int_equal(v, CPRXFER_BLOCKS);
	assert_string_equal(why, "vhost device open");
	assert_non_null(strstr(cprxfer_report_text(r),
			       "blocker: migration of the disk running"));
	cprxfer_report_free(r);

	/* A blocker of other modes is not listed. */
	assert_int_equal(cprxfer_preflight(st, CPRXFER_MODE_TRANSFER, &r), 0);
	assert_int_equal(cprxfer_report_count(r), 1);
	cprxfer_report_free(r);

	assert_int_equal(cprxfer_blocker_remove(b, id2), 0);
	assert_int_equal(cprxfer_blocker_remove(b, id2), -ENOENT);
	assert_int_equal(cprxfer_preflight(st, CPRXFER_MODE_EXEC, &r), 0);
	cprxfer_report_free(r);
	assert_int_equal(cprxfer_preflight(st, CPRXFER_MODE_FILE, &r), 1);
	cprxfer_report_free(r);

	assert_int_equal(cprxfer_blocker_add(b, 0, "x", NULL), -EINVAL);
	assert_int_equal(cprxfer_blocker_add(b, 1u << 9, "x", NULL), -EINVAL);
	assert_int_equal(cprxfer_blocker_add(b, CPRXFER_MODE_FILE, "", NULL),
			 -EINVAL);
	assert_int_equal(cprxfer_blocker_add(NULL, 1, "x", NULL), -EINVAL);
	assert_int_equal(cprxfer_blocker_remove(NULL, 1), -EINVAL);
	assert_int_equal(cprxfer_state_set_blockers(NULL, b), -EINVAL);

	/* Detached: nothing blocks. */
	assert_int_equal(cprxfer_state_set_blockers(st, NULL), 0);
	assert_int_equal(cprxfer_preflight(st, CPRXFER_MODE_FILE, &r), 0);
	cprxfer_report_free(r);
	cprxfer_state_free(st);
	cprxfer_blockers_free(b);
	cprxfer_blockers_free(NULL);
}

/* ---- a blocker stops each save path before anything leaves ---------- */

struct peer {
	int sock;
};

/* Loads one stream: it must be the second (unblocked) save. */
static int receiver(void *arg)
{
	struct peer *p = arg;
	cprxfer_channel *ch;
	cprxfer_state *st;
	uint64_t v = 0;
	int rc;

	if (cprxfer_channel_open(p->sock, &ch) < 0)
		return 10;
	rc = cprxfer_load(ch, &st);
	if (rc < 0) {
		fprintf(stderr, "receiver: %s\n", cprxfer_errmsg());
		return 11;
	}
	rc = cprxfer_get_u64(st, "attempt", &v) == 0 && v == 2 ? 0 : 12;
	cprxfer_ack(ch, 0, NULL);
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return rc;
}

/* The library's test hook: every send or write it tries, counted. */
static int sends;

static void count_sends(int fd, int op, size_t *len)
{
	(void)fd;
	(void)len;
	sends += op == CX_HOOK_SEND;
}

static void test_blocker_stops_transfer_before_a_byte_is_sent(void **unused)
{
	cprxfer_blockers *b;
	cprxfer_state *blocked, *ok;
	struct peer p;
	cprxfer_channel *ch;
	int sv[2], efd, fl;
	pid_t pid;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	p.sock = sv[1];
	pid = tu_fork(receiver, &p);
	close(sv[1]);
	/* Made after the fork: the child owns no copy of them. */
	b = cprxfer_blockers_new();
	blocked = cprxfer_state_new();
	ok = cprxfer_state_new();
	efd = eventfd(7, EFD_CLOEXEC);
	assert_true(efd >= 0);
	fl = fcntl(efd, F_GETFD);
	assert_int_equal(cprxfer_put_u64(blocked, "attempt", 1), 0);
	assert_int_equal(cprxfer_put_fd(blocked, "efd", efd), 0);
	assert_int_equal(cprxfer_put_u64(ok, "attempt", 2), 0);
	assert_int_equal(cprxfer_blocker_add(b, CPRXFER_MODE_TRANSFER,
					     "vhost device open", NULL),
			 0);
	assert_int_equal(cprxfer_state_set_blockers(blocked, b), 0);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);

	sends = 0;
	cx_io_fault_hook = count_sends;
	assert_int_equal(cprxfer_save(ch, blocked), -EBUSY);
	assert_non_null(strstr(cprxfer_errmsg(), "vhost device open"));
	/* Not one send or write was tried; the fd as it was. */
	assert_int_equal(sends, 0);
	assert_int_equal(fcntl(efd, F_GETFD), fl);
	/* The channel is still usable: the peer's first stream is this. */
	assert_int_equal(cprxfer_save(ch, ok), 0);
	assert_true(sends > 0); /* the hook does see a real save */
	cx_io_fault_hook = NULL;
	assert_int_equal(cprxfer_wait_ack(ch, 10000), 0);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_channel_close(ch);
	cprxfer_state_free(blocked);
	cprxfer_state_free(ok);
	cprxfer_blockers_free(b);
	close(efd);
}

static void test_blocker_stops_exec_before_execve(void **unused)
{
	cprxfer_blockers *b = cprxfer_blockers_new();
	cprxfer_state *st = cprxfer_state_new();
	char *argv[] = { "true", NULL };
	int efd = eventfd(0, EFD_CLOEXEC), before = tu_count_fds();

	assert_int_equal(cprxfer_put_fd(st, "efd", efd), 0);
	assert_int_equal(cprxfer_blocker_add(b, CPRXFER_MODE_EXEC,
					     "exec blocked for the test", NULL),
			 0);
	assert_int_equal(cprxfer_state_set_blockers(st, b), 0);
	/* Had it run, this process would now be /bin/true. */
	assert_int_equal(cprxfer_exec(st, "/bin/true", argv, NULL), -EBUSY);
	assert_non_null(strstr(cprxfer_errmsg(), "exec blocked for the test"));
	assert_int_equal(fcntl(efd, F_GETFD), FD_CLOEXEC);
	assert_null(getenv("CPRXFER_EXEC_FD"));
	assert_int_equal(tu_count_fds(), before);
	cprxfer_state_free(st);
	cprxfer_blockers_free(b);
	close(efd);
}

static int count_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		n += e->d_name[0] != '.' ||
		     (e->d_name[1] && strcmp(e->d_name, ".."));
	closedir(d);
	return n;
}

static void test_blocker_stops_file_before_a_byte_is_written(void **unused)
{
	cprxfer_blockers *b = cprxfer_blockers_new();
	cprxfer_state *st = cprxfer_state_new();
	char *dir = tu_tmpdir(), path[512];
	struct stat s;

	snprintf(path, sizeof(path), "%s/vm.state", dir);
	assert_int_equal(cprxfer_put_u64(st, "n", 1), 0);
	assert_int_equal(cprxfer_blocker_add(b, CPRXFER_MODE_FILE,
					     "passthrough device", NULL),
			 0);
	assert_int_equal(cprxfer_state_set_blockers(st, b), 0);
	assert_int_equal(cprxfer_save_file(st, path), -EBUSY);
	assert_non_null(strstr(cprxfer_errmsg(), "passthrough device"));
	assert_int_equal(stat(path, &s), -1);
	assert_int_equal(count_dir(dir), 0);
	/* Unblocked, the same call writes the file. */
	assert_int_equal(cprxfer_state_set_blockers(st, NULL), 0);
	assert_int_equal(cprxfer_save_file(st, path), 0);
	assert_int_equal(count_dir(dir), 1);
	cprxfer_state_free(st);
	cprxfer_blockers_free(b);
	tu_rmdir(dir);
	free(dir);
}

static void test_blocker_stops_restart_before_the_memfd(void **unused)
{
	cprxfer_blockers *b = cprxfer_blockers_new();
	cprxfer_state *st = cprxfer_state_new();
	int efd = eventfd(0, EFD_CLOEXEC), memfd = -7, before;
	int *fds = (int *)&memfd;
	size_t n = 99;
	uint32_t id;

	assert_int_equal(cprxfer_put_fd(st, "efd", efd), 0);
	assert_int_equal(cprxfer_blocker_add(
				 b, CPRXFER_MODE_RESTART | CPRXFER_MODE_KEXEC,
				 "guest in a DMA transfer", &id),
			 0);
	assert_int_equal(cprxfer_state_set_blockers(st, b), 0);
	before = tu_count_fds();
	assert_int_equal(
		cprxfer_save_memfd(st, CPRXFER_MODE_RESTART, &memfd, &fds, &n),
		-EBUSY);
	assert_non_null(strstr(cprxfer_errmsg(), "guest in a DMA transfer"));
	assert_int_equal(memfd, -7);
	assert_ptr_equal(fds, &memfd);
	assert_int_equal(n, 99);
	assert_int_equal(tu_count_fds(), before);
	/* kexec: the blocker first, then the eventfd the kexec loses. */
	assert_int_equal(
		cprxfer_save_memfd(st, CPRXFER_MODE_KEXEC, &memfd, &fds, &n),
		-EBUSY);
	assert_int_equal(cprxfer_blocker_remove(b, id), 0);
	assert_int_equal(
		cprxfer_save_memfd(st, CPRXFER_MODE_KEXEC, &memfd, &fds, &n),
		-EOPNOTSUPP);
	assert_non_null(strstr(cprxfer_errmsg(), "'efd'"));
	assert_int_equal(memfd, -7);
	assert_int_equal(tu_count_fds(), before);
	cprxfer_state_free(st);
	cprxfer_blockers_free(b);
	close(efd);
}

/* ---- the detached stream ---------------------------------------------- */

/* A copy of the stream in a memfd without seals (as after LUO). */
static int unsealed_copy(int memfd, long flip_at)
{
	struct stat s;
	int c = memfd_create("copy", MFD_CLOEXEC);
	char *buf;

	assert_true(c >= 0);
	assert_int_equal(fstat(memfd, &s), 0);
	buf = malloc(s.st_size);
	assert_non_null(buf);
	assert_int_equal(pread(memfd, buf, s.st_size, 0), s.st_size);
	if (flip_at >= 0)
		buf[flip_at] ^= 0x40;
	assert_int_equal(write(c, buf, s.st_size), s.st_size);
	free(buf);
	return c;
}

static void test_memfd_stream_round_trip_without_seals(void **unused)
{
	cprxfer_state *st = cprxfer_state_new(), *got = NULL;
	struct cprxfer_ram ram, back;
	int memfd = -1, *fds = NULL, efd = eventfd(5, EFD_CLOEXEC), fd, copy;
	struct stat a, b;
	uint64_t v = 0;
	const char *s;
	size_t n = 0;

	assert_int_equal(cprxfer_ram_create("ram", RAM_SIZE, 0, &ram), 0);
	memcpy(ram.addr, "hello", 6);
	assert_int_equal(cprxfer_put_u64(st, "gen", 9), 0);
	assert_int_equal(cprxfer_put_str(st, "who", "restart"), 0);
	assert_int_equal(cprxfer_put_fd(st, "efd", efd), 0);
	assert_int_equal(cprxfer_ram_put(st, "ram", &ram), 0);
	assert_int_equal(
		cprxfer_save_memfd(st, CPRXFER_MODE_RESTART, &memfd, &fds, &n),
		0);
	assert_int_equal(n, 2);
	assert_int_equal(fds[0], efd);
	assert_int_equal(fds[1], ram.fd);
	assert_true(fcntl(memfd, F_GETFD) & FD_CLOEXEC);
	assert_true(fcntl(memfd, F_GET_SEALS) & F_SEAL_WRITE);

	/* Sealed, as saved. */
	assert_int_equal(cprxfer_load_memfd(memfd, fds, n, NULL, &got), 0);
	assert_int_equal(cprxfer_get_u64(got, "gen", &v), 0);
	assert_int_equal(v, 9);
	assert_int_equal(cprxfer_get_str(got, "who", &s), 0);
	assert_string_equal(s, "restart");
	assert_int_equal(cprxfer_get_fd(got, "efd", &fd), 0);
	assert_int_not_equal(fd, efd); /* a duplicate: efd stays ours */
	assert_int_equal(fstat(fd, &a), 0);
	assert_int_equal(fstat(efd, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino);
	assert_int_equal(cprxfer_ram_get(got, "ram", 0, &back), 0);
	assert_string_equal((char *)back.addr, "hello");
	assert_int_equal(fstat(back.fd, &a), 0);
	assert_int_equal(fstat(ram.fd, &b), 0);
	assert_int_equal(a.st_ino, b.st_ino); /* the same pages */
	cprxfer_ram_release(&back);
	cprxfer_state_free(got);

	/* Without seals (a memfd that crossed a kexec through LUO). */
	copy = unsealed_copy(memfd, -1);
	assert_int_equal(fcntl(copy, F_GET_SEALS) & F_SEAL_WRITE, 0);
	assert_int_equal(cprxfer_load_memfd(copy, fds, n, NULL, &got), 0);
	cprxfer_state_free(got);
	close(copy);

	/* The checksum, not the seal, catches a changed byte. */
	copy = unsealed_copy(memfd, 60);
	got = NULL;
	assert_int_equal(cprxfer_load_memfd(copy, fds, n, NULL, &got),
			 -EBADMSG);
	assert_null(got);
	close(copy);

	/* One fd missing, one too many: refused, nothing leaked. */
	assert_int_equal(cprxfer_load_memfd(memfd, fds, 1, NULL, &got),
			 -EBADMSG);
	assert_int_equal(cprxfer_load_memfd(memfd, (int[]){ efd, ram.fd, efd },
					    3, NULL, &got),
			 -EBADMSG);
	assert_int_equal(
		cprxfer_load_memfd(memfd, (int[]){ efd, 999 }, 2, NULL, &got),
		-EBADF);
	assert_int_equal(cprxfer_load_memfd(-1, NULL, 0, NULL, &got), -EBADF);
	assert_int_equal(cprxfer_load_memfd(memfd, NULL, 2, NULL, &got),
			 -EINVAL);
	assert_null(got);
	assert_int_equal(
		cprxfer_save_memfd(st, CPRXFER_MODE_FILE, &memfd, &fds, &n),
		-EINVAL);

	close(memfd);
	free(fds);
	cprxfer_state_free(st);
	cprxfer_ram_release(&ram);
	close(efd);
}

static void test_kexec_mode_carries_memfds_only(void **unused)
{
	cprxfer_state *st = cprxfer_state_new(), *got = NULL;
	struct cprxfer_ram ram;
	int memfd = -1, *fds = NULL;
	size_t n = 0;

	assert_int_equal(cprxfer_ram_create("ram", RAM_SIZE, 0, &ram), 0);
	assert_int_equal(cprxfer_ram_put(st, "ram", &ram), 0);
	assert_int_equal(cprxfer_put_u64(st, "gen", 1), 0);
	assert_int_equal(
		cprxfer_save_memfd(st, CPRXFER_MODE_KEXEC, &memfd, &fds, &n),
		0);
	assert_int_equal(n, 1);
	assert_int_equal(cprxfer_load_memfd(memfd, fds, n, NULL, &got), 0);
	cprxfer_state_free(got);
	close(memfd);
	free(fds);
	cprxfer_state_free(st);
	cprxfer_ram_release(&ram);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_preflight_reports_each_mode),
		tu_test(test_blockers_listed_until_removed),
		tu_test(test_blocker_stops_transfer_before_a_byte_is_sent),
		tu_test(test_blocker_stops_exec_before_execve),
		tu_test(test_blocker_stops_file_before_a_byte_is_written),
		tu_test(test_blocker_stops_restart_before_the_memfd),
		tu_test(test_memfd_stream_round_trip_without_seals),
		tu_test(test_kexec_mode_carries_memfds_only),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
