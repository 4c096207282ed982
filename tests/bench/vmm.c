/* SPDX-License-Identifier: MIT */
/*
 * cprxfer-bench groups 3 and 5: a real KVM guest handed off by demo-vmm,
 * one process per measured handoff:
 *
 *   demo-vmm --handoff --mode M --mem SIZE --cpus 2 --json FILE
 *            [--warm none|populate|...]
 *
 * demo-vmm writes the blackout it measured (old vCPUs stopped to new
 * vCPUs running), the gap the guest itself measured and, with --warm,
 * the time the guest took to touch all its RAM after the handoff and in
 * steady state before it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

#ifndef DEMO_VMM_PATH
#define DEMO_VMM_PATH "demo-vmm"
#endif

static const char *demo_vmm(void)
{
	const char *p = getenv("CPRXFER_DEMO_VMM");

	return p ? p : DEMO_VMM_PATH;
}

/* Read "key": number from a flat JSON object; NaN-free: -1 if absent. */
static double json_num(const char *text, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(text, pat);
	if (!p)
		return -1;
	return strtod(p + strlen(pat), NULL);
}

/* Run one demo-vmm handoff; fills text with its JSON. 0 or -1. */
static int run_vmm(const char *mode, size_t mib, const char *warm,
		   char *text, size_t len)
{
	char json[] = "/tmp/cprxfer-bench-XXXXXX", mem[32];
	char *argv[16];
	int fd = mkstemp(json), argc = 0, st;
	ssize_t n;
	pid_t pid;

	if (fd < 0)
		return -1;
	snprintf(mem, sizeof(mem), "%zuM", mib);
	argv[argc++] = (char *)demo_vmm();
	argv[argc++] = "--handoff";
	argv[argc++] = "--mode";
	argv[argc++] = (char *)mode;
	argv[argc++] = "--mem";
	argv[argc++] = mem;
	argv[argc++] = "--cpus";
	argv[argc++] = "2";
	argv[argc++] = "--json";
	argv[argc++] = json;
	if (warm) {
		argv[argc++] = "--warm";
		argv[argc++] = (char *)warm;
	}
	argv[argc] = NULL;
	pid = fork();
	if (pid == 0) {
		/* The guest's console is not part of the benchmark. */
		if (!freopen("/dev/null", "w", stdout))
			_exit(127);
		execv(argv[0], argv);
		_exit(127);
	}
	while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
		;
	n = pread(fd, text, len - 1, 0);
	close(fd);
	unlink(json);
	if (!WIFEXITED(st) || WEXITSTATUS(st) || n <= 0) {
		fprintf(stderr, "cprxfer-bench: demo-vmm --mode %s --mem %s "
			"failed (status 0x%x)\n", mode, mem, st);
		return -1;
	}
	text[n] = 0;
	return 0;
}

static int have_kvm(struct report *r)
{
	if (access("/dev/kvm", R_OK | W_OK) == 0 &&
	    access(demo_vmm(), X_OK) == 0)
		return 1;
	snprintf(r->note + strlen(r->note), sizeof(r->note) - strlen(r->note),
		 "handoff groups skipped: /dev/kvm or %s unavailable. ",
		 demo_vmm());
	return 0;
}

void bench_blackout(struct report *r)
{
	static const size_t sizes[] = { 256, 1024, 4096, 8192 };
	static const char *const modes[] = { "transfer", "exec" };
	int runs = bench_runs > 3 ? 3 : bench_runs;
	unsigned m, s;

	if (!have_kvm(r))
		return;
	for (m = 0; m < 2; m++) {
		for (s = 0; s < 4; s++) {
			double bo[64], gap[64];
			char text[4096];
			int i, n = 0;

			if (bench_quick && sizes[s] > 1024 && sizes[s] < 8192)
				continue;
			for (i = 0; i < runs; i++) {
				if (run_vmm(modes[m], sizes[s], NULL, text,
					    sizeof(text)) < 0)
					continue;
				bo[n] = json_num(text, "blackout_us");
				gap[n++] = json_num(text, "guest_gap_us");
			}
			if (n)
				report_blackout(r, sizes[s], modes[m],
						bench_stat(bo, n),
						bench_stat(gap, n));
		}
	}
}

void bench_warmup(struct report *r)
{
	static const char *const strategies[] = { "none", "best" };
	static const size_t sizes[] = { 1024, 4096 };
	int runs = bench_runs > 3 ? 3 : bench_runs;
	unsigned k, s;

	if (!have_kvm(r))
		return;
	for (s = 0; s < 2; s++) {
		for (k = 0; k < 2; k++) {
			double after[64], steady[64];
			char text[4096], name[32] = "";
			int i, n = 0;

			if (bench_quick && sizes[s] > 1024)
				continue;
			for (i = 0; i < runs; i++) {
				const char *p;

				if (run_vmm("transfer", sizes[s],
					    strategies[k], text,
					    sizeof(text)) < 0)
					continue;
				after[n] = json_num(text, "warmup_after_ms");
				steady[n++] = json_num(text,
						       "warmup_steady_ms");
				/* "best" resolves to a named strategy. */
				p = strstr(text, "\"warm\": \"");
				if (p)
					sscanf(p + 9, "%31[^\"]", name);
			}
			if (n)
				report_warmup(r, sizes[s],
					      strdup(name[0] ? name :
						     strategies[k]),
					      bench_stat(after, n),
					      bench_stat(steady, n));
		}
	}
}
