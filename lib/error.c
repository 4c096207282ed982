/* SPDX-License-Identifier: MIT */
/* Per-thread failure reasons: the only mutable global in the library. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include <cprxfer/cprxfer.h>

#include "error.h"

#define CX_ERRMSG_MAX 512

static __thread char errmsg[CX_ERRMSG_MAX];

void cx_errmsg_set(const char *fmt, ...)
{
	int saved = errno;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	va_end(ap);
	errno = saved;
}

CX_EXPORT void cprxfer__errmsg_vset(const char *fmt, va_list ap)
{
	int saved = errno;

	vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	errno = saved;
}

void cx_errmsg_prefix(const char *fmt, ...)
{
	char old[CX_ERRMSG_MAX];
	int saved = errno;
	size_t n;
	va_list ap;

	memcpy(old, errmsg, sizeof(old));
	va_start(ap, fmt);
	vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	va_end(ap);
	n = strlen(errmsg);
	if (old[0] && n + 2 < sizeof(errmsg))
		snprintf(errmsg + n, sizeof(errmsg) - n, ": %s", old);
	errno = saved;
}

const char *cx_file_kind(unsigned int m)
{
	if (S_ISREG(m))
		return "a regular file";
	if (S_ISDIR(m))
		return "a directory";
	if (S_ISLNK(m))
		return "a symbolic link";
	if (S_ISFIFO(m))
		return "a FIFO or pipe";
	if (S_ISSOCK(m))
		return "a socket";
	if (S_ISCHR(m))
		return "a character device";
	if (S_ISBLK(m))
		return "a block device";
	return "a file of unknown type";
}

const char *cx_errmsg_get(void)
{
	return errmsg;
}

CX_EXPORT const char *cprxfer_errmsg(void)
{
	return errmsg;
}

CX_EXPORT const char *cprxfer_version(void)
{
	return CPRXFER_VERSION_STRING;
}
