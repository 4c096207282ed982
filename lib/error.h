/* SPDX-License-Identifier: MIT */
/*
 * Per-thread failure reasons.
 *
 * Every failure path in the library ends in `return cx_err(-ECODE, "what
 * failed: why", ...)`. cx_err is a macro, not an opaque call, so that a
 * reader and the static analyzer both see what it returns: its first
 * argument, which is always negative (a non-negative code, a bug, turns
 * into -EIO rather than into a false success). The code is evaluated
 * before the message is formatted, so `cx_err(-errno, "...: %s",
 * strerror(errno))` reports the errno of the failed call.
 *
 * Keep each message on one line of source, so that it can be found with
 * grep: .clang-format does not split string literals.
 */
#ifndef CX_ERROR_H
#define CX_ERROR_H

#include <errno.h>
#include <stdarg.h>

#define CX_EXPORT __attribute__((visibility("default")))

/* Record the calling thread's failure reason (printf-style). */
void cx_errmsg_set(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), cold));

/* Prefix the current reason with more context: "<prefix>: <old>". */
void cx_errmsg_prefix(const char *fmt, ...)
	__attribute__((format(printf, 1, 2), cold));

/*
 * The same for libcprxfer-seccomp, which has its own copy of
 * cx_errmsg_set() calling this: exported from libcprxfer.so.0 in the
 * version node CPRXFER_PRIVATE, for the project's own libraries only
 * (no header, no stability promise).
 */
CX_EXPORT void cprxfer__errmsg_vset(const char *fmt, va_list ap)
	__attribute__((format(printf, 1, 0), cold));

/* The calling thread's current reason (the buffer cprxfer_errmsg shows). */
const char *cx_errmsg_get(void);

/* What a file of mode m is, for a reason: "a directory", "a FIFO or pipe". */
const char *cx_file_kind(unsigned int m);

/* A negative errno for sure: a non-negative code becomes -EIO. */
static inline int cx_neg(int err)
{
	return err < 0 ? err : -EIO;
}

/* Set the reason and evaluate to err (negative). */
#define cx_err(err, ...)                        \
	__extension__({                         \
		int cx_err_code_ = cx_neg(err); \
		cx_errmsg_set(__VA_ARGS__);     \
		cx_err_code_;                   \
	})

/* Prefix the reason with context and evaluate to err (negative). */
#define cx_err_prefix(err, ...)                 \
	__extension__({                         \
		int cx_err_code_ = cx_neg(err); \
		cx_errmsg_prefix(__VA_ARGS__);  \
		cx_err_code_;                   \
	})

#endif
