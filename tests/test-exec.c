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
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"
#include "rampat.h"

#define TARGET CX_TEST_BUILDDIR "/exec-target"
#define SEED   0xe7ec

/* The library's test hook: run execve() without the teardown helper. */
#include "exec.h"

extern char **environ;

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

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
					 argv, NULL, pass == 0),
				 -ENOENT);
		assert_non_null(strstr(cprxfer_errmsg(),
				       "/nonexistent/cprxfer-target"));
		snap(&after);
		same_snap(&before, &after);
		assert_null(getenv("CPRXFER_EXEC_FD"));

		/* A directory: -EACCES, the same guarantees. */
		assert_int_equal(cx_exec(st, "/", argv, environ, pass == 0),
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
	if (cprxfer_put_u64(st, "t0", (uint64_t)now_ns()) < 0)
		return 98;
	cx_exec(st, TARGET, argv, NULL, b->defer);
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
		tu_test(test_exec_other_binary), tu_test(test_exec_self),
		tu_test(test_exec_fails),	 tu_test(test_load_not_exec),
		tu_test(test_blackout),
	};

	if (argc > 1 && !strcmp(argv[1], "--self-target"))
		return self_target();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
