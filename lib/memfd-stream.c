/* SPDX-License-Identifier: MIT */
/*
 * The detached stream: a state encoded into a sealed memfd, with its
 * fds listed apart, in stream order, for a carrier that moves fds by
 * itself (a service manager's fd store: restart mode; the same across a
 * kexec). The stream's FDS frames announce the fds without carrying
 * them; the loader queues the fds it is given in that order and decodes
 * as from a socket.
 *
 * The loader does not require the seals: a memfd that crossed a kexec
 * through the kernel's Live Update Orchestrator comes back without
 * them. The stream's own CRC32C, checked by the decoder, proves that
 * the bytes are the ones saved.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cleanup.h"
#include "error.h"
#include "opts.h"
#include "stream.h"

#define CX_STATE_MEMFD "cprxfer-state"

CX_EXPORT int cprxfer_save_memfd(const cprxfer_state *st, uint32_t mode,
				 int *memfd, int **fds, size_t *nfds)
{
	cx_autoclose int fd = -1;
	cx_autofree int *v = NULL;
	struct cx_io io;
	size_t i, n, k = 0;
	int rc;

	if (!st || !memfd || !fds || !nfds)
		return cx_err(-EINVAL, "cprxfer_save_memfd: NULL argument");
	if (mode != CPRXFER_MODE_RESTART && mode != CPRXFER_MODE_KEXEC)
		return cx_err(
			-EINVAL,
			"cprxfer_save_memfd: mode 0x%x is neither CPRXFER_MODE_RESTART nor CPRXFER_MODE_KEXEC",
			mode);
	n = cx_state_nfds(st);
	if (n) {
		v = malloc(n * sizeof(*v));
		if (!v)
			return cx_err(-ENOMEM,
				      "cprxfer_save_memfd: out of memory");
		for (i = 0; i < st->n; i++) {
			const int *f;
			size_t m = cx_entry_fds(&st->e[i], &f);

			if (m)
				memcpy(v + k, f, m * sizeof(int));
			k += m;
		}
	}
	fd = memfd_create(CX_STATE_MEMFD, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return cx_err(-errno, "cprxfer_save_memfd: memfd_create: %s",
			      strerror(errno));
	rc = cx_io_init(&io, fd, false);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_save_memfd");
	rc = cx_encode(&io, st,
		       mode == CPRXFER_MODE_KEXEC ? CX_MODE_KEXEC
						  : CX_MODE_RESTART);
	cx_io_fini(&io);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_save_memfd");
	if (fcntl(fd, F_ADD_SEALS,
		  F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
		return cx_err(-errno, "cprxfer_save_memfd: sealing: %s",
			      strerror(errno));
	*memfd = cx_steal_fd(&fd);
	*fds = cx_steal_ptr(&v);
	*nfds = n;
	return 0;
}

CX_EXPORT int cprxfer_load_memfd(int memfd, const int *fds, size_t nfds,
				 const cprxfer_opts *o, cprxfer_state **out)
{
	struct cprxfer_opts opts;
	struct cx_io io;
	size_t i;
	int rc;

	if (!out || (nfds && !fds))
		return cx_err(-EINVAL, "cprxfer_load_memfd: NULL argument");
	if (memfd < 0 || fcntl(memfd, F_GETFD) < 0)
		return cx_err(-EBADF, "cprxfer_load_memfd: fd %d is not open",
			      memfd);
	cx_opts_copy(&opts, o);
	if (nfds > cx_opts_max_fds(&opts))
		return cx_err(-EMFILE,
			      "cprxfer_load_memfd: %zu fds given, limit %llu",
			      nfds, (unsigned long long)cx_opts_max_fds(&opts));
	if (lseek(memfd, 0, SEEK_SET) < 0)
		return cx_err(-errno, "cprxfer_load_memfd: lseek: %s",
			      strerror(errno));
	rc = cx_io_init(&io, memfd, false);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_load_memfd");
	cx_io_deadline(&io, opts.timeout_ms);
	/* The state gets its own fds; the caller's stay the caller's. */
	for (i = 0; rc == 0 && i < nfds; i++) {
		int d = fcntl(fds[i], F_DUPFD_CLOEXEC, 3);

		if (d < 0)
			rc = cx_err(errno == EBADF ? -EBADF : -errno,
				    "fd %zu of %zu (%d): %s", i, nfds, fds[i],
				    strerror(errno));
		else
			rc = cx_io_queue_fd(&io, d);
	}
	if (rc == 0)
		rc = cx_decode(&io, &opts, CX_MODE_RESTART, out);
	cx_io_fini(&io);
	return rc < 0 ? cx_err_prefix(rc, "cprxfer_load_memfd") : 0;
}
