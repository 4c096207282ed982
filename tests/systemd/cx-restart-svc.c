/* SPDX-License-Identifier: MIT */
/*
 * cx-restart-svc: the test service of tests/systemd/run-systemd-test,
 * run by a real systemd inside a throwaway container.
 *
 *   cx-restart-svc serve    a Type=notify service in restart mode
 *   cx-restart-svc trivial  READY=1 at once, exit on SIGTERM (systemd's
 *                           own restart time, for comparison)
 *   cx-restart-svc client   connect to /run/cxsvc.sock, print its line
 *   cx-restart-svc check    log what cprxfer_sd_check says of the store
 *                           (for 2 state fds), READY=1, exit on SIGTERM
 *
 * serve: at first start it makes a listening socket and a 4 MiB memfd
 * RAM region and keeps both in the fd store (cprxfer_sd_keep), so that a
 * crash brings them back. A timerfd bumps a tick counter in the RAM
 * every 2 ms. On SIGTERM it saves a state (generation, the tick count,
 * the socket, the RAM) with cprxfer_sd_save and exits; the next instance
 * loads it with cprxfer_sd_load. If /run/cxsvc.block exists at SIGTERM,
 * a blocker is registered first and the save must be refused.
 *
 * Every event is one line in $CXSVC_LOG: "event=NAME mono=<s> k=v ...".
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>
#include <cprxfer/systemd.h>
#include <systemd/sd-daemon.h>

#define SOCK_PATH  "/run/cxsvc.sock"
#define BLOCK_PATH "/run/cxsvc.block"
#define RAM_SIZE   (4u << 20)
#define RAM_MAGIC  0x637873766d656d31ull /* "cxsvmem1" */

struct ram_head {
	uint64_t magic;
	uint64_t gen;	/* bumped by every start */
	uint64_t ticks; /* bumped every 2 ms while running */
};

static const char *log_path;

static double mono(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void ev(const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	int n, fd;

	n = snprintf(line, sizeof(line), "mono=%.6f pid=%d ", mono(),
		     (int)getpid());
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd >= 0) {
		if (write(fd, line, n) != n)
			n = 0;
		close(fd);
	}
}

static uint64_t ino_of(int fd)
{
	struct stat s;

	return fstat(fd, &s) == 0 ? (uint64_t)s.st_ino : 0;
}

/* The physical frame behind addr (0 if the kernel does not tell). */
static uint64_t pfn_of(const void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	if (pread(fd, &e, 8, (off_t)((uintptr_t)addr / 4096) * 8) != 8)
		e = 0;
	close(fd);
	return (e >> 63) ? e & ((1ull << 55) - 1) : 0;
}

static int make_listener(void)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	strcpy(a.sun_path, SOCK_PATH);
	unlink(SOCK_PATH);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(fd, 64) < 0)
		return -1;
	return fd;
}

static int client(void)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char buf[256];
	ssize_t n;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	strcpy(a.sun_path, SOCK_PATH);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
		perror("connect " SOCK_PATH);
		return 1;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	if (n <= 0)
		return 1;
	buf[n] = 0;
	fputs(buf, stdout);
	return 0;
}

static int signals(void)
{
	sigset_t m;

	sigemptyset(&m);
	sigaddset(&m, SIGTERM);
	sigaddset(&m, SIGINT);
	sigprocmask(SIG_BLOCK, &m, NULL);
	return signalfd(-1, &m, SFD_CLOEXEC);
}

static int trivial(void)
{
	struct signalfd_siginfo si;
	int sfd = signals();

	sd_notify(0, "READY=1");
	ev("event=READY svc=trivial");
	if (read(sfd, &si, sizeof(si)) != sizeof(si))
		return 1;
	ev("event=FREEZE svc=trivial");
	return 0;
}

static int check_only(void)
{
	struct signalfd_siginfo si;
	int sfd = signals(), rc;
	cprxfer_sd *sd;

	if (cprxfer_sd_open(&sd) < 0)
		return 1;
	rc = cprxfer_sd_check(sd, 2);
	ev("event=CHECK rc=%d err=\"%s\"", rc, rc < 0 ? cprxfer_errmsg() : "");
	cprxfer_sd_close(sd);
	sd_notify(0, "READY=1");
	return read(sfd, &si, sizeof(si)) == sizeof(si) ? 0 : 1;
}

/* Save on SIGTERM: the blackout starts here. */
static int save(cprxfer_sd *sd, int lfd, const struct cprxfer_ram *ram,
		double t_freeze)
{
	struct ram_head *h = ram->addr;
	cprxfer_blockers *b = cprxfer_blockers_new();
	cprxfer_state *st = cprxfer_state_new();
	cprxfer_report *r = NULL;
	int rc, blocking;

	if (!b || !st)
		return -ENOMEM;
	if (access(BLOCK_PATH, F_OK) == 0)
		cprxfer_blocker_add(b, CPRXFER_MODE_RESTART,
				    "test blocker: " BLOCK_PATH " exists",
				    NULL);
	cprxfer_state_set_blockers(st, b);
	rc = cprxfer_put_u64(st, "gen", h->gen);
	if (rc == 0)
		rc = cprxfer_put_u64(st, "ticks at save", h->ticks);
	if (rc == 0)
		rc = cprxfer_put_str(st, "note: names of any bytes \xc3\xa9:/",
				     "kept by systemd");
	if (rc == 0)
		rc = cprxfer_put_fd(st, "listen", lfd);
	if (rc == 0)
		rc = cprxfer_ram_put(st, "ram", ram);
	blocking = cprxfer_preflight(st, CPRXFER_MODE_RESTART, &r);
	if (rc == 0)
		rc = cprxfer_sd_save(sd, st, CPRXFER_MODE_RESTART);
	ev("event=SAVE rc=%d gen=%" PRIu64 " ticks=%" PRIu64
	   " preflight_blocking=%d save_ms=%.3f err=\"%s\"",
	   rc, h->gen, h->ticks, blocking, (mono() - t_freeze) * 1000,
	   rc < 0 ? cprxfer_errmsg() : "");
	cprxfer_report_free(r);
	cprxfer_state_free(st);
	cprxfer_blockers_free(b);
	return rc;
}

static int serve(void)
{
	double t_main = mono(), t_freeze, t_live;
	const char *names = getenv("LISTEN_FDNAMES");
	char how[16] = "fresh", check[300];
	struct cprxfer_ram ram = { NULL, 0, -1 };
	struct itimerspec its = { { 0, 2000000 }, { 0, 2000000 } };
	struct ram_head *h;
	cprxfer_state *st = NULL;
	cprxfer_sd *sd = NULL;
	uint64_t saved_ticks = 0, prev_gen = 0;
	int rc, lfd = -1, sfd = signals(), tfd;

	snprintf(check, sizeof(check), "%s", names ? names : "");
	ev("event=START names=%s", check);
	rc = cprxfer_sd_open(&sd);
	if (rc < 0) {
		ev("event=ERROR what=open err=\"%s\"", cprxfer_errmsg());
		return 1;
	}
	rc = cprxfer_sd_load(sd, NULL, &st);
	if (rc == 0) {
		strcpy(how, "restored");
		if (cprxfer_get_u64(st, "gen", &prev_gen) < 0 ||
		    cprxfer_get_u64(st, "ticks at save", &saved_ticks) < 0 ||
		    (lfd = cprxfer_take_fd(st, "listen")) < 0 ||
		    cprxfer_ram_get(st, "ram", 0, &ram) < 0) {
			ev("event=ERROR what=state err=\"%s\"",
			   cprxfer_errmsg());
			return 1;
		}
		cprxfer_state_free(st);
	} else if (rc == -ENOENT) {
		int kfd = -1;

		if (cprxfer_sd_kept(sd, "listen", &lfd) == 0 &&
		    cprxfer_sd_kept(sd, "guest RAM", &kfd) == 0) {
			strcpy(how, "kept");
			ram.fd = kfd;
			ram.size = RAM_SIZE;
			ram.addr = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE,
					MAP_SHARED, kfd, 0);
		} else {
			lfd = make_listener();
			if (cprxfer_ram_create("cxsvc-ram", RAM_SIZE, 0, &ram) <
			    0)
				ram.addr = MAP_FAILED;
		}
	} else {
		ev("event=ERROR what=load rc=%d err=\"%s\"", rc,
		   cprxfer_errmsg());
		return 1;
	}
	if (lfd < 0 || ram.addr == MAP_FAILED || !ram.addr) {
		ev("event=ERROR what=setup how=%s", how);
		return 1;
	}
	h = ram.addr;
	if (h->magic != RAM_MAGIC) {
		memset(h, 0, sizeof(*h));
		h->magic = RAM_MAGIC;
	}
	h->gen++;
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	timerfd_settime(tfd, 0, &its, NULL);
	sd_notifyf(0, "READY=1\nSTATUS=gen %" PRIu64 " (%s)", h->gen, how);
	t_live = mono(); /* the blackout ends: the rest is off its path */
	/* Long-lived parts stay in the store: a crash brings them back. */
	if (cprxfer_sd_keep(sd, "listen", lfd) < 0 ||
	    cprxfer_sd_keep(sd, "guest RAM", ram.fd) < 0)
		ev("event=ERROR what=keep err=\"%s\"", cprxfer_errmsg());
	/* Will the next save fit? (Type=notify: READY=1 already sent.) */
	rc = cprxfer_sd_check(sd, 2);
	snprintf(check, sizeof(check), "%d:%s", rc,
		 rc < 0 ? cprxfer_errmsg() : "ok");
	for (char *p = check; *p; p++)
		if (*p == ' ' || *p == '"')
			*p = '_';
	ev("event=READY svc=serve live=%.6f how=%s gen=%" PRIu64
	   " prev_gen=%" PRIu64 " ticks=%" PRIu64 " saved_ticks=%" PRIu64
	   " ram_ino=%" PRIu64 " listen_ino=%" PRIu64 " pfn=%" PRIu64
	   " check=%s t_main=%.6f start_ms=%.3f",
	   t_live, how, h->gen, prev_gen, h->ticks, saved_ticks, ino_of(ram.fd),
	   ino_of(lfd), pfn_of(ram.addr), check, t_main,
	   (t_live - t_main) * 1000);

	for (;;) {
		struct pollfd p[3] = { { sfd, POLLIN, 0 },
				       { tfd, POLLIN, 0 },
				       { lfd, POLLIN, 0 } };
		uint64_t x;

		if (poll(p, 3, -1) < 0)
			continue;
		if (p[1].revents && read(tfd, &x, 8) == 8)
			h->ticks += x;
		if (p[2].revents) {
			int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
			char line[128];
			int n;

			if (c >= 0) {
				n = snprintf(line, sizeof(line),
					     "gen=%" PRIu64 " ticks=%" PRIu64
					     " pid=%d\n",
					     h->gen, h->ticks, (int)getpid());
				if (write(c, line, n) != n)
					ev("event=ERROR what=reply");
				close(c);
			}
		}
		if (p[0].revents)
			break;
	}
	t_freeze = mono();
	ev("event=FREEZE svc=serve gen=%" PRIu64 " ticks=%" PRIu64, h->gen,
	   h->ticks);
	rc = save(sd, lfd, &ram, t_freeze);
	cprxfer_sd_close(sd);
	/* Saved or refused (logged): either way this instance stops. */
	return 0;
}

int main(int argc, char **argv)
{
	log_path = getenv("CXSVC_LOG");
	if (!log_path)
		log_path = "/dev/null";
	if (argc > 1 && !strcmp(argv[1], "trivial"))
		return trivial();
	if (argc > 1 && !strcmp(argv[1], "check"))
		return check_only();
	if (argc > 1 && !strcmp(argv[1], "client"))
		return client();
	if (argc > 1 && !strcmp(argv[1], "serve"))
		return serve();
	fprintf(stderr, "usage: %s serve|trivial|client|check\n", argv[0]);
	return 2;
}
