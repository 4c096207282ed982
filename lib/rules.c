/* SPDX-License-Identifier: MIT */
/* The state stream's rules, each written once (rules.h). */
#include <limits.h>
#include <string.h>

#include <cprxfer/cprxfer.h>

#include "error.h"
#include "rules.h"

int cx_begin_frame_check(const struct cx_frame *f)
{
	if (f->type != CX_F_BEGIN || f->len != CX_BEGIN_LEN)
		return cx_err(
			-EPROTO, "expected a BEGIN frame, got %s of %llu bytes",
			cx_frame_name(f->type), (unsigned long long)f->len);
	return 0;
}

int cx_begin_check(const uint8_t *p, const struct cprxfer_opts *o,
		   uint64_t max_fds, uint64_t consumed, uint64_t *records,
		   uint64_t *fds, uint64_t *bytes)
{
	*records = cx_get64(p);
	*fds = cx_get64(p + 8);
	*bytes = cx_get64(p + 16);
	if (*records > o->max_records)
		return cx_err(-E2BIG,
			      "stream declares %llu records, limit %llu",
			      (unsigned long long)*records,
			      (unsigned long long)o->max_records);
	if (*fds > max_fds)
		return cx_err(-EMFILE, "stream declares %llu fds, limit %llu",
			      (unsigned long long)*fds,
			      (unsigned long long)max_fds);
	if (*bytes > o->max_stream)
		return cx_err(-EFBIG, "stream declares %llu bytes, limit %llu",
			      (unsigned long long)*bytes,
			      (unsigned long long)o->max_stream);
	if (*bytes < consumed + CX_HDR + CX_END_LEN)
		return cx_err(
			-EBADMSG,
			"stream declares %llu bytes, too few for its frames",
			(unsigned long long)*bytes);
	return 0;
}

int cx_frame_fits(const struct cx_frame *f, uint64_t bytes, uint64_t declared)
{
	if (f->len > declared - bytes)
		return cx_err(
			-EBADMSG,
			"%s frame of %llu bytes runs past the stream's declared end",
			cx_frame_name(f->type), (unsigned long long)f->len);
	return 0;
}

int cx_rec_frame_check(const struct cx_frame *f)
{
	if (f->len < CX_REC_HDR + 1)
		return cx_err(-EBADMSG,
			      "record frame of %llu bytes is too short",
			      (unsigned long long)f->len);
	return 0;
}

int cx_rec_head_parse(const uint8_t *h, const struct cx_frame *f,
		      uint64_t recno, struct cx_rec_head *r)
{
	r->type = h[0];
	r->flags = h[1];
	r->name_len = h[2];
	if (r->name_len == 0 || CX_REC_HDR + (uint64_t)r->name_len > f->len)
		return cx_err(
			-EBADMSG,
			"record %llu: name length %u does not fit its %llu-byte frame",
			(unsigned long long)recno, r->name_len,
			(unsigned long long)f->len);
	r->vlen = f->len - CX_REC_HDR - r->name_len;
	return 0;
}

/* The value lengths each type takes; a type not here is unknown. */
static const struct {
	const char *what; /* for messages */
	uint64_t min_len, max_len;
} rec_kinds[] = {
	[CPRXFER_TYPE_U64] = { "u64", 8, 8 },
	[CPRXFER_TYPE_I64] = { "i64", 8, 8 },
	[CPRXFER_TYPE_BLOB] = { "blob", 0, UINT64_MAX },
	[CPRXFER_TYPE_STR] = { "str", 0, UINT64_MAX },
	[CPRXFER_TYPE_FD] = { "fd", 4, 4 },
	[CPRXFER_TYPE_RAM] = { "RAM", CX_RAM_LEN, CX_RAM_LEN + PATH_MAX - 1 },
	[CPRXFER_TYPE_FDS] = { "fd array", CX_FDA_LEN, CX_FDA_LEN },
};

int cx_rec_check(const struct cx_rec_head *r, const char *name,
		 const struct cprxfer_opts *o, uint64_t *records,
		 uint64_t declared, bool *known)
{
	if (memchr(name, 0, r->name_len))
		return cx_err(-EBADMSG, "record %llu: name contains a NUL byte",
			      (unsigned long long)*records);
	if (r->vlen > o->max_record)
		return cx_err(-EMSGSIZE,
			      "record '%s': length %llu exceeds limit %llu",
			      name, (unsigned long long)r->vlen,
			      (unsigned long long)o->max_record);
	if (++*records > declared)
		return cx_err(
			-EBADMSG,
			"record '%s': more records than the %llu declared",
			name, (unsigned long long)declared);
	*known = r->type < sizeof(rec_kinds) / sizeof(rec_kinds[0]) &&
		 rec_kinds[r->type].what;
	if (!*known) {
		/* A later version's record: skipped unless critical. */
		if (r->flags & CX_REC_CRITICAL)
			return cx_err(
				-EOPNOTSUPP,
				"record '%s': type %u is not understood by this version and is marked critical",
				name, r->type);
		return 0;
	}
	if (r->vlen < rec_kinds[r->type].min_len ||
	    r->vlen > rec_kinds[r->type].max_len)
		return cx_err(
			-EBADMSG,
			"record '%s': %s value of %llu bytes (type %u takes %llu to %llu)",
			name, rec_kinds[r->type].what,
			(unsigned long long)r->vlen, r->type,
			(unsigned long long)rec_kinds[r->type].min_len,
			(unsigned long long)rec_kinds[r->type].max_len);
	return 0;
}

int cx_str_check(const char *name, bool has_nul)
{
	if (has_nul)
		return cx_err(-EBADMSG,
			      "record '%s': string contains a NUL byte", name);
	return 0;
}

int cx_ram_rec_check(const char *name, const char *path, size_t plen,
		     uint32_t index, bool by_path)
{
	if (plen && strlen(path) != plen)
		return cx_err(-EBADMSG, "record '%s': path contains a NUL byte",
			      name);
	if (!plen && index == CX_NOFD)
		return cx_err(-EBADMSG,
			      "record '%s': RAM with neither fd nor path",
			      name);
	/* Only a state file names RAM by path alone: a peer must not make
	 * the loader open files of its choosing. */
	if (!by_path && index == CX_NOFD)
		return cx_err(
			-EBADMSG,
			"record '%s': RAM without an fd outside a state file",
			name);
	return 0;
}

int cx_claim_check(const char *name, uint32_t first, uint32_t n, bool array,
		   uint64_t claimed, uint64_t announced)
{
	if (!array && (first != claimed || first >= announced))
		return cx_err(
			-EBADMSG,
			"record '%s': names fd %u, expected fd %llu of %llu announced",
			name, first, (unsigned long long)claimed,
			(unsigned long long)announced);
	if (array && (first != claimed || n > announced - claimed))
		return cx_err(
			-EBADMSG,
			"record '%s': names %u fds from fd %u, expected fd %llu with %llu announced",
			name, n, first, (unsigned long long)claimed,
			(unsigned long long)announced);
	return 0;
}

int cx_end_frame_check(const struct cx_frame *f)
{
	if (f->len != CX_END_LEN)
		return cx_err(-EBADMSG, "END frame of %llu bytes",
			      (unsigned long long)f->len);
	return 0;
}

int cx_end_check(const uint8_t *p, const struct cx_end_seen *s)
{
	if (cx_get64(p) != s->records || s->records != s->declared_records)
		return cx_err(-EBADMSG,
			      "stream ends after %llu records, declared %llu",
			      (unsigned long long)s->records,
			      (unsigned long long)s->declared_records);
	if (cx_get64(p + 8) != s->declared_fds ||
	    s->claimed != s->declared_fds || s->fds_left)
		return cx_err(
			-EBADMSG,
			"fd count does not match the records: %llu declared, %llu received, %llu claimed",
			(unsigned long long)s->declared_fds,
			(unsigned long long)s->received,
			(unsigned long long)s->claimed);
	if (s->bytes != s->declared_bytes)
		return cx_err(-EBADMSG,
			      "stream ends after %llu bytes, declared %llu",
			      (unsigned long long)s->bytes,
			      (unsigned long long)s->declared_bytes);
	if (cx_get32(p + 16) != s->crc)
		return cx_err(
			-EBADMSG,
			"checksum mismatch: stream says 0x%08x, data gives 0x%08x",
			cx_get32(p + 16), s->crc);
	return 0;
}
