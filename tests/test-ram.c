/* SPDX-License-Identifier: MIT */
/*
 * Guest RAM regions: memfd creation and sealing, huge pages, prefaulting
 * (all pages, or only those the object holds, with and without
 * MADV_POPULATE_WRITE), the checks a receiver makes before it maps an fd,
 * and 1 GiB handed to a child over a socketpair: the same bytes, the same
 * page frames, and a write by the child seen by the parent.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "ram.h"
#include "state.h"
#include "stream.h"
#include "testutil.h"
#include "rampat.h"

#define MIB (1ul << 20)

/*
 * Fault injection: this definition of madvise() wins over libc's for the
 * library linked statically into this test, so a kernel without
 * MADV_POPULATE_WRITE (before 5.14) can be played.
 */
static int no_populate_write, refused;

int madvise(void *addr, size_t len, int advice)
{
	if (no_populate_write && advice == MADV_POPULATE_WRITE) {
		refused++;
		errno = EINVAL;
		return -1;
	}
	return (int)syscall(SYS_madvise, addr, len, advice);
}

static size_t count_present(const void *p, size_t npages)
{
	uint8_t *v = malloc(npages);
	size_t i, n = 0;

	assert_non_null(v);
	assert_int_equal(rp_present(p, npages, v), 0);
	for (i = 0; i < npages; i++)
		n += v[i];
	free(v);
	return n;
}

static void test_create(void **state)
{
	struct cprxfer_ram r = { 0 }, z = { 0 };
	int seals, fl;
	struct stat st;

	(void)state;
	assert_int_equal(cprxfer_ram_create("guest", 4 * MIB, 0, &r), 0);
	assert_non_null(r.addr);
	assert_int_equal(r.size, 4 * MIB);
	fl = fcntl(r.fd, F_GETFD);
	assert_true(fl >= 0 && (fl & FD_CLOEXEC));
	seals = fcntl(r.fd, F_GET_SEALS);
	assert_true(seals & F_SEAL_SHRINK);
	assert_true(seals & F_SEAL_GROW);
	assert_true(seals & F_SEAL_SEAL);
	assert_int_equal(fstat(r.fd, &st), 0);
	assert_int_equal(st.st_size, 4 * MIB);
	/* The size is sealed: neither shrinking nor growing works. */
	assert_int_equal(ftruncate(r.fd, MIB), -1);
	assert_int_equal(errno, EPERM);
	assert_int_equal(ftruncate(r.fd, 8 * MIB), -1);
	/* Big regions land on a 2 MiB boundary, ready for huge pages. */
	assert_int_equal((uintptr_t)r.addr % (2 * MIB), 0);
	memset(r.addr, 0xab, r.size);
	assert_int_equal(((uint8_t *)r.addr)[r.size - 1], 0xab);
	assert_int_equal(cprxfer_ram_backing(&r), CPRXFER_BACKING_PAGES);
	cprxfer_ram_release(&r);
	assert_null(r.addr);
	assert_int_equal(r.fd, -1);
	/* Releasing twice, NULL or a zeroed region is harmless. */
	cprxfer_ram_release(&r);
	cprxfer_ram_release(NULL);
	cprxfer_ram_release(&z);

	/* A NULL name is fine; a small region need not be aligned. */
	assert_int_equal(cprxfer_ram_create(NULL, 12345, 0, &r), 0);
	((uint8_t *)r.addr)[12344] = 1;
	cprxfer_ram_release(&r);

	assert_int_equal(cprxfer_ram_create("x", 0, 0, &r), -EINVAL);
	assert_int_equal(cprxfer_ram_create("x", MIB, 1u << 9, &r), -EINVAL);
	assert_non_null(strstr(cprxfer_errmsg(), "flags"));
	assert_int_equal(cprxfer_ram_create("x", MIB, 0, NULL), -EINVAL);
}

static unsigned long long meminfo(const char *key)
{
	unsigned long long v = 0;
	char line[128];
	FILE *f = fopen("/proc/meminfo", "re");

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)))
			v = strtoull(line + strlen(key), NULL, 10);
	if (f)
		fclose(f);
	return v;
}

static bool shmem_thp_allowed(void)
{
	char buf[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled",
			"re");

	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	/* The selected value is in brackets. */
	return strstr(buf, "[always]") || strstr(buf, "[within_size]") ||
	       strstr(buf, "[advise]") || strstr(buf, "[force]");
}

static void test_hugepage(void **state)
{
	struct cprxfer_ram r = { 0 }, g;
	size_t size = 16 * MIB;
	cprxfer_state *st;
	int b, want;

	(void)state;
	if ((meminfo("HugePages_Free:") - meminfo("HugePages_Rsvd:")) *
		    meminfo("Hugepagesize:") * 1024 >=
	    size)
		want = CPRXFER_BACKING_HUGETLB;
	else if (shmem_thp_allowed())
		want = CPRXFER_BACKING_THP;
	else
		want = CPRXFER_BACKING_PAGES;
	assert_int_equal(
		cprxfer_ram_create("huge", size,
				   CPRXFER_RAM_HUGEPAGE | CPRXFER_RAM_POPULATE,
				   &r),
		0);
	b = cprxfer_ram_backing(&r);
	printf("# HUGEPAGE region backed by %s\n",
	       b == CPRXFER_BACKING_HUGETLB ? "hugetlb"
	       : b == CPRXFER_BACKING_THP   ? "THP"
					    : "base pages");
	assert_int_equal(b, want);
	assert_int_equal((uintptr_t)r.addr % (2 * MIB), 0);
	rp_fill(r.addr, size, 3);
	assert_int_equal(rp_check(r.addr, size, 3), -1);
	/* A second mapping keeps the backing and the bytes. */
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_ram_put(st, "huge", &r), 0);
	assert_int_equal(cprxfer_ram_get(st, "huge",
					 CPRXFER_RAM_HUGEPAGE |
						 CPRXFER_RAM_POPULATE_RESIDENT,
					 &g),
			 0);
	assert_int_equal(cprxfer_ram_backing(&g), want);
	assert_int_equal((uintptr_t)g.addr % (2 * MIB), 0);
	assert_int_equal(rp_check(g.addr, size, 3), -1);
	cprxfer_ram_release(&g);
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
}

static void test_populate(void **state)
{
	struct cprxfer_ram r, g;
	size_t size = 64 * MIB, np = size / RP_PAGE;
	cprxfer_state *st;

	(void)state;
	assert_int_equal(cprxfer_ram_create("lazy", size, 0, &r), 0);
	assert_int_equal(count_present(r.addr, np), 0);
	assert_int_equal(cprxfer_ram_populate(&r, CPRXFER_RAM_POPULATE), 0);
	assert_int_equal(count_present(r.addr, np), np);
	rp_fill(r.addr, size, 11);
	cprxfer_ram_release(&r);

	assert_int_equal(
		cprxfer_ram_create("eager", size, CPRXFER_RAM_POPULATE, &r), 0);
	assert_int_equal(count_present(r.addr, np), np);
	rp_fill(r.addr, size, 12);

	/* Without MADV_POPULATE_WRITE: pages touched one by one. */
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_ram_put(st, "ram", &r), 0);
	no_populate_write = 1;
	refused = 0;
	assert_int_equal(cprxfer_ram_get(st, "ram", CPRXFER_RAM_POPULATE, &g),
			 0);
	no_populate_write = 0;
	assert_true(refused > 0);
	assert_int_equal(count_present(g.addr, np), np);
	/* The touch changed nothing. */
	assert_int_equal(rp_check(g.addr, size, 12), -1);
	cprxfer_ram_release(&g);
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
}

/* POPULATE_RESIDENT maps exactly the pages the object already holds. */
static void test_populate_resident(void **state)
{
	static const size_t used[] = { 0, 7, 8, 9, 1000, 16383 };
	size_t size = 64 * MIB, np = size / RP_PAGE, i;
	struct cprxfer_ram r, g;
	cprxfer_state *st;
	uint8_t *v;
	int pass;

	(void)state;
	v = malloc(np);
	assert_non_null(v);
	for (pass = 0; pass < 2; pass++) {
		no_populate_write = pass;
		assert_int_equal(cprxfer_ram_create("sparse", size, 0, &r), 0);
		for (i = 0; i < sizeof(used) / sizeof(used[0]); i++)
			((uint8_t *)r.addr)[used[i] * RP_PAGE + 5] =
				(uint8_t)(i + 1);
		st = cprxfer_state_new();
		assert_int_equal(cprxfer_ram_put(st, "ram", &r), 0);
		assert_int_equal(cprxfer_ram_get(st, "ram",
						 CPRXFER_RAM_POPULATE_RESIDENT,
						 &g),
				 0);
		assert_ptr_not_equal(g.addr, r.addr);
		assert_int_equal(rp_present(g.addr, np, v), 0);
		for (i = 0; i < sizeof(used) / sizeof(used[0]); i++) {
			assert_int_equal(v[used[i]], 1);
			assert_int_equal(
				((uint8_t *)g.addr)[used[i] * RP_PAGE + 5],
				i + 1);
		}
		/* Nothing else: the holes stayed holes. */
		assert_int_equal(count_present(g.addr, np),
				 sizeof(used) / sizeof(used[0]));
		assert_int_equal(count_present(r.addr, np),
				 sizeof(used) / sizeof(used[0]));
		cprxfer_ram_release(&g);
		cprxfer_state_free(st);
		cprxfer_ram_release(&r);
	}
	no_populate_write = 0;
	free(v);
}

/* Put then get in one process: a second mapping of the same pages. */
static void test_local_get(void **state)
{
	uint64_t a[RP_PFN_SAMPLES], b[RP_PFN_SAMPLES];
	struct cprxfer_ram r, g = { 0 };
	struct stat s1, s2;
	cprxfer_state *st;
	size_t size = 32 * MIB;

	(void)state;
	assert_int_equal(
		cprxfer_ram_create("local", size, CPRXFER_RAM_POPULATE, &r), 0);
	rp_fill(r.addr, size, 5);
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_ram_put(st, "guest.ram", &r), 0);
	assert_int_equal(cprxfer_ram_put(st, "guest.ram", &r), -EEXIST);
	assert_int_equal(
		cprxfer_ram_get(st, "guest.ram", CPRXFER_RAM_POPULATE, &g), 0);
	assert_ptr_not_equal(g.addr, r.addr);
	assert_int_not_equal(g.fd, r.fd);
	assert_true(fcntl(g.fd, F_GETFD) & FD_CLOEXEC);
	assert_int_equal(fstat(r.fd, &s1), 0);
	assert_int_equal(fstat(g.fd, &s2), 0);
	assert_int_equal(s1.st_ino, s2.st_ino);
	assert_int_equal(rp_check(g.addr, size, 5), -1);
	((uint64_t *)g.addr)[100] = 42;
	assert_int_equal(((uint64_t *)r.addr)[100], 42);
	if (rp_pagemap(r.addr, size, a) > 0 && rp_pagemap(g.addr, size, b) > 0)
		assert_int_equal(rp_same_frames(a, b), 0);
	cprxfer_ram_release(&g);
	/* The state's record survives the caller's release. */
	assert_int_equal(cprxfer_ram_get(st, "guest.ram", 0, &g), 0);
	cprxfer_ram_release(&g);
	assert_int_equal(cprxfer_ram_get(st, "nope", 0, &g), -ENOENT);
	assert_int_equal(cprxfer_put_u64(st, "n", 1), 0);
	assert_int_equal(cprxfer_ram_get(st, "n", 0, &g), -ENOMSG);
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
}

/* Add a RAM record by hand, as a buggy or hostile peer could send it. */
static void forge(cprxfer_state *st, const char *name, int fd, uint64_t size)
{
	struct cx_entry *e;

	assert_int_equal(
		cx_state_append(st, name, strlen(name), CPRXFER_TYPE_RAM, &e),
		0);
	e->v.ram.fd = fd;
	e->v.ram.size = size;
	e->v.ram.flags = 0;
	e->v.ram.path = NULL;
	e->owns_fd = false;
}

static void test_refuse(void **state)
{
	struct cprxfer_ram r, g = { 0 }, bad;
	cprxfer_state *st;
	int fd, p[2];

	(void)state;
	st = cprxfer_state_new();

	/* An unsealed memfd could shrink under the mapping: SIGBUS. */
	fd = memfd_create("unsealed", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, MIB), 0);
	bad = (struct cprxfer_ram){ NULL, MIB, fd };
	assert_int_equal(cprxfer_ram_put(st, "unsealed", &bad), -EBADFD);
	assert_non_null(strstr(cprxfer_errmsg(), "'unsealed'"));
	forge(st, "unsealed", fd, MIB);
	assert_int_equal(cprxfer_ram_get(st, "unsealed", 0, &g), -EBADFD);
	assert_non_null(strstr(cprxfer_errmsg(), "F_SEAL_SHRINK"));
	assert_null(g.addr);

	/* A size that differs from the record's. */
	assert_int_equal(cprxfer_ram_create("sized", MIB, 0, &r), 0);
	bad = (struct cprxfer_ram){ r.addr, 2 * MIB, r.fd };
	assert_int_equal(cprxfer_ram_put(st, "sized", &bad), -EBADMSG);
	forge(st, "sized", r.fd, 2 * MIB);
	assert_int_equal(cprxfer_ram_get(st, "sized", 0, &g), -EBADMSG);
	assert_non_null(strstr(cprxfer_errmsg(), "'sized'"));
	assert_non_null(strstr(cprxfer_errmsg(), "2097152"));

	/* Not a memfd nor a regular file. */
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	bad = (struct cprxfer_ram){ NULL, MIB, p[0] };
	assert_int_equal(cprxfer_ram_put(st, "pipe", &bad), -EINVAL);
	forge(st, "pipe", p[0], MIB);
	assert_int_equal(cprxfer_ram_get(st, "pipe", 0, &g), -EINVAL);
	assert_non_null(strstr(cprxfer_errmsg(), "a FIFO or pipe"));
	assert_non_null(strstr(cprxfer_errmsg(), "'pipe'"));
	assert_null(g.addr);

	bad = (struct cprxfer_ram){ NULL, MIB, 9999 };
	assert_int_equal(cprxfer_ram_put(st, "closed", &bad), -EBADF);

	cprxfer_state_free(st);
	close(fd);
	close(p[0]);
	close(p[1]);
	cprxfer_ram_release(&r);
}

static void test_open_file(void **state)
{
	char path[64], again[80];
	struct cprxfer_ram r, g;
	cprxfer_state *st;
	struct cx_entry *e;
	struct stat s;

	(void)state;
	snprintf(path, sizeof(path), "/dev/shm/cprxfer-test-ram-%d", getpid());
	unlink(path);
	assert_int_equal(
		cprxfer_ram_open_file(path, 8 * MIB, CPRXFER_RAM_POPULATE, &r),
		0);
	assert_int_equal(stat(path, &s), 0);
	assert_int_equal(s.st_size, 8 * MIB);
	assert_int_equal(s.st_mode & 0777, 0600);
	assert_true(fcntl(r.fd, F_GETFD) & FD_CLOEXEC);
	rp_fill(r.addr, 8 * MIB, 9);
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_ram_put(st, "file", &r), 0);
	e = cx_state_find(st, "file", 4);
	assert_non_null(e);
	assert_string_equal(e->v.ram.path, path);
	cprxfer_ram_release(&r);

	/* Reopen: the bytes are still there; a bigger size grows it. */
	assert_int_equal(cprxfer_ram_open_file(path, 8 * MIB, 0, &r), 0);
	assert_int_equal(rp_check(r.addr, 8 * MIB, 9), -1);
	cprxfer_ram_release(&r);
	assert_int_equal(cprxfer_ram_open_file(path, 4 * MIB, 0, &r), -EINVAL);
	assert_non_null(strstr(cprxfer_errmsg(), "more than"));

	/* A record without its fd is reopened by path (file mode). */
	e->v.ram.fd = -1; /* the region's fd, closed by the release */
	assert_int_equal(cprxfer_ram_get(st, "file", 0, &g), 0);
	assert_int_equal(rp_check(g.addr, 8 * MIB, 9), -1);
	cprxfer_ram_release(&g);
	/* Gone, or truncated behind our back: refused. */
	snprintf(again, sizeof(again), "%s.x", path);
	assert_int_equal(rename(path, again), 0);
	assert_int_equal(cprxfer_ram_get(st, "file", 0, &g), -ENOENT);
	assert_int_equal(rename(again, path), 0);
	assert_int_equal(truncate(path, MIB), 0);
	assert_int_equal(cprxfer_ram_get(st, "file", 0, &g), -EBADMSG);
	cprxfer_state_free(st);
	unlink(path);

	assert_int_equal(cprxfer_ram_open_file("/dev/null", MIB, 0, &r),
			 -EINVAL);
	assert_int_equal(cprxfer_ram_open_file("/nonexistent/x", MIB, 0, &r),
			 -ENOENT);
}

/* ---- hugetlb pages that are free but reserved ---------------------------- */

static long saved_nr_hugepages = -1;

static long nr_hugepages(long set)
{
	const char *path = "/proc/sys/vm/nr_hugepages";
	long v = -1;
	FILE *f;

	if (set >= 0) {
		f = fopen(path, "we");
		if (!f)
			return -1;
		fprintf(f, "%ld\n", set);
		if (fclose(f) != 0)
			return -1;
	}
	f = fopen(path, "re");
	if (f && fscanf(f, "%ld", &v) != 1)
		v = -1;
	if (f)
		fclose(f);
	return v;
}

/* Give the pages back whatever the test's outcome. */
static int restore_hugepages(void **state)
{
	if (saved_nr_hugepages >= 0)
		nr_hugepages(saved_nr_hugepages);
	saved_nr_hugepages = -1;
	return tu_fd_teardown(state);
}

/*
 * Fault injection: this mmap() wins over libc's for the library linked
 * statically into this test (malloc uses its own internal mmap), so a
 * hugetlb reservation can fail after the check said the pages fit.
 */
static int fail_hugetlb_mmap;

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	struct statfs sf;

	if (fail_hugetlb_mmap && fd >= 0 && fstatfs(fd, &sf) == 0 &&
	    sf.f_type == 0x958458f6 /* HUGETLBFS_MAGIC */) {
		errno = ENOMEM;
		return MAP_FAILED;
	}
	return (void *)syscall(SYS_mmap, addr, len, prot, flags, fd, off);
}

/*
 * Free huge pages that existing mappings have reserved are not ours to
 * take: HUGEPAGE falls back to THP or base pages, as documented, instead
 * of failing in mmap() (on 077bcd1: -ENOMEM from cprxfer_ram_create). A
 * hugetlb mmap() that fails although the pages looked free falls back
 * the same way.
 */
static void test_hugepage_reserved_pages_fall_back(void **state)
{
	const size_t huge = 2 * MIB;
	struct cprxfer_ram r;
	unsigned long long fr, rs;
	void *hold;
	long n;
	int fd, b;

	(void)state;
	if (meminfo("Hugepagesize:") != 2048 || geteuid() != 0)
		skip();
	saved_nr_hugepages = nr_hugepages(-1);
	n = nr_hugepages(saved_nr_hugepages + 4);
	if (saved_nr_hugepages < 0 || n < saved_nr_hugepages + 4) {
		print_message("# skip: cannot add 4 huge pages (%ld)\n", n);
		skip();
	}
	n = (long)(meminfo("HugePages_Free:") - meminfo("HugePages_Rsvd:"));
	assert_true(n >= 4);

	/* Reserve every free page: a shared mapping, never touched. */
	fd = memfd_create("hold", MFD_CLOEXEC | MFD_HUGETLB);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)(n * huge)), 0);
	hold = mmap(NULL, n * huge, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	assert_true(hold != MAP_FAILED);
	fr = meminfo("HugePages_Free:");
	rs = meminfo("HugePages_Rsvd:");
	print_message("# HugePages_Free %llu, HugePages_Rsvd %llu\n", fr, rs);
	assert_true(fr >= 4 && fr - rs == 0);
	assert_int_equal(
		cprxfer_ram_create("huge", 4 * huge,
				   CPRXFER_RAM_HUGEPAGE | CPRXFER_RAM_POPULATE,
				   &r),
		0);
	b = cprxfer_ram_backing(&r);
	assert_true(b == CPRXFER_BACKING_THP || b == CPRXFER_BACKING_PAGES);
	memset(r.addr, 1, r.size);
	cprxfer_ram_release(&r);
	munmap(hold, n * huge);
	close(fd);

	/* The pages are free now, but the hugetlb mmap() still fails. */
	fail_hugetlb_mmap = 1;
	assert_int_equal(
		cprxfer_ram_create("huge", 4 * huge, CPRXFER_RAM_HUGEPAGE, &r),
		0);
	fail_hugetlb_mmap = 0;
	b = cprxfer_ram_backing(&r);
	assert_true(b == CPRXFER_BACKING_THP || b == CPRXFER_BACKING_PAGES);
	cprxfer_ram_release(&r);
	/* And when it works, hugetlb it is. */
	assert_int_equal(
		cprxfer_ram_create("huge", 4 * huge, CPRXFER_RAM_HUGEPAGE, &r),
		0);
	assert_int_equal(cprxfer_ram_backing(&r), CPRXFER_BACKING_HUGETLB);
	cprxfer_ram_release(&r);
}

/* ---- cprxfer_ram_open_file: whose file, and never through a link ------ */

struct shared_dir {
	char dir[64], theirs[96], mine[96];
};

/* A sticky world-writable directory like /dev/shm or /tmp. */
static void shared_dir_init(struct shared_dir *s)
{
	snprintf(s->dir, sizeof(s->dir), "/dev/shm/cprxfer-test-shared-XXXXXX");
	assert_non_null(mkdtemp(s->dir));
	assert_int_equal(chmod(s->dir, 01777), 0);
	snprintf(s->theirs, sizeof(s->theirs), "%s/theirs", s->dir);
	snprintf(s->mine, sizeof(s->mine), "%s/mine", s->dir);
}

static void shared_dir_fini(struct shared_dir *s)
{
	tu_rmdir(s->dir);
}

/* Under a third uid: the other user's file is refused, a new one made. */
static int open_as_third_uid(void *arg)
{
	struct shared_dir *s = arg;
	struct cprxfer_ram r;
	struct stat st;

	if (seteuid(65533) < 0)
		return 20;
	if (cprxfer_ram_open_file(s->theirs, MIB, 0, &r) != -EPERM ||
	    !strstr(cprxfer_errmsg(), "belongs to uid 65534"))
		return 21;
	if (cprxfer_ram_open_file(s->mine, MIB, 0, &r) < 0)
		return 22;
	if (fstat(r.fd, &st) < 0 || st.st_uid != 65533 ||
	    (st.st_mode & 07777) != 0600)
		return 23;
	cprxfer_ram_release(&r);
	return 0;
}

/*
 * Another user's 0666 file in a shared directory is not adopted (on
 * 077bcd1 it was: that user read and wrote the guest's memory).
 */
static void test_open_file_refuses_others_file(void **state)
{
	struct cprxfer_ram r = { 0 };
	struct shared_dir s;
	int fd;

	(void)state;
	shared_dir_init(&s);
	fd = open(s.theirs, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(fchmod(fd, 0666), 0);
	assert_int_equal(fchown(fd, 65534, 65534), 0);
	close(fd);
	assert_int_equal(cprxfer_ram_open_file(s.theirs, MIB, 0, &r), -EPERM);
	assert_non_null(strstr(cprxfer_errmsg(), "belongs to uid 65534"));
	assert_null(r.addr);
	assert_int_equal(tu_wait(tu_fork(open_as_third_uid, &s)), 0);

	/* Ours, but others may write it: refused too. */
	fd = open(s.mine, O_RDWR | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(fchown(fd, geteuid(), getegid()), 0);
	assert_int_equal(fchmod(fd, 0620), 0);
	close(fd);
	assert_int_equal(cprxfer_ram_open_file(s.mine, MIB, 0, &r), -EPERM);
	assert_non_null(strstr(cprxfer_errmsg(), "0620"));
	assert_int_equal(chmod(s.mine, 0640), 0);
	assert_int_equal(cprxfer_ram_open_file(s.mine, MIB, 0, &r), 0);
	cprxfer_ram_release(&r);
	shared_dir_fini(&s);
}

/* A symbolic link is never followed: not as the file, not as its
 * directory, not even dangling (which would create its target). */
static void test_open_file_never_follows_symlinks(void **state)
{
	char link[112], dangling[112], target[112], dirlink[112], via[128];
	struct cprxfer_ram r = { 0 };
	struct shared_dir s;
	struct stat st;

	(void)state;
	shared_dir_init(&s);
	assert_int_equal(cprxfer_ram_open_file(s.mine, MIB, 0, &r), 0);
	cprxfer_ram_release(&r);
	snprintf(link, sizeof(link), "%s/link", s.dir);
	snprintf(dangling, sizeof(dangling), "%s/dangling", s.dir);
	snprintf(target, sizeof(target), "%s/target", s.dir);
	snprintf(dirlink, sizeof(dirlink), "%s/dirlink", s.dir);
	snprintf(via, sizeof(via), "%s/mine", dirlink);
	assert_int_equal(symlink(s.mine, link), 0);
	assert_int_equal(symlink(target, dangling), 0);
	assert_int_equal(symlink(s.dir, dirlink), 0);
	assert_int_equal(cprxfer_ram_open_file(link, MIB, 0, &r), -ELOOP);
	assert_non_null(strstr(cprxfer_errmsg(), "symbolic link"));
	assert_int_equal(cprxfer_ram_open_file(dangling, MIB, 0, &r), -ELOOP);
	assert_int_equal(stat(target, &st), -1);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(cprxfer_ram_open_file(via, MIB, 0, &r), -ELOOP);
	assert_non_null(strstr(cprxfer_errmsg(), "directory"));
	assert_null(r.addr);
	shared_dir_fini(&s);
}

/* ---- a peer's file-backed RAM (SIGBUS by truncation) ------------------- */

struct peer {
	int sock, go[2]; /* go: the parent has truncated the file */
	int allow;	 /* cprxfer_opts_allow_file_ram */
	size_t size;
};

/*
 * The new process: load, map, ack, then run the guest (touch every
 * page) once the old one says it has truncated the file. Exit 0 when
 * the load is refused as it must be; a SIGBUS kills it otherwise.
 */
static int file_ram_receiver(void *arg)
{
	struct peer *p = arg;
	cprxfer_opts *o = cprxfer_opts_new();
	struct cprxfer_ram g;
	cprxfer_channel *ch;
	cprxfer_state *st;
	volatile uint8_t *b;
	size_t i;
	char c;
	int rc;

	close(p->go[1]);
	if (!o || cprxfer_opts_allow_file_ram(o, p->allow) < 0 ||
	    cprxfer_channel_open_opts(p->sock, o, &ch) < 0)
		return 10;
	cprxfer_opts_free(o);
	rc = cprxfer_load(ch, &st);
	if (!p->allow) {
		if (rc != -EPERM ||
		    !strstr(cprxfer_errmsg(), "cprxfer_opts_allow_file_ram"))
			return 11;
		cprxfer_channel_close(ch);
		/* Keep the pipe's reader until the parent has written. */
		if (read(p->go[0], &c, 1) != 1)
			return 13;
		return 0;
	}
	if (rc < 0 || cprxfer_ram_get(st, "ram", 0, &g) < 0 ||
	    cprxfer_ack(ch, 0, NULL) < 0)
		return 12;
	if (read(p->go[0], &c, 1) != 1)
		return 13;
	signal(SIGBUS, SIG_DFL); /* not cmocka's handler: die of it */
	for (b = g.addr, i = 0; i < p->size; i += 4096)
		b[i]++;
	return 14; /* not reached: the truncated pages fault */
}

static pid_t start_file_ram_peer(struct peer *p, const char *path,
				 cprxfer_channel **ch, struct cprxfer_ram *r,
				 cprxfer_state **st)
{
	int sv[2];
	pid_t pid;

	unlink(path);
	assert_int_equal(cprxfer_ram_open_file(path, p->size, 0, r), 0);
	memset(r->addr, 7, p->size);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	assert_int_equal(pipe2(p->go, O_CLOEXEC), 0);
	p->sock = sv[1];
	/* Fork first: the child inherits no heap memory it must free. */
	pid = tu_fork(file_ram_receiver, p);
	assert_true(pid > 0);
	close(sv[1]);
	close(p->go[0]);
	*st = cprxfer_state_new();
	assert_int_equal(cprxfer_ram_put(*st, "ram", r), 0);
	assert_int_equal(cprxfer_channel_open(sv[0], ch), 0);
	assert_int_equal(cprxfer_save(*ch, *st), 0);
	return pid;
}

/*
 * By default a peer's RAM must be a sealed memfd: a file it could
 * truncate after the ack is refused at load, and the sender learns why.
 * On 077bcd1 the receiver died of SIGBUS.
 */
static void test_peer_file_ram_refused_no_sigbus(void **state)
{
	struct peer p = { .size = 4 * MIB };
	struct cprxfer_ram r;
	cprxfer_channel *ch;
	cprxfer_state *st;
	char path[64];
	pid_t pid;

	(void)state;
	snprintf(path, sizeof(path), "/dev/shm/cprxfer-test-peer-%d", getpid());
	pid = start_file_ram_peer(&p, path, &ch, &r, &st);
	assert_int_equal(cprxfer_wait_ack(ch, 10000), -EPERM);
	assert_non_null(strstr(cprxfer_errmsg(), "SIGBUS"));
	print_message("# sender told: %s\n", cprxfer_errmsg());
	/* What the attack did: truncate once the state is away. */
	assert_int_equal(ftruncate(r.fd, 0), 0);
	assert_int_equal(write(p.go[1], "x", 1), 1);
	close(p.go[1]);
	assert_int_equal(tu_wait(pid), 0);
	cprxfer_channel_close(ch);
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
	unlink(path);
}

/* The opt-in trusts the file's writers, as its documentation says: a
 * truncation after the ack is a SIGBUS in the loader. */
static void test_peer_file_ram_allowed_trusts_writers(void **state)
{
	struct peer p = { .size = 4 * MIB, .allow = 1 };
	struct cprxfer_ram r;
	cprxfer_channel *ch;
	cprxfer_state *st;
	char path[64];
	pid_t pid;

	(void)state;
	snprintf(path, sizeof(path), "/dev/shm/cprxfer-test-peer-%d", getpid());
	pid = start_file_ram_peer(&p, path, &ch, &r, &st);
	assert_int_equal(cprxfer_wait_ack(ch, 10000), 0);
	assert_int_equal(ftruncate(r.fd, 0), 0);
	assert_int_equal(write(p.go[1], "x", 1), 1);
	close(p.go[1]);
	assert_int_equal(tu_wait(pid), 128 + SIGBUS);
	cprxfer_channel_close(ch);
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
	unlink(path);
}

/* cprxfer_ram_get on a state from a peer checks again, by itself. */
static void test_peer_state_ram_get_refuses_file(void **state)
{
	struct cprxfer_ram r, g = { 0 };
	cprxfer_state *st;
	char path[64];

	(void)state;
	snprintf(path, sizeof(path), "/dev/shm/cprxfer-test-peer-%d", getpid());
	unlink(path);
	assert_int_equal(cprxfer_ram_open_file(path, MIB, 0, &r), 0);
	st = cprxfer_state_new();
	st->from_peer = true; /* as cx_decode marks a state from a socket */
	forge(st, "file", r.fd, MIB);
	assert_int_equal(cprxfer_ram_get(st, "file", 0, &g), -EPERM);
	assert_non_null(strstr(cprxfer_errmsg(), path));
	assert_null(g.addr);
	st->allow_file_ram = true;
	assert_int_equal(cprxfer_ram_get(st, "file", 0, &g), 0);
	cprxfer_ram_release(&g);
	/* A sealed memfd needs no opt-in; an unsealed one never passes. */
	cprxfer_ram_release(&r);
	st->allow_file_ram = false;
	assert_int_equal(cprxfer_ram_create("m", MIB, 0, &r), 0);
	forge(st, "memfd", r.fd, MIB);
	assert_int_equal(cprxfer_ram_get(st, "memfd", 0, &g), 0);
	cprxfer_ram_release(&g);
	cprxfer_state_free(st);
	cprxfer_ram_release(&r);
	unlink(path);
}

/* cx_ram_check_fd, the decoder's check, code by code. */
static void test_ram_check_fd_codes(void **state)
{
	struct cprxfer_ram r;
	cprxfer_opts *o;
	int fd, p[2];

	(void)state;
	assert_int_equal(cprxfer_ram_create("m", MIB, 0, &r), 0);
	assert_int_equal(cx_ram_check_fd("m", r.fd, MIB, false), 0);
	assert_int_equal(cx_ram_check_fd("m", r.fd, 2 * MIB, false), -EBADMSG);
	cprxfer_ram_release(&r);
	fd = memfd_create("unsealed", MFD_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, MIB), 0);
	assert_int_equal(cx_ram_check_fd("u", fd, MIB, true), -EBADFD);
	close(fd);
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_int_equal(cx_ram_check_fd("p", p[0], MIB, true), -EBADFD);
	assert_non_null(strstr(cprxfer_errmsg(), "a FIFO or pipe"));
	close(p[0]);
	close(p[1]);
	fd = open("/dev/null", O_RDWR | O_CLOEXEC);
	assert_int_equal(cx_ram_check_fd("n", fd, MIB, true), -EBADFD);
	close(fd);
	assert_int_equal(cprxfer_opts_allow_file_ram(NULL, 1), -EINVAL);
	o = cprxfer_opts_new();
	assert_int_equal(cprxfer_opts_allow_file_ram(o, 2), -EINVAL);
	assert_int_equal(cprxfer_opts_allow_file_ram(o, 0), 0);
	cprxfer_opts_free(o);
}

/* ---- without /proc ----------------------------------------------------- */

#ifdef __SANITIZE_ADDRESS__
#define NEED_PROC 1 /* ASan's runtime reads /proc at exit */
#else
#define NEED_PROC 0
#endif

enum {
	K_SEALED,
	K_UNSEALED,
	K_SHM_TMPFILE,
	K_FILE,
	K_DEVNULL,
	K_HUGE,
	K_N
};

static const char *const kind_names[K_N] = {
	"sealed memfd", "unsealed memfd", "O_TMPFILE in /dev/shm",
	"named file",	"/dev/null",	  "hugetlb memfd",
};

struct kinds {
	int check[K_N], put[K_N], path[K_N];
};

/* How the RAM helpers judge each kind of fd. */
static void judge(const int *fd, struct kinds *k)
{
	int i;

	for (i = 0; i < K_N; i++) {
		cprxfer_state *st = cprxfer_state_new();
		struct cprxfer_ram r = { .fd = fd[i], .size = 2 * MIB };
		struct cx_entry *e;

		k->check[i] =
			fd[i] < 0 ? 1
				  : cx_ram_check_fd("k", fd[i], 2 * MIB, false);
		k->put[i] = fd[i] < 0 ? 1 : cprxfer_ram_put(st, "k", &r);
		e = cx_state_find(st, "k", 1);
		k->path[i] = e && e->v.ram.path;
		cprxfer_state_free(st);
	}
}

static int noproc_child(void *arg)
{
	const char *dir = arg;
	struct kinds with, without;
	char path[256];
	int fd[K_N], i, bad = 0;

	fd[K_SEALED] = memfd_create("k", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	fd[K_UNSEALED] = memfd_create("k", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	fd[K_SHM_TMPFILE] =
		open("/dev/shm", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	snprintf(path, sizeof(path), "%s/ram", dir);
	free((void *)dir); /* the child's copy */
	fd[K_FILE] = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0600);
	fd[K_DEVNULL] = open("/dev/null", O_RDWR | O_CLOEXEC);
	fd[K_HUGE] = memfd_create("k", MFD_CLOEXEC | MFD_ALLOW_SEALING |
					       MFD_HUGETLB);
	for (i = 0; i < K_N; i++)
		if (i != K_DEVNULL && fd[i] >= 0 && ftruncate(fd[i], 2 * MIB))
			return 90 + i;
	if (fcntl(fd[K_SEALED], F_ADD_SEALS, F_SEAL_SHRINK) ||
	    (fd[K_HUGE] >= 0 && fcntl(fd[K_HUGE], F_ADD_SEALS, F_SEAL_SHRINK)))
		return 80;
	judge(fd, &with);
	if (unshare(CLONE_NEWNS) < 0 ||
	    mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) < 0 ||
	    umount2("/proc", MNT_DETACH) < 0)
		return 97;
	if (access("/proc/self/fd", F_OK) == 0)
		return 96;
	judge(fd, &without);
	for (i = 0; i < K_N; i++) {
		printf("# %-22s  with /proc: check %4d put %4d path %d;  without: check %4d put %4d path %d\n",
		       kind_names[i], with.check[i], with.put[i], with.path[i],
		       without.check[i], without.put[i], without.path[i]);
		/* The same verdicts; only a named file loses its path. */
		bad |= with.check[i] != without.check[i] ||
		       with.put[i] != without.put[i] ||
		       (i != K_FILE && with.path[i] != without.path[i]);
	}
	bad |= with.check[K_SEALED] != 0 || with.check[K_UNSEALED] != -EBADFD ||
	       with.check[K_SHM_TMPFILE] != -EPERM ||
	       with.check[K_FILE] != -EPERM ||
	       with.check[K_DEVNULL] != -EBADFD || !with.path[K_FILE] ||
	       without.path[K_FILE];
	fflush(stdout);
	return bad;
}

/*
 * The RAM helpers tell a memfd, a file and a dax device apart without
 * /proc (a memfd by its internal mount, not by its /proc name): every fd
 * gets the same verdict with and without /proc; only a named file's
 * path, which only /proc/self/fd gives, is then not recorded.
 */
static void test_ram_kinds_judged_the_same_without_proc(void **state)
{
	char *dir = tu_tmpdir();

	(void)state;
	assert_non_null(dir);
	if (geteuid() != 0 || NEED_PROC) {
		/* unshare(CLONE_NEWNS) needs root; ASan needs /proc */
		fprintf(stderr,
			"skip: needs root and no ASan to unmount /proc\n");
		tu_rmdir(dir);
		free(dir);
		skip();
	}
	assert_int_equal(tu_wait(tu_fork(noproc_child, dir)), 0);
	tu_rmdir(dir);
	free(dir);
}

/* Exec mode: the RAM comes from this very process: files still pass. */
static void test_exec_mode_keeps_file_ram(void **state)
{
	struct cprxfer_ram r, g;
	cprxfer_state *st, *got;
	struct cx_io io;
	char path[64];
	int s;

	(void)state;
	snprintf(path, sizeof(path), "/dev/shm/cprxfer-test-exec-%d", getpid());
	unlink(path);
	assert_int_equal(cprxfer_ram_open_file(path, MIB, 0, &r), 0);
	((uint8_t *)r.addr)[77] = 77;
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_ram_put(st, "ram", &r), 0);
	s = memfd_create("stream", MFD_CLOEXEC);
	assert_int_equal(cx_io_init(&io, s, false), 0);
	assert_int_equal(cx_encode(&io, st, CX_MODE_EXEC), 0);
	cx_io_fini(&io);
	cprxfer_state_free(st);
	assert_int_equal(lseek(s, 0, SEEK_SET), 0);
	/* The decoded state takes the fd number over, as after execve. */
	assert_int_equal(cx_io_init(&io, s, false), 0);
	{
		struct cprxfer_opts o;

		cx_opts_default(&o);
		assert_int_equal(cx_decode(&io, &o, CX_MODE_EXEC, &got), 0);
	}
	cx_io_fini(&io);
	close(s);
	assert_false(got->from_peer);
	assert_int_equal(cprxfer_ram_get(got, "ram", 0, &g), 0);
	assert_int_equal(((uint8_t *)g.addr)[77], 77);
	cprxfer_ram_release(&g);
	cprxfer_state_free(got); /* closes r.fd, which it adopted */
	munmap(r.addr, r.size);
	unlink(path);
}

/* ---- 1 GiB to a child over a socketpair -------------------------------- */

struct xfer {
	int sock;
	struct cprxfer_ram parent; /* the parent's region, to drop */
};

#define SEED	  0x5eed
#define MARK_PAGE 12345

static int receiver(void *arg)
{
	uint64_t mine[RP_PFN_SAMPLES];
	const uint64_t *theirs;
	struct xfer *x = arg;
	struct cprxfer_ram g;
	cprxfer_channel *ch;
	cprxfer_state *st;
	const void *blob;
	size_t len;
	long bad;
	int rc;

	/* Forget the inherited mapping: only the received fd may count. */
	munmap(x->parent.addr, x->parent.size);
	close(x->parent.fd);
	if (cprxfer_channel_open(x->sock, &ch) < 0 || cprxfer_load(ch, &st) < 0)
		return 10;
	if (cprxfer_ram_get(st, "ram", CPRXFER_RAM_POPULATE_RESIDENT, &g) < 0) {
		fprintf(stderr, "ram_get: %s\n", cprxfer_errmsg());
		return 11;
	}
	if (g.size != rp_big())
		return 12;
	bad = rp_check(g.addr, g.size, SEED);
	if (bad >= 0) {
		fprintf(stderr, "page %ld differs\n", bad);
		return 13;
	}
	if (cprxfer_get_blob(st, "pfns", &blob, &len) < 0 ||
	    len != sizeof(mine))
		return 14;
	theirs = blob;
	if (rp_pagemap(g.addr, g.size, mine) < 0)
		return 15;
	rc = rp_same_frames(theirs, mine);
	if (rc > 0)
		return 16;
	if (rc < 0)
		printf("# not root: page frames not compared\n");
	((uint64_t *)g.addr)[MARK_PAGE * (RP_PAGE / 8)] = ~0ull;
	rc = cprxfer_ack(ch, 0, NULL);
	cprxfer_ram_release(&g);
	cprxfer_state_free(st);
	cprxfer_channel_close(ch);
	return rc < 0 ? 17 : 0;
}

static void test_transfer_1gib(void **state)
{
	uint64_t pfns[RP_PFN_SAMPLES];
	struct xfer x;
	cprxfer_channel *ch;
	cprxfer_state *st;
	int sv[2], n;
	int64_t t;
	pid_t pid;

	(void)state;
	t = tu_now_ms();
	assert_int_equal(cprxfer_ram_create("guest", rp_big(),
					    CPRXFER_RAM_POPULATE, &x.parent),
			 0);
	rp_fill(x.parent.addr, rp_big(), SEED);
	n = rp_pagemap(x.parent.addr, rp_big(), pfns);
	assert_true(n >= 0);
	st = cprxfer_state_new();
	assert_int_equal(cprxfer_ram_put(st, "ram", &x.parent), 0);
	assert_int_equal(cprxfer_put_blob(st, "pfns", pfns, sizeof(pfns)), 0);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	x.sock = sv[1];
	pid = tu_fork(receiver, &x);
	assert_true(pid > 0);
	close(sv[1]);
	assert_int_equal(cprxfer_channel_open(sv[0], &ch), 0);
	assert_int_equal(cprxfer_save(ch, st), 0);
	assert_int_equal(cprxfer_wait_ack(ch, 60000), 0);
	/* The child's write, through its own mapping, is in ours. */
	assert_int_equal(((uint64_t *)x.parent.addr)[MARK_PAGE * (RP_PAGE / 8)],
			 ~0ull);
	assert_int_equal(tu_wait(pid), 0);
	printf("# %zu MiB handed over and checked in %lld ms (frames %s)\n",
	       rp_big() >> 20, (long long)(tu_now_ms() - t),
	       n ? "compared" : "not readable");
	cprxfer_channel_close(ch);
	cprxfer_state_free(st);
	cprxfer_ram_release(&x.parent);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		tu_test(test_create),
		tu_test(test_hugepage),
		tu_test(test_populate),
		tu_test(test_populate_resident),
		tu_test(test_local_get),
		tu_test(test_refuse),
		tu_test(test_open_file),
		tu_test(test_transfer_1gib),
		tu_test(test_peer_file_ram_refused_no_sigbus),
		tu_test(test_peer_file_ram_allowed_trusts_writers),
		tu_test(test_peer_state_ram_get_refuses_file),
		tu_test(test_ram_check_fd_codes),
		tu_test(test_ram_kinds_judged_the_same_without_proc),
		tu_test(test_exec_mode_keeps_file_ram),
		tu_test(test_open_file_refuses_others_file),
		tu_test(test_open_file_never_follows_symlinks),
		cmocka_unit_test_setup_teardown(
			test_hugepage_reserved_pages_fall_back, tu_fd_setup,
			restore_hugepages),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
