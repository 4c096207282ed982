/* SPDX-License-Identifier: MIT */
/* Build-only test: the public headers compile as strict C99. */
#include <cprxfer/cprxfer.h>
#ifdef CX_HAVE_SECCOMP
#include <cprxfer/seccomp.h>
#endif

int main(void)
{
	struct cprxfer_ram r = { 0, 0, -1 };

	return r.fd == -1 && CPRXFER_TYPE_RAM == 6 ? 0 : 1;
}
