/* SPDX-License-Identifier: MIT */
/*
 * File (reboot) mode: 1 GiB of RAM in /dev/shm saved by path, restored in
 * a fresh process after the saving one exited; every corruption and
 * truncation of a state file refused with -EBADMSG; a plain fd or a memfd
 * refused by name with the old file untouched; atomic replacement.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"
#include "rampat.h"

#define SEED 0xf11e

struct paths {
	char dir[256];
	char state[300];
	char ram[64];
};

static int setup(void **state)
{
	struct paths *p = calloc(1, sizeof(*p));
	char *d = tu_tmpdir();

	if (!p || !d)
		return -1;
	snprintf(p->dir, sizeof(p->dir), "%s", d);
	snprintf(p->state, sizeof(p->state), "%s/state", d);
	snprintf(p->ram, sizeof(p->ram), "/dev/shm/cprxfer-test-file-%d",
		 getpid());
	free(d);
	*state = p;
	return tu_fd_setup(state);
}

static int teardown(void **state)
{
	struct paths *p = *state;
	int rc = tu_fd_teardown(state);

	unlink(p->ram);
	tu_rmdir(p->dir);
	free(p);
	return rc;
}

#define ftest(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

static size_t file_size(const char *path)
{
	struct stat s;

	return stat(path, &s) == 0 ? (size_t)s.st_size : 0;
}

/* Entries of dir other than "." and "..". */
static int dir_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	while (d && (e = readdir(d)))
		n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	if (d)
		closedir(d);
	return n;
}

/* ---- 1 GiB across "a reboot": saved, then restored by a new process ---- */

static int saver(void *arg)
{
	uint64_t pfns[RP_PFN_SAMPLES];
	struct paths *p = arg;
	struct cprxfer_ram r;
	cprxfer_state *st;
	int rc;

	if (cprxfer_ram_open_file(p->ram, rp_big(), CPRXFER_RAM_POPULATE, &r) <
	    0)
		return 10;
	rp_fill(r.addr, rp_big(), SEED);
	if (rp_pagemap(r.addr, rp_big(), pfns) < 0)
		return 11;
	st = cprxfer_state_new();
	if (!st || cprxfer_ram_put(st, "guest.ram", &r) < 0 ||
	    cprxfer_put_blob(st, "pfns", pfns, sizeof(pfns)) < 0 ||
	    cprxfer_put_str(st, "machine", "q35") < 0 ||
	    cprxfer_put_u64(st, "saver", (uint64_t)getpid()) < 0)
		return 12;
	rc = cprxfer_save_file(st, p->state);
	if (rc < 0)
		fprintf(stderr, "save_file: %s\n", cprxfer_errmsg());
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
	return rc < 0 ? 13 : 0;
}

static int loader(void *arg)
{
	uint64_t mine[RP_PFN_SAMPLES];
	struct paths *p = arg;
	struct cprxfer_ram g;
	cprxfer_state *st;
	const void *blob;
	const char *s;
	size_t len;
	uint64_t saver_pid;
	long bad;
	int type, rc;

	if (cprxfer_load_file(p->state, &st) < 0) {
		fprintf(stderr, "load_file: %s\n", cprxfer_errmsg());
		return 20;
	}
	if (cprxfer_state_entry(st, 0, NULL, &type) < 0 ||
	    type != CPRXFER_TYPE_RAM)
		return 21;
	if (cprxfer_get_str(st, "machine", &s) < 0 || strcmp(s, "q35") ||
	    cprxfer_get_u64(st, "saver", &saver_pid) < 0 ||
	    saver_pid == (uint64_t)getpid())
		return 22;
	if (cprxfer_ram_get(st, "guest.ram", CPRXFER_RAM_POPULATE_RESIDENT,
			    &g) < 0) {
		fprintf(stderr, "ram_get: %s\n", cprxfer_errmsg());
		return 23;
	}
	bad = rp_check(g.addr, g.size, SEED);
	if (g.size != rp_big() || bad >= 0) {
		fprintf(stderr, "page %ld differs\n", bad);
		return 24;
	}
	if (cprxfer_get_blob(st, "pfns", &blob, &len) < 0 ||
	    len != sizeof(mine) || rp_pagemap(g.addr, g.size, mine) < 0)
		return 25;
	rc = rp_same_frames(blob, mine);
	if (rc > 0)
		return 26;
	((uint64_t *)g.addr)[7] = 0x7777;
	cprxfer_ram_release(&g);
	cprxfer_state_free(st);
	return rc < 0 ? 1 : 0; /* 1: not root, frames unreadable */
}

static void test_file_1gib(void **state)
{
	struct paths *p = *state;
	struct stat s;
	uint64_t w;
	int fd, rc;
	int64_t t = tu_now_ms();

	assert_int_equal(tu_wait(tu_fork(saver, p)), 0);
	/* The saver is gone; the state and the RAM file remain. */
	assert_int_equal(stat(p->state, &s), 0);
	assert_int_equal(s.st_mode & 0777, 0600);
	assert_int_equal(dir_entries(p->dir), 1);
	rc = tu_wait(tu_fork(loader, p));
	assert_true(rc == 0 || (rc == 1 && geteuid() != 0));
	/* The loader's write is in the file. */
	fd = open(p->ram, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &w, 8, 7 * 8), 8);
	assert_int_equal(w, 0x7777);
	close(fd);
	printf("# %zu MiB saved by path and restored in a new process in %lld ms (frames %s)\n",
	       rp_big() >> 20, (long long)(tu_now_ms() - t),
	       rc == 0 ? "the same" : "not readable");
}

/* ---- corruption and truncation ------------------------------------------ */

static void make_state(const char *path, int salt)
{
	cprxfer_state *st = cprxfer_state_new();
	char blob[300];
	int i;

	for (i = 0; i < (int)sizeof(blob); i++)
		blob[i] = (char)(i * 7 + salt);
	assert_int_equal(cprxfer_put_u64(st, "a", 1 + salt), 0);
	assert_int_equal(cprxfer_put_i64(st, "b", -2), 0);
	assert_int_equal(cprxfer_put_str(st, "c", "three"), 0);
	assert_int_equal(cprxfer_put_blob(st, "d", blob, sizeof(blob)), 0);
	assert_int_equal(cprxfer_save_file(st, path), 0);
	cprxfer_state_free(st);
}

static void *slurp(const char *path, size_t *len)
{
	size_t n = file_size(path);
	void *buf = malloc(n + 1);
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0 && buf);
	assert_int_equal(read(fd, buf, n), (ssize_t)n);
	close(fd);
	*len = n;
	return buf;
}

static void spit(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

static void test_corrupted(void **state)
{
	struct paths *p = *state;
	cprxfer_state *st = NULL;
	uint64_t v;
	uint8_t *good, *bad;
	size_t len, i;
	int bit;

	make_state(p->state, 0);
	assert_int_equal(cprxfer_load_file(p->state, &st), 0);
	assert_int_equal(cprxfer_get_u64(st, "a", &v), 0);
	assert_int_equal(v, 1);
	cprxfer_state_free(st);
	st = NULL;

	good = slurp(p->state, &len);
	bad = malloc(len + 1);
	/* Every byte, two different bits: each flip is caught. */
	for (i = 0; i < len; i++) {
		for (bit = 0; bit < 8; bit += 7) {
			memcpy(bad, good, len);
			bad[i] ^= (uint8_t)(1u << bit);
			spit(p->state, bad, len);
			if (cprxfer_load_file(p->state, &st) != -EBADMSG)
				fail_msg(
					"flip of bit %d in byte %zu of %zu: %s",
					bit, i, len, cprxfer_errmsg());
			assert_null(st);
		}
	}
	assert_non_null(strstr(cprxfer_errmsg(), "corrupt"));
	/* Every truncation, and a byte too many. */
	for (i = 0; i < len; i++) {
		spit(p->state, good, i);
		if (cprxfer_load_file(p->state, &st) != -EBADMSG)
			fail_msg("truncated to %zu of %zu bytes: %s", i, len,
				 cprxfer_errmsg());
	}
	memcpy(bad, good, len);
	bad[len] = 0;
	spit(p->state, bad, len + 1);
	assert_int_equal(cprxfer_load_file(p->state, &st), -EBADMSG);
	/* A file that is not a state at all. */
	spit(p->state, "hello, world\n", 13);
	assert_int_equal(cprxfer_load_file(p->state, &st), -EBADMSG);
	free(good);
	free(bad);

	assert_int_equal(cprxfer_load_file("/nonexistent/state", &st), -ENOENT);
	assert_int_equal(cprxfer_load_file(p->dir, &st), -EINVAL);
	assert_int_equal(cprxfer_load_file(NULL, &st), -EINVAL);
}

/* An intact file over a limit keeps its own error, not -EBADMSG. */
static void test_limits_kept(void **state)
{
	struct paths *p = *state;
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_state *st = NULL;

	make_state(p->state, 0);
	assert_int_equal(
		cprxfer_opts_set_limit(o, CPRXFER_LIMIT_RECORD_BYTES, 100), 0);
	assert_int_equal(cprxfer_load_file_opts(p->state, o, &st), -EMSGSIZE);
	assert_non_null(strstr(cprxfer_errmsg(), "'d'"));
	assert_null(st);
	cprxfer_opts_free(o);
}

/* ---- what cannot go into a file -------------------------------------------- */

static void test_refuse_fds(void **state)
{
	struct paths *p = *state;
	struct cprxfer_ram r;
	cprxfer_state *st;
	struct stat before, after;
	uint8_t *old, *now;
	size_t olen, nlen;
	int fds[2];

	make_state(p->state, 5);
	old = slurp(p->state, &olen);
	assert_int_equal(stat(p->state, &before), 0);

	assert_int_equal(pipe2(fds, O_CLOEXEC), 0);
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_put_u64(st, "x", 1), 0);
	assert_int_equal(cprxfer_put_fd(st, "vhost.sock", fds[0]), 0);
	assert_int_equal(cprxfer_save_file(st, p->state), -EOPNOTSUPP);
	assert_non_null(strstr(cprxfer_errmsg(), "'vhost.sock'"));
	cprxfer_state_free(st);

	/* A memfd region has no path to be reopened by. */
	assert_int_equal(cprxfer_ram_create("mem", 1 << 20, 0, &r), 0);
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_ram_put(st, "ram0", &r), 0);
	assert_int_equal(cprxfer_save_file(st, p->state), -EOPNOTSUPP);
	assert_non_null(strstr(cprxfer_errmsg(), "'ram0'"));
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);

	/* The old file: same inode, same bytes; no temporary left. */
	assert_int_equal(stat(p->state, &after), 0);
	assert_int_equal(before.st_ino, after.st_ino);
	assert_int_equal(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
	now = slurp(p->state, &nlen);
	assert_int_equal(nlen, olen);
	assert_memory_equal(now, old, olen);
	assert_int_equal(dir_entries(p->dir), 1);
	free(old);
	free(now);
	close(fds[0]);
	close(fds[1]);
}

static void test_replace(void **state)
{
	struct paths *p = *state;
	cprxfer_state *st;
	struct stat s1, s2;
	uint64_t v;

	make_state(p->state, 1);
	assert_int_equal(stat(p->state, &s1), 0);
	make_state(p->state, 2);
	assert_int_equal(stat(p->state, &s2), 0);
	/* Renamed into place: a new inode, never rewritten in place. */
	assert_int_not_equal(s1.st_ino, s2.st_ino);
	assert_int_equal(s2.st_mode & 0777, 0600);
	assert_int_equal(dir_entries(p->dir), 1);
	assert_int_equal(cprxfer_load_file(p->state, &st), 0);
	assert_int_equal(cprxfer_get_u64(st, "a", &v), 0);
	assert_int_equal(v, 3);
	cprxfer_state_free(st);

	/* A directory that does not exist: nothing created. */
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_save_file(st, "/nonexistent/dir/state"),
			 -ENOENT);
	assert_int_equal(cprxfer_save_file(st, "/tmp/"), -EISDIR);
	assert_int_equal(cprxfer_save_file(NULL, p->state), -EINVAL);
	cprxfer_state_free(st);
}

/* ---- what is not a state file; a rename not yet durable ------------------ */

struct notfile {
	const char *path, *what;
};

static int load_notfile(void *arg)
{
	const struct notfile *n = arg;
	cprxfer_state *st = NULL;
	int64_t t = tu_now_ms();
	int rc;

	alarm(20); /* on 077bcd1 the FIFO's open() never returned */
	rc = cprxfer_load_file(n->path, &st);
	printf("# %s: %d in %lld ms: %s\n", n->what, rc,
	       (long long)(tu_now_ms() - t), cprxfer_errmsg());
	fflush(stdout);
	if (rc != -EINVAL || st || !strstr(cprxfer_errmsg(), n->what))
		return 1;
	return tu_now_ms() - t < 1000 ? 0 : 2;
}

/*
 * A FIFO (no writer), a socket or a device at the path fails at once,
 * by type, before a byte is read: nothing waits on open() or read().
 */
static void test_load_file_fifo_fails_at_once(void **state)
{
	struct paths *p = *state;
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	struct notfile n;
	int s;

	n.path = p->state;
	n.what = "a FIFO";
	assert_int_equal(mkfifo(p->state, 0600), 0);
	assert_int_equal(tu_wait(tu_fork(load_notfile, &n)), 0);
	unlink(p->state);

	assert_true(strlen(p->state) < sizeof(a.sun_path));
	memcpy(a.sun_path, p->state, strlen(p->state) + 1);
	s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(s >= 0);
	assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	n.what = "a socket";
	assert_int_equal(tu_wait(tu_fork(load_notfile, &n)), 0);
	close(s);
	unlink(p->state);

	n.path = "/dev/null";
	n.what = "a character device";
	assert_int_equal(tu_wait(tu_fork(load_notfile, &n)), 0);
	n.path = p->dir;
	n.what = "a directory";
	assert_int_equal(tu_wait(tu_fork(load_notfile, &n)), 0);
}

/*
 * Fault injection: this fsync() wins over libc's for the library linked
 * statically into this test; it fails a directory's fsync when asked.
 */
static int fail_dir_fsync;

int fsync(int fd)
{
	struct stat s;

	if (fail_dir_fsync && fstat(fd, &s) == 0 && S_ISDIR(s.st_mode)) {
		errno = EIO;
		return -1;
	}
	return (int)syscall(SYS_fsync, fd);
}

/*
 * The directory's fsync after the rename fails: not a plain failure but
 * -EINPROGRESS, and the reason says that the new file is in place.
 */
static void test_save_file_dir_fsync_failure_says_file_in_place(void **state)
{
	struct paths *p = *state;
	cprxfer_state *st;
	uint64_t v;

	make_state(p->state, 1);
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_put_u64(st, "a", 99), 0);
	fail_dir_fsync = 1;
	assert_int_equal(cprxfer_save_file(st, p->state), -EINPROGRESS);
	fail_dir_fsync = 0;
	print_message("# %s\n", cprxfer_errmsg());
	assert_non_null(strstr(cprxfer_errmsg(), "is in place"));
	assert_non_null(strstr(cprxfer_errmsg(), "may not be durable"));
	cprxfer_state_free(st);
	/* Indeed in place: the new state loads, nothing else was left. */
	assert_int_equal(dir_entries(p->dir), 1);
	assert_int_equal(cprxfer_load_file(p->state, &st), 0);
	assert_int_equal(cprxfer_get_u64(st, "a", &v), 0);
	assert_int_equal(v, 99);
	cprxfer_state_free(st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		ftest(test_file_1gib),
		ftest(test_corrupted),
		ftest(test_limits_kept),
		ftest(test_refuse_fds),
		ftest(test_replace),
		ftest(test_load_file_fifo_fails_at_once),
		ftest(test_save_file_dir_fsync_failure_says_file_in_place),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
