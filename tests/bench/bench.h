/* SPDX-License-Identifier: MIT */
/* cprxfer-bench: shared definitions of the benchmark's parts. */
#ifndef CX_BENCH_H
#define CX_BENCH_H

#include <stddef.h>
#include <stdio.h>

struct stat3 {
	double med, min, max;
};

#define REP_MAX	     16
#define BENCH_NPARTS 7
extern const char *const bench_parts[BENCH_NPARTS];

/* How bench_fd hands the fds to the state. */
#define FD_ARRAY 1 /* one array record (else one record per fd) */
#define FD_ADOPT 2 /* the state owns them (else borrowed, checked) */

struct report {
	struct {
		int nfds;
		int how;	       /* FD_ARRAY, FD_ADOPT */
		struct stat3 lib, raw; /* ns per fd */
	} fd[REP_MAX];
	int nfd;
	int have_blob;
	struct stat3 blob_lib, blob_raw; /* GB/s */
	struct {
		size_t ram_mib;
		const char *mode;
		struct stat3 blackout_us, gap_us;
		/* medians: stop, save, send, restore, run; gap pre, post */
		double part[BENCH_NPARTS];
	} blackout[REP_MAX];
	int nblackout;
	struct {
		size_t ram_mib;
		struct stat3 ms;
		int estimated; /* 4 x the 1 GiB copy, not run */
	} copy[REP_MAX];
	int ncopy;
	struct {
		size_t ram_mib;
		const char *strategy;
		struct stat3 after_ms, steady_ms;
	} warmup[REP_MAX];
	int nwarmup;
	struct {
		const char *name;
		double s;
	} group[8]; /* wall time of each group run */
	int ngroup;
	double total_s;	 /* the whole run's wall time */
	char note[1024]; /* why a group was skipped, if one was */
};

extern int bench_runs;
extern int bench_quick;

double bench_now_ns(void);
struct stat3 bench_stat(double *v, int n);
void bench_fail(const char *what, int rc) __attribute__((noreturn));

void report_fd(struct report *r, int nfds, int how, struct stat3 lib,
	       struct stat3 raw);
void report_blob(struct report *r, struct stat3 lib, struct stat3 raw);
void report_copy(struct report *r, size_t mib, struct stat3 ms);
void report_blackout(struct report *r, size_t mib, const char *mode,
		     struct stat3 blackout_us, struct stat3 gap_us,
		     const double *part);
void report_warmup(struct report *r, size_t mib, const char *strategy,
		   struct stat3 after_ms, struct stat3 steady_ms);
void report_group(struct report *r, const char *name, double s);
void report_print(const struct report *r, FILE *f);
int report_json(const struct report *r, const char *path);

/* Groups 3 and 5 drive demo-vmm (vmm.c). */
void bench_blackout(struct report *r);
void bench_warmup(struct report *r);

#endif
