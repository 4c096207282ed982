/*
 * handoff.c - transfer, exec and file handoffs of the running guest
 * (see handoff.h).  libcprxfer is used through <cprxfer/cprxfer.h>
 * only, as any outside VMM would.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef DEMO_VMM_HAVE_SYSTEMD
#include <cprxfer/systemd.h>
#endif

#include "handoff.h"

#define FINAL_ACK_TIMEOUT_MS 5000
/* Prepare maps and warms all RAM while the guest runs: minutes at most. */
#define PREPARE_ACK_TIMEOUT_MS 300000
#define FENCE_TIMEOUT_MS       5000
/*
 * A VM built inside the blackout (exec, file) gets a memslot for its
 * first 64 MiB only (the guest's code, tables, stacks and checksum
 * regions), the rest once the guest runs: see vm_set_memory_lazy().
 */
#define LAZY_RAM_LOW (64ull << 20)

/* ---- state <-> blobs --------------------------------------------------- */

static int cx_fail(struct vmm_err *err, int r, const char *what)
{
	return vmm_errf(err, r, "%s: %s", what, cprxfer_errmsg());
}

static int put_set(cprxfer_state *st, const char *prefix,
		   const struct blobset *set, bool skip_cpuid, uint64_t *bytes,
		   struct vmm_err *err)
{
	char name[64];
	int r;

	for (unsigned int i = 0; i < set->n; i++) {
		if (skip_cpuid && !strcmp(set->b[i].name, "cpuid"))
			continue;
		snprintf(name, sizeof(name), "%s.%s", prefix, set->b[i].name);
		r = cprxfer_put_blob(st, name, set->b[i].data, set->b[i].len);
		if (r < 0)
			return cx_fail(err, r, "state");
		if (bytes)
			*bytes += set->b[i].len;
	}
	return 0;
}

static int put_frozen(cprxfer_state *st, const struct frozen *f,
		      bool skip_cpuid, uint64_t *bytes, struct vmm_err *err)
{
	char prefix[16];
	int r;

	r = put_set(st, "vm", &f->vm, false, bytes, err);
	for (unsigned int i = 0; i < f->ncpus && r >= 0; i++) {
		snprintf(prefix, sizeof(prefix), "vcpu%u", i);
		r = put_set(st, prefix, &f->cpu[i], skip_cpuid, bytes, err);
	}
	return r;
}

static const char *const known_names[] = {
	"demo.version", "ram",	      "layout.mem_size", "layout.ncpus",
	"console",	"control",    "control.path",	 "control.client",
	"exec.reaper",	"proof.pfns", "guest.handoffs",	 "from.pid",
	"t.stop",	"t.stopped",  "t.saved",	 NULL,
};

/*
 * Sort the blob records of st into f (vm.* and vcpuN.*), for ncpus;
 * refuse a record this version does not know.
 */
static int get_frozen(const cprxfer_state *st, unsigned int ncpus,
		      struct frozen *f, struct vmm_err *err)
{
	size_t n = cprxfer_state_count(st);
	const char *name, *dot;
	const void *data;
	unsigned int cpu, k;
	size_t len;
	int type, r;

	f->ncpus = ncpus;
	for (size_t i = 0; i < n; i++) {
		struct blobset *set = NULL;

		r = cprxfer_state_entry(st, i, &name, &type);
		if (r < 0)
			return cx_fail(err, r, "state");
		for (k = 0; known_names[k] && strcmp(known_names[k], name); k++)
			;
		if (known_names[k])
			continue;
		dot = strchr(name, '.');
		if (!strncmp(name, "vm.", 3))
			set = &f->vm;
		else if (dot && sscanf(name, "vcpu%u.", &cpu) == 1 &&
			 cpu < ncpus)
			set = &f->cpu[cpu];
		if (!set || type != CPRXFER_TYPE_BLOB)
			return vmm_errf(
				err, -EPROTO,
				"state: unknown record '%s' (from a newer demo-vmm?)",
				name);
		r = cprxfer_get_blob(st, name, &data, &len);
		if (r < 0)
			return cx_fail(err, r, "state");
		r = blobset_add_copy(set, dot + 1, data, len, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int get_u64(const cprxfer_state *st, const char *name, uint64_t *v,
		   struct vmm_err *err)
{
	int r = cprxfer_get_u64(st, name, v);

	return r < 0 ? cx_fail(err, r, "state") : 0;
}

/* Version and layout of an incoming state. */
static int get_layout(const cprxfer_state *st, uint64_t *mem,
		      unsigned int *ncpus, struct vmm_err *err)
{
	uint64_t ver, n;
	int r;

	r = get_u64(st, "demo.version", &ver, err);
	if (r < 0)
		return r;
	if (ver != HANDOFF_VERSION)
		return vmm_errf(err, -EPROTONOSUPPORT,
				"state format %llu, this demo-vmm reads %d",
				(unsigned long long)ver, HANDOFF_VERSION);
	r = get_u64(st, "layout.mem_size", mem, err);
	if (r >= 0)
		r = get_u64(st, "layout.ncpus", &n, err);
	if (r < 0)
		return r;
	if (!n || n > GUEST_MAX_CPUS)
		return vmm_errf(err, -EBADMSG, "state: %llu vCPUs",
				(unsigned long long)n);
	*ncpus = n;
	return 0;
}

/* What every mode carries about the guest and for the proof. */
static int put_common(struct vmm *v, cprxfer_state *st, bool fds,
		      struct vmm_err *err)
{
	uint64_t pfn[VMM_PFN_SAMPLES];
	uint8_t raw[VMM_PFN_SAMPLES * 8];
	int r;

	r = cprxfer_put_u64(st, "demo.version", HANDOFF_VERSION);
	if (r >= 0)
		r = cprxfer_ram_put(st, "ram", &v->ram);
	if (r >= 0)
		r = cprxfer_put_u64(st, "layout.mem_size", v->ram.size);
	if (r >= 0)
		r = cprxfer_put_u64(st, "layout.ncpus", v->m.ncpus);
	if (r >= 0)
		r = cprxfer_put_u64(st, "guest.handoffs", v->handoffs);
	if (r >= 0)
		r = cprxfer_put_u64(st, "from.pid", getpid());
	if (r >= 0 && fds)
		r = cprxfer_put_fd(st, "console", v->console_fd);
	if (r >= 0 && fds && v->ctl) {
		r = cprxfer_put_fd(st, "control", control_listen_fd(v->ctl));
		if (r >= 0)
			r = cprxfer_put_str(st, "control.path",
					    control_path(v->ctl));
	}
	if (r < 0)
		return cx_fail(err, r, "state");
	vmm_pfns(v, pfn);
	for (unsigned int i = 0; i < VMM_PFN_SAMPLES; i++)
		put_le64(raw + i * 8, pfn[i]);
	r = cprxfer_put_blob(st, "proof.pfns", raw, sizeof(raw));
	return r < 0 ? cx_fail(err, r, "state") : 0;
}

static int put_times(cprxfer_state *st, uint64_t stop, uint64_t stopped,
		     struct vmm_err *err)
{
	int r = cprxfer_put_u64(st, "t.stop", stop);

	if (r >= 0)
		r = cprxfer_put_u64(st, "t.stopped", stopped);
	/* Last: the moment the state leaves. */
	if (r >= 0)
		r = cprxfer_put_u64(st, "t.saved", vmm_now_ns());
	return r < 0 ? cx_fail(err, r, "state") : 0;
}

/* The incoming side's report: what the old side sent, and the RAM. */
static void report_begin(struct vmm *v, const cprxfer_state *st,
			 const cprxfer_state *times, const char *mode)
{
	struct handoff_report *rep = &v->rep;
	struct guest_cpu_stats cs;
	const void *data;
	uint64_t u = 0;
	size_t len;

	memset(rep, 0, sizeof(*rep));
	snprintf(rep->mode, sizeof(rep->mode), "%s", mode);
	cprxfer_get_u64(times, "t.stop", &rep->t_stop);
	cprxfer_get_u64(times, "t.stopped", &rep->t_stopped);
	cprxfer_get_u64(times, "t.saved", &rep->t_saved);
	if (cprxfer_get_u64(st, "from.pid", &u) == 0)
		rep->from_pid = (pid_t)u;
	if (cprxfer_get_u64(st, "guest.handoffs", &u) == 0)
		v->handoffs = u;
	if (cprxfer_get_blob(st, "proof.pfns", &data, &len) == 0 &&
	    len == VMM_PFN_SAMPLES * 8)
		for (unsigned int i = 0; i < VMM_PFN_SAMPLES; i++)
			rep->old_pfn[i] =
				get_le64((const uint8_t *)data + i * 8);
	/* The guest is stopped: its RAM holds where each vCPU stopped. */
	for (unsigned int i = 0; i < v->m.ncpus; i++) {
		guest_read_cpu(v->ram.addr, i, &cs);
		rep->stop_tsc[i] = cs.last_tsc;
		rep->counter_at_stop[i] = cs.counter;
		rep->gap_us[i] = -1;
	}
	v->have_report = true;
}

static void report_frozen_bytes(struct vmm *v, const struct frozen *f)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < f->vm.n; i++)
		n += f->vm.b[i].len;
	for (unsigned int c = 0; c < f->ncpus; c++)
		for (unsigned int i = 0; i < f->cpu[c].n; i++)
			n += f->cpu[c].b[i].len;
	v->rep.state_bytes = n;
}

static unsigned int ram_flags(const struct vmm *v)
{
	return v->o.warm >= WARM_POPULATE ? CPRXFER_RAM_POPULATE : 0;
}

/* Resume after a failed outgoing handoff. */
static void resume_here(struct vmm *v, struct handoff_result *res,
			struct vmm_err *err)
{
	struct vmm_err e2 = { 0 };
	size_t n;

	if (machine_resume(&v->m, &e2) == 0) {
		res->resumed = true;
		return;
	}
	n = strlen(err->msg);
	snprintf(err->msg + n, sizeof(err->msg) - n,
		 "; and the guest could not resume: %s", e2.msg);
}

/* ---- transfer: outgoing -------------------------------------------------- */

/*
 * The peer may still run the guest: make sure it is gone before ours
 * runs again (they share the RAM).  0 once the process has exited.
 */
static int fence(pid_t pid)
{
	struct pollfd pfd;
	int fd;

	if (pid <= 0)
		return -ESRCH;
	fd = syscall(SYS_pidfd_open, pid, 0);
	if (fd < 0)
		return errno == ESRCH ? 0 : -errno;
	syscall(SYS_pidfd_send_signal, fd, SIGKILL, NULL, 0);
	pfd.fd = fd;
	pfd.events = POLLIN;
	fd = poll(&pfd, 1, FENCE_TIMEOUT_MS);
	close(pfd.fd);
	return fd == 1 ? 0 : -ETIMEDOUT;
}

/*
 * The start of the blackout, the same in every mode: stop the vCPUs and
 * save what the stop froze, with the two timestamps the report needs.
 * boost: run the critical path at high priority (transfer, exec).
 */
static int freeze(struct vmm *v, bool boost, struct frozen *f, uint64_t *t_stop,
		  uint64_t *t_stopped, struct handoff_result *res,
		  struct vmm_err *err)
{
	int r;

	machine_ram_high_wait(&v->m);
	if (boost)
		vmm_thread_boost(true);
	*t_stop = vmm_now_ns();
	res->stopped = true;
	r = machine_stop(&v->m, err);
	if (r < 0)
		return r;
	*t_stopped = vmm_now_ns();
	return machine_save(&v->m, f, err);
}

static int prepare_state(struct vmm *v, cprxfer_state **out,
			 struct vmm_err *err)
{
	struct blobset set = { 0 };
	cprxfer_state *st = cprxfer_state_new();
	char prefix[16];
	int r;

	if (!st)
		return vmm_errf(err, -ENOMEM, "state: no memory");
	r = put_common(v, st, true, err);
	for (unsigned int i = 0; i < v->m.ncpus && r >= 0; i++) {
		r = vcpu_cpuid_blob(v->m.vcpu[i], &set, err);
		snprintf(prefix, sizeof(prefix), "vcpu%u", i);
		if (r >= 0)
			r = put_set(st, prefix, &set, false, NULL, err);
		blobset_free(&set);
	}
	if (r < 0) {
		cprxfer_state_free(st);
		return r;
	}
	*out = st;
	return 0;
}

int handoff_transfer_out(struct vmm *v, const char *path,
			 struct handoff_result *res, struct vmm_err *err)
{
	cprxfer_channel *ch = NULL;
	cprxfer_state *st = NULL;
	cprxfer_opts *o = NULL;
	struct frozen f = { 0 };
	uint64_t t_stop, t_stopped;
	uid_t uid;
	const char *tag;
	int r, r2;

	memset(res, 0, sizeof(*res));
	r = vmm_cprxfer_opts(v, &o, err);
	if (r < 0)
		return r;
	r = cprxfer_connect_opts(path, v->o.timeout_ms, o, &ch);
	cprxfer_opts_free(o);
	if (r < 0)
		return cx_fail(err, r, "connect");
	cprxfer_channel_peer(ch, &res->peer, &uid, &tag);

	/* Prepare round, the guest running. */
	r = prepare_state(v, &st, err);
	if (r < 0)
		goto out;
	r = cprxfer_save(ch, st);
	cprxfer_state_free(st);
	st = NULL;
	if (r < 0) {
		r = cx_fail(err, r, "prepare round");
		goto out;
	}
	r = cprxfer_wait_ack(ch, PREPARE_ACK_TIMEOUT_MS);
	if (r < 0) {
		r = cx_fail(err, r,
			    "the new VMM did not accept the prepare round");
		goto out;
	}

	/* Blackout. */
	r = freeze(v, true, &f, &t_stop, &t_stopped, res, err);
	if (r < 0)
		goto rollback;
	st = cprxfer_state_new();
	if (!st) {
		r = vmm_errf(err, -ENOMEM, "state: no memory");
		goto rollback;
	}
	r = put_frozen(st, &f, true, NULL, err);
	if (r >= 0)
		r = put_times(st, t_stop, t_stopped, err);
	if (r < 0)
		goto rollback;
	r = cprxfer_save(ch, st);
	if (r < 0) {
		r = cx_fail(err, r, "final round");
		goto rollback;
	}
	r = cprxfer_wait_ack(ch, FINAL_ACK_TIMEOUT_MS);
	if (r == 0)
		r = cprxfer_commit(ch);
	if (r == 0)
		goto out; /* committed: the new VMM runs the guest */
	r = cx_fail(err, r, "the new VMM did not take the guest");
	/* It may still ack: abort tells it not to run the guest. */
	r2 = cprxfer_abort(ch, err->msg);
	if (r2 < 0 && (r == -ETIMEDOUT || r == -EPIPE)) {
		/* The abort did not go out: end it before we resume. */
		r2 = fence(res->peer);
		if (r2 < 0) {
			size_t n = strlen(err->msg);

			snprintf(
				err->msg + n, sizeof(err->msg) - n,
				"; pid %d could not be fenced (%s): not resuming",
				(int)res->peer, strerror(-r2));
			goto out;
		}
	}
rollback:
	resume_here(v, res, err);
out:
	vmm_thread_boost(false);
	frozen_free(&f);
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return r;
}

/* ---- transfer: incoming -------------------------------------------------- */

/* Keep what the console and control records carry. */
/*
 * The end of the blackout, the same in every mode: the restored vCPUs
 * run; then, off the blackout, the rest of the RAM's memslot (a no-op
 * when it was all registered before the stop).
 */
static int go_live(struct vmm *v, const struct frozen *f, struct vmm_err *err)
{
	int r = machine_resume(&v->m, err);

	if (r >= 0)
		r = machine_wait_running(&v->m, 5000, &v->rep.t_running, err);
	if (r >= 0)
		r = machine_ram_high_async(&v->m, err);
	if (r < 0)
		return r;
	report_frozen_bytes(v, f);
	v->handoffs++;
	return 0;
}

static int take_fds(struct vmm *v, cprxfer_state *st, struct vmm_err *err)
{
	const char *path = NULL;
	int fd, r;

	fd = cprxfer_take_fd(st, "console");
	if (fd < 0)
		return cx_fail(err, fd, "state");
	v->console_fd = fd;
	if (v->ctl)
		return 0; /* our own --control wins */
	fd = cprxfer_take_fd(st, "control");
	if (fd == -ENOENT)
		return 0;
	if (fd < 0)
		return cx_fail(err, fd, "state");
	cprxfer_get_str(st, "control.path", &path);
	r = control_adopt(fd, path, &v->ctl, err);
	if (r < 0) {
		close(fd);
		return r;
	}
	v->ctl_unlink = true;
	return 0;
}

/* Version and layout of an incoming state, and its RAM mapped. */
static int map_ram(struct vmm *v, cprxfer_state *st, unsigned int flags,
		   unsigned int *ncpus, struct vmm_err *err)
{
	uint64_t mem;
	int r;

	r = get_layout(st, &mem, ncpus, err);
	if (r < 0)
		return r;
	r = cprxfer_ram_get(st, "ram", flags, &v->ram);
	if (r < 0)
		return cx_fail(err, r, "guest RAM");
	if (v->ram.size != mem)
		return vmm_errf(err, -EBADMSG,
				"RAM %zu bytes, layout says %llu", v->ram.size,
				(unsigned long long)mem);
	return 0;
}

/*
 * Map the RAM, build the machine (vCPUs not started), with only
 * [0, low) as a memslot (see vm_set_memory_lazy).
 */
static int build_from(struct vmm *v, cprxfer_state *st, unsigned int flags,
		      uint64_t low, struct vmm_err *err)
{
	unsigned int ncpus = 0;
	int r;

	r = map_ram(v, st, flags, &ncpus, err);
	if (r >= 0)
		r = machine_build_vm(&v->m, err);
	if (r >= 0)
		r = machine_build_rest(&v->m, v->ram.addr, v->ram.size, low,
				       ncpus, err);
	if (r >= 0)
		r = machine_build_serial(&v->m, v->console_fd, err);
	v->m.handoff = true;
	return r;
}

static int prepare_in(struct vmm *v, cprxfer_state *prep, struct blobset *cpuid,
		      struct vmm_err *err)
{
	const void *data;
	char name[32];
	size_t len;
	int r;

	r = take_fds(v, prep, err);
	if (r < 0)
		return r;
	r = build_from(v, prep, ram_flags(v), UINT64_MAX, err);
	if (r < 0)
		return r;
	for (unsigned int i = 0; i < v->m.ncpus; i++) {
		snprintf(name, sizeof(name), "vcpu%u.cpuid", i);
		r = cprxfer_get_blob(prep, name, &data, &len);
		if (r < 0)
			return cx_fail(err, r, "state");
		r = blobset_add_copy(&cpuid[i], "cpuid", data, len, err);
		if (r >= 0)
			r = vcpu_set_cpuid_blob(v->m.vcpu[i], &cpuid[i], err);
		if (r < 0)
			return r;
	}
	if (v->o.warm == WARM_HELPER) {
		r = machine_warm(&v->m, err);
		if (r < 0)
			return r;
	}
	return machine_start(&v->m, true, err);
}

int handoff_transfer_in(struct vmm *v, struct vmm_err *err)
{
	struct blobset cpuid[GUEST_MAX_CPUS] = { 0 };
	cprxfer_listener *l = NULL;
	cprxfer_channel *ch = NULL;
	cprxfer_state *prep = NULL, *fin = NULL;
	cprxfer_opts *o = NULL;
	struct frozen f = { 0 };
	uint64_t t0, t_prepared;
	int r;

	r = vmm_cprxfer_opts(v, &o, err);
	if (r < 0)
		return r;
	r = cprxfer_listen_opts(v->o.incoming, o, &l);
	cprxfer_opts_free(o);
	if (r < 0)
		return cx_fail(err, r, "listen");
	r = cprxfer_accept(l, -1, &ch);
	cprxfer_listener_close(l);
	if (r < 0)
		return cx_fail(err, r, "accept");
	cprxfer_channel_set_timeout(ch, v->o.timeout_ms);

	r = cprxfer_load(ch, &prep);
	if (r < 0) {
		r = cx_fail(err, r, "prepare round");
		goto out;
	}
	t0 = vmm_now_ns();
	r = prepare_in(v, prep, cpuid, err);
	t_prepared = vmm_now_ns();
	if (r < 0) {
		cprxfer_ack(ch, r, err->msg);
		goto out;
	}
	r = cprxfer_ack(ch, 0, NULL);
	if (r < 0) {
		r = cx_fail(err, r, "ack of the prepare round");
		goto out;
	}
	vmm_thread_boost(true); /* until the guest runs */

	/* Final round: the old vCPUs are stopped now. */
	r = cprxfer_load(ch, &fin);
	if (r < 0) {
		r = cx_fail(err, r, "final round");
		goto out;
	}
	if (v->o.inject && !strcmp(v->o.inject, "die-in-final"))
		kill(getpid(), SIGKILL); /* test: die before the ack */
	report_begin(v, prep, fin, "transfer");
	v->rep.t_received = vmm_now_ns();
	v->rep.prepare_ns = t_prepared - t0;
	r = get_frozen(fin, v->m.ncpus, &f, err);
	for (unsigned int i = 0; i < v->m.ncpus && r >= 0; i++)
		r = blobset_add_copy(&f.cpu[i], "cpuid", cpuid[i].b[0].data,
				     cpuid[i].b[0].len, err);
	if (r >= 0)
		r = machine_restore(&v->m, &f, err);
	if (r < 0) {
		cprxfer_ack(ch, r, err->msg);
		goto out;
	}
	v->rep.t_restored = vmm_now_ns();
	r = cprxfer_ack(ch, 0, NULL);
	if (r < 0) {
		/* The old VMM will resume the guest: we must not run it. */
		r = cx_fail(err, r, "final ack");
		goto out;
	}
	/* Run the guest only once the old VMM committed. */
	r = cprxfer_wait_commit(ch, v->o.timeout_ms);
	if (r < 0) {
		r = cx_fail(err, r, "the old VMM did not commit");
		goto out;
	}
	r = go_live(v, &f, err);
out:
	vmm_thread_boost(false);
	for (unsigned int i = 0; i < GUEST_MAX_CPUS; i++)
		blobset_free(&cpuid[i]);
	frozen_free(&f);
	cprxfer_state_free(fin);
	cprxfer_state_free(prep);
	cprxfer_channel_close(ch);
	return r;
}

/* ---- exec ---------------------------------------------------------------- */

/*
 * The reaper: a child that holds the old VM's fds across the exec and
 * lets them go only when the new image closes the pipe, so that the old
 * VM is torn down here, outside the blackout.  Returns the write end.
 */
static int reaper_start(struct vmm *v, pid_t *pid, struct vmm_err *err)
{
	int p[2], keep[GUEST_MAX_CPUS + 4], nkeep = 0;
	struct rlimit rl;
	pid_t c;

	if (pipe2(p, O_CLOEXEC) < 0)
		return vmm_errno(err, "pipe2");
	keep[nkeep++] = p[0];
	keep[nkeep++] = v->m.vm->vm_fd;
	keep[nkeep++] = v->m.vm->kvm_fd;
	for (unsigned int i = 0; i < v->m.ncpus; i++)
		keep[nkeep++] = v->m.vcpu[i]->fd;
	if (v->m.spare)
		keep[nkeep++] = v->m.spare->fd;
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur > 65536)
		rl.rlim_cur = 65536;
	c = fork();
	if (c < 0) {
		int r = vmm_errno(err, "fork (reaper)");

		close(p[0]);
		close(p[1]);
		return r;
	}
	if (c == 0) {
		/* Async-signal-safe calls only: we forked a threaded process. */
		char b;

		for (int fd = 0; fd < (int)rl.rlim_cur; fd++) {
			int k;

			for (k = 0; k < nkeep && keep[k] != fd; k++)
				;
			if (k == nkeep)
				close(fd);
		}
		while (read(p[0], &b, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(p[0]);
	*pid = c;
	return p[1];
}

static const char *warm_name(enum vmm_warm w)
{
	return w == WARM_NONE	  ? "none"
	       : w == WARM_HELPER ? "helper"
				  : "populate";
}

int handoff_exec_out(struct vmm *v, int client, struct handoff_result *res,
		     struct vmm_err *err)
{
	char *argv[12];
	cprxfer_state *st = NULL;
	struct frozen f = { 0 };
	uint64_t t_stop, t_stopped;
	int r, wfd, argc = 0;
	pid_t reaper = -1;

	memset(res, 0, sizeof(*res));
	argv[argc++] = "demo-vmm";
	argv[argc++] = "--exec-restore";
	argv[argc++] = "--warm";
	argv[argc++] = (char *)warm_name(v->o.warm);
	if (v->o.quiet)
		argv[argc++] = "--quiet";
	if (v->o.tag) {
		argv[argc++] = "--tag";
		argv[argc++] = (char *)v->o.tag;
	}
	argv[argc] = NULL;

	/* Before the stop: the reaper, and whatever does not change. */
	wfd = reaper_start(v, &reaper, err);
	if (wfd < 0)
		return wfd;
	st = cprxfer_state_new();
	if (!st) {
		r = vmm_errf(err, -ENOMEM, "state: no memory");
		goto out;
	}
	r = put_common(v, st, true, err);
	if (r >= 0 && (r = cprxfer_put_fd(st, "exec.reaper", wfd)) < 0)
		r = cx_fail(err, r, "state");
	if (r >= 0 && client >= 0 &&
	    (r = cprxfer_put_fd(st, "control.client", client)) < 0)
		r = cx_fail(err, r, "state");
	if (r < 0)
		goto out;

	/* The boost survives the exec: the new image drops it. */
	r = freeze(v, true, &f, &t_stop, &t_stopped, res, err);
	if (r >= 0)
		r = put_frozen(st, &f, false, NULL, err);
	if (r >= 0)
		r = put_times(st, t_stop, t_stopped, err);
	if (r < 0)
		goto rollback;
	r = cprxfer_exec(st, "/proc/self/exe", argv, NULL);
	r = cx_fail(err, r, "exec");
rollback:
	resume_here(v, res, err);
out:
	vmm_thread_boost(false);
	close(wfd); /* the reaper exits */
	if (reaper > 0)
		waitpid(reaper, NULL, 0);
	frozen_free(&f);
	cprxfer_state_free(st);
	return r;
}

/*
 * Builds the VM while the exec-in path loads the state: KVM_CREATE_VM
 * and the capability queries at once, then, once the RAM is mapped
 * (builder_go), its memslot, the irqchip and the vCPUs.
 */
struct builder {
	struct machine *m;
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool go, cancel;
	void *mem;
	uint64_t size;
	unsigned int ncpus;
	int r;
	struct vmm_err err;
};

static void *builder_main(void *arg)
{
	struct builder *b = arg;
	bool go;

	vmm_thread_boost(true); /* not inherited: SCHED_RESET_ON_FORK */
	b->r = machine_build_vm(b->m, &b->err);
	pthread_mutex_lock(&b->lock);
	while (!b->go && !b->cancel)
		pthread_cond_wait(&b->cond, &b->lock);
	go = b->go;
	pthread_mutex_unlock(&b->lock);
	if (b->r >= 0 && !go)
		b->r = -ECANCELED;
	if (b->r >= 0)
		b->r = machine_build_rest(b->m, b->mem, b->size, LAZY_RAM_LOW,
					  b->ncpus, &b->err);
	return NULL;
}

static void builder_go(struct builder *b, void *mem, uint64_t size,
		       unsigned int ncpus)
{
	pthread_mutex_lock(&b->lock);
	b->mem = mem;
	b->size = size;
	b->ncpus = ncpus;
	b->go = true;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
}

/* Join the builder; true if v->m holds the VM, RAM slot and vCPUs. */
static bool builder_join(struct builder *b)
{
	if (!b->started)
		return false;
	pthread_mutex_lock(&b->lock);
	b->cancel = !b->go;
	pthread_cond_broadcast(&b->cond);
	pthread_mutex_unlock(&b->lock);
	pthread_join(b->thread, NULL);
	b->started = false;
	if (b->r >= 0)
		return true;
	machine_destroy(b->m); /* and build again, reporting why */
	return false;
}

int handoff_exec_in(struct vmm *v, int *client, struct vmm_err *err)
{
	struct builder b = {
		.m = &v->m,
		.lock = PTHREAD_MUTEX_INITIALIZER,
		.cond = PTHREAD_COND_INITIALIZER,
	};
	cprxfer_state *st = NULL;
	cprxfer_opts *o = NULL;
	struct frozen f = { 0 };
	unsigned int ncpus;
	uint64_t t_loaded;
	bool have_vm;
	int r, reaper = -1;

	*client = -1;
	/* First of all, the VM (0.5 ms): while we load the state. */
	b.started = pthread_create(&b.thread, NULL, builder_main, &b) == 0;
	r = vmm_cprxfer_opts(v, &o, err);
	if (r < 0) {
		builder_join(&b);
		return r;
	}
	r = cprxfer_load_exec_opts(o, &st);
	cprxfer_opts_free(o);
	if (r < 0) {
		builder_join(&b);
		return cx_fail(err, r, "exec state");
	}
	t_loaded = vmm_now_ns();
	r = map_ram(v, st, 0, &ncpus, err);
	if (r < 0)
		goto out;
	builder_go(&b, v->ram.addr, v->ram.size, ncpus);
	reaper = cprxfer_take_fd(st, "exec.reaper");
	r = cprxfer_take_fd(st, "control.client");
	*client = r >= 0 ? r : -1;
	r = take_fds(v, st, err);
	/* The console kept its number; keep it open across later execs. */
	if (r >= 0 && v->console_fd <= 2)
		fcntl(v->console_fd, F_SETFD, 0);
	/*
	 * No populate here: it would grow the blackout with RAM.  With
	 * --warm populate, main populates in the background once the
	 * guest runs.  Nor the whole memslot, for the same reason.
	 */
	have_vm = builder_join(&b);
	if (r >= 0 && !have_vm) {
		r = machine_build_vm(&v->m, err);
		if (r >= 0)
			r = machine_build_rest(&v->m, v->ram.addr, v->ram.size,
					       LAZY_RAM_LOW, ncpus, err);
	}
	if (r >= 0)
		r = machine_build_serial(&v->m, v->console_fd, err);
	v->m.handoff = true;
	if (r < 0)
		goto out;
	report_begin(v, st, st, "exec");
	v->rep.t_main = v->t_main;
	v->rep.t_received = t_loaded;
	/* Threads first, parked: they start while we restore. */
	r = machine_start(&v->m, true, err);
	if (r >= 0)
		r = get_frozen(st, v->m.ncpus, &f, err);
	if (r >= 0)
		r = machine_restore(&v->m, &f, err);
	if (r < 0)
		goto out;
	v->rep.t_restored = vmm_now_ns();
	r = go_live(v, &f, err);
out:
	builder_join(&b); /* if an error left it running */
	vmm_thread_boost(false);
	if (reaper >= 0)
		close(reaper); /* the old VM goes, in the reaper */
	frozen_free(&f);
	cprxfer_state_free(st);
	return r;
}

/* ---- file ---------------------------------------------------------------- */

int handoff_save_file(struct vmm *v, const char *file,
		      struct handoff_result *res, struct vmm_err *err)
{
	cprxfer_state *st = NULL;
	struct frozen f = { 0 };
	uint64_t t_stop, t_stopped;
	int r;

	char path[512];

	memset(res, 0, sizeof(*res));
	if (!vmm_ram_is_file(v, path, sizeof(path)))
		return vmm_errf(
			err, -EINVAL,
			"file mode needs file-backed RAM: this guest's RAM is %s; start the guest with --mem-path (e.g. /dev/shm/guest.ram)",
			path);
	st = cprxfer_state_new();
	if (!st)
		return vmm_errf(err, -ENOMEM, "state: no memory");
	r = put_common(v, st, false, err);
	if (r < 0)
		goto out;
	r = freeze(v, false, &f, &t_stop, &t_stopped, res, err);
	if (r >= 0)
		r = put_frozen(st, &f, false, NULL, err);
	if (r >= 0)
		r = put_times(st, t_stop, t_stopped, err);
	if (r < 0)
		goto rollback;
	r = cprxfer_save_file(st, file);
	if (r == 0)
		goto out;
	r = cx_fail(err, r, "save");
rollback:
	resume_here(v, res, err);
out:
	frozen_free(&f);
	cprxfer_state_free(st);
	return r;
}

int handoff_restore_file(struct vmm *v, struct vmm_err *err)
{
	cprxfer_state *st = NULL;
	cprxfer_opts *o = NULL;
	struct frozen f = { 0 };
	int r;

	r = vmm_cprxfer_opts(v, &o, err);
	if (r < 0)
		return r;
	r = cprxfer_load_file_opts(v->o.restore, o, &st);
	cprxfer_opts_free(o);
	if (r < 0)
		return cx_fail(err, r, "load");
	vmm_thread_boost(true);
	r = build_from(v, st, 0, LAZY_RAM_LOW, err);
	if (r < 0)
		goto out;
	report_begin(v, st, st, "file");
	v->rep.t_main = v->t_main;
	v->rep.t_received = vmm_now_ns();
	r = machine_start(&v->m, true, err);
	if (r >= 0)
		r = get_frozen(st, v->m.ncpus, &f, err);
	if (r >= 0)
		r = machine_restore(&v->m, &f, err);
	if (r < 0)
		goto out;
	/* One guest, one runner: the file must not be restored twice. */
	if (unlink(v->o.restore) < 0) {
		r = vmm_errno(err, "unlink %s", v->o.restore);
		goto out;
	}
	v->rep.t_restored = vmm_now_ns();
	r = go_live(v, &f, err);
out:
	vmm_thread_boost(false);
	frozen_free(&f);
	cprxfer_state_free(st);
	return r;
}

/* ---- restart (systemd's fd store) ------------------------------------- */

#ifdef DEMO_VMM_HAVE_SYSTEMD
int handoff_restart_out(struct vmm *v, struct handoff_result *res,
			struct vmm_err *err)
{
	cprxfer_state *st = NULL;
	struct frozen f = { 0 };
	uint64_t t_stop, t_stopped;
	int r;

	memset(res, 0, sizeof(*res));
	if (!v->sd)
		return vmm_errf(err, -EINVAL, "restart mode needs --systemd");
	st = cprxfer_state_new();
	if (!st)
		return vmm_errf(err, -ENOMEM, "state: no memory");
	cprxfer_state_set_blockers(st, v->blockers);
	/* The RAM memfd, console and control fds go to the store. */
	r = put_common(v, st, true, err);
	if (r < 0)
		goto out;
	r = freeze(v, true, &f, &t_stop, &t_stopped, res, err);
	if (r >= 0)
		r = put_frozen(st, &f, false, NULL, err);
	if (r >= 0)
		r = put_times(st, t_stop, t_stopped, err);
	if (r < 0)
		goto rollback;
	r = cprxfer_sd_save(v->sd, st, CPRXFER_MODE_RESTART);
	if (r == 0)
		goto out;
	r = cx_fail(err, r, "restart save");
rollback:
	resume_here(v, res, err);
out:
	vmm_thread_boost(false);
	frozen_free(&f);
	cprxfer_state_free(st);
	return r;
}

int handoff_restart_in(struct vmm *v, struct vmm_err *err)
{
	cprxfer_state *st = NULL;
	cprxfer_opts *o = NULL;
	struct frozen f = { 0 };
	int r;

	r = cprxfer_sd_open(&v->sd);
	if (r < 0)
		return cx_fail(err, r, "fd store");
	r = vmm_cprxfer_opts(v, &o, err);
	if (r < 0)
		return r;
	r = cprxfer_sd_load(v->sd, o, &st);
	cprxfer_opts_free(o);
	if (r == -ENOENT)
		return r; /* first start, or after a crash: boot fresh */
	if (r < 0)
		return cx_fail(err, r, "load");
	vmm_thread_boost(true);
	r = take_fds(v, st, err);
	if (r >= 0)
		r = build_from(v, st, 0, LAZY_RAM_LOW, err);
	if (r < 0)
		goto out;
	report_begin(v, st, st, "restart");
	v->rep.t_main = v->t_main;
	v->rep.t_received = vmm_now_ns();
	r = machine_start(&v->m, true, err);
	if (r >= 0)
		r = get_frozen(st, v->m.ncpus, &f, err);
	if (r >= 0)
		r = machine_restore(&v->m, &f, err);
	if (r < 0)
		goto out;
	v->rep.t_restored = vmm_now_ns();
	r = go_live(v, &f, err);
out:
	vmm_thread_boost(false);
	frozen_free(&f);
	cprxfer_state_free(st);
	return r;
}
#else
int handoff_restart_out(struct vmm *v, struct handoff_result *res,
			struct vmm_err *err)
{
	(void)v;
	memset(res, 0, sizeof(*res));
	return vmm_errf(
		err, -ENOTSUP,
		"restart mode: this demo-vmm was built without libcprxfer-systemd");
}

int handoff_restart_in(struct vmm *v, struct vmm_err *err)
{
	(void)v;
	return vmm_errf(
		err, -ENOTSUP,
		"--systemd: this demo-vmm was built without libcprxfer-systemd");
}
#endif

/* ---- blockers and preflight -------------------------------------------- */

int handoff_blockers_init(struct vmm *v, struct vmm_err *err)
{
	char tty[64] = "";
	int r;

	if (v->blockers)
		return 0;
	v->blockers = cprxfer_blockers_new();
	if (!v->blockers)
		return vmm_errf(err, -ENOMEM, "blockers: no memory");
	if (!isatty(v->console_fd) ||
	    ttyname_r(v->console_fd, tty, sizeof(tty)) != 0)
		return 0;
	/*
	 * The serial device's host side is a terminal: a state file (or a
	 * kexec) would give the restored guest another console.
	 */
	r = cprxfer_blocker_add(
		v->blockers, CPRXFER_MODE_FILE | CPRXFER_MODE_KEXEC,
		"serial console is the terminal of its operator: it cannot travel in a state file or across a kexec",
		NULL);
	return r < 0 ? cx_fail(err, r, "blocker") : 0;
}

static uint32_t mode_bit(const char *mode)
{
	static const struct {
		const char *word;
		uint32_t bit;
	} modes[] = {
		{ "transfer", CPRXFER_MODE_TRANSFER },
		{ "exec", CPRXFER_MODE_EXEC },
		{ "file", CPRXFER_MODE_FILE },
		{ "restart", CPRXFER_MODE_RESTART },
		{ "kexec", CPRXFER_MODE_KEXEC },
	};

	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		if (!strcmp(mode, modes[i].word))
			return modes[i].bit;
	return 0;
}

int handoff_preflight(struct vmm *v, const char *mode, char *buf, size_t len,
		      struct vmm_err *err)
{
	uint32_t bit = mode_bit(mode);
	cprxfer_report *rep = NULL;
	cprxfer_state *st;
	const char *t;
	size_t k = 0;
	int r;

	if (!bit)
		return vmm_errf(err, -EINVAL, "unknown mode '%s'", mode);
	st = cprxfer_state_new();
	if (!st)
		return vmm_errf(err, -ENOMEM, "state: no memory");
	cprxfer_state_set_blockers(st, v->blockers);
	/* What the save of that mode would put in the state. */
	r = put_common(v, st, bit != CPRXFER_MODE_FILE, err);
	if (r >= 0) {
		r = cprxfer_preflight(st, bit, &rep);
		if (r < 0)
			r = cx_fail(err, r, "preflight");
	}
	/* One line: the report's lines joined by "; ". */
	for (t = r >= 0 ? cprxfer_report_text(rep) : ""; *t && k + 3 < len;
	     t++) {
		if (*t != '\n') {
			buf[k++] = *t;
		} else if (t[1]) {
			buf[k++] = ';';
			buf[k++] = ' ';
		}
	}
	if (len)
		buf[k < len ? k : len - 1] = 0;
	cprxfer_report_free(rep);
	cprxfer_state_free(st);
	return r;
}
