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
	/* default_permissions: the kernel checks permissions even on a root
	 * mount without allow_other (where it otherwise does not) */
	bool default_permissions;
	/* writeback_cache: the kernel buffers writes; see docs/SEMANTICS.md */
	bool writeback_cache;
	int64_t lock_ttl_ms; /* lock_ttl=SECONDS; <= 0 = lock default */
	/* attr_timeout=SECONDS: how long the kernel may trust attributes,
	 * names and absences (default CFS_MOUNT_ATTR_TIMEOUT) */
	double attr_timeout;
	unsigned commit_interval_s; /* commit_interval=SECONDS; 0 = off */
	/* checkpoint_interval=SECONDS; 0 = off. Checkpoints (REFERENCE.md
	 * §8.4) of changes not yet committed as a generation. */
	unsigned checkpoint_interval_s;
};

/*
 * Only the daemon changes the staging tree, and the kernel learns of every
 * change it makes itself (see docs/SEMANTICS.md, "Caching"): the kernel
 * may keep what it was told for a day, as passthrough_ll -o cache=always.
 */
#define CFS_MOUNT_ATTR_TIMEOUT 86400

/* Defaults (everything off, attr_timeout CFS_MOUNT_ATTR_TIMEOUT). */
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
 * True when path is a contextfs mount whose daemon is gone (every access
 * fails ENOTCONN, "Transport endpoint is not connected"); *id_out (may be
 * NULL) receives the context id from the mount's source (heap, may be
 * NULL).
 */
bool cfs_mount_is_stale(const char *path, char **id_out);

/* Lazily unmounts (fusermount3 -u -z) such a dead mount, with a warning. */
int cfs_mount_clean_stale(const char *mountpoint);

/* $XDG_CACHE_HOME, else $HOME/.cache (heap string, NULL on ENOMEM). */
char *cfs_mount_default_cache(void);

/*
 * `contextfs umount`: asks the daemon to commit (unless force), then
 * unmounts with fusermount3 -u and waits (up to timeout_ms) for the daemon
 * to release the lock and exit. A failed commit refuses to unmount
 * (the error is returned) unless force.
 */
int cfs_mount_unmount(const char *mountpoint, bool force, int timeout_ms);

/*
 * `contextfs recover ID`: what a mount that died (kill -9, crash, power
 * loss) left in its staging area <cache>/contextfs/mounts/<id>/tree.
 * Refuses while a mount of id from this cache runs. When the leftover's
 * base generation is still the current one, commits it as the next
 * generation (taking the lock; a lock still held by the dead mount, on
 * this machine with its process gone, is taken over); otherwise, or when
 * that commit loses to a concurrent writer, moves it to into (must not
 * exist, or be an empty directory) or <cache>/contextfs/mounts/<id>/
 * recovered-<ms>. A dead mountpoint the leftover names is unmounted.
 */
enum cfs_recover_action {
	CFS_RECOVER_NONE = 0, /* nothing left over */
	CFS_RECOVER_COMMITTED, /* landed as generation res->generation */
	CFS_RECOVER_MOVED, /* moved to res->path */
};

struct cfs_recover_opts {
	const char *id;
	const char *cache_dir; /* NULL = cfs_mount_default_cache() */
	const char *into; /* NULL = <staging>/recovered-<ms> */
	const char *author; /* NULL = the lock owner */
	const char *message; /* NULL = a message naming the dead mount */
	struct cfs_store *store;
	struct cfs_keys *keys;
};

struct cfs_recover_result {
	enum cfs_recover_action action;
	int64_t base_generation; /* of the leftover; -1 when unknown */
	uint64_t current_generation; /* of the context before recovering */
	uint64_t generation; /* COMMITTED: the new generation */
	char *staging; /* the staging area looked at */
	char *path; /* MOVED: where the tree is now */
	char *dead_owner; /* a taken-over lock's owner, or NULL */
	char *unmounted; /* a dead mountpoint cleaned up, or NULL */
	char *mountpoint; /* the mountpoint the leftover was served on */
};

int cfs_mount_recover(struct cfs_recover_result *res,
		      const struct cfs_recover_opts *opts);
void cfs_recover_result_clear(struct cfs_recover_result *res);

/*
 * For `contextfs doctor`: {"mounts": [{mountpoint, id, alive, ...status
 * of the daemon}], "cacheDir", "leftovers": [{id, kind: "staged" |
 * "recovered", path, baseGeneration, mountpoint}]}. Leftovers are staged
 * trees no running mount serves (under cache_dir, NULL = default) and
 * trees set aside by mounts or recover. Caller frees.
 */
cJSON *cfs_mount_doctor_json(const char *cache_dir);

#endif
