/* SPDX-License-Identifier: MIT */
/*
 * The non-blocking connect (cprxfer_connect_start/step) and the
 * successor's channel (cprxfer_successor_channel_start) driven the way
 * an event loop drives them: poll cprxfer_channel_fd() for POLLIN, step
 * when readable. With real processes: a listener that appears 100 ms
 * late, no listener at all (the deadline), a successor that crashes
 * before the handshake. Each loop's CPU time and wakeups are measured:
 * a handful of wakeups, not thousands. Calls on a connecting channel
 * fail with -EINPROGRESS; close mid-connect leaves no fd and no child.
 *
 * CX_TEST_FILTER=<glob> runs only the matching tests (for strace -c).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"

static char *dir;
static char target[512];

static void msleep(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0)
		;
}

/* What one event-loop run of a connect cost. */
struct run {
	int rc;		/* the step's final result */
	int wakeups;	/* poll() returns that led to a step */
	int64_t ms;	/* wall time of the loop */
	int64_t cpu_us; /* CPU time of this process during the loop */
	int64_t end_ms; /* tu_now_ms() when the step returned its result */
};

/* Poll the channel's fd and step until done: an event loop's way. */
static void loop(cprxfer_channel *ch, struct run *r)
{
	int64_t t0 = tu_now_ms(), c0 = tu_cpu_us();
	int fd = cprxfer_channel_fd(ch);

	assert_true(fd >= 0);
	r->wakeups = 0;
	while ((r->rc = cprxfer_connect_step(ch)) == -EAGAIN) {
		struct pollfd p = { .fd = fd, .events = POLLIN };

		assert_true(poll(&p, 1, 20000) == 1);
		r->wakeups++;
		assert_true(r->wakeups < 1000);
	}
	r->end_ms = tu_now_ms();
	r->ms = r->end_ms - t0;
	r->cpu_us = tu_cpu_us() - c0;
}

/* The channel's fd is not readable (nothing in progress, nothing due). */
static void assert_quiet(cprxfer_channel *ch)
{
	struct pollfd p = { .fd = cprxfer_channel_fd(ch), .events = POLLIN };

	assert_int_equal(poll(&p, 1, 0), 0);
}

/* ---- a listener that appears late ----------------------------------- */

static char late_path[108];

/* Child: listen 100 ms from now, accept one peer, exit 0 if it came. */
static int late_listener(void *arg)
{
	cprxfer_state *st = NULL;
	cprxfer_listener *l;
	cprxfer_channel *ch;
	uint64_t v = 0;
	int rc;

	(void)arg;
	msleep(100);
	if (cprxfer_listen(late_path, &l) < 0)
		return 1;
	rc = cprxfer_accept(l, 5000, &ch);
	cprxfer_listener_close(l);
	if (rc < 0)
		return 2;
	/* The stepped channel carries a handoff like any other. */
	if (cprxfer_load(ch, &st) < 0)
		rc = 3;
	else if (cprxfer_get_u64(st, "counter", &v) < 0 || v != 42)
		rc = 4;
	else if (cprxfer_ack(ch, 0, NULL) < 0)
		rc = 5;
	else if (cprxfer_wait_commit(ch, 5000) != -ECANCELED)
		rc = 6;
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return rc;
}

static void test_connect_step_listener_late_does_not_spin(void **u)
{
	cprxfer_channel *ch = NULL;
	cprxfer_state *st;
	struct run r;
	pid_t pid, peer = 0;
	int64_t t0 = tu_now_ms();

	snprintf(late_path, sizeof(late_path), "%s/late.sock", dir);
	pid = tu_fork(late_listener, NULL);
	assert_true(pid > 0);
	assert_int_equal(cprxfer_connect_start(late_path, 5000, NULL, &ch), 0);
	assert_non_null(ch);
	loop(ch, &r);
	print_message(
		"listener 100 ms late: connected %lld ms after its child started, %d wakeups, %lld us CPU\n",
		(long long)(r.end_ms - t0), r.wakeups, (long long)r.cpu_us);
	assert_int_equal(r.rc, 0);
	assert_true(r.end_ms - t0 >= 100);
	/* Path events (the temporary name, the rename), the handshake. */
	assert_true(r.wakeups <= 12);
	assert_true(r.cpu_us < 50000);
	/* Done: a plain connected channel, its fd quiet, calls allowed. */
	assert_int_equal(cprxfer_connect_step(ch), 0);
	assert_int_equal(cprxfer_channel_peer(ch, &peer, NULL, NULL), 0);
	assert_int_equal(peer, pid);
	assert_quiet(ch);
	st = cprxfer_state_new();
	cprxfer_put_u64(st, "counter", 42);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 5000), 0);
	assert_int_equal(cprxfer_abort(ch, "test: roll back"), 0);
	cprxfer_channel_close(ch);
	cprxfer_state_free(st);
	assert_int_equal(tu_wait(pid), 0);
}

/* A listener already there: connected at once, the handshake in steps. */
static void test_connect_step_listener_present(void **u)
{
	cprxfer_listener *l;
	cprxfer_channel *ch = NULL, *in = NULL;
	char path[108];
	struct run r;
	int n = 0;

	snprintf(path, sizeof(path), "%s/here.sock", dir);
	assert_int_equal(cprxfer_listen(path, &l), 0);
	assert_int_equal(cprxfer_connect_start(path, 1000, NULL, &ch), 0);
	/* Both sides step in one thread: accept(l, 0) is a step too. */
	for (n = 0; n < 1000; n++) {
		if (!in) {
			int a = cprxfer_accept(l, 0, &in);

			assert_true(a == 0 || a == -EAGAIN);
		}
		r.rc = cprxfer_connect_step(ch);
		if (r.rc != -EAGAIN && (in || r.rc < 0))
			break;
	}
	assert_int_equal(r.rc, 0);
	assert_non_null(in);
	assert_quiet(ch);
	cprxfer_channel_close(in);
	cprxfer_channel_close(ch);
	cprxfer_listener_close(l);
}

/* A refusal in the handshake comes out of a step, for both sides. */
static void test_connect_step_tag_mismatch_fails_in_step(void **u)
{
	cprxfer_opts *lo = cprxfer_opts_new(), *co = cprxfer_opts_new();
	cprxfer_channel *ch = NULL, *in = NULL;
	cprxfer_listener *l;
	char path[108];
	int rc = -EAGAIN, a = -EAGAIN, n;

	assert_int_equal(cprxfer_opts_set_tag(lo, "kv-2"), 0);
	assert_int_equal(cprxfer_opts_set_tag(co, "kv-1"), 0);
	snprintf(path, sizeof(path), "%s/tag.sock", dir);
	assert_int_equal(cprxfer_listen_opts(path, lo, &l), 0);
	assert_int_equal(cprxfer_connect_start(path, 1000, co, &ch), 0);
	for (n = 0; n < 1000 && rc == -EAGAIN; n++) {
		if (a == -EAGAIN)
			a = cprxfer_accept(l, 0, &in);
		rc = cprxfer_connect_step(ch);
	}
	assert_int_equal(rc, -EBADE);
	assert_non_null(strstr(cprxfer_errmsg(), "kv-2"));
	assert_null(in);
	assert_quiet(ch);
	cprxfer_channel_close(ch);
	cprxfer_listener_close(l);
	cprxfer_opts_free(lo);
	cprxfer_opts_free(co);
}

/* ---- the deadline --------------------------------------------------- */

static void test_connect_step_deadline_without_listener(void **u)
{
	cprxfer_channel *ch = NULL;
	char path[108];
	struct run r;
	int64_t t0 = tu_now_ms();

	snprintf(path, sizeof(path), "%s/nobody/deeper/x.sock", dir);
	assert_int_equal(cprxfer_connect_start(path, 300, NULL, &ch), 0);
	loop(ch, &r);
	print_message(
		"no listener, 300 ms deadline: -ETIMEDOUT after %lld ms (%lld ms from start), %d wakeups, %lld us CPU: %s\n",
		(long long)r.ms, (long long)(r.end_ms - t0), r.wakeups,
		(long long)r.cpu_us, cprxfer_errmsg());
	assert_int_equal(r.rc, -ETIMEDOUT);
	assert_non_null(strstr(cprxfer_errmsg(), "nobody listened on"));
	assert_true(r.end_ms - t0 >= 299);	 /* ms truncated */
	assert_true(r.end_ms - t0 <= 300 + 100); /* 20 ms unloaded */
	assert_true(r.wakeups <= 2);
	assert_true(r.cpu_us < 20000);
	/* Failed: the same again, the fd quiet, other calls refused. */
	assert_int_equal(cprxfer_connect_step(ch), -ETIMEDOUT);
	assert_quiet(ch);
	assert_int_equal(cprxfer_wait_ack(ch, 0), -EPIPE);
	cprxfer_channel_close(ch);
}

/* ---- a full backlog ------------------------------------------------ */

/* A listener that never accepts, its backlog filled: fds in *fill. */
static int full_listener(const char *path, int *fill, int nfill, int *n)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(lfd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 0), 0);
	for (*n = 0; *n < nfill; (*n)++) {
		fill[*n] = socket(
			AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		assert_true(fill[*n] >= 0);
		if (connect(fill[*n], (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			assert_int_equal(errno, EAGAIN);
			close(fill[*n]);
			break;
		}
	}
	assert_true(*n < nfill);
	return lfd;
}

/*
 * Nothing to poll for a full backlog: retried at 1, 2, 4 ... 50 ms, so
 * a few wakeups, not a spin; a slot that frees up is taken.
 */
static void test_connect_step_full_backlog_retries_few_times(void **u)
{
	cprxfer_channel *ch = NULL;
	char path[108];
	int fill[16], n, lfd, fd, i;
	struct run r;

	snprintf(path, sizeof(path), "%s/full.sock", dir);
	lfd = full_listener(path, fill, 16, &n);
	assert_int_equal(cprxfer_connect_start(path, 300, NULL, &ch), 0);
	loop(ch, &r);
	print_message(
		"full backlog, 300 ms deadline: %d after %lld ms, %d wakeups, %lld us CPU: %s\n",
		r.rc, (long long)r.ms, r.wakeups, (long long)r.cpu_us,
		cprxfer_errmsg());
	assert_int_equal(r.rc, -ETIMEDOUT);
	assert_non_null(strstr(cprxfer_errmsg(), "backlog stayed full"));
	assert_true(r.wakeups <= 20);
	assert_true(r.cpu_us < 30000);
	cprxfer_channel_close(ch);

	/* A slot frees up: the next retry connects; the handshake waits. */
	assert_int_equal(cprxfer_connect_start(path, 5000, NULL, &ch), 0);
	assert_int_equal(cprxfer_connect_step(ch), -EAGAIN);
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	assert_true(fd >= 0);
	for (i = 0; i < 100; i++) {
		struct pollfd p = { .fd = cprxfer_channel_fd(ch),
				    .events = POLLIN };

		assert_int_equal(poll(&p, 1, 5000), 1);
		assert_int_equal(cprxfer_connect_step(ch), -EAGAIN);
		if (strstr(cprxfer_errmsg(), "in the handshake"))
			break;
	}
	assert_non_null(strstr(cprxfer_errmsg(), "in the handshake"));
	cprxfer_channel_close(ch);
	close(fd);
	while (n-- > 0)
		close(fill[n]);
	close(lfd);
	unlink(path);
}

/* ---- what fails at once --------------------------------------------- */

static void test_connect_step_regular_file_fails_at_once(void **u)
{
	cprxfer_channel *ch = NULL;
	char path[108];
	int64_t t0;
	int fd;

	snprintf(path, sizeof(path), "%s/file", dir);
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	close(fd);
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_connect_start(path, 5000, NULL, &ch),
			 -ENOTSOCK);
	assert_true(tu_now_ms() - t0 < 100);
	assert_null(ch);
	assert_non_null(strstr(cprxfer_errmsg(), "a regular file"));
	unlink(path);

	assert_int_equal(cprxfer_connect_start("", 5000, NULL, &ch), -EINVAL);
	assert_int_equal(cprxfer_connect_start(NULL, 5000, NULL, &ch), -EINVAL);
	assert_int_equal(cprxfer_connect_step(NULL), -EINVAL);
	assert_null(ch);
}

/* ---- while connecting ----------------------------------------------- */

static void test_connect_step_other_calls_einprogress(void **u)
{
	cprxfer_channel *ch = NULL;
	cprxfer_state *st = cprxfer_state_new(), *got = NULL;
	char path[108];
	pid_t pid;

	snprintf(path, sizeof(path), "%s/later.sock", dir);
	assert_int_equal(cprxfer_connect_start(path, 5000, NULL, &ch), 0);
	assert_true(cprxfer_channel_fd(ch) >= 0);
	assert_int_equal(cprxfer_connect_step(ch), -EAGAIN);
	assert_int_equal(cprxfer_save(ch, st), -EINPROGRESS);
	assert_non_null(strstr(cprxfer_errmsg(), "cprxfer_save"));
	assert_non_null(strstr(cprxfer_errmsg(), "still connecting"));
	assert_int_equal(cprxfer_load(ch, &got), -EINPROGRESS);
	assert_int_equal(cprxfer_wait_ack(ch, 0), -EINPROGRESS);
	assert_int_equal(cprxfer_ack(ch, 0, NULL), -EINPROGRESS);
	assert_int_equal(cprxfer_commit(ch), -EINPROGRESS);
	assert_int_equal(cprxfer_abort(ch, NULL), -EINPROGRESS);
	assert_int_equal(cprxfer_wait_commit(ch, 0), -EINPROGRESS);
	assert_int_equal(cprxfer_channel_peer(ch, &pid, NULL, NULL),
			 -EINPROGRESS);
	assert_int_equal(cprxfer_channel_set_timeout(ch, 100), -EINPROGRESS);
	assert_null(got);
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
}

/*
 * Close while waiting for the path, and while in the handshake with a
 * listener that never answers: no fd left (the fixture counts them).
 */
static void test_connect_step_close_mid_connect_leaves_nothing(void **u)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	cprxfer_channel *ch = NULL;
	char path[108];
	int lfd, fd;

	snprintf(path, sizeof(path), "%s/gone/x.sock", dir);
	assert_int_equal(cprxfer_connect_start(path, 5000, NULL, &ch), 0);
	assert_true(cprxfer_channel_fd(ch) >= 0);
	assert_int_equal(cprxfer_connect_step(ch), -EAGAIN);
	cprxfer_channel_close(ch);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/mute.sock", dir);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(lfd >= 0);
	assert_int_equal(bind(lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(lfd, 4), 0);
	ch = NULL;
	assert_int_equal(cprxfer_connect_start(sa.sun_path, 5000, NULL, &ch),
			 0);
	assert_true(cprxfer_channel_fd(ch) >= 0);
	assert_int_equal(cprxfer_connect_step(ch), -EAGAIN);
	cprxfer_channel_close(ch);
	/* The listener sees a peer that closed without a word. */
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	assert_true(fd >= 0);
	{
		char b[64];
		ssize_t n = read(fd, b, sizeof(b));

		/* Our HELLO may have left before the close; then EOF. */
		assert_true(n >= 0);
		if (n > 0)
			assert_int_equal(read(fd, b, sizeof(b)), 0);
	}
	close(fd);
	close(lfd);
	unlink(sa.sun_path);
}

/* ---- the successor -------------------------------------------------- */

/* valgrind 3.19 does not know pidfd_open(): cprxfer_spawn is -ENOSYS. */
static cprxfer_successor *spawn(const char *mode)
{
	cprxfer_successor *s = NULL;
	char *argv[] = { target, (char *)mode, NULL };
	int rc = cprxfer_spawn(target, argv, NULL, NULL, &s);

	if (rc == -ENOSYS && getenv("CPRXFER_UNDER_VALGRIND")) {
		print_message("skipped: valgrind does not know pidfd_open\n");
		skip();
	}
	assert_int_equal(rc, 0);
	return s;
}

static void assert_reaped(pid_t pid)
{
	assert_int_equal(waitpid(pid, NULL, WNOHANG), -1);
	assert_int_equal(errno, ECHILD);
}

static void test_connect_step_successor_crash_ends_at_once(void **u)
{
	cprxfer_successor *s = spawn("crash");
	cprxfer_channel *ch = NULL;
	pid_t pid = cprxfer_successor_pid(s);
	int64_t t0 = tu_now_ms(), dead = 0, c0 = tu_cpu_us();
	int rc, fd, wakeups = 0;

	rc = cprxfer_successor_channel_start(s, &ch);
	if (rc == -ECHILD) {
		/* Dead before the start: it says so at once. */
		print_message("successor crash: dead before the start: %s\n",
			      cprxfer_errmsg());
		assert_null(ch);
		assert_non_null(
			strstr(cprxfer_errmsg(), "killed by signal 11"));
		cprxfer_successor_free(s);
		assert_reaped(pid);
		return;
	}
	assert_int_equal(rc, 0);
	fd = cprxfer_channel_fd(ch);
	assert_true(fd >= 0);
	/* The loop also watches the pidfd, only to note when it died. */
	while ((rc = cprxfer_connect_step(ch)) == -EAGAIN) {
		struct pollfd p[2] = {
			{ .fd = fd, .events = POLLIN },
			{ .fd = cprxfer_successor_pidfd(s), .events = POLLIN },
		};

		assert_true(poll(p, dead ? 1 : 2, 20000) >= 1);
		if (!dead && p[1].revents)
			dead = tu_now_ms();
		if (p[0].revents)
			wakeups++;
		assert_true(wakeups < 1000);
	}
	if (!dead)
		dead = tu_now_ms(); /* seen dead by the step itself */
	print_message(
		"successor crash: -ECHILD %lld ms after its death (%lld ms after the start), %d wakeups, %lld us CPU: %s\n",
		(long long)(tu_now_ms() - dead), (long long)(tu_now_ms() - t0),
		wakeups, (long long)(tu_cpu_us() - c0), cprxfer_errmsg());
	assert_int_equal(rc, -ECHILD);
	assert_true(tu_now_ms() - dead < 50);
	assert_true(wakeups <= 4);
	assert_non_null(strstr(cprxfer_errmsg(), "killed by signal 11"));
	assert_non_null(strstr(cprxfer_errmsg(), "cprxfer_successor_channel"));
	cprxfer_channel_close(ch);
	/* Its socket is spent. */
	assert_int_equal(cprxfer_successor_channel_start(s, &ch), -EALREADY);
	cprxfer_successor_free(s);
	assert_reaped(pid);
}

/* A successor that takes the channel: the handshake completes in steps. */
static void test_connect_step_successor_handshake(void **u)
{
	cprxfer_successor *s = spawn("hang");
	cprxfer_channel *ch = NULL;
	pid_t pid = cprxfer_successor_pid(s), peer = 0;
	struct run r;

	assert_int_equal(cprxfer_successor_channel_start(s, &ch), 0);
	loop(ch, &r);
	print_message("successor handshake: %lld ms, %d wakeups\n",
		      (long long)r.ms, r.wakeups);
	assert_int_equal(r.rc, 0);
	/* A socketpair's peer credentials name its maker: this process. */
	assert_int_equal(cprxfer_channel_peer(ch, &peer, NULL, NULL), 0);
	assert_int_equal(peer, getpid());
	assert_quiet(ch);
	cprxfer_channel_close(ch);
	cprxfer_successor_free(s);
	assert_reaped(pid);
}

/* Close mid-handshake, then free: no fd, no zombie. */
static void test_connect_step_successor_close_mid_handshake(void **u)
{
	cprxfer_successor *s = spawn("hang");
	cprxfer_channel *ch = NULL;
	pid_t pid = cprxfer_successor_pid(s);

	assert_int_equal(cprxfer_successor_channel_start(s, &ch), 0);
	assert_true(cprxfer_channel_fd(ch) >= 0);
	assert_int_equal(cprxfer_wait_ack(ch, 0), -EINPROGRESS);
	cprxfer_channel_close(ch);
	cprxfer_successor_free(s);
	assert_reaped(pid);
}

static int setup_dir(void **state)
{
	dir = tu_tmpdir();
	snprintf(target, sizeof(target), "%s/successor-target",
		 CX_TEST_BUILDDIR);
	return dir ? 0 : -1;
}

static int teardown_dir(void **state)
{
	tu_rmdir(dir);
	free(dir);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_connect_step_listener_late_does_not_spin),
		tu_test(test_connect_step_listener_present),
		tu_test(test_connect_step_deadline_without_listener),
		tu_test(test_connect_step_tag_mismatch_fails_in_step),
		tu_test(test_connect_step_full_backlog_retries_few_times),
		tu_test(test_connect_step_regular_file_fails_at_once),
		tu_test(test_connect_step_other_calls_einprogress),
		tu_test(test_connect_step_close_mid_connect_leaves_nothing),
		tu_test(test_connect_step_successor_crash_ends_at_once),
		tu_test(test_connect_step_successor_handshake),
		tu_test(test_connect_step_successor_close_mid_handshake),
	};

	if (getenv("CX_TEST_FILTER"))
		cmocka_set_test_filter(getenv("CX_TEST_FILTER"));
	return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
