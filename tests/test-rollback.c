/* SPDX-License-Identifier: MIT */
/*
 * The rollback guarantee, by fault injection. A two-phase handoff
 * (prepare: 300 memfds and a 2 MiB blob; final: values, an fd and a
 * 1 MiB blob) runs between two real processes; one of them is killed
 * with SIGKILL at each protocol step, or refuses, hangs or sends
 * garbage; after the final ack the outgoing side commits and the
 * incoming side waits for that decision, or learns that the outgoing
 * side died undecided. For every case the survivor must return a
 * specific error in
 * bounded time (well under a second with the 10 s default timeout),
 * leak no fd, and, when it is the outgoing side, still hold every fd
 * and value it had and run the whole handoff again successfully.
 *
 * Exact stopping points inside a stream come from the library's
 * internal I/O hook (cx_io_fault_hook, never exported): the victim
 * caps its sendmsg/recvmsg at a byte offset and kills itself there.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "channel.h"
#include "io.h"
#include "testutil.h"

#define NFD   300
#define PBLOB (2u << 20)
#define FBLOB (1u << 20)
/*
 * Offset inside the prepare stream that falls among the records of the
 * first fd batch: BEGIN (40) + two small records (66) + the FDS frame
 * (24) + 100 fd records of 29 bytes. The batch's 253 records end near
 * 7,500.
 */
#define FD_MID 3030

/* Where the victim dies, or how the incoming side misbehaves. */
enum point {
	NONE,
	AT_CONNECT,   /* connected, before sending HELLO */
	AT_HELLO,     /* HELLO exchanged, before the verdict */
	AT_HANDSHAKE, /* handshake done, before the first stream */
	AT_FDS,	      /* inside the first fd batch of the prepare stream */
	AT_BLOB,      /* inside the 2 MiB blob of the prepare stream */
	AT_DONE1,     /* prepare stream saved / loaded, before its ack */
	AT_ACK1,      /* prepare acked, before the final stream */
	AT_BLOB2,     /* inside the 1 MiB blob of the final stream */
	AT_DONE2,     /* final stream saved / loaded, before its ack */
	AT_ACK2,      /* final stream acked, before the decision */
	REFUSE,	      /* incoming refuses the final state */
	HANG,	      /* incoming stops before acking the final state */
	GARBAGE,      /* garbage instead of the next message */
	BADLOAD,      /* incoming's limits refuse the prepare stream */
};

static const char *const point_name[] = {
	"none",		"after connect",  "after hello",    "after handshake",
	"mid fd batch", "mid blob",	  "after stream 1", "after ack 1",
	"mid blob 2",	"after stream 2", "after ack 2",    "refusal",
	"hang",		"garbage",	  "load refused",
};

static char *dir;
static char path[108];
static int fds[NFD];
static ino_t inos[NFD];
static uint8_t *pblob, *fblob;
static cprxfer_state *prep, *fin;
static uint64_t hs_len, p_len, f_len; /* measured by calibrate() */

/* ---- the fault hook ------------------------------------------------- */

static struct {
	bool count;
	uint64_t tx, rx;
	uint64_t kill_tx, kill_rx; /* die on reaching this many bytes */
	int sends, kill_send;	   /* die before the kill_send'th send */
} hk;

static void fault_hook(int fd, int op, size_t *len)
{
	(void)fd;
	switch (op) {
	case CX_HOOK_SEND:
		if (hk.kill_send && ++hk.sends == hk.kill_send)
			raise(SIGKILL);
		if (hk.kill_tx && hk.tx + *len > hk.kill_tx)
			*len = (size_t)(hk.kill_tx - hk.tx);
		break;
	case CX_HOOK_SENT:
		hk.tx += *len;
		if (hk.kill_tx && hk.tx >= hk.kill_tx)
			raise(SIGKILL);
		break;
	case CX_HOOK_RECV:
		if (hk.kill_rx && hk.rx + *len > hk.kill_rx)
			*len = (size_t)(hk.kill_rx - hk.rx);
		break;
	case CX_HOOK_RECVD:
		hk.rx += *len;
		if (hk.kill_rx && hk.rx >= hk.kill_rx)
			raise(SIGKILL);
		break;
	}
}

static void hook_reset(void)
{
	memset(&hk, 0, sizeof(hk));
	cx_io_fault_hook = fault_hook;
}

/* ---- the states ----------------------------------------------------- */

static uint8_t pat(size_t i, unsigned salt)
{
	return (uint8_t)((i * 2654435761u + salt) >> 11);
}

static void make_states(void)
{
	char name[16], text[16];
	size_t i;

	pblob = malloc(PBLOB);
	fblob = malloc(FBLOB);
	assert_non_null(pblob);
	assert_non_null(fblob);
	for (i = 0; i < PBLOB; i++)
		pblob[i] = pat(i, 1);
	for (i = 0; i < FBLOB; i++)
		fblob[i] = pat(i, 2);
	prep = cprxfer_state_new();
	fin = cprxfer_state_new();
	assert_int_equal(cprxfer_put_u64(prep, "generation", 7), 0);
	assert_int_equal(cprxfer_put_str(prep, "name", "demo"), 0);
	for (i = 0; i < NFD; i++) {
		struct stat st;

		fds[i] = memfd_create("rollback", MFD_CLOEXEC);
		assert_true(fds[i] >= 0);
		snprintf(text, sizeof(text), "fd%03zu", i);
		assert_int_equal(pwrite(fds[i], text, 5, 0), 5);
		assert_int_equal(fstat(fds[i], &st), 0);
		inos[i] = st.st_ino;
		snprintf(name, sizeof(name), "fd%03zu", i);
		assert_int_equal(cprxfer_put_fd(prep, name, fds[i]), 0);
	}
	assert_int_equal(cprxfer_put_blob(prep, "ram", pblob, PBLOB), 0);
	assert_int_equal(cprxfer_put_u64(fin, "regs.rip", 0xfff0), 0);
	assert_int_equal(cprxfer_put_i64(fin, "clock", -5), 0);
	assert_int_equal(cprxfer_put_fd(fin, "console", fds[0]), 0);
	assert_int_equal(cprxfer_put_blob(fin, "dev", fblob, FBLOB), 0);
}

static void free_states(void)
{
	int i;

	cprxfer_state_free(prep);
	cprxfer_state_free(fin);
	for (i = 0; i < NFD; i++)
		close(fds[i]);
	free(pblob);
	free(fblob);
}

static bool fd_is(int fd, size_t i)
{
	char text[8], want[8];

	snprintf(want, sizeof(want), "fd%03zu", i);
	return pread(fd, text, 5, 0) == 5 && !memcmp(text, want, 5);
}

/* Is a loaded (or the original) prepare state what we sent? */
static bool prep_ok(const cprxfer_state *st)
{
	const void *b;
	const char *s;
	char name[16];
	uint64_t v;
	size_t len, i;
	int fd;

	if (cprxfer_get_u64(st, "generation", &v) < 0 || v != 7 ||
	    cprxfer_get_str(st, "name", &s) < 0 || strcmp(s, "demo") ||
	    cprxfer_get_blob(st, "ram", &b, &len) < 0 || len != PBLOB ||
	    memcmp(b, pblob, PBLOB))
		return false;
	for (i = 0; i < NFD; i++) {
		snprintf(name, sizeof(name), "fd%03zu", i);
		if (cprxfer_get_fd(st, name, &fd) < 0 || !fd_is(fd, i))
			return false;
	}
	return true;
}

static bool fin_ok(const cprxfer_state *st)
{
	const void *b;
	uint64_t v;
	int64_t c;
	size_t len;
	int fd;

	return cprxfer_get_u64(st, "regs.rip", &v) == 0 && v == 0xfff0 &&
	       cprxfer_get_i64(st, "clock", &c) == 0 && c == -5 &&
	       cprxfer_get_fd(st, "console", &fd) == 0 && fd_is(fd, 0) &&
	       cprxfer_get_blob(st, "dev", &b, &len) == 0 && len == FBLOB &&
	       !memcmp(b, fblob, FBLOB);
}

/* The outgoing side still has everything, the very same objects. */
static void assert_outgoing_intact(void)
{
	int i;

	for (i = 0; i < NFD; i++) {
		struct stat st;
		int fd;
		char name[16];

		snprintf(name, sizeof(name), "fd%03d", i);
		assert_int_equal(cprxfer_get_fd(prep, name, &fd), 0);
		assert_int_equal(fd, fds[i]);
		assert_int_equal(fstat(fd, &st), 0);
		assert_true(st.st_ino == inos[i]);
		assert_true(fd_is(fd, (size_t)i));
	}
	assert_true(prep_ok(prep));
	assert_true(fin_ok(fin));
}

/* ---- the two sides of the handoff ----------------------------------- */

struct run {
	int rc;	     /* first failure, or 0 */
	int step;    /* the call that returned it */
	int64_t ms;  /* how long that call took */
	pid_t reap;  /* survivor: reap this victim before an ack... */
	int reap_at; /* ...at this point (AT_DONE1 / AT_DONE2) */
};

enum {
	S_CONNECT = 1,
	S_SAVE1,
	S_ACK1,
	S_SAVE2,
	S_ACK2,
	S_DECIDE
};
static const char *const step_name[] = {
	"",	 "connect/accept", "save/load 1", "ack 1", "save/load 2",
	"ack 2", "decision",
};

static void junk(cprxfer_channel *ch)
{
	static const char j[64] = "this is not a cprxfer frame at all!";

	if (write(ch->io.fd, j, sizeof(j)) != sizeof(j))
		_exit(99);
}

#define CALL(r, s, expr)                     \
	do {                                 \
		int64_t t0_ = tu_now_ms();   \
		(r)->step = (s);             \
		(r)->rc = (expr);            \
		(r)->ms = tu_now_ms() - t0_; \
		if ((r)->rc < 0)             \
			goto out;            \
	} while (0)

static void reap(struct run *r, int point)
{
	if (r->reap > 0 && r->reap_at == point) {
		/* Make "the peer is gone" certain before the next call. */
		while (waitpid(r->reap, NULL, 0) < 0 && errno == EINTR)
			;
		r->reap = -1;
	}
}

/* The outgoing (old) process's handoff; kill: where to die, if victim. */
static void outgoing(int kill, int ack_ms, struct run *r)
{
	cprxfer_channel *ch = NULL;

	if (kill == AT_CONNECT)
		hk.kill_send = 1;
	if (kill == AT_HELLO)
		hk.kill_send = 2;
	CALL(r, S_CONNECT, cprxfer_connect(path, 5000, &ch));
	if (kill == AT_HANDSHAKE)
		raise(SIGKILL);
	if (kill == GARBAGE) {
		junk(ch);
		goto out;
	}
	if (kill == AT_FDS)
		hk.kill_tx = hk.tx + FD_MID;
	if (kill == AT_BLOB)
		hk.kill_tx = hk.tx + p_len / 2;
	CALL(r, S_SAVE1, cprxfer_save(ch, prep));
	if (kill == AT_DONE1)
		raise(SIGKILL);
	CALL(r, S_ACK1, cprxfer_wait_ack(ch, ack_ms));
	if (kill == AT_ACK1)
		raise(SIGKILL);
	if (kill == AT_BLOB2)
		hk.kill_tx = hk.tx + f_len / 2;
	CALL(r, S_SAVE2, cprxfer_save(ch, fin));
	if (kill == AT_DONE2)
		raise(SIGKILL);
	CALL(r, S_ACK2, cprxfer_wait_ack(ch, ack_ms));
	if (kill == AT_ACK2)
		raise(SIGKILL);
	CALL(r, S_DECIDE, cprxfer_commit(ch));
out:
	cprxfer_channel_close(ch);
}

/* The incoming (new) process's handoff on listener l. */
static void incoming(cprxfer_listener *l, int kill, int accept_ms,
		     struct run *r)
{
	cprxfer_channel *ch = NULL;
	cprxfer_state *st = NULL;
	uint64_t start;

	if (kill == AT_CONNECT)
		hk.kill_send = 1;
	if (kill == AT_HELLO)
		hk.kill_send = 2;
	CALL(r, S_CONNECT, cprxfer_accept(l, accept_ms, &ch));
	if (kill == AT_HANDSHAKE)
		raise(SIGKILL);
	/* The peer's handshake bytes equal ours: the stream starts there. */
	start = hk.tx;
	if (kill == AT_FDS)
		hk.kill_rx = start + FD_MID;
	if (kill == AT_BLOB)
		hk.kill_rx = start + p_len / 2;
	CALL(r, S_SAVE1, cprxfer_load(ch, &st));
	if (!prep_ok(st)) {
		r->rc = -EILSEQ;
		goto out;
	}
	cprxfer_state_free(st);
	st = NULL;
	if (kill == AT_DONE1)
		raise(SIGKILL);
	reap(r, AT_DONE1);
	CALL(r, S_ACK1, cprxfer_ack(ch, 0, NULL));
	if (kill == AT_ACK1)
		raise(SIGKILL);
	if (kill == AT_BLOB2)
		hk.kill_rx = start + p_len + f_len / 2;
	CALL(r, S_SAVE2, cprxfer_load(ch, &st));
	if (!fin_ok(st)) {
		r->rc = -EILSEQ;
		goto out;
	}
	if (kill == AT_DONE2)
		raise(SIGKILL);
	if (kill == HANG)
		raise(SIGSTOP);
	if (kill == GARBAGE) {
		junk(ch);
		goto out;
	}
	reap(r, AT_DONE2);
	CALL(r, S_ACK2,
	     kill == REFUSE ? cprxfer_ack(ch, -EBUSY, "not today: device busy")
			    : cprxfer_ack(ch, 0, NULL));
	if (kill == REFUSE)
		goto out;
	/* Ready: the state is ours only once the outgoing side commits. */
	CALL(r, S_DECIDE, cprxfer_wait_commit(ch, 10000));
out:
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
}

/* Child processes: a victim dies on its own; a healthy one exits 0. */
static int incoming_child(void *arg)
{
	int kill = (int)(intptr_t)arg;
	cprxfer_opts *o = cprxfer_opts_new();
	struct run r = { 0 };
	cprxfer_listener *l;

	hook_reset();
	if (kill == BADLOAD)
		cprxfer_opts_set_limit(o, CPRXFER_LIMIT_RECORD_BYTES, 1 << 20);
	if (cprxfer_listen_opts(path, o, &l) < 0)
		return 2;
	cprxfer_opts_free(o);
	incoming(l, kill, 5000, &r);
	cprxfer_listener_close(l);
	if (kill == BADLOAD)
		return r.rc == -EMSGSIZE ? 0 : 3;
	if (r.rc < 0)
		fprintf(stderr, "incoming child (%s): step %d: %s\n",
			point_name[kill], r.step, cprxfer_errmsg());
	return r.rc < 0 ? 4 : 0;
}

static int outgoing_child(void *arg)
{
	int kill = (int)(intptr_t)arg;
	struct run r = { 0 };

	hook_reset();
	outgoing(kill, 5000, &r);
	if (r.rc < 0)
		fprintf(stderr, "outgoing child (%s): step %d: %s\n",
			point_name[kill], r.step, cprxfer_errmsg());
	return r.rc < 0 ? 4 : 0;
}

static pid_t fork_incoming(int kill)
{
	pid_t pid = tu_fork(incoming_child, (void *)(intptr_t)kill);

	assert_true(pid > 0);
	return pid;
}

static pid_t fork_outgoing(int kill)
{
	pid_t pid = tu_fork(outgoing_child, (void *)(intptr_t)kill);

	assert_true(pid > 0);
	return pid;
}

/* Stream sizes, from a clean handoff with a counting hook. */
static void calibrate(void)
{
	struct run r = { 0 };
	pid_t pid = fork_incoming(NONE);
	cprxfer_channel *ch;

	hook_reset();
	assert_int_equal(cprxfer_connect(path, 5000, &ch), 0);
	hs_len = hk.tx;
	assert_int_equal(cprxfer_save(ch, prep), 0);
	p_len = hk.tx - hs_len;
	assert_int_equal(cprxfer_wait_ack(ch, 5000), 0);
	assert_int_equal(cprxfer_save(ch, fin), 0);
	f_len = hk.tx - hs_len - p_len;
	assert_int_equal(cprxfer_wait_ack(ch, 5000), 0);
	assert_int_equal(cprxfer_commit(ch), 0);
	cprxfer_channel_close(ch);
	cx_io_fault_hook = NULL;
	assert_int_equal(tu_wait(pid), 0);
	(void)r;
	/* The injection offsets land where their names say. */
	assert_true(p_len > PBLOB && p_len < PBLOB + 16384);
	assert_true(f_len > FBLOB && f_len < FBLOB + 1024);
	assert_true(FD_MID > 130 && FD_MID < 7400);
}

/* ---- incoming dies or misbehaves; the outgoing side must roll back -- */

struct expect {
	int point;
	int step;
	int rc;
};

static const struct expect incoming_cases[] = {
	{ AT_CONNECT, S_CONNECT, -ECONNRESET },
	{ AT_HELLO, S_CONNECT, -ECONNRESET },
	{ AT_HANDSHAKE, S_SAVE1, -ECONNRESET },
	{ AT_FDS, S_SAVE1, -ECONNRESET },
	{ AT_BLOB, S_SAVE1, -ECONNRESET },
	{ AT_DONE1, S_ACK1, -ECONNRESET },
	{ AT_ACK1, S_SAVE2, -ECONNRESET },
	{ AT_BLOB2, S_SAVE2, -ECONNRESET },
	{ AT_DONE2, S_ACK2, -ECONNRESET },
	{ REFUSE, S_ACK2, -EBUSY },
	{ HANG, S_ACK2, -ETIMEDOUT },
	{ GARBAGE, S_ACK2, -EPROTO },
	{ BADLOAD, S_SAVE1, -EMSGSIZE },
};

static void test_incoming_faults(void **state)
{
	size_t i;

	for (i = 0; i < sizeof(incoming_cases) / sizeof(*incoming_cases); i++) {
		const struct expect *e = &incoming_cases[i];
		int before = tu_count_fds(), status;
		struct run r = { 0 }, ok = { 0 };
		pid_t pid = fork_incoming(e->point);

		outgoing(NONE, e->point == HANG ? 300 : 10000, &r);
		printf("  incoming %-16s -> outgoing %-14s %-12s in %4lld ms: %s\n",
		       point_name[e->point], step_name[r.step], strerror(-r.rc),
		       (long long)r.ms, cprxfer_errmsg());
		assert_int_equal(r.step, e->step);
		assert_int_equal(r.rc, e->rc);
		if (e->point == HANG) {
			assert_true(r.ms >= 300 && r.ms < 1000);
			kill(pid, SIGKILL);
		} else {
			/* With the 10 s default timeout, at once. */
			assert_true(r.ms < 1000);
		}
		if (e->point == REFUSE)
			assert_non_null(strstr(cprxfer_errmsg(),
					       "not today: device busy"));
		if (e->point == BADLOAD)
			assert_non_null(
				strstr(cprxfer_errmsg(), "exceeds limit"));
		status = tu_wait(pid);
		assert_int_equal(status, e->point >= REFUSE && e->point != HANG
						 ? 0
						 : 128 + SIGKILL);
		/* Rolled back: every fd and value, no fd leaked... */
		assert_int_equal(tu_count_fds(), before);
		assert_outgoing_intact();
		/* ...and the handoff runs again, to a healthy successor. */
		pid = fork_incoming(NONE);
		outgoing(NONE, 10000, &ok);
		assert_int_equal(ok.rc, 0);
		assert_int_equal(tu_wait(pid), 0);
		assert_int_equal(tu_count_fds(), before);
	}
}

/* ---- outgoing dies or misbehaves; the incoming side must cope ------- */

static const struct expect outgoing_cases[] = {
	{ AT_CONNECT, S_CONNECT, -ECONNRESET },
	{ AT_HELLO, S_CONNECT, -ECONNRESET },
	{ AT_HANDSHAKE, S_SAVE1, -ECONNRESET },
	{ AT_FDS, S_SAVE1, -ECONNRESET },
	{ AT_BLOB, S_SAVE1, -ECONNRESET },
	{ AT_DONE1, S_ACK1, -ECONNRESET },
	{ AT_ACK1, S_SAVE2, -ECONNRESET },
	{ AT_BLOB2, S_SAVE2, -ECONNRESET },
	{ AT_DONE2, S_ACK2, -ECONNRESET },
	/* Died undecided after the ready ack: verified dead. */
	{ AT_ACK2, S_DECIDE, -EOWNERDEAD },
	{ GARBAGE, S_SAVE1, -EPROTO },
};

static void test_outgoing_faults(void **state)
{
	/*
	 * Accept's own timeout when the peer dies in the handshake: the
	 * peer must have died by then (under valgrind it is much slower).
	 */
	const int hs_ms = getenv("CPRXFER_UNDER_VALGRIND") ? 3000 : 700;
	cprxfer_listener *l;
	size_t i;

	assert_int_equal(cprxfer_listen(path, &l), 0);
	for (i = 0; i < sizeof(outgoing_cases) / sizeof(*outgoing_cases); i++) {
		const struct expect *e = &outgoing_cases[i];
		int before = tu_count_fds();
		struct run r = { 0 }, ok = { 0 };
		/* A dead peer in the handshake is dropped: accept then
		 * waits out its own timeout and names the last drop. */
		bool in_hs = e->step == S_CONNECT;
		pid_t pid = fork_outgoing(e->point);

		r.reap = pid;
		r.reap_at = e->point;
		incoming(l, NONE, in_hs ? hs_ms : 10000, &r);
		printf("  outgoing %-16s -> incoming %-14s %-12s in %4lld ms: %s\n",
		       point_name[e->point], step_name[r.step], strerror(-r.rc),
		       (long long)r.ms, cprxfer_errmsg());
		assert_int_equal(r.step, e->step);
		assert_int_equal(r.rc, e->rc);
		if (in_hs)
			assert_true(r.ms >= hs_ms && r.ms < hs_ms + 800);
		else
			assert_true(r.ms < 1000);
		if (r.reap > 0)
			assert_int_equal(tu_wait(pid), e->point == GARBAGE
							       ? 0
							       : 128 + SIGKILL);
		/* Everything received so far was closed. */
		assert_int_equal(tu_count_fds(), before);
		/* The listener still serves the next, healthy peer. */
		pid = fork_outgoing(NONE);
		incoming(l, NONE, 10000, &ok);
		assert_int_equal(ok.rc, 0);
		assert_int_equal(tu_wait(pid), 0);
		assert_int_equal(tu_count_fds(), before);
	}
	cprxfer_listener_close(l);
}

static int setup(void **state)
{
	tu_raise_nofile();
	dir = tu_tmpdir();
	if (!dir)
		return -1;
	snprintf(path, sizeof(path), "%s/handoff.sock", dir);
	make_states();
	calibrate();
	printf("  streams: handshake %llu bytes, prepare %llu, final %llu\n",
	       (unsigned long long)hs_len, (unsigned long long)p_len,
	       (unsigned long long)f_len);
	return 0;
}

static int teardown(void **state)
{
	free_states();
	tu_rmdir(dir);
	free(dir);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_incoming_faults),
		tu_test(test_outgoing_faults),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
