/*
 * vcpu.h - KVM vCPUs: creation, CPUID, boot registers, one thread each
 * running KVM_RUN and handling exits, stop/resume, and the full
 * architectural state saved and restored as named byte blobs.
 *
 * Stop protocol (kvm_pvm: never call a vCPU ioctl from another thread
 * while that vCPU is in KVM_RUN): vcpu_stop_request() sets a flag and
 * sends VCPU_KICK_SIGNAL to the vCPU thread, whose handler sets
 * kvm_run->immediate_exit.  The thread leaves KVM_RUN (or does not enter
 * it), runs KVM_RUN once more with immediate_exit = 1 so that KVM
 * completes any I/O or MMIO exit it had returned, and parks.  Only then
 * are the vCPU's ioctls called from the controlling thread (save,
 * restore).  vcpu_resume() lets it run again.
 */
#ifndef DEMO_VMM_VCPU_H
#define DEMO_VMM_VCPU_H

#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <linux/kvm.h>

#include "util.h"
#include "vm.h"

#define VCPU_KICK_SIGNAL SIGUSR1

/* Exit handlers, called on the vCPU thread; return 0 or -errno. */
struct vcpu_ops {
	/* One port access of size bytes at data (read: fill it). */
	int (*pio)(void *opaque, uint16_t port, bool is_write, uint8_t *data,
		   unsigned int size);
	/* One MMIO access; NULL: reads return 0xff, writes are dropped. */
	int (*mmio)(void *opaque, uint64_t addr, bool is_write, uint8_t *data,
		    unsigned int len);
	void *opaque;
};

enum vcpu_run_state {
	VCPU_NEW, /* no thread yet */
	VCPU_RUNNING,
	VCPU_STOPPED, /* parked, ioctls allowed */
	VCPU_FAILED,  /* thread ended on an error */
	VCPU_DONE,    /* thread ended by vcpu_destroy */
};

struct vcpu {
	struct vm *vm;
	unsigned int id;
	int fd;
	struct kvm_run *run;
	struct kvm_cpuid2 *cpuid_set; /* last CPUID given to KVM */

	pthread_t thread;
	int tid; /* of the thread, for vcpu_boost */
	bool thread_started;
	bool never_ran; /* no KVM_RUN yet */
	bool handoff;	/* first KVM_RUN boosted, see */
	bool demoted;	/* vcpu_demote() */
	struct vcpu_ops ops;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int req;		   /* VCPU_REQ_*, under lock (+ atomic) */
	enum vcpu_run_state state; /* under lock */
	struct vmm_err error;	   /* set when state is VCPU_FAILED */

	/* Statistics, written by the vCPU thread. */
	/* CLOCK_MONOTONIC at the first KVM_RUN; atomic, read by others. */
	uint64_t first_run_ns;
	uint64_t exits_io;
	uint64_t exits_mmio;
	uint64_t exits_other;
};

/*
 * Install the VCPU_KICK_SIGNAL handler (no SA_RESTART).  Changes a
 * process-wide signal disposition, so main calls it once, explicitly,
 * before starting any vCPU.
 */
int vcpu_signal_setup(struct vmm_err *err);

/* Create vCPU id in vm and map its kvm_run.  Not yet running. */
int vcpu_create(struct vm *vm, unsigned int id, struct vcpu **out,
		struct vmm_err *err);

/*
 * CPUID for a fresh vCPU: KVM_GET_SUPPORTED_CPUID with this vCPU's APIC
 * id patched into leaves 0x1, 0xb and 0x1f.
 */
int vcpu_set_default_cpuid(struct vcpu *vcpu, struct vmm_err *err);

/*
 * Set CPUID from a "cpuid" blob (as saved by vcpu_save_state), e.g. in
 * the prepare phase of a handoff.  vcpu_restore_state skips the CPUID if
 * the same one was already set.  Only before the vCPU first runs.
 */
int vcpu_set_cpuid_blob(struct vcpu *vcpu, const struct blobset *set,
			struct vmm_err *err);

/*
 * Append the CPUID last given to KVM for this vCPU as a "cpuid" blob
 * (the vcpu_save_state format) without a vCPU ioctl, so it can be
 * called while the vCPU runs, e.g. for a handoff's prepare round.
 */
int vcpu_cpuid_blob(struct vcpu *vcpu, struct blobset *set,
		    struct vmm_err *err);

/*
 * Run a vCPU whose thread was never started in the calling thread until
 * it exits for something other than an interrupted KVM_RUN; *reason
 * gets the exit reason.  For the warm-up vCPU.
 */
int vcpu_run_sync(struct vcpu *vcpu, uint32_t *reason, struct vmm_err *err);

/* KVM_GET_SREGS of a vCPU not in KVM_RUN, e.g. to build boot sregs. */
int vcpu_get_sregs(struct vcpu *vcpu, struct kvm_sregs *sregs,
		   struct vmm_err *err);

/* Boot registers: set sregs and regs, and MP_STATE to RUNNABLE. */
int vcpu_set_boot_state(struct vcpu *vcpu, const struct kvm_sregs *sregs,
			const struct kvm_regs *regs, struct vmm_err *err);

/*
 * Start the vCPU thread running KVM_RUN with ops handling exits.  With
 * parked, the thread starts VCPU_STOPPED and enters KVM_RUN only at
 * vcpu_resume(): a handoff's new side creates its threads before the
 * stop, restores the state while they are parked, and then only wakes
 * them.
 */
int vcpu_start(struct vcpu *vcpu, const struct vcpu_ops *ops, bool parked,
	       struct vmm_err *err);

/*
 * Ask the vCPU to stop (returns at once), then wait until it is parked
 * (VCPU_STOPPED) or has failed, for at most timeout_ms.  Stopping a
 * batch: request all, then wait for each.  -ETIMEDOUT if it did not
 * park in time, -EIO with the vCPU's error if it had failed.
 */
void vcpu_stop_request(struct vcpu *vcpu);
int vcpu_stop_wait(struct vcpu *vcpu, int timeout_ms, struct vmm_err *err);

/*
 * Scheduling boost for the blackout: a boosted vCPU thread (SCHED_FIFO
 * where the process may, else nice -15) gets the CPU at once when it
 * is kicked or woken on a busy host; it drops the boost itself before
 * it enters the guest (to nice -15 for a handoff's first run, see
 * struct machine, else to normal), so no thread is ever in KVM_RUN at
 * a real-time priority.  A new vCPU thread is boosted from the start.
 * SCHED_RESET_ON_FORK: what a boosted thread creates starts unboosted.
 * Best effort.
 */
void vcpu_boost(struct vcpu *vcpu);
/* Normal priority (from another thread). */
void vcpu_unboost(struct vcpu *vcpu);
/*
 * A handoff's vCPU enters its first KVM_RUN still at a real-time
 * priority (see struct machine): once first_run_ns is set, drop it to
 * nice -15 (machine_unboost() later ends that).  True if done now.
 */
bool vcpu_demote(struct vcpu *vcpu);
/* The same for the calling thread (on) or back to normal (off). */
void vmm_thread_boost(bool on);

/* Let a parked vCPU run again. */
int vcpu_resume(struct vcpu *vcpu, struct vmm_err *err);

/* The thread's state; if VCPU_FAILED, *err (if given) gets the reason. */
enum vcpu_run_state vcpu_state(struct vcpu *vcpu, struct vmm_err *err);

/*
 * Full vCPU state, the vCPU stopped (or never started).  Appends, in
 * this order: "cpuid", "sregs", "regs", "xsave", "xcrs", "msrs",
 * "events", "mpstate", "debugregs", "lapic".  "msrs" holds every MSR of
 * the KVM_GET_MSR_INDEX_LIST that this vCPU returns (an MSR KVM refuses
 * to read is skipped), as u32 count, u32 0, then count x (u32 index,
 * u32 0, u64 value), little-endian; "cpuid" is u32 nent, u32 0, then
 * nent struct kvm_cpuid_entry2; the others are the KVM structures.
 */
int vcpu_save_state(struct vcpu *vcpu, struct blobset *set,
		    struct vmm_err *err);

/*
 * Restore on a vCPU that has never run (normally in a new VM; its thread
 * may exist, started parked), in the
 * order that works on kvm_pvm: CPUID, SREGS, REGS, XSAVE, XCRS, MSRS
 * (every MSR set, checked by count), VCPU_EVENTS, MP_STATE, DEBUGREGS,
 * LAPIC.
 */
int vcpu_restore_state(struct vcpu *vcpu, const struct blobset *set,
		       struct vmm_err *err);

/* Stop and join the thread, unmap, close.  NULL is fine. */
void vcpu_destroy(struct vcpu *vcpu);

#endif
