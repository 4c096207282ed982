/* SPDX-License-Identifier: MIT */
/*
 * The stream decoder against corrupted, truncated, oversized and
 * hostile input: each case yields its specific error, and no fd or byte
 * is leaked (fds are counted in every test's teardown; run under
 * valgrind for memory).
 *
 * Streams are fed through a real socketpair by a forked writer, with
 * real fds attached where a case says so.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "channel.h"
#include "crc32c.h"
#include "opts.h"
#include "state.h"
#include "stream.h"
#include "testutil.h"
#include "wire.h"

struct buf {
	uint8_t *p;
	size_t len, cap;
};

static void put(struct buf *b, const void *d, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		assert_non_null(b->p);
	}
	memcpy(b->p + b->len, d, n);
	b->len += n;
}

static void frame(struct buf *b, int type, unsigned flags, const void *pl,
		  size_t n)
{
	uint8_t h[CX_HDR];

	cx_frame_put(h, type, flags, n);
	put(b, h, sizeof(h));
	put(b, pl, n);
}

static void record(struct buf *b, int type, int rflags, const char *name,
		   const void *val, size_t vlen)
{
	uint8_t p[4 + 255 + 64];
	size_t nl = strlen(name);

	assert_true(vlen <= 64);
	p[0] = (uint8_t)type;
	p[1] = (uint8_t)rflags;
	p[2] = (uint8_t)nl;
	p[3] = 0;
	memcpy(p + 4, name, nl);
	memcpy(p + 4 + nl, val, vlen);
	frame(b, CX_F_RECORD, 0, p, 4 + nl + vlen);
}

static void rec_u64(struct buf *b, const char *name, uint64_t v)
{
	uint8_t p[8];

	cx_put64(p, v);
	record(b, CPRXFER_TYPE_U64, 0, name, p, 8);
}

static void rec_fd(struct buf *b, const char *name, uint32_t index)
{
	uint8_t p[4];

	cx_put32(p, index);
	record(b, CPRXFER_TYPE_FD, 0, name, p, 4);
}

static void fds_frame(struct buf *b, uint32_t n, uint32_t first)
{
	uint8_t p[8];

	cx_put32(p, n);
	cx_put32(p + 4, first);
	frame(b, CX_F_FDS, 0, p, 8);
}

/* BEGIN + body + END with correct totals and checksum. */
static struct buf wrap(const struct buf *body, uint64_t nrec, uint64_t nfds)
{
	struct buf s = { 0 };
	uint8_t p[CX_END_LEN], h[CX_HDR];
	uint32_t crc;

	cx_put64(p, nrec);
	cx_put64(p + 8, nfds);
	cx_put64(p + 16, 2 * (CX_HDR + 24) + body->len);
	frame(&s, CX_F_BEGIN, 0, p, CX_BEGIN_LEN);
	put(&s, body->p, body->len);
	cx_frame_put(h, CX_F_END, 0, CX_END_LEN);
	put(&s, h, sizeof(h));
	cx_put64(p, nrec);
	cx_put64(p + 8, nfds);
	put(&s, p, 16);
	crc = cx_crc32c(0, s.p, s.len);
	cx_put32(p, crc);
	cx_put32(p + 4, 0);
	put(&s, p, 8);
	return s;
}

struct feed {
	const uint8_t *p;
	size_t len;
	size_t fd_at[4]; /* attach nfds[i] eventfds at offset fd_at[i] */
	int nfds[4];
	int nbatches;
	size_t chunk; /* write in chunks this small (0: all) */
};

static int writer(int sock, const struct feed *f)
{
	size_t off = 0;
	int b = 0;

	while (off < f->len) {
		size_t end = f->len;
		struct iovec iov;
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
		union {
			char c[CMSG_SPACE(256 * sizeof(int))];
			struct cmsghdr a;
		} u;
		int fds[256], i, n = 0;
		ssize_t r;

		if (b < f->nbatches && f->fd_at[b] == off)
			n = f->nfds[b++];
		if (b < f->nbatches && f->fd_at[b] < end)
			end = f->fd_at[b];
		if (f->chunk && end - off > f->chunk)
			end = off + f->chunk;
		iov.iov_base = (void *)(f->p + off);
		iov.iov_len = end - off;
		if (n) {
			struct cmsghdr *c;

			for (i = 0; i < n; i++)
				fds[i] = eventfd(i + 1, 0);
			memset(&u, 0, sizeof(u));
			m.msg_control = u.c;
			m.msg_controllen = CMSG_SPACE(n * sizeof(int));
			c = CMSG_FIRSTHDR(&m);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(n * sizeof(int));
			memcpy(CMSG_DATA(c), fds, n * sizeof(int));
		}
		r = sendmsg(sock, &m, MSG_NOSIGNAL);
		if (r <= 0)
			return 1;
		off += (size_t)r;
		for (i = 0; i < n; i++)
			close(fds[i]);
	}
	return 0;
}

/*
 * Feed f to a loader; return what cprxfer_load returned. The state, if
 * any, is freed after its check by the caller through *out.
 */
static int feed_load(const struct feed *f, const cprxfer_opts *o,
		     cprxfer_state **out)
{
	cprxfer_channel *ch;
	cprxfer_state *st = NULL;
	int sv[2], rc;
	pid_t pid;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(sv[0]);
		_exit(writer(sv[1], f));
	}
	close(sv[1]);
	assert_int_equal(cx_channel_new(sv[0], (const void *)o, &ch), 0);
	cprxfer_channel_set_timeout(ch, 5000);
	rc = cprxfer_load(ch, &st);
	if (rc < 0)
		print_message("  load: %d %s\n", rc, cprxfer_errmsg());
	cprxfer_channel_close(ch);
	tu_wait(pid);
	if (out)
		*out = st;
	else
		cprxfer_state_free(st);
	return rc;
}

static int load_bytes(const uint8_t *p, size_t len)
{
	struct feed f = { .p = p, .len = len };

	return feed_load(&f, NULL, NULL);
}

/* A valid stream without fds, encoded by the library itself. */
static struct buf encode(const cprxfer_state *st)
{
	struct cx_io io;
	struct buf b = { 0 };
	int fd = memfd_create("stream", MFD_CLOEXEC);
	off_t len;

	assert_true(fd >= 0);
	assert_int_equal(cx_io_init(&io, fd, false), 0);
	assert_int_equal(cx_encode(&io, st, CX_MODE_SOCKET), 0);
	cx_io_fini(&io);
	len = lseek(fd, 0, SEEK_END);
	b.p = malloc((size_t)len);
	b.len = b.cap = (size_t)len;
	assert_int_equal(pread(fd, b.p, b.len, 0), len);
	close(fd);
	return b;
}

static cprxfer_state *sample(void)
{
	cprxfer_state *st = cprxfer_state_new();
	char blob[3000];

	memset(blob, 0x5a, sizeof(blob));
	assert_int_equal(cprxfer_put_u64(st, "u", 1), 0);
	assert_int_equal(cprxfer_put_i64(st, "i", -2), 0);
	assert_int_equal(cprxfer_put_str(st, "s", "three"), 0);
	assert_int_equal(cprxfer_put_blob(st, "b", blob, sizeof(blob)), 0);
	assert_int_equal(cprxfer_put_blob(st, "empty", NULL, 0), 0);
	return st;
}

static void test_valid(void **unused)
{
	cprxfer_state *st = sample(), *got;
	struct buf b = encode(st);
	struct feed f = { .p = b.p, .len = b.len, .chunk = 7 };
	const void *d;
	size_t len;
	int64_t i;

	/* Fed 7 bytes at a time: short reads are handled. */
	assert_int_equal(feed_load(&f, NULL, &got), 0);
	assert_int_equal(cprxfer_state_count(got), 5);
	assert_int_equal(cprxfer_get_i64(got, "i", &i), 0);
	assert_int_equal(i, -2);
	assert_int_equal(cprxfer_get_blob(got, "b", &d, &len), 0);
	assert_int_equal(len, 3000);
	assert_int_equal(cprxfer_get_blob(got, "empty", &d, &len), 0);
	assert_int_equal(len, 0);
	cprxfer_state_free(got);
	cprxfer_state_free(st);
	free(b.p);
}

static void test_empty_state(void **unused)
{
	cprxfer_state *st = cprxfer_state_new(), *got;
	struct buf b = encode(st);
	struct feed f = { .p = b.p, .len = b.len };

	assert_int_equal(b.len, 2 * (CX_HDR + 24));
	assert_int_equal(feed_load(&f, NULL, &got), 0);
	assert_int_equal(cprxfer_state_count(got), 0);
	cprxfer_state_free(got);
	cprxfer_state_free(st);
	free(b.p);
}

static void test_bad_magic_version(void **unused)
{
	cprxfer_state *st = sample();
	struct buf b = encode(st);

	b.p[0] ^= 0xff;
	assert_int_equal(load_bytes(b.p, b.len), -EPROTO);
	b.p[0] ^= 0xff;
	b.p[4] = 2;
	assert_int_equal(load_bytes(b.p, b.len), -EPROTONOSUPPORT);
	assert_non_null(strstr(cprxfer_errmsg(), "version 2"));
	assert_non_null(strstr(cprxfer_errmsg(), "version 1"));
	/* The version of a later frame is checked too. */
	b.p[4] = 1;
	b.p[40 + 4] = 9;
	assert_int_equal(load_bytes(b.p, b.len), -EPROTONOSUPPORT);
	cprxfer_state_free(st);
	free(b.p);
}

static void test_checksum(void **unused)
{
	cprxfer_state *st = sample();
	struct buf b = encode(st);

	/* Flip a byte inside the blob's payload: only the CRC notices. */
	b.p[b.len - 1000] ^= 1;
	assert_int_equal(load_bytes(b.p, b.len), -EBADMSG);
	assert_non_null(strstr(cprxfer_errmsg(), "checksum"));
	b.p[b.len - 1000] ^= 1;
	b.p[b.len - 6] ^= 1; /* the CRC itself */
	assert_int_equal(load_bytes(b.p, b.len), -EBADMSG);
	cprxfer_state_free(st);
	free(b.p);
}

static void test_length_past_end(void **unused)
{
	cprxfer_state *st = sample();
	struct buf b = encode(st);
	size_t first = 40; /* the first RECORD frame */

	cx_put64(b.p + first + 8, 1ull << 40);
	assert_int_equal(load_bytes(b.p, b.len), -EBADMSG);
	assert_non_null(strstr(cprxfer_errmsg(), "past"));
	/* A declared total larger than what the frames add up to. */
	cx_put64(b.p + first + 8, 4 + 1 + 8);
	cx_put64(b.p + 16 + 16, b.len + 100);
	assert_int_equal(load_bytes(b.p, b.len), -EBADMSG);
	assert_non_null(strstr(cprxfer_errmsg(), "declared"));
	cprxfer_state_free(st);
	free(b.p);
}

/* Cut the stream at every frame boundary and inside every frame. */
static void test_cut_everywhere(void **unused)
{
	cprxfer_state *st = sample();
	struct buf b = encode(st);
	size_t off = 0, cuts = 0;

	while (off < b.len) {
		uint64_t flen = cx_get64(b.p + off + 8);

		assert_int_equal(load_bytes(b.p, off), -ECONNRESET);
		assert_int_equal(load_bytes(b.p, off + 9), -ECONNRESET);
		if (flen > 2)
			assert_int_equal(load_bytes(b.p, off + CX_HDR + 1),
					 -ECONNRESET);
		off += CX_HDR + flen;
		cuts += 3;
	}
	assert_int_equal(off, b.len);
	assert_int_equal(load_bytes(b.p, b.len - 1), -ECONNRESET);
	print_message("%zu cuts, each -ECONNRESET\n", cuts + 1);
	cprxfer_state_free(st);
	free(b.p);
}

static void test_fd_mismatch(void **unused)
{
	struct buf body = { 0 }, s;
	struct feed f;

	/* Announced 2 fds, attached 1. */
	fds_frame(&body, 2, 0);
	rec_fd(&body, "a", 0);
	rec_fd(&body, "b", 1);
	s = wrap(&body, 2, 2);
	f = (struct feed){ .p = s.p,
			   .len = s.len,
			   .nbatches = 1,
			   .fd_at = { 40 },
			   .nfds = { 1 } };
	assert_int_equal(feed_load(&f, NULL, NULL), -EBADMSG);
	/* Attached 3 fds for a batch of 2. */
	f.nfds[0] = 3;
	assert_int_equal(feed_load(&f, NULL, NULL), -EBADMSG);
	assert_non_null(strstr(cprxfer_errmsg(), "fd count"));
	/* Attached 2, as announced: loads, and the fds are real. */
	f.nfds[0] = 2;
	{
		cprxfer_state *st;
		uint64_t v;
		int fd;

		assert_int_equal(feed_load(&f, NULL, &st), 0);
		assert_int_equal(cprxfer_get_fd(st, "b", &fd), 0);
		assert_int_equal(read(fd, &v, 8), 8);
		assert_int_equal(v, 2);
		assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
		cprxfer_state_free(st);
	}
	free(s.p);
	free(body.p);

	/* A record claims an fd no batch announced. */
	body = (struct buf){ 0 };
	rec_fd(&body, "a", 0);
	s = wrap(&body, 1, 1);
	assert_int_equal(load_bytes(s.p, s.len), -EBADMSG);
	free(s.p);
	free(body.p);

	/* Records claim fds out of order. */
	body = (struct buf){ 0 };
	fds_frame(&body, 2, 0);
	rec_fd(&body, "a", 1);
	rec_fd(&body, "b", 0);
	s = wrap(&body, 2, 2);
	f = (struct feed){ .p = s.p,
			   .len = s.len,
			   .nbatches = 1,
			   .fd_at = { 40 },
			   .nfds = { 2 } };
	assert_int_equal(feed_load(&f, NULL, NULL), -EBADMSG);
	free(s.p);
	free(body.p);

	/* fds arrive with no FDS frame at all, attached to a record. */
	body = (struct buf){ 0 };
	rec_u64(&body, "x", 1);
	s = wrap(&body, 1, 0);
	f = (struct feed){ .p = s.p,
			   .len = s.len,
			   .nbatches = 1,
			   .fd_at = { 40 },
			   .nfds = { 5 } };
	assert_int_equal(feed_load(&f, NULL, NULL), -EBADMSG);
	free(s.p);
	free(body.p);
}

static void test_limits(void **unused)
{
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_state *st = sample();
	struct buf b = encode(st), body = { 0 }, s;
	struct feed f = { .p = b.p, .len = b.len };
	int i;

	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_RECORD_BYTES, 2999);
	assert_int_equal(feed_load(&f, o, NULL), -EMSGSIZE);
	assert_non_null(strstr(cprxfer_errmsg(),
			       "record 'b': length 3000 exceeds limit 2999"));
	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_RECORD_BYTES, 3000);
	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_STREAM_BYTES, b.len - 1);
	assert_int_equal(feed_load(&f, o, NULL), -EFBIG);
	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_STREAM_BYTES, b.len);
	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_RECORDS, 4);
	assert_int_equal(feed_load(&f, o, NULL), -E2BIG);
	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_RECORDS, 5);
	assert_int_equal(feed_load(&f, o, NULL), 0);

	/* fds beyond the limit are closed, with a clear error. */
	fds_frame(&body, 8, 0);
	for (i = 0; i < 8; i++) {
		char n[8];

		snprintf(n, sizeof(n), "f%d", i);
		rec_fd(&body, n, (uint32_t)i);
	}
	s = wrap(&body, 8, 8);
	f = (struct feed){ .p = s.p,
			   .len = s.len,
			   .nbatches = 1,
			   .fd_at = { 40 },
			   .nfds = { 8 } };
	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_RECORDS, 100);
	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_FDS, 7);
	assert_int_equal(feed_load(&f, o, NULL), -EMFILE);
	/* The same fds, lying about their number in BEGIN. */
	cx_put64(s.p + 16 + 8, 1);
	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_FDS, 1);
	assert_int_equal(feed_load(&f, o, NULL), -EMFILE);
	cprxfer_opts_free(o);
	cprxfer_state_free(st);
	free(b.p);
	free(s.p);
	free(body.p);
}

static void test_hostile_records(void **unused)
{
	struct buf body = { 0 }, s;
	cprxfer_state *st;
	uint8_t v[8] = { 0 };

	/* Unknown optional type: skipped. Unknown critical: refused. */
	rec_u64(&body, "keep", 7);
	record(&body, 77, 0, "future", v, 8);
	s = wrap(&body, 2, 0);
	{
		struct feed f = { .p = s.p, .len = s.len };
		uint64_t x;

		assert_int_equal(feed_load(&f, NULL, &st), 0);
		assert_int_equal(cprxfer_state_count(st), 1);
		assert_int_equal(cprxfer_get_u64(st, "keep", &x), 0);
		assert_int_equal(x, 7);
		cprxfer_state_free(st);
	}
	free(s.p);
	body.len = 0;
	record(&body, 77, CX_REC_CRITICAL, "future", v, 8);
	s = wrap(&body, 1, 0);
	assert_int_equal(load_bytes(s.p, s.len), -EOPNOTSUPP);
	assert_non_null(strstr(cprxfer_errmsg(), "'future'"));
	free(s.p);

	/* Duplicate names. */
	body.len = 0;
	rec_u64(&body, "twice", 1);
	rec_u64(&body, "twice", 2);
	s = wrap(&body, 2, 0);
	assert_int_equal(load_bytes(s.p, s.len), -EBADMSG);
	free(s.p);

	/* A u64 of the wrong size; an empty name; a NUL in a string. */
	body.len = 0;
	record(&body, CPRXFER_TYPE_U64, 0, "short", v, 4);
	s = wrap(&body, 1, 0);
	assert_int_equal(load_bytes(s.p, s.len), -EBADMSG);
	free(s.p);
	body.len = 0;
	record(&body, CPRXFER_TYPE_STR, 0, "str", "a\0b", 3);
	s = wrap(&body, 1, 0);
	assert_int_equal(load_bytes(s.p, s.len), -EBADMSG);
	free(s.p);
	body.len = 0;
	{
		uint8_t p[12] = { CPRXFER_TYPE_U64, 0, 0, 0 };

		frame(&body, CX_F_RECORD, 0, p, sizeof(p));
	}
	s = wrap(&body, 1, 0);
	assert_int_equal(load_bytes(s.p, s.len), -EBADMSG);
	free(s.p);

	/* More records than declared; an ACK frame inside the stream. */
	body.len = 0;
	rec_u64(&body, "a", 1);
	rec_u64(&body, "b", 1);
	s = wrap(&body, 1, 0);
	assert_int_equal(load_bytes(s.p, s.len), -EBADMSG);
	free(s.p);
	body.len = 0;
	frame(&body, CX_F_ACK, 0, v, 8);
	s = wrap(&body, 0, 0);
	assert_int_equal(load_bytes(s.p, s.len), -EPROTO);
	free(s.p);
	free(body.p);
}

/* 100,000 records load in linear time: lookups never go quadratic. */
static void test_100000_records(void **unused)
{
	cprxfer_state *st = cprxfer_state_new(), *got;
	struct buf b;
	struct feed f;
	char name[32];
	int64_t t0, ms;
	uint64_t v;
	int i;

	for (i = 0; i < 100000; i++) {
		snprintf(name, sizeof(name), "entry.%d", i);
		assert_int_equal(cprxfer_put_u64(st, name, (uint64_t)i), 0);
	}
	b = encode(st);
	f = (struct feed){ .p = b.p, .len = b.len };
	t0 = tu_now_ms();
	assert_int_equal(feed_load(&f, NULL, &got), 0);
	ms = tu_now_ms() - t0;
	print_message("100000 records (%zu bytes) loaded in %lld ms\n", b.len,
		      (long long)ms);
	assert_int_equal(cprxfer_state_count(got), 100000);
	assert_int_equal(cprxfer_get_u64(got, "entry.99999", &v), 0);
	assert_int_equal(v, 99999);
	/* Generous bound: a quadratic loader would take minutes. */
	assert_true(ms < 5000);
	cprxfer_state_free(got);
	cprxfer_state_free(st);
	free(b.p);
}

/* A failed load tells the sender why before giving up. */
static void test_nak(void **unused)
{
	cprxfer_channel *ch;
	int sv[2];
	uint8_t h[CX_HDR + CX_ACK_LEN];
	cprxfer_state *st = NULL;
	struct cx_frame f;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	assert_int_equal(write(sv[1], "garbage garbage garbage!", 24), 24);
	assert_int_equal(cx_channel_new(sv[0], NULL, &ch), 0);
	assert_int_equal(cprxfer_load(ch, &st), -EPROTO);
	assert_int_equal(read(sv[1], h, sizeof(h)), sizeof(h));
	assert_int_equal(cx_frame_parse(h, &f), 0);
	assert_int_equal(f.type, CX_F_ACK);
	assert_int_equal((int32_t)cx_get32(h + CX_HDR), -EPROTO);
	/* The channel is out of step now and says so. */
	assert_int_equal(cprxfer_load(ch, &st), -EPIPE);
	assert_int_equal(cprxfer_save(ch, st), -EPIPE);
	cprxfer_channel_close(ch);
	close(sv[1]);
}

/* ---- fd arrays ------------------------------------------------------ */

static void rec_fds(struct buf *b, const char *name, uint32_t n, uint32_t first)
{
	uint8_t p[CX_FDA_LEN];

	cx_put32(p, n);
	cx_put32(p + 4, first);
	record(b, CPRXFER_TYPE_FDS, CX_REC_CRITICAL, name, p, sizeof(p));
}

/* An eventfd's counter: which object an fd is. */
static uint64_t counter(int fd)
{
	uint64_t v = 0;

	if (read(fd, &v, 8) != 8 || write(fd, &v, 8) != 8)
		return 0;
	return v;
}

struct arrays {
	int sock;
	size_t n;
	int *mine; /* the sender's fds, inherited by fork: closed */
	int single;
};

/*
 * The loading process: every fd of "conns" must be the sender's fd of
 * the same index (eventfd counter i + 1), close-on-exec; "single" and
 * "more" around it keep their places. Exit status: which check failed.
 */
static int array_loader(void *arg)
{
	struct arrays *a = arg;
	cprxfer_channel *ch;
	cprxfer_state *st;
	const int *fds;
	int *taken = NULL, *again = NULL, fd, rc = 0;
	size_t i, n, ntaken = 0;
	uint64_t v;

	for (i = 0; i < a->n; i++)
		close(a->mine[i]);
	close(a->single);
	if (cprxfer_channel_open(a->sock, &ch) < 0)
		return 10;
	if (cprxfer_load(ch, &st) < 0) {
		fprintf(stderr, "load: %s\n", cprxfer_errmsg());
		return 11;
	}
	if (cprxfer_get_fd(st, "single", &fd) < 0 || counter(fd) != 100000)
		rc = 12;
	if (!rc && (cprxfer_get_u64(st, "after", &v) < 0 || v != a->n))
		rc = 13;
	if (!rc && (cprxfer_get_fds(st, "more", &fds, &n) < 0 || n != 2 ||
		    counter(fds[0]) != 200001 || counter(fds[1]) != 200002))
		rc = 14;
	if (!rc && cprxfer_take_fds(st, "conns", &taken, &ntaken) < 0)
		rc = 15;
	if (!rc && ntaken != a->n)
		rc = 16;
	for (i = 0; !rc && i < ntaken; i++)
		if (counter(taken[i]) != i + 1 ||
		    !(fcntl(taken[i], F_GETFD) & FD_CLOEXEC))
			rc = 17;
	/* Taken: the state no longer has them, and does not close them. */
	if (!rc && (cprxfer_get_fds(st, "conns", &fds, &n) != -EBADF ||
		    cprxfer_take_fds(st, "conns", &again, &n) != -EBADF))
		rc = 18;
	cprxfer_state_free(st);
	for (i = 0; i < ntaken; i++) {
		if (!rc && fcntl(taken[i], F_GETFD) < 0)
			rc = 19;
		close(taken[i]);
	}
	free(taken);
	if (cprxfer_ack(ch, rc ? -EBADMSG : 0, rc ? "check failed" : NULL) < 0)
		rc = rc ? rc : 20;
	cprxfer_channel_close(ch);
	return rc;
}

static void array_round_trip(size_t n)
{
	struct arrays a = { .n = n };
	cprxfer_state *st = cprxfer_state_new();
	cprxfer_channel *ch;
	int sv[2], more[2], rc;
	size_t i;
	pid_t pid;

	a.mine = malloc(n * sizeof(int));
	assert_non_null(a.mine);
	for (i = 0; i < n; i++) {
		a.mine[i] = eventfd((unsigned)i + 1, EFD_CLOEXEC);
		assert_true(a.mine[i] >= 0);
	}
	a.single = eventfd(100000, EFD_CLOEXEC);
	more[0] = eventfd(200001, EFD_CLOEXEC);
	more[1] = eventfd(200002, EFD_CLOEXEC);
	assert_int_equal(cprxfer_put_fd(st, "single", a.single), 0);
	assert_int_equal(cprxfer_put_fds(st, "conns", a.mine, n), 0);
	assert_int_equal(cprxfer_put_u64(st, "after", n), 0);
	assert_int_equal(cprxfer_put_fds(st, "more", more, 2), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	a.sock = sv[1];
	pid = tu_fork(array_loader, &a);
	close(sv[1]);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);
	rc = cprxfer_save(ch, st);
	if (rc == 0)
		rc = cprxfer_wait_ack(ch, 30000);
	if (rc < 0)
		print_message("  save: %d %s\n", rc, cprxfer_errmsg());
	assert_int_equal(rc, 0);
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_state_free(st);
	for (i = 0; i < n; i++)
		close(a.mine[i]);
	close(a.single);
	close(more[0]);
	close(more[1]);
	free(a.mine);
}

/*
 * One name, many fds, between two processes: 1, one batch (253), one
 * more than a batch (254) and 10,000; each fd is the same object on
 * the other side, in the same place.
 */
static void test_fd_array_round_trip_keeps_identity(void **unused)
{
	static const size_t ns[] = { 1, 253, 254, 10000 };
	size_t i;

	/* Each side holds the 10,000 fds once (the loader closes what it
	 * inherits). */
	assert_true(tu_raise_nofile() >= 10000 + 256);
	for (i = 0; i < sizeof(ns) / sizeof(ns[0]); i++) {
		int64_t t0 = tu_now_ms();

		array_round_trip(ns[i]);
		print_message("%zu fds in one array: %lld ms\n", ns[i],
			      (long long)(tu_now_ms() - t0));
	}
}

static int twice_loader(void *arg)
{
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_channel *ch;
	cprxfer_state *st;
	int r, rc = 0;

	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_FDS, 300);
	if (cprxfer_channel_open_opts(*(int *)arg, o, &ch) < 0)
		return 10;
	for (r = 0; !rc && r < 2; r++) {
		if (cprxfer_load(ch, &st) < 0) {
			fprintf(stderr, "load %d: %s\n", r, cprxfer_errmsg());
			rc = 11 + r;
			break;
		}
		cprxfer_state_free(st);
		if (cprxfer_ack(ch, 0, NULL) < 0)
			rc = 13;
	}
	cprxfer_channel_close(ch);
	cprxfer_opts_free(o);
	return rc;
}

/*
 * CPRXFER_LIMIT_FDS counts one stream's fds. Two saves of 254 fds in a
 * row, under a limit of 300, both load (before: the second load added
 * its first batch, read while peeking at the stream, to the first
 * stream's 254, and refused it with -EMFILE; cprxfer-bench failed so
 * at 19,936 fds).
 */
static void test_second_load_counts_only_its_own_fds(void **unused)
{
	cprxfer_state *st;
	cprxfer_channel *ch;
	int sv[2], efd[254], i, r;
	pid_t pid;

	for (i = 0; i < 254; i++) {
		efd[i] = eventfd(0, EFD_CLOEXEC);
		assert_true(efd[i] >= 0);
	}
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	pid = tu_fork(twice_loader, &sv[1]);
	/* Made after the fork: the loader has no copy to leak. */
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_put_fds(st, "conns", efd, 254), 0);
	close(sv[1]);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);
	for (r = 0; r < 2; r++) {
		assert_int_equal(cprxfer_save(ch, st), 0);
		assert_int_equal(cprxfer_wait_ack(ch, 30000), 0);
	}
	cprxfer_channel_close(ch);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_state_free(st);
	for (i = 0; i < 254; i++)
		close(efd[i]);
}

/* Encode st in mode to a memfd, rewound. */
static int encode_fd(const cprxfer_state *st, enum cx_mode mode)
{
	struct cx_io io;
	int fd = memfd_create("stream", MFD_CLOEXEC), rc;

	assert_true(fd >= 0);
	assert_int_equal(cx_io_init(&io, fd, false), 0);
	rc = cx_encode(&io, st, mode);
	cx_io_fini(&io);
	assert_int_equal(rc, 0);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	return fd;
}

/*
 * Exec mode: the array's fd numbers travel inline and the new image
 * adopts the same fds (decoded here in the same process, as
 * cprxfer_load_exec does after the exec).
 */
static void test_fd_array_exec_mode_inline_numbers(void **unused)
{
	cprxfer_state *st = cprxfer_state_new(), *got = NULL;
	struct cprxfer_opts o;
	struct cx_io io;
	const int *fds;
	int efd[300], sfd, i;
	size_t n;

	for (i = 0; i < 300; i++) {
		efd[i] = eventfd((unsigned)i + 1, EFD_CLOEXEC);
		assert_true(efd[i] >= 0);
	}
	assert_int_equal(cprxfer_put_fds(st, "a", efd, 300), 0);
	/* The same fd twice: the second gets its own duplicate. */
	assert_int_equal(cprxfer_put_fds(st, "b", efd, 1), 0);
	sfd = encode_fd(st, CX_MODE_EXEC);
	cx_opts_default(&o);
	assert_int_equal(cx_io_init(&io, sfd, false), 0);
	assert_int_equal(cx_decode(&io, &o, CX_MODE_EXEC, &got), 0);
	cx_io_fini(&io);
	close(sfd);
	assert_int_equal(cprxfer_get_fds(got, "a", &fds, &n), 0);
	assert_int_equal(n, 300);
	for (i = 0; i < 300; i++)
		assert_int_equal(fds[i], efd[i]);
	assert_int_equal(cprxfer_get_fds(got, "b", &fds, &n), 0);
	assert_int_equal(n, 1);
	assert_true(fds[0] != efd[0]);
	assert_int_equal(counter(fds[0]), 1);
	/* got owns the adopted fds now: freeing it closes them. */
	cprxfer_state_free(got);
	cprxfer_state_free(st);
	for (i = 0; i < 300; i++)
		assert_true(fcntl(efd[i], F_GETFD) < 0);
}

/*
 * The new image of test_fd_array_survives_exec: every fd of "conns" is
 * the one of that index before the exec (counter i + 1), close-on-exec
 * again. Exit status 0 when all held.
 */
static int exec_array_check(void)
{
	cprxfer_state *st;
	const int *fds;
	size_t n, i;

	if (cprxfer_load_exec(&st) < 0) {
		fprintf(stderr, "load_exec: %s\n", cprxfer_errmsg());
		return 2;
	}
	if (cprxfer_get_fds(st, "conns", &fds, &n) < 0 || n != 300)
		return 3;
	for (i = 0; i < n; i++)
		if (counter(fds[i]) != i + 1 ||
		    !(fcntl(fds[i], F_GETFD) & FD_CLOEXEC))
			return 4;
	cprxfer_state_free(st);
	return 0;
}

static char self[4096]; /* this binary: the exec's new image */

static int exec_array(void *unused)
{
	static char arg0[] = "test-stream", arg1[] = "--exec-array-check";
	char *argv[] = { arg0, arg1, NULL };
	cprxfer_state *st = cprxfer_state_new();
	int efd[300], i;

	for (i = 0; i < 300; i++)
		efd[i] = eventfd((unsigned)i + 1, EFD_CLOEXEC);
	if (cprxfer_put_fds(st, "conns", efd, 300) < 0)
		return 10;
	cprxfer_exec(st, self, argv, NULL);
	fprintf(stderr, "exec: %s\n", cprxfer_errmsg());
	return 11;
}

/* Exec mode for real: the array's fds stay open across execve() (their
 * close-on-exec cleared for it) and the new image adopts them. */
static void test_fd_array_survives_exec(void **unused)
{
	assert_int_equal(tu_wait(tu_fork(exec_array, NULL)), 0);
}

/* Encode st in mode to a memfd; return what cx_encode returned. */
static int encode_rc(const cprxfer_state *st, enum cx_mode mode)
{
	struct cx_io io;
	int m = memfd_create("stream", MFD_CLOEXEC), fd, rc;

	/* Far from the numbers the test closes and reuses. */
	fd = fcntl(m, F_DUPFD_CLOEXEC, 100);
	close(m);
	assert_true(fd >= 0);
	assert_int_equal(cx_io_init(&io, fd, false), 0);
	rc = cx_encode(&io, st, mode);
	cx_io_fini(&io);
	close(fd);
	return rc;
}

/* CPU time (user + system) of this thread, in µs. */
static int64_t thread_cpu_us(void)
{
	struct rusage ru;

	getrusage(RUSAGE_THREAD, &ru);
	return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ll +
	       ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

/* Least CPU time of 5 encodes of st in socket mode, in µs. */
static int64_t encode_cpu_us(const cprxfer_state *st)
{
	int64_t best = INT64_MAX;
	int r;

	for (r = 0; r < 5; r++) {
		int64_t t0 = thread_cpu_us();

		assert_int_equal(encode_rc(st, CX_MODE_SOCKET), 0);
		if (thread_cpu_us() - t0 < best)
			best = thread_cpu_us() - t0;
	}
	return best;
}

/*
 * An adopted array (cprxfer_adopt_fds) is the state's: a save sends it
 * without the identity check that costs a borrowed array one fstat()
 * per fd (on this host 1.5-2.5 us each, as much as passing the fd).
 * 9,000 fds: the adopted save costs less than a third of the CPU
 * time of the borrowed one.
 */
#define NARR 9000
static void test_adopted_array_is_saved_without_a_syscall_per_fd(void **unused)
{
	cprxfer_state *put = cprxfer_state_new(), *own = cprxfer_state_new();
	int *mine = malloc(NARR * sizeof(int));
	int *dups = malloc(NARR * sizeof(int)), i;
	int64_t borrowed, adopted;

	assert_true(tu_raise_nofile() >= 2 * NARR + 256);
	for (i = 0; i < NARR; i++) {
		mine[i] = eventfd(0, EFD_CLOEXEC);
		assert_true(mine[i] >= 0);
		dups[i] = fcntl(mine[i], F_DUPFD_CLOEXEC, 0);
		assert_true(dups[i] >= 0);
	}
	assert_int_equal(cprxfer_put_fds(put, "conns", mine, NARR), 0);
	assert_int_equal(cprxfer_adopt_fds(own, "conns", dups, NARR), 0);
	borrowed = encode_cpu_us(put);
	adopted = encode_cpu_us(own);
	print_message(
		"encode of 9,000 fds, CPU us (best of 5): borrowed %lld, adopted %lld\n",
		(long long)borrowed, (long long)adopted);
	assert_true(adopted * 3 < borrowed);
	/* The borrowed fds are ours to close, the adopted ones the state's. */
	cprxfer_state_free(put);
	cprxfer_state_free(own);
	cx_close_all(mine, NARR);
	free(mine);
	free(dups);
}
#undef NARR
/*
 * Borrowed like cprxfer_put_fd: an fd of the array closed and its number
 * reused by another file is -ESTALE at save, naming the record and the
 * index, in every mode; closed and not reused, -EBADF.
 */
static void test_fd_array_reused_number_is_stale(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	int efd[3], again, i;

	for (i = 0; i < 3; i++)
		efd[i] = eventfd(0, EFD_CLOEXEC);
	assert_int_equal(cprxfer_put_fds(st, "conns", efd, 3), 0);
	assert_int_equal(encode_rc(st, CX_MODE_SOCKET), 0);
	close(efd[1]);
	again = open("/dev/null", O_RDONLY | O_CLOEXEC);
	assert_int_equal(again, efd[1]);
	assert_int_equal(encode_rc(st, CX_MODE_SOCKET), -ESTALE);
	assert_non_null(strstr(cprxfer_errmsg(), "'conns'"));
	assert_non_null(strstr(cprxfer_errmsg(), "index 1"));
	assert_int_equal(encode_rc(st, CX_MODE_EXEC), -ESTALE);
	close(again);
	assert_int_equal(encode_rc(st, CX_MODE_SOCKET), -EBADF);
	assert_int_equal(encode_rc(st, CX_MODE_EXEC), -EBADF);
	cprxfer_state_free(st);
	close(efd[0]);
	close(efd[2]);
}

/*
 * The detached stream (restart mode) lists every fd of an array in
 * order, and loads it back; preflight sees the array travel in restart
 * mode and block file and kexec modes (eventfds are not memfds).
 */
static void test_fd_array_in_detached_stream_and_preflight(void **unused)
{
	cprxfer_state *st = cprxfer_state_new(), *got = NULL;
	cprxfer_report *rep = NULL;
	int efd[5], one, memfd = -1, *fds = NULL, i, verdict;
	const char *name, *why;
	const int *back;
	size_t n = 0, m;

	for (i = 0; i < 5; i++)
		efd[i] = eventfd((unsigned)i + 1, EFD_CLOEXEC);
	one = eventfd(9, EFD_CLOEXEC);
	assert_int_equal(cprxfer_put_fd(st, "one", one), 0);
	assert_int_equal(cprxfer_put_fds(st, "conns", efd, 5), 0);
	assert_int_equal(
		cprxfer_save_memfd(st, CPRXFER_MODE_RESTART, &memfd, &fds, &n),
		0);
	assert_int_equal(n, 6);
	assert_int_equal(fds[0], one);
	for (i = 0; i < 5; i++)
		assert_int_equal(fds[i + 1], efd[i]);
	assert_int_equal(cprxfer_load_memfd(memfd, fds, n, NULL, &got), 0);
	assert_int_equal(cprxfer_get_fds(got, "conns", &back, &m), 0);
	assert_int_equal(m, 5);
	for (i = 0; i < 5; i++)
		assert_int_equal(counter(back[i]), (uint64_t)i + 1);
	cprxfer_state_free(got);
	free(fds);
	close(memfd);

	assert_int_equal(cprxfer_preflight(st, CPRXFER_MODE_RESTART, &rep), 0);
	assert_int_equal(cprxfer_report_entry(rep, 1, &name, &verdict, &why),
			 0);
	assert_string_equal(name, "conns");
	assert_int_equal(verdict, CPRXFER_TRAVELS);
	cprxfer_report_free(rep);
	assert_true(cprxfer_preflight(st, CPRXFER_MODE_FILE, &rep) > 0);
	assert_int_equal(cprxfer_report_entry(rep, 1, &name, &verdict, &why),
			 0);
	assert_int_equal(verdict, CPRXFER_BLOCKS);
	cprxfer_report_free(rep);
	assert_true(cprxfer_preflight(st, CPRXFER_MODE_KEXEC, &rep) > 0);
	assert_int_equal(cprxfer_report_entry(rep, 1, &name, &verdict, &why),
			 0);
	assert_int_equal(verdict, CPRXFER_BLOCKS);
	print_message("kexec: conns: %s\n", why);
	cprxfer_report_free(rep);
	cprxfer_state_free(st);
	for (i = 0; i < 5; i++)
		close(efd[i]);
	close(one);
}

/* A state file cannot carry fds: an array is refused like one fd, on
 * save and on load. The record is critical on the wire. */
static void test_fd_array_refused_in_files_and_marked_critical(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	struct buf body = { 0 }, s;
	char *dir = tu_tmpdir(), path[4096];
	int efd = eventfd(0, EFD_CLOEXEC), fd;
	cprxfer_state *got = NULL;

	assert_int_equal(cprxfer_put_fds(st, "a", &efd, 1), 0);
	snprintf(path, sizeof(path), "%s/state", dir);
	assert_int_equal(cprxfer_save_file(st, path), -EOPNOTSUPP);
	cprxfer_state_free(st);
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_put_fds(st, "empty", NULL, 0), 0);
	assert_int_equal(cprxfer_save_file(st, path), -EOPNOTSUPP);

	/* Encoded: the record carries CX_REC_CRITICAL. */
	s = encode(st);
	assert_int_equal(s.p[40 + 5], CX_F_RECORD);
	assert_int_equal(s.p[40 + CX_HDR], CPRXFER_TYPE_FDS);
	assert_int_equal(s.p[40 + CX_HDR + 1], CX_REC_CRITICAL);
	free(s.p);
	cprxfer_state_free(st);

	/* A crafted state file with an (empty) array: refused on load. */
	rec_fds(&body, "empty", 0, 0);
	s = wrap(&body, 1, 0);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, s.p, s.len), (ssize_t)s.len);
	close(fd);
	assert_int_equal(cprxfer_load_file(path, &got), -EBADMSG);
	assert_non_null(strstr(cprxfer_errmsg(), "state file"));
	free(s.p);
	free(body.p);
	close(efd);
	tu_rmdir(dir);
	free(dir);
}

/*
 * Hostile fd arrays: each case a stream with one batch of `attach`
 * eventfds and the records below; every fd received is closed on
 * failure (the teardown counts them).
 */
static const struct array_case {
	const char *what;
	uint32_t batch; /* FDS frame count (0: no frame) */
	int attach;	/* fds attached to the batch */
	uint32_t count; /* array record: count, first */
	uint32_t first;
	int single_after; /* then an fd record claiming index count */
	int twice;	  /* the array's name used again */
	uint64_t limit;	  /* CPRXFER_LIMIT_FDS (0: default) */
	int rc;
} array_cases[] = {
	{ "valid", 3, 3, 3, 0, 0, 0, 0, 0 },
	{ "valid, then one fd", 4, 4, 3, 0, 1, 0, 0, 0 },
	{ "empty array", 0, 0, 0, 0, 0, 0, 0, 0 },
	{ "names more fds than announced", 2, 2, 3, 0, 0, 0, 0, -EBADMSG },
	{ "starts past the next fd", 3, 3, 2, 1, 0, 0, 0, -EBADMSG },
	{ "count wraps around", 3, 3, UINT32_MAX, 1, 0, 0, 0, -EBADMSG },
	{ "no batch at all", 0, 0, 3, 0, 0, 0, 0, -EBADMSG },
	{ "batch announced, fds missing", 3, 1, 3, 0, 0, 0, 0, -EBADMSG },
	{ "fds left unclaimed", 4, 4, 3, 0, 0, 0, 0, -EBADMSG },
	{ "single fd claims an array's fd", 4, 4, 3, 0, 2, 0, 0, -EBADMSG },
	{ "name twice", 4, 4, 2, 0, 0, 1, 0, -EBADMSG },
	{ "over the fd limit", 8, 8, 8, 0, 0, 0, 7, -EMFILE },
};

static void test_fd_array_hostile_streams(void **unused)
{
	size_t i;

	for (i = 0; i < sizeof(array_cases) / sizeof(array_cases[0]); i++) {
		const struct array_case *c = &array_cases[i];
		cprxfer_opts *o = cprxfer_opts_new();
		struct buf body = { 0 }, s;
		cprxfer_state *st = NULL;
		uint64_t nrec = 1, nfds = c->batch;
		struct feed f;
		int rc;

		if (c->batch)
			fds_frame(&body, c->batch, 0);
		rec_fds(&body, "arr", c->count, c->first);
		if (c->single_after) {
			rec_fd(&body, "one",
			       c->single_after == 1 ? c->count : 0);
			nrec++;
		}
		if (c->twice) {
			rec_fds(&body, "arr", 1, c->count);
			nrec++;
		}
		s = wrap(&body, nrec, nfds);
		f = (struct feed){ .p = s.p,
				   .len = s.len,
				   .nbatches = c->attach ? 1 : 0,
				   .fd_at = { 40 },
				   .nfds = { c->attach } };
		if (c->limit)
			cprxfer_opts_set_limit(o, CPRXFER_LIMIT_FDS, c->limit);
		print_message("  %s\n", c->what);
		rc = feed_load(&f, o, &st);
		assert_int_equal(rc, c->rc);
		if (rc == 0) {
			const int *fds;
			size_t n, k;

			assert_int_equal(cprxfer_get_fds(st, "arr", &fds, &n),
					 0);
			assert_int_equal(n, c->count);
			for (k = 0; k < n; k++)
				assert_int_equal(counter(fds[k]), k + 1);
		}
		cprxfer_state_free(st);
		cprxfer_opts_free(o);
		free(s.p);
		free(body.p);
	}
}

/* ---- small rounds ---------------------------------------------------- */

static int hook_fd = -1;
static unsigned hook_sends, hook_recvs;

static void count_hook(int fd, int op, size_t *len)
{
	(void)len;
	if (fd != hook_fd)
		return;
	if (op == CX_HOOK_SENT)
		hook_sends++;
	else if (op == CX_HOOK_RECVD)
		hook_recvs++;
}

/* The loader: one stream in, checked, acked; exit status = recvmsg()
 * calls that brought bytes (or 100 + what failed). */
static int small_loader(void *arg)
{
	int sock = *(int *)arg, fd;
	cprxfer_channel *ch;
	cprxfer_state *st;
	const char *s;
	uint64_t v;

	/* No handshake: its reads could bring the stream in early. */
	if (cx_channel_new(sock, NULL, &ch) < 0)
		return 101;
	hook_fd = sock;
	hook_recvs = 0;
	cx_io_fault_hook = count_hook;
	if (cprxfer_load(ch, &st) < 0)
		return 102;
	cx_io_fault_hook = NULL;
	if (cprxfer_get_u64(st, "gen", &v) < 0 || v != 7 ||
	    cprxfer_get_str(st, "name", &s) < 0 || strcmp(s, "vm0") ||
	    cprxfer_get_fd(st, "irq", &fd) < 0 || counter(fd) != 42)
		return 103;
	cprxfer_state_free(st);
	if (cprxfer_ack(ch, 0, NULL) < 0)
		return 104;
	cprxfer_channel_close(ch);
	return (int)hook_recvs;
}

/*
 * The final round of a handoff is small: a few records, an fd, an ack.
 * Its stream leaves in one sendmsg(), BEGIN to END with the fd attached,
 * and arrives in one recvmsg() (before: BEGIN+FDS in one sendmsg, the
 * records and END in a second).
 */
static void test_small_round_is_one_sendmsg(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	cprxfer_channel *ch;
	int sv[2], efd = eventfd(42, EFD_CLOEXEC);
	pid_t pid;

	assert_int_equal(cprxfer_put_u64(st, "gen", 7), 0);
	assert_int_equal(cprxfer_put_str(st, "name", "vm0"), 0);
	assert_int_equal(cprxfer_put_fd(st, "irq", efd), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	pid = tu_fork(small_loader, &sv[1]);
	close(sv[1]);
	assert_int_equal(cx_channel_new(sv[0], NULL, &ch), 0);
	hook_fd = sv[0];
	hook_sends = 0;
	cx_io_fault_hook = count_hook;
	assert_int_equal(cprxfer_save(ch, st), 0);
	cx_io_fault_hook = NULL;
	print_message("save of 3 records and 1 fd: %u sendmsg()\n", hook_sends);
	assert_int_equal(hook_sends, 1);
	assert_int_equal(cprxfer_wait_ack(ch, 10000), 0);
	cprxfer_channel_close(ch);
	/* The loader read it with one recvmsg(). */
	assert_int_equal(tu_wait(pid), 1);
	cprxfer_state_free(st);
	close(efd);
}

/* A second batch gets its own sendmsg() (SCM_RIGHTS carries 253 fds at
 * most): 254 fds in an array leave in two. */
static void test_two_batches_are_two_sendmsgs(void **unused)
{
	cprxfer_state *st = cprxfer_state_new();
	struct cx_io io;
	int sv[2], efd[254], i, rc;

	for (i = 0; i < 254; i++) {
		efd[i] = eventfd(0, EFD_CLOEXEC);
		assert_true(efd[i] >= 0);
	}
	assert_int_equal(cprxfer_put_fds(st, "a", efd, 254), 0);
	assert_int_equal(cprxfer_put_u64(st, "n", 254), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	assert_int_equal(cx_io_init(&io, sv[0], true), 0);
	hook_fd = sv[0];
	hook_sends = 0;
	cx_io_fault_hook = count_hook;
	rc = cx_encode(&io, st, CX_MODE_SOCKET);
	cx_io_fault_hook = NULL;
	assert_int_equal(rc, 0);
	assert_int_equal(hook_sends, 2);
	cx_io_fini(&io);
	close(sv[0]);
	close(sv[1]); /* drops the fds in flight */
	cprxfer_state_free(st);
	for (i = 0; i < 254; i++)
		close(efd[i]);
}

/* CRC32C byte by byte, from the polynomial: independent of lib/. */
static uint32_t crc32c_ref(uint32_t crc, const uint8_t *p, size_t n)
{
	static uint32_t t[256];
	uint32_t b, c;
	int k;

	if (!t[1]) {
		for (b = 0; b < 256; b++) {
			c = b;
			for (k = 0; k < 8; k++)
				c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
			t[b] = c;
		}
	}
	crc = ~crc;
	while (n--)
		crc = t[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* The generated tables give the known CRC32C values (RFC 3720, B.4). */
static void test_crc32c_known_vectors(void **unused)
{
	uint8_t b[32];
	int i;

	assert_int_equal(cx_crc32c(0, "123456789", 9), 0xe3069283);
	assert_int_equal(cx_crc32c(0, "", 0), 0);
	memset(b, 0, sizeof(b));
	assert_int_equal(cx_crc32c(0, b, 32), 0x8a9136aa);
	memset(b, 0xff, sizeof(b));
	assert_int_equal(cx_crc32c(0, b, 32), 0x62a8ab43);
	for (i = 0; i < 32; i++)
		b[i] = (uint8_t)i;
	assert_int_equal(cx_crc32c(0, b, 32), 0x46dd794e);
	for (i = 0; i < 32; i++)
		b[i] = (uint8_t)(31 - i);
	assert_int_equal(cx_crc32c(0, b, 32), 0x113fdb5c);
	/* Extending a CRC equals the CRC of the concatenation. */
	assert_int_equal(cx_crc32c(cx_crc32c(0, "12345", 5), "6789", 4),
			 0xe3069283);
}

/*
 * The block-combining path (three chains joined by the zeros tables)
 * against the byte-at-a-time reference: 1 MiB buffers at several
 * alignments and lengths that end inside long blocks, short blocks and
 * tails.
 */
static void test_crc32c_combine_matches_bytewise(void **unused)
{
	static const size_t offs[] = { 0, 1, 3, 7, 8, 13 };
	static const size_t lens[] = { 1 << 20,	    (1 << 20) - 21,
				       3 * 8192,    3 * 8192 + 3 * 256 + 7,
				       3 * 256 - 1, 24573 };
	size_t i, j, k;
	uint8_t *buf = malloc((1 << 20) + 16);
	uint32_t x = 12345;

	assert_non_null(buf);
	for (k = 0; k < (1 << 20) + 16; k++) {
		x = x * 1103515245 + 12345;
		buf[k] = (uint8_t)(x >> 16);
	}
	for (i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
		for (j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
			const uint8_t *p = buf + offs[i];
			size_t n = lens[j];

			assert_int_equal(cx_crc32c(0, p, n),
					 crc32c_ref(0, p, n));
			/* Split at an odd place: the seed path too. */
			assert_int_equal(
				cx_crc32c(cx_crc32c(0x1234, p, n / 3 + 1),
					  p + n / 3 + 1, n - n / 3 - 1),
				crc32c_ref(0x1234, p, n));
		}
	free(buf);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_valid),
		tu_test(test_empty_state),
		tu_test(test_bad_magic_version),
		tu_test(test_checksum),
		tu_test(test_length_past_end),
		tu_test(test_cut_everywhere),
		tu_test(test_fd_mismatch),
		tu_test(test_limits),
		tu_test(test_hostile_records),
		tu_test(test_100000_records),
		tu_test(test_nak),
		tu_test(test_crc32c_known_vectors),
		tu_test(test_small_round_is_one_sendmsg),
		tu_test(test_two_batches_are_two_sendmsgs),
		tu_test(test_fd_array_round_trip_keeps_identity),
		tu_test(test_second_load_counts_only_its_own_fds),
		tu_test(test_fd_array_exec_mode_inline_numbers),
		tu_test(test_fd_array_survives_exec),
		tu_test(test_fd_array_reused_number_is_stale),
		tu_test(test_adopted_array_is_saved_without_a_syscall_per_fd),
		tu_test(test_fd_array_in_detached_stream_and_preflight),
		tu_test(test_fd_array_refused_in_files_and_marked_critical),
		tu_test(test_fd_array_hostile_streams),
		tu_test(test_crc32c_combine_matches_bytewise),
	};

	if (argc > 1 && !strcmp(argv[1], "--exec-array-check"))
		return exec_array_check();
	/* argv[0], not /proc/self/exe: under valgrind that is valgrind. */
	if (!realpath(argv[0], self))
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
