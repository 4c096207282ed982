/* SPDX-License-Identifier: MIT */
/*
 * state-handoff: the smallest complete handoff.
 *
 * The old process owns a pipe with unread bytes in it, a counter and a
 * name. It forks a successor, connects to it over a socketpair and hands
 * over all three; the successor reads the bytes the old process left in
 * the pipe, proving it holds the very same open pipe, not a copy.
 *
 * Exactly one of the two owns the pipe afterwards: the successor acks
 * "ready" and touches nothing until the old process commits; the old
 * process commits only after that ack and never resumes after it.
 *
 * Run it:  ./build/examples/state-handoff
 */
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

static int successor(int sock)
{
	cprxfer_channel *ch;
	cprxfer_state *st = NULL;
	const char *name;
	uint64_t counter;
	char buf[64] = "";
	int rc, fd;

	rc = cprxfer_channel_open(sock, &ch);
	if (rc < 0)
		goto fail;
	rc = cprxfer_load(ch, &st);
	if (rc == 0)
		rc = cprxfer_ack(ch, 0, NULL); /* ready */
	if (rc == 0)
		rc = cprxfer_wait_commit(ch, 5000); /* 0: ours now */
	if (rc < 0) {
		/* Aborted (-ECANCELED) or no decision: use nothing. */
		if (st)
			cprxfer_state_free(st);
		cprxfer_channel_close(ch);
		goto fail;
	}
	cprxfer_get_u64(st, "counter", &counter);
	cprxfer_get_str(st, "name", &name);
	fd = cprxfer_take_fd(st, "pipe");
	if (read(fd, buf, sizeof(buf) - 1) < 0)
		perror("read");
	printf("successor pid %d: counter %llu, name '%s', pipe says '%s'\n",
	       (int)getpid(), (unsigned long long)counter, name, buf);
	fflush(stdout);
	close(fd);
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return 0;
fail:
	fprintf(stderr, "successor: %s\n", cprxfer_errmsg());
	return 1;
}

int main(void)
{
	cprxfer_channel *ch;
	cprxfer_state *st;
	int sv[2], p[2], rc, status;
	pid_t pid;

	if (pipe(p) < 0 || socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
		perror("pipe/socketpair");
		return 1;
	}
	if (write(p[1], "left by the old process", 23) != 23)
		return 1;
	pid = fork();
	if (pid == 0) {
		close(sv[0]);
		close(p[0]);
		close(p[1]);
		_exit(successor(sv[1]));
	}
	close(sv[1]);

	st = cprxfer_state_new();
	if (!st)
		return 1;
	cprxfer_put_u64(st, "counter", 41);
	cprxfer_put_str(st, "name", "state-handoff");
	cprxfer_put_fd(st, "pipe", p[0]);

	rc = cprxfer_channel_open(sv[0], &ch);
	if (rc == 0) {
		rc = cprxfer_save(ch, st);
		if (rc == 0)
			rc = cprxfer_wait_ack(ch, 5000);
		/* After a commit that returned 0, never resume. */
		if (rc == 0)
			rc = cprxfer_commit(ch);
		/* Otherwise closing aborts: the successor uses nothing. */
		cprxfer_channel_close(ch);
	}
	if (rc < 0)
		fprintf(stderr, "old process: %s: resuming\n",
			cprxfer_errmsg());
	else
		printf("old process pid %d: handed off, exiting\n",
		       (int)getpid());
	cprxfer_state_free(st);
	waitpid(pid, &status, 0);
	return rc < 0 || !WIFEXITED(status) || WEXITSTATUS(status);
}
