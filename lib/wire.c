/* SPDX-License-Identifier: MIT */
/* Frame headers: the part of the wire format every message shares. */
#include "error.h"
#include "wire.h"

const char *cx_frame_name(int type)
{
	switch (type) {
	case CX_F_HELLO:
		return "HELLO";
	case CX_F_BEGIN:
		return "BEGIN";
	case CX_F_RECORD:
		return "RECORD";
	case CX_F_FDS:
		return "FDS";
	case CX_F_END:
		return "END";
	case CX_F_ACK:
		return "ACK";
	}
	return "unknown";
}

int cx_fds_check(const uint8_t *p, uint64_t len, bool inl, uint64_t announced,
		 uint64_t declared, uint32_t *n)
{
	uint32_t count = cx_get32(p), first = cx_get32(p + 4);

	if (count == 0 || count > CX_FDS_BATCH || first != announced ||
	    len != CX_FDS_HDR + (inl ? 4ull * count : 0))
		return cx_err(
			-EBADMSG,
			"malformed fd batch (%u fds from index %u, expected index %llu)",
			count, first, (unsigned long long)announced);
	if (announced + count > declared)
		return cx_err(
			-EBADMSG,
			"fd batch goes past the %llu fds the stream declared",
			(unsigned long long)declared);
	*n = count;
	return 0;
}

int cx_frame_parse(const uint8_t *p, struct cx_frame *f)
{
	uint32_t magic = cx_get32(p);

	if (magic != CX_MAGIC)
		return cx_err(
			-EPROTO,
			"bad magic 0x%08x (want 0x%08x): not a cprxfer stream",
			magic, CX_MAGIC);
	if (p[4] != CX_VERSION)
		return cx_err(
			-EPROTONOSUPPORT,
			"peer speaks protocol version %u, this library speaks version %u",
			p[4], CX_VERSION);
	f->type = p[5];
	f->flags = cx_get16(p + 6);
	f->len = cx_get64(p + 8);
	return 0;
}
