/* SPDX-License-Identifier: MIT */
/*
 * handoff-echo: a single-threaded epoll TCP echo server that hands its
 * listening socket and its live client connections to a new instance
 * of itself without closing a connection, losing a byte, or stopping
 * its event loop for longer than the blackout.
 *
 * Run it:
 *   handoff-echo --port 7000 --control /tmp/echo.sock &   # old instance
 *   nc 127.0.0.1 7000                                     # a client
 *   handoff-echo --incoming /tmp/echo.sock &              # new instance
 *   kill -USR1 %1                                         # hand off
 * or let the old instance start its successor itself:
 *   handoff-echo --port 7000 --spawn &  kill -USR1 %1
 *
 * SIGUSR1 starts a handoff, SIGTERM stops. --port 0 picks a free port;
 * the first line on stdout names it. --refuse makes the new instance
 * refuse the final round, to watch the old one roll back. --no-split
 * sends every client in the final round, to compare. --stats prints one
 * JSON line per handoff on stdout: the old instance's
 * "max_loop_gap_us" (its longest loop iteration while the prepare
 * rounds ran) and "prepare_iterations"; the new instance's
 * "blackout_us" (from the old one's stop to the commit reaching it,
 * when it starts serving), "prepared" and "new_in_final" (clients
 * per kind of round).
 *
 * One epoll set ("loop") holds the signalfd, the handoff's fd (the
 * channel's, or the listener's while waiting for the old instance) and
 * a second epoll set ("work") holding the listening socket and every
 * client. Pausing all clients is one epoll_ctl on "loop".
 *
 * The handoff, old side (every step is taken when the channel's fd is
 * readable; nothing waits):
 *  1. connect (or spawn) the new instance;
 *  2. PREPARE rounds: the listening socket and every client socket, as
 *     fd arrays of up to 253 (one sendmsg), one round per loop
 *     iteration. The old instance keeps serving them: the new one holds
 *     copies it does not touch before the commit. A client that leaves
 *     meanwhile is closed at once (or, while a round naming it is being
 *     sent, right after);
 *  3. wait for each ack, still serving;
 *  4. FINAL round, the blackout: stop serving (stop reading clients and
 *     accepting), then send only what changed: which prepared clients
 *     are still open, the clients accepted since, and the bytes read
 *     but not yet echoed. Bytes the clients send from now on wait in
 *     the kernel, in the sockets both instances share;
 *  5. wait for the ack: commit and exit, or, on any failure or refusal
 *     or timeout, abort and serve on as before.
 * New side: accept (or inherit), load and ack each prepare round (watch
 * the clients in "work", which is not in "loop" yet), load the final
 * round, ack, wait for the decision, then put "work" into "loop". A
 * client is served by exactly one instance at a time, and no byte is
 * lost.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#define TAG		   "handoff-echo/1"
#define HANDOFF_TIMEOUT_MS 10000
#define NOT_PREPARED	   UINT32_MAX
/* Clients per prepare round (one sendmsg batch): each is a short step. */
#define PREPARE_CHUNK 253

/* What an event of the "loop" set is about. */
enum {
	EV_SIGNAL = 1,
	EV_WORK,
	EV_HANDOFF
};

enum phase {
	IDLE,
	/* old instance */
	CONNECTING,
	PREPARE_ACK, /* prepare round sent (or being sent), waiting */
	FINAL_ACK,   /* stopped, final round sent (or being sent) */
	/* new instance */
	ACCEPTING,
	LOADING, /* prepare rounds, then the final one */
	DECIDING,
};

struct client {
	int fd;
	size_t i;      /* index in server.c */
	uint32_t prep; /* index in the prepare round, or NOT_PREPARED */
	bool out;      /* watched for EPOLLOUT (pending bytes), not EPOLLIN */
	size_t plen;   /* bytes read, not yet echoed back */
	char *pend;
};

/* The final round's table: one entry per live client. */
struct live {
	uint32_t prep; /* NOT_PREPARED: the next fd of "new" */
	uint32_t plen; /* its bytes in "pending" */
};

struct server {
	int loop, work, sigfd, lfd;
	struct client **c;
	size_t n, cap;

	/* the handoff in progress */
	enum phase ph;
	const char *control; /* where the new instance listens */
	bool serving;	     /* "work" is in "loop" */
	bool spawn, split, refuse, stats, sending;
	cprxfer_successor *succ;
	cprxfer_listener *l;
	cprxfer_channel *ch;
	cprxfer_state *st; /* the round being sent */
	size_t cursor;	   /* next client to look at for a prepare round */
	size_t chunk;	   /* first prep index of the round being sent */
	/* Clients that left while the round being sent names their fd. */
	int doomed[PREPARE_CHUNK];
	size_t ndoomed;
	int64_t deadline, t_start, t_stop;

	/* measurements (--stats) */
	int schedfd;		   /* /proc/thread-self/schedstat */
	int64_t t_iter, wait_iter; /* this iteration's start */
	int64_t max_gap, max_run, iterations;
	size_t nprep, nnew;
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- clients: plain epoll echo serving ------------------------------ */

static int watch(int ep, int op, int fd, uint32_t events, void *ptr)
{
	struct epoll_event ev = { .events = events, .data.ptr = ptr };

	return epoll_ctl(ep, op, fd, &ev) < 0 ? -errno : 0;
}

static struct client *add_client(struct server *s, int fd, uint32_t prep)
{
	struct client *c;

	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 64;
		struct client **a = realloc(s->c, cap * sizeof(*a));

		if (!a)
			return NULL;
		s->c = a;
		s->cap = cap;
	}
	c = calloc(1, sizeof(*c));
	if (!c || watch(s->work, EPOLL_CTL_ADD, fd, EPOLLIN, c) < 0) {
		free(c);
		return NULL;
	}
	c->fd = fd;
	c->prep = prep;
	c->i = s->n;
	s->c[s->n++] = c;
	return c;
}

static void drop_client(struct server *s, struct client *c)
{
	/*
	 * Explicitly: a copy of the socket in the new instance (or in
	 * flight to it) would keep an epoll watch alive past close().
	 */
	epoll_ctl(s->work, EPOLL_CTL_DEL, c->fd, NULL);
	if (s->sending && c->prep != NOT_PREPARED && c->prep >= s->chunk)
		s->doomed[s->ndoomed++] = c->fd; /* a save is reading it */
	else
		close(c->fd);
	s->c[c->i] = s->c[--s->n];
	s->c[c->i]->i = c->i;
	free(c->pend);
	free(c);
}

/* Echo what can be written now; keep the rest. -1: the client left. */
static int flush_client(struct server *s, struct client *c)
{
	while (c->plen) {
		ssize_t w = send(c->fd, c->pend, c->plen, MSG_NOSIGNAL);

		if (w < 0 && errno != EAGAIN)
			return -1;
		if (w < 0)
			break;
		memmove(c->pend, c->pend + w, c->plen - (size_t)w);
		c->plen -= (size_t)w;
	}
	if (c->out == (c->plen != 0))
		return 0;
	c->out = c->plen != 0;
	return watch(s->work, EPOLL_CTL_MOD, c->fd, c->out ? EPOLLOUT : EPOLLIN,
		     c);
}

static int serve_client(struct server *s, struct client *c)
{
	char buf[65536];
	ssize_t r;
	char *p;

	if (c->plen)
		return flush_client(s, c);
	r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (r == 0 || (r < 0 && errno != EAGAIN))
		return -1;
	if (r < 0)
		return 0;
	p = realloc(c->pend, (size_t)r);
	if (!p)
		return -1;
	memcpy(p, buf, (size_t)r);
	c->pend = p;
	c->plen = (size_t)r;
	return flush_client(s, c);
}

/* One batch of client events: a bounded amount of work per iteration. */
static void serve_work(struct server *s)
{
	struct epoll_event ev[256];
	int n = epoll_wait(s->work, ev, 256, 0), i, fd;

	for (i = 0; i < n; i++) {
		struct client *c = ev[i].data.ptr;

		if (c && serve_client(s, c) < 0) {
			/* FIN now, even if a new instance holds a copy. */
			shutdown(c->fd, SHUT_RDWR);
			drop_client(s, c);
		}
		if (c)
			continue;
		fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd >= 0 && !add_client(s, fd, NOT_PREPARED))
			close(fd);
	}
}

/* Pause or resume every client and the listening socket at once. */
static int set_serving(struct server *s, bool on)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EV_WORK };

	if (epoll_ctl(s->loop, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL, s->work,
		      &ev) < 0)
		return -errno;
	s->serving = on;
	return 0;
}

/* ---- old instance: connect, prepare, final, decision ---------------- */

/* Start a new instance (--spawn) or reach it at s->control. */
static int connect_start(struct server *s)
{
	/* It can hand off the same way later. */
	char *argv[] = { "handoff-echo", "--inherit", "--spawn",
			 s->stats ? "--stats" : NULL, NULL };
	cprxfer_opts *o = cprxfer_opts_new();
	int rc;

	rc = o ? cprxfer_opts_set_tag(o, TAG) : -ENOMEM;
	if (rc == 0 && s->spawn)
		rc = cprxfer_spawn("/proc/self/exe", argv, NULL, o, &s->succ);
	if (rc == 0 && s->spawn)
		rc = cprxfer_successor_channel_start(s->succ, &s->ch);
	else if (rc == 0)
		rc = cprxfer_connect_start(s->control, HANDOFF_TIMEOUT_MS, o,
					   &s->ch);
	cprxfer_opts_free(o);
	return rc;
}

static int watch_handoff(struct server *s, int fd)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EV_HANDOFF };

	return epoll_ctl(s->loop, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

/* Start sending st; the rest goes with cprxfer_save_step(). */
static int send_round(struct server *s, cprxfer_state *st)
{
	int rc;

	cprxfer_state_free(s->st);
	s->st = st;
	if (!st)
		return -ENOMEM;
	rc = cprxfer_save_start(s->ch, st);
	s->sending = rc == -EAGAIN;
	return rc == -EAGAIN ? 0 : rc;
}

/*
 * The long-lived fds: the listening socket (first round) and the next
 * PREPARE_CHUNK clients not sent yet. A client that moved below the
 * cursor (drop_client swaps) goes in the final round instead.
 */
static cprxfer_state *prepare_round(struct server *s)
{
	cprxfer_state *st = cprxfer_state_new();
	int fds[PREPARE_CHUNK];
	size_t k = 0;
	int rc = st ? 0 : -ENOMEM;

	if (rc == 0 && s->nprep == 0)
		rc = cprxfer_put_fd(st, "listen", s->lfd);
	s->chunk = s->nprep;
	for (; s->split && s->cursor < s->n && k < PREPARE_CHUNK; s->cursor++) {
		struct client *c = s->c[s->cursor];

		if (c->prep == NOT_PREPARED) {
			c->prep = (uint32_t)s->nprep++;
			fds[k++] = c->fd;
		}
	}
	if (rc == 0)
		rc = cprxfer_put_fds(st, "clients", fds, k);
	if (rc == 0)
		return st;
	cprxfer_state_free(st);
	return NULL;
}

/* What changed since the prepare round; the clients are stopped. */
static cprxfer_state *final_round(struct server *s)
{
	cprxfer_state *st = cprxfer_state_new();
	struct live *t = calloc(s->n + 1, sizeof(*t));
	int *fds = calloc(s->n + 1, sizeof(int));
	size_t i, bytes = 0, off = 0;
	char *pend = NULL;
	int rc;

	for (i = 0; i < s->n; i++)
		bytes += s->c[i]->plen;
	pend = malloc(bytes + 1);
	rc = st && t && fds && pend ? 0 : -ENOMEM;
	s->nnew = 0;
	for (i = 0; rc == 0 && i < s->n; i++) {
		struct client *c = s->c[i];

		t[i] = (struct live){ c->prep, (uint32_t)c->plen };
		if (c->prep == NOT_PREPARED)
			fds[s->nnew++] = c->fd;
		if (c->plen)
			memcpy(pend + off, c->pend, c->plen);
		off += c->plen;
	}
	if (rc == 0)
		rc = cprxfer_put_u64(st, "stopped_ns", (uint64_t)s->t_stop);
	if (rc == 0)
		rc = cprxfer_put_blob(st, "live", t, s->n * sizeof(*t));
	if (rc == 0)
		rc = cprxfer_put_blob(st, "pending", pend, bytes);
	if (rc == 0)
		rc = cprxfer_put_fds(st, "new", fds, s->nnew);
	free(t);
	free(fds);
	free(pend);
	if (rc == 0)
		return st;
	cprxfer_state_free(st);
	return NULL;
}

/* How long this thread waited for a CPU so far (preempted), in ns. */
static int64_t cpu_wait_ns(struct server *s)
{
	unsigned long long run, wait = 0;
	char buf[128];
	ssize_t n = -1;

	if (s->schedfd >= 0)
		n = pread(s->schedfd, buf, sizeof(buf) - 1, 0);
	if (n > 0) {
		buf[n] = 0;
		sscanf(buf, "%llu %llu", &run, &wait);
	}
	return (int64_t)wait;
}

static void iteration_start(struct server *s)
{
	s->t_iter = now_ns();
	s->wait_iter = s->stats ? cpu_wait_ns(s) : 0;
}

/*
 * The loop ran from t_iter to now: count it if it served while
 * preparing, as it was (max_gap) and without the time other processes
 * had the CPU (max_run: what the loop itself did, blocking included).
 */
static void account(struct server *s, int64_t now)
{
	int64_t gap = now - s->t_iter;

	if (s->ph != CONNECTING && s->ph != PREPARE_ACK)
		return;
	s->iterations++;
	if (gap > s->max_gap)
		s->max_gap = gap;
	if (s->stats)
		gap -= cpu_wait_ns(s) - s->wait_iter;
	if (gap > s->max_run)
		s->max_run = gap;
}

static void sent(struct server *s)
{
	s->sending = false;
	while (s->ndoomed)
		close(s->doomed[--s->ndoomed]);
}

/* Take the outgoing handoff as far as it goes without waiting. */
static int out_advance(struct server *s)
{
	int rc;

	if (s->ph == CONNECTING) {
		rc = cprxfer_connect_step(s->ch);
		if (rc == 0)
			rc = send_round(s, prepare_round(s));
		if (rc < 0)
			return rc;
		s->ph = PREPARE_ACK;
	}
	for (;;) {
		rc = s->sending ? cprxfer_save_step(s->ch) : 0;
		if (rc < 0)
			return rc;
		sent(s);
		rc = cprxfer_wait_ack(s->ch, 0);
		if (rc < 0)
			return rc;
		if (s->ph == FINAL_ACK)
			break;
		if (s->split && s->cursor < s->n) {
			/* More to prepare: one round per loop iteration. */
			rc = send_round(s, prepare_round(s));
			return rc < 0 ? rc : -EAGAIN;
		}
		/* The blackout starts. */
		s->t_stop = now_ns();
		account(s, s->t_stop);
		rc = set_serving(s, false);
		if (rc == 0)
			rc = send_round(s, final_round(s));
		if (rc < 0)
			return rc;
		s->ph = FINAL_ACK;
	}
	/* Hand over, and never serve again. */
	return cprxfer_commit(s->ch) < 0 ? -ECANCELED : 1;
}

static void out_stats(struct server *s, const char *outcome)
{
	if (!s->stats)
		return;
	printf("{\"role\":\"old\",\"outcome\":\"%s\",\"clients\":%zu,\"prepared\":%zu,\"new_in_final\":%zu,\"max_loop_gap_us\":%lld,\"max_loop_run_us\":%lld,\"prepare_iterations\":%lld,\"prepare_us\":%lld,\"final_us\":%lld}\n",
	       outcome, s->n, s->nprep, s->nnew, (long long)s->max_gap / 1000,
	       (long long)s->max_run / 1000, (long long)s->iterations,
	       (long long)((s->t_stop ? s->t_stop : now_ns()) - s->t_start) /
		       1000,
	       s->t_stop ? (long long)(now_ns() - s->t_stop) / 1000 : 0LL);
	fflush(stdout);
}

/* End the outgoing handoff: 1 committed (exit), else roll back. */
static int out_end(struct server *s, int rc)
{
	if (rc < 0 && rc != -EAGAIN)
		fprintf(stderr,
			"handoff-echo: handoff failed, serving on: %s\n",
			cprxfer_errmsg());
	account(s, now_ns());
	out_stats(s, rc > 0 ? "commit" : "rollback");
	/* Undecided: closing tells the new instance to go (and cancels). */
	cprxfer_channel_close(s->ch);
	sent(s);
	cprxfer_successor_free(s->succ);
	cprxfer_state_free(s->st);
	s->ch = NULL;
	s->succ = NULL;
	s->st = NULL;
	s->ph = IDLE;
	if (rc <= 0 && s->t_stop)
		set_serving(s, true);
	return rc > 0;
}

static int out_start(struct server *s)
{
	size_t i;
	int rc;

	if (s->ph != IDLE || (!s->control && !s->spawn))
		return 0;
	s->ph = CONNECTING;
	s->t_start = now_ns();
	s->t_stop = 0;
	s->max_gap = s->max_run = s->iterations = 0;
	s->nprep = s->cursor = 0;
	for (i = 0; i < s->n; i++)
		s->c[i]->prep = NOT_PREPARED;
	s->deadline = s->t_start + HANDOFF_TIMEOUT_MS * 1000000LL;
	rc = connect_start(s);
	if (rc == 0)
		rc = watch_handoff(s, cprxfer_channel_fd(s->ch));
	if (rc == 0)
		rc = out_advance(s);
	return rc == -EAGAIN ? 0 : out_end(s, rc);
}

/* ---- new instance: accept, load twice, decision --------------------- */

static int in_prepare(struct server *s, cprxfer_state *st)
{
	int *fds = NULL, rc = 0;
	size_t n = 0, i;

	if (s->lfd < 0) {
		s->lfd = cprxfer_take_fd(st, "listen");
		rc = s->lfd < 0 ? s->lfd
				: watch(s->work, EPOLL_CTL_ADD, s->lfd, EPOLLIN,
					NULL);
	}
	if (rc == 0)
		rc = cprxfer_take_fds(st, "clients", &fds, &n);
	/* Watched in "work", which is not in "loop" before the commit. */
	for (i = 0; rc == 0 && i < n; i++)
		if (!add_client(s, fds[i], (uint32_t)s->n))
			rc = -ENOMEM;
	for (; i < n; i++)
		close(fds[i]);
	free(fds);
	s->nprep = s->n;
	return rc;
}

static int in_final(struct server *s, cprxfer_state *st)
{
	const struct live *t = NULL;
	const char *pend = NULL;
	size_t nt = 0, np = 0, nnew = 0, i, k = 0, off = 0;
	size_t nprep = s->nprep;
	bool *alive = calloc(nprep + 1, sizeof(bool));
	uint64_t stopped = 0;
	int *fds = NULL, rc;

	rc = alive ? cprxfer_get_u64(st, "stopped_ns", &stopped) : -ENOMEM;
	if (rc == 0)
		rc = cprxfer_get_blob(st, "live", (const void **)&t, &nt);
	if (rc == 0)
		rc = cprxfer_get_blob(st, "pending", (const void **)&pend, &np);
	if (rc == 0)
		rc = cprxfer_take_fds(st, "new", &fds, &nnew);
	s->t_stop = (int64_t)stopped;
	s->nnew = nnew;
	nt /= sizeof(*t);
	for (i = 0; rc == 0 && i < nt; i++) {
		struct client *c = NULL;

		if (t[i].prep == NOT_PREPARED && k < nnew)
			c = add_client(s, fds[k++], NOT_PREPARED);
		else if (t[i].prep < nprep && !alive[t[i].prep])
			c = s->c[t[i].prep];
		if (!c || t[i].plen > np - off) {
			rc = -EPROTO;
			break;
		}
		if (c->prep != NOT_PREPARED)
			alive[c->prep] = true;
		if (t[i].plen) {
			c->pend = malloc(t[i].plen);
			if (!c->pend) {
				rc = -ENOMEM;
				break;
			}
			memcpy(c->pend, pend + off, t[i].plen);
			c->plen = t[i].plen;
			off += t[i].plen;
			c->out = true;
			watch(s->work, EPOLL_CTL_MOD, c->fd, EPOLLOUT, c);
		}
	}
	for (; k < nnew; k++)
		close(fds[k]);
	free(fds);
	/* Prepared clients that closed in between. Downwards: see drop. */
	for (i = nprep; rc == 0 && i-- > 0;)
		if (!alive[i])
			drop_client(s, s->c[i]);
	free(alive);
	return rc;
}

/* Take the incoming handoff as far as it goes: 1 we own it all. */
static int in_advance(struct server *s)
{
	cprxfer_state *st = NULL;
	int rc;

	if (s->ph == ACCEPTING) {
		rc = cprxfer_accept(s->l, 0, &s->ch);
		if (rc == 0)
			rc = watch_handoff(s, cprxfer_channel_fd(s->ch));
		if (rc < 0)
			return rc;
		/* One old instance: stop listening (and watching). */
		cprxfer_listener_close(s->l);
		s->l = NULL;
		s->ph = LOADING;
		s->deadline = now_ns() + HANDOFF_TIMEOUT_MS * 1000000LL;
	}
	while (s->ph == LOADING) {
		uint64_t v;
		bool final;

		rc = cprxfer_load_step(s->ch, &st);
		if (rc < 0)
			return rc;
		/* Prepare rounds until the one that says when the old stopped. */
		final = cprxfer_get_u64(st, "stopped_ns", &v) == 0;
		rc = final ? in_final(s, st) : in_prepare(s, st);
		cprxfer_state_free(st);
		if (rc == 0 && final && s->refuse) {
			cprxfer_ack(s->ch, -EBUSY,
				    "refused on request (--refuse)");
			printf("handoff-echo: refused %zu clients\n", s->n);
			return -EBUSY;
		}
		/* Accept only what we could take in full: else it resumes. */
		cprxfer_ack(s->ch, rc, rc < 0 ? cprxfer_errmsg() : NULL);
		if (rc < 0)
			return rc;
		if (final)
			s->ph = DECIDING;
	}
	/* Serve nothing until the old instance commits. */
	rc = cprxfer_wait_commit(s->ch, 0);
	if (rc < 0)
		return rc;
	rc = set_serving(s, true);
	if (rc < 0)
		return rc;
	printf("handoff-echo: took over %zu clients\n", s->n);
	if (s->stats)
		printf("{\"role\":\"new\",\"pid\":%d,\"clients\":%zu,\"prepared\":%zu,\"new_in_final\":%zu,\"blackout_us\":%lld}\n",
		       (int)getpid(), s->n, s->nprep, s->nnew,
		       (long long)(now_ns() - s->t_stop) / 1000);
	fflush(stdout);
	return 1;
}

static int in_start(struct server *s, const char *path)
{
	cprxfer_opts *o = cprxfer_opts_new();
	int rc;

	rc = o ? cprxfer_opts_set_tag(o, TAG) : -ENOMEM;
	if (rc == 0 && path)
		rc = cprxfer_listen_opts(path, o, &s->l);
	if (rc == 0 && path)
		rc = watch_handoff(s, cprxfer_listener_fd(s->l));
	s->ph = ACCEPTING;
	/* Started by cprxfer_spawn: the channel is there already. */
	if (rc == 0 && !path)
		rc = cprxfer_inherit(o, &s->ch);
	if (rc == 0 && !path) {
		rc = watch_handoff(s, cprxfer_channel_fd(s->ch));
		s->ph = LOADING;
	}
	s->deadline =
		path ? INT64_MAX : now_ns() + HANDOFF_TIMEOUT_MS * 1000000LL;
	cprxfer_opts_free(o);
	return rc;
}

static void in_end(struct server *s)
{
	cprxfer_channel_close(s->ch);
	cprxfer_listener_close(s->l);
	s->ch = NULL;
	s->l = NULL;
	s->ph = IDLE;
}

/* ---- the loop -------------------------------------------------------- */

/* 1: stop (SIGTERM, or handed off), 0 go on, < 0 failed. */
static int on_handoff_fd(struct server *s)
{
	int rc;

	if (s->ph >= ACCEPTING) {
		rc = in_advance(s);
		if (rc == -EAGAIN)
			return 0;
		in_end(s);
		if (rc < 0 && !s->refuse)
			fprintf(stderr, "handoff-echo: taking over: %s\n",
				cprxfer_errmsg());
		return rc < 0 ? (s->refuse ? 1 : rc) : 0;
	}
	rc = out_advance(s);
	return rc == -EAGAIN ? 0 : out_end(s, rc);
}

static int on_signal(struct server *s)
{
	struct signalfd_siginfo si;

	if (read(s->sigfd, &si, sizeof(si)) != sizeof(si))
		return 0;
	if (si.ssi_signo == SIGTERM)
		return 1;
	return out_start(s);
}

static int run(struct server *s)
{
	for (;;) {
		struct epoll_event ev[8];
		int64_t left = -1;
		int i, n, rc = 0;

		if (s->ph != IDLE && s->deadline != INT64_MAX)
			left = (s->deadline - now_ns()) / 1000000 + 1;
		if (left < -1)
			left = 0;
		n = epoll_wait(s->loop, ev, 8, left < 0 ? -1 : (int)left);
		if (n < 0 && errno != EINTR)
			return -errno;
		iteration_start(s);
		for (i = 0; rc == 0 && i < n; i++) {
			/* Not once stopped, even if reported before. */
			if (ev[i].data.u64 == EV_WORK && s->serving)
				serve_work(s);
			else if (ev[i].data.u64 == EV_SIGNAL)
				rc = on_signal(s);
			else if (ev[i].data.u64 == EV_HANDOFF)
				rc = on_handoff_fd(s);
		}
		if (rc == 0 && s->ph != IDLE && now_ns() > s->deadline)
			rc = s->ph >= ACCEPTING ? -ETIMEDOUT
						: out_end(s, -ETIMEDOUT);
		if (rc != 0)
			return rc;
		/* How long this iteration kept the loop from waiting. */
		account(s, now_ns());
	}
}

static int open_port(int port, int *lfd)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(sa);
	int one = 1, fd;

	fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(fd, SOMAXCONN) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	*lfd = fd;
	return ntohs(sa.sin_port);
}

static void usage(void)
{
	fprintf(stderr,
		"usage: handoff-echo --port PORT [--control PATH | --spawn] [--no-split] [--stats]\n       handoff-echo --incoming PATH | --inherit [--control PATH | --spawn] [--refuse] [--stats]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "control", required_argument, NULL, 'c' },
		{ "incoming", required_argument, NULL, 'i' },
		{ "inherit", no_argument, NULL, 'I' },
		{ "spawn", no_argument, NULL, 's' },
		{ "refuse", no_argument, NULL, 'r' },
		{ "no-split", no_argument, NULL, 'n' },
		{ "stats", no_argument, NULL, 'S' },
		{ NULL, 0, NULL, 0 },
	};
	struct server s = { .lfd = -1, .schedfd = -1, .split = true };
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EV_SIGNAL };
	const char *incoming = NULL;
	bool inherit = false;
	int port = -1, rc, c;
	struct rlimit rl;
	sigset_t mask;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			port = atoi(optarg);
			break;
		case 'c':
			s.control = optarg;
			break;
		case 'i':
			incoming = optarg;
			break;
		case 'I':
			inherit = true;
			break;
		case 's':
			s.spawn = true;
			break;
		case 'r':
			s.refuse = true;
			break;
		case 'n':
			s.split = false;
			break;
		case 'S':
			s.stats = true;
			s.schedfd = open("/proc/thread-self/schedstat",
					 O_RDONLY | O_CLOEXEC);
			break;
		default:
			usage();
			return 2;
		}
	}
	if ((port >= 0) + !!incoming + inherit != 1) {
		usage();
		return 2;
	}
	/* One fd per client (and a copy of each while handing off). */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	s.sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	s.loop = epoll_create1(EPOLL_CLOEXEC);
	s.work = epoll_create1(EPOLL_CLOEXEC);
	if (s.sigfd < 0 || s.loop < 0 || s.work < 0 ||
	    epoll_ctl(s.loop, EPOLL_CTL_ADD, s.sigfd, &ev) < 0) {
		perror("handoff-echo: setting up");
		return 1;
	}
	if (port >= 0) {
		rc = open_port(port, &s.lfd);
		if (rc < 0) {
			fprintf(stderr, "handoff-echo: port %d: %s\n", port,
				strerror(-rc));
			return 1;
		}
		printf("listening on 127.0.0.1:%d\n", rc);
		fflush(stdout);
		rc = watch(s.work, EPOLL_CTL_ADD, s.lfd, EPOLLIN, NULL);
		if (rc == 0)
			rc = set_serving(&s, true);
	} else {
		rc = in_start(&s, incoming);
		if (rc < 0)
			fprintf(stderr, "handoff-echo: %s\n", cprxfer_errmsg());
	}
	if (rc == 0)
		rc = run(&s);
	if (rc < 0 && s.ph == IDLE)
		fprintf(stderr, "handoff-echo: %s\n", strerror(-rc));
	in_end(&s);
	while (s.n)
		drop_client(&s, s.c[s.n - 1]);
	free(s.c);
	if (s.lfd >= 0)
		close(s.lfd);
	close(s.work);
	close(s.loop);
	close(s.sigfd);
	if (s.schedfd >= 0)
		close(s.schedfd);
	return rc < 0;
}
