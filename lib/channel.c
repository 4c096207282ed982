/* SPDX-License-Identifier: MIT */
/*
 * Channels: state streams and acks over a connected unix socket.
 *
 * A save or load that fails half-way leaves the byte stream out of step,
 * so the channel is then marked broken and refuses further use. A load
 * that fails on what it received tells the peer why (an ACK frame of
 * phase LOAD) before giving up, so the outgoing side learns the reason
 * instead of waiting for its timeout.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "channel.h"
#include "crc32c.h"
#include "cleanup.h"
#include "error.h"
#include "stream.h"
#include "successor.h"
#include "wire.h"

#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif

/*
 * Stop the kernel from attaching credentials, pidfds or security labels
 * to what we receive: an adopted socket may come with SO_PASS* set, and
 * a pidfd per recvmsg would pile up. Options this kernel lacks are fine.
 */
static int clear_pass_options(int sockfd)
{
	static const struct {
		int opt;
		const char *name;
	} pass[] = {
		{ SO_PASSCRED, "SO_PASSCRED" },
		{ SO_PASSPIDFD, "SO_PASSPIDFD" },
		{ SO_PASSSEC, "SO_PASSSEC" },
	};
	int off = 0;
	size_t i;

	for (i = 0; i < sizeof(pass) / sizeof(pass[0]); i++)
		if (setsockopt(sockfd, SOL_SOCKET, pass[i].opt, &off,
			       sizeof(off)) < 0 &&
		    errno != ENOPROTOOPT && errno != EINVAL)
			return cx_err(-errno, "fd %d: clearing %s: %s", sockfd,
				      pass[i].name, strerror(errno));
	return 0;
}

int cx_channel_alloc(int sockfd, const struct cprxfer_opts *o,
		     cprxfer_channel **out)
{
	cx_autoclose int fd = sockfd;
	cx_autofree cprxfer_channel *ch = NULL;
	int rc;

	ch = calloc(1, sizeof(*ch));
	if (!ch)
		return cx_err(-ENOMEM, "channel: out of memory");
	rc = cx_io_init(&ch->io, fd, true);
	if (rc < 0)
		return rc;
	cx_chan_poll_init(ch);
	cx_opts_copy(&ch->o, o);
	/* fds a peer attaches to ack frames count too. */
	ch->io.max_fds = cx_opts_max_fds(&ch->o);
	cx_steal_fd(&fd);
	*out = cx_steal_ptr(&ch);
	return 0;
}

int cx_channel_peer_creds(cprxfer_channel *ch)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(ch->io.fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
	    cred.pid == 0)
		return cx_err(-ENOTCONN, "fd %d: socket is not connected",
			      ch->io.fd);
	ch->peer_pid = cred.pid;
	ch->peer_uid = cred.uid;
	return 0;
}

int cx_channel_new(int sockfd, const struct cprxfer_opts *o,
		   cprxfer_channel **out)
{
	cx_autoclose int fd = sockfd;
	struct sockaddr_storage sa = { 0 };
	socklen_t salen = sizeof(sa);
	cprxfer_channel *ch;
	socklen_t len;
	int type = 0, rc, fl;

	len = sizeof(type);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
		return cx_err(errno == ENOTSOCK ? -ENOTSOCK : -EBADF,
			      "fd %d is not a socket", sockfd);
	if (getsockname(fd, (struct sockaddr *)&sa, &salen) < 0 ||
	    sa.ss_family != AF_UNIX || type != SOCK_STREAM)
		return cx_err(-EINVAL, "fd %d is not an AF_UNIX stream socket",
			      sockfd);
	fl = fcntl(fd, F_GETFD);
	if (fl < 0 ||
	    (!(fl & FD_CLOEXEC) && fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0))
		return cx_err(-errno, "fd %d: making it close-on-exec: %s",
			      sockfd, strerror(errno));
	rc = clear_pass_options(fd);
	if (rc < 0)
		return rc;
	rc = cx_channel_alloc(cx_steal_fd(&fd), o, &ch);
	if (rc < 0)
		return rc;
	rc = cx_channel_peer_creds(ch);
	if (rc < 0) {
		cprxfer_channel_close(ch);
		return rc;
	}
	*out = ch;
	return 0;
}

int cx_send_ack(cprxfer_channel *ch, int phase, int status, const char *reason)
{
	uint8_t p[CX_HDR + CX_ACK_LEN];
	size_t rlen = reason ? strnlen(reason, CX_REASON_MAX) : 0;
	int rc;

	cx_frame_put(p, CX_F_ACK, 0, CX_ACK_LEN + rlen);
	cx_put32(p + CX_HDR, (uint32_t)status);
	cx_put16(p + CX_HDR + 4, (uint16_t)phase);
	cx_put16(p + CX_HDR + 6, (uint16_t)rlen);
	rc = cx_io_write(&ch->io, p, sizeof(p));
	if (rc == 0 && rlen)
		rc = cx_io_write(&ch->io, reason, rlen);
	if (rc == 0)
		rc = cx_io_flush(&ch->io, NULL, 0);
	if (rc == -EREMOTEIO)
		rc = cx_err(-ECONNRESET, "peer closed the connection");
	return rc;
}

/* One ACK frame, as read by read_ctl(). */
struct cx_ctl {
	int phase;
	int32_t status;
	char reason[CX_REASON_MAX + 1];
};

/*
 * Read one ACK frame whole, or nothing: on a timeout the bytes read so
 * far stay buffered and the next call completes the frame, so a wait
 * with timeout 0 is a non-blocking step that loses nothing. -EPROTO on
 * any other frame or a malformed one.
 */
static int read_ctl(cprxfer_channel *ch, const char *what, struct cx_ctl *c)
{
	struct cx_frame f;
	const uint8_t *p;
	size_t rlen;
	int rc;

	rc = cx_io_fill(&ch->io, CX_HDR);
	if (rc < 0)
		return rc;
	rc = cx_frame_parse(cx_io_peek(&ch->io), &f);
	if (rc < 0)
		return rc;
	if (f.type != CX_F_ACK || f.len < CX_ACK_LEN ||
	    f.len > CX_ACK_LEN + CX_REASON_MAX)
		return cx_err(-EPROTO,
			      "%s: expected an ACK frame, got %s of %llu bytes",
			      what, cx_frame_name(f.type),
			      (unsigned long long)f.len);
	rc = cx_io_fill(&ch->io, CX_HDR + (size_t)f.len);
	if (rc < 0)
		return rc;
	p = cx_io_peek(&ch->io) + CX_HDR;
	rlen = cx_get16(p + 6);
	if (CX_ACK_LEN + rlen != f.len)
		return cx_err(-EPROTO, "%s: malformed ACK frame", what);
	c->status = (int32_t)cx_get32(p);
	c->phase = cx_get16(p + 4);
	memcpy(c->reason, p + CX_ACK_LEN, rlen);
	c->reason[rlen] = 0;
	cx_io_consume(&ch->io, CX_HDR + (size_t)f.len);
	if (c->status > 0 || c->status < -4095)
		return cx_err(-EPROTO, "%s: ACK with invalid status %d", what,
			      c->status);
	return 0;
}

/*
 * An ACK frame as the outgoing side's wait sees it: 0 if the peer
 * accepted, the peer's negative errno (reason in errmsg) if it refused.
 */
static int ack_verdict(const struct cx_ctl *c, const char *what)
{
	if (c->phase != CX_ACK_LOAD && c->phase != CX_ACK_USER)
		return cx_err(-EPROTO, "%s: unexpected ACK frame of phase %d",
			      what, c->phase);
	if (c->status == -ETIMEDOUT || c->status == -ECONNRESET)
		return cx_err(-EPROTO, "%s: ACK with invalid status %d", what,
			      c->status);
	if (c->status < 0)
		return cx_err(c->status, "peer refused%s: %s",
			      c->phase == CX_ACK_LOAD ? " the stream" : "",
			      c->reason[0] ? c->reason : "(no reason given)");
	return 0;
}

/* Read an ACK frame and judge it (ack_verdict). */
static int recv_ack(cprxfer_channel *ch, const char *what)
{
	struct cx_ctl c;
	int rc = read_ctl(ch, what, &c);

	return rc < 0 ? rc : ack_verdict(&c, what);
}

/* A non-blocking save or load is in progress: -EINPROGRESS. */
static int busy(const cprxfer_channel *ch, const char *what)
{
	if (ch->op == CX_OP_NONE)
		return 0;
	return cx_err(
		-EINPROGRESS,
		"%s: a %s is in progress on this channel: step it to its end or close the channel",
		what,
		ch->op == CX_OP_SAVE ? "save (cprxfer_save_step)"
				     : "load (cprxfer_load_step)");
}

static int check(cprxfer_channel *ch, const char *what)
{
	if (!ch)
		return cx_err(-EINVAL, "%s: NULL channel", what);
	if (ch->conn)
		return cx_connecting_err(ch, what);
	if (ch->op != CX_OP_NONE)
		return busy(ch, what);
	if (ch->broken)
		return cx_err(
			-EPIPE,
			"%s: channel unusable after an earlier failure (error %d)",
			what, ch->broken);
	if (ch->decide == CX_D_COMMITTED || ch->decide == CX_D_ABORTED)
		return cx_err(
			-EALREADY,
			"%s: the handoff on this channel was %s already", what,
			ch->decide == CX_D_COMMITTED ? "committed" : "aborted");
	return 0;
}

CX_EXPORT int cprxfer_channel_open_opts(int sockfd, const cprxfer_opts *o,
					cprxfer_channel **out)
{
	cprxfer_channel *ch;
	int rc;

	if (!out) {
		cx_close(sockfd);
		return cx_err(-EINVAL, "cprxfer_channel_open: NULL output");
	}
	if (sockfd < 0)
		return cx_err(-EBADF, "cprxfer_channel_open: bad fd %d",
			      sockfd);
	rc = cx_channel_new(sockfd, o, &ch);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_channel_open");
	rc = cx_handshake(ch);
	if (rc < 0) {
		cprxfer_channel_close(ch);
		return rc;
	}
	*out = ch;
	return 0;
}

CX_EXPORT int cprxfer_channel_open(int sockfd, cprxfer_channel **out)
{
	return cprxfer_channel_open_opts(sockfd, NULL, out);
}

CX_EXPORT void cprxfer_channel_close(cprxfer_channel *ch)
{
	if (!ch)
		return;
	if (ch->conn)
		cx_connecting_free(ch);
	/*
	 * A save cut short leaves a truncated stream: the peer's load
	 * fails on it, and a decision frame now would land inside it.
	 */
	if (!ch->broken && ch->op == CX_OP_NONE &&
	    (ch->decide == CX_D_SENT || ch->decide == CX_D_ACKED)) {
		/*
		 * An outgoing side that leaves undecided aborts, so that the
		 * incoming side learns it and only a real death of this
		 * process reads as one there. Keep the caller's errmsg.
		 */
		char saved[CX_REASON_MAX];

		snprintf(saved, sizeof(saved), "%s", cx_errmsg_get());
		cx_io_deadline(&ch->io, 100);
		cx_send_ack(
			ch, CX_ACK_DECIDE, -ECANCELED,
			"the outgoing side closed the channel without committing");
		cx_errmsg_set("%s", saved);
	}
	if (ch->succ)
		cx_successor_unlink(ch->succ);
	if (ch->peer_pidfd_taken)
		cx_close(ch->peer_pidfd);
	cx_spool_free(ch->sv);
	cx_chan_poll_fini(ch);
	cx_close(ch->io.watch_fd);
	cx_close(ch->io.fd);
	cx_io_fini(&ch->io);
	free(ch);
}

CX_EXPORT int cprxfer_channel_fd(cprxfer_channel *ch)
{
	if (!ch)
		return cx_err(-EINVAL, "cprxfer_channel_fd: NULL channel");
	return cx_chan_poll_fd(ch);
}

CX_EXPORT int cprxfer_channel_set_timeout(cprxfer_channel *ch, int timeout_ms)
{
	if (!ch)
		return cx_err(-EINVAL,
			      "cprxfer_channel_set_timeout: NULL channel");
	if (ch->conn)
		return cx_connecting_err(ch, "cprxfer_channel_set_timeout");
	if (ch->op != CX_OP_NONE)
		return busy(ch, "cprxfer_channel_set_timeout");
	ch->o.timeout_ms = timeout_ms < 0 ? -1 : timeout_ms;
	return 0;
}

CX_EXPORT int cprxfer_channel_peer(const cprxfer_channel *ch, pid_t *pid,
				   uid_t *uid, const char **tag)
{
	if (!ch)
		return cx_err(-EINVAL, "cprxfer_channel_peer: NULL channel");
	if (ch->conn)
		return cx_connecting_err(ch, "cprxfer_channel_peer");
	if (pid)
		*pid = ch->peer_pid;
	if (uid)
		*uid = ch->peer_uid;
	if (tag)
		*tag = ch->peer_tag;
	return 0;
}

CX_EXPORT int cprxfer_save(cprxfer_channel *ch, const cprxfer_state *st)
{
	int rc = check(ch, "cprxfer_save");
	uint64_t before;

	if (rc < 0)
		return rc;
	if (!st)
		return cx_err(-EINVAL, "cprxfer_save: NULL state");
	cx_io_deadline(&ch->io, ch->o.timeout_ms);
	before = ch->io.out_bytes;
	rc = cx_encode(&ch->io, st, CX_MODE_SOCKET);
	if (ch->io.out_bytes != before)
		ch->decide = CX_D_SENT;
	if (rc == 0)
		return 0;
	ch->io.wlen = 0;
	if (ch->io.out_bytes == before && rc != -EREMOTEIO) {
		/* Failed before the first byte left: still usable. */
		return cx_err_prefix(rc, "cprxfer_save");
	}
	if (rc == -EREMOTEIO || rc == -ECONNRESET) {
		/* The peer refused mid-stream, or left: learn which. */
		rc = recv_ack(ch, "cprxfer_save");
		if (rc == 0)
			rc = cx_err(
				-EPROTO,
				"cprxfer_save: peer acked a stream it had not read");
	}
	ch->broken = rc;
	return cx_err_prefix(rc, "cprxfer_save");
}

/*
 * Before a stream, the outgoing side may have sent its decision
 * instead: an abort ends the load with -ECANCELED. 0 when something
 * else comes (a stream, or garbage the decoder will judge).
 */
static int peek_decision(cprxfer_channel *ch, const char *what)
{
	struct cx_frame f;
	struct cx_ctl c;
	int rc;

	rc = cx_io_fill(&ch->io, CX_HDR);
	if (rc < 0)
		return rc;
	if (cx_frame_parse(cx_io_peek(&ch->io), &f) < 0 || f.type != CX_F_ACK)
		return 0;
	rc = read_ctl(ch, what, &c);
	if (rc < 0)
		return rc;
	if (c.phase == CX_ACK_DECIDE && c.status < 0) {
		ch->decide = CX_D_ABORTED;
		return cx_err(-ECANCELED, "%s: the outgoing side aborted: %s",
			      what, c.reason);
	}
	return cx_err(
		-EPROTO,
		"%s: expected a state stream, got an ACK frame of phase %d, status %d",
		what, c.phase, c.status);
}

/*
 * A load ended with rc: the decision state, or (failure) a broken
 * channel and the reason sent to the peer in an ACK frame of phase LOAD.
 */
static int load_end(cprxfer_channel *ch, int rc, const char *what)
{
	char why[CX_REASON_MAX];

	ch->io.accept_fds = false;
	if (rc == 0) {
		ch->decide = CX_D_LOADED;
		return 0;
	}
	if (rc == -ECANCELED)
		return rc;
	ch->broken = rc;
	snprintf(why, sizeof(why), "%s", cprxfer_errmsg());
	if (rc != -ECONNRESET) {
		/*
		 * Tell the sender why, promptly, then give up. Our own
		 * timeout travels as -ETIME: -ETIMEDOUT and -ECONNRESET are
		 * the sender's own verdicts on its wait.
		 */
		cx_io_deadline(&ch->io, 100);
		cx_send_ack(ch, CX_ACK_LOAD, rc == -ETIMEDOUT ? -ETIME : rc,
			    why);
		shutdown(ch->io.fd, SHUT_RDWR);
	}
	return cx_err(rc, "%s: %s", what, why);
}

CX_EXPORT int cprxfer_load(cprxfer_channel *ch, cprxfer_state **out)
{
	int rc = check(ch, "cprxfer_load");

	if (rc < 0)
		return rc;
	if (!out)
		return cx_err(-EINVAL, "cprxfer_load: NULL output");
	cx_io_deadline(&ch->io, ch->o.timeout_ms);
	ch->io.accept_fds = true;
	rc = peek_decision(ch, "cprxfer_load");
	if (rc == 0)
		rc = cx_decode(&ch->io, &ch->o, CX_MODE_SOCKET, out);
	return load_end(ch, rc, "cprxfer_load");
}

/* ---- non-blocking save and load (docs/event-loop.md) ----------------- */

/*
 * What one step moves at most, so that a fast peer cannot keep the
 * caller's loop in one step: the fd stays readable and the loop comes
 * back.
 */
#define CX_STEP_BUDGET (1u << 20)
/*
 * Passing fds costs the kernel about 1 us each (more once many are in
 * flight): a step sends at most this many.
 */
#define CX_STEP_FDS 500
/* After a hang-up, how long a step waits to see the successor exit. */
#define CX_STEP_GRACE_NS (1000 * 1000000ll)

static int64_t op_deadline(const cprxfer_channel *ch)
{
	if (ch->o.timeout_ms < 0)
		return INT64_MAX;
	return cx_now_ns() + (int64_t)ch->o.timeout_ms * 1000000;
}

/*
 * A step that would return -EAGAIN: if the watched successor exited,
 * its pidfd keeps the fd readable, so say so now (-ECHILD) rather than
 * let the loop spin until its socket closes.
 */
static int not_yet(cprxfer_channel *ch)
{
	struct pollfd p = { .fd = ch->io.watch_fd, .events = POLLIN };

	if (ch->io.watch_fd >= 0 && poll(&p, 1, 0) > 0)
		return cx_child_err(ch->io.watch_pid, ch->io.watch_fd);
	return -EAGAIN;
}

/* The operation is over: the fd goes back to EPOLLIN, no deadline. */
static void op_end(cprxfer_channel *ch)
{
	char saved[CX_REASON_MAX];

	ch->op = CX_OP_NONE;
	cx_spool_free(ch->sv);
	ch->sv = NULL;
	ch->io.nowait = false;
	snprintf(saved, sizeof(saved), "%s", cx_errmsg_get());
	(void)cx_chan_want(ch, EPOLLIN);
	(void)cx_chan_deadline(ch, INT64_MAX);
	cx_errmsg_set("%s", saved);
}

/* Send what the spool holds; the refusal and failure rules of a save. */
static int save_progress(cprxfer_channel *ch, const char *what)
{
	int rc = 0;

	if (!ch->op_refused) {
		rc = cx_spool_send(&ch->io, ch->sv, CX_STEP_BUDGET,
				   CX_STEP_FDS);
		if (ch->io.out_bytes != ch->op_before)
			ch->decide = CX_D_SENT;
		if (rc == 0) {
			op_end(ch);
			return 0;
		}
		if (rc == -EAGAIN)
			rc = not_yet(ch);
		if (rc == -EAGAIN && cx_now_ns() < ch->op_deadline)
			return cx_err(-EAGAIN,
				      "%s: %llu bytes sent, the socket is full",
				      what,
				      (unsigned long long)(ch->io.out_bytes -
							   ch->op_before));
		if (rc == -EAGAIN)
			rc = cx_err(-ETIMEDOUT,
				    "write: timed out waiting for the peer");
		if (rc == -EREMOTEIO ||
		    (rc == -ECONNRESET && ch->io.out_bytes != ch->op_before)) {
			/* The peer refused mid-stream, or left: learn which. */
			ch->op_refused = true;
			(void)cx_chan_want(ch, EPOLLIN);
		}
	}
	if (ch->op_refused) {
		ch->io.nowait = true;
		rc = recv_ack(ch, what);
		ch->io.nowait = false;
		if (rc == 0)
			rc = cx_err(-EPROTO,
				    "peer acked a stream it had not read");
		if (rc == -ECONNRESET && ch->io.watch_fd >= 0) {
			/*
			 * A dying successor closes its socket a moment before
			 * its pidfd says it exited: wait for that (the fd holds
			 * the pidfd and a timer), to report -ECHILD as a
			 * blocking save does.
			 */
			int64_t now = cx_now_ns();

			if (!ch->op_grace) {
				ch->op_grace = now + CX_STEP_GRACE_NS;
				if (ch->op_grace > ch->op_deadline)
					ch->op_grace = ch->op_deadline;
				(void)cx_chan_want(ch, 0);
				(void)cx_chan_deadline(ch, ch->op_grace);
			}
			if (now < ch->op_grace)
				return cx_err(
					-EAGAIN,
					"%s: the peer hung up: waiting to see whether the successor exited",
					what);
		}
		if (rc == -EAGAIN && cx_now_ns() < ch->op_deadline)
			return cx_err(
				-EAGAIN,
				"%s: the peer refused the stream; its reason is on the way",
				what);
		if (rc == -EAGAIN)
			rc = cx_err(-ETIMEDOUT,
				    "read: timed out waiting for the peer");
	}
	op_end(ch);
	if (ch->io.out_bytes == ch->op_before && !ch->op_refused)
		return cx_err_prefix(rc, "%s", what); /* still usable */
	ch->broken = rc;
	return cx_err_prefix(rc, "%s", what);
}

CX_EXPORT int cprxfer_save_start(cprxfer_channel *ch, const cprxfer_state *st)
{
	int rc = check(ch, "cprxfer_save_start");

	if (rc < 0)
		return rc;
	if (!st)
		return cx_err(-EINVAL, "cprxfer_save_start: NULL state");
	ch->sv = calloc(1, sizeof(*ch->sv));
	if (!ch->sv)
		return cx_err(-ENOMEM, "cprxfer_save_start: out of memory");
	/* Encode into the spool: every check runs before a byte leaves. */
	ch->io.spool = ch->sv;
	rc = cx_encode(&ch->io, st, CX_MODE_SOCKET);
	ch->io.spool = NULL;
	ch->io.wlen = 0;
	ch->op = CX_OP_SAVE;
	ch->op_refused = false;
	ch->op_grace = 0;
	ch->op_before = ch->io.out_bytes;
	ch->op_deadline = op_deadline(ch);
	cx_io_deadline(&ch->io, ch->o.timeout_ms);
	if (rc == 0)
		rc = cx_chan_want(ch, EPOLLIN | EPOLLOUT);
	if (rc == 0)
		rc = cx_chan_deadline(ch, ch->op_deadline);
	if (rc < 0) {
		op_end(ch);
		return cx_err_prefix(rc, "cprxfer_save_start");
	}
	return save_progress(ch, "cprxfer_save_start");
}

CX_EXPORT int cprxfer_save_step(cprxfer_channel *ch)
{
	if (!ch)
		return cx_err(-EINVAL, "cprxfer_save_step: NULL channel");
	if (ch->conn)
		return cx_connecting_err(ch, "cprxfer_save_step");
	if (ch->op == CX_OP_LOAD)
		return busy(ch, "cprxfer_save_step");
	if (ch->op != CX_OP_SAVE)
		return cx_err(
			-EINVAL,
			"cprxfer_save_step: no save in progress: start one with cprxfer_save_start()");
	return save_progress(ch, "cprxfer_save_step");
}

/* What the buffered frames call for (load_scan). */
enum {
	LD_DECODE = 1, /* the stream, or what the decoder refuses, is in */
	LD_ACK = 2,    /* an ACK frame came instead of a stream: whole */
};

/* decode.c reads a record frame of up to this many bytes whole. */
#define CX_SMALL_RECORD 512
/* A blob or string this large is read into a buffer of its own. */
#define CX_PARK_MIN (256u << 10)

/*
 * Checksum the stream's bytes up to offset upto, as far as they are in
 * (the buffer and the parks, in stream order), so that the decoding
 * step does not checksum it all at once.
 */
static void load_crc(cprxfer_channel *ch, uint64_t upto)
{
	struct cx_io *io = &ch->io;
	size_t have = cx_io_buffered(io);

	while (ch->ld_crc_at < upto) {
		struct cx_park *k = ch->ld_crc_park < io->nparks
					    ? &io->parks[ch->ld_crc_park]
					    : NULL;
		size_t end = have, n;

		if (k && ch->ld_crc_rel == k->at - io->rpos) {
			n = k->got - ch->ld_crc_park_off;
			if (n > upto - ch->ld_crc_at)
				n = (size_t)(upto - ch->ld_crc_at);
			if (!n)
				return;
			ch->ld_crc = cx_crc32c(ch->ld_crc,
					       k->buf + ch->ld_crc_park_off, n);
			ch->ld_crc_park_off += n;
			ch->ld_crc_at += n;
			if (ch->ld_crc_park_off == k->len) {
				ch->ld_crc_park++;
				ch->ld_crc_park_off = 0;
			}
			continue;
		}
		if (k && k->at - io->rpos < end)
			end = k->at - io->rpos;
		if (end <= ch->ld_crc_rel)
			return;
		n = end - ch->ld_crc_rel;
		if (n > upto - ch->ld_crc_at)
			n = (size_t)(upto - ch->ld_crc_at);
		ch->ld_crc = cx_crc32c(ch->ld_crc,
				       cx_io_peek(io) + ch->ld_crc_rel, n);
		ch->ld_crc_rel += n;
		ch->ld_crc_at += n;
	}
}

/*
 * Buffer the stream frame by frame, never waiting, until the decoder
 * can run from memory: the END frame is in, or the decoder will refuse
 * what is in before it needs more (a bad header, a limit, a frame past
 * the declared end), so that a hostile peer cannot make us buffer more
 * than the stream limit. -EAGAIN: not yet.
 */
static int load_scan(cprxfer_channel *ch)
{
	struct cx_io *io = &ch->io;
	size_t budget = CX_STEP_BUDGET, pos;
	struct cx_frame f;
	const uint8_t *p;
	int rc;

	for (;;) {
		/* A large value read apart, then the frames so far, whole. */
		if (io->nparks) {
			rc = cx_io_fill_park(io, &budget);
			if (rc < 0)
				return rc;
		}
		/* Where the next frame starts in the buffer. */
		pos = (size_t)(ch->ld_scan - ch->ld_parked);
		rc = cx_io_fill_nowait(io, pos, &budget);
		if (rc < 0)
			return rc;
		if (ch->ld_declared && ch->ld_scan + CX_HDR > ch->ld_declared)
			return LD_DECODE;
		rc = cx_io_fill_nowait(io, pos + CX_HDR, &budget);
		if (rc < 0)
			return rc;
		p = cx_io_peek(io) + pos;
		if (cx_frame_parse(p, &f) < 0)
			return LD_DECODE;
		if (!ch->ld_declared && f.type == CX_F_ACK) {
			if (f.len < CX_ACK_LEN ||
			    f.len > CX_ACK_LEN + CX_REASON_MAX)
				return LD_ACK;
			rc = cx_io_fill_nowait(io, CX_HDR + f.len, &budget);
			return rc < 0 ? rc : LD_ACK;
		}
		if (!ch->ld_declared) {
			uint64_t bytes;

			if (f.type != CX_F_BEGIN || f.len != CX_BEGIN_LEN)
				return LD_DECODE;
			rc = cx_io_fill_nowait(io, CX_HDR + CX_BEGIN_LEN,
					       &budget);
			if (rc < 0)
				return rc;
			p = cx_io_peek(io) + CX_HDR;
			bytes = cx_get64(p + 16);
			if (cx_get64(p) > ch->o.max_records ||
			    cx_get64(p + 8) > cx_opts_max_fds(&ch->o) ||
			    bytes > ch->o.max_stream ||
			    bytes < 2 * CX_HDR + CX_BEGIN_LEN + CX_END_LEN)
				return LD_DECODE;
			ch->ld_declared = bytes;
			ch->ld_scan = CX_HDR + CX_BEGIN_LEN;
			continue;
		}
		if (f.len > ch->ld_declared - ch->ld_scan - CX_HDR)
			return LD_DECODE;
		if (f.type == CX_F_END) {
			uint64_t upto = ch->ld_scan + CX_HDR + 16;

			rc = cx_io_fill_nowait(io, pos + CX_HDR + f.len,
					       &budget);
			if (rc < 0)
				return rc;
			/* What the END frame's checksum covers. */
			if (f.len == CX_END_LEN) {
				load_crc(ch, upto);
				io->crc_known = ch->ld_crc_at == upto;
				io->crc_val = ch->ld_crc;
			}
			return LD_DECODE;
		}
		if (f.type != CX_F_RECORD && f.type != CX_F_FDS)
			return LD_DECODE;
		if (f.type == CX_F_FDS) {
			/*
			 * Its fds ride on the sendmsg of its first byte: once
			 * its bytes are in, so are they, or the decoder
			 * refuses the stream here, as a blocking load would.
			 */
			if (f.len != CX_FDS_HDR)
				return LD_DECODE;
			rc = cx_io_fill_nowait(io, pos + CX_HDR + CX_FDS_HDR,
					       &budget);
			if (rc < 0)
				return rc;
			ch->ld_fds += cx_get32(cx_io_peek(io) + pos + CX_HDR);
			if (io->fds_in < ch->ld_fds)
				return LD_DECODE;
		}
		if (f.type == CX_F_RECORD && f.len > CX_SMALL_RECORD) {
			/* Its name is in the first bytes: judge its length. */
			size_t at = pos + CX_HDR + CX_REC_HDR, vlen;
			uint8_t type, nlen;

			rc = cx_io_fill_nowait(io, at + 255, &budget);
			if (rc < 0)
				return rc;
			type = cx_io_peek(io)[pos + CX_HDR];
			nlen = cx_io_peek(io)[pos + CX_HDR + 2];
			if (!nlen ||
			    f.len - CX_REC_HDR - nlen > ch->o.max_record)
				return LD_DECODE;
			/*
			 * A large blob or string is read into its own buffer,
			 * which the decoder adopts: no second copy of it.
			 */
			at += nlen;
			vlen = (size_t)(f.len - CX_REC_HDR - nlen);
			if ((type == CPRXFER_TYPE_BLOB ||
			     type == CPRXFER_TYPE_STR) &&
			    vlen >= CX_PARK_MIN &&
			    cx_io_buffered(io) <= at + vlen) {
				rc = cx_io_park(io, io->rpos + at, vlen);
				if (rc < 0)
					return rc;
				ch->ld_parked += vlen;
			}
		}
		ch->ld_scan += CX_HDR + f.len;
	}
}

/*
 * The stream stopped coming (the peer left or died, the deadline passed,
 * too many fds came) with part of it buffered. A blocking load would have read that
 * part first and refused what in it breaks a rule before it waited for
 * more: decode it, so the answer is the same. Only if the decoder runs
 * dry is the answer err, with its reason.
 */
static int decode_dry(cprxfer_channel *ch, int err, const char *what,
		      cprxfer_state **out)
{
	char why[CX_REASON_MAX];
	int rc;

	if (!ch->ld_declared && !cx_io_buffered(&ch->io))
		return err;
	snprintf(why, sizeof(why), "%s", cx_errmsg_get());
	ch->io.dry = true;
	rc = peek_decision(ch, what);
	if (rc == 0)
		rc = cx_decode(&ch->io, &ch->o, CX_MODE_SOCKET, out);
	ch->io.dry = false;
	if (rc != -EAGAIN)
		return rc;
	cx_errmsg_set("%s", why);
	return err;
}

CX_EXPORT int cprxfer_load_step(cprxfer_channel *ch, cprxfer_state **out)
{
	static const char what[] = "cprxfer_load_step";
	int rc;

	if (!ch)
		return cx_err(-EINVAL, "%s: NULL channel", what);
	if (ch->op == CX_OP_SAVE)
		return busy(ch, what);
	if (!out)
		return cx_err(-EINVAL, "%s: NULL output", what);
	if (ch->op == CX_OP_NONE) {
		rc = check(ch, what);
		if (rc < 0)
			return rc;
		ch->op = CX_OP_LOAD;
		ch->ld_scan = ch->ld_declared = ch->ld_parked = 0;
		ch->ld_fds = 0;
		ch->ld_crc = 0;
		ch->ld_crc_at = 0;
		ch->ld_crc_rel = ch->ld_crc_park = ch->ld_crc_park_off = 0;
		ch->io.crc_known = false;
		ch->op_deadline = op_deadline(ch);
		cx_io_deadline(&ch->io, ch->o.timeout_ms);
		ch->io.accept_fds = true;
		/* As cx_decode counts: fds read ahead belong to the stream. */
		ch->io.max_fds = cx_opts_max_fds(&ch->o);
		ch->io.fds_in = ch->io.fdq_len - ch->io.fdq_pos;
		rc = cx_chan_want(ch, EPOLLIN);
		if (rc == 0)
			rc = cx_chan_deadline(ch, ch->op_deadline);
		if (rc < 0) {
			ch->io.accept_fds = false;
			op_end(ch);
			return cx_err_prefix(rc, "%s", what);
		}
	}
	rc = load_scan(ch);
	if (rc == -EAGAIN && ch->ld_declared)
		load_crc(ch, ch->ld_scan); /* the frames judged so far */
	if (rc == -EAGAIN)
		rc = not_yet(ch);
	if (rc == -EAGAIN && cx_now_ns() < ch->op_deadline)
		return cx_err(-EAGAIN, "%s: %zu bytes of the stream in", what,
			      cx_io_buffered(&ch->io));
	if (rc == -EAGAIN)
		rc = cx_err(-ETIMEDOUT, "read: timed out waiting for the peer");
	/* All that is needed is buffered: nothing below waits. */
	ch->io.nowait = true;
	if (rc == LD_ACK)
		rc = peek_decision(ch, what);
	else if (rc == LD_DECODE)
		rc = cx_decode(&ch->io, &ch->o, CX_MODE_SOCKET, out);
	else if (rc < 0)
		rc = decode_dry(ch, rc, what, out);
	if (rc == -EAGAIN)
		rc = cx_err(-EBADMSG, "stream truncated");
	if (rc < 0)
		cx_io_drop_fds(&ch->io);
	ch->io.crc_known = false;
	op_end(ch);
	cx_io_drop_parks(&ch->io);
	cx_io_shrink(&ch->io);
	return load_end(ch, rc, what);
}

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

/* After end of stream, how long the peer gets to be seen exiting. */
#define CX_DEATH_GRACE_NS (1000 * 1000000ll)

/*
 * Take a pidfd of the peer (the process SO_PEERCRED names) while it is
 * still there, to tell later whether it died or just closed.
 */
static void take_peer_pidfd(cprxfer_channel *ch)
{
	socklen_t len = sizeof(int);
	int fd = -1;

	if (ch->peer_pidfd_taken)
		return;
	ch->peer_pidfd_taken = true;
	ch->peer_pidfd = -1;
	if (getsockopt(ch->io.fd, SOL_SOCKET, SO_PEERPIDFD, &fd, &len) == 0 &&
	    fd >= 0) {
		int fl = fcntl(fd, F_GETFD);

		if (fl >= 0 && !(fl & FD_CLOEXEC))
			fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
		ch->peer_pidfd = fd;
	} else if (errno == ESRCH) {
		ch->peer_gone = true;
	}
}

CX_EXPORT int cprxfer_ack(cprxfer_channel *ch, int status, const char *reason)
{
	int rc = check(ch, "cprxfer_ack");

	if (rc < 0)
		return rc;
	if (status > 0 || status < -4095 || status == -ETIMEDOUT ||
	    status == -ECONNRESET)
		return cx_err(
			-EINVAL,
			"cprxfer_ack: status %d is not 0 or a refusal errno (-ETIMEDOUT and -ECONNRESET are reserved)",
			status);
	if (status == 0 && ch->decide == CX_D_LOADED)
		take_peer_pidfd(ch);
	cx_io_deadline(&ch->io, ch->o.timeout_ms);
	rc = cx_send_ack(ch, CX_ACK_USER, status, reason);
	if (rc < 0) {
		ch->broken = rc;
		return cx_err_prefix(rc, "cprxfer_ack");
	}
	if (status == 0 && ch->decide == CX_D_LOADED)
		ch->decide = CX_D_READY;
	return 0;
}

CX_EXPORT int cprxfer_wait_ack(cprxfer_channel *ch, int timeout_ms)
{
	int rc = check(ch, "cprxfer_wait_ack");

	if (rc < 0)
		return rc;
	ch->io.accept_fds = false;
	cx_io_deadline(&ch->io, timeout_ms);
	rc = recv_ack(ch, "cprxfer_wait_ack");
	if (rc == 0) {
		if (ch->decide == CX_D_SENT)
			ch->decide = CX_D_ACKED;
		return 0;
	}
	if (rc == -ETIMEDOUT && timeout_ms == 0)
		return cx_err(
			-EAGAIN,
			"cprxfer_wait_ack: no whole ack yet (%zu bytes of it kept for the next step)",
			cx_io_buffered(&ch->io));
	if (rc == -ETIMEDOUT && cx_io_buffered(&ch->io))
		return cx_err(
			rc,
			"cprxfer_wait_ack: no whole ack within %d ms (%zu bytes of it kept for the next call)",
			timeout_ms, cx_io_buffered(&ch->io));
	if (rc == -ETIMEDOUT)
		return cx_err(rc, "cprxfer_wait_ack: no ack within %d ms",
			      timeout_ms);
	if (rc == -ECONNRESET)
		return cx_err(
			rc,
			"cprxfer_wait_ack: peer closed or died before acknowledging");
	if (rc == -EPROTO || rc == -EPROTONOSUPPORT) {
		ch->broken = rc;
		return cx_err_prefix(rc, "cprxfer_wait_ack");
	}
	if (rc == -ECHILD)
		return cx_err_prefix(rc, "cprxfer_wait_ack");
	return rc;
}

/* ---- the decision --------------------------------------------------- */

/* The connection ended without a decision: did the peer die? */
static int undecided_eof(cprxfer_channel *ch)
{
	struct pollfd p = { .fd = ch->peer_pidfd, .events = POLLIN };
	int64_t now = cx_now_ns(), until;
	int ms, n;

	if (ch->peer_gone)
		return cx_err(
			-EOWNERDEAD,
			"cprxfer_wait_commit: the outgoing side pid %d exited before deciding",
			(int)ch->peer_pid);
	if (ch->peer_pidfd < 0)
		return cx_err(
			-ECONNRESET,
			"cprxfer_wait_commit: the outgoing side pid %d closed the connection without deciding; whether it died cannot be verified (no SO_PEERPIDFD)",
			(int)ch->peer_pid);
	until = ch->eof_ns + CX_DEATH_GRACE_NS;
	if (ch->io.deadline < until)
		until = ch->io.deadline;
	ms = until > now ? (int)((until - now + 999999) / 1000000) : 0;
	while ((n = poll(&p, 1, ms)) < 0 && errno == EINTR)
		;
	if (n > 0)
		return cx_err(
			-EOWNERDEAD,
			"cprxfer_wait_commit: the outgoing side pid %d exited before deciding",
			(int)ch->peer_pid);
	if (cx_now_ns() >= ch->eof_ns + CX_DEATH_GRACE_NS)
		return cx_err(
			-ECONNRESET,
			"cprxfer_wait_commit: the outgoing side pid %d closed the connection without deciding and is still running",
			(int)ch->peer_pid);
	return cx_err(
		-ETIMEDOUT,
		"cprxfer_wait_commit: the connection closed; pid %d not seen exiting yet: call again",
		(int)ch->peer_pid);
}

CX_EXPORT int cprxfer_wait_commit(cprxfer_channel *ch, int timeout_ms)
{
	struct cx_ctl c;
	int rc;

	if (!ch)
		return cx_err(-EINVAL, "cprxfer_wait_commit: NULL channel");
	if (ch->op != CX_OP_NONE)
		return busy(ch, "cprxfer_wait_commit");
	if (ch->decide == CX_D_COMMITTED)
		return 0;
	if (ch->decide == CX_D_ABORTED)
		return cx_err(-ECANCELED,
			      "cprxfer_wait_commit: the outgoing side aborted");
	rc = check(ch, "cprxfer_wait_commit");
	if (rc < 0)
		return rc;
	if (ch->decide != CX_D_READY)
		return cx_err(
			-EINVAL,
			"cprxfer_wait_commit: no ready ack sent: call it after cprxfer_load() and cprxfer_ack(ch, 0, NULL)");
	take_peer_pidfd(ch);
	ch->io.accept_fds = false;
	cx_io_deadline(&ch->io, timeout_ms);
	if (ch->eof_ns)
		return undecided_eof(ch);
	rc = read_ctl(ch, "cprxfer_wait_commit", &c);
	if (rc == 0 && c.phase != CX_ACK_DECIDE)
		rc = cx_err(
			-EPROTO,
			"cprxfer_wait_commit: expected the decision, got an ACK frame of phase %d",
			c.phase);
	if (rc == 0 && c.status == 0) {
		ch->decide = CX_D_COMMITTED;
		return 0;
	}
	if (rc == 0) {
		ch->decide = CX_D_ABORTED;
		return cx_err(
			-ECANCELED,
			"cprxfer_wait_commit: the outgoing side aborted: %s",
			c.reason[0] ? c.reason : "(no reason given)");
	}
	if (rc == -ETIMEDOUT && timeout_ms == 0)
		return cx_err(
			-EAGAIN,
			"cprxfer_wait_commit: no decision yet (non-blocking step)");
	if (rc == -ETIMEDOUT)
		return cx_err(rc,
			      "cprxfer_wait_commit: no decision within %d ms",
			      timeout_ms);
	if (rc == -ECONNRESET) {
		ch->eof_ns = cx_now_ns();
		return undecided_eof(ch);
	}
	ch->broken = rc;
	return cx_err_prefix(rc, "cprxfer_wait_commit");
}

/* Send the decision: status 0 commit, < 0 abort. */
static int send_decision(cprxfer_channel *ch, int status, const char *reason)
{
	uint64_t before = ch->io.out_bytes;
	int rc;

	cx_io_deadline(&ch->io, ch->o.timeout_ms);
	rc = cx_send_ack(ch, CX_ACK_DECIDE, status, reason);
	if (rc < 0 && ch->io.out_bytes != before)
		ch->broken = rc; /* part of the frame left: out of step */
	return rc;
}

CX_EXPORT int cprxfer_commit(cprxfer_channel *ch)
{
	int rc = check(ch, "cprxfer_commit");

	if (rc < 0)
		return rc;
	if (ch->decide != CX_D_ACKED)
		return cx_err(
			-EINVAL,
			"cprxfer_commit: the incoming side has not acked ready: cprxfer_wait_ack() must return 0 first");
	rc = send_decision(ch, 0, NULL);
	if (rc < 0) {
		/* The peer cannot have read a commit: we keep ownership. */
		ch->decide = CX_D_ABORTED;
		return cx_err_prefix(
			rc,
			"cprxfer_commit: not delivered, this process still owns the state");
	}
	ch->decide = CX_D_COMMITTED;
	if (ch->succ)
		cx_successor_committed(ch->succ);
	return 0;
}

CX_EXPORT int cprxfer_abort(cprxfer_channel *ch, const char *reason)
{
	int rc;

	if (!ch)
		return cx_err(-EINVAL, "cprxfer_abort: NULL channel");
	if (ch->conn)
		return cx_connecting_err(ch, "cprxfer_abort");
	if (ch->op != CX_OP_NONE)
		return busy(ch, "cprxfer_abort");
	if (ch->decide == CX_D_COMMITTED)
		return cx_err(
			-EALREADY,
			"cprxfer_abort: the handoff was committed: this process must not resume");
	if (ch->decide == CX_D_ABORTED)
		return 0;
	if (ch->decide == CX_D_LOADED || ch->decide == CX_D_READY)
		return cx_err(
			-EINVAL,
			"cprxfer_abort: only the outgoing side decides; the incoming side refuses with cprxfer_ack(ch, -errno, reason)");
	if (reason && strnlen(reason, CX_REASON_MAX + 1) > CX_REASON_MAX)
		return cx_err(-EINVAL,
			      "cprxfer_abort: reason longer than %d bytes",
			      CX_REASON_MAX);
	ch->decide = CX_D_ABORTED;
	if (ch->broken)
		return 0; /* the stream is out of step: the peer's load failed */
	rc = send_decision(ch, -ECANCELED,
			   reason ? reason : "the outgoing side aborted");
	/* A peer that is gone cannot commit either: the abort holds. */
	if (rc < 0 && rc != -ECONNRESET && rc != -ECHILD)
		return cx_err_prefix(rc, "cprxfer_abort");
	return 0;
}
