/* SPDX-License-Identifier: MIT */
/*
 * An application with its own cx_crc32c (here: one that always says 0),
 * linked against the installed static libcprxfer.a. The library must
 * keep its own checksum: a state file with one byte flipped still fails
 * to load with -EBADMSG. (When the archive exported its internal cx_*
 * symbols, this program linked silently, the library used the
 * application's function, and the corrupted file loaded.)
 *
 * Usage: archive-crc32c DIR (a scratch directory). Exit 0: the promise
 * holds.
 */
#define _GNU_SOURCE /* memmem */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

uint32_t cx_crc32c(uint32_t crc, const void *buf, size_t n);

uint32_t cx_crc32c(uint32_t crc, const void *buf, size_t n)
{
	(void)crc;
	(void)buf;
	(void)n;
	return 0;
}

static const char marker[] = "archive-crc32c-marker";

static int flip_marker(const char *path)
{
	char buf[65536];
	ssize_t n;
	char *p;
	int fd = open(path, O_RDWR | O_CLOEXEC);

	if (fd < 0)
		return -1;
	n = pread(fd, buf, sizeof(buf), 0);
	p = n > 0 ? memmem(buf, (size_t)n, marker, sizeof(marker) - 1) : NULL;
	if (!p || pwrite(fd, "X", 1, p - buf) != 1) {
		close(fd);
		return -1;
	}
	return close(fd);
}

int main(int argc, char **argv)
{
	cprxfer_state *st = cprxfer_state_new(), *in = NULL;
	char path[4096];
	const char *s = NULL;
	int rc;

	if (argc != 2 || !st)
		return 2;
	snprintf(path, sizeof(path), "%s/state", argv[1]);
	if (cx_crc32c(1, "x", 1) != 0)
		return 3; /* the application's own function */
	if (cprxfer_put_str(st, "s", marker) < 0 ||
	    cprxfer_save_file(st, path) < 0) {
		fprintf(stderr, "save: %s\n", cprxfer_errmsg());
		return 4;
	}
	cprxfer_state_free(st);
	rc = cprxfer_load_file(path, &in);
	if (rc < 0 || cprxfer_get_str(in, "s", &s) < 0 || strcmp(s, marker)) {
		fprintf(stderr, "intact file: %d %s\n", rc, cprxfer_errmsg());
		return 5;
	}
	cprxfer_state_free(in);
	in = NULL;
	if (flip_marker(path) < 0) {
		fprintf(stderr, "marker not found in %s\n", path);
		return 6;
	}
	rc = cprxfer_load_file(path, &in);
	if (rc != -EBADMSG) {
		fprintf(stderr,
			"corrupted file: load returned %d (%s), expected -EBADMSG: the library used the application's cx_crc32c\n",
			rc, rc < 0 ? cprxfer_errmsg() : "success");
		cprxfer_state_free(in);
		return 1;
	}
	printf("corrupted file refused: %s\n", cprxfer_errmsg());
	return 0;
}
