/*
 * guest.h - the built-in guest (guest.S) seen from the VMM: loading it
 * into guest RAM with its page tables, GDT and TSSs, the boot registers
 * of each vCPU, the per-vCPU counters it publishes and the command
 * mailbox.  Memory map and field formats: guest-layout.h.
 */
#ifndef DEMO_VMM_GUEST_H
#define DEMO_VMM_GUEST_H

#include <stdint.h>
#include <linux/kvm.h>

#include "guest-layout.h"
#include "util.h"

/* What one vCPU of the guest publishes in its per-vCPU page. */
struct guest_cpu_stats {
	uint64_t state;	  /* 0 not started, PC_STATE_* */
	uint64_t counter; /* iterations */
	uint64_t checksum;
	uint64_t ticks;		 /* tick lines printed */
	uint64_t gap_max_cycles; /* largest gap between iterations */
	uint64_t gap_max_us;	 /* as of the last tick line */
	uint64_t last_tsc;
	uint64_t error; /* PC_ERR_* or vector */
};

struct guest_mailbox_result {
	uint64_t us;
	uint64_t ns;
	uint64_t count; /* pages touched, calls made */
};

/*
 * Write the guest image, page tables identity-mapping [0, mem_size) with
 * 2 MiB pages, the GDT, one TSS per vCPU, the kernel stack tops and the
 * parameter block into fresh guest RAM.  mem_size: a multiple of 2 MiB,
 * GUEST_MIN_MEM..GUEST_MAX_MEM.  ncpus: 1..GUEST_MAX_CPUS.
 */
int guest_setup(void *mem, uint64_t mem_size, unsigned int ncpus,
		uint32_t tsc_khz, unsigned int print_ms, struct vmm_err *err);

/*
 * Long-mode boot registers of vCPU cpu: ring 0 at the guest entry,
 * paging on, its TSS in TR.  sregs must hold KVM_GET_SREGS of a fresh
 * vCPU (APIC base and the rest are kept).
 */
void guest_boot_regs(unsigned int cpu, struct kvm_sregs *sregs,
		     struct kvm_regs *regs);

/* Read what vCPU cpu publishes; safe while the guest runs. */
void guest_read_cpu(const void *mem, unsigned int cpu,
		    struct guest_cpu_stats *st);

/* The TSC kHz the guest converts with (from the parameter block). */
uint64_t guest_tsc_khz(const void *mem);

/*
 * Run MB_CMD_* cmd with arg on the guest's cpu0 and wait up to
 * timeout_ms for the result.  -ETIMEDOUT if cpu0 did not answer (not
 * running, or stopped), -EPROTO if it did not know the command.
 */
int guest_mailbox(void *mem, uint64_t cmd, uint64_t arg, int timeout_ms,
		  struct guest_mailbox_result *res, struct vmm_err *err);

/*
 * The pause vCPU cpu saw across a handoff: the recorded gap that starts
 * at stop_tsc (its PC_LAST_TSC while it was stopped) or within 200 us
 * after it.  *start (the gap's first TSC) and *cycles are set
 * and 0 returned if found; -EAGAIN if the vCPU has not run an iteration
 * since; -ENOENT if the gap was not recorded (shorter than the
 * threshold, or the vCPU was stopped while printing, which the guest
 * does not count).
 */
int guest_find_gap(const void *mem, unsigned int cpu, uint64_t stop_tsc,
		   uint64_t *start, uint64_t *cycles);

/*
 * Registers for a spare vCPU to run the guest's read-only warm-up
 * routine in ring 3 with the guest's page tables: sregs as for
 * guest_boot_regs (of a fresh vCPU), but user segments and an empty
 * IDT, so that the routine's final ud2 ends in KVM_EXIT_SHUTDOWN
 * without the guest's handlers writing anything.
 */
void guest_warm_regs(struct kvm_sregs *sregs, struct kvm_regs *regs);

#endif
