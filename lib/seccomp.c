/* SPDX-License-Identifier: MIT */
/*
 * cprxfer_seccomp_allow(): the syscalls libcprxfer makes, per handoff
 * mode, as ALLOW rules in the caller's libseccomp filter.
 *
 * The lists are the library's own calls, read from its code and checked
 * with strace on tests/test-seccomp.c (docs/security.md repeats them).
 * They include the libc calls the library's own work makes (malloc's
 * brk/mmap/munmap/mremap for buffers sized by a stream; clock_gettime,
 * which the vDSO normally serves) and, in parentheses, the name the same
 * call has with another glibc or on another architecture; names that do
 * not exist on the filter's architecture are skipped. They do not
 * include what the caller's program needs for itself (exit_group,
 * rt_sigreturn, its own I/O, the dynamic loader after an exec).
 *
 * Every mode (the stream codec, fd flags, limits, memory, and the RAM
 * helpers, whose regions every mode carries):
 *   read, write, close, fcntl, lseek, fstat (newfstatat), getpid,
 *   geteuid, prlimit64 (getrlimit), clock_gettime, brk, mmap, munmap,
 *   mremap, madvise, mincore, memfd_create, ftruncate, fstatfs,
 *   readlink (readlinkat), openat (/proc/meminfo, /proc/self/smaps,
 *   RAM files and their directories)
 *
 * CPRXFER_MODE_TRANSFER (listen, accept, connect, channel_open, save,
 * load, ack, wait_ack):
 *   socket (AF_UNIX, SOCK_STREAM only), bind, listen, accept4, connect,
 *   getsockopt, setsockopt, getsockname, shutdown, sendmsg, recvmsg,
 *   poll (ppoll), inotify_init1, inotify_add_watch, inotify_rm_watch,
 *   lstat, stat (newfstatat), chmod (fchmodat), fchownat (the socket's
 *   group), rename (renameat), renameat2, unlink (unlinkat), ioctl
 *   (PIDFD_GET_INFO only: is a peer allowed by pid still alive?);
 *   for cprxfer_spawn and the successor calls: socketpair, clone
 *   (CLONE_VM | CLONE_VFORK | SIGCHLD only; clone3 fails with ENOSYS so
 *   that posix_spawn falls back to it), rt_sigaction, execve, pidfd_open,
 *   waitid, wait4, pidfd_send_signal and kill (SIGKILL only)
 *
 * CPRXFER_MODE_EXEC (cprxfer_exec, cprxfer_load_exec):
 *   execve, pread64, and for the helper that unmaps the old image after
 *   the exec (lib/exec-helper.c): pipe2, prctl (PR_GET_CHILD_SUBREAPER
 *   only), clone (the two flag sets it uses only), wait4, rt_sigprocmask,
 *   rt_sigaction, close_range, poll/ppoll, pidfd_open, pidfd_send_signal
 *   (SIGKILL only), exit;
 *   for cprxfer_exec_opts' confirmation and fallback: socketpair
 *   (AF_UNIX), sendto/recvfrom, execveat, exit_group
 *
 * CPRXFER_MODE_RESTART and CPRXFER_MODE_KEXEC (libcprxfer-systemd:
 * cprxfer_sd_*), measured under a KILL filter (tests/test-sd.c):
 *   socket (AF_UNIX, SOCK_DGRAM only), getsockopt/setsockopt (SO_SNDBUF),
 *   getuid, getgid, getegid (SCM_CREDENTIALS), sendmsg (FDSTORE=1,
 *   FDSTOREREMOVE=1), pipe2 and poll/ppoll (BARRIER=1), pread64;
 *   sd_listen_fds and the stream need only the every-mode calls. Not
 *   covered: the D-Bus query of FileDescriptorStoreMax= that
 *   cprxfer_sd_check makes where $FDSTORE is unset (systemd < 254);
 *   under a filter that refuses it the store's size is "unknown".
 *
 * CPRXFER_MODE_FILE (cprxfer_save_file, cprxfer_load_file):
 *   fsync, rename (renameat, renameat2), unlink (unlinkat), pread64,
 *   getrandom (mkostemp's names, with newer glibc)
 */
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#include <cprxfer/seccomp.h>

#include "error.h"

#define T   CPRXFER_MODE_TRANSFER
#define X   CPRXFER_MODE_EXEC
#define F   CPRXFER_MODE_FILE
#define R   (CPRXFER_MODE_RESTART | CPRXFER_MODE_KEXEC)
#define ALL (T | X | F | R)

/*
 * PIDFD_GET_INFO (Linux 6.13) with the 64-byte struct pidfd_info that
 * lib/handshake.c passes: _IOWR(0xFF, 11, 64 bytes).
 */
#define CX_PIDFD_GET_INFO_64 0xc040ff0bu

static const struct {
	const char *name;
	unsigned modes;
} plain[] = {
	/* every mode: the stream codec over a socket, memfd or file */
	{ "read", ALL },
	{ "write", ALL },
	{ "close", ALL },
	{ "fcntl", ALL }, /* CLOEXEC, F_DUPFD_CLOEXEC, seals */
	{ "lseek", ALL },
	{ "fstat", ALL },
	{ "newfstatat", ALL }, /* glibc's fstat, stat, lstat */
	{ "fstatat64", ALL },  /* the same on 32-bit */
	{ "getpid", ALL },     /* HELLO; exec-mode checks */
	{ "geteuid", ALL },    /* the peer policy */
	{ "prlimit64", ALL },  /* the default fd limit */
	{ "getrlimit", ALL },
	{ "clock_gettime", ALL }, /* deadlines (vDSO fallback) */
	{ "brk", ALL },		  /* malloc */
	{ "mmap", ALL },	  /* malloc; RAM regions */
	{ "munmap", ALL },
	{ "mremap", ALL }, /* realloc of large buffers */
	/* every mode: the RAM helpers (lib/ram.c) */
	{ "madvise", ALL },	 /* prefault, huge pages */
	{ "mincore", ALL },	 /* POPULATE_RESIDENT */
	{ "memfd_create", ALL }, /* RAM; the exec-mode stream */
	{ "ftruncate", ALL },	 /* RAM sizing */
	{ "fstatfs", ALL },	 /* hugetlbfs detection */
	{ "readlink", ALL },	 /* names behind /proc/self/fd */
	{ "readlinkat", ALL },	 /* the same, as glibc makes it on
					  * aarch64 and newer ports */
	{ "openat", ALL },	 /* RAM files, /proc/meminfo; state
					 * files */

	/* transfer: sockets, rendezvous, fd passing */
	{ "bind", T },
	{ "listen", T },
	{ "accept4", T },
	{ "connect", T },
	{ "getsockopt", T | R }, /* SO_TYPE, SO_PEERCRED, SO_ERROR;
				  * libsystemd: SO_SNDBUF */
	{ "setsockopt", T | R }, /* SO_SNDTIMEO; libsystemd: SO_SNDBUF */
	{ "getsockname", T },	 /* is it AF_UNIX? */
	{ "shutdown", T },	 /* after a refused load */
	{ "sendmsg", T | R },	 /* frames, SCM_RIGHTS; sd_notify */
	{ "recvmsg", T },
	{ "poll", T | X | R }, /* every wait, bounded; the exec helper's;
				* BARRIER=1 */
	{ "ppoll", T | X | R },
	{ "epoll_create1", T }, /* the listener's pollable fd */
	{ "epoll_ctl", T },
	{ "epoll_wait", T },
	{ "epoll_pwait", T },
	{ "timerfd_create", T }, /* the earliest handshake deadline */
	{ "timerfd_settime", T },
	{ "inotify_init1", T }, /* connect waits for the path */
	{ "inotify_add_watch", T },
	{ "inotify_rm_watch", T },
	{ "lstat", T }, /* the stale-socket checks */
	{ "stat", T },
	{ "chmod", T }, /* listen: the socket's mode */
	{ "fchmodat", T },
	{ "fchownat", T },	/* listen: cprxfer_opts_set_socket_group */
	{ "renameat2", T | F }, /* listen: into place */
	{ "rename", T | F },	/* file: the atomic replace */
	{ "renameat", T | F },
	{ "unlink", T | F }, /* stale socket; temporary file */
	{ "unlinkat", T | F },

	/* exec in place */
	{ "execve", X | T },	   /* exec mode; cprxfer_spawn's child */
	{ "pread64", X | F | R },  /* the stream magic; the CRC */
	{ "pipe2", X | R },	   /* the exec wakes the helper; BARRIER=1 */
	{ "wait4", X | T },	   /* reap the intermediate; a failed spawn */
	{ "rt_sigprocmask", X },   /* signals blocked around the clone */
	{ "rt_sigaction", X | T }, /* the exec helper and cprxfer_spawn's
				   * child reset handlers */
	{ "close_range", X },	   /* the helper drops its files */
	{ "pidfd_open", X | T },   /* the helper; the new image; a successor */
	{ "waitid", T },	   /* a successor: exited? reap it */
	{ "socketpair", X | T },   /* confirmation socket; a successor's */
	{ "sendto", X },	   /* cprxfer_exec_commit */
	{ "recvfrom", X },
	{ "execveat", X }, /* the fallback */
	{ "exit", X },	   /* the helper's own exit */
	{ "exit_group", X },

	/* restart mode: libsystemd's notify path (SCM_CREDENTIALS) */
	{ "getuid", R },
	{ "getgid", R },
	{ "getegid", R },

	/* file mode */
	{ "fsync", F },	    /* the file, its directory */
	{ "getrandom", F }, /* mkostemp's names, newer glibc */
};

static int add(scmp_filter_ctx ctx, const char *name, unsigned cnt,
	       const struct scmp_arg_cmp *cmp)
{
	int nr = seccomp_syscall_resolve_name(name);
	int rc;

	if (nr == __NR_SCMP_ERROR)
		return 0; /* not a syscall on this architecture */
	rc = seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, cnt, cmp);
	if (rc < 0)
		return cx_err(
			rc,
			"cprxfer_seccomp_allow: rule for %s: libseccomp error %d",
			name, rc);
	return 0;
}

/*
 * Exec mode's teardown helper (lib/exec.c): only the calls it makes,
 * with the arguments it makes them with.
 */
static int add_exec_args(scmp_filter_ctx ctx)
{
	const struct scmp_arg_cmp reaper[] = {
		SCMP_A0(SCMP_CMP_EQ, PR_GET_CHILD_SUBREAPER),
	};
	const struct scmp_arg_cmp spawn[] = {
		SCMP_A0(SCMP_CMP_EQ, CLONE_VM | CLONE_VFORK),
	};
	const struct scmp_arg_cmp helper[] = {
		SCMP_A0(SCMP_CMP_EQ, CLONE_VM | SIGCHLD),
	};
	const struct scmp_arg_cmp sigkill[] = {
		SCMP_A1(SCMP_CMP_EQ, SIGKILL),
	};
	int rc;

	rc = add(ctx, "prctl", 1, reaper);
	if (rc == 0)
		rc = add(ctx, "clone", 1, spawn);
	if (rc == 0)
		rc = add(ctx, "clone", 1, helper);
	if (rc == 0)
		rc = add(ctx, "pidfd_send_signal", 1, sigkill);
	return rc;
}

/*
 * cprxfer_spawn (posix_spawn) and cprxfer_successor_kill: glibc's
 * posix_spawn makes its child with clone3 first, whose flags live in
 * memory a filter cannot read: clone3 fails with ENOSYS, so that glibc
 * falls back to clone with flags the filter can check. A caller that
 * has its own rule for clone3 keeps it (-EEXIST is not an error here).
 */
static int add_spawn_args(scmp_filter_ctx ctx)
{
	const struct scmp_arg_cmp spawn[] = {
		SCMP_A0(SCMP_CMP_EQ, CLONE_VM | CLONE_VFORK | SIGCHLD),
	};
	const struct scmp_arg_cmp sigkill[] = {
		SCMP_A1(SCMP_CMP_EQ, SIGKILL),
	};
	int nr = seccomp_syscall_resolve_name("clone3");
	int rc;

	rc = add(ctx, "clone", 1, spawn);
	if (rc == 0)
		rc = add(ctx, "pidfd_send_signal", 1, sigkill);
	if (rc == 0)
		rc = add(ctx, "kill", 1, sigkill);
	if (rc == 0 && nr != __NR_SCMP_ERROR) {
		rc = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), nr, 0);
		if (rc == -EEXIST)
			rc = 0;
		if (rc < 0)
			return cx_err(
				rc,
				"cprxfer_seccomp_allow: rule for clone3: libseccomp error %d",
				rc);
	}
	return rc;
}

CX_EXPORT int cprxfer_seccomp_allow(scmp_filter_ctx ctx, unsigned modes)
{
	const unsigned known = T | X | F | R;
	/* socket(AF_UNIX, SOCK_STREAM [| SOCK_CLOEXEC | SOCK_NONBLOCK]) */
	const struct scmp_arg_cmp unix_stream[] = {
		SCMP_A0(SCMP_CMP_EQ, AF_UNIX),
		SCMP_A1(SCMP_CMP_MASKED_EQ,
			~(uint64_t)(SOCK_CLOEXEC | SOCK_NONBLOCK) & 0xffffffff,
			SOCK_STREAM),
	};
	/* socket(AF_UNIX, SOCK_DGRAM [| ...]): libsystemd's notify socket */
	const struct scmp_arg_cmp unix_dgram[] = {
		SCMP_A0(SCMP_CMP_EQ, AF_UNIX),
		SCMP_A1(SCMP_CMP_MASKED_EQ,
			~(uint64_t)(SOCK_CLOEXEC | SOCK_NONBLOCK) & 0xffffffff,
			SOCK_DGRAM),
	};
	/* ioctl(pidfd, PIDFD_GET_INFO): is the peer allowed by pid alive? */
	const struct scmp_arg_cmp pidfd_info[] = {
		SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffff, CX_PIDFD_GET_INFO_64),
	};
	uint32_t def = 0;
	size_t i;
	int rc;

	if (!ctx)
		return cx_err(-EINVAL, "cprxfer_seccomp_allow: NULL filter");
	if (!modes || (modes & ~known))
		return cx_err(
			-EINVAL,
			"cprxfer_seccomp_allow: modes 0x%x: not a non-empty set of CPRXFER_MODE_* bits",
			modes);
	rc = seccomp_attr_get(ctx, SCMP_FLTATR_ACT_DEFAULT, &def);
	if (rc < 0)
		return cx_err(
			rc,
			"cprxfer_seccomp_allow: reading the filter's default action: libseccomp error %d",
			rc);
	if (def == SCMP_ACT_ALLOW)
		return 0; /* everything is allowed already */
	for (i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
		if (!(plain[i].modes & modes))
			continue;
		rc = add(ctx, plain[i].name, 0, NULL);
		if (rc < 0)
			return rc;
	}
	if (modes & X) {
		rc = add_exec_args(ctx);
		if (rc < 0)
			return rc;
	}
	if (modes & T)
		rc = add(ctx, "socket", 2, unix_stream);
	if (rc == 0 && (modes & T))
		rc = add(ctx, "ioctl", 1, pidfd_info);
	if (rc == 0 && (modes & T))
		rc = add_spawn_args(ctx);
	if (rc == 0 && (modes & R))
		rc = add(ctx, "socket", 2, unix_dgram);
	return rc;
}
