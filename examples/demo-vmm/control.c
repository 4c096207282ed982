/*
 * control.c - the control socket: parser, server and client (see
 * control.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "control.h"

static const struct {
	const char *word;
	enum control_kind kind;
	int args; /* 1: one required, 2: one optional */
} commands[] = {
	{ "status", CONTROL_STATUS, 0 },
	{ "handoff", CONTROL_HANDOFF, 1 },
	{ "handoff-exec", CONTROL_HANDOFF_EXEC, 0 },
	{ "save", CONTROL_SAVE, 1 },
	{ "touch", CONTROL_TOUCH, 2 },
	{ "preflight", CONTROL_PREFLIGHT, 1 },
	{ "quit", CONTROL_QUIT, 0 },
	{ "help", CONTROL_HELP, 0 },
	{ "selftest-forbidden", CONTROL_SELFTEST, 0 },
};

static int is_space(char c)
{
	return c == ' ' || c == '\t';
}

int control_parse(const char *line, size_t len, struct control_cmd *out)
{
	size_t i = 0, w0, w1, a0, a1, k;

	memset(out, 0, sizeof(*out));
	if (len && line[len - 1] == '\n')
		len--;
	if (len && line[len - 1] == '\r')
		len--;
	for (k = 0; k < len; k++) {
		unsigned char c = line[k];

		if ((c < 0x20 && c != '\t') || c == 0x7f) {
			out->error = "control characters in the command";
			return -EINVAL;
		}
	}
	while (i < len && is_space(line[i]))
		i++;
	w0 = i;
	while (i < len && !is_space(line[i]))
		i++;
	w1 = i;
	while (i < len && is_space(line[i]))
		i++;
	a0 = i;
	while (i < len && !is_space(line[i]))
		i++;
	a1 = i;
	while (i < len && is_space(line[i]))
		i++;
	if (w0 == w1) {
		out->error = "empty command (try 'help')";
		return -EINVAL;
	}
	if (i < len) {
		out->error = "too many arguments";
		return -EINVAL;
	}
	for (k = 0; k < sizeof(commands) / sizeof(commands[0]); k++)
		if (strlen(commands[k].word) == w1 - w0 &&
		    !memcmp(commands[k].word, line + w0, w1 - w0))
			break;
	if (k == sizeof(commands) / sizeof(commands[0])) {
		out->error = "unknown command (try 'help')";
		return -EINVAL;
	}
	if (commands[k].args == 0 && a1 > a0) {
		out->error = "this command takes no argument";
		return -EINVAL;
	}
	if (commands[k].args == 1 && a1 == a0) {
		out->error = "this command needs a path argument";
		return -EINVAL;
	}
	if (a1 - a0 >= CONTROL_ARG_MAX) {
		out->error = "argument too long";
		return -EINVAL;
	}
	memcpy(out->arg, line + a0, a1 - a0);
	out->arg[a1 - a0] = 0;
	if (commands[k].kind == CONTROL_TOUCH && out->arg[0] &&
	    strcmp(out->arg, "read") && strcmp(out->arg, "write")) {
		out->error = "touch takes 'read' or 'write'";
		return -EINVAL;
	}
	if (commands[k].kind == CONTROL_PREFLIGHT &&
	    strcmp(out->arg, "transfer") && strcmp(out->arg, "exec") &&
	    strcmp(out->arg, "file") && strcmp(out->arg, "restart") &&
	    strcmp(out->arg, "kexec")) {
		out->error =
			"preflight takes transfer, exec, file, restart or kexec";
		return -EINVAL;
	}
	out->kind = commands[k].kind;
	return 0;
}

/* ---- server ----------------------------------------------------------- */

struct client {
	int fd;
	size_t len;
	char buf[CONTROL_LINE_MAX];
};

struct control {
	int lfd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	struct client cl[CONTROL_CLIENTS];
};

static int fill_addr(struct sockaddr_un *sa, const char *path,
		     struct vmm_err *err)
{
	memset(sa, 0, sizeof(*sa));
	sa->sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sa->sun_path))
		return vmm_errf(err, -ENAMETOOLONG,
				"control socket path too long: %s", path);
	strcpy(sa->sun_path, path);
	return 0;
}

static int control_new(int lfd, const char *path, struct control **out,
		       struct vmm_err *err)
{
	struct control *c = calloc(1, sizeof(*c));

	if (!c)
		return vmm_errf(err, -ENOMEM, "control: no memory");
	c->lfd = lfd;
	snprintf(c->path, sizeof(c->path), "%s", path ? path : "");
	for (unsigned int i = 0; i < CONTROL_CLIENTS; i++)
		c->cl[i].fd = -1;
	fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
	*out = c;
	return 0;
}

int control_listen(const char *path, struct control **out, struct vmm_err *err)
{
	struct sockaddr_un sa;
	int fd, r;

	r = fill_addr(&sa, path, err);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vmm_errno(err, "control: socket");
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int probe, stale = 0;

		if (errno != EADDRINUSE) {
			r = vmm_errno(err, "control: bind %s", path);
			close(fd);
			return r;
		}
		/* Replace a stale socket nobody listens on, nothing else. */
		probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (probe >= 0) {
			stale = connect(probe, (struct sockaddr *)&sa,
					sizeof(sa)) < 0 &&
				errno == ECONNREFUSED;
			close(probe);
		}
		if (!stale || unlink(path) < 0 ||
		    bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
			close(fd);
			return vmm_errf(
				err, -EADDRINUSE,
				"control: %s is in use (another demo-vmm listens there?)",
				path);
		}
	}
	if (listen(fd, 8) < 0) {
		r = vmm_errno(err, "control: bind/listen %s", path);
		close(fd);
		return r;
	}
	r = control_new(fd, path, out, err);
	if (r < 0)
		close(fd);
	return r;
}

int control_adopt(int listen_fd, const char *path, struct control **out,
		  struct vmm_err *err)
{
	return control_new(listen_fd, path, out, err);
}

int control_add_client(struct control *c, int fd, struct vmm_err *err)
{
	for (unsigned int i = 0; i < CONTROL_CLIENTS; i++) {
		if (c->cl[i].fd < 0) {
			c->cl[i].fd = fd;
			c->cl[i].len = 0;
			return 0;
		}
	}
	return vmm_errf(err, -EMFILE, "control: too many clients");
}

int control_listen_fd(const struct control *c)
{
	return c->lfd;
}

const char *control_path(const struct control *c)
{
	return c->path;
}

void control_reply(struct control *c, int client, const char *fmt, ...)
{
	char line[2048];
	va_list ap;
	int n;

	(void)c;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n > (int)sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* The client is a local peer; a short or failed send drops it. */
	(void)send(client, line, n, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void drop(struct client *cl)
{
	close(cl->fd);
	cl->fd = -1;
	cl->len = 0;
}

void control_release_client(struct control *c, int client)
{
	for (unsigned int i = 0; i < CONTROL_CLIENTS; i++)
		if (c->cl[i].fd == client) {
			c->cl[i].fd = -1;
			c->cl[i].len = 0;
		}
}

/* A complete line in cl's buffer: parse it, consume it.  1 if a cmd. */
static int take_line(struct control *c, struct client *cl,
		     struct control_cmd *cmd)
{
	char *nl = memchr(cl->buf, '\n', cl->len);
	size_t n;
	int r;

	if (!nl) {
		if (cl->len == sizeof(cl->buf)) {
			control_reply(c, cl->fd, "error: line too long");
			drop(cl);
		}
		return 0;
	}
	n = nl - cl->buf + 1;
	r = control_parse(cl->buf, n, cmd);
	memmove(cl->buf, cl->buf + n, cl->len - n);
	cl->len -= n;
	if (r < 0) {
		control_reply(c, cl->fd, "error: %s", cmd->error);
		return 0;
	}
	return 1;
}

int control_poll(struct control *c, int timeout_ms, int *client,
		 struct control_cmd *cmd, struct vmm_err *err)
{
	struct pollfd pfd[1 + CONTROL_CLIENTS];
	unsigned int n = 0, i, map[1 + CONTROL_CLIENTS];
	ssize_t got;
	int r, fd;

	/* Lines already buffered first. */
	for (i = 0; i < CONTROL_CLIENTS; i++) {
		if (c->cl[i].fd >= 0 && take_line(c, &c->cl[i], cmd)) {
			*client = c->cl[i].fd;
			return 1;
		}
	}
	pfd[n].fd = c->lfd;
	pfd[n].events = POLLIN;
	map[n++] = CONTROL_CLIENTS;
	for (i = 0; i < CONTROL_CLIENTS; i++) {
		if (c->cl[i].fd < 0)
			continue;
		pfd[n].fd = c->cl[i].fd;
		pfd[n].events = POLLIN;
		map[n++] = i;
	}
	r = poll(pfd, n, timeout_ms);
	if (r < 0 && errno == EINTR)
		return 0;
	if (r < 0)
		return vmm_errno(err, "control: poll");
	if (r == 0)
		return 0;
	if (pfd[0].revents) {
		fd = accept4(c->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0 && control_add_client(c, fd, NULL) < 0) {
			control_reply(c, fd, "error: too many clients");
			close(fd);
		}
	}
	for (i = 1; i < n; i++) {
		struct client *cl = &c->cl[map[i]];

		if (!pfd[i].revents || cl->fd < 0)
			continue;
		got = recv(cl->fd, cl->buf + cl->len, sizeof(cl->buf) - cl->len,
			   MSG_DONTWAIT);
		if (got < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (got <= 0) {
			drop(cl);
			continue;
		}
		cl->len += got;
		if (take_line(c, cl, cmd)) {
			*client = cl->fd;
			return 1;
		}
	}
	return 0;
}

void control_close(struct control *c, int unlink_path)
{
	if (!c)
		return;
	for (unsigned int i = 0; i < CONTROL_CLIENTS; i++)
		if (c->cl[i].fd >= 0)
			close(c->cl[i].fd);
	if (unlink_path && c->path[0])
		unlink(c->path);
	if (c->lfd >= 0)
		close(c->lfd);
	free(c);
}

/* ---- client ----------------------------------------------------------- */

int control_request(const char *path, const char *cmd, int timeout_ms,
		    char *reply, size_t len, struct vmm_err *err)
{
	struct sockaddr_un sa;
	struct pollfd pfd;
	uint64_t deadline = vmm_now_ns() + (uint64_t)timeout_ms * 1000000;
	size_t got = 0;
	char line[CONTROL_LINE_MAX + 2];
	ssize_t n;
	int fd, r;

	r = fill_addr(&sa, path, err);
	if (r < 0)
		return r;
	n = snprintf(line, sizeof(line), "%s\n", cmd);
	if (n >= (ssize_t)sizeof(line))
		return vmm_errf(err, -E2BIG, "command too long");
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return vmm_errno(err, "socket");
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		r = vmm_errno(err, "connect %s", path);
		goto out;
	}
	if (send(fd, line, n, MSG_NOSIGNAL) != n) {
		r = vmm_errno(err, "send to %s", path);
		goto out;
	}
	reply[0] = 0;
	while (got + 1 < len && !memchr(reply, '\n', got)) {
		int64_t left = (int64_t)(deadline - vmm_now_ns()) / 1000000;

		if ((int64_t)(deadline - vmm_now_ns()) <= 0) {
			r = vmm_errf(err, -ETIMEDOUT,
				     "no reply to '%s' in %d ms", cmd,
				     timeout_ms);
			goto out;
		}
		pfd.fd = fd;
		pfd.events = POLLIN;
		if (poll(&pfd, 1, (int)left + 1) < 0 && errno != EINTR) {
			r = vmm_errno(err, "poll");
			goto out;
		}
		n = recv(fd, reply + got, len - 1 - got, MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (n <= 0) {
			reply[got] = 0;
			r = vmm_errf(
				err, -ECONNRESET,
				"'%s': connection closed without a reply%s%s",
				cmd, got ? ": " : "", reply);
			goto out;
		}
		got += n;
		reply[got] = 0;
	}
	reply[strcspn(reply, "\n")] = 0;
	r = strncmp(reply, "ok", 2) ? vmm_errf(err, -EREMOTEIO, "%s", reply)
				    : 0;
out:
	close(fd);
	return r;
}
