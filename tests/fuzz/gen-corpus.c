/* SPDX-License-Identifier: MIT */
/*
 * Seed-corpus generator for the fuzz targets: builds states of every
 * record type with the public API, saves them through a real channel
 * and captures the bytes (and where fds rode) from the other end of the
 * socketpair, then writes them in each target's input format:
 *
 *   gen-corpus OUTDIR    writes OUTDIR/stream/, OUTDIR/handshake/
 *                        and, with file mode built, OUTDIR/load-file/
 *
 * The committed seeds in tests/fuzz/corpus/ came from this program;
 * rerun it after a wire-format change.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "channel.h"
#include "crc32c.h"
#include "state.h"
#include "wire.h"

struct buf {
	uint8_t *p;
	size_t n, cap;
};

static void die(const char *what)
{
	fprintf(stderr, "gen-corpus: %s: %s (%s)\n", what, strerror(errno),
		cprxfer_errmsg());
	exit(1);
}

static void put(struct buf *b, const void *p, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2;
		b->p = realloc(b->p, b->cap);
		if (!b->p)
			die("realloc");
	}
	memcpy(b->p + b->n, p, n);
	b->n += n;
}

static void put8(struct buf *b, uint8_t v)
{
	put(b, &v, 1);
}

/* One chunk the receiver got from one recvmsg(), and its fds. */
struct chunk {
	struct buf data;
	unsigned nfds;
};

struct capture {
	struct chunk c[256];
	unsigned n;
	int memfds; /* attach memfds rather than eventfds */
};

/* Save st through a channel; record what the peer end receives. */
static void capture(const cprxfer_state *st, struct capture *cap)
{
	int sv[2], sz = 16 << 20;
	cprxfer_channel *ch;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	setsockopt(sv[0], SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz));
	if (cx_channel_new(sv[0], NULL, &ch) < 0 || cprxfer_save(ch, st) < 0)
		die("save");
	for (;;) {
		union {
			char b[CMSG_SPACE(253 * sizeof(int))];
			struct cmsghdr align;
		} u;
		uint8_t data[65536];
		struct iovec iov = { data, sizeof(data) };
		struct msghdr m = { .msg_iov = &iov,
				    .msg_iovlen = 1,
				    .msg_control = u.b,
				    .msg_controllen = sizeof(u.b) };
		struct cmsghdr *c;
		struct chunk *k;
		ssize_t r = recvmsg(sv[1], &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

		if (r <= 0)
			break;
		if (cap->n == 256)
			die("too many chunks");
		k = &cap->c[cap->n++];
		put(&k->data, data, (size_t)r);
		for (c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
			unsigned i,
				n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

			for (i = 0; i < n; i++)
				close(((int *)CMSG_DATA(c))[i]);
			k->nfds += n;
		}
	}
	cprxfer_channel_close(ch);
	close(sv[1]);
}

/* Append a capture in the segment format of fuzz.h. */
static void segments(struct buf *out, const struct capture *cap)
{
	unsigned i;

	for (i = 0; i < cap->n; i++) {
		const struct chunk *k = &cap->c[i];
		unsigned fds = k->nfds;
		size_t off = 0;

		while (off < k->data.n) {
			size_t len = k->data.n - off;
			unsigned nf = fds > 7 ? 7 : fds;

			if (len > 256)
				len = 256;
			if (fds > 7)
				len = 1;
			put8(out,
			     (uint8_t)(nf ? nf | (cap->memfds ? 8 : 0) : 0xff));
			put8(out, (uint8_t)(len - 1));
			put(out, k->data.p + off, len);
			fds -= nf;
			off += len;
		}
	}
}

/* Append the captured bytes alone (no fds). */
static void raw(struct buf *out, const struct capture *cap)
{
	unsigned i;

	for (i = 0; i < cap->n; i++)
		put(out, cap->c[i].data.p, cap->c[i].data.n);
}

static void free_capture(struct capture *cap)
{
	unsigned i;

	for (i = 0; i < cap->n; i++) {
		free(cap->c[i].data.p);
		memset(&cap->c[i], 0, sizeof(cap->c[i]));
	}
	cap->n = 0;
}

static const char *outdir;

static void write_seed(const char *target, const char *name,
		       const struct buf *b)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", outdir, target);
	mkdir(path, 0755);
	snprintf(path, sizeof(path), "%s/%s/%s", outdir, target, name);
	f = fopen(path, "wbe");
	if (!f || fwrite(b->p, 1, b->n, f) != b->n || fclose(f))
		die(path);
}

/* A RAM record the way the RAM helpers make one, without them. */
static void put_ram(cprxfer_state *st, const char *name, int fd, uint64_t size,
		    const char *path)
{
	struct cx_entry *x;

	if (cx_state_append(st, name, strlen(name), CPRXFER_TYPE_RAM, &x))
		die("append");
	x->v.ram.fd = fd;
	x->v.ram.size = size;
	x->v.ram.flags = 0;
	x->v.ram.path = path ? strdup(path) : NULL;
	x->owns_fd = false;
}

/* A stream built frame by frame: for what the encoder never writes. */
static void crafted(struct buf *out, uint8_t rtype, uint8_t rflags)
{
	struct buf s = { 0 };
	uint8_t h[CX_HDR], p[CX_END_LEN], r[CX_REC_HDR + 4 + 8];
	uint64_t total = 2 * CX_HDR + CX_BEGIN_LEN + CX_END_LEN +
			 2 * (CX_HDR + sizeof(r));

	cx_frame_put(h, CX_F_BEGIN, 0, CX_BEGIN_LEN);
	put(&s, h, sizeof(h));
	cx_put64(p, 2);
	cx_put64(p + 8, 0);
	cx_put64(p + 16, total);
	put(&s, p, CX_BEGIN_LEN);
	/* a record of the given type, then an ordinary u64 */
	cx_frame_put(h, CX_F_RECORD, 0, sizeof(r));
	put(&s, h, sizeof(h));
	r[0] = rtype;
	r[1] = rflags;
	r[2] = 4;
	r[3] = 0;
	memcpy(r + 4, "next", 4);
	cx_put64(r + 8, 42);
	put(&s, r, sizeof(r));
	cx_frame_put(h, CX_F_RECORD, 0, sizeof(r));
	put(&s, h, sizeof(h));
	r[0] = CPRXFER_TYPE_U64;
	r[1] = 0;
	memcpy(r + 4, "kept", 4);
	put(&s, r, sizeof(r));
	cx_frame_put(h, CX_F_END, 0, CX_END_LEN);
	put(&s, h, sizeof(h));
	/* END counts every record, a skipped optional one too */
	cx_put64(p, 2);
	cx_put64(p + 8, 0);
	put(&s, p, 16);
	cx_put32(p + 16, cx_crc32c(0, s.p, s.n));
	cx_put32(p + 20, 0);
	put(&s, p + 16, 8);
	put(out, s.p, s.n);
	free(s.p);
}

/* Handshake frames as a peer would send them. */
static void hello(struct buf *b, const char *tag)
{
	uint8_t p[CX_HDR + CX_HELLO_LEN];
	size_t n = strlen(tag);

	cx_frame_put(p, CX_F_HELLO, 0, CX_HELLO_LEN + n);
	cx_put32(p + CX_HDR, CX_FEATURES);
	cx_put32(p + CX_HDR + 4, (uint32_t)getpid());
	cx_put32(p + CX_HDR + 8, (uint32_t)geteuid());
	cx_put16(p + CX_HDR + 12, (uint16_t)n);
	cx_put16(p + CX_HDR + 14, 0);
	put(b, p, sizeof(p));
	put(b, tag, n);
}

static void ack(struct buf *b, int phase, int status, const char *reason)
{
	uint8_t p[CX_HDR + CX_ACK_LEN];
	size_t n = reason ? strlen(reason) : 0;

	cx_frame_put(p, CX_F_ACK, 0, CX_ACK_LEN + n);
	cx_put32(p + CX_HDR, (uint32_t)status);
	cx_put16(p + CX_HDR + 4, (uint16_t)phase);
	cx_put16(p + CX_HDR + 6, (uint16_t)n);
	put(b, p, sizeof(p));
	put(b, reason, n);
}

enum {
	S_EMPTY,
	S_U64,
	S_I64,
	S_BLOB,
	S_BLOB0,
	S_STR,
	S_FD,
	S_RAM_FD,
	S_RAM_PATH,
	S_MIXED,
	S_MANY_FDS,
	S_BIG_BLOB,
	S_FD_ARRAY,
	S_FD_ARRAY_EMPTY,
	S_FD_ARRAY_MIXED,
	S_COUNT
};

static const char *const names[S_COUNT] = {
	"empty",    "u64",     "i64",	    "blob",	      "blob-empty",
	"str",	    "fd",      "ram-memfd", "ram-path",	      "mixed",
	"many-fds", "blob-4k", "fd-array",  "fd-array-empty", "fd-array-mixed",
};

/* Build seed state k; fds[] receives the fds to close afterwards. */
static cprxfer_state *build(int k, int *fds, unsigned *nfds, int *memfds)
{
	cprxfer_state *st = cprxfer_state_new();
	uint8_t blob[4096];
	unsigned i;
	int rc = 0;

	*nfds = 0;
	*memfds = 0;
	for (i = 0; i < sizeof(blob); i++)
		blob[i] = (uint8_t)(i * 7);
	if (!st)
		die("state");
	switch (k) {
	case S_EMPTY:
		break;
	case S_U64:
		rc = cprxfer_put_u64(st, "vcpu0.rip", 0xfff0);
		break;
	case S_I64:
		rc = cprxfer_put_i64(st, "clock.delta", -123456789);
		break;
	case S_BLOB:
		rc = cprxfer_put_blob(st, "vcpu0.regs", blob, 144);
		break;
	case S_BLOB0:
		rc = cprxfer_put_blob(st, "empty", blob, 0);
		break;
	case S_STR:
		rc = cprxfer_put_str(st, "serial.path", "/dev/ttyS0");
		break;
	case S_FD:
		fds[(*nfds)++] = eventfd(0, EFD_CLOEXEC);
		rc = cprxfer_put_fd(st, "irqfd", fds[0]);
		break;
	case S_RAM_FD:
		fds[(*nfds)++] = memfd_create("seed", MFD_CLOEXEC);
		if (ftruncate(fds[0], 4096) < 0)
			die("ftruncate");
		put_ram(st, "ram0", fds[0], 4096, NULL);
		*memfds = 1;
		break;
	case S_RAM_PATH:
		put_ram(st, "ram0", -1, 4096, "/dev/shm/cprxfer-ram0");
		break;
	case S_MIXED:
		fds[(*nfds)++] = eventfd(0, EFD_CLOEXEC);
		fds[(*nfds)++] = eventfd(0, EFD_CLOEXEC);
		rc = cprxfer_put_u64(st, "version", 3);
		rc |= cprxfer_put_fd(st, "kvm", fds[0]);
		rc |= cprxfer_put_i64(st, "tsc.offset", -5);
		rc |= cprxfer_put_str(st, "name", "guest");
		rc |= cprxfer_put_blob(st, "vcpu0.sregs", blob, 64);
		rc |= cprxfer_put_fd(st, "vm", fds[1]);
		put_ram(st, "ram.path", -1, 8192, "/dev/shm/ram");
		break;
	case S_MANY_FDS:
		for (i = 0; i < 10; i++) {
			char name[16];

			fds[i] = eventfd(0, EFD_CLOEXEC);
			snprintf(name, sizeof(name), "fd%u", i);
			rc |= cprxfer_put_fd(st, name, fds[i]);
		}
		*nfds = 10;
		break;
	case S_BIG_BLOB:
		rc = cprxfer_put_blob(st, "ram.dirty", blob, sizeof(blob));
		break;
	case S_FD_ARRAY:
		for (i = 0; i < 5; i++)
			fds[i] = eventfd(0, EFD_CLOEXEC);
		*nfds = 5;
		rc = cprxfer_put_fds(st, "clients", fds, 5);
		break;
	case S_FD_ARRAY_EMPTY:
		rc = cprxfer_put_fds(st, "clients", NULL, 0);
		rc |= cprxfer_put_u64(st, "count", 0);
		break;
	case S_FD_ARRAY_MIXED:
		for (i = 0; i < 6; i++)
			fds[i] = eventfd(0, EFD_CLOEXEC);
		*nfds = 6;
		rc = cprxfer_put_fd(st, "vm", fds[0]);
		rc |= cprxfer_put_fds(st, "queues", fds + 1, 3);
		rc |= cprxfer_put_u64(st, "nqueues", 3);
		rc |= cprxfer_put_fd(st, "tap", fds[4]);
		rc |= cprxfer_put_fds(st, "irqfds", fds + 5, 1);
		break;
	}
	if (rc)
		die("put");
	return st;
}

static void stream_seeds(struct buf *two_rounds_raw)
{
	struct capture cap = { 0 };
	struct buf both = { 0 };
	int k;

	for (k = 0; k < S_COUNT; k++) {
		int fds[16];
		unsigned nfds, i;
		struct buf b = { 0 }, r = { 0 };
		cprxfer_state *st = build(k, fds, &nfds, &cap.memfds);

		capture(st, &cap);
		segments(&b, &cap);
		write_seed("stream", names[k], &b);
		if (k == S_FD || k == S_U64)
			segments(&both, &cap);
		if (!nfds) {
			/* fd-less streams also seed the handshake */
			struct buf h = { 0 };

			raw(&r, &cap);
			put8(&h, 0); /* incoming role */
			hello(&h, "");
			ack(&h, CX_ACK_HELLO, 0, NULL);
			put(&h, r.p, r.n);
			write_seed("handshake", names[k], &h);
			if (k == S_BLOB)
				put(two_rounds_raw, r.p, r.n);
			free(h.p);
		}
		free(b.p);
		free(r.p);
		free_capture(&cap);
		cprxfer_state_free(st);
		for (i = 0; i < nfds; i++)
			close(fds[i]);
	}
	/* two rounds back to back, as in a prepare + final handoff */
	write_seed("stream", "two-rounds", &both);
	free(both.p);
	{
		struct buf b = { 0 }, s = { 0 };

		crafted(&s, 0x7f, 0);
		put8(&b, 0xff);
		put8(&b, (uint8_t)(s.n - 1));
		put(&b, s.p, s.n);
		write_seed("stream", "unknown-optional", &b);
		b.n = s.n = 0;
		crafted(&s, 0x7f, CX_REC_CRITICAL);
		put8(&b, 0xff);
		put8(&b, (uint8_t)(s.n - 1));
		put(&b, s.p, s.n);
		write_seed("stream", "unknown-critical", &b);
		free(b.p);
		free(s.p);
	}
}

static void handshake_seeds(const struct buf *stream)
{
	struct buf b = { 0 };

	/* incoming, tag required, two rounds */
	put8(&b, 2);
	hello(&b, "fuzz/1");
	ack(&b, CX_ACK_HELLO, 0, NULL);
	put(&b, stream->p, stream->n);
	put(&b, stream->p, stream->n);
	write_seed("handshake", "incoming-tag-two-rounds", &b);
	/* the peer refuses our HELLO */
	b.n = 0;
	put8(&b, 0);
	hello(&b, "other/2");
	ack(&b, CX_ACK_HELLO, -EBADE, "application tag differs");
	write_seed("handshake", "refused", &b);
	/* outgoing: the peer accepts the stream */
	b.n = 0;
	put8(&b, 1);
	hello(&b, "");
	ack(&b, CX_ACK_HELLO, 0, NULL);
	ack(&b, CX_ACK_USER, 0, NULL);
	write_seed("handshake", "outgoing-accepted", &b);
	/* outgoing: the peer refuses after loading */
	b.n = 0;
	put8(&b, 3);
	hello(&b, "fuzz/1");
	ack(&b, CX_ACK_HELLO, 0, NULL);
	ack(&b, CX_ACK_USER, -EINVAL, "device model mismatch");
	write_seed("handshake", "outgoing-refused", &b);
	/* outgoing: the peer rejects the stream itself */
	b.n = 0;
	put8(&b, 1);
	hello(&b, "");
	ack(&b, CX_ACK_HELLO, 0, NULL);
	ack(&b, CX_ACK_LOAD, -EBADMSG, "checksum mismatch");
	write_seed("handshake", "outgoing-load-failed", &b);
	free(b.p);
}

#ifdef CX_HAVE_FILE
static void file_seeds(void)
{
	char dir[] = "/tmp/cprxfer-gen-XXXXXX", path[4096];
	int k;

	if (!mkdtemp(dir))
		die("mkdtemp");
	for (k = 0; k < S_COUNT; k++) {
		int fds[16], memfds;
		unsigned nfds, i;
		cprxfer_state *st = build(k, fds, &nfds, &memfds);
		struct buf b = { 0 };
		uint8_t tmp[65536];
		ssize_t r;
		int fd;

		snprintf(path, sizeof(path), "%s/%s", dir, names[k]);
		if (cprxfer_save_file(st, path) == 0) {
			fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				die(path);
			while ((r = read(fd, tmp, sizeof(tmp))) > 0)
				put(&b, tmp, (size_t)r);
			close(fd);
			unlink(path);
			write_seed("load-file", names[k], &b);
		}
		free(b.p);
		cprxfer_state_free(st);
		for (i = 0; i < nfds; i++)
			close(fds[i]);
	}
	rmdir(dir);
}
#endif

int main(int argc, char **argv)
{
	struct buf blob_stream = { 0 };

	if (argc != 2) {
		fprintf(stderr, "usage: %s OUTDIR\n", argv[0]);
		return 2;
	}
	outdir = argv[1];
	mkdir(outdir, 0755);
	stream_seeds(&blob_stream);
	handshake_seeds(&blob_stream);
#ifdef CX_HAVE_FILE
	file_seeds();
#endif
	free(blob_stream.p);
	return 0;
}
