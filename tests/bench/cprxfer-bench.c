/* SPDX-License-Identifier: MIT */
/*
 * cprxfer-bench: the handoff measured side by side with its raw-syscall
 * baselines, in one run, on one machine.
 *
 *   cprxfer-bench [--json FILE] [--runs N] [--quick] [--only GROUP]
 *
 * Groups: fd (fd passing), blob (throughput), blackout (handoff pause vs
 * RAM size, via demo-vmm), copy (copy-migration baseline), warmup (guest
 * touching its RAM after the handoff, via demo-vmm). Each figure is the
 * median of --runs runs (default 5; 8 handoffs for the blackout; at
 * most 3 for the blob and the warm-up, 3, 2 and 1 for the copy of 256
 * MiB, 1 GiB and 4 GiB, whose passes take seconds), with min and max.
 * The wall time of each group and of the whole run is printed last.
 * Ratios matter more than absolute figures: the machines are noisy.
 * Limit: 3 minutes; see docs/performance.md.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "bench.h"

int bench_runs = 5;
int bench_quick;

double bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

struct stat3 bench_stat(double *v, int n)
{
	struct stat3 s;

	qsort(v, (size_t)n, sizeof(*v), cmp_double);
	s.min = v[0];
	s.max = v[n - 1];
	s.med = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
	return s;
}

void bench_fail(const char *what, int rc)
{
	fprintf(stderr, "cprxfer-bench: %s: %s (%s)\n", what, strerror(-rc),
		rc < 0 ? cprxfer_errmsg() : "");
	exit(1);
}

/* ---- 1. fd passing -------------------------------------------------- */

static void ack_byte(int s)
{
	char c = 'k';

	if (write(s, &c, 1) != 1)
		_exit(3);
}

static void wait_byte(int s)
{
	char c;

	if (read(s, &c, 1) != 1)
		bench_fail("ack", -EPIPE);
}

/* Raw baseline: sendmsg() of batches of 253 fds with 1 byte each. */
static void raw_send_fds(int s, const int *fds, int n)
{
	union {
		char buf[CMSG_SPACE(253 * sizeof(int))];
		struct cmsghdr a;
	} u;
	int i;

	for (i = 0; i < n; i += 253) {
		int k = n - i < 253 ? n - i : 253;
		char b = 'f';
		struct iovec iov = { &b, 1 };
		struct msghdr m = { .msg_iov = &iov,
				    .msg_iovlen = 1,
				    .msg_control = u.buf,
				    .msg_controllen =
					    CMSG_SPACE(k * sizeof(int)) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);

		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(k * sizeof(int));
		memcpy(CMSG_DATA(c), fds + i, k * sizeof(int));
		if (sendmsg(s, &m, 0) != 1)
			bench_fail("sendmsg", -errno);
	}
}

static void raw_recv_fds(int s, int *fds, int n)
{
	union {
		char buf[CMSG_SPACE(253 * sizeof(int))];
		struct cmsghdr a;
	} u;
	int got = 0;

	while (got < n) {
		char b;
		struct iovec iov = { &b, 1 };
		struct msghdr m = { .msg_iov = &iov,
				    .msg_iovlen = 1,
				    .msg_control = u.buf,
				    .msg_controllen = sizeof(u.buf) };
		struct cmsghdr *c;

		if (recvmsg(s, &m, MSG_CMSG_CLOEXEC) != 1)
			_exit(4);
		for (c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
			int k = (int)((c->cmsg_len - CMSG_LEN(0)) /
				      sizeof(int));

			memcpy(fds + got, CMSG_DATA(c), k * sizeof(int));
			got += k;
		}
	}
}

/*
 * Raw and library rounds alternate, so that both see the same load;
 * each has its own socketpair (s: raw, c: the channel).
 */
static void fd_child(int s, int c, int n, int runs)
{
	int *fds = malloc(sizeof(int) * (size_t)n), r, i;
	cprxfer_channel *ch;

	if (cprxfer_channel_open(c, &ch) < 0)
		_exit(5);
	for (r = 0; r < runs; r++) {
		cprxfer_state *st;

		raw_recv_fds(s, fds, n);
		ack_byte(s);
		for (i = 0; i < n; i++)
			close(fds[i]);
		if (cprxfer_load(ch, &st) < 0 || cprxfer_ack(ch, 0, NULL) < 0)
			_exit(6);
		cprxfer_state_free(st);
	}
	cprxfer_channel_close(ch);
	_exit(0);
}

/*
 * n fds, one record each or (FD_ARRAY) one array record; borrowed
 * (cprxfer_put_fd/_fds: every save checks each fd's identity) or, with
 * FD_ADOPT, owned by the state (cprxfer_adopt_fd/_fds: no check).
 */
static void bench_fd(struct report *rep, int n, int how)
{
	int sv[2], cv[2], r, i, *fds = malloc(sizeof(int) * (size_t)n);
	int array = how & FD_ARRAY, adopt = how & FD_ADOPT;
	/* A round of up to 253 fds lasts ~0.3 ms and the load moves it
	 * by as much: 3x the runs (15 by default) for a median that holds;
	 * rounds of 10,000 fds and more last 10-250 ms. */
	int runs = n > 253		 ? bench_runs
		   : bench_runs * 3 > 64 ? 64
					 : bench_runs * 3;
	double raw[64], lib[64];
	cprxfer_state *st = cprxfer_state_new();
	cprxfer_channel *ch;
	pid_t pid;

	for (i = 0; i < n; i++) {
		char name[32];
		int rc = 0;

		fds[i] = eventfd(0, EFD_CLOEXEC);
		if (fds[i] < 0)
			bench_fail("eventfd", -errno);
		snprintf(name, sizeof(name), "fd.%d", i);
		if (!array && adopt)
			rc = cprxfer_adopt_fd(st, name, fds[i]);
		else if (!array)
			rc = cprxfer_put_fd(st, name, fds[i]);
		if (rc < 0)
			bench_fail("put_fd", rc);
	}
	if (array) {
		r = adopt ? cprxfer_adopt_fds(st, "fds", fds, (size_t)n)
			  : cprxfer_put_fds(st, "fds", fds, (size_t)n);
		if (r < 0)
			bench_fail("put_fds", r);
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0 ||
	    socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, cv) < 0)
		bench_fail("socketpair", -errno);
	pid = fork();
	if (pid == 0) {
		close(sv[0]);
		close(cv[0]);
		for (i = 0; i < n; i++)
			close(fds[i]);
		fd_child(sv[1], cv[1], n, runs);
	}
	close(sv[1]);
	close(cv[1]);
	r = cprxfer_channel_open(cv[0], &ch);
	if (r < 0)
		bench_fail("channel_open", r);
	for (r = 0; r < runs; r++) {
		double t0 = bench_now_ns();
		int rc;

		raw_send_fds(sv[0], fds, n);
		wait_byte(sv[0]);
		raw[r] = (bench_now_ns() - t0) / n;
		t0 = bench_now_ns();
		rc = cprxfer_save(ch, st);
		if (rc == 0)
			rc = cprxfer_wait_ack(ch, 60000);
		if (rc < 0)
			bench_fail("fd save", rc);
		lib[r] = (bench_now_ns() - t0) / n;
	}
	cprxfer_channel_close(ch);
	close(sv[0]);
	waitpid(pid, NULL, 0);
	report_fd(rep, n, how, bench_stat(lib, runs), bench_stat(raw, runs));
	/* Adopted fds are the state's: cprxfer_state_free closes them. */
	for (i = 0; !adopt && i < n; i++)
		close(fds[i]);
	free(fds);
	cprxfer_state_free(st);
}

/* ---- 2. blob throughput --------------------------------------------- */

#define BLOB (256ul << 20)

static cprxfer_opts *big_opts(void)
{
	cprxfer_opts *o = cprxfer_opts_new();

	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_RECORD_BYTES, 1ull << 33);
	cprxfer_opts_set_limit(o, CPRXFER_LIMIT_STREAM_BYTES, 1ull << 33);
	cprxfer_opts_set_timeout(o, 120000);
	return o;
}

/*
 * Raw and library rounds alternate on one socket, as the fd rounds do:
 * the raw bytes, one ack byte, then a state stream and its ack. Each
 * side is idle when the other switches, so neither reads the other's.
 */
static void blob_child(int s, int runs)
{
	cprxfer_opts *o = big_opts();
	cprxfer_channel *ch;
	int r;

	if (cprxfer_channel_open_opts(s, o, &ch) < 0)
		_exit(8);
	for (r = 0; r < runs; r++) {
		/* A fresh buffer each time, as the library's loader has. */
		char *b = malloc(BLOB);
		cprxfer_state *st;
		size_t got = 0;

		while (got < BLOB) {
			ssize_t k = read(s, b + got, BLOB - got);

			if (k <= 0)
				_exit(7);
			got += (size_t)k;
		}
		ack_byte(s);
		free(b);
		if (cprxfer_load(ch, &st) < 0 || cprxfer_ack(ch, 0, NULL) < 0)
			_exit(9);
		cprxfer_state_free(st);
	}
	cprxfer_channel_close(ch);
	cprxfer_opts_free(o);
	_exit(0);
}

/* 3 rounds at most: each moves 512 MiB, seconds on a loaded host. */
static void bench_blob(struct report *rep)
{
	char *buf = malloc(BLOB);
	double raw[64], lib[64];
	cprxfer_state *st = cprxfer_state_new();
	cprxfer_channel *ch;
	int sv[2], r, runs = bench_runs < 3 ? bench_runs : 3;
	pid_t pid;

	memset(buf, 0x5c, BLOB);
	cprxfer_put_blob(st, "blob", buf, BLOB);
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		bench_fail("socketpair", -errno);
	pid = fork();
	if (pid == 0) {
		close(sv[0]);
		blob_child(sv[1], runs);
	}
	close(sv[1]);
	r = cprxfer_channel_open(sv[0], &ch);
	if (r < 0)
		bench_fail("channel_open", r);
	for (r = 0; r < runs; r++) {
		double t0 = bench_now_ns();
		size_t off = 0;
		int rc;

		while (off < BLOB) {
			ssize_t k = write(sv[0], buf + off, BLOB - off);

			if (k <= 0)
				bench_fail("write", -errno);
			off += (size_t)k;
		}
		wait_byte(sv[0]);
		raw[r] = BLOB / (bench_now_ns() - t0);
		t0 = bench_now_ns();
		rc = cprxfer_save(ch, st);
		if (rc == 0)
			rc = cprxfer_wait_ack(ch, 60000);
		if (rc < 0)
			bench_fail("blob save", rc);
		lib[r] = BLOB / (bench_now_ns() - t0);
	}
	cprxfer_channel_close(ch);
	waitpid(pid, NULL, 0);
	report_blob(rep, bench_stat(lib, runs), bench_stat(raw, runs));
	cprxfer_state_free(st);
	free(buf);
}

/* ---- 4. copy-migration baseline -------------------------------------- */

static void copy_child(int s, size_t size, int runs)
{
	int r;

	for (r = 0; r < runs; r++) {
		char *m = mmap(NULL, size, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		size_t got = 0;

		if (m == MAP_FAILED)
			_exit(10);
		while (got < size) {
			ssize_t k = read(s, m + got, size - got);

			if (k <= 0)
				_exit(11);
			got += (size_t)k;
		}
		ack_byte(s);
		munmap(m, size);
	}
	_exit(0);
}

/*
 * Copy the first mib MiB of ram, runs times. The copy moves every byte
 * and faults in a fresh mapping on the other side: its cost grows with
 * the size (45 s for one 4 GiB copy on this host under load), so the
 * larger sizes get fewer runs (see bench_copies).
 */
static void bench_copy(struct report *rep, const struct cprxfer_ram *ram,
		       size_t mib, int runs)
{
	size_t size = mib << 20;
	int sv[2], r;
	double t[64];
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		bench_fail("socketpair", -errno);
	pid = fork();
	if (pid == 0) {
		close(sv[0]);
		copy_child(sv[1], size, runs);
	}
	close(sv[1]);
	for (r = 0; r < runs; r++) {
		double t0 = bench_now_ns();
		size_t off = 0;

		while (off < size) {
			ssize_t k = write(sv[0], (char *)ram->addr + off,
					  size - off);

			if (k <= 0)
				bench_fail("write", -errno);
			off += (size_t)k;
		}
		wait_byte(sv[0]);
		t[r] = (bench_now_ns() - t0) / 1e6;
	}
	close(sv[0]);
	waitpid(pid, NULL, 0);
	report_copy(rep, mib, bench_stat(t, runs));
}

/* Allocate (and zero) [off, off + len) of the region: it is sent. */
static void populate(const struct cprxfer_ram *ram, size_t off, size_t len)
{
	if (madvise((char *)ram->addr + off, len, MADV_POPULATE_WRITE) < 0)
		memset((char *)ram->addr + off, 0, len);
}

/* Past this, the 4 GiB copy is estimated from the 1 GiB one (x4). */
#define COPY_BUDGET_MS 5000.0

/*
 * 256 MiB, 1 GiB and (not --quick) 4 GiB out of one region. Runs: up to
 * 3, 2 and 1. The 4 GiB copy is there for copy(4 GiB)/blackout, whose
 * target (>= 1000) it passes by 5x or more; one run of it costs as much
 * as all the others together, and under load (10 runnable tasks on the
 * 2 cores) it took 45-100 s. So it runs only when the 1 GiB copy took
 * less than COPY_BUDGET_MS; otherwise its row is 4 x the 1 GiB figure,
 * marked estimated (the copy grows at least linearly with the size, so
 * the estimate errs on the side of a smaller ratio).
 */
static void bench_copies(struct report *rep)
{
	static const size_t mib[] = { 256, 1024, 4096 };
	static const int most[] = { 3, 2, 1 };
	int n = bench_quick ? 2 : 3, i, r;
	struct cprxfer_ram ram;

	r = cprxfer_ram_create("bench-copy", mib[n - 1] << 20, 0, &ram);
	if (r < 0)
		bench_fail("ram_create", r);
	populate(&ram, 0, mib[1] << 20);
	for (i = 0; i < n; i++) {
		int runs = bench_runs < most[i] ? bench_runs : most[i];

		if (i == 2 &&
		    rep->copy[rep->ncopy - 1].ms.med > COPY_BUDGET_MS) {
			struct stat3 est = rep->copy[rep->ncopy - 1].ms;

			est.med *= 4;
			est.min *= 4;
			est.max *= 4;
			report_copy(rep, mib[i], est);
			rep->copy[rep->ncopy - 1].estimated = 1;
			break;
		}
		if (i == 2)
			populate(&ram, mib[1] << 20, (mib[2] - mib[1]) << 20);
		bench_copy(rep, &ram, mib[i], runs);
	}
	cprxfer_ram_release(&ram);
}

/* ---- main ------------------------------------------------------------ */

static int want(const char *only, const char *g)
{
	return !only || !strcmp(only, g);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "json", required_argument, NULL, 'j' },
		{ "runs", required_argument, NULL, 'r' },
		{ "quick", no_argument, NULL, 'q' },
		{ "only", required_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 }
	};
	const char *json = NULL, *only = NULL;
	struct report rep = { 0 };
	double t0 = bench_now_ns(), t;
	struct rlimit rl;
	int c, maxfds;

	while ((c = getopt_long(argc, argv, "j:r:qo:h", lo, NULL)) != -1) {
		switch (c) {
		case 'j':
			json = optarg;
			break;
		case 'r':
			bench_runs = atoi(optarg);
			if (bench_runs < 1 || bench_runs > 64)
				bench_runs = 5;
			break;
		case 'q':
			bench_quick = 1;
			bench_runs = 3;
			break;
		case 'o':
			only = optarg;
			break;
		default:
			fprintf(stderr,
				"usage: %s [--json FILE] [--runs N] [--quick] [--only fd|blob|blackout|copy|warmup]\n",
				argv[0]);
			return c == 'h' ? 0 : 2;
		}
	}
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = rl.rlim_max;
	setrlimit(RLIMIT_NOFILE, &rl);
	/* Both ends hold every fd; keep room for the process's own. */
	maxfds = (int)(rl.rlim_cur > 1u << 20 ? 1u << 20 : rl.rlim_cur) - 64;

	if (want(only, "fd")) {
		int sizes[] = { 253, 10000 < maxfds ? 10000 : maxfds, maxfds };
		int k, how;

		t = bench_now_ns();
		bench_fd(&rep, 1, 0); /* the small round: save+ack of one fd */
		for (k = 0; k < 3; k++)
			for (how = 0; how < 4; how++)
				bench_fd(&rep, sizes[k], how);
		report_group(&rep, "fd", (bench_now_ns() - t) / 1e9);
	}
	if (want(only, "blob")) {
		t = bench_now_ns();
		bench_blob(&rep);
		report_group(&rep, "blob", (bench_now_ns() - t) / 1e9);
	}
	if (want(only, "blackout")) {
		t = bench_now_ns();
		bench_blackout(&rep);
		report_group(&rep, "blackout", (bench_now_ns() - t) / 1e9);
	}
	if (want(only, "copy")) {
		t = bench_now_ns();
		bench_copies(&rep);
		report_group(&rep, "copy", (bench_now_ns() - t) / 1e9);
	}
	if (want(only, "warmup")) {
		t = bench_now_ns();
		bench_warmup(&rep);
		report_group(&rep, "warmup", (bench_now_ns() - t) / 1e9);
	}
	rep.total_s = (bench_now_ns() - t0) / 1e9;
	report_print(&rep, stdout);
	if (json && report_json(&rep, json) < 0) {
		fprintf(stderr, "cprxfer-bench: cannot write %s\n", json);
		return 1;
	}
	return 0;
}
