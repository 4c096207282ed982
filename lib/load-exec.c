/* SPDX-License-Identifier: MIT */
/*
 * cprxfer_load_exec: the new image finds the state that cprxfer_exec left
 * it, adopts the fds the state names and, if the old side waits for a
 * confirmation, keeps the confirmation socket for cprxfer_exec_commit.
 *
 * Once the variable has been read, no failure leaves an fd behind that
 * crosses a later exec: every fd the stream names is made close-on-exec
 * before anything else is judged, and closed if the load fails (it was
 * handed to this process, as the loaded state would have owned it). The
 * memfd is recognised by what it is, not by its name in /proc: a
 * regular file with no link, carrying exactly the seals cprxfer_exec
 * puts on it, and the stream magic. /proc, where mounted, is one more
 * check of its name.
 */
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "exec.h"
#include "opts.h"
#include "stream.h"
#include "wire.h"

/* The confirmation socket of the last successful load, until commit. */
static int pending_confirm = -1;

/* An fd the stream names, as it was before the decoder saw it. */
struct named {
	int fd;
	bool open;
	dev_t dev;
	ino_t ino;
};

typedef struct scan cx_scan;

struct scan {
	bool tagged; /* a HELLO frame came first (cprxfer_exec_opts) */
	char tag[CX_TAG_MAX + 1];
	off_t stream; /* where the state stream starts */
	struct named *v;
	size_t n, cap;
};

/* The scan itself lives on the stack: free what it collected. */
static void scan_free(struct scan *s)
{
	free(s->v);
}
CX_DEFINE_FREE(cx_scan, scan_free)

static int parse_var(const char *s, int *memfd, int *confirm)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || v < 0 || v > INT_MAX)
		return -1;
	*memfd = (int)v;
	*confirm = -1;
	if (*end == 0)
		return 0;
	if (*end != ',')
		return -1;
	s = end + 1;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0 || v > INT_MAX)
		return -1;
	*confirm = (int)v;
	return 0;
}

/* Is fd the sealed state memfd that cprxfer_exec made? */
static int recognise(int fd, const struct stat *sb)
{
	char link[64], target[PATH_MAX];
	uint8_t magic[4];
	ssize_t n;
	int seals;

	if (!S_ISREG(sb->st_mode) || sb->st_nlink != 0)
		return cx_err(
			-EBADF,
			"fd %d is not a memfd (not a regular file without a link)",
			fd);
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0)
		return cx_err(-EBADF, "fd %d is not a memfd: F_GET_SEALS: %s",
			      fd, strerror(errno));
	if (seals != CX_EXEC_SEALS)
		return cx_err(
			-EPERM,
			"fd %d: seals 0x%x, not the 0x%x of a state memfd: it may have been changed",
			fd, seals, CX_EXEC_SEALS);
	if (pread(fd, magic, 4, 0) != 4 || cx_get32(magic) != CX_MAGIC)
		return cx_err(-EBADMSG, "fd %d: not a cprxfer state stream",
			      fd);
	/* Where /proc is mounted: its name too. Without it: enough. */
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return 0;
	target[n] = 0;
	if (strncmp(target, "/memfd:" CX_EXEC_MEMFD " ",
		    sizeof("/memfd:" CX_EXEC_MEMFD)))
		return cx_err(-EBADF, "fd %d (%s) is not a state memfd", fd,
			      target);
	return 0;
}

/* Reads of the memfd through one buffer: a pread per 64 KiB, not per frame. */
struct rd {
	int fd;
	off_t at;
	size_t len;
	uint8_t buf[64 * 1024];
};

static bool rd_get(struct rd *r, off_t off, void *dst, size_t n)
{
	if (off < r->at || (uint64_t)(off - r->at) + n > r->len) {
		ssize_t k = pread(r->fd, r->buf, sizeof(r->buf), off);

		if (k < 0 || (size_t)k < n)
			return false;
		r->at = off;
		r->len = (size_t)k;
	}
	memcpy(dst, r->buf + (off - r->at), n);
	return true;
}

static int scan_add(struct scan *s, int fd)
{
	struct named *v;

	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;

		v = realloc(s->v, cap * sizeof(*v));
		if (!v)
			return cx_err(-ENOMEM, "out of memory");
		s->v = v;
		s->cap = cap;
	}
	s->v[s->n++] = (struct named){ .fd = fd };
	return 0;
}

/* The fd numbers of one inline FDS frame. */
static int scan_fds(struct scan *s, struct rd *r, off_t off, uint64_t len)
{
	uint8_t b[CX_FDS_HDR + 4 * 64];
	uint32_t count, i, k;
	int rc;

	if (len < CX_FDS_HDR || !rd_get(r, off, b, CX_FDS_HDR))
		return cx_err(-EBADMSG, "malformed fd batch");
	count = cx_get32(b);
	if (count > CX_FDS_BATCH || len != CX_FDS_HDR + 4ull * count)
		return cx_err(-EBADMSG, "malformed fd batch");
	off += CX_FDS_HDR;
	for (i = 0; i < count; i += k) {
		k = count - i < 64 ? count - i : 64;
		if (!rd_get(r, off, b, 4 * k))
			return cx_err(-EBADMSG, "truncated fd batch");
		off += 4 * k;
		for (uint32_t j = 0; j < k; j++) {
			uint32_t v = cx_get32(b + 4 * j) & ~CX_FD_KEEP_OPEN;

			if (v > INT_MAX)
				continue;
			rc = scan_add(s, (int)v);
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

static int named_cmp(const void *a, const void *b)
{
	const struct named *x = a, *y = b;

	return (x->fd > y->fd) - (x->fd < y->fd);
}

/* Each fd once (a state may name one twice). */
static void scan_unique(struct scan *s)
{
	size_t i, k = 0;

	if (!s->n)
		return;
	qsort(s->v, s->n, sizeof(*s->v), named_cmp);
	for (i = 1; i < s->n; i++)
		if (s->v[i].fd != s->v[k].fd)
			s->v[++k] = s->v[i];
	s->n = k + 1;
}

/*
 * Walk the frames: the tag, where the stream starts, and every fd the
 * FDS batches name (all of them, before the decoder trusts any).
 */
static int scan(struct scan *s, int fd, off_t size)
{
	uint8_t h[CX_HDR], p[CX_HELLO_LEN];
	cx_autofree struct rd *r = malloc(sizeof(*r));
	struct cx_frame f;
	off_t off = 0;
	int rc;

	if (!r)
		return cx_err(-ENOMEM, "out of memory");
	r->fd = fd;
	r->at = 0;
	r->len = 0;
	if (!rd_get(r, 0, h, CX_HDR))
		return cx_err(-EBADMSG, "state memfd too short");
	rc = cx_frame_parse(h, &f);
	if (rc < 0)
		return rc;
	if (f.type == CX_F_HELLO) {
		size_t tlen;

		if (f.len < CX_HELLO_LEN || f.len > CX_HELLO_LEN + CX_TAG_MAX ||
		    !rd_get(r, CX_HDR, p, CX_HELLO_LEN))
			return cx_err(-EBADMSG, "malformed HELLO frame");
		tlen = cx_get16(p + 12);
		if (tlen != f.len - CX_HELLO_LEN ||
		    !rd_get(r, CX_HDR + CX_HELLO_LEN, s->tag, tlen))
			return cx_err(-EBADMSG, "malformed HELLO frame");
		s->tag[tlen] = 0;
		if (strlen(s->tag) != tlen)
			return cx_err(-EBADMSG, "tag contains a NUL byte");
		s->tagged = true;
		off = CX_HDR + (off_t)f.len;
	}
	s->stream = off;
	while (off + CX_HDR <= size) {
		if (!rd_get(r, off, h, CX_HDR))
			return cx_err(-EBADMSG, "unreadable frame");
		rc = cx_frame_parse(h, &f);
		if (rc < 0)
			return rc;
		if (f.len > (uint64_t)(size - off - CX_HDR))
			return cx_err(-EBADMSG, "frame runs past the memfd");
		if (f.type == CX_F_FDS && (f.flags & CX_FDS_INLINE)) {
			rc = scan_fds(s, r, off + CX_HDR, f.len);
			if (rc < 0)
				return rc;
		}
		if (f.type == CX_F_END)
			break;
		off += CX_HDR + (off_t)f.len;
	}
	return 0;
}

/* Nothing the stream names crosses a later exec, whatever happens next. */
static void named_cloexec(struct scan *s)
{
	struct stat sb;
	size_t i;

	for (i = 0; i < s->n; i++) {
		int fl = fcntl(s->v[i].fd, F_GETFD);

		if (fl < 0 || fstat(s->v[i].fd, &sb) < 0)
			continue;
		if (!(fl & FD_CLOEXEC))
			fcntl(s->v[i].fd, F_SETFD, fl | FD_CLOEXEC);
		s->v[i].open = true;
		s->v[i].dev = sb.st_dev;
		s->v[i].ino = sb.st_ino;
	}
}

/*
 * The load failed: close what the decoder left open of what was handed
 * to us (same number, same file as before the decode).
 */
static void named_close(const struct scan *s)
{
	struct stat sb;
	size_t i;

	for (i = 0; i < s->n; i++) {
		const struct named *x = &s->v[i];

		if (x->open && fstat(x->fd, &sb) == 0 && sb.st_dev == x->dev &&
		    sb.st_ino == x->ino)
			close(x->fd);
	}
}

static bool is_socket(int fd)
{
	struct stat sb;

	return fstat(fd, &sb) == 0 && S_ISSOCK(sb.st_mode);
}

static int load(int memfd, int confirm, const struct cprxfer_opts *o,
		cprxfer_state **out)
{
	cx_auto(cx_scan) *s = NULL;
	struct scan sc = { .stream = 0 };
	struct stat sb;
	struct cx_io io;
	int rc, rs, fl;

	fl = fcntl(memfd, F_GETFD);
	if (fl < 0)
		return cx_err(-EBADF, CX_EXEC_ENV "=%d: fd is not open", memfd);
	if (fstat(memfd, &sb) < 0)
		return cx_err(-errno, "fstat of fd %d: %s", memfd,
			      strerror(errno));
	s = &sc;
	rc = recognise(memfd, &sb);
	/* Not a memfd at all: not ours to touch. */
	if (rc == -EBADF || !S_ISREG(sb.st_mode))
		return rc;
	/* From here on nothing the memfd names crosses a later exec. */
	fcntl(memfd, F_SETFD, fl | FD_CLOEXEC);
	rs = scan(s, memfd, sb.st_size);
	scan_unique(s);
	named_cloexec(s);
	/* A memfd we do not trust (unsealed, no stream magic): it and what
	 * it names stay open, close-on-exec. */
	if (rc < 0)
		return rc;
	/* From here on a failure closes what the memfd names. */
	rc = rs;
	if (rc == 0 && s->tagged && o->tag[0] && strcmp(o->tag, s->tag))
		rc = cx_err(
			-EBADE,
			"the old image's application tag '%s' differs from ours '%s'",
			s->tag, o->tag);
	if (rc == 0 && lseek(memfd, s->stream, SEEK_SET) < 0)
		rc = cx_err(-errno, "lseek: %s", strerror(errno));
	if (rc == 0)
		rc = cx_io_init(&io, memfd, false);
	if (rc == 0) {
		rc = cx_decode(&io, o, CX_MODE_EXEC, out);
		cx_io_fini(&io);
	}
	if (rc < 0) {
		named_close(s);
		close(memfd);
		return rc;
	}
	close(memfd);
	if (confirm >= 0) {
		int old = __atomic_exchange_n(&pending_confirm, confirm,
					      __ATOMIC_SEQ_CST);

		cx_close(old);
	}
	return 0;
}

CX_EXPORT int cprxfer_load_exec_opts(const cprxfer_opts *o, cprxfer_state **out)
{
	struct cprxfer_opts opts;
	char var[64];
	const char *s;
	int memfd, confirm = -1, rc;

	if (!out)
		return cx_err(-EINVAL, "cprxfer_load_exec: NULL output");
	s = getenv(CX_EXEC_ENV);
	if (!s)
		return cx_err(
			-ENOENT,
			"cprxfer_load_exec: no " CX_EXEC_ENV
			" in the environment: not started by cprxfer_exec (or already loaded)");
	snprintf(var, sizeof(var), "%s", s);
	/* Whatever it holds, it is not for our children. */
	unsetenv(CX_EXEC_ENV);
	if (parse_var(var, &memfd, &confirm) < 0)
		return cx_err(
			-EBADMSG,
			"cprxfer_load_exec: " CX_EXEC_ENV
			"='%s' is not an fd number (and a confirmation fd)",
			var);
	/* The confirmation socket: ours from now on; closed on failure,
	 * which tells a waiting old side that we refused. */
	if (confirm >= 0) {
		if (!is_socket(confirm))
			confirm = -1;
		else
			fcntl(confirm, F_SETFD, FD_CLOEXEC);
	}
	cx_opts_copy(&opts, o);
	rc = load(memfd, confirm, &opts, out);
	if (rc < 0) {
		cx_close(confirm);
		return cx_err_prefix(rc, "cprxfer_load_exec");
	}
	return 0;
}

CX_EXPORT int cprxfer_load_exec(cprxfer_state **out)
{
	return cprxfer_load_exec_opts(NULL, out);
}

CX_EXPORT int cprxfer_exec_commit(void)
{
	int fd = __atomic_exchange_n(&pending_confirm, -1, __ATOMIC_SEQ_CST);
	cx_autoclose int c = fd;
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char b = CX_CONFIRM_COMMIT;
	ssize_t r;
	int n;

	if (c < 0)
		return 0;
	do
		r = send(c, &b, 1, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return 0; /* the helper is gone: nothing can fall back */
	/* It answers at once, or has decided on the fallback and kills us. */
	do
		n = poll(&p, 1, CPRXFER_DEFAULT_TIMEOUT_MS);
	while (n < 0 && errno == EINTR);
	if (n == 0)
		return cx_err(
			-ETIMEDOUT,
			"cprxfer_exec_commit: no answer from the old side's helper in %d ms: a fallback may still run",
			CPRXFER_DEFAULT_TIMEOUT_MS);
	do
		r = recv(c, &b, 1, 0);
	while (r < 0 && errno == EINTR);
	if (r == 1 && b == CX_CONFIRM_OK)
		return 1;
	return 0; /* the helper died without answering: no fallback */
}
