/* SPDX-License-Identifier: MIT */
/*
 * The one fd an event loop polls for a channel (cprxfer_channel_fd).
 *
 * It is an epoll fd, made on first use, that holds what the operation in
 * progress waits for: the socket, with the events that operation needs
 * (EPOLLIN while reading, EPOLLOUT too while a save is going out), the
 * watched successor's pidfd, a timerfd set to the operation's deadline
 * and, while connecting, the fd of the path's waiter. The operations say
 * what they want (cx_chan_want, cx_chan_deadline, cx_chan_extra); the
 * epoll set follows. A loop needs only POLLIN on this one fd.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>

#include "channel.h"
#include "cleanup.h"
#include "error.h"

/* Make fd's registration in ep match events (0: not registered). */
static int reg(int ep, int fd, uint32_t had, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.fd = fd };
	int op;

	if (fd < 0 || had == events)
		return 0;
	op = !events ? EPOLL_CTL_DEL : had ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
	if (epoll_ctl(ep, op, fd, &ev) == 0)
		return 0;
	/* The fd number may be another file's by now (closed, reused). */
	if (errno == ENOENT && op != EPOLL_CTL_DEL &&
	    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0)
		return 0;
	if (errno == EEXIST && epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev) == 0)
		return 0;
	if ((errno == ENOENT || errno == EBADF) && op == EPOLL_CTL_DEL)
		return 0;
	return cx_err(-errno, "cprxfer_channel_fd: epoll_ctl(fd %d): %s", fd,
		      strerror(errno));
}

/* One registered fd: which one, with which events. */
static int follow(int ep, int *fd_now, uint32_t *ev_now, int fd,
		  uint32_t events)
{
	int rc;

	if (*fd_now != fd) {
		rc = reg(ep, *fd_now, *ev_now, 0);
		if (rc < 0)
			return rc;
		*fd_now = -1;
		*ev_now = 0;
	}
	rc = reg(ep, fd, *ev_now, fd < 0 ? 0 : events);
	if (rc < 0)
		return rc;
	*fd_now = fd;
	*ev_now = fd < 0 ? 0 : events;
	return 0;
}

static int arm(cprxfer_channel *ch)
{
	struct itimerspec its = { 0 };
	int64_t d = ch->poll.deadline;

	if (d == INT64_MAX && ch->poll.timer_fd < 0)
		return 0;
	if (ch->poll.timer_fd < 0) {
		int t = timerfd_create(CLOCK_MONOTONIC,
				       TFD_CLOEXEC | TFD_NONBLOCK);

		if (t < 0)
			return cx_err(-errno,
				      "cprxfer_channel_fd: timerfd_create: %s",
				      strerror(errno));
		ch->poll.timer_fd = t;
	}
	if (d != INT64_MAX) {
		/* 0 would disarm it: a deadline already past is 1 ns. */
		if (d <= 0)
			d = 1;
		its.it_value.tv_sec = d / 1000000000;
		its.it_value.tv_nsec = d % 1000000000;
	}
	/* Setting the timer also clears an expiry not yet read. */
	if (timerfd_settime(ch->poll.timer_fd, TFD_TIMER_ABSTIME, &its, NULL) <
	    0)
		return cx_err(-errno, "cprxfer_channel_fd: timerfd_settime: %s",
			      strerror(errno));
	return 0;
}

/* Bring the epoll set in line with what the channel wants. */
static int sync_set(cprxfer_channel *ch)
{
	struct cx_chan_poll *p = &ch->poll;
	int rc;

	if (p->ep < 0)
		return 0;
	rc = follow(p->ep, &p->sock_fd, &p->sock_ev, ch->io.fd, p->want);
	if (rc == 0)
		rc = follow(p->ep, &p->watch_fd, &p->watch_ev, ch->io.watch_fd,
			    EPOLLIN);
	if (rc == 0)
		rc = arm(ch);
	if (rc == 0)
		rc = follow(p->ep, &p->timer_reg, &p->timer_ev, p->timer_fd,
			    EPOLLIN);
	if (rc == 0)
		rc = follow(p->ep, &p->extra_reg, &p->extra_ev, p->extra,
			    EPOLLIN);
	return rc;
}

void cx_chan_poll_init(cprxfer_channel *ch)
{
	struct cx_chan_poll *p = &ch->poll;

	p->ep = -1;
	p->want = EPOLLIN;
	p->deadline = INT64_MAX;
	p->timer_fd = -1;
	p->extra = -1;
	p->sock_fd = p->watch_fd = p->timer_reg = p->extra_reg = -1;
	p->sock_ev = p->watch_ev = p->timer_ev = p->extra_ev = 0;
}

void cx_chan_poll_fini(cprxfer_channel *ch)
{
	cx_close(ch->poll.ep);
	cx_close(ch->poll.timer_fd);
	ch->poll.ep = ch->poll.timer_fd = -1;
}

int cx_chan_poll_fd(cprxfer_channel *ch)
{
	int rc;

	if (ch->poll.ep < 0) {
		ch->poll.ep = epoll_create1(EPOLL_CLOEXEC);
		if (ch->poll.ep < 0)
			return cx_err(-errno,
				      "cprxfer_channel_fd: epoll_create1: %s",
				      strerror(errno));
	}
	rc = sync_set(ch);
	return rc < 0 ? rc : ch->poll.ep;
}

int cx_chan_want(cprxfer_channel *ch, uint32_t events)
{
	ch->poll.want = events;
	return sync_set(ch);
}

int cx_chan_deadline(cprxfer_channel *ch, int64_t deadline_ns)
{
	ch->poll.deadline = deadline_ns;
	return sync_set(ch);
}

int cx_chan_extra(cprxfer_channel *ch, int fd)
{
	ch->poll.extra = fd;
	return sync_set(ch);
}

int cx_chan_resync(cprxfer_channel *ch)
{
	return sync_set(ch);
}
