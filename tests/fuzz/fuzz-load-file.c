/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: the state-file loader, cprxfer_load_file().
 *
 * The input is the file's content. It is written to a memfd and loaded
 * through its /proc/self/fd path, so no file system is touched.
 * Invariants: no crash, no sanitizer report, no fd left open, and a
 * successful load returns a readable state.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "fuzz.h"

#define MAX_INPUT (1024 * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	cprxfer_state *st = NULL;
	int before = fz_count_fds(), fd, rc;
	char path[64];
	size_t off = 0;

	if (size > MAX_INPUT)
		return 0;
	fd = memfd_create("fuzz-state", MFD_CLOEXEC);
	if (fd < 0)
		abort();
	while (off < size) {
		ssize_t r = write(fd, data + off, size - off);

		if (r <= 0)
			abort();
		off += (size_t)r;
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	rc = cprxfer_load_file(path, &st);
	fz_report("load_file", rc);
	if (rc == 0) {
		fz_check_state(st);
		cprxfer_state_free(st);
	}
	close(fd);
	fz_check_fds(before, "fuzz-load-file");
	return 0;
}
