/*
 * vm.h - one KVM virtual machine: /dev/kvm, the VM fd, its guest RAM
 * slot, the in-kernel irqchip, and the VM-wide state a handoff carries.
 *
 * One thread at a time per struct vm (but vm_mmio_ram(), from vCPU
 * threads, while vm_set_memory_high() runs).  The guest RAM is not owned: the
 * caller maps it (a MAP_SHARED memfd mapping) and keeps it mapped for
 * the VM's lifetime.
 */
#ifndef DEMO_VMM_VM_H
#define DEMO_VMM_VM_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <linux/kvm.h>

#include "util.h"

struct vm {
	int kvm_fd;
	int vm_fd;
	int run_size;	  /* mmap size of a vCPU's kvm_run */
	int xsave_size;	  /* KVM_CAP_XSAVE2, >= 4096 */
	uint32_t tsc_khz; /* 0 until known */
	void *mem;
	uint64_t mem_size;
	struct kvm_cpuid2 *cpuid;  /* KVM_GET_SUPPORTED_CPUID */
	struct kvm_msr_list *msrs; /* KVM_GET_MSR_INDEX_LIST */
	/*
	 * Lazy RAM (vm_set_memory_lazy): only [0, mem_low) is a memslot
	 * until vm_set_memory_high() adds the rest; high_ready (atomic)
	 * says it has, under high_lock/high_cond for vCPUs that wait.
	 */
	uint64_t mem_low;
	int high_ready;
	pthread_mutex_t high_lock;
	pthread_cond_t high_cond;
};

/*
 * Open /dev/kvm (API 12 and the capabilities demo-vmm needs), create a
 * VM, and read the supported CPUID, the MSR index list and the TSC
 * frequency.  *out is set only on success.  Then: vm_set_memory*(),
 * vm_create_irqchip(), vCPUs, in that order.
 */
int vm_create(struct vm **out, struct vmm_err *err);

/*
 * The in-kernel irqchip (KVM_SET_MSRS rejects the kvmclock MSRs without
 * one), no PIT.  After the first memslot: a memslot registered after
 * KVM_CREATE_IRQCHIP waits for a slow SRCU grace period (KVM_SET_USER_
 * MEMORY_REGION took 4-8 ms here, jiffies at HZ=250), one registered
 * before it 0.1 ms, and the irqchip then 0.05 ms.
 */
int vm_create_irqchip(struct vm *vm, struct vmm_err *err);

/* Map host [mem, mem + size) as guest RAM at GPA 0 (slot 0). */
int vm_set_memory(struct vm *vm, void *mem, uint64_t size, struct vmm_err *err);

/*
 * The same in two steps, for a VM built inside a blackout: a memslot's
 * cost grows with its size (KVM allocates reverse-map and page-tracking
 * arrays per 4 KiB page: ~0.6 ms per GiB here), so only the first low
 * bytes (slot 0, where the guest's code, tables and stacks live) are
 * registered now, and vm_set_memory_high() registers the rest (slot 1)
 * once the guest runs.  A guest access above low before that exits as
 * MMIO; vm_mmio_ram() completes it from RAM (see there).
 */
int vm_set_memory_lazy(struct vm *vm, void *mem, uint64_t size, uint64_t low,
		       struct vmm_err *err);
int vm_set_memory_high(struct vm *vm, struct vmm_err *err);

/*
 * An MMIO exit at gpa: if it is RAM whose memslot is still pending,
 * wait for vm_set_memory_high() and do the access on RAM (a read fills
 * data, a write stores it); the instruction then completes as KVM
 * emulated it.  1 if done, 0 if gpa is not RAM (real MMIO).
 */
int vm_mmio_ram(struct vm *vm, uint64_t gpa, bool is_write, uint8_t *data,
		uint32_t len);

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
