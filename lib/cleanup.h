/* SPDX-License-Identifier: MIT */
/*
 * Ownership by scope: the one idiom the library uses for fds and memory.
 *
 * A variable declared with cx_autoclose (an fd) or cx_autofree (a
 * malloc'd pointer) is released when it goes out of scope, on every
 * path, so an early return cannot leak it. Ownership leaves the scope
 * only through cx_steal_fd() / cx_steal_ptr(), which hand the value out
 * and leave -1 / NULL behind:
 *
 *	cx_autoclose int fd = open(path, O_RDONLY | O_CLOEXEC);
 *	if (fd < 0)
 *		return cx_err(-errno, "open %s: %s", path, strerror(errno));
 *	if (fstat(fd, &st) < 0)
 *		return cx_err(-errno, "...");	// fd closed here
 *	*out = cx_steal_fd(&fd);		// and not here
 *	return 0;
 *
 * Objects with their own free function get a cleanup helper from
 * CX_DEFINE_FREE(type, fn) and are declared `cx_auto(type) *p = NULL`.
 */
#ifndef CX_CLEANUP_H
#define CX_CLEANUP_H

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

/* Close fd, keeping errno; ignores fd < 0. */
static inline void cx_close(int fd)
{
	int saved = errno;

	if (fd >= 0)
		close(fd);
	errno = saved;
}

static inline void cx_closep(int *fd)
{
	cx_close(*fd);
	*fd = -1;
}

static inline void cx_freep(void *p)
{
	free(*(void **)p);
}

#define cx_autoclose __attribute__((cleanup(cx_closep)))
#define cx_autofree  __attribute__((cleanup(cx_freep)))

/* Hand an fd out of its cx_autoclose variable. */
static inline int cx_steal_fd(int *fd)
{
	int v = *fd;

	*fd = -1;
	return v;
}

/* Hand a pointer out of its cleanup variable, leaving NULL. */
#define cx_steal_ptr(pp)                              \
	__extension__({                               \
		__typeof__(*(pp)) cx_stolen_ = *(pp); \
		*(pp) = NULL;                         \
		cx_stolen_;                           \
	})

/* cx_auto(type) *p = NULL: freed with fn(p) at scope exit. */
#define CX_DEFINE_FREE(type, fn)                    \
	static inline void cx_free_##type(type **p) \
	{                                           \
		if (*p)                             \
			fn(*p);                     \
	}
#define cx_auto(type) __attribute__((cleanup(cx_free_##type))) type

#endif
