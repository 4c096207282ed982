/* SPDX-License-Identifier: MIT */
/*
 * Guest RAM regions: a memfd (or a file under /dev/shm, or a dax device)
 * mapped shared. A region crosses a handoff as its fd plus its size; the
 * receiver maps the same pages at a new address. Not a byte is copied.
 *
 * A receiver only maps an object that cannot shrink under its mapping
 * (a sealed memfd) or one the caller chose to trust (a file it opened by
 * path, or a peer's file when the loader allows file-backed RAM):
 * anything else is a SIGBUS waiting to happen.
 *
 * A file the library opens for a region is created exclusively or, if it
 * exists, adopted only when the caller's euid owns it and no one else
 * may write it; a symbolic link is never followed.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "ram.h"
#include "state.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif
#ifndef MFD_HUGE_SHIFT
#define MFD_HUGE_SHIFT 26
#endif
#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif

#define CX_RAM_FLAGS                                   \
	(CPRXFER_RAM_HUGEPAGE | CPRXFER_RAM_POPULATE | \
	 CPRXFER_RAM_POPULATE_RESIDENT)
#define CX_HUGE_ALIGN (2ul << 20)

/* Flags of a RAM record on the wire (informational). */
#define CX_RAM_F_HUGETLB 0x1u /* hugetlbfs pages */
#define CX_RAM_F_FILE	 0x2u /* a named file, reopened by path */

/* What an fd backing a region is. */
enum {
	KIND_MEMFD = 1,
	KIND_FILE,
	KIND_DAX
};

static size_t page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

/*
 * Is the unlinked regular file behind fd (st, on a filesystem of type
 * sf) a memfd? memfds live on the kernel's internal tmpfs mount, or for
 * MFD_HUGETLB on its internal hugetlbfs mount of that page size, which
 * no path reaches: a memfd made here for comparison has the same st_dev
 * exactly when fd is one too. An unlinked file of /dev/shm or of a
 * hugetlbfs mount (O_TMPFILE) has its mount's st_dev. No /proc needed.
 */
static bool is_memfd(const struct stat *st, const struct statfs *sf)
{
	/*
	 * The internal mounts' st_dev, per page shift (0: tmpfs), learnt
	 * once per process: they do not change while the kernel runs, and a
	 * memfd_create per check would cost ~10 us in every load of a region.
	 * 0: not known yet. Threads that race store the same value.
	 */
	static uint64_t dev_of[64];
	cx_autoclose int probe = -1;
	unsigned int fl = MFD_CLOEXEC, shift = 0;
	struct stat ps;
	uint64_t dev;

	if (!S_ISREG(st->st_mode) || st->st_nlink != 0)
		return false;
	if (sf->f_type == HUGETLBFS_MAGIC) {
		while (shift < 63 && (1ull << shift) < (uint64_t)sf->f_bsize)
			shift++;
		fl |= MFD_HUGETLB | (shift << MFD_HUGE_SHIFT);
	} else if (sf->f_type != TMPFS_MAGIC) {
		return false;
	}
	dev = __atomic_load_n(&dev_of[shift], __ATOMIC_RELAXED);
	if (!dev) {
		probe = memfd_create("cprxfer-probe", fl);
		if (probe < 0 || fstat(probe, &ps) < 0)
			return false;
		dev = (uint64_t)ps.st_dev;
		__atomic_store_n(&dev_of[shift], dev, __ATOMIC_RELAXED);
	}
	return dev == (uint64_t)st->st_dev;
}

/*
 * Is the character device st a dax device? Its class in sysfs says so;
 * where /sys is not mounted, its name in /proc/self/fd does ("/dev/dax").
 * 1 yes, 0 no.
 */
static int is_dax(int fd, const struct stat *st)
{
	char link[64], target[PATH_MAX];
	const char *base;
	ssize_t n;

	snprintf(link, sizeof(link), "/sys/dev/char/%u:%u/subsystem",
		 major(st->st_rdev), minor(st->st_rdev));
	n = readlink(link, target, sizeof(target) - 1);
	if (n >= 0) {
		target[n] = 0;
		base = strrchr(target, '/');
		return !strcmp(base ? base + 1 : target, "dax");
	}
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	return n >= 8 && !strncmp(target, "/dev/dax", 8);
}

/*
 * Classify fd: a memfd, a regular file (path filled in when it still has
 * a name) or a dax device. -EINVAL for anything else.
 *
 * Memfds and dax devices are told without /proc (is_memfd, is_dax). A
 * regular file's path, which file mode needs to reopen it after a
 * reboot, can only be read from /proc/self/fd: Linux offers no other
 * way from an fd to a name. Without /proc (a chroot, a sandbox) a file
 * gets no path and its region is carried by its fd alone.
 */
static int fd_kind(const char *what, int fd, struct stat *st, char *path,
		   size_t pathlen, int *kind)
{
	struct statfs sf;
	char link[64];
	ssize_t n;

	path[0] = 0;
	if (fstat(fd, st) < 0)
		return cx_err(-errno, "%s: fstat of fd %d: %s", what, fd,
			      strerror(errno));
	if (!S_ISREG(st->st_mode) && !S_ISCHR(st->st_mode))
		return cx_err(-EINVAL,
			      "%s: fd %d is %s, not a memfd or a regular file",
			      what, fd, cx_file_kind(st->st_mode));
	if (S_ISCHR(st->st_mode)) {
		if (!is_dax(fd, st))
			return cx_err(
				-EINVAL,
				"%s: fd %d is a character device (%u:%u), not a dax device",
				what, fd, major(st->st_rdev),
				minor(st->st_rdev));
		*kind = KIND_DAX;
		return 0;
	}
	if (fstatfs(fd, &sf) < 0)
		return cx_err(-errno, "%s: fstatfs of fd %d: %s", what, fd,
			      strerror(errno));
	if (is_memfd(st, &sf)) {
		*kind = KIND_MEMFD;
		return 0;
	}
	*kind = KIND_FILE;
	if (st->st_nlink == 0)
		return 0; /* unlinked: only the fd can carry it */
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, path, pathlen - 1);
	if (n < 0 && errno != ENOENT)
		return cx_err(-errno, "%s: readlink %s: %s", what, link,
			      strerror(errno));
	path[n < 0 ? 0 : n] = 0;
	if (path[0] != '/')
		path[0] = 0;
	return 0;
}

/*
 * An fd of kind (st from fd_kind) fit to back a region of size bytes:
 * exactly that size (a dax device: any), and a memfd sealed against
 * shrinking.
 */
static int size_and_seals(const char *what, const char *name, int fd,
			  const struct stat *st, uint64_t size, int kind)
{
	int seals;

	if (kind != KIND_DAX && (uint64_t)st->st_size != size)
		return cx_err(
			-EBADMSG,
			"record '%s': %s: fd %d is %llu bytes, the region is %llu",
			name, what, fd, (unsigned long long)st->st_size,
			(unsigned long long)size);
	if (kind != KIND_MEMFD)
		return 0;
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_SHRINK))
		return cx_err(
			-EBADFD,
			"record '%s': %s: memfd %d is not sealed against shrinking (F_SEAL_SHRINK): a mapping of it could fault with SIGBUS",
			name, what, fd);
	return 0;
}

/*
 * Check that an fd is fit to back a region of size bytes: a memfd
 * sealed against shrinking, a regular file or a dax device, of exactly
 * that size.
 */
static int fd_check(const char *what, const char *name, int fd, uint64_t size,
		    char *path, size_t pathlen, int *kind)
{
	struct stat st;
	int rc;

	rc = fd_kind(what, fd, &st, path, pathlen, kind);
	if (rc < 0)
		return cx_err_prefix(rc, "record '%s'", name);
	return size_and_seals(what, name, fd, &st, size, *kind);
}

int cx_ram_check_fd(const char *name, int fd, uint64_t size, bool allow_file)
{
	const char *what = "RAM from a peer";
	char path[PATH_MAX];
	struct stat st;
	int rc, kind;

	rc = fd_kind(what, fd, &st, path, sizeof(path), &kind);
	if (rc == -EINVAL)
		return cx_err_prefix(-EBADFD, "record '%s'", name);
	if (rc < 0)
		return cx_err_prefix(rc, "record '%s'", name);
	if (kind != KIND_MEMFD && !allow_file)
		return cx_err(
			-EPERM,
			"record '%s': %s: fd %d is %s %s, not a memfd sealed against shrinking; whoever can truncate it could kill this process with SIGBUS, so it is refused unless the loader allows file-backed RAM (cprxfer_opts_allow_file_ram)",
			name, what, fd,
			kind == KIND_DAX ? "the dax device" : "the file",
			path[0] ? path : "(unlinked)");
	return size_and_seals(what, name, fd, &st, size, kind);
}

static bool is_hugetlb(int fd)
{
	struct statfs sf;

	return fstatfs(fd, &sf) == 0 && sf.f_type == HUGETLBFS_MAGIC;
}

/*
 * Map fd shared at an address aligned to 2 MiB when the region is that
 * big, so that huge pages (THP or hugetlb) can back it.
 */
static int map_shared(const char *what, int fd, size_t size, void **out)
{
	uint8_t *res, *p, *aligned;
	size_t span;

	if (size < CX_HUGE_ALIGN) {
		p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
		if (p == MAP_FAILED)
			return cx_err(-errno, "%s: mmap of %zu bytes: %s", what,
				      size, strerror(errno));
		*out = p;
		return 0;
	}
	span = size + CX_HUGE_ALIGN;
	res = mmap(NULL, span, PROT_NONE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (res == MAP_FAILED)
		return cx_err(-errno,
			      "%s: reserving %zu bytes of address space: %s",
			      what, span, strerror(errno));
	aligned = (uint8_t *)(((uintptr_t)res + CX_HUGE_ALIGN - 1) &
			      ~(uintptr_t)(CX_HUGE_ALIGN - 1));
	p = mmap(aligned, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED,
		 fd, 0);
	if (p == MAP_FAILED) {
		int err = errno;

		munmap(res, span);
		return cx_err(-err, "%s: mmap of %zu bytes: %s", what, size,
			      strerror(err));
	}
	/* Give back the slack on either side of the aligned window. */
	if (aligned > res)
		munmap(res, (size_t)(aligned - res));
	size = (size + page_size() - 1) & ~(page_size() - 1);
	if (aligned + size < res + span)
		munmap(aligned + size, (size_t)(res + span - aligned - size));
	*out = aligned;
	return 0;
}

/* Write-fault every page of [p, p + n) without changing a byte. */
static void touch_pages(uint8_t *p, size_t n)
{
	size_t pg = page_size(), off;

	/*
	 * An atomic add of zero is a write the kernel must fault in, and,
	 * unlike a read followed by a write, cannot lose a store made by
	 * another process sharing the pages meanwhile.
	 */
	for (off = 0; off < n; off += pg)
		__atomic_fetch_add((volatile uint8_t *)(p + off), 0,
				   __ATOMIC_RELAXED);
}

static int populate_range(uint8_t *p, size_t n)
{
	if (madvise(p, n, MADV_POPULATE_WRITE) == 0)
		return 0;
	if (errno == EINVAL) {
		/* A kernel older than 5.14: fault the pages in by hand. */
		touch_pages(p, n);
		return 0;
	}
	return cx_err(-errno, "madvise(MADV_POPULATE_WRITE) of %zu bytes: %s",
		      n, strerror(errno));
}

/*
 * Prefault only the pages the object already holds (those the guest
 * touched): mincore() of a shared mapping reports the page cache of the
 * object behind it, whether or not this mapping has faulted them in.
 */
static int populate_resident(uint8_t *addr, size_t size)
{
	const size_t chunk = 65536; /* pages per mincore() call */
	size_t pg = page_size(), npages = (size + pg - 1) / pg, i, j;
	unsigned char *vec;
	int rc = 0;

	vec = malloc(chunk);
	if (!vec)
		return cx_err(-ENOMEM, "populate: out of memory");
	for (i = 0; rc == 0 && i < npages; i += chunk) {
		size_t n = npages - i < chunk ? npages - i : chunk;
		size_t run = 0;

		if (mincore(addr + i * pg, n * pg, vec) < 0) {
			rc = cx_err(-errno, "mincore of %zu bytes: %s", n * pg,
				    strerror(errno));
			break;
		}
		for (j = 0; rc == 0 && j <= n; j++) {
			if (j < n && (vec[j] & 1)) {
				run++;
				continue;
			}
			if (run)
				rc = populate_range(addr + (i + j - run) * pg,
						    run * pg);
			run = 0;
		}
	}
	free(vec);
	return rc;
}

static int apply_flags(void *addr, size_t size, int fd, unsigned flags)
{
	if ((flags & CPRXFER_RAM_HUGEPAGE) && !is_hugetlb(fd) &&
	    madvise(addr, size, MADV_HUGEPAGE) < 0 && errno != EINVAL)
		return cx_err(-errno, "madvise(MADV_HUGEPAGE): %s",
			      strerror(errno));
	if (flags & CPRXFER_RAM_POPULATE)
		return populate_range(addr, size);
	if (flags & CPRXFER_RAM_POPULATE_RESIDENT)
		return populate_resident(addr, size);
	return 0;
}

/*
 * Whether hugetlb pages of the default size can back size bytes: a hint
 * only, as another process may take the pages before our mmap does.
 */
static bool hugetlb_fits(size_t size)
{
	unsigned long long free_pages = 0, rsvd = 0, kb = 0, v;
	char line[128];
	FILE *f;

	f = fopen("/proc/meminfo", "re");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "HugePages_Free: %llu", &v) == 1)
			free_pages = v;
		else if (sscanf(line, "HugePages_Rsvd: %llu", &v) == 1)
			rsvd = v;
		else if (sscanf(line, "Hugepagesize: %llu kB", &v) == 1)
			kb = v;
	}
	fclose(f);
	/* Reserved pages are free but promised to existing mappings. */
	free_pages = free_pages > rsvd ? free_pages - rsvd : 0;
	return kb && size % (kb << 10) == 0 && free_pages * (kb << 10) >= size;
}

static int check_out(const char *what, size_t size, unsigned flags,
		     const struct cprxfer_ram *out)
{
	if (!out)
		return cx_err(-EINVAL, "%s: NULL output", what);
	if (!size)
		return cx_err(-EINVAL, "%s: size 0", what);
	if (flags & ~CX_RAM_FLAGS)
		return cx_err(-EINVAL, "%s: unknown flags 0x%x", what,
			      flags & ~CX_RAM_FLAGS);
	return 0;
}

/* Map *fd, apply flags, fill *out; takes *fd only on success. */
static int finish(const char *what, int *fd, size_t size, unsigned flags,
		  struct cprxfer_ram *out)
{
	void *addr = NULL;
	int rc;

	rc = map_shared(what, *fd, size, &addr);
	if (rc < 0)
		return rc;
	rc = apply_flags(addr, size, *fd, flags);
	if (rc < 0) {
		munmap(addr, size);
		return cx_err_prefix(rc, "%s", what);
	}
	out->addr = addr;
	out->size = size;
	out->fd = cx_steal_fd(fd);
	return 0;
}

/* A sealed memfd of size bytes (on hugetlbfs if huge), mapped. */
static int create_mapped(const char *what, const char *name, size_t size,
			 unsigned flags, bool huge, struct cprxfer_ram *out)
{
	unsigned mfd = MFD_CLOEXEC | MFD_ALLOW_SEALING;
	cx_autoclose int fd = -1;

	fd = memfd_create(name, mfd | (huge ? MFD_HUGETLB : 0));
	if (fd < 0)
		return cx_err(-errno, "%s: memfd_create '%s'%s: %s", what, name,
			      huge ? " on hugetlbfs" : "", strerror(errno));
	if (ftruncate(fd, (off_t)size) < 0)
		return cx_err(-errno, "%s: ftruncate to %zu bytes: %s", what,
			      size, strerror(errno));
	if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) <
	    0)
		return cx_err(-errno, "%s: sealing the memfd: %s", what,
			      strerror(errno));
	return finish(what, &fd, size, flags, out);
}

CX_EXPORT int cprxfer_ram_create(const char *name, size_t size, unsigned flags,
				 struct cprxfer_ram *out)
{
	const char *what = "cprxfer_ram_create";
	int rc;

	rc = check_out(what, size, flags, out);
	if (rc < 0)
		return rc;
	if (!name)
		name = "cprxfer-ram";
	if ((flags & CPRXFER_RAM_HUGEPAGE) && hugetlb_fits(size)) {
		rc = create_mapped(what, name, size, flags, true, out);
		if (rc == 0)
			return 0;
		/*
		 * The pages went to someone else between the check and the
		 * mmap() that reserves them: THP or base pages instead.
		 */
	}
	return create_mapped(what, name, size, flags, false, out);
}

/*
 * Open the directory that holds path (never through a symbolic link as
 * its last component) and point *base at the file's name in path.
 */
static int open_dir(const char *what, const char *path, const char **base,
		    int *out)
{
	const char *slash = strrchr(path, '/');
	char dir[PATH_MAX];
	struct stat st;
	size_t n;
	int fd;

	if (!slash) {
		snprintf(dir, sizeof(dir), ".");
		*base = path;
	} else {
		n = slash == path ? 1 : (size_t)(slash - path);
		if (n >= sizeof(dir))
			return cx_err(-ENAMETOOLONG,
				      "%s: path '%s' is too long", what, path);
		memcpy(dir, path, n);
		dir[n] = 0;
		*base = slash + 1;
	}
	if (!**base)
		return cx_err(-EISDIR, "%s: %s names a directory, not a file",
			      what, path);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno == ENOTDIR && lstat(dir, &st) == 0 &&
	    S_ISLNK(st.st_mode))
		return cx_err(
			-ELOOP,
			"%s: directory %s is a symbolic link, which is not followed: give the real path",
			what, dir);
	if (fd < 0)
		return cx_err(-errno, "%s: open directory %s: %s", what, dir,
			      strerror(errno));
	*out = fd;
	return 0;
}

/*
 * Open the existing file base (path, in dfd) for a region: a regular
 * file or a dax device that the caller's euid owns and that no one else
 * may write. Anything else could be read or changed by another user, or
 * truncated under the mapping.
 */
static int open_owned(const char *what, int dfd, const char *base,
		      const char *path, struct stat *st, int *out)
{
	cx_autoclose int fd = -1;
	int fl;

	/* O_NONBLOCK: opening a device or a FIFO must not wait. */
	fd = openat(dfd, base,
		    O_RDWR | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0 && errno == ELOOP)
		return cx_err(
			-ELOOP,
			"%s: %s is a symbolic link, which is not followed",
			what, path);
	if (fd < 0)
		return cx_err(-errno, "%s: open %s: %s", what, path,
			      strerror(errno));
	if (fstat(fd, st) < 0)
		return cx_err(-errno, "%s: fstat %s: %s", what, path,
			      strerror(errno));
	if (!S_ISREG(st->st_mode) &&
	    (!S_ISCHR(st->st_mode) || strncmp(path, "/dev/dax", 8)))
		return cx_err(
			-EINVAL,
			"%s: %s is %s, not a regular file or a dax device",
			what, path, cx_file_kind(st->st_mode));
	if (st->st_uid != geteuid())
		return cx_err(
			-EPERM,
			"%s: %s belongs to uid %u, not to this process (euid %u): its owner could read and change the guest's memory",
			what, path, (unsigned)st->st_uid, (unsigned)geteuid());
	if (st->st_mode & (S_IWGRP | S_IWOTH))
		return cx_err(
			-EPERM,
			"%s: %s is writable by its group or by others (mode %04o): they could change the guest's memory or truncate the file under the mapping",
			what, path, (unsigned)(st->st_mode & 07777));
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
		return cx_err(-errno, "%s: fcntl %s: %s", what, path,
			      strerror(errno));
	*out = cx_steal_fd(&fd);
	return 0;
}

/* Remove the file the call created, if base in dfd is still that file. */
static void unlink_created(int dfd, const char *base, int fd)
{
	struct stat a, b;

	if (fstat(fd, &a) == 0 &&
	    fstatat(dfd, base, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
	    a.st_dev == b.st_dev && a.st_ino == b.st_ino)
		unlinkat(dfd, base, 0);
}

CX_EXPORT int cprxfer_ram_open_file(const char *path, size_t size,
				    unsigned flags, struct cprxfer_ram *out)
{
	const char *what = "cprxfer_ram_open_file";
	cx_autoclose int dfd = -1, fd = -1;
	bool created = false;
	const char *base;
	struct stat st;
	int rc;

	rc = check_out(what, size, flags, out);
	if (rc < 0)
		return rc;
	if (!path || !*path)
		return cx_err(-EINVAL, "%s: no path", what);
	rc = open_dir(what, path, &base, &dfd);
	if (rc < 0)
		return rc;
	/* Exclusively: never adopt a file someone else slips in. */
	fd = openat(dfd, base,
		    O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd >= 0) {
		created = true;
		if (fstat(fd, &st) < 0)
			rc = cx_err(-errno, "%s: fstat %s: %s", what, path,
				    strerror(errno));
	} else if (errno == EEXIST) {
		rc = open_owned(what, dfd, base, path, &st, &fd);
	} else {
		rc = cx_err(-errno, "%s: create %s: %s", what, path,
			    strerror(errno));
	}
	if (rc == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size > size)
		/* Shrinking would throw away what it holds. */
		rc = cx_err(-EINVAL,
			    "%s: %s is %llu bytes, more than the %zu asked for",
			    what, path, (unsigned long long)st.st_size, size);
	if (rc == 0 && S_ISREG(st.st_mode) && (uint64_t)st.st_size < size &&
	    ftruncate(fd, (off_t)size) < 0)
		rc = cx_err(-errno, "%s: ftruncate %s to %zu bytes: %s", what,
			    path, size, strerror(errno));
	if (rc == 0)
		rc = finish(what, &fd, size, flags, out);
	/* A failed call leaves no file of its own behind. */
	if (rc < 0 && created)
		unlink_created(dfd, base, fd);
	return rc;
}

CX_EXPORT int cprxfer_ram_put(cprxfer_state *st, const char *name,
			      const struct cprxfer_ram *r)
{
	const char *what = "cprxfer_ram_put";
	char path[PATH_MAX];
	struct cx_entry *e;
	char *copy = NULL;
	int rc, kind;

	if (!st || !r)
		return cx_err(-EINVAL, "%s: NULL argument", what);
	if (!name)
		return cx_err(-EINVAL, "%s: NULL name", what);
	rc = cx_name_check(what, name, strnlen(name, 256));
	if (rc < 0)
		return rc;
	if (r->fd < 0 || fcntl(r->fd, F_GETFD) < 0)
		return cx_err(-EBADF, "%s: record '%s': fd %d is not open",
			      what, name, r->fd);
	if (!r->size)
		return cx_err(-EINVAL, "%s: record '%s': size 0", what, name);
	rc = fd_check(what, name, r->fd, r->size, path, sizeof(path), &kind);
	if (rc < 0)
		return rc;
	if (path[0]) {
		copy = strdup(path);
		if (!copy)
			return cx_err(-ENOMEM, "%s: out of memory", what);
	}
	rc = cx_state_append(st, name, strlen(name), CPRXFER_TYPE_RAM, &e);
	if (rc < 0) {
		free(copy);
		return cx_err_prefix(rc, "%s", what);
	}
	e->v.ram.fd = r->fd;
	e->v.ram.size = r->size;
	e->v.ram.flags = (is_hugetlb(r->fd) ? CX_RAM_F_HUGETLB : 0) |
			 (copy ? CX_RAM_F_FILE : 0);
	e->v.ram.path = copy;
	e->owns_fd = false;
	cx_entry_note_fd(e);
	return 0;
}

/* A region saved by path (file mode): reopen it, if it is still ours. */
static int reopen(const char *what, const char *name, const char *path,
		  int *out)
{
	cx_autoclose int dfd = -1;
	const char *base;
	struct stat st;
	int rc;

	rc = open_dir(what, path, &base, &dfd);
	if (rc == 0)
		rc = open_owned(what, dfd, base, path, &st, out);
	return rc < 0 ? cx_err_prefix(rc, "record '%s'", name) : 0;
}

CX_EXPORT int cprxfer_ram_get(cprxfer_state *st, const char *name,
			      unsigned flags, struct cprxfer_ram *out)
{
	const char *what = "cprxfer_ram_get";
	cx_autoclose int fd = -1;
	char path[PATH_MAX];
	struct cx_entry *e;
	uint64_t size;
	int rc, kind;

	if (!st)
		return cx_err(-EINVAL, "%s: NULL state", what);
	if (!name)
		return cx_err(-EINVAL, "%s: NULL name", what);
	rc = cx_name_check(what, name, strnlen(name, 256));
	if (rc < 0)
		return rc;
	rc = check_out(what, 1, flags, out);
	if (rc < 0)
		return rc;
	e = cx_state_find(st, name, strlen(name));
	if (!e)
		return cx_err(-ENOENT, "%s: no record '%s'", what, name);
	if (e->type != CPRXFER_TYPE_RAM)
		return cx_err(-ENOMSG, "%s: record '%s' is of type %d, not RAM",
			      what, name, e->type);
	size = e->v.ram.size;
	if (!size || size > SIZE_MAX)
		return cx_err(-EBADMSG, "%s: record '%s': size %llu", what,
			      name, (unsigned long long)size);
	if (e->v.ram.fd >= 0) {
		rc = cx_entry_check_fd(e);
		if (rc < 0)
			return cx_err_prefix(rc, "%s", what);
		fd = fcntl(e->v.ram.fd, F_DUPFD_CLOEXEC, 0);
		if (fd < 0)
			return cx_err(-errno,
				      "%s: record '%s': dup of fd %d: %s", what,
				      name, e->v.ram.fd, strerror(errno));
	} else if (e->v.ram.path) {
		rc = reopen(what, name, e->v.ram.path, &fd);
		if (rc < 0)
			return rc;
	} else {
		return cx_err(-EBADF,
			      "%s: record '%s' has neither an fd nor a path",
			      what, name);
	}
	/* A peer's region: what the loader allowed at load still holds. */
	if (st->from_peer)
		rc = cx_ram_check_fd(name, fd, size, st->allow_file_ram);
	else
		rc = fd_check(what, name, fd, size, path, sizeof(path), &kind);
	if (rc < 0)
		return st->from_peer ? cx_err_prefix(rc, "%s", what) : rc;
	rc = finish(what, &fd, (size_t)size, flags, out);
	if (rc < 0)
		return cx_err_prefix(rc, "record '%s'", name);
	return 0;
}

CX_EXPORT int cprxfer_ram_populate(const struct cprxfer_ram *r, unsigned flags)
{
	const char *what = "cprxfer_ram_populate";
	int rc;

	if (!r || !r->addr || !r->size)
		return cx_err(-EINVAL, "%s: not a mapped region", what);
	if (flags & ~CX_RAM_FLAGS)
		return cx_err(-EINVAL, "%s: unknown flags 0x%x", what,
			      flags & ~CX_RAM_FLAGS);
	rc = apply_flags(r->addr, r->size, r->fd, flags);
	return rc < 0 ? cx_err_prefix(rc, "%s", what) : 0;
}

/* Find the vma at addr in /proc/self/smaps: is it THP eligible? */
static int thp_eligible(const void *addr)
{
	unsigned long lo, hi, a = (unsigned long)addr;
	bool in = false;
	char line[256];
	int v, rc = -1;
	FILE *f;

	f = fopen("/proc/self/smaps", "re");
	if (!f)
		return cx_err(-errno,
			      "cprxfer_ram_backing: /proc/self/smaps: %s",
			      strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		/* A vma starts "lo-hi perms ..."; no field name does. */
		if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2) {
			if (in)
				break;
			in = lo <= a && a < hi;
			continue;
		}
		if (in && sscanf(line, "THPeligible: %d", &v) == 1) {
			rc = v;
			break;
		}
	}
	fclose(f);
	if (rc < 0 && !in)
		return cx_err(-EINVAL, "cprxfer_ram_backing: %p is not mapped",
			      addr);
	return rc < 0 ? 0 : rc;
}

CX_EXPORT int cprxfer_ram_backing(const struct cprxfer_ram *r)
{
	int rc;

	if (!r || r->fd < 0)
		return cx_err(-EINVAL, "cprxfer_ram_backing: no region");
	if (fcntl(r->fd, F_GETFD) < 0)
		return cx_err(-EBADF, "cprxfer_ram_backing: fd %d is not open",
			      r->fd);
	if (is_hugetlb(r->fd))
		return CPRXFER_BACKING_HUGETLB;
	if (!r->addr)
		return cx_err(-EINVAL,
			      "cprxfer_ram_backing: region not mapped");
	rc = thp_eligible(r->addr);
	if (rc < 0)
		return rc;
	return rc ? CPRXFER_BACKING_THP : CPRXFER_BACKING_PAGES;
}

CX_EXPORT void cprxfer_ram_release(struct cprxfer_ram *r)
{
	if (!r || (!r->addr && !r->size))
		return; /* NULL, zeroed or already released */
	if (r->addr && r->size)
		munmap(r->addr, r->size);
	cx_close(r->fd);
	r->addr = NULL;
	r->size = 0;
	r->fd = -1;
}
