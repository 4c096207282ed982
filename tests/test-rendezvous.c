/* SPDX-License-Identifier: MIT */
/*
 * The Channel API between real processes: rendezvous by path in either
 * order, timeouts, what may sit at the path, the handshake's peer
 * policy (uid, tag, version), refusals carried back with the peer's
 * errno and reason, peer death noticed at once, acks, several rounds.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"

#define NOBODY 65534

static char *dir;

static void path_in(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/%s", dir, name);
}

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

/* ---- child processes: return an exit code, never assert ------------ */

struct peer {
	char path[108];
	int timeout;  /* connect's */
	int delay_ms; /* before connecting */
	uid_t uid;    /* 0: stay root */
	uid_t allow;  /* allow this uid too (if uid set) */
	const char *tag;
	int expect;	    /* the connect's result */
	const char *reason; /* must appear in errmsg, if set */
	bool roundtrip;	    /* then load a state and ack it */
};

static int drop_to(uid_t uid)
{
	if (setgroups(0, NULL) < 0 || setresgid(uid, uid, uid) < 0 ||
	    setresuid(uid, uid, uid) < 0)
		return -1;
	return 0;
}

/* The connecting side: its exit code is 0 when all went as expected. */
static int connector(void *arg)
{
	struct peer *p = arg;
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_channel *ch = NULL;
	cprxfer_state *st;
	uint64_t v;
	int rc;

	if (p->delay_ms)
		msleep(p->delay_ms);
	if (p->uid && drop_to(p->uid) < 0)
		return 2;
	if (p->uid && p->allow != (uid_t)-1)
		cprxfer_opts_allow_uid(o, p->allow);
	if (p->tag)
		cprxfer_opts_set_tag(o, p->tag);
	rc = cprxfer_connect_opts(p->path, p->timeout, o, &ch);
	cprxfer_opts_free(o);
	if (rc != p->expect) {
		fprintf(stderr, "connector: got %d, want %d: %s\n", rc,
			p->expect, cprxfer_errmsg());
		return 3;
	}
	if (p->reason && !strstr(cprxfer_errmsg(), p->reason)) {
		fprintf(stderr, "connector: reason '%s' lacks '%s'\n",
			cprxfer_errmsg(), p->reason);
		return 4;
	}
	if (rc < 0)
		return 0;
	if (p->roundtrip) {
		if (cprxfer_load(ch, &st) < 0 ||
		    cprxfer_get_u64(st, "answer", &v) < 0 || v != 42)
			return 5;
		cprxfer_state_free(st);
		if (cprxfer_ack(ch, 0, NULL) < 0)
			return 6;
	}
	cprxfer_channel_close(ch);
	return 0;
}

/* Save {answer: 42} and wait for its ack. */
static void roundtrip(cprxfer_channel *ch)
{
	cprxfer_state *st = cprxfer_state_new();

	assert_non_null(st);
	assert_int_equal(cprxfer_put_u64(st, "answer", 42), 0);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 5000), 0);
	cprxfer_state_free(st);
}

static pid_t spawn(struct peer *p)
{
	pid_t pid = tu_fork(connector, p);

	assert_true(pid > 0);
	return pid;
}

static void init_peer(struct peer *p, const char *name)
{
	memset(p, 0, sizeof(*p));
	path_in(p->path, sizeof(p->path), name);
	p->timeout = 5000;
	p->allow = (uid_t)-1;
}

/* ---- the path: mode, what may be there, unlink ---------------------- */

static void test_listen_mode_0600(void **state)
{
	char path[108];
	cprxfer_listener *l;
	struct stat st;
	mode_t old;

	path_in(path, sizeof(path), "mode.sock");
	old = umask(0);
	assert_int_equal(cprxfer_listen(path, &l), 0);
	umask(old);
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISSOCK(st.st_mode));
	assert_int_equal(st.st_mode & 07777, 0600);
	cprxfer_listener_close(l);
	assert_int_equal(lstat(path, &st), -1);
	assert_int_equal(errno, ENOENT);
}

static void test_listen_refuses_non_socket(void **state)
{
	char path[108], target[108];
	cprxfer_listener *l = NULL;
	struct stat st;
	int fd;

	path_in(path, sizeof(path), "file");
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "keep", 4), 4);
	close(fd);
	assert_int_equal(cprxfer_listen(path, &l), -EEXIST);
	assert_non_null(strstr(cprxfer_errmsg(), "regular file"));
	assert_null(l);
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISREG(st.st_mode) && st.st_size == 4);

	path_in(path, sizeof(path), "dir");
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(cprxfer_listen(path, &l), -EEXIST);
	assert_non_null(strstr(cprxfer_errmsg(), "directory"));
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISDIR(st.st_mode));

	/* A symlink, even to a stale socket, is not ours to replace. */
	path_in(target, sizeof(target), "target.sock");
	make_stale(target);
	path_in(path, sizeof(path), "link");
	assert_int_equal(symlink(target, path), 0);
	assert_int_equal(cprxfer_listen(path, &l), -EEXIST);
	assert_non_null(strstr(cprxfer_errmsg(), "symbolic link"));
	assert_int_equal(lstat(path, &st), 0);
	assert_true(S_ISLNK(st.st_mode));

	/* Nothing is left behind in the directory (no temporary name). */
	{
		char cmd[256];

		snprintf(cmd, sizeof(cmd),
			 "test -z \"$(ls -A '%s' | grep '^\\.cx-')\"", dir);
		assert_int_equal(system(cmd), 0);
	}
}

static void test_listen_replaces_stale(void **state)
{
	struct peer p;
	cprxfer_listener *l;
	cprxfer_channel *ch;
	pid_t pid;

	init_peer(&p, "stale.sock");
	make_stale(p.path);
	assert_int_equal(cprxfer_listen(p.path, &l), 0);
	p.roundtrip = true;
	pid = spawn(&p);
	assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
	roundtrip(ch);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_listener_close(l);
}

static void test_listen_refuses_live(void **state)
{
	struct peer p;
	cprxfer_listener *l, *l2 = NULL;
	cprxfer_channel *ch;
	pid_t pid;

	init_peer(&p, "live.sock");
	assert_int_equal(cprxfer_listen(p.path, &l), 0);
	assert_int_equal(cprxfer_listen(p.path, &l2), -EADDRINUSE);
	assert_null(l2);
	/* The probe's connection is dropped; a real peer still gets in. */
	p.roundtrip = true;
	pid = spawn(&p);
	assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
	roundtrip(ch);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_listener_close(l);
}

static void test_close_unlinks_only_own(void **state)
{
	char path[108];
	cprxfer_listener *l;
	struct stat st;
	int fd;

	path_in(path, sizeof(path), "own.sock");
	assert_int_equal(cprxfer_listen(path, &l), 0);
	/* A successor replaced the path: closing must not remove it. */
	assert_int_equal(unlink(path), 0);
	fd = open(path, O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	close(fd);
	cprxfer_listener_close(l);
	assert_int_equal(lstat(path, &st), 0);
	unlink(path);
	cprxfer_listener_close(NULL);
}

static void test_bad_arguments(void **state)
{
	cprxfer_listener *l;
	cprxfer_channel *ch;
	char longp[200];
	int fd;

	memset(longp, 'a', sizeof(longp) - 1);
	longp[sizeof(longp) - 1] = 0;
	assert_int_equal(cprxfer_listen(NULL, &l), -EINVAL);
	assert_int_equal(cprxfer_listen(longp, &l), -ENAMETOOLONG);
	assert_int_equal(cprxfer_connect(longp, 0, &ch), -ENAMETOOLONG);
	assert_int_equal(cprxfer_connect(NULL, 0, &ch), -EINVAL);
	assert_int_equal(cprxfer_accept(NULL, 0, &ch), -EINVAL);
	assert_int_equal(cprxfer_save(NULL, NULL), -EINVAL);
	assert_int_equal(cprxfer_load(NULL, NULL), -EINVAL);
	assert_int_equal(cprxfer_ack(NULL, 0, NULL), -EINVAL);
	assert_int_equal(cprxfer_wait_ack(NULL, 0), -EINVAL);
	assert_int_equal(cprxfer_channel_set_timeout(NULL, 0), -EINVAL);
	/* channel_open takes the fd over, on failure too. */
	fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_int_equal(cprxfer_channel_open(fd, &ch), -ENOTSOCK);
	assert_int_equal(fcntl(fd, F_GETFD), -1);
	cprxfer_channel_close(NULL);
}

/* ---- connect: either order, timeouts -------------------------------- */

static int listener_later(void *arg)
{
	struct peer *p = arg;
	cprxfer_listener *l;
	cprxfer_channel *ch;
	cprxfer_state *st;
	uint64_t v;

	msleep(p->delay_ms);
	if (p->tag) {
		/* (tag doubles as a flag here) The directory: make it. */
		char d[108];

		snprintf(d, sizeof(d), "%s", p->path);
		*strrchr(d, '/') = 0;
		if (mkdir(d, 0700) < 0)
			return 2;
	}
	if (cprxfer_listen(p->path, &l) < 0)
		return 3;
	if (cprxfer_accept(l, 5000, &ch) < 0)
		return 4;
	if (cprxfer_load(ch, &st) < 0 ||
	    cprxfer_get_u64(st, "answer", &v) < 0 || v != 42)
		return 5;
	cprxfer_state_free(st);
	if (cprxfer_ack(ch, 0, NULL) < 0)
		return 6;
	cprxfer_channel_close(ch);
	cprxfer_listener_close(l);
	return 0;
}

static void connect_then_listen(const char *name, int timeout, bool subdir)
{
	struct peer p;
	cprxfer_channel *ch;
	int64_t t0;
	pid_t pid;

	init_peer(&p, name);
	p.delay_ms = 300;
	p.tag = subdir ? "mkdir" : NULL;
	/* Before the fork: the listener's delay starts after t0. */
	t0 = tu_now_ms();
	pid = tu_fork(listener_later, &p);
	assert_int_equal(cprxfer_connect(p.path, timeout, &ch), 0);
	/* Woken by the path's appearance, not by a timer. */
	assert_true(tu_now_ms() - t0 >= 250);
	assert_true(tu_now_ms() - t0 < 3000);
	roundtrip(ch);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
}

static void test_connect_before_listen(void **state)
{
	char path[108];

	connect_then_listen("later.sock", 5000, false);
	/* A stale socket at the path counts as "not there yet". */
	path_in(path, sizeof(path), "later2.sock");
	make_stale(path);
	connect_then_listen("later2.sock", 5000, false);
	/* timeout < 0: wait as long as it takes. */
	connect_then_listen("later3.sock", -1, false);
	/* Even the directory may appear later. */
	connect_then_listen("sub/later.sock", 5000, true);
}

static void test_connect_times_out(void **state)
{
	char path[108];
	cprxfer_channel *ch = NULL;
	int64_t t0, dt;

	path_in(path, sizeof(path), "nobody.sock");
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_connect(path, 400, &ch), -ETIMEDOUT);
	dt = tu_now_ms() - t0;
	assert_true(dt >= 400 && dt < 900);
	assert_non_null(strstr(cprxfer_errmsg(), "nobody listened"));
	assert_null(ch);

	/* A stale socket: same. */
	make_stale(path);
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_connect(path, 300, &ch), -ETIMEDOUT);
	dt = tu_now_ms() - t0;
	assert_true(dt >= 300 && dt < 800);
	unlink(path);

	/* Timeout 0: one try, no wait. */
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_connect(path, 0, &ch), -ETIMEDOUT);
	assert_true(tu_now_ms() - t0 < 100);

	/* A missing directory: watched through its ancestors, same end. */
	path_in(path, sizeof(path), "no/such/dir/x.sock");
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_connect(path, 200, &ch), -ETIMEDOUT);
	assert_true(tu_now_ms() - t0 >= 200);
}

static void test_connect_timeout_zero_live(void **state)
{
	struct peer p;
	cprxfer_listener *l;
	cprxfer_channel *ch;
	pid_t pid;

	init_peer(&p, "zero.sock");
	assert_int_equal(cprxfer_listen(p.path, &l), 0);
	/* The listener is there: a zero timeout connects at once. */
	p.timeout = 0;
	p.roundtrip = true;
	pid = spawn(&p);
	assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
	roundtrip(ch);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	/* Nobody comes: accept with 0 and with a timeout ends. */
	assert_int_equal(cprxfer_accept(l, 0, &ch), -EAGAIN);
	{
		int64_t t0 = tu_now_ms();

		assert_int_equal(cprxfer_accept(l, 300, &ch), -ETIMEDOUT);
		assert_true(tu_now_ms() - t0 >= 300);
	}
	cprxfer_listener_close(l);
}

/* ---- the handshake's peer policy ------------------------------------ */

static void open_for_nobody(const char *path)
{
	/* The socket's mode lets anyone connect: only the uid check stops
	 * the peer. */
	assert_int_equal(chmod(dir, 0711), 0);
	assert_int_equal(chmod(path, 0666), 0);
}

static void test_other_uid_refused(void **state)
{
	struct peer bad, good;
	cprxfer_listener *l;
	cprxfer_channel *ch;
	pid_t bpid, gpid, peer;
	uid_t uid;

	if (geteuid() != 0)
		skip();
	init_peer(&bad, "uid.sock");
	assert_int_equal(cprxfer_listen(bad.path, &l), 0);
	open_for_nobody(bad.path);
	bad.uid = NOBODY;
	bad.expect = -EPERM;
	bad.reason = "uid";
	bpid = spawn(&bad);
	/* Then a good peer, while the listener still waits. */
	good = bad;
	good.uid = 0;
	good.expect = 0;
	good.reason = NULL;
	good.delay_ms = 300;
	good.roundtrip = true;
	gpid = spawn(&good);
	assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
	assert_int_equal(cprxfer_channel_peer(ch, &peer, &uid, NULL), 0);
	assert_int_equal(peer, gpid);
	assert_int_equal(uid, 0);
	roundtrip(ch);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(bpid), 0);
	assert_int_equal(tu_wait(gpid), 0);

	/* Only a bad peer within the timeout: the listener's -EPERM. */
	bpid = spawn(&bad);
	assert_int_equal(cprxfer_accept(l, 1000, &ch), -EPERM);
	assert_non_null(strstr(cprxfer_errmsg(), "uid 65534"));
	assert_int_equal(tu_wait(bpid), 0);
	cprxfer_listener_close(l);
}

static void test_allow_uid(void **state)
{
	struct peer p;
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_listener *l;
	cprxfer_channel *ch;
	const char *tag;
	uid_t uid;
	pid_t pid;

	if (geteuid() != 0)
		skip();
	init_peer(&p, "allow.sock");
	assert_int_equal(cprxfer_opts_allow_uid(o, NOBODY), 0);
	assert_int_equal(cprxfer_listen_opts(p.path, o, &l), 0);
	cprxfer_opts_free(o);
	open_for_nobody(p.path);
	p.uid = NOBODY;
	p.allow = 0;
	p.roundtrip = true;
	pid = spawn(&p);
	assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
	assert_int_equal(cprxfer_channel_peer(ch, NULL, &uid, &tag), 0);
	assert_int_equal(uid, NOBODY);
	assert_string_equal(tag, "");
	roundtrip(ch);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_listener_close(l);
}

static void test_tag_mismatch(void **state)
{
	struct peer p;
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_listener *l;
	cprxfer_channel *ch;
	const char *tag;
	pid_t pid;

	init_peer(&p, "tag.sock");
	assert_int_equal(cprxfer_opts_set_tag(o, "demo-vmm/1"), 0);
	assert_int_equal(cprxfer_listen_opts(p.path, o, &l), 0);
	/* Both have tags, they differ: both refuse, -EBADE each side. */
	p.tag = "demo-vmm/2";
	p.expect = -EBADE;
	p.reason = "demo-vmm/1";
	pid = spawn(&p);
	assert_int_equal(cprxfer_accept(l, 1000, &ch), -EBADE);
	assert_non_null(strstr(cprxfer_errmsg(), "demo-vmm/2"));
	assert_int_equal(tu_wait(pid), 0);

	/*
	 * The peer has no tag and does not check: the refusal reaches it
	 * as the listener's own errno and reason text.
	 */
	p.tag = NULL;
	p.reason =
		"peer refused the handshake: peer's application tag '' differs from ours 'demo-vmm/1'";
	pid = spawn(&p);
	assert_int_equal(cprxfer_accept(l, 1000, &ch), -EBADE);
	assert_int_equal(tu_wait(pid), 0);

	/* The same tag: accepted, and the peer's tag is visible. */
	p.tag = "demo-vmm/1";
	p.expect = 0;
	p.reason = NULL;
	p.roundtrip = true;
	pid = spawn(&p);
	assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
	assert_int_equal(cprxfer_channel_peer(ch, NULL, NULL, &tag), 0);
	assert_string_equal(tag, "demo-vmm/1");
	roundtrip(ch);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_opts_free(o);
	cprxfer_listener_close(l);
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)v);
	put16(p + 2, (uint16_t)(v >> 16));
}

static void test_version_mismatch(void **state)
{
	uint8_t hello[32] = { 0 }, buf[4096];
	cprxfer_channel *ch = NULL;
	int sv[2];
	ssize_t n;
	int32_t status;

	/* A HELLO from a future version 2 of the protocol, as raw bytes. */
	put32(hello, 0x46585043u);
	hello[4] = 2;
	hello[5] = 1;
	hello[8] = 16;
	put32(hello + 16, 0);
	put32(hello + 20, (uint32_t)getpid());
	put32(hello + 24, (uint32_t)geteuid());
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	assert_int_equal(write(sv[1], hello, sizeof(hello)), 32);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), -EPROTONOSUPPORT);
	assert_null(ch);
	assert_non_null(strstr(cprxfer_errmsg(), "version 2"));
	assert_non_null(strstr(cprxfer_errmsg(), "version 1"));
	/* The old side was told: our HELLO, then a refusing ACK. */
	n = read(sv[1], buf, sizeof(buf));
	assert_true(n >= 32 + 24);
	assert_int_equal(buf[4], 1);
	assert_int_equal(buf[32 + 5], 6); /* ACK */
	status = (int32_t)(buf[48] | buf[49] << 8 | buf[50] << 16 |
			   (uint32_t)buf[51] << 24);
	assert_int_equal(status, -EPROTONOSUPPORT);
	close(sv[1]);

	/* Not our protocol at all: -EPROTO. */
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	assert_int_equal(write(sv[1], "GET / HTTP/1.0\r\n\r\n", 18), 18);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), -EPROTO);
	close(sv[1]);
}

/* ---- peer death, acks, timeouts, rounds ----------------------------- */

struct pair_child {
	int sock;
	int mode;
	int status;
	const char *reason;
};

enum {
	PC_DIE_AFTER_HELLO, /* handshake, then SIGKILL */
	PC_ACK_THEN_EXIT,   /* load, ack(status, reason), exit at once */
	PC_LOAD_NO_ACK,	    /* load, then wait for the parent to go */
	PC_ROUNDS,	    /* load 4 states, check, ack the last */
	PC_LIMIT,	    /* load with a 1000-byte record limit */
};

static int pair_child_fn(void *arg)
{
	struct pair_child *c = arg;
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_channel *ch;
	cprxfer_state *st;
	char buf[256];
	ssize_t n;
	uint64_t v;
	int rc, i, fd;

	if (c->mode == PC_LIMIT)
		cprxfer_opts_set_limit(o, CPRXFER_LIMIT_RECORD_BYTES, 1000);
	rc = cprxfer_channel_open_opts(c->sock, o, &ch);
	cprxfer_opts_free(o);
	if (rc < 0)
		return 2;
	switch (c->mode) {
	case PC_DIE_AFTER_HELLO:
		raise(SIGKILL);
		break;
	case PC_ACK_THEN_EXIT:
		if (cprxfer_load(ch, &st) < 0)
			return 3;
		cprxfer_state_free(st);
		_exit(cprxfer_ack(ch, c->status, c->reason) < 0 ? 4 : 0);
	case PC_LOAD_NO_ACK:
		if (cprxfer_load(ch, &st) < 0)
			return 3;
		cprxfer_state_free(st);
		/* Until the parent closes (its failed load says why). */
		while ((n = read(c->sock, buf, sizeof(buf))) > 0)
			;
		if (n != 0)
			return 5;
		break;
	case PC_ROUNDS:
		for (i = 0; i < 4; i++) {
			if (cprxfer_load(ch, &st) < 0) {
				fprintf(stderr, "round %d: %s\n", i,
					cprxfer_errmsg());
				return 10 + i;
			}
			if (cprxfer_get_u64(st, "round", &v) < 0 ||
			    v != (uint64_t)i ||
			    cprxfer_get_fd(st, "fd", &fd) < 0 ||
			    write(fd, "x", 1) != 1)
				return 20 + i;
			cprxfer_state_free(st);
		}
		if (cprxfer_ack(ch, 0, NULL) < 0)
			return 6;
		break;
	case PC_LIMIT:
		rc = cprxfer_load(ch, &st);
		if (rc != -EMSGSIZE)
			return 7;
		break;
	}
	cprxfer_channel_close(ch);
	return 0;
}

/* Open a channel to a forked child running mode. */
static cprxfer_channel *pair(struct pair_child *c, pid_t *pid)
{
	cprxfer_channel *ch;
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	c->sock = sv[1];
	*pid = tu_fork(pair_child_fn, c);
	assert_true(*pid > 0);
	close(sv[1]);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);
	return ch;
}

static cprxfer_state *big_state(size_t blob)
{
	cprxfer_state *st = cprxfer_state_new();
	void *b = calloc(1, blob);

	assert_non_null(b);
	assert_int_equal(cprxfer_put_u64(st, "answer", 42), 0);
	assert_int_equal(cprxfer_put_blob(st, "blob", b, blob), 0);
	free(b);
	return st;
}

static void test_peer_death_fast(void **state)
{
	struct pair_child c = { .mode = PC_DIE_AFTER_HELLO };
	cprxfer_channel *ch;
	cprxfer_state *st;
	int64_t t0;
	pid_t pid;
	int rc;

	/* load: the default 10 s timeout, death seen at once. */
	ch = pair(&c, &pid);
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_load(ch, &st), -ECONNRESET);
	assert_true(tu_now_ms() - t0 < 500);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 128 + SIGKILL);

	/* save of more than the socket holds. */
	ch = pair(&c, &pid);
	st = big_state(8 << 20);
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_save(ch, st), -ECONNRESET);
	assert_true(tu_now_ms() - t0 < 500);
	/*
	 * Again: -EPIPE if the first save broke the stream mid-way,
	 * -ECONNRESET if the peer was gone before its first byte.
	 */
	rc = cprxfer_save(ch, st);
	assert_true(rc == -EPIPE || rc == -ECONNRESET);
	assert_int_equal(cprxfer_state_count(st), 2);
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 128 + SIGKILL);

	/* wait_ack. */
	ch = pair(&c, &pid);
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_wait_ack(ch, 10000), -ECONNRESET);
	assert_true(tu_now_ms() - t0 < 500);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 128 + SIGKILL);
}

static void test_ack_before_exit(void **state)
{
	struct pair_child c = { .mode = PC_ACK_THEN_EXIT };
	cprxfer_channel *ch;
	cprxfer_state *st = big_state(16);
	pid_t pid;

	/* The peer acks and exits before we even look. */
	ch = pair(&c, &pid);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(tu_wait(pid), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 10000), 0);
	cprxfer_channel_close(ch);

	/* A refusal: the peer's own errno and its reason text. */
	c.status = -EBUSY;
	c.reason = "device table full";
	ch = pair(&c, &pid);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(tu_wait(pid), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 10000), -EBUSY);
	assert_non_null(strstr(cprxfer_errmsg(), "device table full"));
	cprxfer_channel_close(ch);

	/* Refused with no reason. */
	c.status = -ENOSPC;
	c.reason = NULL;
	ch = pair(&c, &pid);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(tu_wait(pid), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 0), -ENOSPC);
	cprxfer_channel_close(ch);
	cprxfer_state_free(st);
}

static void test_ack_reserved_status(void **state)
{
	struct pair_child c = { .mode = PC_LOAD_NO_ACK };
	cprxfer_channel *ch;
	cprxfer_state *st = big_state(16);
	int64_t t0;
	pid_t pid;

	ch = pair(&c, &pid);
	assert_int_equal(cprxfer_ack(ch, -ETIMEDOUT, "x"), -EINVAL);
	assert_int_equal(cprxfer_ack(ch, -ECONNRESET, NULL), -EINVAL);
	assert_int_equal(cprxfer_ack(ch, 1, NULL), -EINVAL);
	assert_int_equal(cprxfer_ack(ch, -5000, NULL), -EINVAL);

	/* wait_ack: nobody acks. */
	assert_int_equal(cprxfer_save(ch, st), 0);
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_wait_ack(ch, 0), -EAGAIN);
	assert_true(tu_now_ms() - t0 < 100);
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_wait_ack(ch, 300), -ETIMEDOUT);
	assert_true(tu_now_ms() - t0 >= 300 && tu_now_ms() - t0 < 800);
	/* The channel timeout bounds load. */
	assert_int_equal(cprxfer_channel_set_timeout(ch, 200), 0);
	t0 = tu_now_ms();
	{
		cprxfer_state *in = NULL;

		assert_int_equal(cprxfer_load(ch, &in), -ETIMEDOUT);
		assert_null(in);
	}
	assert_true(tu_now_ms() - t0 >= 200 && tu_now_ms() - t0 < 700);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_state_free(st);
}

static void test_rounds(void **state)
{
	struct pair_child c = { .mode = PC_ROUNDS };
	cprxfer_channel *ch;
	char buf[8];
	int p[2], i;
	pid_t pid;

	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	ch = pair(&c, &pid);
	/* Four streams back to back, each with an fd, no ack between. */
	for (i = 0; i < 4; i++) {
		cprxfer_state *st = cprxfer_state_new();

		assert_int_equal(cprxfer_put_u64(st, "round", i), 0);
		assert_int_equal(cprxfer_put_fd(st, "fd", p[1]), 0);
		assert_int_equal(cprxfer_put_str(st, "pad", "padding"), 0);
		assert_int_equal(cprxfer_save(ch, st), 0);
		cprxfer_state_free(st);
	}
	assert_int_equal(cprxfer_wait_ack(ch, 5000), 0);
	assert_int_equal(read(p[0], buf, sizeof(buf)), 4);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	close(p[0]);
	close(p[1]);
}

static void test_failed_load_tells_why(void **state)
{
	struct pair_child c = { .mode = PC_LIMIT };
	cprxfer_channel *ch;
	cprxfer_state *st;
	pid_t pid;

	/* Bigger than the socket holds: the save itself learns why. */
	ch = pair(&c, &pid);
	st = big_state(4 << 20);
	assert_int_equal(cprxfer_save(ch, st), -EMSGSIZE);
	assert_non_null(strstr(cprxfer_errmsg(), "exceeds limit 1000"));
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);

	/* Small: the save completes, wait_ack says why. */
	ch = pair(&c, &pid);
	st = big_state(2000);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 5000), -EMSGSIZE);
	assert_non_null(strstr(cprxfer_errmsg(), "'blob'"));
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
}

static int setup_dir(void **state)
{
	dir = tu_tmpdir();
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
		tu_test(test_listen_mode_0600),
		tu_test(test_listen_refuses_non_socket),
		tu_test(test_listen_replaces_stale),
		tu_test(test_listen_refuses_live),
		tu_test(test_close_unlinks_only_own),
		tu_test(test_bad_arguments),
		tu_test(test_connect_before_listen),
		tu_test(test_connect_times_out),
		tu_test(test_connect_timeout_zero_live),
		tu_test(test_other_uid_refused),
		tu_test(test_allow_uid),
		tu_test(test_tag_mismatch),
		tu_test(test_version_mismatch),
		tu_test(test_peer_death_fast),
		tu_test(test_ack_before_exit),
		tu_test(test_ack_reserved_status),
		tu_test(test_rounds),
		tu_test(test_failed_load_tells_why),
	};

	signal(SIGPIPE, SIG_DFL);
	return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
