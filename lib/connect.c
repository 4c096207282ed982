/* SPDX-License-Identifier: MIT */
/*
 * Connect: reach the listener at a path, waiting for it if needed, and
 * complete the handshake.
 *
 * A connector that finds nothing at the path (no such name, or a stale
 * socket a dead listener left) waits with the path waiter (waiter.h)
 * and tries again only when the name or a directory on its way changes:
 * no polling, no sleeping, every wait bounded by the deadline. A path
 * that holds something other than a socket fails at once (-ENOTSOCK).
 *
 * Every connect is a state machine hung on its channel (ch->conn):
 *
 *   REACH  the socket is not connected yet; the waiter's inotify fd is
 *          the channel's extra fd (cx_chan_extra), the deadline is the
 *          caller's timeout. A full backlog cannot be polled for (an
 *          unconnected AF_UNIX socket always polls writable and hung
 *          up), so it is tried again at growing intervals, 1 to 50 ms.
 *   HS     connected: the handshake (handshake.h) steps, the socket in
 *          the epoll set for what it waits for, the deadline the
 *          options' timeout.
 *   DYING  (a successor's channel) the peer closed: its pidfd gets a
 *          moment to turn readable so the failure names its exit.
 *   FAILED the step returns the failure again; only close is left.
 *
 * cprxfer_connect_step() makes what progress it can and returns; the
 * blocking calls (cprxfer_connect, cprxfer_successor_channel) are the
 * same steps with a poll() of what the channel waits for in between.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "channel.h"
#include "cleanup.h"
#include "error.h"
#include "handshake.h"
#include "rendezvous.h"
#include "successor.h"
#include "waiter.h"

/* A full backlog is tried again after 1, 2, 4 ... up to this many ms. */
#define CX_BACKLOG_MAX_MS 50
/* After a successor's channel closed, how long its pidfd gets to fire. */
#define CX_DEATH_GRACE_NS (1000 * 1000000ll)

enum {
	CX_CONN_REACH,
	CX_CONN_HS,
	CX_CONN_DYING,
	CX_CONN_FAILED
};

struct cx_connecting {
	int state;
	struct sockaddr_un sa; /* REACH: the address; the waiter's path */
	struct cx_waiter w;
	int timeout_ms;	  /* the caller's, for the reason text */
	int64_t deadline; /* REACH: until then a listener may appear */
	int backoff_ms;	  /* a full backlog: the last interval */
	struct cx_hs hs;
	int watch;	     /* cx_connect()'s watched fd (not owned), or -1 */
	const char *prefix;  /* names the caller in failures, or NULL */
	int64_t dying_until; /* DYING: the pidfd's grace */
	int rc;		     /* DYING, FAILED: the failure */
	char msg[CX_REASON_MAX];
};

static bool readable(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return fd >= 0 && poll(&p, 1, 0) > 0;
}

static int fired(const char *path)
{
	return cx_err(
		-ECHILD,
		"cprxfer_connect: '%s': the watched fd became readable while waiting",
		path);
}

/*
 * connect() said ECONNREFUSED: 1 if a stale socket (or, by now,
 * nothing) is at the path, so waiting makes sense; -ENOTSOCK if
 * something else is there.
 */
static int refused_why(const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return 1;
	if (S_ISSOCK(st.st_mode))
		return 1;
	return cx_err(
		-ENOTSOCK,
		"cprxfer_connect: '%s' is %s, not a socket; nothing will listen there",
		path, cx_file_kind(st.st_mode));
}

/*
 * One non-blocking connect attempt: 0 connected, 1 nothing listens yet,
 * 2 the listener's backlog is full, or -errno.
 */
static int try_connect(int fd, const struct sockaddr_un *sa)
{
	for (;;) {
		if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == ENOENT)
			return 1;
		if (errno == ECONNREFUSED)
			return refused_why(sa->sun_path);
		if (errno == EAGAIN || errno == EINPROGRESS)
			return 2;
		return cx_err(-errno, "cprxfer_connect: connect '%s': %s",
			      sa->sun_path, strerror(errno));
	}
}

/* Make the channel's fd wait for these, touching only what changed. */
static int wait_for(cprxfer_channel *ch, uint32_t sock_ev, int extra,
		    int64_t deadline)
{
	int rc = 0;

	if (ch->poll.want != sock_ev)
		rc = cx_chan_want(ch, sock_ev);
	if (rc == 0 && ch->poll.extra != extra)
		rc = cx_chan_extra(ch, extra);
	if (rc == 0 && ch->poll.deadline != deadline)
		rc = cx_chan_deadline(ch, deadline);
	return rc < 0 ? rc : -EAGAIN;
}

/*
 * The connect is over: nothing due, the socket watched for want
 * (EPOLLIN once connected; 0 after a failure, so that the fd of a
 * channel good only for close never turns readable).
 */
static int settle(cprxfer_channel *ch, uint32_t want)
{
	int rc = cx_chan_extra(ch, -1);

	if (rc == 0)
		rc = cx_chan_deadline(ch, INT64_MAX);
	if (rc == 0)
		rc = cx_chan_want(ch, want);
	return rc;
}

/* REACH: try the path; connected, go on with the handshake. */
static int reach(cprxfer_channel *ch, struct cx_connecting *c)
{
	int64_t now, retry;
	int rc;

	if (cx_waiter_armed(&c->w)) {
		rc = cx_waiter_read(
			&c->w); /* drain; the path is tried anyway */
		if (rc < 0)
			return rc;
	}
	for (;;) {
		if (readable(c->watch))
			return fired(c->sa.sun_path);
		rc = try_connect(ch->io.fd, &c->sa);
		if (rc < 0)
			return rc;
		if (rc == 0) {
			rc = cx_channel_peer_creds(ch);
			if (rc < 0)
				return cx_err_prefix(rc, "cprxfer_connect");
			/* Out of the set before its fd number is free. */
			rc = cx_chan_extra(ch, -1);
			if (rc < 0)
				return rc;
			cx_waiter_fini(&c->w);
			cx_hs_start(&c->hs, ch);
			c->state = CX_CONN_HS;
			return 0;
		}
		now = cx_now_ns();
		if (rc == 2) {
			if (now >= c->deadline)
				return cx_err(
					-ETIMEDOUT,
					"cprxfer_connect: '%s': the listener's backlog stayed full",
					c->sa.sun_path);
			c->backoff_ms = c->backoff_ms ? 2 * c->backoff_ms : 1;
			if (c->backoff_ms > CX_BACKLOG_MAX_MS)
				c->backoff_ms = CX_BACKLOG_MAX_MS;
			retry = now + (int64_t)c->backoff_ms * 1000000;
			return wait_for(ch, 0, cx_waiter_fd(&c->w),
					retry < c->deadline ? retry
							    : c->deadline);
		}
		c->backoff_ms = 0;
		if (now >= c->deadline)
			return cx_err(
				-ETIMEDOUT,
				"cprxfer_connect: nobody listened on '%s' within %d ms",
				c->sa.sun_path, c->timeout_ms);
		if (cx_waiter_armed(&c->w))
			break;
		/* Aim the watch, then try again: no event lost. */
		rc = cx_waiter_arm(&c->w);
		if (rc < 0)
			return rc;
	}
	/* An unconnected socket polls hung up: leave it out of the set. */
	return wait_for(ch, 0, cx_waiter_fd(&c->w), c->deadline);
}

/* HS: one handshake step. */
static int shake(cprxfer_channel *ch, struct cx_connecting *c)
{
	int rc;

	if (readable(c->watch))
		return cx_err(-ECHILD,
			      "handshake: the watched fd became readable");
	rc = cx_hs_step(&c->hs);
	if (rc != -EAGAIN)
		return rc;
	if (cx_now_ns() >= c->hs.deadline)
		return cx_err(-ETIMEDOUT,
			      "handshake: timed out waiting for the peer");
	return wait_for(ch, c->hs.events == POLLOUT ? EPOLLOUT : EPOLLIN, -1,
			c->hs.deadline);
}

/* Keep the failure rc (errmsg holds its reason): every step returns it. */
static int fail(cprxfer_channel *ch, struct cx_connecting *c, int rc)
{
	if (c->prefix)
		rc = cx_err_prefix(rc, "%s", c->prefix);
	snprintf(c->msg, sizeof(c->msg), "%s", cx_errmsg_get());
	c->rc = rc;
	c->state = CX_CONN_FAILED;
	settle(ch, 0);
	cx_waiter_fini(&c->w);
	return cx_err(rc, "%s", c->msg);
}

/*
 * The peer of a successor's channel closed or reset: it is dying, most
 * likely, and its pidfd turns readable a moment after its socket
 * closed. Wait for that (DYING), so the failure can name its exit.
 */
static int dying(cprxfer_channel *ch, struct cx_connecting *c, int rc)
{
	snprintf(c->msg, sizeof(c->msg), "%s", cx_errmsg_get());
	c->rc = rc;
	c->state = CX_CONN_DYING;
	c->dying_until = cx_now_ns() + CX_DEATH_GRACE_NS;
	return wait_for(ch, 0, -1, c->dying_until);
}

static int step(cprxfer_channel *ch)
{
	struct cx_connecting *c = ch->conn;
	int rc = 0;

	if (c->state == CX_CONN_FAILED)
		return cx_err(c->rc, "%s", c->msg);
	while (rc == 0) {
		if (ch->io.watch_fd >= 0 && readable(ch->io.watch_fd)) {
			rc = cx_child_err(ch->io.watch_pid, ch->io.watch_fd);
			break;
		}
		if (c->state == CX_CONN_REACH) {
			rc = reach(ch, c);
		} else if (c->state == CX_CONN_HS) {
			rc = shake(ch, c);
			if (rc == 0)
				break;
		} else if (cx_now_ns() >= c->dying_until) {
			rc = cx_err(c->rc, "%s", c->msg);
		} else {
			rc = wait_for(ch, 0, -1, c->dying_until);
		}
	}
	if (rc == -EAGAIN)
		return cx_err(
			-EAGAIN, "cprxfer_connect_step: not connected yet (%s)",
			c->state == CX_CONN_REACH ? "waiting for a listener"
			: c->state == CX_CONN_HS
				? "in the handshake"
				: "the peer closed; is it exiting?");
	if (rc < 0 && c->state == CX_CONN_HS && ch->io.watch_fd >= 0 &&
	    (rc == -ECONNRESET || rc == -EPIPE)) {
		rc = dying(ch, c, rc);
		if (rc == -EAGAIN)
			return cx_err(
				-EAGAIN,
				"cprxfer_connect_step: the peer closed; waiting a moment to see it exit");
	}
	if (rc < 0)
		return fail(ch, c, rc);
	rc = settle(ch, EPOLLIN);
	if (rc < 0)
		return fail(ch, c, rc);
	cx_connecting_free(ch);
	return 0;
}

int cx_connecting_err(const cprxfer_channel *ch, const char *what)
{
	if (ch->conn->state == CX_CONN_FAILED)
		return cx_err(
			-EPIPE,
			"%s: channel unusable: its connect failed (error %d); close it",
			what, ch->conn->rc);
	return cx_err(
		-EINPROGRESS,
		"%s: the channel is still connecting: call cprxfer_connect_step() until it returns 0",
		what);
}

void cx_connecting_free(cprxfer_channel *ch)
{
	struct cx_connecting *c = ch->conn;

	if (!c)
		return;
	if (ch->poll.extra == cx_waiter_fd(&c->w))
		cx_chan_extra(ch, -1);
	cx_waiter_fini(&c->w);
	free(c);
	ch->conn = NULL;
}

/* Hang a connect in state on ch (not yet connecting). */
static int conn_new(cprxfer_channel *ch, int state, int watch,
		    const char *prefix)
{
	struct cx_connecting *c = calloc(1, sizeof(*c));

	if (!c)
		return cx_err(-ENOMEM, "%s: out of memory",
			      prefix ? prefix : "cprxfer_connect");
	c->state = state;
	c->watch = watch;
	c->prefix = prefix;
	c->deadline = INT64_MAX;
	cx_waiter_init(&c->w, c->sa.sun_path);
	ch->conn = c;
	return 0;
}

/* The first step, in a start call: 0 (or in progress), or the failure. */
static int first_step(cprxfer_channel *ch, cprxfer_channel **out)
{
	int rc = step(ch);

	if (rc < 0 && rc != -EAGAIN) {
		cprxfer_channel_close(ch);
		return rc;
	}
	*out = ch;
	return 0;
}

static int connect_start(const char *path, int timeout_ms,
			 const struct cprxfer_opts *o, int watch_fd,
			 cprxfer_channel **out)
{
	cx_autoclose int fd = -1;
	struct sockaddr_un sa;
	cprxfer_channel *ch;
	int rc;

	if (!path || !out)
		return cx_err(-EINVAL, "cprxfer_connect: NULL argument");
	rc = cx_fill_addr(&sa, path, "cprxfer_connect");
	if (rc < 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return cx_err(-errno, "cprxfer_connect: socket: %s",
			      strerror(errno));
	rc = cx_channel_alloc(cx_steal_fd(&fd), o, &ch);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_connect");
	rc = conn_new(ch, CX_CONN_REACH, watch_fd, NULL);
	if (rc < 0) {
		cprxfer_channel_close(ch);
		return rc;
	}
	ch->conn->sa = sa;
	ch->conn->timeout_ms = timeout_ms;
	ch->conn->deadline = cx_deadline_of(timeout_ms);
	return first_step(ch, out);
}

int cx_connect_handshake(cprxfer_channel *ch, const char *prefix)
{
	int rc = conn_new(ch, CX_CONN_HS, -1, prefix);

	if (rc < 0)
		return rc;
	cx_hs_start(&ch->conn->hs, ch);
	rc = step(ch);
	return rc == -EAGAIN ? 0 : rc;
}

/* Step and poll what ch waits for until its connect ends: 0 or -errno. */
static int connect_run(cprxfer_channel *ch)
{
	for (;;) {
		struct cx_connecting *c = ch->conn;
		struct pollfd p[4] = {
			{ .fd = ch->poll.want ? ch->io.fd : -1,
			  .events = (short)ch->poll.want },
			{ .fd = ch->io.watch_fd, .events = POLLIN },
			{ .fd = ch->poll.extra, .events = POLLIN },
			{ .fd = c ? c->watch : -1, .events = POLLIN },
		};
		int rc;

		rc = c ? step(ch) : 0;
		if (rc != -EAGAIN)
			return rc;
		p[0].fd = ch->poll.want ? ch->io.fd : -1;
		p[0].events = (short)ch->poll.want;
		p[2].fd = ch->poll.extra;
		if (poll(p, 4, cx_ms_left(ch->poll.deadline)) < 0 &&
		    errno != EINTR)
			return fail(ch, c,
				    cx_err(-errno, "cprxfer_connect: poll: %s",
					   strerror(errno)));
	}
}

/* Run a started connect to its end, polling; ch is closed on failure. */
int cx_connect_finish(cprxfer_channel *ch, cprxfer_channel **out)
{
	int rc = connect_run(ch);

	if (rc < 0) {
		cprxfer_channel_close(ch);
		return rc;
	}
	*out = ch;
	return 0;
}

int cx_connect(const char *path, int timeout_ms, const struct cprxfer_opts *o,
	       int watch_fd, cprxfer_channel **out)
{
	cprxfer_channel *ch;
	int rc;

	rc = connect_start(path, timeout_ms, o, watch_fd, &ch);
	if (rc < 0)
		return rc;
	return cx_connect_finish(ch, out);
}

CX_EXPORT int cprxfer_connect_start(const char *path, int timeout_ms,
				    const cprxfer_opts *o,
				    cprxfer_channel **out)
{
	return connect_start(path, timeout_ms, o, -1, out);
}

CX_EXPORT int cprxfer_connect_step(cprxfer_channel *ch)
{
	if (!ch)
		return cx_err(-EINVAL, "cprxfer_connect_step: NULL channel");
	if (!ch->conn)
		return 0;
	return step(ch);
}

CX_EXPORT int cprxfer_connect_opts(const char *path, int timeout_ms,
				   const cprxfer_opts *o, cprxfer_channel **out)
{
	return cx_connect(path, timeout_ms, o, -1, out);
}

CX_EXPORT int cprxfer_connect(const char *path, int timeout_ms,
			      cprxfer_channel **out)
{
	return cx_connect(path, timeout_ms, NULL, -1, out);
}
