/*
 * control.h - demo-vmm's control socket: an AF_UNIX stream socket that
 * takes one text command per line and answers each with one line,
 * "ok ..." or "error: ...".
 *
 *   status             the guest's counters and the last handoff
 *   handoff PATH       transfer the guest to "demo-vmm --incoming PATH"
 *   handoff-exec       exec a new demo-vmm in place (same PID)
 *   save FILE          file mode (needs --mem-path): save, then quit
 *   touch [read|write] the guest touches all its RAM; the time it took
 *   preflight MODE     what a handoff in MODE (transfer, exec, file,
 *                      restart, kexec) would carry, recreate, or block
 *   quit               stop the guest and exit
 *   help               the list above
 */
#ifndef DEMO_VMM_CONTROL_H
#define DEMO_VMM_CONTROL_H

#include <stddef.h>

#include "util.h"

#define CONTROL_LINE_MAX 1024
#define CONTROL_ARG_MAX	 512
#define CONTROL_CLIENTS	 16

enum control_kind {
	CONTROL_STATUS = 1,
	CONTROL_HANDOFF,
	CONTROL_HANDOFF_EXEC,
	CONTROL_SAVE,
	CONTROL_TOUCH,
	CONTROL_QUIT,
	CONTROL_HELP,
	CONTROL_SELFTEST, /* hidden, tests: selftest-forbidden */
	CONTROL_PREFLIGHT,
};

struct control_cmd {
	enum control_kind kind;
	char arg[CONTROL_ARG_MAX]; /* PATH / FILE / read|write, or "" */
	const char *error;	   /* on -EINVAL: why (static text) */
};

/*
 * Parse one command line (len bytes, not NUL-terminated; a trailing
 * "\n" or "\r\n" is allowed).  Pure: reads line, writes only *out.
 * Returns 0, or -EINVAL with out->error set.
 */
int control_parse(const char *line, size_t len, struct control_cmd *out);

struct control;

/*
 * Listen on path (a stale socket there is replaced).  Or adopt a
 * listening socket received in a handoff (path: its name, for unlink).
 */
int control_listen(const char *path, struct control **out, struct vmm_err *err);
int control_adopt(int listen_fd, const char *path, struct control **out,
		  struct vmm_err *err);

/* Add an already-connected client (e.g. carried across an exec). */
int control_add_client(struct control *c, int fd, struct vmm_err *err);

int control_listen_fd(const struct control *c);
const char *control_path(const struct control *c);

/*
 * Wait up to timeout_ms for a command.  Returns 1 with *client (the fd
 * to answer on, still owned by c) and *cmd filled, 0 on timeout.  A
 * malformed line is answered here and not returned.
 */
int control_poll(struct control *c, int timeout_ms, int *client,
		 struct control_cmd *cmd, struct vmm_err *err);

/* Answer one line (a "\n" is added) on client; errors are ignored. */
void control_reply(struct control *c, int client, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Forget client without closing it (its fd was handed on). */
void control_release_client(struct control *c, int client);

/* Close every fd; with unlink_path, also remove the socket's path. */
void control_close(struct control *c, int unlink_path);

/*
 * Client side: send cmd to the socket at path and read one reply line
 * into reply (at most timeout_ms).  0 if the reply starts with "ok".
 */
int control_request(const char *path, const char *cmd, int timeout_ms,
		    char *reply, size_t len, struct vmm_err *err);

#endif
