/* SPDX-License-Identifier: MIT */
/*
 * cprxfer_seccomp_allow(): the syscalls libcprxfer makes, per handoff
 * mode, as ALLOW rules in the caller's libseccomp filter.
 *
 * The lists below are the library's own needs, measured with strace on
 * the test suite and kept in step with the code (docs/security.md and
 * docs/ref/cprxfer_seccomp_allow.md repeat them). They include the libc
 * calls the library's own work makes: malloc's brk/mmap/munmap/mremap
 * for buffers sized by a stream, and clock_gettime, which the vDSO
 * normally serves without a syscall. They do not include what the
 * caller's program needs for itself (exit_group, signals, its own I/O).
 *
 * Every mode (the shared core):
 *   read, write, close, fcntl, fstat, newfstatat, lseek, getpid, geteuid,
 *   getrlimit, prlimit64, clock_gettime, brk, mmap, munmap, mremap,
 *   madvise
 *
 * CPRXFER_MODE_TRANSFER (cprxfer_listen/accept/connect/channel_open,
 * save/load/ack/wait_ack, the RAM helpers):
 *   socket (AF_UNIX + SOCK_STREAM only), socketpair (AF_UNIX only),
 *   bind, listen, accept4, connect, getsockopt, setsockopt, getsockname,
 *   shutdown, sendmsg, recvmsg, poll, ppoll, inotify_init1,
 *   inotify_add_watch, inotify_rm_watch, rename, renameat, renameat2,
 *   unlink, unlinkat, memfd_create, ftruncate, fstatfs, statfs, openat,
 *   mincore, dup, dup3
 *
 * CPRXFER_MODE_EXEC (cprxfer_exec, cprxfer_load_exec):
 *   memfd_create, execve, execveat, dup, dup3, pread64
 *
 * CPRXFER_MODE_FILE (cprxfer_save_file, cprxfer_load_file,
 * cprxfer_ram_open_file):
 *   openat, fsync, fdatasync, rename, renameat, renameat2, unlink,
 *   unlinkat, ftruncate, fstatfs, statfs, getrandom, pread64
 */
#include <fcntl.h>
#include <stddef.h>
#include <sys/socket.h>

#include <cprxfer/seccomp.h>

#include "error.h"

#define T CPRXFER_MODE_TRANSFER
#define X CPRXFER_MODE_EXEC
#define F CPRXFER_MODE_FILE
#define ALL (T | X | F)

static const struct {
	const char *name;
	unsigned modes;
} plain[] = {
	/* the shared core: buffered I/O, fd flags, limits, memory */
	{ "read", ALL },
	{ "write", ALL },
	{ "close", ALL },
	{ "fcntl", ALL },		/* FD_CLOEXEC, F_DUPFD_CLOEXEC, seals */
	{ "fstat", ALL },
	{ "newfstatat", ALL },		/* glibc's fstat/stat */
	{ "lseek", ALL },
	{ "getpid", ALL },		/* HELLO, exec-mode handover */
	{ "geteuid", ALL },		/* peer policy */
	{ "getrlimit", ALL },		/* the default fd limit */
	{ "prlimit64", ALL },		/* glibc's getrlimit */
	{ "clock_gettime", ALL },	/* deadlines (vDSO fallback) */
	{ "brk", ALL },			/* malloc */
	{ "mmap", ALL },		/* malloc, RAM regions */
	{ "munmap", ALL },
	{ "mremap", ALL },		/* realloc of large buffers */
	{ "madvise", ALL },		/* RAM prefault, THP, free() */

	/* transfer: sockets, rendezvous, fd passing, RAM */
	{ "bind", T },
	{ "listen", T },
	{ "accept4", T },
	{ "connect", T },
	{ "getsockopt", T },		/* SO_TYPE, SO_PEERCRED, SO_ERROR */
	{ "setsockopt", T },
	{ "getsockname", T },
	{ "shutdown", T },
	{ "sendmsg", T },		/* SCM_RIGHTS */
	{ "recvmsg", T },
	{ "poll", T },			/* every wait, bounded */
	{ "ppoll", T },
	{ "inotify_init1", T },		/* connect waits for the path */
	{ "inotify_add_watch", T },
	{ "inotify_rm_watch", T },
	{ "rename", T | F },		/* listen: into place; file: commit */
	{ "renameat", T | F },
	{ "renameat2", T | F },
	{ "unlink", T | F },		/* stale socket; temp file */
	{ "unlinkat", T | F },
	{ "memfd_create", T | X },	/* RAM; exec-mode stream */
	{ "ftruncate", T | F },		/* RAM sizing */
	{ "fstatfs", T | F },		/* hugetlbfs detection */
	{ "statfs", T | F },
	{ "openat", T | F },		/* ram_open_file; state files */
	{ "mincore", T },		/* POPULATE_RESIDENT */
	{ "dup", T | X },
	{ "dup3", T | X },

	/* exec in place */
	{ "execve", X },
	{ "execveat", X },
	{ "pread64", X | F },

	/* file mode */
	{ "fsync", F },
	{ "fdatasync", F },
	{ "getrandom", F },		/* temporary file names */
};

static int add(scmp_filter_ctx ctx, const char *name, unsigned cnt,
	       const struct scmp_arg_cmp *cmp)
{
	int nr = seccomp_syscall_resolve_name(name);
	int rc;

	if (nr == __NR_SCMP_ERROR)
		return 0;	/* not a syscall on this architecture */
	rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, cnt, cmp);
	if (rc < 0)
		return cx_err(rc, "cprxfer_seccomp_allow: rule for %s: "
			      "libseccomp error %d", name, rc);
	return 0;
}

CX_EXPORT int cprxfer_seccomp_allow(scmp_filter_ctx ctx, unsigned modes)
{
	const unsigned known = T | X | F;
	/* socket(AF_UNIX, SOCK_STREAM [| SOCK_CLOEXEC | SOCK_NONBLOCK]) */
	const struct scmp_arg_cmp unix_stream[] = {
		SCMP_A0(SCMP_CMP_EQ, AF_UNIX),
		SCMP_A1(SCMP_CMP_MASKED_EQ,
			~(uint64_t)(SOCK_CLOEXEC | SOCK_NONBLOCK) & 0xffffffff,
			SOCK_STREAM),
	};
	const struct scmp_arg_cmp unix_only[] = {
		SCMP_A0(SCMP_CMP_EQ, AF_UNIX),
	};
	uint32_t def = 0;
	size_t i;
	int rc;

	if (!ctx)
		return cx_err(-EINVAL, "cprxfer_seccomp_allow: NULL filter");
	if (!modes || (modes & ~known))
		return cx_err(-EINVAL, "cprxfer_seccomp_allow: modes 0x%x: "
			      "not a non-empty set of CPRXFER_MODE_* bits",
			      modes);
	rc = seccomp_attr_get(ctx, SCMP_FLTATR_ACT_DEFAULT, &def);
	if (rc < 0)
		return cx_err(rc, "cprxfer_seccomp_allow: reading the "
			      "filter's default action: libseccomp error %d",
			      rc);
	if (def == SCMP_ACT_ALLOW)
		return 0;	/* everything is allowed already */
	for (i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		if (!(plain[i].modes & modes))
			continue;
		rc = add(ctx, plain[i].name, 0, NULL);
		if (rc < 0)
			return rc;
	}
	if (modes & T) {
		rc = add(ctx, "socket", 2, unix_stream);
		if (rc == 0)
			rc = add(ctx, "socketpair", 1, unix_only);
	}
	return rc;
}
