/*
 * demo.c - "demo-vmm --handoff" (see demo.h).
 *
 * The demo drives real demo-vmm processes exactly as an operator would,
 * through the control socket: it starts the first VMM (the guest's
 * console is this terminal), then for each mode
 *   transfer: starts "demo-vmm --incoming P" and sends "handoff P"; the
 *             new VMM takes over the control socket as well;
 *   exec:     sends "handoff-exec"; the VMM execs itself, same PID;
 *   file:     sends "save F"; once that VMM has exited, starts
 *             "demo-vmm --restore F".
 * After each it asks the VMM now running the guest for its "status":
 * the blackout and its breakdown, the pause the guest measured, the
 * counters, the page-frame proof.  The guest RAM lives in /dev/shm for
 * the whole chain, because file mode reopens it by path (a memfd could
 * not be); with --mode transfer|exec alone it is a memfd.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "demo.h"

#define REPLY_MAX 4096

struct demo {
	const struct vmm_opts *o;
	const struct demo_opts *d;
	char dir[64], ctl[128], in[128], file[128], ram[128];
	bool file_ram;
	pid_t cur;	    /* the VMM holding the guest */
	enum vmm_warm warm; /* of the next VMM started */
	bool touch;	    /* measure the warm-up */
	char st[REPLY_MAX]; /* last status reply */
	double steady_ms, after_ms;
};

static void msleep(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Value of " key=" in a status reply, or def. */
static double kv(const char *reply, const char *key, double def)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), " %s=", key);
	p = strstr(reply, pat);
	return p ? strtod(p + strlen(pat), NULL) : def;
}

static const char *warm_arg(enum vmm_warm w)
{
	return w == WARM_NONE	  ? "none"
	       : w == WARM_HELPER ? "helper"
				  : "populate";
}

/*
 * Start /proc/self/exe with args; with ready, wait until it reports
 * its guest running (--ready-fd).
 */
static int spawn(struct demo *dm, const char *const *args, bool ready,
		 pid_t *out, struct vmm_err *err)
{
	const char *argv[32];
	char fdarg[16], c;
	int p[2] = { -1, -1 }, n = 0, r;
	struct pollfd pfd;
	char mem[32], cpus[16];
	pid_t pid;

	snprintf(mem, sizeof(mem), "%" PRIu64 "M", dm->o->mem >> 20);
	snprintf(cpus, sizeof(cpus), "%u", dm->o->cpus);
	argv[n++] = "demo-vmm";
	argv[n++] = "--quiet";
	argv[n++] = "--mem";
	argv[n++] = mem;
	argv[n++] = "--cpus";
	argv[n++] = cpus;
	argv[n++] = "--warm";
	argv[n++] = warm_arg(dm->warm);
	if (dm->o->tag) {
		argv[n++] = "--tag";
		argv[n++] = dm->o->tag;
	}
	if (ready) {
		if (pipe2(p, O_CLOEXEC) < 0)
			return vmm_errno(err, "pipe2");
		snprintf(fdarg, sizeof(fdarg), "%d", p[1]);
		argv[n++] = "--ready-fd";
		argv[n++] = fdarg;
	}
	while (*args && n < 30)
		argv[n++] = *args++;
	argv[n] = NULL;
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		r = vmm_errno(err, "fork");
		goto out;
	}
	if (pid == 0) {
		if (p[1] >= 0)
			fcntl(p[1], F_SETFD, 0);
		execv("/proc/self/exe", (char *const *)argv);
		_exit(127);
	}
	*out = pid;
	r = 0;
	if (!ready)
		goto out;
	close(p[1]);
	p[1] = -1;
	pfd.fd = p[0];
	pfd.events = POLLIN;
	if (poll(&pfd, 1, 30000) != 1 || read(p[0], &c, 1) != 1)
		r = vmm_errf(err, -EIO, "demo-vmm (pid %d) did not start",
			     (int)pid);
out:
	if (p[0] >= 0)
		close(p[0]);
	if (p[1] >= 0)
		close(p[1]);
	return r;
}

static int reap(pid_t pid, const char *who, struct vmm_err *err)
{
	int st;

	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return vmm_errno(err, "waitpid %s", who);
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		return vmm_errf(err, -EIO,
				"%s (pid %d) exited with status 0x%x", who,
				(int)pid, st);
	return 0;
}

static int request(struct demo *dm, const char *cmd, char *reply,
		   struct vmm_err *err)
{
	return control_request(dm->ctl, cmd, 600000, reply, REPLY_MAX, err);
}

static int touch(struct demo *dm, double *ms, struct vmm_err *err)
{
	char reply[REPLY_MAX];
	int r = request(dm, "touch read", reply, err);

	if (r < 0)
		return r;
	*ms = kv(reply, "us", -1000) / 1000.0;
	return 0;
}

static int handoff_one(struct demo *dm, const char *mode, struct vmm_err *err)
{
	char reply[REPLY_MAX], cmd[256];
	pid_t old = dm->cur, pid;
	int r;

	if (!strcmp(mode, "transfer")) {
		const char *args[] = { "--incoming", dm->in, NULL };

		r = spawn(dm, args, false, &pid, err);
		if (r < 0)
			return r;
		snprintf(cmd, sizeof(cmd), "handoff %s", dm->in);
		r = request(dm, cmd, reply, err);
		if (r < 0) {
			kill(pid, SIGKILL);
			waitpid(pid, NULL, 0);
			return r;
		}
		dm->cur = pid;
		return reap(old, "the old demo-vmm", err);
	}
	if (!strcmp(mode, "exec"))
		return request(dm, "handoff-exec", reply, err);
	snprintf(cmd, sizeof(cmd), "save %s", dm->file);
	r = request(dm, cmd, reply, err);
	if (r >= 0)
		r = reap(old, "the saving demo-vmm", err);
	dm->cur = -1;
	if (r >= 0) {
		const char *args[] = { "--restore", dm->file, "--control",
				       dm->ctl, NULL };

		r = spawn(dm, args, true, &dm->cur, err);
	}
	return r;
}

/* Status until the new VMM has found the guest's pause. */
static int settle(struct demo *dm, struct vmm_err *err)
{
	for (int i = 0; i < 400; i++) {
		int r = request(dm, "status", dm->st, err);

		if (r < 0)
			return r;
		if (kv(dm->st, "gap_done", 0) == 1)
			return 0;
		msleep(10);
	}
	return vmm_errf(err, -ETIMEDOUT, "no handoff report: %s", dm->st);
}

static int check_and_print(struct demo *dm, const char *mode, unsigned int k,
			   unsigned int nmodes, pid_t from, struct vmm_err *err)
{
	const char *s = dm->st;
	char key[32];

	printf("\n=== handoff %u/%u: %s mode, pid %d -> pid %d ===\n", k,
	       nmodes, mode, (int)from, (int)kv(s, "pid", -1));
	printf("  blackout     %6.0f us  (stop %.0f, save %.0f, %s %.0f, restore %.0f, to KVM_RUN %.0f)\n",
	       kv(s, "blackout_us", -1), kv(s, "stop_us", -1),
	       kv(s, "save_us", -1),
	       !strcmp(mode, "transfer") ? "send"
	       : !strcmp(mode, "exec")	 ? "exec"
					 : "file+start",
	       kv(s, "send_us", -1), kv(s, "restore_us", -1),
	       kv(s, "run_us", -1));
	if (strcmp(mode, "transfer"))
		printf("               (the new image's main() ran %.0f us after the state was saved)\n",
		       kv(s, "main_us", -1));
	printf("  guest pause  %6.0f us  (as the guest measured it; of it, before the stop / after KVM_RUN:",
	       kv(s, "gap_us", -1));
	for (unsigned int i = 0; i < dm->o->cpus; i++) {
		double g, pre, post;

		snprintf(key, sizeof(key), "gap%u", i);
		g = kv(s, key, -1);
		snprintf(key, sizeof(key), "gappre%u", i);
		pre = kv(s, key, -1);
		snprintf(key, sizeof(key), "gappost%u", i);
		post = kv(s, key, -1);
		if (g < 0)
			printf("%s cpu%u n/a (%s)", i ? ";" : "", i,
			       g == -2 ? "not recorded: it stopped while printing its tick line, which the guest does not time"
				       : "no iteration since the handoff");
		else
			printf("%s cpu%u %.0f us (%.0f / %.0f)", i ? ";" : "",
			       i, g, pre, post);
	}
	printf(")\n  counters    ");
	for (unsigned int i = 0; i < dm->o->cpus; i++) {
		double a, b;

		snprintf(key, sizeof(key), "stopc%u", i);
		a = kv(s, key, -1);
		snprintf(key, sizeof(key), "c%u", i);
		b = kv(s, key, -1);
		printf("%s cpu%u %.0f at the stop -> %.0f now", i ? ";" : "", i,
		       a, b);
		if (b <= a)
			return vmm_errf(err, -EIO,
					"%s: cpu%u counter did not continue",
					mode, i);
	}
	printf("\n  RAM          %" PRIu64
	       " MiB in place: %.0f/%.0f sampled pages on the same page frames; 0 bytes of RAM copied (%.0f bytes of vCPU/device state)\n",
	       dm->o->mem >> 20, kv(s, "pfn_same", -1), kv(s, "pfn_total", -1),
	       kv(s, "state_bytes", -1));
	if (!strstr(s, " guest=ok "))
		return vmm_errf(err, -EIO, "%s: the guest reports an error: %s",
				mode, s);
	if (kv(s, "pfn_same", -1) != kv(s, "pfn_total", -2))
		return vmm_errf(err, -EIO, "%s: RAM moved: %s", mode, s);
	if (dm->touch)
		printf("  warm-up      guest touched all its RAM in %.1f ms after the handoff, %.1f ms in steady state before (--warm %s)\n",
		       dm->after_ms, dm->steady_ms, warm_arg(dm->warm));
	fflush(stdout);
	return 0;
}

/* One JSON object per line, one line per handoff. */
static int write_json(struct demo *dm, const char *mode, bool first,
		      struct vmm_err *err)
{
	const char *s = dm->st;
	FILE *f = fopen(dm->d->json, first ? "we" : "ae");

	if (!f)
		return vmm_errno(err, "open %s", dm->d->json);
	fprintf(f,
		"{\"mode\": \"%s\", \"ram_mib\": %" PRIu64
		", \"cpus\": %u, \"warm\": \"%s\", \"blackout_us\": %.0f, \"guest_gap_us\": %.0f, \"guest_gap_pre_us\": %.0f, \"guest_gap_post_us\": %.0f, \"stop_us\": %.0f, \"save_us\": %.0f, \"send_us\": %.0f, \"restore_us\": %.0f, \"run_us\": %.0f, \"prepare_us\": %.0f, \"state_bytes\": %.0f, \"ram_bytes_copied\": 0, \"pfn_same\": %.0f, \"pfn_total\": %.0f",
		mode, dm->o->mem >> 20, dm->o->cpus, warm_arg(dm->warm),
		kv(s, "blackout_us", -1), kv(s, "gap_us", -1),
		kv(s, "gap_pre_us", -1), kv(s, "gap_post_us", -1),
		kv(s, "stop_us", -1), kv(s, "save_us", -1),
		kv(s, "send_us", -1), kv(s, "restore_us", -1),
		kv(s, "run_us", -1), kv(s, "prepare_us", -1),
		kv(s, "state_bytes", -1), kv(s, "pfn_same", -1),
		kv(s, "pfn_total", -1));
	if (dm->touch)
		fprintf(f,
			", \"warmup_after_ms\": %.1f, \"warmup_steady_ms\": %.1f",
			dm->after_ms, dm->steady_ms);
	fprintf(f, "}\n");
	if (fclose(f) != 0)
		return vmm_errno(err, "write %s", dm->d->json);
	return 0;
}

int demo_run(const struct vmm_opts *o, const struct demo_opts *d,
	     struct vmm_err *err)
{
	static const char *const all[] = { "transfer", "exec", "file" };
	const char *const *modes = d->mode ? &d->mode : all;
	unsigned int nmodes = d->mode ? 1 : 3;
	unsigned int repeat = d->repeat ? d->repeat : 1;
	struct demo dm = {
		.o = o,
		.d = d,
		.cur = -1,
		.warm = o->warm,
		.touch = d->warm_given && !d->no_touch,
	};
	char reply[REPLY_MAX];
	uint64_t t0 = vmm_now_ns();
	pid_t from;
	int r;

	if (access("/dev/kvm", R_OK | W_OK) < 0) {
		fprintf(stderr, "demo-vmm: skip: no usable /dev/kvm (%s)\n",
			strerror(errno));
		return 77;
	}
	snprintf(dm.dir, sizeof(dm.dir), "/tmp/demo-vmm.XXXXXX");
	if (!mkdtemp(dm.dir)) {
		vmm_errno(err, "mkdtemp");
		return 1;
	}
	snprintf(dm.ctl, sizeof(dm.ctl), "%s/control.sock", dm.dir);
	snprintf(dm.in, sizeof(dm.in), "%s/incoming.sock", dm.dir);
	snprintf(dm.file, sizeof(dm.file), "%s/guest.state", dm.dir);
	dm.file_ram = o->mem_path || !d->mode || !strcmp(d->mode, "file");
	if (o->mem_path)
		snprintf(dm.ram, sizeof(dm.ram), "%s", o->mem_path);
	else
		snprintf(dm.ram, sizeof(dm.ram), "/dev/shm/demo-vmm-%d.ram",
			 (int)getpid());

	printf("demo-vmm --handoff: a %u-vCPU guest with %" PRIu64
	       " MiB of RAM%s%s; its console follows.  Handoffs: ",
	       o->cpus, o->mem >> 20, dm.file_ram ? " in " : " in a memfd",
	       dm.file_ram ? dm.ram : "");
	for (unsigned int i = 0; i < nmodes; i++)
		printf("%s%s", i ? ", " : "", modes[i]);
	if (repeat > 1)
		printf(", %u times", repeat);
	printf(".\n\n");
	{
		/*
		 * Measuring the warm-up: the first VMM boots its guest with
		 * the RAM already mapped and warm (--boot-warm), so that the
		 * steady-state pass does not first wait for a cold one.
		 */
		const char *args[6] = { "--control", dm.ctl };
		int n = 2;

		if (dm.touch)
			args[n++] = "--boot-warm";
		if (dm.file_ram) {
			args[n++] = "--mem-path";
			args[n++] = dm.ram;
		}
		args[n] = NULL;
		r = spawn(&dm, args, true, &dm.cur, err);
	}
	if (r < 0)
		goto fail;
	msleep(d->json ? 400 : 1100);
	for (unsigned int n = 0; n < nmodes * repeat; n++) {
		unsigned int k = n / repeat;

		/*
		 * Steady state: a pass after one that touched every page in
		 * this VM (the boot's, or the last handoff's "after").
		 */
		if (d->nwarm)
			dm.warm = d->warm[n % d->nwarm];
		if (dm.touch) {
			double first;

			r = n ? 0 : touch(&dm, &first, err);
			if (r >= 0)
				r = touch(&dm, &dm.steady_ms, err);
			if (r < 0)
				goto fail;
		}
		from = dm.cur;
		r = handoff_one(&dm, modes[k], err);
		if (r >= 0 && dm.touch)
			r = touch(&dm, &dm.after_ms, err);
		if (r >= 0)
			r = settle(&dm, err);
		if (r >= 0)
			r = check_and_print(&dm, modes[k], n + 1,
					    nmodes * repeat, from, err);
		if (r >= 0 && d->json)
			r = write_json(&dm, modes[k], n == 0, err);
		if (r < 0)
			goto fail;
		msleep(d->json ? 100 : 700);
	}
	/* The guest still runs, healthy, after the last handoff. */
	r = request(&dm, "status", reply, err);
	if (r >= 0 && !strstr(reply, " guest=ok ")) {
		r = vmm_errf(err, -EIO, "guest error at the end: %s", reply);
	} else if (r >= 0) {
		for (unsigned int i = 0; i < o->cpus && r >= 0; i++) {
			char key[16];

			snprintf(key, sizeof(key), "c%u", i);
			if (kv(reply, key, -1) <= kv(dm.st, key, -1))
				r = vmm_errf(err, -EIO,
					     "cpu%u stopped advancing", i);
		}
	}
	if (r >= 0)
		r = request(&dm, "quit", reply, err);
	if (r >= 0)
		r = reap(dm.cur, "the last demo-vmm", err);
	dm.cur = -1;
	if (r < 0)
		goto fail;
	printf("\ndemo-vmm --handoff: PASS: the guest carried on through %u handoff%s in %.1f s, no error, no byte of RAM copied\n",
	       nmodes * repeat, nmodes * repeat > 1 ? "s" : "",
	       (vmm_now_ns() - t0) / 1e9);
	r = 0;
	goto out;
fail:
	r = 1;
	if (dm.cur > 0) {
		kill(dm.cur, SIGKILL);
		waitpid(dm.cur, NULL, 0);
	}
out:
	if (dm.file_ram && !o->mem_path)
		unlink(dm.ram);
	unlink(dm.file);
	unlink(dm.ctl);
	unlink(dm.in);
	rmdir(dm.dir);
	return r;
}
