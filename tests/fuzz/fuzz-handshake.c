/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: the handshake and everything a channel parses after it.
 *
 * The first input byte picks the role this side plays; the rest is what
 * the peer sent, written raw into the other end of a real socketpair
 * whose writing side is then shut down.
 *
 *  - even: incoming side. cx_handshake() (HELLO, verdict), then
 *    cprxfer_load() twice (a prepare and a final round), acking each.
 *  - odd: outgoing side. cx_handshake(), cprxfer_save() of a small
 *    state (which may meet the peer's refusal mid-stream), then
 *    cprxfer_wait_ack() (the peer's ACK frame).
 *
 * The channel requires the application tag "fuzz/1" when bit 1 of the
 * first byte is set. Invariants: no crash, no sanitizer report, no fd
 * left open.
 */
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "channel.h"
#include "fuzz.h"
#include "opts.h"

#define MAX_INPUT (256 * 1024)

static void incoming(cprxfer_channel *ch)
{
	int round;

	for (round = 0; round < 2; round++) {
		cprxfer_state *st = NULL;
		int rc = cprxfer_load(ch, &st);

		fz_report("load", rc);
		if (rc < 0)
			return;
		fz_check_state(st);
		cprxfer_state_free(st);
		if (cprxfer_ack(ch, 0, NULL) < 0)
			return;
	}
}

static void outgoing(cprxfer_channel *ch)
{
	cprxfer_state *st = cprxfer_state_new();
	int efd = eventfd(0, EFD_CLOEXEC), rc;

	if (!st || efd < 0)
		abort();
	if (cprxfer_put_u64(st, "n", 1) < 0 ||
	    cprxfer_put_fd(st, "ev", efd) < 0)
		abort();
	rc = cprxfer_save(ch, st);
	fz_report("save", rc);
	if (rc == 0)
		fz_report("wait_ack", cprxfer_wait_ack(ch, 100));
	cprxfer_state_free(st);
	close(efd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cprxfer_opts o;
	cprxfer_channel *ch;
	int before = fz_count_fds(), sv[2], rc;
	uint8_t role;

	if (size < 1 || size > MAX_INPUT)
		return 0;
	role = data[0];
	cx_opts_default(&o);
	o.timeout_ms = 2000;
	o.max_record = 1 << 20;
	o.max_stream = 4 << 20;
	o.max_records = 4096;
	o.max_fds = 64;
	if (role & 2)
		cprxfer_opts_set_tag(&o, "fuzz/1");
	fz_socketpair(sv);
	fz_send_raw(sv[1], data + 1, size - 1);
	if (cx_channel_new(sv[0], &o, &ch) < 0)
		abort();
	rc = cx_handshake(ch);
	fz_report("handshake", rc);
	if (rc == 0) {
		if (role & 1)
			outgoing(ch);
		else
			incoming(ch);
	}
	cprxfer_channel_close(ch);
	close(sv[1]);
	fz_check_fds(before, "fuzz-handshake");
	return 0;
}
