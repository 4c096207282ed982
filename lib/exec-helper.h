/* SPDX-License-Identifier: MIT */
/*
 * The exec teardown helper: a process that shares the old address space
 * (CLONE_VM) and a copy of the old fd table, and outlives the exec.
 *
 * Without a confirmation it releases the old address space as soon as
 * the exec has happened, outside the blackout. With one, it waits until
 * the new image confirms that it took over; if the new image dies,
 * closes the confirmation socket without confirming, or does not
 * confirm in time (then it is killed through its pidfd), the helper
 * execs the old program again with the state: the fallback.
 *
 * The helper runs on a stack of its own but with the caller thread's
 * TLS, so it calls no libc function: raw system calls only, through
 * cx_sys() below, which never writes errno.
 */
#ifndef CX_EXEC_HELPER_H
#define CX_EXEC_HELPER_H

#include <stdint.h>
#include <sys/types.h>

struct cx_helper {
	/* Filled by the caller before cx_helper_start(). */
	int rfd;	/* pipe read end: EOF or a byte wakes the helper */
	int wfd;	/* its write end (close-on-exec), the caller's */
	int confirm_fd; /* helper's end of the confirmation socket, -1: none */
	int peer_fd;	/* the new image's end: the helper closes its copy */
	int pidfd;	/* of the calling process (confirmation only) */
	int exe_fd;	/* O_PATH fd on the old program, or -1 */
	const char *fb_path;  /* the fallback program if exe_fd < 0 */
	char *const *fb_argv; /* fallback argv and environment */
	char *const *fb_envp;
	int timeout_ms; /* confirmation timeout; < 0: none */

	/* Set by cx_helper_start() in its copy. */
	uint64_t mask; /* the caller's signal mask, restored by the fallback */
	uint8_t *stack;
	int hpidfd;	    /* pidfd of the helper (caller's fd table) */
	pid_t pid;	    /* of the helper, or -1 */
	volatile int phase; /* CX_HELPER_* */
};

enum {
	CX_HELPER_WAIT,	 /* before the exec */
	CX_HELPER_EXEC,	 /* the caller is in execve() */
	CX_HELPER_ABORT, /* execve() failed: exit */
};

/*
 * Start the helper with a copy of conf (kept with its stacks); NULL if it
 * could not be started (the exec then runs without one). Signals are
 * blocked around the clone, so no handler of the application runs in
 * the new processes. Never changes errno.
 */
struct cx_helper *cx_helper_start(const struct cx_helper *conf);

/* Right before execve(): from now on EOF on the pipe means "exec done". */
void cx_helper_exec_issued(struct cx_helper *h);

/*
 * After a failed execve(): tell the helper to exit, wait for it, unmap
 * its stacks (and h). The caller still owns and closes conf->wfd.
 */
void cx_helper_stop(struct cx_helper *h);

/* A raw system call: returns the result or -errno, never touches errno. */
long cx_sys(long n, long a, long b, long c, long d, long e, long f);

#endif
