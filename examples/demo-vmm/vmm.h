/*
 * vmm.h - the state of one demo-vmm process: its options, the guest
 * RAM, the machine, the console, the control socket and what it knows
 * of the handoff that brought the guest here.
 */
#ifndef DEMO_VMM_VMM_H
#define DEMO_VMM_VMM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include <cprxfer/cprxfer.h>

#include "control.h"
#include "machine.h"

#define VMM_TAG		"demo-vmm/1"
#define VMM_PRINT_MS	500
#define VMM_PFN_SAMPLES 6

/* How the new VMM warms the guest RAM before it runs the guest. */
enum vmm_warm {
	WARM_NONE,     /* nothing: the guest faults its RAM back in */
	WARM_POPULATE, /* MADV_POPULATE_WRITE of the host mapping */
	WARM_HELPER,   /* populate + a spare vCPU reads every page */
};

struct vmm_opts {
	uint64_t mem;
	unsigned int cpus;
	const char *mem_path;
	const char *control;
	const char *incoming;
	const char *restore;
	const char *tag;
	enum vmm_warm warm;
	bool exec_restore; /* hidden: the exec'd new image */
	bool sandbox;
	const char *inject; /* hidden, tests: "die-in-final" */
	int timeout_ms;	    /* handoff rounds */
	bool quiet;	    /* no report lines (the demo prints) */
	bool boot_warm;	    /* hidden: boot with RAM warm */
	bool systemd;	    /* a systemd service: restart mode */
};

/* A handoff as the VMM that received the guest saw it. */
struct handoff_report {
	char mode[16]; /* transfer, exec, file */
	pid_t from_pid;
	/* CLOCK_MONOTONIC, ns: the old side's, then ours. */
	uint64_t t_stop, t_stopped, t_saved;
	uint64_t t_received, t_restored, t_running;
	uint64_t t_main;      /* exec/file: main() entered */
	uint64_t prepare_ns;  /* map + warm + build, before stop */
	uint64_t state_bytes; /* what the final round carried */
	uint64_t stop_tsc[GUEST_MAX_CPUS];
	uint64_t counter_at_stop[GUEST_MAX_CPUS];
	int64_t gap_us[GUEST_MAX_CPUS]; /* -1: not (yet) known */
	/*
	 * Where each vCPU's gap lies against the blackout, from the TSC
	 * (the guest's TSC is the host's): its last iteration that long
	 * before t_stop, its first that long after t_running.
	 */
	int64_t gap_pre_us[GUEST_MAX_CPUS], gap_post_us[GUEST_MAX_CPUS];
	bool gap_done;
	unsigned int pfn_same, pfn_total;
	uint64_t old_pfn[VMM_PFN_SAMPLES];
};

struct vmm {
	struct vmm_opts o;
	struct cprxfer_ram ram;
	struct machine m;
	int console_fd;
	struct control *ctl;
	bool ctl_unlink;       /* we own the control path */
	unsigned int handoffs; /* incoming, over the guest's life */
	bool have_report;
	uint64_t t_main; /* CLOCK_MONOTONIC at main() */
	struct handoff_report rep;
	/* What must not travel in some modes (handoff_blockers_init). */
	cprxfer_blockers *blockers;
	struct cprxfer_sd *sd; /* --systemd: the fd store's hand-over */
};

/* Guest-physical addresses whose page frames prove RAM stayed put. */
void vmm_pfn_gpas(uint64_t mem_size, uint64_t gpa[VMM_PFN_SAMPLES]);
/* Page frame of each sampled page in this process (0: not mapped). */
void vmm_pfns(const struct vmm *v, uint64_t pfn[VMM_PFN_SAMPLES]);

/* The RAM is a named file (file mode can save it by path). */
bool vmm_ram_is_file(const struct vmm *v, char *path, size_t len);

/* Options that make an opts object: tag and timeout. */
int vmm_cprxfer_opts(const struct vmm *v, cprxfer_opts **out,
		     struct vmm_err *err);

#endif
