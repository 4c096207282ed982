/* SPDX-License-Identifier: MIT */
/*
 * CRC32C (Castagnoli), the stream's integrity checksum: the SSE4.2
 * instruction where the CPU has it, a table otherwise.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "crc32c.h"

/*
 * crc32c_table, and for the SSE4.2 path the zeros_long / zeros_short
 * tables that join independent chains, are generated at build time by
 * gen-crc32c.c.
 */
#include "crc32c-tables.h"

static uint32_t crc32c_sw(uint32_t crc, const uint8_t *p, size_t n)
{
	while (n--)
		crc = crc32c_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return crc;
}

#if defined(__x86_64__)
/* Shift a raw CRC register over a run of zeros, by table. */
static uint32_t crc_shift(const uint32_t z[4][256], uint32_t crc)
{
	return z[0][crc & 0xff] ^ z[1][(crc >> 8) & 0xff] ^
	       z[2][(crc >> 16) & 0xff] ^ z[3][crc >> 24];
}

/*
 * Three independent chains over three adjacent blocks hide the crc32
 * instruction's latency; the tables above then join them:
 * crc(A B) = shift(crc(A), |B|) ^ crc(B), for the raw register.
 */
__attribute__((target("sse4.2"))) static uint32_t crc_blocks(
	uint64_t c0, const uint8_t **pp, size_t *np, size_t blk,
	const uint32_t z[4][256])
{
	const uint8_t *p = *pp;
	size_t n = *np;

	while (n >= 3 * blk) {
		uint64_t c1 = 0, c2 = 0, a, b, d;
		const uint8_t *end = p + blk;

		do {
			memcpy(&a, p, 8);
			memcpy(&b, p + blk, 8);
			memcpy(&d, p + 2 * blk, 8);
			c0 = __builtin_ia32_crc32di(c0, a);
			c1 = __builtin_ia32_crc32di(c1, b);
			c2 = __builtin_ia32_crc32di(c2, d);
			p += 8;
		} while (p < end);
		c0 = crc_shift(z, (uint32_t)c0) ^ (uint32_t)c1;
		c0 = crc_shift(z, (uint32_t)c0) ^ (uint32_t)c2;
		p += 2 * blk;
		n -= 3 * blk;
	}
	*pp = p;
	*np = n;
	return (uint32_t)c0;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc,
							    const uint8_t *p,
							    size_t n)
{
	uint64_t c = crc;

	while (n && ((uintptr_t)p & 7)) {
		c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
		n--;
	}
	c = crc_blocks(c, &p, &n, CRC_LONG, zeros_long);
	c = crc_blocks(c, &p, &n, CRC_SHORT, zeros_short);
	while (n >= 8) {
		uint64_t a;

		memcpy(&a, p, 8);
		c = __builtin_ia32_crc32di(c, a);
		p += 8;
		n -= 8;
	}
	while (n--)
		c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
	return (uint32_t)c;
}
#endif

uint32_t cx_crc32c(uint32_t crc, const void *buf, size_t n)
{
	crc = ~crc;
#if defined(__x86_64__)
	if (__builtin_cpu_supports("sse4.2"))
		return ~crc32c_hw(crc, buf, n);
#endif
	return ~crc32c_sw(crc, buf, n);
}
