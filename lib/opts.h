/* SPDX-License-Identifier: MIT */
/* Options: loader limits, timeout and the peer policy of a handshake. */
#ifndef CX_OPTS_H
#define CX_OPTS_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <cprxfer/cprxfer.h>

#define CX_ALLOW_MAX 16
#define CX_TAG_MAX   255

struct cprxfer_opts {
	int timeout_ms;
	uint64_t max_record;
	uint64_t max_stream;
	uint64_t max_records;
	uint64_t max_fds; /* 0: the soft RLIMIT_NOFILE at load time */
	char tag[CX_TAG_MAX + 1];
	uid_t uids[CX_ALLOW_MAX];
	unsigned nuids;
	pid_t pids[CX_ALLOW_MAX];
	unsigned npids;
	mode_t socket_mode;  /* a listener's socket: 0600 by default */
	gid_t socket_gid;    /* its group; (gid_t)-1: left as created */
	bool allow_file_ram; /* a peer's RAM may be a file, not a memfd */
	/* cprxfer_exec_opts: the program its fallback runs (NULL: the old) */
	const char *exec_path;
	char *const *exec_argv;
};

/* Fill o with the documented defaults. */
void cx_opts_default(struct cprxfer_opts *o);

/* Copy src (NULL: defaults) into dst. */
void cx_opts_copy(struct cprxfer_opts *dst, const struct cprxfer_opts *src);

/* The fd limit in force: max_fds, or the soft RLIMIT_NOFILE. */
uint64_t cx_opts_max_fds(const struct cprxfer_opts *o);

#endif
