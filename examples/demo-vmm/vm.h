/*
 * vm.h - one KVM virtual machine: /dev/kvm, the VM fd, its guest RAM
 * slot, the in-kernel irqchip, and the VM-wide state a handoff carries.
 *
 * One thread at a time per struct vm.  The guest RAM is not owned: the
 * caller maps it (a MAP_SHARED memfd mapping) and keeps it mapped for
 * the VM's lifetime.
 */
#ifndef DEMO_VMM_VM_H
#define DEMO_VMM_VM_H

#include <stdint.h>
#include <linux/kvm.h>

#include "util.h"

struct vm {
	int kvm_fd;
	int vm_fd;
	int run_size;			/* mmap size of a vCPU's kvm_run */
	int xsave_size;			/* KVM_CAP_XSAVE2, >= 4096 */
	uint32_t tsc_khz;		/* 0 until known */
	void *mem;
	uint64_t mem_size;
	struct kvm_cpuid2 *cpuid;	/* KVM_GET_SUPPORTED_CPUID */
	struct kvm_msr_list *msrs;	/* KVM_GET_MSR_INDEX_LIST */
};

/*
 * Open /dev/kvm (API 12 and the capabilities demo-vmm needs), create a
 * VM with an in-kernel irqchip (KVM_SET_MSRS rejects the kvmclock MSRs
 * without one) and no PIT, and read the supported CPUID, the MSR index
 * list and the TSC frequency.  *out is set only on success.
 */
int vm_create(struct vm **out, struct vmm_err *err);

/* Map host [mem, mem + size) as guest RAM at GPA 0 (slot 0). */
int vm_set_memory(struct vm *vm, void *mem, uint64_t size,
		  struct vmm_err *err);

/*
 * VM-wide state: "pic0", "pic1", "ioapic" (struct kvm_irqchip) and
 * "clock" (struct kvm_clock_data), appended to set.  Restore applies
 * them in that order; the clock is restored with KVM_CLOCK_REALTIME
 * when the saved one carries it, so kvmclock advances by the pause.
 * The vCPUs must be stopped.
 */
int vm_save_state(struct vm *vm, struct blobset *set, struct vmm_err *err);
int vm_restore_state(struct vm *vm, const struct blobset *set,
		     struct vmm_err *err);

/* Close the VM (its vCPUs must be destroyed first).  NULL is fine. */
void vm_destroy(struct vm *vm);

#endif
