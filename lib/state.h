/* SPDX-License-Identifier: MIT */
/* The state map: entries in insertion order plus a hash index by name. */
#ifndef CX_STATE_H
#define CX_STATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cprxfer/cprxfer.h>

#include "cleanup.h"

/* Close n fds (those >= 0). */
static inline void cx_close_all(const int *fds, size_t n)
{
	while (n--)
		cx_close(fds[n]);
}

struct cx_entry {
	char *name;   /* NUL-terminated, in st->names */
	uint8_t type; /* CPRXFER_TYPE_* */
	uint8_t name_len;
	bool owns_fd; /* close the fd on free */
	bool fd_id;   /* a borrowed fd: dev and ino hold its file at put */
	uint64_t dev, ino;
	union {
		uint64_t u64;
		int64_t i64;
		struct {
			void *data; /* str: NUL-terminated */
			size_t len; /* str: without the NUL */
		} blob;
		int fd; /* -1 once taken */
		struct {
			int *fds; /* n fds; NULL once taken */
			size_t n;
			/* Borrowed: each fd's device and inode at put. */
			uint64_t *ids;
		} fda; /* CPRXFER_TYPE_FDS */
		struct {
			int fd; /* -1: none (file mode, by path) */
			uint64_t size;
			uint32_t flags;
			char *path; /* NULL for a memfd */
		} ram;
	} v;
};

/* Names live in chunks freed with the state: no allocation per name. */
struct cx_chunk {
	struct cx_chunk *next;
	size_t used, cap;
	char data[];
};

struct cprxfer_state {
	struct cx_chunk *names;
	struct cx_entry *e;
	size_t n, cap;
	uint64_t *tab; /* hash << 32 | (entry index + 1); 0: empty */
	size_t tabcap; /* a power of two */
	/* A loaded state: from a peer over a socket, and what the loader
	 * allowed then (cprxfer_ram_get checks RAM against it again). */
	bool from_peer;
	bool allow_file_ram;
	const struct cprxfer_blockers *blockers; /* borrowed; NULL: none */
	/*
	 * The fd numbers the state owns, as a bitmap, so that adopting one
	 * twice (which would close it twice) is refused. Built on the first
	 * adopt, dropped whenever an owned fd leaves the state.
	 */
	uint64_t *owned;
	size_t owned_words;
	bool owned_valid;
};

/*
 * Check a name of len bytes: 1..CPRXFER_NAME_MAX, no NUL inside. Returns
 * 0 or -EINVAL / -ENAMETOOLONG with a reason naming what.
 */
int cx_name_check(const char *what, const char *name, size_t len);

/*
 * Append an entry named name (len bytes, already checked) of type; the
 * caller fills ->v. -EEXIST on a duplicate, -ENOMEM. The pointer is valid
 * until the next append.
 */
int cx_state_append(cprxfer_state *st, const char *name, size_t len, int type,
		    struct cx_entry **out);

/* Drop the last entry (undo of an append whose value failed). */
void cx_state_pop(cprxfer_state *st);

/* Reserve room for n more entries (a loader that knows the count). */
int cx_state_reserve(cprxfer_state *st, size_t n);

struct cx_entry *cx_state_find(const cprxfer_state *st, const char *name,
			       size_t len);

/* Number of fds the entries carry (FD, RAM with an fd, FDS arrays). */
size_t cx_state_nfds(const cprxfer_state *st);

/* The fd an entry carries, or -1 (an fd array: -1, see cx_entry_fds). */
int cx_entry_fd(const struct cx_entry *e);

/*
 * The fds an entry carries, in order: their number, with *fds set to
 * the first (FD, RAM with an fd, FDS not taken; else 0).
 */
size_t cx_entry_fds(const struct cx_entry *e, const int **fds);

/* A borrowed fd was just put in e: remember which file it is. */
void cx_entry_note_fd(struct cx_entry *e);

/*
 * Is e's borrowed fd (each fd of a borrowed array) still the file it was
 * at put? 0 (also for an entry that owns its fds or has none); -EBADF if
 * an fd was closed; -ESTALE, naming the record, if it was closed and its
 * number reused.
 */
int cx_entry_check_fd(const struct cx_entry *e);

#endif
