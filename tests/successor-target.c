/* SPDX-License-Identifier: MIT */
/*
 * The successor test-successor starts with cprxfer_spawn(). argv[1]
 * says how it behaves; argv[2..] are fd numbers of the starter that
 * must not have crossed the exec.
 *   crash       die of SIGSEGV before taking the channel
 *   exit3       exit 3 before taking the channel
 *   load-crash  take the channel, load, die of SIGSEGV before acking
 *   hang        take the channel and wait to be killed
 *   take        take the channel, load, ack, wait for the decision:
 *               exit 0 on commit (counter 42 received), 20 on abort
 *   listen      as take, over a channel accepted on the path in
 *               CX_TEST_LISTEN_PATH instead of the inherited socket
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

static void segv(void)
{
	struct rlimit rl = { 0, 0 };

	setrlimit(RLIMIT_CORE, &rl);
	/* A sanitizer's handler would turn the crash into exit(1). */
	signal(SIGSEGV, SIG_DFL);
	raise(SIGSEGV);
	_exit(99);
}

int main(int argc, char **argv)
{
	cprxfer_channel *ch;
	cprxfer_state *st;
	uint64_t v = 0;
	int i, rc;

	if (argc < 2)
		return 2;
	/* Only the channel's socket crossed: none of the starter's fds. */
	for (i = 2; i < argc; i++)
		if (fcntl(atoi(argv[i]), F_GETFD) >= 0) {
			fprintf(stderr, "successor: fd %s crossed the exec\n",
				argv[i]);
			return 3;
		}
	if (!strcmp(argv[1], "crash"))
		segv();
	if (!strcmp(argv[1], "exit3"))
		return 3;
	if (!strcmp(argv[1], "listen")) {
		const char *path = getenv("CX_TEST_LISTEN_PATH");
		cprxfer_listener *l;

		if (!path || cprxfer_listen(path, &l) < 0)
			return 4;
		rc = cprxfer_accept(l, 10000, &ch);
		cprxfer_listener_close(l);
		if (rc < 0)
			return 4;
	} else if (cprxfer_inherit(NULL, &ch) < 0) {
		fprintf(stderr, "successor: %s\n", cprxfer_errmsg());
		return 4;
	} else if (getenv("CPRXFER_SUCCESSOR_FD")) {
		return 5; /* taken once: the variable is gone */
	}
	if (!strcmp(argv[1], "hang"))
		for (;;)
			pause();
	if (cprxfer_load(ch, &st) < 0)
		return 6;
	if (!strcmp(argv[1], "load-crash"))
		segv();
	if (cprxfer_ack(ch, 0, NULL) < 0)
		return 7;
	rc = cprxfer_wait_commit(ch, 10000);
	if (rc == 0 && (cprxfer_get_u64(st, "counter", &v) < 0 || v != 42))
		rc = -EBADMSG;
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return rc == -ECANCELED ? 20 : rc < 0 ? 8 : 0;
}
