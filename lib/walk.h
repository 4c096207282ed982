/* SPDX-License-Identifier: MIT */
/*
 * A stream walker for inspection tools (tools/cprxfer-inspect.c): it
 * reads one state stream with the decoder's framing, limits and CRC32C,
 * and reports every frame's record to a callback instead of building a
 * state. It never adopts an fd: fds received with a socket stream are
 * handed to the callback to look at and closed right after; fd numbers
 * listed inline (exec mode) are reported as numbers only. Internal, not
 * exported.
 */
#ifndef CX_WALK_H
#define CX_WALK_H

#include <stdbool.h>
#include <stdint.h>

#include "io.h"
#include "opts.h"

/* Bytes of a BLOB or STR value kept for display. */
#define CX_WALK_HEAD 64

struct cx_walk_rec {
	uint64_t offset; /* of the RECORD frame's header, in the input */
	uint64_t len;	 /* of the value */
	const char *name;
	uint8_t type; /* CPRXFER_TYPE_*, or a later version's type */
	uint8_t flags;
	bool skipped;	     /* a later version's optional record */
	uint64_t u64;	     /* U64, I64 */
	const uint8_t *head; /* BLOB, STR: the first head_len bytes */
	size_t head_len;
	uint64_t ram_size; /* RAM */
	uint32_t ram_flags;
	const char *ram_path; /* RAM: NULL when the record has none */
	bool has_fd;	      /* FD, RAM with an fd */
	uint32_t fd_index;
	int fd;		/* socket stream: the received fd (closed after the
			 * callback), else -1 */
	int fd_number;	/* inline (exec) stream: the sender's number, else -1 */
	bool keep_open; /* inline: was not close-on-exec before the exec */
	/* FDS (an fd array): fd_count fds from fd_index on; received ones
	 * in fds[] (closed after the callback), inline ones in numbers[]
	 * (with CX_FD_KEEP_OPEN), else neither. */
	uint32_t fd_count;
	const int *fds;
	const uint32_t *numbers;
};

struct cx_walk {
	/* In: a socket stream brings fds with SCM_RIGHTS; any other
	 * (state file, exec memfd, capture) may list them inline. */
	bool sock;
	const struct cprxfer_opts *o; /* limits; NULL: the defaults */
	void (*on_record)(void *arg, const struct cx_walk_rec *r);
	void *arg;

	/* Out, filled as far as the walk got. */
	bool begun, ended; /* BEGIN parsed; END parsed */
	bool inline_fds;   /* an FDS frame listed fd numbers */
	bool fds_absent;   /* non-socket input with socket FDS batches */
	uint8_t version;
	bool hello; /* an exec memfd's HELLO frame came first */
	uint32_t hello_pid, hello_uid;
	char hello_tag[256];
	uint64_t base; /* bytes before the stream (the HELLO frame) */
	uint64_t declared_records, declared_fds, declared_bytes;
	uint64_t records, fds, bytes;
	uint32_t crc_stream, crc_data; /* valid once ended */
	int err;		       /* 0 or the first error */
	uint64_t err_offset;	       /* of the frame the error lies in,
				        * in the input */
	char errmsg[512];
};

/*
 * Walk one stream from io. Returns 0 if the stream is whole and its
 * checksum matches, else the first error (also in w->err, with its
 * reason in w->errmsg and cprxfer_errmsg()). fds received and not yet
 * reported are closed in both cases.
 */
int cx_walk(struct cx_io *io, struct cx_walk *w);

#endif
