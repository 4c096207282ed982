/* SPDX-License-Identifier: MIT */
/* Helpers shared by the libFuzzer targets (see fuzz.h). */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cprxfer/cprxfer.h>

#include "fuzz.h"
#include "state.h"

#define FZ_SNDBUF (16 << 20)

int fz_count_fds(void)
{
	static int dirfd = -1;
	char buf[8192];
	long n;
	int count = 0;

	if (dirfd < 0) {
		dirfd = open("/proc/self/fd",
			     O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dirfd < 0) {
			perror("/proc/self/fd");
			abort();
		}
	}
	lseek(dirfd, 0, SEEK_SET);
	while ((n = syscall(SYS_getdents64, dirfd, buf, sizeof(buf))) > 0) {
		long off = 0;

		while (off < n) {
			struct dirent64 *e = (struct dirent64 *)(buf + off);

			count += e->d_name[0] != '.';
			off += e->d_reclen;
		}
	}
	return count;
}

void fz_check_fds(int before, const char *what)
{
	int now = fz_count_fds();

	if (now != before) {
		fprintf(stderr, "fd leak in %s: %d fds before, %d after\n",
			what, before, now);
		abort();
	}
}

int fz_socketpair(int sv[2])
{
	int sz = FZ_SNDBUF;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		perror("socketpair");
		abort();
	}
	/* As root the buffer may pass wmem_max; otherwise best effort. */
	if (setsockopt(sv[1], SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)))
		setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
	return 0;
}

static int make_fd(int memfd)
{
	int fd;

	if (!memfd)
		return eventfd(0, EFD_CLOEXEC);
	fd = memfd_create("fuzz", MFD_CLOEXEC);
	if (fd >= 0 && ftruncate(fd, 4096) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int send_one(int sock, const uint8_t *p, size_t n, unsigned nfds,
		    int memfd)
{
	union {
		char buf[CMSG_SPACE(8 * sizeof(int))];
		struct cmsghdr align;
	} u;
	struct iovec iov = { .iov_base = (void *)p, .iov_len = n };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1 };
	int fds[8];
	unsigned i;
	ssize_t r;

	for (i = 0; i < nfds; i++) {
		fds[i] = make_fd(memfd);
		if (fds[i] < 0) {
			perror("fuzz fd");
			abort();
		}
	}
	if (nfds) {
		struct cmsghdr *c;

		memset(u.buf, 0, sizeof(u.buf));
		m.msg_control = u.buf;
		m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
		c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
		memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
	}
	r = sendmsg(sock, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
	/* In flight the fds are the kernel's; ours close either way. */
	for (i = 0; i < nfds; i++)
		close(fds[i]);
	return r == (ssize_t)n ? 0 : -1;
}

size_t fz_send_segments(int sock, const uint8_t *data, size_t size)
{
	size_t pos = 0, sent = 0;

	while (pos + 2 <= size) {
		unsigned ctl = data[pos], nfds = 0;
		size_t n = (size_t)data[pos + 1] + 1;

		pos += 2;
		if (n > size - pos)
			n = size - pos;
		if (ctl < 16)
			nfds = ctl & 7;
		if (!n && !nfds)
			break;
		if (!n) {
			/* fds need at least one byte to ride on */
			break;
		}
		if (send_one(sock, data + pos, n, nfds, ctl & 8) < 0)
			break;
		sent += nfds;
		pos += n;
	}
	shutdown(sock, SHUT_WR);
	return sent;
}

void fz_send_raw(int sock, const uint8_t *data, size_t size)
{
	while (size) {
		ssize_t r = send(sock, data, size, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (r <= 0)
			break;
		data += r;
		size -= (size_t)r;
	}
	shutdown(sock, SHUT_WR);
}

void fz_report(const char *what, int rc)
{
	static int verbose = -1;

	if (verbose < 0)
		verbose = getenv("CX_FUZZ_VERBOSE") != NULL;
	if (verbose)
		fprintf(stderr, "%s: %d %s\n", what, rc,
			rc < 0 ? cprxfer_errmsg() : "");
}

static void check_cloexec(const char *name, int fd)
{
	int fl = fcntl(fd, F_GETFD);

	if (fl < 0 || !(fl & FD_CLOEXEC)) {
		fprintf(stderr,
			"entry '%s': fd %d closed or not close-on-exec\n", name,
			fd);
		abort();
	}
}

void fz_check_state(struct cprxfer_state *st)
{
	size_t i, n = cprxfer_state_count(st);

	for (i = 0; i < n; i++) {
		const struct cx_entry *x = &st->e[i];
		const char *name, *s;
		const void *blob;
		uint64_t u;
		int64_t v;
		size_t len;
		int type, fd, rc = -1;

		if (cprxfer_state_entry(st, i, &name, &type) < 0 ||
		    strlen(name) != x->name_len)
			abort();
		switch (type) {
		case CPRXFER_TYPE_U64:
			rc = cprxfer_get_u64(st, name, &u);
			break;
		case CPRXFER_TYPE_I64:
			rc = cprxfer_get_i64(st, name, &v);
			break;
		case CPRXFER_TYPE_BLOB:
			rc = cprxfer_get_blob(st, name, &blob, &len);
			/* touch every byte: ASan checks the length */
			if (rc == 0 && len && memchr(blob, 0x5a, len) == blob)
				rc = 0;
			break;
		case CPRXFER_TYPE_STR:
			rc = cprxfer_get_str(st, name, &s);
			if (rc == 0 && strlen(s) != x->v.blob.len)
				abort();
			break;
		case CPRXFER_TYPE_FD:
			rc = cprxfer_get_fd(st, name, &fd);
			if (rc == 0)
				check_cloexec(name, fd);
			break;
		case CPRXFER_TYPE_FDS: {
			const int *fds;
			size_t k;

			rc = cprxfer_get_fds(st, name, &fds, &len);
			for (k = 0; rc == 0 && k < len; k++)
				check_cloexec(name, fds[k]);
			break;
		}
		case CPRXFER_TYPE_RAM:
			fd = x->v.ram.fd;
			if (fd >= 0)
				check_cloexec(name, fd);
			if (fd < 0 && !x->v.ram.path)
				abort();
			rc = 0;
			break;
		}
		if (rc < 0) {
			fprintf(stderr,
				"entry '%s' of type %d unreadable: %s\n", name,
				type, cprxfer_errmsg());
			abort();
		}
	}
}
