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
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include "channel.h"
#include "cleanup.h"
#include "error.h"
#include "handshake.h"
#include "rendezvous.h"
#include "waiter.h"

/* A full backlog is waited for in slices this long (ms), watch_fd between. */
#define CX_BACKLOG_SLICE_MS 50

static int watched_fired(int watch_fd)
{
	struct pollfd p = { .fd = watch_fd, .events = POLLIN };

	return watch_fd >= 0 && poll(&p, 1, 0) > 0;
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
 * One connect attempt: 0 connected, 1 nothing listens yet, -errno. The
 * socket is non-blocking; only a full backlog (EAGAIN) is waited for,
 * by a blocking connect bounded by SO_SNDTIMEO, in slices so that
 * watch_fd is looked at between them.
 */
static int try_connect(int fd, const struct sockaddr_un *sa, int64_t deadline,
		       int watch_fd)
{
	const struct sockaddr *a = (const struct sockaddr *)sa;
	bool blocking = false;

	for (;;) {
		struct timeval tv = { 0, 0 };
		int ms;

		if (connect(fd, a, sizeof(*sa)) == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == ENOENT)
			return 1;
		if (errno == ECONNREFUSED)
			return refused_why(sa->sun_path);
		if (errno != EAGAIN && errno != EINPROGRESS)
			return cx_err(-errno,
				      "cprxfer_connect: connect '%s': %s",
				      sa->sun_path, strerror(errno));
		if (watched_fired(watch_fd))
			return fired(sa->sun_path);
		ms = cx_ms_left(deadline);
		if (ms == 0)
			return cx_err(
				-ETIMEDOUT,
				"cprxfer_connect: '%s': the listener's backlog stayed full",
				sa->sun_path);
		if (ms < 0 || ms > CX_BACKLOG_SLICE_MS)
			ms = CX_BACKLOG_SLICE_MS;
		tv.tv_sec = ms / 1000;
		tv.tv_usec = (ms % 1000) * 1000;
		if ((!blocking && fcntl(fd, F_SETFL, 0) < 0) ||
		    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) <
			    0)
			return cx_err(
				-errno,
				"cprxfer_connect: setting a connect timeout: %s",
				strerror(errno));
		blocking = true;
	}
}

static int nobody(const char *path, int timeout_ms)
{
	return cx_err(-ETIMEDOUT,
		      "cprxfer_connect: nobody listened on '%s' within %d ms",
		      path, timeout_ms);
}

/*
 * Wait for the waiter or watch_fd until deadline: 1 the path may have
 * changed, 0 timed out, -errno (-ECHILD: watch_fd).
 */
static int wait_path(struct cx_waiter *w, int64_t deadline, int watch_fd)
{
	for (;;) {
		struct pollfd p[2] = {
			{ .fd = cx_waiter_fd(w), .events = POLLIN },
			{ .fd = watch_fd, .events = POLLIN },
		};
		int ms = cx_ms_left(deadline), n, rc;

		n = poll(p, watch_fd >= 0 ? 2 : 1, ms);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return cx_err(-errno, "cprxfer_connect: poll: %s",
				      strerror(errno));
		if (n == 0) {
			if (ms == 0 || cx_ms_left(deadline) == 0)
				return 0;
			continue;
		}
		if (watch_fd >= 0 && p[1].revents)
			return fired(w->path);
		rc = cx_waiter_read(w);
		if (rc != 0)
			return rc;
	}
}

/* Connect fd to path, waiting for a listener until deadline. */
static int reach(int fd, const struct sockaddr_un *sa, int timeout_ms,
		 int64_t deadline, int watch_fd)
{
	struct cx_waiter w;
	int rc;

	cx_waiter_init(&w, sa->sun_path);
	for (;;) {
		rc = try_connect(fd, sa, deadline, watch_fd);
		if (rc <= 0)
			break;
		if (watched_fired(watch_fd)) {
			rc = fired(sa->sun_path);
			break;
		}
		if (cx_ms_left(deadline) == 0) {
			rc = nobody(sa->sun_path, timeout_ms);
			break;
		}
		if (!cx_waiter_armed(&w)) {
			/* Aim the watch, then try again: no event lost. */
			rc = cx_waiter_arm(&w);
			if (rc < 0)
				break;
			continue;
		}
		rc = wait_path(&w, deadline, watch_fd);
		if (rc == 0)
			rc = nobody(sa->sun_path, timeout_ms);
		if (rc < 0)
			break;
	}
	cx_waiter_fini(&w);
	return rc;
}

int cx_connect(const char *path, int timeout_ms, const struct cprxfer_opts *o,
	       int watch_fd, cprxfer_channel **out)
{
	int64_t deadline = cx_deadline_of(timeout_ms);
	cx_autoclose int fd = -1;
	struct sockaddr_un sa;
	cprxfer_channel *ch;
	struct cx_hs hs;
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
	rc = reach(fd, &sa, timeout_ms, deadline, watch_fd);
	if (rc < 0)
		return rc;
	rc = cx_channel_new(cx_steal_fd(&fd), o, &ch);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_connect");
	cx_hs_start(&hs, ch);
	rc = cx_hs_run(&hs, watch_fd);
	if (rc < 0) {
		cprxfer_channel_close(ch);
		return rc;
	}
	*out = ch;
	return 0;
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
