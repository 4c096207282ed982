/* SPDX-License-Identifier: MIT */
/*
 * The exec teardown helper (see exec-helper.h), made the way
 * posix_spawn makes its child:
 *
 *  - every signal is blocked (the caller's mask saved) before the first
 *    clone, so that no handler of the application can run in a process
 *    that shares its memory but has another pid;
 *  - the intermediate process resets every caught handler to SIG_DFL
 *    with raw rt_sigaction before anything else; the helper inherits
 *    that table;
 *  - the intermediate has exit signal 0 and is reaped with __WCLONE, so
 *    the application sees no SIGCHLD and its waitpid(-1) finds nothing;
 *  - the helper is reached through a pidfd, never a pid;
 *  - the helper and the intermediate make raw system calls only (the
 *    intermediate's one libc call is clone(), whose child side touches
 *    nothing and whose failure errno the caller restores).
 *
 * The intermediate starts the helper and exits, so that the helper is
 * orphaned: it becomes a child of the nearest subreaper (or of init),
 * never of the new image.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "exec-helper.h"
#include "exec.h"

#ifndef __WCLONE
#define __WCLONE 0x80000000
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

#define CX_HELPER_STACK (64 * 1024)
#define CX_NSIG		64
#define CX_STOP_MS	1000 /* a helper told to exit does so at once */

#if defined(__x86_64__)
long cx_sys(long n, long a, long b, long c, long d, long e, long f)
{
	register long r10 __asm__("r10") = d;
	register long r8 __asm__("r8") = e;
	register long r9 __asm__("r9") = f;
	long ret;

	__asm__ volatile("syscall"
			 : "=a"(ret)
			 : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8),
			   "r"(r9)
			 : "rcx", "r11", "memory");
	return ret;
}
#elif defined(__aarch64__)
long cx_sys(long n, long a, long b, long c, long d, long e, long f)
{
	register long x8 __asm__("x8") = n;
	register long x0 __asm__("x0") = a;
	register long x1 __asm__("x1") = b;
	register long x2 __asm__("x2") = c;
	register long x3 __asm__("x3") = d;
	register long x4 __asm__("x4") = e;
	register long x5 __asm__("x5") = f;

	__asm__ volatile("svc 0"
			 : "+r"(x0)
			 : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5)
			 : "memory", "cc");
	return x0;
}
#else
#error "cx_sys: no raw system call wrapper for this architecture"
#endif

#define sys0(n)		 cx_sys(n, 0, 0, 0, 0, 0, 0)
#define sys1(n, a)	 cx_sys(n, (long)(a), 0, 0, 0, 0, 0)
#define sys2(n, a, b)	 cx_sys(n, (long)(a), (long)(b), 0, 0, 0, 0)
#define sys3(n, a, b, c) cx_sys(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define sys4(n, a, b, c, d) \
	cx_sys(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define sys5(n, a, b, c, d, e) \
	cx_sys(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)

/* The kernel's struct sigaction (with sa_restorer on x86-64 and arm64). */
struct ksigaction {
	void *handler;
	unsigned long flags;
	void *restorer;
	uint64_t mask;
};

static __attribute__((noreturn)) void die(int code)
{
	for (;;)
		sys1(SYS_exit, code);
}

static int64_t mono_ms(void)
{
	struct timespec ts = { 0, 0 };

	sys2(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait for POLLIN on up to two fds until deadline_ms (< 0: none). */
static long wait_in(struct pollfd *p, unsigned n, int64_t deadline_ms)
{
	for (;;) {
		struct timespec ts, *tp = NULL;
		long r;

		if (deadline_ms >= 0) {
			int64_t left = deadline_ms - mono_ms();

			if (left < 0)
				left = 0;
			ts.tv_sec = left / 1000;
			ts.tv_nsec = (left % 1000) * 1000000;
			tp = &ts;
		}
		r = sys5(SYS_ppoll, p, n, tp, NULL, 0);
		if (r != -EINTR)
			return r;
	}
}

/* The new image failed: run the old program again, with the state. */
static __attribute__((noreturn)) void fallback(struct cx_helper *h)
{
	sys4(SYS_rt_sigprocmask, SIG_SETMASK, &h->mask, NULL, 8);
	if (h->exe_fd >= 0)
		sys5(SYS_execveat, h->exe_fd, "", h->fb_argv, h->fb_envp,
		     AT_EMPTY_PATH);
	else if (h->fb_path)
		sys3(SYS_execve, h->fb_path, h->fb_argv, h->fb_envp);
	/* Nothing left to run the state: it is lost with us. */
	for (;;)
		sys1(SYS_exit_group, 127);
}

/* Done: drop every file before the old address space goes. */
static __attribute__((noreturn)) void release(void)
{
	sys3(SYS_close_range, 0, ~0u, 0);
	die(0);
}

/* The new image will not confirm in time: kill it, then fall back. */
static __attribute__((noreturn)) void kill_and_fall_back(struct cx_helper *h)
{
	struct pollfd p = { .fd = h->pidfd, .events = POLLIN };

	/* Whatever it sent meanwhile gets no answer: it dies first. */
	sys4(SYS_pidfd_send_signal, h->pidfd, SIGKILL, NULL, 0);
	wait_in(&p, 1, -1);
	fallback(h);
}

enum {
	W_PIPE,
	W_PROC,
	W_CONFIRM
};

/*
 * One wait for everything: the pipe (a byte: execve failed; EOF: the
 * exec closed the last write end), the process (its pidfd: it died) and
 * the confirmation socket. A child that another thread forked during
 * cprxfer_exec may hold the pipe's write end and delay its EOF; the
 * confirmation and the pidfd still reach us, and the deadline, counted
 * from just before the exec, still holds.
 */
static int helper_main(void *arg)
{
	struct cx_helper *h = arg;
	bool confirm = h->confirm_fd >= 0;
	int64_t deadline =
		confirm && h->timeout_ms >= 0 ? mono_ms() + h->timeout_ms : -1;
	struct pollfd p[3] = {
		[W_PIPE] = { .fd = h->rfd, .events = POLLIN },
		[W_PROC] = { .fd = confirm ? h->pidfd : -1, .events = POLLIN },
		[W_CONFIRM] = { .fd = h->confirm_fd, .events = POLLIN },
	};
	char c;
	long r;

	/* Our copies of these would hide the EOFs we wait for. */
	sys1(SYS_close, h->wfd);
	if (h->peer_fd >= 0)
		sys1(SYS_close, h->peer_fd);
	/* Without a confirmation, hold nothing but the pipe. */
	if (!confirm) {
		if (h->rfd > 0)
			sys3(SYS_close_range, 0, h->rfd - 1, 0);
		sys3(SYS_close_range, h->rfd + 1, ~0u, 0);
	}
	for (;;) {
		r = wait_in(p, 3, deadline);
		if (r <= 0 && h->phase == CX_HELPER_EXEC)
			kill_and_fall_back(h); /* too late, or cannot wait */
		if (r < 0)
			die(0);
		if (r == 0) {
			deadline = -1; /* still before the exec */
			continue;
		}
		if (p[W_PIPE].revents) {
			r = sys3(SYS_read, h->rfd, &c, 1);
			/* A byte: execve failed. EOF before the exec: the
			 * caller died. Either way, nothing to do. */
			if (r != 0 || h->phase != CX_HELPER_EXEC)
				die(0);
			if (!confirm)
				release();
			p[W_PIPE].fd = -1;
		}
		if (p[W_PROC].revents) {
			if (h->phase != CX_HELPER_EXEC)
				die(0); /* the caller died before its exec */
			fallback(h);	/* the new image is gone */
		}
		if (p[W_CONFIRM].revents) {
			r = sys3(SYS_read, h->confirm_fd, &c, 1);
			if (r == 1 && c == CX_CONFIRM_COMMIT) {
				c = CX_CONFIRM_OK;
				sys3(SYS_write, h->confirm_fd, &c, 1);
				release(); /* the new image owns everything */
			}
			/*
			 * Closed without a confirmation: it refused the
			 * state and should exit; wait for that, or kill it
			 * at the deadline.
			 */
			if (r <= 0)
				p[W_CONFIRM].fd = -1;
		}
	}
}

/* The intermediate: signal handlers off, start the helper, exit. */
static int spawn_main(void *arg)
{
	struct cx_helper *h = arg;
	struct ksigaction sa, dfl = { 0 };
	int sig;

	for (sig = 1; sig <= CX_NSIG; sig++) {
		if (sig == SIGKILL || sig == SIGSTOP)
			continue;
		/* (No struct assignment here: it could become a memset.) */
		sa.handler = (void *)SIG_DFL;
		if (sys4(SYS_rt_sigaction, sig, NULL, &sa, 8) == 0 &&
		    sa.handler != (void *)SIG_DFL &&
		    sa.handler != (void *)SIG_IGN)
			sys4(SYS_rt_sigaction, sig, &dfl, NULL, 8);
	}
	h->pid = clone(helper_main, h->stack + CX_HELPER_STACK / 2,
		       CLONE_VM | SIGCHLD, h);
	return 0;
}

struct cx_helper *cx_helper_start(const struct cx_helper *conf)
{
	uint64_t all = ~0ull;
	int saved = errno, st;
	struct cx_helper *h;
	uint8_t *stack;
	long mid;

	stack = mmap(NULL, CX_HELPER_STACK, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
	if (stack == MAP_FAILED) {
		errno = saved;
		return NULL;
	}
	/* The helper's copy lives with its stacks, not in our frame. */
	h = (struct cx_helper *)stack;
	*h = *conf;
	h->stack = stack;
	h->pid = -1;
	h->hpidfd = -1;
	h->phase = CX_HELPER_WAIT;
	sys4(SYS_rt_sigprocmask, SIG_SETMASK, &all, &h->mask, 8);
	/* Exit signal 0: no SIGCHLD, and only __WCLONE waits for it. */
	mid = clone(spawn_main, stack + CX_HELPER_STACK, CLONE_VM | CLONE_VFORK,
		    h);
	if (mid > 0)
		while (waitpid((pid_t)mid, &st, __WCLONE) < 0 && errno == EINTR)
			;
	/*
	 * The helper cannot exit before we tell it to (it waits on the
	 * pipe, every signal blocked): its pid is its own until then, and
	 * from now on we reach it through the pidfd only.
	 */
	if (h->pid > 0)
		h->hpidfd = (int)sys2(SYS_pidfd_open, h->pid, 0);
	sys4(SYS_rt_sigprocmask, SIG_SETMASK, &h->mask, NULL, 8);
	errno = saved;
	if (h->pid > 0 && h->hpidfd < 0) {
		/*
		 * No pidfd (Linux < 5.3, or refused by a filter): let it
		 * go. It exits at once, but we cannot tell when, so its
		 * stack and its copy of h stay mapped (64 KiB, on this
		 * path only).
		 */
		char c = 'A';

		h->phase = CX_HELPER_ABORT;
		sys3(SYS_write, h->wfd, &c, 1);
		return NULL;
	}
	if (h->pid < 0) {
		munmap(stack, CX_HELPER_STACK);
		return NULL;
	}
	return h;
}

void cx_helper_exec_issued(struct cx_helper *h)
{
	__atomic_store_n(&h->phase, CX_HELPER_EXEC, __ATOMIC_SEQ_CST);
}

void cx_helper_stop(struct cx_helper *h)
{
	struct pollfd p = { .fd = h->hpidfd, .events = POLLIN };
	int saved = errno;
	char c = 'A';

	__atomic_store_n(&h->phase, CX_HELPER_ABORT, __ATOMIC_SEQ_CST);
	/* A byte, not only EOF: a child that another thread forked
	 * meanwhile may hold a copy of the write end. */
	while (write(h->wfd, &c, 1) < 0 && errno == EINTR)
		;
	/* It exits at once; the kill is for a helper stuck elsewhere. */
	if (poll(&p, 1, CX_STOP_MS) <= 0) {
		sys4(SYS_pidfd_send_signal, h->hpidfd, SIGKILL, NULL, 0);
		while (poll(&p, 1, -1) < 0 && errno == EINTR)
			;
	}
	close(h->hpidfd);
	munmap(h->stack, CX_HELPER_STACK); /* h with it */
	errno = saved;
}
