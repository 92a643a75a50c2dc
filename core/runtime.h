/*
 * The runtime adapter contract (REFERENCE.md §10.1): what the session
 * engine (core/session.h) needs from a disposable sandbox, as a versioned
 * vtable in the style of libgit2's backends. core/ holds only the
 * contract and a few helpers; the adapters (process, ssh, HTTP code) live
 * in adapters/.
 *
 * Semantics every adapter keeps:
 *   - run() executes a bash script; a non-zero exit is a RESULT (0 is
 *     returned with res->exit_code set), while a dead sandbox, a network
 *     failure or a timeout is an ERROR (CFS_EIO / CFS_EAGAIN /
 *     CFS_ETIMEDOUT with a message). A timeout stops the command itself,
 *     not only the local waiter;
 *   - upload() / download() are binary safe and move whole files;
 *     download() leaves a private (0600) local file;
 *   - dispose() tears down only what the adapter created; kill() always
 *     tears down (crash simulation); both are idempotent;
 *   - output captured by run() is capped (CFS_RUNTIME_OUTPUT_MAX per
 *     stream); bytes beyond the cap are dropped and res->truncated set.
 */
#ifndef CFS_CORE_RUNTIME_H
#define CFS_CORE_RUNTIME_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFS_RUNTIME_VERSION 1

/* Cap on each captured stream of one run(). */
#define CFS_RUNTIME_OUTPUT_MAX (64u << 20)
/* Default command timeout of the session's own scripts (15 min). */
#define CFS_RUNTIME_DEFAULT_TIMEOUT_MS 900000

struct cfs_run_result {
	int exit_code; /* 0..255; 128+N for a command killed by signal N */
	char *out; /* stdout bytes (heap, NUL-terminated; may hold NULs) */
	size_t out_len;
	char *err; /* stderr bytes, same rules */
	size_t err_len;
	bool truncated; /* a stream hit CFS_RUNTIME_OUTPUT_MAX */
};

/* Frees what a result owns and zeroes it (NULL-safe). */
void cfs_run_result_clear(struct cfs_run_result *res);

struct cfs_runtime_caps {
	bool loop_ext4;
	bool directory_bundle;
	bool provider_volume;
	bool provider_snapshot;
	/*
	 * The sandbox owns its "/" (a bubblewrap root, a VM): the session
	 * may create the reference's /workspace ... symlinks there.
	 */
	bool root_links;
};

struct cfs_runtime;

/*
 * The vtable. version must be CFS_RUNTIME_VERSION; members may be NULL
 * where marked optional.
 */
struct cfs_runtime_ops {
	unsigned int version;
	/*
	 * user: NULL = the sandbox's root / default user. timeout_ms <= 0 =
	 * no timeout.
	 */
	int (*run)(struct cfs_run_result *res, struct cfs_runtime *rt,
		   const char *command, const char *user, int64_t timeout_ms);
	int (*upload)(struct cfs_runtime *rt, const char *local_path,
		      const char *remote_path);
	int (*download)(struct cfs_runtime *rt, const char *remote_path,
			const char *local_path);
	int (*keep_alive)(struct cfs_runtime *rt); /* optional */
	int (*kill)(struct cfs_runtime *rt); /* optional */
	int (*dispose)(struct cfs_runtime *rt); /* optional */
	/* Frees the handle (after dispose or kill, or leaving the sandbox). */
	void (*free)(struct cfs_runtime *rt);
	/*
	 * Optional: run() with the command's stdin read from in_fd (-1:
	 * none) and its stdout streamed into out_fd (-1: captured in res as
	 * with run()), binary safe, as they are produced and consumed, so
	 * that a transfer overlaps the work at both ends. A reader closing
	 * out_fd's other end makes this fail with CFS_EIO. res gets the exit
	 * code and stderr as with run().
	 */
	int (*run_io)(struct cfs_run_result *res, struct cfs_runtime *rt,
		      const char *command, int in_fd, int out_fd,
		      int64_t timeout_ms);
};

/*
 * A runtime handle. Adapters embed this as their first member and fill
 * every field; strings are owned by the adapter.
 */
struct cfs_runtime {
	const struct cfs_runtime_ops *ops;
	const char *id; /* "local:<name>", "ssh:[user@]host", ... */
	const char *provider; /* "local", "ssh", ... */
	struct cfs_runtime_caps caps;
	int64_t sandbox_timeout_ms; /* 0 = no provider lifetime */
	/* Absolute sandbox directory for the session's temp files. */
	const char *tmp_dir;
	/* Absolute sandbox directory under which contexts are mounted. */
	const char *mount_base;
	/*
	 * Optional, set by the caller: when it points to a non-zero value,
	 * a run() in progress kills its command (in the sandbox too) and
	 * returns CFS_ECANCELED. Checked at least every 200 ms, so a signal
	 * handler may set it.
	 */
	volatile sig_atomic_t *cancel;
};

/*
 * The provisioner contract: creates a fresh runtime for a context and
 * destroys it (which disposes it). A runtime supplied by the caller has no
 * provisioner and is never re-provisioned.
 */
struct cfs_provisioner {
	unsigned int version; /* CFS_RUNTIME_VERSION */
	int (*create)(struct cfs_runtime **out, struct cfs_provisioner *p,
		      const char *context_id);
	void (*destroy)(struct cfs_provisioner *p, struct cfs_runtime *rt);
	void (*free)(struct cfs_provisioner *p); /* optional */
};

/* Dispatchers: check the version and the optional members. */
int cfs_runtime_run(struct cfs_run_result *res, struct cfs_runtime *rt,
		    const char *command, const char *user, int64_t timeout_ms);
int cfs_runtime_upload(struct cfs_runtime *rt, const char *local_path,
		       const char *remote_path);
int cfs_runtime_download(struct cfs_runtime *rt, const char *remote_path,
			 const char *local_path);
/* CFS_EUNSUPPORTED when the adapter cannot stream (use a file). */
int cfs_runtime_run_io(struct cfs_run_result *res, struct cfs_runtime *rt,
		       const char *command, int in_fd, int out_fd,
		       int64_t timeout_ms);
bool cfs_runtime_streams(const struct cfs_runtime *rt);
int cfs_runtime_keep_alive(struct cfs_runtime *rt); /* 0 if unsupported */
/* CFS_EUNSUPPORTED when the adapter cannot kill. */
int cfs_runtime_kill(struct cfs_runtime *rt);
int cfs_runtime_dispose(struct cfs_runtime *rt); /* 0 if unsupported */
void cfs_runtime_free(struct cfs_runtime *rt); /* NULL-safe */

/*
 * A command that ran and failed (the reference's RuntimeCommandError):
 * label, exit code and the captured streams. Recorded per thread beside
 * the error message (the message is "<label> failed with exit code <n>"
 * plus the trimmed stdout and stderr lines); cfs_runtime_check() returns
 * CFS_ERROR after recording it.
 */
struct cfs_command_error {
	char label[64];
	int exit_code;
	char *out; /* heap, NUL-terminated */
	char *err;
};

/* 0 if res->exit_code == 0, else records the command error (CFS_ERROR). */
int cfs_runtime_check(const struct cfs_run_result *res, const char *label);

/*
 * The remote adapters' working directories: runs a script (through rt's
 * own run) that creates ~/.contextsdk/{tmp,mnt} (tmp 0700) and prints the
 * absolute ~/.contextsdk, then sets *tmp_dir and *mount_base (heap) and
 * points rt->tmp_dir / rt->mount_base at them. what names the sandbox in
 * errors ("e2b sandbox X"). script NULL = that default; an adapter may pass
 * its own (it must print one absolute directory).
 */
#define CFS_RUNTIME_HOME_SCRIPT                                               \
	"set -e; umask 077; d=\"$HOME/.contextsdk\"; mkdir -p -- \"$d/tmp\" " \
	"\"$d/mnt\"; chmod 700 -- \"$d/tmp\"; cd -- \"$d\"; pwd -P"
int cfs_runtime_prepare_dirs(struct cfs_runtime *rt, const char *script,
			     int64_t timeout_ms, const char *what,
			     char **tmp_dir, char **mount_base);
/*
 * The calling thread's last command error recorded by cfs_runtime_check(),
 * or NULL (none, or cleared). Borrowed until the next failing check or
 * cfs_runtime_command_error_clear() on this thread.
 */
const struct cfs_command_error *cfs_runtime_last_command_error(void);
void cfs_runtime_command_error_clear(void);

/* Appends s single-quoted for bash ('\'' for each quote) to b. */
struct cfs_buf;
int cfs_shell_quote(struct cfs_buf *b, const char *s);

/*
 * probeRuntime (§10.1): checks for tar zstd python3 sha256sum mkdir sync
 * in the sandbox. *missing_out (heap, space-separated, "" when none) may
 * be NULL. A probe command that fails -> command error "probe runtime".
 */
int cfs_runtime_probe(char **missing_out, struct cfs_runtime *rt);

#endif
