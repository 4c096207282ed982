/*
 * machine.h - one guest machine: a VM with its RAM slot, its vCPUs (one
 * thread each) and its serial port, handled as a whole: build, boot,
 * start, stop, save, restore, destroy.
 */
#ifndef DEMO_VMM_MACHINE_H
#define DEMO_VMM_MACHINE_H

#include <stdbool.h>
#include <stdint.h>

#include "guest.h"
#include "serial.h"
#include "vcpu.h"
#include "vm.h"

#define MACHINE_STOP_TIMEOUT_MS 2000

struct machine {
	struct vm *vm;
	struct vcpu *vcpu[GUEST_MAX_CPUS];
	unsigned int ncpus;
	struct serial *serial;
	struct vcpu *spare; /* warm-up vCPU, never restored */
	/*
	 * Set by a handoff before machine_start: the vCPUs run at nice
	 * -15 from their first KVM_RUN until machine_unboost(), so that
	 * the guest's first iterations after the blackout are not left
	 * waiting behind other loads.
	 */
	bool handoff;
	/* machine_ram_high_async() */
	pthread_t high_thread;
	bool high_started;
};

/*
 * Everything a stop freezes: vm holds the VM-wide and device blobs
 * ("pic0", "pic1", "ioapic", "clock", "serial"), cpu[i] vCPU i's.
 */
struct frozen {
	struct blobset vm;
	struct blobset cpu[GUEST_MAX_CPUS];
	unsigned int ncpus;
};

void frozen_free(struct frozen *f);

/*
 * VM, RAM slot at GPA 0, ncpus vCPUs (not started, no CPUID yet) and a
 * 16550 at COM1 writing to console_fd (borrowed).  On failure m is
 * left for machine_destroy.
 */
int machine_build(struct machine *m, void *mem, uint64_t size,
		  unsigned int ncpus, int console_fd, struct vmm_err *err);

/*
 * The same in steps, so that an exec handoff can start on the VM in a
 * thread while it loads the state: machine_build_vm() (the VM alone),
 * machine_build_rest() (the RAM, with only [0, low) as a memslot until
 * vm_set_memory_high(), see vm_set_memory_lazy(); the irqchip; the
 * vCPUs), machine_build_serial() (the UART).  On failure m is left for
 * machine_destroy.
 */
int machine_build_vm(struct machine *m, struct vmm_err *err);
int machine_build_rest(struct machine *m, void *mem, uint64_t size,
		       uint64_t low, unsigned int ncpus, struct vmm_err *err);
int machine_build_serial(struct machine *m, int console_fd,
			 struct vmm_err *err);

/*
 * The rest of the RAM's memslot (vm_set_memory_high) in a thread at
 * nice 19, once the guest runs: it costs the host ~0.6 ms of CPU per
 * GiB, which the guest's own vCPUs should not wait for.  A vCPU that
 * touches that RAM first waits for it (vm_mmio_ram).  _wait joins it
 * (machine_warm and machine_destroy do; a handoff does before its stop).
 */
int machine_ram_high_async(struct machine *m, struct vmm_err *err);
void machine_ram_high_wait(struct machine *m);

/* Fresh boot: load the guest into RAM, default CPUID, boot registers. */
int machine_boot(struct machine *m, unsigned int print_ms, struct vmm_err *err);

/* Start every vCPU thread, running or parked. */
int machine_start(struct machine *m, bool parked, struct vmm_err *err);

/* Stop every vCPU (request all, then wait for each). */
int machine_stop(struct machine *m, struct vmm_err *err);

/* Let every parked vCPU run. */
int machine_resume(struct machine *m, struct vmm_err *err);

/* -EIO with the reason if a vCPU thread failed. */
int machine_check(struct machine *m, struct vmm_err *err);

/* The stopped machine's whole state into f. */
int machine_save(struct machine *m, struct frozen *f, struct vmm_err *err);

/* Restore f into a machine built for as many vCPUs, never run. */
int machine_restore(struct machine *m, const struct frozen *f,
		    struct vmm_err *err);

/*
 * Wait (up to timeout_ms) until every vCPU entered KVM_RUN after its
 * start or resume; *ns gets the latest of those times.
 */
int machine_wait_running(struct machine *m, int timeout_ms, uint64_t *ns,
			 struct vmm_err *err);

/*
 * Warm the new VM's shadow page tables while another VM still runs the
 * guest: a spare vCPU reads every page of guest RAM in ring 3 through
 * the guest's page tables (guest_warm_regs).  Call before
 * machine_start.
 */
int machine_warm(struct machine *m, struct vmm_err *err);

/* vCPUs (threads joined), VM, serial.  Zeroes m. */
void machine_destroy(struct machine *m);

/* Back to normal priority after a handoff (see handoff above). */
void machine_unboost(struct machine *m);

#endif
