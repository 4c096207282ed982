/* SPDX-License-Identifier: MIT */
/* Exec mode internals, reachable by the tests. */
#ifndef CX_EXEC_H
#define CX_EXEC_H

#include <stdbool.h>

#include <cprxfer/cprxfer.h>

/*
 * cprxfer_exec() with the deferred teardown of the old address space
 * switchable (defer = false: execve() unmaps it inside the blackout).
 */
int cx_exec(const cprxfer_state *st, const char *path, char *const argv[],
	    char *const envp[], bool defer);

#endif
