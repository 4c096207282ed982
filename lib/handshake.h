/* SPDX-License-Identifier: MIT */
/*
 * The handshake as a non-blocking state machine.
 *
 *	struct cx_hs hs;
 *	cx_hs_start(&hs, ch);			// judges credentials
 *	while ((rc = cx_hs_step(&hs)) == -EAGAIN)
 *		poll ch's fd for hs.events until hs.deadline;
 *
 * cx_hs_step() returns 0 when both sides accepted, -EAGAIN when it
 * needs the socket readable (hs.events == POLLIN) or writable
 * (POLLOUT), or the failure (-errno, reason in errmsg). Once it has
 * returned 0 or a failure it returns the same again.
 *
 * It reads exactly the handshake's frames and never a byte more, so the
 * channel's stream starts clean behind it; it never accepts an fd or a
 * control message from the peer.
 */
#ifndef CX_HANDSHAKE_H
#define CX_HANDSHAKE_H

#include <stdint.h>

#include "channel.h"
#include "wire.h"

enum {
	CX_HS_HELLO,   /* sending our HELLO, reading the peer's */
	CX_HS_VERDICT, /* sending our verdict, reading the peer's */
	CX_HS_DONE,
};

/* The largest frame either side sends in a handshake. */
#define CX_HS_FRAME_MAX (CX_HDR + CX_ACK_LEN + CX_REASON_MAX)

struct cx_hs {
	cprxfer_channel *ch; /* not owned */
	int state;
	short events;	  /* what -EAGAIN waits for: POLLIN or POLLOUT */
	int64_t deadline; /* ns, CLOCK_MONOTONIC; INT64_MAX: none */
	int refusal;	  /* ours, once decided: sent, then returned */
	bool peer_gone;	  /* our send failed; its words may still be there */
	int result;	  /* once CX_HS_DONE: 0 or -errno */
	uint32_t peer_features;

	/* Bytes queued to send: HELLO, then a verdict. */
	uint8_t out[2 * CX_HS_FRAME_MAX];
	size_t olen, opos;

	/* The frame being read: header, then exactly its payload. */
	uint8_t in[CX_HS_FRAME_MAX];
	size_t ineed, ipos;

	char msg[CX_REASON_MAX]; /* the reason of a refusal or failure */
};

/*
 * Begin the handshake on ch (already wrapped by cx_channel_new), with
 * the deadline ch's timeout from now. The peer's kernel credentials are
 * judged here, before anything is received: a peer that may not talk
 * to us is refused without installing any fd it sent.
 */
void cx_hs_start(struct cx_hs *hs, cprxfer_channel *ch);

/* Make progress without blocking: 0, -EAGAIN (see hs->events), -errno. */
int cx_hs_step(struct cx_hs *hs);

/*
 * Step and poll until done or hs->deadline. watch_fd (-1: none) is
 * polled too: readable, the handshake fails at once with -ECHILD.
 */
int cx_hs_run(struct cx_hs *hs, int watch_fd);

#endif
