/* SPDX-License-Identifier: MIT */
/*
 * Restart mode: the service manager's file descriptor store holds the
 * state while no instance of the service runs.
 *
 * A save pushes, each with FDSTORE=1 and its own FDNAME=, every fd of the
 * state, then a manifest, then the state stream itself (the sealed memfd
 * of cprxfer_save_memfd), and waits for the manager with BARRIER=1. The
 * next instance receives them all through LISTEN_FDS/LISTEN_FDNAMES,
 * picks the newest complete save, hands the stream and the fds in stream
 * order to cprxfer_load_memfd (which checks the stream as every mode
 * does), then removes what it consumed with FDSTOREREMOVE=1. Fds whose
 * names are not ours are left alone: open, and in the store.
 *
 * Names (FDNAME= allows printable ASCII but ':', at most 255 bytes):
 *   cxs.<nonce>            the state stream
 *   cxm.<nonce>            the manifest
 *   cxf.<nonce>.<i>.<name> the stream's fd number i (record <name>)
 *   cxk.<name>             a long-lived fd kept with cprxfer_sd_keep
 * <nonce> is the save's CLOCK_REALTIME in ns, 16 hex digits, so that the
 * newest save sorts last. In <name>, the bytes A-Z a-z 0-9 _ - . stand
 * for themselves and every other byte is %XX (upper-case hex). A cxf
 * name is cut at 255 bytes (the stream holds the real name); a cxk name
 * that does not fit is refused.
 *
 * The manager keeps one copy of each open file: an fd already in the
 * store (kept, or named twice by the state) is dropped, name and all.
 * The manifest lists each stream fd's device and inode, so that the
 * loader finds such an fd among those it received by identity.
 */
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cprxfer/systemd.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-login.h>

#include "cleanup.h"
#include "error.h"

#define FDNAME_MAX   255
#define NONCE_LEN    16
#define MAN_MAGIC    "CXSDMAN1"
#define BARRIER_USEC (5 * 1000 * 1000ull)
#define DBUS_USEC    (2 * 1000 * 1000ull)

enum kind {
	R_UNKNOWN, /* not ours: left alone */
	R_STATE,
	R_MAP,
	R_FD,
	R_KEPT
};

struct rfd {
	int fd;
	char *name;
	enum kind kind;
	char nonce[NONCE_LEN + 1];
	unsigned long idx; /* R_FD */
	bool held;	   /* ours to close */
};

struct cprxfer_sd {
	struct rfd *v;
	size_t n;
	size_t nkept;  /* fds kept in the store, received or pushed */
	long long max; /* the store's size, -1: unknown */
};

struct ident {
	uint64_t dev, ino;
};

/* ---- names ----------------------------------------------------------- */

static bool plain(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
}

/* Append the escaped form of s to out (len bytes used, cap in all). */
static bool escape(const char *s, char *out, size_t len, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";

	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (plain(c) && len + 1 < cap) {
			out[len++] = (char)c;
		} else if (!plain(c) && len + 3 < cap) {
			out[len++] = '%';
			out[len++] = hex[c >> 4];
			out[len++] = hex[c & 15];
		} else {
			out[len] = 0;
			return false; /* cut */
		}
	}
	out[len] = 0;
	return true;
}

static bool is_nonce(const char *s)
{
	size_t i;

	for (i = 0; i < NONCE_LEN; i++)
		if (!((s[i] >= '0' && s[i] <= '9') ||
		      (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

static void classify(struct rfd *r)
{
	const char *s = r->name;
	char *end;

	r->kind = R_UNKNOWN;
	if (!strncmp(s, "cxk.", 4) && s[4]) {
		r->kind = R_KEPT;
		return;
	}
	if (strlen(s) < 4 + NONCE_LEN || s[3] != '.' || !is_nonce(s + 4))
		return;
	memcpy(r->nonce, s + 4, NONCE_LEN);
	r->nonce[NONCE_LEN] = 0;
	s += 4 + NONCE_LEN;
	if (!strncmp(r->name, "cxs.", 4) && !*s)
		r->kind = R_STATE;
	else if (!strncmp(r->name, "cxm.", 4) && !*s)
		r->kind = R_MAP;
	else if (!strncmp(r->name, "cxf.", 4) && *s == '.' && s[1] >= '0' &&
		 s[1] <= '9') {
		r->idx = strtoul(s + 1, &end, 10);
		if (*end == '.' || !*end)
			r->kind = R_FD;
	}
}

/* ---- talking to the manager ----------------------------------------- */

static int no_manager(void)
{
	return cx_err(-ENOTCONN,
		      "not run by a service manager: NOTIFY_SOCKET is not set");
}

static int push(const char *fdname, int fd)
{
	char msg[32 + FDNAME_MAX];
	int r;

	snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", fdname);
	r = sd_pid_notify_with_fds(0, 0, msg, &fd, 1);
	if (r == 0)
		return no_manager();
	if (r < 0)
		return cx_err(r, "pushing '%s' to the fd store: %s", fdname,
			      strerror(-r));
	return 0;
}

static int drop(const char *fdname)
{
	char msg[32 + FDNAME_MAX];
	int r;

	snprintf(msg, sizeof(msg), "FDSTOREREMOVE=1\nFDNAME=%s", fdname);
	r = sd_pid_notify(0, 0, msg);
	if (r == 0)
		return no_manager();
	if (r < 0)
		return cx_err(r, "removing '%s' from the fd store: %s", fdname,
			      strerror(-r));
	return 0;
}

/* Every message sent before has been processed by the manager. */
static int barrier(void)
{
	int r = sd_notify_barrier(0, BARRIER_USEC);

	if (r == 0)
		return no_manager();
	if (r == -ETIMEDOUT)
		return cx_err(
			-ETIMEDOUT,
			"the service manager did not answer BARRIER=1 within %llu ms",
			BARRIER_USEC / 1000);
	if (r < 0)
		return cx_err(r, "BARRIER=1: %s", strerror(-r));
	return 0;
}

/* FileDescriptorStoreMax= of our unit, over D-Bus; -1 if unknown. */
static long long store_max_dbus(void)
{
	sd_bus_error err = SD_BUS_ERROR_NULL;
	cx_autofree char *unit = NULL;
	cx_autofree char *path = NULL;
	sd_bus *bus = NULL;
	uint32_t max = 0;
	long long v = -1;

	if (sd_pid_get_unit(0, &unit) < 0 ||
	    sd_bus_path_encode("/org/freedesktop/systemd1/unit", unit, &path) <
		    0 ||
	    sd_bus_open_system(&bus) < 0)
		goto out;
	sd_bus_set_method_call_timeout(bus, DBUS_USEC);
	if (sd_bus_get_property_trivial(bus, "org.freedesktop.systemd1", path,
					"org.freedesktop.systemd1.Service",
					"FileDescriptorStoreMax", &err, 'u',
					&max) >= 0)
		v = max;
out:
	sd_bus_error_free(&err);
	sd_bus_flush_close_unref(bus);
	return v;
}

/* $FDSTORE (systemd 254 and later), else D-Bus, else -1. */
static long long store_max(void)
{
	const char *s = getenv("FDSTORE");
	char *end;
	unsigned long long v;

	if (s && *s) {
		errno = 0;
		v = strtoull(s, &end, 10);
		if (!errno && !*end)
			return (long long)v;
	}
	return store_max_dbus();
}

static int room(const cprxfer_sd *sd, size_t nfds)
{
	size_t need = nfds + 2 + sd->nkept;

	if (sd->max == 0)
		return cx_err(
			-ENOSPC,
			"the fd store is disabled (FileDescriptorStoreMax=0): a save needs %zu fds",
			need);
	if (sd->max > 0 && (unsigned long long)sd->max < need)
		return cx_err(
			-ENOSPC,
			"the fd store holds at most %lld fds (FileDescriptorStoreMax=), a save needs %zu (%zu kept, %zu of the state, 2 of its own)",
			sd->max, need, sd->nkept, nfds);
	return 0;
}

/* ---- open / close ----------------------------------------------------- */

CX_EXPORT void cprxfer_sd_close(cprxfer_sd *sd)
{
	size_t i;

	if (!sd)
		return;
	for (i = 0; i < sd->n; i++) {
		if (sd->v[i].held)
			cx_close(sd->v[i].fd);
		free(sd->v[i].name);
	}
	free(sd->v);
	free(sd);
}

CX_DEFINE_FREE(cprxfer_sd, cprxfer_sd_close)

static void free_names(char **names)
{
	char **p;

	for (p = names; p && *p; p++)
		free(*p);
	free(names);
}

CX_EXPORT int cprxfer_sd_open(cprxfer_sd **out)
{
	cx_auto(cprxfer_sd) *sd = NULL;
	char **names = NULL;
	int n, i;

	if (!out)
		return cx_err(-EINVAL, "cprxfer_sd_open: NULL output");
	sd = calloc(1, sizeof(*sd));
	if (!sd)
		return cx_err(-ENOMEM, "cprxfer_sd_open: out of memory");
	sd->max = -1;
	n = sd_listen_fds_with_names(0, &names);
	if (n < 0)
		return cx_err(n, "cprxfer_sd_open: LISTEN_FDS: %s",
			      strerror(-n));
	if (n > 0) {
		sd->v = calloc((size_t)n, sizeof(*sd->v));
		if (!sd->v) {
			free_names(names);
			return cx_err(-ENOMEM,
				      "cprxfer_sd_open: out of memory");
		}
	}
	for (i = 0; i < n; i++) {
		struct rfd *r = &sd->v[sd->n++];

		r->fd = SD_LISTEN_FDS_START + i;
		r->name = strdup(names && names[i] ? names[i] : "unknown");
		if (!r->name) {
			sd->n--;
			free_names(names);
			return cx_err(-ENOMEM,
				      "cprxfer_sd_open: out of memory");
		}
		classify(r);
		r->held = r->kind != R_UNKNOWN;
		sd->nkept += r->kind == R_KEPT;
	}
	free_names(names);
	*out = cx_steal_ptr(&sd);
	return 0;
}

CX_EXPORT int cprxfer_sd_check(cprxfer_sd *sd, size_t nfds)
{
	int rc;

	if (!sd)
		return cx_err(-EINVAL, "cprxfer_sd_check: NULL argument");
	if (!getenv("NOTIFY_SOCKET"))
		return cx_err_prefix(no_manager(), "cprxfer_sd_check");
	sd->max = store_max();
	rc = room(sd, nfds);
	if (rc == 0)
		rc = barrier();
	return rc < 0 ? cx_err_prefix(rc, "cprxfer_sd_check") : 0;
}

/* ---- kept fds ---------------------------------------------------------- */

static int kept_name(const char *name, char *out)
{
	memcpy(out, "cxk.", 4);
	if (!name || !*name)
		return cx_err(-EINVAL, "empty name");
	if (!escape(name, out, 4, FDNAME_MAX + 1))
		return cx_err(
			-ENAMETOOLONG,
			"name '%s' escapes to more than %d bytes of FDNAME",
			name, FDNAME_MAX);
	return 0;
}

static int ident_of(int fd, struct ident *id)
{
	struct stat s;

	if (fstat(fd, &s) < 0)
		return cx_err(-errno, "fstat of fd %d: %s", fd,
			      strerror(errno));
	id->dev = s.st_dev;
	id->ino = s.st_ino;
	return 0;
}

CX_EXPORT int cprxfer_sd_keep(cprxfer_sd *sd, const char *name, int fd)
{
	char fdname[FDNAME_MAX + 1];
	struct ident a = { 0, 0 }, b;
	bool replace = false;
	size_t i;
	int rc;

	if (!sd)
		return cx_err(-EINVAL, "cprxfer_sd_keep: NULL argument");
	rc = kept_name(name, fdname);
	if (rc == 0)
		rc = ident_of(fd, &a);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_sd_keep");
	for (i = 0; i < sd->n; i++) {
		struct rfd *r = &sd->v[i];

		if (r->kind != R_KEPT || strcmp(r->name, fdname))
			continue;
		if (ident_of(r->fd, &b) == 0 && a.dev == b.dev &&
		    a.ino == b.ino)
			return 0; /* already there */
		replace = true;
	}
	if (replace)
		rc = drop(fdname);
	if (rc == 0)
		rc = push(fdname, fd);
	if (rc == 0)
		rc = barrier();
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_sd_keep");
	if (!replace)
		sd->nkept++;
	return 0;
}

CX_EXPORT int cprxfer_sd_kept(cprxfer_sd *sd, const char *name, int *fd)
{
	char fdname[FDNAME_MAX + 1];
	size_t i;
	int rc;

	if (!sd || !fd)
		return cx_err(-EINVAL, "cprxfer_sd_kept: NULL argument");
	rc = kept_name(name, fdname);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_sd_kept");
	for (i = 0; i < sd->n; i++) {
		struct rfd *r = &sd->v[i];

		if (r->kind == R_KEPT && r->held && !strcmp(r->name, fdname)) {
			r->held = false;
			*fd = r->fd;
			return 0;
		}
	}
	return cx_err(
		-ENOENT,
		"cprxfer_sd_kept: no fd named '%s' was handed back at start",
		name);
}

/* ---- save ---------------------------------------------------------------- */

static uint64_t fnv(const void *p, size_t n)
{
	const unsigned char *b = p;
	uint64_t h = 0xcbf29ce484222325ull;

	while (n--) {
		h ^= *b++;
		h *= 0x100000001b3ull;
	}
	return h;
}

/* The manifest: magic, count, (dev, ino) per fd, FNV-1a of all that. */
static int make_manifest(const int *fds, size_t n, int *out)
{
	size_t len = 16 + n * 16 + 8, i;
	cx_autofree uint8_t *buf = malloc(len);
	cx_autoclose int mfd = -1;
	uint64_t h, cnt = n;
	int rc;

	if (!buf)
		return cx_err(-ENOMEM, "out of memory");
	memcpy(buf, MAN_MAGIC, 8);
	memcpy(buf + 8, &cnt, 8);
	for (i = 0; i < n; i++) {
		struct ident id;

		rc = ident_of(fds[i], &id);
		if (rc < 0)
			return rc;
		memcpy(buf + 16 + 16 * i, &id.dev, 8);
		memcpy(buf + 24 + 16 * i, &id.ino, 8);
	}
	h = fnv(buf, len - 8);
	memcpy(buf + len - 8, &h, 8);
	mfd = memfd_create("cprxfer-manifest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (mfd < 0)
		return cx_err(-errno, "memfd_create: %s", strerror(errno));
	if (write(mfd, buf, len) != (ssize_t)len)
		return cx_err(-EIO, "writing the manifest");
	if (fcntl(mfd, F_ADD_SEALS,
		  F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		return cx_err(-errno, "sealing the manifest: %s",
			      strerror(errno));
	*out = cx_steal_fd(&mfd);
	return 0;
}

/* The record name of each stream fd, in order (NULL if unknown). */
static const char **fd_names(const cprxfer_state *st, size_t nfds)
{
	size_t i, k = 0, n = cprxfer_state_count(st);
	const char **v = calloc(nfds ? nfds : 1, sizeof(*v));

	for (i = 0; v && i < n && k < nfds; i++) {
		const char *name;
		int type;

		const int *f;
		size_t m;

		if (cprxfer_state_entry(st, i, &name, &type) < 0)
			continue;
		if (type == CPRXFER_TYPE_FD || type == CPRXFER_TYPE_RAM)
			v[k++] = name;
		/* An fd array: its name for each of its fds. */
		if (type == CPRXFER_TYPE_FDS &&
		    cprxfer_get_fds(st, name, &f, &m) == 0)
			while (m-- && k < nfds)
				v[k++] = name;
	}
	return v;
}

CX_EXPORT int cprxfer_sd_save(cprxfer_sd *sd, const cprxfer_state *st,
			      uint32_t mode)
{
	char nonce[NONCE_LEN + 1], fdname[FDNAME_MAX + 1];
	cx_autoclose int memfd = -1;
	cx_autoclose int mfd = -1;
	cx_autofree int *fds = NULL;
	cx_autofree const char **names = NULL;
	struct timespec ts;
	size_t n = 0, i, pushed = 0;
	int rc;

	if (!sd || !st)
		return cx_err(-EINVAL, "cprxfer_sd_save: NULL argument");
	if (!getenv("NOTIFY_SOCKET"))
		return cx_err_prefix(no_manager(), "cprxfer_sd_save");
	/* Blockers and what the mode carries: checked in here, first. */
	rc = cprxfer_save_memfd(st, mode, &memfd, &fds, &n);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_sd_save");
	if (sd->max < 0 && getenv("FDSTORE"))
		sd->max = store_max();
	rc = room(sd, n);
	if (rc == 0)
		rc = make_manifest(fds, n, &mfd);
	names = fd_names(st, n);
	if (rc == 0 && !names)
		rc = cx_err(-ENOMEM, "out of memory");
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_sd_save");
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(nonce, sizeof(nonce), "%016" PRIx64,
		 (uint64_t)(ts.tv_sec * 1000000000ll + ts.tv_nsec));
	/* The fds, the manifest, then the stream: the commit point. */
	for (i = 0; rc == 0 && i < n + 2; i++) {
		int len = snprintf(fdname, sizeof(fdname), "cx%c.%s",
				   i < n    ? 'f'
				   : i == n ? 'm'
					    : 's',
				   nonce);

		if (i < n) {
			len += snprintf(fdname + len, sizeof(fdname) - len,
					".%zu", i);
			if (names[i]) {
				fdname[len++] = '.';
				escape(names[i], fdname, len, sizeof(fdname));
			}
		}
		rc = push(fdname, i < n ? fds[i] : i == n ? mfd : memfd);
		pushed += rc == 0;
	}
	if (rc == 0)
		rc = barrier();
	if (rc < 0 && pushed) {
		/* Best effort: no half save left behind. */
		snprintf(fdname, sizeof(fdname), "cxm.%s", nonce);
		drop(fdname);
		for (i = 0; i < pushed && i < n; i++) {
			int len = snprintf(fdname, sizeof(fdname), "cxf.%s.%zu",
					   nonce, i);

			if (names[i]) {
				fdname[len++] = '.';
				escape(names[i], fdname, len, sizeof(fdname));
			}
			drop(fdname);
		}
	}
	return rc < 0 ? cx_err_prefix(rc, "cprxfer_sd_save") : 0;
}

/* ---- load ---------------------------------------------------------------- */

static int read_manifest(int fd, struct ident **out, size_t *n)
{
	struct stat s;
	cx_autofree uint8_t *buf = NULL;
	cx_autofree struct ident *v = NULL;
	uint64_t cnt, h;
	size_t i;

	if (fstat(fd, &s) < 0 || s.st_size < 24 || s.st_size > (1 << 26))
		return cx_err(-EBADMSG, "manifest of unexpected size");
	buf = malloc((size_t)s.st_size);
	if (!buf)
		return cx_err(-ENOMEM, "out of memory");
	if (pread(fd, buf, (size_t)s.st_size, 0) != s.st_size)
		return cx_err(-EIO, "reading the manifest");
	memcpy(&cnt, buf + 8, 8);
	memcpy(&h, buf + s.st_size - 8, 8);
	if (memcmp(buf, MAN_MAGIC, 8) ||
	    cnt != ((uint64_t)s.st_size - 24) / 16 ||
	    16 + cnt * 16 + 8 != (uint64_t)s.st_size ||
	    h != fnv(buf, (size_t)s.st_size - 8))
		return cx_err(-EBADMSG, "manifest damaged");
	v = calloc(cnt ? cnt : 1, sizeof(*v));
	if (!v)
		return cx_err(-ENOMEM, "out of memory");
	for (i = 0; i < cnt; i++) {
		memcpy(&v[i].dev, buf + 16 + 16 * i, 8);
		memcpy(&v[i].ino, buf + 24 + 16 * i, 8);
	}
	*out = cx_steal_ptr(&v);
	*n = cnt;
	return 0;
}

/* Stream fd i: by its name, else by identity among all received. */
static int find_fd(const cprxfer_sd *sd, const char *nonce, size_t i,
		   const struct ident *want)
{
	size_t k;

	for (k = 0; k < sd->n; k++) {
		const struct rfd *r = &sd->v[k];

		if (r->kind == R_FD && r->idx == i && !strcmp(r->nonce, nonce))
			return r->fd;
	}
	for (k = 0; k < sd->n; k++) {
		const struct rfd *r = &sd->v[k];
		struct ident id;

		if (r->kind == R_STATE || r->kind == R_MAP)
			continue;
		if (ident_of(r->fd, &id) == 0 && id.dev == want->dev &&
		    id.ino == want->ino)
			return r->fd;
	}
	return cx_err(
		-EBADMSG,
		"fd %zu of the saved state is not in the fd store (FileDescriptorStoreMax= too small when it was saved?)",
		i);
}

/*
 * Remove from the store every save's fds (ours, not kept), then close
 * them. If the manager cannot be told, nothing is closed.
 */
static int consume(cprxfer_sd *sd)
{
	size_t i;
	int rc = 0, any = 0;

	for (i = 0; rc == 0 && i < sd->n; i++) {
		struct rfd *r = &sd->v[i];

		if (r->kind != R_STATE && r->kind != R_MAP && r->kind != R_FD)
			continue;
		rc = drop(r->name);
		any = 1;
	}
	if (rc == 0 && any)
		rc = barrier();
	if (rc < 0)
		return rc;
	for (i = 0; i < sd->n; i++) {
		struct rfd *r = &sd->v[i];

		if (r->kind != R_STATE && r->kind != R_MAP && r->kind != R_FD)
			continue;
		if (r->held)
			cx_close(r->fd);
		r->held = false;
		r->kind = R_UNKNOWN;
		r->fd = -1;
	}
	return 0;
}

CX_EXPORT int cprxfer_sd_load(cprxfer_sd *sd, const cprxfer_opts *o,
			      cprxfer_state **out)
{
	cx_autofree struct ident *ids = NULL;
	cx_autofree int *fds = NULL;
	const struct rfd *state = NULL, *map = NULL;
	cprxfer_state *st = NULL;
	size_t i, n = 0;
	int rc;

	if (!sd || !out)
		return cx_err(-EINVAL, "cprxfer_sd_load: NULL argument");
	for (i = 0; i < sd->n; i++)
		if (sd->v[i].kind == R_STATE && sd->v[i].held &&
		    (!state || strcmp(sd->v[i].nonce, state->nonce) > 0))
			state = &sd->v[i];
	if (!state) {
		/* Orphans of an interrupted save, if any, go. */
		consume(sd);
		return cx_err(
			-ENOENT,
			"cprxfer_sd_load: no saved state in the fd store");
	}
	for (i = 0; i < sd->n; i++)
		if (sd->v[i].kind == R_MAP &&
		    !strcmp(sd->v[i].nonce, state->nonce))
			map = &sd->v[i];
	if (!map)
		return cx_err(
			-EBADMSG,
			"cprxfer_sd_load: state %s has no manifest in the fd store",
			state->name);
	rc = read_manifest(map->fd, &ids, &n);
	if (rc == 0 && n > sd->n)
		rc = cx_err(-EBADMSG, "manifest lists %zu fds, %zu received", n,
			    sd->n);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_sd_load");
	fds = calloc(n ? n : 1, sizeof(*fds));
	if (!fds)
		return cx_err(-ENOMEM, "cprxfer_sd_load: out of memory");
	for (i = 0; i < n; i++) {
		fds[i] = find_fd(sd, state->nonce, i, &ids[i]);
		if (fds[i] < 0)
			return cx_err_prefix(fds[i], "cprxfer_sd_load");
	}
	rc = cprxfer_load_memfd(state->fd, fds, n, o, &st);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_sd_load");
	rc = consume(sd);
	if (rc < 0) {
		cprxfer_state_free(st);
		return cx_err_prefix(rc, "cprxfer_sd_load");
	}
	*out = st;
	return 0;
}
