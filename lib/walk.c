/* SPDX-License-Identifier: MIT */
/*
 * The stream walker (walk.h): the decoder's checks (rules.c, shared
 * with decode.c), in the decoder's order, without building a state or
 * adopting an fd. Values are
 * streamed through a small buffer whatever their size, so a walk needs
 * no allocation sized by the stream but the list of inline fd numbers,
 * which the fd limit bounds.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "crc32c.h"
#include "error.h"
#include "rules.h"
#include "walk.h"
#include "wire.h"

struct wk {
	struct cx_io *io;
	struct cx_walk *w;
	struct cprxfer_opts o;
	uint64_t max_fds;
	uint64_t frame; /* offset of the frame being read */
	uint32_t crc;
	uint64_t announced, claimed;
	uint32_t *numbers; /* inline fd numbers, by index */
	size_t numbers_cap;
	uint8_t pending[CX_HDR]; /* read ahead: not a HELLO after all */
	size_t npending;
};

/* Read n stream bytes, counted and checksummed. */
static int take(struct wk *k, void *p, size_t n)
{
	struct cx_walk *w = k->w;
	int rc;

	if (n > w->declared_bytes - w->bytes)
		return cx_err(-EBADMSG,
			      "stream runs past its declared %llu bytes",
			      (unsigned long long)w->declared_bytes);
	if (k->npending) {
		/* Only ever a whole header, read back in one take. */
		memcpy(p, k->pending, n);
		k->npending = 0;
		rc = 0;
	} else {
		rc = cx_io_read(k->io, p, n);
	}
	if (rc == -ENODATA || (rc == -ECONNRESET && !k->io->sock))
		return cx_err(
			-EBADMSG,
			"stream truncated: ends inside the frame at byte %llu, %llu bytes declared",
			(unsigned long long)k->frame,
			(unsigned long long)w->declared_bytes);
	if (rc < 0)
		return rc;
	k->crc = cx_crc32c(k->crc, p, n);
	w->bytes += n;
	return 0;
}

/* Read a value of n bytes; keep its first *head_len bytes in head. */
static int take_value(struct wk *k, uint64_t n, uint8_t *head, size_t *head_len,
		      bool *has_nul)
{
	uint8_t buf[4096];
	uint64_t done = 0;

	*head_len = 0;
	*has_nul = false;
	while (done < n) {
		size_t c = n - done < sizeof(buf) ? (size_t)(n - done)
						  : sizeof(buf);
		int rc = take(k, buf, c);

		if (rc < 0)
			return rc;
		if (memchr(buf, 0, c))
			*has_nul = true;
		if (*head_len < CX_WALK_HEAD) {
			size_t h = CX_WALK_HEAD - *head_len < c
					   ? CX_WALK_HEAD - *head_len
					   : c;

			memcpy(head + *head_len, buf, h);
			*head_len += h;
		}
		done += c;
	}
	return 0;
}

static int parse_header(struct wk *k, struct cx_frame *f)
{
	uint8_t h[CX_HDR];
	int rc;

	k->frame = k->w->bytes;
	rc = take(k, h, sizeof(h));
	if (rc < 0)
		return rc;
	k->w->version = h[4];
	return cx_frame_parse(h, f);
}

static int on_begin(struct wk *k)
{
	struct cx_walk *w = k->w;
	uint8_t p[CX_BEGIN_LEN];
	struct cx_frame f;
	int rc;

	w->declared_bytes = CX_HDR;
	rc = parse_header(k, &f);
	if (rc == 0)
		rc = cx_begin_frame_check(&f);
	if (rc < 0)
		return rc;
	w->declared_bytes += CX_BEGIN_LEN;
	rc = take(k, p, sizeof(p));
	if (rc < 0)
		return rc;
	w->begun = true;
	return cx_begin_check(p, &k->o, k->max_fds, w->bytes,
			      &w->declared_records, &w->declared_fds,
			      &w->declared_bytes);
}

static int on_fds(struct wk *k, const struct cx_frame *f)
{
	struct cx_walk *w = k->w;
	bool inl = f->flags & CX_FDS_INLINE;
	uint8_t p[CX_FDS_HDR], q[4];
	uint32_t n, first, i;
	int rc;

	if (inl == w->sock || f->len < CX_FDS_HDR)
		return cx_err(-EBADMSG, "malformed fd batch");
	rc = take(k, p, sizeof(p));
	if (rc < 0)
		return rc;
	rc = cx_fds_check(p, f->len, inl, k->announced, w->declared_fds, &n);
	if (rc < 0)
		return rc;
	first = (uint32_t)k->announced;
	if (!w->sock && (inl ? w->fds_absent : w->inline_fds))
		return cx_err(-EBADMSG,
			      "fd batches both inline and by SCM_RIGHTS");
	k->announced += n;
	if (!inl && !w->sock) {
		/* A socket stream saved to a file: its fds stayed behind. */
		w->fds_absent = true;
		return 0;
	}
	if (w->sock) {
		if (k->io->fds_in < k->announced)
			return cx_err(
				-EBADMSG,
				"fd batch announces %u fds, only %llu of %llu arrived",
				n, (unsigned long long)(k->io->fds_in - first),
				(unsigned long long)n);
		return 0;
	}
	w->inline_fds = true;
	if (k->announced > k->numbers_cap) {
		size_t cap = (size_t)k->announced * 2;
		uint32_t *v = realloc(k->numbers, cap * sizeof(*v));

		if (!v)
			return cx_err(-ENOMEM, "out of memory");
		k->numbers = v;
		k->numbers_cap = cap;
	}
	for (i = 0; i < n; i++) {
		rc = take(k, q, sizeof(q));
		if (rc < 0)
			return rc;
		k->numbers[first + i] = cx_get32(q);
	}
	return 0;
}

/* The fd a record names: the next one, in order; never adopted. */
static int claim_fd(struct wk *k, struct cx_walk_rec *r)
{
	int rc = cx_claim_check(r->name, r->fd_index, 1, false, k->claimed,
				k->announced);

	if (rc < 0)
		return rc;
	r->has_fd = true;
	if (k->w->sock) {
		r->fd = cx_io_take_fd(k->io);
		if (r->fd < 0)
			return cx_err(
				-EBADMSG,
				"record '%s': fd %u announced but never arrived",
				r->name, r->fd_index);
	} else if (k->w->inline_fds) {
		uint32_t v = k->numbers[r->fd_index];

		r->fd_number = (int)(v & ~CX_FD_KEEP_OPEN);
		r->keep_open = v & CX_FD_KEEP_OPEN;
	}
	k->claimed++;
	return 0;
}

/* An fd array's fds: the next count ones, in order; never adopted. */
static int claim_array(struct wk *k, struct cx_walk_rec *r, int **fds)
{
	uint32_t i;
	int rc = cx_claim_check(r->name, r->fd_index, r->fd_count, true,
				k->claimed, k->announced);

	if (rc < 0)
		return rc;
	r->has_fd = r->fd_count > 0;
	if (k->w->sock) {
		/* Bounded: announced fds are within the fd limit. */
		*fds = malloc(r->fd_count ? r->fd_count * sizeof(int) : 1);
		if (!*fds)
			return cx_err(-ENOMEM, "out of memory");
		for (i = 0; i < r->fd_count; i++) {
			(*fds)[i] = cx_io_take_fd(k->io);
			if ((*fds)[i] < 0) {
				/* The caller closes fds[0..fd_count): only
				 * what was taken, then nothing more. */
				while (i--)
					cx_close((*fds)[i]);
				free(*fds);
				*fds = NULL;
				return cx_err(
					-EBADMSG,
					"record '%s': fd %u announced but never arrived",
					r->name, r->fd_index + i);
			}
		}
		r->fds = *fds;
	} else if (k->w->inline_fds) {
		r->numbers = k->numbers + r->fd_index;
	}
	k->claimed += r->fd_count;
	return 0;
}

static int on_record(struct wk *k, const struct cx_frame *f)
{
	struct cx_walk *w = k->w;
	struct cx_walk_rec r = { .offset = w->base + k->frame,
				 .fd = -1,
				 .fd_number = -1 };
	uint8_t h[CX_REC_HDR], v[CX_RAM_LEN], head[CX_WALK_HEAD];
	char name[CPRXFER_NAME_MAX + 1], path[PATH_MAX];
	cx_autofree int *fds = NULL;
	struct cx_rec_head rh;
	bool nul, known;
	size_t plen;
	uint32_t i;
	int rc;

	rc = cx_rec_frame_check(f);
	if (rc < 0)
		return rc;
	rc = take(k, h, sizeof(h));
	if (rc < 0)
		return rc;
	rc = cx_rec_head_parse(h, f, w->records, &rh);
	if (rc < 0)
		return rc;
	r.type = rh.type;
	r.flags = rh.flags;
	r.len = rh.vlen;
	rc = take(k, name, rh.name_len);
	if (rc < 0)
		return rc;
	name[rh.name_len] = 0;
	r.name = name;
	rc = cx_rec_check(&rh, name, &k->o, &w->records, w->declared_records,
			  &known);
	if (rc < 0)
		return rc;
	switch (known ? r.type : 0xff) {
	case CPRXFER_TYPE_U64:
	case CPRXFER_TYPE_I64:
		rc = take(k, v, 8);
		if (rc < 0)
			return rc;
		r.u64 = cx_get64(v);
		break;
	case CPRXFER_TYPE_FD:
		rc = take(k, v, 4);
		if (rc < 0)
			return rc;
		r.fd_index = cx_get32(v);
		rc = claim_fd(k, &r);
		break;
	case CPRXFER_TYPE_BLOB:
	case CPRXFER_TYPE_STR:
		rc = take_value(k, r.len, head, &r.head_len, &nul);
		if (rc < 0)
			return rc;
		r.head = head;
		if (r.type == CPRXFER_TYPE_STR)
			rc = cx_str_check(name, nul);
		break;
	case CPRXFER_TYPE_RAM:
		plen = (size_t)r.len - CX_RAM_LEN;
		rc = take(k, v, CX_RAM_LEN);
		if (rc == 0 && plen)
			rc = take(k, path, plen);
		if (rc < 0)
			return rc;
		path[plen] = 0;
		r.ram_size = cx_get64(v);
		r.ram_flags = cx_get32(v + 8);
		r.fd_index = cx_get32(v + 12);
		r.ram_path = plen ? path : NULL;
		rc = cx_ram_rec_check(name, path, plen, r.fd_index,
				      !w->sock && !w->inline_fds);
		if (rc == 0 && r.fd_index != CX_NOFD)
			rc = claim_fd(k, &r);
		break;
	case CPRXFER_TYPE_FDS:
		rc = take(k, v, CX_FDA_LEN);
		if (rc < 0)
			return rc;
		r.fd_count = cx_get32(v);
		r.fd_index = cx_get32(v + 4);
		rc = claim_array(k, &r, &fds);
		break;
	default: /* a later version's optional record */
		r.skipped = true;
		rc = take_value(k, r.len, head, &r.head_len, &nul);
		r.head = head;
		break;
	}
	if (rc == 0 && w->on_record)
		w->on_record(w->arg, &r);
	cx_close(r.fd);
	for (i = 0; fds && i < r.fd_count; i++)
		cx_close(fds[i]);
	return rc;
}

static int on_end(struct wk *k, const struct cx_frame *f)
{
	struct cx_walk *w = k->w;
	struct cx_end_seen s;
	uint8_t p[CX_END_LEN];
	int rc;

	rc = cx_end_frame_check(f);
	if (rc < 0)
		return rc;
	rc = take(k, p, 16);
	if (rc < 0)
		return rc;
	w->crc_data = k->crc;
	rc = take(k, p + 16, 8);
	if (rc < 0)
		return rc;
	w->crc_stream = cx_get32(p + 16);
	w->ended = true;
	s.records = w->records;
	s.declared_records = w->declared_records;
	s.declared_fds = w->declared_fds;
	s.received = w->sock ? k->io->fds_in : k->announced;
	s.claimed = k->claimed;
	s.fds_left = w->sock && k->io->fdq_pos != k->io->fdq_len &&
		     !cx_io_buffered(k->io);
	s.bytes = w->bytes;
	s.declared_bytes = w->declared_bytes;
	s.crc = w->crc_data;
	return cx_end_check(p, &s);
}

/*
 * An exec-mode memfd written by cprxfer_exec_opts() starts with a HELLO
 * frame (pid, uid, tag of the old image), outside the stream and its
 * checksum. Anything else is the stream's first header: kept for it.
 */
static int maybe_hello(struct wk *k)
{
	struct cx_walk *w = k->w;
	uint8_t p[CX_HELLO_LEN + CX_TAG_MAX];
	struct cx_frame f;
	size_t tlen;
	int rc;

	rc = cx_io_read(k->io, k->pending, CX_HDR);
	if (rc == -ENODATA)
		return cx_err(-EBADMSG, "stream truncated: no first frame");
	if (rc < 0)
		return rc;
	if (cx_get32(k->pending) != CX_MAGIC || k->pending[5] != CX_F_HELLO) {
		k->npending = CX_HDR;
		return 0;
	}
	rc = cx_frame_parse(k->pending, &f);
	if (rc < 0)
		return rc;
	if (f.len < CX_HELLO_LEN || f.len > CX_HELLO_LEN + CX_TAG_MAX)
		return cx_err(-EPROTO, "HELLO frame of %llu bytes",
			      (unsigned long long)f.len);
	rc = cx_io_read(k->io, p, (size_t)f.len);
	if (rc < 0)
		return rc == -ENODATA ? cx_err(-EBADMSG,
					       "stream truncated in its HELLO")
				      : rc;
	tlen = cx_get16(p + 12);
	if (CX_HELLO_LEN + tlen != f.len || memchr(p + CX_HELLO_LEN, 0, tlen))
		return cx_err(-EPROTO, "malformed HELLO frame");
	w->hello = true;
	w->hello_pid = cx_get32(p + 4);
	w->hello_uid = cx_get32(p + 8);
	memcpy(w->hello_tag, p + CX_HELLO_LEN, tlen);
	w->hello_tag[tlen] = 0;
	w->base = CX_HDR + f.len;
	return 0;
}

int cx_walk(struct cx_io *io, struct cx_walk *w)
{
	struct wk k = { .io = io, .w = w };
	struct cx_frame f;
	int rc;

	cx_opts_copy(&k.o, w->o);
	k.max_fds = cx_opts_max_fds(&k.o);
	io->max_fds = k.max_fds;
	io->fds_in = io->fdq_len - io->fdq_pos;
	rc = w->sock ? 0 : maybe_hello(&k);
	if (rc == 0)
		rc = on_begin(&k);
	while (rc == 0) {
		rc = parse_header(&k, &f);
		if (rc == 0)
			rc = cx_frame_fits(&f, w->bytes, w->declared_bytes);
		if (rc < 0)
			break;
		if (f.type == CX_F_RECORD)
			rc = on_record(&k, &f);
		else if (f.type == CX_F_FDS)
			rc = on_fds(&k, &f);
		else if (f.type == CX_F_END)
			break;
		else
			rc = cx_err(-EPROTO,
				    "unexpected %s frame inside a state stream",
				    cx_frame_name(f.type));
	}
	if (rc == 0)
		rc = on_end(&k, &f);
	free(k.numbers);
	if (w->sock)
		cx_io_drop_fds(io);
	w->fds = k.claimed;
	if (rc < 0) {
		w->err = rc;
		w->err_offset = w->base + k.frame;
		snprintf(w->errmsg, sizeof(w->errmsg), "%s", cx_errmsg_get());
	}
	return rc;
}
