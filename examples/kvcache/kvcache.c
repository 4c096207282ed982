/* SPDX-License-Identifier: MIT */
/*
 * kvcache: a small memcached-like TCP key-value cache that upgrades
 * itself live, in transfer mode or in exec mode, without dropping a
 * connection, a partial request, an unsent reply or a key.
 *
 * What it shows:
 *  - the table lives in a library RAM region (cprxfer_ram_create): the
 *    successor maps the very same pages, nothing is copied;
 *  - one single-threaded epoll loop; the clients sit in a nested epoll
 *    fd, so pausing every client for the handoff is one epoll_ctl();
 *  - transfer mode (SIGUSR1): the server starts its successor
 *    (cprxfer_spawn), hands it the listening socket, every client, the
 *    bytes read but not yet answered and the replies not yet sent, and
 *    the table. Connect, save and ack are steps of its loop, on the
 *    channel's fd (the clients are served until the successor is
 *    connected); then it commits and exits, or aborts and keeps serving
 *    (rollback);
 *  - exec mode (SIGUSR2): the same state crosses an execve() in place
 *    (cprxfer_exec_opts); the PID is kept. If the new image dies before
 *    it confirms (cprxfer_exec_commit), the old program runs again with
 *    the same state, under a new PID.
 *
 * Protocol, one request per line, one reply line each:
 *   set KEY VALUE  -> OK          get KEY -> VAL VALUE | NF
 *   del KEY        -> OK | NF     stat    -> STAT pid gen keys fails fds
 *   fail-next      -> OK  (the next upgrade's successor dies before it
 *                          confirms: shows the rollback)
 *
 * Run it:
 *   kvcache --port 7000 &           # the first line names the port
 *   printf 'set a 1\nget a\n' | nc -q1 127.0.0.1 7000
 *   kill -USR1 %1                   # transfer mode: new PID
 *   kill -USR2 <pid from stat>      # exec mode: same PID
 * SIGTERM stops it. --exe PATH upgrades to another binary (default: this
 * one); examples/kvcache/kvload.c drives it under load.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#define TAG		   "kvcache/1"
#define HANDOFF_TIMEOUT_MS 5000

/* ---- the table: open addressing over fixed slots in the RAM region -- */

#define KV_MAGIC 0x3145484341435653ull /* "SVCACHE1" */
#define KEY_MAX	 48
#define VAL_MAX	 200
#define NSLOTS	 32768u

struct kv_slot {
	uint8_t used; /* 0 free, 1 used, 2 deleted */
	uint8_t klen;
	uint16_t vlen;
	char key[KEY_MAX];
	char val[VAL_MAX];
	uint32_t pad;
};

struct kv_table {
	uint64_t magic, nslots, count;
	uint64_t gen;	/* upgrades done */
	uint64_t fails; /* upgrades rolled back */
	char pad[4096 - 5 * 8];
	struct kv_slot slot[];
};

#define TABLE_BYTES (sizeof(struct kv_table) + NSLOTS * sizeof(struct kv_slot))

static uint32_t hash(const char *k, size_t n)
{
	uint32_t h = 2166136261u;

	while (n--)
		h = (h ^ (uint8_t)*k++) * 16777619u;
	return h;
}

/* The slot holding key, or (insert) the first reusable one; NULL: none. */
static struct kv_slot *lookup(struct kv_table *t, const char *k, size_t n,
			      bool insert)
{
	struct kv_slot *reuse = NULL;
	uint32_t i, h = hash(k, n);

	for (i = 0; i < NSLOTS; i++) {
		struct kv_slot *sl = &t->slot[(h + i) % NSLOTS];

		if (sl->used == 0)
			return insert ? (reuse ? reuse : sl) : NULL;
		if (sl->used == 2 && !reuse)
			reuse = sl;
		if (sl->used == 1 && sl->klen == n && !memcmp(sl->key, k, n))
			return sl;
	}
	return insert ? reuse : NULL;
}

/* ---- clients --------------------------------------------------------- */

#define IN_MAX	 1024
#define MAX_FDS	 4096
#define OUT_HIGH (1u << 20) /* stop reading a client above this */

struct client {
	int fd;
	size_t inlen, outlen, outcap;
	char in[IN_MAX]; /* read, not yet a whole request */
	char *out;	 /* replies not yet sent */
};

enum {
	EV_LISTEN = 1,
	EV_SIGNAL,
	EV_CLIENTS,
	EV_CHANNEL
};

/* An upgrade in progress, transfer mode. */
enum {
	HO_CONNECT,
	HO_SAVE,
	HO_ACK
};

struct handoff {
	int phase;
	int64_t spawn;	 /* handoff_start(): spawn, connect start */
	int64_t longest; /* the longest step of the prepare round */
	unsigned long loops, loops_prepare; /* loop iterations */
	int64_t t_loop, gap; /* the last one; the longest gap while serving */
	cprxfer_successor *succ;
	cprxfer_channel *ch;
	cprxfer_state *st;
	int64_t deadline;		    /* CLOCK_MONOTONIC ns */
	int64_t t_start, t_paused, t_saved; /* for the log line */
	size_t partial, unsent;
};

struct server {
	int ep;	   /* the loop: listener, signals, clients, channel */
	int cep;   /* every client, nested in ep */
	int lfd;   /* the TCP listening socket */
	int sigfd; /* SIGUSR1, SIGUSR2, SIGTERM */
	struct client *cl[MAX_FDS];
	size_t n;
	struct cprxfer_ram ram;
	struct kv_table *t;
	const char *exe;
	bool inject; /* the next upgrade's successor dies (fail-next) */
	bool paused; /* a handoff owns the clients and the listener */
	struct handoff *ho;
};

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int ep_add(int ep, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event ev = { .events = events, .data.u64 = data };

	return epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static void client_interest(struct server *s, struct client *c)
{
	struct epoll_event ev = { .data.ptr = c };

	ev.events = (c->outlen < OUT_HIGH ? EPOLLIN : 0) |
		    (c->outlen ? EPOLLOUT : 0);
	epoll_ctl(s->cep, EPOLL_CTL_MOD, c->fd, &ev);
}

static int add_client(struct server *s, int fd, const void *in, size_t inlen,
		      const void *out, size_t outlen)
{
	struct epoll_event ev = { .events = EPOLLIN };
	struct client *c;

	if (fd >= MAX_FDS || inlen > IN_MAX)
		return -EMFILE;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fd = fd;
	if (inlen)
		memcpy(c->in, in, inlen);
	c->inlen = inlen;
	if (outlen) {
		c->out = malloc(outlen);
		if (!c->out) {
			free(c);
			return -ENOMEM;
		}
		memcpy(c->out, out, outlen);
		c->outlen = c->outcap = outlen;
	}
	ev.data.ptr = c;
	if (epoll_ctl(s->cep, EPOLL_CTL_ADD, fd, &ev) < 0) {
		free(c->out);
		free(c);
		return -errno;
	}
	s->cl[fd] = c;
	s->n++;
	client_interest(s, c);
	return 0;
}

static void drop_client(struct server *s, struct client *c)
{
	s->cl[c->fd] = NULL;
	s->n--;
	close(c->fd); /* leaves the epoll set too */
	free(c->out);
	free(c);
}

static int reply(struct client *c, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static int reply(struct client *c, const char *fmt, ...)
{
	va_list ap;
	size_t cap;
	char *p;
	int len;

	for (;;) {
		va_start(ap, fmt);
		len = vsnprintf(c->out + c->outlen, c->outcap - c->outlen, fmt,
				ap);
		va_end(ap);
		if (len < 0)
			return -EINVAL;
		if ((size_t)len < c->outcap - c->outlen)
			break;
		cap = 2 * c->outcap + (size_t)len + 64;
		p = realloc(c->out, cap);
		if (!p)
			return -ENOMEM;
		c->out = p;
		c->outcap = cap;
	}
	c->outlen += (size_t)len;
	return 0;
}

static int count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	int n = -1; /* the directory's own fd */

	if (!d)
		return -1;
	while (readdir(d))
		n++;
	closedir(d);
	return n - 2; /* . and .. */
}

/* One request line (no newline). < 0: a protocol error, drop the client. */
static int request(struct server *s, struct client *c, char *line, size_t len)
{
	char *key, *val = NULL, *sp;
	struct kv_table *t = s->t;
	struct kv_slot *sl;
	size_t klen, vlen = 0;

	line[len] = '\0';
	if (!strcmp(line, "stat"))
		return reply(c, "STAT %d %llu %llu %llu %d\n", (int)getpid(),
			     (unsigned long long)t->gen,
			     (unsigned long long)t->count,
			     (unsigned long long)t->fails, count_fds());
	if (!strcmp(line, "fail-next")) {
		s->inject = true;
		return reply(c, "OK\n");
	}
	key = strchr(line, ' ');
	if (!key)
		return reply(c, "ERR bad request\n");
	*key++ = '\0';
	sp = strchr(key, ' ');
	if (sp) {
		*sp = '\0';
		val = sp + 1;
		vlen = strlen(val);
	}
	klen = strlen(key);
	if (!klen || klen > KEY_MAX || vlen > VAL_MAX)
		return reply(c, "ERR too long\n");
	if (!strcmp(line, "get") && !val) {
		sl = lookup(t, key, klen, false);
		if (!sl)
			return reply(c, "NF\n");
		return reply(c, "VAL %.*s\n", (int)sl->vlen, sl->val);
	}
	if (!strcmp(line, "del") && !val) {
		sl = lookup(t, key, klen, false);
		if (!sl)
			return reply(c, "NF\n");
		sl->used = 2;
		t->count--;
		return reply(c, "OK\n");
	}
	if (!strcmp(line, "set") && val) {
		sl = lookup(t, key, klen, true);
		if (!sl)
			return reply(c, "ERR full\n");
		if (sl->used != 1) {
			t->count++;
			sl->klen = (uint8_t)klen;
			memcpy(sl->key, key, klen);
		}
		memcpy(sl->val, val, vlen);
		sl->vlen = (uint16_t)vlen;
		sl->used = 1;
		return reply(c, "OK\n");
	}
	return reply(c, "ERR bad request\n");
}

/* Answer every whole request in c->in; keep a partial one. */
static int process(struct server *s, struct client *c)
{
	size_t off = 0;
	char *nl;

	while ((nl = memchr(c->in + off, '\n', c->inlen - off))) {
		size_t len = (size_t)(nl - (c->in + off));

		if (request(s, c, c->in + off, len) < 0)
			return -1;
		off += len + 1;
	}
	memmove(c->in, c->in + off, c->inlen - off);
	c->inlen -= off;
	return c->inlen == IN_MAX ? -1 : 0; /* a line too long */
}

static int flush_client(struct client *c)
{
	size_t off = 0;
	int rc = 0;

	while (off < c->outlen) {
		ssize_t w = send(c->fd, c->out + off, c->outlen - off,
				 MSG_NOSIGNAL);

		if (w < 0) {
			rc = errno == EAGAIN ? 0 : -1;
			break;
		}
		off += (size_t)w;
	}
	if (off) {
		memmove(c->out, c->out + off, c->outlen - off);
		c->outlen -= off;
	}
	return rc;
}

static int serve_client(struct server *s, struct client *c, uint32_t events)
{
	if (events & EPOLLIN) {
		ssize_t r = recv(c->fd, c->in + c->inlen, IN_MAX - c->inlen, 0);

		if (r == 0 || (r < 0 && errno != EAGAIN))
			return -1;
		if (r > 0) {
			c->inlen += (size_t)r;
			if (process(s, c) < 0)
				return -1;
		}
	}
	if (flush_client(c) < 0)
		return -1;
	client_interest(s, c);
	return 0;
}

/* ---- the handoff: everything the library sees ------------------------ */

/* Pause or resume every client and the listener: a handoff owns them. */
static void pause_serving(struct server *s, bool pause)
{
	s->paused = pause;
	if (pause) {
		epoll_ctl(s->ep, EPOLL_CTL_DEL, s->lfd, NULL);
		epoll_ctl(s->ep, EPOLL_CTL_DEL, s->cep, NULL);
	} else {
		ep_add(s->ep, s->lfd, EPOLLIN, EV_LISTEN);
		ep_add(s->ep, s->cep, EPOLLIN, EV_CLIENTS);
	}
}

/* The whole state: the table's region, the listener, every client. */
static int put_state(struct server *s, cprxfer_state *st)
{
	int fds[MAX_FDS], fd, rc;
	char name[32];
	size_t n = 0;

	rc = cprxfer_ram_put(st, "table", &s->ram);
	if (rc == 0)
		rc = cprxfer_put_fd(st, "listen", s->lfd);
	for (fd = 0; rc == 0 && fd < MAX_FDS; fd++) {
		struct client *c = s->cl[fd];

		if (!c)
			continue;
		snprintf(name, sizeof(name), "in.%zu", n);
		rc = cprxfer_put_blob(st, name, c->in, c->inlen);
		snprintf(name, sizeof(name), "out.%zu", n);
		if (rc == 0)
			rc = cprxfer_put_blob(st, name, c->out, c->outlen);
		fds[n++] = fd;
	}
	if (rc == 0)
		rc = cprxfer_put_fds(st, "clients", fds, n);
	return rc;
}

/* Take the state over; touch nothing (no read, no write) until commit. */
static int take_state(struct server *s, cprxfer_state *st)
{
	const void *in, *out;
	size_t n = 0, i, inlen, outlen;
	int *fds = NULL, rc;
	char name[32];

	rc = cprxfer_ram_get(st, "table", 0, &s->ram);
	if (rc == 0) {
		s->t = s->ram.addr;
		if (s->ram.size != TABLE_BYTES || s->t->magic != KV_MAGIC)
			return -EBADMSG;
		rc = s->lfd = cprxfer_take_fd(st, "listen");
	}
	if (rc >= 0)
		rc = cprxfer_take_fds(st, "clients", &fds, &n);
	for (i = 0; rc >= 0 && i < n; i++) {
		snprintf(name, sizeof(name), "in.%zu", i);
		rc = cprxfer_get_blob(st, name, &in, &inlen);
		snprintf(name, sizeof(name), "out.%zu", i);
		if (rc == 0)
			rc = cprxfer_get_blob(st, name, &out, &outlen);
		if (rc == 0)
			rc = add_client(s, fds[i], in, inlen, out, outlen);
		if (rc < 0)
			break;
	}
	for (; i < n; i++) /* those not taken */
		close(fds[i]);
	free(fds);
	return rc < 0 ? rc : 0;
}

static cprxfer_opts *handoff_opts(void)
{
	cprxfer_opts *o = cprxfer_opts_new();

	if (o && (cprxfer_opts_set_tag(o, TAG) < 0 ||
		  cprxfer_opts_set_timeout(o, HANDOFF_TIMEOUT_MS) < 0)) {
		cprxfer_opts_free(o);
		o = NULL;
	}
	return o;
}

/* Transfer mode, end: commit (1: we are done) or roll back (0: serve). */
static int handoff_end(struct server *s, int rc)
{
	struct handoff *ho = s->ho;
	bool paused = ho->t_paused != 0;
	int64_t t = now_ns();

	if (rc == 0)
		rc = cprxfer_commit(ho->ch);
	if (rc < 0) {
		fprintf(stderr,
			"kvcache: upgrade failed after %.1f ms, still serving: %s\n",
			(t - ho->t_start) / 1e6, cprxfer_errmsg());
		s->t->fails++;
	} else {
		fprintf(stderr,
			"kvcache: handed over %zu clients (%zu partial requests, %zu bytes unsent): prepare %.1f ms (%lu loops, longest gap %.1f ms, spawn %.1f ms, longest step %.3f ms), blackout %.1f ms (%lu loops, save %.1f ms)\n",
			s->n, ho->partial, ho->unsent,
			(ho->t_paused - ho->t_start) / 1e6, ho->loops_prepare,
			ho->gap / 1e6, ho->spawn / 1e6, ho->longest / 1e6,
			(t - ho->t_paused) / 1e6, ho->loops - ho->loops_prepare,
			(ho->t_saved - ho->t_paused) / 1e6);
	}
	if (ho->ch)
		epoll_ctl(s->ep, EPOLL_CTL_DEL, cprxfer_channel_fd(ho->ch),
			  NULL);
	cprxfer_channel_close(ho->ch);	  /* undecided: aborts */
	cprxfer_successor_free(ho->succ); /* not committed: kill, reap */
	cprxfer_state_free(ho->st);
	free(ho);
	s->ho = NULL;
	if (paused && rc < 0)
		pause_serving(s, false);
	return rc < 0 ? 0 : 1;
}

/* Connected: stop serving, take the state, start sending it. */
static int handoff_pause(struct server *s, struct handoff *ho)
{
	int rc, fd;

	/* From here to the decision, clients wait in their socket buffers. */
	pause_serving(s, true);
	ho->t_paused = now_ns();
	ho->loops_prepare = ho->loops;
	ho->st = cprxfer_state_new();
	rc = ho->st ? put_state(s, ho->st) : -ENOMEM;
	for (fd = 0; fd < MAX_FDS; fd++) {
		if (s->cl[fd]) {
			ho->partial += s->cl[fd]->inlen != 0;
			ho->unsent += s->cl[fd]->outlen;
		}
	}
	if (rc == 0)
		rc = cprxfer_save_start(ho->ch, ho->st);
	ho->phase = rc == -EAGAIN ? HO_SAVE : HO_ACK;
	ho->t_saved = now_ns();
	return rc;
}

/* Transfer mode: a step on the channel fd. 1: handed over. */
static int handoff_step(struct server *s)
{
	struct handoff *ho = s->ho;
	int64_t t0 = now_ns();
	int rc = 0;

	while (rc == 0) {
		switch (ho->phase) {
		case HO_CONNECT: /* prepare round: we still serve */
			rc = cprxfer_connect_step(ho->ch);
			if (rc == 0)
				rc = handoff_pause(s, ho);
			break;
		case HO_SAVE: /* blackout from here on */
			rc = cprxfer_save_step(ho->ch);
			if (rc == 0) {
				ho->phase = HO_ACK;
				ho->t_saved = now_ns();
			}
			break;
		case HO_ACK:
			rc = cprxfer_wait_ack(ho->ch, 0);
			if (rc == 0)
				return handoff_end(s, 0);
			break;
		}
	}
	if (ho->phase == HO_CONNECT && now_ns() - t0 > ho->longest)
		ho->longest = now_ns() - t0;
	if (rc == -EAGAIN && now_ns() < ho->deadline)
		return 0;
	return handoff_end(s, rc == -EAGAIN ? -ETIMEDOUT : rc);
}

/* Transfer mode, start: the successor; the rest in handoff_step(). */
static int handoff_start(struct server *s)
{
	char *argv[] = { (char *)s->exe,
			 "--exe",
			 (char *)s->exe,
			 "--successor",
			 s->inject ? "--inject-die" : NULL,
			 NULL };
	cprxfer_opts *o = handoff_opts();
	struct handoff *ho = calloc(1, sizeof(*ho));
	int rc = o && ho ? 0 : -ENOMEM;

	if (!ho) {
		cprxfer_opts_free(o);
		return rc;
	}
	s->ho = ho;
	s->inject = false;
	ho->t_start = ho->t_loop = now_ns();
	ho->deadline = ho->t_start + HANDOFF_TIMEOUT_MS * 1000000ll;
	if (rc == 0)
		rc = cprxfer_spawn(s->exe, argv, NULL, o, &ho->succ);
	cprxfer_opts_free(o);
	if (rc == 0)
		rc = cprxfer_successor_channel_start(ho->succ, &ho->ch);
	if (rc == 0)
		rc = ep_add(s->ep, cprxfer_channel_fd(ho->ch), EPOLLIN,
			    EV_CHANNEL);
	ho->spawn = now_ns() - ho->t_start;
	return rc < 0 ? handoff_end(s, rc) : 0;
}

/* Exec mode: returns only on failure, still serving. */
static void upgrade_exec(struct server *s)
{
	char *argv[] = { (char *)s->exe, "--exe", (char *)s->exe,
			 s->inject ? "--inject-die" : NULL, NULL };
	char *fallback_argv[] = { argv[0], argv[1], argv[2], NULL };
	cprxfer_state *st = cprxfer_state_new();
	cprxfer_opts *o = handoff_opts();
	int rc = st && o ? put_state(s, st) : -ENOMEM;

	s->inject = false;
	if (rc == 0)
		rc = cprxfer_opts_set_exec_fallback(o, NULL, fallback_argv);
	if (rc == 0)
		rc = cprxfer_exec_opts(st, s->exe, argv, NULL, o);
	fprintf(stderr, "kvcache: exec upgrade failed, still serving: %s\n",
		cprxfer_errmsg());
	s->t->fails++;
	cprxfer_state_free(st);
	cprxfer_opts_free(o);
}

/* At start: take over from an old instance. 1: did, 0: none, < 0: exit. */
static int take_over(struct server *s, bool successor, bool inject)
{
	cprxfer_opts *o = handoff_opts();
	cprxfer_channel *ch = NULL;
	cprxfer_state *st = NULL;
	bool fallback = false;
	int rc = o ? 0 : -ENOMEM;

	if (rc == 0 && successor) {
		rc = cprxfer_inherit(o, &ch);
		if (rc == 0)
			rc = cprxfer_load(ch, &st);
	} else if (rc == 0) {
		rc = cprxfer_load_exec_opts(o, &st);
		if (rc == -ENOENT) { /* a cold start */
			cprxfer_opts_free(o);
			return 0;
		}
	}
	if (rc == 0)
		rc = take_state(s, st);
	if (inject) {
		fprintf(stderr, "kvcache: dying before the confirmation\n");
		_exit(3);
	}
	if (ch) {
		cprxfer_ack(ch, rc, rc < 0 ? cprxfer_errmsg() : NULL);
		if (rc == 0)
			rc = cprxfer_wait_commit(ch, HANDOFF_TIMEOUT_MS);
		/* The old one died undecided: it served nothing since. */
		if (rc == -EOWNERDEAD)
			rc = 0;
	} else if (rc == 0) {
		rc = cprxfer_exec_commit();
		/* 0: we are the fallback, the new image failed */
		fallback = rc == 0;
		rc = rc < 0 ? rc : 0;
	}
	if (rc < 0) {
		fprintf(stderr, "kvcache: taking over: %s\n", cprxfer_errmsg());
	} else {
		fprintf(stderr, "kvcache: pid %d took over %zu clients (%s)\n",
			(int)getpid(), s->n,
			ch	   ? "transfer"
			: fallback ? "exec fallback"
				   : "exec");
		if (fallback)
			s->t->fails++;
		else
			s->t->gen++;
	}
	cprxfer_channel_close(ch);
	cprxfer_state_free(st);
	cprxfer_opts_free(o);
	return rc < 0 ? rc : 1;
}

/* ---- the loop ------------------------------------------------------- */

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
	    listen(fd, 128) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	*lfd = fd;
	return ntohs(sa.sin_port);
}

static int on_signal(struct server *s)
{
	struct signalfd_siginfo si;

	if (read(s->sigfd, &si, sizeof(si)) != sizeof(si))
		return 0;
	if (si.ssi_signo == SIGTERM)
		return s->ho ? handoff_end(s, -ECANCELED) + 1 : 1;
	if (s->ho) /* one upgrade at a time */
		return 0;
	if (si.ssi_signo == SIGUSR1)
		return handoff_start(s);
	upgrade_exec(s);
	return 0;
}

static void on_accept(struct server *s)
{
	int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

	if (fd >= 0 && add_client(s, fd, NULL, 0, NULL, 0) < 0)
		close(fd);
}

static void on_clients(struct server *s)
{
	struct epoll_event ev[64];
	int i, n = epoll_wait(s->cep, ev, 64, 0);

	for (i = 0; i < n; i++) {
		struct client *c = ev[i].data.ptr;

		if (serve_client(s, c, ev[i].events) < 0)
			drop_client(s, c);
	}
}

/* Count the loop's iterations in a handoff, and its longest gap. */
static void handoff_loop(struct handoff *ho, bool paused)
{
	int64_t t = now_ns();

	ho->loops++;
	if (!paused && t - ho->t_loop > ho->gap)
		ho->gap = t - ho->t_loop;
	ho->t_loop = t;
}

/* Serve until SIGTERM or a handoff; 1: handed over or stopped. */
static int serve(struct server *s)
{
	struct epoll_event ev[8];
	int i, n, rc = 0;

	rc = ep_add(s->ep, s->sigfd, EPOLLIN, EV_SIGNAL);
	if (rc == 0)
		rc = ep_add(s->ep, s->cep, EPOLLIN, EV_CLIENTS);
	if (rc == 0)
		rc = ep_add(s->ep, s->lfd, EPOLLIN, EV_LISTEN);
	while (rc == 0) {
		int64_t left = s->ho ? s->ho->deadline - now_ns() : -1;
		int timeout =
			left < 0 ? (s->ho ? 0 : -1) : (int)(left / 1000000 + 1);

		if (s->ho)
			handoff_loop(s->ho, s->paused);
		n = epoll_wait(s->ep, ev, 8, timeout);
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n == 0 && s->ho)
			rc = handoff_step(s);
		/*
		 * A handoff may pause serving in the middle of this batch:
		 * from then on the clients are the state's, not ours.
		 */
		for (i = 0; rc == 0 && i < n; i++) {
			if (ev[i].data.u64 == EV_SIGNAL)
				rc = on_signal(s);
			else if (ev[i].data.u64 == EV_CHANNEL)
				rc = handoff_step(s);
			else if (ev[i].data.u64 == EV_LISTEN && !s->paused)
				on_accept(s);
			else if (ev[i].data.u64 == EV_CLIENTS && !s->paused)
				on_clients(s);
		}
	}
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "exe", required_argument, NULL, 'e' },
		{ "successor", no_argument, NULL, 's' },
		{ "inject-die", no_argument, NULL, 'd' },
		{ NULL, 0, NULL, 0 },
	};
	struct server s = { .lfd = -1, .sigfd = -1, .exe = "/proc/self/exe" };
	bool successor = false, inject = false;
	int port = 0, rc, c, fd;
	sigset_t mask;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			port = atoi(optarg);
			break;
		case 'e':
			s.exe = optarg;
			break;
		case 's':
			successor = true;
			break;
		case 'd':
			inject = true;
			break;
		default:
			fprintf(stderr,
				"usage: kvcache [--port PORT] [--exe PATH]\n");
			return 2;
		}
	}
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	s.sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
	s.ep = epoll_create1(EPOLL_CLOEXEC);
	s.cep = epoll_create1(EPOLL_CLOEXEC);
	if (s.sigfd < 0 || s.ep < 0 || s.cep < 0) {
		perror("kvcache: setup");
		return 1;
	}
	rc = take_over(&s, successor, inject);
	if (rc < 0)
		return 1;
	if (rc == 0) { /* a cold start: a new table */
		rc = cprxfer_ram_create("kvcache-table", TABLE_BYTES, 0,
					&s.ram);
		if (rc == 0)
			rc = open_port(port, &s.lfd);
		if (rc < 0) {
			fprintf(stderr, "kvcache: %s\n", strerror(-rc));
			return 1;
		}
		s.t = s.ram.addr;
		s.t->magic = KV_MAGIC;
		s.t->nslots = NSLOTS;
		printf("listening on 127.0.0.1:%d\n", rc);
		fflush(stdout);
	}
	rc = serve(&s);
	if (rc < 0)
		fprintf(stderr, "kvcache: %s\n", strerror(-rc));
	for (fd = 0; fd < MAX_FDS; fd++)
		if (s.cl[fd])
			drop_client(&s, s.cl[fd]);
	cprxfer_ram_release(&s.ram);
	close(s.lfd);
	close(s.cep);
	close(s.ep);
	close(s.sigfd);
	return rc < 0;
}
