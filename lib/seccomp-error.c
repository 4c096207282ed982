/* SPDX-License-Identifier: MIT */
/*
 * libcprxfer-seccomp's failure reasons: cx_err() in seccomp.c lands here
 * and goes into the core library's per-thread buffer, so that
 * cprxfer_errmsg() shows it as for any other call.
 */
#include <stdarg.h>

#include "error.h"

void cx_errmsg_set(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cprxfer__errmsg_vset(fmt, ap);
	va_end(ap);
}
