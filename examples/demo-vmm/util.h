/*
 * util.h - small helpers shared by the demo-vmm files: the error
 * record every function fills on failure, a monotonic clock, and the
 * named, versioned byte blobs that VM, vCPU and device state is saved in.
 */
#ifndef DEMO_VMM_UTIL_H
#define DEMO_VMM_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/*
 * Functions return 0 (or a count) on success and -errno on failure, and
 * on failure describe it in a caller-provided struct vmm_err, which may
 * be NULL.  Only main prints it.
 */
struct vmm_err {
	int code;
	char msg[512];
};

/* Record a failure; returns code (a negative errno). */
int vmm_errf(struct vmm_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Record a failure of the syscall that just set errno; returns -errno. */
int vmm_errno(struct vmm_err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t vmm_now_ns(void);

/*
 * A blob set: named byte strings, e.g. "regs" or "lapic", in the order
 * they were added.  Every blob starts with an 8-byte header, u32 format
 * version then u32 payload length, both little-endian; the payload of
 * a KVM structure is that structure's bytes (the KVM ABI is fixed and
 * x86 is little-endian), other payloads are encoded field by field.
 */
#define BLOB_NAME_MAX 32
#define BLOBSET_MAX   16
#define BLOB_HDR      8

struct blob {
	char name[BLOB_NAME_MAX];
	uint8_t *data; /* header + payload, malloc'd */
	size_t len;
};

struct blobset {
	struct blob b[BLOBSET_MAX];
	unsigned int n;
};

/* Allocate header + payload_len bytes, header filled, payload zeroed. */
uint8_t *blob_alloc(uint32_t version, size_t payload_len, size_t *total);
/* Add a blob; takes ownership of data (freed even on failure). */
int blobset_add(struct blobset *set, const char *name, uint8_t *data,
		size_t len, struct vmm_err *err);
/* Add a copy of data. */
int blobset_add_copy(struct blobset *set, const char *name, const void *data,
		     size_t len, struct vmm_err *err);
const struct blob *blobset_find(const struct blobset *set, const char *name);
void blobset_free(struct blobset *set);

/*
 * Find blob name in set, check its header (version and payload length in
 * [min_len, max_len]) and return its payload.
 */
int blob_payload(const struct blobset *set, const char *name, uint32_t version,
		 size_t min_len, size_t max_len, const uint8_t **payload,
		 size_t *len, struct vmm_err *err);

static inline void put_le32(uint8_t *p, uint32_t v)
{
	p[0] = v;
	p[1] = v >> 8;
	p[2] = v >> 16;
	p[3] = v >> 24;
}

static inline uint32_t get_le32(const uint8_t *p)
{
	return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline void put_le64(uint8_t *p, uint64_t v)
{
	put_le32(p, v);
	put_le32(p + 4, v >> 32);
}

static inline uint64_t get_le64(const uint8_t *p)
{
	return get_le32(p) | (uint64_t)get_le32(p + 4) << 32;
}

/* "256M", "4G", "1GiB", "512" (MiB): bytes in *out; -EINVAL. */
int vmm_parse_size(const char *s, uint64_t *out);

#endif
