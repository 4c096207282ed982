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
 * Invariants checked on every input: no crash, no sanitizer report, no
 * fd left open after the channel and the state are closed, and what a
 * successful load returns is readable with every fd open and
 * close-on-exec.
 */
#include <stdlib.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "channel.h"
#include "fuzz.h"
#include "opts.h"

#define MAX_INPUT (256 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cprxfer_opts o;
	cprxfer_channel *ch;
	int before = fz_count_fds(), sv[2], round;

	if (size > MAX_INPUT)
		return 0;
	cx_opts_default(&o);
	/* Small limits keep every input cheap; the checks are the same. */
	o.timeout_ms = 2000;
	o.max_record = 1 << 20;
	o.max_stream = 4 << 20;
	o.max_records = 4096;
	o.max_fds = 64;
	fz_socketpair(sv);
	fz_send_segments(sv[1], data, size);
	if (cx_channel_new(sv[0], &o, &ch) < 0)
		abort();
	for (round = 0; round < 3; round++) {
		cprxfer_state *st = NULL;
		int rc = cprxfer_load(ch, &st);

		fz_report("load", rc);
		if (rc < 0)
			break;
		fz_check_state(st);
		cprxfer_state_free(st);
	}
	cprxfer_channel_close(ch);
	close(sv[1]);
	fz_check_fds(before, "fuzz-stream");
	return 0;
}
