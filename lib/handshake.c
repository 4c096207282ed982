/* SPDX-License-Identifier: MIT */
/*
 * The handshake that opens every channel, as a state machine
 * (handshake.h). Each side
 *
 *   1. judges the peer's kernel-reported credentials (SO_PEERCRED, and
 *      for a peer allowed by pid, its pidfd) before receiving anything,
 *   2. sends its HELLO (protocol version in the frame header, feature
 *      bits, application tag), and a refusal at once if step 1 failed,
 *   3. reads the peer's HELLO, judges its version, features and tag,
 *   4. sends its verdict as an ACK frame and reads the peer's.
 *
 * Either side's refusal fails both with the refuser's errno and reason.
 * Frames are read with their exact lengths and without a control
 * buffer: an fd or any other control message attached to a handshake
 * frame is discarded by the kernel uninstalled (MSG_CTRUNC) and fails
 * the handshake with -EPROTO.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "channel.h"
#include "cleanup.h"
#include "error.h"
#include "handshake.h"
#include "rendezvous.h"
#include "wire.h"

/* Feature bits 16..31 are ones a peer requires the other to have. */
#define CX_FEATURES_REQUIRED 0xffff0000u

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif

/* PIDFD_GET_INFO (Linux 6.13), declared here for older headers. */
struct cx_pidfd_info {
	uint64_t mask;
	uint64_t cgroupid;
	uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid;
	uint32_t fsuid, fsgid;
	int32_t exit_code;
};
#define CX_PIDFD_GET_INFO _IOWR(0xFF, 11, struct cx_pidfd_info)
#define CX_PIDFD_INFO_PID (1ull << 0)

/*
 * The pid the pidfd pfd names now, from /proc/self/fdinfo (kernels
 * before PIDFD_GET_INFO): the pid, -1 if the process is gone, or -2 if
 * this cannot be read.
 */
static pid_t fdinfo_pid(int pfd)
{
	char path[64], line[128];
	cx_autoclose int fd = -1;
	ssize_t n;
	char *p;

	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", pfd);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -2;
	n = read(fd, line, sizeof(line) - 1);
	if (n <= 0)
		return -2;
	line[n] = 0;
	p = strstr(line, "\nPid:");
	if (!p)
		return -2;
	return (pid_t)strtol(p + 5, NULL, 10);
}

/*
 * Is the process that connected still alive, with pid? 1 yes, or the
 * kernel cannot tell (before SO_PEERPIDFD: SO_PEERCRED alone decides);
 * 0 no: it exited, and its pid may name another process by now.
 */
static int peer_still_is(int sock, pid_t pid)
{
	struct cx_pidfd_info info = { .mask = CX_PIDFD_INFO_PID };
	socklen_t len = sizeof(int);
	cx_autoclose int pfd = -1;
	pid_t now;

	if (getsockopt(sock, SOL_SOCKET, SO_PEERPIDFD, &pfd, &len) < 0) {
		pfd = -1;
		return errno == ENOPROTOOPT;
	}
	if (ioctl(pfd, CX_PIDFD_GET_INFO, &info) == 0)
		return (pid_t)info.pid == pid;
	if (errno == ESRCH)
		return 0;
	/* No PIDFD_GET_INFO (before 6.13), or a filter forbids ioctl. */
	now = fdinfo_pid(pfd);
	return now == -2 || now == pid;
}

/* Judge the peer's kernel credentials: 0 or -EPERM with the reason. */
static int judge_creds(const cprxfer_channel *ch)
{
	uid_t me = geteuid();
	unsigned i;

	if (ch->peer_uid == me)
		return 0;
	for (i = 0; i < ch->o.nuids; i++)
		if (ch->peer_uid == ch->o.uids[i])
			return 0;
	for (i = 0; i < ch->o.npids; i++) {
		if (ch->peer_pid != ch->o.pids[i])
			continue;
		if (peer_still_is(ch->io.fd, ch->peer_pid))
			return 0;
		return cx_err(
			-EPERM,
			"peer pid %d exited before it could be judged; its pid may name another process now",
			(int)ch->peer_pid);
	}
	return cx_err(
		-EPERM,
		"peer pid %d runs as uid %u, not uid %u and not an allowed peer",
		(int)ch->peer_pid, (unsigned)ch->peer_uid, (unsigned)me);
}

/* Judge the peer's HELLO: 0 or a refusal, with the reason in errmsg. */
static int judge_hello(const struct cx_hs *hs)
{
	const cprxfer_channel *ch = hs->ch;
	uint32_t missing = hs->peer_features & CX_FEATURES_REQUIRED &
			   ~(uint32_t)CX_FEATURES;

	if (missing)
		return cx_err(
			-EPROTONOSUPPORT,
			"peer requires features 0x%08x that this library lacks",
			missing);
	if (ch->o.tag[0] && strcmp(ch->o.tag, ch->peer_tag))
		return cx_err(
			-EBADE,
			"peer's application tag '%s' differs from ours '%s'",
			ch->peer_tag, ch->o.tag);
	return 0;
}

static void queue_hello(struct cx_hs *hs)
{
	const char *tag = hs->ch->o.tag;
	size_t tlen = strlen(tag);
	uint8_t *p = hs->out + hs->olen;

	cx_frame_put(p, CX_F_HELLO, 0, CX_HELLO_LEN + tlen);
	cx_put32(p + CX_HDR, CX_FEATURES);
	cx_put32(p + CX_HDR + 4, (uint32_t)getpid());
	cx_put32(p + CX_HDR + 8, (uint32_t)geteuid());
	cx_put16(p + CX_HDR + 12, (uint16_t)tlen);
	cx_put16(p + CX_HDR + 14, 0);
	memcpy(p + CX_HDR + CX_HELLO_LEN, tag, tlen);
	hs->olen += CX_HDR + CX_HELLO_LEN + tlen;
}

static void queue_verdict(struct cx_hs *hs, int status, const char *reason)
{
	size_t rlen = reason ? strnlen(reason, CX_REASON_MAX) : 0;
	uint8_t *p = hs->out + hs->olen;

	cx_frame_put(p, CX_F_ACK, 0, CX_ACK_LEN + rlen);
	cx_put32(p + CX_HDR, (uint32_t)status);
	cx_put16(p + CX_HDR + 4, CX_ACK_HELLO);
	cx_put16(p + CX_HDR + 6, (uint16_t)rlen);
	if (rlen)
		memcpy(p + CX_HDR + CX_ACK_LEN, reason, rlen);
	hs->olen += CX_HDR + CX_ACK_LEN + rlen;
}

/*
 * Refuse the peer with code; errmsg holds the reason it is told. What
 * we return later is prefix + that reason.
 */
static void refuse(struct cx_hs *hs, int code, const char *prefix)
{
	char why[CX_REASON_MAX];

	snprintf(why, sizeof(why), "%s", cx_errmsg_get());
	queue_verdict(hs, code, why);
	snprintf(hs->msg, sizeof(hs->msg), "%s%s", prefix, why);
	hs->refusal = code;
}

/* End the handshake with rc (0, or -errno with errmsg set). */
static int finish(struct cx_hs *hs, int rc)
{
	hs->state = CX_HS_DONE;
	hs->result = rc;
	hs->events = 0;
	if (rc < 0)
		snprintf(hs->msg, sizeof(hs->msg), "%s", cx_errmsg_get());
	return rc;
}

/* Send what is queued: 0 (all sent, or the peer is gone), -EAGAIN, -errno. */
static int flush_out(struct cx_hs *hs)
{
	int fd = hs->ch->io.fd;

	while (hs->opos < hs->olen) {
		struct iovec iov = { .iov_base = hs->out + hs->opos,
				     .iov_len = hs->olen - hs->opos };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
		ssize_t n;

		cx_io_hook(fd, CX_HOOK_SEND, &iov.iov_len);
		n = sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (n > 0) {
			size_t done = (size_t)n;

			cx_io_hook(fd, CX_HOOK_SENT, &done);
			hs->opos += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return -EAGAIN;
		if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
			/* Its HELLO and verdict may still wait to be read. */
			hs->peer_gone = true;
			hs->opos = hs->olen;
			return 0;
		}
		return cx_err(n < 0 ? -errno : -EIO, "handshake: send: %s",
			      n < 0 ? strerror(errno) : "no progress");
	}
	return 0;
}

/*
 * Read the rest of the current frame: 0 when hs->in holds all of it,
 * -EAGAIN, or -errno. Never reads past the frame; never takes fds.
 */
static int read_frame(struct cx_hs *hs, int type, size_t min, size_t max)
{
	int fd = hs->ch->io.fd;

	if (!hs->ineed)
		hs->ineed = CX_HDR;
	while (hs->ipos < hs->ineed) {
		struct iovec iov = { .iov_base = hs->in + hs->ipos,
				     .iov_len = hs->ineed - hs->ipos };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
		struct cx_frame f;
		ssize_t n;
		int rc;

		cx_io_hook(fd, CX_HOOK_RECV, &iov.iov_len);
		n = recvmsg(fd, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return -EAGAIN;
		if (n < 0 && (errno == ECONNRESET || errno == EPIPE))
			return cx_err(-ECONNRESET, "peer reset the connection");
		if (n < 0)
			return cx_err(-errno, "recvmsg: %s", strerror(errno));
		if (m.msg_flags & MSG_CTRUNC)
			return cx_err(
				-EPROTO,
				"peer attached fds or other control data to its %s frame; the kernel discarded them",
				cx_frame_name(type));
		if (n == 0)
			return cx_err(-ECONNRESET,
				      "peer closed the connection");
		{
			size_t done = (size_t)n;

			cx_io_hook(fd, CX_HOOK_RECVD, &done);
		}
		hs->ipos += (size_t)n;
		if (hs->ipos != CX_HDR || hs->ineed != CX_HDR)
			continue;
		/* The header is in: learn the payload's length. */
		rc = cx_frame_parse(hs->in, &f);
		if (rc < 0)
			return rc;
		if (f.type != type || f.len < min || f.len > max)
			return cx_err(
				-EPROTO,
				"expected a %s frame, got %s of %llu bytes",
				cx_frame_name(type), cx_frame_name(f.type),
				(unsigned long long)f.len);
		hs->ineed = CX_HDR + (size_t)f.len;
	}
	return 0;
}

/* The peer's HELLO is in hs->in: take its features and tag. */
static int parse_hello(struct cx_hs *hs)
{
	const uint8_t *p = hs->in + CX_HDR;
	size_t tlen = cx_get16(p + 12);
	cprxfer_channel *ch = hs->ch;

	if (CX_HDR + CX_HELLO_LEN + tlen != hs->ineed)
		return cx_err(-EPROTO,
			      "HELLO: tag length %zu does not match the frame",
			      tlen);
	memcpy(ch->peer_tag, p + CX_HELLO_LEN, tlen);
	ch->peer_tag[tlen] = 0;
	if (strlen(ch->peer_tag) != tlen)
		return cx_err(-EPROTO, "HELLO: tag contains a NUL byte");
	hs->peer_features = cx_get32(p);
	return 0;
}

/* The peer's verdict is in hs->in: 0, or its refusal. */
static int parse_verdict(struct cx_hs *hs)
{
	const uint8_t *p = hs->in + CX_HDR;
	size_t rlen = cx_get16(p + 6);
	char reason[CX_REASON_MAX + 1];
	int32_t status;

	if (CX_HDR + CX_ACK_LEN + rlen != hs->ineed ||
	    cx_get16(p + 4) != CX_ACK_HELLO)
		return cx_err(-EPROTO, "handshake: malformed verdict");
	memcpy(reason, p + CX_ACK_LEN, rlen);
	reason[rlen] = 0;
	status = (int32_t)cx_get32(p);
	if (status > 0 || status < -4095)
		return cx_err(-EPROTO, "handshake: verdict with status %d",
			      status);
	if (status < 0)
		return cx_err(status, "peer refused the handshake: %s", reason);
	return 0;
}

void cx_hs_start(struct cx_hs *hs, cprxfer_channel *ch)
{
	int rc;

	memset(hs, 0, sizeof(*hs));
	hs->ch = ch;
	hs->state = CX_HS_HELLO;
	hs->deadline = cx_deadline_of(ch->o.timeout_ms);
	queue_hello(hs);
	/* Before the first receive: an unwanted peer installs nothing. */
	rc = judge_creds(ch);
	if (rc < 0)
		refuse(hs, rc, "");
}

int cx_hs_step(struct cx_hs *hs)
{
	int rc;

	for (;;) {
		if (hs->state == CX_HS_DONE)
			return hs->result < 0
				       ? cx_err(hs->result, "%s", hs->msg)
				       : 0;
		rc = flush_out(hs);
		if (rc == -EAGAIN) {
			hs->events = POLLOUT;
			return rc;
		}
		if (rc < 0)
			return finish(hs, rc);
		if (hs->refusal) {
			/* Told the peer why (as far as it listens): done. */
			hs->state = CX_HS_DONE;
			hs->result = hs->refusal;
			continue;
		}
		if (hs->state == CX_HS_HELLO) {
			rc = read_frame(hs, CX_F_HELLO, CX_HELLO_LEN,
					CX_HELLO_LEN + CX_TAG_MAX);
			if (rc == 0)
				rc = parse_hello(hs);
			if (rc == -EAGAIN)
				break;
			if (rc == -EPROTONOSUPPORT || rc == -EPROTO) {
				/* Tell a peer of another version why. */
				refuse(hs, rc, "handshake: ");
				continue;
			}
			if (rc < 0)
				return finish(hs,
					      cx_err_prefix(rc, "handshake"));
			rc = judge_hello(hs);
			if (rc < 0) {
				refuse(hs, rc, "");
				continue;
			}
			queue_verdict(hs, 0, NULL);
			hs->state = CX_HS_VERDICT;
			hs->ineed = hs->ipos = 0;
			continue;
		}
		rc = read_frame(hs, CX_F_ACK, CX_ACK_LEN,
				CX_ACK_LEN + CX_REASON_MAX);
		if (rc == -EAGAIN)
			break;
		if (rc == 0)
			rc = parse_verdict(hs);
		else
			rc = cx_err_prefix(rc, "handshake");
		return finish(hs, rc);
	}
	hs->events = POLLIN;
	return -EAGAIN;
}

int cx_hs_run(struct cx_hs *hs, int watch_fd)
{
	for (;;) {
		struct pollfd p[2] = {
			{ .fd = hs->ch->io.fd },
			{ .fd = watch_fd, .events = POLLIN },
		};
		int rc = cx_hs_step(hs), ms, n;

		if (rc != -EAGAIN)
			return rc;
		p[0].events = hs->events;
		ms = cx_ms_left(hs->deadline);
		n = poll(p, watch_fd >= 0 ? 2 : 1, ms);
		if (n < 0 && errno != EINTR)
			return finish(hs, cx_err(-errno, "handshake: poll: %s",
						 strerror(errno)));
		if (n > 0 && watch_fd >= 0 && p[1].revents)
			return finish(
				hs,
				cx_err(-ECHILD,
				       "handshake: the watched fd became readable"));
		if (n == 0 && ms == 0)
			return finish(
				hs,
				cx_err(-ETIMEDOUT,
				       "handshake: timed out waiting for the peer"));
	}
}

int cx_handshake(cprxfer_channel *ch)
{
	struct cx_hs hs;

	cx_hs_start(&hs, ch);
	return cx_hs_run(&hs, -1);
}
