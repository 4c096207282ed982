/*
 * sandbox.h - the seccomp sandbox hook (--sandbox).  Implemented in
 * sandbox.c, when present (meson then defines DEMO_VMM_HAVE_SANDBOX);
 * main calls it once the VMM holds everything it needs and before it
 * serves the control socket.
 */
#ifndef DEMO_VMM_SANDBOX_H
#define DEMO_VMM_SANDBOX_H

#include "util.h"

struct vmm;

int sandbox_install(struct vmm *v, struct vmm_err *err);

/*
 * Hidden control command selftest-forbidden: try calls the sandbox
 * forbids and describe the outcome ("ok seccomp=2 socket_inet=EPERM
 * unshare=EPERM" under the filter) in buf.
 */
void sandbox_selftest(char *buf, size_t len);

#endif
