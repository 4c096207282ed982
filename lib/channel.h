/* SPDX-License-Identifier: MIT */
/* Channels: a connected AF_UNIX stream socket, its options and peer. */
#ifndef CX_CHANNEL_H
#define CX_CHANNEL_H

#include <stdbool.h>
#include <sys/types.h>

#include "io.h"
#include "opts.h"

struct cprxfer_channel {
	struct cx_io io;
	struct cprxfer_opts o;
	int broken; /* 0, or the error that desynchronised it */
	pid_t peer_pid;
	uid_t peer_uid;
	char peer_tag[CX_TAG_MAX + 1];
};

/* ACK phases: a handshake verdict, a failed load, an application ack. */
enum {
	CX_ACK_HELLO = 0,
	CX_ACK_LOAD = 1,
	CX_ACK_USER = 2
};

/*
 * Wrap sockfd (taken over, closed on failure too) without a handshake:
 * checks it is a connected AF_UNIX stream socket, makes it close-on-exec
 * and reads the peer's credentials.
 */
int cx_channel_new(int sockfd, const struct cprxfer_opts *o,
		   cprxfer_channel **out);

/* Exchange HELLOs and verdicts within the channel's timeout. */
int cx_handshake(cprxfer_channel *ch);

/* Send an ACK frame of phase with status and reason (may be NULL). */
int cx_send_ack(cprxfer_channel *ch, int phase, int status, const char *reason);

#endif
