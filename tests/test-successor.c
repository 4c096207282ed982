/* SPDX-License-Identifier: MIT */
/*
 * The managed successor: cprxfer_spawn() starts tests/successor-target
 * with a pidfd and a connected socket (the only fd that crosses the
 * exec); a successor that dies ends the old side's wait at once with
 * -ECHILD and its exit status (077bcd1: the old side waited out its 10 s
 * timeout); rollback kills and reaps it; after a commit it is let go.
 * No zombie and no fd is left behind in any case.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"

static char target[512];

/* valgrind 3.19 does not know pidfd_open(): cprxfer_spawn is -ENOSYS. */
static void skip_without_pidfd(int rc, cprxfer_successor *s, int fd)
{
	if (rc == -ENOSYS && getenv("CPRXFER_UNDER_VALGRIND")) {
		close(fd);
		print_message("skipped: valgrind does not know pidfd_open\n");
		skip();
	}
	assert_int_equal(rc, 0);
	(void)s;
}

/* Start the target in mode; argv also lists fds that must not cross. */
static cprxfer_successor *spawn(const char *mode, int extra_fd)
{
	cprxfer_successor *s = NULL;
	char a[16] = "";
	char *argv[] = { target, (char *)mode, a, NULL };

	/* A close-on-exec fd of ours must not cross. */
	snprintf(a, sizeof(a), "%d", extra_fd);
	skip_without_pidfd(cprxfer_spawn(target, argv, NULL, NULL, &s), s,
			   extra_fd);
	assert_non_null(s);
	assert_non_null(s);
	return s;
}

/* Not our child any more: reaped, no zombie left. */
static void assert_reaped(pid_t pid)
{
	assert_int_equal(waitpid(pid, NULL, WNOHANG), -1);
	assert_int_equal(errno, ECHILD);
}

static cprxfer_state *small_state(void)
{
	cprxfer_state *st = cprxfer_state_new();

	cprxfer_put_u64(st, "counter", 42);
	return st;
}

/*
 * A successor that crashes before it takes the channel: the handshake
 * ends at once with -ECHILD and the signal, not after the 10 s timeout.
 */
static void test_successor_crash_before_handshake_ends_wait_at_once(void **u)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	cprxfer_successor *s = spawn("crash", efd);
	cprxfer_channel *ch = NULL;
	pid_t pid = cprxfer_successor_pid(s);
	int64_t t0 = tu_now_ms(), ms;

	assert_int_equal(cprxfer_successor_channel(s, &ch), -ECHILD);
	ms = tu_now_ms() - t0;
	print_message("crash before the handshake: -ECHILD after %lld ms: %s\n",
		      (long long)ms, cprxfer_errmsg());
	assert_null(ch);
	assert_true(ms < 1000); /* 50 ms and less unloaded; see the log */
	assert_non_null(strstr(cprxfer_errmsg(), "killed by signal 11"));
	/* Its socket is spent. */
	assert_int_equal(cprxfer_successor_channel(s, &ch), -EALREADY);
	cprxfer_successor_free(s);
	assert_reaped(pid);
	close(efd);
}

static void test_successor_exit_status_in_reason(void **u)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	cprxfer_successor *s = spawn("exit3", efd);
	cprxfer_channel *ch = NULL;
	pid_t pid = cprxfer_successor_pid(s);

	assert_int_equal(cprxfer_successor_channel(s, &ch), -ECHILD);
	assert_non_null(strstr(cprxfer_errmsg(), "exited with status 3"));
	cprxfer_successor_free(s);
	assert_reaped(pid);
	close(efd);
}

/* Dies after the handshake, while the old side waits for the ack. */
static void test_successor_crash_ends_wait_ack_at_once(void **u)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	cprxfer_successor *s = spawn("load-crash", efd);
	cprxfer_state *st = small_state();
	cprxfer_channel *ch;
	pid_t pid = cprxfer_successor_pid(s);
	int64_t t0, ms;

	assert_int_equal(cprxfer_successor_channel(s, &ch), 0);
	assert_int_equal(cprxfer_save(ch, st), 0);
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_wait_ack(ch, 10000), -ECHILD);
	ms = tu_now_ms() - t0;
	print_message("crash before the ack: -ECHILD after %lld ms: %s\n",
		      (long long)ms, cprxfer_errmsg());
	assert_true(ms < 1000);
	assert_non_null(strstr(cprxfer_errmsg(), "killed by signal 11"));
	/* Rollback: abort (nobody to tell), close, kill and reap. */
	assert_int_equal(cprxfer_abort(ch, "successor died"), 0);
	cprxfer_channel_close(ch);
	cprxfer_successor_free(s);
	assert_reaped(pid);
	cprxfer_state_free(st);
	close(efd);
}

/* Rollback of a live successor: kill and reap it. */
static void test_successor_kill_reaps(void **u)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	cprxfer_successor *s = spawn("hang", efd);
	cprxfer_channel *ch;
	pid_t pid = cprxfer_successor_pid(s);
	int pidfd = cprxfer_successor_pidfd(s);

	assert_true(pid > 0 && pidfd >= 0);
	assert_true(fcntl(pidfd, F_GETFD) == FD_CLOEXEC);
	assert_int_equal(cprxfer_successor_channel(s, &ch), 0);
	assert_int_equal(cprxfer_successor_kill(s), 0);
	assert_reaped(pid);
	/* Killed twice: nothing left to do. */
	assert_int_equal(cprxfer_successor_kill(s), 0);
	/* A wait on its channel now ends at once. */
	assert_int_equal(cprxfer_wait_ack(ch, 10000), -ECHILD);
	cprxfer_channel_close(ch);
	cprxfer_successor_free(s);
	close(efd);
}

/* Rollback by free alone, without a channel ever taken. */
static void test_successor_free_uncommitted_kills(void **u)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	cprxfer_successor *s = spawn("hang", efd);
	pid_t pid = cprxfer_successor_pid(s);

	cprxfer_successor_free(s);
	assert_reaped(pid);
	close(efd);
}

/* The whole handoff; after the commit the successor is let go. */
static void test_successor_commit_lets_it_go(void **u)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	cprxfer_successor *s = spawn("take", efd);
	cprxfer_state *st = small_state();
	cprxfer_channel *ch;
	pid_t pid = cprxfer_successor_pid(s);
	int status;

	assert_int_equal(cprxfer_successor_channel(s, &ch), 0);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 10000), 0);
	assert_int_equal(cprxfer_commit(ch), 0);
	cprxfer_successor_free(s); /* before the channel: fine too */
	cprxfer_channel_close(ch);
	/* Not killed: it exits 0 on its own; we reap it here. */
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	cprxfer_state_free(st);
	close(efd);
}

/* Abort: the successor exits without using anything (status 20). */
static void test_successor_abort(void **u)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	cprxfer_successor *s = spawn("take", efd);
	cprxfer_state *st = small_state();
	cprxfer_channel *ch;
	pid_t pid = cprxfer_successor_pid(s);
	siginfo_t si;

	assert_int_equal(cprxfer_successor_channel(s, &ch), 0);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 10000), 0);
	assert_int_equal(cprxfer_abort(ch, "changed my mind"), 0);
	/* Let it see the abort and exit before free kills it. */
	memset(&si, 0, sizeof(si));
	assert_int_equal(waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT), 0);
	assert_int_equal(si.si_code, CLD_EXITED);
	assert_int_equal(si.si_status, 20);
	cprxfer_channel_close(ch);
	cprxfer_successor_free(s);
	assert_reaped(pid);
	cprxfer_state_free(st);
	close(efd);
}

/*
 * A successor that listens on a path and crashes before it listens:
 * the connect ends at once, not after its 10 s (077bcd1: a plain
 * cprxfer_connect waited the whole timeout).
 */
static void test_successor_crash_before_listening_ends_connect_at_once(void **u)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	cprxfer_successor *s = spawn("crash", efd);
	cprxfer_channel *ch = NULL;
	pid_t pid = cprxfer_successor_pid(s);
	char *dir = tu_tmpdir(), path[256];
	int64_t t0 = tu_now_ms(), ms;

	snprintf(path, sizeof(path), "%s/never.sock", dir);
	assert_int_equal(cprxfer_successor_connect(s, path, 10000, &ch),
			 -ECHILD);
	ms = tu_now_ms() - t0;
	print_message("crash before listening: -ECHILD after %lld ms: %s\n",
		      (long long)ms, cprxfer_errmsg());
	assert_null(ch);
	assert_true(ms < 1000);
	assert_non_null(strstr(cprxfer_errmsg(), "killed by signal 11"));
	cprxfer_successor_free(s);
	assert_reaped(pid);
	tu_rmdir(dir);
	free(dir);
	close(efd);
}

/* The whole handoff by path, to a successor that listens. */
static void test_successor_connect_by_path(void **u)
{
	int efd = eventfd(0, EFD_CLOEXEC);
	char *dir, path[256];
	cprxfer_successor *s;
	cprxfer_state *st;
	cprxfer_channel *ch;
	pid_t pid;
	int status, probe;

	/* Nothing allocated yet if this skips. */
	probe = (int)syscall(SYS_pidfd_open, getpid(), 0);
	if (probe >= 0)
		close(probe);
	skip_without_pidfd(probe < 0 && errno == ENOSYS ? -ENOSYS : 0, NULL,
			   efd);
	dir = tu_tmpdir();
	st = small_state();
	snprintf(path, sizeof(path), "%s/successor.sock", dir);
	setenv("CX_TEST_LISTEN_PATH", path, 1);
	s = spawn("listen", efd);
	unsetenv("CX_TEST_LISTEN_PATH");
	pid = cprxfer_successor_pid(s);
	assert_int_equal(cprxfer_successor_connect(s, path, 10000, &ch), 0);
	assert_int_equal(cprxfer_successor_connect(s, path, 10000, &ch),
			 -EALREADY);
	assert_int_equal(cprxfer_successor_connect(NULL, path, 0, &ch),
			 -EINVAL);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 10000), 0);
	assert_int_equal(cprxfer_commit(ch), 0);
	cprxfer_channel_close(ch);
	cprxfer_successor_free(s);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	cprxfer_state_free(st);
	tu_rmdir(dir);
	free(dir);
	close(efd);
}

static void test_inherit_refuses_what_is_not_ours(void **u)
{
	cprxfer_channel *ch = NULL;
	int p[2];
	char v[16];

	unsetenv("CPRXFER_SUCCESSOR_FD");
	assert_int_equal(cprxfer_inherit(NULL, &ch), -ENOENT);
	assert_int_equal(cprxfer_inherit(NULL, NULL), -EINVAL);
	setenv("CPRXFER_SUCCESSOR_FD", "x1", 1);
	assert_int_equal(cprxfer_inherit(NULL, &ch), -EBADF);
	setenv("CPRXFER_SUCCESSOR_FD", "1000000", 1);
	assert_int_equal(cprxfer_inherit(NULL, &ch), -EBADF);
	/* Not a socket: refused, and left open. */
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	snprintf(v, sizeof(v), "%d", p[0]);
	setenv("CPRXFER_SUCCESSOR_FD", v, 1);
	assert_int_equal(cprxfer_inherit(NULL, &ch), -ENOTSOCK);
	assert_true(fcntl(p[0], F_GETFD) >= 0);
	assert_null(getenv("CPRXFER_SUCCESSOR_FD"));
	assert_null(ch);
	close(p[0]);
	close(p[1]);
}

static void test_spawn_bad_arguments(void **u)
{
	cprxfer_successor *s = NULL;
	char *argv[] = { "nope", NULL };
	int rc;

	/* valgrind runs posix_spawn's vfork as a fork: the child's exec
	 * failure is not seen, then pidfd_open is unknown to it. */
	rc = cprxfer_spawn("/nonexistent/successor", argv, NULL, NULL, &s);
	assert_int_equal(rc, getenv("CPRXFER_UNDER_VALGRIND") && rc == -ENOSYS
				     ? -ENOSYS
				     : -ENOENT);
	assert_null(s);
	assert_int_equal(cprxfer_spawn(NULL, argv, NULL, NULL, &s), -EINVAL);
	assert_int_equal(cprxfer_spawn(target, NULL, NULL, NULL, &s), -EINVAL);
	assert_int_equal(cprxfer_successor_pid(NULL), -EINVAL);
	assert_int_equal(cprxfer_successor_pidfd(NULL), -EINVAL);
	assert_int_equal(cprxfer_successor_kill(NULL), -EINVAL);
	assert_int_equal(cprxfer_successor_channel(NULL, NULL), -EINVAL);
	cprxfer_successor_free(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_successor_crash_before_handshake_ends_wait_at_once),
		tu_test(test_successor_exit_status_in_reason),
		tu_test(test_successor_crash_ends_wait_ack_at_once),
		tu_test(test_successor_kill_reaps),
		tu_test(test_successor_free_uncommitted_kills),
		tu_test(test_successor_commit_lets_it_go),
		tu_test(test_successor_abort),
		tu_test(test_successor_crash_before_listening_ends_connect_at_once),
		tu_test(test_successor_connect_by_path),
		tu_test(test_inherit_refuses_what_is_not_ours),
		tu_test(test_spawn_bad_arguments),
	};

	snprintf(target, sizeof(target), "%s/successor-target",
		 CX_TEST_BUILDDIR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
