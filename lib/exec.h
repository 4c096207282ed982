/* SPDX-License-Identifier: MIT */
/*
 * Exec mode internals shared by exec.c (cprxfer_exec), exec-helper.c
 * (the helper process) and load-exec.c (cprxfer_load_exec), and the
 * hooks the tests reach.
 *
 * The state memfd holds the state stream, behind a HELLO frame with the
 * application tag when cprxfer_exec_opts wrote it. The environment variable names it, and, when the
 * old image waits for a confirmation, the new image's end of the
 * confirmation socket: CPRXFER_EXEC_FD=<memfd>[,<confirm fd>].
 */
#ifndef CX_EXEC_H
#define CX_EXEC_H

#include <stdbool.h>

#include <cprxfer/cprxfer.h>

#define CX_EXEC_ENV   "CPRXFER_EXEC_FD"
#define CX_EXEC_MEMFD "cprxfer-exec-state"
/* The exact seals of a state memfd. */
#define CX_EXEC_SEALS (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)

/* Bytes on the confirmation socket. */
#define CX_CONFIRM_COMMIT 'C' /* new image -> helper: I took over */
#define CX_CONFIRM_OK	  'K' /* helper -> new image: no fallback now */

/*
 * Encode st, behind a HELLO frame carrying tag (none if tag is NULL: a
 * plain cprxfer_exec, whose loader checks no tag), into a new memfd
 * (close-on-exec); seal it unless !seal (the tests corrupt it first).
 */
int cx_exec_encode(const cprxfer_state *st, const char *tag, bool seal,
		   int *out);

/*
 * cprxfer_exec_opts() with the helper switchable: defer = false runs
 * execve() with no helper at all (the old address space is unmapped
 * inside the blackout, and there is no fallback).
 */
int cx_exec(const cprxfer_state *st, const char *path, char *const argv[],
	    char *const envp[], const cprxfer_opts *o, bool confirm,
	    bool defer);

#endif
