/*
 * sandbox.c - demo-vmm --sandbox: a default-deny seccomp filter (see
 * sandbox.h and the "Sandbox" section of docs/demo-vmm.md).
 *
 * The filter allows exactly what a demo-vmm needs from the moment main()
 * installs it (the control socket is already listening; the guest is
 * not built yet) to its exit, in every role: booting a fresh guest,
 * receiving one (--incoming, --restore), and handing it on in each mode.
 * It is made of two lists:
 *
 *   - libcprxfer's: cprxfer_seccomp_allow(ctx, TRANSFER | EXEC | FILE),
 *     the syscalls the library makes in those modes (lib/seccomp.c);
 *   - the VMM's own, below, each with the reason it is there.  Calls the
 *     library's list already allows are not repeated, except the thread
 *     calls that lib/seccomp.c grants for exec mode only (futex, exit,
 *     rt_sigprocmask), which the VMM needs for its vCPU threads anyway.
 *
 * A seccomp filter survives execve() and is inherited by every child, so
 * the list also covers what a NEW demo-vmm image does before main():
 * exec mode runs /proc/self/exe under this filter (the dynamic loader
 * and libc start-up), and the exec-mode reaper is a fork() of ours.
 *
 * The default action is SCMP_ACT_ERRNO(EPERM), not KILL_PROCESS: a call
 * outside the list fails like any refused call, the VMM reports it with
 * the call's name through its usual error path (and the guest runs on
 * if the failure allows), and a test can observe the EPERM.  The list
 * was derived with "strace -f" on real runs of every mode (see the doc)
 * and checked for EPERMs under the filter; nothing the VMM needs falls
 * through to the default.  Other architectures' (and x32) syscalls get
 * libseccomp's bad-arch action, which kills the process.
 *
 * Arguments are restricted where a register holds the whole story:
 * ioctl() only KVM's ioctl type, clone() never with a namespace flag,
 * tgkill() only within this process, setpriority() of a thread, prctl()
 * read-only, socket() only AF_UNIX SOCK_STREAM (libcprxfer's rule, which
 * the control socket shares).  Pointers (sched_param, sigaction, clone3's
 * struct) cannot be inspected by a seccomp filter.
 */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <linux/kvm.h>
#include <seccomp.h>

#include <cprxfer/seccomp.h>

#include "sandbox.h"
#include "vmm.h"

#define SANDBOX_MODES \
	(CPRXFER_MODE_TRANSFER | CPRXFER_MODE_EXEC | CPRXFER_MODE_FILE)
/* In the environment once our filter is loaded: the pid it was for. */
#define SANDBOX_MARK "DEMO_VMM_SANDBOXED"

/* Allowed with any arguments; beyond libcprxfer's list. */
static const struct {
	const char *name;
	const char *why;
} own[] = {
	/* KVM: the vCPU run area is mmap()ed (libcprxfer's list) */
	{ "access",
	  "main(): is /dev/kvm usable; the loader's /etc/ld.so.preload check" },

	/* threads: vCPUs, the RAM warmer, the exec-mode VM builder */
	{ "set_robust_list", "glibc: every new thread, every new image" },
	{ "rseq", "glibc: every new thread, every new image" },
	{ "futex", "mutexes, condition variables, pthread_join" },
	{ "rt_sigprocmask",
	  "pthread_create blocks signals; vCPU threads unblock the kick signal" },
	{ "exit", "a thread's exit" },
	{ "exit_group", "the process's exit" },
	{ "gettid", "a vCPU thread's id, for its priority" },
	{ "rt_sigaction",
	  "the vCPU kick handler (SIGUSR1), SIGPIPE ignored, glibc's internal signal" },
	{ "rt_sigreturn", "return from the kick handler" },
	{ "restart_syscall",
	  "a poll() or sleep stopped by SIGSTOP or a ptrace attach resumes through it (without it the serve loop's poll fails with EPERM)" },
	{ "sched_setscheduler",
	  "vCPU threads: SCHED_FIFO while they run the handoff, SCHED_OTHER after (the policy is a register but the priority a pointer)" },
	{ "sched_getaffinity",
	  "glibc's pthread_getattr_np (the sanitizer runtimes call it on every new thread); read-only" },
	{ "sched_get_priority_min", "pthread_attr_setschedparam checks" },
	{ "sched_get_priority_max", "pthread_attr_setschedparam checks" },

	/* the control socket (accept4, poll: libcprxfer's list) */
	{ "sendto", "send(): the reply lines" },
	{ "recvfrom", "recv(): the command lines" },

	/* time */
	{ "clock_nanosleep",
	  "usleep(): the serve loop without a control socket, vCPU stop polling, the guest mailbox" },

	/* transfer mode's fence: kill a new VMM that timed out */
	{ "pidfd_open", "a handle on the new VMM, to wait for its death" },

	/* a new image (exec mode) before main(): the dynamic loader */
	{ "arch_prctl", "the loader: the TLS register" },
	{ "set_tid_address", "glibc start-up" },
	{ "mprotect", "the loader (RELRO), thread stack guard pages" },
};

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
/* Sanitizer builds only: what the ASan/UBSan runtime itself calls. */
static const char *const sanitizer_own[] = {
	"sigaltstack", /* per-thread signal stack for its reports */
	"nanosleep",   /* its death callback waits for other threads */
	"sched_yield", /* spin locks */
	"writev",      /* reports */
	"open",	       /* its start-up reads /proc/self/maps with open(2) */
	"prctl",       /* PR_GET_DUMPABLE, PR_SET_PTRACER in its reports */
	"readlink",    /* /proc/self/exe, for symbolizing */
	"personality", /* its start-up checks ASLR */
};
#endif

static int rule(scmp_filter_ctx ctx, uint32_t action, const char *name,
		unsigned int cnt, const struct scmp_arg_cmp *cmp,
		struct vmm_err *err)
{
	int nr = seccomp_syscall_resolve_name(name), r;

	if (nr == __NR_SCMP_ERROR)
		return vmm_errf(err, -ENOSYS, "sandbox: no syscall %s here",
				name);
	r = seccomp_rule_add_array(ctx, action, nr, cnt, cmp);
	if (r < 0)
		return vmm_errf(err, r, "sandbox: rule for %s: %s", name,
				strerror(-r));
	return 0;
}

/* The calls allowed only with some arguments. */
static int add_restricted(scmp_filter_ctx ctx, struct vmm_err *err)
{
	/* Every KVM ioctl is of type KVMIO: _IOC_TYPE is bits 8..15. */
	const struct scmp_arg_cmp kvm_ioctl[] = {
		SCMP_A1(SCMP_CMP_MASKED_EQ, 0xff00, KVMIO << 8),
	};
	/*
	 * Threads (pthread_create) and fork() (the exec-mode reaper), but
	 * never a new namespace or a traced child.
	 */
	const struct scmp_arg_cmp no_ns[] = {
		SCMP_A0(SCMP_CMP_MASKED_EQ,
			CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS |
				CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID |
				CLONE_NEWNET | CLONE_PTRACE,
			0),
	};
	/* pthread_kill() of our own vCPU threads: the kick. */
	const struct scmp_arg_cmp own_tgid[] = {
		SCMP_A0(SCMP_CMP_EQ, (uint64_t)getpid()),
	};
	/* The vCPU threads' and the warmer's nice values. */
	const struct scmp_arg_cmp prio_process[] = {
		SCMP_A0(SCMP_CMP_EQ, PRIO_PROCESS),
	};
	/* sandbox_install() in a new image: is it filtered already? */
	const struct scmp_arg_cmp get_seccomp[] = {
		SCMP_A0(SCMP_CMP_EQ, PR_GET_SECCOMP),
	};
	/* The fence: SIGKILL to a new VMM that did not answer in time. */
	const struct scmp_arg_cmp sigkill[] = {
		SCMP_A1(SCMP_CMP_EQ, SIGKILL),
	};
	int r;

	r = rule(ctx, SCMP_ACT_ALLOW, "ioctl", 1, kvm_ioctl, err);
	if (r == 0)
		r = rule(ctx, SCMP_ACT_ALLOW, "clone", 1, no_ns, err);
	/*
	 * clone3() takes its flags in memory, which a filter cannot read:
	 * ENOSYS makes glibc fall back to clone(), checked above.
	 */
	if (r == 0)
		r = rule(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", 0, NULL, err);
	if (r == 0)
		r = rule(ctx, SCMP_ACT_ALLOW, "tgkill", 1, own_tgid, err);
	if (r == 0)
		r = rule(ctx, SCMP_ACT_ALLOW, "setpriority", 1, prio_process,
			 err);
	if (r == 0)
		r = rule(ctx, SCMP_ACT_ALLOW, "prctl", 1, get_seccomp, err);
	if (r == 0)
		r = rule(ctx, SCMP_ACT_ALLOW, "pidfd_send_signal", 1, sigkill,
			 err);
	return r;
}

int sandbox_install(struct vmm *v, struct vmm_err *err)
{
	scmp_filter_ctx ctx;
	const char *mark;
	char pid[16];
	size_t i;
	int r;

	(void)v;
	/*
	 * A new image of a sandboxed VMM (exec mode: same pid, environment
	 * carried) runs under the filter it inherited, this same one: do
	 * not stack a second copy.  Someone else's filter (a container's)
	 * is no reason to skip ours.
	 */
	mark = getenv(SANDBOX_MARK);
	if (mark && strtol(mark, NULL, 10) == getpid() &&
	    prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == 2)
		return 0;
	ctx = seccomp_init(SCMP_ACT_ERRNO(EPERM));
	if (!ctx)
		return vmm_errf(err, -ENOMEM, "sandbox: seccomp_init failed");
	/* Every thread, should main() ever call this after creating one. */
	r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1);
	/* A binary tree: KVM_RUN's ioctl need not walk ~90 rules. */
	if (r == 0)
		r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2);
	if (r < 0) {
		vmm_errf(err, r, "sandbox: filter attributes: %s",
			 strerror(-r));
		goto out;
	}
	r = cprxfer_seccomp_allow(ctx, SANDBOX_MODES);
	if (r < 0) {
		vmm_errf(err, r, "sandbox: %s", cprxfer_errmsg());
		goto out;
	}
	for (i = 0; i < sizeof(own) / sizeof(own[0]); i++) {
		r = rule(ctx, SCMP_ACT_ALLOW, own[i].name, 0, NULL, err);
		if (r < 0)
			goto out;
	}
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_UNDEFINED__)
	for (i = 0; i < sizeof(sanitizer_own) / sizeof(sanitizer_own[0]); i++) {
		r = rule(ctx, SCMP_ACT_ALLOW, sanitizer_own[i], 0, NULL, err);
		if (r < 0)
			goto out;
	}
#endif
	r = add_restricted(ctx, err);
	if (r < 0)
		goto out;
	r = seccomp_load(ctx);
	if (r < 0) {
		vmm_errf(err, r, "sandbox: loading the filter: %s",
			 strerror(-r));
		goto out;
	}
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	setenv(SANDBOX_MARK, pid, 1);
out:
	seccomp_release(ctx);
	return r;
}

void sandbox_selftest(char *buf, size_t len)
{
	int fd, e1, e2;

	/* Argument-restricted: socket() is allowed for AF_UNIX only. */
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	e1 = fd < 0 ? errno : 0;
	if (fd >= 0)
		close(fd);
	/* Not in the list at all (unshare(0) changes nothing if allowed). */
	e2 = unshare(0) < 0 ? errno : 0;
	snprintf(buf, len, "ok seccomp=%d socket_inet=%s unshare=%s",
		 prctl(PR_GET_SECCOMP, 0, 0, 0, 0),
		 e1 == EPERM ? "EPERM"
		 : e1	     ? strerror(e1)
			     : "allowed",
		 e2 == EPERM ? "EPERM"
		 : e2	     ? strerror(e2)
			     : "allowed");
}
