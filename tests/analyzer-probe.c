/* SPDX-License-Identifier: MIT */
/*
 * tests/run-analyzer's self-check: the analyzer configuration must see
 * through lib/cleanup.h. Compiled with the analyzer only, never linked.
 * owned() and handed_out() are correct (no report allowed); twice()
 * frees a cx_autofree pointer that its cleanup frees again (exactly one
 * report expected: a double free). clang 14's unix.Malloc gets all three
 * wrong: two leaks that are not there, and no double free.
 */
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"

int owned(int x);
int handed_out(char **out);
int twice(int x);

int owned(int x)
{
	cx_autofree char *p = malloc(16);

	if (!p)
		return -1;
	if (x)
		return -2; /* freed by the cleanup */
	memset(p, 0, 16);
	return 0;
}

int handed_out(char **out)
{
	cx_autofree char *p = malloc(16);

	if (!p)
		return -1;
	*out = cx_steal_ptr(&p);
	return 0;
}

int twice(int x)
{
	cx_autofree char *p = malloc(4);

	if (!p)
		return -1;
	if (x)
		free(p); /* and again at scope exit */
	return 0;
}
