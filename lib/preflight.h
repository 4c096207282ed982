/* SPDX-License-Identifier: MIT */
/*
 * Blockers and preflight: what a mode would carry, and the check every
 * save path makes before a byte or an fd leaves the process.
 */
#ifndef CX_PREFLIGHT_H
#define CX_PREFLIGHT_H

#include <stdint.h>

#include "state.h"
#include "stream.h"

/* The public mode bit (CPRXFER_MODE_*) of an encoder mode. */
uint32_t cx_user_mode(enum cx_mode m);

/*
 * The first step of every save (lib/encode.c plan()): -EBUSY if a
 * blocker attached to st covers the mode, -EOPNOTSUPP if the mode cannot
 * carry an entry that the encoder itself does not refuse (a kexec keeps
 * memfds only); the reason names the blocker or the record.
 */
int cx_preflight_check(const cprxfer_state *st, enum cx_mode m);

#endif
