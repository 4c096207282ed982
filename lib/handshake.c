/* SPDX-License-Identifier: MIT */
/*
 * The handshake that opens every channel: each side sends a HELLO
 * (protocol version in the frame header, feature bits, application
 * tag), judges the peer's HELLO and its kernel-reported credentials
 * (SO_PEERCRED), and sends its verdict as an ACK frame. Either side's
 * refusal fails both with the refuser's errno and reason.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "channel.h"
#include "error.h"
#include "wire.h"

/* Feature bits 16..31 are ones a peer requires the other to have. */
#define CX_FEATURES_REQUIRED 0xffff0000u

static int send_hello(cprxfer_channel *ch)
{
	uint8_t p[CX_HDR + CX_HELLO_LEN];
	size_t tlen = strlen(ch->o.tag);
	int rc;

	cx_frame_put(p, CX_F_HELLO, 0, CX_HELLO_LEN + tlen);
	cx_put32(p + CX_HDR, CX_FEATURES);
	cx_put32(p + CX_HDR + 4, (uint32_t)getpid());
	cx_put32(p + CX_HDR + 8, (uint32_t)geteuid());
	cx_put16(p + CX_HDR + 12, (uint16_t)tlen);
	cx_put16(p + CX_HDR + 14, 0);
	rc = cx_io_write(&ch->io, p, sizeof(p));
	if (rc == 0)
		rc = cx_io_write(&ch->io, ch->o.tag, tlen);
	if (rc == 0)
		rc = cx_io_flush(&ch->io, NULL, 0);
	return rc;
}

static int recv_hello(cprxfer_channel *ch, uint32_t *features)
{
	uint8_t h[CX_HDR], p[CX_HELLO_LEN];
	struct cx_frame f;
	size_t tlen;
	int rc;

	rc = cx_io_read(&ch->io, h, sizeof(h));
	if (rc < 0)
		return rc;
	rc = cx_frame_parse(h, &f);
	if (rc < 0)
		return rc;
	if (f.type != CX_F_HELLO || f.len < CX_HELLO_LEN ||
	    f.len > CX_HELLO_LEN + CX_TAG_MAX)
		return cx_err(-EPROTO,
			      "expected a HELLO frame, got %s of %llu bytes",
			      cx_frame_name(f.type), (unsigned long long)f.len);
	rc = cx_io_read(&ch->io, p, sizeof(p));
	if (rc < 0)
		return rc;
	tlen = cx_get16(p + 12);
	if (CX_HELLO_LEN + tlen != f.len)
		return cx_err(-EPROTO,
			      "HELLO: tag length %zu does not match the frame",
			      tlen);
	rc = cx_io_read(&ch->io, ch->peer_tag, tlen);
	if (rc < 0)
		return rc;
	ch->peer_tag[tlen] = 0;
	if (strlen(ch->peer_tag) != tlen)
		return cx_err(-EPROTO, "HELLO: tag contains a NUL byte");
	*features = cx_get32(p);
	return 0;
}

/* Judge the peer: 0 or a refusal, with the reason in errmsg. */
static int judge(const cprxfer_channel *ch, uint32_t features)
{
	uid_t me = geteuid();
	unsigned i;
	bool ok;

	if (features & CX_FEATURES_REQUIRED & ~CX_FEATURES)
		return cx_err(
			-EPROTONOSUPPORT,
			"peer requires features 0x%08x that this library lacks",
			features & CX_FEATURES_REQUIRED & ~CX_FEATURES);
	ok = ch->peer_uid == me;
	for (i = 0; !ok && i < ch->o.nuids; i++)
		ok = ch->peer_uid == ch->o.uids[i];
	for (i = 0; !ok && i < ch->o.npids; i++)
		ok = ch->peer_pid == ch->o.pids[i];
	if (!ok)
		return cx_err(
			-EPERM,
			"peer pid %d runs as uid %u, not uid %u and not an allowed peer",
			(int)ch->peer_pid, (unsigned)ch->peer_uid,
			(unsigned)me);
	if (ch->o.tag[0] && strcmp(ch->o.tag, ch->peer_tag))
		return cx_err(
			-EBADE,
			"peer's application tag '%s' differs from ours '%s'",
			ch->peer_tag, ch->o.tag);
	return 0;
}

/* Read the peer's verdict: 0, or its refusal. */
static int recv_verdict(cprxfer_channel *ch)
{
	uint8_t h[CX_HDR], p[CX_ACK_LEN];
	char reason[CX_REASON_MAX + 1];
	struct cx_frame f;
	size_t rlen;
	int32_t status;
	int rc;

	rc = cx_io_read(&ch->io, h, sizeof(h));
	if (rc < 0)
		return rc;
	rc = cx_frame_parse(h, &f);
	if (rc < 0)
		return rc;
	if (f.type != CX_F_ACK || f.len < CX_ACK_LEN ||
	    f.len > CX_ACK_LEN + CX_REASON_MAX)
		return cx_err(-EPROTO, "expected the peer's verdict, got %s",
			      cx_frame_name(f.type));
	rc = cx_io_read(&ch->io, p, sizeof(p));
	if (rc < 0)
		return rc;
	rlen = cx_get16(p + 6);
	if (CX_ACK_LEN + rlen != f.len || cx_get16(p + 4) != CX_ACK_HELLO)
		return cx_err(-EPROTO, "malformed handshake verdict");
	rc = cx_io_read(&ch->io, reason, rlen);
	if (rc < 0)
		return rc;
	reason[rlen] = 0;
	status = (int32_t)cx_get32(p);
	if (status > 0 || status < -4095)
		return cx_err(-EPROTO, "handshake verdict with status %d",
			      status);
	if (status < 0)
		return cx_err(status, "peer refused the handshake: %s", reason);
	return 0;
}

int cx_handshake(cprxfer_channel *ch)
{
	uint32_t features = 0;
	int rc, verdict;

	cx_io_deadline(&ch->io, ch->o.timeout_ms);
	rc = send_hello(ch);
	if (rc == -EREMOTEIO || rc == 0)
		rc = recv_hello(ch, &features);
	if (rc == -EPROTONOSUPPORT || rc == -EPROTO) {
		char why[CX_REASON_MAX];

		/* Tell a peer of another version why, as far as it reads. */
		snprintf(why, sizeof(why), "%s", cprxfer_errmsg());
		cx_send_ack(ch, CX_ACK_HELLO, rc, why);
		return cx_err(rc, "handshake: %s", why);
	}
	if (rc < 0)
		return cx_err_prefix(rc, "handshake");
	verdict = judge(ch, features);
	if (verdict < 0) {
		char why[CX_REASON_MAX];

		snprintf(why, sizeof(why), "%s", cprxfer_errmsg());
		cx_send_ack(ch, CX_ACK_HELLO, verdict, why);
		return cx_err(verdict, "%s", why);
	}
	rc = cx_send_ack(ch, CX_ACK_HELLO, 0, NULL);
	/*
	 * A peer that refused us may have closed already: our write fails,
	 * but its verdict is still there to read, and it says why.
	 */
	if (rc == 0 || rc == -ECONNRESET || rc == -EREMOTEIO) {
		int v = recv_verdict(ch);

		if (rc == 0 || v != -ECONNRESET)
			rc = v;
	}
	if (rc < 0 && rc != -EPERM && rc != -EBADE && rc != -EPROTONOSUPPORT)
		return cx_err_prefix(rc, "handshake");
	return rc;
}
