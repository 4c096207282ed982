/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target: demo-vmm's control-socket parser, control_parse(). Any
 * peer that can reach the control socket feeds it; it must accept only
 * the documented commands, never read or write out of bounds, and always
 * say why it refused.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "control.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct control_cmd c;
	char *line;
	int rc;

	/* An exact-size copy: ASan catches any read past the line. */
	line = malloc(size ? size : 1);
	if (!line)
		return 0;
	memcpy(line, data, size);
	rc = control_parse(line, size, &c);
	if (rc == 0) {
		size_t n = strnlen(c.arg, sizeof(c.arg));

		if (n == sizeof(c.arg) || c.kind < CONTROL_STATUS ||
		    c.kind > CONTROL_SELFTEST || c.error)
			abort();
		/* What it accepted is a command word, then the argument. */
		if (n && !memmem(line, size, c.arg, n))
			abort();
	} else if (rc != -EINVAL || !c.error || !c.error[0]) {
		abort();
	}
	free(line);
	return 0;
}
