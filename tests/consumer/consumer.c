/* SPDX-License-Identifier: MIT */
/* An outside program: a state round trip through a file. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

int main(void)
{
	char path[] = "/tmp/cprxfer-consumer-XXXXXX";
	cprxfer_state *st = cprxfer_state_new(), *in = NULL;
	uint64_t v = 0;
	int fd = mkstemp(path);

	if (fd < 0 || !st)
		return 2;
	close(fd);
	if (cprxfer_put_u64(st, "answer", 42) < 0 ||
	    cprxfer_save_file(st, path) < 0 ||
	    cprxfer_load_file(path, &in) < 0 ||
	    cprxfer_get_u64(in, "answer", &v) < 0) {
		fprintf(stderr, "consumer: %s\n", cprxfer_errmsg());
		unlink(path);
		return 1;
	}
	unlink(path);
	cprxfer_state_free(st);
	cprxfer_state_free(in);
	printf("consumer: libcprxfer %s, answer %llu\n", cprxfer_version(),
	       (unsigned long long)v);
	return v == 42 ? 0 : 1;
}
