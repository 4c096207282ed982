/* SPDX-License-Identifier: MIT */
/* Channels: a connected AF_UNIX stream socket, its options and peer. */
#ifndef CX_CHANNEL_H
#define CX_CHANNEL_H

#include <stdbool.h>
#include <sys/types.h>

#include "io.h"
#include "opts.h"

struct cprxfer_successor;

/* Where a channel stands in the decision (docs/protocol.md). */
enum cx_decide {
	CX_D_NONE = 0,	/* no stream sent or loaded yet */
	CX_D_SENT,	/* outgoing: a stream went out, its ack not yet 0 */
	CX_D_ACKED,	/* outgoing: the last stream was acked ready */
	CX_D_LOADED,	/* incoming: a stream loaded, not acked ready */
	CX_D_READY,	/* incoming: acked ready, waiting for the decision */
	CX_D_COMMITTED, /* decided: commit (sent, or received) */
	CX_D_ABORTED,	/* decided: abort (sent, or received) */
};

struct cprxfer_channel {
	struct cx_io io;
	struct cprxfer_opts o;
	int broken; /* 0, or the error that desynchronised it */
	pid_t peer_pid;
	uid_t peer_uid;
	char peer_tag[CX_TAG_MAX + 1];

	enum cx_decide decide;
	/*
	 * The peer's pidfd (SO_PEERPIDFD), taken when we ack ready, to
	 * tell a dead outgoing side from one that just closed.
	 */
	bool peer_pidfd_taken;
	bool peer_gone; /* SO_PEERPIDFD said it had already exited */
	int peer_pidfd;
	int64_t eof_ns; /* when wait_commit first saw end of stream */

	/* cprxfer_channel_fd()'s epoll fd (socket + watched pidfd). */
	bool have_poll_fd;
	int poll_fd;

	/* The successor this channel leads to (cprxfer_spawn), or NULL. */
	struct cprxfer_successor *succ;
};

/*
 * ACK phases: a handshake verdict, a failed load, an application ack,
 * the outgoing side's decision (status 0 commit, < 0 abort).
 */
enum {
	CX_ACK_HELLO = 0,
	CX_ACK_LOAD = 1,
	CX_ACK_USER = 2,
	CX_ACK_DECIDE = 3
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
