/* SPDX-License-Identifier: MIT */
/*
 * cprxfer-inspect: print what a libcprxfer state stream holds, without
 * acting on it (docs/man/cprxfer-inspect.1.md).
 *
 *   cprxfer-inspect [--json] FILE            a state file, or an exec-mode
 *                                            state memfd as /proc/PID/fd/N
 *   cprxfer-inspect [--json] --pid PID       the exec-mode state memfd of
 *                                            a running process
 *   cprxfer-inspect [--json] --listen PATH   listen as a loader would,
 *        [--tag TAG] [--timeout MS]          take one stream, print it,
 *        [--allow-uid UID] [--allow-pid PID] refuse it (the sender rolls
 *                                            back) and exit
 *
 * Every record is listed with its offset, type, size and value; fds
 * received from a sender are described (fstat, readlink) and closed,
 * never kept; fd numbers of an exec-mode memfd refer to the process
 * that holds it and are described from /proc/PID/fd when readable.
 * Exit status: 0 the stream is whole and its checksum matches, 1 it is
 * not (the first error is printed with the offset of its frame), 2 the
 * command line or the input could not be used.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "channel.h"
#include "cleanup.h"
#include "error.h"
#include "io.h"
#include "walk.h"
#include "wire.h"

/* RAM record flags (lib/ram.c): what backs the region. */
#define RAM_F_HUGETLB 0x1u
#define RAM_F_FILE    0x2u

#define HUGETLBFS_MAGIC_ 0x958458f6

struct out {
	FILE *f;
	bool json;
	int pid; /* the process an inline fd number belongs to, or -1 */
	unsigned nrec;
};

/* ---- JSON ------------------------------------------------------------ */

static void jstr(FILE *f, const char *s, size_t n)
{
	size_t i;

	fputc('"', f);
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c == '\n')
			fputs("\\n", f);
		else if (c == '\t')
			fputs("\\t", f);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void jcstr(FILE *f, const char *s)
{
	if (s)
		jstr(f, s, strlen(s));
	else
		fputs("null", f);
}

/* Text output: a value's bytes, printable or escaped. */
static void tstr(FILE *f, const uint8_t *s, size_t n)
{
	size_t i;

	fputc('"', f);
	for (i = 0; i < n; i++) {
		if (s[i] == '"' || s[i] == '\\')
			fprintf(f, "\\%c", s[i]);
		else if (s[i] < 0x20 || s[i] >= 0x7f)
			fprintf(f, "\\x%02x", s[i]);
		else
			fputc(s[i], f);
	}
	fputc('"', f);
}

static void hex(FILE *f, const uint8_t *p, size_t n, const char *sep)
{
	size_t i;

	for (i = 0; i < n; i++)
		fprintf(f, "%s%02x", i ? sep : "", p[i]);
}

/* ---- what an fd is --------------------------------------------------- */

struct fdinfo {
	bool known;
	char kind[32];
	char target[PATH_MAX];
};

static void classify(struct fdinfo *d, const struct stat *st, bool have_st,
		     const char *link, long fstype)
{
	const char *k = "unknown";

	snprintf(d->target, sizeof(d->target), "%s", link ? link : "");
	if (link && !strncmp(link, "/memfd:", 7))
		k = fstype == HUGETLBFS_MAGIC_ ? "memfd (hugetlbfs)" : "memfd";
	else if (link && !strncmp(link, "anon_inode:", 11))
		k = link[11] == '[' ? link + 12 : link + 11;
	else if (have_st && S_ISSOCK(st->st_mode))
		k = "socket";
	else if (have_st && S_ISFIFO(st->st_mode))
		k = "pipe";
	else if (have_st && S_ISREG(st->st_mode))
		k = fstype == HUGETLBFS_MAGIC_ ? "file (hugetlbfs)" : "file";
	else if (have_st && S_ISDIR(st->st_mode))
		k = "directory";
	else if (have_st && S_ISCHR(st->st_mode))
		k = "char device";
	else if (have_st && S_ISBLK(st->st_mode))
		k = "block device";
	snprintf(d->kind, sizeof(d->kind), "%s", k);
	/* "anon_inode:[eventfd]" -> "eventfd" */
	d->kind[strcspn(d->kind, "]")] = 0;
	d->known = have_st || link;
}

/* A received fd: ours for the moment, looked at and closed by the walker. */
static void describe_fd(struct fdinfo *d, int fd)
{
	char proc[64], link[PATH_MAX];
	struct stat st;
	struct statfs sf;
	bool have_st = fstat(fd, &st) == 0;
	ssize_t n;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
	n = readlink(proc, link, sizeof(link) - 1);
	if (n >= 0)
		link[n] = 0;
	classify(d, &st, have_st, n >= 0 ? link : NULL,
		 fstatfs(fd, &sf) == 0 ? (long)sf.f_type : 0);
}

/* An inline number: an fd of process pid, looked at through /proc. */
static void describe_number(struct fdinfo *d, int pid, int number)
{
	char proc[64], link[PATH_MAX];
	struct stat st;
	struct statfs sf;
	bool have_st;
	ssize_t n;

	memset(d, 0, sizeof(*d));
	if (pid < 0)
		return;
	snprintf(proc, sizeof(proc), "/proc/%d/fd/%d", pid, number);
	n = readlink(proc, link, sizeof(link) - 1);
	if (n < 0)
		return;
	link[n] = 0;
	have_st = stat(proc, &st) == 0;
	classify(d, &st, have_st, link,
		 statfs(proc, &sf) == 0 ? (long)sf.f_type : 0);
}

/* ---- records ----------------------------------------------------------- */

static const char *type_name(int type)
{
	switch (type) {
	case CPRXFER_TYPE_U64:
		return "u64";
	case CPRXFER_TYPE_I64:
		return "i64";
	case CPRXFER_TYPE_BLOB:
		return "blob";
	case CPRXFER_TYPE_STR:
		return "str";
	case CPRXFER_TYPE_FD:
		return "fd";
	case CPRXFER_TYPE_RAM:
		return "ram";
	case CPRXFER_TYPE_FDS:
		return "fds";
	}
	return "unknown";
}

static const char *ram_backing(const struct cx_walk_rec *r)
{
	if (r->ram_flags & RAM_F_HUGETLB)
		return "hugetlbfs";
	if (r->ram_flags & RAM_F_FILE || !r->has_fd)
		return "file";
	return "memfd";
}

static void print_fd_json(FILE *f, const struct cx_walk_rec *r,
			  const struct fdinfo *d)
{
	fprintf(f, ", \"fd\": {\"index\": %" PRIu32, r->fd_index);
	if (r->fd_number >= 0)
		fprintf(f, ", \"number\": %d, \"keep_open\": %s", r->fd_number,
			r->keep_open ? "true" : "false");
	if (d->known) {
		fputs(", \"kind\": ", f);
		jcstr(f, d->kind);
		fputs(", \"target\": ", f);
		jcstr(f, d->target);
	}
	fputc('}', f);
}

static void print_fd_text(FILE *f, const struct cx_walk_rec *r,
			  const struct fdinfo *d, int pid)
{
	fprintf(f, "fd #%" PRIu32, r->fd_index);
	if (r->fd_number >= 0 && pid >= 0)
		fprintf(f, " = fd %d of pid %d", r->fd_number, pid);
	else if (r->fd_number >= 0)
		fprintf(f, " = the sender's fd %d", r->fd_number);
	if (r->keep_open)
		fputs(" (kept open)", f);
	if (d->known)
		fprintf(f, ": %s %s", d->kind, d->target);
	else if (r->fd < 0 && r->fd_number < 0)
		fputs(": not in this capture", f);
}

/* Array element i as if it were a record's single fd. */
static void array_elem(const struct cx_walk_rec *r, uint32_t i,
		       struct cx_walk_rec *e, struct fdinfo *d, int pid)
{
	*e = *r;
	e->fd_index = r->fd_index + i;
	e->fd = r->fds ? r->fds[i] : -1;
	e->fd_number =
		r->numbers ? (int)(r->numbers[i] & ~CX_FD_KEEP_OPEN) : -1;
	e->keep_open = r->numbers && (r->numbers[i] & CX_FD_KEEP_OPEN);
	memset(d, 0, sizeof(*d));
	if (e->fd >= 0)
		describe_fd(d, e->fd);
	else if (e->fd_number >= 0)
		describe_number(d, pid, e->fd_number);
}

static void print_array(struct out *o, const struct cx_walk_rec *r)
{
	struct cx_walk_rec e;
	struct fdinfo d;
	uint32_t i;

	if (o->json) {
		fprintf(o->f, ", \"count\": %" PRIu32 ", \"fds\": [",
			r->fd_count);
		for (i = 0; i < r->fd_count; i++) {
			array_elem(r, i, &e, &d, o->pid);
			fputs(i ? ", " : "", o->f);
			fprintf(o->f, "{\"index\": %" PRIu32, e.fd_index);
			if (e.fd_number >= 0)
				fprintf(o->f,
					", \"number\": %d, \"keep_open\": %s",
					e.fd_number,
					e.keep_open ? "true" : "false");
			if (d.known) {
				fputs(", \"kind\": ", o->f);
				jcstr(o->f, d.kind);
				fputs(", \"target\": ", o->f);
				jcstr(o->f, d.target);
			}
			fputc('}', o->f);
		}
		fputc(']', o->f);
		return;
	}
	fprintf(o->f, "%" PRIu32 " fds", r->fd_count);
	for (i = 0; i < r->fd_count && i < 8; i++) {
		array_elem(r, i, &e, &d, o->pid);
		fputs(i ? "; " : ": ", o->f);
		print_fd_text(o->f, &e, &d, o->pid);
	}
	if (r->fd_count > 8)
		fputs("; ...", o->f);
}

static void on_record(void *arg, const struct cx_walk_rec *r)
{
	struct out *o = arg;
	struct fdinfo d = { 0 };
	FILE *f = o->f;

	if (r->fd >= 0)
		describe_fd(&d, r->fd);
	else if (r->fd_number >= 0)
		describe_number(&d, o->pid, r->fd_number);
	if (o->json) {
		fprintf(f, "%s\n    {\"offset\": %" PRIu64 ", \"name\": ",
			o->nrec ? "," : "", r->offset);
		jcstr(f, r->name);
		fprintf(f,
			", \"type\": \"%s\", \"type_id\": %u, \"critical\": %s, \"size\": %" PRIu64,
			type_name(r->type), r->type,
			r->flags & CX_REC_CRITICAL ? "true" : "false", r->len);
		if (r->skipped)
			fputs(", \"skipped\": true", f);
		if (r->type == CPRXFER_TYPE_U64)
			fprintf(f, ", \"value\": %" PRIu64, r->u64);
		else if (r->type == CPRXFER_TYPE_I64)
			fprintf(f, ", \"value\": %" PRId64, (int64_t)r->u64);
		else if (r->type == CPRXFER_TYPE_STR) {
			fputs(", \"head\": ", f);
			jstr(f, (const char *)r->head, r->head_len);
		} else if (r->type == CPRXFER_TYPE_BLOB) {
			fputs(", \"head_hex\": \"", f);
			hex(f, r->head, r->head_len, "");
			fputc('"', f);
		}
		if (r->type == CPRXFER_TYPE_RAM) {
			fprintf(f,
				", \"ram\": {\"size\": %" PRIu64
				", \"flags\": %" PRIu32
				", \"backing\": \"%s\", \"path\": ",
				r->ram_size, r->ram_flags, ram_backing(r));
			jcstr(f, r->ram_path);
			fputc('}', f);
		}
		if (r->type == CPRXFER_TYPE_FDS)
			print_array(o, r);
		else if (r->has_fd)
			print_fd_json(f, r, &d);
		fputc('}', f);
	} else {
		fprintf(f, "%10" PRIu64 "  %-4s %10" PRIu64 "  %s%s  ",
			r->offset, type_name(r->type), r->len, r->name,
			r->flags & CX_REC_CRITICAL ? " (critical)" : "");
		if (r->type == CPRXFER_TYPE_U64)
			fprintf(f, "%" PRIu64, r->u64);
		else if (r->type == CPRXFER_TYPE_I64)
			fprintf(f, "%" PRId64, (int64_t)r->u64);
		else if (r->type == CPRXFER_TYPE_STR) {
			tstr(f, r->head, r->head_len);
			if (r->head_len < r->len)
				fputs("...", f);
		} else if (r->type == CPRXFER_TYPE_BLOB) {
			hex(f, r->head, r->len < 16 ? r->len : 16, " ");
			if (r->len > 16)
				fputs(" ...", f);
		} else if (r->type == CPRXFER_TYPE_RAM) {
			fprintf(f, "%" PRIu64 " bytes (%" PRIu64 " MiB), %s",
				r->ram_size, r->ram_size >> 20, ram_backing(r));
			if (r->ram_path)
				fprintf(f, " %s", r->ram_path);
			if (r->has_fd)
				fputs(", ", f);
		} else if (r->type == CPRXFER_TYPE_FDS) {
			print_array(o, r);
		} else if (r->skipped) {
			fputs("(type of a later version, skipped)", f);
		}
		if (r->has_fd && r->type != CPRXFER_TYPE_FDS)
			print_fd_text(f, r, &d, o->pid);
		fputc('\n', f);
	}
	o->nrec++;
}

/* ---- the report ------------------------------------------------------- */

static const char *errno_name(int e)
{
	static const struct {
		int e;
		const char *n;
	} names[] = {
		{ EBADMSG, "EBADMSG" },
		{ EPROTO, "EPROTO" },
		{ EPROTONOSUPPORT, "EPROTONOSUPPORT" },
		{ EOPNOTSUPP, "EOPNOTSUPP" },
		{ EMSGSIZE, "EMSGSIZE" },
		{ EFBIG, "EFBIG" },
		{ E2BIG, "E2BIG" },
		{ EMFILE, "EMFILE" },
		{ ENOMEM, "ENOMEM" },
		{ ECONNRESET, "ECONNRESET" },
		{ ETIMEDOUT, "ETIMEDOUT" },
		{ EIO, "EIO" },
	};
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (names[i].e == -e)
			return names[i].n;
	return "E?";
}

static void head(struct out *o, const char *source, const char *kind)
{
	if (o->json) {
		fputs("{\n  \"source\": ", o->f);
		jcstr(o->f, source);
		fprintf(o->f, ",\n  \"kind\": \"%s\",\n  \"records\": [", kind);
	} else {
		fprintf(o->f, "%s (%s)\n", source, kind);
		fprintf(o->f, "%10s  %-4s %10s  %s  %s\n", "OFFSET", "TYPE",
			"SIZE", "NAME", "VALUE");
	}
}

static void tail(struct out *o, const struct cx_walk *w, const char *peer)
{
	FILE *f = o->f;

	if (o->json) {
		fprintf(f, "%s],\n", o->nrec ? "\n  " : "");
		if (peer) {
			fputs("  \"peer\": ", f);
			fputs(peer, f);
			fputs(",\n", f);
		}
		if (w->hello) {
			fprintf(f,
				"  \"hello\": {\"pid\": %" PRIu32
				", \"uid\": %" PRIu32 ", \"tag\": ",
				w->hello_pid, w->hello_uid);
			jcstr(f, w->hello_tag);
			fputs("},\n", f);
		}
		if (w->begun)
			fprintf(f,
				"  \"version\": %u,\n  \"declared\": {\"records\": %" PRIu64
				", \"fds\": %" PRIu64 ", \"bytes\": %" PRIu64
				"},\n",
				w->version, w->declared_records,
				w->declared_fds, w->declared_bytes);
		else
			fputs("  \"version\": null,\n  \"declared\": null,\n",
			      f);
		fprintf(f,
			"  \"read\": {\"records\": %" PRIu64
			", \"fds\": %" PRIu64 ", \"bytes\": %" PRIu64 "},\n",
			w->records, w->fds, w->bytes);
		if (w->fds_absent || w->inline_fds)
			fprintf(f, "  \"fds_inline\": %s,\n",
				w->inline_fds ? "true" : "false");
		if (w->ended)
			fprintf(f,
				"  \"checksum\": {\"stream\": \"0x%08x\", \"computed\": \"0x%08x\", \"ok\": %s},\n",
				w->crc_stream, w->crc_data,
				w->crc_stream == w->crc_data ? "true"
							     : "false");
		else
			fputs("  \"checksum\": null,\n", f);
		if (w->err) {
			fprintf(f,
				"  \"error\": {\"code\": %d, \"name\": \"%s\", \"offset\": %" PRIu64
				", \"message\": ",
				w->err, errno_name(w->err), w->err_offset);
			jcstr(f, w->errmsg);
			fputs("}\n}\n", f);
		} else {
			fputs("  \"error\": null\n}\n", f);
		}
		return;
	}
	if (peer)
		fprintf(f, "peer: %s\n", peer);
	if (w->hello)
		fprintf(f,
			"written by pid %" PRIu32 ", uid %" PRIu32
			", tag '%s' (HELLO frame, %" PRIu64 " bytes)\n",
			w->hello_pid, w->hello_uid, w->hello_tag, w->base);
	if (w->begun)
		fprintf(f,
			"format version %u; declared %" PRIu64
			" records, %" PRIu64 " fds, %" PRIu64 " bytes\n",
			w->version, w->declared_records, w->declared_fds,
			w->declared_bytes);
	fprintf(f,
		"read %" PRIu64 " records, %" PRIu64 " fds, %" PRIu64
		" bytes\n",
		w->records, w->fds, w->bytes);
	if (w->fds_absent)
		fputs("fds: sent with SCM_RIGHTS, not in this capture\n", f);
	if (w->inline_fds)
		fputs("fds: listed by number (exec mode)\n", f);
	if (w->ended)
		fprintf(f, "checksum: %s (stream 0x%08x, data 0x%08x)\n",
			w->crc_stream == w->crc_data ? "ok" : "MISMATCH",
			w->crc_stream, w->crc_data);
	else
		fputs("checksum: not reached\n", f);
	if (w->err)
		fprintf(f, "error at byte %" PRIu64 ": %s (%s)\n",
			w->err_offset, w->errmsg, errno_name(w->err));
	else
		fputs("ok\n", f);
}

/* ---- sources ------------------------------------------------------------ */

static int walk_fd(struct out *o, int fd, const char *source, const char *kind)
{
	struct cx_walk w = { .sock = false, .on_record = on_record, .arg = o };
	struct cx_io io;
	int rc;

	rc = cx_io_init(&io, fd, false);
	if (rc < 0) {
		fprintf(stderr, "cprxfer-inspect: %s\n", cprxfer_errmsg());
		return 2;
	}
	head(o, source, kind);
	cx_walk(&io, &w);
	cx_io_fini(&io);
	tail(o, &w, NULL);
	return w.err ? 1 : 0;
}

/* The exec-mode state memfd a process holds, by its name. */
static int find_exec_memfd(int pid, char *path, size_t len)
{
	char dir[64], p[PATH_MAX], link[PATH_MAX];
	struct dirent *e;
	DIR *d;
	int found = -1;

	snprintf(dir, sizeof(dir), "/proc/%d/fd", pid);
	d = opendir(dir);
	if (!d)
		return -errno;
	while ((e = readdir(d))) {
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		n = readlink(p, link, sizeof(link) - 1);
		if (n < 0)
			continue;
		link[n] = 0;
		if (!strncmp(link, "/memfd:cprxfer-exec-state", 25)) {
			snprintf(path, len, "%s", p);
			found = 0;
			break;
		}
	}
	closedir(d);
	return found < 0 ? -ENOENT : 0;
}

static int inspect_path(struct out *o, const char *path)
{
	cx_autoclose int fd = -1;
	int pid, n, num;

	/* /proc/PID/fd/N: inline fd numbers are PID's. */
	if (sscanf(path, "/proc/%d/fd/%d%n", &pid, &num, &n) == 2 &&
	    path[n] == 0)
		o->pid = pid;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "cprxfer-inspect: %s: %s\n", path,
			strerror(errno));
		return 2;
	}
	return walk_fd(o, fd, path,
		       o->pid >= 0 ? "exec-mode state memfd of a process"
				   : "state file");
}

struct listen_args {
	const char *path, *tag;
	int timeout_ms;
	uid_t uids[8];
	pid_t pids[8];
	unsigned nuids, npids;
};

CX_DEFINE_FREE(cprxfer_opts, cprxfer_opts_free)
CX_DEFINE_FREE(cprxfer_listener, cprxfer_listener_close)
CX_DEFINE_FREE(cprxfer_channel, cprxfer_channel_close)

static int inspect_listen(struct out *o, const struct listen_args *a)
{
	cx_auto(cprxfer_opts) *opts = cprxfer_opts_new();
	cx_auto(cprxfer_listener) *l = NULL;
	cx_auto(cprxfer_channel) *ch = NULL;
	struct cx_walk w = { .sock = true, .on_record = on_record, .arg = o };
	char peer[512], why[CX_REASON_MAX];
	const char *tag = NULL;
	pid_t ppid;
	uid_t puid;
	unsigned i;
	int rc = opts ? 0 : -ENOMEM;

	if (rc == 0 && a->tag)
		rc = cprxfer_opts_set_tag(opts, a->tag);
	if (rc == 0)
		rc = cprxfer_opts_set_timeout(opts, a->timeout_ms);
	for (i = 0; rc == 0 && i < a->nuids; i++)
		rc = cprxfer_opts_allow_uid(opts, a->uids[i]);
	for (i = 0; rc == 0 && i < a->npids; i++)
		rc = cprxfer_opts_allow_pid(opts, a->pids[i]);
	if (rc == 0)
		rc = cprxfer_listen_opts(a->path, opts, &l);
	if (rc == 0)
		rc = cprxfer_accept(l, a->timeout_ms, &ch);
	if (rc < 0) {
		fprintf(stderr, "cprxfer-inspect: %s: %s\n", a->path,
			cprxfer_errmsg());
		return 2;
	}
	if (!ch)
		return 2; /* not reached: accept gives a channel or an error */
	/* The path is no longer needed: a later sender finds nobody. */
	cprxfer_listener_close(cx_steal_ptr(&l));
	cprxfer_channel_peer(ch, &ppid, &puid, &tag);
	if (o->json) {
		FILE *m = fmemopen(peer, sizeof(peer), "w");

		if (m) {
			fprintf(m, "{\"pid\": %d, \"uid\": %u, \"tag\": ",
				(int)ppid, (unsigned)puid);
			jcstr(m, tag);
			fputc('}', m);
			fclose(m);
		} else {
			snprintf(peer, sizeof(peer), "null");
		}
	} else {
		snprintf(peer, sizeof(peer), "pid %d, uid %u, tag '%s'",
			 (int)ppid, (unsigned)puid, tag ? tag : "");
	}
	head(o, a->path, "stream received at a socket path");
	cx_io_deadline(&ch->io, a->timeout_ms);
	rc = cx_walk(&ch->io, &w);
	if (rc == 0) {
		/* Refuse it: the sender's wait_ack fails and it resumes. */
		rc = cprxfer_ack(
			ch, -ECANCELED,
			"stream inspected by cprxfer-inspect, not loaded");
		if (rc < 0)
			fprintf(stderr,
				"cprxfer-inspect: could not send the refusal: %s\n",
				cprxfer_errmsg());
	} else if (rc != -ECONNRESET) {
		/* As a failed load does: tell the sender why, then hang up. */
		snprintf(why, sizeof(why), "cprxfer-inspect: %s", w.errmsg);
		cx_io_deadline(&ch->io, 100);
		cx_send_ack(ch, CX_ACK_LOAD, rc == -ETIMEDOUT ? -ETIME : rc,
			    why);
		shutdown(ch->io.fd, SHUT_RDWR);
	}
	tail(o, &w, peer);
	return w.err ? 1 : 0;
}

static void usage(FILE *f)
{
	fputs("usage: cprxfer-inspect [--json] FILE\n"
	      "       cprxfer-inspect [--json] --pid PID\n"
	      "       cprxfer-inspect [--json] --listen PATH [--tag TAG] [--timeout MS]\n"
	      "                       [--allow-uid UID]... [--allow-pid PID]...\n"
	      "Print the records of a libcprxfer state stream: a state file, the exec-mode\n"
	      "state memfd of a process (/proc/PID/fd/N, or found with --pid), or one\n"
	      "stream received at PATH as a loader would (then refused: the sender rolls\n"
	      "back). Exit status: 0 whole and checksum ok, 1 damaged, 2 unusable input.\n",
	      f);
}

static int number(const char *s, long min, long max, long *v)
{
	char *end;

	errno = 0;
	*v = strtol(s, &end, 10);
	return errno || end == s || *end || *v < min || *v > max ? -1 : 0;
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "pid", required_argument, NULL, 'p' },
		{ "listen", required_argument, NULL, 'l' },
		{ "tag", required_argument, NULL, 't' },
		{ "timeout", required_argument, NULL, 'T' },
		{ "allow-uid", required_argument, NULL, 'U' },
		{ "allow-pid", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 },
	};
	struct listen_args la = { .timeout_ms = CPRXFER_DEFAULT_TIMEOUT_MS };
	struct out o = { .f = stdout, .pid = -1 };
	char path[PATH_MAX] = "";
	long pid = -1, v;
	int c, rc;

	while ((c = getopt_long(argc, argv, "jp:l:t:T:U:P:hV", longopts,
				NULL)) != -1) {
		switch (c) {
		case 'j':
			o.json = true;
			break;
		case 'p':
			if (number(optarg, 1, INT32_MAX, &pid) < 0)
				goto bad;
			break;
		case 'l':
			la.path = optarg;
			break;
		case 't':
			la.tag = optarg;
			break;
		case 'T':
			if (number(optarg, -1, INT32_MAX, &v) < 0)
				goto bad;
			la.timeout_ms = (int)v;
			break;
		case 'U':
			if (la.nuids == 8 || number(optarg, 0, INT32_MAX, &v))
				goto bad;
			la.uids[la.nuids++] = (uid_t)v;
			break;
		case 'P':
			if (la.npids == 8 || number(optarg, 1, INT32_MAX, &v))
				goto bad;
			la.pids[la.npids++] = (pid_t)v;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("cprxfer-inspect %s\n", cprxfer_version());
			return 0;
		default:
			goto bad;
		}
	}
	if ((la.path != NULL) + (pid > 0) + (optind < argc) != 1 ||
	    optind + 1 < argc)
		goto bad;
	if (la.path)
		rc = inspect_listen(&o, &la);
	else if (pid > 0) {
		rc = find_exec_memfd((int)pid, path, sizeof(path));
		if (rc < 0) {
			fprintf(stderr,
				"cprxfer-inspect: pid %ld holds no exec-mode state memfd: %s\n",
				pid, strerror(-rc));
			return 2;
		}
		rc = inspect_path(&o, path);
	} else {
		rc = inspect_path(&o, argv[optind]);
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "cprxfer-inspect: write error\n");
		return 2;
	}
	return rc;
bad:
	usage(stderr);
	return 2;
}
