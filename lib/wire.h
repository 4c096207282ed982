/* SPDX-License-Identifier: MIT */
/*
 * The wire format (docs/format.md): frames of a 16-byte header and a
 * payload, every integer little-endian.
 *
 *   0  u32 magic     "CPXF"
 *   4  u8  version   CX_VERSION
 *   5  u8  type      CX_F_*
 *   6  u16 flags     per type
 *   8  u64 length    payload bytes that follow
 */
#ifndef CX_WIRE_H
#define CX_WIRE_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define CX_MAGIC   0x46585043u /* 'C' 'P' 'X' 'F' */
#define CX_VERSION 1
#define CX_HDR	   16

enum {
	CX_F_HELLO = 1, /* handshake: features, tag */
	CX_F_BEGIN,	/* start of a state stream: declared totals */
	CX_F_RECORD,	/* one named value */
	CX_F_FDS,	/* a batch of fds (SCM_RIGHTS, or numbers inline) */
	CX_F_END,	/* totals again and the stream's CRC32C */
	CX_F_ACK,	/* status and reason: verdicts and acks */
};

/* CX_F_RECORD payload: u8 type, u8 flags, u8 name_len, u8 0, name, value */
#define CX_REC_HDR	4
#define CX_REC_CRITICAL 0x01 /* a reader that lacks the type refuses */

/* CX_F_FDS payload: u32 count, u32 first index, [u32 fd numbers] */
#define CX_FDS_HDR    8
#define CX_FDS_INLINE 0x0001 /* frame flag: numbers inline (exec mode) */
#define CX_FDS_BATCH  253    /* SCM_MAX_FD */
#define CX_FD_KEEP_OPEN \
	0x80000000u /* inline number: fd was not
					 * close-on-exec before the exec */

/*
 * fd array record value (CPRXFER_TYPE_FDS, always sent CX_REC_CRITICAL:
 * a reader that predates arrays refuses the stream rather than drop the
 * fds): u32 count, u32 index of the first fd; the array's fds are the
 * stream's fds first .. first + count - 1, carried by FDS frames.
 */
#define CX_FDA_LEN 8

/* CX_F_BEGIN payload: u64 records, u64 fds, u64 bytes (all frames) */
#define CX_BEGIN_LEN 24
/* CX_F_END payload: u64 records, u64 fds, u32 crc32c, u32 0 */
#define CX_END_LEN 24

/* RAM record value: u64 size, u32 flags, u32 fd index or CX_NOFD, path */
#define CX_RAM_LEN 16
#define CX_NOFD	   0xffffffffu

/* CX_F_HELLO payload: u32 features, u32 pid, u32 uid, u16 tag_len, u16 0 */
#define CX_HELLO_LEN 16
/*
 * Feature bits. Bits 16..31 are required: a peer that lacks one refuses
 * the handshake (-EPROTONOSUPPORT).
 *
 * CX_FEAT_DECIDE: after the incoming side's ready ack, the outgoing side
 * sends its decision, an ACK frame of phase CX_ACK_DECIDE: status 0 is
 * COMMIT (the incoming side owns everything now), a negative status is
 * ABORT with a reason (the outgoing side keeps running). A library
 * without it would resume both sides after a late ack, so it is
 * required.
 */
#define CX_FEAT_DECIDE (1u << 16)
#define CX_FEATURES    CX_FEAT_DECIDE /* feature bits this version offers */

/* Large values are checksummed and sent in chunks of this size. */
#define CX_CRC_CHUNK (256 * 1024)

/* CX_F_ACK payload: i32 status, u16 phase, u16 reason_len, reason */
#define CX_ACK_LEN    8
#define CX_REASON_MAX 1024

static inline void cx_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline void cx_put32(uint8_t *p, uint32_t v)
{
	cx_put16(p, (uint16_t)v);
	cx_put16(p + 2, (uint16_t)(v >> 16));
}

static inline void cx_put64(uint8_t *p, uint64_t v)
{
	cx_put32(p, (uint32_t)v);
	cx_put32(p + 4, (uint32_t)(v >> 32));
}

static inline uint16_t cx_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | p[1] << 8);
}

static inline uint32_t cx_get32(const uint8_t *p)
{
	return cx_get16(p) | (uint32_t)cx_get16(p + 2) << 16;
}

static inline uint64_t cx_get64(const uint8_t *p)
{
	return cx_get32(p) | (uint64_t)cx_get32(p + 4) << 32;
}

struct cx_frame {
	uint8_t type;
	uint16_t flags;
	uint64_t len;
};

static inline void cx_frame_put(uint8_t *p, int type, unsigned flags,
				uint64_t len)
{
	cx_put32(p, CX_MAGIC);
	p[4] = CX_VERSION;
	p[5] = (uint8_t)type;
	cx_put16(p + 6, (uint16_t)flags);
	cx_put64(p + 8, len);
}

/* Parse a header; -EPROTO (magic) or -EPROTONOSUPPORT (version). */
int cx_frame_parse(const uint8_t *p, struct cx_frame *f);

/*
 * Check an FDS frame's header p (CX_FDS_HDR bytes) of a frame of len
 * bytes, inline or not, against the fds announced so far and declared
 * in all: 0 with *n the batch's count, or -EBADMSG with a reason.
 */
int cx_fds_check(const uint8_t *p, uint64_t len, bool inl, uint64_t announced,
		 uint64_t declared, uint32_t *n);

const char *cx_frame_name(int type);

#endif
