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
	if (f->len > d->declared_bytes - d->bytes)
		return cx_err(
			-EBADMSG,
			"%s frame of %llu bytes runs past the stream's declared end",
			cx_frame_name(f->type), (unsigned long long)f->len);
	return 0;
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
	if (index != d->fds_claimed || index >= d->fds_announced)
		return cx_err(
			-EBADMSG,
			"record '%s': names fd %u, expected fd %llu of %llu announced",
			name, index, (unsigned long long)d->fds_claimed,
			(unsigned long long)d->fds_announced);
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
	n = cx_get32(p);
	first = cx_get32(p + 4);
	if (n == 0 || n > CX_FDS_BATCH || first != d->fds_announced ||
	    f->len != CX_FDS_HDR + (inl ? 4ull * n : 0))
		return cx_err(
			-EBADMSG,
			"malformed fd batch (%u fds from index %u, expected index %llu)",
			n, first, (unsigned long long)d->fds_announced);
	if (d->fds_announced + n > d->declared_fds)
		return cx_err(
			-EBADMSG,
			"fd batch goes past the %llu fds the stream declared",
			(unsigned long long)d->declared_fds);
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

/* Where a record's bytes come from: a small record already read whole,
 * or the stream itself (large values go straight to their buffer). */
struct rsrc {
	const uint8_t *p;
};

static int rtake(struct dec *d, struct rsrc *r, void *dst, size_t n)
{
	if (!r->p)
		return take(d, dst, n);
	memcpy(dst, r->p, n);
	r->p += n;
	return 0;
}

static int on_record(struct dec *d, const struct cx_frame *f)
{
	uint8_t h[CX_REC_HDR], v[CX_RAM_LEN], small[512];
	struct rsrc r = { NULL };
	char name[CPRXFER_NAME_MAX + 1];
	struct cx_entry *x;
	uint64_t vlen;
	uint8_t type;
	int rc, fd = -1;
	void *buf = NULL;

	if (f->len < CX_REC_HDR + 1)
		return cx_err(-EBADMSG,
			      "record frame of %llu bytes is too short",
			      (unsigned long long)f->len);
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
	type = h[0];
	if (h[2] == 0 || CX_REC_HDR + (uint64_t)h[2] > f->len)
		return cx_err(
			-EBADMSG,
			"record %llu: name length %u does not fit its %llu-byte frame",
			(unsigned long long)d->records, h[2],
			(unsigned long long)f->len);
	rc = rtake(d, &r, name, h[2]);
	if (rc < 0)
		return rc;
	name[h[2]] = 0;
	if (memchr(name, 0, h[2]))
		return cx_err(-EBADMSG, "record %llu: name contains a NUL byte",
			      (unsigned long long)d->records);
	vlen = f->len - CX_REC_HDR - h[2];
	if (vlen > d->o->max_record)
		return cx_err(-EMSGSIZE,
			      "record '%s': length %llu exceeds limit %llu",
			      name, (unsigned long long)vlen,
			      (unsigned long long)d->o->max_record);
	if (++d->records > d->declared_records)
		return cx_err(
			-EBADMSG,
			"record '%s': more records than the %llu declared",
			name, (unsigned long long)d->declared_records);
	switch (type) {
	case CPRXFER_TYPE_U64:
	case CPRXFER_TYPE_I64:
	case CPRXFER_TYPE_FD:
		if (vlen != (type == CPRXFER_TYPE_FD ? 4 : 8))
			return cx_err(
				-EBADMSG,
				"record '%s': value of %llu bytes for type %u",
				name, (unsigned long long)vlen, type);
		rc = rtake(d, &r, v, (size_t)vlen);
		break;
	case CPRXFER_TYPE_BLOB:
	case CPRXFER_TYPE_STR:
		buf = malloc((size_t)vlen + 1);
		if (!buf)
			return cx_err(
				-ENOMEM,
				"record '%s': out of memory for %llu bytes",
				name, (unsigned long long)vlen);
		prefault(buf, (size_t)vlen);
		rc = rtake(d, &r, buf, (size_t)vlen);
		((char *)buf)[vlen] = 0;
		if (rc == 0 && type == CPRXFER_TYPE_STR &&
		    memchr(buf, 0, (size_t)vlen))
			rc = cx_err(-EBADMSG,
				    "record '%s': string contains a NUL byte",
				    name);
		break;
	case CPRXFER_TYPE_RAM:
		if (vlen < CX_RAM_LEN || vlen - CX_RAM_LEN >= PATH_MAX)
			return cx_err(-EBADMSG,
				      "record '%s': RAM value of %llu bytes",
				      name, (unsigned long long)vlen);
		rc = rtake(d, &r, v, CX_RAM_LEN);
		if (rc < 0)
			return rc;
		if (vlen > CX_RAM_LEN) {
			buf = malloc((size_t)vlen - CX_RAM_LEN + 1);
			if (!buf)
				return cx_err(-ENOMEM, "out of memory");
			rc = rtake(d, &r, buf, (size_t)vlen - CX_RAM_LEN);
			((char *)buf)[vlen - CX_RAM_LEN] = 0;
			if (rc == 0 && strlen(buf) != vlen - CX_RAM_LEN)
				rc = cx_err(
					-EBADMSG,
					"record '%s': path contains a NUL byte",
					name);
		} else if (cx_get32(v + 12) == CX_NOFD) {
			rc = cx_err(-EBADMSG,
				    "record '%s': RAM with neither fd nor path",
				    name);
		}
		/* Only a state file names RAM by path alone: a peer must
		 * not make the loader open files of its choosing. */
		if (rc == 0 && d->mode != CX_MODE_FILE &&
		    cx_get32(v + 12) == CX_NOFD)
			rc = cx_err(
				-EBADMSG,
				"record '%s': RAM without an fd outside a state file",
				name);
		break;
	default:
		if (h[1] & CX_REC_CRITICAL)
			return cx_err(
				-EOPNOTSUPP,
				"record '%s': type %u is not understood by this version and is marked critical",
				name, type);
		/* A later version's optional record: skip it. */
		if (r.p) {
			r.p += vlen;
			return 0;
		}
		return skip(d, vlen);
	}
	if (rc < 0)
		goto fail;
	if (type == CPRXFER_TYPE_FD)
		rc = claim_fd(d, name, cx_get32(v), &fd);
	else if (type == CPRXFER_TYPE_RAM && cx_get32(v + 12) != CX_NOFD)
		rc = claim_fd(d, name, cx_get32(v + 12), &fd);
	/* A peer's RAM: a sealed memfd, or a file only if allowed. */
	if (rc == 0 && type == CPRXFER_TYPE_RAM && d->mode == CX_MODE_SOCKET)
		rc = cx_ram_check_fd(name, fd, cx_get64(v),
				     d->o->allow_file_ram);
	if (rc < 0)
		goto fail;
	rc = cx_state_append(d->st, name, h[2], type, &x);
	if (rc == -EEXIST)
		rc = cx_err(-EBADMSG, "record '%s' appears twice", name);
	if (rc < 0)
		goto fail;
	switch (type) {
	case CPRXFER_TYPE_U64:
	case CPRXFER_TYPE_I64:
		x->v.u64 = cx_get64(v);
		break;
	case CPRXFER_TYPE_BLOB:
	case CPRXFER_TYPE_STR:
		x->v.blob.data = buf;
		x->v.blob.len = (size_t)vlen;
		break;
	case CPRXFER_TYPE_FD:
		x->v.fd = fd;
		x->owns_fd = true;
		break;
	case CPRXFER_TYPE_RAM:
		x->v.ram.size = cx_get64(v);
		x->v.ram.flags = cx_get32(v + 8);
		x->v.ram.fd = fd;
		x->v.ram.path = buf;
		x->owns_fd = fd >= 0;
		break;
	}
	return 0;
fail:
	free(buf);
	cx_close(fd);
	return rc;
}

static int on_end(struct dec *d, const struct cx_frame *f)
{
	uint8_t p[CX_END_LEN];
	uint32_t crc;
	int rc;

	if (f->len != CX_END_LEN)
		return cx_err(-EBADMSG, "END frame of %llu bytes",
			      (unsigned long long)f->len);
	rc = take(d, p, 16);
	if (rc < 0)
		return rc;
	crc = d->crc;
	rc = take(d, p + 16, 8);
	if (rc < 0)
		return rc;
	if (cx_get64(p) != d->records || d->records != d->declared_records)
		return cx_err(-EBADMSG,
			      "stream ends after %llu records, declared %llu",
			      (unsigned long long)d->records,
			      (unsigned long long)d->declared_records);
	/*
	 * fds left in the queue are extra, unless bytes of a next stream
	 * were read ahead: then they came with that stream's first batch.
	 */
	if (cx_get64(p + 8) != d->declared_fds ||
	    d->fds_claimed != d->declared_fds ||
	    (d->io->fdq_pos != d->io->fdq_len && !cx_io_buffered(d->io)))
		return cx_err(
			-EBADMSG,
			"fd count does not match the records: %llu declared, %llu received, %llu claimed",
			(unsigned long long)d->declared_fds,
			(unsigned long long)d->io->fds_in,
			(unsigned long long)d->fds_claimed);
	if (d->bytes != d->declared_bytes)
		return cx_err(-EBADMSG,
			      "stream ends after %llu bytes, declared %llu",
			      (unsigned long long)d->bytes,
			      (unsigned long long)d->declared_bytes);
	if (cx_get32(p + 16) != crc)
		return cx_err(
			-EBADMSG,
			"checksum mismatch: stream says 0x%08x, data gives 0x%08x",
			cx_get32(p + 16), crc);
	return 0;
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
	if (rc < 0)
		return rc;
	if (f.type != CX_F_BEGIN || f.len != CX_BEGIN_LEN)
		return cx_err(-EPROTO,
			      "expected a BEGIN frame, got %s of %llu bytes",
			      cx_frame_name(f.type), (unsigned long long)f.len);
	d->declared_bytes += CX_BEGIN_LEN;
	rc = take(d, p, sizeof(p));
	if (rc < 0)
		return rc;
	d->declared_records = cx_get64(p);
	d->declared_fds = cx_get64(p + 8);
	d->declared_bytes = cx_get64(p + 16);
	if (d->declared_records > d->o->max_records)
		return cx_err(-E2BIG,
			      "stream declares %llu records, limit %llu",
			      (unsigned long long)d->declared_records,
			      (unsigned long long)d->o->max_records);
	if (d->declared_fds > d->max_fds)
		return cx_err(-EMFILE, "stream declares %llu fds, limit %llu",
			      (unsigned long long)d->declared_fds,
			      (unsigned long long)d->max_fds);
	if (d->declared_bytes > d->o->max_stream)
		return cx_err(-EFBIG, "stream declares %llu bytes, limit %llu",
			      (unsigned long long)d->declared_bytes,
			      (unsigned long long)d->o->max_stream);
	if (d->declared_bytes < d->bytes + CX_HDR + CX_END_LEN)
		return cx_err(
			-EBADMSG,
			"stream declares %llu bytes, too few for its frames",
			(unsigned long long)d->declared_bytes);
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
	*out = d.st;
	return 0;
}
