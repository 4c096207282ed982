/* SPDX-License-Identifier: MIT */
/*
 * The ack wait and the decision wait in an event loop: poll() on
 * cprxfer_channel_fd(), then a non-blocking step (timeout 0). Neither
 * side's loop ever blocks in the library: the longest step is measured,
 * and so is the CPU the loops burn while the peer takes its time.
 * With a spawned successor the fd also becomes readable when it dies.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"

static char target[512];

struct loop_stats {
	int64_t max_step_us; /* longest single non-blocking step */
	int steps;	     /* steps taken (the loop's wake-ups) */
	int64_t cpu_us;	     /* CPU burnt by the whole loop */
	int rc;		     /* what the last step returned */
};

/*
 * An event loop of one fd: poll it with a 20 ms tick (the other work a
 * server's loop would do), step whenever it wakes, until the step says
 * something other than "not yet".
 */
static void run_loop(cprxfer_channel *ch, int (*step)(cprxfer_channel *),
		     struct loop_stats *s)
{
	int64_t cpu0 = tu_cpu_us();
	struct pollfd p = { .fd = cprxfer_channel_fd(ch), .events = POLLIN };

	memset(s, 0, sizeof(*s));
	s->rc = -EAGAIN;
	/* Step once first: something may be buffered already. */
	while (s->rc == -EAGAIN) {
		int64_t t0 = tu_now_us(), d;

		s->rc = step(ch);
		d = tu_now_us() - t0;
		if (d > s->max_step_us)
			s->max_step_us = d;
		s->steps++;
		if (s->rc == -EAGAIN)
			poll(&p, 1, 20);
	}
	s->cpu_us = tu_cpu_us() - cpu0;
}

static int ack_step(cprxfer_channel *ch)
{
	return cprxfer_wait_ack(ch, 0);
}

static int commit_step(cprxfer_channel *ch)
{
	return cprxfer_wait_commit(ch, 0);
}

static void msleep(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0)
		;
}

struct child {
	int sock;
	struct loop_stats *stats; /* shared with the parent */
};

/* Incoming: load, take 300 ms to ack, then wait for the decision in a loop. */
static int incoming(void *arg)
{
	struct child *c = arg;
	cprxfer_channel *ch;
	cprxfer_state *st;

	if (cprxfer_channel_open(c->sock, &ch) < 0 || cprxfer_load(ch, &st) < 0)
		return 10;
	msleep(300);
	if (cprxfer_ack(ch, 0, NULL) < 0)
		return 11;
	run_loop(ch, commit_step, c->stats);
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return c->stats->rc == 0 ? 0 : 12;
}

static void test_ack_and_commit_waits_never_block_the_loop(void **u)
{
	struct loop_stats *in = mmap(NULL, sizeof(*in), PROT_READ | PROT_WRITE,
				     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	struct loop_stats out;
	struct child c = { .stats = in };
	cprxfer_state *st;
	cprxfer_channel *ch;
	int sv[2];
	pid_t pid;

	assert_true(in != MAP_FAILED);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	c.sock = sv[1];
	pid = tu_fork(incoming, &c);
	close(sv[1]);
	/* Made after the fork: the child owns no copy of it. */
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);
	/* Without a successor, the fd is the channel's socket. */
	assert_true(cprxfer_channel_fd(ch) >= 0);
	assert_int_equal(cprxfer_channel_fd(NULL), -EINVAL);
	cprxfer_put_u64(st, "counter", 42);
	assert_int_equal(cprxfer_save(ch, st), 0);
	run_loop(ch, ack_step, &out);
	assert_int_equal(out.rc, 0);
	/* The incoming side's loop waits while we take 200 ms to decide. */
	msleep(200);
	assert_int_equal(cprxfer_commit(ch), 0);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	print_message(
		"ack wait (300 ms): %d steps, longest %lld us, %lld us CPU; decision wait (200 ms): %d steps, longest %lld us, %lld us CPU\n",
		out.steps, (long long)out.max_step_us, (long long)out.cpu_us,
		in->steps, (long long)in->max_step_us, (long long)in->cpu_us);
	/* Each step is a look, not a wait; the loops sleep in poll(). */
	assert_true(out.max_step_us < 20000 && in->max_step_us < 20000);
	assert_true(out.steps >= 2 && in->steps >= 2);
	assert_true(out.cpu_us < 100000 && in->cpu_us < 100000);
	cprxfer_state_free(st);
	munmap(in, sizeof(*in));
}

/* A spawned successor's death wakes the loop, and the step says so. */
static void test_channel_fd_wakes_when_successor_dies(void **u)
{
	char *argv[] = { target, "load-crash", NULL };
	cprxfer_successor *s;
	cprxfer_state *st = cprxfer_state_new();
	cprxfer_channel *ch;
	struct loop_stats out;
	int64_t t0;
	int rc = cprxfer_spawn(target, argv, NULL, NULL, &s);

	if (rc == -ENOSYS && getenv("CPRXFER_UNDER_VALGRIND")) {
		cprxfer_state_free(st);
		print_message("skipped: valgrind does not know pidfd_open\n");
		skip();
	}
	assert_int_equal(rc, 0);
	assert_int_equal(cprxfer_successor_channel(s, &ch), 0);
	/* An epoll fd holding the socket and the successor's pidfd. */
	assert_true(cprxfer_channel_fd(ch) >= 0);
	assert_int_equal(cprxfer_channel_fd(ch), cprxfer_channel_fd(ch));
	cprxfer_put_u64(st, "counter", 42);
	assert_int_equal(cprxfer_save(ch, st), 0);
	t0 = tu_now_ms();
	run_loop(ch, ack_step, &out);
	print_message("successor crash seen by the loop after %lld ms: %s\n",
		      (long long)(tu_now_ms() - t0), cprxfer_errmsg());
	assert_int_equal(out.rc, -ECHILD);
	assert_true(out.max_step_us < 20000 * 60);
	cprxfer_channel_close(ch);
	cprxfer_successor_free(s);
	cprxfer_state_free(st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_ack_and_commit_waits_never_block_the_loop),
		tu_test(test_channel_fd_wakes_when_successor_dies),
	};

	snprintf(target, sizeof(target), "%s/successor-target",
		 CX_TEST_BUILDDIR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
