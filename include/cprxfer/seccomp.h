/* SPDX-License-Identifier: MIT */
/*
 * libcprxfer's seccomp helper: the only public header that needs
 * libseccomp's <seccomp.h>.
 */
#ifndef CPRXFER_SECCOMP_H
#define CPRXFER_SECCOMP_H

#include <seccomp.h>

#include <cprxfer/cprxfer.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CPRXFER_MODE_TRANSFER (1u << 0)
#define CPRXFER_MODE_EXEC     (1u << 1)
#define CPRXFER_MODE_FILE     (1u << 2)

/*
 * modes may also hold CPRXFER_MODE_RESTART and CPRXFER_MODE_KEXEC
 * (<cprxfer/cprxfer.h>): libcprxfer-systemd's fd-store calls.
 *
 * Add to ctx the rules that let the handoff modes in modes run: exactly
 * the syscalls libcprxfer makes in those modes (docs/ref/
 * cprxfer_seccomp_allow.md lists them).
 */
int cprxfer_seccomp_allow(scmp_filter_ctx ctx, unsigned modes);

#ifdef __cplusplus
}
#endif

#endif /* CPRXFER_SECCOMP_H */
