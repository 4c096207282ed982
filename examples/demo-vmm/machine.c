/*
 * machine.c - a guest machine as a whole (see machine.h).
 */
#include <errno.h>
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

int machine_build(struct machine *m, void *mem, uint64_t size,
		  unsigned int ncpus, int console_fd, struct vmm_err *err)
{
	int r;

	memset(m, 0, sizeof(*m));
	if (!ncpus || ncpus > GUEST_MAX_CPUS)
		return vmm_errf(err, -EINVAL, "%u vCPUs: 1..%d", ncpus,
				GUEST_MAX_CPUS);
	r = serial_create(GUEST_COM1, console_fd, &m->serial, err);
	if (r < 0)
		return r;
	r = vm_create(&m->vm, err);
	if (r < 0)
		return r;
	r = vm_set_memory(m->vm, mem, size, err);
	if (r < 0)
		return r;
	for (unsigned int i = 0; i < ncpus; i++) {
		r = vcpu_create(m->vm, i, &m->vcpu[i], err);
		if (r < 0)
			return r;
		m->ncpus++;
	}
	return 0;
}

int machine_boot(struct machine *m, unsigned int print_ms,
		 struct vmm_err *err)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	int r;

	r = guest_setup(m->vm->mem, m->vm->mem_size, m->ncpus,
			m->vm->tsc_khz, print_ms, err);
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

	for (unsigned int i = 0; i < m->ncpus; i++) {
		while (!(t = __atomic_load_n(&m->vcpu[i]->first_run_ns,
					     __ATOMIC_ACQUIRE))) {
			if (vcpu_state(m->vcpu[i], err) == VCPU_FAILED)
				return -EIO;
			if (vmm_now_ns() > deadline)
				return vmm_errf(err, -ETIMEDOUT,
						"vcpu%u did not start", i);
			nanosleep(&(struct timespec){ 0, 10000 }, NULL);
		}
		if (t > latest)
			latest = t;
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

void machine_destroy(struct machine *m)
{
	for (unsigned int i = 0; i < m->ncpus; i++)
		vcpu_destroy(m->vcpu[i]);
	vcpu_destroy(m->spare);
	vm_destroy(m->vm);
	serial_destroy(m->serial);
	memset(m, 0, sizeof(*m));
}
