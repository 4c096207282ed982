/* SPDX-License-Identifier: MIT */
/* Per-thread error reasons and small helpers shared by every file. */
#ifndef CX_ERROR_H
#define CX_ERROR_H

#include <errno.h>

#define CX_EXPORT __attribute__((visibility("default")))

/*
 * Record the calling thread's failure reason and return err (a negative
 * errno). A reason that ends in ": %m"-style context is the caller's to
 * format; errno is never consulted here.
 */
int cx_err(int err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3), cold));

/* Prefix the current reason with more context, e.g. a phase name. */
int cx_err_prefix(int err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3), cold));

/* Close fd preserving errno; ignores fd < 0. */
void cx_close(int fd);

#endif
