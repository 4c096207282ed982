/*
 * vcpu.c - vCPU creation, the KVM_RUN thread, stop/resume and the vCPU
 * state save/restore (see vcpu.h).
 */
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "vcpu.h"

#define VCPU_STATE_VERSION 1
#define CPUID_MAX_ENTRIES  256

enum {
	VCPU_REQ_RUN,
	VCPU_REQ_STOP,
	VCPU_REQ_QUIT
};

#define VCPU_BOOST_NICE (-15)
/* The handoff's main thread preempts the vCPU threads it boosts. */
#define MAIN_BOOST_RT_PRIO 10
#define VCPU_BOOST_RT_PRIO 5

static void boost_tid(int tid, bool on, int prio, int nice);

/* The kvm_run of the vCPU this thread runs, for the kick handler. */
static __thread struct kvm_run *tls_run;

static void kick_handler(int sig)
{
	struct kvm_run *run = tls_run;

	(void)sig;
	if (run)
		__atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
}

int vcpu_signal_setup(struct vmm_err *err)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = kick_handler;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must see EINTR */
	if (sigaction(VCPU_KICK_SIGNAL, &sa, NULL) < 0)
		return vmm_errno(err, "sigaction(SIGUSR1)");
	return 0;
}

int vcpu_create(struct vm *vm, unsigned int id, struct vcpu **out,
		struct vmm_err *err)
{
	pthread_condattr_t ca;
	struct vcpu *v;
	int r;

	v = calloc(1, sizeof(*v));
	if (!v)
		return vmm_errf(err, -ENOMEM, "vcpu%u: no memory", id);
	v->vm = vm;
	v->id = id;
	v->run = MAP_FAILED;
	v->state = VCPU_NEW;
	pthread_mutex_init(&v->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&v->cond, &ca);
	pthread_condattr_destroy(&ca);
	/* KVM gives vCPU fds O_CLOEXEC itself. */
	v->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)id);
	if (v->fd < 0) {
		r = vmm_errno(err, "vcpu%u: KVM_CREATE_VCPU", id);
		goto fail;
	}
	v->run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED,
		      v->fd, 0);
	if (v->run == MAP_FAILED) {
		r = vmm_errno(err, "vcpu%u: mmap kvm_run", id);
		goto fail;
	}
	if (!vm->tsc_khz) {
		r = ioctl(v->fd, KVM_GET_TSC_KHZ, 0);
		if (r <= 0) {
			r = vmm_errno(err, "vcpu%u: KVM_GET_TSC_KHZ", id);
			goto fail;
		}
		vm->tsc_khz = r;
	}
	*out = v;
	return 0;
fail:
	vcpu_destroy(v);
	return r;
}

static int set_cpuid(struct vcpu *v, const struct kvm_cpuid2 *c,
		     struct vmm_err *err)
{
	size_t sz = sizeof(*c) + c->nent * sizeof(c->entries[0]);
	struct kvm_cpuid2 *copy;

	if (v->cpuid_set && v->cpuid_set->nent == c->nent &&
	    !memcmp(v->cpuid_set, c, sz))
		return 0;
	if (ioctl(v->fd, KVM_SET_CPUID2, c) < 0)
		return vmm_errno(err, "vcpu%u: KVM_SET_CPUID2 (%u entries)",
				 v->id, c->nent);
	copy = malloc(sz);
	if (copy)
		memcpy(copy, c, sz);
	free(v->cpuid_set);
	v->cpuid_set = copy;
	return 0;
}

int vcpu_set_default_cpuid(struct vcpu *v, struct vmm_err *err)
{
	const struct kvm_cpuid2 *sup = v->vm->cpuid;
	size_t sz = sizeof(*sup) + sup->nent * sizeof(sup->entries[0]);
	struct kvm_cpuid2 *c;
	unsigned int i;
	int r;

	c = malloc(sz);
	if (!c)
		return vmm_errf(err, -ENOMEM, "vcpu%u: no memory", v->id);
	memcpy(c, sup, sz);
	for (i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];

		if (e->function == 1)
			e->ebx = (e->ebx & 0x00ffffff) | v->id << 24;
		else if (e->function == 0xb || e->function == 0x1f)
			e->edx = v->id;
	}
	r = set_cpuid(v, c, err);
	free(c);
	return r;
}

/* Decode a "cpuid" blob into a malloc'd struct kvm_cpuid2. */
static int cpuid_from_blob(const struct blobset *set, struct kvm_cpuid2 **out,
			   struct vmm_err *err)
{
	const size_t esz = sizeof(struct kvm_cpuid_entry2);
	struct kvm_cpuid2 *c;
	const uint8_t *p;
	size_t len;
	uint32_t n;
	int r;

	r = blob_payload(set, "cpuid", VCPU_STATE_VERSION, 8,
			 8 + CPUID_MAX_ENTRIES * esz, &p, &len, err);
	if (r < 0)
		return r;
	n = get_le32(p);
	if (len != 8 + n * esz)
		return vmm_errf(err, -EBADMSG,
				"state 'cpuid': %u entries in %zu bytes", n,
				len);
	c = calloc(1, sizeof(*c) + n * esz);
	if (!c)
		return vmm_errf(err, -ENOMEM, "cpuid: no memory");
	c->nent = n;
	memcpy(c->entries, p + 8, n * esz);
	*out = c;
	return 0;
}

int vcpu_set_cpuid_blob(struct vcpu *v, const struct blobset *set,
			struct vmm_err *err)
{
	struct kvm_cpuid2 *c = NULL;
	int r;

	r = cpuid_from_blob(set, &c, err);
	if (r < 0)
		return r;
	r = set_cpuid(v, c, err);
	free(c);
	return r;
}

int vcpu_cpuid_blob(struct vcpu *v, struct blobset *set, struct vmm_err *err)
{
	const size_t esz = sizeof(struct kvm_cpuid_entry2);
	const struct kvm_cpuid2 *c = v->cpuid_set;
	uint8_t *b;
	size_t len;

	if (!c)
		return vmm_errf(err, -ENOENT, "vcpu%u: no CPUID set", v->id);
	b = blob_alloc(VCPU_STATE_VERSION, 8 + c->nent * esz, &len);
	if (b) {
		put_le32(b + BLOB_HDR, c->nent);
		memcpy(b + BLOB_HDR + 8, c->entries, c->nent * esz);
	}
	return blobset_add(set, "cpuid", b, len, err);
}

int vcpu_run_sync(struct vcpu *v, uint32_t *reason, struct vmm_err *err)
{
	if (v->thread_started)
		return vmm_errf(err, -EBUSY, "vcpu%u: has a thread", v->id);
	for (;;) {
		if (ioctl(v->fd, KVM_RUN, 0) < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			return vmm_errno(err, "vcpu%u: KVM_RUN", v->id);
		}
		if (v->run->exit_reason == KVM_EXIT_INTR)
			continue;
		*reason = v->run->exit_reason;
		return 0;
	}
}

int vcpu_get_sregs(struct vcpu *v, struct kvm_sregs *sregs, struct vmm_err *err)
{
	if (ioctl(v->fd, KVM_GET_SREGS, sregs) < 0)
		return vmm_errno(err, "vcpu%u: KVM_GET_SREGS", v->id);
	return 0;
}

int vcpu_set_boot_state(struct vcpu *v, const struct kvm_sregs *sregs,
			const struct kvm_regs *regs, struct vmm_err *err)
{
	struct kvm_mp_state mp = { .mp_state = KVM_MP_STATE_RUNNABLE };

	if (ioctl(v->fd, KVM_SET_SREGS, sregs) < 0)
		return vmm_errno(err, "vcpu%u: KVM_SET_SREGS", v->id);
	if (ioctl(v->fd, KVM_SET_REGS, regs) < 0)
		return vmm_errno(err, "vcpu%u: KVM_SET_REGS", v->id);
	/* kvm_pvm starts APs UNINITIALIZED (waiting for INIT/SIPI). */
	if (ioctl(v->fd, KVM_SET_MP_STATE, &mp) < 0)
		return vmm_errno(err, "vcpu%u: KVM_SET_MP_STATE", v->id);
	return 0;
}

/* ---- the vCPU thread ------------------------------------------------- */

static void vcpu_fail(struct vcpu *v, const struct vmm_err *e)
{
	pthread_mutex_lock(&v->lock);
	v->error = *e;
	v->state = VCPU_FAILED;
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
}

static uint64_t guest_rip(struct vcpu *v)
{
	struct kvm_regs regs;

	/* Our own thread, not in KVM_RUN: the ioctl is allowed here. */
	if (ioctl(v->fd, KVM_GET_REGS, &regs) < 0)
		return ~0ull;
	return regs.rip;
}

static int handle_io(struct vcpu *v, struct vmm_err *err)
{
	struct kvm_run *run = v->run;
	uint8_t *data = (uint8_t *)run + run->io.data_offset;
	bool wr = run->io.direction == KVM_EXIT_IO_OUT;
	unsigned int i;
	int r;

	v->exits_io++;
	for (i = 0; i < run->io.count; i++) {
		if (v->ops.pio) {
			r = v->ops.pio(v->ops.opaque, run->io.port, wr,
				       data + i * run->io.size, run->io.size);
			if (r < 0)
				return vmm_errf(err, r,
						"vcpu%u: port 0x%x %s failed",
						v->id, run->io.port,
						wr ? "write" : "read");
		} else if (!wr) {
			memset(data + i * run->io.size, 0xff, run->io.size);
		}
	}
	return 0;
}

static int handle_exit(struct vcpu *v, struct vmm_err *err)
{
	struct kvm_run *run = v->run;
	char hex[200];
	unsigned int i, n;
	size_t off;
	int r;

	switch (run->exit_reason) {
	case KVM_EXIT_IO:
		return handle_io(v, err);
	case KVM_EXIT_MMIO:
		v->exits_mmio++;
		r = vm_mmio_ram(v->vm, run->mmio.phys_addr, run->mmio.is_write,
				run->mmio.data, run->mmio.len);
		if (r < 0)
			return vmm_errf(
				err, r,
				"vcpu%u: RAM at 0x%llx: its memslot failed",
				v->id, (unsigned long long)run->mmio.phys_addr);
		if (r > 0)
			return 0;
		if (v->ops.mmio)
			return v->ops.mmio(v->ops.opaque, run->mmio.phys_addr,
					   run->mmio.is_write, run->mmio.data,
					   run->mmio.len);
		if (!run->mmio.is_write)
			memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
		return 0;
	case KVM_EXIT_HLT:
		/* Only without an in-kernel irqchip: wait a little. */
		v->exits_other++;
		usleep(1000);
		return 0;
	case KVM_EXIT_INTR:
		v->exits_other++;
		return 0;
	case KVM_EXIT_SHUTDOWN:
		return vmm_errf(
			err, -EFAULT,
			"vcpu%u: guest shutdown (triple fault) near rip 0x%llx",
			v->id, (unsigned long long)guest_rip(v));
	case KVM_EXIT_FAIL_ENTRY:
		return vmm_errf(
			err, -EFAULT,
			"vcpu%u: KVM_EXIT_FAIL_ENTRY reason 0x%llx", v->id,
			(unsigned long long)
				run->fail_entry.hardware_entry_failure_reason);
	case KVM_EXIT_INTERNAL_ERROR:
		n = run->internal.ndata;
		if (n > 16)
			n = 16;
		off = 0;
		hex[0] = 0;
		for (i = 0; i < n && off < sizeof(hex) - 20; i++)
			off += snprintf(
				hex + off, sizeof(hex) - off, " %llx",
				(unsigned long long)run->internal.data[i]);
		return vmm_errf(
			err, -EFAULT,
			"vcpu%u: KVM_EXIT_INTERNAL_ERROR suberror %u%s at rip 0x%llx, data:%s",
			v->id, run->internal.suberror,
			run->internal.suberror == KVM_INTERNAL_ERROR_EMULATION
				? " (instruction the emulator lacks)"
				: "",
			(unsigned long long)guest_rip(v), hex);
	case KVM_EXIT_SYSTEM_EVENT:
		return vmm_errf(err, -EFAULT,
				"vcpu%u: guest system event %u (reset or off)",
				v->id, run->system_event.type);
	default:
		return vmm_errf(err, -ENOTSUP, "vcpu%u: unhandled exit %u",
				v->id, run->exit_reason);
	}
}

/*
 * Park: complete whatever exit KVM handed us with one KVM_RUN at
 * immediate_exit = 1, report STOPPED, wait for resume or quit.
 * Returns 1 to end the thread.
 */
static int vcpu_park(struct vcpu *v)
{
	struct vmm_err e = { 0 };
	int i, r;

	/* Nothing to complete before the first KVM_RUN (started parked). */
	__atomic_store_n(&v->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	for (i = v->never_ran ? 8 : 0; i < 8; i++) {
		r = ioctl(v->fd, KVM_RUN, 0);
		if (r < 0 && (errno == EINTR || errno == EAGAIN))
			break;
		if (r < 0) {
			vmm_errno(&e, "vcpu%u: KVM_RUN (immediate_exit)",
				  v->id);
			vcpu_fail(v, &e);
			return 1;
		}
		/* A completion that needed another exit: serve it. */
		r = handle_exit(v, &e);
		if (r < 0) {
			vcpu_fail(v, &e);
			return 1;
		}
	}
	pthread_mutex_lock(&v->lock);
	v->state = VCPU_STOPPED;
	pthread_cond_broadcast(&v->cond);
	while (v->req == VCPU_REQ_STOP)
		pthread_cond_wait(&v->cond, &v->lock);
	if (v->req == VCPU_REQ_QUIT) {
		v->state = VCPU_DONE;
		pthread_cond_broadcast(&v->cond);
		pthread_mutex_unlock(&v->lock);
		return 1;
	}
	v->state = VCPU_RUNNING;
	pthread_mutex_unlock(&v->lock);
	if (!v->never_ran)
		vmm_thread_boost(false); /* else just before KVM_RUN */
	/* Any kick for the stop just served was delivered before parking. */
	__atomic_store_n(&v->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
	return 0;
}

static void *vcpu_thread(void *arg)
{
	struct vcpu *v = arg;
	struct vmm_err e = { 0 };
	sigset_t set;
	int r;

	tls_run = v->run;
	__atomic_store_n(&v->tid, (int)syscall(SYS_gettid), __ATOMIC_RELEASE);
	/* Boosted until the first KVM_RUN: a new vCPU is the blackout's end. */
	boost_tid(0, true, VCPU_BOOST_RT_PRIO, 0);
	sigemptyset(&set);
	sigaddset(&set, VCPU_KICK_SIGNAL);
	pthread_sigmask(SIG_UNBLOCK, &set, NULL);
	for (;;) {
		if (__atomic_load_n(&v->req, __ATOMIC_SEQ_CST) !=
		    VCPU_REQ_RUN) {
			if (vcpu_park(v))
				break;
			continue;
		}
		if (v->never_ran) {
			v->never_ran = false;
			/*
			 * A handoff enters KVM_RUN still boosted, at once;
			 * machine_wait_running(), at a higher priority,
			 * demotes it as soon as it sees first_run_ns (tens
			 * of us): dropping the real-time priority here
			 * would let any waiting task take the CPU first.
			 */
			if (!v->handoff)
				boost_tid(0, false, 0, 0);
			__atomic_store_n(&v->first_run_ns, vmm_now_ns(),
					 __ATOMIC_RELEASE);
		}
		r = ioctl(v->fd, KVM_RUN, 0);
		if (r < 0) {
			if (errno == EINTR || errno == EAGAIN)
				continue;
			vmm_errno(&e, "vcpu%u: KVM_RUN", v->id);
			vcpu_fail(v, &e);
			break;
		}
		r = handle_exit(v, &e);
		if (r < 0) {
			vcpu_fail(v, &e);
			break;
		}
	}
	tls_run = NULL;
	return NULL;
}

int vcpu_start(struct vcpu *v, const struct vcpu_ops *ops, bool parked,
	       struct vmm_err *err)
{
	pthread_attr_t attr;
	int r;

	if (v->thread_started)
		return vmm_errf(err, -EBUSY, "vcpu%u: already started", v->id);
	v->ops = *ops;
	v->req = parked ? VCPU_REQ_STOP : VCPU_REQ_RUN;
	v->state = parked ? VCPU_STOPPED : VCPU_RUNNING;
	v->never_ran = true;
	/*
	 * Boosted from its first instruction (see vcpu_boost): a thread
	 * born at normal priority on a busy host waits a time slice.
	 */
	r = EPERM;
	if (pthread_attr_init(&attr) == 0) {
		struct sched_param sp = {
			.sched_priority = VCPU_BOOST_RT_PRIO,
		};

		v->demoted = false;
		if (!pthread_attr_setinheritsched(&attr,
						  PTHREAD_EXPLICIT_SCHED) &&
		    !pthread_attr_setschedpolicy(&attr, SCHED_FIFO) &&
		    !pthread_attr_setschedparam(&attr, &sp))
			r = pthread_create(&v->thread, &attr, vcpu_thread, v);
		pthread_attr_destroy(&attr);
	}
	if (r)
		r = pthread_create(&v->thread, NULL, vcpu_thread, v);
	if (r) {
		v->state = VCPU_NEW;
		return vmm_errf(err, -r, "vcpu%u: pthread_create: %s", v->id,
				strerror(r));
	}
	v->thread_started = true;
	return 0;
}

/*
 * The blackout's threads preempt whatever else the machine runs: a
 * real-time priority when allowed (root), else nice -15.  Only threads
 * that block (parked vCPUs, the handoff's main thread waiting on a
 * socket) are boosted, never one in KVM_RUN.  SCHED_RESET_ON_FORK: a
 * thread or process they create (a vCPU thread, libcprxfer's exec
 * helper tearing down the old address space) starts unboosted.
 */
static void boost_tid(int tid, bool on, int prio, int nice)
{
	struct sched_param sp = { .sched_priority = prio };

	if (!on) {
		sp.sched_priority = 0;
		sched_setscheduler(tid, SCHED_OTHER, &sp);
		setpriority(PRIO_PROCESS, tid, nice);
		return;
	}
	if (sched_setscheduler(tid, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) < 0)
		setpriority(PRIO_PROCESS, tid, VCPU_BOOST_NICE);
}

void vmm_thread_boost(bool on)
{
	boost_tid(0, on, MAIN_BOOST_RT_PRIO, 0);
}

void vcpu_boost(struct vcpu *v)
{
	int tid = __atomic_load_n(&v->tid, __ATOMIC_ACQUIRE);

	if (tid > 0)
		boost_tid(tid, true, VCPU_BOOST_RT_PRIO, 0);
}

void vcpu_unboost(struct vcpu *v)
{
	int tid = __atomic_load_n(&v->tid, __ATOMIC_ACQUIRE);

	if (tid > 0)
		boost_tid(tid, false, 0, 0);
}

bool vcpu_demote(struct vcpu *v)
{
	int tid = __atomic_load_n(&v->tid, __ATOMIC_ACQUIRE);

	if (v->demoted || tid <= 0 ||
	    !__atomic_load_n(&v->first_run_ns, __ATOMIC_ACQUIRE))
		return false;
	boost_tid(tid, false, 0, VCPU_BOOST_NICE);
	v->demoted = true;
	return true;
}

void vcpu_stop_request(struct vcpu *v)
{
	if (!v->thread_started)
		return;
	pthread_mutex_lock(&v->lock);
	if (v->req == VCPU_REQ_RUN)
		__atomic_store_n(&v->req, VCPU_REQ_STOP, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&v->lock);
	pthread_kill(v->thread, VCPU_KICK_SIGNAL);
}

int vcpu_stop_wait(struct vcpu *v, int timeout_ms, struct vmm_err *err)
{
	struct timespec ts;
	int r = 0;

	if (!v->thread_started)
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&v->lock);
	while (v->state == VCPU_RUNNING && !r)
		r = pthread_cond_timedwait(&v->cond, &v->lock, &ts);
	if (v->state == VCPU_STOPPED)
		r = 0;
	else if (v->state == VCPU_FAILED)
		r = vmm_errf(err, -EIO, "%s", v->error.msg);
	else if (r == ETIMEDOUT)
		r = vmm_errf(err, -ETIMEDOUT,
			     "vcpu%u: did not stop within %d ms", v->id,
			     timeout_ms);
	else
		r = vmm_errf(err, -EINVAL, "vcpu%u: not running", v->id);
	pthread_mutex_unlock(&v->lock);
	return r;
}

int vcpu_resume(struct vcpu *v, struct vmm_err *err)
{
	int r = 0;

	pthread_mutex_lock(&v->lock);
	if (v->state != VCPU_STOPPED)
		r = vmm_errf(err, -EINVAL, "vcpu%u: not stopped", v->id);
	else
		__atomic_store_n(&v->req, VCPU_REQ_RUN, __ATOMIC_SEQ_CST);
	pthread_cond_broadcast(&v->cond);
	pthread_mutex_unlock(&v->lock);
	return r;
}

enum vcpu_run_state vcpu_state(struct vcpu *v, struct vmm_err *err)
{
	enum vcpu_run_state s;

	pthread_mutex_lock(&v->lock);
	s = v->state;
	if (s == VCPU_FAILED && err)
		*err = v->error;
	pthread_mutex_unlock(&v->lock);
	return s;
}

/* ---- state save / restore -------------------------------------------- */

/* Save one fixed-size KVM structure with ioctl req into blob name. */
static int save_raw(struct vcpu *v, struct blobset *set, const char *name,
		    unsigned long req, const char *req_name, size_t size,
		    struct vmm_err *err)
{
	size_t len;
	uint8_t *b = blob_alloc(VCPU_STATE_VERSION, size, &len);

	if (!b)
		return vmm_errf(err, -ENOMEM, "vcpu%u: %s: no memory", v->id,
				name);
	if (ioctl(v->fd, req, b + BLOB_HDR) < 0) {
		free(b);
		return vmm_errno(err, "vcpu%u: %s", v->id, req_name);
	}
	return blobset_add(set, name, b, len, err);
}

static int restore_raw(struct vcpu *v, const struct blobset *set,
		       const char *name, unsigned long req,
		       const char *req_name, size_t size, struct vmm_err *err)
{
	const uint8_t *p;
	size_t len;
	void *buf;
	int r;

	r = blob_payload(set, name, VCPU_STATE_VERSION, size, size, &p, &len,
			 err);
	if (r < 0)
		return r;
	/* Copy: the payload sits at an 8-byte offset, KVM wants alignment. */
	buf = malloc(size);
	if (!buf)
		return vmm_errf(err, -ENOMEM, "vcpu%u: no memory", v->id);
	memcpy(buf, p, size);
	r = ioctl(v->fd, req, buf);
	free(buf);
	if (r < 0)
		return vmm_errno(err, "vcpu%u: %s", v->id, req_name);
	return 0;
}

static int save_cpuid(struct vcpu *v, struct blobset *set, struct vmm_err *err)
{
	const size_t esz = sizeof(struct kvm_cpuid_entry2);
	struct kvm_cpuid2 *c;
	uint8_t *b;
	size_t len;

	c = calloc(1, sizeof(*c) + CPUID_MAX_ENTRIES * esz);
	if (!c)
		return vmm_errf(err, -ENOMEM, "vcpu%u: no memory", v->id);
	c->nent = CPUID_MAX_ENTRIES;
	if (ioctl(v->fd, KVM_GET_CPUID2, c) < 0) {
		free(c);
		return vmm_errno(err, "vcpu%u: KVM_GET_CPUID2", v->id);
	}
	b = blob_alloc(VCPU_STATE_VERSION, 8 + c->nent * esz, &len);
	if (b) {
		put_le32(b + BLOB_HDR, c->nent);
		memcpy(b + BLOB_HDR + 8, c->entries, c->nent * esz);
	}
	free(c);
	return blobset_add(set, "cpuid", b, len, err);
}

static int save_xsave(struct vcpu *v, struct blobset *set, struct vmm_err *err)
{
	size_t size = v->vm->xsave_size, len;
	unsigned long req = size > sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2
							    : KVM_GET_XSAVE;
	struct kvm_xsave *x;
	uint8_t *b;

	/* Not KVM_GET_FPU: on kvm_pvm it loses MXCSR and the xmm registers. */
	x = calloc(1, size);
	if (!x)
		return vmm_errf(err, -ENOMEM, "vcpu%u: no memory", v->id);
	if (ioctl(v->fd, req, x) < 0) {
		free(x);
		return vmm_errno(err, "vcpu%u: KVM_GET_XSAVE", v->id);
	}
	b = blob_alloc(VCPU_STATE_VERSION, size, &len);
	if (b)
		memcpy(b + BLOB_HDR, x, size);
	free(x);
	return blobset_add(set, "xsave", b, len, err);
}

static int restore_xsave(struct vcpu *v, const struct blobset *set,
			 struct vmm_err *err)
{
	const uint8_t *p;
	size_t len;
	void *x;
	int r;

	r = blob_payload(set, "xsave", VCPU_STATE_VERSION,
			 sizeof(struct kvm_xsave), 1 << 20, &p, &len, err);
	if (r < 0)
		return r;
	if (len > (size_t)v->vm->xsave_size)
		return vmm_errf(err, -EBADMSG,
				"state 'xsave': %zu bytes, this KVM takes %d",
				len, v->vm->xsave_size);
	x = calloc(1, v->vm->xsave_size);
	if (!x)
		return vmm_errf(err, -ENOMEM, "vcpu%u: no memory", v->id);
	memcpy(x, p, len);
	r = ioctl(v->fd, KVM_SET_XSAVE, x);
	free(x);
	if (r < 0)
		return vmm_errno(err, "vcpu%u: KVM_SET_XSAVE", v->id);
	return 0;
}

static int save_msrs(struct vcpu *v, struct blobset *set, struct vmm_err *err)
{
	const struct kvm_msr_list *list = v->vm->msrs;
	unsigned int total = list->nmsrs, start = 0, got = 0, i;
	struct kvm_msrs *m;
	uint8_t *b, *p;
	size_t len;
	int r;

	m = calloc(1, sizeof(*m) + total * sizeof(m->entries[0]));
	if (!m)
		return vmm_errf(err, -ENOMEM, "vcpu%u: no memory", v->id);
	b = blob_alloc(VCPU_STATE_VERSION, 8 + total * 16, &len);
	if (!b) {
		free(m);
		return vmm_errf(err, -ENOMEM, "vcpu%u: no memory", v->id);
	}
	p = b + BLOB_HDR + 8;
	/*
	 * KVM_GET_MSRS stops at the first MSR it cannot read and returns
	 * how many it read: keep those, skip the refused one, go on.
	 */
	while (start < total) {
		m->nmsrs = total - start;
		for (i = 0; i < m->nmsrs; i++) {
			m->entries[i].index = list->indices[start + i];
			m->entries[i].data = 0;
		}
		r = ioctl(v->fd, KVM_GET_MSRS, m);
		if (r < 0) {
			r = vmm_errno(err, "vcpu%u: KVM_GET_MSRS", v->id);
			free(m);
			free(b);
			return r;
		}
		for (i = 0; i < (unsigned int)r; i++, got++) {
			put_le32(p + got * 16, m->entries[i].index);
			put_le64(p + got * 16 + 8, m->entries[i].data);
		}
		start += r + 1;
	}
	free(m);
	put_le32(b + BLOB_HDR, got);
	put_le32(b + 4, 8 + got * 16);
	len = BLOB_HDR + 8 + got * 16;
	return blobset_add(set, "msrs", b, len, err);
}

static int restore_msrs(struct vcpu *v, const struct blobset *set,
			struct vmm_err *err)
{
	const uint8_t *p;
	struct kvm_msrs *m;
	uint32_t n, i;
	size_t len;
	int r;

	r = blob_payload(set, "msrs", VCPU_STATE_VERSION, 8, 8 + 4096 * 16, &p,
			 &len, err);
	if (r < 0)
		return r;
	n = get_le32(p);
	if (len != 8 + (size_t)n * 16)
		return vmm_errf(err, -EBADMSG,
				"state 'msrs': %u MSRs in %zu bytes", n, len);
	m = calloc(1, sizeof(*m) + n * sizeof(m->entries[0]));
	if (!m)
		return vmm_errf(err, -ENOMEM, "vcpu%u: no memory", v->id);
	m->nmsrs = n;
	for (i = 0; i < n; i++) {
		m->entries[i].index = get_le32(p + 8 + i * 16);
		m->entries[i].data = get_le64(p + 8 + i * 16 + 8);
	}
	/* KVM_SET_MSRS stops at the first MSR it rejects: check the count. */
	r = ioctl(v->fd, KVM_SET_MSRS, m);
	if (r < 0)
		r = vmm_errno(err, "vcpu%u: KVM_SET_MSRS", v->id);
	else if ((uint32_t)r != n)
		r = vmm_errf(
			err, -EINVAL,
			"vcpu%u: KVM_SET_MSRS set %d of %u, refused MSR 0x%x = 0x%llx",
			v->id, r, n, m->entries[r].index,
			(unsigned long long)m->entries[r].data);
	else
		r = 0;
	free(m);
	return r;
}

#define RAW(name, get, set, type)                        \
	{                                                \
		name, get, #get, set, #set, sizeof(type) \
	}

static const struct raw_state {
	const char *name;
	unsigned long get;
	const char *get_name;
	unsigned long set;
	const char *set_name;
	size_t size;
} raw_sregs = RAW("sregs", KVM_GET_SREGS, KVM_SET_SREGS, struct kvm_sregs),
  raw_regs = RAW("regs", KVM_GET_REGS, KVM_SET_REGS, struct kvm_regs),
  raw_late[] = {
	RAW("events", KVM_GET_VCPU_EVENTS, KVM_SET_VCPU_EVENTS,
	    struct kvm_vcpu_events),
	RAW("mpstate", KVM_GET_MP_STATE, KVM_SET_MP_STATE,
	    struct kvm_mp_state),
	RAW("debugregs", KVM_GET_DEBUGREGS, KVM_SET_DEBUGREGS,
	    struct kvm_debugregs),
	RAW("lapic", KVM_GET_LAPIC, KVM_SET_LAPIC, struct kvm_lapic_state),
}, raw_xcrs = RAW("xcrs", KVM_GET_XCRS, KVM_SET_XCRS, struct kvm_xcrs);

int vcpu_save_state(struct vcpu *v, struct blobset *set, struct vmm_err *err)
{
	const struct raw_state *early[] = { &raw_sregs, &raw_regs };
	unsigned int i;
	int r;

	if (vcpu_state(v, NULL) == VCPU_RUNNING)
		return vmm_errf(err, -EBUSY, "vcpu%u: save while running",
				v->id);
	r = save_cpuid(v, set, err);
	for (i = 0; i < 2 && r >= 0; i++)
		r = save_raw(v, set, early[i]->name, early[i]->get,
			     early[i]->get_name, early[i]->size, err);
	if (r >= 0)
		r = save_xsave(v, set, err);
	if (r >= 0)
		r = save_raw(v, set, raw_xcrs.name, raw_xcrs.get,
			     raw_xcrs.get_name, raw_xcrs.size, err);
	if (r >= 0)
		r = save_msrs(v, set, err);
	for (i = 0; i < 4 && r >= 0; i++)
		r = save_raw(v, set, raw_late[i].name, raw_late[i].get,
			     raw_late[i].get_name, raw_late[i].size, err);
	return r < 0 ? r : 0;
}

int vcpu_restore_state(struct vcpu *v, const struct blobset *set,
		       struct vmm_err *err)
{
	const struct raw_state *early[] = { &raw_sregs, &raw_regs };
	unsigned int i;
	int r;

	if (v->thread_started &&
	    !__atomic_load_n(&v->never_ran, __ATOMIC_ACQUIRE))
		return vmm_errf(err, -EBUSY,
				"vcpu%u: restore on a vCPU that has run",
				v->id);
	if (vcpu_state(v, NULL) == VCPU_RUNNING)
		return vmm_errf(err, -EBUSY, "vcpu%u: restore while running",
				v->id);
	r = vcpu_set_cpuid_blob(v, set, err);
	for (i = 0; i < 2 && r >= 0; i++)
		r = restore_raw(v, set, early[i]->name, early[i]->set,
				early[i]->set_name, early[i]->size, err);
	if (r >= 0)
		r = restore_xsave(v, set, err);
	if (r >= 0)
		r = restore_raw(v, set, raw_xcrs.name, raw_xcrs.set,
				raw_xcrs.set_name, raw_xcrs.size, err);
	if (r >= 0)
		r = restore_msrs(v, set, err);
	for (i = 0; i < 4 && r >= 0; i++)
		r = restore_raw(v, set, raw_late[i].name, raw_late[i].set,
				raw_late[i].set_name, raw_late[i].size, err);
	return r < 0 ? r : 0;
}

void vcpu_destroy(struct vcpu *v)
{
	if (!v)
		return;
	if (v->thread_started) {
		pthread_mutex_lock(&v->lock);
		__atomic_store_n(&v->req, VCPU_REQ_QUIT, __ATOMIC_SEQ_CST);
		pthread_cond_broadcast(&v->cond);
		pthread_mutex_unlock(&v->lock);
		pthread_kill(v->thread, VCPU_KICK_SIGNAL);
		pthread_join(v->thread, NULL);
	}
	if (v->run != MAP_FAILED)
		munmap(v->run, v->vm->run_size);
	if (v->fd >= 0)
		close(v->fd);
	free(v->cpuid_set);
	pthread_cond_destroy(&v->cond);
	pthread_mutex_destroy(&v->lock);
	free(v);
}
