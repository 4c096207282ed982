/* SPDX-License-Identifier: MIT */
/* An outside program: libcprxfer-seccomp's rules go into a filter. */
#include <stdio.h>

#include <cprxfer/seccomp.h>

int main(void)
{
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_KILL_PROCESS);
	int rc;

	if (!ctx)
		return 2;
	rc = cprxfer_seccomp_allow(ctx, CPRXFER_MODE_FILE);
	seccomp_release(ctx);
	printf("consumer-seccomp: cprxfer_seccomp_allow: %d\n", rc);
	return rc == 0 ? 0 : 1;
}
