/* SPDX-License-Identifier: MIT */
/*
 * handoff-echo: a TCP echo server that hands its listening socket and
 * its live client connections to a new instance of itself, the way a
 * proxy is upgraded without dropping a connection.
 *
 * What it shows:
 *  - transfer mode: the new instance listens on a unix socket path
 *    (cprxfer_listen + cprxfer_accept), the old one connects to it
 *    (cprxfer_connect); either may start first;
 *  - what goes across: the listening socket, every client socket, and
 *    the bytes already read from a client but not yet echoed back, so
 *    no byte is lost (bytes still in the kernel travel with the socket);
 *  - the ack and the rollback: the old instance exits only when the new
 *    one has acknowledged the state; on any failure (refusal, death,
 *    timeout) it keeps serving as if nothing had happened.
 *
 * Run it:
 *   handoff-echo --port 7000 --control /tmp/echo.sock &   # old instance
 *   nc 127.0.0.1 7000                                     # a client
 *   handoff-echo --incoming /tmp/echo.sock &              # new instance
 *   kill -USR1 %1                                         # hand off
 *
 * On SIGUSR1 the running instance connects to its --control path and
 * hands everything over; SIGTERM stops it. A new instance started with
 * --incoming PATH takes over, then serves; give it --control PATH2 to
 * hand off again later. --refuse makes the new instance load the state
 * and then refuse it, to watch the old one roll back. --port 0 picks a
 * free port; the first line on stdout names it.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#define TAG		   "handoff-echo/1"
#define HANDOFF_TIMEOUT_MS 10000

struct client {
	int fd;
	char *pend; /* read, not yet echoed back */
	size_t plen;
};

struct server {
	int lfd;   /* the TCP listening socket */
	int sigfd; /* SIGUSR1: hand off; SIGTERM: stop */
	struct client *c;
	size_t n, cap;
	const char *control; /* where the next instance listens */
};

static int add_client(struct server *s, int fd, const void *pend, size_t plen)
{
	struct client *c;

	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 16;

		c = realloc(s->c, cap * sizeof(*c));
		if (!c)
			return -ENOMEM;
		s->c = c;
		s->cap = cap;
	}
	c = &s->c[s->n];
	c->fd = fd;
	c->plen = plen;
	c->pend = NULL;
	if (plen) {
		c->pend = malloc(plen);
		if (!c->pend)
			return -ENOMEM;
		memcpy(c->pend, pend, plen);
	}
	s->n++;
	return 0;
}

static void drop_client(struct server *s, size_t i)
{
	close(s->c[i].fd);
	free(s->c[i].pend);
	s->c[i] = s->c[--s->n];
}

/* Echo what can be written now; keep the rest. -1: the client left. */
static int flush_client(struct client *c)
{
	while (c->plen) {
		ssize_t w = send(c->fd, c->pend, c->plen, MSG_NOSIGNAL);

		if (w < 0)
			return errno == EAGAIN ? 0 : -1;
		memmove(c->pend, c->pend + w, c->plen - (size_t)w);
		c->plen -= (size_t)w;
	}
	return 0;
}

static int serve_client(struct client *c)
{
	char buf[65536];
	ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
	char *p;

	if (r == 0 || (r < 0 && errno != EAGAIN))
		return -1;
	if (r < 0)
		return 0;
	p = realloc(c->pend, c->plen + (size_t)r);
	if (!p)
		return -1;
	memcpy(p + c->plen, buf, (size_t)r);
	c->pend = p;
	c->plen += (size_t)r;
	return flush_client(c);
}

/*
 * Hand everything to the instance listening on s->control. 0: it
 * acknowledged, we are done; < 0: nothing changed, keep serving.
 */
static int handoff(struct server *s)
{
	cprxfer_channel *ch = NULL;
	cprxfer_state *st;
	cprxfer_opts *o;
	char name[64];
	size_t i;
	int rc;

	if (!s->control)
		return -ENOENT;
	o = cprxfer_opts_new();
	st = cprxfer_state_new();
	rc = o && st ? cprxfer_opts_set_tag(o, TAG) : -ENOMEM;
	if (rc == 0)
		rc = cprxfer_connect_opts(s->control, HANDOFF_TIMEOUT_MS, o,
					  &ch);
	/* From here to the ack, clients wait in their socket buffers. */
	if (rc == 0)
		rc = cprxfer_put_fd(st, "listen", s->lfd);
	if (rc == 0)
		rc = cprxfer_put_u64(st, "clients", s->n);
	for (i = 0; rc == 0 && i < s->n; i++) {
		snprintf(name, sizeof(name), "client.%zu", i);
		rc = cprxfer_put_fd(st, name, s->c[i].fd);
		snprintf(name, sizeof(name), "client.%zu.pending", i);
		if (rc == 0)
			rc = cprxfer_put_blob(st, name, s->c[i].pend,
					      s->c[i].plen);
	}
	if (rc == 0)
		rc = cprxfer_save(ch, st);
	if (rc == 0)
		rc = cprxfer_wait_ack(ch, HANDOFF_TIMEOUT_MS);
	/* The new instance is ready: hand over, and never serve again. */
	if (rc == 0)
		rc = cprxfer_commit(ch);
	if (rc < 0)
		fprintf(stderr,
			"handoff-echo: handoff failed, still serving: %s\n",
			cprxfer_errmsg());
	/* Undecided (timeout, refusal): closing tells the new one to go. */
	cprxfer_channel_close(ch);
	cprxfer_state_free(st);
	cprxfer_opts_free(o);
	return rc;
}

/* The new instance: take over from the one that connects to path. */
static int take_over(struct server *s, const char *path, bool refuse)
{
	cprxfer_listener *l = NULL;
	cprxfer_channel *ch = NULL;
	cprxfer_state *st = NULL;
	cprxfer_opts *o = cprxfer_opts_new();
	uint64_t n = 0, i;
	char name[64];
	int rc;

	rc = o ? cprxfer_opts_set_tag(o, TAG) : -ENOMEM;
	if (rc == 0)
		rc = cprxfer_listen_opts(path, o, &l);
	if (rc == 0)
		rc = cprxfer_accept(l, -1, &ch);
	if (rc == 0)
		rc = cprxfer_load(ch, &st);
	if (rc == 0)
		rc = cprxfer_get_u64(st, "clients", &n);
	if (rc == 0 && refuse) {
		/* Show the rollback: the old instance keeps serving. */
		rc = cprxfer_ack(ch, -EBUSY, "refused on request (--refuse)");
		if (rc == 0)
			printf("handoff-echo: refused %llu clients\n",
			       (unsigned long long)n);
		rc = -EBUSY;
		goto done;
	}
	if (rc == 0) {
		rc = cprxfer_take_fd(st, "listen");
		s->lfd = rc;
	}
	for (i = 0; rc >= 0 && i < n; i++) {
		const void *pend;
		size_t plen;
		int fd;

		snprintf(name, sizeof(name), "client.%llu",
			 (unsigned long long)i);
		fd = cprxfer_take_fd(st, name);
		if (fd < 0) {
			rc = fd;
			break;
		}
		snprintf(name, sizeof(name), "client.%llu.pending",
			 (unsigned long long)i);
		rc = cprxfer_get_blob(st, name, &pend, &plen);
		if (rc == 0)
			rc = add_client(s, fd, pend, plen);
		if (rc < 0)
			close(fd);
	}
	/* Accept only what we could take in full: else the old resumes. */
	if (ch)
		cprxfer_ack(ch, rc < 0 ? rc : 0,
			    rc < 0 ? cprxfer_errmsg() : NULL);
	/* Serve nothing until the old instance commits. */
	if (rc >= 0)
		rc = cprxfer_wait_commit(ch, HANDOFF_TIMEOUT_MS);
	if (rc >= 0)
		printf("handoff-echo: took over %llu clients\n",
		       (unsigned long long)n);
	if (rc < 0)
		fprintf(stderr, "handoff-echo: taking over: %s\n",
			cprxfer_errmsg());
done:
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	cprxfer_listener_close(l);
	cprxfer_opts_free(o);
	return rc < 0 ? rc : 0;
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
	    listen(fd, 64) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) < 0) {
		int e = -errno;

		close(fd);
		return e;
	}
	*lfd = fd;
	return ntohs(sa.sin_port);
}

/* Serve until SIGTERM or a successful handoff. */
static int serve(struct server *s)
{
	for (;;) {
		struct pollfd *p = calloc(s->n + 2, sizeof(*p));
		size_t i, n = s->n;
		int fd;

		if (!p)
			return -ENOMEM;
		p[0] = (struct pollfd){ .fd = s->lfd, .events = POLLIN };
		p[1] = (struct pollfd){ .fd = s->sigfd, .events = POLLIN };
		for (i = 0; i < n; i++)
			p[i + 2] = (struct pollfd){
				.fd = s->c[i].fd,
				.events = s->c[i].plen ? POLLOUT : POLLIN,
			};
		if (poll(p, n + 2, -1) < 0 && errno != EINTR) {
			free(p);
			return -errno;
		}
		/* Walk backwards: dropping a client moves the last one. */
		for (i = n; i-- > 0;) {
			short re = p[i + 2].revents;
			int rc = 0;

			if (re & (POLLERR | POLLHUP | POLLIN))
				rc = s->c[i].plen ? flush_client(&s->c[i])
						  : serve_client(&s->c[i]);
			else if (re & POLLOUT)
				rc = flush_client(&s->c[i]);
			if (rc < 0)
				drop_client(s, i);
		}
		if (p[0].revents & POLLIN) {
			fd = accept4(s->lfd, NULL, NULL,
				     SOCK_NONBLOCK | SOCK_CLOEXEC);
			if (fd >= 0 && add_client(s, fd, NULL, 0) < 0)
				close(fd);
		}
		if (p[1].revents & POLLIN) {
			struct signalfd_siginfo si;

			if (read(s->sigfd, &si, sizeof(si)) == sizeof(si)) {
				if (si.ssi_signo == SIGTERM) {
					free(p);
					return 0;
				}
				if (handoff(s) == 0) {
					free(p);
					return 1;
				}
			}
		}
		free(p);
	}
}

static void usage(void)
{
	fprintf(stderr,
		"usage: handoff-echo --port PORT [--control PATH]\n       handoff-echo --incoming PATH [--control PATH] [--refuse]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "control", required_argument, NULL, 'c' },
		{ "incoming", required_argument, NULL, 'i' },
		{ "refuse", no_argument, NULL, 'r' },
		{ NULL, 0, NULL, 0 },
	};
	struct server s = { .lfd = -1, .sigfd = -1 };
	const char *incoming = NULL;
	bool refuse = false;
	int port = -1, rc, c;
	size_t i;
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
		case 'r':
			refuse = true;
			break;
		default:
			usage();
			return 2;
		}
	}
	if ((port < 0) == !incoming) {
		usage();
		return 2;
	}
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	s.sigfd = signalfd(-1, &mask, SFD_CLOEXEC);
	if (s.sigfd < 0) {
		perror("handoff-echo: signalfd");
		return 1;
	}
	if (incoming) {
		rc = take_over(&s, incoming, refuse);
		if (rc < 0)
			return refuse ? 0 : 1;
	} else {
		rc = open_port(port, &s.lfd);
		if (rc < 0) {
			fprintf(stderr, "handoff-echo: port %d: %s\n", port,
				strerror(-rc));
			return 1;
		}
		printf("listening on 127.0.0.1:%d\n", rc);
	}
	fflush(stdout);
	rc = serve(&s);
	if (rc < 0)
		fprintf(stderr, "handoff-echo: %s\n", strerror(-rc));
	for (i = s.n; i-- > 0;)
		drop_client(&s, i);
	free(s.c);
	close(s.lfd);
	close(s.sigfd);
	return rc < 0;
}
