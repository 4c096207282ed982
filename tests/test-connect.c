/* SPDX-License-Identifier: MIT */
/*
 * Connect's wait for the path: it costs almost no CPU in every state
 * the path can be in (missing directory, directory created late,
 * removed and recreated, stale socket), it fails at once when the path
 * holds something that is not a socket, and the library's internal
 * cx_connect() ends at once when its watched fd becomes readable.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "rendezvous.h"
#include "testutil.h"

#define WAIT_MS 1500

static char *dir;

static void msleep(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0)
		;
}

/* A socket bound at path and closed: what a dead listener leaves. */
static void make_stale(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(fd);
}

/* ---- the waiting process: CPU time over a WAIT_MS wait ---------------- */

struct waiter_child {
	char path[108];
	int64_t cpu_us, wall_ms; /* measured in the child */
	int rc;
};

static struct waiter_child *shared;

static int wait_child(void *arg)
{
	cprxfer_channel *ch = NULL;
	int64_t c0, t0;

	(void)arg;
	c0 = tu_cpu_us();
	t0 = tu_now_ms();
	shared->rc = cprxfer_connect(shared->path, WAIT_MS, &ch);
	cprxfer_channel_close(ch);
	shared->wall_ms = tu_now_ms() - t0;
	shared->cpu_us = tu_cpu_us() - c0;
	return 0;
}

/*
 * Run a connect that waits WAIT_MS for path in a child while the
 * parent changes the path's state with change() at 300 ms (if set).
 * Asserts the wait timed out and cost less than 5% of one CPU.
 */
static void wait_costs_nothing(const char *rel, void (*change)(const char *))
{
	char path[108];
	int64_t limit;
	pid_t pid;

	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	memset(shared, 0, sizeof(*shared));
	snprintf(shared->path, sizeof(shared->path), "%s", path);
	pid = tu_fork(wait_child, NULL);
	assert_true(pid > 0);
	if (change) {
		msleep(300);
		change(path);
	}
	assert_int_equal(tu_wait(pid), 0);
	assert_int_equal(shared->rc, -ETIMEDOUT);
	assert_true(shared->wall_ms >= WAIT_MS - 10);
	/* 5% of one CPU; valgrind's own bookkeeping gets more room. */
	limit = shared->wall_ms * 1000 /
		(getenv("CPRXFER_UNDER_VALGRIND") ? 5 : 20);
	printf("# %s: %lld us CPU in %lld ms\n", rel, (long long)shared->cpu_us,
	       (long long)shared->wall_ms);
	assert_true(shared->cpu_us < limit);
}

static void sub_path(const char *path, char *d, size_t n)
{
	snprintf(d, n, "%s", path);
	*strrchr(d, '/') = 0;
}

static void mkdir_parent(const char *path)
{
	char d[108];

	sub_path(path, d, sizeof(d));
	assert_int_equal(mkdir(d, 0700), 0);
}

static void rmdir_parent(const char *path)
{
	char d[108];

	sub_path(path, d, sizeof(d));
	assert_int_equal(rmdir(d), 0);
}

static void recreate_parent(const char *path)
{
	rmdir_parent(path);
	msleep(300);
	mkdir_parent(path);
}

static void test_connect_missing_dir_does_not_spin(void **state)
{
	wait_costs_nothing("missing/deeper/x.sock", NULL);
}

static void test_connect_dir_created_late_does_not_spin(void **state)
{
	char d[108];

	wait_costs_nothing("late/x.sock", mkdir_parent);
	snprintf(d, sizeof(d), "%s/late", dir);
	assert_int_equal(rmdir(d), 0);
}

static void test_connect_dir_removed_and_recreated_does_not_spin(void **state)
{
	char d[108];

	snprintf(d, sizeof(d), "%s/again", dir);
	assert_int_equal(mkdir(d, 0700), 0);
	wait_costs_nothing("again/x.sock", recreate_parent);
	assert_int_equal(rmdir(d), 0);
}

static void test_connect_stale_socket_does_not_spin(void **state)
{
	char path[108];

	snprintf(path, sizeof(path), "%s/stale.sock", dir);
	make_stale(path);
	wait_costs_nothing("stale.sock", NULL);
	assert_int_equal(unlink(path), 0);
}

/* A listener appearing in a directory created late is still found. */
static void test_connect_finds_listener_in_late_dir(void **state)
{
	char path[108], d[64];
	cprxfer_listener *l;
	cprxfer_channel *ch;
	pid_t pid;

	snprintf(d, sizeof(d), "%s/later", dir);
	snprintf(path, sizeof(path), "%s/x.sock", d);
	memset(shared, 0, sizeof(*shared));
	snprintf(shared->path, sizeof(shared->path), "%s", path);
	pid = tu_fork(wait_child, NULL);
	assert_true(pid > 0);
	msleep(200);
	assert_int_equal(mkdir(d, 0700), 0);
	msleep(200);
	assert_int_equal(cprxfer_listen(path, &l), 0);
	assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	assert_int_equal(shared->rc, 0);
	assert_true(shared->wall_ms < WAIT_MS);
	cprxfer_listener_close(l);
	assert_int_equal(rmdir(d), 0);
}

/* ---- not a socket: fail at once ------------------------------------ */

static void refused_at_once(const char *path, const char *kind)
{
	cprxfer_channel *ch = NULL;
	int64_t t0 = tu_now_ms();

	assert_int_equal(cprxfer_connect(path, 5000, &ch), -ENOTSOCK);
	assert_true(tu_now_ms() - t0 < 1000);
	assert_null(ch);
	assert_non_null(strstr(cprxfer_errmsg(), kind));
}

static void test_connect_to_non_socket_fails_at_once(void **state)
{
	char path[108];
	int fd;

	snprintf(path, sizeof(path), "%s/file", dir);
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	close(fd);
	refused_at_once(path, "a regular file");
	assert_int_equal(unlink(path), 0);

	snprintf(path, sizeof(path), "%s/fifo", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	refused_at_once(path, "a FIFO");
	assert_int_equal(unlink(path), 0);

	snprintf(path, sizeof(path), "%s/dir", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	refused_at_once(path, "a directory");
	assert_int_equal(rmdir(path), 0);
}

/* ---- cx_connect: the watched fd ends every wait ---------------------- */

static void test_connect_watch_fd_ends_path_wait(void **state)
{
	char path[108];
	cprxfer_channel *ch = NULL;
	int64_t t0;
	int efd, p[2];
	pid_t pid;

	snprintf(path, sizeof(path), "%s/nobody.sock", dir);
	/* Already readable: at once. */
	efd = eventfd(1, EFD_CLOEXEC);
	assert_true(efd >= 0);
	t0 = tu_now_ms();
	assert_int_equal(cx_connect(path, 5000, NULL, efd, &ch), -ECHILD);
	assert_true(tu_now_ms() - t0 < 1000);
	assert_null(ch);
	close(efd);

	/* A child holding a pipe's write end exits at 200 ms. */
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		msleep(200);
		_exit(0);
	}
	close(p[1]);
	t0 = tu_now_ms();
	assert_int_equal(cx_connect(path, 5000, NULL, p[0], &ch), -ECHILD);
	assert_true(tu_now_ms() - t0 >= 150);
	assert_true(tu_now_ms() - t0 < 2000);
	assert_null(ch);
	close(p[0]);
	assert_int_equal(tu_wait(pid), 0);

	/* Not readable: the plain timeout. */
	efd = eventfd(0, EFD_CLOEXEC);
	assert_true(efd >= 0);
	assert_int_equal(cx_connect(path, 100, NULL, efd, &ch), -ETIMEDOUT);
	close(efd);
}

/* A listener that accepts but never speaks: the handshake wait. */
static void test_connect_watch_fd_ends_handshake_wait(void **state)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	cprxfer_channel *ch = NULL;
	int lfd, efd, p[2];
	int64_t t0;
	pid_t pid;

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/mute.sock", dir);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(lfd >= 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 4), 0);
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(p[0]);
		msleep(300);
		_exit(0);
	}
	close(p[1]);
	t0 = tu_now_ms();
	assert_int_equal(cx_connect(sa.sun_path, 5000, NULL, p[0], &ch),
			 -ECHILD);
	assert_true(tu_now_ms() - t0 < 3000);
	assert_non_null(strstr(cprxfer_errmsg(), "watched fd"));
	close(p[0]);
	assert_int_equal(tu_wait(pid), 0);
	efd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	assert_true(efd >= 0);
	close(efd);
	close(lfd);
	unlink(sa.sun_path);
}

static int setup_dir(void **state)
{
	shared = mmap(NULL, sizeof(*shared), PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	dir = tu_tmpdir();
	return dir && shared != MAP_FAILED ? 0 : -1;
}

static int teardown_dir(void **state)
{
	tu_rmdir(dir);
	free(dir);
	munmap(shared, sizeof(*shared));
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_connect_missing_dir_does_not_spin),
		tu_test(test_connect_dir_created_late_does_not_spin),
		tu_test(test_connect_dir_removed_and_recreated_does_not_spin),
		tu_test(test_connect_stale_socket_does_not_spin),
		tu_test(test_connect_finds_listener_in_late_dir),
		tu_test(test_connect_to_non_socket_fails_at_once),
		tu_test(test_connect_watch_fd_ends_path_wait),
		tu_test(test_connect_watch_fd_ends_handshake_wait),
	};

	return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
