/* SPDX-License-Identifier: MIT */
/*
 * The second image of test-exec: a different binary that a test process
 * cprxfer_exec()s into. It finds its state with no socket and reports
 * what it saw on the pipe the state names "out".
 *
 *   exec-target check   verify PID, fds, values and 1 GiB of RAM
 *   exec-target bench   report the blackout and the prefault time
 *
 * Exit status 0 when every check held; the report says what failed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "rampat.h"

static int out = -1;

static int report(int code, const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (out >= 0 && n > 0 && write(out, buf, (size_t)n) != n)
		code = 100;
	if (code)
		fprintf(stderr, "exec-target: %s", buf);
	return code;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static bool cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);

	return fl >= 0 && (fl & FD_CLOEXEC);
}

/* Is any fd of this process the state memfd? */
static bool state_memfd_open(void)
{
	char link[300], target[256];
	struct dirent *e;
	bool found = false;
	DIR *d = opendir("/proc/self/fd");

	while (d && (e = readdir(d))) {
		ssize_t n;

		snprintf(link, sizeof(link), "/proc/self/fd/%s", e->d_name);
		n = readlink(link, target, sizeof(target) - 1);
		if (n <= 0)
			continue;
		target[n] = 0;
		found |= strstr(target, "cprxfer-exec-state") != NULL;
	}
	if (d)
		closedir(d);
	return found;
}

static int check(cprxfer_state *st)
{
	uint64_t mine[RP_PFN_SAMPLES], pid, seed;
	struct cprxfer_ram g;
	struct stat s1, s2;
	cprxfer_state *again;
	const void *blob;
	const char *str;
	int64_t neg;
	size_t len;
	int fd2, sock, rc;
	long bad;

	if (cprxfer_get_fd(st, "out", &out) < 0)
		return 2;
	if (getenv("CPRXFER_EXEC_FD"))
		return report(3, "CPRXFER_EXEC_FD still set\n");
	if ((rc = cprxfer_load_exec(&again)) != -ENOENT)
		return report(4, "second load returned %d\n", rc);
	if (state_memfd_open())
		return report(5, "the state memfd is still open\n");
	if (cprxfer_get_u64(st, "pid", &pid) < 0 || pid != (uint64_t)getpid())
		return report(6, "pid %llu, now %d\n", (unsigned long long)pid,
			      getpid());
	if (cprxfer_get_str(st, "hello", &str) < 0 ||
	    strcmp(str, "from the old image"))
		return report(7, "string value lost\n");
	if (cprxfer_get_i64(st, "neg", &neg) < 0 || neg != -42)
		return report(8, "i64 value lost\n");
	/* The same fd named twice: two fds, one open file. */
	if (cprxfer_get_fd(st, "out.again", &fd2) < 0 || fd2 == out ||
	    fstat(out, &s1) < 0 || fstat(fd2, &s2) < 0 ||
	    s1.st_ino != s2.st_ino)
		return report(9, "fd named twice not duplicated\n");
	if (cprxfer_get_fd(st, "sock", &sock) < 0 ||
	    write(sock, "sock-ok", 7) != 7)
		return report(10, "socket fd lost\n");
	if (!cloexec(out) || !cloexec(fd2) || !cloexec(sock))
		return report(11, "close-on-exec not set back\n");
	/* An fd that was not close-on-exec before the exec stays so. */
	if (cprxfer_get_fd(st, "stdin", &fd2) < 0 || fd2 != 0 || cloexec(0))
		return report(11, "stdin's flags changed\n");
	cprxfer_get_fd(st, "out.again", &fd2);

	if (cprxfer_ram_get(st, "ram", CPRXFER_RAM_POPULATE_RESIDENT, &g) < 0)
		return report(12, "ram_get: %s\n", cprxfer_errmsg());
	if (cprxfer_get_u64(st, "seed", &seed) < 0)
		return report(13, "no seed\n");
	bad = rp_check(g.addr, g.size, seed);
	if (bad >= 0)
		return report(14, "page %ld of RAM differs\n", bad);
	if (cprxfer_get_blob(st, "pfns", &blob, &len) < 0 ||
	    len != sizeof(mine) || rp_pagemap(g.addr, g.size, mine) < 0)
		return report(15, "no page frames\n");
	rc = rp_same_frames(blob, mine);
	if (rc > 0)
		return report(16, "RAM was copied: other page frames\n");
	/* Written here, read by the test process through its mapping. */
	((uint64_t *)g.addr)[1] = 0x1d1d1d1d;
	cprxfer_ram_release(&g);
	return report(0, "ok pid=%d frames=%s\n", getpid(),
		      rc == 0 ? "same" : "unreadable");
}

static int bench(cprxfer_state *st, int64_t t_load)
{
	struct cprxfer_ram g;
	int64_t t1, t2;
	uint64_t t0;

	if (cprxfer_get_fd(st, "out", &out) < 0 ||
	    cprxfer_get_u64(st, "t0", &t0) < 0)
		return 2;
	if (cprxfer_ram_get(st, "ram", 0, &g) < 0)
		return report(3, "ram_get: %s\n", cprxfer_errmsg());
	t1 = now_ns();
	if (cprxfer_ram_populate(&g, CPRXFER_RAM_POPULATE_RESIDENT) < 0)
		return report(4, "populate: %s\n", cprxfer_errmsg());
	t2 = now_ns();
	cprxfer_ram_release(&g);
	return report(0, "%lld %lld %lld\n", (long long)(t_load - (int64_t)t0),
		      (long long)(t1 - (int64_t)t0), (long long)(t2 - t1));
}

int main(int argc, char **argv)
{
	int64_t t = now_ns();
	cprxfer_state *st;
	int rc;

	if (argc < 2)
		return 1;
	rc = cprxfer_load_exec(&st);
	if (rc < 0) {
		fprintf(stderr, "exec-target: load: %s\n", cprxfer_errmsg());
		return 1;
	}
	if (!strcmp(argv[1], "check"))
		rc = check(st);
	else if (!strcmp(argv[1], "bench"))
		rc = bench(st, t);
	else
		rc = 1;
	cprxfer_state_free(st);
	return rc;
}
