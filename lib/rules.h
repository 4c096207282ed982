/* SPDX-License-Identifier: MIT */
/*
 * The state stream's rules, each written once: the decoder (decode.c)
 * enforces them while it builds a state, the walker (walk.c) while it
 * only reports. Each check returns 0 or -errno with the reason set
 * (cx_err), and reads nothing from the stream: the caller reads, in the
 * decoder's order, and asks.
 */
#ifndef CX_RULES_H
#define CX_RULES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "opts.h"
#include "wire.h"

/* The first frame's header: a BEGIN of CX_BEGIN_LEN bytes. */
int cx_begin_frame_check(const struct cx_frame *f);

/*
 * BEGIN's payload p: the declared records, fds and bytes into *records,
 * *fds, *bytes (even on failure, for display), then checked against the
 * limits of o, max_fds, and the consumed bytes already read.
 */
int cx_begin_check(const uint8_t *p, const struct cprxfer_opts *o,
		   uint64_t max_fds, uint64_t consumed, uint64_t *records,
		   uint64_t *fds, uint64_t *bytes);

/* A frame of f->len bytes after bytes of a stream declared declared. */
int cx_frame_fits(const struct cx_frame *f, uint64_t bytes, uint64_t declared);

/* A RECORD frame: long enough for a header and a one-byte name. */
int cx_rec_frame_check(const struct cx_frame *f);

struct cx_rec_head {
	uint8_t type, flags, name_len;
	uint64_t vlen; /* value bytes after the name */
};

/*
 * Parse a record's header h (CX_REC_HDR bytes) in a frame of f->len
 * bytes: the name must fit. recno: the record's number, for messages.
 */
int cx_rec_head_parse(const uint8_t *h, const struct cx_frame *f,
		      uint64_t recno, struct cx_rec_head *r);

/*
 * With the name (name_len bytes, NUL-terminated after them) read: no
 * NUL in the name, the value within o's record limit, one more record
 * (counted in *records) within the declared count, a value length the
 * type takes, and a type this version knows unless not critical.
 * *known: false for a later version's optional record, to skip.
 */
int cx_rec_check(const struct cx_rec_head *r, const char *name,
		 const struct cprxfer_opts *o, uint64_t *records,
		 uint64_t declared, bool *known);

/* A STR value: has_nul, whether its bytes hold a NUL. */
int cx_str_check(const char *name, bool has_nul);

/*
 * A RAM value: its path (plen bytes, NUL-terminated after them; plen 0:
 * none) and fd index (CX_NOFD: none). by_path: a state file, where RAM
 * may be named by path alone.
 */
int cx_ram_rec_check(const char *name, const char *path, size_t plen,
		     uint32_t index, bool by_path);

/*
 * The fds a record names: n from index first (array: an fd array, else
 * one fd) must be the next ones, in order, within those announced.
 */
int cx_claim_check(const char *name, uint32_t first, uint32_t n, bool array,
		   uint64_t claimed, uint64_t announced);

/* The END frame's header: CX_END_LEN bytes. */
int cx_end_frame_check(const struct cx_frame *f);

/* What a stream held, for END to be checked against. */
struct cx_end_seen {
	uint64_t records, declared_records;
	uint64_t declared_fds, received, claimed;
	bool fds_left; /* received fds no record claimed */
	uint64_t bytes, declared_bytes;
	uint32_t crc; /* of everything before END's checksum field */
};

/* END's payload p against what the stream held, then its checksum. */
int cx_end_check(const uint8_t *p, const struct cx_end_seen *s);

#endif
