/* SPDX-License-Identifier: MIT */
/*
 * Round trips between two real processes over a socketpair, through the
 * public API only: 10,000 fds, each proven to be the right object; a
 * 64 MiB blob; every value type; a receiver whose fd table fills up.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"

#define NFDS 10000
#define BLOB (64u << 20)

static uint8_t pattern(size_t i)
{
	return (uint8_t)(i * 2654435761u >> 13);
}

struct ctx {
	int sock;
	int nfds;
	int rlimit; /* receiver's soft RLIMIT_NOFILE, 0: raise */
};

/* The incoming side: load, verify everything, ack; exit code = verdict. */
static int receiver(void *arg)
{
	struct ctx *c = arg;
	cprxfer_channel *ch;
	cprxfer_state *st;
	const void *d;
	const uint8_t *b;
	size_t len, i;
	uint64_t v;
	const char *s;
	int rc, before, fd, n;

	if (c->rlimit) {
		struct rlimit rl = { c->rlimit, c->rlimit };

		setrlimit(RLIMIT_NOFILE, &rl);
	} else {
		tu_raise_nofile();
	}
	before = tu_count_fds();
	rc = cprxfer_channel_open(c->sock, &ch);
	if (rc < 0)
		return 10;
	rc = cprxfer_load(ch, &st);
	if (rc < 0) {
		fprintf(stderr, "receiver: %s\n", cprxfer_errmsg());
		cprxfer_channel_close(ch);
		/* 20: the load failed and no fd leaked. */
		return rc == -EMFILE && tu_count_fds() == before - 1 ? 20 : 21;
	}
	if (cprxfer_state_count(st) != (size_t)c->nfds + 4)
		return 11;
	for (n = 0; n < c->nfds; n++) {
		char name[32];
		int fl;

		snprintf(name, sizeof(name), "efd.%d", n);
		if (cprxfer_get_fd(st, name, &fd) < 0)
			return 12;
		fl = fcntl(fd, F_GETFD);
		/* Each fd is the right eventfd: its counter says which. */
		if (fl < 0 || !(fl & FD_CLOEXEC) || read(fd, &v, 8) != 8 ||
		    v != (uint64_t)n + 1)
			return 13;
	}
	if (cprxfer_get_blob(st, "blob", &d, &len) < 0 || len != BLOB)
		return 14;
	b = d;
	for (i = 0; i < len; i += 4093)
		if (b[i] != pattern(i))
			return 15;
	if (cprxfer_get_blob(st, "zero", &d, &len) < 0 || len != 0)
		return 16;
	if (cprxfer_get_str(st, "str", &s) < 0 || strcmp(s, "text") ||
	    cprxfer_get_u64(st, "u64", &v) < 0 || v != 0x0123456789abcdefull)
		return 17;
	fd = cprxfer_take_fd(st, "efd.0");
	cprxfer_state_free(st);
	/* The taken fd survived the state; all others are closed. */
	if (fcntl(fd, F_GETFD) < 0 || tu_count_fds() != before + 1)
		return 18;
	close(fd);
	rc = cprxfer_ack(ch, 0, NULL);
	if (rc == 0)
		rc = cprxfer_wait_commit(ch, 10000);
	cprxfer_channel_close(ch);
	return rc < 0 ? 19 : 0;
}

static cprxfer_state *build(int nfds, int *fds)
{
	cprxfer_state *st = cprxfer_state_new();
	uint8_t *blob = malloc(BLOB);
	size_t i;
	int n;

	assert_non_null(blob);
	for (i = 0; i < BLOB; i++)
		blob[i] = pattern(i);
	for (n = 0; n < nfds; n++) {
		char name[32];

		fds[n] = eventfd((unsigned)n + 1, EFD_CLOEXEC);
		assert_true(fds[n] >= 0);
		snprintf(name, sizeof(name), "efd.%d", n);
		assert_int_equal(cprxfer_put_fd(st, name, fds[n]), 0);
	}
	assert_int_equal(cprxfer_put_blob(st, "blob", blob, BLOB), 0);
	assert_int_equal(cprxfer_put_blob(st, "zero", "", 0), 0);
	assert_int_equal(cprxfer_put_str(st, "str", "text"), 0);
	assert_int_equal(cprxfer_put_u64(st, "u64", 0x0123456789abcdefull), 0);
	free(blob);
	return st;
}

static int run(int nfds, int rlimit, int *ack)
{
	struct ctx c = { .nfds = nfds, .rlimit = rlimit };
	int *fds;
	cprxfer_channel *ch;
	cprxfer_state *st;
	int sv[2], rc, n;
	int64_t t0;
	pid_t pid;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	c.sock = sv[1];
	pid = tu_fork(receiver, &c);
	close(sv[1]);
	/* Allocated after the fork: the child owns no copy of it. */
	fds = calloc(NFDS, sizeof(int));
	assert_non_null(fds);
	st = build(nfds, fds);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);
	t0 = tu_now_ms();
	rc = cprxfer_save(ch, st);
	*ack = rc == 0 ? cprxfer_wait_ack(ch, 10000) : rc;
	if (*ack == 0)
		assert_int_equal(cprxfer_commit(ch), 0);
	print_message("%d fds + 64 MiB: save %d, ack %d, %lld ms\n", nfds, rc,
		      *ack, (long long)(tu_now_ms() - t0));
	cprxfer_channel_close(ch);
	/* The sender still holds every fd: nothing was consumed. */
	for (n = 0; n < nfds; n++) {
		assert_true(fcntl(fds[n], F_GETFD) >= 0);
		close(fds[n]);
	}
	cprxfer_state_free(st);
	free(fds);
	rc = tu_wait(pid);
	if (rc)
		print_message("receiver exited %d\n", rc);
	return rc;
}

static void test_10000_fds(void **unused)
{
	int ack;

	assert_true(tu_raise_nofile() >= 2 * NFDS / 2 + 100);
	assert_int_equal(run(NFDS, 0, &ack), 0);
	assert_int_equal(ack, 0);
}

static void test_small(void **unused)
{
	int ack;

	assert_int_equal(run(1, 0, &ack), 0);
	assert_int_equal(ack, 0);
}

/* The receiver's fd table fills up: MSG_CTRUNC, everything closed. */
static void test_fd_table_full(void **unused)
{
	int ack;

	/* valgrind emulates RLIMIT_NOFILE: the kernel's limit never drops. */
	if (getenv("CPRXFER_UNDER_VALGRIND")) {
		print_message(
			"skipped under valgrind: it emulates setrlimit(RLIMIT_NOFILE)\n");
		skip();
	}

	assert_int_equal(run(600, 300, &ack), 20);
	/* The sender hears why, as the peer's own errno. */
	assert_int_equal(ack, -EMFILE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_small),
		tu_test(test_10000_fds),
		tu_test(test_fd_table_full),
	};

	tu_raise_nofile();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
