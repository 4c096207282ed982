/* SPDX-License-Identifier: MIT */
/*
 * cprxfer-inspect, run as a user would: on a state file the library
 * wrote, on the stream a real sender process sends to it (--listen: the
 * sender is refused and keeps everything), on the exec-mode state memfd
 * of a running process (--pid and /proc/PID/fd/N), and on damaged and
 * hostile input, where it must name the first error and the offset of
 * its frame and exit 1. Every --json output must parse
 * (python3 -m json.tool).
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "testutil.h"

#define TOOL	CX_TEST_BUILDDIR "/../tools/cprxfer-inspect"
#define OUT_MAX (256 * 1024)

struct ctx {
	char *dir;
	char state[300];
	char ram[300];
	char sock[300];
	char json[300];
	char out[OUT_MAX];
};

static int setup(void **state)
{
	struct ctx *c = calloc(1, sizeof(*c));

	if (!c || tu_fd_setup(state) < 0)
		return -1;
	c->dir = tu_tmpdir();
	if (!c->dir)
		return -1;
	snprintf(c->state, sizeof(c->state), "%s/state", c->dir);
	snprintf(c->ram, sizeof(c->ram), "%s/ram", c->dir);
	snprintf(c->sock, sizeof(c->sock), "%s/sock", c->dir);
	snprintf(c->json, sizeof(c->json), "%s/out.json", c->dir);
	/* tu_fd_setup's count is taken before the test: keep it. */
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *c = *state;

	tu_rmdir(c->dir);
	free(c->dir);
	free(c);
	*state = NULL;
	return tu_fd_teardown(state);
}

/*
 * Run argv with stdout captured into c->out (NUL-terminated); returns
 * the exit status. With pid_out, start it and return at once.
 */
static int run_capture(int out_fd, char *const argv[], pid_t *pid_out)
{
	pid_t pid = fork();
	int st;

	assert_true(pid >= 0);
	if (pid == 0) {
		int dn = open("/dev/null", O_RDWR);

		dup2(out_fd, 1);
		if (getenv("CX_INSPECT_VERBOSE") == NULL)
			dup2(dn, 2);
		execv(argv[0], argv);
		_exit(127);
	}
	if (pid_out) {
		*pid_out = pid;
		return 0;
	}
	assert_int_equal(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void slurp(struct ctx *c, int fd)
{
	ssize_t n = pread(fd, c->out, sizeof(c->out) - 1, 0);

	assert_true(n >= 0);
	c->out[n] = 0;
}

static int tool(struct ctx *c, const char *a1, const char *a2, const char *a3)
{
	char *argv[] = { TOOL, (char *)a1, (char *)a2, (char *)a3, NULL };
	int fd = memfd_create("inspect-out", MFD_CLOEXEC), rc;

	assert_true(fd >= 0);
	rc = run_capture(fd, argv, NULL);
	slurp(c, fd);
	close(fd);
	return rc;
}

/* The output parses as JSON: python3 -m json.tool says so. */
static void assert_json(struct ctx *c)
{
	char *argv[] = { "/usr/bin/env", "python3", "-m",
			 "json.tool",	 c->json,   NULL };
	int fd = open(c->json, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	int dn = open("/dev/null", O_WRONLY | O_CLOEXEC);
	size_t n = strlen(c->out);

	assert_true(fd >= 0 && dn >= 0);
	assert_int_equal(write(fd, c->out, n), (ssize_t)n);
	close(fd);
	if (run_capture(dn, argv, NULL) != 0)
		fail_msg("not valid JSON:\n%s", c->out);
	close(dn);
}

static void assert_has(const struct ctx *c, const char *s)
{
	if (!strstr(c->out, s))
		fail_msg("'%s' not in the output:\n%s", s, c->out);
}

/* A state file of every type the file mode carries, RAM by path. */
static off_t write_state_file(struct ctx *c)
{
	cprxfer_state *st = cprxfer_state_new();
	struct cprxfer_ram r;
	uint8_t blob[100];
	struct stat sb;
	size_t i;

	for (i = 0; i < sizeof(blob); i++)
		blob[i] = (uint8_t)i;
	assert_non_null(st);
	assert_int_equal(cprxfer_put_u64(st, "ticks", 42), 0);
	assert_int_equal(cprxfer_put_i64(st, "delta", -7), 0);
	assert_int_equal(cprxfer_put_str(st, "serial.path", "/dev/ttyS0"), 0);
	assert_int_equal(cprxfer_put_blob(st, "regs", blob, sizeof(blob)), 0);
	assert_int_equal(cprxfer_ram_open_file(c->ram, 1 << 20, 0, &r), 0);
	assert_int_equal(cprxfer_ram_put(st, "ram0", &r), 0);
	assert_int_equal(cprxfer_save_file(st, c->state), 0);
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
	assert_int_equal(stat(c->state, &sb), 0);
	return sb.st_size;
}

static void test_inspect_state_file_lists_every_record(void **state)
{
	struct ctx *c = *state;

	write_state_file(c);
	assert_int_equal(tool(c, "--json", c->state, NULL), 0);
	assert_json(c);
	assert_has(c, "\"name\": \"ticks\", \"type\": \"u64\"");
	assert_has(c, "\"value\": 42");
	assert_has(c, "\"value\": -7");
	assert_has(c, "\"head\": \"/dev/ttyS0\"");
	assert_has(c, "\"head_hex\": \"000102030405");
	assert_has(c, "\"ram\": {\"size\": 1048576");
	assert_has(c, "\"backing\": \"file\"");
	assert_has(c, c->ram);
	assert_has(c, "\"version\": 1");
	assert_has(c, "\"ok\": true");
	assert_has(c, "\"error\": null");

	assert_int_equal(tool(c, c->state, NULL, NULL), 0);
	assert_has(c, "serial.path");
	assert_has(c, "checksum: ok");
}

static void flip(const char *path, off_t at)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);
	uint8_t b;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, at), 1);
	b ^= 0x5a;
	assert_int_equal(pwrite(fd, &b, 1, at), 1);
	close(fd);
}

/*
 * An exec-mode memfd from cprxfer_exec_opts() starts with a HELLO frame
 * (the old image's pid, uid and tag), outside the stream: reported, and
 * every offset counts it.
 */
static void test_inspect_hello_frame_before_the_stream(void **state)
{
	struct ctx *c = *state;
	static const char tag[] = "inspect/exec";
	uint8_t hello[16 + 16 + sizeof(tag) - 1] = { 'C', 'P', 'X', 'F', 1, 1 };
	size_t hlen = sizeof(hello);
	off_t size = write_state_file(c);
	char *buf = malloc((size_t)size + hlen), want[64];
	int fd;

	assert_non_null(buf);
	hello[8] = (uint8_t)(16 + sizeof(tag) - 1);
	hello[16 + 4] = 0x39; /* pid 12345 */
	hello[16 + 5] = 0x30;
	hello[16 + 12] = (uint8_t)(sizeof(tag) - 1);
	memcpy(hello + 32, tag, sizeof(tag) - 1);
	memcpy(buf, hello, hlen);
	fd = open(c->state, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(read(fd, buf + hlen, (size_t)size), (ssize_t)size);
	close(fd);
	fd = open(c->state, O_WRONLY | O_TRUNC | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, (size_t)size + hlen),
			 (ssize_t)(size + (off_t)hlen));
	close(fd);
	free(buf);

	assert_int_equal(tool(c, "--json", c->state, NULL), 0);
	assert_json(c);
	assert_has(c, "\"hello\": {\"pid\": 12345, \"uid\": 0, \"tag\": "
		      "\"inspect/exec\"}");
	snprintf(want, sizeof(want), "{\"offset\": %zu, \"name\": \"ticks\"",
		 40 + hlen);
	assert_has(c, want);

	/* A damaged END is named at its offset in the file. */
	flip(c->state, size + (off_t)hlen - 8);
	assert_int_equal(tool(c, c->state, NULL, NULL), 1);
	snprintf(want, sizeof(want), "error at byte %lld: checksum mismatch",
		 (long long)(size + (off_t)hlen - 40));
	assert_has(c, want);
}

/* Cut inside END: the error lies in the END frame, 40 bytes from the end. */
static void test_inspect_truncated_file_names_the_frame(void **state)
{
	struct ctx *c = *state;
	off_t size = write_state_file(c);
	char want[64];

	assert_int_equal(truncate(c->state, size - 10), 0);
	assert_int_equal(tool(c, "--json", c->state, NULL), 1);
	assert_json(c);
	snprintf(want, sizeof(want), "\"offset\": %lld", (long long)size - 40);
	assert_has(c, want);
	assert_has(c, "\"name\": \"EBADMSG\"");
	assert_has(c, "truncated");
	assert_has(c, "\"checksum\": null");

	/* Cut right after BEGIN: the next frame's header is missing. */
	assert_int_equal(truncate(c->state, 48), 0);
	assert_int_equal(tool(c, c->state, NULL, NULL), 1);
	assert_has(c, "error at byte 40: stream truncated");
}

static void test_inspect_flipped_checksum_names_end_frame(void **state)
{
	struct ctx *c = *state;
	off_t size = write_state_file(c);
	char want[64];

	/* The CRC field itself: every record is listed, then the verdict. */
	flip(c->state, size - 8);
	assert_int_equal(tool(c, "--json", c->state, NULL), 1);
	assert_json(c);
	snprintf(want, sizeof(want), "\"offset\": %lld", (long long)size - 40);
	assert_has(c, want);
	assert_has(c, "\"ok\": false");
	assert_has(c, "checksum mismatch");
	assert_has(c, "\"name\": \"ram0\"");

	/* A byte of a value: same verdict, found at END. */
	flip(c->state, size - 8);
	flip(c->state, 60);
	assert_int_equal(tool(c, c->state, NULL, NULL), 1);
	assert_has(c, "checksum: MISMATCH");
	snprintf(want, sizeof(want), "error at byte %lld: checksum mismatch",
		 (long long)size - 40);
	assert_has(c, want);

	/* The second frame's magic: refused at its offset, 40. */
	flip(c->state, 60);
	flip(c->state, 40);
	assert_int_equal(tool(c, "--json", c->state, NULL), 1);
	assert_json(c);
	assert_has(c, "\"name\": \"EPROTO\", \"offset\": 40");
}

/* Offset in the state file of the RECORD frame named name (its header). */
static off_t record_at(const char *path, const char *name)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	off_t at = 40; /* after the BEGIN frame */
	uint8_t h[16 + 4 + 256];

	assert_true(fd >= 0);
	while (pread(fd, h, sizeof(h), at) >= 20) {
		uint64_t len = 0;
		int i;

		for (i = 7; i >= 0; i--)
			len = len << 8 | h[8 + i];
		if (h[5] == 3 && h[18] == strlen(name) &&
		    !memcmp(h + 20, name, h[18])) {
			close(fd);
			return at;
		}
		at += 16 + (off_t)len;
	}
	close(fd);
	fail_msg("no record '%s' in %s", name, path);
	return -1;
}

static void poke(const char *path, off_t at, uint8_t b)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, &b, 1, at), 1);
	close(fd);
}

/*
 * The walker and the decoder apply one set of rules (lib/rules.c): for a
 * record that breaks each rule, cprxfer-inspect reports the very error
 * cprxfer_load_file() returns, before the checksum is reached.
 */
static void test_inspect_and_loader_refuse_with_the_same_rule(void **state)
{
	static const struct {
		const char *record;
		off_t at; /* from the record frame's header */
		uint8_t b;
		const char *why;
	} cases[] = {
		{ "serial.path", 16 + 4 + 11 + 3, 0, "string contains a NUL" },
		{ "ticks", 16 + 4 + 1, 0, "name contains a NUL" },
		{ "ticks", 16 + 2, 255, "name length 255 does not fit" },
		{ "ticks", 16, CPRXFER_TYPE_FD, "fd value of 8 bytes" },
		{ "regs", 16, CPRXFER_TYPE_FDS, "fd array value of 100 bytes" },
		{ "regs", 16, 200, "marked critical" },
		{ "ram0", 16 + 4 + 4 + 12, 0, "names fd 4294967040" },
	};
	struct ctx *c = *state;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cprxfer_state *st = NULL;
		char msg[512], *p;
		off_t at;
		int rc;

		write_state_file(c);
		at = record_at(c->state, cases[i].record);
		poke(c->state, at + cases[i].at, cases[i].b);
		if (cases[i].b == 200) /* a type this version lacks... */
			poke(c->state, at + 17, 0x01); /* ... marked critical */
		rc = cprxfer_load_file(c->state, &st);
		assert_true(rc < 0);
		snprintf(msg, sizeof(msg), "%s", cprxfer_errmsg());
		/* The rule's own words, after the loader's prefixes. */
		p = strstr(msg, "record ");
		assert_non_null(p);
		/* A damaged file: the loader adds the checksum's verdict. */
		if (strstr(msg, "(decoding said: "))
			p[strlen(p) - 1] = 0;
		assert_int_equal(tool(c, c->state, NULL, NULL), 1);
		printf("# %-12s rc %d: %s\n", cases[i].record, rc, p);
		if (!strstr(c->out, p))
			fail_msg("loader: '%s'; inspect says:\n%s", p, c->out);
		if (cases[i].why && !strstr(p, cases[i].why))
			fail_msg("'%s' is not '%s'", p, cases[i].why);
	}
}

static void test_inspect_hostile_input_exits_1(void **state)
{
	struct ctx *c = *state;
	uint8_t junk[4096];
	size_t i;
	int fd;

	for (i = 0; i < sizeof(junk); i++)
		junk[i] = (uint8_t)(i * 131 + 7);
	fd = open(c->state, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, junk, sizeof(junk)), (ssize_t)sizeof(junk));
	close(fd);
	assert_int_equal(tool(c, "--json", c->state, NULL), 1);
	assert_json(c);
	assert_has(c, "not a cprxfer stream");

	/* A BEGIN that declares more than any limit allows. */
	memcpy(junk, "CPXF\x01\x02\x00\x00\x18\0\0\0\0\0\0\0", 16);
	memset(junk + 16, 0xff, 24);
	fd = open(c->state, O_WRONLY | O_TRUNC | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, junk, 40), 40);
	close(fd);
	assert_int_equal(tool(c, c->state, NULL, NULL), 1);
	assert_has(c, "error at byte 0: stream declares");

	assert_int_equal(truncate(c->state, 0), 0);
	assert_int_equal(tool(c, c->state, NULL, NULL), 1);
	assert_int_equal(tool(c, "/nonexistent/state", NULL, NULL), 2);
	assert_int_equal(tool(c, "--bogus", NULL, NULL), 2);
}

/*
 * A real sender connects to the tool: it sees its save succeed and its
 * wait for the ack fail with the tool's refusal, and keeps every fd.
 */
static void test_inspect_listen_refuses_and_sender_keeps_fds(void **state)
{
	struct ctx *c = *state;
	char *argv[] = { TOOL,	      "--json",	   "--listen", c->sock, "--tag",
			 "inspect/1", "--timeout", "10000",    NULL };
	int out = memfd_create("inspect-out", MFD_CLOEXEC);
	int efd = eventfd(0, EFD_CLOEXEC), p[2], rc, status;
	cprxfer_opts *o = cprxfer_opts_new();
	cprxfer_channel *ch = NULL;
	cprxfer_state *st = cprxfer_state_new();
	struct cprxfer_ram r;
	pid_t pid;

	assert_true(out >= 0 && efd >= 0 && o && st);
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_int_equal(run_capture(out, argv, &pid), 0);
	assert_int_equal(cprxfer_ram_create("guest", 2 << 20, 0, &r), 0);
	assert_int_equal(cprxfer_put_u64(st, "vcpus", 2), 0);
	assert_int_equal(cprxfer_put_fd(st, "irq", efd), 0);
	assert_int_equal(cprxfer_put_fd(st, "console", p[0]), 0);
	assert_int_equal(cprxfer_put_fds(st, "queues", (int[]){ efd, p[1] }, 2),
			 0);
	assert_int_equal(cprxfer_ram_put(st, "ram0", &r), 0);
	assert_int_equal(cprxfer_opts_set_tag(o, "inspect/1"), 0);
	assert_int_equal(cprxfer_connect_opts(c->sock, 10000, o, &ch), 0);
	assert_int_equal(cprxfer_save(ch, st), 0);
	rc = cprxfer_wait_ack(ch, 10000);
	assert_int_equal(rc, -ECANCELED);
	assert_non_null(strstr(cprxfer_errmsg(), "cprxfer-inspect"));
	cprxfer_channel_close(ch);

	status = tu_wait(pid);
	slurp(c, out);
	close(out);
	assert_int_equal(status, 0);
	assert_json(c);
	assert_has(c, "\"kind\": \"stream received at a socket path\"");
	assert_has(c, "\"tag\": \"inspect/1\"");
	assert_has(c, "\"name\": \"irq\"");
	assert_has(c, "\"kind\": \"eventfd\"");
	assert_has(c, "\"kind\": \"pipe\"");
	assert_has(c, "\"backing\": \"memfd\"");
	assert_has(c, "\"kind\": \"memfd\", \"target\": \"/memfd:guest");
	assert_has(c, "\"name\": \"queues\", \"type\": \"fds\"");
	assert_has(c, "\"count\": 2, \"fds\": [{\"index\": 2, \"kind\": "
		      "\"eventfd\"");
	assert_has(c, "\"ok\": true");

	/* Rolled back: the sender's fds are all still its own and open. */
	assert_true(fcntl(efd, F_GETFD) >= 0);
	assert_true(fcntl(p[0], F_GETFD) >= 0);
	assert_int_equal(write(p[1], "x", 1), 1);
	assert_true(fcntl(r.fd, F_GETFD) >= 0);
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
	cprxfer_opts_free(o);
	close(efd);
	close(p[0]);
	close(p[1]);
}

/*
 * A process that exec'd with a state and has not loaded it yet (cat,
 * blocked on its stdin) holds the state memfd: the tool reads it from
 * /proc, prints the inline fd numbers and describes them, adopts none.
 */
static void test_inspect_exec_memfd_of_running_process(void **state)
{
	struct ctx *c = *state;
	int in[2], sync[2], efd, out_fd, status;
	char path[64], env[4096], *s, buf;
	ssize_t n;
	pid_t pid;

	assert_int_equal(pipe2(in, O_CLOEXEC), 0);
	assert_int_equal(pipe2(sync, O_CLOEXEC), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		cprxfer_state *st = cprxfer_state_new();
		char *argv[] = { "cat", NULL };
		int dn = open("/dev/null", O_WRONLY);

		dup2(in[0], 0);
		dup2(dn, 1);
		efd = eventfd(0, EFD_CLOEXEC);
		if (!st || efd < 0 || cprxfer_put_u64(st, "gen", 7) ||
		    cprxfer_put_fd(st, "irq", efd))
			_exit(3);
		/* sync[1] is close-on-exec: its EOF says the exec happened. */
		cprxfer_exec(st, "/bin/cat", argv, NULL);
		_exit(4);
	}
	close(in[0]);
	close(sync[1]);
	assert_int_equal(read(sync[0], &buf, 1), 0);
	close(sync[0]);

	snprintf(path, sizeof(path), "%d", (int)pid);
	assert_int_equal(tool(c, "--json", "--pid", path), 0);
	assert_json(c);
	assert_has(c, "\"kind\": \"exec-mode state memfd of a process\"");
	assert_has(c, "\"name\": \"gen\"");
	assert_has(c, "\"value\": 7");
	assert_has(c, "\"number\": ");
	assert_has(c, "\"kind\": \"eventfd\"");
	assert_has(c, "\"fds_inline\": true");

	/* The same through /proc/PID/fd/N, N from the process's environment. */
	snprintf(path, sizeof(path), "/proc/%d/environ", (int)pid);
	out_fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(out_fd >= 0);
	n = read(out_fd, env, sizeof(env) - 1);
	close(out_fd);
	assert_true(n > 0);
	env[n] = 0;
	for (s = env; s < env + n; s += strlen(s) + 1)
		if (!strncmp(s, "CPRXFER_EXEC_FD=", 16))
			break;
	assert_true(s < env + n);
	snprintf(path, sizeof(path), "/proc/%d/fd/%s", (int)pid, s + 16);
	assert_int_equal(tool(c, path, NULL, NULL), 0);
	assert_has(c, "eventfd");
	assert_has(c, "checksum: ok");

	/* The process still holds its fds: the tool adopted nothing. */
	close(in[1]);
	status = tu_wait(pid);
	assert_int_equal(status, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
			test_inspect_state_file_lists_every_record, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_inspect_hello_frame_before_the_stream, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_inspect_truncated_file_names_the_frame, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_inspect_flipped_checksum_names_end_frame, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_inspect_hostile_input_exits_1, setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_inspect_and_loader_refuse_with_the_same_rule,
			setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_inspect_listen_refuses_and_sender_keeps_fds, setup,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_inspect_exec_memfd_of_running_process, setup,
			teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
