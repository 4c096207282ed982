/* SPDX-License-Identifier: MIT */
/*
 * libcprxfer-systemd: restart mode, the state kept by the service
 * manager's file descriptor store while the process is gone.
 *
 * Link with `pkg-config --libs cprxfer-systemd` (it needs libsystemd;
 * the core libcprxfer does not). The service's unit needs
 * FileDescriptorStoreMax= large enough for the state's fds plus two, and
 * the default NotifyAccess=main of Type=notify (or wider).
 *
 * Same conventions as <cprxfer/cprxfer.h>: 0 / -errno, outputs left
 * untouched on failure, the reason in cprxfer_errmsg; one thread at a time
 * per object.
 */
#ifndef CPRXFER_SYSTEMD_H
#define CPRXFER_SYSTEMD_H

#include <cprxfer/cprxfer.h>

#ifdef __cplusplus
extern "C" {
#endif

/* What the service manager handed this process at start. */
typedef struct cprxfer_sd cprxfer_sd;

/* Take the fds passed at start (LISTEN_FDS); call once per process. */
int cprxfer_sd_open(cprxfer_sd **out);
/* Close the fds it still holds; the store and unknown fds stay. */
void cprxfer_sd_close(cprxfer_sd *sd);

/*
 * What can be checked before relying on the store: run by a service
 * manager, store large enough for nfds state fds, manager answering.
 */
int cprxfer_sd_check(cprxfer_sd *sd, size_t nfds);

/* Crash survival: keep fd in the store under name from now on. */
int cprxfer_sd_keep(cprxfer_sd *sd, const char *name, int fd);
/* A kept fd handed back at start: *fd becomes the caller's. */
int cprxfer_sd_kept(cprxfer_sd *sd, const char *name, int *fd);

/* Put st and its fds in the store (mode RESTART or KEXEC). */
int cprxfer_sd_save(cprxfer_sd *sd, const cprxfer_state *st, uint32_t mode);
/* Take the newest saved state back; -ENOENT if the store has none. */
int cprxfer_sd_load(cprxfer_sd *sd, const cprxfer_opts *o, cprxfer_state **out);

#ifdef __cplusplus
}
#endif

#endif /* CPRXFER_SYSTEMD_H */
