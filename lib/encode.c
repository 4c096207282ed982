/* SPDX-License-Identifier: MIT */
/*
 * The stream encoder. Small frames coalesce in the write buffer; blob
 * payloads go straight from the caller's memory to the socket. fds go
 * in batches of at most SCM_MAX_FD, each attached to the sendmsg() that
 * carries its FDS frame, just before the records that claim them.
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
};

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
		rc = cx_io_write(e->io, b, k);
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
	}
	return 0;
}

static uint64_t fds_frame_len(const struct enc *e, size_t n)
{
	return CX_FDS_HDR + (e->mode == CX_MODE_EXEC ? 4 * n : 0);
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
		int fd = cx_entry_fd(x);

		b += CX_HDR + CX_REC_HDR + x->name_len + value_len(x);
		if (x->type == CPRXFER_TYPE_FD && fd < 0)
			return cx_err(-EBADF, "record '%s': its fd was taken",
				      x->name);
		if (fd < 0)
			continue;
		/* A borrowed fd closed and its number reused: -ESTALE. */
		rc = cx_entry_check_fd(x);
		if (rc < 0)
			return rc;
		if (e->mode == CX_MODE_FILE && x->type == CPRXFER_TYPE_FD)
			return cx_err(
				-EOPNOTSUPP,
				"record '%s': an fd cannot be saved to a file (it would not survive a reboot)",
				x->name);
		if (e->mode == CX_MODE_FILE && !x->v.ram.path)
			return cx_err(
				-EOPNOTSUPP,
				"record '%s': RAM on a memfd cannot be saved to a file; use cprxfer_ram_open_file",
				x->name);
		/* On a socket, sendmsg() checks the fds for us (see
		 * emit_fds); exec mode has no such check. */
		if (e->mode == CX_MODE_EXEC && fcntl(fd, F_GETFD) < 0)
			return cx_err(-EBADF, "record '%s': fd %d is not open",
				      x->name, fd);
		if (e->mode != CX_MODE_FILE)
			nfds++;
	}
	if (nfds) {
		e->fds = malloc(nfds * sizeof(int));
		if (!e->fds)
			return cx_err(-ENOMEM,
				      "save: out of memory for %zu fds", nfds);
		for (i = 0; i < st->n; i++) {
			int fd = cx_entry_fd(&st->e[i]);

			if (fd >= 0)
				e->fds[e->nfds++] = fd;
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
		int fd = cx_entry_fd(x);
		size_t k;

		for (k = first; fd >= 0 && k < first + n; k++)
			if (e->fds[k] == fd && fcntl(fd, F_GETFD) < 0)
				return cx_err(-EBADF,
					      "record '%s': fd %d is not open",
					      x->name, fd);
	}
	return cx_err(-EBADF, "sendmsg: an fd of the batch is not open");
}

/* Send the next batch of fds, attached to its FDS frame. */
static int emit_fds(struct enc *e)
{
	size_t n = e->nfds - e->sent, i;
	uint8_t p[CX_FDS_HDR];
	int rc;

	if (n > CX_FDS_BATCH)
		n = CX_FDS_BATCH;
	rc = emit_frame(e, CX_F_FDS,
			e->mode == CX_MODE_EXEC ? CX_FDS_INLINE : 0,
			fds_frame_len(e, n));
	cx_put32(p, (uint32_t)n);
	cx_put32(p + 4, (uint32_t)e->sent);
	if (rc == 0)
		rc = emit(e, p, sizeof(p));
	if (e->mode == CX_MODE_EXEC) {
		for (i = 0; rc == 0 && i < n; i++) {
			int fd = e->fds[e->sent + i];
			uint8_t q[4];

			/* The new image gives the fd back its own flag. */
			cx_put32(q,
				 (uint32_t)fd | (fcntl(fd, F_GETFD) & FD_CLOEXEC
							 ? 0
							 : CX_FD_KEEP_OPEN));
			rc = emit(e, q, sizeof(q));
		}
	} else if (rc == 0) {
		rc = cx_io_flush(e->io, e->fds + e->sent, n);
		if (rc == -EBADF)
			rc = bad_fd(e, e->sent, n);
	}
	e->sent += n;
	return rc;
}

static int emit_record(struct enc *e, const struct cx_entry *x, size_t *fdi)
{
	uint8_t h[CX_REC_HDR + CPRXFER_NAME_MAX], v[CX_RAM_LEN];
	size_t vlen = value_len(x);
	const void *val = v;
	int rc;

	if (cx_entry_fd(x) >= 0 && e->mode != CX_MODE_FILE && *fdi == e->sent) {
		rc = emit_fds(e);
		if (rc < 0)
			return rc;
	}
	rc = emit_frame(e, CX_F_RECORD, 0, CX_REC_HDR + x->name_len + vlen);
	if (rc < 0)
		return rc;
	h[0] = x->type;
	h[1] = 0;
	h[2] = x->name_len;
	h[3] = 0;
	memcpy(h + CX_REC_HDR, x->name, x->name_len);
	rc = emit(e, h, CX_REC_HDR + x->name_len);
	if (rc < 0)
		return rc;
	switch (x->type) {
	case CPRXFER_TYPE_U64:
	case CPRXFER_TYPE_I64:
		cx_put64(v, x->v.u64);
		break;
	case CPRXFER_TYPE_BLOB:
	case CPRXFER_TYPE_STR:
		val = x->v.blob.data;
		break;
	case CPRXFER_TYPE_FD:
		cx_put32(v, (uint32_t)(*fdi)++);
		break;
	case CPRXFER_TYPE_RAM:
		cx_put64(v, x->v.ram.size);
		cx_put32(v + 8, x->v.ram.flags);
		if (x->v.ram.fd >= 0 && e->mode != CX_MODE_FILE)
			cx_put32(v + 12, (uint32_t)(*fdi)++);
		else
			cx_put32(v + 12, CX_NOFD);
		rc = emit(e, v, CX_RAM_LEN);
		if (rc < 0)
			return rc;
		val = x->v.ram.path;
		vlen -= CX_RAM_LEN;
		break;
	}
	return vlen ? emit(e, val, vlen) : 0;
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
		rc = cx_io_write(io, p, CX_END_LEN);
	}
	if (rc == 0)
		rc = cx_io_flush(io, NULL, 0);
	free(e.fds);
	return rc;
}
