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

static int check(cprxfer_channel *ch, const char *what)
{
	if (!ch)
		return cx_err(-EINVAL, "%s: NULL channel", what);
	if (ch->conn)
		return cx_connecting_err(ch, what);
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
	if (!ch->broken &&
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
static int peek_decision(cprxfer_channel *ch)
{
	struct cx_frame f;
	struct cx_ctl c;
	int rc;

	rc = cx_io_fill(&ch->io, CX_HDR);
	if (rc < 0)
		return rc;
	if (cx_frame_parse(cx_io_peek(&ch->io), &f) < 0 || f.type != CX_F_ACK)
		return 0;
	rc = read_ctl(ch, "cprxfer_load", &c);
	if (rc < 0)
		return rc;
	if (c.phase == CX_ACK_DECIDE && c.status < 0) {
		ch->decide = CX_D_ABORTED;
		return cx_err(-ECANCELED,
			      "cprxfer_load: the outgoing side aborted: %s",
			      c.reason);
	}
	return cx_err(
		-EPROTO,
		"cprxfer_load: expected a state stream, got an ACK frame of phase %d, status %d",
		c.phase, c.status);
}

CX_EXPORT int cprxfer_load(cprxfer_channel *ch, cprxfer_state **out)
{
	char why[CX_REASON_MAX];
	int rc = check(ch, "cprxfer_load");

	if (rc < 0)
		return rc;
	if (!out)
		return cx_err(-EINVAL, "cprxfer_load: NULL output");
	cx_io_deadline(&ch->io, ch->o.timeout_ms);
	ch->io.accept_fds = true;
	rc = peek_decision(ch);
	if (rc == 0)
		rc = cx_decode(&ch->io, &ch->o, CX_MODE_SOCKET, out);
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
	return cx_err(rc, "cprxfer_load: %s", why);
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
