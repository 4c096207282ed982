/* SPDX-License-Identifier: MIT */
/*
 * The stream encoder. Frames coalesce in the write buffer and leave in
 * as few sendmsg() calls as the wire allows; blob payloads go straight
 * from the caller's memory to the socket. fds go in batches of at most
 * SCM_MAX_FD (one per sendmsg), announced by an FDS frame just before
 * the records that claim them.
 *
 * Flush policy (socket mode): a batch's fds are attached to the
 * sendmsg() that carries the bytes buffered when its FDS frame was
 * written, and that sendmsg() happens only when it must: when the next
 * batch needs a sendmsg() of its own, when the buffer is full, or at
 * END. The kernel delivers fds with the first byte of their sendmsg(),
 * which comes at or before the FDS frame, so the reader has them when
 * it parses the frame. A state of a few records and up to 253 fds
 * leaves in ONE sendmsg(), BEGIN to END, fds attached.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "error.h"
#include "preflight.h"
#include "stream.h"
#include "wire.h"

struct enc {
	struct cx_io *io;
	enum cx_mode mode;
	uint32_t crc;
	const cprxfer_state *st;
	int *fds; /* every fd of the state, in record order */
	size_t nfds, sent;
	/* Socket mode: the batch e->fds[pending_at..] whose FDS frame is
	 * buffered and whose fds await the sendmsg() that carries it. */
	size_t pending, pending_at;
};

static int bad_fd(const struct enc *e, size_t first, size_t n);

/* Send what is buffered, with the pending batch's fds attached. */
static int flush(struct enc *e)
{
	size_t n = e->pending, first = e->pending_at;
	int rc;

	e->pending = 0;
	rc = cx_io_flush(e->io, n ? e->fds + first : NULL, n);
	if (rc == -EBADF && n)
		rc = bad_fd(e, first, n);
	return rc;
}

/*
 * Buffer n bytes. Were the buffer to overflow, it goes out first with
 * the pending fds, never without them (cx_io_write would flush it bare).
 */
static int put(struct enc *e, const void *p, size_t n)
{
	if (e->pending && e->io->wlen && e->io->wlen + n > e->io->wcap) {
		int rc = flush(e);

		if (rc < 0)
			return rc;
	}
	return cx_io_write(e->io, p, n);
}

/*
 * Checksum and write n bytes. A large value goes in chunks, so that the
 * peer checksums one chunk while this side checksums the next.
 */
static int emit(struct enc *e, const void *p, size_t n)
{
	const uint8_t *b = p;
	int rc = 0;

	while (rc == 0 && n) {
		size_t k = n < CX_CRC_CHUNK ? n : CX_CRC_CHUNK;

		e->crc = cx_crc32c(e->crc, b, k);
		rc = put(e, b, k);
		b += k;
		n -= k;
	}
	return rc;
}

static int emit_frame(struct enc *e, int type, unsigned flags, uint64_t len)
{
	uint8_t h[CX_HDR];

	cx_frame_put(h, type, flags, len);
	return emit(e, h, sizeof(h));
}

static size_t value_len(const struct cx_entry *x)
{
	switch (x->type) {
	case CPRXFER_TYPE_U64:
	case CPRXFER_TYPE_I64:
		return 8;
	case CPRXFER_TYPE_BLOB:
	case CPRXFER_TYPE_STR:
		return x->v.blob.len;
	case CPRXFER_TYPE_FD:
		return 4;
	case CPRXFER_TYPE_RAM:
		return CX_RAM_LEN + (x->v.ram.path ? strlen(x->v.ram.path) : 0);
	case CPRXFER_TYPE_FDS:
		return CX_FDA_LEN;
	}
	return 0;
}

static uint64_t fds_frame_len(const struct enc *e, size_t n)
{
	return CX_FDS_HDR + (e->mode == CX_MODE_EXEC ? 4 * n : 0);
}

/* Check one entry's fds against what the mode can carry. */
static int plan_entry(const struct enc *e, const struct cx_entry *x,
		      size_t *nfds)
{
	const int *fds;
	size_t n = cx_entry_fds(x, &fds), k;
	int rc;

	if ((x->type == CPRXFER_TYPE_FD && x->v.fd < 0) ||
	    (x->type == CPRXFER_TYPE_FDS && !x->v.fda.fds))
		return cx_err(-EBADF, "record '%s': its fd was taken", x->name);
	if (!n && x->type != CPRXFER_TYPE_FDS)
		return 0;
	/* A borrowed fd closed and its number reused: -ESTALE. */
	rc = cx_entry_check_fd(x);
	if (rc < 0)
		return rc;
	if (e->mode == CX_MODE_FILE && x->type != CPRXFER_TYPE_RAM)
		return cx_err(
			-EOPNOTSUPP,
			"record '%s': an fd cannot be saved to a file (it would not survive a reboot)",
			x->name);
	if (e->mode == CX_MODE_FILE && !x->v.ram.path)
		return cx_err(
			-EOPNOTSUPP,
			"record '%s': RAM on a memfd cannot be saved to a file; use cprxfer_ram_open_file",
			x->name);
	/* On a socket, sendmsg() checks the fds for us (see emit_fds);
	 * exec mode has no such check. */
	for (k = 0; e->mode == CX_MODE_EXEC && k < n; k++)
		if (fcntl(fds[k], F_GETFD) < 0)
			return cx_err(-EBADF, "record '%s': fd %d is not open",
				      x->name, fds[k]);
	if (e->mode != CX_MODE_FILE)
		*nfds += n;
	return 0;
}

/* Check what the mode can carry and gather the fds in order. */
static int plan(struct enc *e, const cprxfer_state *st, uint64_t *bytes)
{
	size_t i, nfds = 0;
	uint64_t b = 2 * CX_HDR + CX_BEGIN_LEN + CX_END_LEN;
	int rc;

	/* Blockers first: a refused save writes and sends nothing. */
	rc = cx_preflight_check(st, e->mode);
	if (rc < 0)
		return rc;
	for (i = 0; i < st->n; i++) {
		const struct cx_entry *x = &st->e[i];

		b += CX_HDR + CX_REC_HDR + x->name_len + value_len(x);
		rc = plan_entry(e, x, &nfds);
		if (rc < 0)
			return rc;
	}
	if (nfds) {
		e->fds = malloc(nfds * sizeof(int));
		if (!e->fds)
			return cx_err(-ENOMEM,
				      "save: out of memory for %zu fds", nfds);
		for (i = 0; i < st->n; i++) {
			const int *fds;
			size_t n = cx_entry_fds(&st->e[i], &fds);

			if (n)
				memcpy(e->fds + e->nfds, fds, n * sizeof(int));
			e->nfds += n;
		}
	}
	for (i = 0; i < nfds; i += CX_FDS_BATCH) {
		size_t n = nfds - i < CX_FDS_BATCH ? nfds - i : CX_FDS_BATCH;

		b += CX_HDR + fds_frame_len(e, n);
	}
	*bytes = b;
	return 0;
}

/* sendmsg() refused a batch with EBADF: name the record at fault. */
static int bad_fd(const struct enc *e, size_t first, size_t n)
{
	size_t i;

	for (i = 0; i < e->st->n; i++) {
		const struct cx_entry *x = &e->st->e[i];
		const int *fds;
		size_t nx = cx_entry_fds(x, &fds), j, k;

		for (j = 0; j < nx; j++)
			for (k = first; k < first + n; k++)
				if (e->fds[k] == fds[j] &&
				    fcntl(fds[j], F_GETFD) < 0)
					return cx_err(
						-EBADF,
						"record '%s': fd %d is not open",
						x->name, fds[j]);
	}
	return cx_err(-EBADF, "sendmsg: an fd of the batch is not open");
}

/* Announce the next batch of fds with its FDS frame. */
static int emit_fds(struct enc *e)
{
	size_t n = e->nfds - e->sent, i;
	uint8_t p[CX_FDS_HDR];
	int rc = 0;

	if (n > CX_FDS_BATCH)
		n = CX_FDS_BATCH;
	if (e->mode == CX_MODE_SOCKET) {
		/* One batch per sendmsg(): the previous one leaves now. */
		if (e->pending)
			rc = flush(e);
		e->pending = n;
		e->pending_at = e->sent;
	}
	if (rc == 0)
		rc = emit_frame(e, CX_F_FDS,
				e->mode == CX_MODE_EXEC ? CX_FDS_INLINE : 0,
				fds_frame_len(e, n));
	cx_put32(p, (uint32_t)n);
	cx_put32(p + 4, (uint32_t)e->sent);
	if (rc == 0)
		rc = emit(e, p, sizeof(p));
	for (i = 0; rc == 0 && e->mode == CX_MODE_EXEC && i < n; i++) {
		int fd = e->fds[e->sent + i];
		uint8_t q[4];

		/* The new image gives the fd back its own flag. */
		cx_put32(q, (uint32_t)fd | (fcntl(fd, F_GETFD) & FD_CLOEXEC
						    ? 0
						    : CX_FD_KEEP_OPEN));
		rc = emit(e, q, sizeof(q));
	}
	e->sent += n;
	return rc;
}

/*
 * One RECORD frame. Header, name and value are assembled and checksummed
 * in one piece; only a large blob, string or path is emitted apart
 * (straight from the caller's memory).
 */
static int emit_record(struct enc *e, const struct cx_entry *x, size_t *fdi)
{
	uint8_t b[CX_HDR + CX_REC_HDR + CPRXFER_NAME_MAX + CX_RAM_LEN + 256];
	size_t vlen = value_len(x), nfds = 0, n, tlen = 0;
	const void *tail = NULL;
	const int *fds;
	uint8_t *v;
	int rc;

	if (e->mode != CX_MODE_FILE)
		nfds = cx_entry_fds(x, &fds);
	/* Every fd the record claims is announced before it. */
	while (e->sent < *fdi + nfds) {
		rc = emit_fds(e);
		if (rc < 0)
			return rc;
	}
	cx_frame_put(b, CX_F_RECORD, 0, CX_REC_HDR + x->name_len + vlen);
	b[CX_HDR] = x->type;
	/* Arrays are newer than the format: a reader without them must
	 * refuse the stream, not load it without the fds. */
	b[CX_HDR + 1] = x->type == CPRXFER_TYPE_FDS ? CX_REC_CRITICAL : 0;
	b[CX_HDR + 2] = x->name_len;
	b[CX_HDR + 3] = 0;
	memcpy(b + CX_HDR + CX_REC_HDR, x->name, x->name_len);
	n = CX_HDR + CX_REC_HDR + x->name_len;
	v = b + n;
	switch (x->type) {
	case CPRXFER_TYPE_U64:
	case CPRXFER_TYPE_I64:
		cx_put64(v, x->v.u64);
		n += 8;
		break;
	case CPRXFER_TYPE_BLOB:
	case CPRXFER_TYPE_STR:
		tail = x->v.blob.data;
		tlen = vlen;
		break;
	case CPRXFER_TYPE_FD:
		cx_put32(v, (uint32_t)(*fdi)++);
		n += 4;
		break;
	case CPRXFER_TYPE_RAM:
		cx_put64(v, x->v.ram.size);
		cx_put32(v + 8, x->v.ram.flags);
		if (x->v.ram.fd >= 0 && e->mode != CX_MODE_FILE)
			cx_put32(v + 12, (uint32_t)(*fdi)++);
		else
			cx_put32(v + 12, CX_NOFD);
		n += CX_RAM_LEN;
		tail = x->v.ram.path;
		tlen = vlen - CX_RAM_LEN;
		break;
	case CPRXFER_TYPE_FDS:
		cx_put32(v, (uint32_t)nfds);
		cx_put32(v + 4, (uint32_t)*fdi);
		*fdi += nfds;
		n += CX_FDA_LEN;
		break;
	}
	if (tlen && tlen <= sizeof(b) - n) {
		memcpy(b + n, tail, tlen);
		n += tlen;
		tlen = 0;
	}
	rc = emit(e, b, n);
	if (rc == 0 && tlen)
		rc = emit(e, tail, tlen);
	return rc;
}

int cx_encode(struct cx_io *io, const cprxfer_state *st, enum cx_mode mode)
{
	struct enc e = { .io = io, .mode = mode, .st = st };
	uint8_t p[CX_END_LEN];
	uint64_t bytes = 0;
	size_t i, fdi = 0;
	int rc;

	rc = plan(&e, st, &bytes);
	if (rc < 0)
		return rc;
	rc = emit_frame(&e, CX_F_BEGIN, 0, CX_BEGIN_LEN);
	cx_put64(p, st->n);
	cx_put64(p + 8, e.nfds);
	cx_put64(p + 16, bytes);
	if (rc == 0)
		rc = emit(&e, p, CX_BEGIN_LEN);
	for (i = 0; rc == 0 && i < st->n; i++)
		rc = emit_record(&e, &st->e[i], &fdi);
	if (rc == 0)
		rc = emit_frame(&e, CX_F_END, 0, CX_END_LEN);
	if (rc == 0) {
		cx_put64(p, st->n);
		cx_put64(p + 8, e.nfds);
		e.crc = cx_crc32c(e.crc, p, 16);
		cx_put32(p + 16, e.crc);
		cx_put32(p + 20, 0);
		rc = put(&e, p, CX_END_LEN);
	}
	if (rc == 0)
		rc = flush(&e);
	free(e.fds);
	return rc;
}
