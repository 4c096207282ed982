/* SPDX-License-Identifier: MIT */
/*
 * The path waiter: how a connector waits, without polling, for a socket
 * path to appear or change.
 *
 * It watches, with inotify, the path's directory for the path's name.
 * If that directory does not exist, it watches the deepest existing
 * ancestor for the next missing component, and moves down as the
 * directories appear; if the watched directory goes away, it moves up.
 * Events are matched to the watch descriptor they belong to, so the
 * IN_IGNORED the kernel queues when the waiter itself drops a watch is
 * not taken for "the directory went away".
 *
 * Use: cx_waiter_arm(), then try the path again (an event between the
 * failed try and the arm is not lost: the retry sees its effect), then
 * poll cx_waiter_fd() and call cx_waiter_read() when it is readable.
 */
#ifndef CX_WAITER_H
#define CX_WAITER_H

#include <limits.h>
#include <stdbool.h>

struct cx_waiter {
	const char *path; /* not owned */
	int ifd;	  /* inotify instance; -1 until armed */
	int wd;		  /* the one live watch; -1: none */
	bool ancestor;	  /* watching above the path's directory */
	char dir[PATH_MAX];
	char name[NAME_MAX + 1]; /* the entry that matters in dir */
};

void cx_waiter_init(struct cx_waiter *w, const char *path);
void cx_waiter_fini(struct cx_waiter *w);

/* (Re)aim the watch at the deepest existing directory; 0 or -errno. */
int cx_waiter_arm(struct cx_waiter *w);

/* The fd to poll for POLLIN; -1 before the first arm. */
static inline int cx_waiter_fd(const struct cx_waiter *w)
{
	return w->ifd;
}

/* Whether the waiter needs an arm before the next wait. */
static inline bool cx_waiter_armed(const struct cx_waiter *w)
{
	return w->wd >= 0;
}

/*
 * Consume the queued events: 1 if the path may have changed (retry;
 * the watch is re-aimed first when a directory appeared or went away),
 * 0 if nothing that matters happened, or -errno.
 */
int cx_waiter_read(struct cx_waiter *w);

#endif
