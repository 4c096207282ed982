/* SPDX-License-Identifier: MIT */
/*
 * Corpus replay: a main() that feeds files to a fuzz target's
 * LLVMFuzzerTestOneInput(), so every target's corpus runs as an
 * ordinary test under `meson test` with any compiler (gcc included),
 * no libFuzzer needed.
 *
 *   replay-<target> DIR|FILE...
 *
 * Each directory is read in name order; its subdirectories are not
 * entered. Exit 0 when every input ran (a crash or an fd leak aborts),
 * 1 on an unreadable file or an empty corpus.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rbe");
	uint8_t *buf = NULL;
	long len;
	int rc = -1;

	if (!f) {
		perror(path);
		return -1;
	}
	if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0 &&
	    fseek(f, 0, SEEK_SET) == 0) {
		buf = malloc((size_t)len + 1);
		if (buf && fread(buf, 1, (size_t)len, f) == (size_t)len) {
			LLVMFuzzerTestOneInput(buf, (size_t)len);
			rc = 0;
		}
	}
	if (rc < 0)
		fprintf(stderr, "%s: cannot read\n", path);
	free(buf);
	fclose(f);
	return rc;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
	return strcmp((*a)->d_name, (*b)->d_name);
}

static int run_dir(const char *dir, unsigned *count)
{
	struct dirent **list;
	int n, i, rc = 0;

	n = scandir(dir, &list, NULL, by_name);
	if (n < 0) {
		perror(dir);
		return -1;
	}
	for (i = 0; i < n; i++) {
		char path[4096];
		struct stat sb;

		snprintf(path, sizeof(path), "%s/%s", dir, list[i]->d_name);
		if (list[i]->d_name[0] != '.' && stat(path, &sb) == 0 &&
		    S_ISREG(sb.st_mode)) {
			if (run_file(path) < 0)
				rc = -1;
			else
				(*count)++;
		}
		free(list[i]);
	}
	free(list);
	return rc;
}

int main(int argc, char **argv)
{
	unsigned count = 0;
	int i, rc = 0;

	LLVMFuzzerInitialize(&argc, &argv);
	for (i = 1; i < argc; i++) {
		struct stat sb;

		if (stat(argv[i], &sb) < 0) {
			perror(argv[i]);
			rc = -1;
		} else if (S_ISDIR(sb.st_mode)) {
			rc |= run_dir(argv[i], &count);
		} else if (run_file(argv[i]) == 0) {
			count++;
		} else {
			rc = -1;
		}
	}
	printf("replayed %u inputs\n", count);
	if (!count) {
		fprintf(stderr, "no inputs to replay\n");
		return 1;
	}
	return rc < 0 ? 1 : 0;
}
