/* SPDX-License-Identifier: MIT */
/*
 * Rendezvous by path: the incoming process listens on a path
 * (listen.c), the outgoing one connects to it (connect.c, which waits
 * for the path with waiter.c), in either order; the listener accepts
 * peers and runs their handshakes side by side (accept.c). This file
 * holds the small helpers they share.
 */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "channel.h"
#include "error.h"
#include "rendezvous.h"

int cx_ms_left(int64_t deadline)
{
	int64_t left;

	if (deadline == INT64_MAX)
		return -1;
	left = deadline - cx_now_ns();
	if (left <= 0)
		return 0;
	/* Round up: never wake a hair before the deadline. */
	left = (left + 999999) / 1000000;
	return left > INT_MAX ? INT_MAX : (int)left;
}

int64_t cx_deadline_of(int timeout_ms)
{
	return timeout_ms < 0 ? INT64_MAX
			      : cx_now_ns() + (int64_t)timeout_ms * 1000000;
}

int cx_fill_addr(struct sockaddr_un *sa, const char *path, const char *what)
{
	size_t n = strlen(path);

	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (n == 0)
		return cx_err(-EINVAL, "%s: empty path", what);
	if (n >= sizeof(sa->sun_path))
		return cx_err(
			-ENAMETOOLONG,
			"%s: path '%s' is %zu bytes, a unix socket path holds at most %zu",
			what, path, n, sizeof(sa->sun_path) - 1);
	memcpy(sa->sun_path, path, n + 1);
	return 0;
}
