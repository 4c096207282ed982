/* SPDX-License-Identifier: MIT */
/*
 * Rendezvous by path, internal side: what listen.c, accept.c and
 * connect.c share, and the connect the library uses for itself.
 *
 *   listen.c   bind a temporary name, set its mode, rename into place
 *   accept.c   accept peers and run their handshakes side by side
 *   connect.c  wait for the path (waiter.c), connect, handshake
 */
#ifndef CX_RENDEZVOUS_H
#define CX_RENDEZVOUS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "opts.h"

struct cx_pending;

struct cprxfer_listener {
	int fd; /* the listening socket */
	char *path;
	dev_t dev; /* the socket inode we put at path */
	ino_t ino;
	struct cprxfer_opts o;
	/* Handshakes in progress, owned here across accept calls. */
	struct cx_pending **pending;
	size_t npending;
	/*
	 * cprxfer_listener_fd(): an epoll instance holding fd (while a
	 * handshake slot is free), every pending handshake's socket and
	 * tfd, a timerfd armed at the earliest handshake deadline.
	 */
	int epfd;
	int tfd;
	bool listening; /* fd is in epfd's interest list */
};

/* Milliseconds left until deadline (ns; INT64_MAX: none): -1 forever. */
int cx_ms_left(int64_t deadline);

/* now + timeout_ms in ns on CLOCK_MONOTONIC; INT64_MAX if timeout < 0. */
int64_t cx_deadline_of(int timeout_ms);

/* Fill a unix address from path; what names the caller in errors. */
int cx_fill_addr(struct sockaddr_un *sa, const char *path, const char *what);

/* What a mode_t is, in words ("a regular file", "a FIFO", ...). */

/*
 * Make the listener's epoll and timer fds and its pending table (after
 * l->fd exists); 0 or -errno. cx_accept_fini() undoes it and closes
 * every pending handshake (listener_close).
 */
int cx_accept_init(struct cprxfer_listener *l);
void cx_accept_fini(struct cprxfer_listener *l);

/*
 * Connect to the listener at path and complete the handshake: waits up
 * to timeout_ms (< 0: forever) for a listener, then up to the options'
 * timeout for the handshake. watch_fd (-1: none) is polled alongside
 * every wait: once it is readable the call fails at once with -ECHILD
 * (the caller words the reason). cprxfer_connect_opts() is
 * cx_connect(path, timeout_ms, o, -1, out).
 */
int cx_connect(const char *path, int timeout_ms, const struct cprxfer_opts *o,
	       int watch_fd, cprxfer_channel **out);

/*
 * Start the handshake on ch, a channel around a connected socket, as a
 * connect in progress (cprxfer_connect_step): 0 (done or under way) or
 * the failure, reasons prefixed with prefix. ch stays the caller's.
 */
int cx_connect_handshake(cprxfer_channel *ch, const char *prefix);

/*
 * Step and poll what ch waits for until its connect ends: 0 with *out =
 * ch, or -errno with ch closed.
 */
int cx_connect_finish(cprxfer_channel *ch, cprxfer_channel **out);

#endif
