/* SPDX-License-Identifier: MIT */
/*
 * File (reboot) mode: the state in a file, no fds; RAM regions by path.
 *
 * A save is atomic and durable: the stream goes to a temporary file in
 * the same directory, which is fsync()ed and renamed over the target,
 * then the directory is fsync()ed. A crash at any point leaves the old
 * file or the new one, never a torn one. A failure after the rename
 * (the directory's fsync) is -EINPROGRESS: the new file is in place, its
 * name may not survive a crash yet. A load checks the CRC32C the
 * stream ends with; a file that fails to decode is checked end to end,
 * so that corruption reads as -EBADMSG rather than as whatever a flipped
 * length happened to trip.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crc32c.h"
#include "cleanup.h"
#include "error.h"
#include "stream.h"
#include "wire.h"

/* Split path into its directory ("." if none) and base name. */
static int split(const char *path, char *dir, size_t dirlen, const char **base)
{
	const char *slash = strrchr(path, '/');

	if (!slash) {
		snprintf(dir, dirlen, ".");
		*base = path;
	} else if (slash == path) {
		snprintf(dir, dirlen, "/");
		*base = slash + 1;
	} else {
		if ((size_t)(slash - path) >= dirlen)
			return -ENAMETOOLONG;
		memcpy(dir, path, (size_t)(slash - path));
		dir[slash - path] = 0;
		*base = slash + 1;
	}
	return **base ? 0 : -EISDIR;
}

/*
 * A RAM file saved by path must hold its bytes when the state says so:
 * flush what the mappings wrote (free on tmpfs, real on a disk or dax).
 */
static int sync_ram(const cprxfer_state *st)
{
	size_t i;

	for (i = 0; i < st->n; i++) {
		const struct cx_entry *e = &st->e[i];

		if (e->type != CPRXFER_TYPE_RAM || e->v.ram.fd < 0 ||
		    !e->v.ram.path)
			continue;
		if (fsync(e->v.ram.fd) < 0 && errno != EINVAL)
			return cx_err(-errno, "record '%s': fsync of %s: %s",
				      e->name, e->v.ram.path, strerror(errno));
	}
	return 0;
}

CX_EXPORT int cprxfer_save_file(const cprxfer_state *st, const char *path)
{
	char dir[PATH_MAX], tmp[PATH_MAX];
	cx_autoclose int dfd = -1;
	const char *base;
	struct cx_io io;
	int rc, fd;

	if (!st || !path)
		return cx_err(-EINVAL, "cprxfer_save_file: NULL argument");
	rc = split(path, dir, sizeof(dir), &base);
	if (rc < 0)
		return cx_err(rc, "cprxfer_save_file: bad path '%s'", path);
	if (snprintf(tmp, sizeof(tmp), "%s/.%s.XXXXXX", dir, base) >=
	    (int)sizeof(tmp))
		return cx_err(-ENAMETOOLONG,
			      "cprxfer_save_file: path '%s' is too long", path);
	rc = sync_ram(st);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_save_file");
	fd = mkostemp(tmp, O_CLOEXEC); /* mode 0600 */
	if (fd < 0)
		return cx_err(
			-errno,
			"cprxfer_save_file: creating a temporary file in %s: %s",
			dir, strerror(errno));
	rc = cx_io_init(&io, fd, false);
	if (rc == 0) {
		rc = cx_encode(&io, st, CX_MODE_FILE);
		cx_io_fini(&io);
	}
	if (rc == 0 && fsync(fd) < 0)
		rc = cx_err(-errno, "fsync %s: %s", tmp, strerror(errno));
	if (close(fd) < 0 && rc == 0)
		rc = cx_err(-errno, "close %s: %s", tmp, strerror(errno));
	if (rc == 0 && rename(tmp, path) < 0)
		rc = cx_err(-errno, "rename %s to %s: %s", tmp, path,
			    strerror(errno));
	if (rc < 0) {
		unlink(tmp);
		return cx_err_prefix(rc, "cprxfer_save_file");
	}
	/*
	 * The rename itself must reach the disk. From here on the new file
	 * is in place: a failure says so, with a code of its own.
	 */
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0 || fsync(dfd) < 0)
		return cx_err(
			-EINPROGRESS,
			"cprxfer_save_file: %s is in place, but the rename may not be durable: %s of its directory %s failed: %s",
			path, dfd < 0 ? "open" : "fsync", dir, strerror(errno));
	return 0;
}

/*
 * After a failed decode: does the file's own checksum hold? The END
 * frame closes the file; its CRC32C covers every byte before it.
 */
static int verify_crc(int fd, const char *path)
{
	uint8_t buf[65536], tail[8];
	uint32_t crc = 0;
	struct stat st;
	off_t off = 0, end;

	if (fstat(fd, &st) < 0)
		return cx_err(-errno, "fstat %s: %s", path, strerror(errno));
	if (st.st_size < CX_HDR * 2 + CX_BEGIN_LEN + CX_END_LEN)
		return cx_err(-EBADMSG, "%s: truncated (%lld bytes)", path,
			      (long long)st.st_size);
	end = st.st_size - 8;
	while (off < end) {
		size_t n = end - off < (off_t)sizeof(buf) ? (size_t)(end - off)
							  : sizeof(buf);
		ssize_t r = pread(fd, buf, n, off);

		if (r <= 0)
			return cx_err(r < 0 ? -errno : -EBADMSG, "read %s: %s",
				      path,
				      r < 0 ? strerror(errno) : "truncated");
		crc = cx_crc32c(crc, buf, (size_t)r);
		off += r;
	}
	if (pread(fd, tail, 8, end) != 8)
		return cx_err(-EBADMSG, "%s: truncated", path);
	if (cx_get32(tail) != crc || cx_get32(tail + 4) != 0)
		return cx_err(
			-EBADMSG,
			"%s: checksum mismatch: the file is corrupted or truncated",
			path);
	return 0;
}

/*
 * After a good decode: the stream must fill the file exactly, and the
 * END frame's last field, which its checksum does not cover, is zero.
 */
static int check_tail(int fd, const char *path, const struct stat *st)
{
	uint8_t b[8];

	if (pread(fd, b, 8, CX_HDR + 16) != 8 ||
	    cx_get64(b) != (uint64_t)st->st_size)
		return cx_err(
			-EBADMSG,
			"%s: %lld bytes, the stream it holds declares %llu",
			path, (long long)st->st_size,
			(unsigned long long)cx_get64(b));
	if (pread(fd, b, 4, st->st_size - 4) != 4 || cx_get32(b) != 0)
		return cx_err(-EBADMSG, "%s: END frame corrupted", path);
	return 0;
}

/*
 * Open a state file for reading, at once or not at all: O_NONBLOCK so
 * that a FIFO or a device cannot make open() wait, and the type checked
 * before a byte is read.
 */
static int open_state_file(const char *path, struct stat *st, int *out)
{
	cx_autoclose int fd = -1;
	struct stat l;
	int fl;

	fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0 && errno == ENXIO && stat(path, &l) == 0 &&
	    S_ISSOCK(l.st_mode))
		return cx_err(-EINVAL, "%s is a socket, not a state file",
			      path);
	if (fd < 0)
		return cx_err(-errno, "open %s: %s", path, strerror(errno));
	if (fstat(fd, st) < 0)
		return cx_err(-errno, "fstat %s: %s", path, strerror(errno));
	if (!S_ISREG(st->st_mode))
		return cx_err(-EINVAL, "%s is %s, not a state file", path,
			      cx_file_kind(st->st_mode));
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
		return cx_err(-errno, "fcntl %s: %s", path, strerror(errno));
	*out = cx_steal_fd(&fd);
	return 0;
}

CX_EXPORT int cprxfer_load_file_opts(const char *path, const cprxfer_opts *o,
				     cprxfer_state **out)
{
	struct cprxfer_opts opts;
	cx_autoclose int fd = -1;
	cprxfer_state *res;
	char why[512];
	struct stat st;
	struct cx_io io;
	int rc;

	if (!path || !out)
		return cx_err(-EINVAL, "cprxfer_load_file: NULL argument");
	rc = open_state_file(path, &st, &fd);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_load_file");
	cx_opts_copy(&opts, o);
	rc = cx_io_init(&io, fd, false);
	if (rc < 0)
		return cx_err_prefix(rc, "cprxfer_load_file");
	rc = cx_decode(&io, &opts, CX_MODE_FILE, &res);
	cx_io_fini(&io);
	if (rc == 0) {
		rc = check_tail(fd, path, &st);
		if (rc == 0)
			*out = res;
		else
			cprxfer_state_free(res);
	} else if (rc != -ENOMEM && rc != -EBADMSG) {
		/* A limit, a version, a type: or a flipped bit? */
		int err = rc;

		snprintf(why, sizeof(why), "%s", cprxfer_errmsg());
		rc = verify_crc(fd, path);
		if (rc == 0)
			rc = cx_err(err, "%s", why);
		else if (rc == -EBADMSG)
			rc = cx_err(
				rc,
				"%s: checksum mismatch: the file is corrupted (decoding said: %.300s)",
				path, why);
	}
	return rc < 0 ? cx_err_prefix(rc, "cprxfer_load_file") : 0;
}

CX_EXPORT int cprxfer_load_file(const char *path, cprxfer_state **out)
{
	return cprxfer_load_file_opts(path, NULL, out);
}
