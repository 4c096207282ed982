/* SPDX-License-Identifier: MIT */
/*
 * The successor: a new binary the library started (cprxfer_spawn), with
 * a pidfd that every wait on its channel watches.
 */
#ifndef CX_SUCCESSOR_H
#define CX_SUCCESSOR_H

#include <sys/types.h>

#include <cprxfer/cprxfer.h>

/* The variable that names the inherited socket in the successor. */
#define CX_SUCCESSOR_ENV "CPRXFER_SUCCESSOR_FD"

/*
 * The watched process pid (pidfd) exited: -ECHILD with a reason naming
 * its exit status or signal when it is our child (it is not reaped).
 */
int cx_child_err(pid_t pid, int pidfd);

/* The successor's channel committed: freeing it detaches, not kills. */
void cx_successor_committed(struct cprxfer_successor *s);

/* The successor's channel is being closed: forget it. */
void cx_successor_unlink(struct cprxfer_successor *s);

#endif
