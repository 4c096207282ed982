/* SPDX-License-Identifier: MIT */
/*
 * libcprxfer: descriptor-preserving process handoff.
 *
 * A process hands its open file descriptors, its guest RAM and its
 * in-memory state to its successor: over an AF_UNIX socket (transfer
 * mode), across execve() in place (exec mode) or through a file that
 * survives a reboot (file mode).
 *
 * Conventions for every call:
 *  - int functions return >= 0 on success and a negative errno on
 *    failure; output parameters are left untouched on failure;
 *  - after a failure, cprxfer_errmsg() names what failed;
 *  - every fd the library creates or receives is close-on-exec;
 *  - the library never prints, exits, raises SIGPIPE or changes signal
 *    dispositions;
 *  - objects are used by one thread at a time; distinct objects may be
 *    used from distinct threads.
 *
 * The reference pages in docs/ref/ describe each function and every
 * error it returns.
 */
#ifndef CPRXFER_CPRXFER_H
#define CPRXFER_CPRXFER_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cprxfer/version.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors and version ------------------------------------------- */

/* The reason for the calling thread's last failure ("" if none). */
const char *cprxfer_errmsg(void);

/* The runtime library version, e.g. "0.1.0". */
const char *cprxfer_version(void);

/* ---- state: a typed, ordered map of named values ------------------- */

typedef struct cprxfer_state cprxfer_state;

enum {
	CPRXFER_TYPE_U64 = 1,
	CPRXFER_TYPE_I64,
	CPRXFER_TYPE_BLOB,
	CPRXFER_TYPE_STR,
	CPRXFER_TYPE_FD,
	CPRXFER_TYPE_RAM,
	CPRXFER_TYPE_FDS /* an array of fds under one name */
};

/* Longest name, in bytes, without the terminating NUL. */
#define CPRXFER_NAME_MAX 255

cprxfer_state *cprxfer_state_new(void);
void cprxfer_state_free(cprxfer_state *st);

int cprxfer_put_u64(cprxfer_state *st, const char *name, uint64_t v);
int cprxfer_put_i64(cprxfer_state *st, const char *name, int64_t v);
int cprxfer_put_blob(cprxfer_state *st, const char *name, const void *data,
		     size_t len);
int cprxfer_put_str(cprxfer_state *st, const char *name, const char *s);
int cprxfer_put_fd(cprxfer_state *st, const char *name, int fd);
/*
 * n fds under one name, one record on the wire (many client
 * connections, per-queue eventfds). Borrowed like cprxfer_put_fd: the
 * fds stay the caller's and must stay open until the save; the array is
 * copied.
 */
int cprxfer_put_fds(cprxfer_state *st, const char *name, const int *fds,
		    size_t n);
/*
 * The same, but the state takes the fd(s) over: it closes them when it
 * is freed, cprxfer_take_fd/_fds hands them back, and the caller must
 * not close them. Nothing else can close and reuse their numbers, so a
 * save sends them without the per-fd identity check of the put calls
 * (the fast path for thousands of fds). On failure the caller keeps
 * them.
 */
int cprxfer_adopt_fd(cprxfer_state *st, const char *name, int fd);
int cprxfer_adopt_fds(cprxfer_state *st, const char *name, const int *fds,
		      size_t n);

int cprxfer_get_u64(const cprxfer_state *st, const char *name, uint64_t *v);
int cprxfer_get_i64(const cprxfer_state *st, const char *name, int64_t *v);
int cprxfer_get_blob(const cprxfer_state *st, const char *name,
		     const void **data, size_t *len);
int cprxfer_get_str(const cprxfer_state *st, const char *name, const char **s);
int cprxfer_get_fd(const cprxfer_state *st, const char *name, int *fd);
int cprxfer_take_fd(cprxfer_state *st, const char *name);
/* The fds of an array, owned by the state (valid until it is freed). */
int cprxfer_get_fds(const cprxfer_state *st, const char *name, const int **fds,
		    size_t *n);
/* Take an array's fds: the caller owns them and frees *fds (free()). */
int cprxfer_take_fds(cprxfer_state *st, const char *name, int **fds, size_t *n);

size_t cprxfer_state_count(const cprxfer_state *st);
int cprxfer_state_entry(const cprxfer_state *st, size_t i, const char **name,
			int *type);

/* ---- options: limits, timeout, peer policy ------------------------- */

/*
 * An options object tunes the calls that take one (the *_opts
 * variants). The plain calls use the defaults below. An options object
 * is copied by the call that takes it: it may be freed right after.
 */
typedef struct cprxfer_opts cprxfer_opts;

/* Limits on what a loader accepts, for cprxfer_opts_set_limit(). */
enum {
	CPRXFER_LIMIT_RECORD_BYTES = 1, /* one value's bytes */
	CPRXFER_LIMIT_STREAM_BYTES,	/* all frames of one stream */
	CPRXFER_LIMIT_RECORDS,		/* records in one stream */
	CPRXFER_LIMIT_FDS		/* fds in one stream */
};

#define CPRXFER_DEFAULT_RECORD_BYTES (64ull << 20) /* 64 MiB */
#define CPRXFER_DEFAULT_STREAM_BYTES (1ull << 30)  /* 1 GiB */
#define CPRXFER_DEFAULT_RECORDS	     1000000ull
/* CPRXFER_LIMIT_FDS defaults to the soft RLIMIT_NOFILE at load time. */
#define CPRXFER_DEFAULT_TIMEOUT_MS 10000

cprxfer_opts *cprxfer_opts_new(void);
void cprxfer_opts_free(cprxfer_opts *o);
int cprxfer_opts_set_limit(cprxfer_opts *o, int which, uint64_t value);
int cprxfer_opts_set_timeout(cprxfer_opts *o, int timeout_ms);
/* An application tag ("demo-vmm/1"): a peer whose tag differs is refused. */
int cprxfer_opts_set_tag(cprxfer_opts *o, const char *tag);
/* Also accept a peer running as this effective uid / with this pid. */
int cprxfer_opts_allow_uid(cprxfer_opts *o, uid_t uid);
int cprxfer_opts_allow_pid(cprxfer_opts *o, pid_t pid);
/*
 * A listener's socket file: its permission bits (default 0600) and its
 * group (default: as created), set before the socket appears at the path.
 */
int cprxfer_opts_set_socket_mode(cprxfer_opts *o, mode_t mode);
int cprxfer_opts_set_socket_group(cprxfer_opts *o, gid_t gid);
/*
 * Let a loader accept RAM regions a peer sends as a file or dax device,
 * not only as a memfd sealed against shrinking (allow: 1; default 0).
 * This trusts the peer and every writer of the file not to truncate it:
 * a truncation is a SIGBUS in the process that maps the region.
 */
int cprxfer_opts_allow_file_ram(cprxfer_opts *o, int allow);
/*
 * What the fallback of cprxfer_exec_opts() runs if the new image fails
 * before it confirms: path (NULL: the running program, reopened through
 * /proc/self/exe) with argv (NULL: the new image's argv). Not copied:
 * both must stay valid until cprxfer_exec_opts() is called.
 */
int cprxfer_opts_set_exec_fallback(cprxfer_opts *o, const char *path,
				   char *const argv[]);

/* ---- channel: a connected unix socket with a handshake ------------- */

typedef struct cprxfer_channel cprxfer_channel;
typedef struct cprxfer_listener cprxfer_listener;

/* incoming (new process) */
int cprxfer_listen(const char *path, cprxfer_listener **out);
int cprxfer_listen_opts(const char *path, const cprxfer_opts *o,
			cprxfer_listener **out);
int cprxfer_accept(cprxfer_listener *l, int timeout_ms, cprxfer_channel **out);
/*
 * For an event loop: an fd that is readable when cprxfer_accept(l, 0,
 * ...) can make progress; that call never blocks (-EAGAIN: not yet).
 */
int cprxfer_listener_fd(const cprxfer_listener *l);
void cprxfer_listener_close(cprxfer_listener *l);

/* outgoing (old process) */
int cprxfer_connect(const char *path, int timeout_ms, cprxfer_channel **out);
int cprxfer_connect_opts(const char *path, int timeout_ms,
			 const cprxfer_opts *o, cprxfer_channel **out);

/* either side: wrap an already-connected AF_UNIX stream socket */
int cprxfer_channel_open(int sockfd, cprxfer_channel **out);
int cprxfer_channel_open_opts(int sockfd, const cprxfer_opts *o,
			      cprxfer_channel **out);
void cprxfer_channel_close(cprxfer_channel *ch);

int cprxfer_save(cprxfer_channel *ch, const cprxfer_state *st);
int cprxfer_load(cprxfer_channel *ch, cprxfer_state **out);

/*
 * Acks: the incoming side acks each loaded state, 0 ("ready") or a
 * refusal; the outgoing side waits for it. wait_ack(ch, 0) is a
 * non-blocking step: -EAGAIN if the ack is not (all) there yet,
 * keeping any part of it for the next call.
 */
int cprxfer_ack(cprxfer_channel *ch, int status, const char *reason);
int cprxfer_wait_ack(cprxfer_channel *ch, int timeout_ms);
int cprxfer_channel_set_timeout(cprxfer_channel *ch, int timeout_ms);

/*
 * Event loops (docs/event-loop.md): an fd to poll for POLLIN (an epoll
 * fd owned by the channel), readable when the operation in progress can
 * advance or its deadline passed; then call that operation's step.
 * Every step returns at once; -EAGAIN means "not yet". Closing the
 * channel cancels whatever is in progress.
 */
int cprxfer_channel_fd(cprxfer_channel *ch);

/*
 * Connect without blocking: a channel at once (or the failure, e.g.
 * -ENOTSOCK), still connecting; poll cprxfer_channel_fd() for POLLIN
 * and call cprxfer_connect_step() until it returns 0 (connected,
 * handshake done) or a failure; -EAGAIN: not yet. Until then every
 * other call on the channel fails with -EINPROGRESS; close cancels.
 */
int cprxfer_connect_start(const char *path, int timeout_ms,
			  const cprxfer_opts *o, cprxfer_channel **out);
int cprxfer_connect_step(cprxfer_channel *ch);

/*
 * Non-blocking save and load (docs/event-loop.md). save_start checks and
 * encodes st at once (any refusal before a byte leaves) and sends what
 * the socket takes: 0 all sent, -EAGAIN: poll the channel fd and call
 * save_step until it is not -EAGAIN. st and its fds must stay as they
 * are until then. load_step reads what is there: -EAGAIN until the
 * whole stream is in, then 0 with *out, or the error cprxfer_load()
 * would give. While either is in progress, every other call on the
 * channel but cprxfer_channel_fd(), cprxfer_channel_peer() and close
 * fails with -EINPROGRESS; closing the channel cancels it.
 */
int cprxfer_save_start(cprxfer_channel *ch, const cprxfer_state *st);
int cprxfer_save_step(cprxfer_channel *ch);
int cprxfer_load_step(cprxfer_channel *ch, cprxfer_state **out);

/*
 * The decision: exactly one process owns the workload after any outcome.
 * Outgoing side, after cprxfer_wait_ack() == 0: cprxfer_commit() (then
 * never resume) or cprxfer_abort() (then resume); closing an undecided
 * channel aborts. Incoming side, after cprxfer_ack(ch, 0, NULL):
 * cprxfer_wait_commit() is 0 (commit: use the state), -ECANCELED
 * (aborted: exit without using it), -EOWNERDEAD (the outgoing process
 * died undecided), -ECONNRESET or -ETIMEDOUT.
 */
int cprxfer_commit(cprxfer_channel *ch);
int cprxfer_abort(cprxfer_channel *ch, const char *reason);
int cprxfer_wait_commit(cprxfer_channel *ch, int timeout_ms);

/* The peer's credentials and application tag, as the handshake saw them. */
int cprxfer_channel_peer(const cprxfer_channel *ch, pid_t *pid, uid_t *uid,
			 const char **tag);

/* ---- successor: start the new binary, watch it, reap it ------------ */

typedef struct cprxfer_successor cprxfer_successor;

/*
 * Start path with argv and envp (NULL: this environment), passing it a
 * connected socket (variable CPRXFER_SUCCESSOR_FD) and nothing else of
 * the library's. Every wait on its channel ends with -ECHILD as soon as
 * it exits.
 */
int cprxfer_spawn(const char *path, char *const argv[], char *const envp[],
		  const cprxfer_opts *o, cprxfer_successor **out);
/* In the successor: the channel to the process that started it. */
int cprxfer_inherit(const cprxfer_opts *o, cprxfer_channel **out);
/* In the starter: the channel to the successor (handshake done). */
int cprxfer_successor_channel(cprxfer_successor *s, cprxfer_channel **out);
/* The same without blocking: finish it with cprxfer_connect_step(). */
int cprxfer_successor_channel_start(cprxfer_successor *s,
				    cprxfer_channel **out);
/* Or connect to the successor's listener at path (cprxfer_connect). */
int cprxfer_successor_connect(cprxfer_successor *s, const char *path,
			      int timeout_ms, cprxfer_channel **out);
pid_t cprxfer_successor_pid(const cprxfer_successor *s);
/* The successor's pidfd, owned by s: poll it, do not close it. */
int cprxfer_successor_pidfd(const cprxfer_successor *s);
/* SIGKILL and reap (rollback). */
int cprxfer_successor_kill(cprxfer_successor *s);
/* Kill and reap unless the handoff committed; then just let it go. */
void cprxfer_successor_free(cprxfer_successor *s);

/* ---- guest RAM: memfd regions --------------------------------------- */

struct cprxfer_ram {
	void *addr;
	size_t size;
	int fd;
};

#define CPRXFER_RAM_HUGEPAGE	      (1u << 0)
#define CPRXFER_RAM_POPULATE	      (1u << 1)
#define CPRXFER_RAM_POPULATE_RESIDENT (1u << 2)

/* What backs a region, as returned by cprxfer_ram_backing(). */
enum {
	CPRXFER_BACKING_PAGES = 1, /* base pages */
	CPRXFER_BACKING_THP,	   /* transparent huge pages requested */
	CPRXFER_BACKING_HUGETLB	   /* hugetlbfs pages */
};

int cprxfer_ram_create(const char *name, size_t size, unsigned flags,
		       struct cprxfer_ram *out);
int cprxfer_ram_open_file(const char *path, size_t size, unsigned flags,
			  struct cprxfer_ram *out);
int cprxfer_ram_put(cprxfer_state *st, const char *name,
		    const struct cprxfer_ram *r);
int cprxfer_ram_get(cprxfer_state *st, const char *name, unsigned flags,
		    struct cprxfer_ram *out);
int cprxfer_ram_populate(const struct cprxfer_ram *r, unsigned flags);
int cprxfer_ram_backing(const struct cprxfer_ram *r);
void cprxfer_ram_release(struct cprxfer_ram *r);

/* ---- exec in place (PID kept) --------------------------------------- */

int cprxfer_exec(const cprxfer_state *st, const char *path, char *const argv[],
		 char *const envp[]);
/*
 * cprxfer_exec() with the options' application tag, and a confirmation:
 * until the new image calls cprxfer_exec_commit(), a helper keeps the
 * old program's fds and memory; if the new image exits, refuses the
 * state or does not confirm within the options' timeout, the old
 * program runs again with the same state (under another PID).
 */
int cprxfer_exec_opts(const cprxfer_state *st, const char *path,
		      char *const argv[], char *const envp[],
		      const cprxfer_opts *o);
int cprxfer_load_exec(cprxfer_state **out);
int cprxfer_load_exec_opts(const cprxfer_opts *o, cprxfer_state **out);
/*
 * In the new image, after a successful load: confirm the takeover. 1 if
 * a waiting old side was told (no fallback can run any more), 0 if none
 * waits (plain cprxfer_exec, or a fallback run).
 */
int cprxfer_exec_commit(void);

/* ---- file (reboot) mode --------------------------------------------- */

int cprxfer_save_file(const cprxfer_state *st, const char *path);
int cprxfer_load_file(const char *path, cprxfer_state **out);
int cprxfer_load_file_opts(const char *path, const cprxfer_opts *o,
			   cprxfer_state **out);

/* ---- modes, blockers and preflight --------------------------------- */

/*
 * The handoff modes, as bits: a blocker names a set of them (OR them),
 * cprxfer_preflight() and cprxfer_save_memfd() take exactly one.
 */
#define CPRXFER_MODE_TRANSFER (1u << 0) /* cprxfer_save over a channel */
#define CPRXFER_MODE_EXEC     (1u << 1) /* cprxfer_exec, PID kept */
#define CPRXFER_MODE_FILE     (1u << 2) /* cprxfer_save_file */
#define CPRXFER_MODE_RESTART  (1u << 3) /* service manager's fd store */
#define CPRXFER_MODE_KEXEC    (1u << 4) /* fd store across a kexec (LUO) */
#define CPRXFER_MODE_ALL      0x1fu

/*
 * Blockers: parts of an application say "not in these modes, because
 * ...". The application owns the object; a state borrows it.
 */
typedef struct cprxfer_blockers cprxfer_blockers;

cprxfer_blockers *cprxfer_blockers_new(void);
void cprxfer_blockers_free(cprxfer_blockers *b);
/* Block the modes of the mask with reason; *id names it for removal. */
int cprxfer_blocker_add(cprxfer_blockers *b, uint32_t modes, const char *reason,
			uint32_t *id);
int cprxfer_blocker_remove(cprxfer_blockers *b, uint32_t id);
/* Every save of st checks b (borrowed; NULL: none) before anything. */
int cprxfer_state_set_blockers(cprxfer_state *st, const cprxfer_blockers *b);

/* What happens to an entry in a mode (cprxfer_report_entry). */
enum {
	CPRXFER_TRAVELS = 1, /* arrives as it is, same kernel object */
	CPRXFER_RECREATE,    /* arrives as a description: made anew */
	CPRXFER_BLOCKS	     /* the mode cannot save this state */
};

typedef struct cprxfer_report cprxfer_report;

/*
 * What would survive a save of st in mode: returns the number of
 * blocking entries (0: the mode is open) and the report in *out.
 */
int cprxfer_preflight(const cprxfer_state *st, uint32_t mode,
		      cprxfer_report **out);
void cprxfer_report_free(cprxfer_report *r);
/* One entry per state entry, in order, then one per blocker (name NULL). */
size_t cprxfer_report_count(const cprxfer_report *r);
int cprxfer_report_entry(const cprxfer_report *r, size_t i, const char **name,
			 int *verdict, const char **reason);
/* The whole report as lines of text (valid until cprxfer_report_free). */
const char *cprxfer_report_text(const cprxfer_report *r);

/* ---- detached stream: a sealed memfd plus an ordered fd array ------ */

/*
 * Encode st into a new sealed memfd (*memfd, the caller's) and list the
 * fds that go with it, in stream order, in *fds (malloc'd, free() it;
 * the fds stay the state's). mode: CPRXFER_MODE_RESTART or _KEXEC.
 */
int cprxfer_save_memfd(const cprxfer_state *st, uint32_t mode, int *memfd,
		       int **fds, size_t *nfds);
/*
 * Decode a state from memfd and its fd array. Seals are not required:
 * the stream's checksum proves it intact. The memfd and the fds stay
 * the caller's: the state gets duplicates.
 */
int cprxfer_load_memfd(int memfd, const int *fds, size_t nfds,
		       const cprxfer_opts *o, cprxfer_state **out);

#ifdef __cplusplus
}
#endif

#endif /* CPRXFER_CPRXFER_H */
