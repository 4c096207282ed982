/* SPDX-License-Identifier: MIT */
/*
 * Exec in place: a child of the test cprxfer_exec()s into a second
 * binary (exec-target) with 1 GiB of RAM, fds named once and twice, and
 * values, and into this very binary; a failed exec leaves every fd flag
 * as it was; a process not started by cprxfer_exec finds nothing. Also
 * measures the blackout with and without the teardown helper
 * (CX_EXEC_BENCH_MB sets the RAM size, 1024 by default).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"
#include "rampat.h"

#define TARGET CX_TEST_BUILDDIR "/exec-target"

/*
 * Without /proc, the ASan runtime reads no options and its leak check at
 * exit fails: the tests that unmount /proc skip under it.
 */
#ifdef __SANITIZE_ADDRESS__
#define NEED_PROC 1
#else
#define NEED_PROC 0
#endif
#define SEED 0xe7ec

/* The library's test hook: run execve() without the teardown helper. */
#include "exec.h"
#include "wire.h"

extern char **environ;

/* Read fd to EOF into buf (NUL-terminated). */
static void read_all(int fd, char *buf, size_t cap)
{
	size_t n = 0;
	ssize_t r;

	while (n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0)
		n += (size_t)r;
	buf[n] = 0;
}

/* ---- into a second binary, with 1 GiB of RAM ----------------------------- */

struct other {
	int out, sock;
	struct cprxfer_ram ram;
	uint64_t pfns[RP_PFN_SAMPLES];
};

static int exec_other(void *arg)
{
	struct other *o = arg;
	char *argv[] = { "exec-target", "check", NULL };
	cprxfer_state *st = cprxfer_state_new();

	if (!st || cprxfer_put_u64(st, "pid", (uint64_t)getpid()) < 0 ||
	    cprxfer_put_str(st, "hello", "from the old image") < 0 ||
	    cprxfer_put_i64(st, "neg", -42) < 0 ||
	    cprxfer_put_fd(st, "out", o->out) < 0 ||
	    cprxfer_put_fd(st, "out.again", o->out) < 0 ||
	    cprxfer_put_fd(st, "sock", o->sock) < 0 ||
	    /* stdin, as inherited: not close-on-exec, and must stay so */
	    cprxfer_put_fd(st, "stdin", 0) < 0 ||
	    cprxfer_ram_put(st, "ram", &o->ram) < 0 ||
	    cprxfer_put_u64(st, "seed", SEED) < 0 ||
	    cprxfer_put_blob(st, "pfns", o->pfns, sizeof(o->pfns)) < 0)
		return 98;
	cprxfer_exec(st, TARGET, argv, NULL);
	fprintf(stderr, "cprxfer_exec: %s\n", cprxfer_errmsg());
	return 99;
}

static void test_exec_other_binary(void **state)
{
	char report[512], sbuf[16];
	struct other o;
	int p[2], sv[2], pid_seen = 0;
	pid_t pid;

	(void)state;
	assert_int_equal(cprxfer_ram_create("guest", rp_big(),
					    CPRXFER_RAM_POPULATE, &o.ram),
			 0);
	rp_fill(o.ram.addr, rp_big(), SEED);
	assert_true(rp_pagemap(o.ram.addr, rp_big(), o.pfns) >= 0);
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	o.out = p[1];
	o.sock = sv[1];
	pid = tu_fork(exec_other, &o);
	assert_true(pid > 0);
	close(p[1]);
	close(sv[1]);
	read_all(p[0], report, sizeof(report));
	read_all(sv[0], sbuf, sizeof(sbuf));
	printf("# exec-target says: %s", report);
	assert_int_equal(tu_wait(pid), 0);
	/* Same PID across the exec. */
	assert_int_equal(sscanf(report, "ok pid=%d", &pid_seen), 1);
	assert_int_equal(pid_seen, pid);
	assert_string_equal(sbuf, "sock-ok");
	/* The new image's write is in our mapping: the same pages. */
	assert_int_equal(((uint64_t *)o.ram.addr)[1], 0x1d1d1d1d);
	if (geteuid() == 0)
		assert_non_null(strstr(report, "frames=same"));
	close(p[0]);
	close(sv[0]);
	cprxfer_ram_release(&o.ram);
}

/* ---- into this very binary ------------------------------------------------- */

static int self_target(void)
{
	cprxfer_state *st;
	uint64_t pid, v;
	int out;
	const char *foo = getenv("FOO");

	if (cprxfer_load_exec(&st) < 0) {
		fprintf(stderr, "self: %s\n", cprxfer_errmsg());
		return 1;
	}
	if (cprxfer_get_fd(st, "out", &out) < 0 ||
	    cprxfer_get_u64(st, "pid", &pid) < 0 ||
	    cprxfer_get_u64(st, "answer", &v) < 0)
		return 2;
	dprintf(out, "self pid=%d ok=%d env=%s\n", getpid(),
		pid == (uint64_t)getpid() && v == 42 &&
			!getenv("CPRXFER_EXEC_FD") &&
			(fcntl(out, F_GETFD) & FD_CLOEXEC),
		foo ? foo : "-");
	cprxfer_state_free(st);
	return 0;
}

static int exec_self(void *arg)
{
	char *argv[] = { "test-exec", "--self-target", NULL };
	/* A stale variable in the given environment is replaced. */
	char *envp[] = { "FOO=bar", "CPRXFER_EXEC_FD=999", NULL };
	cprxfer_state *st = cprxfer_state_new();
	int out = *(int *)arg;

	if (!st || cprxfer_put_fd(st, "out", out) < 0 ||
	    cprxfer_put_u64(st, "pid", (uint64_t)getpid()) < 0 ||
	    cprxfer_put_u64(st, "answer", 42) < 0)
		return 98;
	cprxfer_exec(st, CX_TEST_BUILDDIR "/test-exec", argv, envp);
	fprintf(stderr, "cprxfer_exec: %s\n", cprxfer_errmsg());
	return 99;
}

static void test_exec_self(void **state)
{
	char report[256], expect[64];
	int p[2];
	pid_t pid;

	(void)state;
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	pid = tu_fork(exec_self, &p[1]);
	assert_true(pid > 0);
	close(p[1]);
	read_all(p[0], report, sizeof(report));
	assert_int_equal(tu_wait(pid), 0);
	snprintf(expect, sizeof(expect), "self pid=%d ok=1 env=bar\n", pid);
	assert_string_equal(report, expect);
	close(p[0]);
}

/* ---- a supervisor that is a subreaper --------------------------------------- */

/* The new image: has it a child of its own? (It must not.) */
static int reaper_target(void)
{
	cprxfer_state *st;
	siginfo_t si;
	int out, kids;

	if (cprxfer_load_exec(&st) < 0 || cprxfer_get_fd(st, "out", &out) < 0)
		return 1;
	memset(&si, 0, sizeof(si));
	kids = waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT | __WALL) ==
		       0 ||
	       errno != ECHILD;
	dprintf(out, "kids=%d\n", kids);
	cprxfer_state_free(st);
	return 0;
}

static int exec_reaper(void *arg)
{
	char *argv[] = { "test-exec", "--reaper-target", NULL };
	cprxfer_state *st = cprxfer_state_new();

	if (!st || cprxfer_put_fd(st, "out", *(int *)arg) < 0)
		return 98;
	cprxfer_exec(st, CX_TEST_BUILDDIR "/test-exec", argv, environ);
	return 99;
}

/*
 * What docs/modes.md ("Who reaps the helper") promises: a supervisor that
 * is a child subreaper gets exactly one extra child per plain
 * cprxfer_exec (the teardown helper, orphaned), which has exited by the
 * time the new image runs on, and the new image gets no child at all.
 */
static void test_exec_under_a_subreaper_leaves_it_one_child_per_exec(
	void **state)
{
	int i, extra = 0;

	(void)state;
	if (getenv("CPRXFER_UNDER_VALGRIND"))
		skip(); /* no helper under valgrind: no extra child */
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
	for (i = 0; i < 3; i++) {
		char report[64];
		int p[2];
		pid_t pid, w;

		assert_int_equal(pipe2(p, O_CLOEXEC), 0);
		pid = tu_fork(exec_reaper, &p[1]);
		close(p[1]);
		read_all(p[0], report, sizeof(report));
		close(p[0]);
		assert_string_equal(report, "kids=0\n");
		assert_int_equal(tu_wait(pid), 0);
		while ((w = waitpid(-1, NULL, 0)) > 0)
			extra++;
	}
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 0), 0);
	printf("# 3 execs under a subreaper: %d extra children reaped by it\n",
	       extra);
	assert_int_equal(extra, 3);
}

/* ---- a failed exec changes nothing ------------------------------------------ */

struct fdsnap {
	int n;
	int fd[64];
	int flags[64];
};

static void snap(struct fdsnap *s)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int dfd = dirfd(d);

	s->n = 0;
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);

		if (e->d_name[0] == '.' || fd == dfd || s->n == 64)
			continue;
		s->fd[s->n] = fd;
		s->flags[s->n++] = fcntl(fd, F_GETFD);
	}
	closedir(d);
}

static void same_snap(const struct fdsnap *a, const struct fdsnap *b)
{
	int i;

	assert_int_equal(a->n, b->n);
	for (i = 0; i < a->n; i++) {
		assert_int_equal(a->fd[i], b->fd[i]);
		assert_int_equal(a->flags[i], b->flags[i]);
	}
}

static void test_exec_fails(void **state)
{
	char *argv[] = { "nothing", NULL };
	struct fdsnap before, after;
	struct cprxfer_ram r;
	cprxfer_state *st;
	int p[2], efd, sv[2], pass;

	(void)state;
	assert_int_equal(pipe2(p, 0), 0); /* no close-on-exec */
	efd = eventfd(0, EFD_CLOEXEC);	  /* close-on-exec */
	assert_true(efd >= 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(fcntl(sv[1], F_SETFD, FD_CLOEXEC), 0);
	assert_int_equal(cprxfer_ram_create("r", 1 << 20, 0, &r), 0);
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_put_fd(st, "p0", p[0]), 0);
	assert_int_equal(cprxfer_put_fd(st, "p1", p[1]), 0);
	assert_int_equal(cprxfer_put_fd(st, "efd", efd), 0);
	assert_int_equal(cprxfer_put_fd(st, "efd.again", efd), 0);
	assert_int_equal(cprxfer_put_fd(st, "s0", sv[0]), 0);
	assert_int_equal(cprxfer_put_fd(st, "s1", sv[1]), 0);
	assert_int_equal(cprxfer_ram_put(st, "ram", &r), 0);
	assert_int_equal(cprxfer_put_u64(st, "v", 7), 0);

	for (pass = 0; pass < 2; pass++) {
		snap(&before);
		assert_int_equal(cx_exec(st, "/nonexistent/cprxfer-target",
					 argv, NULL, NULL, false, pass == 0),
				 -ENOENT);
		assert_non_null(strstr(cprxfer_errmsg(),
				       "/nonexistent/cprxfer-target"));
		snap(&after);
		same_snap(&before, &after);
		assert_null(getenv("CPRXFER_EXEC_FD"));

		/* A directory: -EACCES, the same guarantees. */
		assert_int_equal(
			cx_exec(st, "/", argv, environ, NULL, false, pass == 0),
			-EACCES);
		snap(&after);
		same_snap(&before, &after);
	}

	/* A state naming a closed fd fails before anything changes. */
	assert_int_equal(dup2(p[1], 500), 500);
	assert_int_equal(cprxfer_put_fd(st, "gone", 500), 0);
	close(500);
	snap(&before);
	assert_int_equal(cprxfer_exec(st, TARGET, argv, NULL), -EBADF);
	assert_non_null(strstr(cprxfer_errmsg(), "'gone'"));
	snap(&after);
	same_snap(&before, &after);
	assert_int_equal(cprxfer_exec(NULL, TARGET, argv, NULL), -EINVAL);

	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
	close(p[0]);
	close(p[1]);
	close(efd);
	close(sv[0]);
	close(sv[1]);
}

/*
 * cprxfer_exec collects the fds to keep across execve once each: with
 * 19,000 distinct fds in an array, that costs O(n) user time (was a
 * scan of the fds collected so far for each fd: O(n^2), ~1.8e8 steps
 * here). Exec to a path that does not exist: everything but execve
 * itself runs, and every flag is put back.
 */
static void test_exec_of_19000_fds_collects_them_in_linear_time(void **state)
{
	char *argv[] = { "x", NULL };
	size_t n = 19000, i;
	cprxfer_state *st = cprxfer_state_new();
	int *fds = malloc(n * sizeof(int)), rc;
	struct rusage r0, r1;
	long nofile = tu_raise_nofile();
	double user_ms, sys_ms;

	(void)state;
	if (nofile < (long)n + 200)
		n = (size_t)(nofile - 200);
	for (i = 0; i < n; i++) {
		fds[i] = eventfd(0, EFD_CLOEXEC);
		assert_true(fds[i] >= 0);
	}
	assert_int_equal(cprxfer_adopt_fds(st, "conns", fds, n), 0);
	getrusage(RUSAGE_THREAD, &r0);
	rc = cprxfer_exec(st, "/nonexistent/cprxfer-target", argv, NULL);
	getrusage(RUSAGE_THREAD, &r1);
	assert_int_equal(rc, -ENOENT);
	user_ms = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) * 1e3 +
		  (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) / 1e3;
	sys_ms = (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) * 1e3 +
		 (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) / 1e3;
	print_message(
		"cprxfer_exec of %zu fds (execve failing): user %.0f ms, system %.0f ms\n",
		n, user_ms, sys_ms);
	/* Every fd is back to close-on-exec. */
	for (i = 0; i < n; i++)
		assert_true(fcntl(fds[i], F_GETFD) & FD_CLOEXEC);
	if (!getenv("CPRXFER_UNDER_VALGRIND"))
		assert_true(user_ms < 100);
	cprxfer_state_free(st);
	free(fds);
}

static void test_load_not_exec(void **state)
{
	cprxfer_state *st = NULL;

	(void)state;
	assert_int_equal(cprxfer_load_exec(&st), -ENOENT);
	assert_null(st);
	/* A variable that names no state memfd: refused, fd left alone. */
	setenv("CPRXFER_EXEC_FD", "0", 1);
	assert_int_equal(cprxfer_load_exec(&st), -EBADF);
	assert_null(getenv("CPRXFER_EXEC_FD"));
	assert_true(fcntl(0, F_GETFD) >= 0);
	assert_int_equal(cprxfer_load_exec(&st), -ENOENT);
	setenv("CPRXFER_EXEC_FD", "12x", 1);
	assert_int_equal(cprxfer_load_exec(&st), -EBADMSG);
	assert_int_equal(cprxfer_load_exec(&st), -ENOENT);
	assert_int_equal(cprxfer_load_exec(NULL), -EINVAL);
}

/* ---- a failed load leaves nothing behind -------------------------------- */

/* fds of this process without close-on-exec, apart from 0, 1 and 2. */
static int inheritable_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0, dfd = dirfd(d);

	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);

		if (e->d_name[0] == '.' || fd == dfd || fd <= 2)
			continue;
		if (!(fcntl(fd, F_GETFD) & FD_CLOEXEC))
			n++;
	}
	closedir(d);
	return n;
}

/* As cprxfer_exec leaves it: fds inheritable, the variable set. */
static void as_after_exec(int memfd, const int *fds, int n)
{
	char var[32];
	int i;

	for (i = 0; i < n; i++)
		assert_int_equal(fcntl(fds[i], F_SETFD, 0), 0);
	assert_int_equal(fcntl(memfd, F_SETFD, 0), 0);
	snprintf(var, sizeof(var), "%d", memfd);
	setenv("CPRXFER_EXEC_FD", var, 1);
}

/* Offset of the n-th (0-based) FDS frame of an exec-mode memfd. */
static off_t fds_frame(int fd, int n)
{
	uint8_t h[CX_HDR];
	struct cx_frame f;
	off_t off = 0;

	while (pread(fd, h, CX_HDR, off) == CX_HDR) {
		assert_int_equal(cx_frame_parse(h, &f), 0);
		if (f.type == CX_F_FDS && n-- == 0)
			return off;
		off += CX_HDR + (off_t)f.len;
	}
	fail_msg("no FDS frame %d", n);
	return -1;
}

#define MANY 300

static void test_load_failure_leaves_no_named_fd_open(void **state)
{
	int fds[MANY], p[2], memfd, base, inh, i, rc;
	cprxfer_state *st = cprxfer_state_new(), *got = NULL;
	char name[32];
	uint8_t junk[64] = { 0 };
	off_t off;

	(void)state;
	tu_raise_nofile();
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	for (i = 0; i < MANY; i++) {
		fds[i] = fcntl(p[1], F_DUPFD_CLOEXEC, 100);
		assert_true(fds[i] >= 0);
		snprintf(name, sizeof(name), "fd%d", i);
		assert_int_equal(cprxfer_put_fd(st, name, fds[i]), 0);
	}
	base = tu_count_fds();
	inh = inheritable_fds(); /* what the test runner passed us */

	/* Bad variable, and an fd that is not open: nothing to adopt. */
	setenv("CPRXFER_EXEC_FD", "12x", 1);
	assert_int_equal(cprxfer_load_exec(&got), -EBADMSG);
	setenv("CPRXFER_EXEC_FD", "9999", 1);
	assert_int_equal(cprxfer_load_exec(&got), -EBADF);
	assert_non_null(strstr(cprxfer_errmsg(), "not open"));
	/* Not a memfd (a pipe): refused, and left alone. */
	snprintf(name, sizeof(name), "%d", p[0]);
	setenv("CPRXFER_EXEC_FD", name, 1);
	assert_int_equal(cprxfer_load_exec(&got), -EBADF);
	assert_non_null(strstr(cprxfer_errmsg(), "not a memfd"));
	assert_true(fcntl(p[0], F_GETFD) & FD_CLOEXEC);
	assert_int_equal(tu_count_fds(), base);

	/* Unsealed: refused; it and all it names are close-on-exec. */
	assert_int_equal(cx_exec_encode(st, "", false, &memfd), 0);
	as_after_exec(memfd, fds, MANY);
	assert_int_equal(inheritable_fds(), inh + MANY + 1);
	assert_int_equal(cprxfer_load_exec(&got), -EPERM);
	assert_non_null(strstr(cprxfer_errmsg(), "seals"));
	assert_int_equal(inheritable_fds(), inh);
	close(memfd);

	/* Sealed but no stream magic. */
	memfd = memfd_create("cprxfer-exec-state", MFD_ALLOW_SEALING);
	assert_int_equal(write(memfd, junk, sizeof(junk)), sizeof(junk));
	assert_int_equal(fcntl(memfd, F_ADD_SEALS, CX_EXEC_SEALS), 0);
	as_after_exec(memfd, fds, 0);
	assert_int_equal(cprxfer_load_exec(&got), -EBADMSG);
	assert_int_equal(inheritable_fds(), inh);
	close(memfd);
	assert_int_equal(tu_count_fds(), base);

	/* Another application's state: refused, every fd closed. */
	assert_int_equal(cx_exec_encode(st, "other/1", true, &memfd), 0);
	as_after_exec(memfd, fds, MANY);
	{
		cprxfer_opts *o = cprxfer_opts_new();

		assert_int_equal(cprxfer_opts_set_tag(o, "mine/1"), 0);
		assert_int_equal(cprxfer_load_exec_opts(o, &got), -EBADE);
		cprxfer_opts_free(o);
	}
	assert_non_null(strstr(cprxfer_errmsg(), "'other/1'"));
	assert_non_null(strstr(cprxfer_errmsg(), "'mine/1'"));
	assert_int_equal(inheritable_fds(), inh);
	assert_int_equal(tu_count_fds(), base - MANY);
	for (i = 0; i < MANY; i++)
		assert_int_equal(fcntl(p[1], F_DUPFD_CLOEXEC, fds[i]), fds[i]);

	/* A corrupt second batch of 300 fds: the decoder stops after the
	 * first 253, the other 47 are closed all the same. */
	assert_int_equal(cx_exec_encode(st, "", false, &memfd), 0);
	off = fds_frame(memfd, 1);
	junk[0] = 0x77; /* the batch's first index */
	assert_int_equal(pwrite(memfd, junk, 1, off + CX_HDR + 4), 1);
	assert_int_equal(fcntl(memfd, F_ADD_SEALS, CX_EXEC_SEALS), 0);
	as_after_exec(memfd, fds, MANY);
	rc = cprxfer_load_exec(&got);
	assert_int_equal(rc, -EBADMSG);
	assert_non_null(strstr(cprxfer_errmsg(), "fd batch"));
	assert_null(got);
	assert_int_equal(inheritable_fds(), inh);
	for (i = 0; i < MANY; i++)
		assert_true(fcntl(fds[i], F_GETFD) < 0);
	printf("# corrupt second batch: %d of %d named fds left open (077bcd1: 47)\n",
	       tu_count_fds() - (base - MANY), MANY);
	assert_int_equal(tu_count_fds(), base - MANY);
	assert_int_equal(cprxfer_load_exec(&got), -ENOENT);

	cprxfer_state_free(st);
	close(p[0]);
	close(p[1]);
}

/* A plain cprxfer_exec has no tag: a loader with one takes its state. */
static void test_plain_exec_state_loads_under_any_tag(void **state)
{
	cprxfer_state *st = cprxfer_state_new(), *got = NULL;
	cprxfer_opts *o = cprxfer_opts_new();
	uint64_t v = 0;
	int memfd;

	(void)state;
	assert_int_equal(cprxfer_put_u64(st, "v", 7), 0);
	assert_int_equal(cx_exec_encode(st, NULL, true, &memfd), 0);
	as_after_exec(memfd, NULL, 0);
	assert_int_equal(cprxfer_opts_set_tag(o, "demo-vmm/1"), 0);
	assert_int_equal(cprxfer_load_exec_opts(o, &got), 0);
	assert_int_equal(cprxfer_get_u64(got, "v", &v), 0);
	assert_int_equal(v, 7);
	/* Nothing waits for a confirmation. */
	assert_int_equal(cprxfer_exec_commit(), 0);
	assert_true(fcntl(memfd, F_GETFD) < 0);
	cprxfer_state_free(got);
	cprxfer_state_free(st);
	cprxfer_opts_free(o);
}

/* ---- a loader without /proc ------------------------------------------------ */

static int exec_self(void *arg);

static int exec_self_noproc(void *arg)
{
	if (unshare(CLONE_NEWNS) < 0 ||
	    mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    umount2("/proc", MNT_DETACH) < 0)
		return 97;
	if (access("/proc/self/fd", F_OK) == 0)
		return 96;
	return exec_self(arg);
}

static void test_load_without_proc_finds_the_state(void **state)
{
	char report[256], expect[64];
	int p[2];
	pid_t pid;

	(void)state;
	if (geteuid() != 0 || NEED_PROC)
		skip();
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	pid = tu_fork(exec_self_noproc, &p[1]);
	assert_true(pid > 0);
	close(p[1]);
	read_all(p[0], report, sizeof(report));
	assert_int_equal(tu_wait(pid), 0);
	snprintf(expect, sizeof(expect), "self pid=%d ok=1 env=bar\n", pid);
	assert_string_equal(report, expect);
	close(p[0]);
}

/* ---- the helper never runs the application's code --------------------------- */

struct storm {
	int foreign, total, sigchld, stop, success_phase;
};

static struct storm *sm;
static pid_t me; /* each process sets its own; helpers share it */
static sigset_t storm_unblocked;

/* fork() with the storm held off until the child knows its pid. */
static pid_t storm_fork(int (*fn)(void *), void *arg)
{
	sigset_t all;
	pid_t pid;

	sigfillset(&all);
	sigprocmask(SIG_SETMASK, &all, &storm_unblocked);
	pid = tu_fork(fn, arg);
	sigprocmask(SIG_SETMASK, &storm_unblocked, NULL);
	return pid;
}

static void on_storm(int sig)
{
	(void)sig;
	__atomic_add_fetch(&sm->total, 1, __ATOMIC_RELAXED);
	if ((pid_t)syscall(SYS_getpid) != me)
		__atomic_add_fetch(&sm->foreign, 1, __ATOMIC_RELAXED);
}

static void on_chld(int sig)
{
	(void)sig;
	__atomic_add_fetch(&sm->sigchld, 1, __ATOMIC_RELAXED);
}

static int storm_main(void *arg)
{
	pid_t group = *(pid_t *)arg;

	signal(SIGUSR1, SIG_IGN);
	signal(SIGWINCH, SIG_IGN);
	sigprocmask(SIG_SETMASK, &storm_unblocked, NULL);
	while (!__atomic_load_n(&sm->stop, __ATOMIC_RELAXED)) {
		/* SIGWINCH's default is to ignore: new images survive it. */
		if (!__atomic_load_n(&sm->success_phase, __ATOMIC_RELAXED))
			kill(-group, SIGUSR1);
		kill(-group, SIGWINCH);
	}
	return 0;
}

static int storm_exec_ok(void *arg)
{
	char *argv[] = { "test-exec", "--storm-target", NULL };
	cprxfer_state *st = cprxfer_state_new();

	(void)arg;
	me = getpid();
	sigprocmask(SIG_SETMASK, &storm_unblocked, NULL);
	if (!st || cprxfer_put_u64(st, "pid", (uint64_t)getpid()) < 0)
		return 98;
	cprxfer_exec(st, CX_TEST_BUILDDIR "/test-exec", argv, NULL);
	return 99;
}

static int storm_target(void)
{
	cprxfer_state *st;

	if (cprxfer_load_exec(&st) < 0 || cprxfer_exec_commit() != 0)
		return 1;
	cprxfer_state_free(st);
	return 0;
}

/* The caller, in its own process group, under a storm of signals. */
static int storm_caller(void *arg)
{
	char *argv[] = { "nothing", NULL };
	struct sigaction sa = { .sa_handler = on_storm,
				.sa_flags = SA_RESTART };
	struct sigaction sc = { .sa_handler = on_chld, .sa_flags = SA_RESTART };
	cprxfer_state *st = cprxfer_state_new();
	int i, wst, *bad = arg, p[2], chld;
	pid_t group, storm, d;

	setpgid(0, 0);
	group = me = getpid();
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGWINCH, &sa, NULL);
	sigaction(SIGCHLD, &sc, NULL);
	if (pipe2(p, O_CLOEXEC) < 0 || cprxfer_put_fd(st, "p", p[1]) < 0)
		return 90;
	storm = storm_fork(storm_main, &group);
	if (storm < 0)
		return 91;
	/* Failed execs: no handler elsewhere, no SIGCHLD, no child. */
	chld = sm->sigchld;
	for (i = 0; i < 300; i++) {
		errno = 0;
		if (cprxfer_exec(st, "/nonexistent/cprxfer", argv, NULL) !=
		    -ENOENT)
			return 92;
		if (waitpid(-1, &wst, WNOHANG) != 0)
			bad[0]++; /* something to reap besides the storm */
	}
	if (sm->sigchld != chld)
		bad[1] = sm->sigchld - chld;
	/* Successful ones, under the storm too. */
	__atomic_store_n(&sm->success_phase, 1, __ATOMIC_RELAXED);
	for (i = 0; i < 30; i++) {
		d = storm_fork(storm_exec_ok, NULL);
		if (tu_wait(d) != 0)
			bad[2]++;
	}
	__atomic_store_n(&sm->stop, 1, __ATOMIC_RELAXED);
	tu_wait(storm);
	cprxfer_state_free(st);
	close(p[0]);
	close(p[1]);
	return 0;
}

static void test_exec_helper_runs_no_handler_in_another_pid(void **state)
{
	int *bad;
	pid_t pid;

	(void)state;
	sm = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
		  MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(sm != MAP_FAILED);
	bad = (int *)(sm + 1);
	pid = tu_fork(storm_caller, bad);
	assert_int_equal(tu_wait(pid), 0);
	printf("# signal storm: %d handler runs, %d in another pid (077bcd1: 135); failed execs: %d SIGCHLD, %d reapable children; %d of 30 successful execs failed\n",
	       sm->total, sm->foreign, bad[1], bad[0], bad[2]);
	assert_true(sm->total > 0);
	assert_int_equal(sm->foreign, 0);
	assert_int_equal(bad[0], 0);
	assert_int_equal(bad[1], 0);
	assert_int_equal(bad[2], 0);
	munmap(sm, 4096);
}

/* ---- a new image that fails before it confirms: the old one runs again ---- */

#define FB_SEED 0xfa11
#define FB_MARK 0xfa11bacull
#define FB_RAM	(4u << 20)
#define FB_SELF CX_TEST_BUILDDIR "/test-exec"
#define FB_TAG	"test-exec/1"

/*
 * The new image, told by argv[2] where to fail: "before-load",
 * "after-load", "refuse" (another tag), "exit" (without confirming),
 * "hang" (until the helper's timeout), "commit" (then killed: too late
 * for a fallback).
 */
static int confirm_target(const char *step, int race_ms)
{
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_state *st;
	int out, rc;

	if (!strcmp(step, "before-load"))
		raise(SIGKILL);
	cprxfer_opts_set_tag(o,
			     !strcmp(step, "refuse") ? "test-exec/2" : FB_TAG);
	rc = cprxfer_load_exec_opts(o, &st);
	cprxfer_opts_free(o);
	if (rc < 0)
		return 3; /* refused: exit, as the docs ask */
	if (cprxfer_get_fd(st, "out", &out) < 0)
		return 4;
	if (!strcmp(step, "after-load"))
		raise(SIGKILL);
	if (!strcmp(step, "exit")) {
		cprxfer_state_free(st);
		return 0;
	}
	if (!strcmp(step, "hang"))
		for (;;)
			pause();
	if (race_ms >= 0) {
		/* Work until about the old side's deadline, then confirm. */
		struct timespec ts = { race_ms / 1000,
				       (race_ms % 1000) * 1000000L };

		nanosleep(&ts, NULL);
		rc = cprxfer_exec_commit();
		dprintf(out, "new pid=%d commit=%d\n", getpid(), rc);
		cprxfer_state_free(st);
		return 0;
	}
	rc = cprxfer_exec_commit();
	dprintf(out, "new pid=%d commit=%d\n", getpid(), rc);
	raise(SIGKILL);
	return 5;
}

/* The old program again, under another PID: is everything there? */
static int fallback_target(void)
{
	struct cprxfer_ram r;
	cprxfer_state *st;
	uint64_t pid;
	int out, sock, ok;

	if (cprxfer_load_exec(&st) < 0)
		return 1;
	if (cprxfer_get_fd(st, "out", &out) < 0 ||
	    cprxfer_get_fd(st, "sock", &sock) < 0 ||
	    cprxfer_get_u64(st, "pid", &pid) < 0)
		return 2;
	/* cprxfer_ram_get needs /proc; without it, the region's fd. */
	if (access("/proc/self/fd", F_OK) == 0) {
		if (cprxfer_ram_get(st, "ram", 0, &r) < 0)
			return 2;
	} else {
		r.size = FB_RAM;
		r.fd = cprxfer_take_fd(st, "ramfd");
		r.addr = mmap(NULL, r.size, PROT_READ | PROT_WRITE, MAP_SHARED,
			      r.fd, 0);
		if (r.fd < 0 || r.addr == MAP_FAILED)
			return 2;
	}
	ok = pid != (uint64_t)getpid() &&
	     rp_check(r.addr, r.size, FB_SEED) < 0 &&
	     write(sock, "sock-ok", 7) == 7 && cprxfer_exec_commit() == 0 &&
	     (fcntl(out, F_GETFD) & FD_CLOEXEC);
	((uint64_t *)r.addr)[1] = FB_MARK;
	dprintf(out, "fallback pid=%d ok=%d proc=%s\n", getpid(), ok,
		access("/proc/self/fd", F_OK) ? "no" : "yes");
	cprxfer_ram_release(&r);
	cprxfer_state_free(st);
	return 0;
}

struct confirm_case {
	const char *step;
	const char *race_ms; /* "race": confirm after this long */
	int timeout_ms;	     /* 0: 5000 */
	const char *fb_path; /* NULL: /proc/self/exe */
	bool no_proc;	     /* unmount /proc first */
	int out, sock;
	struct cprxfer_ram ram;
};

static int exec_confirmed(void *arg)
{
	struct confirm_case *c = arg;
	char *argv[] = { "test-exec", "--confirm-target", (char *)c->step,
			 (char *)c->race_ms, NULL };
	char *fb_argv[] = { "test-exec", "--fallback-target", NULL };
	cprxfer_state *st = cprxfer_state_new();
	cprxfer_opts *o = cprxfer_opts_new();

	if (!st || !o || cprxfer_put_u64(st, "pid", (uint64_t)getpid()) < 0 ||
	    cprxfer_put_fd(st, "out", c->out) < 0 ||
	    cprxfer_put_fd(st, "sock", c->sock) < 0 ||
	    cprxfer_ram_put(st, "ram", &c->ram) < 0 ||
	    cprxfer_put_fd(st, "ramfd", c->ram.fd) < 0 ||
	    cprxfer_opts_set_tag(o, FB_TAG) < 0 ||
	    cprxfer_opts_set_timeout(o, c->timeout_ms ? c->timeout_ms : 5000) <
		    0 ||
	    cprxfer_opts_set_exec_fallback(o, c->fb_path, fb_argv) < 0) {
		fprintf(stderr, "exec_confirmed: %s\n", cprxfer_errmsg());
		return 98;
	}
	/* (cprxfer_ram_put needs /proc: the state is made before.) */
	if (c->no_proc &&
	    (unshare(CLONE_NEWNS) < 0 ||
	     mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	     umount2("/proc", MNT_DETACH) < 0))
		return 97;
	cprxfer_exec_opts(st, FB_SELF, argv, NULL, o);
	/* Without /proc and without a path: refused, with the reason. */
	if (c->no_proc && !c->fb_path &&
	    strstr(cprxfer_errmsg(), "/proc/self/exe"))
		return 42;
	fprintf(stderr, "cprxfer_exec_opts: %s\n", cprxfer_errmsg());
	return 99;
}

static void test_exec_new_image_killed_at_each_step_old_one_resumes(void **state)
{
	static const struct confirm_case cases[] = {
		{ .step = "before-load" },
		{ .step = "after-load" },
		{ .step = "refuse" },
		{ .step = "exit" },
		{ .step = "hang", .timeout_ms = 300 },
		{ .step = "commit" },
		/* No /proc: the fallback needs its path. */
		{ .step = "after-load", .no_proc = true, .fb_path = FB_SELF },
		{ .step = "after-load", .no_proc = true },
	};
	size_t i;

	(void)state;
	/* Valgrind runs no CLONE_VM process but a thread: no helper. */
	if (getenv("CPRXFER_UNDER_VALGRIND"))
		skip();
	/* The helper, and a fallback, are orphans: let them come to us. */
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct confirm_case c = cases[i];
		bool refused = c.no_proc && !c.fb_path;

		if (c.no_proc && (geteuid() != 0 || NEED_PROC))
			continue; /* unshare(CLONE_NEWNS) needs root */
		bool commit = !strcmp(c.step, "commit");
		char report[256], sbuf[16], expect[64];
		int p[2], sv[2], reaped = 0, st, fbpid = 0;
		int64_t t0 = tu_now_ms();
		pid_t pid, w;

		assert_int_equal(cprxfer_ram_create("fb", FB_RAM, 0, &c.ram),
				 0);
		rp_fill(c.ram.addr, FB_RAM, FB_SEED);
		assert_int_equal(pipe2(p, O_CLOEXEC), 0);
		assert_int_equal(
			socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			0);
		c.out = p[1];
		c.sock = sv[1];
		pid = tu_fork(exec_confirmed, &c);
		assert_true(pid > 0);
		close(p[1]);
		close(sv[1]);
		read_all(p[0], report, sizeof(report));
		report[strcspn(report, "\n")] = 0;
		st = tu_wait(pid);
		/* Then whatever is left: the helper or the fallback. */
		while ((w = waitpid(-1, NULL, 0)) > 0)
			reaped++;
		printf("# %-11s%s: new image ended %d; %d more child(ren) reaped; %lld ms; says: %s\n",
		       c.step, c.no_proc ? " (no /proc)" : "", st, reaped,
		       (long long)(tu_now_ms() - t0), report);
		if (refused) {
			assert_int_equal(st, 42);
			reaped = 1;
		} else if (commit) {
			snprintf(expect, sizeof(expect), "new pid=%d commit=1",
				 pid);
			assert_string_equal(report, expect);
			assert_int_equal(((uint64_t *)c.ram.addr)[1],
					 rp_word(1, FB_SEED));
		} else {
			assert_int_equal(
				sscanf(report, "fallback pid=%d ok=1", &fbpid),
				1);
			assert_true(fbpid != pid);
			read_all(sv[0], sbuf, sizeof(sbuf));
			assert_string_equal(sbuf, "sock-ok");
			assert_int_equal(((uint64_t *)c.ram.addr)[1], FB_MARK);
		}
		assert_int_equal(reaped, 1);
		close(p[0]);
		close(sv[0]);
		cprxfer_ram_release(&c.ram);
	}
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 0), 0);
}

/*
 * The confirmation and the timeout in the same few milliseconds, again
 * and again: every time exactly one process owns the state afterwards,
 * the new image (its cprxfer_exec_commit returned 1) or the fallback.
 */
static void test_exec_commit_racing_the_timeout_leaves_one_owner(void **state)
{
	int i, news = 0, fallbacks = 0;

	(void)state;
	if (getenv("CPRXFER_UNDER_VALGRIND"))
		skip();
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
	for (i = 0; i < 40; i++) {
		char ms[16], report[256], *line2;
		struct confirm_case c = { .step = "race",
					  .race_ms = ms,
					  .timeout_ms = 100 };
		int p[2], sv[2], owners = 0;
		pid_t pid;

		/* 40..118 ms of work (after the exec and the load) against
		 * a 100 ms deadline counted from just before the exec. */
		snprintf(ms, sizeof(ms), "%d", 40 + 2 * i);
		assert_int_equal(cprxfer_ram_create("race", FB_RAM, 0, &c.ram),
				 0);
		rp_fill(c.ram.addr, FB_RAM, FB_SEED);
		assert_int_equal(pipe2(p, O_CLOEXEC), 0);
		assert_int_equal(
			socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			0);
		c.out = p[1];
		c.sock = sv[1];
		pid = tu_fork(exec_confirmed, &c);
		assert_true(pid > 0);
		close(p[1]);
		close(sv[1]);
		read_all(p[0], report, sizeof(report));
		tu_wait(pid);
		while (waitpid(-1, NULL, 0) > 0)
			;
		owners += strstr(report, "new pid=") &&
			  strstr(report, "commit=1");
		owners += strstr(report, "fallback pid=") != NULL;
		line2 = strchr(report, '\n');
		if (owners != 1 || (line2 && line2[1]))
			fail_msg("%s ms: %d owners: %s", ms, owners, report);
		if (strstr(report, "fallback"))
			fallbacks++;
		else
			news++;
		close(p[0]);
		close(sv[0]);
		cprxfer_ram_release(&c.ram);
	}
	printf("# commit vs. 100 ms timeout, 40 runs: %d times the new image, %d times the fallback, never both or neither\n",
	       news, fallbacks);
	assert_int_equal(prctl(PR_SET_CHILD_SUBREAPER, 0), 0);
}

/* ---- the blackout, with and without the teardown helper ------------------ */

struct bench {
	int out;
	size_t size;
	bool defer;
};

static int exec_bench(void *arg)
{
	char *argv[] = { "exec-target", "bench", NULL };
	struct bench *b = arg;
	struct cprxfer_ram r;
	cprxfer_state *st = cprxfer_state_new();

	if (!st ||
	    cprxfer_ram_create("guest", b->size, CPRXFER_RAM_POPULATE, &r) <
		    0 ||
	    cprxfer_ram_put(st, "ram", &r) < 0 ||
	    cprxfer_put_fd(st, "out", b->out) < 0)
		return 98;
	/* The workload stops here: the blackout starts. */
	if (cprxfer_put_u64(st, "t0", (uint64_t)tu_now_ns()) < 0)
		return 98;
	cx_exec(st, TARGET, argv, NULL, NULL, false, b->defer);
	return 99;
}

static void test_blackout(void **state)
{
	const char *env = getenv("CX_EXEC_BENCH_MB");
	struct bench b = { .size = env ? strtoul(env, NULL, 0) << 20
				       : rp_big() };
	long long load, ready, pop;
	char report[128];
	int p[2], i;
	pid_t pid;

	(void)state;
	for (i = 0; i < 2; i++) {
		b.defer = i == 0;
		assert_int_equal(pipe2(p, O_CLOEXEC), 0);
		b.out = p[1];
		pid = tu_fork(exec_bench, &b);
		assert_true(pid > 0);
		close(p[1]);
		read_all(p[0], report, sizeof(report));
		close(p[0]);
		assert_int_equal(tu_wait(pid), 0);
		assert_int_equal(
			sscanf(report, "%lld %lld %lld", &load, &ready, &pop),
			3);
		printf("# %zu MiB populated, teardown %s: main() after %.1f ms, RAM mapped after %.1f ms; prefault of resident pages %.1f ms\n",
		       b.size >> 20, b.defer ? "deferred" : "in execve",
		       load / 1e6, ready / 1e6, pop / 1e6);
	}
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_exec_other_binary),
		tu_test(test_exec_self),
		tu_test(test_exec_fails),
		tu_test(test_load_not_exec),
		tu_test(test_load_failure_leaves_no_named_fd_open),
		tu_test(test_plain_exec_state_loads_under_any_tag),
		tu_test(test_load_without_proc_finds_the_state),
		tu_test(test_exec_helper_runs_no_handler_in_another_pid),
		tu_test(test_exec_new_image_killed_at_each_step_old_one_resumes),
		tu_test(test_exec_commit_racing_the_timeout_leaves_one_owner),
		tu_test(test_blackout),
		tu_test(test_exec_under_a_subreaper_leaves_it_one_child_per_exec),
		tu_test(test_exec_of_19000_fds_collects_them_in_linear_time),
	};

	if (argc > 1 && !strcmp(argv[1], "--self-target"))
		return self_target();
	if (argc > 1 && !strcmp(argv[1], "--reaper-target"))
		return reaper_target();
	if (argc > 1 && !strcmp(argv[1], "--storm-target"))
		return storm_target();
	if (argc > 2 && !strcmp(argv[1], "--confirm-target"))
		return confirm_target(argv[2], argc > 3 ? atoi(argv[3]) : -1);
	if (argc > 1 && !strcmp(argv[1], "--fallback-target"))
		return fallback_target();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
