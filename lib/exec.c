/* SPDX-License-Identifier: MIT */
/*
 * Exec in place: the process execve()s its successor and keeps its PID.
 *
 * The state is encoded (fd numbers inline) into a memfd that is sealed
 * read-only, behind a HELLO frame that carries the application tag;
 * close-on-exec is cleared on exactly the fds the state names and on
 * that memfd; CPRXFER_EXEC_FD in the new environment tells the new image
 * where to look (load-exec.c reads it back).
 *
 * A helper process (exec-helper.c) shares the old address space and
 * holds it past the exec, so that its teardown happens outside the
 * blackout. With cprxfer_exec_opts() it also waits for the new image to
 * confirm (cprxfer_exec_commit) and, if it fails first, runs the old
 * program again with the same state.
 */
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "exec-helper.h"
#include "exec.h"
#include "opts.h"
#include "stream.h"
#include "wire.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

extern char **environ;

struct fdflag {
	int fd;
	int flags; /* as found: restored if the exec fails */
};

/* The HELLO frame in front of the stream: who wrote it, and the tag. */
static int write_hello(int fd, const char *tag)
{
	uint8_t p[CX_HDR + CX_HELLO_LEN + CX_TAG_MAX];
	size_t tlen = strlen(tag), n = CX_HDR + CX_HELLO_LEN + tlen;

	cx_frame_put(p, CX_F_HELLO, 0, CX_HELLO_LEN + tlen);
	cx_put32(p + CX_HDR, 0);
	cx_put32(p + CX_HDR + 4, (uint32_t)getpid());
	cx_put32(p + CX_HDR + 8, (uint32_t)geteuid());
	cx_put16(p + CX_HDR + 12, (uint16_t)tlen);
	cx_put16(p + CX_HDR + 14, 0);
	memcpy(p + CX_HDR + CX_HELLO_LEN, tag, tlen);
	if (write(fd, p, n) != (ssize_t)n)
		return cx_err(-errno, "writing the state memfd: %s",
			      strerror(errno));
	return 0;
}

int cx_exec_encode(const cprxfer_state *st, const char *tag, bool seal,
		   int *out)
{
	cx_autoclose int fd = -1;
	struct cx_io io;
	int rc;

	if (tag && strlen(tag) > CX_TAG_MAX)
		return cx_err(-ENAMETOOLONG, "tag longer than %d bytes",
			      CX_TAG_MAX);
	fd = memfd_create(CX_EXEC_MEMFD, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return cx_err(-errno, "memfd_create: %s", strerror(errno));
	rc = tag ? write_hello(fd, tag) : 0;
	if (rc < 0)
		return rc;
	rc = cx_io_init(&io, fd, false);
	if (rc < 0)
		return rc;
	rc = cx_encode(&io, st, CX_MODE_EXEC);
	cx_io_fini(&io);
	if (rc < 0)
		return rc;
	if (seal && fcntl(fd, F_ADD_SEALS, CX_EXEC_SEALS) < 0)
		return cx_err(-errno, "sealing the state memfd: %s",
			      strerror(errno));
	*out = cx_steal_fd(&fd);
	return 0;
}

/* The n-th fd of entry i (i >= st->n: the extras); *m: how many. */
static const int *entry_fds(const cprxfer_state *st, const int *extra, size_t i,
			    size_t *m)
{
	const int *fds;

	if (i >= st->n) {
		*m = 1;
		return &extra[i - st->n];
	}
	*m = cx_entry_fds(&st->e[i], &fds);
	return fds;
}

/*
 * The fds to pass: every fd the state names, once, and the extras. A
 * bitmap of fd numbers (its size follows the highest fd, which the fd
 * table bounds) tells a repeat at once: O(n), where a scan of what had
 * been collected was O(n^2).
 */
static int collect_fds(const cprxfer_state *st, const int *extra, size_t nx,
		       struct fdflag **out, size_t *n)
{
	cx_autofree struct fdflag *v = NULL;
	cx_autofree uint64_t *seen = NULL;
	size_t i, k = 0, m, x, top = 0;

	for (i = 0; i < st->n + nx; i++) {
		const int *fds = entry_fds(st, extra, i, &m);

		for (x = 0; x < m; x++)
			if (fds[x] >= 0 && (size_t)fds[x] >= top)
				top = (size_t)fds[x] + 1;
	}
	v = malloc((cx_state_nfds(st) + nx) * sizeof(*v));
	seen = calloc(top / 64 + 1, sizeof(*seen));
	if (!v || !seen)
		return cx_err(-ENOMEM, "out of memory");
	for (i = 0; i < st->n + nx; i++) {
		const int *fds = entry_fds(st, extra, i, &m);

		for (x = 0; x < m; x++) {
			int fd = fds[x];
			uint64_t bit;

			if (fd < 0)
				continue;
			bit = 1ull << (fd % 64);
			if (seen[fd / 64] & bit)
				continue;
			seen[fd / 64] |= bit;
			v[k].fd = fd;
			v[k].flags = fcntl(fd, F_GETFD);
			if (v[k].flags < 0)
				return cx_err(-EBADF,
					      "record '%s': fd %d is not open",
					      i < st->n ? st->e[i].name
							: "(state)",
					      fd);
			k++;
		}
	}
	*out = cx_steal_ptr(&v);
	*n = k;
	return 0;
}

static void restore_flags(const struct fdflag *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		fcntl(v[i].fd, F_SETFD, v[i].flags);
}

/* envp (NULL: environ) without CPRXFER_EXEC_FD, plus var. */
static int build_env(char *const envp[], char *var, char ***out)
{
	char *const *src = envp ? envp : environ;
	size_t n = 0, i, k = 0;
	char **v;

	while (src && src[n])
		n++;
	v = malloc((n + 2) * sizeof(*v));
	if (!v)
		return cx_err(-ENOMEM, "out of memory");
	for (i = 0; i < n; i++) {
		if (!strncmp(src[i], CX_EXEC_ENV "=", sizeof(CX_EXEC_ENV)))
			continue;
		v[k++] = src[i];
	}
	v[k++] = var;
	v[k] = NULL;
	*out = v;
	return 0;
}

/* Orphans of a subreaper (or of pid 1) would come back to the new image. */
static bool helper_possible(void)
{
	int reaper = 0;

	if (getpid() == 1)
		return false;
	return !(prctl(PR_GET_CHILD_SUBREAPER, &reaper) == 0 && reaper);
}

/* What the helper needs for a confirmation, in the caller's fd table. */
struct confirm {
	int sv[2]; /* [0]: the new image's end, [1]: the helper's */
	int pidfd, exe_fd;
};

/* Scope-exit cleanup of a struct confirm: closes what it still holds. */
static void confirm_close(struct confirm *c)
{
	cx_closep(&c->sv[0]);
	cx_closep(&c->sv[1]);
	cx_closep(&c->pidfd);
	cx_closep(&c->exe_fd);
}
#define cx_autoconfirm __attribute__((cleanup(confirm_close)))

static int confirm_prepare(struct confirm *c, const struct cprxfer_opts *o)
{
	if (!helper_possible())
		return cx_err(
			-EOPNOTSUPP,
			"a confirmed exec needs the helper process, which a child subreaper or pid 1 cannot have");
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, c->sv) < 0)
		return cx_err(-errno, "socketpair: %s", strerror(errno));
	c->pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
	if (c->pidfd < 0)
		return cx_err(-errno, "pidfd_open of this process: %s",
			      strerror(errno));
	if (o->exec_path)
		return 0;
	c->exe_fd = open("/proc/self/exe", O_PATH | O_CLOEXEC);
	if (c->exe_fd < 0)
		return cx_err(
			-errno,
			"the fallback needs /proc/self/exe (%s) or a path given with cprxfer_opts_set_exec_fallback",
			strerror(errno));
	return 0;
}

int cx_exec(const cprxfer_state *st, const char *path, char *const argv[],
	    char *const envp[], const cprxfer_opts *opts, bool confirm,
	    bool defer)
{
	char var[sizeof(CX_EXEC_ENV) + 32], fvar[sizeof(CX_EXEC_ENV) + 16];
	cx_autoconfirm struct confirm c = { { -1, -1 }, -1, -1 };
	cx_autofree struct fdflag *fds = NULL;
	cx_autofree char **env = NULL, **fenv = NULL;
	cx_autoclose int memfd = -1;
	struct cprxfer_opts o;
	struct cx_helper conf = { .rfd = -1, .wfd = -1 }, *h = NULL;
	int extra[2], p[2], rc, err;
	size_t nfds = 0, i;

	if (!st || !path || !argv)
		return cx_err(-EINVAL, "cprxfer_exec: NULL argument");
	cx_opts_copy(&o, opts);
	/* A plain cprxfer_exec has no options, hence no tag to check. */
	rc = cx_exec_encode(st, confirm ? o.tag : NULL, true, &memfd);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_exec");
	if (confirm) {
		rc = confirm_prepare(&c, &o);
		if (rc < 0)
			return cx_err_prefix(rc, "cprxfer_exec");
		snprintf(var, sizeof(var), CX_EXEC_ENV "=%d,%d", memfd,
			 c.sv[0]);
	} else {
		snprintf(var, sizeof(var), CX_EXEC_ENV "=%d", memfd);
	}
	snprintf(fvar, sizeof(fvar), CX_EXEC_ENV "=%d", memfd);
	extra[0] = memfd;
	extra[1] = c.sv[0];
	rc = build_env(envp, var, &env);
	if (rc == 0)
		rc = build_env(envp, fvar, &fenv);
	if (rc == 0)
		rc = collect_fds(st, extra, confirm ? 2 : 1, &fds, &nfds);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_exec");
	for (i = 0; i < nfds; i++) {
		if ((fds[i].flags & FD_CLOEXEC) &&
		    fcntl(fds[i].fd, F_SETFD, fds[i].flags & ~FD_CLOEXEC) < 0) {
			rc = cx_err(
				-errno,
				"cprxfer_exec: clearing close-on-exec on fd %d: %s",
				fds[i].fd, strerror(errno));
			restore_flags(fds, i);
			return rc;
		}
	}
	if ((defer || confirm) && helper_possible() &&
	    pipe2(p, O_CLOEXEC) == 0) {
		conf.rfd = p[0];
		conf.wfd = p[1];
		conf.confirm_fd = confirm ? c.sv[1] : -1;
		conf.peer_fd = confirm ? c.sv[0] : -1;
		conf.pidfd = c.pidfd;
		conf.exe_fd = c.exe_fd;
		conf.fb_path = o.exec_path;
		conf.fb_argv = o.exec_argv ? o.exec_argv : argv;
		conf.fb_envp = fenv;
		conf.timeout_ms = o.timeout_ms;
		h = cx_helper_start(&conf);
		cx_close(conf.rfd); /* only the helper reads */
		if (!h)
			cx_close(conf.wfd);
	}
	if (confirm && !h) {
		restore_flags(fds, nfds);
		return cx_err(
			-EAGAIN,
			"cprxfer_exec: cannot start the helper process that a confirmed exec needs");
	}
	/* The helper has its copies; ours need not cross the exec. */
	cx_closep(&c.sv[1]);
	cx_closep(&c.pidfd);
	cx_closep(&c.exe_fd);
	if (h)
		cx_helper_exec_issued(h);
	execve(path, argv, env);
	err = errno;
	if (h) {
		cx_helper_stop(h);
		cx_close(conf.wfd);
	}
	restore_flags(fds, nfds);
	return cx_err(-err, "cprxfer_exec: execve %s: %s", path, strerror(err));
}

CX_EXPORT int cprxfer_exec(const cprxfer_state *st, const char *path,
			   char *const argv[], char *const envp[])
{
	return cx_exec(st, path, argv, envp, NULL, false, true);
}

CX_EXPORT int cprxfer_exec_opts(const cprxfer_state *st, const char *path,
				char *const argv[], char *const envp[],
				const cprxfer_opts *o)
{
	return cx_exec(st, path, argv, envp, o, true, true);
}
