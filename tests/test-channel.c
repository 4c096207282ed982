/* SPDX-License-Identifier: MIT */
/*
 * What the channel's receive path keeps, round after round: no fd a
 * control message brings stays open unaccounted (a caller's
 * SO_PASSPIDFD, fds attached where none are expected); the received-fd
 * queue stays as small as what is pending; an ack that arrives in
 * pieces is completed by the next wait, never lost.
 *
 * Both ends live in this process (cx_channel_new, no handshake): every
 * exchange below fits in the socket buffers.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "channel.h"
#include "io.h"
#include "testutil.h"
#include "wire.h"

#ifndef SO_PASSPIDFD
#define SO_PASSPIDFD 76
#endif

static void pair(cprxfer_channel **a, cprxfer_channel **b)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	assert_int_equal(cx_channel_new(sv[0], NULL, a), 0);
	assert_int_equal(cx_channel_new(sv[1], NULL, b), 0);
}

static bool pass_pidfd(cprxfer_channel *ch)
{
	int one = 1;

	return setsockopt(ch->io.fd, SOL_SOCKET, SO_PASSPIDFD, &one,
			  sizeof(one)) == 0;
}

/*
 * Item 6: with SO_PASSPIDFD set on the socket (after the library took
 * it), every recvmsg brings an SCM_PIDFD. 100 ack rounds and 100 stream
 * rounds leave the fd count where it was (077bcd1: 9 -> 109).
 */
static void test_passpidfd_recvmsg_leaks_no_fd(void **unused)
{
	cprxfer_channel *a, *b;
	int before, i, fd = eventfd(0, EFD_CLOEXEC);

	pair(&a, &b);
	if (!pass_pidfd(a) || !pass_pidfd(b)) {
		cprxfer_channel_close(a);
		cprxfer_channel_close(b);
		close(fd);
		print_message("skipped: no SO_PASSPIDFD in this kernel\n");
		skip();
	}
	before = tu_count_fds();
	for (i = 0; i < 100; i++) {
		assert_int_equal(cprxfer_ack(a, 0, NULL), 0);
		assert_int_equal(cprxfer_wait_ack(b, 1000), 0);
	}
	print_message("100 ack rounds with SO_PASSPIDFD: %d -> %d open fds\n",
		      before, tu_count_fds());
	assert_int_equal(tu_count_fds(), before);

	/* Streams with an fd: the expected fds still arrive, nothing else. */
	for (i = 0; i < 100; i++) {
		cprxfer_state *st = cprxfer_state_new(), *in = NULL;
		int got;

		assert_int_equal(cprxfer_put_fd(st, "efd", fd), 0);
		assert_int_equal(cprxfer_put_u64(st, "round", (uint64_t)i), 0);
		assert_int_equal(cprxfer_save(a, st), 0);
		assert_int_equal(cprxfer_load(b, &in), 0);
		assert_int_equal(cprxfer_get_fd(in, "efd", &got), 0);
		assert_true(got != fd && fcntl(got, F_GETFD) == FD_CLOEXEC);
		assert_int_equal(cprxfer_ack(b, 0, NULL), 0);
		assert_int_equal(cprxfer_wait_ack(a, 1000), 0);
		cprxfer_state_free(in);
		cprxfer_state_free(st);
		/* A fresh pair each round: a channel carries one handoff. */
		cprxfer_channel_close(a);
		cprxfer_channel_close(b);
		pair(&a, &b);
		assert_true(pass_pidfd(a) && pass_pidfd(b));
	}
	assert_int_equal(tu_count_fds(), before);
	cprxfer_channel_close(a);
	cprxfer_channel_close(b);
	close(fd);
}

/* fds attached to an ACK frame, where none are expected, are closed. */
static void test_unexpected_fds_on_ack_are_closed(void **unused)
{
	uint8_t p[CX_HDR + CX_ACK_LEN];
	union {
		char buf[CMSG_SPACE(3 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = p, .iov_len = sizeof(p) };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *c;
	cprxfer_channel *a, *b;
	int fds[3], before, i;

	pair(&a, &b);
	for (i = 0; i < 3; i++)
		fds[i] = eventfd(0, EFD_CLOEXEC);
	before = tu_count_fds();
	cx_frame_put(p, CX_F_ACK, 0, CX_ACK_LEN);
	memset(p + CX_HDR, 0, CX_ACK_LEN);
	cx_put16(p + CX_HDR + 4, CX_ACK_USER);
	memset(&u, 0, sizeof(u));
	m.msg_control = u.buf;
	m.msg_controllen = sizeof(u.buf);
	c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(c), fds, sizeof(fds));
	for (i = 0; i < 50; i++) {
		assert_int_equal(sendmsg(a->io.fd, &m, 0), (ssize_t)sizeof(p));
		assert_int_equal(cprxfer_wait_ack(b, 1000), 0);
	}
	assert_int_equal(tu_count_fds(), before);
	for (i = 0; i < 3; i++)
		close(fds[i]);
	cprxfer_channel_close(a);
	cprxfer_channel_close(b);
}

/*
 * Item 11: 2,000 streams of 200 fds each through one channel; the queue
 * of received fds must stay the size of one batch, not grow to 400,000
 * entries (077bcd1).
 */
static void test_fd_queue_stays_bounded(void **unused)
{
	enum {
		ROUNDS = 2000,
		NFD = 200
	};
	cprxfer_channel *a, *b;
	cprxfer_state *st = cprxfer_state_new();
	int fds[NFD], i, r;
	size_t max_cap = 0;

	pair(&a, &b);
	for (i = 0; i < NFD; i++) {
		char name[16];

		fds[i] = eventfd(0, EFD_CLOEXEC);
		assert_true(fds[i] >= 0);
		snprintf(name, sizeof(name), "fd.%d", i);
		assert_int_equal(cprxfer_put_fd(st, name, fds[i]), 0);
	}
	for (r = 0; r < ROUNDS; r++) {
		cprxfer_state *in = NULL;

		assert_int_equal(cprxfer_save(a, st), 0);
		assert_int_equal(cprxfer_load(b, &in), 0);
		assert_int_equal(cprxfer_state_count(in), NFD);
		if (cx_io_fdq_capacity(&b->io) > max_cap)
			max_cap = cx_io_fdq_capacity(&b->io);
		cprxfer_state_free(in);
	}
	print_message(
		"%d rounds of %d fds: fd queue capacity at most %zu entries\n",
		ROUNDS, NFD, max_cap);
	assert_true(max_cap <= 1024);
	cprxfer_channel_close(a);
	cprxfer_channel_close(b);
	cprxfer_state_free(st);
	for (i = 0; i < NFD; i++)
		close(fds[i]);
}

/* A large stream's queue is given back once it is drained. */
static void test_fd_queue_shrinks_after_large_stream(void **unused)
{
	enum {
		NFD = 3000
	};
	cprxfer_channel *a, *b;
	cprxfer_state *st = cprxfer_state_new(), *in = NULL;
	int fd = eventfd(0, EFD_CLOEXEC), i;

	pair(&a, &b);
	for (i = 0; i < NFD; i++) {
		char name[16];

		snprintf(name, sizeof(name), "fd.%d", i);
		assert_int_equal(cprxfer_put_fd(st, name, fd), 0);
	}
	assert_int_equal(cprxfer_save(a, st), 0);
	assert_int_equal(cprxfer_load(b, &in), 0);
	assert_int_equal(cprxfer_state_count(in), NFD);
	assert_true(cx_io_fdq_capacity(&b->io) <= 1024);
	cprxfer_state_free(in);
	cprxfer_state_free(st);
	cprxfer_channel_close(a);
	cprxfer_channel_close(b);
	close(fd);
}

/* An ACK frame of status and reason, as the wire carries it. */
static size_t ack_frame(uint8_t *p, int32_t status, const char *reason)
{
	size_t rlen = reason ? strlen(reason) : 0;

	cx_frame_put(p, CX_F_ACK, 0, CX_ACK_LEN + rlen);
	cx_put32(p + CX_HDR, (uint32_t)status);
	cx_put16(p + CX_HDR + 4, CX_ACK_USER);
	cx_put16(p + CX_HDR + 6, (uint16_t)rlen);
	memcpy(p + CX_HDR + CX_ACK_LEN, reason, rlen);
	return CX_HDR + CX_ACK_LEN + rlen;
}

/*
 * Item 11: an ack that arrives in two pieces, split at every byte: the
 * first wait (timeout 0) times out and keeps the piece, the next one
 * completes it. 077bcd1 lost the piece and read garbage next.
 */
static void test_wait_ack_partial_frame_completes_next_call(void **unused)
{
	uint8_t p[128];
	size_t len, k;

	for (int refuse = 0; refuse < 2; refuse++) {
		len = ack_frame(p, refuse ? -EBUSY : 0,
				refuse ? "device busy" : NULL);
		for (k = 1; k < len; k++) {
			cprxfer_channel *a, *b;
			int64_t t0;

			pair(&a, &b);
			assert_int_equal(write(a->io.fd, p, k), (ssize_t)k);
			t0 = tu_now_ms();
			assert_int_equal(cprxfer_wait_ack(b, 0), -EAGAIN);
			assert_true(tu_now_ms() - t0 < 100);
			/* Twice: a step that finds nothing new loses nothing. */
			assert_int_equal(cprxfer_wait_ack(b, 0), -EAGAIN);
			assert_int_equal(write(a->io.fd, p + k, len - k),
					 (ssize_t)(len - k));
			assert_int_equal(cprxfer_wait_ack(b, 0),
					 refuse ? -EBUSY : 0);
			if (refuse)
				assert_non_null(strstr(cprxfer_errmsg(),
						       "device busy"));
			cprxfer_channel_close(a);
			cprxfer_channel_close(b);
		}
	}
}

/* The incoming side of the handshake below: its verdict is its exit. */
static int open_child(void *arg)
{
	cprxfer_channel *ch;
	int rc = cprxfer_channel_open(*(int *)arg, &ch);

	if (rc == 0)
		cprxfer_channel_close(ch);
	return rc == -EPROTONOSUPPORT ? 0 : 1;
}

/*
 * The decision is a required feature (bit 16): a library without it,
 * played here by hand, finds the bit in our HELLO and refuses, and our
 * side fails with its -EPROTONOSUPPORT instead of handing off without
 * a decision.
 */
static void test_hello_requires_decide_feature(void **unused)
{
	static const char why[] =
		"peer requires features 0x00010000 that this library lacks";
	uint8_t h[CX_HDR + CX_HELLO_LEN + CX_TAG_MAX], v[CX_HDR + CX_ACK_LEN];
	struct cx_frame f;
	int sv[2];
	pid_t pid;

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	pid = tu_fork(open_child, &sv[1]);
	close(sv[1]);
	/* Our HELLO: no features, no tag. */
	cx_frame_put(h, CX_F_HELLO, 0, CX_HELLO_LEN);
	memset(h + CX_HDR, 0, CX_HELLO_LEN);
	assert_int_equal(write(sv[0], h, CX_HDR + CX_HELLO_LEN),
			 CX_HDR + CX_HELLO_LEN);
	/* Theirs: bit 16 offered, and required by its position. */
	assert_int_equal(read(sv[0], h, CX_HDR + CX_HELLO_LEN),
			 CX_HDR + CX_HELLO_LEN);
	assert_int_equal(cx_frame_parse(h, &f), 0);
	assert_int_equal(f.type, CX_F_HELLO);
	assert_int_equal(cx_get32(h + CX_HDR) & 0xffff0000u, CX_FEAT_DECIDE);
	assert_int_equal(CX_FEAT_DECIDE, 1u << 16);
	/* The old library's verdict. */
	cx_frame_put(v, CX_F_ACK, 0, CX_ACK_LEN + sizeof(why) - 1);
	cx_put32(v + CX_HDR, (uint32_t)-EPROTONOSUPPORT);
	cx_put16(v + CX_HDR + 4, CX_ACK_HELLO);
	cx_put16(v + CX_HDR + 6, sizeof(why) - 1);
	assert_int_equal(write(sv[0], v, sizeof(v)), (ssize_t)sizeof(v));
	assert_int_equal(write(sv[0], why, sizeof(why) - 1),
			 (ssize_t)sizeof(why) - 1);
	assert_int_equal(tu_wait(pid), 0);
	close(sv[0]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_passpidfd_recvmsg_leaks_no_fd),
		tu_test(test_unexpected_fds_on_ack_are_closed),
		tu_test(test_fd_queue_stays_bounded),
		tu_test(test_fd_queue_shrinks_after_large_stream),
		tu_test(test_wait_ack_partial_frame_completes_next_call),
		tu_test(test_hello_requires_decide_feature),
	};

	tu_raise_nofile();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
