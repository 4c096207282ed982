/* SPDX-License-Identifier: MIT */
/*
 * The state map. Entries live in an array in insertion order; an
 * open-addressing table of indices makes lookups O(1), so a state of a
 * million entries builds and loads in linear time.
 */
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "state.h"

static uint64_t name_hash(const char *s, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */

	while (n--) {
		h ^= (unsigned char)*s++;
		h *= 0x100000001b3ull;
	}
	return h ^ (h >> 29);
}

int cx_name_check(const char *what, const char *name, size_t len)
{
	if (!name)
		return cx_err(-EINVAL, "%s: NULL name", what);
	if (len == 0)
		return cx_err(-EINVAL, "%s: empty name", what);
	if (len > CPRXFER_NAME_MAX)
		return cx_err(-ENAMETOOLONG, "%s: name of %zu bytes exceeds %d",
			      what, len, CPRXFER_NAME_MAX);
	if (memchr(name, 0, len))
		return cx_err(-EINVAL, "%s: name contains a NUL byte", what);
	return 0;
}

/* A table slot keeps the name's hash beside the entry index, so a probe
 * touches an entry only when the hashes match. */
static inline uint32_t slot_index(uint64_t slot)
{
	return (uint32_t)slot;
}

static inline uint64_t slot_make(uint64_t h, size_t index)
{
	return (h & 0xffffffff00000000ull) | (uint32_t)(index + 1);
}

static size_t probe(const cprxfer_state *st, const char *name, size_t len,
		    uint64_t h, bool *found)
{
	size_t mask = st->tabcap - 1;
	size_t i = h & mask;

	for (;; i = (i + 1) & mask) {
		uint64_t slot = st->tab[i];
		const struct cx_entry *e;

		if (!slot) {
			*found = false;
			return i;
		}
		if ((slot ^ h) >> 32)
			continue;
		e = &st->e[slot_index(slot) - 1];
		if (e->name_len == len && !memcmp(e->name, name, len)) {
			*found = true;
			return i;
		}
	}
}

static int rehash(cprxfer_state *st, size_t tabcap)
{
	uint64_t *tab = calloc(tabcap, sizeof(*tab));
	uint64_t *old = st->tab;
	size_t i;

	if (!tab)
		return -ENOMEM;
	st->tab = tab;
	st->tabcap = tabcap;
	for (i = 0; i < st->n; i++) {
		uint64_t h = name_hash(st->e[i].name, st->e[i].name_len);
		bool found;

		tab[probe(st, st->e[i].name, st->e[i].name_len, h, &found)] =
			slot_make(h, i);
	}
	free(old);
	return 0;
}

static char *name_alloc(cprxfer_state *st, size_t n)
{
	struct cx_chunk *c = st->names;

	if (!c || c->cap - c->used < n) {
		size_t cap = 16384 - sizeof(*c);

		c = malloc(sizeof(*c) + cap);
		if (!c)
			return NULL;
		c->used = 0;
		c->cap = cap;
		c->next = st->names;
		st->names = c;
	}
	c->used += n;
	return c->data + c->used - n;
}

int cx_state_reserve(cprxfer_state *st, size_t n)
{
	size_t want = st->n + n, cap, tabcap;

	if (want < st->n || want > UINT32_MAX - 1)
		return cx_err(-E2BIG, "state: %zu entries is too many", want);
	if (want > st->cap) {
		struct cx_entry *e;

		cap = st->cap ? st->cap : 16;
		while (cap < want)
			cap *= 2;
		e = realloc(st->e, cap * sizeof(*e));
		if (!e)
			return cx_err(-ENOMEM,
				      "state: out of memory for %zu entries",
				      cap);
		st->e = e;
		st->cap = cap;
	}
	tabcap = st->tabcap ? st->tabcap : 32;
	while (tabcap < 2 * want)
		tabcap *= 2;
	if (tabcap != st->tabcap && rehash(st, tabcap) < 0)
		return cx_err(-ENOMEM, "state: out of memory for the index");
	return 0;
}

int cx_state_append(cprxfer_state *st, const char *name, size_t len, int type,
		    struct cx_entry **out)
{
	struct cx_entry *e;
	bool found;
	size_t slot;
	uint64_t h;
	int rc;

	if (st->n + 1 > st->cap || 2 * (st->n + 1) > st->tabcap) {
		rc = cx_state_reserve(st, st->n < 16 ? 16 : st->n);
		if (rc < 0)
			return rc;
	}
	h = name_hash(name, len);
	slot = probe(st, name, len, h, &found);
	if (found)
		return cx_err(-EEXIST, "record '%.*s': name already present",
			      (int)len, name);
	e = &st->e[st->n];
	memset(e, 0, sizeof(*e));
	e->name = name_alloc(st, len + 1);
	if (!e->name)
		return cx_err(-ENOMEM, "record '%.*s': out of memory", (int)len,
			      name);
	memcpy(e->name, name, len);
	e->name[len] = 0;
	e->name_len = (uint8_t)len;
	e->type = (uint8_t)type;
	st->tab[slot] = slot_make(h, st->n++);
	*out = e;
	return 0;
}

static void entry_clear(struct cx_entry *e)
{
	switch (e->type) {
	case CPRXFER_TYPE_BLOB:
	case CPRXFER_TYPE_STR:
		free(e->v.blob.data);
		break;
	case CPRXFER_TYPE_FD:
		if (e->owns_fd)
			cx_close(e->v.fd);
		break;
	case CPRXFER_TYPE_RAM:
		if (e->owns_fd)
			cx_close(e->v.ram.fd);
		free(e->v.ram.path);
		break;
	case CPRXFER_TYPE_FDS:
		if (e->owns_fd && e->v.fda.fds)
			cx_close_all(e->v.fda.fds, e->v.fda.n);
		free(e->v.fda.fds);
		free(e->v.fda.ids);
		break;
	}
}

void cx_state_pop(cprxfer_state *st)
{
	struct cx_entry *e = &st->e[st->n - 1];
	bool found;
	size_t mask = st->tabcap - 1, i, j;

	i = probe(st, e->name, e->name_len, name_hash(e->name, e->name_len),
		  &found);
	entry_clear(e);
	st->n--;
	/* Backward-shift deletion keeps every probe chain intact. */
	st->tab[i] = 0;
	for (j = (i + 1) & mask; st->tab[j]; j = (j + 1) & mask) {
		uint64_t slot = st->tab[j];
		const struct cx_entry *o = &st->e[slot_index(slot) - 1];
		size_t home = name_hash(o->name, o->name_len) & mask;

		if (((j - home) & mask) >= ((j - i) & mask)) {
			st->tab[i] = slot;
			st->tab[j] = 0;
			i = j;
		}
	}
}

struct cx_entry *cx_state_find(const cprxfer_state *st, const char *name,
			       size_t len)
{
	bool found;
	size_t slot;

	if (!st->n)
		return NULL;
	slot = probe(st, name, len, name_hash(name, len), &found);
	return found ? &st->e[slot_index(st->tab[slot]) - 1] : NULL;
}

int cx_entry_fd(const struct cx_entry *e)
{
	if (e->type == CPRXFER_TYPE_FD)
		return e->v.fd;
	if (e->type == CPRXFER_TYPE_RAM)
		return e->v.ram.fd;
	return -1;
}

size_t cx_entry_fds(const struct cx_entry *e, const int **fds)
{
	switch (e->type) {
	case CPRXFER_TYPE_FD:
		*fds = &e->v.fd;
		return e->v.fd >= 0;
	case CPRXFER_TYPE_RAM:
		*fds = &e->v.ram.fd;
		return e->v.ram.fd >= 0;
	case CPRXFER_TYPE_FDS:
		*fds = e->v.fda.fds;
		return e->v.fda.fds ? e->v.fda.n : 0;
	}
	*fds = NULL;
	return 0;
}

void cx_entry_note_fd(struct cx_entry *e)
{
	struct stat s;

	e->fd_id = fstat(cx_entry_fd(e), &s) == 0;
	e->dev = e->fd_id ? (uint64_t)s.st_dev : 0;
	e->ino = e->fd_id ? (uint64_t)s.st_ino : 0;
}

/* Each fd of a borrowed array against its device and inode at put. */
static int check_array(const struct cx_entry *e)
{
	const uint64_t *id = e->v.fda.ids;
	struct stat s;
	size_t i;

	for (i = 0; id && e->v.fda.fds && i < e->v.fda.n; i++) {
		int fd = e->v.fda.fds[i];

		if (fstat(fd, &s) < 0) {
			int err = errno;

			return cx_err(
				-err, "record '%s': fd %d (index %zu): %s",
				e->name, fd, i,
				err == EBADF ? "is not open" : strerror(err));
		}
		if ((uint64_t)s.st_dev != id[2 * i] ||
		    (uint64_t)s.st_ino != id[2 * i + 1])
			return cx_err(
				-ESTALE,
				"record '%s': fd %d (index %zu) is no longer the file that was put (closed and its number reused?): refusing to send another file under its name",
				e->name, fd, i);
	}
	return 0;
}

int cx_entry_check_fd(const struct cx_entry *e)
{
	int fd = cx_entry_fd(e);
	struct stat s;

	if (e->type == CPRXFER_TYPE_FDS && !e->owns_fd)
		return check_array(e);

	if (e->owns_fd || !e->fd_id || fd < 0)
		return 0;
	if (fstat(fd, &s) < 0) {
		int err = errno;

		return cx_err(-err, "record '%s': fd %d: %s", e->name, fd,
			      err == EBADF ? "is not open" : strerror(err));
	}
	if ((uint64_t)s.st_dev != e->dev || (uint64_t)s.st_ino != e->ino)
		return cx_err(
			-ESTALE,
			"record '%s': fd %d is no longer the file that was put (closed and its number reused?): refusing to send another file under its name",
			e->name, fd);
	return 0;
}

size_t cx_state_nfds(const cprxfer_state *st)
{
	const int *fds;
	size_t i, n = 0;

	for (i = 0; i < st->n; i++)
		n += cx_entry_fds(&st->e[i], &fds);
	return n;
}

CX_EXPORT cprxfer_state *cprxfer_state_new(void)
{
	cprxfer_state *st = calloc(1, sizeof(*st));

	if (!st)
		cx_err(-ENOMEM, "cprxfer_state_new: out of memory");
	return st;
}

CX_EXPORT void cprxfer_state_free(cprxfer_state *st)
{
	size_t i;

	if (!st)
		return;
	for (i = 0; i < st->n; i++)
		entry_clear(&st->e[i]);
	while (st->names) {
		struct cx_chunk *c = st->names;

		st->names = c->next;
		free(c);
	}
	free(st->e);
	free(st->tab);
	free(st->owned);
	free(st);
}

/* Validate (st, name) at the boundary and append an entry of type. */
static int put(cprxfer_state *st, const char *what, const char *name, int type,
	       struct cx_entry **out)
{
	int rc;

	if (!st)
		return cx_err(-EINVAL, "%s: NULL state", what);
	rc = cx_name_check(what, name, name ? strnlen(name, 256) : 0);
	if (rc < 0)
		return rc;
	rc = cx_state_append(st, name, strlen(name), type, out);
	if (rc < 0)
		return cx_err_prefix(rc, "%s", what);
	return 0;
}

CX_EXPORT int cprxfer_put_u64(cprxfer_state *st, const char *name, uint64_t v)
{
	struct cx_entry *e;
	int rc = put(st, "cprxfer_put_u64", name, CPRXFER_TYPE_U64, &e);

	if (rc == 0)
		e->v.u64 = v;
	return rc;
}

CX_EXPORT int cprxfer_put_i64(cprxfer_state *st, const char *name, int64_t v)
{
	struct cx_entry *e;
	int rc = put(st, "cprxfer_put_i64", name, CPRXFER_TYPE_I64, &e);

	if (rc == 0)
		e->v.i64 = v;
	return rc;
}

static int put_bytes(cprxfer_state *st, const char *what, const char *name,
		     int type, const void *data, size_t len)
{
	struct cx_entry *e;
	void *copy;
	int rc;

	if (!data && len)
		return cx_err(-EINVAL, "%s: NULL data of length %zu", what,
			      len);
	/* One spare byte: strings keep their NUL, blobs are never NULL. */
	copy = malloc(len + 1);
	if (!copy)
		return cx_err(-ENOMEM, "%s: out of memory for %zu bytes", what,
			      len);
	if (len)
		memcpy(copy, data, len);
	((char *)copy)[len] = 0;
	rc = put(st, what, name, type, &e);
	if (rc < 0) {
		free(copy);
		return rc;
	}
	e->v.blob.data = copy;
	e->v.blob.len = len;
	return 0;
}

CX_EXPORT int cprxfer_put_blob(cprxfer_state *st, const char *name,
			       const void *data, size_t len)
{
	return put_bytes(st, "cprxfer_put_blob", name, CPRXFER_TYPE_BLOB, data,
			 len);
}

CX_EXPORT int cprxfer_put_str(cprxfer_state *st, const char *name,
			      const char *s)
{
	if (!s)
		return cx_err(-EINVAL, "cprxfer_put_str: NULL string");
	return put_bytes(st, "cprxfer_put_str", name, CPRXFER_TYPE_STR, s,
			 strlen(s));
}

CX_EXPORT int cprxfer_put_fd(cprxfer_state *st, const char *name, int fd)
{
	struct cx_entry *e;
	int rc;

	if (fd < 0 || fcntl(fd, F_GETFD) < 0)
		return cx_err(-EBADF, "cprxfer_put_fd: fd %d is not open", fd);
	rc = put(st, "cprxfer_put_fd", name, CPRXFER_TYPE_FD, &e);
	if (rc == 0) {
		e->v.fd = fd;
		e->owns_fd = false;
		cx_entry_note_fd(e);
	}
	return rc;
}

CX_EXPORT int cprxfer_put_fds(cprxfer_state *st, const char *name,
			      const int *fds, size_t n)
{
	cx_autofree int *copy = NULL;
	cx_autofree uint64_t *ids = NULL;
	struct cx_entry *e;
	size_t i;
	int rc;

	if (!fds && n)
		return cx_err(-EINVAL, "cprxfer_put_fds: NULL fds, count %zu",
			      n);
	if (n > UINT32_MAX)
		return cx_err(-E2BIG,
			      "cprxfer_put_fds: %zu fds exceed the wire's %u",
			      n, UINT32_MAX);
	copy = malloc(n ? n * sizeof(int) : 1);
	ids = malloc(n ? 2 * n * sizeof(uint64_t) : 1);
	if (!copy || !ids)
		return cx_err(-ENOMEM,
			      "cprxfer_put_fds: out of memory for %zu fds", n);
	/* Which file each fd is, so that a save can tell a reused number. */
	for (i = 0; i < n; i++) {
		struct stat s;

		if (fds[i] < 0 || fstat(fds[i], &s) < 0)
			return cx_err(
				-EBADF,
				"cprxfer_put_fds: fd %d (index %zu) is not open",
				fds[i], i);
		ids[2 * i] = (uint64_t)s.st_dev;
		ids[2 * i + 1] = (uint64_t)s.st_ino;
	}
	if (n)
		memcpy(copy, fds, n * sizeof(int));
	rc = put(st, "cprxfer_put_fds", name, CPRXFER_TYPE_FDS, &e);
	if (rc < 0)
		return rc;
	e->v.fda.fds = cx_steal_ptr(&copy);
	e->v.fda.ids = cx_steal_ptr(&ids);
	e->v.fda.n = n;
	e->owns_fd = false;
	return 0;
}

static bool owned_test(const cprxfer_state *st, int fd)
{
	size_t w = (size_t)fd / 64;

	return w < st->owned_words && (st->owned[w] >> (fd % 64) & 1);
}

static void owned_flip(cprxfer_state *st, const int *fds, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		st->owned[(size_t)fds[i] / 64] ^= 1ull << (fds[i] % 64);
}

/* Room in the bitmap for fd numbers up to max. */
static int owned_grow(cprxfer_state *st, const char *what, int max)
{
	size_t words = (size_t)max / 64 + 1;
	uint64_t *p;

	if (words <= st->owned_words)
		return 0;
	p = realloc(st->owned, words * sizeof(*p));
	if (!p)
		return cx_err(-ENOMEM, "%s: out of memory", what);
	memset(p + st->owned_words, 0, (words - st->owned_words) * sizeof(*p));
	st->owned = p;
	st->owned_words = words;
	return 0;
}

/* Mark fds as owned by st, from a fresh scan of its entries if needed. */
static int owned_build(cprxfer_state *st, const char *what)
{
	size_t i;
	int rc;

	if (st->owned_valid)
		return 0;
	if (st->owned_words)
		memset(st->owned, 0, st->owned_words * sizeof(*st->owned));
	for (i = 0; i < st->n; i++) {
		const struct cx_entry *e = &st->e[i];
		const int *fds = NULL;
		size_t k, n = 0;

		if (!e->owns_fd)
			continue;
		if (e->type == CPRXFER_TYPE_FD) {
			fds = &e->v.fd;
			n = 1;
		} else if (e->type == CPRXFER_TYPE_RAM) {
			fds = &e->v.ram.fd;
			n = 1;
		} else if (e->type == CPRXFER_TYPE_FDS && e->v.fda.fds) {
			fds = e->v.fda.fds;
			n = e->v.fda.n;
		}
		for (k = 0; k < n; k++) {
			if (fds[k] < 0)
				continue;
			rc = owned_grow(st, what, fds[k]);
			if (rc < 0)
				return rc;
			st->owned[(size_t)fds[k] / 64] |= 1ull << (fds[k] % 64);
		}
	}
	st->owned_valid = true;
	return 0;
}

/*
 * Claim fds[0..n) (all >= 0) for st: -EINVAL, nothing claimed, if one is
 * the state's already or appears twice (either would be closed twice).
 */
static int owned_claim(cprxfer_state *st, const char *what, const int *fds,
		       size_t n)
{
	size_t i;
	int max = 0, rc;

	rc = owned_build(st, what);
	for (i = 0; rc == 0 && i < n; i++)
		if (fds[i] > max)
			max = fds[i];
	if (rc == 0)
		rc = owned_grow(st, what, max);
	if (rc < 0)
		return rc;
	for (i = 0; i < n; i++) {
		if (owned_test(st, fds[i])) {
			owned_flip(st, fds, i);
			return cx_err(
				-EINVAL,
				"%s: fd %d is the state's already (adopted twice, or under another name): it would be closed twice",
				what, fds[i]);
		}
		owned_flip(st, fds + i, 1);
	}
	return 0;
}

CX_EXPORT int cprxfer_adopt_fd(cprxfer_state *st, const char *name, int fd)
{
	struct cx_entry *e;
	int rc;

	if (fd < 0 || fcntl(fd, F_GETFD) < 0)
		return cx_err(-EBADF, "cprxfer_adopt_fd: fd %d is not open",
			      fd);
	rc = put(st, "cprxfer_adopt_fd", name, CPRXFER_TYPE_FD, &e);
	if (rc == 0) {
		rc = owned_claim(st, "cprxfer_adopt_fd", &fd, 1);
		if (rc < 0) {
			cx_state_pop(st);
			return rc;
		}
		/* Owned: nobody else closes it, so a save need not check it. */
		e->v.fd = fd;
		e->owns_fd = true;
	}
	return rc;
}

/*
 * Are fds[0..n) all open? One poll() per ADOPT_POLL fds (POLLNVAL: not
 * open) instead of a syscall per fd.
 */
#define ADOPT_POLL 256
static int adopt_check(const char *what, const int *fds, size_t n)
{
	struct pollfd p[ADOPT_POLL];
	size_t i, j, k;

	for (i = 0; i < n; i += k) {
		k = n - i < ADOPT_POLL ? n - i : ADOPT_POLL;
		for (j = 0; j < k; j++) {
			if (fds[i + j] < 0)
				return cx_err(
					-EBADF,
					"%s: fd %d (index %zu) is not open",
					what, fds[i + j], i + j);
			p[j].fd = fds[i + j];
			p[j].events = 0;
			p[j].revents = 0;
		}
		if (poll(p, k, 0) < 0) {
			/* nfds above RLIMIT_NOFILE: ask one fd at a time. */
			for (j = 0; j < k; j++)
				p[j].revents = fcntl(p[j].fd, F_GETFD) < 0
						       ? POLLNVAL
						       : 0;
		}
		for (j = 0; j < k; j++)
			if (p[j].revents & POLLNVAL)
				return cx_err(
					-EBADF,
					"%s: fd %d (index %zu) is not open",
					what, fds[i + j], i + j);
	}
	return 0;
}

CX_EXPORT int cprxfer_adopt_fds(cprxfer_state *st, const char *name,
				const int *fds, size_t n)
{
	cx_autofree int *copy = NULL;
	struct cx_entry *e;
	int rc;

	if (!fds && n)
		return cx_err(-EINVAL, "cprxfer_adopt_fds: NULL fds, count %zu",
			      n);
	if (n > UINT32_MAX)
		return cx_err(-E2BIG,
			      "cprxfer_adopt_fds: %zu fds exceed the wire's %u",
			      n, UINT32_MAX);
	rc = adopt_check("cprxfer_adopt_fds", fds, n);
	if (rc < 0)
		return rc;
	copy = malloc(n ? n * sizeof(int) : 1);
	if (!copy)
		return cx_err(-ENOMEM,
			      "cprxfer_adopt_fds: out of memory for %zu fds",
			      n);
	if (n)
		memcpy(copy, fds, n * sizeof(int));
	rc = put(st, "cprxfer_adopt_fds", name, CPRXFER_TYPE_FDS, &e);
	if (rc < 0)
		return rc;
	rc = owned_claim(st, "cprxfer_adopt_fds", copy, n);
	if (rc < 0) {
		cx_state_pop(st);
		return rc;
	}
	/* Owned: closed with the state, never checked at save (no ids). */
	e->v.fda.fds = cx_steal_ptr(&copy);
	e->v.fda.ids = NULL;
	e->v.fda.n = n;
	e->owns_fd = true;
	return 0;
}

static int get(const cprxfer_state *st, const char *what, const char *name,
	       int type, struct cx_entry **out)
{
	struct cx_entry *e;
	size_t len;

	if (!st)
		return cx_err(-EINVAL, "%s: NULL state", what);
	len = name ? strnlen(name, 256) : 0;
	if (len == 0 || len > CPRXFER_NAME_MAX)
		return cx_name_check(what, name, len);
	e = cx_state_find(st, name, len);
	if (!e)
		return cx_err(-ENOENT, "%s: no record '%s'", what, name);
	if (e->type != type)
		return cx_err(-ENOMSG, "%s: record '%s' is of type %d, not %d",
			      what, name, e->type, type);
	*out = e;
	return 0;
}

CX_EXPORT int cprxfer_get_u64(const cprxfer_state *st, const char *name,
			      uint64_t *v)
{
	struct cx_entry *e;
	int rc;

	if (!v)
		return cx_err(-EINVAL, "cprxfer_get_u64: NULL output");
	rc = get(st, "cprxfer_get_u64", name, CPRXFER_TYPE_U64, &e);
	if (rc == 0)
		*v = e->v.u64;
	return rc;
}

CX_EXPORT int cprxfer_get_i64(const cprxfer_state *st, const char *name,
			      int64_t *v)
{
	struct cx_entry *e;
	int rc;

	if (!v)
		return cx_err(-EINVAL, "cprxfer_get_i64: NULL output");
	rc = get(st, "cprxfer_get_i64", name, CPRXFER_TYPE_I64, &e);
	if (rc == 0)
		*v = e->v.i64;
	return rc;
}

CX_EXPORT int cprxfer_get_blob(const cprxfer_state *st, const char *name,
			       const void **data, size_t *len)
{
	struct cx_entry *e;
	int rc;

	if (!data || !len)
		return cx_err(-EINVAL, "cprxfer_get_blob: NULL output");
	rc = get(st, "cprxfer_get_blob", name, CPRXFER_TYPE_BLOB, &e);
	if (rc == 0) {
		*data = e->v.blob.data;
		*len = e->v.blob.len;
	}
	return rc;
}

CX_EXPORT int cprxfer_get_str(const cprxfer_state *st, const char *name,
			      const char **s)
{
	struct cx_entry *e;
	int rc;

	if (!s)
		return cx_err(-EINVAL, "cprxfer_get_str: NULL output");
	rc = get(st, "cprxfer_get_str", name, CPRXFER_TYPE_STR, &e);
	if (rc == 0)
		*s = e->v.blob.data;
	return rc;
}

CX_EXPORT int cprxfer_get_fd(const cprxfer_state *st, const char *name, int *fd)
{
	struct cx_entry *e;
	int rc;

	if (!fd)
		return cx_err(-EINVAL, "cprxfer_get_fd: NULL output");
	rc = get(st, "cprxfer_get_fd", name, CPRXFER_TYPE_FD, &e);
	if (rc < 0)
		return rc;
	if (e->v.fd < 0)
		return cx_err(-EBADF,
			      "cprxfer_get_fd: fd of record '%s' was taken",
			      name);
	*fd = e->v.fd;
	return 0;
}

CX_EXPORT int cprxfer_take_fd(cprxfer_state *st, const char *name)
{
	struct cx_entry *e;
	int rc, fd;

	rc = get(st, "cprxfer_take_fd", name, CPRXFER_TYPE_FD, &e);
	if (rc < 0)
		return rc;
	if (e->v.fd < 0)
		return cx_err(
			-EBADF,
			"cprxfer_take_fd: fd of record '%s' was already taken",
			name);
	if (!e->owns_fd) {
		/* A borrowed fd stays the caller's: hand out a duplicate. */
		fd = fcntl(e->v.fd, F_DUPFD_CLOEXEC, 0);
		if (fd < 0)
			return cx_err(-errno,
				      "cprxfer_take_fd: record '%s': dup: %s",
				      name, strerror(errno));
		return fd;
	}
	fd = e->v.fd;
	e->v.fd = -1;
	e->owns_fd = false;
	st->owned_valid = false;
	return fd;
}

CX_EXPORT int cprxfer_get_fds(const cprxfer_state *st, const char *name,
			      const int **fds, size_t *n)
{
	struct cx_entry *e;
	int rc;

	if (!fds || !n)
		return cx_err(-EINVAL, "cprxfer_get_fds: NULL output");
	rc = get(st, "cprxfer_get_fds", name, CPRXFER_TYPE_FDS, &e);
	if (rc < 0)
		return rc;
	if (!e->v.fda.fds)
		return cx_err(-EBADF,
			      "cprxfer_get_fds: fds of record '%s' were taken",
			      name);
	*fds = e->v.fda.fds;
	*n = e->v.fda.n;
	return 0;
}

/* Duplicates of n borrowed fds, all or none. */
static int dup_all(const char *name, const int *fds, size_t n, int **out)
{
	cx_autofree int *v = malloc(n ? n * sizeof(int) : 1);
	size_t i;

	if (!v)
		return cx_err(-ENOMEM,
			      "cprxfer_take_fds: out of memory for %zu fds", n);
	for (i = 0; i < n; i++) {
		v[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
		if (v[i] < 0) {
			int err = -errno;

			cx_close_all(v, i);
			return cx_err(
				err,
				"cprxfer_take_fds: record '%s': dup of fd %d: %s",
				name, fds[i], strerror(-err));
		}
	}
	*out = cx_steal_ptr(&v);
	return 0;
}

CX_EXPORT int cprxfer_take_fds(cprxfer_state *st, const char *name, int **fds,
			       size_t *n)
{
	struct cx_entry *e;
	int rc;

	if (!fds || !n)
		return cx_err(-EINVAL, "cprxfer_take_fds: NULL output");
	rc = get(st, "cprxfer_take_fds", name, CPRXFER_TYPE_FDS, &e);
	if (rc < 0)
		return rc;
	if (!e->v.fda.fds)
		return cx_err(
			-EBADF,
			"cprxfer_take_fds: fds of record '%s' were already taken",
			name);
	if (!e->owns_fd) {
		/* Borrowed fds stay the caller's: hand out duplicates. */
		rc = dup_all(name, e->v.fda.fds, e->v.fda.n, fds);
		if (rc < 0)
			return rc;
		*n = e->v.fda.n;
		return 0;
	}
	*fds = cx_steal_ptr(&e->v.fda.fds);
	*n = e->v.fda.n;
	e->owns_fd = false;
	st->owned_valid = false;
	return 0;
}

CX_EXPORT size_t cprxfer_state_count(const cprxfer_state *st)
{
	return st ? st->n : 0;
}

CX_EXPORT int cprxfer_state_entry(const cprxfer_state *st, size_t i,
				  const char **name, int *type)
{
	if (!st)
		return cx_err(-EINVAL, "cprxfer_state_entry: NULL state");
	if (i >= st->n)
		return cx_err(
			-ERANGE,
			"cprxfer_state_entry: index %zu past the %zu entries",
			i, st->n);
	if (name)
		*name = st->e[i].name;
	if (type)
		*type = st->e[i].type;
	return 0;
}
