/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the libFuzzer targets: fd-leak accounting and the
 * segment format that feeds a byte stream through a real socketpair.
 *
 * Segment format (fuzz-stream): the input is a run of segments, each
 *
 *   u8 fdctl   0..7: attach that many eventfds to this segment;
 *              8..15: attach (fdctl - 8) memfds of 4 KiB; else none
 *   u8 len     the segment carries len + 1 bytes of stream
 *   ...        the bytes (fewer if the input ends first)
 *
 * and each segment goes out as its own sendmsg(), its fds attached with
 * SCM_RIGHTS, so the decoder sees the stream in the fuzzer's chunks.
 */
#ifndef CX_FUZZ_H
#define CX_FUZZ_H

#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Open fds of this process (cheap: one getdents on /proc/self/fd). */
int fz_count_fds(void);

/* abort() with a message if the fd count differs from before. */
void fz_check_fds(int before, const char *what);

/* A connected AF_UNIX stream socketpair with a large send buffer. */
int fz_socketpair(int sv[2]);

/*
 * Send data to sock as segments (format above), then shut down sock's
 * writing side. Returns the number of fds sent. Stops early, without
 * blocking, if the socket buffer fills.
 */
size_t fz_send_segments(int sock, const uint8_t *data, size_t size);

/* Send raw bytes (no segments), then shut down writing. */
void fz_send_raw(int sock, const uint8_t *data, size_t size);

/*
 * Report the outcome of a load on stderr when CX_FUZZ_VERBOSE is set
 * (to check that seeds load); rc is the load's return value.
 */
void fz_report(const char *what, int rc);

/*
 * Check what a successful load produced: read every value back, check
 * that every fd it holds is open and close-on-exec; abort() if not.
 */
struct cprxfer_state;
void fz_check_state(struct cprxfer_state *st);

#endif
