/* SPDX-License-Identifier: MIT */
/* Options objects: limits, timeout, application tag, allowed peers. */
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "error.h"
#include "opts.h"

void cx_opts_default(struct cprxfer_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->timeout_ms = CPRXFER_DEFAULT_TIMEOUT_MS;
	o->max_record = CPRXFER_DEFAULT_RECORD_BYTES;
	o->max_stream = CPRXFER_DEFAULT_STREAM_BYTES;
	o->max_records = CPRXFER_DEFAULT_RECORDS;
	o->socket_mode = 0600;
	o->socket_gid = (gid_t)-1;
}

void cx_opts_copy(struct cprxfer_opts *dst, const struct cprxfer_opts *src)
{
	if (src)
		*dst = *src;
	else
		cx_opts_default(dst);
}

uint64_t cx_opts_max_fds(const struct cprxfer_opts *o)
{
	struct rlimit rl;

	if (o->max_fds)
		return o->max_fds;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
		return 1u << 20;
	return rl.rlim_cur;
}

CX_EXPORT cprxfer_opts *cprxfer_opts_new(void)
{
	struct cprxfer_opts *o = malloc(sizeof(*o));

	if (!o) {
		cx_err(-ENOMEM, "cprxfer_opts_new: out of memory");
		return NULL;
	}
	cx_opts_default(o);
	return o;
}

CX_EXPORT void cprxfer_opts_free(cprxfer_opts *o)
{
	free(o);
}

CX_EXPORT int cprxfer_opts_set_limit(cprxfer_opts *o, int which, uint64_t value)
{
	if (!o)
		return cx_err(-EINVAL, "cprxfer_opts_set_limit: NULL options");
	if (!value)
		return cx_err(-EINVAL, "cprxfer_opts_set_limit: limit 0");
	switch (which) {
	case CPRXFER_LIMIT_RECORD_BYTES:
		o->max_record = value;
		return 0;
	case CPRXFER_LIMIT_STREAM_BYTES:
		o->max_stream = value;
		return 0;
	case CPRXFER_LIMIT_RECORDS:
		o->max_records = value;
		return 0;
	case CPRXFER_LIMIT_FDS:
		o->max_fds = value;
		return 0;
	}
	return cx_err(-EINVAL, "cprxfer_opts_set_limit: unknown limit %d",
		      which);
}

CX_EXPORT int cprxfer_opts_set_timeout(cprxfer_opts *o, int timeout_ms)
{
	if (!o)
		return cx_err(-EINVAL,
			      "cprxfer_opts_set_timeout: NULL options");
	o->timeout_ms = timeout_ms < 0 ? -1 : timeout_ms;
	return 0;
}

CX_EXPORT int cprxfer_opts_set_tag(cprxfer_opts *o, const char *tag)
{
	size_t n;

	if (!o || !tag)
		return cx_err(-EINVAL, "cprxfer_opts_set_tag: NULL argument");
	n = strlen(tag);
	if (n > CX_TAG_MAX)
		return cx_err(
			-ENAMETOOLONG,
			"cprxfer_opts_set_tag: tag of %zu bytes exceeds %d", n,
			CX_TAG_MAX);
	memcpy(o->tag, tag, n + 1);
	return 0;
}

CX_EXPORT int cprxfer_opts_allow_uid(cprxfer_opts *o, uid_t uid)
{
	if (!o)
		return cx_err(-EINVAL, "cprxfer_opts_allow_uid: NULL options");
	if (o->nuids == CX_ALLOW_MAX)
		return cx_err(-ENOSPC,
			      "cprxfer_opts_allow_uid: at most %d uids",
			      CX_ALLOW_MAX);
	o->uids[o->nuids++] = uid;
	return 0;
}

CX_EXPORT int cprxfer_opts_allow_pid(cprxfer_opts *o, pid_t pid)
{
	if (!o || pid <= 0)
		return cx_err(-EINVAL, "cprxfer_opts_allow_pid: bad argument");
	if (o->npids == CX_ALLOW_MAX)
		return cx_err(-ENOSPC,
			      "cprxfer_opts_allow_pid: at most %d pids",
			      CX_ALLOW_MAX);
	o->pids[o->npids++] = pid;
	return 0;
}

CX_EXPORT int cprxfer_opts_set_socket_mode(cprxfer_opts *o, mode_t mode)
{
	if (!o)
		return cx_err(-EINVAL,
			      "cprxfer_opts_set_socket_mode: NULL options");
	if (mode & ~(mode_t)0777)
		return cx_err(
			-EINVAL,
			"cprxfer_opts_set_socket_mode: mode %04o has bits outside 0777",
			(unsigned)mode);
	o->socket_mode = mode;
	return 0;
}

CX_EXPORT int cprxfer_opts_set_socket_group(cprxfer_opts *o, gid_t gid)
{
	if (!o)
		return cx_err(-EINVAL,
			      "cprxfer_opts_set_socket_group: NULL options");
	o->socket_gid = gid;
	return 0;
}

CX_EXPORT int cprxfer_opts_set_exec_fallback(cprxfer_opts *o, const char *path,
					     char *const argv[])
{
	if (!o)
		return cx_err(-EINVAL,
			      "cprxfer_opts_set_exec_fallback: NULL options");
	o->exec_path = path;
	o->exec_argv = argv;
	return 0;
}

CX_EXPORT int cprxfer_opts_allow_file_ram(cprxfer_opts *o, int allow)
{
	if (!o)
		return cx_err(-EINVAL,
			      "cprxfer_opts_allow_file_ram: NULL options");
	if (allow != 0 && allow != 1)
		return cx_err(
			-EINVAL,
			"cprxfer_opts_allow_file_ram: allow is %d, not 0 or 1",
			allow);
	o->allow_file_ram = allow;
	return 0;
}
