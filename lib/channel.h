/* SPDX-License-Identifier: MIT */
/* Channels: a connected AF_UNIX stream socket, its options and peer. */
#ifndef CX_CHANNEL_H
#define CX_CHANNEL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "io.h"
#include "opts.h"

struct cprxfer_successor;
struct cx_connecting;

/*
 * What cprxfer_channel_fd()'s epoll fd holds (lib/chanpoll.c): wanted
 * (want, deadline, extra) and registered (the fields named *_fd and
 * *_reg, with their events in *_ev).
 */
struct cx_chan_poll {
	int ep;		  /* the epoll fd, -1 until first asked for */
	uint32_t want;	  /* socket events the operation needs */
	int64_t deadline; /* CLOCK_MONOTONIC ns; INT64_MAX: none */
	int timer_fd;	  /* timerfd for the deadline, -1 until needed */
	int extra;	  /* one more fd (a path's waiter), -1: none */
	int sock_fd, watch_fd, timer_reg, extra_reg;
	uint32_t sock_ev, watch_ev, timer_ev, extra_ev;
};

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

	/* cprxfer_channel_fd()'s epoll fd and what it holds. */
	struct cx_chan_poll poll;

	/*
	 * A non-blocking save (cprxfer_save_start/_step) or load
	 * (cprxfer_load_step) in progress: every other call but close
	 * fails with -EINPROGRESS until it ends.
	 */
	enum {
		CX_OP_NONE = 0,
		CX_OP_SAVE,
		CX_OP_LOAD
	} op;
	int64_t op_deadline; /* CLOCK_MONOTONIC ns; INT64_MAX: none */
	uint64_t op_before;  /* save: io.out_bytes when it started */
	bool op_refused;     /* save: the peer spoke; reading its ack */
	int64_t op_grace; /* save: hang-up seen; wait until then for a pidfd */
	struct cx_spool *sv;  /* save: the encoded stream still to send */
	uint64_t ld_scan;     /* load: buffered bytes checked, whole frames */
	uint64_t ld_declared; /* load: BEGIN's declared bytes (0: not yet) */
	uint64_t ld_parked;   /* load: bytes of values read apart (io.parks) */
	uint64_t ld_fds;      /* load: fds the FDS frames so far announced */
	/* load: the checksum of the stream's first ld_crc_at bytes; where
	 * they end: ld_crc_rel in the buffer (from rpos), or in a park */
	uint32_t ld_crc;
	uint64_t ld_crc_at;
	size_t ld_crc_rel, ld_crc_park, ld_crc_park_off;

	/* The successor this channel leads to (cprxfer_spawn), or NULL. */
	struct cprxfer_successor *succ;

	/*
	 * A connect in progress (cprxfer_connect_start, lib/connect.c):
	 * until cprxfer_connect_step() returns 0 every other call fails
	 * with -EINPROGRESS. NULL once connected.
	 */
	struct cx_connecting *conn;
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

/*
 * Wrap sockfd (taken over, closed on failure too) as it is, without a
 * check: a socket still to be connected (cprxfer_connect_start). Once
 * it is, cx_channel_peer_creds() reads the peer's credentials.
 */
int cx_channel_alloc(int sockfd, const struct cprxfer_opts *o,
		     cprxfer_channel **out);
int cx_channel_peer_creds(cprxfer_channel *ch);

/* A connect in progress: -EINPROGRESS naming what (connect.c). */
int cx_connecting_err(const cprxfer_channel *ch, const char *what);
/* Cancel and free ch->conn (cprxfer_channel_close). */
void cx_connecting_free(cprxfer_channel *ch);

/* Exchange HELLOs and verdicts within the channel's timeout. */
int cx_handshake(cprxfer_channel *ch);

/* Send an ACK frame of phase with status and reason (may be NULL). */
int cx_send_ack(cprxfer_channel *ch, int phase, int status, const char *reason);

/*
 * Event-loop plumbing (lib/chanpoll.c). Each operation says what it
 * waits for; cprxfer_channel_fd()'s epoll set follows, and is only made
 * when a caller asks for the fd. Every channel calls cx_chan_poll_init()
 * when it is made (cx_channel_new does) and cx_chan_poll_fini() when
 * freed. The setters return 0 or -errno with a reason.
 */
void cx_chan_poll_init(cprxfer_channel *ch);
void cx_chan_poll_fini(cprxfer_channel *ch);
/* The epoll fd, made on the first call and brought up to date. */
int cx_chan_poll_fd(cprxfer_channel *ch);
/* Socket events to wait for: EPOLLIN (default), EPOLLIN | EPOLLOUT. */
int cx_chan_want(cprxfer_channel *ch, uint32_t events);
/* The fd turns readable at this deadline (INT64_MAX: none). */
int cx_chan_deadline(cprxfer_channel *ch, int64_t deadline_ns);
/* One more fd to wait on (-1: none), e.g. the path waiter's inotify fd. */
int cx_chan_extra(cprxfer_channel *ch, int fd);
/* After ch->io.fd or ch->io.watch_fd changed: follow them. */
int cx_chan_resync(cprxfer_channel *ch);

#endif
