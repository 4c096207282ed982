/*
 * kvmcheck.c - standalone check of the demo-vmm KVM core, no libcprxfer.
 *
 * Boots the built-in guest on a memfd (default 256 MiB, 2 vCPUs), lets it
 * print tick lines for --run-ms, measures exit costs through the guest
 * mailbox, then stops the vCPUs, saves the whole VM, vCPU and serial
 * state as blobs and restores it into a second VM on the same memfd: in a
 * child process forked at start (it inherits the memfd and its mapping,
 * builds its VM before the stop and gets the state over a socketpair),
 * or with --same-process in this process.  The second VM runs for
 * --run-ms more; the check passes if every vCPU's counter continued and
 * the guest's own invariant checks held.
 *
 *   kvmcheck [--mem 256M] [--cpus 2] [--run-ms 1000] [--same-process]
 *            [--rounds N] [--inject corrupt|fault]
 *
 * --rounds N hands off N times in a row (in this process, 300 ms apart)
 * and checks the guest after each.
 *
 * --inject tests the guest's own checks instead: "corrupt" bumps cpu0's
 * counter in RAM during the handoff (the guest must print an ERROR
 * line), "fault" makes cpu0 execute hlt in ring 3 (the guest must print
 * its exception line).  Either passes only if the guest caught it.
 *
 * Exit status 0: pass, 1: the guest or a check failed, 77: no /dev/kvm.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "guest.h"
#include "serial.h"
#include "vcpu.h"
#include "vm.h"

#define PRINT_MS	500
#define STOP_TIMEOUT_MS 2000

struct options {
	uint64_t mem;
	unsigned int cpus;
	unsigned int run_ms;
	int same_process;
	int inject;
	unsigned int rounds; /* same-process handoffs */
	unsigned int msr_listed;
};

enum {
	INJECT_NONE,
	INJECT_CORRUPT,
	INJECT_FAULT
};

struct machine {
	struct vm *vm;
	struct vcpu *vcpu[GUEST_MAX_CPUS];
	unsigned int ncpus;
	struct serial *serial;
};

/* Everything the stop freezes: [0] VM + devices, [1 + i] vCPU i. */
struct frozen {
	struct blobset set[1 + GUEST_MAX_CPUS];
	unsigned int nsets;
};

static void frozen_free(struct frozen *f)
{
	for (unsigned int i = 0; i < f->nsets; i++)
		blobset_free(&f->set[i]);
	f->nsets = 0;
}

static void machine_destroy(struct machine *m)
{
	for (unsigned int i = 0; i < m->ncpus; i++)
		vcpu_destroy(m->vcpu[i]);
	vm_destroy(m->vm);
	serial_destroy(m->serial);
	memset(m, 0, sizeof(*m));
}

/* VM, slot, vCPUs; with boot, also default CPUID and boot registers. */
static int machine_build(struct machine *m, void *mem, uint64_t size,
			 unsigned int ncpus, int boot, struct vmm_err *err)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	unsigned int i;
	int r;

	memset(m, 0, sizeof(*m));
	r = serial_create(GUEST_COM1, STDOUT_FILENO, &m->serial, err);
	if (r < 0)
		return r;
	r = vm_create(&m->vm, err);
	if (r < 0)
		return r;
	r = vm_set_memory(m->vm, mem, size, err);
	if (r >= 0)
		r = vm_create_irqchip(m->vm, err); /* after the slot */
	if (r < 0)
		return r;
	for (i = 0; i < ncpus; i++) {
		r = vcpu_create(m->vm, i, &m->vcpu[i], err);
		if (r < 0)
			return r;
		m->ncpus++;
		if (!boot)
			continue;
		r = vcpu_set_default_cpuid(m->vcpu[i], err);
		if (r < 0)
			return r;
		r = vcpu_get_sregs(m->vcpu[i], &sregs, err);
		if (r < 0)
			return r;
		guest_boot_regs(i, &sregs, &regs);
		r = vcpu_set_boot_state(m->vcpu[i], &sregs, &regs, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int machine_start(struct machine *m, bool parked, struct vmm_err *err)
{
	struct vcpu_ops ops = { .pio = serial_pio, .opaque = m->serial };
	int r;

	for (unsigned int i = 0; i < m->ncpus; i++) {
		r = vcpu_start(m->vcpu[i], &ops, parked, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int machine_resume(struct machine *m, struct vmm_err *err)
{
	int r;

	for (unsigned int i = 0; i < m->ncpus; i++) {
		r = vcpu_resume(m->vcpu[i], err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int machine_stop(struct machine *m, struct vmm_err *err)
{
	int r = 0, r2;

	for (unsigned int i = 0; i < m->ncpus; i++)
		vcpu_stop_request(m->vcpu[i]);
	for (unsigned int i = 0; i < m->ncpus; i++) {
		r2 = vcpu_stop_wait(m->vcpu[i], STOP_TIMEOUT_MS, err);
		if (r2 < 0 && !r)
			r = r2;
	}
	return r;
}

static int machine_check(struct machine *m, struct vmm_err *err)
{
	for (unsigned int i = 0; i < m->ncpus; i++)
		if (vcpu_state(m->vcpu[i], err) == VCPU_FAILED)
			return err ? err->code : -EIO;
	return 0;
}

static int machine_save(struct machine *m, struct frozen *f,
			struct vmm_err *err)
{
	int r;

	f->nsets = 1 + m->ncpus;
	r = vm_save_state(m->vm, &f->set[0], err);
	if (r >= 0)
		r = serial_save_state(m->serial, &f->set[0], err);
	for (unsigned int i = 0; i < m->ncpus && r >= 0; i++)
		r = vcpu_save_state(m->vcpu[i], &f->set[1 + i], err);
	return r;
}

static int machine_restore(struct machine *m, const struct frozen *f,
			   struct vmm_err *err)
{
	int r;

	if (f->nsets != 1 + m->ncpus)
		return vmm_errf(err, -EINVAL, "state for %u vCPUs, have %u",
				f->nsets - 1, m->ncpus);
	r = vm_restore_state(m->vm, &f->set[0], err);
	if (r >= 0)
		r = serial_restore_state(m->serial, &f->set[0], err);
	for (unsigned int i = 0; i < m->ncpus && r >= 0; i++)
		r = vcpu_restore_state(m->vcpu[i], &f->set[1 + i], err);
	return r;
}

/* ---- a trivial stream for the forked child ---------------------------- */

static int xwrite(int fd, const void *buf, size_t len, struct vmm_err *err)
{
	const uint8_t *p = buf;
	ssize_t n;

	while (len) {
		n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return vmm_errno(err, "send");
		p += n;
		len -= n;
	}
	return 0;
}

static int xread(int fd, void *buf, size_t len, struct vmm_err *err)
{
	uint8_t *p = buf;
	ssize_t n;

	while (len) {
		n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return vmm_errno(err, "read");
		if (n == 0)
			return vmm_errf(err, -EPIPE, "peer closed");
		p += n;
		len -= n;
	}
	return 0;
}

/* u32 nsets, then per set u32 n, per blob u32 namelen, name, u32 len, data. */
static int frozen_send(int fd, const struct frozen *f, struct vmm_err *err)
{
	uint8_t hdr[4];
	int r;

	put_le32(hdr, f->nsets);
	r = xwrite(fd, hdr, 4, err);
	for (unsigned int s = 0; s < f->nsets && r >= 0; s++) {
		put_le32(hdr, f->set[s].n);
		r = xwrite(fd, hdr, 4, err);
		for (unsigned int i = 0; i < f->set[s].n && r >= 0; i++) {
			const struct blob *b = &f->set[s].b[i];

			put_le32(hdr, strlen(b->name));
			r = xwrite(fd, hdr, 4, err);
			if (r >= 0)
				r = xwrite(fd, b->name, strlen(b->name), err);
			put_le32(hdr, b->len);
			if (r >= 0)
				r = xwrite(fd, hdr, 4, err);
			if (r >= 0)
				r = xwrite(fd, b->data, b->len, err);
		}
	}
	return r;
}

static int frozen_recv(int fd, struct frozen *f, struct vmm_err *err)
{
	char name[BLOB_NAME_MAX];
	uint32_t nsets, n, len;
	uint8_t hdr[4], *data;
	int r;

	r = xread(fd, hdr, 4, err);
	if (r < 0)
		return r;
	nsets = get_le32(hdr);
	if (nsets > 1 + GUEST_MAX_CPUS)
		return vmm_errf(err, -EBADMSG, "%u state sets", nsets);
	for (unsigned int s = 0; s < nsets; s++) {
		f->nsets = s + 1;
		r = xread(fd, hdr, 4, err);
		if (r < 0)
			return r;
		n = get_le32(hdr);
		for (unsigned int i = 0; i < n; i++) {
			r = xread(fd, hdr, 4, err);
			if (r < 0)
				return r;
			len = get_le32(hdr);
			if (len >= BLOB_NAME_MAX)
				return vmm_errf(err, -EBADMSG, "name length");
			r = xread(fd, name, len, err);
			if (r < 0)
				return r;
			name[len] = 0;
			r = xread(fd, hdr, 4, err);
			if (r < 0)
				return r;
			len = get_le32(hdr);
			if (len > (1u << 20))
				return vmm_errf(err, -EBADMSG,
						"blob '%s': %u bytes", name,
						len);
			data = malloc(len ? len : 1);
			if (!data)
				return vmm_errf(err, -ENOMEM, "no memory");
			r = xread(fd, data, len, err);
			if (r < 0) {
				free(data);
				return r;
			}
			r = blobset_add(&f->set[s], name, data, len, err);
			if (r < 0)
				return r;
		}
	}
	return 0;
}

/* ---- reporting -------------------------------------------------------- */

static void snapshot(void *mem, unsigned int ncpus, struct guest_cpu_stats *st)
{
	for (unsigned int i = 0; i < ncpus; i++)
		guest_read_cpu(mem, i, &st[i]);
}

/* 0 if every vCPU runs and none reports an error. */
static int guest_healthy(const struct guest_cpu_stats *st, unsigned int n,
			 struct vmm_err *err)
{
	for (unsigned int i = 0; i < n; i++)
		if (st[i].state != PC_STATE_RUNNING)
			return vmm_errf(err, -EIO,
					"guest cpu%u: state %" PRIu64
					" error %" PRIu64,
					i, st[i].state, st[i].error);
	return 0;
}

static void msleep(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Guest-measured exit costs, through the mailbox (cpu0). */
static int measure(void *mem, const char *who, struct vmm_err *err)
{
	struct guest_mailbox_result res;
	int r;

	r = guest_mailbox(mem, MB_CMD_BENCH_PIO, 2000, 10000, &res, err);
	if (r < 0)
		return r;
	printf("[%s] port I/O exit from ring 0 (UART SCR read): %.1f us each (%" PRIu64
	       " in %" PRIu64 " us)\n",
	       who, (double)res.ns / 1000.0 / res.count, res.count, res.us);
	r = guest_mailbox(mem, MB_CMD_BENCH_SYSCALL, 2000, 10000, &res, err);
	if (r < 0)
		return r;
	printf("[%s] ring 3 -> ud2 -> ring 0 -> iretq round trip: %.1f us each\n",
	       who, (double)res.ns / 1000.0 / res.count);
	return 0;
}

static int touch(void *mem, const char *who, const char *when,
		 struct vmm_err *err)
{
	struct guest_mailbox_result res;
	int r;

	r = guest_mailbox(mem, MB_CMD_TOUCH_READ, 0, 60000, &res, err);
	if (r < 0)
		return r;
	printf("[%s] guest touched %" PRIu64 " pages (%" PRIu64
	       " MiB) %s: %" PRIu64 " us\n",
	       who, res.count, res.count >> 8, when, res.us);
	return 0;
}

/* ---- the new side: restore and run ------------------------------------ */

struct restore_times {
	uint64_t recv_done, restored, first_run;
};

/* Restore f into m, start it, return the times. */
static int restore_and_run(struct machine *m, const struct frozen *f,
			   struct restore_times *t, struct vmm_err *err)
{
	int r;

	r = machine_restore(m, f, err);
	if (r < 0)
		return r;
	t->restored = vmm_now_ns();
	r = machine_resume(m, err);
	if (r < 0)
		return r;
	/* first_run_ns is set by each vCPU thread right before KVM_RUN. */
	t->first_run = 0;
	for (unsigned int i = 0; i < m->ncpus; i++) {
		while (!__atomic_load_n(&m->vcpu[i]->first_run_ns,
					__ATOMIC_ACQUIRE))
			nanosleep(&(struct timespec){ 0, 20000 }, NULL);
		if (m->vcpu[i]->first_run_ns > t->first_run)
			t->first_run = m->vcpu[i]->first_run_ns;
	}
	return 0;
}

/* After the restore: run, check, report; 0 if the guest carried on. */
static int new_side_run(struct machine *m, void *mem, const char *who,
			const struct guest_cpu_stats *before,
			const struct options *o, struct vmm_err *err)
{
	struct guest_cpu_stats after[GUEST_MAX_CPUS];
	uint64_t khz = guest_tsc_khz(mem);
	int r;

	msleep(30);
	snapshot(mem, m->ncpus, after);
	for (unsigned int i = 0; i < m->ncpus; i++)
		printf("[%s] cpu%u: pause the guest measured across the handoff: %" PRIu64
		       " us\n",
		       who, i, after[i].gap_max_cycles * 1000 / khz);
	if (o->inject == INJECT_CORRUPT) {
		msleep(100);
		snapshot(mem, m->ncpus, after);
		if (after[0].state == PC_STATE_ERROR &&
		    after[0].error == PC_ERR_COUNTER) {
			printf("[%s] injected corruption detected by the guest\n",
			       who);
			return 0;
		}
		return vmm_errf(err, -EIO, "injected corruption not detected");
	}
	r = touch(mem, who, "right after the restore (cold)", err);
	if (r < 0)
		return r;
	r = touch(mem, who, "again (warm)", err);
	if (r < 0)
		return r;
	msleep(o->run_ms);
	r = machine_check(m, err);
	if (r < 0)
		return r;
	snapshot(mem, m->ncpus, after);
	for (unsigned int i = 0; i < m->ncpus; i++) {
		printf("[%s] cpu%u counter %" PRIu64 " -> %" PRIu64
		       " ticks %" PRIu64 " -> %" PRIu64
		       " gap-max since the stop %" PRIu64 " us\n",
		       who, i, before[i].counter, after[i].counter,
		       before[i].ticks, after[i].ticks,
		       after[i].gap_max_cycles * 1000 / khz);
		if (after[i].counter <= before[i].counter)
			return vmm_errf(err, -EIO,
					"cpu%u counter did not continue", i);
	}
	return guest_healthy(after, m->ncpus, err);
}

/* Forked child: prepare on "p", restore on the state, report, run. */
static int child_main(int sock, void *mem, const struct options *o,
		      struct vmm_err *err)
{
	struct guest_cpu_stats before[GUEST_MAX_CPUS];
	struct machine m = { 0 };
	struct frozen f = { 0 };
	struct restore_times t;
	uint64_t t0, msg[3];
	char c;
	int r;

	r = xread(sock, &c, 1, err);
	if (r < 0)
		return r;
	/*
	 * Prepare, while the old guest still runs: fault in this process's
	 * page tables for the inherited RAM mapping (fork copies none for a
	 * shared mapping), then VM, slot, vCPUs.
	 */
	t0 = vmm_now_ns();
	if (madvise(mem, o->mem, MADV_POPULATE_WRITE) < 0) {
		r = vmm_errno(err, "madvise(MADV_POPULATE_WRITE)");
		goto out;
	}
	printf("[child] RAM mapping prefaulted in %.0f ms\n",
	       (vmm_now_ns() - t0) / 1e6);
	t0 = vmm_now_ns();
	r = machine_build(&m, mem, o->mem, o->cpus, 0, err);
	if (r >= 0)
		r = machine_start(&m, true, err);
	if (r < 0)
		goto out;
	msg[0] = vmm_now_ns() - t0;
	r = xwrite(sock, msg, 8, err);
	if (r < 0)
		goto out;
	r = frozen_recv(sock, &f, err);
	if (r < 0)
		goto out;
	t.recv_done = vmm_now_ns();
	snapshot(mem, o->cpus, before);
	r = restore_and_run(&m, &f, &t, err);
	if (r < 0)
		goto out;
	msg[0] = t.recv_done;
	msg[1] = t.restored;
	msg[2] = t.first_run;
	r = xwrite(sock, msg, sizeof(msg), err);
	if (r < 0)
		goto out;
	r = new_side_run(&m, mem, "child", before, o, err);
out:
	frozen_free(&f);
	machine_destroy(&m);
	return r;
}

/* ---- main ------------------------------------------------------------- */

static int parse_options(int argc, char **argv, struct options *o,
			 struct vmm_err *err)
{
	static const struct option longopts[] = {
		{ "mem", required_argument, NULL, 'm' },
		{ "cpus", required_argument, NULL, 'c' },
		{ "run-ms", required_argument, NULL, 'r' },
		{ "same-process", no_argument, NULL, 's' },
		{ "inject", required_argument, NULL, 'i' },
		{ "rounds", required_argument, NULL, 'n' },
		{ 0 }
	};
	int c;

	o->mem = 256ull << 20;
	o->cpus = 2;
	o->run_ms = 1000;
	o->same_process = 0;
	o->inject = INJECT_NONE;
	o->rounds = 1;
	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (c) {
		case 'm':
			if (vmm_parse_size(optarg, &o->mem) < 0)
				return vmm_errf(err, -EINVAL, "bad --mem %s",
						optarg);
			break;
		case 'c':
			o->cpus = atoi(optarg);
			break;
		case 'r':
			o->run_ms = atoi(optarg);
			break;
		case 's':
			o->same_process = 1;
			break;
		case 'n':
			o->rounds = atoi(optarg);
			break;
		case 'i':
			if (!strcmp(optarg, "corrupt"))
				o->inject = INJECT_CORRUPT;
			else if (!strcmp(optarg, "fault"))
				o->inject = INJECT_FAULT;
			else
				return vmm_errf(err, -EINVAL,
						"--inject corrupt|fault");
			break;
		default:
			return vmm_errf(
				err, -EINVAL,
				"usage: kvmcheck [--mem SIZE] [--cpus N] [--run-ms MS] [--same-process] [--rounds N] [--inject corrupt|fault]");
		}
	}
	if (o->rounds > 1)
		o->same_process = 1;
	if (!o->cpus || o->cpus > GUEST_MAX_CPUS)
		return vmm_errf(err, -EINVAL, "--cpus 1..%d", GUEST_MAX_CPUS);
	return 0;
}

static size_t state_bytes(const struct blobset *set)
{
	size_t n = 0;

	for (unsigned int i = 0; i < set->n; i++)
		n += set->b[i].len;
	return n;
}

static unsigned int msr_count(const struct blobset *set)
{
	const struct blob *b = blobset_find(set, "msrs");

	return b && b->len >= BLOB_HDR + 8 ? get_le32(b->data + BLOB_HDR) : 0;
}

/*
 * Rounds 2..N of --rounds: *cur runs; hand it off to a fresh VM built
 * (parked) before the stop, check the guest carried on, repeat.
 */
static int more_rounds(struct machine *cur, void *mem, const struct options *o,
		       struct vmm_err *err)
{
	struct guest_cpu_stats st[GUEST_MAX_CPUS], prev[GUEST_MAX_CPUS];
	uint64_t khz = guest_tsc_khz(mem), t0, worst = 0, gap;
	struct restore_times t;
	struct machine next;
	struct frozen f;
	int r;

	for (unsigned int round = 2; round <= o->rounds; round++) {
		msleep(300);
		memset(&f, 0, sizeof(f));
		r = machine_build(&next, mem, o->mem, o->cpus, 0, err);
		if (r >= 0)
			r = machine_start(&next, true, err);
		if (r < 0)
			goto fail;
		t0 = vmm_now_ns();
		r = machine_stop(cur, err);
		if (r >= 0)
			r = machine_save(cur, &f, err);
		if (r < 0)
			goto fail;
		for (unsigned int i = 0; i < o->cpus; i++)
			memset((uint8_t *)mem + GUEST_PERCPU_ADDR +
				       ((uint64_t)i << GUEST_PERCPU_SHIFT) +
				       PC_GAP_MAX,
			       0, 8);
		snapshot(mem, o->cpus, prev);
		t.recv_done = vmm_now_ns();
		r = restore_and_run(&next, &f, &t, err);
		frozen_free(&f);
		if (r < 0)
			goto fail;
		machine_destroy(cur);
		*cur = next;
		msleep(30);
		r = machine_check(cur, err);
		if (r < 0)
			return r;
		snapshot(mem, o->cpus, st);
		r = guest_healthy(st, o->cpus, err);
		if (r < 0)
			return r;
		gap = 0;
		for (unsigned int i = 0; i < o->cpus; i++) {
			if (st[i].counter <= prev[i].counter)
				return vmm_errf(err, -EIO,
						"round %u: cpu%u stuck", round,
						i);
			if (st[i].gap_max_cycles > gap)
				gap = st[i].gap_max_cycles;
		}
		gap = gap * 1000 / khz;
		if (gap > worst)
			worst = gap;
		printf("[round %u] blackout %.0f us, guest-measured pause %" PRIu64
		       " us, counters continue\n",
		       round, (t.first_run - t0) / 1e3, gap);
	}
	printf("[rounds] %u handoffs, worst guest-measured pause %" PRIu64
	       " us\n",
	       o->rounds, worst);
	return 0;
fail:
	frozen_free(&f);
	machine_destroy(&next);
	return r;
}

static int run(struct options *o, struct vmm_err *err)
{
	struct guest_cpu_stats before[GUEST_MAX_CPUS];
	struct machine a = { 0 }, b = { 0 };
	struct frozen f = { 0 };
	struct restore_times t = { 0 };
	uint64_t t0, t_stop0, t_stopped, t_saved, t_destroy, prep_ns;
	uint64_t msg[3];
	int sv[2] = { -1, -1 }, memfd, r, status;
	pid_t child = -1;
	void *mem;

	r = vcpu_signal_setup(err);
	if (r < 0)
		return r;
	memfd = memfd_create("demo-vmm-ram", MFD_CLOEXEC);
	if (memfd < 0)
		return vmm_errno(err, "memfd_create");
	if (ftruncate(memfd, o->mem) < 0) {
		r = vmm_errno(err, "ftruncate memfd");
		close(memfd);
		return r;
	}
	mem = mmap(NULL, o->mem, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (mem == MAP_FAILED) {
		r = vmm_errno(err, "mmap guest RAM");
		close(memfd);
		return r;
	}

	/* Allocate the RAM up front, as a VMM with preallocation would. */
	t0 = vmm_now_ns();
	if (madvise(mem, o->mem, MADV_POPULATE_WRITE) < 0) {
		r = vmm_errno(err, "madvise(MADV_POPULATE_WRITE)");
		goto out;
	}
	printf("[old] guest RAM populated in %.0f ms\n",
	       (vmm_now_ns() - t0) / 1e6);

	/* Fork first, before any VM or thread exists: the child inherits
	 * the memfd and its shared mapping, nothing else of KVM. */
	if (!o->same_process) {
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) <
		    0) {
			r = vmm_errno(err, "socketpair");
			goto out;
		}
		fflush(stdout);
		child = fork();
		if (child < 0) {
			r = vmm_errno(err, "fork");
			goto out;
		}
		if (child == 0) {
			struct vmm_err cerr = { 0 };

			close(sv[0]);
			r = child_main(sv[1], mem, o, &cerr);
			fflush(stdout);
			if (r < 0)
				fprintf(stderr, "kvmcheck child: %s\n",
					cerr.msg);
			_exit(r < 0 ? 1 : 0);
		}
		close(sv[1]);
		sv[1] = -1;
	}

	r = machine_build(&a, mem, o->mem, o->cpus, 1, err);
	if (r < 0)
		goto out;
	o->msr_listed = a.vm->msrs->nmsrs;
	r = guest_setup(mem, o->mem, o->cpus, a.vm->tsc_khz, PRINT_MS, err);
	if (r < 0)
		goto out;
	printf("[old] %u vCPUs, %" PRIu64
	       " MiB, TSC %u kHz, MSR list %u, xsave %d bytes\n",
	       o->cpus, o->mem >> 20, a.vm->tsc_khz, a.vm->msrs->nmsrs,
	       a.vm->xsave_size);
	r = machine_start(&a, false, err);
	if (r < 0)
		goto out;
	msleep(300);
	r = machine_check(&a, err);
	if (r < 0)
		goto out;
	if (o->inject == INJECT_FAULT) {
		struct guest_mailbox_result res;

		guest_mailbox(mem, MB_CMD_FAULT, 0, 500, &res, NULL);
		snapshot(mem, o->cpus, before);
		if (before[0].state == PC_STATE_FAULT &&
		    before[0].error == 13) {
			printf("[old] injected #GP reported by the guest\n");
			r = 0;
		} else {
			r = vmm_errf(err, -EIO, "injected fault not seen");
		}
		goto out;
	}
	r = measure(mem, "old", err);
	if (r < 0)
		goto out;
	r = touch(mem, "old", "(first touch)", err);
	if (r < 0)
		goto out;
	r = touch(mem, "old", "(warm)", err);
	if (r < 0)
		goto out;
	msleep(o->run_ms);
	r = machine_check(&a, err);
	if (r < 0)
		goto out;
	snapshot(mem, o->cpus, before);
	r = guest_healthy(before, o->cpus, err);
	if (r < 0)
		goto out;

	/* Prepare the new VM while the guest still runs. */
	t_stop0 = vmm_now_ns();
	if (child > 0) {
		r = xwrite(sv[0], "p", 1, err);
		if (r >= 0)
			r = xread(sv[0], &prep_ns, 8, err);
	} else {
		r = machine_build(&b, mem, o->mem, o->cpus, 0, err);
		if (r >= 0)
			r = machine_start(&b, true, err);
		prep_ns = vmm_now_ns() - t_stop0;
	}
	if (r < 0)
		goto out;

	/* Blackout starts. */
	t_stop0 = vmm_now_ns();
	r = machine_stop(&a, err);
	if (r < 0)
		goto out;
	t_stopped = vmm_now_ns();
	r = machine_save(&a, &f, err);
	if (r < 0)
		goto out;
	/* Harness only: zero gap-max so the guest reports the pause alone. */
	for (unsigned int i = 0; i < o->cpus; i++)
		memset((uint8_t *)mem + GUEST_PERCPU_ADDR +
			       ((uint64_t)i << GUEST_PERCPU_SHIFT) + PC_GAP_MAX,
		       0, 8);
	if (o->inject == INJECT_CORRUPT)
		(*(uint64_t *)((uint8_t *)mem + GUEST_PERCPU_ADDR +
			       PC_COUNTER))++;
	snapshot(mem, o->cpus, before);
	t_saved = vmm_now_ns();
	if (child > 0) {
		r = frozen_send(sv[0], &f, err);
		if (r >= 0)
			r = xread(sv[0], msg, sizeof(msg), err);
		if (r < 0)
			goto out;
		t.recv_done = msg[0];
		t.restored = msg[1];
		t.first_run = msg[2];
	} else {
		t.recv_done = t_saved;
		r = restore_and_run(&b, &f, &t, err);
		if (r < 0)
			goto out;
	}
	t_destroy = vmm_now_ns();
	machine_destroy(&a);
	t_destroy = vmm_now_ns() - t_destroy;

	printf("[handoff] new VM built before the stop: %.0f us\n",
	       prep_ns / 1e3);
	printf("[handoff] stop %.0f us, save %.0f us, transfer %.0f us, restore %.0f us, start %.0f us\n",
	       (t_stopped - t_stop0) / 1e3, (t_saved - t_stopped) / 1e3,
	       (t.recv_done - t_saved) / 1e3, (t.restored - t.recv_done) / 1e3,
	       (t.first_run - t.restored) / 1e3);
	printf("[handoff] blackout (stop requested -> all new vCPUs in KVM_RUN): %.0f us; old VM destroyed after in %.0f us\n",
	       (t.first_run - t_stop0) / 1e3, t_destroy / 1e3);
	printf("[handoff] vcpu0 state: %u blobs, %zu bytes, %u MSRs of the %u listed\n",
	       f.set[1].n, state_bytes(&f.set[1]), msr_count(&f.set[1]),
	       o->msr_listed);
	if (o->rounds > 1 && child < 0) {
		r = more_rounds(&b, mem, o, err);
		if (r < 0)
			goto out;
	}

	if (child > 0) {
		if (waitpid(child, &status, 0) < 0) {
			r = vmm_errno(err, "waitpid");
			goto out;
		}
		child = -1;
		if (!WIFEXITED(status) || WEXITSTATUS(status))
			r = vmm_errf(err, -EIO, "the new VMM (child) failed");
	} else {
		r = new_side_run(&b, mem, "new", before, o, err);
	}
out:
	if (child > 0) {
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
	}
	frozen_free(&f);
	machine_destroy(&b);
	machine_destroy(&a);
	if (sv[0] >= 0)
		close(sv[0]);
	if (sv[1] >= 0)
		close(sv[1]);
	munmap(mem, o->mem);
	close(memfd);
	return r;
}

int main(int argc, char **argv)
{
	struct vmm_err err = { 0 };
	struct options o;
	int r;

	setvbuf(stdout, NULL, _IOLBF, 0);
	r = parse_options(argc, argv, &o, &err);
	if (r < 0) {
		fprintf(stderr, "kvmcheck: %s\n", err.msg);
		return 2;
	}
	if (access("/dev/kvm", R_OK | W_OK) < 0) {
		fprintf(stderr, "kvmcheck: skip: no usable /dev/kvm\n");
		return 77;
	}
	r = run(&o, &err);
	if (r < 0) {
		fprintf(stderr, "kvmcheck: FAIL: %s\n", err.msg);
		return 1;
	}
	printf("kvmcheck: PASS\n");
	return 0;
}
