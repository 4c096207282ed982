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
