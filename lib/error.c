/* SPDX-License-Identifier: MIT */
/* Per-thread failure reasons: the only mutable global in the library. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "error.h"

#define CX_ERRMSG_MAX 512

static __thread char errmsg[CX_ERRMSG_MAX];

int cx_err(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	va_end(ap);
	return err;
}

int cx_err_prefix(int err, const char *fmt, ...)
{
	char old[CX_ERRMSG_MAX];
	size_t n;
	va_list ap;

	memcpy(old, errmsg, sizeof(old));
	va_start(ap, fmt);
	vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	va_end(ap);
	n = strlen(errmsg);
	if (old[0] && n + 2 < sizeof(errmsg))
		snprintf(errmsg + n, sizeof(errmsg) - n, ": %s", old);
	return err;
}

void cx_close(int fd)
{
	int saved = errno;

	if (fd >= 0)
		close(fd);
	errno = saved;
}

CX_EXPORT const char *cprxfer_errmsg(void)
{
	return errmsg;
}

CX_EXPORT const char *cprxfer_version(void)
{
	return CPRXFER_VERSION_STRING;
}
