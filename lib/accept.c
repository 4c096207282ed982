/* SPDX-License-Identifier: MIT */
/*
 * Accept: take peers off the listening socket and run their handshakes
 * side by side.
 *
 * Every accepted peer becomes a pending handshake (handshake.h) owned
 * by the listener, bounded by the listener's channel timeout from the
 * moment it was accepted. The listener keeps one epoll instance that
 * holds the listening socket (while a handshake slot is free), every
 * pending handshake's socket (for what its next step waits for) and a
 * timerfd armed at the earliest handshake deadline: it is readable
 * exactly when accept can make progress, which is what
 * cprxfer_listener_fd() hands to an event loop.
 *
 * progress() does everything that can be done without blocking: step
 * the handshakes that are ready, drop those past their deadline, accept
 * newcomers. The blocking accept is progress() and a poll() of the
 * epoll fd until its own timeout, so a silent or slow peer holds up no
 * other, and accept returns within its timeout however many peers stay
 * silent. Handshakes still pending then stay with the listener for the
 * next call; cprxfer_listener_close() closes them.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "channel.h"
#include "cleanup.h"
#include "error.h"
#include "handshake.h"
#include "rendezvous.h"

/* Handshakes one listener runs at once; more peers wait in the backlog. */
#define CX_PENDING_MAX 32

typedef struct cx_pending {
	cprxfer_channel *ch;
	struct cx_hs hs;
	short events; /* what epoll watches its socket for */
} cx_pending;

/* epoll_event.data.ptr of the listening socket and of the timer. */
static char listen_tag, timer_tag;

static void pending_free(cx_pending *p)
{
	cprxfer_channel_close(p->ch);
	free(p);
}
CX_DEFINE_FREE(cx_pending, pending_free)

static uint32_t to_epoll(short events)
{
	return (events & POLLIN ? EPOLLIN : 0) |
	       (events & POLLOUT ? EPOLLOUT : 0);
}

static int watch(cprxfer_listener *l, int op, int fd, uint32_t events,
		 void *ptr)
{
	struct epoll_event ev = { .events = events, .data.ptr = ptr };

	if (epoll_ctl(l->epfd, op, fd, &ev) < 0)
		return cx_err(-errno, "cprxfer_accept: epoll_ctl: %s",
			      strerror(errno));
	return 0;
}

int cx_accept_init(cprxfer_listener *l)
{
	int rc;

	l->pending = calloc(CX_PENDING_MAX, sizeof(*l->pending));
	if (!l->pending)
		return cx_err(-ENOMEM, "cprxfer_listen: out of memory");
	l->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (l->epfd < 0)
		return cx_err(-errno, "cprxfer_listen: epoll_create1: %s",
			      strerror(errno));
	l->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (l->tfd < 0)
		return cx_err(-errno, "cprxfer_listen: timerfd_create: %s",
			      strerror(errno));
	rc = watch(l, EPOLL_CTL_ADD, l->tfd, EPOLLIN, &timer_tag);
	if (rc == 0)
		rc = watch(l, EPOLL_CTL_ADD, l->fd, EPOLLIN, &listen_tag);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_listen");
	l->listening = true;
	return 0;
}

void cx_accept_fini(cprxfer_listener *l)
{
	while (l->npending)
		pending_free(l->pending[--l->npending]);
	free(l->pending);
	l->pending = NULL;
	cx_close(l->epfd);
	cx_close(l->tfd);
	l->epfd = l->tfd = -1;
}

/* Arm the timer at the earliest handshake deadline, or disarm it. */
static int rearm(cprxfer_listener *l)
{
	struct itimerspec its = { { 0, 0 }, { 0, 0 } };
	int64_t first = INT64_MAX;
	bool want = l->npending < CX_PENDING_MAX;
	size_t i;

	for (i = 0; i < l->npending; i++)
		if (l->pending[i]->hs.deadline < first)
			first = l->pending[i]->hs.deadline;
	if (first != INT64_MAX) {
		if (first < 1)
			first = 1; /* 0 would disarm */
		its.it_value.tv_sec = first / 1000000000;
		its.it_value.tv_nsec = first % 1000000000;
	}
	if (timerfd_settime(l->tfd, TFD_TIMER_ABSTIME, &its, NULL) < 0)
		return cx_err(-errno, "cprxfer_accept: timerfd_settime: %s",
			      strerror(errno));
	/* Full: new peers wait in the backlog for a free slot. */
	if (want != l->listening) {
		int rc = watch(l, EPOLL_CTL_MOD, l->fd, want ? EPOLLIN : 0,
			       &listen_tag);

		if (rc < 0)
			return rc;
		l->listening = want;
	}
	return 0;
}

/* The last peer dropped, for the error accept may end with. */
struct dropped {
	int rc;
	char why[CX_REASON_MAX];
};

static void note_drop(struct dropped *d, const cx_pending *p, int rc)
{
	d->rc = rc;
	snprintf(d->why, sizeof(d->why), "peer pid %d: %s",
		 (int)p->ch->peer_pid, cprxfer_errmsg());
}

/* Remove pending handshake p from the table and from epoll. */
static void untrack(cprxfer_listener *l, cx_pending *p)
{
	size_t i;

	for (i = 0; i < l->npending; i++)
		if (l->pending[i] == p)
			break;
	if (i == l->npending)
		return;
	l->pending[i] = l->pending[--l->npending];
	epoll_ctl(l->epfd, EPOLL_CTL_DEL, p->ch->io.fd, NULL);
}

/*
 * Step p: 1 and *done if its handshake completed (p is then freed),
 * 0 if it still waits (epoll follows what it waits for), or it failed
 * and was dropped (noted in d).
 */
static int advance(cprxfer_listener *l, cx_pending *p, int64_t now,
		   struct dropped *d, cprxfer_channel **done)
{
	int rc = cx_hs_step(&p->hs);

	if (rc == -EAGAIN && now < p->hs.deadline) {
		if (p->hs.events != p->events) {
			rc = watch(l, EPOLL_CTL_MOD, p->ch->io.fd,
				   to_epoll(p->hs.events), p);
			if (rc == 0)
				p->events = p->hs.events;
		}
		if (rc == -EAGAIN)
			return 0;
	}
	if (rc == -EAGAIN)
		rc = cx_err(-ETIMEDOUT,
			    "handshake: timed out waiting for the peer");
	untrack(l, p);
	if (rc == 0) {
		*done = cx_steal_ptr(&p->ch);
		free(p);
		return 1;
	}
	note_drop(d, p, rc);
	pending_free(p);
	return 0;
}

/*
 * Take one peer off the listening socket and start its handshake: 1 a
 * handshake is now pending (or the peer was dropped), 0 nothing to
 * accept, 2 its handshake completed already (*done), or -errno.
 */
static int accept_one(cprxfer_listener *l, struct dropped *d,
		      cprxfer_channel **done)
{
	cx_auto(cx_pending) *p = NULL;
	int fd, rc;

	fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
	if (fd < 0) {
		if (errno == EAGAIN || errno == EINTR || errno == ECONNABORTED)
			return 0;
		return cx_err(-errno, "cprxfer_accept: accept: %s",
			      strerror(errno));
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		cx_close(fd);
		return cx_err(-ENOMEM, "cprxfer_accept: out of memory");
	}
	rc = cx_channel_new(fd, &l->o, &p->ch);
	if (rc == -ENOMEM)
		return cx_err_prefix(rc, "cprxfer_accept");
	if (rc < 0) {
		/* Gone before we could look at it. */
		d->rc = rc;
		snprintf(d->why, sizeof(d->why), "%s", cprxfer_errmsg());
		return 1;
	}
	cx_hs_start(&p->hs, p->ch);
	rc = cx_hs_step(&p->hs);
	if (rc == 0) {
		*done = cx_steal_ptr(&p->ch);
		return 2;
	}
	if (rc != -EAGAIN) {
		note_drop(d, p, rc);
		return 1;
	}
	p->events = p->hs.events;
	rc = watch(l, EPOLL_CTL_ADD, p->ch->io.fd, to_epoll(p->events), p);
	if (rc < 0)
		return rc;
	l->pending[l->npending++] = cx_steal_ptr(&p);
	return 1;
}

/*
 * Everything that can be done now without blocking: 1 and *done when a
 * handshake completed, 0 when none did, or -errno (the listener is
 * broken: epoll, timer or accept4 failed).
 */
static int progress(cprxfer_listener *l, struct dropped *d,
		    cprxfer_channel **done)
{
	struct epoll_event ev[CX_PENDING_MAX + 2];
	bool newcomers = false;
	int64_t now;
	size_t i;
	int n, k, rc = 0;

	n = epoll_wait(l->epfd, ev, CX_PENDING_MAX + 2, 0);
	if (n < 0 && errno != EINTR)
		return cx_err(-errno, "cprxfer_accept: epoll_wait: %s",
			      strerror(errno));
	now = cx_now_ns();
	for (k = 0; k < n && rc == 0; k++) {
		if (ev[k].data.ptr == &timer_tag) {
			uint64_t ticks;

			if (read(l->tfd, &ticks, sizeof(ticks)) < 0 &&
			    errno != EAGAIN)
				return cx_err(-errno,
					      "cprxfer_accept: timerfd: %s",
					      strerror(errno));
		} else if (ev[k].data.ptr == &listen_tag) {
			newcomers = true;
		} else {
			rc = advance(l, ev[k].data.ptr, now, d, done);
		}
	}
	/* Handshakes past their deadline, whether or not the timer said. */
	for (i = l->npending; rc == 0 && i-- > 0;)
		if (now >= l->pending[i]->hs.deadline)
			rc = advance(l, l->pending[i], now, d, done);
	while (rc == 0 && newcomers && l->npending < CX_PENDING_MAX) {
		rc = accept_one(l, d, done);
		if (rc == 0)
			break;
		rc = rc == 2 ? 1 : rc < 0 ? rc : 0;
	}
	if (rc >= 0) {
		int r = rearm(l);

		if (r < 0)
			return r;
	}
	return rc;
}

CX_EXPORT int cprxfer_accept(cprxfer_listener *l, int timeout_ms,
			     cprxfer_channel **out)
{
	int64_t deadline = cx_deadline_of(timeout_ms);
	struct dropped d = { 0, "" };
	cprxfer_channel *ch = NULL;
	int rc;

	if (!l || !out)
		return cx_err(-EINVAL, "cprxfer_accept: NULL argument");
	for (;;) {
		struct pollfd p = { .fd = l->epfd, .events = POLLIN };
		int ms;

		rc = progress(l, &d, &ch);
		if (rc < 0)
			return rc;
		if (rc == 1) {
			*out = ch;
			return 0;
		}
		ms = cx_ms_left(deadline);
		if (ms == 0)
			break;
		if (poll(&p, 1, ms) < 0 && errno != EINTR)
			return cx_err(-errno, "cprxfer_accept: poll: %s",
				      strerror(errno));
	}
	if (timeout_ms == 0)
		return cx_err(
			-EAGAIN,
			"cprxfer_accept: no handshake on '%s' completed yet (%zu pending)%s%s",
			l->path, l->npending, d.rc ? "; dropped " : "", d.why);
	if (d.rc)
		return cx_err(
			d.rc,
			"cprxfer_accept: no acceptable peer within %d ms; last one dropped: %s",
			timeout_ms, d.why);
	if (l->npending)
		return cx_err(
			-ETIMEDOUT,
			"cprxfer_accept: no handshake on '%s' completed within %d ms (%zu still pending)",
			l->path, timeout_ms, l->npending);
	return cx_err(-ETIMEDOUT,
		      "cprxfer_accept: no peer connected to '%s' within %d ms",
		      l->path, timeout_ms);
}
