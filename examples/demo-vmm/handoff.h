/*
 * handoff.h - moving the running guest to a new demo-vmm, in the three
 * modes of libcprxfer, through its public API only.
 *
 * Transfer (two-phase, over a socket):
 *   old: connect; prepare round (RAM memfd, console fd, control socket,
 *        layout, CPUID of each vCPU) while the guest runs; wait ack
 *   new: map the RAM, warm it, build VM + slot + vCPUs (threads parked);
 *        ack
 *   old: stop the vCPUs (blackout starts); final round: the vCPU, VM
 *        and serial state; wait ack
 *   new: restore; ack; resume (blackout ends)
 *   old: on ack, destroy its VM and exit; on refusal, death or timeout
 *        of the new VMM, resume its own vCPUs.
 * Exec (same PID): stop, save everything into the state, cprxfer_exec
 *   /proc/self/exe --exec-restore; the new image rebuilds and resumes.
 *   A forked "reaper" holds the old VM's fds across the exec so that the
 *   old VM is destroyed in the reaper, not inside the blackout.
 * File: stop, cprxfer_save_file (RAM saved by its path), quit; later
 *   "demo-vmm --restore FILE" reopens the RAM and resumes.
 *
 * Record names: demo.version, ram, layout.mem_size, layout.ncpus,
 * console, control, control.path, control.client, exec.reaper,
 * proof.pfns, guest.handoffs, from.pid, t.stop, t.stopped, t.saved,
 * vm.<blob> (pic0, pic1, ioapic, clock, serial) and vcpuN.<blob>
 * (cpuid, sregs, regs, xsave, xcrs, msrs, events, mpstate, debugregs,
 * lapic).  A record the loader does not know makes it refuse.
 */
#ifndef DEMO_VMM_HANDOFF_H
#define DEMO_VMM_HANDOFF_H

#include "vmm.h"

#define HANDOFF_VERSION 1

/* What a failed outgoing handoff left behind. */
struct handoff_result {
	pid_t peer;
	bool stopped; /* the guest had been stopped ... */
	bool resumed; /* ... and runs again here */
};

/*
 * Transfer the guest to the demo-vmm listening on path.  0: the new
 * VMM runs the guest (destroy ours and exit).  < 0: it did not take it;
 * res says whether the guest runs here again.
 */
int handoff_transfer_out(struct vmm *v, const char *path,
			 struct handoff_result *res, struct vmm_err *err);

/* --incoming: wait on v->o.incoming, receive the guest, run it. */
int handoff_transfer_in(struct vmm *v, struct vmm_err *err);

/*
 * Exec a new demo-vmm in place.  Returns only on failure (the guest
 * resumed here if res->resumed).  client: the control connection to
 * answer from the new image (or -1).
 */
int handoff_exec_out(struct vmm *v, int client, struct handoff_result *res,
		     struct vmm_err *err);

/* --exec-restore: the new image. *client: connection to answer, or -1. */
int handoff_exec_in(struct vmm *v, int *client, struct vmm_err *err);

/* File mode: stop and save to file.  0: saved (quit now). */
int handoff_save_file(struct vmm *v, const char *file,
		      struct handoff_result *res, struct vmm_err *err);

/* --restore FILE. */
int handoff_restore_file(struct vmm *v, struct vmm_err *err);

/*
 * Restart mode (--systemd, built with libcprxfer-systemd): on SIGTERM,
 * stop and leave the guest in systemd's fd store (the RAM memfd, the
 * console and control fds, the frozen vCPU and device state); the next
 * instance of the service takes it back.  out: 0 saved (exit now).
 * in: 0 the guest runs, -ENOENT nothing in the store (boot fresh).
 */
int handoff_restart_out(struct vmm *v, struct handoff_result *res,
			struct vmm_err *err);
int handoff_restart_in(struct vmm *v, struct vmm_err *err);

/*
 * The blockers of this VMM: a serial console on a terminal cannot be
 * carried by a state file or across a kexec.
 */
int handoff_blockers_init(struct vmm *v, struct vmm_err *err);

/*
 * "preflight MODE" on the control socket: what MODE would carry, as one
 * line ("; " between entries) in buf.
 */
int handoff_preflight(struct vmm *v, const char *mode, char *buf, size_t len,
		      struct vmm_err *err);

#endif
