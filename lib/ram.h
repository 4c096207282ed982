/* SPDX-License-Identifier: MIT */
/* Guest RAM regions: what the rest of the library asks of lib/ram.c. */
#ifndef CX_RAM_H
#define CX_RAM_H

#include <stdbool.h>
#include <stdint.h>

/*
 * May fd back a RAM region of size bytes received from a peer, named
 * name? 0 for a memfd sealed against shrinking (F_SEAL_SHRINK), so that
 * no one can truncate it under a mapping; with allow_file, also for a
 * regular file or a dax device, which anyone who may write it can
 * truncate (a SIGBUS in the process that maps it). Otherwise:
 *   -EPERM	a file or dax device, and allow_file is false
 *   -EBADFD	a memfd not sealed against shrinking; not a memfd, file
 *		or dax device (a pipe, a socket, another device)
 *   -EBADMSG	the object is not size bytes long
 * with a reason naming the record.
 */
int cx_ram_check_fd(const char *name, int fd, uint64_t size, bool allow_file);

#endif
