/*
 * demo.h - "demo-vmm --handoff": start a demo-vmm, then hand its guest
 * on through transfer, exec and file mode (or one chosen mode), driving
 * the VMMs through their control socket, and report each handoff.
 */
#ifndef DEMO_VMM_DEMO_H
#define DEMO_VMM_DEMO_H

#include "vmm.h"

struct demo_opts {
	const char *mode;    /* NULL: all three */
	const char *json;    /* write the figures here */
	bool warm_given;     /* measure the warm-up */
	unsigned int repeat; /* handoffs per mode (0: 1) */
	bool no_touch;	     /* --warm without the warm-up pass */
	/* --warm A,B: handoff n's new VMM uses warm[n % nwarm] */
	enum vmm_warm warm[4];
	unsigned int nwarm;
};

/* Returns the exit status: 0 if the guest carried on through all. */
int demo_run(const struct vmm_opts *o, const struct demo_opts *d,
	     struct vmm_err *err);

#endif
