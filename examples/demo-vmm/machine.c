/*
 * machine.c - a guest machine as a whole (see machine.h).
 */
#include <errno.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "machine.h"

void frozen_free(struct frozen *f)
{
	blobset_free(&f->vm);
	for (unsigned int i = 0; i < GUEST_MAX_CPUS; i++)
		blobset_free(&f->cpu[i]);
	f->ncpus = 0;
}

int machine_build_vm(struct machine *m, struct vmm_err *err)
{
	memset(m, 0, sizeof(*m));
	return vm_create(&m->vm, err);
}

int machine_build_rest(struct machine *m, void *mem, uint64_t size,
		       uint64_t low, unsigned int ncpus, struct vmm_err *err)
{
	int r;

	if (!ncpus || ncpus > GUEST_MAX_CPUS)
		return vmm_errf(err, -EINVAL, "%u vCPUs: 1..%d", ncpus,
				GUEST_MAX_CPUS);
	/* The memslot before the irqchip: see vm_create_irqchip(). */
	r = vm_set_memory_lazy(m->vm, mem, size, low, err);
	if (r >= 0)
		r = vm_create_irqchip(m->vm, err);
	for (unsigned int i = 0; i < ncpus && r >= 0; i++) {
		r = vcpu_create(m->vm, i, &m->vcpu[i], err);
		if (r >= 0)
			m->ncpus++;
	}
	return r < 0 ? r : 0;
}

int machine_build_serial(struct machine *m, int console_fd, struct vmm_err *err)
{
	return serial_create(GUEST_COM1, console_fd, &m->serial, err);
}

static void *high_main(void *arg)
{
	struct machine *m = arg;
	struct vmm_err e = { 0 };

	setpriority(PRIO_PROCESS, 0, 19);
	vm_set_memory_high(m->vm, &e); /* a failure fails the vCPUs */
	return NULL;
}

int machine_ram_high_async(struct machine *m, struct vmm_err *err)
{
	int r;

	if (__atomic_load_n(&m->vm->high_ready, __ATOMIC_ACQUIRE))
		return 0;
	r = pthread_create(&m->high_thread, NULL, high_main, m);
	if (r)
		return vm_set_memory_high(m->vm, err);
	m->high_started = true;
	return 0;
}

void machine_ram_high_wait(struct machine *m)
{
	if (!m->high_started)
		return;
	pthread_join(m->high_thread, NULL);
	m->high_started = false;
}

int machine_build(struct machine *m, void *mem, uint64_t size,
		  unsigned int ncpus, int console_fd, struct vmm_err *err)
{
	int r = machine_build_vm(m, err);

	if (r >= 0)
		r = machine_build_rest(m, mem, size, size, ncpus, err);
	return r < 0 ? r : machine_build_serial(m, console_fd, err);
}

int machine_boot(struct machine *m, unsigned int print_ms, struct vmm_err *err)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	int r;

	r = guest_setup(m->vm->mem, m->vm->mem_size, m->ncpus, m->vm->tsc_khz,
			print_ms, err);
	if (r < 0)
		return r;
	for (unsigned int i = 0; i < m->ncpus; i++) {
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

int machine_start(struct machine *m, bool parked, struct vmm_err *err)
{
	struct vcpu_ops ops = { .pio = serial_pio, .opaque = m->serial };
	int r;

	for (unsigned int i = 0; i < m->ncpus; i++) {
		m->vcpu[i]->handoff = m->handoff;
		r = vcpu_start(m->vcpu[i], &ops, parked, err);
		if (r < 0)
			return r;
	}
	return 0;
}

int machine_stop(struct machine *m, struct vmm_err *err)
{
	int r = 0, r2;

	for (unsigned int i = 0; i < m->ncpus; i++) {
		vcpu_boost(m->vcpu[i]);
		vcpu_stop_request(m->vcpu[i]);
	}
	for (unsigned int i = 0; i < m->ncpus; i++) {
		r2 = vcpu_stop_wait(m->vcpu[i], MACHINE_STOP_TIMEOUT_MS,
				    r ? NULL : err);
		if (r2 < 0 && !r)
			r = r2;
	}
	return r;
}

int machine_resume(struct machine *m, struct vmm_err *err)
{
	int r;

	for (unsigned int i = 0; i < m->ncpus; i++) {
		r = vcpu_resume(m->vcpu[i], err);
		if (r < 0)
			return r;
	}
	return 0;
}

int machine_check(struct machine *m, struct vmm_err *err)
{
	for (unsigned int i = 0; i < m->ncpus; i++)
		if (vcpu_state(m->vcpu[i], err) == VCPU_FAILED)
			return err ? err->code : -EIO;
	return 0;
}

int machine_save(struct machine *m, struct frozen *f, struct vmm_err *err)
{
	int r;

	f->ncpus = m->ncpus;
	r = vm_save_state(m->vm, &f->vm, err);
	if (r >= 0)
		r = serial_save_state(m->serial, &f->vm, err);
	for (unsigned int i = 0; i < m->ncpus && r >= 0; i++)
		r = vcpu_save_state(m->vcpu[i], &f->cpu[i], err);
	return r < 0 ? r : 0;
}

int machine_restore(struct machine *m, const struct frozen *f,
		    struct vmm_err *err)
{
	int r;

	if (f->ncpus != m->ncpus)
		return vmm_errf(err, -EINVAL, "state for %u vCPUs, have %u",
				f->ncpus, m->ncpus);
	r = vm_restore_state(m->vm, &f->vm, err);
	if (r >= 0)
		r = serial_restore_state(m->serial, &f->vm, err);
	for (unsigned int i = 0; i < m->ncpus && r >= 0; i++)
		r = vcpu_restore_state(m->vcpu[i], &f->cpu[i], err);
	return r < 0 ? r : 0;
}

int machine_wait_running(struct machine *m, int timeout_ms, uint64_t *ns,
			 struct vmm_err *err)
{
	uint64_t deadline = vmm_now_ns() + (uint64_t)timeout_ms * 1000000;
	uint64_t latest = 0, t;
	unsigned int left = m->ncpus;
	int r = 0;

	/*
	 * At a real-time priority above the vCPU threads' (the caller is
	 * boosted): each new vCPU is demoted as soon as it runs.
	 */
	vmm_thread_boost(true);
	while (left && !r) {
		for (unsigned int i = 0; i < m->ncpus; i++) {
			struct vcpu *v = m->vcpu[i];

			if (v->demoted)
				continue;
			if (vcpu_demote(v)) {
				t = __atomic_load_n(&v->first_run_ns,
						    __ATOMIC_ACQUIRE);
				if (t > latest)
					latest = t;
				left--;
			} else if (vcpu_state(v, err) == VCPU_FAILED) {
				r = -EIO;
			}
		}
		if (!left || r)
			break;
		if (vmm_now_ns() > deadline)
			r = vmm_errf(err, -ETIMEDOUT, "a vCPU did not start");
		else
			nanosleep(&(struct timespec){ 0, 10000 }, NULL);
	}
	if (r < 0) {
		for (unsigned int i = 0; i < m->ncpus; i++)
			vcpu_unboost(m->vcpu[i]);
		return r;
	}
	*ns = latest;
	return 0;
}

int machine_warm(struct machine *m, struct vmm_err *err)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	struct vcpu *v;
	uint32_t reason;
	int r;

	machine_ram_high_wait(m); /* the spare vCPU reads all RAM */
	if (!m->spare) {
		r = vcpu_create(m->vm, m->ncpus, &m->spare, err);
		if (r < 0)
			return r;
		v = m->spare;
		r = vcpu_set_default_cpuid(v, err);
		if (r < 0)
			return r;
		r = vcpu_get_sregs(v, &sregs, err);
		if (r < 0)
			return r;
		guest_warm_regs(&sregs, &regs);
		r = vcpu_set_boot_state(v, &sregs, &regs, err);
		if (r < 0)
			return r;
	}
	r = vcpu_run_sync(m->spare, &reason, err);
	if (r < 0)
		return r;
	if (reason != KVM_EXIT_SHUTDOWN)
		return vmm_errf(err, -EPROTO,
				"warm-up vCPU: exit %u, expected shutdown",
				reason);
	return 0;
}

void machine_unboost(struct machine *m)
{
	for (unsigned int i = 0; i < m->ncpus; i++)
		vcpu_unboost(m->vcpu[i]);
}

void machine_destroy(struct machine *m)
{
	machine_ram_high_wait(m);
	for (unsigned int i = 0; i < m->ncpus; i++)
		vcpu_destroy(m->vcpu[i]);
	vcpu_destroy(m->spare);
	vm_destroy(m->vm);
	serial_destroy(m->serial);
	memset(m, 0, sizeof(*m));
}
