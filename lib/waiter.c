/* SPDX-License-Identifier: MIT */
/*
 * The path waiter (waiter.h): inotify on the deepest existing directory
 * on the way to a socket path, events matched to their watch.
 */
#include <stdio.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "waiter.h"

#define CX_WATCH_MASK                                                          \
	(IN_CREATE | IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | \
	 IN_ONLYDIR)

void cx_waiter_init(struct cx_waiter *w, const char *path)
{
	memset(w, 0, sizeof(*w));
	w->path = path;
	w->ifd = -1;
	w->wd = -1;
}

void cx_waiter_fini(struct cx_waiter *w)
{
	cx_close(w->ifd);
	w->ifd = -1;
	w->wd = -1;
}

/* Drop the current watch; its IN_IGNORED will not match any new wd. */
static void unwatch(struct cx_waiter *w)
{
	if (w->wd >= 0)
		inotify_rm_watch(w->ifd, w->wd);
	w->wd = -1;
}

/*
 * Split path[0..end) into the directory before its last component
 * (into w->dir) and that component (into w->name); the directory's
 * length, 0 if there is none (the cwd).
 */
static int split(struct cx_waiter *w, size_t end, size_t *dlen)
{
	const char *path = w->path;
	size_t k = end, dl = 0;

	while (k > 0 && path[k - 1] != '/')
		k--;
	if (end - k > NAME_MAX || end - k == 0 || end >= PATH_MAX)
		return cx_err(-ENAMETOOLONG,
			      "cprxfer_connect: bad component in '%s'", path);
	if (k > 0) {
		dl = k - 1;
		while (dl > 0 && path[dl - 1] == '/')
			dl--;
		if (dl == 0)
			dl = 1; /* the root */
		memcpy(w->dir, path, dl);
		w->dir[dl] = 0;
	} else {
		strcpy(w->dir, ".");
	}
	memcpy(w->name, path + k, end - k);
	w->name[end - k] = 0;
	*dlen = k == 0 ? 0 : dl;
	return 0;
}

int cx_waiter_arm(struct cx_waiter *w)
{
	size_t full = strlen(w->path), end = full;
	int rounds = 0, rc;

	if (w->ifd < 0) {
		w->ifd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
		if (w->ifd < 0)
			return cx_err(-errno,
				      "cprxfer_connect: inotify_init1: %s",
				      strerror(errno));
	}
	unwatch(w);
	for (;;) {
		char entry[PATH_MAX];
		struct stat st;
		size_t dl;
		int wd;

		rc = split(w, end, &dl);
		if (rc < 0)
			return rc;
		wd = inotify_add_watch(w->ifd, w->dir, CX_WATCH_MASK);
		if (wd < 0) {
			if ((errno != ENOENT && errno != ENOTDIR) || dl == 0 ||
			    (dl == 1 && w->path[0] == '/'))
				return cx_err(
					-errno,
					"cprxfer_connect: watching '%s': %s",
					w->dir, strerror(errno));
			/* The directory is missing: watch its parent. */
			end = dl;
			continue;
		}
		w->wd = wd;
		w->ancestor = end != full;
		if (!w->ancestor)
			return 0;
		/* Did the next directory appear before the watch? Go down. */
		memcpy(entry, w->path, end);
		entry[end] = 0;
		if (stat(entry, &st) < 0 || !S_ISDIR(st.st_mode) ||
		    ++rounds > 64)
			return 0;
		end = full;
	}
}

int cx_waiter_read(struct cx_waiter *w)
{
	union {
		char buf[4096];
		struct inotify_event align;
	} u;
	bool retry = false, rearm = false;

	for (;;) {
		ssize_t len = read(w->ifd, u.buf, sizeof(u.buf));
		char *q;

		if (len < 0 && errno == EINTR)
			continue;
		if (len < 0 && errno == EAGAIN)
			break;
		if (len < 0)
			return cx_err(
				-errno,
				"cprxfer_connect: reading inotify events: %s",
				strerror(errno));
		for (q = u.buf; q < u.buf + len;) {
			struct inotify_event *e = (struct inotify_event *)q;

			q += sizeof(*e) + e->len;
			if (e->mask & IN_Q_OVERFLOW) {
				/* Events were lost: look again from scratch. */
				rearm = true;
				continue;
			}
			if (w->wd < 0 || e->wd != w->wd)
				continue; /* a watch we dropped: its tail */
			if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF |
				       IN_IGNORED | IN_UNMOUNT)) {
				/* The watched directory really went away. */
				rearm = true;
			} else if (e->len && !strcmp(e->name, w->name)) {
				if (w->ancestor)
					rearm = true; /* a directory appeared */
				retry = true;
			}
		}
	}
	if (rearm) {
		int rc = cx_waiter_arm(w);

		if (rc < 0)
			return rc;
		return 1;
	}
	return retry ? 1 : 0;
}
