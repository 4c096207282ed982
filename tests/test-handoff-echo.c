/* SPDX-License-Identifier: MIT */
/*
 * examples/handoff-echo, end to end: eight TCP clients keep streaming
 * through a chain of instances of the echo server; each byte must come
 * back, in order, with no error on any client, across
 *   1. a handoff A -> B (B started after A was told to hand off),
 *   2. a refused handoff B -> C (B rolls back and keeps serving),
 *   3. a handoff B -> D, after which a new client still gets in (the
 *      listening socket moved too).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#define NCLIENTS 8
#define WINDOW	 32768 /* bytes in flight per client */

static char exe[512];
static char *dir;
static int port;

struct client {
	int fd;
	unsigned id;
	uint64_t sent, rcvd;
};

static struct client cl[NCLIENTS + 1];
static int ncl;

static uint8_t pat(unsigned id, uint64_t k)
{
	return (uint8_t)(k * 31 + id * 7 + (k >> 9));
}

static pid_t start(const char *const argv[], int *outfd)
{
	int p[2] = { -1, -1 };
	pid_t pid;

	if (outfd)
		assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		if (outfd)
			dup2(p[1], 1);
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	if (outfd) {
		close(p[1]);
		*outfd = p[0];
	}
	return pid;
}

static void add_client(void)
{
	struct sockaddr_in sa = { .sin_family = AF_INET,
				  .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct client *c = &cl[ncl];
	int one = 1;

	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(c->fd >= 0);
	assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	assert_int_equal(fcntl(c->fd, F_SETFL, O_NONBLOCK), 0);
	c->id = (unsigned)ncl;
	c->sent = c->rcvd = 0;
	ncl++;
}

/*
 * Keep every client talking for ms milliseconds (sending unless
 * draining), checking every echoed byte. Returns when the time is up,
 * or, when draining, once everything sent came back.
 */
static void pump(int ms, int drain)
{
	int64_t end = tu_now_ms() + ms;
	uint8_t buf[8192];

	for (;;) {
		struct pollfd p[NCLIENTS + 1];
		int i, done = 1;

		for (i = 0; i < ncl; i++) {
			struct client *c = &cl[i];

			if (!drain && c->sent - c->rcvd < WINDOW) {
				size_t n = 1000, k;
				ssize_t w;

				for (k = 0; k < n; k++)
					buf[k] = pat(c->id, c->sent + k);
				w = send(c->fd, buf, n, MSG_NOSIGNAL);
				if (w < 0)
					assert_int_equal(errno, EAGAIN);
				else
					c->sent += (uint64_t)w;
			}
			done &= c->sent == c->rcvd;
			p[i] = (struct pollfd){ .fd = c->fd, .events = POLLIN };
		}
		if (drain && done)
			return;
		if (tu_now_ms() >= end) {
			if (drain)
				fail_msg("echoes still missing after %d ms",
					 ms);
			return;
		}
		poll(p, (nfds_t)ncl, 5);
		for (i = 0; i < ncl; i++) {
			struct client *c = &cl[i];
			ssize_t r, k;

			if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			r = recv(c->fd, buf, sizeof(buf), 0);
			if (r < 0 && errno == EAGAIN)
				continue;
			/* No EOF, no reset: the connection lives on. */
			if (r <= 0)
				fail_msg("client %d: recv gave %zd (%s)", i, r,
					 strerror(errno));
			for (k = 0; k < r; k++)
				if (buf[k] != pat(c->id, c->rcvd + (uint64_t)k))
					fail_msg(
						"client %d: byte %llu wrong", i,
						(unsigned long long)(c->rcvd +
								     (uint64_t)
									     k));
			c->rcvd += (uint64_t)r;
		}
	}
}

/* Keep talking until pid exits; returns its status. */
static int pump_until_exit(pid_t pid, int max_ms)
{
	int64_t end = tu_now_ms() + max_ms;
	int st;

	while (tu_now_ms() < end) {
		pump(20, 0);
		if (waitpid(pid, &st, WNOHANG) == pid)
			return WIFEXITED(st) ? WEXITSTATUS(st)
					     : 128 + WTERMSIG(st);
	}
	fail_msg("pid %d still running after %d ms", (int)pid, max_ms);
	return -1;
}

static void test_echo_handoff(void **state)
{
	char p1[256], p2[256], line[128] = "";
	const char *a[] = {
		"handoff-echo", "--port", "0", "--control", p1, NULL
	};
	const char *b[] = { "handoff-echo", "--incoming", p1,
			    "--control",    p2,		  NULL };
	const char *c[] = { "handoff-echo", "--incoming", p2, "--refuse",
			    NULL };
	const char *d[] = { "handoff-echo", "--incoming", p2, NULL };
	pid_t pa, pb, pc, pd;
	uint64_t total = 0;
	int out, i;
	ssize_t n;

	if (access(exe, X_OK) < 0) {
		print_message("skip: %s not built (examples disabled)\n", exe);
		skip();
	}
	snprintf(p1, sizeof(p1), "%s/a.sock", dir);
	snprintf(p2, sizeof(p2), "%s/b.sock", dir);
	pa = start(a, &out);
	n = read(out, line, sizeof(line) - 1);
	close(out);
	assert_true(n > 0);
	assert_int_equal(sscanf(line, "listening on 127.0.0.1:%d", &port), 1);
	for (i = 0; i < NCLIENTS; i++)
		add_client();
	pump(200, 0);

	/* 1. A hands off to B; B starts after A was told. */
	kill(pa, SIGUSR1);
	pump(100, 0);
	pb = start(b, NULL);
	assert_int_equal(pump_until_exit(pa, 10000), 0);
	pump(200, 0);
	pump(5000, 1);

	/* 2. C refuses: B rolls back and keeps serving everyone. */
	pc = start(c, NULL);
	kill(pb, SIGUSR1);
	assert_int_equal(pump_until_exit(pc, 10000), 0);
	pump(200, 0);
	pump(5000, 1);
	assert_int_equal(waitpid(pb, NULL, WNOHANG), 0);

	/* 3. B hands off to D; a new client gets in afterwards. */
	pd = start(d, NULL);
	kill(pb, SIGUSR1);
	assert_int_equal(pump_until_exit(pb, 10000), 0);
	add_client();
	pump(200, 0);
	pump(5000, 1);

	for (i = 0; i < ncl; i++) {
		assert_true(cl[i].rcvd == cl[i].sent);
		total += cl[i].rcvd;
		close(cl[i].fd);
	}
	print_message(
		"%d clients, %llu bytes echoed through 2 handoffs and a rollback\n",
		ncl, (unsigned long long)total);
	assert_true(total > 100000);
	kill(pd, SIGTERM);
	assert_int_equal(tu_wait(pd), 0);
}

static int setup(void **state)
{
	snprintf(exe, sizeof(exe), "%s/../examples/handoff-echo/handoff-echo",
		 CX_TEST_BUILDDIR);
	dir = tu_tmpdir();
	return dir ? 0 : -1;
}

static int teardown(void **state)
{
	tu_rmdir(dir);
	free(dir);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_echo_handoff),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
