/* SPDX-License-Identifier: MIT */
/*
 * Listen on a path.
 *
 * The listener binds a temporary name in the path's directory, gives it
 * the mode (0600 unless the options say otherwise) and group the
 * options ask for, listens, and only then renames it into place: a
 * connect woken by the path's appearance always finds a listening
 * socket with its final permissions. A socket left at the path by a
 * dead listener (connect gives ECONNREFUSED) is replaced; anything else
 * there is refused.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "cleanup.h"
#include "error.h"
#include "rendezvous.h"

#define CX_BACKLOG 16

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
	cx_autoclose int fd = -1;
	int rc;

	rc = cx_fill_addr(&sa, path, "cprxfer_listen");
	if (rc < 0)
		return rc;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return cx_err(-errno, "cprxfer_listen: socket: %s",
			      strerror(errno));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		return 1;
	if (errno == EAGAIN)
		return 1; /* backlog full: very much alive */
	if (errno == ECONNREFUSED || errno == ENOENT)
		return 0;
	return cx_err(-errno, "cprxfer_listen: probing the socket at '%s': %s",
		      path, strerror(errno));
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
			path, cx_file_kind(st.st_mode));
	rc = probe_live(path);
	if (rc == 1)
		return cx_err(
			-EADDRINUSE,
			"cprxfer_listen: another process is listening on '%s'",
			path);
	return rc < 0 ? rc : 1;
}

/* Give the bound temporary name the mode and group the options ask. */
static int set_perms(const char *tmp, const struct cprxfer_opts *o,
		     struct stat *st)
{
	/* The umask applied at bind: set the mode we promise. */
	if (chmod(tmp, o->socket_mode) < 0)
		return cx_err(-errno, "cprxfer_listen: chmod '%s' to %04o: %s",
			      tmp, (unsigned)o->socket_mode, strerror(errno));
	if (o->socket_gid != (gid_t)-1 &&
	    fchownat(AT_FDCWD, tmp, (uid_t)-1, o->socket_gid,
		     AT_SYMLINK_NOFOLLOW) < 0)
		return cx_err(-errno,
			      "cprxfer_listen: giving '%s' to group %u: %s",
			      tmp, (unsigned)o->socket_gid, strerror(errno));
	if (lstat(tmp, st) < 0)
		return cx_err(-errno, "cprxfer_listen: '%s': %s", tmp,
			      strerror(errno));
	return 0;
}

/* Bind fd to a fresh temporary name next to path. */
static int bind_temp(int fd, const char *path, char *tmp, size_t tmpsz)
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
		rc = cx_fill_addr(&sa, tmp, "cprxfer_listen");
		if (rc < 0)
			return rc;
		if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return 0;
		if (errno != EADDRINUSE)
			return cx_err(-errno, "cprxfer_listen: bind '%s': %s",
				      tmp, strerror(errno));
	}
	return cx_err(-EADDRINUSE,
		      "cprxfer_listen: no free temporary name next to '%s'",
		      path);
}

/* Move tmp to path: no-replace if nothing was there, else replace. */
static int place(const char *tmp, const char *path, int was)
{
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
	return rename(tmp, path) < 0 ? -errno : 0;
}

/*
 * Bind, set permissions, listen and move into place; on success the
 * temporary name is gone and *st is the placed socket's identity.
 */
static int listen_at(int fd, const char *path, const struct cprxfer_opts *o,
		     struct stat *st)
{
	char tmp[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct stat now;
	int rc, was, tries;

	rc = bind_temp(fd, path, tmp, sizeof(tmp));
	if (rc < 0)
		return rc;
	rc = set_perms(tmp, o, st);
	if (rc == 0 && listen(fd, CX_BACKLOG) < 0)
		rc = cx_err(-errno, "cprxfer_listen: listen: %s",
			    strerror(errno));
	/* Something may appear at path between the check and the move. */
	for (tries = 0; rc == 0 && tries < 3; tries++) {
		was = check_path(path);
		if (was < 0) {
			rc = was;
			break;
		}
		rc = place(tmp, path, was);
		if (rc == 0)
			break;
		if (rc != -EEXIST || tries == 2)
			rc = cx_err(
				rc,
				"cprxfer_listen: moving the socket to '%s': %s",
				path, strerror(-rc));
		else
			rc = 0;
	}
	if (rc < 0) {
		unlink(tmp);
		return rc;
	}
	if (lstat(path, &now) < 0 || now.st_dev != st->st_dev ||
	    now.st_ino != st->st_ino)
		/* Someone swapped our temporary name: do not trust it. */
		return cx_err(
			-EADDRINUSE,
			"cprxfer_listen: '%s' was replaced while it was being created",
			path);
	return 0;
}

static void listener_free(cprxfer_listener *l)
{
	cx_accept_fini(l);
	cx_close(l->fd);
	free(l->path);
	free(l);
}
CX_DEFINE_FREE(cprxfer_listener, listener_free)

CX_EXPORT int cprxfer_listen_opts(const char *path, const cprxfer_opts *o,
				  cprxfer_listener **out)
{
	cx_auto(cprxfer_listener) *l = NULL;
	cx_autofree char *name = NULL;
	struct sockaddr_un sa;
	struct stat st;
	int rc;

	if (!path || !out)
		return cx_err(-EINVAL, "cprxfer_listen: NULL argument");
	rc = cx_fill_addr(&sa, path, "cprxfer_listen");
	if (rc < 0)
		return rc;
	name = strdup(path);
	if (!name)
		return cx_err(-ENOMEM, "cprxfer_listen: out of memory");
	l = calloc(1, sizeof(*l));
	if (!l)
		return cx_err(-ENOMEM, "cprxfer_listen: out of memory");
	l->fd = l->epfd = l->tfd = -1;
	l->path = cx_steal_ptr(&name);
	cx_opts_copy(&l->o, o);
	l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (l->fd < 0)
		return cx_err(-errno, "cprxfer_listen: socket: %s",
			      strerror(errno));
	rc = cx_accept_init(l);
	if (rc < 0)
		return rc;
	rc = listen_at(l->fd, path, &l->o, &st);
	if (rc < 0)
		return rc;
	l->dev = st.st_dev;
	l->ino = st.st_ino;
	*out = cx_steal_ptr(&l);
	return 0;
}

CX_EXPORT int cprxfer_listen(const char *path, cprxfer_listener **out)
{
	return cprxfer_listen_opts(path, NULL, out);
}

CX_EXPORT int cprxfer_listener_fd(const cprxfer_listener *l)
{
	if (!l)
		return cx_err(-EINVAL, "cprxfer_listener_fd: NULL listener");
	return l->epfd;
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
	listener_free(l);
}
