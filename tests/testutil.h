/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the cmocka tests: fd-leak accounting, rlimits,
 * child processes. Include after <cmocka.h>'s prerequisites.
 */
#ifndef CX_TESTUTIL_H
#define CX_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cmocka.h>

/* Number of open fds of this process (entries of /proc/self/fd). */
int tu_count_fds(void);

/* Raise the soft RLIMIT_NOFILE to the hard one; returns the new limit. */
long tu_raise_nofile(void);

/*
 * cmocka setup/teardown pair that fails a test which leaks an fd: the
 * teardown compares the fd count with the one setup saw.
 */
int tu_fd_setup(void **state);
int tu_fd_teardown(void **state);

/* Fork; the child runs fn(arg) and _exit()s with its return value. */
pid_t tu_fork(int (*fn)(void *), void *arg);

/* Wait for pid; returns its exit status, or 128 + signal. */
int tu_wait(pid_t pid);

/* Milliseconds, microseconds, nanoseconds on CLOCK_MONOTONIC. */
int64_t tu_now_ms(void);
int64_t tu_now_us(void);
int64_t tu_now_ns(void);

/* CPU time (user + system) of this process so far, in microseconds. */
int64_t tu_cpu_us(void);

/* A fresh private temporary directory (caller frees the string). */
char *tu_tmpdir(void);

/* rm -rf of a tu_tmpdir(). */
void tu_rmdir(const char *dir);

#define tu_test(f) \
	cmocka_unit_test_setup_teardown(f, tu_fd_setup, tu_fd_teardown)

#endif
