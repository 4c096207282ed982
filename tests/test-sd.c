/* SPDX-License-Identifier: MIT */
/*
 * libcprxfer-systemd without systemd: a thread of this test plays the
 * service manager's side of the notify socket (FDSTORE=1, FDNAME=,
 * FDSTOREREMOVE=1, BARRIER=1, one copy per open file as systemd keeps
 * it), and a forked child plays the next instance, with the stored fds
 * passed as LISTEN_FDS from fd 3. The real systemd test is
 * tests/systemd/run-systemd-test; this one runs under valgrind and the
 * sanitizers.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>
#include <cprxfer/systemd.h>
#ifdef HAVE_SECCOMP
#include <cprxfer/seccomp.h>
#endif

#include "testutil.h"

#define MAXFD 32

struct manager {
	int sock, stop[2];
	char path[108];
	pthread_t thread;
	pthread_mutex_t lock;
	int fd[MAXFD];
	char name[MAXFD][256];
	int n, pushes, removes, barriers;
};

static bool same_file(int a, int b)
{
	pid_t p = getpid();

	return syscall(SYS_kcmp, p, p, KCMP_FILE, a, b) == 0;
}

static void on_message(struct manager *m, char *msg, int *fds, int nfds)
{
	char *name = NULL, *line, *save = NULL;
	bool store = false, remove = false, barrier = false;
	int i, k;

	for (line = strtok_r(msg, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		if (!strcmp(line, "FDSTORE=1"))
			store = true;
		else if (!strcmp(line, "FDSTOREREMOVE=1"))
			remove = true;
		else if (!strcmp(line, "BARRIER=1"))
			barrier = true;
		else if (!strncmp(line, "FDNAME=", 7))
			name = line + 7;
	}
	pthread_mutex_lock(&m->lock);
	if (barrier)
		m->barriers++;
	for (i = 0; store && i < nfds; i++) {
		m->pushes++;
		for (k = 0; k < m->n && !same_file(m->fd[k], fds[i]); k++)
			;
		if (k < m->n || m->n == MAXFD) { /* systemd: kept once */
			close(fds[i]);
			fds[i] = -1;
			continue;
		}
		m->fd[m->n] = fds[i];
		snprintf(m->name[m->n], sizeof(m->name[0]), "%s",
			 name ? name : "stored");
		m->n++;
		fds[i] = -1;
	}
	for (k = 0; remove && name && k < m->n; k++) {
		if (strcmp(m->name[k], name))
			continue;
		m->removes++;
		close(m->fd[k]);
		m->fd[k] = m->fd[m->n - 1];
		memcpy(m->name[k], m->name[m->n - 1], sizeof(m->name[0]));
		m->n--;
		k--;
	}
	pthread_mutex_unlock(&m->lock);
	/* BARRIER=1: closing its fd is the answer. */
	for (i = 0; i < nfds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

static void *manager_main(void *arg)
{
	struct manager *m = arg;

	for (;;) {
		struct pollfd p[2] = { { m->sock, POLLIN, 0 },
				       { m->stop[0], POLLIN, 0 } };
		union {
			char buf[CMSG_SPACE(sizeof(int) * 16)];
			struct cmsghdr align;
		} u;
		char msg[4096];
		struct iovec iov = { msg, sizeof(msg) - 1 };
		struct msghdr mh = { .msg_iov = &iov,
				     .msg_iovlen = 1,
				     .msg_control = u.buf,
				     .msg_controllen = sizeof(u.buf) };
		struct cmsghdr *c;
		int fds[16], nfds = 0;
		ssize_t r;

		if (poll(p, 2, -1) < 0 || p[1].revents)
			return NULL;
		r = recvmsg(m->sock, &mh, MSG_CMSG_CLOEXEC);
		if (r < 0)
			continue;
		msg[r] = 0;
		for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
			if (c->cmsg_level == SOL_SOCKET &&
			    c->cmsg_type == SCM_RIGHTS) {
				int k = (c->cmsg_len - CMSG_LEN(0)) /
					sizeof(int);

				memcpy(fds + nfds, CMSG_DATA(c),
				       k * sizeof(int));
				nfds += k;
			}
		on_message(m, msg, fds, nfds);
	}
}

static void manager_start(struct manager *m, const char *dir)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };

	memset(m, 0, sizeof(*m));
	snprintf(m->path, sizeof(m->path), "%s/notify", dir);
	strcpy(a.sun_path, m->path);
	m->sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	assert_true(m->sock >= 0);
	assert_int_equal(bind(m->sock, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(pipe2(m->stop, O_CLOEXEC), 0);
	pthread_mutex_init(&m->lock, NULL);
	assert_int_equal(pthread_create(&m->thread, NULL, manager_main, m), 0);
	setenv("NOTIFY_SOCKET", m->path, 1);
}

static void manager_stop(struct manager *m)
{
	int i;

	close(m->stop[1]);
	pthread_join(m->thread, NULL);
	close(m->stop[0]);
	close(m->sock);
	for (i = 0; i < m->n; i++)
		close(m->fd[i]);
	pthread_mutex_destroy(&m->lock);
	unsetenv("NOTIFY_SOCKET");
}

static int stored(struct manager *m, const char *prefix)
{
	int i, k = 0;

	pthread_mutex_lock(&m->lock);
	for (i = 0; i < m->n; i++)
		k += !strncmp(m->name[i], prefix, strlen(prefix));
	pthread_mutex_unlock(&m->lock);
	return k;
}

/* ---- the next instance ---------------------------------------------- */

struct next {
	/* the parent's objects: the child frees its copies */
	cprxfer_sd *sd;
	cprxfer_state *st;
	char *dir;
	int n, fd[MAXFD];
	char names[MAXFD * 257];
	ino_t ram_ino, sock_ino;
	bool sandboxed; /* load under cprxfer_seccomp_allow's filter */
};

#ifdef HAVE_SECCOMP
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif

/*
 * A default-deny filter: what any program needs to run at all, what
 * ASan's runtime calls in sanitizer builds, and the library's list for
 * restart mode. 0 or -1.
 */
static int sandbox(void)
{
	static const char *const needs[] = {
		"exit_group",	"exit",	    "rt_sigreturn", "rt_sigprocmask",
#ifdef SANITIZED
		"sigaltstack",	"gettid",   "tgkill",	    "writev",
		"rt_sigaction", "open",	    "futex",	    "sched_yield",
		"prctl",	"mprotect",
#endif
	};
	/* Any call outside the lists kills: the list must be complete. */
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
	size_t i;
	int rc = -1;

	if (!ctx)
		return -1;
	for (i = 0; i < sizeof(needs) / sizeof(needs[0]); i++) {
		int nr = seccomp_syscall_resolve_name(needs[i]);

		if (nr != __NR_SCMP_ERROR &&
		    seccomp_rule_add(ctx, SCMP_ACT_ALLOW, nr, 0) < 0)
			goto out;
	}
	if (cprxfer_seccomp_allow(ctx, CPRXFER_MODE_RESTART) < 0) {
		fprintf(stderr, "cprxfer_seccomp_allow: %s\n",
			cprxfer_errmsg());
		goto out;
	}
	rc = seccomp_load(ctx) < 0 ? -1 : 0;
out:
	seccomp_release(ctx);
	return rc;
}
#endif

static ino_t ino(int fd)
{
	struct stat s;

	return fstat(fd, &s) == 0 ? s.st_ino : 0;
}

/*
 * In the child: the store's fds at 3.., as systemd passes them; it
 * talks to the parent's manager thread through NOTIFY_SOCKET.
 */
static int next_instance(void *arg)
{
	struct next *x = arg;
	int hi[MAXFD], i, fd, kfd;
	cprxfer_state *st;
	cprxfer_sd *sd;
	struct cprxfer_ram ram;
	char num[16];
	uint64_t v;

	cprxfer_sd_close(x->sd);
	cprxfer_state_free(x->st);
	free(x->dir);
	for (i = 0; i < x->n; i++)
		hi[i] = fcntl(x->fd[i], F_DUPFD_CLOEXEC, 500);
	for (i = 0; i < x->n; i++) {
		if (dup2(hi[i], 3 + i) < 0)
			return 10;
		close(hi[i]);
	}
	snprintf(num, sizeof(num), "%d", x->n);
	setenv("LISTEN_FDS", num, 1);
	setenv("LISTEN_FDNAMES", x->names, 1);
	snprintf(num, sizeof(num), "%d", (int)getpid());
	setenv("LISTEN_PID", num, 1);
#ifdef HAVE_SECCOMP
	if (x->sandboxed && sandbox() < 0)
		return 9;
#endif

	if (cprxfer_sd_open(&sd) < 0)
		return 11;
	if (cprxfer_sd_load(sd, NULL, &st) < 0) {
		fprintf(stderr, "load: %s\n", cprxfer_errmsg());
		return 12;
	}
	if (cprxfer_get_u64(st, "gen", &v) < 0 || v != 7)
		return 13;
	/* Both socket records: found by identity (the store had it). */
	if (cprxfer_get_fd(st, "listen socket", &fd) < 0 ||
	    ino(fd) != x->sock_ino)
		return 14;
	if (cprxfer_get_fd(st, "the same socket again", &fd) < 0 ||
	    ino(fd) != x->sock_ino)
		return 15;
	if (cprxfer_ram_get(st, "guest RAM", 0, &ram) < 0 ||
	    ino(ram.fd) != x->ram_ino || strcmp(ram.addr, "guest pages"))
		return 16;
	if (cprxfer_sd_kept(sd, "listen socket", &kfd) < 0 ||
	    ino(kfd) != x->sock_ino)
		return 17;
	if (cprxfer_sd_kept(sd, "listen socket", &fd) != -ENOENT)
		return 18;
	cprxfer_state_free(st);
	/* Nothing left to load. */
	if (cprxfer_sd_load(sd, NULL, &st) != -ENOENT)
		return 19;
	cprxfer_ram_release(&ram);
	close(kfd);
	cprxfer_sd_close(sd);
	return 0;
}

static void test_save_then_load_in_the_next_instance(void **unused)
{
	char *dir = tu_tmpdir();
	struct manager m;
	struct next x = { 0 };
	cprxfer_sd *sd;
	cprxfer_state *st = cprxfer_state_new();
	struct cprxfer_ram ram;
	int lfd, i;

	manager_start(&m, dir);
	assert_int_equal(cprxfer_sd_open(&sd), 0);
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_int_equal(cprxfer_ram_create("ram", 1 << 20, 0, &ram), 0);
	strcpy(ram.addr, "guest pages");

	/* Kept from the start; FDSTORE unset here: size unknown. */
	assert_int_equal(cprxfer_sd_keep(sd, "listen socket", lfd), 0);
	assert_int_equal(cprxfer_sd_keep(sd, "listen socket", lfd), 0);
	assert_int_equal(cprxfer_sd_check(sd, 3), 0);
	assert_int_equal(stored(&m, "cxk.listen%20socket"), 1);

	assert_int_equal(cprxfer_put_u64(st, "gen", 7), 0);
	assert_int_equal(cprxfer_put_fd(st, "listen socket", lfd), 0);
	assert_int_equal(cprxfer_put_fd(st, "the same socket again", lfd), 0);
	assert_int_equal(cprxfer_ram_put(st, "guest RAM", &ram), 0);
	assert_int_equal(cprxfer_sd_save(sd, st, CPRXFER_MODE_RESTART), 0);
	/* The RAM was stored; both socket records were dropped as dups. */
	assert_int_equal(stored(&m, "cxs."), 1);
	assert_int_equal(stored(&m, "cxm."), 1);
	assert_int_equal(stored(&m, "cxf."), 1);
	assert_int_equal(stored(&m, "cxk."), 1);
	assert_true(m.barriers >= 3);
	assert_true(fcntl(lfd, F_GETFD) >= 0); /* still ours */

	pthread_mutex_lock(&m.lock);
	x.n = m.n;
	for (i = 0; i < m.n; i++) {
		x.fd[i] = m.fd[i];
		strcat(x.names, i ? ":" : "");
		strcat(x.names, m.name[i]);
	}
	pthread_mutex_unlock(&m.lock);
	x.ram_ino = ino(ram.fd);
	x.sock_ino = ino(lfd);
	x.sd = sd;
	x.st = st;
	x.dir = dir;
	assert_int_equal(tu_wait(tu_fork(next_instance, &x)), 0);
	/* The child consumed the save; the kept socket stays stored. */
	assert_int_equal(stored(&m, "cxs."), 0);
	assert_int_equal(stored(&m, "cxm."), 0);
	assert_int_equal(stored(&m, "cxf."), 0);
	assert_int_equal(stored(&m, "cxk."), 1);

	cprxfer_sd_close(sd);
	cprxfer_state_free(st);
	cprxfer_ram_release(&ram);
	close(lfd);
	manager_stop(&m);
	tu_rmdir(dir);
	free(dir);
}

#ifdef HAVE_SECCOMP
struct saver {
	int lfd;
	struct cprxfer_ram *ram;
};

/* The saving instance, sandboxed: keep, check, save. */
static int sandboxed_save(void *arg)
{
	struct saver *v = arg;
	cprxfer_state *st;
	cprxfer_sd *sd;

	if (sandbox() < 0)
		return 1;
	if (cprxfer_sd_open(&sd) < 0)
		return 2;
	st = cprxfer_state_new();
	if (!st || cprxfer_sd_keep(sd, "listen socket", v->lfd) < 0 ||
	    cprxfer_sd_check(sd, 3) < 0 || cprxfer_put_u64(st, "gen", 7) < 0 ||
	    cprxfer_put_fd(st, "listen socket", v->lfd) < 0 ||
	    cprxfer_put_fd(st, "the same socket again", v->lfd) < 0 ||
	    cprxfer_ram_put(st, "guest RAM", v->ram) < 0)
		return 3;
	if (cprxfer_sd_save(sd, st, CPRXFER_MODE_RESTART) < 0) {
		fprintf(stderr, "save: %s\n", cprxfer_errmsg());
		return 4;
	}
	cprxfer_state_free(st);
	cprxfer_sd_close(sd);
	return 0;
}
#endif

/*
 * Restart mode's save (keep, check with $FDSTORE, BARRIER=1, pushes) and
 * load (LISTEN_FDS, the stream, removal from the store) each in a child
 * under a default-deny filter with cprxfer_seccomp_allow's restart list.
 */
static void test_restart_mode_runs_under_the_seccomp_allowlist(void **unused)
{
#ifdef HAVE_SECCOMP
	char *dir = tu_tmpdir();
	struct manager m;
	struct next x = { 0 };
	struct cprxfer_ram ram;
	struct saver v;
	int i;

	(void)unused;
	if (getenv("VALGRIND_LAUNCHER") || getenv("CPRXFER_UNDER_VALGRIND")) {
		/* valgrind's own syscalls would meet the filter. */
		fprintf(stderr, "skip: seccomp filters under valgrind\n");
		free(dir);
		skip();
	}
	manager_start(&m, dir);
	setenv("FDSTORE", "16", 1); /* systemd >= 254: no D-Bus asked */
	v.lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(v.lfd >= 0);
	assert_int_equal(cprxfer_ram_create("ram", 1 << 20, 0, &ram), 0);
	strcpy(ram.addr, "guest pages");
	v.ram = &ram;
	assert_int_equal(tu_wait(tu_fork(sandboxed_save, &v)), 0);
	unsetenv("FDSTORE");
	assert_int_equal(stored(&m, "cxs."), 1);
	assert_int_equal(stored(&m, "cxm."), 1);
	assert_int_equal(stored(&m, "cxf."), 1);
	assert_int_equal(stored(&m, "cxk."), 1);
	assert_true(m.barriers >= 3);

	pthread_mutex_lock(&m.lock);
	x.n = m.n;
	for (i = 0; i < m.n; i++) {
		x.fd[i] = m.fd[i];
		strcat(x.names, i ? ":" : "");
		strcat(x.names, m.name[i]);
	}
	pthread_mutex_unlock(&m.lock);
	x.ram_ino = ino(ram.fd);
	x.sock_ino = ino(v.lfd);
	x.dir = dir;
	x.sandboxed = true;
	assert_int_equal(tu_wait(tu_fork(next_instance, &x)), 0);
	assert_int_equal(stored(&m, "cxs."), 0);
	assert_int_equal(stored(&m, "cxm."), 0);
	assert_int_equal(stored(&m, "cxf."), 0);
	assert_int_equal(stored(&m, "cxk."), 1);

	cprxfer_ram_release(&ram);
	close(v.lfd);
	manager_stop(&m);
	tu_rmdir(dir);
	free(dir);
#else
	(void)unused;
	skip();
#endif
}

static void test_fdnames_escape_any_byte(void **unused)
{
	char *dir = tu_tmpdir();
	struct manager m;
	cprxfer_sd *sd;
	cprxfer_state *st = cprxfer_state_new();
	int efd = eventfd(3, EFD_CLOEXEC), i, found = 0;

	manager_start(&m, dir);
	assert_int_equal(cprxfer_sd_open(&sd), 0);
	assert_int_equal(cprxfer_put_fd(st, "efd \x01\xff:%", efd), 0);
	assert_int_equal(cprxfer_sd_save(sd, st, CPRXFER_MODE_RESTART), 0);
	pthread_mutex_lock(&m.lock);
	for (i = 0; i < m.n; i++) {
		const char *c;

		for (c = m.name[i]; *c; c++) /* systemd's FDNAME rules */
			assert_true(*c > 0x20 && *c < 0x7f && *c != ':');
		assert_true(strlen(m.name[i]) <= 255);
		found += strstr(m.name[i], ".0.efd%20%01%FF%3A%25") != NULL;
	}
	pthread_mutex_unlock(&m.lock);
	assert_int_equal(found, 1);
	cprxfer_sd_close(sd);
	cprxfer_state_free(st);
	close(efd);
	manager_stop(&m);
	tu_rmdir(dir);
	free(dir);
}

static void test_errors_before_anything_is_pushed(void **unused)
{
	char *dir = tu_tmpdir(), longname[300];
	cprxfer_blockers *b = cprxfer_blockers_new();
	cprxfer_state *st = cprxfer_state_new();
	struct manager m;
	cprxfer_sd *sd;
	int efd = eventfd(0, EFD_CLOEXEC), fd;

	assert_int_equal(cprxfer_sd_open(&sd), 0);
	/* No service manager. */
	unsetenv("NOTIFY_SOCKET");
	assert_int_equal(cprxfer_sd_check(sd, 1), -ENOTCONN);
	assert_int_equal(cprxfer_sd_save(sd, st, CPRXFER_MODE_RESTART),
			 -ENOTCONN);
	assert_int_equal(cprxfer_sd_load(sd, NULL, &st), -ENOENT);

	manager_start(&m, dir);
	assert_int_equal(cprxfer_put_fd(st, "efd", efd), 0);
	/* $FDSTORE (systemd >= 254) too small: refused before any push. */
	setenv("FDSTORE", "2", 1);
	assert_int_equal(cprxfer_sd_check(sd, 1), -ENOSPC);
	assert_int_equal(cprxfer_sd_save(sd, st, CPRXFER_MODE_RESTART),
			 -ENOSPC);
	assert_non_null(strstr(cprxfer_errmsg(), "FileDescriptorStoreMax"));
	setenv("FDSTORE", "0", 1);
	assert_int_equal(cprxfer_sd_check(sd, 1), -ENOSPC);
	unsetenv("FDSTORE");
	assert_int_equal(m.pushes, 0);
	/* A blocker, and kexec mode with an eventfd: nothing pushed. */
	assert_int_equal(cprxfer_blocker_add(b, CPRXFER_MODE_RESTART,
					     "busy for the test", NULL),
			 0);
	assert_int_equal(cprxfer_state_set_blockers(st, b), 0);
	assert_int_equal(cprxfer_sd_save(sd, st, CPRXFER_MODE_RESTART), -EBUSY);
	assert_int_equal(cprxfer_state_set_blockers(st, NULL), 0);
	assert_int_equal(cprxfer_sd_save(sd, st, CPRXFER_MODE_KEXEC),
			 -EOPNOTSUPP);
	assert_int_equal(cprxfer_sd_save(sd, st, CPRXFER_MODE_FILE), -EINVAL);
	assert_int_equal(m.pushes, 0);
	/* Names. */
	memset(longname, ':', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	assert_int_equal(cprxfer_sd_keep(sd, longname, efd), -ENAMETOOLONG);
	assert_int_equal(cprxfer_sd_keep(sd, "", efd), -EINVAL);
	assert_int_equal(cprxfer_sd_keep(sd, "x", -1), -EBADF);
	assert_int_equal(cprxfer_sd_kept(sd, "never kept", &fd), -ENOENT);
	assert_int_equal(cprxfer_sd_open(NULL), -EINVAL);
	assert_int_equal(m.pushes, 0);
	cprxfer_sd_close(NULL);

	cprxfer_sd_close(sd);
	cprxfer_state_free(st);
	cprxfer_blockers_free(b);
	close(efd);
	manager_stop(&m);
	tu_rmdir(dir);
	free(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_errors_before_anything_is_pushed),
		tu_test(test_save_then_load_in_the_next_instance),
		tu_test(test_fdnames_escape_any_byte),
		tu_test(test_restart_mode_runs_under_the_seccomp_allowlist),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
