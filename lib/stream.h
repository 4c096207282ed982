/* SPDX-License-Identifier: MIT */
/*
 * The state stream: a state encoded as BEGIN, RECORD and FDS frames and
 * an END frame that carries the CRC32C of everything before it.
 */
#ifndef CX_STREAM_H
#define CX_STREAM_H

#include "io.h"
#include "opts.h"
#include "state.h"

enum cx_mode {
	CX_MODE_SOCKET, /* fds travel as SCM_RIGHTS */
	CX_MODE_EXEC,	/* fds stay open across execve: numbers inline */
	CX_MODE_FILE,	/* no fds; RAM files by path */
	/* fds out of band, as an ordered array (lib/memfd-stream.c) */
	CX_MODE_RESTART, /* through a service manager's fd store */
	CX_MODE_KEXEC,	 /* the same, across a kexec: memfds only */
};

/* Write st to io and flush. */
int cx_encode(struct cx_io *io, const cprxfer_state *st, enum cx_mode mode);

/*
 * Read one stream from io into a new state. On failure nothing is
 * leaked: every fd received is closed.
 */
int cx_decode(struct cx_io *io, const struct cprxfer_opts *o, enum cx_mode mode,
	      cprxfer_state **out);

#endif
