/* SPDX-License-Identifier: MIT */
/* The state map: every put/get/take/iterate call and its errors. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"

static void test_new_free(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();

	assert_non_null(st);
	assert_int_equal(cprxfer_state_count(st), 0);
	assert_int_equal(cprxfer_state_count(NULL), 0);
	cprxfer_state_free(st);
	cprxfer_state_free(NULL);
}

static void test_scalars(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	uint64_t u = 0;
	int64_t i = 0;

	assert_int_equal(cprxfer_put_u64(st, "u", UINT64_MAX), 0);
	assert_int_equal(cprxfer_put_i64(st, "i", INT64_MIN), 0);
	assert_int_equal(cprxfer_get_u64(st, "u", &u), 0);
	assert_true(u == UINT64_MAX);
	assert_int_equal(cprxfer_get_i64(st, "i", &i), 0);
	assert_true(i == INT64_MIN);
	assert_int_equal(cprxfer_get_u64(st, "missing", &u), -ENOENT);
	assert_non_null(strstr(cprxfer_errmsg(), "missing"));
	/* Another type is an error distinct from -ENOENT. */
	assert_int_equal(cprxfer_get_u64(st, "i", &u), -ENOMSG);
	assert_int_equal(cprxfer_get_i64(st, "u", &i), -ENOMSG);
	assert_int_equal(cprxfer_get_u64(st, "u", NULL), -EINVAL);
	assert_int_equal(cprxfer_get_u64(NULL, "u", &u), -EINVAL);
	assert_int_equal(cprxfer_put_u64(NULL, "x", 1), -EINVAL);
	cprxfer_state_free(st);
}

static void test_names(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	char name[300];
	uint64_t v;

	memset(name, 'n', sizeof(name));
	name[255] = 0;
	assert_int_equal(cprxfer_put_u64(st, name, 1), 0);
	assert_int_equal(cprxfer_get_u64(st, name, &v), 0);
	name[255] = 'n';
	name[256] = 0;
	assert_int_equal(cprxfer_put_u64(st, name, 1), -ENAMETOOLONG);
	assert_int_equal(cprxfer_get_u64(st, name, &v), -ENAMETOOLONG);
	assert_int_equal(cprxfer_put_u64(st, "", 1), -EINVAL);
	assert_int_equal(cprxfer_put_u64(st, NULL, 1), -EINVAL);
	assert_int_equal(cprxfer_put_u64(st, "a", 1), 0);
	assert_int_equal(cprxfer_put_u64(st, "a", 2), -EEXIST);
	assert_int_equal(cprxfer_put_str(st, "a", "x"), -EEXIST);
	assert_non_null(strstr(cprxfer_errmsg(), "'a'"));
	assert_int_equal(cprxfer_state_count(st), 2);
	assert_int_equal(cprxfer_get_u64(st, "a", &v), 0);
	assert_int_equal(v, 1);
	cprxfer_state_free(st);
}

static void test_blob_str(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	char buf[100];
	const void *d;
	const char *s;
	size_t len;

	memset(buf, 7, sizeof(buf));
	assert_int_equal(cprxfer_put_blob(st, "b", buf, sizeof(buf)), 0);
	buf[0] = 0; /* the state copied it */
	assert_int_equal(cprxfer_get_blob(st, "b", &d, &len), 0);
	assert_int_equal(len, 100);
	assert_int_equal(((const char *)d)[0], 7);
	assert_int_equal(cprxfer_put_blob(st, "empty", NULL, 0), 0);
	assert_int_equal(cprxfer_get_blob(st, "empty", &d, &len), 0);
	assert_int_equal(len, 0);
	assert_non_null(d);
	assert_int_equal(cprxfer_put_blob(st, "bad", NULL, 5), -EINVAL);
	assert_int_equal(cprxfer_put_str(st, "s", "hello"), 0);
	assert_int_equal(cprxfer_put_str(st, "null", NULL), -EINVAL);
	assert_int_equal(cprxfer_get_str(st, "s", &s), 0);
	assert_string_equal(s, "hello");
	assert_int_equal(cprxfer_get_str(st, "b", &s), -ENOMSG);
	assert_int_equal(cprxfer_get_blob(st, "s", &d, &len), -ENOMSG);
	assert_int_equal(cprxfer_get_blob(st, "s", NULL, &len), -EINVAL);
	cprxfer_state_free(st);
}

static void test_fds(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	int efd = eventfd(3, EFD_CLOEXEC), fd = -1, t;

	assert_true(efd >= 0);
	assert_int_equal(cprxfer_put_fd(st, "e", efd), 0);
	assert_int_equal(cprxfer_put_fd(st, "bad", 9999), -EBADF);
	assert_int_equal(cprxfer_put_fd(st, "neg", -1), -EBADF);
	assert_int_equal(cprxfer_get_fd(st, "e", &fd), 0);
	assert_int_equal(fd, efd);
	/* A borrowed fd stays the caller's: take hands out a duplicate. */
	t = cprxfer_take_fd(st, "e");
	assert_true(t >= 0 && t != efd);
	assert_true(fcntl(t, F_GETFD) & FD_CLOEXEC);
	close(t);
	assert_int_equal(cprxfer_take_fd(st, "nope"), -ENOENT);
	assert_int_equal(cprxfer_put_u64(st, "u", 1), 0);
	assert_int_equal(cprxfer_take_fd(st, "u"), -ENOMSG);
	assert_int_equal(cprxfer_get_fd(st, "u", &fd), -ENOMSG);
	cprxfer_state_free(st);
	/* free never closes a borrowed fd */
	assert_true(fcntl(efd, F_GETFD) >= 0);
	close(efd);
}

/* Read an eventfd's counter: which object an fd is. */
static uint64_t counter(int fd)
{
	uint64_t v = 0;

	assert_int_equal(read(fd, &v, 8), 8);
	assert_int_equal(write(fd, &v, 8), 8); /* put it back */
	return v;
}

/* An array is borrowed like a single fd; take hands out duplicates. */
static void test_fd_array_put_get_take_borrowed(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	int efd[3], bad[2], *got = NULL, i, type = 0;
	const int *fds = NULL;
	const char *name;
	size_t n = 0;

	for (i = 0; i < 3; i++) {
		efd[i] = eventfd((unsigned)i + 1, EFD_CLOEXEC);
		assert_true(efd[i] >= 0);
	}
	assert_int_equal(cprxfer_put_fds(st, "conns", efd, 3), 0);
	/* The array is copied: the caller may reuse its own. */
	bad[0] = efd[0];
	bad[1] = 9999;
	assert_int_equal(cprxfer_put_fds(st, "bad", bad, 2), -EBADF);
	assert_non_null(strstr(cprxfer_errmsg(), "index 1"));
	assert_int_equal(cprxfer_put_fds(st, "null", NULL, 2), -EINVAL);
	assert_int_equal(cprxfer_put_fds(st, "conns", efd, 3), -EEXIST);
	assert_int_equal(cprxfer_put_fds(NULL, "x", efd, 3), -EINVAL);
	assert_int_equal(cprxfer_put_fds(st, "empty", NULL, 0), 0);
	assert_int_equal(cprxfer_state_entry(st, 0, &name, &type), 0);
	assert_int_equal(type, CPRXFER_TYPE_FDS);
	assert_string_equal(name, "conns");

	assert_int_equal(cprxfer_get_fds(st, "conns", &fds, &n), 0);
	assert_int_equal(n, 3);
	for (i = 0; i < 3; i++)
		assert_int_equal(fds[i], efd[i]);
	assert_int_equal(cprxfer_get_fds(st, "empty", &fds, &n), 0);
	assert_int_equal(n, 0);
	assert_int_equal(cprxfer_get_fds(st, "conns", NULL, &n), -EINVAL);
	assert_int_equal(cprxfer_get_fds(st, "nope", &fds, &n), -ENOENT);

	/* Borrowed: duplicates of the same objects, close-on-exec. */
	assert_int_equal(cprxfer_take_fds(st, "conns", &got, &n), 0);
	assert_int_equal(n, 3);
	for (i = 0; i < 3; i++) {
		assert_true(got[i] != efd[i]);
		assert_true(fcntl(got[i], F_GETFD) & FD_CLOEXEC);
		assert_int_equal(counter(got[i]), (uint64_t)i + 1);
		close(got[i]);
	}
	free(got);
	/* The state still holds them: take again works, get too. */
	assert_int_equal(cprxfer_get_fds(st, "conns", &fds, &n), 0);
	assert_int_equal(cprxfer_take_fds(st, "empty", &got, &n), 0);
	assert_int_equal(n, 0);
	free(got);

	/* Types do not mix. */
	assert_int_equal(cprxfer_put_fd(st, "one", efd[0]), 0);
	assert_int_equal(cprxfer_get_fds(st, "one", &fds, &n), -ENOMSG);
	assert_int_equal(cprxfer_take_fds(st, "one", &got, &n), -ENOMSG);
	assert_int_equal(cprxfer_take_fd(st, "conns"), -ENOMSG);
	cprxfer_state_free(st);
	/* free never closes borrowed fds */
	for (i = 0; i < 3; i++) {
		assert_true(fcntl(efd[i], F_GETFD) >= 0);
		close(efd[i]);
	}
}

static void test_entries(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	const char *names[] = { "z", "a", "m", "b" };
	const char *name;
	int type, i;

	for (i = 0; i < 4; i++)
		assert_int_equal(cprxfer_put_i64(st, names[i], i), 0);
	assert_int_equal(cprxfer_put_str(st, "s", "v"), 0);
	assert_int_equal(cprxfer_state_count(st), 5);
	for (i = 0; i < 4; i++) {
		assert_int_equal(cprxfer_state_entry(st, i, &name, &type), 0);
		assert_string_equal(name, names[i]);
		assert_int_equal(type, CPRXFER_TYPE_I64);
	}
	assert_int_equal(cprxfer_state_entry(st, 4, &name, &type), 0);
	assert_int_equal(type, CPRXFER_TYPE_STR);
	assert_int_equal(cprxfer_state_entry(st, 5, &name, &type), -ERANGE);
	assert_int_equal(cprxfer_state_entry(NULL, 0, &name, &type), -EINVAL);
	cprxfer_state_free(st);
}

/* 100,000 entries: lookups are hashed, never quadratic. */
static void test_many(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	int64_t t0 = tu_now_ms(), ms;
	char name[32];
	uint64_t v;
	int i;

	for (i = 0; i < 100000; i++) {
		snprintf(name, sizeof(name), "entry.%d", i);
		assert_int_equal(cprxfer_put_u64(st, name, (uint64_t)i * 3), 0);
	}
	for (i = 0; i < 100000; i++) {
		snprintf(name, sizeof(name), "entry.%d", i);
		assert_int_equal(cprxfer_get_u64(st, name, &v), 0);
		assert_int_equal(v, (uint64_t)i * 3);
	}
	ms = tu_now_ms() - t0;
	print_message("100000 puts + gets: %lld ms\n", (long long)ms);
	/* Generous bound: quadratic behaviour would take minutes. */
	assert_true(ms < 5000);
	cprxfer_state_free(st);
}

static void test_opts(void **unused)
{
	cprxfer_opts *o = cprxfer_opts_new();

	assert_non_null(o);
	assert_int_equal(cprxfer_opts_set_limit(o, CPRXFER_LIMIT_FDS, 10), 0);
	assert_int_equal(cprxfer_opts_set_limit(o, 99, 10), -EINVAL);
	assert_int_equal(cprxfer_opts_set_limit(o, CPRXFER_LIMIT_RECORDS, 0),
			 -EINVAL);
	assert_int_equal(cprxfer_opts_set_timeout(o, -5), 0);
	assert_int_equal(cprxfer_opts_set_tag(o, "demo/1"), 0);
	assert_int_equal(cprxfer_opts_allow_uid(o, 1234), 0);
	assert_int_equal(cprxfer_opts_allow_pid(o, 0), -EINVAL);
	assert_int_equal(cprxfer_opts_allow_pid(o, 1), 0);
	assert_int_equal(cprxfer_opts_set_tag(NULL, "x"), -EINVAL);
	cprxfer_opts_free(o);
	cprxfer_opts_free(NULL);
}

static void test_version(void **unused)
{
	char want[32];

	snprintf(want, sizeof(want), "%d.%d.%d", CPRXFER_VERSION_MAJOR,
		 CPRXFER_VERSION_MINOR, CPRXFER_VERSION_MICRO);
	assert_string_equal(cprxfer_version(), want);
	assert_string_equal(cprxfer_version(), CPRXFER_VERSION_STRING);
}

/* ---- a borrowed fd closed and its number reused ------------------------- */

static int stale_receiver(void *arg)
{
	int sock = *(int *)arg;
	cprxfer_channel *ch;
	cprxfer_state *st;
	uint64_t v = 0;
	int rc;

	if (cprxfer_channel_open(sock, &ch) < 0)
		return 10;
	/* The first stream that arrives is the good one: no 'sock'. */
	rc = cprxfer_load(ch, &st);
	if (rc < 0)
		return 11;
	if (cprxfer_state_count(st) != 1 ||
	    cprxfer_get_u64(st, "try", &v) < 0 || v != 2)
		return 12;
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return 0;
}

/*
 * The caller put fd N, closed it, and N now names another file: save
 * refuses with -ESTALE naming the record, before a byte is sent (on
 * 077bcd1 the other file went to the peer under the record's name).
 */
static void test_put_fd_reused_number_is_stale(void **unused)
{
	cprxfer_channel *ch;
	cprxfer_state *st;
	int sv[2], fd, again;
	char path[300], *dir;
	pid_t pid;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	pid = tu_fork(stale_receiver, &sv[1]);
	assert_true(pid > 0);
	close(sv[1]);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);

	st = cprxfer_state_new();
	fd = eventfd(0, EFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(cprxfer_put_u64(st, "try", 1), 0);
	assert_int_equal(cprxfer_put_fd(st, "sock", fd), 0);
	close(fd);
	again = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_int_equal(again, fd);
	assert_int_equal(cprxfer_save(ch, st), -ESTALE);
	assert_non_null(strstr(cprxfer_errmsg(), "'sock'"));
	print_message("# %s\n", cprxfer_errmsg());
	/* File mode sees it too. */
	dir = tu_tmpdir();
	snprintf(path, sizeof(path), "%s/state", dir);
	assert_int_equal(cprxfer_save_file(st, path), -ESTALE);
	assert_int_equal(access(path, F_OK), -1);
	tu_rmdir(dir);
	free(dir);
	close(again);
	/* Closed and not reused: -EBADF, still before anything is sent. */
	assert_int_equal(cprxfer_save(ch, st), -EBADF);
	cprxfer_state_free(st);

	/* The channel is intact: the next save is the first stream. */
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_put_u64(st, "try", 2), 0);
	assert_int_equal(cprxfer_save(ch, st), 0);
	cprxfer_state_free(st);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_channel_close(ch);
}

static bool is_open(int fd)
{
	return fcntl(fd, F_GETFD) >= 0;
}

/*
 * cprxfer_adopt_fd: the state owns the fd. A failed call leaves it
 * open and the caller's; take hands the fd itself back; free closes
 * what the state still owns.
 */
static void test_adopt_fd_is_owned_by_the_state(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	int a = eventfd(1, EFD_CLOEXEC), b = eventfd(2, EFD_CLOEXEC), fd;

	assert_int_equal(cprxfer_adopt_fd(st, "a", a), 0);
	/* Failures leave the fd open, the state unchanged. */
	assert_int_equal(cprxfer_adopt_fd(st, "a", b), -EEXIST);
	assert_int_equal(cprxfer_adopt_fd(NULL, "b", b), -EINVAL);
	assert_int_equal(cprxfer_adopt_fd(st, "", b), -EINVAL);
	assert_int_equal(cprxfer_adopt_fd(st, "b", -1), -EBADF);
	assert_int_equal(cprxfer_adopt_fd(st, "b", 9999), -EBADF);
	assert_true(is_open(b));
	assert_int_equal(cprxfer_state_count(st), 1);
	assert_int_equal(cprxfer_get_fd(st, "a", &fd), 0);
	assert_int_equal(fd, a);
	assert_int_equal(cprxfer_adopt_fd(st, "b", b), 0);
	/* Owned: take hands back the fd itself, not a duplicate. */
	fd = cprxfer_take_fd(st, "b");
	assert_int_equal(fd, b);
	assert_int_equal(cprxfer_take_fd(st, "b"), -EBADF);
	cprxfer_state_free(st);
	/* free closed the one the state still owned, not the taken one. */
	assert_false(is_open(a));
	assert_true(is_open(b));
	assert_int_equal(counter(b), 2);
	close(b);
}

/*
 * An fd adopted twice would be closed twice: under a second name, in an
 * array, or into a loaded-like state, the second adopt is refused and
 * leaves the state as it was; once taken back, it may be adopted again.
 */
static void test_adopt_same_fd_twice_is_refused(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	int a = eventfd(1, EFD_CLOEXEC), b = eventfd(2, EFD_CLOEXEC);
	int arr[2], *got = NULL;
	size_t n = 0;

	assert_int_equal(cprxfer_adopt_fd(st, "a", a), 0);
	assert_int_equal(cprxfer_adopt_fd(st, "a2", a), -EINVAL);
	assert_non_null(strstr(cprxfer_errmsg(), "closed twice"));
	arr[0] = b;
	arr[1] = a;
	assert_int_equal(cprxfer_adopt_fds(st, "arr", arr, 2), -EINVAL);
	assert_int_equal(cprxfer_state_count(st), 1);
	/* The failed array claimed nothing: b alone is fine. */
	assert_int_equal(cprxfer_adopt_fds(st, "arr", arr, 1), 0);
	assert_int_equal(cprxfer_adopt_fd(st, "b", b), -EINVAL);
	/* Taken back, the fd is the caller's again and may be adopted. */
	assert_int_equal(cprxfer_take_fd(st, "a"), a);
	assert_int_equal(cprxfer_adopt_fd(st, "a2", a), 0);
	assert_int_equal(cprxfer_take_fds(st, "arr", &got, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(got[0], b);
	free(got);
	assert_int_equal(cprxfer_adopt_fd(st, "b", b), 0);
	assert_int_equal(cprxfer_state_count(st), 4);
	cprxfer_state_free(st);
	assert_false(is_open(a));
	assert_false(is_open(b));
	(void)unused;
}

/*
 * cprxfer_adopt_fds: checked open with poll(), a number given twice is
 * refused (it would be closed twice), failures leave every fd open;
 * take hands back the fds themselves, free closes them.
 */
static void test_adopt_fds_is_owned_by_the_state(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	int efd[600], twice[3], bad[3], *got = NULL, i;
	const int *fds;
	size_t n;

	for (i = 0; i < 600; i++) {
		efd[i] = eventfd((unsigned)i + 1, EFD_CLOEXEC);
		assert_true(efd[i] >= 0);
	}
	twice[0] = efd[0];
	twice[1] = efd[1];
	twice[2] = efd[0];
	assert_int_equal(cprxfer_adopt_fds(st, "x", twice, 3), -EINVAL);
	assert_non_null(strstr(cprxfer_errmsg(), "twice"));
	bad[0] = efd[0];
	bad[1] = efd[1];
	bad[2] = 9999;
	assert_int_equal(cprxfer_adopt_fds(st, "x", bad, 3), -EBADF);
	assert_non_null(strstr(cprxfer_errmsg(), "index 2"));
	bad[2] = -1;
	assert_int_equal(cprxfer_adopt_fds(st, "x", bad, 3), -EBADF);
	assert_int_equal(cprxfer_adopt_fds(st, "x", NULL, 3), -EINVAL);
	assert_int_equal(cprxfer_adopt_fds(NULL, "x", efd, 3), -EINVAL);
	assert_int_equal(cprxfer_state_count(st), 0);
	for (i = 0; i < 600; i++)
		assert_true(is_open(efd[i]));

	/* 600 fds: three poll() chunks. */
	assert_int_equal(cprxfer_adopt_fds(st, "conns", efd, 600), 0);
	assert_int_equal(cprxfer_adopt_fds(st, "conns", efd, 1), -EEXIST);
	assert_int_equal(cprxfer_adopt_fds(st, "empty", NULL, 0), 0);
	assert_int_equal(cprxfer_get_fds(st, "conns", &fds, &n), 0);
	assert_int_equal(n, 600);
	for (i = 0; i < 600; i++)
		assert_int_equal(fds[i], efd[i]);
	assert_int_equal(cprxfer_take_fds(st, "conns", &got, &n), 0);
	assert_int_equal(n, 600);
	for (i = 0; i < 600; i++)
		assert_int_equal(got[i], efd[i]);
	assert_int_equal(cprxfer_take_fds(st, "conns", &got, &n), -EBADF);
	cprxfer_state_free(st);
	/* Taken back: ours again, open. */
	for (i = 0; i < 600; i++)
		assert_int_equal(counter(got[i]), (uint64_t)i + 1);
	/* Adopted and not taken: free closes them. */
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_adopt_fds(st, "conns", got, 600), 0);
	cprxfer_state_free(st);
	for (i = 0; i < 600; i++)
		assert_false(is_open(got[i]));
	free(got);
}
/* The same for a RAM region's fd, borrowed by cprxfer_ram_put. */
static void test_ram_put_reused_number_is_stale(void **unused)
{
	struct cprxfer_ram r, g;
	cprxfer_state *st;
	int again;

	assert_int_equal(cprxfer_ram_create("r", 1 << 20, 0, &r), 0);
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_ram_put(st, "ram", &r), 0);
	close(r.fd);
	again = memfd_create("other", MFD_CLOEXEC);
	assert_int_equal(again, r.fd);
	assert_int_equal(cprxfer_ram_get(st, "ram", 0, &g), -ESTALE);
	assert_non_null(strstr(cprxfer_errmsg(), "'ram'"));
	close(again);
	r.fd = -1;
	cprxfer_ram_release(&r);
	cprxfer_state_free(st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_new_free),
		tu_test(test_scalars),
		tu_test(test_names),
		tu_test(test_blob_str),
		tu_test(test_fds),
		tu_test(test_entries),
		tu_test(test_many),
		tu_test(test_opts),
		tu_test(test_version),
		tu_test(test_fd_array_put_get_take_borrowed),
		tu_test(test_put_fd_reused_number_is_stale),
		tu_test(test_ram_put_reused_number_is_stale),
		tu_test(test_adopt_fd_is_owned_by_the_state),
		tu_test(test_adopt_fds_is_owned_by_the_state),
		tu_test(test_adopt_same_fd_twice_is_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
