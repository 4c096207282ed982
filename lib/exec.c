/* SPDX-License-Identifier: MIT */
/*
 * Exec in place: the process execve()s its successor and keeps its PID.
 *
 * The state is encoded (fd numbers inline) into a memfd that is sealed
 * read-only; close-on-exec is cleared on exactly the fds the state names
 * and on that memfd; CPRXFER_EXEC_FD=<n> in the new environment tells the
 * new image where to look. cprxfer_load_exec() decodes it, sets
 * close-on-exec back on every fd, closes the memfd and removes the
 * variable, so that nothing leaks into a later child.
 *
 * execve() tears the old address space down before the new image runs;
 * with many gigabytes of populated guest RAM that is a long stall inside
 * the blackout. To move it out, a helper process shares the old address
 * space (CLONE_VM) and holds it past the exec: it wakes when the exec
 * closes the write end of a close-on-exec pipe, and exits, so that the
 * unmapping happens in the helper while the new image already runs. The
 * helper is created through an intermediate process that exits at once,
 * so it is never a child of the new image.
 */
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "exec.h"
#include "stream.h"
#include "wire.h"

#define CX_EXEC_ENV	"CPRXFER_EXEC_FD"
#define CX_EXEC_MEMFD	"cprxfer-exec-state"
#define CX_HELPER_STACK (64 * 1024)

extern char **environ;

/*
 * Test hook: false runs execve() without the teardown helper (to measure
 * what it saves). Not exported.
 */

/* ---- the teardown helper --------------------------------------------- */

struct helper {
	int rfd, wfd;	  /* the pipe: the helper waits on rfd */
	int hrfd, hwfd;	  /* the same numbers, for the helper only */
	uint8_t *stack;	  /* CX_HELPER_STACK bytes: two halves */
	pid_t pid;	  /* of the helper, or -1 */
	volatile int tid; /* cleared by the kernel when it exits */
};

/*
 * The helper shares our memory but not our fd table, nor a thread's
 * TLS of its own: it makes raw system calls only and touches nothing
 * but its own stack.
 */
static int helper_main(void *arg)
{
	struct helper *h = arg;
	char c;
	int rfd = h->hrfd;

	/* Hold no file past the exec: only the read end stays open. */
	syscall(SYS_close, h->hwfd);
	if (rfd > 0)
		syscall(SYS_close_range, 0, rfd - 1, 0);
	syscall(SYS_close_range, rfd + 1, ~0u, 0);
	/*
	 * EOF once every write end is gone: the exec happened or failed.
	 * Every signal is blocked, so no EINTR; an error only ends the
	 * wait early (errno is not ours to read: it is the caller's TLS).
	 */
	syscall(SYS_read, rfd, &c, 1);
	return 0;
}

/* The intermediate: starts the helper and exits, orphaning it. */
static int spawn_main(void *arg)
{
	struct helper *h = arg;
	sigset_t all;

	/* Signals delivered to the helper must not run our handlers. */
	sigfillset(&all);
	syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, NULL, _NSIG / 8);
	h->tid = 1;
	h->pid = clone(helper_main, h->stack + CX_HELPER_STACK / 2,
		       CLONE_VM | CLONE_CHILD_CLEARTID | SIGCHLD, h, NULL, NULL,
		       &h->tid);
	if (h->pid < 0)
		h->tid = 0;
	return 0;
}

static bool helper_wanted(bool defer)
{
	int reaper = 0;

	if (!defer)
		return false;
	/* Orphans of a subreaper (or of pid 1) would come back to us. */
	if (getpid() == 1)
		return false;
	if (prctl(PR_GET_CHILD_SUBREAPER, &reaper) == 0 && reaper)
		return false;
	return true;
}

/* Best effort: on any failure the exec runs without a helper. */
static void helper_start(struct helper *h, bool defer)
{
	int p[2], st;
	pid_t mid;

	h->pid = -1;
	h->tid = 0;
	h->stack = NULL;
	h->rfd = h->wfd = -1;
	if (!helper_wanted(defer) || pipe2(p, O_CLOEXEC) < 0)
		return;
	h->rfd = h->hrfd = p[0];
	h->wfd = h->hwfd = p[1];
	h->stack = mmap(NULL, CX_HELPER_STACK, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (h->stack == MAP_FAILED) {
		h->stack = NULL;
		goto fail;
	}
	mid = clone(spawn_main, h->stack + CX_HELPER_STACK,
		    CLONE_VM | CLONE_VFORK | SIGCHLD, h);
	if (mid < 0)
		goto fail;
	while (waitpid(mid, &st, 0) < 0 && errno == EINTR)
		;
	if (h->pid < 0)
		goto fail;
	/* Only the helper reads; our read end must not cross the exec. */
	cx_close(h->rfd);
	h->rfd = -1;
	return;
fail:
	cx_close(h->rfd);
	cx_close(h->wfd);
	if (h->stack)
		munmap(h->stack, CX_HELPER_STACK);
	h->rfd = h->wfd = -1;
	h->stack = NULL;
}

/* After a failed exec: let the helper go and free its stack. */
static void helper_stop(struct helper *h)
{
	cx_close(h->wfd);
	h->wfd = -1;
	if (h->pid > 0) {
		struct timespec ts = { 0, 200 * 1000 * 1000 };
		int t = h->tid;

		/* The kernel zeroes tid and wakes us when it exits. */
		if (t)
			syscall(SYS_futex, &h->tid, FUTEX_WAIT, t, &ts, NULL,
				0);
		/*
		 * Still there: a child forked meanwhile by another thread
		 * holds the write end too. While tid is set the helper has
		 * not exited, so its pid is still its own.
		 */
		if (h->tid)
			kill(h->pid, SIGKILL);
		while ((t = h->tid))
			syscall(SYS_futex, &h->tid, FUTEX_WAIT, t, NULL, NULL,
				0);
	}
	if (h->stack)
		munmap(h->stack, CX_HELPER_STACK);
	h->stack = NULL;
	h->pid = -1;
}

/* ---- cprxfer_exec ------------------------------------------------------ */

struct fdflag {
	int fd;
	int flags; /* as found: restored if the exec fails */
};

/* Encode st into a new sealed memfd. */
static int encode_memfd(const cprxfer_state *st, int *out)
{
	struct cx_io io;
	int fd, rc;

	fd = memfd_create(CX_EXEC_MEMFD, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return cx_err(-errno, "memfd_create: %s", strerror(errno));
	rc = cx_io_init(&io, fd, false);
	if (rc < 0)
		goto fail;
	rc = cx_encode(&io, st, CX_MODE_EXEC);
	cx_io_fini(&io);
	if (rc < 0)
		goto fail;
	if (fcntl(fd, F_ADD_SEALS,
		  F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) <
	    0) {
		rc = cx_err(-errno, "sealing the state memfd: %s",
			    strerror(errno));
		goto fail;
	}
	*out = fd;
	return 0;
fail:
	cx_close(fd);
	return rc;
}

/* The fds to pass: every fd the state names, once, and the memfd. */
static int collect_fds(const cprxfer_state *st, int memfd, struct fdflag **out,
		       size_t *n)
{
	struct fdflag *v;
	size_t i, j, k = 0;

	v = malloc((cx_state_nfds(st) + 1) * sizeof(*v));
	if (!v)
		return cx_err(-ENOMEM, "out of memory");
	for (i = 0; i <= st->n; i++) {
		const int *fds = &memfd;
		size_t nx = memfd >= 0, x;

		if (i < st->n)
			nx = cx_entry_fds(&st->e[i], &fds);

		for (x = 0; x < nx; x++) {
			int fd = fds[x];

			for (j = 0; j < k && v[j].fd != fd; j++)
				;
			if (j < k)
				continue;
			v[k].fd = fd;
			v[k].flags = fcntl(fd, F_GETFD);
			if (v[k].flags < 0) {
				free(v);
				return cx_err(-EBADF,
					      "record '%s': fd %d is not open",
					      i < st->n ? st->e[i].name
							: "(state)",
					      fd);
			}
			k++;
		}
	}
	*out = v;
	*n = k;
	return 0;
}

static void restore_flags(const struct fdflag *v, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		fcntl(v[i].fd, F_SETFD, v[i].flags);
}

/* envp (NULL: environ) without CPRXFER_EXEC_FD, plus ours. */
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

int cx_exec(const cprxfer_state *st, const char *path, char *const argv[],
	    char *const envp[], bool defer)
{
	char var[sizeof(CX_EXEC_ENV) + 16];
	struct fdflag *fds = NULL;
	struct helper h;
	char **env = NULL;
	size_t nfds = 0, i;
	int rc, memfd = -1, err;

	if (!st || !path || !argv)
		return cx_err(-EINVAL, "cprxfer_exec: NULL argument");
	rc = encode_memfd(st, &memfd);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_exec");
	snprintf(var, sizeof(var), CX_EXEC_ENV "=%d", memfd);
	rc = build_env(envp, var, &env);
	if (rc == 0)
		rc = collect_fds(st, memfd, &fds, &nfds);
	if (rc < 0)
		goto out;
	for (i = 0; i < nfds; i++) {
		if ((fds[i].flags & FD_CLOEXEC) &&
		    fcntl(fds[i].fd, F_SETFD, fds[i].flags & ~FD_CLOEXEC) < 0) {
			rc = cx_err(-errno,
				    "clearing close-on-exec on fd %d: %s",
				    fds[i].fd, strerror(errno));
			restore_flags(fds, i);
			goto out;
		}
	}
	helper_start(&h, defer);
	execve(path, argv, env);
	err = errno;
	helper_stop(&h);
	restore_flags(fds, nfds);
	rc = cx_err(-err, "execve %s: %s", path, strerror(err));
out:
	cx_close(memfd);
	free(fds);
	free(env);
	return cx_err_prefix(rc, "cprxfer_exec");
}

/* ---- cprxfer_load_exec ------------------------------------------------- */

/* Is fd the sealed state memfd that cprxfer_exec made? */
static int check_memfd(int fd)
{
	char link[64], target[PATH_MAX];
	uint8_t magic[4];
	ssize_t n;
	int seals;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return cx_err(-errno, "readlink %s: %s", link, strerror(errno));
	target[n] = 0;
	if (strncmp(target, "/memfd:" CX_EXEC_MEMFD " ",
		    sizeof("/memfd:" CX_EXEC_MEMFD)))
		return cx_err(-EBADF, "fd %d (%s) is not a state memfd", fd,
			      target);
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_WRITE))
		return cx_err(-EBADF, "fd %d: state memfd is not sealed", fd);
	if (pread(fd, magic, 4, 0) != 4 || cx_get32(magic) != CX_MAGIC)
		return cx_err(-EBADMSG, "fd %d: not a cprxfer state stream",
			      fd);
	return 0;
}

CX_EXPORT int cprxfer_load_exec_opts(const cprxfer_opts *o, cprxfer_state **out)
{
	struct cprxfer_opts opts;
	const char *s;
	struct cx_io io;
	char *end;
	long v;
	int fd, rc, fl;

	if (!out)
		return cx_err(-EINVAL, "cprxfer_load_exec: NULL output");
	s = getenv(CX_EXEC_ENV);
	if (!s)
		return cx_err(
			-ENOENT,
			"cprxfer_load_exec: no " CX_EXEC_ENV
			" in the environment: not started by cprxfer_exec (or already loaded)");
	errno = 0;
	v = strtol(s, &end, 10);
	fd = (int)v;
	/* Whatever it holds, it is not for our children. */
	unsetenv(CX_EXEC_ENV);
	if (errno || end == s || *end || v < 0 || v > INT_MAX)
		return cx_err(-EBADMSG, "cprxfer_load_exec: " CX_EXEC_ENV
					" is not an fd number");
	fl = fcntl(fd, F_GETFD);
	if (fl < 0)
		return cx_err(-EBADF,
			      "cprxfer_load_exec: " CX_EXEC_ENV
			      "=%d: fd is not open",
			      fd);
	rc = check_memfd(fd);
	if (rc < 0) /* not ours: leave it alone */
		return cx_err_prefix(rc, "cprxfer_load_exec");
	fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
	cx_opts_copy(&opts, o);
	rc = cx_io_init(&io, fd, false);
	if (rc < 0)
		goto out;
	if (lseek(fd, 0, SEEK_SET) < 0)
		rc = cx_err(-errno, "lseek: %s", strerror(errno));
	if (rc == 0)
		rc = cx_decode(&io, &opts, CX_MODE_EXEC, out);
	cx_io_fini(&io);
out:
	cx_close(fd);
	return rc < 0 ? cx_err_prefix(rc, "cprxfer_load_exec") : 0;
}

CX_EXPORT int cprxfer_load_exec(cprxfer_state **out)
{
	return cprxfer_load_exec_opts(NULL, out);
}

CX_EXPORT int cprxfer_exec(const cprxfer_state *st, const char *path,
			   char *const argv[], char *const envp[])
{
	return cx_exec(st, path, argv, envp, true);
}
