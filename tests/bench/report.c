/* SPDX-License-Identifier: MIT */
/* cprxfer-bench: the table, the JSON file and the targets' verdicts. */
#include <stdio.h>
#include <string.h>

#include "bench.h"

void report_fd(struct report *r, int nfds, int how, struct stat3 lib,
	       struct stat3 raw)
{
	if (r->nfd == REP_MAX)
		return;
	r->fd[r->nfd].nfds = nfds;
	r->fd[r->nfd].how = how;
	r->fd[r->nfd].lib = lib;
	r->fd[r->nfd++].raw = raw;
}

void report_blob(struct report *r, struct stat3 lib, struct stat3 raw)
{
	r->have_blob = 1;
	r->blob_lib = lib;
	r->blob_raw = raw;
}

void report_copy(struct report *r, size_t mib, struct stat3 ms)
{
	if (r->ncopy == REP_MAX)
		return;
	r->copy[r->ncopy].ram_mib = mib;
	r->copy[r->ncopy++].ms = ms;
}

void report_group(struct report *r, const char *name, double s)
{
	if (r->ngroup == 8)
		return;
	r->group[r->ngroup].name = name;
	r->group[r->ngroup++].s = s;
}

/* demo-vmm's JSON keys for the blackout's parts and the gap's. */
const char *const bench_parts[BENCH_NPARTS] = {
	"stop_us", "save_us",	       "send_us",	    "restore_us",
	"run_us",  "guest_gap_pre_us", "guest_gap_post_us",
};

void report_blackout(struct report *r, size_t mib, const char *mode,
		     struct stat3 blackout_us, struct stat3 gap_us,
		     const double *part)
{
	if (r->nblackout == REP_MAX)
		return;
	memcpy(r->blackout[r->nblackout].part, part,
	       sizeof(r->blackout[0].part));
	r->blackout[r->nblackout].ram_mib = mib;
	r->blackout[r->nblackout].mode = mode;
	r->blackout[r->nblackout].blackout_us = blackout_us;
	r->blackout[r->nblackout++].gap_us = gap_us;
}

void report_warmup(struct report *r, size_t mib, const char *strategy,
		   struct stat3 after_ms, struct stat3 steady_ms)
{
	if (r->nwarmup == REP_MAX)
		return;
	r->warmup[r->nwarmup].ram_mib = mib;
	r->warmup[r->nwarmup].strategy = strategy;
	r->warmup[r->nwarmup].after_ms = after_ms;
	r->warmup[r->nwarmup++].steady_ms = steady_ms;
}

static const char *verdict(int ok)
{
	return ok ? "met" : "MISSED";
}

static double blackout_of(const struct report *r, const char *mode, size_t mib)
{
	int i;

	for (i = 0; i < r->nblackout; i++)
		if (r->blackout[i].ram_mib == mib &&
		    !strcmp(r->blackout[i].mode, mode))
			return r->blackout[i].blackout_us.med;
	return 0;
}

static double copy_of(const struct report *r, size_t mib)
{
	int i;

	for (i = 0; i < r->ncopy; i++)
		if (r->copy[i].ram_mib == mib)
			return r->copy[i].ms.med;
	return 0;
}

#define S3(s) (s).med, (s).min, (s).max

static const char *fd_as(int how)
{
	return how & FD_ARRAY ? "array" : "records";
}

static const char *fd_by(int how)
{
	return how & FD_ADOPT ? "adopt" : "put";
}

void report_print(const struct report *r, FILE *f)
{
	int i;

	if (r->nfd) {
		fprintf(f,
			"\n1. fd passing, save + ack (ns per fd; median [min..max]); records: one record per fd, array: one record of n fds;\n   put: borrowed (cprxfer_put_fd/_fds, each fd's identity checked at every save), adopt: owned by the state (cprxfer_adopt_fd/_fds, no check)\n");
		fprintf(f, "%8s %8s %6s %26s %26s %7s\n", "fds", "as", "by",
			"libcprxfer", "raw sendmsg/recvmsg", "lib/raw");
		for (i = 0; i < r->nfd; i++)
			fprintf(f,
				"%8d %8s %6s %8.0f [%6.0f..%6.0f] %8.0f [%6.0f..%6.0f] %7.2f\n",
				r->fd[i].nfds, fd_as(r->fd[i].how),
				fd_by(r->fd[i].how), S3(r->fd[i].lib),
				S3(r->fd[i].raw),
				r->fd[i].lib.med / r->fd[i].raw.med);
	}
	if (r->have_blob)
		fprintf(f,
			"\n2. 256 MiB blob (GB/s): libcprxfer %.2f [%.2f..%.2f], raw write/read %.2f [%.2f..%.2f], lib/raw %.2f\n",
			S3(r->blob_lib), S3(r->blob_raw),
			r->blob_lib.med / r->blob_raw.med);
	if (r->nblackout) {
		fprintf(f,
			"\n3. handoff blackout, 2 vCPUs (us; median [min..max])\n%8s %9s %28s %28s\n",
			"RAM MiB", "mode", "blackout", "guest-measured gap");
		for (i = 0; i < r->nblackout; i++)
			fprintf(f,
				"%8zu %9s %9.0f [%7.0f..%7.0f] %9.0f [%7.0f..%7.0f]\n",
				r->blackout[i].ram_mib, r->blackout[i].mode,
				S3(r->blackout[i].blackout_us),
				S3(r->blackout[i].gap_us));
		fprintf(f,
			"   where it goes (us, medians): stop vCPUs, save state, send (transfer) or exec+load (exec), restore (exec: + build VM), wake to KVM_RUN;\n   and of the guest's gap, before the stop / after its vCPU's KVM_RUN\n%8s %9s %6s %6s %6s %7s %6s %8s %8s\n",
			"RAM MiB", "mode", "stop", "save", "send", "restore",
			"run", "gap-pre", "gap-post");
		for (i = 0; i < r->nblackout; i++)
			fprintf(f,
				"%8zu %9s %6.0f %6.0f %6.0f %7.0f %6.0f %8.0f %8.0f\n",
				r->blackout[i].ram_mib, r->blackout[i].mode,
				r->blackout[i].part[0], r->blackout[i].part[1],
				r->blackout[i].part[2], r->blackout[i].part[3],
				r->blackout[i].part[4], r->blackout[i].part[5],
				r->blackout[i].part[6]);
	}
	if (r->ncopy) {
		fprintf(f,
			"\n4. copy-migration baseline (ms to send RAM byte for byte)\n");
		for (i = 0; i < r->ncopy; i++)
			fprintf(f, "%8zu MiB %10.1f [%.1f..%.1f]%s\n",
				r->copy[i].ram_mib, S3(r->copy[i].ms),
				r->copy[i].estimated
					? "  estimated: 4 x 1 GiB (the 1 GiB copy took more than 5 s; not run)"
					: "");
	}
	if (r->nwarmup) {
		fprintf(f,
			"\n5. guest touches all its RAM (ms): after the handoff vs steady state\n%8s %12s %28s %28s %7s\n",
			"RAM MiB", "strategy", "after", "steady", "ratio");
		for (i = 0; i < r->nwarmup; i++)
			fprintf(f,
				"%8zu %12s %9.1f [%7.1f..%7.1f] %9.1f [%7.1f..%7.1f] %7.2f\n",
				r->warmup[i].ram_mib, r->warmup[i].strategy,
				S3(r->warmup[i].after_ms),
				S3(r->warmup[i].steady_ms),
				r->warmup[i].after_ms.med /
					r->warmup[i].steady_ms.med);
	}
	fprintf(f, "\nTargets (ratios from this run):\n");
	for (i = 0; i < r->nfd; i++) {
		double q = r->fd[i].lib.med / r->fd[i].raw.med;
		double max = r->fd[i].how & FD_ARRAY ? 1.10 : 1.25;

		if (r->fd[i].nfds == 1 && !r->fd[i].how)
			fprintf(f,
				"  save+ack of one fd vs the raw round trip <= 1.30: %.1f vs %.1f us, %.2f %s\n",
				r->fd[i].lib.med / 1000,
				r->fd[i].raw.med / 1000, q, verdict(q <= 1.30));
		else if (r->fd[i].nfds >= 253 && (r->fd[i].how & FD_ADOPT))
			fprintf(f,
				"  fd passing lib/raw at %d fds, %s, adopted, <= %.2f: %.2f %s\n",
				r->fd[i].nfds, fd_as(r->fd[i].how), max, q,
				verdict(q <= max));
	}
	for (i = 0; i < r->nfd; i++) {
		if (r->fd[i].nfds >= 253 && !(r->fd[i].how & FD_ADOPT))
			fprintf(f,
				"  (no target) fd passing lib/raw at %d fds, %s, put (identity-checked): %.2f\n",
				r->fd[i].nfds, fd_as(r->fd[i].how),
				r->fd[i].lib.med / r->fd[i].raw.med);
	}
	if (r->have_blob)
		fprintf(f, "  blob lib/raw >= 0.85: %.2f %s\n",
			r->blob_lib.med / r->blob_raw.med,
			verdict(r->blob_lib.med / r->blob_raw.med >= 0.85));
	for (i = 0; i < 2; i++) {
		const char *m = i ? "exec" : "transfer";
		double a = blackout_of(r, m, 256), b = blackout_of(r, m, 8192);

		if (a > 0 && b > 0)
			fprintf(f,
				"  blackout(8 GiB)/blackout(256 MiB), %s, <= 1.25: %.2f %s\n",
				m, b / a, verdict(b / a <= 1.25));
	}
	if (copy_of(r, 4096) > 0 && blackout_of(r, "transfer", 4096) > 0) {
		double q = copy_of(r, 4096) * 1000 /
			   blackout_of(r, "transfer", 4096);

		fprintf(f, "  copy(4 GiB)/blackout(4 GiB) >= 1000: %.0f %s\n",
			q, verdict(q >= 1000));
	}
	for (i = 0; i < r->nwarmup; i++)
		if (r->warmup[i].ram_mib == 4096 &&
		    strcmp(r->warmup[i].strategy, "none"))
			fprintf(f,
				"  warm-up after/steady at 4 GiB (%s) <= 2: %.2f %s\n",
				r->warmup[i].strategy,
				r->warmup[i].after_ms.med /
					r->warmup[i].steady_ms.med,
				verdict(r->warmup[i].after_ms.med /
						r->warmup[i].steady_ms.med <=
					2));
	if (blackout_of(r, "transfer", 4096) > 0)
		fprintf(f,
			"  blackout at 4 GiB, transfer, < 1000 us: %.0f %s\n",
			blackout_of(r, "transfer", 4096),
			verdict(blackout_of(r, "transfer", 4096) < 1000));
	if (r->note[0])
		fprintf(f, "\nNote: %s\n", r->note);
	fprintf(f, "\nWall time:");
	for (i = 0; i < r->ngroup; i++)
		fprintf(f, " %s %.1f s,", r->group[i].name, r->group[i].s);
	fprintf(f, " total %.1f s (limit 180 s: %s)\n", r->total_s,
		verdict(r->total_s <= 180));
}

static void js3(FILE *f, const char *k, struct stat3 s, const char *sep)
{
	fprintf(f, "\"%s\": %.3f, \"%s_min\": %.3f, \"%s_max\": %.3f%s", k,
		s.med, k, s.min, k, s.max, sep);
}

int report_json(const struct report *r, const char *path)
{
	FILE *f = fopen(path, "w");
	int i;

	if (!f)
		return -1;
	fprintf(f, "{\n  \"runs\": %d,\n  \"fd_pass\": [", bench_runs);
	for (i = 0; i < r->nfd; i++) {
		fprintf(f,
			"%s\n    {\"nfds\": %d, \"as\": \"%s\", \"by\": \"%s\", ",
			i ? "," : "", r->fd[i].nfds, fd_as(r->fd[i].how),
			fd_by(r->fd[i].how));
		js3(f, "lib_ns_per_fd", r->fd[i].lib, ", ");
		js3(f, "raw_ns_per_fd", r->fd[i].raw, ", ");
		fprintf(f, "\"ratio\": %.3f}",
			r->fd[i].lib.med / r->fd[i].raw.med);
	}
	fprintf(f, "\n  ],\n  \"blob\": {");
	if (r->have_blob) {
		fprintf(f, "\"bytes\": %lu, ", 256ul << 20);
		js3(f, "lib_gbps", r->blob_lib, ", ");
		js3(f, "raw_gbps", r->blob_raw, ", ");
		fprintf(f, "\"ratio\": %.3f",
			r->blob_lib.med / r->blob_raw.med);
	}
	fprintf(f, "},\n  \"blackout\": [");
	for (i = 0; i < r->nblackout; i++) {
		fprintf(f, "%s\n    {\"ram_mib\": %zu, \"mode\": \"%s\", ",
			i ? "," : "", r->blackout[i].ram_mib,
			r->blackout[i].mode);
		js3(f, "blackout_us", r->blackout[i].blackout_us, ", ");
		js3(f, "guest_gap_us", r->blackout[i].gap_us, "");
		for (int k = 0; k < BENCH_NPARTS; k++)
			fprintf(f, ", \"%s_med\": %.0f", bench_parts[k],
				r->blackout[i].part[k]);
		fprintf(f, "}");
	}
	fprintf(f, "\n  ],\n  \"copy\": [");
	for (i = 0; i < r->ncopy; i++) {
		fprintf(f, "%s\n    {\"ram_mib\": %zu, ", i ? "," : "",
			r->copy[i].ram_mib);
		fprintf(f, "\"estimated\": %s, ",
			r->copy[i].estimated ? "true" : "false");
		js3(f, "copy_ms", r->copy[i].ms, "}");
	}
	fprintf(f, "\n  ],\n  \"warmup\": [");
	for (i = 0; i < r->nwarmup; i++) {
		fprintf(f, "%s\n    {\"ram_mib\": %zu, \"strategy\": \"%s\", ",
			i ? "," : "", r->warmup[i].ram_mib,
			r->warmup[i].strategy);
		js3(f, "after_ms", r->warmup[i].after_ms, ", ");
		js3(f, "steady_ms", r->warmup[i].steady_ms, "}");
	}
	fprintf(f, "\n  ],\n  \"wall_s\": {");
	for (i = 0; i < r->ngroup; i++)
		fprintf(f, "\"%s\": %.1f, ", r->group[i].name, r->group[i].s);
	fprintf(f, "\"total\": %.1f}", r->total_s);
	if (r->note[0]) {
		const char *p;

		fprintf(f, ",\n  \"note\": \"");
		for (p = r->note; *p; p++)
			fputs(*p == '"' ? "\\\"" : (char[2]){ *p, 0 }, f);
		fprintf(f, "\"");
	}
	fprintf(f, "\n}\n");
	return fclose(f) == 0 ? 0 : -1;
}
