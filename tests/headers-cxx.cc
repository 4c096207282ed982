// SPDX-License-Identifier: MIT
// Build-only test: the public headers compile, and link, from C++.
#include <cprxfer/cprxfer.h>
#ifdef CX_HAVE_SECCOMP
#include <cprxfer/seccomp.h>
#endif

int main()
{
	cprxfer_state *st = cprxfer_state_new();
	int rc = cprxfer_put_u64(st, "x", 1);

	cprxfer_state_free(st);
	return rc;
}
