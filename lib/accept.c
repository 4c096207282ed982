/* SPDX-License-Identifier: MIT */
/*
 * Accept: take peers off the listening socket and run their handshakes
 * side by side.
 *
 * Every accepted peer becomes a pending handshake (handshake.h) owned
 * by the listener, bounded by the listener's channel timeout from the
 * moment it was accepted. One poll() watches the listening socket and
 * every pending handshake, so a silent or slow peer holds up no other:
 * accept returns the first peer whose handshake completes, and returns
 * within its own timeout however many peers stay silent. Handshakes
 * still pending then stay with the listener for the next accept call;
 * cprxfer_listener_close() closes them.
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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
} cx_pending;

static void pending_free(cx_pending *p)
{
	cprxfer_channel_close(p->ch);
	free(p);
}
CX_DEFINE_FREE(cx_pending, pending_free)

void cx_accept_drop_pending(struct cprxfer_listener *l)
{
	while (l->npending)
		pending_free(l->pending[--l->npending]);
}

/* Remove pending handshake i (order is not kept); returns it. */
static struct cx_pending *take(cprxfer_listener *l, size_t i)
{
	struct cx_pending *p = l->pending[i];

	l->pending[i] = l->pending[--l->npending];
	return p;
}

/* The last peer dropped, for the error accept may end with. */
struct dropped {
	int rc;
	char why[CX_REASON_MAX];
};

static void note_drop(struct dropped *d, const struct cx_pending *p, int rc)
{
	d->rc = rc;
	snprintf(d->why, sizeof(d->why), "peer pid %d: %s",
		 (int)p->ch->peer_pid, cprxfer_errmsg());
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
	l->pending[l->npending++] = cx_steal_ptr(&p);
	return 1;
}

/*
 * Step the pending handshakes poll() reported on, and drop those past
 * their deadline: 1 and *done when one completed, else 0.
 */
static int step_pending(cprxfer_listener *l, const struct pollfd *pfd,
			struct dropped *d, cprxfer_channel **done)
{
	int64_t now = cx_now_ns();
	size_t i;

	/* Backwards: take() moves the last entry, already seen, into i. */
	for (i = l->npending; i-- > 0;) {
		struct cx_pending *p = l->pending[i];
		int rc;

		if (pfd[i].revents)
			rc = cx_hs_step(&p->hs);
		else if (now >= p->hs.deadline)
			rc = cx_err(
				-ETIMEDOUT,
				"handshake: timed out waiting for the peer");
		else
			continue;
		if (rc == -EAGAIN && now < p->hs.deadline)
			continue;
		if (rc == -EAGAIN)
			rc = cx_err(
				-ETIMEDOUT,
				"handshake: timed out waiting for the peer");
		p = take(l, i);
		if (rc == 0) {
			*done = cx_steal_ptr(&p->ch);
			free(p);
			return 1;
		}
		note_drop(d, p, rc);
		pending_free(p);
	}
	return 0;
}

CX_EXPORT int cprxfer_accept(cprxfer_listener *l, int timeout_ms,
			     cprxfer_channel **out)
{
	int64_t deadline = cx_deadline_of(timeout_ms);
	struct dropped d = { 0, "" };
	cprxfer_channel *ch = NULL;

	if (!l || !out)
		return cx_err(-EINVAL, "cprxfer_accept: NULL argument");
	if (!l->pending) {
		l->pending = calloc(CX_PENDING_MAX, sizeof(*l->pending));
		if (!l->pending)
			return cx_err(-ENOMEM, "cprxfer_accept: out of memory");
	}
	for (;;) {
		struct pollfd pfd[CX_PENDING_MAX + 1];
		struct pollfd *lfd = &pfd[l->npending];
		int64_t wake = deadline;
		size_t i;
		int n, ms, rc;

		for (i = 0; i < l->npending; i++) {
			pfd[i].fd = l->pending[i]->ch->io.fd;
			pfd[i].events = l->pending[i]->hs.events;
			pfd[i].revents = 0;
			if (l->pending[i]->hs.deadline < wake)
				wake = l->pending[i]->hs.deadline;
		}
		/* Full: new peers wait in the backlog for a free slot. */
		lfd->fd = l->npending < CX_PENDING_MAX ? l->fd : -1;
		lfd->events = POLLIN;
		lfd->revents = 0;
		ms = cx_ms_left(wake);
		n = poll(pfd, l->npending + 1, ms);
		if (n < 0 && errno != EINTR)
			return cx_err(-errno, "cprxfer_accept: poll: %s",
				      strerror(errno));
		/* Those polled first, then newcomers (pfd covers the former). */
		if (step_pending(l, pfd, &d, &ch)) {
			*out = ch;
			return 0;
		}
		if (n > 0 && lfd->revents) {
			do {
				rc = accept_one(l, &d, &ch);
				if (rc < 0)
					return rc;
			} while (rc == 1 && l->npending < CX_PENDING_MAX);
			if (rc == 2) {
				*out = ch;
				return 0;
			}
		}
		if (cx_ms_left(deadline) == 0)
			break;
	}
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
