/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: the state-stream decoder, the library's trust boundary.
 *
 * The input is cut into segments (fuzz.h) that go through a real
 * AF_UNIX socketpair, each its own sendmsg() with as many eventfds or
 * memfds attached as the fuzzer chose, so the decoder sees every
 * chunking and every placement of SCM_RIGHTS. The receiving end is a
 * channel made without a handshake (cx_channel_new) and read with
 * cprxfer_load(), up to three rounds while loads succeed.
 *
 * The same segments then go through a second socketpair to
 * cprxfer_load_step(), the event-loop load, which buffers the stream
 * frame by frame before decoding it: it must come to the same result as
 * cprxfer_load() in every round (the same errno, or a state).
 *
 * Invariants checked on every input: no crash, no sanitizer report, no
 * fd left open after the channel and the state are closed, what a
 * successful load returns is readable with every fd open and
 * close-on-exec, and both loads agree.
 */
#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "channel.h"
#include "fuzz.h"
#include "opts.h"

#define MAX_INPUT (256 * 1024)

/* A load through steps: poll the channel's fd between them. */
static int load_by_steps(cprxfer_channel *ch, cprxfer_state **st)
{
	struct pollfd p = { .fd = cprxfer_channel_fd(ch), .events = POLLIN };
	int rc;

	if (p.fd < 0)
		abort();
	while ((rc = cprxfer_load_step(ch, st)) == -EAGAIN)
		if (poll(&p, 1, 5000) != 1) /* the sender has shut down */
			abort();
	return rc;
}

/* Up to three loads on one channel, blocking or by steps: their results. */
static int load_rounds(const struct cprxfer_opts *o, const uint8_t *data,
		       size_t size, bool steps, int rcs[3])
{
	cprxfer_channel *ch;
	int sv[2], round, n = 0;

	fz_socketpair(sv);
	fz_send_segments(sv[1], data, size);
	if (cx_channel_new(sv[0], o, &ch) < 0)
		abort();
	for (round = 0; round < 3; round++) {
		cprxfer_state *st = NULL;
		int rc = steps ? load_by_steps(ch, &st) : cprxfer_load(ch, &st);

		fz_report(steps ? "load_step" : "load", rc);
		rcs[n++] = rc;
		if (rc < 0)
			break;
		fz_check_state(st);
		cprxfer_state_free(st);
	}
	cprxfer_channel_close(ch);
	close(sv[1]);
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cprxfer_opts o;
	int before = fz_count_fds(), a[3], b[3], na, nb, i;

	if (size > MAX_INPUT)
		return 0;
	cx_opts_default(&o);
	/* Small limits keep every input cheap; the checks are the same. */
	o.timeout_ms = 2000;
	o.max_record = 1 << 20;
	o.max_stream = 4 << 20;
	o.max_records = 4096;
	o.max_fds = 64;
	na = load_rounds(&o, data, size, false, a);
	nb = load_rounds(&o, data, size, true, b);
	for (i = 0; i < na || i < nb; i++)
		if (na != nb || a[i] != b[i]) {
			fprintf(stderr,
				"fuzz-stream: round %d: cprxfer_load %d, cprxfer_load_step %d\n",
				i, i < na ? a[i] : 0, i < nb ? b[i] : 0);
			abort();
		}
	fz_check_fds(before, "fuzz-stream");
	return 0;
}
