/* SPDX-License-Identifier: MIT */
/*
 * kvload: a load client for kvcache that checks every reply and drives
 * live upgrades while the load runs.
 *
 * N connections (--conns, default 50) each own --keys keys and run a
 * closed loop of set / get / del on them, one request in flight, each
 * request written in two pieces, one in four 2 ms apart (so the server
 * holds partial requests when it hands off); latency counts from the
 * whole request to its reply. Values derive from
 * key and version, so every reply is checked: a get returns exactly the
 * value last set, or NF after a del. At the end every key is read once
 * more.
 *
 * Upgrades (--upgrades SPEC, one letter each, --gap-ms apart):
 *   t  transfer mode (SIGUSR1): gen+1, a new PID
 *   e  exec mode (SIGUSR2):     gen+1, the same PID
 *   T  transfer with the successor dying before its ack: a rollback,
 *      fails+1, the same PID
 *   E  exec with the new image dying before it confirms: the old
 *      program runs again (fails+1, a new PID)
 * An upgrade lasts from the signal until "stat" shows its outcome.
 *
 * One more connection (off with --no-bulk) pipelines large rounds of
 * gets and reads them late, so the server holds unsent replies when it
 * hands off; every byte of them is checked.
 *
 * It reports requests, errors, p50/p99/max latency in steady state and
 * the maximum latency of requests that overlapped an upgrade; exit 0
 * only with 0 errors and every upgrade as expected.
 *
 * Run it:  kvload --server build/examples/kvcache/kvcache
 *     or:  kvload --port 7000 --upgrades ""   (load only)
 * With --server it starts kvcache --port 0 itself, stops it at the end
 * and, as a child subreaper, checks that no process is left.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_UPGRADES 64

struct conn {
	int fd;
	uint64_t rng;
	uint32_t *ver; /* per key: 0 absent, else the version last set */
	char req[320];
	size_t reqlen, sent;
	char expect[320];
	char in[512];
	size_t inlen;
	int64_t t0;	 /* first byte sent; 0: idle */
	int64_t rest_at; /* when the second piece may go */
	int64_t t_full;	 /* the whole request sent */
	int key;	 /* the key of the request in flight */
	uint32_t newver;
	int verify; /* next key of the final sweep; -1: not sweeping */
};

struct sample {
	int64_t start;	  /* first byte sent */
	uint32_t span_us; /* from then to the reply */
	uint32_t lat_us;  /* from the whole request sent to the reply */
};

struct upgrade {
	char kind;
	int64_t start, end;
	int pid0, pid1;
	unsigned long long gen0, fails0;
};

struct ctl {
	int fd;
	char in[256];
	size_t inlen;
	int phase; /* 0 idle, 1 stat before, 2 fail-next, 3 polling */
	bool waiting;
	int64_t next;
	int fds; /* the server's open fds at the first stat */
};

/*
 * The bulk connection: a small receive buffer, rounds of BULK_N
 * pipelined gets of one 200-byte value (6.6 MB of replies), read only
 * from BULK_PAUSE_MS after the round starts, so the server holds about
 * 1 MB of replies it cannot send yet (carried by the handoff). Every
 * byte is checked.
 */
#define BULK_N	      32000
#define BULK_PAUSE_MS 300
#define BULK_GET      "get bulk\n"

struct bulk {
	int fd;
	char val[201];
	char reply[256]; /* "VAL <val>\n" */
	size_t replen;
	char *req; /* BULK_N gets */
	size_t reqlen, sent;
	uint64_t got; /* reply bytes of this round */
	int64_t read_at;
	unsigned long rounds;
	bool idle;
};

static int server_pid; /* the server's current pid (--server) */
static struct sample *samples;
static size_t nsamples, capsamples;
static unsigned long errors;
static int nkeys = 64;

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void error(const char *fmt, ...)
{
	va_list ap;

	if (errors++ < 20) {
		va_start(ap, fmt);
		fputs("kvload: ERROR: ", stderr);
		vfprintf(stderr, fmt, ap);
		fputc('\n', stderr);
		va_end(ap);
	}
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* The value of key at version v: checkable, 16..180 bytes. */
static void value(char *buf, int conn, int key, uint32_t v)
{
	uint64_t h = ((uint64_t)conn << 40) ^ ((uint64_t)key << 20) ^ v;
	int len, i;

	h = h * 0x9e3779b97f4a7c15ull + 1;
	len = snprintf(buf, 32, "%d.%d.%u.", conn, key, v);
	for (i = len; i < 16 + (int)(h % 165); i++) {
		h = h * 6364136223846793005ull + 1442695040888963407ull;
		buf[i] = "abcdefghijklmnopqrstuvwxyz0123456789"[(h >> 33) % 36];
	}
	buf[i] = '\0';
}

static int connect_to(int port, int rcvbuf)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	if (fd >= 0 && rcvbuf)
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		perror("kvload: connect");
		exit(1);
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

/* Start the next request of c; send its first piece. */
static void next_request(struct conn *c, int id)
{
	int op = (int)(xorshift(&c->rng) % 20), key, len;
	char val[256];

	if (c->verify >= 0) {
		key = c->verify++;
		op = 10;
	} else {
		key = (int)(xorshift(&c->rng) % (uint64_t)nkeys);
	}
	c->key = key;
	c->newver = c->ver[key];
	if (op < 9) { /* set */
		c->newver = c->ver[key] + 1;
		value(val, id, key, c->newver);
		len = snprintf(c->req, sizeof(c->req), "set c%dk%d %s\n", id,
			       key, val);
		strcpy(c->expect, "OK\n");
	} else if (op < 18) { /* get */
		len = snprintf(c->req, sizeof(c->req), "get c%dk%d\n", id, key);
		if (c->ver[key]) {
			value(val, id, key, c->ver[key]);
			snprintf(c->expect, sizeof(c->expect), "VAL %s\n", val);
		} else {
			strcpy(c->expect, "NF\n");
		}
	} else { /* del */
		c->newver = 0;
		len = snprintf(c->req, sizeof(c->req), "del c%dk%d\n", id, key);
		strcpy(c->expect, c->ver[key] ? "OK\n" : "NF\n");
	}
	c->reqlen = (size_t)len;
	c->sent = 0;
	c->t0 = now_ns();
	/* One in four holds its second piece for 2 ms: a partial request. */
	c->rest_at = xorshift(&c->rng) % 4 ? 0 : c->t0 + 2000000;
}

/* Send what is left of the request, or its first piece. */
static void send_piece(struct conn *c)
{
	size_t n = c->sent ? c->reqlen - c->sent : 1 + c->reqlen / 2;
	ssize_t w = send(c->fd, c->req + c->sent, n, MSG_NOSIGNAL);

	if (w < 0) {
		error("send: %s", strerror(errno));
		return;
	}
	c->sent += (size_t)w;
	if (c->sent == c->reqlen)
		c->t_full = now_ns();
}

static void record(int64_t start, int64_t full, int64_t end)
{
	if (nsamples == capsamples) {
		capsamples = capsamples ? 2 * capsamples : 1 << 16;
		samples = realloc(samples, capsamples * sizeof(*samples));
		if (!samples) {
			perror("kvload");
			exit(1);
		}
	}
	samples[nsamples].start = start;
	samples[nsamples].span_us = (uint32_t)((end - start) / 1000);
	samples[nsamples++].lat_us = (uint32_t)((end - full) / 1000);
}

/* Read a reply; check it. false: the connection is gone. */
static bool on_reply(struct conn *c, int id)
{
	ssize_t r = recv(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen,
			 MSG_DONTWAIT);
	char *nl;

	if (r <= 0) {
		if (r < 0 && errno == EAGAIN)
			return true;
		error("conn %d: %s", id, r ? strerror(errno) : "closed");
		return false;
	}
	c->inlen += (size_t)r;
	nl = memchr(c->in, '\n', c->inlen);
	if (!nl)
		return true;
	if (!c->t0 || c->sent != c->reqlen ||
	    (size_t)(nl - c->in) + 1 != c->inlen ||
	    strncmp(c->in, c->expect, c->inlen) ||
	    strlen(c->expect) != c->inlen) {
		error("conn %d: request \"%.*s\" expected \"%.*s\" got \"%.*s\"",
		      id, (int)c->reqlen - 1, c->req,
		      (int)strlen(c->expect) - 1, c->expect, (int)c->inlen - 1,
		      c->in);
	} else {
		c->ver[c->key] = c->newver;
	}
	record(c->t0, c->t_full, now_ns());
	c->inlen = 0;
	c->t0 = 0;
	return true;
}

/* A poll timeout (ms, -1: none) that also wakes at t. */
static int min_timeout(int timeout, int64_t t, int64_t now)
{
	int ms = t > now ? (int)((t - now) / 1000000 + 1) : 0;

	return timeout < 0 || ms < timeout ? ms : timeout;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static uint32_t pct(uint32_t *v, size_t n, double p)
{
	return n ? v[(size_t)((double)(n - 1) * p)] : 0;
}

/* The control connection: one line in, or NULL while incomplete. */
static char *ctl_line(struct ctl *k)
{
	ssize_t r = recv(k->fd, k->in + k->inlen, sizeof(k->in) - 1 - k->inlen,
			 MSG_DONTWAIT);
	char *nl;

	if (r == 0 || (r < 0 && errno != EAGAIN)) {
		error("control connection: %s", r ? strerror(errno) : "closed");
		exit(1);
	}
	if (r > 0)
		k->inlen += (size_t)r;
	k->in[k->inlen] = '\0';
	nl = memchr(k->in, '\n', k->inlen);
	if (!nl)
		return NULL;
	*nl = '\0';
	k->inlen = 0;
	k->waiting = false;
	return k->in;
}

static void ctl_send(struct ctl *k, const char *s)
{
	if (send(k->fd, s, strlen(s), MSG_NOSIGNAL) != (ssize_t)strlen(s)) {
		error("control send: %s", strerror(errno));
		exit(1);
	}
	k->waiting = true;
}

/* Advance the upgrade driver; true when every upgrade is done. */
static bool drive(struct ctl *k, struct upgrade *up, size_t nup, size_t *cur,
		  int gap_ms)
{
	struct upgrade *u = &up[*cur];
	unsigned long long gen, fails;
	char *line = NULL;
	int pid, fds;

	if (*cur == nup)
		return true;
	if (k->waiting) {
		line = ctl_line(k);
		if (!line)
			return false;
	}
	switch (k->phase) {
	case 0:
		if (now_ns() < k->next)
			return false;
		ctl_send(k, "stat\n");
		k->phase = 1;
		return false;
	case 1:
		if (sscanf(line, "STAT %d %llu %*u %llu %d", &pid, &gen, &fails,
			   &fds) != 4) {
			error("stat: \"%s\"", line);
			exit(1);
		}
		if (!k->fds)
			k->fds = fds;
		u->pid0 = pid;
		u->gen0 = gen;
		u->fails0 = fails;
		if (u->kind == 'T' || u->kind == 'E') {
			ctl_send(k, "fail-next\n");
			k->phase = 2;
			return false;
		}
		/* fall through */
	case 2:
		if (k->phase == 2 && strcmp(line, "OK")) {
			error("fail-next: \"%s\"", line);
			exit(1);
		}
		u->start = now_ns();
		kill(u->pid0,
		     u->kind == 't' || u->kind == 'T' ? SIGUSR1 : SIGUSR2);
		k->phase = 3;
		k->next = u->start;
		return false;
	case 3:
		if (!line) {
			if (now_ns() < k->next)
				return false;
			if (now_ns() - u->start > 15000000000ll) {
				error("upgrade %zu (%c): no outcome in 15 s",
				      *cur, u->kind);
				exit(1);
			}
			ctl_send(k, "stat\n");
			return false;
		}
		if (sscanf(line, "STAT %d %llu %*u %llu %d", &pid, &gen, &fails,
			   &fds) != 4) {
			error("stat: \"%s\"", line);
			exit(1);
		}
		k->next = now_ns() + 5000000; /* poll every 5 ms */
		if (gen == u->gen0 && fails == u->fails0)
			return false;
		u->end = now_ns();
		u->pid1 = pid;
		server_pid = pid;
		if (u->kind == 't' || u->kind == 'e'
			    ? gen != u->gen0 + 1 || fails != u->fails0
			    : fails != u->fails0 + 1 || gen != u->gen0)
			error("upgrade %zu (%c): gen %llu->%llu fails %llu->%llu",
			      *cur, u->kind, u->gen0, gen, u->fails0, fails);
		/* Same clients, same fds: nothing leaked by an upgrade. */
		if (fds != k->fds)
			error("upgrade %zu (%c): the server has %d fds, had %d",
			      *cur, u->kind, fds, k->fds);
		if ((u->kind == 'e' || u->kind == 'T') != (pid == u->pid0))
			error("upgrade %zu (%c): pid %d -> %d", *cur, u->kind,
			      u->pid0, pid);
		fprintf(stderr,
			"kvload: upgrade %zu (%c) pid %d -> %d, gen %llu, fails %llu, fds %d: %.1f ms\n",
			*cur, u->kind, u->pid0, pid, gen, fails, fds,
			(u->end - u->start) / 1e6);
		k->phase = 0;
		k->next = now_ns() + gap_ms * 1000000ll;
		(*cur)++;
		return *cur == nup;
	}
	return false;
}

static void bulk_init(struct bulk *b, int fd)
{
	size_t i;
	char *set;

	b->fd = fd;
	for (i = 0; i < 200; i++)
		b->val[i] = (char)('A' + i % 26);
	b->val[200] = '\0';
	b->replen = (size_t)snprintf(b->reply, sizeof(b->reply), "VAL %s\n",
				     b->val);
	b->reqlen = BULK_N * strlen(BULK_GET);
	b->req = malloc(b->reqlen + 256);
	if (!b->req)
		exit(1);
	for (i = 0; i < BULK_N; i++)
		memcpy(b->req + i * strlen(BULK_GET), BULK_GET,
		       strlen(BULK_GET));
	/* The first round starts with the set. */
	set = malloc(b->reqlen + 256);
	if (!set)
		exit(1);
	i = (size_t)sprintf(set, "set bulk %s\n", b->val);
	memcpy(set + i, b->req, b->reqlen);
	free(b->req);
	b->req = set;
	b->reqlen += i;
	b->got = -(uint64_t)strlen("OK\n");
	b->idle = false;
}

/* Send what the socket takes. */
static void bulk_send(struct bulk *b)
{
	ssize_t w;

	if (b->idle || b->sent == b->reqlen)
		return;
	if (!b->sent) /* a round starts: read nothing for a while */
		b->read_at = now_ns() + BULK_PAUSE_MS * 1000000ll;
	w = send(b->fd, b->req + b->sent, b->reqlen - b->sent,
		 MSG_DONTWAIT | MSG_NOSIGNAL);
	if (w < 0 && errno != EAGAIN)
		error("bulk send: %s", strerror(errno));
	if (w > 0)
		b->sent += (size_t)w;
}

/* Read and check the replies, once the round's pause is over. */
static void bulk_read(struct bulk *b, bool last)
{
	char buf[65536];
	ssize_t r, i;

	if (b->idle || !b->sent || now_ns() < b->read_at)
		return;
	r = recv(b->fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (r == 0 || (r < 0 && errno != EAGAIN)) {
		error("bulk: %s", r ? strerror(errno) : "closed");
		exit(1);
	}
	for (i = 0; i < r; i++, b->got++) {
		/* "OK\n" for the set, before the first round's replies. */
		char want = (int64_t)b->got < 0 ? "OK\n"[3 + (int64_t)b->got]
						: b->reply[b->got % b->replen];

		if (buf[i] != want) {
			error("bulk: byte %lld of round %lu is %#x, not %#x",
			      (long long)b->got, b->rounds, buf[i], want);
			exit(1);
		}
	}
	if ((int64_t)b->got == (int64_t)(BULK_N * b->replen)) {
		size_t set = b->reqlen - BULK_N * strlen(BULK_GET);

		/* The later rounds: the gets only. */
		memmove(b->req, b->req + set, b->reqlen - set);
		b->reqlen -= set;
		b->rounds++;
		b->got = 0;
		b->sent = 0;
		b->idle = last;
	}
}

static int start_server(const char *exe, int *pid)
{
	int p[2], port = 0;
	char line[128];
	FILE *f;

	if (pipe2(p, O_CLOEXEC) < 0)
		return -1;
	*pid = fork();
	if (*pid < 0)
		return -1;
	if (*pid == 0) {
		dup2(p[1], 1);
		execl(exe, exe, "--port", "0", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	f = fdopen(p[0], "r");
	if (!f || !fgets(line, sizeof(line), f) ||
	    sscanf(line, "listening on 127.0.0.1:%d", &port) != 1)
		port = -1;
	if (f)
		fclose(f);
	return port;
}

/* On a failure: leave no server behind. */
static void kill_server(void)
{
	if (server_pid > 0)
		kill(server_pid, SIGKILL);
}

/* Stop the server; reap every process it left (we are a subreaper). */
static void stop_server(int pid)
{
	int st;
	pid_t w;

	server_pid = 0;
	kill(pid, SIGTERM);
	alarm(10);
	while ((w = wait(&st)) > 0)
		if (!WIFEXITED(st) || (WEXITSTATUS(st) && w == pid))
			fprintf(stderr, "kvload: pid %d ended with %#x\n",
				(int)w, st);
	alarm(0);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "server", required_argument, NULL, 's' },
		{ "conns", required_argument, NULL, 'c' },
		{ "keys", required_argument, NULL, 'k' },
		{ "upgrades", required_argument, NULL, 'u' },
		{ "gap-ms", required_argument, NULL, 'g' },
		{ "no-bulk", no_argument, NULL, 'b' },
		{ NULL, 0, NULL, 0 },
	};
	const char *server = NULL, *spec = "teteteteteTE";
	int port = -1, nconns = 50, gap_ms = 300, c, i;
	struct upgrade up[MAX_UPGRADES] = { 0 };
	struct ctl k = { .fd = -1 };
	struct bulk bulk = { 0 };
	size_t nup, cur = 0, n, j, nsteady = 0, nup_s = 0;
	uint32_t *all, *steady, up_max = 0;
	struct pollfd *pfd;
	struct conn *conn;
	bool upgrades_done = false, sweeping = false, no_bulk = false;
	int64_t t_begin, t_end;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'p':
			port = atoi(optarg);
			break;
		case 's':
			server = optarg;
			break;
		case 'c':
			nconns = atoi(optarg);
			break;
		case 'k':
			nkeys = atoi(optarg);
			break;
		case 'u':
			spec = optarg;
			break;
		case 'g':
			gap_ms = atoi(optarg);
			break;
		case 'b':
			no_bulk = true;
			break;
		default:
			fprintf(stderr,
				"usage: kvload (--port P | --server EXE) [--conns N] [--keys N] [--upgrades SPEC] [--gap-ms MS] [--no-bulk]\n");
			return 2;
		}
	}
	nup = strlen(spec);
	if ((port < 0) == !server || nconns < 1 || nkeys < 1 ||
	    nup > MAX_UPGRADES || strspn(spec, "teTE") != nup) {
		fprintf(stderr, "kvload: bad arguments\n");
		return 2;
	}
	for (j = 0; j < nup; j++)
		up[j].kind = spec[j];
	if (server) {
		prctl(PR_SET_CHILD_SUBREAPER, 1);
		port = start_server(server, &server_pid);
		atexit(kill_server);
		if (port <= 0) {
			fprintf(stderr, "kvload: %s did not start\n", server);
			return 1;
		}
	}
	conn = calloc((size_t)nconns, sizeof(*conn));
	pfd = calloc((size_t)nconns + 2, sizeof(*pfd));
	if (!conn || !pfd)
		return 1;
	for (i = 0; i < nconns; i++) {
		conn[i].fd = connect_to(port, 0);
		conn[i].rng = 0x9e3779b97f4a7c15ull * (uint64_t)(i + 1);
		conn[i].ver = calloc((size_t)nkeys, sizeof(uint32_t));
		conn[i].verify = -1;
		if (!conn[i].ver)
			return 1;
	}
	k.fd = connect_to(port, 0);
	bulk_init(&bulk, connect_to(port, 16384));
	bulk.idle = no_bulk;
	t_begin = now_ns();
	k.next = t_begin + gap_ms * 1000000ll;
	t_end = nup ? INT64_MAX : t_begin + 3000000000ll;
	for (;;) {
		int64_t now = now_ns(), wake = k.next;
		int timeout, busy = 0;

		if (!upgrades_done)
			upgrades_done = drive(&k, up, nup, &cur, gap_ms);
		if (upgrades_done && t_end == INT64_MAX)
			t_end = now + gap_ms * 1000000ll;
		if (now >= t_end && !sweeping) {
			sweeping = true;
			for (i = 0; i < nconns; i++)
				conn[i].verify = conn[i].t0 ? -2 : 0;
		}
		for (i = 0; i < nconns; i++) {
			struct conn *cn = &conn[i];

			if (!cn->t0 && cn->verify == -2)
				cn->verify = 0;
			if (!cn->t0 && cn->verify < nkeys)
				next_request(cn, i);
			if (cn->t0 && cn->sent < cn->reqlen &&
			    (!cn->sent || now >= cn->rest_at))
				send_piece(cn);
			busy += cn->t0 != 0;
			pfd[i] = (struct pollfd){ .fd = cn->fd,
						  .events = POLLIN };
		}
		bulk_send(&bulk);
		bulk_read(&bulk, sweeping);
		if (!busy && sweeping && bulk.idle)
			break;
		pfd[nconns] = (struct pollfd){ .fd = k.fd, .events = POLLIN };
		pfd[nconns + 1] = (struct pollfd){ .fd = bulk.fd };
		timeout = -1;
		if (!bulk.idle && bulk.sent < bulk.reqlen)
			pfd[nconns + 1].events = POLLOUT;
		if (!bulk.idle && now < bulk.read_at)
			timeout = min_timeout(timeout, bulk.read_at, now);
		else if (!bulk.idle)
			pfd[nconns + 1].events |= POLLIN;
		for (i = 0; i < nconns; i++)
			if (conn[i].t0 && conn[i].sent < conn[i].reqlen)
				timeout = min_timeout(timeout, conn[i].rest_at,
						      now);
		if (!upgrades_done && !k.waiting)
			timeout = min_timeout(timeout, wake, now);
		if (upgrades_done && !sweeping)
			timeout = min_timeout(timeout, t_end, now);
		if (poll(pfd, (nfds_t)nconns + 2, timeout) < 0) {
			perror("kvload: poll");
			return 1;
		}
		for (i = 0; i < nconns; i++)
			if (pfd[i].revents && !on_reply(&conn[i], i))
				return 1;
	}
	/* Every request, then those that overlapped no upgrade. */
	all = malloc(nsamples * sizeof(*all));
	steady = malloc(nsamples * sizeof(*steady));
	if (!all || !steady)
		return 1;
	for (n = 0; n < nsamples; n++) {
		int64_t s0 = samples[n].start;
		int64_t s1 = s0 + (int64_t)samples[n].span_us * 1000;
		bool during = false;

		all[n] = samples[n].lat_us;
		for (j = 0; j < nup; j++)
			if (s1 >= up[j].start && s0 <= up[j].end)
				during = true;
		if (during) {
			nup_s++;
			if (samples[n].lat_us > up_max)
				up_max = samples[n].lat_us;
		} else {
			steady[nsteady++] = samples[n].lat_us;
		}
	}
	qsort(all, nsamples, sizeof(*all), cmp_u32);
	qsort(steady, nsteady, sizeof(*steady), cmp_u32);
	printf("requests %zu errors %lu upgrades %zu (%s) in %.1f s\n",
	       nsamples, errors, nup, spec, (now_ns() - t_begin) / 1e9);
	printf("latency us: p50 %u p99 %u max %u\n", pct(all, nsamples, 0.5),
	       pct(all, nsamples, 0.99), pct(all, nsamples, 1.0));
	printf("steady us: p50 %u p99 %u max %u (%zu requests)\n",
	       pct(steady, nsteady, 0.5), pct(steady, nsteady, 0.99),
	       pct(steady, nsteady, 1.0), nsteady);
	printf("during upgrades us: max %u (%zu requests)\n", up_max, nup_s);
	for (j = 0; j < nup; j++)
		printf("upgrade %zu %c: %.1f ms\n", j, up[j].kind,
		       (up[j].end - up[j].start) / 1e6);
	for (i = 0; i < nconns; i++) {
		close(conn[i].fd);
		free(conn[i].ver);
	}
	close(k.fd);
	close(bulk.fd);
	free(bulk.req);
	if (server)
		stop_server(server_pid);
	free(all);
	free(steady);
	free(samples);
	free(conn);
	free(pfd);
	return errors ? 1 : 0;
}
