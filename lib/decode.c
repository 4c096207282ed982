/* SPDX-License-Identifier: MIT */
/*
 * The stream decoder: the trust boundary. Every length is checked
 * against the stream's declared size and the loader's limits before
 * anything sized by the peer is allocated; on any failure the partial
 * state is freed and every fd received so far is closed.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "crc32c.h"
#include "cleanup.h"
#include "error.h"
#include "ram.h"
#include "rules.h"
#include "stream.h"
#include "wire.h"

struct dec {
	struct cx_io *io;
	const struct cprxfer_opts *o;
	enum cx_mode mode;
	cprxfer_state *st;
	uint32_t crc;
	uint64_t bytes, declared_bytes;
	uint64_t records, declared_records;
	uint64_t fds_announced, fds_claimed, declared_fds, max_fds;
	uint8_t *seen; /* exec mode: fd numbers already claimed */
	size_t seen_len;
};

/* Read n stream bytes, counted and checksummed. */
static int take(struct dec *d, void *p, size_t n)
{
	int rc;

	if (n > d->declared_bytes - d->bytes)
		return cx_err(-EBADMSG,
			      "stream runs past its declared %llu bytes",
			      (unsigned long long)d->declared_bytes);
	/* In chunks: checksum one while the peer sends the next. */
	while (n) {
		size_t k = n < CX_CRC_CHUNK ? n : CX_CRC_CHUNK;

		rc = cx_io_read(d->io, p, k);
		if (rc == -ENODATA)
			return cx_err(
				-EBADMSG,
				"stream truncated after %llu of %llu bytes",
				(unsigned long long)d->bytes,
				(unsigned long long)d->declared_bytes);
		if (rc < 0)
			return rc;
		if (!d->io->crc_known)
			d->crc = cx_crc32c(d->crc, p, k);
		d->bytes += k;
		p = (uint8_t *)p + k;
		n -= k;
	}
	return 0;
}

static int skip(struct dec *d, uint64_t n)
{
	uint8_t buf[4096];

	while (n) {
		size_t k = n < sizeof(buf) ? n : sizeof(buf);
		int rc = take(d, buf, k);

		if (rc < 0)
			return rc;
		n -= k;
	}
	return 0;
}

static int read_frame(struct dec *d, struct cx_frame *f)
{
	uint8_t h[CX_HDR];
	int rc = take(d, h, sizeof(h));

	if (rc < 0)
		return rc;
	rc = cx_frame_parse(h, f);
	if (rc < 0)
		return rc;
	return cx_frame_fits(f, d->bytes, d->declared_bytes);
}

/*
 * Fault a large buffer in with one call rather than one fault per page
 * as the socket fills it (best effort; kernels before 5.14 lack it).
 */
static void prefault(void *p, size_t n)
{
#ifdef MADV_POPULATE_WRITE
	uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
	uintptr_t b = ((uintptr_t)p + n) & ~(uintptr_t)4095;

	if (n >= (1u << 20) && b > a)
		madvise((void *)a, b - a, MADV_POPULATE_WRITE);
#else
	(void)p;
	(void)n;
#endif
}

/* Claim the fd a record names: the next one, in order. */
static int claim_fd(struct dec *d, const char *name, uint32_t index, int *fd)
{
	int rc = cx_claim_check(name, index, 1, false, d->fds_claimed,
				d->fds_announced);

	if (rc < 0)
		return rc;
	*fd = cx_io_take_fd(d->io);
	if (*fd < 0)
		return cx_err(-EBADMSG,
			      "record '%s': fd %u announced but never arrived",
			      name, index);
	d->fds_claimed++;
	return 0;
}

/* Exec mode: the fds are already ours, by number. */
static int adopt_inline(struct dec *d, uint32_t n)
{
	uint8_t q[4];
	uint32_t i;
	int rc;

	for (i = 0; i < n; i++) {
		int fd, flags;
		uint32_t keep;

		rc = take(d, q, 4);
		if (rc < 0)
			return rc;
		keep = cx_get32(q) & CX_FD_KEEP_OPEN;
		fd = (int)(cx_get32(q) & ~CX_FD_KEEP_OPEN);
		flags = fcntl(fd, F_GETFD);
		if (flags < 0)
			return cx_err(-EBADMSG,
				      "fd %d named by the stream is not open",
				      fd);
		if ((size_t)fd >= d->seen_len) {
			size_t len = ((size_t)fd + 1) * 2;
			uint8_t *s = realloc(d->seen, len);

			if (!s)
				return cx_err(-ENOMEM, "out of memory");
			memset(s + d->seen_len, 0, len - d->seen_len);
			d->seen = s;
			d->seen_len = len;
		}
		if (d->seen[fd]) {
			/* Named twice: the second record gets its own fd. */
			fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
			if (fd < 0)
				return cx_err(
					-errno, "dup of fd %d: %s",
					(int)(cx_get32(q) & ~CX_FD_KEEP_OPEN),
					strerror(errno));
			flags = FD_CLOEXEC;
		} else {
			d->seen[fd] = 1;
		}
		/* Close-on-exec back as it was before cprxfer_exec(). */
		if (!keep != !!(flags & FD_CLOEXEC))
			fcntl(fd, F_SETFD,
			      keep ? flags & ~FD_CLOEXEC : flags | FD_CLOEXEC);
		/* Queue it like a received fd; the queue owns it now. */
		rc = cx_io_queue_fd(d->io, fd);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static int on_fds(struct dec *d, const struct cx_frame *f)
{
	uint8_t p[CX_FDS_HDR];
	uint32_t n, first;
	bool inl = f->flags & CX_FDS_INLINE;
	int rc;

	if (d->mode == CX_MODE_FILE)
		return cx_err(-EBADMSG, "fd batch in a state file");
	if (inl != (d->mode == CX_MODE_EXEC) || f->len < CX_FDS_HDR)
		return cx_err(-EBADMSG, "malformed fd batch");
	rc = take(d, p, sizeof(p));
	if (rc < 0)
		return rc;
	rc = cx_fds_check(p, f->len, inl, d->fds_announced, d->declared_fds,
			  &n);
	if (rc < 0)
		return rc;
	first = (uint32_t)d->fds_announced;
	d->fds_announced += n;
	if (inl)
		return adopt_inline(d, n);
	if (d->io->fds_in < d->fds_announced)
		return cx_err(
			-EBADMSG,
			"fd batch announces %u fds, only %llu of %llu arrived",
			n, (unsigned long long)(d->io->fds_in - first),
			(unsigned long long)n);
	return 0;
}

/*
 * Records. on_record() reads what every record has (its header and
 * name) and has rules.c check what every record must respect (the
 * record limit, the declared count, the length its type's value may
 * have, a critical type this version lacks); the record's type then
 * picks, from rec_decode[], the function that decodes it:
 *
 *   decode_int        CPRXFER_TYPE_U64, CPRXFER_TYPE_I64
 *   decode_bytes      CPRXFER_TYPE_BLOB, CPRXFER_TYPE_STR
 *   decode_fd         CPRXFER_TYPE_FD
 *   decode_ram        CPRXFER_TYPE_RAM
 *   decode_fd_array   CPRXFER_TYPE_FDS
 *   decode_unknown    any other type, not critical: skipped
 *
 * The rules a value must follow are rules.c's too, shared with the
 * stream walker (walk.c). A decode function reads the value, checks it, claims its fds and
 * only then appends the entry, so that a failure leaves nothing behind:
 * what it holds is released by the cleanup attributes on return.
 */
struct rec {
	uint8_t type, flags, name_len;
	char name[CPRXFER_NAME_MAX + 1];
	uint64_t vlen; /* value bytes after the name */
	/* A small record already read whole: its value bytes; NULL: the
	 * value is read from the stream (straight to its buffer). */
	const uint8_t *p;
};

/* Read n bytes of the record's value. */
static int rtake(struct dec *d, struct rec *r, void *dst, size_t n)
{
	if (!r->p)
		return take(d, dst, n);
	memcpy(dst, r->p, n);
	r->p += n;
	return 0;
}

/* Add the record's entry; the caller fills in its value. */
static int add_entry(struct dec *d, const struct rec *r, struct cx_entry **x)
{
	int rc = cx_state_append(d->st, r->name, r->name_len, r->type, x);

	if (rc == -EEXIST)
		return cx_err(-EBADMSG, "record '%s' appears twice", r->name);
	return rc;
}

/* u64, i64: 8 bytes. */
static int decode_int(struct dec *d, struct rec *r)
{
	uint8_t v[8];
	struct cx_entry *x;
	int rc;

	rc = rtake(d, r, v, sizeof(v));
	if (rc < 0)
		return rc;
	rc = add_entry(d, r, &x);
	if (rc < 0)
		return rc;
	x->v.u64 = cx_get64(v);
	return 0;
}

/* A value cprxfer_load_step() read apart (cx_io_park): count, checksum. */
static int take_kept(struct dec *d, const void *p, size_t n)
{
	if (n > d->declared_bytes - d->bytes)
		return cx_err(-EBADMSG,
			      "stream runs past its declared %llu bytes",
			      (unsigned long long)d->declared_bytes);
	if (!d->io->crc_known)
		d->crc = cx_crc32c(d->crc, p, n);
	d->bytes += n;
	return 0;
}

/* blob, str: the bytes, kept with a NUL after them; a str has no NUL. */
static int decode_bytes(struct dec *d, struct rec *r)
{
	size_t len = (size_t)r->vlen;
	cx_autofree char *buf = r->p ? NULL : (char *)cx_io_unpark(d->io, len);
	struct cx_entry *x;
	int rc;

	if (buf) {
		rc = take_kept(d, buf, len);
	} else {
		buf = malloc(len + 1);
		if (!buf)
			return cx_err(
				-ENOMEM,
				"record '%s': out of memory for %llu bytes",
				r->name, (unsigned long long)r->vlen);
		prefault(buf, len);
		rc = rtake(d, r, buf, len);
	}
	if (rc < 0)
		return rc;
	buf[len] = 0;
	if (r->type == CPRXFER_TYPE_STR) {
		rc = cx_str_check(r->name, memchr(buf, 0, len) != NULL);
		if (rc < 0)
			return rc;
	}
	rc = add_entry(d, r, &x);
	if (rc < 0)
		return rc;
	x->v.blob.data = cx_steal_ptr(&buf);
	x->v.blob.len = len;
	return 0;
}

/* fd: u32 index of the fd among the stream's fds. */
static int decode_fd(struct dec *d, struct rec *r)
{
	uint8_t v[4];
	cx_autoclose int fd = -1;
	struct cx_entry *x;
	int rc;

	rc = rtake(d, r, v, sizeof(v));
	if (rc < 0)
		return rc;
	rc = claim_fd(d, r->name, cx_get32(v), &fd);
	if (rc < 0)
		return rc;
	rc = add_entry(d, r, &x);
	if (rc < 0)
		return rc;
	x->v.fd = cx_steal_fd(&fd);
	x->owns_fd = true;
	return 0;
}

/* RAM: u64 size, u32 flags, u32 fd index or CX_NOFD, then a path. */
static int decode_ram(struct dec *d, struct rec *r)
{
	uint8_t v[CX_RAM_LEN];
	size_t plen = (size_t)r->vlen - CX_RAM_LEN;
	cx_autofree char *path = NULL;
	cx_autoclose int fd = -1;
	struct cx_entry *x;
	uint32_t index;
	int rc;

	rc = rtake(d, r, v, CX_RAM_LEN);
	if (rc < 0)
		return rc;
	index = cx_get32(v + 12);
	if (plen) {
		path = malloc(plen + 1);
		if (!path)
			return cx_err(-ENOMEM, "out of memory");
		rc = rtake(d, r, path, plen);
		if (rc < 0)
			return rc;
		path[plen] = 0;
	}
	rc = cx_ram_rec_check(r->name, path, plen, index,
			      d->mode == CX_MODE_FILE);
	if (rc < 0)
		return rc;
	if (index != CX_NOFD) {
		rc = claim_fd(d, r->name, index, &fd);
		if (rc < 0)
			return rc;
	}
	/* A peer's RAM: a sealed memfd, or a file only if allowed. */
	if (d->mode == CX_MODE_SOCKET) {
		rc = cx_ram_check_fd(r->name, fd, cx_get64(v),
				     d->o->allow_file_ram);
		if (rc < 0)
			return rc;
	}
	rc = add_entry(d, r, &x);
	if (rc < 0)
		return rc;
	x->v.ram.size = cx_get64(v);
	x->v.ram.flags = cx_get32(v + 8);
	x->v.ram.fd = cx_steal_fd(&fd);
	x->v.ram.path = cx_steal_ptr(&path);
	x->owns_fd = x->v.ram.fd >= 0;
	return 0;
}

/* n fds owned together: each closed, then the array freed. */
struct fdvec {
	int *fds;
	size_t n;
};

static void fdvec_clear(struct fdvec *v)
{
	if (v->fds)
		cx_close_all(v->fds, v->n);
	free(v->fds);
	v->fds = NULL;
}

/* Claim the n fds an array names: the next ones, in order. */
static int claim_fds(struct dec *d, const char *name, uint32_t first,
		     uint32_t n, struct fdvec *v)
{
	int rc = cx_claim_check(name, first, n, true, d->fds_claimed,
				d->fds_announced);

	if (rc < 0)
		return rc;
	/* Bounded: n fds were announced, within the loader's fd limit. */
	v->fds = malloc(n ? (size_t)n * sizeof(int) : 1);
	if (!v->fds)
		return cx_err(-ENOMEM, "record '%s': out of memory for %u fds",
			      name, n);
	for (v->n = 0; v->n < n; v->n++) {
		v->fds[v->n] = cx_io_take_fd(d->io);
		if (v->fds[v->n] < 0)
			return cx_err(
				-EBADMSG,
				"record '%s': fd %llu announced but never arrived",
				name, (unsigned long long)(first + v->n));
		d->fds_claimed++;
	}
	return 0;
}

/* fd array: u32 count, u32 index of its first fd (CX_FDA_LEN). */
static int decode_fd_array(struct dec *d, struct rec *r)
{
	uint8_t v[CX_FDA_LEN];
	__attribute__((cleanup(fdvec_clear))) struct fdvec fds = { 0 };
	struct cx_entry *x;
	int rc;

	rc = rtake(d, r, v, sizeof(v));
	if (rc < 0)
		return rc;
	if (d->mode == CX_MODE_FILE)
		return cx_err(-EBADMSG, "record '%s': fd array in a state file",
			      r->name);
	rc = claim_fds(d, r->name, cx_get32(v + 4), cx_get32(v), &fds);
	if (rc < 0)
		return rc;
	rc = add_entry(d, r, &x);
	if (rc < 0)
		return rc;
	x->v.fda.fds = cx_steal_ptr(&fds.fds);
	x->v.fda.n = fds.n;
	x->owns_fd = true;
	return 0;
}

/* A type this version lacks, not critical (cx_rec_check): skipped. */
static int decode_unknown(struct dec *d, struct rec *r)
{
	if (r->p) {
		r->p += r->vlen;
		return 0;
	}
	return skip(d, r->vlen);
}

/* The value lengths each type takes are checked first (rules.c). */
static int (*const rec_decode[])(struct dec *d, struct rec *r) = {
	[CPRXFER_TYPE_U64] = decode_int,      [CPRXFER_TYPE_I64] = decode_int,
	[CPRXFER_TYPE_BLOB] = decode_bytes,   [CPRXFER_TYPE_STR] = decode_bytes,
	[CPRXFER_TYPE_FD] = decode_fd,	      [CPRXFER_TYPE_RAM] = decode_ram,
	[CPRXFER_TYPE_FDS] = decode_fd_array,
};

static int on_record(struct dec *d, const struct cx_frame *f)
{
	uint8_t h[CX_REC_HDR], small[512];
	struct cx_rec_head rh;
	struct rec r = { 0 };
	bool known;
	int rc;

	rc = cx_rec_frame_check(f);
	if (rc < 0)
		return rc;
	/* A small record is read and checksummed in one go. */
	if (f->len <= sizeof(small)) {
		rc = take(d, small, (size_t)f->len);
		if (rc < 0)
			return rc;
		r.p = small;
	}
	rc = rtake(d, &r, h, sizeof(h));
	if (rc < 0)
		return rc;
	rc = cx_rec_head_parse(h, f, d->records, &rh);
	if (rc < 0)
		return rc;
	r.type = rh.type;
	r.flags = rh.flags;
	r.name_len = rh.name_len;
	r.vlen = rh.vlen;
	rc = rtake(d, &r, r.name, r.name_len);
	if (rc < 0)
		return rc;
	r.name[r.name_len] = 0;
	rc = cx_rec_check(&rh, r.name, d->o, &d->records, d->declared_records,
			  &known);
	if (rc < 0)
		return rc;
	return known ? rec_decode[r.type](d, &r) : decode_unknown(d, &r);
}

static int on_end(struct dec *d, const struct cx_frame *f)
{
	struct cx_end_seen s;
	uint8_t p[CX_END_LEN];
	int rc;

	rc = cx_end_frame_check(f);
	if (rc < 0)
		return rc;
	rc = take(d, p, 16);
	if (rc < 0)
		return rc;
	/* cprxfer_load_step() checksummed the stream as it came. */
	s.crc = d->io->crc_known ? d->io->crc_val : d->crc;
	rc = take(d, p + 16, 8);
	if (rc < 0)
		return rc;
	s.records = d->records;
	s.declared_records = d->declared_records;
	s.declared_fds = d->declared_fds;
	s.received = d->io->fds_in;
	s.claimed = d->fds_claimed;
	/*
	 * fds left in the queue are extra, unless bytes of a next stream
	 * were read ahead: then they came with that stream's first batch.
	 */
	s.fds_left = d->io->fdq_pos != d->io->fdq_len && !cx_io_buffered(d->io);
	s.bytes = d->bytes;
	s.declared_bytes = d->declared_bytes;
	return cx_end_check(p, &s);
}

static int on_begin(struct dec *d)
{
	uint8_t h[CX_HDR], p[CX_BEGIN_LEN];
	struct cx_frame f;
	int rc;

	d->declared_bytes = CX_HDR;
	rc = take(d, h, sizeof(h));
	if (rc < 0)
		return rc;
	rc = cx_frame_parse(h, &f);
	if (rc == 0)
		rc = cx_begin_frame_check(&f);
	if (rc < 0)
		return rc;
	d->declared_bytes += CX_BEGIN_LEN;
	rc = take(d, p, sizeof(p));
	if (rc < 0)
		return rc;
	rc = cx_begin_check(p, d->o, d->max_fds, d->bytes, &d->declared_records,
			    &d->declared_fds, &d->declared_bytes);
	if (rc < 0)
		return rc;
	return cx_state_reserve(d->st, d->declared_records < 65536
					       ? (size_t)d->declared_records
					       : 65536);
}

int cx_decode(struct cx_io *io, const struct cprxfer_opts *o, enum cx_mode mode,
	      cprxfer_state **out)
{
	struct dec d = { .io = io, .o = o, .mode = mode };
	struct cx_frame f;
	int rc;

	d.max_fds = cx_opts_max_fds(o);
	io->max_fds = d.max_fds;
	/* fds read ahead with earlier frames belong to this stream. */
	io->fds_in = io->fdq_len - io->fdq_pos;
	d.st = cprxfer_state_new();
	if (!d.st)
		return cx_err(-ENOMEM, "load: out of memory");
	d.st->from_peer = mode == CX_MODE_SOCKET;
	d.st->allow_file_ram = o->allow_file_ram;
	rc = on_begin(&d);
	while (rc == 0) {
		rc = read_frame(&d, &f);
		if (rc < 0)
			break;
		if (f.type == CX_F_RECORD)
			rc = on_record(&d, &f);
		else if (f.type == CX_F_FDS)
			rc = on_fds(&d, &f);
		else if (f.type == CX_F_END)
			break;
		else
			rc = cx_err(-EPROTO,
				    "unexpected %s frame inside a state stream",
				    cx_frame_name(f.type));
	}
	if (rc == 0)
		rc = on_end(&d, &f);
	free(d.seen);
	if (rc < 0) {
		cprxfer_state_free(d.st);
		cx_io_drop_fds(io);
		return rc;
	}
	/* The next stream's count starts here, not on top of this one's
	 * (a channel's loader peeks at the next stream, fds and all,
	 * before it decodes it). */
	io->fds_in = io->fdq_len - io->fdq_pos;
	*out = d.st;
	return 0;
}
