/*
 * util.c - error records, clock and blob sets for demo-vmm (see util.h).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#include "util.h"

int vmm_errf(struct vmm_err *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err) {
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return code;
}

int vmm_errno(struct vmm_err *err, const char *fmt, ...)
{
	int code = errno ? -errno : -EIO;
	size_t n;
	va_list ap;

	if (err) {
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
		n = strlen(err->msg);
		snprintf(err->msg + n, sizeof(err->msg) - n, ": %s",
			 strerror(-code));
	}
	return code;
}

uint64_t vmm_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

uint8_t *blob_alloc(uint32_t version, size_t payload_len, size_t *total)
{
	uint8_t *p;

	if (payload_len > UINT32_MAX)
		return NULL;
	p = calloc(1, BLOB_HDR + payload_len);
	if (!p)
		return NULL;
	put_le32(p, version);
	put_le32(p + 4, payload_len);
	*total = BLOB_HDR + payload_len;
	return p;
}

int blobset_add(struct blobset *set, const char *name, uint8_t *data,
		size_t len, struct vmm_err *err)
{
	struct blob *b;

	if (!data)
		return vmm_errf(err, -ENOMEM, "blob '%s': out of memory", name);
	if (set->n >= BLOBSET_MAX || strlen(name) >= BLOB_NAME_MAX) {
		free(data);
		return vmm_errf(err, -ENOSPC, "blob '%s': set full", name);
	}
	b = &set->b[set->n++];
	snprintf(b->name, sizeof(b->name), "%s", name);
	b->data = data;
	b->len = len;
	return 0;
}

int blobset_add_copy(struct blobset *set, const char *name, const void *data,
		     size_t len, struct vmm_err *err)
{
	uint8_t *p = malloc(len ? len : 1);

	if (p)
		memcpy(p, data, len);
	return blobset_add(set, name, p, len, err);
}

const struct blob *blobset_find(const struct blobset *set, const char *name)
{
	unsigned int i;

	for (i = 0; i < set->n; i++)
		if (!strcmp(set->b[i].name, name))
			return &set->b[i];
	return NULL;
}

void blobset_free(struct blobset *set)
{
	unsigned int i;

	if (!set)
		return;
	for (i = 0; i < set->n; i++)
		free(set->b[i].data);
	set->n = 0;
}

int blob_payload(const struct blobset *set, const char *name, uint32_t version,
		 size_t min_len, size_t max_len, const uint8_t **payload,
		 size_t *len, struct vmm_err *err)
{
	const struct blob *b = blobset_find(set, name);
	uint32_t v, n;

	if (!b)
		return vmm_errf(err, -ENOENT, "state '%s' missing", name);
	if (b->len < BLOB_HDR)
		return vmm_errf(err, -EBADMSG, "state '%s': %zu bytes, short",
				name, b->len);
	v = get_le32(b->data);
	n = get_le32(b->data + 4);
	if (v != version)
		return vmm_errf(err, -EPROTO,
				"state '%s': format version %u, expected %u",
				name, v, version);
	if (n != b->len - BLOB_HDR || n < min_len || n > max_len)
		return vmm_errf(
			err, -EBADMSG,
			"state '%s': payload %u bytes (blob %zu), expected %zu..%zu",
			name, n, b->len, min_len, max_len);
	*payload = b->data + BLOB_HDR;
	*len = n;
	return 0;
}

int vmm_parse_size(const char *s, uint64_t *out)
{
	char *end;
	uint64_t v;

	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || end == s)
		return -EINVAL;
	switch (*end) {
	case 'G':
	case 'g':
		v <<= 30;
		end++;
		break;
	case 'M':
	case 'm':
		v <<= 20;
		end++;
		break;
	case 0:
		v <<= 20;
		break; /* MiB by default */
	default:
		return -EINVAL;
	}
	if (*end == 'i' || *end == 'B')
		end++;
	if (*end)
		return -EINVAL;
	*out = v;
	return 0;
}
