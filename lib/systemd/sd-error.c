/* SPDX-License-Identifier: MIT */
/*
 * libcprxfer-systemd's failure reasons: cx_err() and cx_err_prefix() in
 * sd.c land in the core library's per-thread buffer, so that
 * cprxfer_errmsg() shows them as for any other call.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cprxfer/cprxfer.h>

#include "error.h"

void cx_errmsg_set(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cprxfer__errmsg_vset(fmt, ap);
	va_end(ap);
}

void cx_errmsg_prefix(const char *fmt, ...)
{
	char old[512], head[512];
	int saved = errno;
	va_list ap;

	snprintf(old, sizeof(old), "%s", cprxfer_errmsg());
	va_start(ap, fmt);
	vsnprintf(head, sizeof(head), fmt, ap);
	va_end(ap);
	cx_errmsg_set("%s: %s", head, old);
	errno = saved;
}
