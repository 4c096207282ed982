/* SPDX-License-Identifier: MIT */
/*
 * Rendezvous: the incoming process listens on a path, the outgoing one
 * connects to it, in either order.
 *
 * The listener binds a temporary name in the path's directory, makes it
 * 0600, listens, and only then renames it into place: a connect woken
 * by the path's appearance always finds a listening socket. A socket
 * left at the path by a dead listener (connect gives ECONNREFUSED) is
 * replaced; anything else there is refused.
 *
 * The connector that finds nothing (no path, or a stale socket) watches
 * the directory with inotify and retries only when the name appears or
 * changes: no polling, no sleeping, every wait bounded by the deadline.
 */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "cleanup.h"
#include "error.h"
#include "wire.h"

#define CX_BACKLOG 16

struct cprxfer_listener {
	int fd;
	char *path;
	dev_t dev; /* the socket inode we put at path */
	ino_t ino;
	struct cprxfer_opts o;
};

/* Milliseconds left until deadline (ns; INT64_MAX: none): -1 forever. */
static int ms_left(int64_t deadline)
{
	int64_t left;

	if (deadline == INT64_MAX)
		return -1;
	left = deadline - cx_now_ns();
	if (left <= 0)
		return 0;
	left = (left + 999999) / 1000000;
	return left > INT_MAX ? INT_MAX : (int)left;
}

static int64_t deadline_of(int timeout_ms)
{
	return timeout_ms < 0 ? INT64_MAX
			      : cx_now_ns() + (int64_t)timeout_ms * 1000000;
}

static int fill_addr(struct sockaddr_un *sa, const char *path, const char *what)
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

/* Length of the directory part of path ("" -> 0: the cwd). */
static size_t dir_len(const char *path)
{
	const char *s = strrchr(path, '/');

	if (!s)
		return 0;
	return s == path ? 1 : (size_t)(s - path);
}

/*
 * Is a listener alive on the socket at path? 1 yes, 0 stale
 * (ECONNREFUSED), or -errno.
 */
static int probe_live(const char *path)
{
	struct sockaddr_un sa;
	int fd, rc;

	rc = fill_addr(&sa, path, "cprxfer_listen");
	if (rc < 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return cx_err(-errno, "cprxfer_listen: socket: %s",
			      strerror(errno));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		rc = 1;
	else if (errno == EAGAIN)
		rc = 1; /* backlog full: very much alive */
	else if (errno == ECONNREFUSED || errno == ENOENT)
		rc = 0;
	else
		rc = cx_err(-errno,
			    "cprxfer_listen: probing the socket at '%s': %s",
			    path, strerror(errno));
	cx_close(fd);
	return rc;
}

static const char *kind_of(mode_t m)
{
	if (S_ISREG(m))
		return "a regular file";
	if (S_ISDIR(m))
		return "a directory";
	if (S_ISLNK(m))
		return "a symbolic link";
	if (S_ISFIFO(m))
		return "a FIFO";
	if (S_ISCHR(m) || S_ISBLK(m))
		return "a device node";
	return "something other than a socket";
}

/*
 * What is at path now: 0 nothing, 1 a stale socket (to replace), or an
 * error: -EEXIST for anything that is not a socket, -EADDRINUSE for a
 * live listener.
 */
static int check_path(const char *path)
{
	struct stat st;
	int rc;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		return cx_err(-errno, "cprxfer_listen: '%s': %s", path,
			      strerror(errno));
	}
	if (!S_ISSOCK(st.st_mode))
		return cx_err(
			-EEXIST,
			"cprxfer_listen: '%s' exists and is %s; refusing to replace it",
			path, kind_of(st.st_mode));
	rc = probe_live(path);
	if (rc == 1)
		return cx_err(
			-EADDRINUSE,
			"cprxfer_listen: another process is listening on '%s'",
			path);
	return rc < 0 ? rc : 1;
}

/* Bind fd to a fresh temporary name next to path, mode 0600. */
static int bind_temp(int fd, const char *path, char *tmp, size_t tmpsz,
		     struct stat *st)
{
	static const char hex[] = "0123456789abcdef";
	struct sockaddr_un sa;
	size_t dl = dir_len(path);
	int tries, rc;

	for (tries = 0; tries < 8; tries++) {
		struct timespec ts;
		unsigned long r;
		char sfx[17];
		int i;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		r = (unsigned long)ts.tv_nsec ^
		    ((unsigned long)getpid() << 20) ^
		    (unsigned long)tries * 0x9e3779b9ul;
		for (i = 0; i < 8; i++, r >>= 4)
			sfx[i] = hex[r & 15];
		sfx[8] = 0;
		if (dl)
			rc = snprintf(tmp, tmpsz, "%.*s/.cx-%s.tmp", (int)dl,
				      path, sfx);
		else
			rc = snprintf(tmp, tmpsz, ".cx-%s.tmp", sfx);
		if (rc < 0 || (size_t)rc >= tmpsz)
			return cx_err(
				-ENAMETOOLONG,
				"cprxfer_listen: no room for a temporary name next to '%s' in a unix socket path",
				path);
		rc = fill_addr(&sa, tmp, "cprxfer_listen");
		if (rc < 0)
			return rc;
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		if (errno != EADDRINUSE)
			return cx_err(-errno, "cprxfer_listen: bind '%s': %s",
				      tmp, strerror(errno));
	}
	if (tries == 8)
		return cx_err(
			-EADDRINUSE,
			"cprxfer_listen: no free temporary name next to '%s'",
			path);
	/* The umask applied at bind: set the mode we promise. */
	if (chmod(tmp, 0600) < 0 || lstat(tmp, st) < 0) {
		rc = cx_err(-errno, "cprxfer_listen: chmod '%s': %s", tmp,
			    strerror(errno));
		unlink(tmp);
		return rc;
	}
	return 0;
}

/* Move tmp to path: no-replace if nothing was there, else replace. */
static int place(const char *tmp, const char *path, int was)
{
	int rc;

	if (was == 0) {
		if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path,
			      RENAME_NOREPLACE) == 0)
			return 0;
		if (errno != EINVAL && errno != ENOSYS)
			return -errno;
		/* A filesystem without RENAME_NOREPLACE: link + unlink. */
		if (link(tmp, path) < 0)
			return -errno;
		unlink(tmp);
		return 0;
	}
	rc = rename(tmp, path);
	return rc < 0 ? -errno : 0;
}

CX_EXPORT int cprxfer_listen_opts(const char *path, const cprxfer_opts *o,
				  cprxfer_listener **out)
{
	char tmp[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct sockaddr_un sa;
	cprxfer_listener *l;
	struct stat st, now;
	int fd, rc, was, tries;

	if (!path || !out)
		return cx_err(-EINVAL, "cprxfer_listen: NULL argument");
	rc = fill_addr(&sa, path, "cprxfer_listen");
	if (rc < 0)
		return rc;
	l = calloc(1, sizeof(*l));
	if (l)
		l->path = strdup(path);
	if (!l || !l->path) {
		free(l);
		return cx_err(-ENOMEM, "cprxfer_listen: out of memory");
	}
	cx_opts_copy(&l->o, o);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		rc = cx_err(-errno, "cprxfer_listen: socket: %s",
			    strerror(errno));
		goto fail;
	}
	rc = bind_temp(fd, path, tmp, sizeof(tmp), &st);
	if (rc < 0)
		goto fail_fd;
	if (listen(fd, CX_BACKLOG) < 0) {
		rc = cx_err(-errno, "cprxfer_listen: listen: %s",
			    strerror(errno));
		goto fail_tmp;
	}
	/* Something may appear at path between the check and the move. */
	for (tries = 0; tries < 3; tries++) {
		was = check_path(path);
		if (was < 0) {
			rc = was;
			goto fail_tmp;
		}
		rc = place(tmp, path, was);
		if (rc != -EEXIST)
			break;
	}
	if (rc < 0) {
		rc = cx_err(rc, "cprxfer_listen: moving the socket to '%s': %s",
			    path, strerror(-rc));
		goto fail_tmp;
	}
	if (lstat(path, &now) < 0 || now.st_dev != st.st_dev ||
	    now.st_ino != st.st_ino) {
		/* Someone swapped our temporary name: do not trust it. */
		rc = cx_err(
			-EADDRINUSE,
			"cprxfer_listen: '%s' was replaced while it was being created",
			path);
		goto fail_fd;
	}
	l->fd = fd;
	l->dev = st.st_dev;
	l->ino = st.st_ino;
	*out = l;
	return 0;
fail_tmp:
	unlink(tmp);
fail_fd:
	cx_close(fd);
fail:
	free(l->path);
	free(l);
	return rc;
}

CX_EXPORT int cprxfer_listen(const char *path, cprxfer_listener **out)
{
	return cprxfer_listen_opts(path, NULL, out);
}

CX_EXPORT void cprxfer_listener_close(cprxfer_listener *l)
{
	struct stat st;

	if (!l)
		return;
	/* Unlink only our own socket, not a successor's. */
	if (lstat(l->path, &st) == 0 && st.st_dev == l->dev &&
	    st.st_ino == l->ino)
		unlink(l->path);
	cx_close(l->fd);
	free(l->path);
	free(l);
}

/* Wait for the listening socket to be readable; 0, -ETIMEDOUT, -errno. */
static int wait_fd(int fd, int64_t deadline)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	for (;;) {
		int ms = ms_left(deadline), n;

		n = poll(&p, 1, ms);
		if (n > 0)
			return 0;
		if (n == 0 && (ms == 0 || cx_now_ns() >= deadline))
			return -ETIMEDOUT;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

CX_EXPORT int cprxfer_accept(cprxfer_listener *l, int timeout_ms,
			     cprxfer_channel **out)
{
	char last[CX_REASON_MAX] = "";
	int64_t deadline = deadline_of(timeout_ms);
	int refused = 0, rc;

	if (!l || !out)
		return cx_err(-EINVAL, "cprxfer_accept: NULL argument");
	for (;;) {
		cprxfer_channel *ch;
		int fd;

		rc = wait_fd(l->fd, deadline);
		if (rc == -ETIMEDOUT)
			break;
		if (rc < 0)
			return cx_err(rc, "cprxfer_accept: poll: %s",
				      strerror(-rc));
		fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EAGAIN || errno == EINTR ||
			    errno == ECONNABORTED)
				continue;
			return cx_err(-errno, "cprxfer_accept: accept: %s",
				      strerror(errno));
		}
		rc = cx_channel_new(fd, &l->o, &ch);
		if (rc == -ENOMEM)
			return cx_err_prefix(rc, "cprxfer_accept");
		if (rc < 0) {
			/* Gone before we could look at it (fd closed). */
			refused = rc;
			snprintf(last, sizeof(last), "%s", cprxfer_errmsg());
			continue;
		}
		rc = cx_handshake(ch);
		if (rc == 0) {
			*out = ch;
			return 0;
		}
		/* A refused or vanished peer: drop it, keep waiting. */
		refused = rc;
		snprintf(last, sizeof(last), "peer pid %d: %s",
			 (int)ch->peer_pid, cprxfer_errmsg());
		cprxfer_channel_close(ch);
	}
	if (refused)
		return cx_err(
			refused,
			"cprxfer_accept: no acceptable peer within %d ms; last one dropped: %s",
			timeout_ms, last);
	return cx_err(-ETIMEDOUT,
		      "cprxfer_accept: no peer connected to '%s' within %d ms",
		      l->path, timeout_ms);
}

/* ---- connect ---------------------------------------------------------- */

/*
 * The inotify watch of a connector waiting for a path to appear. If the
 * path's directory does not exist yet, the nearest existing ancestor is
 * watched for the next component instead, and the watch moves down as
 * the directories appear.
 */
struct waiter {
	int ifd;
	int wd;
	bool ancestor;	/* watching above the path's dir */
	bool self_gone; /* the watched dir went away */
	char dir[PATH_MAX];
	char name[NAME_MAX + 1]; /* the entry that matters in dir */
};

/* Watch the deepest existing directory on the way to path. */
static int waiter_arm(struct waiter *w, const char *path)
{
	const uint32_t mask = IN_CREATE | IN_MOVED_TO | IN_ATTRIB |
			      IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR;
	size_t full = strlen(path), end = full;
	int rounds = 0;

	if (w->ifd < 0) {
		w->ifd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
		if (w->ifd < 0)
			return cx_err(-errno,
				      "cprxfer_connect: inotify_init1: %s",
				      strerror(errno));
	}
	for (;;) {
		size_t k = end, dl = 0;
		char entry[PATH_MAX];
		struct stat st;

		if (w->wd >= 0)
			inotify_rm_watch(w->ifd, w->wd);
		w->wd = -1;
		w->ancestor = end != full;
		w->self_gone = false;
		/* The entry is path[k..end), in the directory before it. */
		while (k > 0 && path[k - 1] != '/')
			k--;
		if (end - k > NAME_MAX || end - k == 0 || end >= PATH_MAX)
			return cx_err(-ENAMETOOLONG,
				      "cprxfer_connect: bad component in '%s'",
				      path);
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
		w->wd = inotify_add_watch(w->ifd, w->dir, mask);
		if (w->wd < 0) {
			if ((errno != ENOENT && errno != ENOTDIR) || k == 0 ||
			    (dl == 1 && path[0] == '/'))
				return cx_err(
					-errno,
					"cprxfer_connect: watching '%s': %s",
					w->dir, strerror(errno));
			/* The directory is missing: watch its parent. */
			end = dl;
			continue;
		}
		if (!w->ancestor)
			return 0;
		/* Did the directory appear before the watch? Go down. */
		memcpy(entry, path, end);
		entry[end] = 0;
		if (stat(entry, &st) < 0 || !S_ISDIR(st.st_mode) ||
		    ++rounds > 64)
			return 0;
		end = full;
	}
}

/*
 * Wait until something happens to the watched name: 1 retry, 0 timed
 * out, -errno.
 */
static int waiter_wait(struct waiter *w, int64_t deadline)
{
	union {
		char buf[4096];
		struct inotify_event align;
	} u;

	for (;;) {
		struct pollfd p = { .fd = w->ifd, .events = POLLIN };
		int ms = ms_left(deadline), n, hit = 0;
		ssize_t len;
		char *q;

		n = poll(&p, 1, ms);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return cx_err(-errno, "cprxfer_connect: poll: %s",
				      strerror(errno));
		if (n == 0) {
			if (ms == 0 || cx_now_ns() >= deadline)
				return 0;
			continue;
		}
		len = read(w->ifd, u.buf, sizeof(u.buf));
		if (len < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (len < 0)
			return cx_err(
				-errno,
				"cprxfer_connect: reading inotify events: %s",
				strerror(errno));
		for (q = u.buf; q < u.buf + len;) {
			struct inotify_event *e = (struct inotify_event *)q;

			if (e->mask & (IN_DELETE_SELF | IN_MOVE_SELF |
				       IN_IGNORED | IN_Q_OVERFLOW)) {
				w->self_gone = true;
				hit = 1;
			} else if (e->len && !strcmp(e->name, w->name)) {
				hit = 1;
			}
			q += sizeof(*e) + e->len;
		}
		if (hit)
			return 1;
	}
}

/*
 * One connect attempt: 0 connected, 1 nothing listens yet, -errno. The
 * socket is non-blocking; only a full backlog (EAGAIN) is waited for,
 * in a blocking connect bounded by SO_SNDTIMEO.
 */
static int try_connect(int fd, const struct sockaddr_un *sa, int64_t deadline)
{
	const struct sockaddr *a = (const struct sockaddr *)sa;
	bool blocking = false;

	for (;;) {
		struct timeval tv = { 0, 1000 };
		int ms;

		if (connect(fd, a, sizeof(*sa)) == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == ECONNREFUSED || errno == ENOENT)
			return 1;
		if (errno != EAGAIN && errno != EINPROGRESS)
			return cx_err(-errno,
				      "cprxfer_connect: connect '%s': %s",
				      sa->sun_path, strerror(errno));
		ms = ms_left(deadline);
		if (blocking || ms == 0)
			return cx_err(
				-ETIMEDOUT,
				"cprxfer_connect: '%s': the listener's backlog stayed full",
				sa->sun_path);
		if (ms > 0) {
			tv.tv_sec = ms / 1000;
			tv.tv_usec = (ms % 1000) * 1000;
		} else {
			tv.tv_usec = 0; /* 0: no limit */
		}
		if (fcntl(fd, F_SETFL, 0) < 0 ||
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

CX_EXPORT int cprxfer_connect_opts(const char *path, int timeout_ms,
				   const cprxfer_opts *o, cprxfer_channel **out)
{
	struct waiter w = { .ifd = -1, .wd = -1 };
	int64_t deadline = deadline_of(timeout_ms);
	struct sockaddr_un sa;
	cprxfer_channel *ch;
	bool fresh = false;
	int fd, rc;

	if (!path || !out)
		return cx_err(-EINVAL, "cprxfer_connect: NULL argument");
	rc = fill_addr(&sa, path, "cprxfer_connect");
	if (rc < 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return cx_err(-errno, "cprxfer_connect: socket: %s",
			      strerror(errno));
	for (;;) {
		rc = try_connect(fd, &sa, deadline);
		if (rc <= 0)
			break;
		if (ms_left(deadline) == 0) {
			rc = nobody(path, timeout_ms);
			break;
		}
		if (!fresh && (w.wd < 0 || w.ancestor || w.self_gone)) {
			/* (Re)aim the watch, then try again: no event lost. */
			rc = waiter_arm(&w, path);
			if (rc < 0)
				break;
			fresh = true;
			continue;
		}
		fresh = false;
		rc = waiter_wait(&w, deadline);
		if (rc == 0)
			rc = nobody(path, timeout_ms);
		if (rc < 0)
			break;
	}
	cx_close(w.ifd);
	if (rc < 0) {
		cx_close(fd);
		return rc;
	}
	rc = cx_channel_new(fd, o, &ch);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_connect");
	rc = cx_handshake(ch);
	if (rc < 0) {
		cprxfer_channel_close(ch);
		return rc;
	}
	*out = ch;
	return 0;
}

CX_EXPORT int cprxfer_connect(const char *path, int timeout_ms,
			      cprxfer_channel **out)
{
	return cprxfer_connect_opts(path, timeout_ms, NULL, out);
}
