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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "channel.h"
#include "cleanup.h"
#include "error.h"
#include "stream.h"
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

int cx_channel_new(int sockfd, const struct cprxfer_opts *o,
		   cprxfer_channel **out)
{
	cx_autoclose int fd = sockfd;
	cx_autofree cprxfer_channel *ch = NULL;
	struct sockaddr_storage sa = { 0 };
	socklen_t salen = sizeof(sa);
	struct ucred cred;
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
	len = sizeof(cred);
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
	    cred.pid == 0)
		return cx_err(-ENOTCONN, "fd %d: socket is not connected",
			      sockfd);
	fl = fcntl(fd, F_GETFD);
	if (fl < 0 ||
	    (!(fl & FD_CLOEXEC) && fcntl(fd, F_SETFD, fl | FD_CLOEXEC) < 0))
		return cx_err(-errno, "fd %d: making it close-on-exec: %s",
			      sockfd, strerror(errno));
	rc = clear_pass_options(fd);
	if (rc < 0)
		return rc;
	ch = calloc(1, sizeof(*ch));
	if (!ch)
		return cx_err(-ENOMEM, "channel: out of memory");
	rc = cx_io_init(&ch->io, fd, true);
	if (rc < 0)
		return rc;
	cx_opts_copy(&ch->o, o);
	/* fds a peer attaches to ack frames count too. */
	ch->io.max_fds = cx_opts_max_fds(&ch->o);
	ch->peer_pid = cred.pid;
	ch->peer_uid = cred.uid;
	cx_steal_fd(&fd);
	*out = cx_steal_ptr(&ch);
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

/*
 * Read an ACK frame: 0 if the peer accepted, the peer's negative errno
 * (reason in errmsg) if it refused.
 */
static int recv_ack(cprxfer_channel *ch, const char *what)
{
	uint8_t h[CX_HDR], p[CX_ACK_LEN];
	char reason[CX_REASON_MAX + 1];
	struct cx_frame f;
	int32_t status;
	size_t rlen;
	int rc;

	rc = cx_io_read(&ch->io, h, sizeof(h));
	if (rc == 0)
		rc = cx_frame_parse(h, &f);
	if (rc < 0)
		return rc;
	if (f.type != CX_F_ACK || f.len < CX_ACK_LEN ||
	    f.len > CX_ACK_LEN + CX_REASON_MAX)
		return cx_err(-EPROTO,
			      "%s: expected an ACK frame, got %s of %llu bytes",
			      what, cx_frame_name(f.type),
			      (unsigned long long)f.len);
	rc = cx_io_read(&ch->io, p, sizeof(p));
	if (rc < 0)
		return rc;
	rlen = cx_get16(p + 6);
	if (CX_ACK_LEN + rlen != f.len)
		return cx_err(-EPROTO, "%s: malformed ACK frame", what);
	rc = cx_io_read(&ch->io, reason, rlen);
	if (rc < 0)
		return rc;
	reason[rlen] = 0;
	status = (int32_t)cx_get32(p);
	if (status > 0 || status < -4095 || status == -ETIMEDOUT ||
	    status == -ECONNRESET)
		return cx_err(-EPROTO, "%s: ACK with invalid status %d", what,
			      status);
	if (status < 0)
		return cx_err(status, "peer refused%s: %s",
			      cx_get16(p + 4) == CX_ACK_LOAD ? " the stream"
							     : "",
			      rlen ? reason : "(no reason given)");
	return 0;
}

static int check(cprxfer_channel *ch, const char *what)
{
	if (!ch)
		return cx_err(-EINVAL, "%s: NULL channel", what);
	if (ch->broken)
		return cx_err(
			-EPIPE,
			"%s: channel unusable after an earlier failure (error %d)",
			what, ch->broken);
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
	cx_close(ch->io.fd);
	cx_io_fini(&ch->io);
	free(ch);
}

CX_EXPORT int cprxfer_channel_set_timeout(cprxfer_channel *ch, int timeout_ms)
{
	if (!ch)
		return cx_err(-EINVAL,
			      "cprxfer_channel_set_timeout: NULL channel");
	ch->o.timeout_ms = timeout_ms < 0 ? -1 : timeout_ms;
	return 0;
}

CX_EXPORT int cprxfer_channel_peer(const cprxfer_channel *ch, pid_t *pid,
				   uid_t *uid, const char **tag)
{
	if (!ch)
		return cx_err(-EINVAL, "cprxfer_channel_peer: NULL channel");
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

CX_EXPORT int cprxfer_load(cprxfer_channel *ch, cprxfer_state **out)
{
	char why[CX_REASON_MAX];
	int rc = check(ch, "cprxfer_load");

	if (rc < 0)
		return rc;
	if (!out)
		return cx_err(-EINVAL, "cprxfer_load: NULL output");
	cx_io_deadline(&ch->io, ch->o.timeout_ms);
	rc = cx_decode(&ch->io, &ch->o, CX_MODE_SOCKET, out);
	if (rc == 0)
		return 0;
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
	cx_io_deadline(&ch->io, ch->o.timeout_ms);
	rc = cx_send_ack(ch, CX_ACK_USER, status, reason);
	if (rc < 0) {
		ch->broken = rc;
		return cx_err_prefix(rc, "cprxfer_ack");
	}
	return 0;
}

CX_EXPORT int cprxfer_wait_ack(cprxfer_channel *ch, int timeout_ms)
{
	int rc = check(ch, "cprxfer_wait_ack");

	if (rc < 0)
		return rc;
	cx_io_deadline(&ch->io, timeout_ms);
	rc = cx_io_wait_readable(&ch->io);
	if (rc == -ETIMEDOUT)
		return cx_err(rc, "cprxfer_wait_ack: no ack within %d ms",
			      timeout_ms);
	if (rc == 0)
		rc = recv_ack(ch, "cprxfer_wait_ack");
	if (rc == -ECONNRESET)
		return cx_err(
			rc,
			"cprxfer_wait_ack: peer closed or died before acknowledging");
	if (rc == -EPROTO || rc == -EPROTONOSUPPORT) {
		ch->broken = rc;
		return cx_err_prefix(rc, "cprxfer_wait_ack");
	}
	return rc;
}
