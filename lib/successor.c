/* SPDX-License-Identifier: MIT */
/*
 * The successor: start the new binary, watch it, kill and reap it.
 *
 * cprxfer_spawn() starts the new binary with posix_spawn(), opens a
 * pidfd on it at once (it is our unreaped child, so its pid cannot be
 * reused in between) and hands it one end of a connected socketpair:
 * the only fd the library lets cross the exec, named by the variable
 * CPRXFER_SUCCESSOR_FD. The successor takes it with cprxfer_inherit().
 *
 * A channel to the successor watches a copy of its pidfd in every wait
 * (lib/io.c), so a successor that dies ends the wait at once with
 * -ECHILD instead of a timeout. Until the handoff is committed the
 * successor is ours to kill and reap; after a commit it is let go.
 */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "channel.h"
#include "cleanup.h"
#include "error.h"
#include "handshake.h"
#include "rendezvous.h"
#include "successor.h"

extern char **environ;

/* How long a SIGKILLed successor may take to be reaped. */
#define CX_KILL_WAIT_MS 5000
/* After the connection ended, how long the successor gets to be seen dead. */
#define CX_DEATH_GRACE_MS 1000

struct cprxfer_successor {
	pid_t pid;
	int pidfd;
	int sock; /* our end of the socketpair, until a channel takes it */
	struct cprxfer_opts o;
	bool committed;
	bool reaped;
	cprxfer_channel *ch; /* the channel attached to it, or NULL */
};

int cx_child_err(pid_t pid, int pidfd)
{
	siginfo_t si;

	memset(&si, 0, sizeof(si));
	if (waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED | WNOHANG | WNOWAIT) ==
		    0 &&
	    si.si_pid) {
		if (si.si_code == CLD_EXITED)
			return cx_err(-ECHILD,
				      "successor pid %d exited with status %d",
				      (int)pid, si.si_status);
		return cx_err(-ECHILD,
			      "successor pid %d killed by signal %d (SIG%s)%s",
			      (int)pid, si.si_status,
			      sigabbrev_np(si.si_status) ?: "?",
			      si.si_code == CLD_DUMPED ? ", core dumped" : "");
	}
	return cx_err(-ECHILD, "successor pid %d exited", (int)pid);
}

void cx_successor_committed(struct cprxfer_successor *s)
{
	s->committed = true;
}

void cx_successor_unlink(struct cprxfer_successor *s)
{
	if (s->ch)
		s->ch->succ = NULL;
	s->ch = NULL;
}

static void free_succ(cprxfer_successor *s)
{
	if (s->ch)
		s->ch->succ = NULL;
	cx_close(s->sock);
	cx_close(s->pidfd);
	free(s);
}
CX_DEFINE_FREE(cprxfer_successor, free_succ)

/* envp without any CPRXFER_SUCCESSOR_FD, plus var; NULL-terminated. */
static char **make_env(char *const envp[], char *var)
{
	size_t n = 0, i, k = 0, plen = strlen(CX_SUCCESSOR_ENV "=");
	char **env;

	while (envp[n])
		n++;
	env = calloc(n + 2, sizeof(*env));
	if (!env)
		return NULL;
	for (i = 0; i < n; i++)
		if (strncmp(envp[i], CX_SUCCESSOR_ENV "=", plen))
			env[k++] = envp[i];
	env[k++] = var;
	env[k] = NULL;
	return env;
}

CX_EXPORT int cprxfer_spawn(const char *path, char *const argv[],
			    char *const envp[], const cprxfer_opts *o,
			    cprxfer_successor **out)
{
	cx_auto(cprxfer_successor) *s = NULL;
	cx_autoclose int theirs = -1;
	cx_autofree char **env = NULL;
	char var[sizeof(CX_SUCCESSOR_ENV) + 16];
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none;
	int sv[2], rc;
	pid_t pid;

	if (!path || !argv || !argv[0] || !out)
		return cx_err(
			-EINVAL,
			"cprxfer_spawn: NULL path, argv, argv[0] or output");
	s = calloc(1, sizeof(*s));
	if (!s)
		return cx_err(-ENOMEM, "cprxfer_spawn: out of memory");
	s->sock = s->pidfd = -1;
	cx_opts_copy(&s->o, o);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return cx_err(-errno, "cprxfer_spawn: socketpair: %s",
			      strerror(errno));
	s->sock = sv[0];
	theirs = sv[1];
	snprintf(var, sizeof(var), CX_SUCCESSOR_ENV "=%d", theirs);
	env = make_env(envp ? envp : environ, var);
	if (!env)
		return cx_err(-ENOMEM, "cprxfer_spawn: out of memory");

	/*
	 * dup2 of an fd onto itself clears its close-on-exec flag in the
	 * child only: the socket is the one fd of ours that crosses.
	 */
	rc = posix_spawn_file_actions_init(&fa);
	if (rc)
		return cx_err(-rc, "cprxfer_spawn: %s", strerror(rc));
	rc = posix_spawn_file_actions_adddup2(&fa, theirs, theirs);
	if (rc == 0)
		rc = posix_spawnattr_init(&attr);
	if (rc) {
		posix_spawn_file_actions_destroy(&fa);
		return cx_err(-rc, "cprxfer_spawn: %s", strerror(rc));
	}
	/* The successor starts with no signal blocked. */
	sigemptyset(&none);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
	rc = posix_spawn(&pid, path, &fa, &attr, argv, env);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (rc)
		return cx_err(-rc, "cprxfer_spawn: %s: %s", path, strerror(rc));
	s->pid = pid;
	s->pidfd = pidfd_open(pid, 0);
	if (s->pidfd < 0) {
		rc = -errno;
		kill(pid, SIGKILL);
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
		return cx_err(rc, "cprxfer_spawn: pidfd_open(%d): %s", (int)pid,
			      strerror(-rc));
	}
	*out = cx_steal_ptr(&s);
	return 0;
}

CX_EXPORT int cprxfer_inherit(const cprxfer_opts *o, cprxfer_channel **out)
{
	const char *v = getenv(CX_SUCCESSOR_ENV);
	struct stat sb;
	char *end;
	long fd;
	int fl;

	if (!out)
		return cx_err(-EINVAL, "cprxfer_inherit: NULL output");
	if (!v)
		return cx_err(
			-ENOENT,
			"cprxfer_inherit: %s is not set: not started by cprxfer_spawn",
			CX_SUCCESSOR_ENV);
	errno = 0;
	fd = strtol(v, &end, 10);
	if (errno || end == v || *end || fd < 0 || fd > INT_MAX)
		return cx_err(-EBADF, "cprxfer_inherit: %s='%s' is not an fd",
			      CX_SUCCESSOR_ENV, v);
	/* Not again: a program this one starts must not take it too. */
	unsetenv(CX_SUCCESSOR_ENV);
	if (fstat((int)fd, &sb) < 0)
		return cx_err(-EBADF, "cprxfer_inherit: fd %ld is not open",
			      fd);
	if (!S_ISSOCK(sb.st_mode))
		return cx_err(
			-ENOTSOCK,
			"cprxfer_inherit: fd %ld is not a socket (left open)",
			fd);
	fl = fcntl((int)fd, F_GETFD);
	if (fl >= 0 && !(fl & FD_CLOEXEC))
		fcntl((int)fd, F_SETFD, fl | FD_CLOEXEC);
	return cprxfer_channel_open_opts((int)fd, o, out);
}

/*
 * A failure that may be the successor's death (the connection ended, or
 * the watch fired): the socket closes a moment before the pidfd is
 * readable, so give it that moment, and name the death if it is one.
 */
static int death_or(cprxfer_successor *s, int rc)
{
	struct pollfd p = { .fd = s->pidfd, .events = POLLIN };

	if (rc != -ECONNRESET && rc != -ECHILD && rc != -EPIPE)
		return rc;
	while (poll(&p, 1, CX_DEATH_GRACE_MS) < 0 && errno == EINTR)
		;
	return p.revents ? cx_child_err(s->pid, s->pidfd) : rc;
}

/* Attach a fresh channel to s: its waits watch the successor. */
static int attach(cprxfer_successor *s, cprxfer_channel *ch)
{
	int watch = fcntl(s->pidfd, F_DUPFD_CLOEXEC, 3);

	if (watch < 0)
		return cx_err(-errno, "dup of the successor's pidfd: %s",
			      strerror(errno));
	ch->io.watch_fd = watch;
	ch->io.watch_pid = s->pid;
	ch->succ = s;
	s->ch = ch;
	return 0;
}

CX_EXPORT int cprxfer_successor_channel_start(cprxfer_successor *s,
					      cprxfer_channel **out)
{
	cprxfer_channel *ch;
	int rc;

	if (!s || !out)
		return cx_err(
			-EINVAL,
			"cprxfer_successor_channel: NULL successor or output");
	if (s->sock < 0 || s->ch)
		return cx_err(
			-EALREADY,
			"cprxfer_successor_channel: the successor's socket was already taken");
	rc = cx_channel_new(cx_steal_fd(&s->sock), &s->o, &ch);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_successor_channel");
	rc = attach(s, ch);
	if (rc < 0) {
		cprxfer_channel_close(ch);
		return cx_err_prefix(rc, "cprxfer_successor_channel");
	}
	/*
	 * The successor's pidfd is in the channel's set (io.watch_fd): a
	 * death before or during the handshake ends it with -ECHILD.
	 */
	rc = cx_connect_handshake(ch, "cprxfer_successor_channel");
	if (rc < 0) {
		cprxfer_channel_close(ch);
		return rc;
	}
	*out = ch;
	return 0;
}

CX_EXPORT int cprxfer_successor_channel(cprxfer_successor *s,
					cprxfer_channel **out)
{
	cprxfer_channel *ch;
	int rc;

	rc = cprxfer_successor_channel_start(s, &ch);
	if (rc < 0)
		return rc;
	return cx_connect_finish(ch, out);
}

CX_EXPORT int cprxfer_successor_connect(cprxfer_successor *s, const char *path,
					int timeout_ms, cprxfer_channel **out)
{
	cprxfer_channel *ch;
	int rc;

	if (!s || !path || !out)
		return cx_err(
			-EINVAL,
			"cprxfer_successor_connect: NULL successor, path or output");
	if (s->ch)
		return cx_err(
			-EALREADY,
			"cprxfer_successor_connect: the successor has a channel already");
	/* Waiting for its listener ends at once if it dies meanwhile. */
	rc = cx_connect(path, timeout_ms, &s->o, s->pidfd, &ch);
	if (rc < 0)
		return cx_err_prefix(death_or(s, rc),
				     "cprxfer_successor_connect");
	rc = attach(s, ch);
	if (rc < 0) {
		cprxfer_channel_close(ch);
		return cx_err_prefix(rc, "cprxfer_successor_connect");
	}
	*out = ch;
	return 0;
}

CX_EXPORT pid_t cprxfer_successor_pid(const cprxfer_successor *s)
{
	if (!s)
		return cx_err(-EINVAL, "cprxfer_successor_pid: NULL successor");
	return s->pid;
}

CX_EXPORT int cprxfer_successor_pidfd(const cprxfer_successor *s)
{
	if (!s)
		return cx_err(-EINVAL,
			      "cprxfer_successor_pidfd: NULL successor");
	return s->pidfd;
}

CX_EXPORT int cprxfer_successor_kill(cprxfer_successor *s)
{
	struct pollfd p;
	siginfo_t si;
	int n;

	if (!s)
		return cx_err(-EINVAL,
			      "cprxfer_successor_kill: NULL successor");
	if (s->reaped)
		return 0;
	if (pidfd_send_signal(s->pidfd, SIGKILL, NULL, 0) < 0 && errno != ESRCH)
		return cx_err(-errno, "cprxfer_successor_kill: pid %d: %s",
			      (int)s->pid, strerror(errno));
	p.fd = s->pidfd;
	p.events = POLLIN;
	while ((n = poll(&p, 1, CX_KILL_WAIT_MS)) < 0 && errno == EINTR)
		;
	if (n == 0)
		return cx_err(
			-ETIMEDOUT,
			"cprxfer_successor_kill: pid %d still running %d ms after SIGKILL",
			(int)s->pid, CX_KILL_WAIT_MS);
	memset(&si, 0, sizeof(si));
	while (waitid(P_PIDFD, (id_t)s->pidfd, &si, WEXITED | WNOHANG) < 0) {
		if (errno == EINTR)
			continue;
		if (errno == ECHILD)
			break; /* someone else (a SIGCHLD handler) reaped it */
		return cx_err(-errno, "cprxfer_successor_kill: waitid: %s",
			      strerror(errno));
	}
	s->reaped = true;
	return 0;
}

CX_EXPORT void cprxfer_successor_free(cprxfer_successor *s)
{
	if (!s)
		return;
	if (!s->committed) {
		char saved[256];

		snprintf(saved, sizeof(saved), "%s", cx_errmsg_get());
		cprxfer_successor_kill(s);
		cx_errmsg_set("%s", saved);
	}
	free_succ(s);
}
