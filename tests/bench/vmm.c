/* SPDX-License-Identifier: MIT */
/*
 * cprxfer-bench groups 3 and 5: a real KVM guest handed off by demo-vmm,
 * one guest (one demo-vmm run) per figure, handed off N times in a row:
 *
 *   demo-vmm --handoff --mode M --mem SIZE --cpus 2 --repeat N
 *            --json FILE [--warm none|best]
 *
 * demo-vmm writes one JSON line per handoff: the blackout it measured
 * (old vCPUs stopped to new vCPUs running), the gap the guest itself
 * measured and, with --warm, the time the guest took to touch all its
 * RAM after the handoff and in steady state just before it.  One guest
 * for all N: a guest's first pass over cold RAM takes seconds per GiB
 * here, the steady state needs it once, not once per figure.
 */
#include <errno.h>
#include <stdbool.h>
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

/*
 * Run demo-vmm for n handoffs; fills text with its JSON lines.  The
 * number of lines, or -1.
 */
static int run_vmm(const char *mode, size_t mib, const char *warm, bool touch,
		   int n, char *text, size_t len)
{
	char json[] = "/tmp/cprxfer-bench-XXXXXX", mem[32], rep[16];
	char *argv[20];
	int lines = 0;
	int fd = mkstemp(json), argc = 0, st;
	ssize_t k;
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
	snprintf(rep, sizeof(rep), "%d", n);
	argv[argc++] = "--repeat";
	argv[argc++] = rep;
	argv[argc++] = "--json";
	argv[argc++] = json;
	argv[argc++] = "--warm";
	argv[argc++] = (char *)warm;
	if (!touch)
		argv[argc++] = "--no-touch";
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
	k = pread(fd, text, len - 1, 0);
	close(fd);
	unlink(json);
	if (!WIFEXITED(st) || WEXITSTATUS(st) || k <= 0) {
		fprintf(stderr,
			"cprxfer-bench: demo-vmm --mode %s --mem %s failed (status 0x%x)\n",
			mode, mem, st);
		return -1;
	}
	text[k] = 0;
	for (char *p = text; (p = strchr(p, '\n')); p++)
		lines++;
	return lines;
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

/* The handoffs of one mode and size, over the two passes. */
struct bo_cell {
	double bo[64], gap[64], part[BENCH_NPARTS][64];
	int n, ng;
};

void bench_blackout(struct report *r)
{
	static const size_t sizes[] = { 256, 1024, 4096, 8192 };
	static const char *const modes[] = { "transfer", "exec" };
	static struct bo_cell cell[2][4];
	/*
	 * Handoffs are cheap here (one guest, --warm none): 8 of them, as
	 * the blackout is ~0.5 ms with ~0.1 ms of noise, in two passes over
	 * the sizes, so that a change in the host's load does not fall on
	 * one size only.
	 */
	int runs = bench_runs < 5 ? bench_runs : 8;
	unsigned int pass, m, s;

	if (!have_kvm(r))
		return;
	for (pass = 0; pass < 2; pass++) {
		for (m = 0; m < 2; m++) {
			for (s = 0; s < 4; s++) {
				struct bo_cell *c = &cell[m][s];
				int i, got,
					n = pass ? runs - runs / 2 : runs / 2;
				char text[16384], *line;

				if (!n || (bench_quick && sizes[s] > 1024 &&
					   sizes[s] < 8192))
					continue;
				/*
				 * No warming: the new VMM's prepare round
				 * (outside the blackout) would map and warm
				 * all RAM first.
				 */
				got = run_vmm(modes[m], sizes[s], "none", false,
					      n, text, sizeof(text));
				for (i = 0, line = text; i < got; i++) {
					for (int k = 0; k < BENCH_NPARTS; k++)
						c->part[k][c->n] = json_num(
							line, bench_parts[k]);
					c->bo[c->n++] =
						json_num(line, "blackout_us");
					/* < 0: no pause recorded (n/a) */
					c->gap[c->ng] =
						json_num(line, "guest_gap_us");
					c->ng += c->gap[c->ng] >= 0;
					line = strchr(line, '\n') + 1;
				}
			}
		}
	}
	for (m = 0; m < 2; m++) {
		for (s = 0; s < 4; s++) {
			struct bo_cell *c = &cell[m][s];
			struct stat3 none = { -1, -1, -1 };
			double pmed[BENCH_NPARTS];

			if (!c->n)
				continue;
			for (int k = 0; k < BENCH_NPARTS; k++)
				pmed[k] = bench_stat(c->part[k], c->n).med;
			report_blackout(
				r, sizes[s], modes[m], bench_stat(c->bo, c->n),
				c->ng ? bench_stat(c->gap, c->ng) : none, pmed);
		}
	}
}

/*
 * One guest per size, handed off 2 * runs times, the new VMM warming
 * with "none" and the best strategy in turn (demo-vmm --warm none,best):
 * the guest's first pass over fresh RAM (seconds per GiB here) is paid
 * once per size.
 */
void bench_warmup(struct report *r)
{
	static const size_t sizes[] = { 1024, 4096 };
	int runs = bench_runs > 3 ? 3 : bench_runs;
	unsigned int s, k;

	if (!have_kvm(r))
		return;
	for (s = 0; s < 2; s++) {
		double after[2][64], steady[2][64];
		char text[32768], name[2][32] = { "none", "best" }, *line;
		int i, n[2] = { 0, 0 }, got;

		if (bench_quick && sizes[s] > 1024)
			continue;
		got = run_vmm("transfer", sizes[s], "none,best", true, 2 * runs,
			      text, sizeof(text));
		for (i = 0, line = text; i < got; i++) {
			const char *p = strstr(line, "\"warm\": \"");

			k = i % 2;
			/* "best" resolves to a named strategy. */
			if (p && k)
				sscanf(p + 9, "%31[^\"]", name[k]);
			after[k][n[k]] = json_num(line, "warmup_after_ms");
			steady[k][n[k]++] = json_num(line, "warmup_steady_ms");
			line = strchr(line, '\n') + 1;
		}
		for (k = 0; k < 2; k++)
			if (n[k])
				report_warmup(r, sizes[s], strdup(name[k]),
					      bench_stat(after[k], n[k]),
					      bench_stat(steady[k], n[k]));
	}
}
