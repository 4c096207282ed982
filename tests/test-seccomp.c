/* SPDX-License-Identifier: MIT */
/*
 * cprxfer_seccomp_allow(): a process that installs a default-deny
 * seccomp filter, with only its own bare needs plus the library's
 * allowlist for one mode, can still hand off in that mode; and a
 * syscall outside the list is really refused (or kills, under a KILL
 * filter), so the sandbox is real.
 *
 * Each sandboxed side runs in a forked child (a seccomp filter cannot be
 * removed) and reports through its exit status: 0 for success, else the
 * number of the step that failed, its reason on stderr.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/ioctl.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>
#include <cprxfer/seccomp.h>

#include "testutil.h"

#if __has_include("../lib/connect.c")
#define HAVE_RENDEZVOUS 1
#endif
#if __has_include("../lib/ram.c")
#define HAVE_RAM 1
#endif
#if __has_include("../lib/exec.c")
#define HAVE_EXEC 1
#endif
#if __has_include("../lib/file.c")
#define HAVE_FILE 1
#endif

#define EXEC_CHILD_ARG "--seccomp-exec-child"
#define BLOB_LEN       (200 * 1024) /* bigger than the stream buffers */
#define RAM_LEN	       (1 << 20)

extern char **environ;

/* What any program needs to run at all: not the library's business. */
static const char *const program_needs[] = {
	"exit_group",
	"exit",
	"rt_sigreturn",
	"rt_sigprocmask",
};

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif

#ifdef SANITIZED
/*
 * What ASan's runtime calls in a child: sigaltstack before every
 * noreturn call (_exit), the rest to print a report. Sanitizer builds
 * only: not the library's.
 */
static const char *const sanitizer_needs[] = {
	"sigaltstack",	"gettid",  "tgkill",   "writev",
	"rt_sigaction", "open",	   "futex",    "sched_yield",
	"prctl",	"madvise", "mprotect",
};
#endif

/* What the dynamic loader and libc start-up of a new image need. */
static const char *const startup_needs[] = {
	"brk",
	"arch_prctl",
	"mmap",
	"munmap",
	"mprotect",
	"access",
	"openat",
	"newfstatat",
	"fstat",
	"read",
	"pread64",
	"close",
	"set_tid_address",
	"set_robust_list",
	"rseq",
	"prlimit64",
	"getrandom",
	"futex",
};

static int step_failed(int step, const char *what)
{
	fprintf(stderr, "sandboxed step %d (%s) failed: %s\n", step, what,
		cprxfer_errmsg());
	return step;
}

static int add_names(scmp_filter_ctx ctx, const char *const *names, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		int nr = seccomp_syscall_resolve_name(names[i]);

		if (nr != __NR_SCMP_ERROR &&
		    seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) < 0)
			return -1;
	}
	return 0;
}

/*
 * Install a default-deny filter: the program's own needs plus the
 * library's list for modes. Returns 0 or -1.
 */
static int sandbox(uint32_t deny, unsigned modes, bool startup)
{
	scmp_filter_ctx ctx = seccomp_init(deny);
	int rc = -1;

	if (!ctx)
		return -1;
	if (add_names(ctx, program_needs,
		      sizeof(program_needs) / sizeof(program_needs[0])) < 0)
		goto out;
#ifdef SANITIZED
	if (add_names(ctx, sanitizer_needs,
		      sizeof(sanitizer_needs) / sizeof(sanitizer_needs[0])) < 0)
		goto out;
#endif
	if (startup &&
	    add_names(ctx, startup_needs,
		      sizeof(startup_needs) / sizeof(startup_needs[0])) < 0)
		goto out;
	if (cprxfer_seccomp_allow(ctx, modes) < 0) {
		fprintf(stderr, "cprxfer_seccomp_allow: %s\n",
			cprxfer_errmsg());
		goto out;
	}
	rc = seccomp_load(ctx) < 0 ? -1 : 0;
out:
	seccomp_release(ctx);
	return rc;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t)(i * 31 + seed);
}

/* ---- argument checks ---------------------------------------------- */

static void test_bad_args(void **unused)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));

	(void)unused;
	assert_non_null(ctx);
	assert_int_equal(cprxfer_seccomp_allow(NULL, CPRXFER_MODE_TRANSFER),
			 -EINVAL);
	assert_int_equal(cprxfer_seccomp_allow(ctx, 0), -EINVAL);
	assert_int_equal(cprxfer_seccomp_allow(ctx, 1u << 5), -EINVAL);
	assert_int_equal(cprxfer_seccomp_allow(ctx, CPRXFER_MODE_RESTART), 0);
	assert_int_equal(cprxfer_seccomp_allow(ctx, CPRXFER_MODE_KEXEC), 0);
	assert_int_equal(
		cprxfer_seccomp_allow(ctx, CPRXFER_MODE_FILE | (1u << 31)),
		-EINVAL);
	assert_non_null(strstr(cprxfer_errmsg(), "modes"));
	/* Every combination of known modes is accepted, twice over. */
	assert_int_equal(cprxfer_seccomp_allow(ctx, CPRXFER_MODE_TRANSFER |
							    CPRXFER_MODE_EXEC |
							    CPRXFER_MODE_FILE),
			 0);
	assert_int_equal(cprxfer_seccomp_allow(ctx, CPRXFER_MODE_EXEC), 0);
	seccomp_release(ctx);

	/* A default-allow filter needs nothing added: not an error. */
	ctx = seccomp_init(SCMP_ACT_ALLOW);
	assert_non_null(ctx);
	assert_int_equal(cprxfer_seccomp_allow(ctx, CPRXFER_MODE_FILE), 0);
	seccomp_release(ctx);
}

/* The filter really holds only what each mode needs. */
static void test_lists_differ(void **unused)
{
	scmp_filter_ctx ctx;
	char path[] = "/tmp/cprxfer-bpf-XXXXXX";
	int fd;
	struct stat a, b;

	(void)unused;
	/* A transfer-only filter is smaller than an all-modes one. */
	fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
	assert_int_equal(cprxfer_seccomp_allow(ctx, CPRXFER_MODE_FILE), 0);
	assert_int_equal(seccomp_export_bpf(ctx, fd), 0);
	seccomp_release(ctx);
	assert_int_equal(fstat(fd, &a), 0);
	assert_int_equal(ftruncate(fd, 0), 0);
	lseek(fd, 0, SEEK_SET);
	ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
	assert_int_equal(
		cprxfer_seccomp_allow(ctx, CPRXFER_MODE_FILE |
						   CPRXFER_MODE_TRANSFER |
						   CPRXFER_MODE_EXEC),
		0);
	assert_int_equal(seccomp_export_bpf(ctx, fd), 0);
	seccomp_release(ctx);
	assert_int_equal(fstat(fd, &b), 0);
	assert_true(b.st_size > a.st_size);
	close(fd);
}

/* ---- transfer mode ------------------------------------------------- */

struct xfer {
	int sock;
	int evfd;	  /* outgoing: an eventfd to hand over */
	const char *path; /* rendezvous path, or NULL: use sock */
};

static int outgoing(void *arg)
{
	struct xfer *x = arg;
	cprxfer_channel *ch = NULL;
	cprxfer_state *st;
	uint8_t *blob = malloc(BLOB_LEN);
	uint64_t one = 1;
	int rc;

	if (sandbox(SCMP_ACT_ERRNO(EPERM), CPRXFER_MODE_TRANSFER, false))
		return 100;
	if (!blob)
		return 101;
	fill(blob, BLOB_LEN, 7);
	st = cprxfer_state_new();
	if (!st || cprxfer_put_u64(st, "n", 42) ||
	    cprxfer_put_blob(st, "blob", blob, BLOB_LEN) ||
	    cprxfer_put_fd(st, "ev", x->evfd))
		return step_failed(1, "state");
#ifdef HAVE_RAM
	{
		struct cprxfer_ram r;

		if (cprxfer_ram_create("sandboxed", RAM_LEN, 0, &r))
			return step_failed(2, "cprxfer_ram_create");
		fill(r.addr, RAM_LEN, 3);
		if (cprxfer_ram_put(st, "ram", &r))
			return step_failed(3, "cprxfer_ram_put");
	}
#endif
#ifdef HAVE_RENDEZVOUS
	if (x->path) {
		rc = cprxfer_connect(x->path, 10000, &ch);
		if (rc)
			return step_failed(4, "cprxfer_connect");
	}
#endif
	if (!ch && cprxfer_channel_open(x->sock, &ch))
		return step_failed(5, "cprxfer_channel_open");
	if (cprxfer_save(ch, st))
		return step_failed(6, "cprxfer_save");
	rc = cprxfer_wait_ack(ch, 10000);
	if (rc)
		return step_failed(7, "cprxfer_wait_ack");
	/* The peer wrote to the eventfd we handed over. */
	if (read(x->evfd, &one, 8) != 8 || one != 5)
		return step_failed(8, "eventfd");
	cprxfer_channel_close(ch);
	return 0;
}

static int incoming(void *arg)
{
	struct xfer *x = arg;
	cprxfer_channel *ch = NULL;
	cprxfer_state *st;
	uint8_t *want = malloc(BLOB_LEN);
	const void *blob;
	uint64_t n = 0, five = 5;
	size_t len;
	int fd;

	if (sandbox(SCMP_ACT_ERRNO(EPERM), CPRXFER_MODE_TRANSFER, false))
		return 100;
	if (!want)
		return 101;
#ifdef HAVE_RENDEZVOUS
	if (x->path) {
		cprxfer_listener *l;

		if (cprxfer_listen(x->path, &l))
			return step_failed(20, "cprxfer_listen");
		if (cprxfer_accept(l, 10000, &ch))
			return step_failed(21, "cprxfer_accept");
		cprxfer_listener_close(l);
	}
#endif
	if (!ch && cprxfer_channel_open(x->sock, &ch))
		return step_failed(22, "cprxfer_channel_open");
	if (cprxfer_load(ch, &st))
		return step_failed(23, "cprxfer_load");
	fill(want, BLOB_LEN, 7);
	if (cprxfer_get_u64(st, "n", &n) || n != 42 ||
	    cprxfer_get_blob(st, "blob", &blob, &len) || len != BLOB_LEN ||
	    memcmp(blob, want, BLOB_LEN))
		return step_failed(24, "values");
	if (cprxfer_get_fd(st, "ev", &fd) || write(fd, &five, 8) != 8)
		return step_failed(25, "fd");
#ifdef HAVE_RAM
	{
		struct cprxfer_ram r;

		if (cprxfer_ram_get(st, "ram", 0, &r) || r.size != RAM_LEN)
			return step_failed(26, "cprxfer_ram_get");
		fill(want, BLOB_LEN, 3);
		if (memcmp(r.addr, want, BLOB_LEN))
			return step_failed(27, "RAM contents");
		cprxfer_ram_release(&r);
	}
#endif
	if (cprxfer_ack(ch, 0, NULL))
		return step_failed(28, "cprxfer_ack");
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return 0;
}

static void run_transfer(const char *path)
{
	struct xfer out = { .sock = -1 }, in = { .sock = -1 };
	int sv[2] = { -1, -1 };
	pid_t a, b;

	if (!path) {
		assert_int_equal(
			socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			0);
		out.sock = sv[0];
		in.sock = sv[1];
	}
	out.path = in.path = path;
	out.evfd = eventfd(0, EFD_CLOEXEC);
	assert_true(out.evfd >= 0);
	b = tu_fork(incoming, &in);
	a = tu_fork(outgoing, &out);
	assert_int_equal(tu_wait(a), 0);
	assert_int_equal(tu_wait(b), 0);
	close(out.evfd);
	if (!path) {
		close(sv[0]);
		close(sv[1]);
	}
}

static void test_transfer_socketpair(void **unused)
{
	(void)unused;
	run_transfer(NULL);
}

static void test_transfer_rendezvous(void **unused)
{
#ifdef HAVE_RENDEZVOUS
	char *dir = tu_tmpdir(), path[256];

	(void)unused;
	assert_non_null(dir);
	snprintf(path, sizeof(path), "%s/handoff.sock", dir);
	run_transfer(path);
	tu_rmdir(dir);
	free(dir);
#else
	(void)unused;
	skip();
#endif
}

/* ---- transfer mode: the listener's group, the peer's pidfd ---------- */

#ifdef HAVE_RENDEZVOUS
/*
 * cprxfer_opts_set_socket_group: listen gives the socket its group with
 * fchownat under the filter; then a peer connects and is accepted.
 */
static int group_child(void *arg)
{
	const char *path = arg;
	cprxfer_listener *l;
	cprxfer_opts *o = cprxfer_opts_new();
	struct stat sb;

	if (!o || cprxfer_opts_set_socket_group(o, 4321) ||
	    cprxfer_opts_set_socket_mode(o, 0660))
		return 1;
	if (sandbox(SCMP_ACT_KILL_PROCESS, CPRXFER_MODE_TRANSFER, false))
		return 100;
	if (cprxfer_listen_opts(path, o, &l))
		return step_failed(2, "cprxfer_listen_opts");
	if (lstat(path, &sb) || sb.st_gid != 4321 ||
	    (sb.st_mode & 0777) != 0660)
		return step_failed(3, "the socket's group and mode");
	cprxfer_listener_close(l);
	cprxfer_opts_free(o);
	return 0;
}
#endif

static void test_listen_with_socket_group_under_filter(void **unused)
{
#ifdef HAVE_RENDEZVOUS
	char *dir = tu_tmpdir(), path[256];

	(void)unused;
	assert_non_null(dir);
	if (geteuid() != 0) {
		/* chown to a group we are not in needs CAP_CHOWN */
		tu_rmdir(dir);
		free(dir);
		skip();
	}
	snprintf(path, sizeof(path), "%s/grouped.sock", dir);
	assert_int_equal(tu_wait(tu_fork(group_child, path)), 0);
	tu_rmdir(dir);
	free(dir);
#else
	(void)unused;
	skip();
#endif
}

/* PIDFD_GET_INFO as lib/handshake.c passes it (Linux 6.13). */
struct pidfd_info64 {
	uint64_t mask, cgroupid;
	uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid;
	uint32_t fsuid, fsgid;
	int32_t exit_code;
};

static int pidfd_child(void *arg)
{
	struct pidfd_info64 info = { .mask = 1 };
	int pfd = (int)syscall(SYS_pidfd_open, getpid(), 0), n = 0;

	(void)arg;
	if (pfd < 0)
		return 1;
	if (sandbox(SCMP_ACT_ERRNO(EPERM), CPRXFER_MODE_TRANSFER, false))
		return 100;
	/* The one ioctl the list allows: a kernel without it says ENOTTY. */
	if (ioctl(pfd, _IOWR(0xFF, 11, struct pidfd_info64), &info) == 0) {
		if (info.pid != (uint32_t)getpid())
			return 2;
	} else if (errno != ENOTTY && errno != EINVAL) {
		return 3;
	}
	/* Any other ioctl is refused. */
	if (ioctl(pfd, FIONREAD, &n) == 0 || errno != EPERM)
		return 4;
	close(pfd);
	return 0;
}

static void test_pidfd_get_info_allowed_other_ioctls_refused(void **unused)
{
	(void)unused;
	assert_int_equal(tu_wait(tu_fork(pidfd_child, NULL)), 0);
}

/* ---- transfer mode: a successor the library starts ------------------ */

#define SUCCESSOR_ARG "--seccomp-successor"

/* The successor, started by cprxfer_spawn under the inherited filter. */
static int successor_main(void)
{
	cprxfer_channel *ch;
	cprxfer_state *st;
	uint64_t v = 0;

	if (cprxfer_inherit(NULL, &ch))
		return step_failed(50, "cprxfer_inherit");
	if (cprxfer_load(ch, &st) || cprxfer_get_u64(st, "v", &v) || v != 77)
		return step_failed(51, "cprxfer_load");
	if (cprxfer_ack(ch, 0, NULL))
		return step_failed(52, "cprxfer_ack");
	cprxfer_state_free(st);
	/* Until the starter kills it: its kill and reap are tested. */
	cprxfer_wait_commit(ch, 10000);
	return 53;
}

static int spawner(void *arg)
{
	char *argv[] = { (char *)"test-seccomp", (char *)SUCCESSOR_ARG, NULL };
	cprxfer_successor *s;
	cprxfer_channel *ch;
	cprxfer_state *st;

	(void)arg;
	if (sandbox(SCMP_ACT_ERRNO(EPERM), CPRXFER_MODE_TRANSFER, true))
		return 100;
	st = cprxfer_state_new();
	if (!st || cprxfer_put_u64(st, "v", 77))
		return step_failed(60, "state");
	if (cprxfer_spawn("/proc/self/exe", argv, environ, NULL, &s))
		return step_failed(61, "cprxfer_spawn");
	if (cprxfer_successor_channel(s, &ch))
		return step_failed(62, "cprxfer_successor_channel");
	if (cprxfer_save(ch, st) || cprxfer_wait_ack(ch, 10000))
		return step_failed(63, "save + ack");
	/* Rollback: the successor is killed (pidfd) and reaped (waitid). */
	if (cprxfer_successor_kill(s))
		return step_failed(64, "cprxfer_successor_kill");
	if (waitpid(-1, NULL, WNOHANG) != -1 || errno != ECHILD)
		return step_failed(65, "a child left unreaped");
	cprxfer_channel_close(ch);
	cprxfer_successor_free(s);
	cprxfer_state_free(st);
	return 0;
}

/*
 * cprxfer_spawn, cprxfer_successor_channel and cprxfer_successor_kill
 * under a default-deny filter with the transfer list (and what the
 * successor's own start-up needs): posix_spawn's clone3 is made to fail
 * with ENOSYS, its clone fallback is allowed by its flags.
 */
static void test_spawned_successor_under_filter(void **unused)
{
	(void)unused;
	assert_int_equal(tu_wait(tu_fork(spawner, NULL)), 0);
}

/* ---- file mode ----------------------------------------------------- */

static int file_child(void *arg)
{
	const char *dir = arg;
	char path[256], rampath[256];
	cprxfer_state *st, *back;
	uint8_t blob[3000], page[4096];
	const void *p;
	const char *s;
	size_t len;
	int64_t v = 0;

	snprintf(path, sizeof(path), "%s/state", dir);
	snprintf(rampath, sizeof(rampath), "%s/ram", dir);
	if (sandbox(SCMP_ACT_ERRNO(EPERM), CPRXFER_MODE_FILE, false))
		return 100;
	fill(blob, sizeof(blob), 9);
	st = cprxfer_state_new();
	if (!st || cprxfer_put_i64(st, "t", -9) ||
	    cprxfer_put_str(st, "s", "sandboxed") ||
	    cprxfer_put_blob(st, "b", blob, sizeof(blob)))
		return step_failed(1, "state");
#ifdef HAVE_RAM
	{
		struct cprxfer_ram r;

		if (cprxfer_ram_open_file(rampath, RAM_LEN, 0, &r))
			return step_failed(2, "cprxfer_ram_open_file");
		fill(r.addr, 4096, 1);
		if (cprxfer_ram_put(st, "ram", &r))
			return step_failed(3, "cprxfer_ram_put");
	}
#endif
	/* Twice: the second save replaces the first atomically. */
	if (cprxfer_save_file(st, path) || cprxfer_save_file(st, path))
		return step_failed(4, "cprxfer_save_file");
	if (cprxfer_load_file(path, &back))
		return step_failed(5, "cprxfer_load_file");
	if (cprxfer_get_i64(back, "t", &v) || v != -9 ||
	    cprxfer_get_str(back, "s", &s) || strcmp(s, "sandboxed") ||
	    cprxfer_get_blob(back, "b", &p, &len) || len != sizeof(blob) ||
	    memcmp(p, blob, len))
		return step_failed(6, "values");
#ifdef HAVE_RAM
	{
		struct cprxfer_ram r;

		fill(page, sizeof(page), 1);
		if (cprxfer_ram_get(back, "ram", 0, &r) ||
		    memcmp(r.addr, page, sizeof(page)))
			return step_failed(7, "RAM by path");
		cprxfer_ram_release(&r);
	}
#endif
	cprxfer_state_free(back);
	cprxfer_state_free(st);
	return 0;
}

static void test_file(void **unused)
{
#ifdef HAVE_FILE
	char *dir = tu_tmpdir();

	(void)unused;
	assert_non_null(dir);
	assert_int_equal(tu_wait(tu_fork(file_child, dir)), 0);
	tu_rmdir(dir);
	free(dir);
#else
	(void)unused;
	skip();
#endif
}

/* ---- exec mode ----------------------------------------------------- */

#ifdef HAVE_EXEC
/* The new image, started by cprxfer_exec under the inherited filter. */
static int exec_child_main(void)
{
	cprxfer_state *st;
	uint64_t v = 0;
	const char *s;
	int fd;

	if (cprxfer_load_exec(&st))
		return step_failed(30, "cprxfer_load_exec");
	if (cprxfer_get_u64(st, "v", &v) || v != 0xabcdef ||
	    cprxfer_get_str(st, "s", &s) || strcmp(s, "in place"))
		return step_failed(31, "values");
	fd = cprxfer_take_fd(st, "pipe");
	if (fd < 0 || write(fd, "ok", 2) != 2)
		return step_failed(32, "fd");
	close(fd);
	cprxfer_state_free(st);
	/* Still sandboxed: a forbidden call fails. */
	if (mkdir("/tmp/cprxfer-seccomp-forbidden", 0700) == 0 ||
	    errno != EPERM)
		return step_failed(33, "mkdir was not blocked after exec");
	return 0;
}

static int exec_parent(void *arg)
{
	int *p = arg;
	char *argv[] = { (char *)"test-seccomp", (char *)EXEC_CHILD_ARG, NULL };
	cprxfer_state *st;

	close(p[0]);
	if (sandbox(SCMP_ACT_ERRNO(EPERM), CPRXFER_MODE_EXEC, true))
		return 100;
	st = cprxfer_state_new();
	if (!st || cprxfer_put_u64(st, "v", 0xabcdef) ||
	    cprxfer_put_str(st, "s", "in place") ||
	    cprxfer_put_fd(st, "pipe", p[1]))
		return step_failed(40, "state");
	cprxfer_exec(st, "/proc/self/exe", argv, environ);
	return step_failed(41, "cprxfer_exec");
}
#endif

static void test_exec(void **unused)
{
#ifdef HAVE_EXEC
	int p[2];
	char buf[4] = { 0 };
	pid_t pid;

	(void)unused;
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	pid = tu_fork(exec_parent, p);
	close(p[1]);
	assert_int_equal(tu_wait(pid), 0);
	assert_int_equal(read(p[0], buf, sizeof(buf)), 2);
	assert_string_equal(buf, "ok");
	close(p[0]);
#else
	(void)unused;
	skip();
#endif
}

/* ---- readlinkat: a libc whose readlink() is readlinkat (aarch64...) ---- */

/*
 * This readlink() wins over libc's for the library linked statically
 * into this test: when asked, it makes the call the way glibc does on
 * architectures without a readlink syscall.
 */
static int readlink_via_at;

ssize_t readlink(const char *restrict path, char *restrict buf, size_t len)
{
#ifdef SYS_readlink
	if (!readlink_via_at)
		return syscall(SYS_readlink, path, buf, len);
#endif
	return syscall(SYS_readlinkat, AT_FDCWD, path, buf, len);
}

static int readlinkat_child(void *arg)
{
	unsigned modes = *(unsigned *)arg;
	struct cprxfer_ram r, g;
	cprxfer_state *st;

	readlink_via_at = 1;
	if (sandbox(SCMP_ACT_ERRNO(EPERM), modes, false))
		return 100;
	if (cprxfer_ram_create("sandboxed", RAM_LEN, 0, &r))
		return step_failed(1, "cprxfer_ram_create");
	st = cprxfer_state_new();
	if (!st)
		return step_failed(2, "cprxfer_state_new");
	if (cprxfer_ram_put(st, "ram", &r))
		return step_failed(3, "cprxfer_ram_put");
	if (cprxfer_ram_get(st, "ram", 0, &g))
		return step_failed(4, "cprxfer_ram_get");
	cprxfer_ram_release(&g);
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
	return 0;
}

/*
 * The RAM helpers name an fd through /proc/self/fd with readlink(),
 * which glibc makes as readlinkat where the architecture has no
 * readlink: the list allows it in every mode (on 077bcd1 it did not,
 * and cprxfer_ram_put failed with -EPERM in the sandbox).
 */
static void test_ram_allowed_with_readlinkat(void **unused)
{
	static const unsigned modes[] = { CPRXFER_MODE_TRANSFER,
					  CPRXFER_MODE_EXEC,
					  CPRXFER_MODE_FILE };
	size_t i;

	(void)unused;
	for (i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		assert_int_equal(
			tu_wait(tu_fork(readlinkat_child, (void *)&modes[i])),
			0);
}

/* ---- the sandbox is real -------------------------------------------- */

static const unsigned all_modes =
	CPRXFER_MODE_TRANSFER | CPRXFER_MODE_EXEC | CPRXFER_MODE_FILE;

static int forbidden_child(void *arg)
{
	const char *dir = arg;
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/made-in-sandbox", dir);
	if (sandbox(SCMP_ACT_ERRNO(EPERM), all_modes, false))
		return 100;
	/* Outside every list: refused with the filter's errno. */
	if (mkdir(path, 0700) == 0 || errno != EPERM)
		return 1;
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 || errno != EPERM)
		return 2;
	/* socket() is allowed for AF_UNIX stream sockets only. */
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd >= 0 || errno != EPERM)
		return 3;
	if (kill(getpid(), 0) == 0 || errno != EPERM)
		return 4;
	/* ... while what the list names still works. */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 5;
	close(fd);
	return 0;
}

static void test_forbidden_errno(void **unused)
{
	char *dir = tu_tmpdir(), path[256];
	struct stat sb;

	(void)unused;
	assert_non_null(dir);
	assert_int_equal(tu_wait(tu_fork(forbidden_child, dir)), 0);
	snprintf(path, sizeof(path), "%s/made-in-sandbox", dir);
	assert_int_equal(stat(path, &sb), -1);
	tu_rmdir(dir);
	free(dir);
}

static int killed_child(void *arg)
{
	(void)arg;
	if (sandbox(SCMP_ACT_KILL_PROCESS, all_modes, false))
		return 100;
	mkdir("/tmp/cprxfer-seccomp-never", 0700);
	return 0; /* not reached: the kernel kills the process */
}

static void test_forbidden_kills(void **unused)
{
	struct stat sb;

	(void)unused;
	assert_int_equal(tu_wait(tu_fork(killed_child, NULL)), 128 + SIGSYS);
	assert_int_equal(stat("/tmp/cprxfer-seccomp-never", &sb), -1);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_bad_args),
		tu_test(test_lists_differ),
		tu_test(test_transfer_socketpair),
		tu_test(test_transfer_rendezvous),
		tu_test(test_listen_with_socket_group_under_filter),
		tu_test(test_pidfd_get_info_allowed_other_ioctls_refused),
		tu_test(test_spawned_successor_under_filter),
		tu_test(test_file),
		tu_test(test_exec),
		tu_test(test_forbidden_errno),
		tu_test(test_forbidden_kills),
		tu_test(test_ram_allowed_with_readlinkat),
	};

	if (argc > 1 && !strcmp(argv[1], SUCCESSOR_ARG))
		_exit(successor_main());
#ifdef HAVE_EXEC
	/* _exit: no atexit work (LeakSanitizer's) under the filter. */
	if (argc > 1 && !strcmp(argv[1], EXEC_CHILD_ARG))
		_exit(exec_child_main());
#endif
	(void)argc;
	(void)argv;
	if (getenv("VALGRIND_LAUNCHER") || getenv("CPRXFER_UNDER_VALGRIND")) {
		/* valgrind's own syscalls would meet the filter. */
		fprintf(stderr, "skip: seccomp filters under valgrind\n");
		return 77;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
