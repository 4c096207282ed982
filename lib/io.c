/* SPDX-License-Identifier: MIT */
/*
 * Buffered, deadline-bounded reads and writes on a socket or a file.
 *
 * Sockets are used non-blocking (MSG_DONTWAIT) and every wait is a
 * poll() bounded by the stream's deadline, so a peer that hangs costs at
 * most the timeout and a peer that dies is noticed at once (POLLHUP, end
 * of stream). fds arrive with MSG_CMSG_CLOEXEC and queue up in order.
 */
#include <limits.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "io.h"
#include "successor.h"
#include "wire.h"

#ifndef SCM_PIDFD
#define SCM_PIDFD 0x04
#endif

#define CX_RBUF (64 * 1024)
#define CX_WBUF (64 * 1024)
/*
 * Room for a full fd batch and for what a caller's SO_PASSCRED,
 * SO_PASSPIDFD or SO_PASSSEC on an adopted socket adds to each message,
 * so that those never truncate the fds (MSG_CTRUNC).
 */
#define CX_CMSG_SPACE                                                       \
	(CMSG_SPACE(CX_FDS_BATCH * sizeof(int)) + CMSG_SPACE(sizeof(int)) + \
	 CMSG_SPACE(sizeof(struct ucred)) + CMSG_SPACE(256))
/* A drained fd queue larger than this many entries is freed. */
#define CX_FDQ_KEEP 1024
/* After end of stream, how long a watched process gets to be seen dead. */
#define CX_DEATH_GRACE_MS 1000

int64_t cx_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int cx_io_init(struct cx_io *io, int fd, bool sock)
{
	memset(io, 0, sizeof(*io));
	io->fd = fd;
	io->sock = sock;
	io->deadline = INT64_MAX;
	io->max_fds = UINT64_MAX;
	io->accept_fds = true;
	io->watch_fd = -1;
	io->rbuf = malloc(CX_RBUF);
	io->wbuf = malloc(CX_WBUF);
	if (!io->rbuf || !io->wbuf) {
		free(io->rbuf);
		free(io->wbuf);
		return cx_err(-ENOMEM, "stream buffers: out of memory");
	}
	io->rcap = CX_RBUF;
	io->wcap = CX_WBUF;
	return 0;
}

/* The queue is empty: start again at 0, and give back a large array. */
static void fdq_reset(struct cx_io *io)
{
	io->fdq_len = io->fdq_pos = 0;
	if (io->fdq_cap > CX_FDQ_KEEP) {
		free(io->fdq);
		io->fdq = NULL;
		io->fdq_cap = 0;
	}
}

void cx_io_drop_fds(struct cx_io *io)
{
	while (io->fdq_pos < io->fdq_len)
		cx_close(io->fdq[io->fdq_pos++]);
	fdq_reset(io);
}

void cx_io_fini(struct cx_io *io)
{
	cx_io_drop_fds(io);
	cx_io_drop_parks(io);
	free(io->fdq);
	free(io->rbuf);
	free(io->wbuf);
	memset(io, 0, sizeof(*io));
	io->fd = -1;
	io->watch_fd = -1;
}

void cx_io_deadline(struct cx_io *io, int timeout_ms)
{
	io->deadline = timeout_ms < 0
			       ? INT64_MAX
			       : cx_now_ns() + (int64_t)timeout_ms * 1000000;
}

/*
 * poll() for events until the deadline; 0, -ETIMEDOUT, -ECHILD (the
 * watched process exited and the socket has nothing to read) or -errno.
 */
static int io_wait(struct cx_io *io, short events, short *revents)
{
	struct pollfd p[2] = {
		{ .fd = io->fd, .events = events },
		{ .fd = io->watch_fd, .events = POLLIN },
	};
	nfds_t np = io->watch_fd >= 0 ? 2 : 1;

	for (;;) {
		int ms = -1, n;

		if (io->deadline != INT64_MAX) {
			int64_t left = io->deadline - cx_now_ns();

			/* Past the deadline, still look once (timeout 0). */
			if (left < 0)
				left = 0;
			/* Round up: never wake a hair before the deadline. */
			left = (left + 999999) / 1000000;
			ms = left > INT_MAX ? INT_MAX : (int)left;
		}
		n = poll(p, np, ms);
		if (n > 0) {
			if (np == 2 && p[1].revents && !(p[0].revents & POLLIN))
				return -ECHILD;
			if (!p[0].revents)
				continue;
			*revents = p[0].revents;
			return 0;
		}
		if (n == 0 && (ms == 0 || cx_now_ns() >= io->deadline))
			return -ETIMEDOUT;
		if (n < 0 && errno != EINTR)
			return -errno;
	}
}

#ifdef CX_TEST_HOOKS
void (*cx_io_fault_hook)(int fd, int op, size_t *len);
#endif

static int timeout_err(const char *what)
{
	return cx_err(-ETIMEDOUT, "%s: timed out waiting for the peer", what);
}

/* A failed io_wait() as an error with its reason. */
static int wait_err(struct cx_io *io, int rc, const char *what)
{
	if (rc == -ETIMEDOUT)
		return timeout_err(what);
	if (rc == -ECHILD)
		return cx_child_err(io->watch_pid, io->watch_fd);
	return cx_err(rc, "poll: %s", strerror(-rc));
}

/*
 * The connection ended. If a watched process is behind it, the socket
 * closes a moment before its pidfd says it exited: give it that moment,
 * so that its death is reported as such (-ECHILD) and not as a plain
 * close.
 */
static int eof_err(struct cx_io *io, int rc, const char *msg)
{
	if (io->watch_fd >= 0) {
		struct pollfd p = { .fd = io->watch_fd, .events = POLLIN };
		int64_t left = io->deadline == INT64_MAX
				       ? CX_DEATH_GRACE_MS
				       : (io->deadline - cx_now_ns()) / 1000000;

		if (left > CX_DEATH_GRACE_MS)
			left = CX_DEATH_GRACE_MS;
		if (left < 50)
			left = 50;
		/* A non-blocking step only looks. */
		if (io->nowait)
			left = 0;
		while (poll(&p, 1, (int)left) < 0 && errno == EINTR)
			;
		if (p.revents)
			return cx_child_err(io->watch_pid, io->watch_fd);
	}
	return cx_err(rc, "%s", msg);
}

static int fdq_push(struct cx_io *io, const int *fds, size_t n)
{
	size_t i;

	if (io->fds_in + n > io->max_fds) {
		uint64_t had = io->fds_in;

		for (i = 0; i < n; i++)
			cx_close(fds[i]);
		return cx_err(
			-EMFILE,
			"stream brings more than %llu fds (%llu received, %zu more arrived)",
			(unsigned long long)io->max_fds,
			(unsigned long long)had, n);
	}
	if (io->fdq_pos && io->fdq_len + n > io->fdq_cap) {
		/* Slide what is pending to the front before growing. */
		memmove(io->fdq, io->fdq + io->fdq_pos,
			(io->fdq_len - io->fdq_pos) * sizeof(int));
		io->fdq_len -= io->fdq_pos;
		io->fdq_pos = 0;
	}
	if (io->fdq_len + n > io->fdq_cap) {
		size_t cap = io->fdq_cap ? io->fdq_cap : 256;
		int *q;

		while (cap < io->fdq_len + n)
			cap *= 2;
		q = realloc(io->fdq, cap * sizeof(*q));
		if (!q) {
			for (i = 0; i < n; i++)
				cx_close(fds[i]);
			return cx_err(-ENOMEM, "fd queue: out of memory");
		}
		io->fdq = q;
		io->fdq_cap = cap;
	}
	memcpy(io->fdq + io->fdq_len, fds, n * sizeof(int));
	io->fdq_len += n;
	io->fds_in += n;
	return 0;
}

static void close_all(const int *fds, size_t n)
{
	while (n--)
		cx_close(fds[n]);
}

/*
 * Go through every control message: every fd the kernel installed is
 * queued or closed before this returns, never left open unaccounted.
 * Expected SCM_RIGHTS fds are queued; SCM_RIGHTS while no fds are
 * expected (handshake, acks, decisions) and SCM_PIDFD (a caller's
 * SO_PASSPIDFD on an adopted socket) are closed. The other messages an
 * AF_UNIX socket can carry (SCM_CREDENTIALS, SCM_SECURITY) hold no fds.
 */
static int take_cmsgs(struct cx_io *io, struct msghdr *m)
{
	struct cmsghdr *c;
	int rc = 0;

	for (c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
		size_t n;
		int *fds;

		if (c->cmsg_level != SOL_SOCKET || c->cmsg_len < CMSG_LEN(0))
			continue;
		if (c->cmsg_type != SCM_RIGHTS && c->cmsg_type != SCM_PIDFD)
			continue;
		n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		fds = (int *)CMSG_DATA(c);
		if (c->cmsg_type == SCM_PIDFD || rc < 0 || !io->accept_fds) {
			close_all(fds, n);
			continue;
		}
		rc = fdq_push(io, fds, n);
	}
	if (rc == 0 && (m->msg_flags & MSG_CTRUNC))
		rc = cx_err(
			-EMFILE,
			"recvmsg: fds truncated (MSG_CTRUNC): the fd table is full or the peer sent too many");
	return rc;
}

/* One read of up to n bytes into dst; > 0 bytes, or -errno. */
static ssize_t io_read_some(struct cx_io *io, void *dst, size_t n)
{
	union {
		char buf[CX_CMSG_SPACE];
		struct cmsghdr align;
	} u;

	if (io->dry)
		return cx_err(-EAGAIN, "read: only what is buffered is read");
	for (;;) {
		struct iovec iov = { .iov_base = dst, .iov_len = n };
		struct msghdr m = {
			.msg_iov = &iov,
			.msg_iovlen = 1,
			.msg_control = u.buf,
			.msg_controllen = sizeof(u.buf),
		};
		ssize_t r;
		short rev = 0;
		int rc;

		cx_io_hook(io->fd, CX_HOOK_RECV, &iov.iov_len);
		if (io->sock)
			r = recvmsg(io->fd, &m,
				    MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		else
			r = read(io->fd, dst, iov.iov_len);
		if (r > 0) {
			size_t done = (size_t)r;

			cx_io_hook(io->fd, CX_HOOK_RECVD, &done);
		}
		if (r >= 0 && io->sock) {
			rc = take_cmsgs(io, &m);
			if (rc < 0)
				return rc;
		}
		if (r > 0)
			return r;
		if (r == 0) {
			if (!io->sock)
				return cx_err(-ENODATA,
					      "unexpected end of file");
			return eof_err(io, -ECONNRESET,
				       "peer closed the connection");
		}
		if (errno == EINTR)
			continue;
		if (errno == ECONNRESET || errno == EPIPE)
			return eof_err(io, -ECONNRESET,
				       "peer reset the connection");
		if (errno != EAGAIN)
			return cx_err(-errno, "recvmsg: %s", strerror(errno));
		if (io->nowait)
			return cx_err(-EAGAIN,
				      "read: nothing more to read yet");
		rc = io_wait(io, POLLIN, &rev);
		if (rc < 0)
			return wait_err(io, rc, "read");
	}
}

int cx_io_read(struct cx_io *io, void *dst, size_t n)
{
	uint8_t *d = dst;
	size_t have = cx_io_buffered(io);

	if (io->park_next < io->nparks &&
	    io->rpos + n > io->parks[io->park_next].at) {
		/* Decoding what is in: a value only partly read runs dry. */
		if (io->dry &&
		    io->parks[io->park_next].got < io->parks[io->park_next].len)
			return cx_err(-EAGAIN,
				      "read: only what is buffered is read");
		return cx_err(-EBADMSG,
			      "stream read across a value kept apart");
	}

	if (have >= n) {
		memcpy(d, io->rbuf + io->rpos, n);
		io->rpos += n;
		return 0;
	}
	memcpy(d, io->rbuf + io->rpos, have);
	d += have;
	n -= have;
	io->rpos = io->rlen = 0;
	while (n >= io->rcap / 2) {
		ssize_t r = io_read_some(io, d, n);

		if (r < 0)
			return (int)r;
		d += r;
		n -= (size_t)r;
	}
	while (io->rlen < n) {
		ssize_t r = io_read_some(io, io->rbuf + io->rlen,
					 io->rcap - io->rlen);

		if (r < 0)
			return (int)r;
		io->rlen += (size_t)r;
	}
	memcpy(d, io->rbuf, n);
	io->rpos = n;
	return 0;
}

int cx_io_fill(struct cx_io *io, size_t n)
{
	size_t have = cx_io_buffered(io);

	if (n > io->rcap)
		return cx_err(-EINVAL, "fill: %zu bytes exceed the buffer", n);
	if (have >= n)
		return 0;
	if (io->rpos + n > io->rcap) {
		memmove(io->rbuf, io->rbuf + io->rpos, have);
		io->rpos = 0;
		io->rlen = have;
	}
	while (io->rlen - io->rpos < n) {
		ssize_t r = io_read_some(io, io->rbuf + io->rlen,
					 io->rcap - io->rlen);

		if (r < 0)
			return (int)r;
		io->rlen += (size_t)r;
	}
	return 0;
}

int cx_io_wait_readable(struct cx_io *io)
{
	short rev = 0;
	int rc;

	if (cx_io_buffered(io))
		return 0;
	rc = io_wait(io, POLLIN, &rev);
	if (rc < 0)
		return wait_err(io, rc, "wait");
	return 0;
}

int cx_io_queue_fd(struct cx_io *io, int fd)
{
	return fdq_push(io, &fd, 1);
}

int cx_io_take_fd(struct cx_io *io)
{
	int fd;

	if (io->fdq_pos == io->fdq_len)
		return -1;
	fd = io->fdq[io->fdq_pos++];
	if (io->fdq_pos == io->fdq_len)
		fdq_reset(io);
	return fd;
}

/* Make room for need items of size in *p (capacity *cap). */
static int grow(void *p, size_t *cap, size_t need, size_t size)
{
	size_t c = *cap ? *cap : 16;
	void *q;

	if (need <= *cap)
		return 0;
	while (c < need)
		c *= 2;
	q = realloc(*(void **)p, c * size);
	if (!q)
		return cx_err(-ENOMEM, "save spool: out of memory");
	*(void **)p = q;
	*cap = c;
	return 0;
}

void cx_spool_free(struct cx_spool *sp)
{
	if (!sp)
		return;
	free(sp->buf);
	free(sp->fds);
	free(sp->seg);
	free(sp);
}

/*
 * Spool what a flush would send. Bytes from the write buffer are copied;
 * a large write from elsewhere (the state's own memory) is referenced.
 */
static int spool_add(struct cx_io *io, const uint8_t *src, size_t n,
		     const int *fds, size_t nfds)
{
	struct cx_spool *sp = io->spool;
	bool ext = src < io->wbuf || src >= io->wbuf + io->wcap;
	struct cx_seg *g;
	int rc;

	if (!n)
		return 0;
	rc = grow(&sp->seg, &sp->scap, sp->nseg + 1, sizeof(*sp->seg));
	if (rc == 0)
		rc = grow(&sp->fds, &sp->fcap, sp->nfds + nfds,
			  sizeof(*sp->fds));
	if (rc == 0 && !ext)
		rc = grow(&sp->buf, &sp->cap, sp->len + n, 1);
	if (rc < 0)
		return rc;
	g = &sp->seg[sp->nseg++];
	g->ext = ext ? src : NULL;
	g->off = sp->len;
	g->len = n;
	g->fd_at = sp->nfds;
	g->nfds = nfds;
	if (!ext) {
		memcpy(sp->buf + sp->len, src, n);
		sp->len += n;
	}
	if (nfds)
		memcpy(sp->fds + sp->nfds, fds, nfds * sizeof(int));
	sp->nfds += nfds;
	return 0;
}

/* Put fds in m's control buffer u (one SCM_RIGHTS message). */
static int attach_fds(struct msghdr *m, char *u, size_t usize, const int *fds,
		      size_t nfds)
{
	struct cmsghdr *c;

	memset(u, 0, usize);
	m->msg_control = u;
	m->msg_controllen = CMSG_SPACE(nfds * sizeof(int));
	c = CMSG_FIRSTHDR(m);
	if (!c) /* cannot be: msg_controllen holds one */
		return cx_err(-EINVAL, "sendmsg: no room for fds");
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
	memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	return 0;
}

int cx_spool_send(struct cx_io *io, struct cx_spool *sp, size_t budget,
		  size_t fd_budget)
{
	size_t sent = 0, fds_sent = 0;
	union {
		char buf[CX_CMSG_SPACE];
		struct cmsghdr align;
	} u;

	while (sp->cur < sp->nseg) {
		const struct cx_seg *g = &sp->seg[sp->cur];
		const uint8_t *base = g->ext ? g->ext : sp->buf + g->off;
		struct iovec iov = { .iov_base = (void *)(base + sp->done),
				     .iov_len = g->len - sp->done };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
		struct pollfd p = { .fd = io->fd, .events = POLLIN | POLLOUT };
		ssize_t r;
		int rc;

		if (sent >= budget || (fds_sent >= fd_budget && g->nfds))
			return -EAGAIN;
		if (!sp->done && g->nfds) {
			rc = attach_fds(&m, u.buf, sizeof(u.buf),
					sp->fds + g->fd_at, g->nfds);
			if (rc < 0)
				return rc;
		}
		cx_io_hook(io->fd, CX_HOOK_SEND, &iov.iov_len);
		r = sendmsg(io->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (r > 0) {
			size_t done = (size_t)r;

			cx_io_hook(io->fd, CX_HOOK_SENT, &done);
			io->out_bytes += (uint64_t)r;
			sent += (size_t)r;
			if (!sp->done)
				fds_sent += g->nfds;
			sp->done += (size_t)r;
			if (sp->done == g->len) {
				sp->cur++;
				sp->done = 0;
			}
			continue;
		}
		if (r == 0)
			return cx_err(-EIO, "write: no progress");
		if (errno == EINTR)
			continue;
		if (errno == EPIPE || errno == ECONNRESET)
			return eof_err(io, -ECONNRESET,
				       "peer closed the connection");
		if (errno == EBADF && g->nfds && !sp->done)
			return cx_err(
				-EBADF,
				"sendmsg: an fd of the batch is not open");
		if (errno != EAGAIN)
			return cx_err(-errno, "sendmsg: %s", strerror(errno));
		while (poll(&p, 1, 0) < 0 && errno == EINTR)
			;
		if ((p.revents & (POLLIN | POLLHUP)) &&
		    !(p.revents & POLLOUT)) {
			/* The peer spoke (a refusal) or left mid-stream. */
			io->peer_spoke = true;
			return -EREMOTEIO;
		}
		return -EAGAIN;
	}
	return 0;
}

/*
 * Read into buf (holding *len bytes, room for cap) until it holds need
 * bytes, never waiting and within *budget bytes: 0, -EAGAIN (nothing
 * more yet, or the budget spent) or the read's error.
 */
static int read_nowait(struct cx_io *io, uint8_t *buf, size_t *len, size_t need,
		       size_t cap, size_t *budget)
{
	int rc = 0;

	io->nowait = true;
	while (*len < need) {
		ssize_t r;

		if (!*budget) {
			rc = -EAGAIN;
			break;
		}
		r = io_read_some(io, buf + *len, cap - *len);
		if (r < 0) {
			rc = (int)r;
			break;
		}
		*len += (size_t)r;
		*budget -= *budget < (size_t)r ? *budget : (size_t)r;
	}
	io->nowait = false;
	return rc;
}

int cx_io_fill_nowait(struct cx_io *io, size_t n, size_t *budget)
{
	size_t have = cx_io_buffered(io), i;
	int rc = 0;

	if (have >= n)
		return 0;
	if (io->rpos + n > io->rcap) {
		/* The parks' places move with the bytes around them. */
		for (i = io->park_next; i < io->nparks; i++)
			io->parks[i].at -= io->rpos;
		memmove(io->rbuf, io->rbuf + io->rpos, have);
		io->rpos = 0;
		io->rlen = have;
	}
	if (n > io->rcap) {
		size_t cap = io->rcap;

		rc = grow(&io->rbuf, &cap, n, 1);
		if (rc < 0)
			return cx_err(
				-ENOMEM,
				"load: out of memory for a %zu-byte frame", n);
		io->rcap = cap;
	}
	return read_nowait(io, io->rbuf, &io->rlen, io->rpos + n, io->rcap,
			   budget);
}

int cx_io_park(struct cx_io *io, size_t at, size_t len)
{
	struct cx_park *k;
	size_t have = io->rlen > at ? io->rlen - at : 0;
	int rc;

	rc = grow(&io->parks, &io->cparks, io->nparks + 1, sizeof(*k));
	if (rc < 0)
		return rc;
	k = &io->parks[io->nparks];
	k->buf = malloc(len + 1);
	if (!k->buf)
		return cx_err(-ENOMEM, "load: out of memory for %zu bytes",
			      len);
	if (have > len) /* cannot be: the caller parks what is not in */
		have = len;
	memcpy(k->buf, io->rbuf + at, have);
	k->at = at;
	k->len = len;
	k->got = have;
	io->rlen = at;
	io->nparks++;
	return 0;
}

int cx_io_fill_park(struct cx_io *io, size_t *budget)
{
	struct cx_park *k = &io->parks[io->nparks - 1];

	return read_nowait(io, k->buf, &k->got, k->len, k->len, budget);
}

uint8_t *cx_io_unpark(struct cx_io *io, size_t len)
{
	struct cx_park *k;

	if (io->park_next == io->nparks)
		return NULL;
	k = &io->parks[io->park_next];
	if (k->at != io->rpos || k->len != len || k->got != len)
		return NULL;
	io->park_next++;
	return cx_steal_ptr(&k->buf);
}

void cx_io_drop_parks(struct cx_io *io)
{
	size_t i;

	for (i = 0; i < io->nparks; i++)
		free(io->parks[i].buf);
	free(io->parks);
	io->parks = NULL;
	io->nparks = io->cparks = io->park_next = 0;
}

void cx_io_shrink(struct cx_io *io)
{
	size_t have = cx_io_buffered(io);
	uint8_t *b;

	if (io->rcap <= CX_RBUF || have > CX_RBUF)
		return;
	memmove(io->rbuf, io->rbuf + io->rpos, have);
	io->rpos = 0;
	io->rlen = have;
	b = realloc(io->rbuf, CX_RBUF);
	if (b) {
		io->rbuf = b;
		io->rcap = CX_RBUF;
	}
}

/* Write all of src, fds on the first byte. Returns 0 or -errno. */
static int io_write_all(struct cx_io *io, const uint8_t *src, size_t n,
			const int *fds, size_t nfds)
{
	union {
		char buf[CX_CMSG_SPACE];
		struct cmsghdr align;
	} u;

	if (io->spool)
		return spool_add(io, src, n, fds, nfds);
	while (n) {
		struct iovec iov = { .iov_base = (void *)src, .iov_len = n };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t r;
		short rev = 0;
		int rc;

		if (nfds) {
			struct cmsghdr *c;

			memset(u.buf, 0, sizeof(u.buf));
			m.msg_control = u.buf;
			m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
			c = CMSG_FIRSTHDR(&m);
			if (!c) /* cannot be: msg_controllen holds one */
				return cx_err(-EINVAL,
					      "sendmsg: no room for fds");
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
			memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
		}
		cx_io_hook(io->fd, CX_HOOK_SEND, &iov.iov_len);
		if (io->sock)
			r = sendmsg(io->fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
		else
			r = write(io->fd, src, iov.iov_len);
		if (r > 0) {
			size_t done = (size_t)r;

			cx_io_hook(io->fd, CX_HOOK_SENT, &done);
			src += r;
			n -= (size_t)r;
			io->out_bytes += (uint64_t)r;
			nfds = 0;
			continue;
		}
		if (r == 0)
			return cx_err(-EIO, "write: no progress");
		if (errno == EINTR)
			continue;
		if (errno == EPIPE || errno == ECONNRESET)
			return eof_err(io, -ECONNRESET,
				       "peer closed the connection");
		if (errno != EAGAIN)
			return cx_err(-errno, "%s: %s",
				      io->sock ? "sendmsg" : "write",
				      strerror(errno));
		rc = io_wait(io, POLLOUT | POLLIN, &rev);
		if (rc < 0)
			return wait_err(io, rc, "write");
		if ((rev & (POLLIN | POLLHUP)) && !(rev & POLLOUT)) {
			/* The peer spoke (a refusal) or left mid-stream. */
			io->peer_spoke = true;
			return -EREMOTEIO;
		}
	}
	return 0;
}

int cx_io_flush(struct cx_io *io, const int *fds, size_t nfds)
{
	int rc;

	if (!io->wlen && !nfds)
		return 0;
	rc = io_write_all(io, io->wbuf, io->wlen, fds, nfds);
	io->wlen = 0;
	return rc;
}

int cx_io_write(struct cx_io *io, const void *src, size_t n)
{
	int rc;

	if (io->wlen + n <= io->wcap) {
		memcpy(io->wbuf + io->wlen, src, n);
		io->wlen += n;
		return 0;
	}
	rc = cx_io_flush(io, NULL, 0);
	if (rc < 0)
		return rc;
	if (n >= io->wcap / 2)
		return io_write_all(io, src, n, NULL, 0);
	memcpy(io->wbuf, src, n);
	io->wlen = n;
	return 0;
}
