/*
 * main.c - demo-vmm: a toy KVM VMM whose running guest survives a
 * handoff to a new VMM process, built on libcprxfer.
 *
 *   demo-vmm --handoff                  the demo: one guest handed on in
 *                                       transfer, exec and file mode
 *   demo-vmm [--mem 256M] [--cpus 2] [--mem-path FILE] --control PATH
 *                                       boot the built-in guest and serve
 *                                       the control socket
 *   demo-vmm --incoming PATH            wait for a guest on PATH
 *   demo-vmm --restore FILE [--control PATH]
 *                                       resume a guest saved in file mode
 *   demo-vmm --ctl PATH COMMAND...      send one control command
 *
 * See docs/demo-vmm.md.  Only this file prints; every other function
 * returns -errno and describes the failure in a struct vmm_err.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <x86intrin.h>

#include "demo.h"
#include "handoff.h"
#include "sandbox.h"

#ifdef DEMO_VMM_HAVE_SYSTEMD
#include <cprxfer/systemd.h>
#include <systemd/sd-daemon.h>
#endif

struct main_opts {
	struct vmm_opts vmm;
	struct demo_opts demo;
	bool handoff;
	const char *ctl;
	int ready_fd;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: demo-vmm --handoff [--mode transfer|exec|file] [--json FILE]\n                          [--mem SIZE] [--cpus N] [--warm STRATEGY]\n                          [--repeat N] [--no-touch]\n       demo-vmm [--mem SIZE] [--cpus N] [--mem-path FILE] [--control PATH]\n       demo-vmm --incoming PATH [--control PATH] [--warm STRATEGY]\n       demo-vmm --restore FILE [--control PATH]\n       demo-vmm --ctl PATH COMMAND [ARG]\n  --mem SIZE        guest RAM, e.g. 256M (default), 4G\n  --cpus N          vCPUs, 1..%d (default 2)\n  --mem-path FILE   file-backed RAM (e.g. under /dev/shm), for file mode\n  --control PATH    control socket: status, handoff PATH, handoff-exec,\n                    save FILE, touch [read|write], quit, help\n  --warm STRATEGY   how a new VMM warms the RAM: none, populate\n                    (default), helper, best\n  --timeout MS      bound on each handoff round (default 10000)\n  --sandbox         run under the seccomp sandbox, if built in\n  --systemd         a systemd service (demo-vmm.service): on SIGTERM the\n                    guest waits in the fd store for the next instance\n",
		GUEST_MAX_CPUS);
}

static int parse_warm(const char *s, enum vmm_warm *w)
{
	if (!strcmp(s, "none"))
		*w = WARM_NONE;
	else if (!strcmp(s, "populate"))
		*w = WARM_POPULATE;
	else if (!strcmp(s, "helper") || !strcmp(s, "best"))
		*w = WARM_HELPER; /* best measured on kvm_pvm */
	else
		return -EINVAL;
	return 0;
}

static int parse_options(int argc, char **argv, struct main_opts *m,
			 struct vmm_err *err)
{
	enum {
		O_MEM = 256,
		O_CPUS,
		O_MEM_PATH,
		O_CONTROL,
		O_INCOMING,
		O_RESTORE,
		O_HANDOFF,
		O_MODE,
		O_JSON,
		O_WARM,
		O_TAG,
		O_SANDBOX,
		O_CTL,
		O_EXEC_RESTORE,
		O_INJECT,
		O_TIMEOUT,
		O_QUIET,
		O_READY_FD,
		O_REPEAT,
		O_BOOT_WARM,
		O_NO_TOUCH,
		O_SYSTEMD,
		O_HELP
	};
	static const struct option longopts[] = {
		{ "mem", required_argument, NULL, O_MEM },
		{ "cpus", required_argument, NULL, O_CPUS },
		{ "mem-path", required_argument, NULL, O_MEM_PATH },
		{ "control", required_argument, NULL, O_CONTROL },
		{ "incoming", required_argument, NULL, O_INCOMING },
		{ "restore", required_argument, NULL, O_RESTORE },
		{ "handoff", no_argument, NULL, O_HANDOFF },
		{ "mode", required_argument, NULL, O_MODE },
		{ "json", required_argument, NULL, O_JSON },
		{ "warm", required_argument, NULL, O_WARM },
		{ "tag", required_argument, NULL, O_TAG },
		{ "sandbox", no_argument, NULL, O_SANDBOX },
		{ "ctl", required_argument, NULL, O_CTL },
		{ "exec-restore", no_argument, NULL, O_EXEC_RESTORE },
		{ "inject", required_argument, NULL, O_INJECT },
		{ "timeout", required_argument, NULL, O_TIMEOUT },
		{ "quiet", no_argument, NULL, O_QUIET },
		{ "ready-fd", required_argument, NULL, O_READY_FD },
		{ "repeat", required_argument, NULL, O_REPEAT },
		{ "boot-warm", no_argument, NULL, O_BOOT_WARM },
		{ "no-touch", no_argument, NULL, O_NO_TOUCH },
		{ "systemd", no_argument, NULL, O_SYSTEMD },
		{ "help", no_argument, NULL, O_HELP },
		{ 0 }
	};
	struct vmm_opts *o = &m->vmm;
	int c;

	memset(m, 0, sizeof(*m));
	o->mem = 256ull << 20;
	o->cpus = 2;
	o->warm = WARM_POPULATE;
	o->timeout_ms = 10000;
	m->ready_fd = -1;
	while ((c = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
		switch (c) {
		case O_MEM:
			if (vmm_parse_size(optarg, &o->mem) < 0)
				return vmm_errf(
					err, -EINVAL,
					"--mem %s: not a size (e.g. 256M, 4G)",
					optarg);
			break;
		case O_CPUS:
			o->cpus = strtoul(optarg, NULL, 10);
			if (o->cpus < 1 || o->cpus > GUEST_MAX_CPUS)
				return vmm_errf(err, -EINVAL,
						"--cpus %s: 1..%d", optarg,
						GUEST_MAX_CPUS);
			break;
		case O_MEM_PATH:
			o->mem_path = optarg;
			break;
		case O_CONTROL:
			o->control = optarg;
			break;
		case O_INCOMING:
			o->incoming = optarg;
			break;
		case O_RESTORE:
			o->restore = optarg;
			break;
		case O_HANDOFF:
			m->handoff = true;
			break;
		case O_MODE:
			if (strcmp(optarg, "transfer") &&
			    strcmp(optarg, "exec") && strcmp(optarg, "file"))
				return vmm_errf(err, -EINVAL,
						"--mode transfer|exec|file");
			m->demo.mode = optarg;
			break;
		case O_JSON:
			m->demo.json = optarg;
			break;
		case O_WARM: {
			/* --handoff: a list, one strategy per handoff in turn */
			char buf[64], *tok, *save = NULL;

			snprintf(buf, sizeof(buf), "%s", optarg);
			m->demo.nwarm = 0;
			for (tok = strtok_r(buf, ",", &save); tok;
			     tok = strtok_r(NULL, ",", &save)) {
				if (m->demo.nwarm == 4 ||
				    parse_warm(tok, &o->warm) < 0)
					return vmm_errf(
						err, -EINVAL,
						"--warm none|populate|helper|best[,...]");
				m->demo.warm[m->demo.nwarm++] = o->warm;
			}
			if (!m->demo.nwarm)
				return vmm_errf(
					err, -EINVAL,
					"--warm none|populate|helper|best[,...]");
			o->warm = m->demo.warm[0];
			m->demo.warm_given = true;
			break;
		}
		case O_NO_TOUCH:
			m->demo.no_touch = true;
			break;
		case O_SYSTEMD:
			o->systemd = true;
			break;
		case O_TAG:
			o->tag = optarg;
			break;
		case O_SANDBOX:
			o->sandbox = true;
			break;
		case O_CTL:
			m->ctl = optarg;
			break;
		case O_EXEC_RESTORE:
			o->exec_restore = true;
			break;
		case O_INJECT:
			o->inject = optarg;
			break;
		case O_TIMEOUT:
			o->timeout_ms = atoi(optarg);
			break;
		case O_QUIET:
			o->quiet = true;
			break;
		case O_READY_FD:
			m->ready_fd = atoi(optarg);
			break;
		case O_REPEAT:
			m->demo.repeat = strtoul(optarg, NULL, 10);
			if (m->demo.repeat < 1 || m->demo.repeat > 100)
				return vmm_errf(err, -EINVAL,
						"--repeat %s: 1..100", optarg);
			break;
		case O_BOOT_WARM:
			o->boot_warm = true;
			break;
		case O_HELP:
			usage(stdout);
			exit(0);
		default:
			return vmm_errf(err, -EINVAL, "try demo-vmm --help");
		}
	}
	if (o->mem & ((2u << 20) - 1) || o->mem < GUEST_MIN_MEM)
		return vmm_errf(err, -EINVAL,
				"--mem: a multiple of 2 MiB, at least 16 MiB");
	if (!m->ctl && optind < argc)
		return vmm_errf(err, -EINVAL, "unexpected argument '%s'",
				argv[optind]);
	if (m->ctl && optind >= argc)
		return vmm_errf(err, -EINVAL, "--ctl PATH needs a COMMAND");
	if (!!o->incoming + !!o->restore + !!o->exec_restore + m->handoff +
		    !!m->ctl >
	    1)
		return vmm_errf(
			err, -EINVAL,
			"--handoff, --incoming, --restore and --ctl exclude each other");
	return 0;
}

/* ---- --ctl: one command -------------------------------------------------- */

static int ctl_main(const char *path, int argc, char **argv)
{
	struct vmm_err err = { 0 };
	char cmd[CONTROL_LINE_MAX], reply[4096];
	size_t n = 0;
	int r;

	cmd[0] = 0;
	for (int i = 0; i < argc; i++)
		n += snprintf(cmd + n, n < sizeof(cmd) ? sizeof(cmd) - n : 0,
			      "%s%s", i ? " " : "", argv[i]);
	r = control_request(path, cmd, 600000, reply, sizeof(reply), &err);
	if (r < 0 && r != -EREMOTEIO) {
		fprintf(stderr, "demo-vmm: %s\n", err.msg);
		return 1;
	}
	printf("%s\n", reply);
	return r < 0 ? 1 : 0;
}

/* ---- the running VMM ------------------------------------------------------ */

#define GAP_NOT_RECORDED                                                       \
	"not recorded: stopped while printing its tick line, which the guest " \
	"does not time"

struct populate_job {
	struct vmm *v;
	pthread_t thread;
	bool started;
	uint64_t ns;
	int r;
};

static void *populate_thread(void *arg)
{
	struct populate_job *j = arg;
	uint64_t t0 = vmm_now_ns();

	j->r = cprxfer_ram_populate(&j->v->ram, CPRXFER_RAM_POPULATE);
	/* The spare vCPU builds the shadow page tables beside the guest. */
	if (j->r >= 0 && j->v->o.warm == WARM_HELPER)
		j->r = machine_warm(&j->v->m, NULL);
	j->ns = vmm_now_ns() - t0;
	return NULL;
}

static int boot_fresh(struct vmm *v, struct vmm_err *err)
{
	int r;

	/* --boot-warm: RAM mapped and the VM's mappings built at boot. */
	unsigned int flags = v->o.boot_warm ? CPRXFER_RAM_POPULATE : 0;

	if (v->o.mem_path)
		r = cprxfer_ram_open_file(v->o.mem_path, v->o.mem, flags,
					  &v->ram);
	else
		r = cprxfer_ram_create("demo-vmm-guest", v->o.mem, flags,
				       &v->ram);
	if (r < 0)
		return vmm_errf(err, r, "guest RAM: %s", cprxfer_errmsg());
	r = machine_build(&v->m, v->ram.addr, v->ram.size, v->o.cpus,
			  v->console_fd, err);
	if (r >= 0)
		r = machine_boot(&v->m, VMM_PRINT_MS, err);
	if (r >= 0 && v->o.boot_warm)
		r = machine_warm(&v->m, err);
	if (r >= 0)
		r = machine_start(&v->m, false, err);
	return r;
}

static const char *guest_health(struct vmm *v)
{
	struct guest_cpu_stats cs;

	for (unsigned int i = 0; i < v->m.ncpus; i++) {
		guest_read_cpu(v->ram.addr, i, &cs);
		if (cs.state == PC_STATE_ERROR)
			return "error";
		if (cs.state == PC_STATE_FAULT)
			return "fault";
	}
	return "ok";
}

static int64_t us_between(uint64_t a, uint64_t b)
{
	return a && b ? (int64_t)(b - a) / 1000 : -1;
}

/* The vCPU that saw the longest pause, or -1. */
static int max_gap_cpu(const struct vmm *v)
{
	int c = -1;

	for (unsigned int i = 0; i < v->m.ncpus; i++)
		if (v->rep.gap_us[i] >= 0 &&
		    (c < 0 || v->rep.gap_us[i] > v->rep.gap_us[c]))
			c = (int)i;
	return c;
}

static int64_t max_gap(const struct vmm *v)
{
	int c = max_gap_cpu(v);

	return c < 0 ? -1 : v->rep.gap_us[c];
}

/* TSC at CLOCK_MONOTONIC t (ns, in the past): the guest's TSC is ours. */
static uint64_t tsc_at(uint64_t t, uint64_t khz)
{
	uint64_t tsc = __rdtsc(), now = vmm_now_ns();

	return tsc - (now - t) * khz / 1000000;
}

/* Find the pause each vCPU saw; true once every vCPU is accounted. */
static bool update_gaps(struct vmm *v)
{
	struct handoff_report *rep = &v->rep;
	uint64_t khz = guest_tsc_khz(v->ram.addr), cyc, start;
	bool done = true;
	int r;

	if (!khz)
		khz = 1;
	for (unsigned int i = 0; i < v->m.ncpus; i++) {
		if (rep->gap_us[i] >= 0 || rep->gap_us[i] == -2)
			continue;
		r = guest_find_gap(v->ram.addr, i, rep->stop_tsc[i], &start,
				   &cyc);
		if (r == 0) {
			rep->gap_us[i] = cyc * 1000 / khz;
			rep->gap_pre_us[i] =
				((int64_t)tsc_at(rep->t_stop, khz) -
				 (int64_t)start) *
				1000 / (int64_t)khz;
			/* After this vCPU's own first KVM_RUN. */
			rep->gap_post_us[i] =
				((int64_t)(start + cyc) -
				 (int64_t)tsc_at(v->m.vcpu[i]->first_run_ns,
						 khz)) *
				1000 / (int64_t)khz;
		} else if (r == -ENOENT)
			rep->gap_us[i] = -2; /* not recorded */
		else
			done = false;
	}
	return done;
}

static void update_pfns(struct vmm *v)
{
	uint64_t pfn[VMM_PFN_SAMPLES];

	vmm_pfns(v, pfn);
	v->rep.pfn_same = v->rep.pfn_total = 0;
	for (unsigned int i = 0; i < VMM_PFN_SAMPLES; i++) {
		if (!v->rep.old_pfn[i])
			continue;
		v->rep.pfn_total++;
		v->rep.pfn_same += pfn[i] == v->rep.old_pfn[i];
	}
}

static size_t format_status(struct vmm *v, char *buf, size_t len)
{
	const struct handoff_report *rep = &v->rep;
	struct guest_cpu_stats cs;
	size_t n;

	n = snprintf(buf, len,
		     "ok pid=%d mem_mib=%" PRIu64
		     " cpus=%u guest=%s handoffs=%u ram_addr=%p",
		     (int)getpid(), (uint64_t)(v->ram.size >> 20), v->m.ncpus,
		     guest_health(v), v->handoffs, v->ram.addr);
	for (unsigned int i = 0; i < v->m.ncpus && n < len; i++) {
		guest_read_cpu(v->ram.addr, i, &cs);
		n += snprintf(buf + n, len - n, " c%u=%" PRIu64 " t%u=%" PRIu64,
			      i, cs.counter, i, cs.ticks);
	}
	if (!v->have_report || n >= len)
		return n;
	update_pfns(v);
	n += snprintf(
		buf + n, len - n,
		" last=%s from=%d blackout_us=%" PRId64 " stop_us=%" PRId64
		" save_us=%" PRId64 " send_us=%" PRId64 " restore_us=%" PRId64
		" run_us=%" PRId64 " prepare_us=%" PRIu64 " main_us=%" PRId64
		" gap_us=%" PRId64 " gap_pre_us=%" PRId64
		" gap_post_us=%" PRId64
		" gap_done=%d pfn_same=%u pfn_total=%u state_bytes=%" PRIu64
		" ram_copied=0",
		rep->mode, (int)rep->from_pid,
		us_between(rep->t_stop, rep->t_running),
		us_between(rep->t_stop, rep->t_stopped),
		us_between(rep->t_stopped, rep->t_saved),
		us_between(rep->t_saved, rep->t_received),
		us_between(rep->t_received, rep->t_restored),
		us_between(rep->t_restored, rep->t_running),
		rep->prepare_ns / 1000, us_between(rep->t_saved, rep->t_main),
		max_gap(v),
		max_gap_cpu(v) < 0 ? (int64_t)-1
				   : rep->gap_pre_us[max_gap_cpu(v)],
		max_gap_cpu(v) < 0 ? (int64_t)-1
				   : rep->gap_post_us[max_gap_cpu(v)],
		rep->gap_done, rep->pfn_same, rep->pfn_total, rep->state_bytes);
	for (unsigned int i = 0; i < v->m.ncpus && n < len; i++)
		n += snprintf(buf + n, len - n,
			      " gap%u=%" PRId64 " gappre%u=%" PRId64
			      " gappost%u=%" PRId64 " stopc%u=%" PRIu64
			      " stsc%u=%" PRIu64,
			      i, rep->gap_us[i], i, rep->gap_pre_us[i], i,
			      rep->gap_post_us[i], i, rep->counter_at_stop[i],
			      i, rep->stop_tsc[i]);
	return n;
}

static void print_report(struct vmm *v)
{
	const struct handoff_report *rep = &v->rep;
	char gaps[512];
	size_t n = 0;

	gaps[0] = 0;
	for (unsigned int i = 0; i < v->m.ncpus && n < sizeof(gaps); i++) {
		if (rep->gap_us[i] < 0)
			n += snprintf(gaps + n, sizeof(gaps) - n,
				      "%scpu%u n/a (%s)", i ? ", " : "", i,
				      rep->gap_us[i] == -2
					      ? GAP_NOT_RECORDED
					      : "no iteration since");
		else
			n += snprintf(gaps + n, sizeof(gaps) - n,
				      "%scpu%u %" PRId64 " (%" PRId64
				      " before the stop, %" PRId64
				      " after KVM_RUN)",
				      i ? ", " : "", i, rep->gap_us[i],
				      rep->gap_pre_us[i], rep->gap_post_us[i]);
	}
	update_pfns(v);
	printf("[demo-vmm %d] guest received (%s, from pid %d): blackout %" PRId64
	       " us (stop %" PRId64 " + save %" PRId64 " + send %" PRId64
	       " + restore %" PRId64 " + run %" PRId64
	       "); the guest saw a pause of: %s us; RAM %" PRIu64
	       " MiB in place (%u/%u sampled pages on the same frames), %" PRIu64
	       " bytes of state, 0 bytes of RAM copied\n",
	       (int)getpid(), rep->mode, (int)rep->from_pid,
	       us_between(rep->t_stop, rep->t_running),
	       us_between(rep->t_stop, rep->t_stopped),
	       us_between(rep->t_stopped, rep->t_saved),
	       us_between(rep->t_saved, rep->t_received),
	       us_between(rep->t_received, rep->t_restored),
	       us_between(rep->t_restored, rep->t_running), gaps,
	       (uint64_t)(v->ram.size >> 20), rep->pfn_same, rep->pfn_total,
	       rep->state_bytes);
}

static void vmm_cleanup(struct vmm *v, bool unlink_ram)
{
	char path[512];

	machine_destroy(&v->m);
	control_close(v->ctl, v->ctl_unlink);
	v->ctl = NULL;

	if (unlink_ram && vmm_ram_is_file(v, path, sizeof(path)))
		unlink(path);
	cprxfer_ram_release(&v->ram);
}

/* --systemd: SIGTERM is blocked and taken here, between commands. */
static bool sigterm_pending(void)
{
	struct timespec zero = { 0, 0 };
	sigset_t m;

	sigemptyset(&m);
	sigaddset(&m, SIGTERM);
	return sigtimedwait(&m, NULL, &zero) == SIGTERM;
}

/* Serve the control socket until the guest leaves or quits. */
static int serve(struct vmm *v, struct main_opts *mo, int exec_client)
{
	struct populate_job pop = { .v = v };
	struct handoff_result res;
	struct control_cmd cmd;
	struct vmm_err err = { 0 };
	struct guest_mailbox_result mb;
	uint64_t since = vmm_now_ns();
	char line[3072];
	int client, r;

	if (v->have_report && v->o.warm >= WARM_POPULATE &&
	    strcmp(v->rep.mode, "transfer")) {
		/*
		 * exec and file mode: the new VM exists only once the guest
		 * is stopped, so warm it after the guest runs again rather
		 * than inside the blackout.
		 */
		if (pthread_create(&pop.thread, NULL, populate_thread, &pop) ==
		    0)
			pop.started = true;
	}
	if (exec_client >= 0) {
		format_status(v, line, sizeof(line));
		control_reply(v->ctl, exec_client, "%s", line);
	}
	for (;;) {
		if (machine_check(&v->m, &err) < 0) {
			fprintf(stderr, "demo-vmm: guest stopped: %s\n",
				err.msg);
			return 1;
		}
		if (v->have_report && !v->rep.gap_done &&
		    (update_gaps(v) || vmm_now_ns() - since > 3000000000ull)) {
			v->rep.gap_done = true;
			machine_unboost(&v->m);
			if (!mo->vmm.quiet)
				print_report(v);
		}
		if (v->o.systemd && sigterm_pending()) {
			/* systemctl restart/stop: leave the guest in the store */
			r = handoff_restart_out(v, &res, &err);
			if (r == 0) {
				v->ctl_unlink = false; /* the socket stays */
				vmm_cleanup(v, false);
				return 0;
			}
			client = -1;
			goto failed;
		}
		if (!v->ctl) {
			usleep(100000);
			continue;
		}
		r = control_poll(v->ctl, 50, &client, &cmd, &err);
		if (r < 0) {
			fprintf(stderr, "demo-vmm: %s\n", err.msg);
			return 1;
		}
		if (r == 0)
			continue;
		/* A handoff or quit must not race the warm-up thread. */
		if (pop.started && (cmd.kind == CONTROL_HANDOFF ||
				    cmd.kind == CONTROL_HANDOFF_EXEC ||
				    cmd.kind == CONTROL_SAVE)) {
			pthread_join(pop.thread, NULL);
			pop.started = false;
		}
		switch (cmd.kind) {
		case CONTROL_STATUS:
			format_status(v, line, sizeof(line));
			control_reply(v->ctl, client, "%s", line);
			break;
		case CONTROL_SELFTEST: /* hidden: is the sandbox real? */
#ifdef DEMO_VMM_HAVE_SANDBOX
			sandbox_selftest(line, sizeof(line));
#else
			snprintf(line, sizeof(line), "error: no sandbox");
#endif
			control_reply(v->ctl, client, "%s", line);
			break;
		case CONTROL_HELP:
			control_reply(
				v->ctl, client,
				"ok commands: status, handoff PATH, handoff-exec, save FILE, touch [read|write], preflight MODE, quit");
			break;
		case CONTROL_PREFLIGHT:
			r = handoff_preflight(v, cmd.arg, line, sizeof(line),
					      &err);
			if (r < 0)
				control_reply(v->ctl, client, "error: %s",
					      err.msg);
			else
				control_reply(v->ctl, client, "ok %s", line);
			break;
		case CONTROL_TOUCH:
			r = guest_mailbox(v->ram.addr,
					  strcmp(cmd.arg, "write")
						  ? MB_CMD_TOUCH_READ
						  : MB_CMD_TOUCH_WRITE,
					  0, 600000, &mb, &err);
			if (r < 0)
				control_reply(v->ctl, client, "error: %s",
					      err.msg);
			else
				control_reply(v->ctl, client,
					      "ok touch pages=%" PRIu64
					      " us=%" PRIu64,
					      mb.count, mb.us);
			break;
		case CONTROL_QUIT:
			control_reply(v->ctl, client, "ok bye");
			if (pop.started) {
				/* Do not wait for the warm-up: exit ends it. */
				char path[512];

				if (vmm_ram_is_file(v, path, sizeof(path)))
					unlink(path);
				control_close(v->ctl, v->ctl_unlink);
				return 0;
			}
			vmm_cleanup(v, true);
			return 0;
		case CONTROL_HANDOFF:
			r = handoff_transfer_out(v, cmd.arg, &res, &err);
			if (r == 0) {
				control_reply(v->ctl, client,
					      "ok guest handed off to pid %d",
					      (int)res.peer);
				/* The control socket went with the guest. */
				v->ctl_unlink = false;
				vmm_cleanup(v, false);
				return 0;
			}
			goto failed;
		case CONTROL_HANDOFF_EXEC:
			r = handoff_exec_out(v, client, &res, &err);
			goto failed;
		case CONTROL_SAVE:
			r = handoff_save_file(v, cmd.arg, &res, &err);
			if (r == 0) {
				control_reply(
					v->ctl, client,
					"ok saved %s: restore with demo-vmm --restore %s",
					cmd.arg, cmd.arg);
				vmm_cleanup(v, false);
				return 0;
			}
			goto failed;
		}
		continue;
	failed:
		fprintf(stderr, "demo-vmm: handoff failed: %s%s\n", err.msg,
			!res.stopped  ? " (the guest was not stopped)"
			: res.resumed ? " (the guest resumed here)"
				      : " (the guest is lost)");
		if (client >= 0)
			control_reply(v->ctl, client, "error: %s%s", err.msg,
				      !res.stopped  ? "; the guest runs on here"
				      : res.resumed ? "; the guest resumed here"
						    : "");
		if (res.stopped && !res.resumed)
			return 1;
	}
}

static int vmm_main(struct main_opts *mo, uint64_t t_main)
{
	struct vmm v;
	struct vmm_err err = { 0 };
	int r, client = -1;

	memset(&v, 0, sizeof(v));
	v.o = mo->vmm;
	v.o.sandbox |= getenv("DEMO_VMM_SANDBOX") != NULL;
	v.console_fd = STDOUT_FILENO;
	v.t_main = t_main;
	v.ram.fd = -1;
	if (access("/dev/kvm", R_OK | W_OK) < 0) {
		fprintf(stderr, "demo-vmm: skip: no usable /dev/kvm (%s)\n",
			strerror(errno));
		return 77;
	}
	r = vcpu_signal_setup(&err);
	if (r >= 0 && v.o.control && !v.o.exec_restore)
		r = control_listen(v.o.control, &v.ctl, &err);
	if (r < 0)
		goto fail;
	v.ctl_unlink = v.ctl != NULL;
	if (v.o.sandbox) {
#ifdef DEMO_VMM_HAVE_SANDBOX
		r = sandbox_install(&v, &err);
#else
		r = vmm_errf(
			&err, -ENOTSUP,
			"--sandbox: this demo-vmm was built without the sandbox");
#endif
		if (r < 0)
			goto fail;
	}
	if (v.o.systemd) {
		sigset_t term;

		sigemptyset(&term);
		sigaddset(&term, SIGTERM);
		pthread_sigmask(SIG_BLOCK, &term, NULL);
	}
	if (v.o.systemd && (r = handoff_restart_in(&v, &err)) != -ENOENT) {
		/* the guest came back from the fd store (or failed to) */
	} else if (v.o.incoming) {
		if (!mo->vmm.quiet)
			printf("[demo-vmm %d] waiting for a guest on %s\n",
			       (int)getpid(), v.o.incoming);
		r = handoff_transfer_in(&v, &err);
	} else if (v.o.exec_restore) {
		r = handoff_exec_in(&v, &client, &err);
	} else if (v.o.restore) {
		r = handoff_restore_file(&v, &err);
	} else {
		r = boot_fresh(&v, &err);
		if (r >= 0 && !mo->vmm.quiet)
			printf("[demo-vmm %d] guest booted: %u vCPUs, %" PRIu64
			       " MiB%s%s%s\n",
			       (int)getpid(), v.m.ncpus,
			       (uint64_t)(v.ram.size >> 20),
			       v.o.mem_path ? " in " : "",
			       v.o.mem_path ? v.o.mem_path : "",
			       v.ctl ? ", control socket up" : "");
	}
	if (r >= 0)
		r = handoff_blockers_init(&v, &err);
	if (r < 0)
		goto fail;
#ifdef DEMO_VMM_HAVE_SYSTEMD
	if (v.o.systemd)
		sd_notify(0, "READY=1");
#endif
	if (mo->ready_fd >= 0) {
		(void)!write(mo->ready_fd, "1", 1);
		close(mo->ready_fd);
	}
	r = serve(&v, mo, client);
	cprxfer_blockers_free(v.blockers);
#ifdef DEMO_VMM_HAVE_SYSTEMD
	cprxfer_sd_close(v.sd);
#endif
	return r;
fail:
	fprintf(stderr, "demo-vmm: %s\n", err.msg);
	return 1;
}

int main(int argc, char **argv)
{
	struct vmm_err err = { 0 };
	uint64_t t_main = vmm_now_ns();
	struct main_opts mo;
	int r;

	setvbuf(stdout, NULL, _IOLBF, 0);
	signal(SIGPIPE, SIG_IGN);
	r = parse_options(argc, argv, &mo, &err);
	if (r < 0) {
		fprintf(stderr, "demo-vmm: %s\n", err.msg);
		return 2;
	}
	if (mo.ctl)
		return ctl_main(mo.ctl, argc - optind, argv + optind);
	if (mo.handoff) {
		/* --sandbox: every VMM the demo starts (vmm_main below). */
		if (mo.vmm.sandbox)
			setenv("DEMO_VMM_SANDBOX", "1", 1);
		r = demo_run(&mo.vmm, &mo.demo, &err);
		if (r == 1)
			fprintf(stderr, "demo-vmm: FAIL: %s\n", err.msg);
		return r;
	}
	return vmm_main(&mo, t_main);
}
