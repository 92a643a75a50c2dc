/*
 * The mount daemon's public face: serve a context as a live directory over
 * libfuse3's low-level API (cfs_mount_run), and the client side the CLI
 * uses to talk to a running mount (commit, status, unmount) over the unix
 * control socket each mount keeps in its staging area.
 *
 * A writable mount takes the context lock (owner host:pid:uuid, runtime id
 * fuse:<host>:<mountpoint>), exports the current tree into a private
 * staging directory <cache>/contextfs/mounts/<id>/tree and serves it.
 * fsync, fsyncdir, `contextfs commit MOUNTPOINT` and unmount commit a
 * consistent snapshot of the staging tree as the next generation. The
 * durability contract is in docs/SEMANTICS.md.
 */
#ifndef CFS_FUSE_MOUNT_H
#define CFS_FUSE_MOUNT_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

struct cfs_store;
struct cfs_keys;

struct cfs_mount_opts {
	const char *ref; /* "ID", "ID@GEN", "ID@checkpoint:N" (borrowed) */
	const char *mountpoint; /* borrowed */
	struct cfs_store *store; /* borrowed, used by the daemon */
	struct cfs_keys *keys; /* borrowed, used by the daemon */
	bool foreground; /* -f: stay attached, log to stderr */
	bool debug; /* -d / -o debug: log every FUSE request */
	/* -o options (strings owned by the struct, see _clear) */
	char *cache_dir; /* cache=DIR; NULL = $XDG_CACHE_HOME or ~/.cache */
	char *log_file; /* log_file=PATH; NULL = syslog when daemonized */
	char *author; /* author=NAME of the commits; NULL = lock owner */
	bool read_only; /* ro: no lock, EROFS to writers */
	bool fsync_local; /* fsync=local: fsync only reaches the staging disk */
	bool allow_other; /* allow_other (passed to the kernel) */
	int64_t lock_ttl_ms; /* lock_ttl=SECONDS; <= 0 = lock default */
	double attr_timeout; /* attr_timeout=SECONDS (default 1.0) */
	unsigned commit_interval_s; /* commit_interval=SECONDS; 0 = off */
};

/* Defaults (everything off, attr_timeout 1 s). */
void cfs_mount_opts_init(struct cfs_mount_opts *o);
/* Frees the owned strings (not the borrowed pointers). */
void cfs_mount_opts_clear(struct cfs_mount_opts *o);

/*
 * Parses one -o argument ("ro,cache=/x,fsync=local"). Unknown options ->
 * CFS_EINVAL "unknown mount option: X". May be called several times.
 */
int cfs_mount_opts_parse(struct cfs_mount_opts *o, const char *optstr);

/*
 * Mounts and serves until unmounted (or SIGTERM / SIGINT). Without
 * foreground, forks: the parent returns 0 only once the mount answers, or
 * the child's error code with its message set; the daemon never returns
 * (it exits). In the foreground, returns when the mount ends: 0 if the
 * final commit landed (or nothing was to commit), else its error (the
 * changes stay staged).
 */
int cfs_mount_run(const struct cfs_mount_opts *opts);

/* True when path is the root of a live contextfs mount. */
bool cfs_mount_is_mountpoint(const char *path);

/*
 * Sends one request {"op": ...} to the daemon serving mountpoint and
 * returns its reply object in *reply (caller frees). Replies are
 * {"ok": true, ...} or {"ok": false, "error": {"code", "message"}}; a
 * refused request is returned as an error code with the daemon's message.
 * Ops: "status"; "commit" (with optional "message"), which returns once
 * the new manifest has landed.
 */
int cfs_mount_request(cJSON **reply, const char *mountpoint, const cJSON *req);

/*
 * `contextfs umount`: asks the daemon to commit (unless force), then
 * unmounts with fusermount3 -u and waits (up to timeout_ms) for the daemon
 * to release the lock and exit. A failed commit refuses to unmount
 * (the error is returned) unless force.
 */
int cfs_mount_unmount(const char *mountpoint, bool force, int timeout_ms);

#endif
