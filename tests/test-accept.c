/* SPDX-License-Identifier: MIT */
/*
 * The listener's side of the rendezvous and the handshake's trust
 * rules: accept is bounded by its own timeout however many silent peers
 * are queued, and a good peer behind them is accepted; a peer is judged
 * by its kernel credentials before anything it sent is received, so
 * fds from an unwanted peer are never installed; fds attached to a
 * handshake frame fail the handshake; a listener's socket mode and
 * group let an allowed uid connect.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"

#define NOBODY 65534

static char *dir;

static int drop_to(uid_t uid)
{
	if (setgroups(0, NULL) < 0 || setresgid(uid, uid, uid) < 0 ||
	    setresuid(uid, uid, uid) < 0)
		return -1;
	return 0;
}

static int raw_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -1;
	return fd;
}

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* A valid version-1 HELLO (no tag), sent with nfds copies of fd. */
static int send_hello_with_fds(int sock, int fd, int nfds)
{
	union {
		char buf[CMSG_SPACE(253 * sizeof(int))];
		struct cmsghdr align;
	} u;
	uint8_t hello[32] = { 0 };
	struct iovec iov = { hello, sizeof(hello) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *c;
	int i;

	put32(hello, 0x46585043u);
	hello[4] = 1;
	hello[5] = 1;
	hello[8] = 16;
	put32(hello + 20, (uint32_t)getpid());
	put32(hello + 24, (uint32_t)geteuid());
	if (nfds) {
		memset(u.buf, 0, sizeof(u.buf));
		m.msg_control = u.buf;
		m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		for (i = 0; i < nfds; i++)
			memcpy(CMSG_DATA(c) + i * sizeof(int), &fd,
			       sizeof(int));
	}
	return sendmsg(sock, &m, MSG_NOSIGNAL) == sizeof(hello) ? 0 : -1;
}

/* A connecting child: connect_opts, then close; exit 0 if rc == want. */
struct peer {
	char path[108];
	uid_t uid; /* 0: stay root */
	int want;
};

static int connector(void *arg)
{
	struct peer *p = arg;
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_channel *ch = NULL;
	int rc;

	if (p->uid && drop_to(p->uid) < 0)
		return 2;
	cprxfer_opts_allow_uid(o, 0);
	rc = cprxfer_connect_opts(p->path, 5000, o, &ch);
	cprxfer_opts_free(o);
	if (rc != p->want) {
		fprintf(stderr, "connector: got %d, want %d: %s\n", rc, p->want,
			cprxfer_errmsg());
		return 3;
	}
	cprxfer_channel_close(ch);
	return 0;
}

/* ---- item 5: accept is bounded by its own timeout ------------------- */

static void test_accept_bounded_with_silent_peers(void **state)
{
	cprxfer_opts *o = cprxfer_opts_new();
	struct peer good = { .want = 0 };
	cprxfer_listener *l;
	cprxfer_channel *ch = NULL;
	int silent[3], i;
	int64_t t0, took;
	pid_t pid, peer;

	snprintf(good.path, sizeof(good.path), "%s/silent.sock", dir);
	assert_int_equal(cprxfer_opts_set_timeout(o, 3000), 0);
	assert_int_equal(cprxfer_listen_opts(good.path, o, &l), 0);
	cprxfer_opts_free(o);
	for (i = 0; i < 3; i++) {
		silent[i] = raw_connect(good.path);
		assert_true(silent[i] >= 0);
	}
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_accept(l, 200, &ch), -ETIMEDOUT);
	took = tu_now_ms() - t0;
	printf("# accept(200 ms) with 3 silent peers took %lld ms\n",
	       (long long)took);
	assert_true(took >= 190);
	assert_true(took < 600);
	assert_null(ch);
	assert_non_null(strstr(cprxfer_errmsg(), "3 still pending"));

	/* A good peer queued behind them is accepted, at once. */
	pid = tu_fork(connector, &good);
	assert_true(pid > 0);
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
	assert_true(tu_now_ms() - t0 < 2000);
	assert_int_equal(cprxfer_channel_peer(ch, &peer, NULL, NULL), 0);
	assert_int_equal(peer, pid);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	for (i = 0; i < 3; i++)
		close(silent[i]);
	/* The silent peers' handshakes die with the listener. */
	cprxfer_listener_close(l);
}

/* Pending handshakes that run out their own timeout are dropped. */
static void test_accept_drops_expired_handshakes(void **state)
{
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_listener *l;
	cprxfer_channel *ch = NULL;
	char path[108];
	int silent;
	int64_t t0;

	snprintf(path, sizeof(path), "%s/expire.sock", dir);
	assert_int_equal(cprxfer_opts_set_timeout(o, 100), 0);
	assert_int_equal(cprxfer_listen_opts(path, o, &l), 0);
	cprxfer_opts_free(o);
	silent = raw_connect(path);
	assert_true(silent >= 0);
	t0 = tu_now_ms();
	assert_int_equal(cprxfer_accept(l, 400, &ch), -ETIMEDOUT);
	assert_true(tu_now_ms() - t0 < 800);
	assert_non_null(strstr(cprxfer_errmsg(), "timed out"));
	close(silent);
	cprxfer_listener_close(l);
}

/* ---- the event-loop form: cprxfer_listener_fd + accept(l, 0) ------- */

static void test_listener_fd_event_loop_never_blocks(void **state)
{
	cprxfer_opts *o = cprxfer_opts_new();
	struct peer good = { .want = 0 };
	cprxfer_listener *l;
	cprxfer_channel *ch = NULL;
	int silent[2], lfd, i, accepted = 0, wakeups = 0, rc;
	int64_t t0, longest = 0;
	pid_t pids[3];
	char buf[256];

	snprintf(good.path, sizeof(good.path), "%s/loop.sock", dir);
	assert_int_equal(cprxfer_opts_set_timeout(o, 1000), 0);
	assert_int_equal(cprxfer_listen_opts(good.path, o, &l), 0);
	cprxfer_opts_free(o);
	assert_int_equal(cprxfer_listener_fd(NULL), -EINVAL);
	lfd = cprxfer_listener_fd(l);
	assert_true(lfd >= 0);
	assert_true(fcntl(lfd, F_GETFD) & FD_CLOEXEC);
	/* Nothing there: not readable, and accept(0) says so at once. */
	{
		struct pollfd p = { .fd = lfd, .events = POLLIN };

		assert_int_equal(poll(&p, 1, 0), 0);
	}
	assert_int_equal(cprxfer_accept(l, 0, &ch), -EAGAIN);
	for (i = 0; i < 2; i++) {
		silent[i] = raw_connect(good.path);
		assert_true(silent[i] >= 0);
	}
	for (i = 0; i < 3; i++) {
		pids[i] = tu_fork(connector, &good);
		assert_true(pids[i] > 0);
	}
	/* The loop: poll the fd, then accept without blocking. */
	t0 = tu_now_ms();
	while (tu_now_ms() - t0 < 5000) {
		struct pollfd p = { .fd = lfd, .events = POLLIN };
		bool gone = true;

		for (i = 0; i < 2; i++) {
			struct pollfd q = { .fd = silent[i], .events = POLLIN };

			/* Our HELLO is there; EOF once the listener dropped us. */
			gone = gone && poll(&q, 1, 0) == 1 &&
			       recv(silent[i], buf, sizeof(buf),
				    MSG_DONTWAIT | MSG_PEEK) > 0 &&
			       (q.revents & POLLHUP);
		}
		if (accepted == 3 && gone)
			break;
		assert_true(poll(&p, 1, 2000) >= 0);
		wakeups++;
		for (;;) {
			int64_t c0 = tu_now_ms();

			rc = cprxfer_accept(l, 0, &ch);
			if (tu_now_ms() - c0 > longest)
				longest = tu_now_ms() - c0;
			if (rc != 0)
				break;
			accepted++;
			cprxfer_channel_close(ch);
		}
		assert_int_equal(rc, -EAGAIN);
	}
	printf("# 3 peers accepted, 2 silent ones dropped: %d wakeups, longest accept(0) %lld ms\n",
	       wakeups, (long long)longest);
	assert_int_equal(accepted, 3);
	/* Blocking on a silent peer would take its 1000 ms timeout. */
	assert_true(wakeups < 40);
	assert_true(longest < 500);
	for (i = 0; i < 3; i++)
		assert_int_equal(tu_wait(pids[i]), 0);
	for (i = 0; i < 2; i++)
		close(silent[i]);
	cprxfer_listener_close(l);
}

/* ---- item 7: credentials judged before the first receive ------------ */

struct evil {
	char path[96];
};

/* Under uid NOBODY: listen raw, answer each peer with 250 fds. */
static int evil_listener(void *arg)
{
	struct evil *e = arg;
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char buf[4096];
	int lfd, fd, nul;

	alarm(10); /* never outlive a failed test */
	if (drop_to(NOBODY) < 0)
		return 2;
	nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	/* Listening before the name appears, as a connector expects. */
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s.tmp", e->path);
	if (nul < 0 || lfd < 0 ||
	    bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(lfd, 4) < 0 || rename(sa.sun_path, e->path) < 0)
		return 3;
	fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0)
		return 4;
	/*
	 * The connector may have refused and closed already (it judges
	 * us before it reads anything): then this fails with EPIPE.
	 */
	if (send_hello_with_fds(fd, nul, 250) < 0 && errno != EPIPE &&
	    errno != ECONNRESET)
		return 5;
	/* Read the peer's words until it hangs up. */
	while (read(fd, buf, sizeof(buf)) > 0)
		;
	return 0;
}

static void test_unauthenticated_fds_never_installed(void **state)
{
	struct evil e;
	cprxfer_channel *ch = NULL;
	struct rlimit old, low;
	char sub[64];
	int before;
	pid_t pid;

	if (geteuid() != 0)
		skip();
	snprintf(sub, sizeof(sub), "%s/nobody", dir);
	assert_int_equal(mkdir(sub, 0700), 0);
	assert_int_equal(chown(sub, NOBODY, NOBODY), 0);
	assert_int_equal(chmod(dir, 0711), 0);
	snprintf(e.path, sizeof(e.path), "%s/evil.sock", sub);
	pid = tu_fork(evil_listener, &e);
	assert_true(pid > 0);

	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = old;
	low.rlim_cur = 64;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	before = tu_count_fds();
	assert_int_equal(cprxfer_connect(e.path, 5000, &ch), -EPERM);
	assert_int_equal(tu_count_fds(), before);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_null(ch);
	assert_non_null(strstr(cprxfer_errmsg(), "uid 65534"));
	assert_int_equal(tu_wait(pid), 0);
	unlink(e.path);
	assert_int_equal(rmdir(sub), 0);
	assert_int_equal(chmod(dir, 0700), 0);
}

struct evil_pair {
	int ctl;   /* where the child sends its end of the socketpair */
	int other; /* the parent's end of ctl, closed in the child */
};

/* Under uid NOBODY: a socketpair whose one end holds a HELLO + 250 fds. */
static int evil_pair_child(void *arg)
{
	struct evil_pair *e = arg;
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	char byte = 0;
	struct iovec iov = { &byte, 1 };
	struct msghdr m = { .msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = u.buf,
			    .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *c;
	int sp[2], nul;

	alarm(10);
	close(e->other);
	if (drop_to(NOBODY) < 0)
		return 2;
	nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (nul < 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp))
		return 3;
	if (send_hello_with_fds(sp[1], nul, 250) < 0)
		return 4;
	memset(u.buf, 0, sizeof(u.buf));
	c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &sp[0], sizeof(int));
	if (sendmsg(e->ctl, &m, MSG_NOSIGNAL) != 1)
		return 5;
	/* Hold sp[1] until the parent is done. */
	while (read(e->ctl, &byte, 1) > 0)
		;
	return 0;
}

/* The same with the fds queued for sure before the handshake starts. */
static void test_unauthenticated_fds_never_installed_socketpair(void **state)
{
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	char byte;
	struct iovec iov = { &byte, 1 };
	struct msghdr m = { .msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = u.buf,
			    .msg_controllen = sizeof(u.buf) };
	cprxfer_channel *ch = NULL;
	struct evil_pair e;
	struct rlimit old, low;
	int ctl[2], sock, before;
	pid_t pid;

	if (geteuid() != 0)
		skip();
	assert_int_equal(
		socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ctl), 0);
	e.ctl = ctl[1];
	e.other = ctl[0];
	pid = tu_fork(evil_pair_child, &e);
	assert_true(pid > 0);
	close(ctl[1]);
	if (recvmsg(ctl[0], &m, MSG_CMSG_CLOEXEC) != 1)
		fail_msg("the child sent no socket: exit %d", tu_wait(pid));
	assert_non_null(CMSG_FIRSTHDR(&m));
	memcpy(&sock, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof(int));

	assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
	low = old;
	low.rlim_cur = 64;
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
	before = tu_count_fds();
	assert_int_equal(cprxfer_channel_open(sock, &ch), -EPERM);
	/* sock was taken over and closed; nothing else came or went. */
	assert_int_equal(tu_count_fds(), before - 1);
	assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
	assert_null(ch);
	assert_non_null(strstr(cprxfer_errmsg(), "uid 65534"));
	close(ctl[0]);
	assert_int_equal(tu_wait(pid), 0);
}

/* An allowed peer that attaches fds to its HELLO: -EPROTO, none kept. */
static void test_handshake_fds_refused(void **state)
{
	cprxfer_channel *ch = NULL;
	char buf[4096];
	int sv[2], nul, before;
	ssize_t n;

	nul = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_true(nul >= 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	assert_int_equal(send_hello_with_fds(sv[1], nul, 10), 0);
	before = tu_count_fds();
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), -EPROTO);
	/* sv[0] is gone (taken over), and nothing arrived. */
	assert_int_equal(tu_count_fds(), before - 1);
	assert_null(ch);
	assert_non_null(strstr(cprxfer_errmsg(), "fds"));
	/* The peer was told: our HELLO, then a refusing ACK. */
	n = read(sv[1], buf, sizeof(buf));
	assert_true(n >= 32 + 24);
	assert_int_equal(buf[32 + 5], 6);
	close(sv[1]);
	close(nul);
}

/* ---- a peer allowed by pid: judged through its pidfd ---------------- */

struct pid_peer {
	char path[108];
	int go[2];	 /* the parent says when to connect */
	bool exit_early; /* connect raw, then exit before being judged */
};

static int pid_peer(void *arg)
{
	struct pid_peer *p = arg;
	char c;

	alarm(10);
	close(p->go[1]);
	if (drop_to(NOBODY) < 0)
		return 2;
	if (read(p->go[0], &c, 1) != 1)
		return 3;
	if (p->exit_early)
		return raw_connect(p->path) >= 0 ? 0 : 4;
	{
		struct peer q = { .want = 0 };

		snprintf(q.path, sizeof(q.path), "%s", p->path);
		return connector(&q);
	}
}

static void test_allowed_pid_judged_by_pidfd(void **state)
{
	struct pid_peer p = { .exit_early = false };
	cprxfer_opts *o;
	cprxfer_listener *l;
	cprxfer_channel *ch = NULL;
	pid_t pid, peer;
	int round;

	if (geteuid() != 0)
		skip();
	assert_int_equal(chmod(dir, 0711), 0);
	snprintf(p.path, sizeof(p.path), "%s/bypid.sock", dir);
	for (round = 0; round < 2; round++) {
		p.exit_early = round == 1;
		assert_int_equal(pipe2(p.go, O_CLOEXEC), 0);
		pid = tu_fork(pid_peer, &p);
		assert_true(pid > 0);
		close(p.go[0]);
		/* Made after the fork: the child inherits no heap of ours. */
		o = cprxfer_opts_new();
		assert_non_null(o);
		assert_int_equal(cprxfer_opts_allow_pid(o, pid), 0);
		assert_int_equal(cprxfer_opts_set_socket_mode(o, 0666), 0);
		assert_int_equal(cprxfer_listen_opts(p.path, o, &l), 0);
		cprxfer_opts_free(o);
		assert_int_equal(write(p.go[1], "x", 1), 1);
		close(p.go[1]);
		if (!p.exit_early) {
			/* Alive: accepted although its uid is not ours. */
			assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
			assert_int_equal(
				cprxfer_channel_peer(ch, &peer, NULL, NULL), 0);
			assert_int_equal(peer, pid);
			cprxfer_channel_close(ch);
			ch = NULL;
			assert_int_equal(tu_wait(pid), 0);
		} else {
			/* Gone (and reaped) before we judge it: refused. */
			assert_int_equal(tu_wait(pid), 0);
			assert_int_equal(cprxfer_accept(l, 1000, &ch), -EPERM);
			assert_null(ch);
			assert_non_null(strstr(cprxfer_errmsg(), "exited"));
			print_message("# %s\n", cprxfer_errmsg());
		}
		cprxfer_listener_close(l);
	}
	assert_int_equal(chmod(dir, 0700), 0);
}

/* ---- item 10: the socket's mode and group --------------------------- */

static void test_socket_mode_lets_allowed_uid_connect(void **state)
{
	struct peer p = { .uid = NOBODY, .want = 0 };
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_listener *l;
	cprxfer_channel *ch = NULL;
	struct stat st;
	uid_t uid;
	pid_t pid;

	if (geteuid() != 0)
		skip();
	assert_int_equal(chmod(dir, 0711), 0);
	snprintf(p.path, sizeof(p.path), "%s/shared.sock", dir);
	assert_int_equal(cprxfer_opts_allow_uid(o, NOBODY), 0);

	/* The default 0600: the allowed uid cannot even connect. */
	assert_int_equal(cprxfer_listen_opts(p.path, o, &l), 0);
	p.want = -EACCES;
	pid = tu_fork(connector, &p);
	assert_true(pid > 0);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_listener_close(l);

	/* 0660 and its group: it connects and completes the handshake. */
	assert_int_equal(cprxfer_opts_set_socket_mode(o, 0660), 0);
	assert_int_equal(cprxfer_opts_set_socket_group(o, NOBODY), 0);
	assert_int_equal(cprxfer_opts_set_socket_mode(o, 01660), -EINVAL);
	assert_int_equal(cprxfer_listen_opts(p.path, o, &l), 0);
	assert_int_equal(stat(p.path, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0660);
	assert_int_equal(st.st_gid, NOBODY);
	p.want = 0;
	pid = tu_fork(connector, &p);
	assert_true(pid > 0);
	assert_int_equal(cprxfer_accept(l, 5000, &ch), 0);
	assert_int_equal(cprxfer_channel_peer(ch, NULL, &uid, NULL), 0);
	assert_int_equal(uid, NOBODY);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_listener_close(l);
	cprxfer_opts_free(o);
	assert_int_equal(chmod(dir, 0700), 0);
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
		tu_test(test_accept_bounded_with_silent_peers),
		tu_test(test_accept_drops_expired_handshakes),
		tu_test(test_listener_fd_event_loop_never_blocks),
		tu_test(test_unauthenticated_fds_never_installed),
		tu_test(test_unauthenticated_fds_never_installed_socketpair),
		tu_test(test_handshake_fds_refused),
		tu_test(test_allowed_pid_judged_by_pidfd),
		tu_test(test_socket_mode_lets_allowed_uid_connect),
	};

	return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
