/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: the stream walker behind cprxfer-inspect (lib/walk.c),
 * which reads hostile streams without adopting their fds.
 *
 * The first input byte chooses the source: even, the rest is a file's
 * content (a state file, an exec-mode memfd with inline fd numbers, or a
 * capture), walked from a memfd; odd, the rest is cut into segments
 * (fuzz.h) sent through a real socketpair with eventfds and memfds
 * attached, walked as a socket stream.
 *
 * Invariants: no crash, no sanitizer report, every fd handed to the
 * callback is open, and no fd is left open afterwards.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "fuzz.h"
#include "io.h"
#include "opts.h"
#include "walk.h"

#define MAX_INPUT (256 * 1024)

static void on_record(void *arg, const struct cx_walk_rec *r)
{
	unsigned *n = arg;

	if (r->fd >= 0 && fcntl(r->fd, F_GETFD) < 0)
		abort();
	if (r->head_len > CX_WALK_HEAD || (r->head_len && !r->head))
		abort();
	(*n)++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cprxfer_opts o;
	unsigned n = 0;
	struct cx_walk w = { .o = &o, .on_record = on_record, .arg = &n };
	struct cx_io io;
	int before = fz_count_fds(), sv[2] = { -1, -1 }, fd;

	if (size < 1 || size > MAX_INPUT)
		return 0;
	cx_opts_default(&o);
	o.max_record = 1 << 20;
	o.max_stream = 4 << 20;
	o.max_records = 4096;
	o.max_fds = 64;
	w.sock = data[0] & 1;
	if (w.sock) {
		fz_socketpair(sv);
		fz_send_segments(sv[1], data + 1, size - 1);
		fd = sv[0];
	} else {
		fd = memfd_create("fuzz-walk", MFD_CLOEXEC);
		if (fd < 0 ||
		    write(fd, data + 1, size - 1) != (ssize_t)size - 1 ||
		    lseek(fd, 0, SEEK_SET) != 0)
			abort();
	}
	if (cx_io_init(&io, fd, w.sock) < 0)
		abort();
	cx_io_deadline(&io, 2000);
	cx_walk(&io, &w);
	if (n != w.records && w.err == 0)
		abort();
	cx_io_drop_fds(&io);
	cx_io_fini(&io);
	close(fd);
	if (sv[1] >= 0)
		close(sv[1]);
	fz_report("walk", w.err);
	fz_check_fds(before, "fuzz-walk");
	return 0;
}
