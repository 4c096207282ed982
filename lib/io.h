/* SPDX-License-Identifier: MIT */
/*
 * Buffered byte streams with a deadline over a socket or a file: short
 * reads and writes, EINTR, peer death, and fds received with
 * SCM_RIGHTS, which queue up in arrival order.
 */
#ifndef CX_IO_H
#define CX_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/*
 * A save being spooled (cprxfer_save_start): what the encoder writes is
 * kept here instead of sent, as segments in the order the bytes go out.
 * A segment is one flush of the write buffer (its bytes copied into buf,
 * at off) or one large write (kept by reference: the state's memory,
 * which stays unchanged until the save ends), with the fds that go with
 * its first byte (fds[fd_at..fd_at + nfds)).
 */
struct cx_seg {
	const uint8_t *ext; /* NULL: the bytes are buf[off..off + len) */
	size_t off, len;
	size_t fd_at, nfds;
};

struct cx_spool {
	uint8_t *buf;
	size_t len, cap;
	int *fds; /* borrowed: the state's fds, not owned */
	size_t nfds, fcap;
	struct cx_seg *seg;
	size_t nseg, scap;
	size_t cur, done; /* the segment going out, its bytes already sent */
};

/*
 * A large value a non-blocking load read into a buffer of its own
 * rather than into rbuf (cprxfer_load_step): it belongs at rbuf[at],
 * between the bytes before it and those after it.
 */
struct cx_park {
	size_t at;
	uint8_t *buf; /* len + 1 bytes */
	size_t len, got;
};

struct cx_io {
	int fd;
	bool sock;	  /* recvmsg/sendmsg with fds; else read/write */
	int64_t deadline; /* CLOCK_MONOTONIC ns; INT64_MAX: none */

	uint8_t *rbuf;
	size_t rcap, rpos, rlen;

	/*
	 * fds received and not yet claimed: fdq[fdq_pos..fdq_len). The
	 * queue restarts at 0 when it empties and shrinks back after a
	 * large stream, so its size follows what is pending, not what has
	 * passed through.
	 */
	int *fdq;
	size_t fdq_len, fdq_cap, fdq_pos;
	/* SCM_RIGHTS expected now; else arriving fds are closed at once. */
	bool accept_fds;
	uint64_t max_fds; /* fds one stream may bring */
	uint64_t fds_in;  /* fds received since cx_io_reset_fds */

	uint8_t *wbuf;
	size_t wcap, wlen;
	uint64_t out_bytes; /* bytes that left through write/sendmsg */

	/* A peer's ACK frame seen while writing: set by the writer. */
	bool peer_spoke;

	/* Not NULL: writes and flushes append to this spool (no sending). */
	struct cx_spool *spool;
	/* Reads never wait: where they would, they fail with -EAGAIN. */
	bool nowait;

	/* Parked values, in stream order; parks[park_next] is next. */
	struct cx_park *parks;
	size_t nparks, cparks, park_next;
	/*
	 * The stream's checksum, computed already as it arrived (a
	 * non-blocking load): the decoder uses it instead of its own.
	 */
	bool crc_known;
	uint32_t crc_val;

	/*
	 * A process watched alongside every wait (-1: none): when its
	 * pidfd becomes readable the wait ends with -ECHILD.
	 */
	int watch_fd;
	pid_t watch_pid;
};

int cx_io_init(struct cx_io *io, int fd, bool sock);
void cx_io_fini(struct cx_io *io);

/* Set the deadline to now + timeout_ms (< 0: none). */
void cx_io_deadline(struct cx_io *io, int timeout_ms);
int64_t cx_now_ns(void);

/*
 * Read exactly n bytes. Large reads land directly in dst. -ECONNRESET on
 * end of stream, -ETIMEDOUT past the deadline, -EMFILE if more fds than
 * max_fds arrive or the kernel truncated them (MSG_CTRUNC), -ECHILD if
 * the watched process exited (the reason names it and its status).
 */
int cx_io_read(struct cx_io *io, void *dst, size_t n);

/* Bytes already buffered (readable without waiting). */
static inline size_t cx_io_buffered(const struct cx_io *io)
{
	return io->rlen - io->rpos;
}

/*
 * Have at least n bytes (n <= the buffer size) buffered, reading as
 * needed, without consuming them: on any failure (-ETIMEDOUT included)
 * the bytes already read stay buffered, so a later call resumes where
 * this one stopped. Read them with cx_io_peek() / cx_io_read().
 */
int cx_io_fill(struct cx_io *io, size_t n);

/* The buffered bytes, valid until the next read. */
static inline const uint8_t *cx_io_peek(const struct cx_io *io)
{
	return io->rbuf + io->rpos;
}

/* Drop n buffered bytes (n <= cx_io_buffered()). */
static inline void cx_io_consume(struct cx_io *io, size_t n)
{
	io->rpos += n;
}

/* Capacity of the received-fd queue, in entries (for the tests). */
static inline size_t cx_io_fdq_capacity(const struct cx_io *io)
{
	return io->fdq_cap;
}

/* Wait until at least one byte is readable or the peer hung up. */
int cx_io_wait_readable(struct cx_io *io);

/* Queue an fd as if received (exec mode); closes it on failure. */
int cx_io_queue_fd(struct cx_io *io, int fd);

/* Take the next received fd, -1 if none is queued. */
int cx_io_take_fd(struct cx_io *io);

/* Close every queued fd that no record claimed. */
void cx_io_drop_fds(struct cx_io *io);

/* Buffer n bytes for writing; big writes go straight out. */
int cx_io_write(struct cx_io *io, const void *src, size_t n);

/* Send what is buffered, with fds attached to its first byte. */
int cx_io_flush(struct cx_io *io, const int *fds, size_t nfds);

/* Free a spool and what it holds (not the fds: they are borrowed). */
void cx_spool_free(struct cx_spool *sp);

/*
 * Send from sp with MSG_DONTWAIT, at most about budget bytes and
 * fd_budget fds, fds attached to the sendmsg() carrying their segment's
 * first byte (as a blocking flush attaches them). 0: all sent; -EAGAIN:
 * the socket is full or a budget spent; -EREMOTEIO: the socket is full
 * and the peer spoke or hung up (a refusal to read); or -errno with a
 * reason.
 */
int cx_spool_send(struct cx_io *io, struct cx_spool *sp, size_t budget,
		  size_t fd_budget);

/*
 * Have at least n bytes buffered, growing the buffer as needed and
 * reading only what is there (never waiting): 0 once n bytes are
 * buffered, -EAGAIN if the socket has no more yet, or a read's error.
 * Stops with -EAGAIN once *budget (lowered by what it reads) is spent.
 */
int cx_io_fill_nowait(struct cx_io *io, size_t n, size_t *budget);

/*
 * Park the value of len bytes that starts at rbuf[at], at the end of what
 * is buffered (at <= rlen: what is there already moves into the park,
 * and rbuf ends at at). -ENOMEM, or 0.
 */
int cx_io_park(struct cx_io *io, size_t at, size_t len);

/* Fill the last park from the socket, never waiting: 0 once whole. */
int cx_io_fill_park(struct cx_io *io, size_t *budget);

/*
 * The parked value of len bytes at the read position, handed over (the
 * caller frees it), or NULL if there is none there.
 */
uint8_t *cx_io_unpark(struct cx_io *io, size_t len);

/* Free every park. */
void cx_io_drop_parks(struct cx_io *io);

/* Give back a buffer grown by cx_io_fill_nowait, keeping what it holds. */
void cx_io_shrink(struct cx_io *io);

/*
 * Fault injection for the tests, never exported: when set, called with
 * CX_HOOK_SEND / CX_HOOK_RECV before each sendmsg/recvmsg (or write /
 * read) with the length about to be tried, which it may lower to stop
 * at an exact byte, and with CX_HOOK_SENT / CX_HOOK_RECVD after each
 * transfer with the bytes moved.
 */
enum {
	CX_HOOK_SEND,
	CX_HOOK_SENT,
	CX_HOOK_RECV,
	CX_HOOK_RECVD
};
#ifdef CX_TEST_HOOKS /* only in the tests' copy of the library */
extern void (*cx_io_fault_hook)(int fd, int op, size_t *len);

static inline void cx_io_hook(int fd, int op, size_t *len)
{
	if (cx_io_fault_hook)
		cx_io_fault_hook(fd, op, len);
}
#else
/* Release builds (the installed libraries) have no hook. */
static inline void cx_io_hook(int fd, int op, size_t *len)
{
	(void)fd;
	(void)op;
	(void)len;
}
#endif

#endif
