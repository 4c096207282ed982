/* SPDX-License-Identifier: MIT */
/*
 * Blockers and preflight.
 *
 * A blocker is a reason, registered by a part of the application, why
 * some modes must not be used right now ("vhost device open"). The
 * application owns the cprxfer_blockers object; a state borrows it, and
 * every save path (cprxfer_save, cprxfer_exec, cprxfer_save_file,
 * cprxfer_save_memfd) checks it first, in the encoder's plan(), so that
 * a blocked save fails before anything is written or sent.
 *
 * The preflight report says, for each entry of a state, whether it
 * travels (the successor gets the same kernel object), is recreated
 * (it gets a description and makes the object anew), or blocks the
 * mode; then the blockers that cover the mode.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "preflight.h"

#define CX_REASON_MAX	 1024
#define CX_HUGETLB_MAGIC 0x958458f6

struct blocker {
	uint32_t id;
	uint32_t modes;
	char *reason;
};

struct cprxfer_blockers {
	struct blocker *v;
	size_t n, cap;
	uint32_t next_id;
};

struct rentry {
	char *name; /* NULL: a blocker */
	int verdict;
	char *reason;
};

struct cprxfer_report {
	struct rentry *e;
	size_t n, cap;
	char *text;
};

/* ---- modes --------------------------------------------------------- */

uint32_t cx_user_mode(enum cx_mode m)
{
	switch (m) {
	case CX_MODE_SOCKET:
		return CPRXFER_MODE_TRANSFER;
	case CX_MODE_EXEC:
		return CPRXFER_MODE_EXEC;
	case CX_MODE_FILE:
		return CPRXFER_MODE_FILE;
	case CX_MODE_RESTART:
		return CPRXFER_MODE_RESTART;
	case CX_MODE_KEXEC:
		return CPRXFER_MODE_KEXEC;
	}
	return 0;
}

static const char *mode_name(uint32_t mode)
{
	switch (mode) {
	case CPRXFER_MODE_TRANSFER:
		return "transfer";
	case CPRXFER_MODE_EXEC:
		return "exec";
	case CPRXFER_MODE_FILE:
		return "file";
	case CPRXFER_MODE_RESTART:
		return "restart";
	case CPRXFER_MODE_KEXEC:
		return "kexec";
	}
	return NULL;
}

/* ---- what an fd is ------------------------------------------------- */

enum kind {
	K_CLOSED,
	K_MEMFD,
	K_HUGETLB, /* a memfd on hugetlbfs */
	K_SOCKET,
	K_FILE, /* a regular file, not a memfd */
	K_OTHER
};

/* Classify fd and describe it in buf ("socket", "anon_inode:[eventfd]"). */
static enum kind fd_kind(int fd, char *buf, size_t len)
{
	char link[64], target[256];
	struct statfs sfs;
	struct stat s;
	ssize_t n;

	if (fd < 0 || fstat(fd, &s) < 0) {
		snprintf(buf, len, "fd %d, not open", fd);
		return K_CLOSED;
	}
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	target[n > 0 ? n : 0] = 0;
	if (S_ISSOCK(s.st_mode)) {
		snprintf(buf, len, "socket");
		return K_SOCKET;
	}
	if (S_ISREG(s.st_mode) && !strncmp(target, "/memfd:", 7)) {
		if (fstatfs(fd, &sfs) == 0 &&
		    (uint32_t)sfs.f_type == CX_HUGETLB_MAGIC) {
			snprintf(buf, len, "hugetlb memfd");
			return K_HUGETLB;
		}
		snprintf(buf, len, "memfd");
		return K_MEMFD;
	}
	if (S_ISREG(s.st_mode)) {
		snprintf(buf, len, "file %s", target);
		return K_FILE;
	}
	if (S_ISFIFO(s.st_mode))
		snprintf(buf, len, "pipe");
	else
		snprintf(buf, len, "%s", n > 0 ? target : "fd");
	return K_OTHER;
}

/* Can a kexec (LUO) carry this fd? Sets why when it cannot. */
static int kexec_verdict(enum kind k, const char *desc, char *why, size_t len)
{
	if (k == K_MEMFD) {
		snprintf(why, len,
			 "%s: the fd store carries it across the kexec", desc);
		return CPRXFER_TRAVELS;
	}
	if (k == K_HUGETLB)
		snprintf(why, len, "%s: not kept across a kexec", desc);
	else
		snprintf(why, len,
			 "%s: a kexec keeps memfds only, this is lost", desc);
	return CPRXFER_BLOCKS;
}

/* An fd array: the worst verdict of its fds. */
static int classify_array(const struct cx_entry *x, uint32_t mode, char *why,
			  size_t len)
{
	char desc[300];
	size_t i;

	if (!x->v.fda.fds) {
		snprintf(why, len, "its fds were taken");
		return CPRXFER_BLOCKS;
	}
	if (mode == CPRXFER_MODE_FILE) {
		snprintf(
			why, len,
			"an fd array cannot be saved to a file (its fds would not survive a reboot)");
		return CPRXFER_BLOCKS;
	}
	for (i = 0; i < x->v.fda.n; i++) {
		enum kind k = fd_kind(x->v.fda.fds[i], desc, sizeof(desc));

		if (k == K_CLOSED) {
			snprintf(why, len, "fd %zu of %zu: %s", i, x->v.fda.n,
				 desc);
			return CPRXFER_BLOCKS;
		}
		if (mode == CPRXFER_MODE_KEXEC &&
		    kexec_verdict(k, desc, why, len) == CPRXFER_BLOCKS) {
			snprintf(desc, sizeof(desc), "%s", why);
			snprintf(why, len, "fd %zu of %zu: %s", i, x->v.fda.n,
				 desc);
			return CPRXFER_BLOCKS;
		}
	}
	snprintf(why, len, "%zu fds: the same open files", x->v.fda.n);
	return CPRXFER_TRAVELS;
}

/* The verdict on entry x in mode, with its reason in why. */
static int classify(const struct cx_entry *x, uint32_t mode, char *why,
		    size_t len)
{
	char desc[300];
	enum kind k;
	int fd = cx_entry_fd(x);

	if (x->type == CPRXFER_TYPE_FDS)
		return classify_array(x, mode, why, len);
	if (x->type != CPRXFER_TYPE_FD && x->type != CPRXFER_TYPE_RAM) {
		snprintf(why, len, "value, in the stream");
		return CPRXFER_TRAVELS;
	}
	if (x->type == CPRXFER_TYPE_FD && fd < 0) {
		snprintf(why, len, "its fd was taken");
		return CPRXFER_BLOCKS;
	}
	if (x->type == CPRXFER_TYPE_RAM && fd < 0) {
		/* A region loaded from a state file: by path only. */
		if (mode == CPRXFER_MODE_FILE) {
			snprintf(why, len, "RAM on %s: reopened by path",
				 x->v.ram.path);
			return CPRXFER_RECREATE;
		}
		snprintf(why, len, "RAM on %s has no fd to carry",
			 x->v.ram.path);
		return CPRXFER_BLOCKS;
	}
	k = fd_kind(fd, desc, sizeof(desc));
	if (k == K_CLOSED) {
		snprintf(why, len, "%s", desc);
		return CPRXFER_BLOCKS;
	}
	if (x->type == CPRXFER_TYPE_FD) {
		if (mode == CPRXFER_MODE_FILE) {
			snprintf(
				why, len,
				"%s: an fd cannot be saved to a file (it would not survive a reboot)",
				desc);
			return CPRXFER_BLOCKS;
		}
		if (mode == CPRXFER_MODE_KEXEC)
			return kexec_verdict(k, desc, why, len);
		snprintf(why, len, "%s: the same open file", desc);
		return CPRXFER_TRAVELS;
	}
	/* RAM with an fd */
	if (mode == CPRXFER_MODE_FILE) {
		if (!x->v.ram.path) {
			snprintf(
				why, len,
				"RAM on a %s cannot be saved to a file; use cprxfer_ram_open_file",
				desc);
			return CPRXFER_BLOCKS;
		}
		snprintf(
			why, len,
			"RAM on %s: its contents stay on disk, the file is reopened by path and mapped anew",
			x->v.ram.path);
		return CPRXFER_RECREATE;
	}
	if (mode == CPRXFER_MODE_KEXEC)
		return kexec_verdict(k, desc, why, len);
	snprintf(why, len,
		 "RAM of %" PRIu64 " bytes on a %s: same pages, no copy",
		 x->v.ram.size, desc);
	return CPRXFER_TRAVELS;
}

int cx_preflight_check(const cprxfer_state *st, enum cx_mode m)
{
	const struct cprxfer_blockers *b = st->blockers;
	uint32_t mode = cx_user_mode(m);
	const struct blocker *first = NULL;
	size_t i, more = 0;
	char why[512];

	for (i = 0; b && i < b->n; i++) {
		if (!(b->v[i].modes & mode))
			continue;
		if (first)
			more++;
		else
			first = &b->v[i];
	}
	if (first) {
		if (more)
			return cx_err(
				-EBUSY,
				"%s mode is blocked: %s (and %zu more blockers)",
				mode_name(mode), first->reason, more);
		return cx_err(-EBUSY, "%s mode is blocked: %s", mode_name(mode),
			      first->reason);
	}
	if (m != CX_MODE_KEXEC)
		return 0;
	for (i = 0; i < st->n; i++) {
		const struct cx_entry *x = &st->e[i];

		if (x->type != CPRXFER_TYPE_FD && x->type != CPRXFER_TYPE_RAM &&
		    x->type != CPRXFER_TYPE_FDS)
			continue;
		if (classify(x, mode, why, sizeof(why)) == CPRXFER_BLOCKS)
			return cx_err(-EOPNOTSUPP, "record '%s': %s", x->name,
				      why);
	}
	return 0;
}

/* ---- blockers -------------------------------------------------------- */

CX_EXPORT cprxfer_blockers *cprxfer_blockers_new(void)
{
	cprxfer_blockers *b = calloc(1, sizeof(*b));

	if (!b)
		cx_err(-ENOMEM, "cprxfer_blockers_new: out of memory");
	else
		b->next_id = 1;
	return b;
}

CX_EXPORT void cprxfer_blockers_free(cprxfer_blockers *b)
{
	size_t i;

	if (!b)
		return;
	for (i = 0; i < b->n; i++)
		free(b->v[i].reason);
	free(b->v);
	free(b);
}

CX_EXPORT int cprxfer_blocker_add(cprxfer_blockers *b, uint32_t modes,
				  const char *reason, uint32_t *id)
{
	cx_autofree char *r = NULL;
	size_t len;

	if (!b || !reason)
		return cx_err(-EINVAL, "cprxfer_blocker_add: NULL argument");
	if (!modes || (modes & ~CPRXFER_MODE_ALL))
		return cx_err(
			-EINVAL,
			"cprxfer_blocker_add: mode mask 0x%x names no mode or an unknown one",
			modes);
	len = strnlen(reason, CX_REASON_MAX + 1);
	if (len == 0 || len > CX_REASON_MAX)
		return cx_err(-EINVAL,
			      "cprxfer_blocker_add: reason must be 1..%d bytes",
			      CX_REASON_MAX);
	if (b->next_id == 0)
		return cx_err(-ENOSPC,
			      "cprxfer_blocker_add: blocker ids exhausted");
	if (b->n == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 8;
		struct blocker *v = realloc(b->v, cap * sizeof(*v));

		if (!v)
			return cx_err(-ENOMEM,
				      "cprxfer_blocker_add: out of memory");
		b->v = v;
		b->cap = cap;
	}
	r = strdup(reason);
	if (!r)
		return cx_err(-ENOMEM, "cprxfer_blocker_add: out of memory");
	b->v[b->n].id = b->next_id++;
	b->v[b->n].modes = modes;
	b->v[b->n].reason = cx_steal_ptr(&r);
	if (id)
		*id = b->v[b->n].id;
	b->n++;
	return 0;
}

CX_EXPORT int cprxfer_blocker_remove(cprxfer_blockers *b, uint32_t id)
{
	size_t i;

	if (!b)
		return cx_err(-EINVAL, "cprxfer_blocker_remove: NULL argument");
	for (i = 0; i < b->n && b->v[i].id != id; i++)
		;
	if (i == b->n)
		return cx_err(-ENOENT, "cprxfer_blocker_remove: no blocker %u",
			      id);
	free(b->v[i].reason);
	memmove(&b->v[i], &b->v[i + 1], (b->n - i - 1) * sizeof(b->v[0]));
	b->n--;
	return 0;
}

CX_EXPORT int cprxfer_state_set_blockers(cprxfer_state *st,
					 const cprxfer_blockers *b)
{
	if (!st)
		return cx_err(-EINVAL,
			      "cprxfer_state_set_blockers: NULL state");
	st->blockers = b;
	return 0;
}

/* ---- the report ------------------------------------------------------ */

static int rep_add(struct cprxfer_report *r, const char *name, int verdict,
		   const char *reason)
{
	cx_autofree char *n = NULL;
	cx_autofree char *why = NULL;

	if (r->n == r->cap) {
		size_t cap = r->cap ? 2 * r->cap : 16;
		struct rentry *v = realloc(r->e, cap * sizeof(*v));

		if (!v)
			return cx_err(-ENOMEM, "out of memory");
		r->e = v;
		r->cap = cap;
	}
	if (name && !(n = strdup(name)))
		return cx_err(-ENOMEM, "out of memory");
	why = strdup(reason);
	if (!why)
		return cx_err(-ENOMEM, "out of memory");
	r->e[r->n].name = cx_steal_ptr(&n);
	r->e[r->n].verdict = verdict;
	r->e[r->n].reason = cx_steal_ptr(&why);
	r->n++;
	return 0;
}

static const char *verdict_name(int v)
{
	return v == CPRXFER_TRAVELS    ? "travels"
	       : v == CPRXFER_RECREATE ? "recreate"
				       : "BLOCKS";
}

/* One line per entry, under a summary line. */
static int rep_text(struct cprxfer_report *r, uint32_t mode, int blocking)
{
	char *buf = NULL;
	size_t len = 0, i;
	FILE *f = open_memstream(&buf, &len);

	if (!f)
		return cx_err(-ENOMEM, "out of memory");
	fprintf(f, "%s mode: %s (%zu entries, %d blocking)\n", mode_name(mode),
		blocking ? "BLOCKED" : "possible", r->n, blocking);
	for (i = 0; i < r->n; i++) {
		const struct rentry *x = &r->e[i];

		fprintf(f, "  %-8s  ", verdict_name(x->verdict));
		if (x->name)
			fprintf(f, "'%s': %s\n", x->name, x->reason);
		else
			fprintf(f, "blocker: %s\n", x->reason);
	}
	if (fclose(f) != 0) {
		free(buf);
		return cx_err(-ENOMEM, "out of memory");
	}
	r->text = buf;
	return 0;
}

CX_EXPORT void cprxfer_report_free(cprxfer_report *r)
{
	size_t i;

	if (!r)
		return;
	for (i = 0; i < r->n; i++) {
		free(r->e[i].name);
		free(r->e[i].reason);
	}
	free(r->e);
	free(r->text);
	free(r);
}

CX_DEFINE_FREE(cprxfer_report, cprxfer_report_free)

CX_EXPORT int cprxfer_preflight(const cprxfer_state *st, uint32_t mode,
				cprxfer_report **out)
{
	cx_auto(cprxfer_report) *r = NULL;
	const struct cprxfer_blockers *b;
	char why[512];
	int blocking = 0, rc;
	size_t i;

	if (!st || !out)
		return cx_err(-EINVAL, "cprxfer_preflight: NULL argument");
	if (!mode_name(mode))
		return cx_err(
			-EINVAL,
			"cprxfer_preflight: 0x%x is not one CPRXFER_MODE_* bit",
			mode);
	r = calloc(1, sizeof(*r));
	if (!r)
		return cx_err(-ENOMEM, "cprxfer_preflight: out of memory");
	for (i = 0; i < st->n; i++) {
		int v = classify(&st->e[i], mode, why, sizeof(why));

		blocking += v == CPRXFER_BLOCKS;
		rc = rep_add(r, st->e[i].name, v, why);
		if (rc < 0)
			return cx_err_prefix(rc, "cprxfer_preflight");
	}
	b = st->blockers;
	for (i = 0; b && i < b->n; i++) {
		if (!(b->v[i].modes & mode))
			continue;
		blocking++;
		rc = rep_add(r, NULL, CPRXFER_BLOCKS, b->v[i].reason);
		if (rc < 0)
			return cx_err_prefix(rc, "cprxfer_preflight");
	}
	rc = rep_text(r, mode, blocking);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_preflight");
	*out = cx_steal_ptr(&r);
	return blocking;
}

CX_EXPORT size_t cprxfer_report_count(const cprxfer_report *r)
{
	return r ? r->n : 0;
}

CX_EXPORT int cprxfer_report_entry(const cprxfer_report *r, size_t i,
				   const char **name, int *verdict,
				   const char **reason)
{
	if (!r)
		return cx_err(-EINVAL, "cprxfer_report_entry: NULL report");
	if (i >= r->n)
		return cx_err(
			-ERANGE,
			"cprxfer_report_entry: index %zu, report has %zu entries",
			i, r->n);
	if (name)
		*name = r->e[i].name;
	if (verdict)
		*verdict = r->e[i].verdict;
	if (reason)
		*reason = r->e[i].reason;
	return 0;
}

CX_EXPORT const char *cprxfer_report_text(const cprxfer_report *r)
{
	return r ? r->text : "";
}
