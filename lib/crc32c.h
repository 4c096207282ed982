/* SPDX-License-Identifier: MIT */
#ifndef CX_CRC32C_H
#define CX_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Extend crc (0 to start) over n bytes; cx_crc32c(0, "123456789", 9) is
 * 0xe3069283. */
uint32_t cx_crc32c(uint32_t crc, const void *buf, size_t n);

#endif
