/* SPDX-License-Identifier: MIT */
/*
 * Exactly one owner after every outcome of a transfer-mode handoff.
 *
 * The outgoing side decides (cprxfer_commit / cprxfer_abort, or closes
 * undecided, which aborts); the incoming side acks ready and then
 * learns the decision from cprxfer_wait_commit. The race test drives
 * the incoming side's ack and the outgoing side's wait_ack timeout into
 * the same millisecond 2,000 times and counts owners in shared memory:
 * exactly one every time. The other tests give each outcome its own
 * code: commit 0, abort -ECANCELED with the reason, death -EOWNERDEAD,
 * a live peer that closed -ECONNRESET, no decision yet -ETIMEDOUT.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "channel.h"
#include "testutil.h"

static void spin_until(int64_t t)
{
	while (tu_now_ns() < t)
		;
}

static cprxfer_state *small_state(void)
{
	cprxfer_state *st = cprxfer_state_new();

	cprxfer_put_u64(st, "counter", 42);
	cprxfer_put_str(st, "name", "decide");
	return st;
}

/* ---- the race ------------------------------------------------------- */

#define RACE_ITER      2000
#define RACE_ACK_MS    2
#define RACE_JITTER_NS 150000

struct race {
	int owners;	   /* processes that own the workload afterwards */
	int outcome;	   /* 'C' commit, 'A' abort */
	int child_rc;	   /* wait_commit's return */
	int acked;	   /* the incoming side's ready ack went out */
	int64_t ack_ns;	   /* when the incoming side sent its ack */
	int64_t expire_ns; /* when the outgoing side's wait_ack expires */
};

struct race_child {
	int sock;
	int64_t delay_ns;
	struct race *r;
	cprxfer_state *inherited; /* the parent's state, copied by fork */
};

/* The incoming side: load, ack ready after delay_ns, learn the verdict. */
static int race_incoming(void *arg)
{
	struct race_child *c = arg;
	cprxfer_channel *ch;
	cprxfer_state *st;
	int rc;

	/* Not ours to use: free the copy, so that no leak checker sees it. */
	cprxfer_state_free(c->inherited);
	if (cprxfer_channel_open(c->sock, &ch) < 0 || cprxfer_load(ch, &st) < 0)
		return 10;
	spin_until(tu_now_ns() + c->delay_ns);
	c->r->ack_ns = tu_now_ns();
	if (cprxfer_ack(ch, 0, NULL) < 0)
		return 11;
	c->r->acked = 1;
	rc = cprxfer_wait_commit(ch, 5000);
	c->r->child_rc = rc;
	if (rc == 0)
		__atomic_fetch_add(&c->r->owners, 1, __ATOMIC_SEQ_CST);
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return rc == 0 || rc == -ECANCELED ? 0 : 12;
}

static void test_ack_timeout_race_has_one_owner(void **unused)
{
	struct race *r =
		mmap(NULL, sizeof(*r) * RACE_ITER, PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cprxfer_state *st = small_state();
	int64_t delay = RACE_ACK_MS * 1000000ll, t_start = tu_now_ns();
	int commits = 0, aborts = 0, close_calls = 0, i;
	int iter = getenv("CPRXFER_UNDER_VALGRIND") ? 100 : RACE_ITER;

#ifdef __SANITIZE_ADDRESS__
	iter = 500; /* a fork of a sanitized process costs ~50 ms */
#endif
	assert_true(r != MAP_FAILED);
	srand(11);

	for (i = 0; i < iter; i++) {
		struct race_child c = { .r = &r[i], .inherited = st };
		cprxfer_channel *ch;
		int sv[2], rc, owner;
		pid_t pid;

		assert_int_equal(
			socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			0);
		c.sock = sv[1];
		c.delay_ns = delay + (rand() % (2 * RACE_JITTER_NS)) -
			     RACE_JITTER_NS;
		if (c.delay_ns < 0)
			c.delay_ns = 0;
		pid = tu_fork(race_incoming, &c);
		close(sv[1]);
		assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);
		assert_int_equal(cprxfer_save(ch, st), 0);
		r[i].expire_ns = tu_now_ns() + RACE_ACK_MS * 1000000ll;
		rc = cprxfer_wait_ack(ch, RACE_ACK_MS);
		if (rc == 0) {
			/* Acked in time: commit, and never resume. */
			owner = cprxfer_commit(ch) < 0;
		} else {
			assert_int_equal(rc, -ETIMEDOUT);
			/* Late: abort and resume, or just close (aborts). */
			if (i % 2)
				assert_int_equal(
					cprxfer_abort(ch, "ack came too late"),
					0);
			else
				close_calls++;
			owner = 1;
		}
		cprxfer_channel_close(ch);
		if (owner)
			__atomic_fetch_add(&r[i].owners, 1, __ATOMIC_SEQ_CST);
		assert_int_equal(tu_wait(pid), 0);
		if (r[i].owners != 1)
			print_message("iteration %d: %d owners (child %d)\n", i,
				      r[i].owners, r[i].child_rc);
		assert_int_equal(r[i].owners, 1);
		r[i].outcome = rc == 0 && !owner ? 'C' : 'A';
		if (r[i].outcome == 'C') {
			commits++;
			delay += 20000; /* acked in time: ack later */
		} else {
			aborts++;
			delay -= 20000;
		}
		/* A machine under heavy load: stop before the test timeout. */
		if (tu_now_ns() - t_start > 80 * 1000000000ll && i >= 500) {
			print_message("stopping early: 80 s elapsed\n");
			iter = i + 1;
		}
	}
	{
		int near = 0, late_acks = 0;

		for (i = 0; i < iter; i++) {
			near += llabs(r[i].ack_ns - r[i].expire_ns) < 1000000;
			/* Without a decision both of these would resume. */
			late_acks += r[i].outcome == 'A' && r[i].acked;
		}
		print_message(
			"%d iterations: %d commits, %d aborts (%d by close); owners == 1 in every one; ack within 1 ms of the timeout in %d; acked after the timeout (two owners without the decision) in %d\n",
			iter, commits, aborts, close_calls, near, late_acks);
	}
	cprxfer_state_free(st);
	munmap(r, sizeof(*r) * RACE_ITER);
}

/* ---- one outcome at a time ------------------------------------------ */

struct incoming {
	int sock;
	int wait_ms;
	int expect;
	const char *reason; /* expected in errmsg, or NULL */
};

/* Incoming: load, ack, wait for the decision; 0 if it is c->expect. */
static int incoming(void *arg)
{
	struct incoming *c = arg;
	cprxfer_channel *ch;
	cprxfer_state *st;
	int rc;

	if (cprxfer_channel_open(c->sock, &ch) < 0 || cprxfer_load(ch, &st) < 0)
		return 10;
	/* Before the ack, there is nothing to wait for. */
	if (cprxfer_wait_commit(ch, 0) != -EINVAL)
		return 11;
	if (cprxfer_ack(ch, 0, NULL) < 0)
		return 12;
	rc = cprxfer_wait_commit(ch, c->wait_ms);
	if (rc != c->expect) {
		fprintf(stderr, "incoming: wait_commit %d (%s), expected %d\n",
			rc, cprxfer_errmsg(), c->expect);
		return 13;
	}
	if (c->reason && !strstr(cprxfer_errmsg(), c->reason)) {
		fprintf(stderr, "incoming: reason '%s'\n", cprxfer_errmsg());
		return 14;
	}
	/* The verdict stays. */
	if (rc == 0 && cprxfer_wait_commit(ch, 0) != 0)
		return 15;
	if (rc == -ECANCELED && cprxfer_wait_commit(ch, 0) != -ECANCELED)
		return 16;
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return 0;
}

/* Start the incoming side on a socketpair; the outgoing channel. */
static cprxfer_channel *start(struct incoming *c, pid_t *pid)
{
	cprxfer_channel *ch;
	cprxfer_state *st = small_state();
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	c->sock = sv[1];
	*pid = tu_fork(incoming, c);
	close(sv[1]);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);
	assert_int_equal(cprxfer_save(ch, st), 0);
	cprxfer_state_free(st);
	return ch;
}

static void test_commit_reaches_incoming(void **unused)
{
	struct incoming c = { .wait_ms = 5000, .expect = 0 };
	cprxfer_channel *ch;
	pid_t pid;

	ch = start(&c, &pid);
	/* No commit before the ready ack. */
	assert_int_equal(cprxfer_commit(ch), -EINVAL);
	assert_int_equal(cprxfer_wait_ack(ch, 5000), 0);
	assert_int_equal(cprxfer_commit(ch), 0);
	/* Decided: nothing else goes, and no abort after a commit. */
	assert_int_equal(cprxfer_commit(ch), -EALREADY);
	assert_int_equal(cprxfer_abort(ch, "too late"), -EALREADY);
	assert_int_equal(cprxfer_wait_ack(ch, 0), -EALREADY);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
}

static void test_abort_carries_reason(void **unused)
{
	struct incoming c = { .wait_ms = 5000,
			      .expect = -ECANCELED,
			      .reason = "operator cancelled" };
	cprxfer_channel *ch;
	pid_t pid;

	ch = start(&c, &pid);
	assert_int_equal(cprxfer_wait_ack(ch, 5000), 0);
	assert_int_equal(cprxfer_abort(ch, "operator cancelled"), 0);
	assert_int_equal(cprxfer_abort(ch, NULL), 0);
	assert_int_equal(cprxfer_commit(ch), -EALREADY);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
}

static void test_close_undecided_aborts(void **unused)
{
	struct incoming c = { .wait_ms = 5000,
			      .expect = -ECANCELED,
			      .reason = "without committing" };
	cprxfer_channel *ch;
	pid_t pid;

	ch = start(&c, &pid);
	assert_int_equal(cprxfer_wait_ack(ch, 5000), 0);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
}

/* An abort before the ack ends the incoming side's next load. */
static int load_twice(void *arg)
{
	struct incoming *c = arg;
	cprxfer_channel *ch;
	cprxfer_state *st, *st2 = NULL;
	int rc;

	if (cprxfer_channel_open(c->sock, &ch) < 0 || cprxfer_load(ch, &st) < 0)
		return 10;
	if (cprxfer_ack(ch, 0, NULL) < 0)
		return 11;
	rc = cprxfer_load(ch, &st2);
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return rc == -ECANCELED && !st2 ? 0 : 12;
}

static void test_abort_between_rounds_ends_load(void **unused)
{
	struct incoming c = { 0 };
	cprxfer_channel *ch;
	cprxfer_state *st = small_state();
	int sv[2];
	pid_t pid;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	c.sock = sv[1];
	pid = tu_fork(load_twice, &c);
	close(sv[1]);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 5000), 0);
	assert_int_equal(cprxfer_abort(ch, "prepare round only"), 0);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_state_free(st);
}

/* Here the test is the incoming side; the child decides 300 ms late. */
static void test_wait_commit_times_out_then_completes(void **unused)
{
	cprxfer_channel *ch;
	pid_t pid;

	{
		int sv[2], rc;
		cprxfer_state *st;
		int64_t t0;

		assert_int_equal(
			socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			0);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			cprxfer_state *s = small_state();
			struct timespec ts = { 0, 300 * 1000000 };

			close(sv[1]);
			if (cprxfer_channel_open(sv[0], &ch) < 0 ||
			    cprxfer_save(ch, s) < 0 ||
			    cprxfer_wait_ack(ch, 5000) < 0)
				_exit(10);
			nanosleep(&ts, NULL);
			_exit(cprxfer_commit(ch) < 0 ? 11 : 0);
		}
		close(sv[0]);
		assert_int_equal(cprxfer_channel_open(sv[1], &ch), 0);
		assert_int_equal(cprxfer_load(ch, &st), 0);
		assert_int_equal(cprxfer_ack(ch, 0, NULL), 0);
		t0 = tu_now_ms();
		assert_int_equal(cprxfer_wait_commit(ch, 0), -EAGAIN);
		assert_int_equal(cprxfer_wait_commit(ch, 50), -ETIMEDOUT);
		assert_true(tu_now_ms() - t0 < 250);
		do
			rc = cprxfer_wait_commit(ch, 100);
		while (rc == -ETIMEDOUT && tu_now_ms() - t0 < 5000);
		assert_int_equal(rc, 0);
		cprxfer_state_free(st);
		cprxfer_channel_close(ch);
		assert_int_equal(tu_wait(pid), 0);
	}
}

/*
 * The outgoing side connects by path (so the socket's peer is the
 * outgoing process itself), saves, waits for the ack, then dies or
 * closes without deciding.
 */
struct outgoing {
	char path[108];
	int how; /* 0: SIGKILL after the ack; 1: close the fd, stay alive */
};

static int outgoing(void *arg)
{
	struct outgoing *o = arg;
	cprxfer_state *st = small_state();
	cprxfer_channel *ch;

	if (cprxfer_connect(o->path, 5000, &ch) < 0 ||
	    cprxfer_save(ch, st) < 0 || cprxfer_wait_ack(ch, 5000) < 0)
		return 10;
	if (o->how == 0)
		raise(SIGKILL);
	/* Close the socket behind the library's back, and stay. */
	close(ch->io.fd);
	pause();
	return 11;
}

static void undecided(int how, int expect)
{
	struct outgoing o = { .how = how };
	cprxfer_listener *l;
	cprxfer_channel *ch;
	cprxfer_state *st;
	char *dir = tu_tmpdir();
	int64_t t0;
	pid_t pid;
	int rc;

	snprintf(o.path, sizeof(o.path), "%s/sock", dir);
	assert_int_equal(cprxfer_listen(o.path, &l), 0);
	pid = tu_fork(outgoing, &o);
	assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
	assert_int_equal(cprxfer_load(ch, &st), 0);
	assert_int_equal(cprxfer_ack(ch, 0, NULL), 0);
	t0 = tu_now_ms();
	do
		rc = cprxfer_wait_commit(ch, 5000);
	while (rc == -ETIMEDOUT && tu_now_ms() - t0 < 10000);
	print_message("wait_commit: %d after %lld ms: %s\n", rc,
		      (long long)(tu_now_ms() - t0), cprxfer_errmsg());
	assert_int_equal(rc, expect);
	/* The verdict stays. */
	assert_int_equal(cprxfer_wait_commit(ch, 0), expect);
	if (how)
		kill(pid, SIGKILL);
	assert_int_equal(tu_wait(pid), 128 + SIGKILL);
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	cprxfer_listener_close(l);
	tu_rmdir(dir);
	free(dir);
}

static void test_outgoing_death_is_ownerdead(void **unused)
{
	undecided(0, -EOWNERDEAD);
}

static void test_outgoing_alive_close_is_connreset(void **unused)
{
	undecided(1, -ECONNRESET);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_commit_reaches_incoming),
		tu_test(test_abort_carries_reason),
		tu_test(test_close_undecided_aborts),
		tu_test(test_abort_between_rounds_ends_load),
		tu_test(test_wait_commit_times_out_then_completes),
		tu_test(test_outgoing_death_is_ownerdead),
		tu_test(test_outgoing_alive_close_is_connreset),
		tu_test(test_ack_timeout_race_has_one_owner),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
