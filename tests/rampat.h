/* SPDX-License-Identifier: MIT */
/*
 * Guest RAM test helpers shared by test-ram, test-exec, exec-target and
 * test-file: a pattern that names every 8-byte word, a page-by-page check
 * of it, and the page frames behind a mapping (/proc/self/pagemap).
 */
#ifndef CX_RAMPAT_H
#define CX_RAMPAT_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define RP_PAGE	       4096u
#define RP_PFN_SAMPLES 256
#define RP_PRESENT     (1ull << 63)
#define RP_PFN_MASK    ((1ull << 55) - 1)

/*
 * The size of the "1 GiB" handoffs: 64 MiB under valgrind, where every
 * byte costs fifty times as much.
 */
static inline size_t rp_big(void)
{
	return getenv("CPRXFER_UNDER_VALGRIND") ? 64u << 20 : 1u << 30;
}

static inline uint64_t rp_word(uint64_t k, uint64_t seed)
{
	return (k + seed) * 0x9e3779b97f4a7c15ull;
}

/* Fill size bytes (a multiple of 8) with the pattern of seed. */
static inline void rp_fill(void *p, size_t size, uint64_t seed)
{
	uint64_t *w = p;
	size_t k, n = size / 8;

	for (k = 0; k < n; k++)
		w[k] = rp_word(k, seed);
}

/* -1 if every page holds the pattern, else the first bad page. */
static inline long rp_check(const void *p, size_t size, uint64_t seed)
{
	const uint64_t *w = p;
	size_t k, n = size / 8, per = RP_PAGE / 8;

	for (k = 0; k < n; k++)
		if (w[k] != rp_word(k, seed))
			return (long)(k / per);
	return -1;
}

/* The page a sample i of RP_PFN_SAMPLES lands on. */
static inline size_t rp_sample_page(size_t size, int i)
{
	return (size / RP_PAGE) / RP_PFN_SAMPLES * (size_t)i;
}

/*
 * Page-map entries of RP_PFN_SAMPLES pages spread over the mapping:
 * bit 63 present, bits 0-54 the frame (zero unless CAP_SYS_ADMIN).
 * Returns how many sampled frames were readable (non-zero), or -1.
 */
static inline int rp_pagemap(const void *p, size_t size, uint64_t *ent)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC), i, n = 0;

	if (fd < 0)
		return -1;
	for (i = 0; i < RP_PFN_SAMPLES; i++) {
		uintptr_t va = (uintptr_t)p + rp_sample_page(size, i) * RP_PAGE;

		if (pread(fd, &ent[i], 8, (off_t)(va / RP_PAGE * 8)) != 8) {
			close(fd);
			return -1;
		}
		n += (ent[i] & RP_PFN_MASK) != 0;
	}
	close(fd);
	return n;
}

/* Page-map present bit of each of n pages from p into out[]. */
static inline int rp_present(const void *p, size_t n, uint8_t *out)
{
	int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t e;
	size_t i;

	if (fd < 0)
		return -1;
	for (i = 0; i < n; i++) {
		uintptr_t va = (uintptr_t)p + i * RP_PAGE;

		if (pread(fd, &e, 8, (off_t)(va / RP_PAGE * 8)) != 8) {
			close(fd);
			return -1;
		}
		out[i] = (e & RP_PRESENT) != 0;
	}
	close(fd);
	return 0;
}

/*
 * Compare the frames of two mappings' samples: 0 same, 1 differ, -1
 * not comparable (not root: frames read as zero).
 */
static inline int rp_same_frames(const uint64_t *a, const uint64_t *b)
{
	int i;

	for (i = 0; i < RP_PFN_SAMPLES; i++) {
		if (!(a[i] & RP_PFN_MASK) || !(b[i] & RP_PFN_MASK))
			return -1;
		if ((a[i] & RP_PFN_MASK) != (b[i] & RP_PFN_MASK)) {
			fprintf(stderr, "sample %d: frame 0x%llx vs 0x%llx\n",
				i, (unsigned long long)(a[i] & RP_PFN_MASK),
				(unsigned long long)(b[i] & RP_PFN_MASK));
			return 1;
		}
	}
	return 0;
}

#endif
