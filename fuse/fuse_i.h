/*
 * Internals of the mount daemon, shared by ops.c (the FUSE operations and
 * the node table), snapshot.c (commits: snapshot, commit thread, lock
 * heartbeat), control.c (control socket) and mount.c (lifecycle).
 *
 * Nodes do not hold a file descriptor each (a tree may have more files than
 * the process may open): a node keeps its parent and name, and operations
 * resolve that path relative to the staging root fd. Only non-directories
 * with open handles or several hard links hold an O_PATH fd, so that they
 * stay reachable when their name goes away.
 *
 * Lock order: fs->freeze (read side held by every mutating op, write side
 * by the snapshot) -> fs->ns (namespace: read side for path resolution and
 * the syscall that uses the path, write side for rename/unlink/rmdir/link)
 * -> node->rw (content: read side for writes, write side for copy-on-write)
 * -> fs->table_mu (hash table and reference counts) -> fs->snap_mu.
 * fs->commit_mu is never held with any of them.
 */
#ifndef CFS_FUSE_FUSE_I_H
#define CFS_FUSE_FUSE_I_H

#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/types.h>

#include "core/ids.h"
#include "core/version.h"
#include "fuse/initshim.h"
#include "fuse/mount.h"

struct cfs_handle;

/* fuse/hints.c: maps (and sets) keyed by backing inode number */
struct cfs_node {
	/* fuse/hints.c: the commit cycle in which this node was recorded */
	atomic_uint_fast64_t hint_gen;
	/* protected by fs->ns */
	struct cfs_node *parent; /* NULL: detached (unlinked) or root */
	char *name;
	/* protected by fs->table_mu */
	ino_t bino; /* backing inode number (hash key) */
	bool hashed;
	struct cfs_node *hnext;
	uint64_t nlookup; /* kernel references */
	uint64_t refs; /* children + open handles + in-flight users */
	uint64_t generation;
	bool is_dir;
	/* protected by rw */
	pthread_rwlock_t rw;
	int opath; /* O_PATH fd (non-dirs with handles or links), or -1 */
	struct cfs_handle *handles; /* open file handles */
};

struct cfs_handle {
	int fd;
	int flags; /* open flags, for reopening after copy-on-write */
	struct cfs_node *node;
	struct cfs_handle *next; /* protected by node->rw */
};

/* A request to commit, waiting for commit number ticket. */
struct cfs_waiter {
	fuse_req_t
		req; /* replied by the commit thread; NULL for a cond waiter */
	uint64_t ticket;
	struct cfs_waiter *next;
};

struct cfs_fs {
	/* the INIT exchange's record (fuse/initshim.h) */
	struct cfs_initshim initshim;
	/* immutable after start */
	struct cfs_ref ref;
	char *refstr;
	char *mountpoint;
	char *base_dir; /* <cache>/contextfs/mounts/<id>[/ro-<pid>] */
	char *tree_path; /* base_dir/tree */
	char *snap_path; /* base_dir/snap */
	char *sock_path; /* base_dir/control.sock */
	char *state_path; /* base_dir/state.json */
	int root_fd; /* O_DIRECTORY fd of tree_path */
	struct cfs_store *st;
	struct cfs_keys *keys;
	char *owner; /* lock owner, NULL when read-only */
	char *runtime_id;
	char *author;
	int64_t ttl_ms;
	double timeout;
	bool ro;
	bool fsync_local;
	bool wb_wanted; /* -o writeback_cache */
	bool writeback; /* ... and the kernel agreed (set by op_init) */
	bool debug;
	bool kernel_perms; /* default_permissions (see serve() in mount.c) */
	/* close(2) on the staging filesystem reports nothing: no FLUSH */
	bool close_silent;
	unsigned commit_interval_s;
	unsigned checkpoint_interval_s;
	struct fuse_session *se;
	uid_t uid;

	pthread_rwlock_t freeze;
	pthread_rwlock_t ns;
	pthread_mutex_t table_mu;
	struct cfs_node root;
	struct cfs_node **table; /* protected by table_mu */
	size_t table_size, table_count;
	uint64_t next_generation;

	/* snapshot state: snap_active set under freeze (write side) */
	pthread_mutex_t snap_mu;
	atomic_bool snap_active;
	/* odd while the snapshot's links are made or removed (see snap_drop) */
	atomic_uint_fast64_t snap_seq;
	ino_t *snap_inos; /* sorted after the snapshot, protected by snap_mu */
	size_t snap_count, snap_cap;

	atomic_uint_fast64_t changes; /* bumped by every mutation */
	atomic_bool lock_lost;
	atomic_uint_fast64_t max_stall_us; /* longest freeze + copy */
	atomic_uint_fast64_t last_freeze_us;
	atomic_uint_fast64_t cow_copies;

	/* known hashes for the next commit's index (fuse/hints.c) */
	pthread_mutex_t hint_mu;
	struct cfs_inode_hashes hint_changed; /* under hint_mu: a set */
	bool hint_lost; /* under hint_mu: a change could not be recorded */
	atomic_uint_fast64_t hint_gen;
	atomic_uint_fast64_t hint_reused; /* hashes reused, all builds */
	struct cfs_inode_hashes hint_taken; /* a set: commit thread, snapshot */
	struct cfs_inode_hashes hint_map, hint_next; /* commit thread */
	struct cfs_hash_hints hints;

	/* commit machinery, protected by commit_mu */
	pthread_mutex_t commit_mu;
	pthread_cond_t commit_cv; /* wakes the commit thread */
	pthread_cond_t done_cv; /* wakes cond waiters */
	uint64_t started, completed, want;
	bool running;
	int last_rc;
	char *last_error; /* message of the last failed commit, or NULL */
	/*
	 * The version record of our last landed save, an unnamed file in
	 * the commit's private temp directory (owned by whoever runs commits,
	 * one at a time; not in memory, whatever the number of files): the
	 * base of the next commit's changedPaths. -1 until the first commit,
	 * which authenticates the current tree with the mount's keys (a
	 * leftover staged tree may never have been exported by this
	 * process); later commits skip that download, since nobody else can
	 * commit while we hold the lock.
	 */
	int prev_index_fd;
	char *pending_msg;
	struct cfs_waiter *waiters;
	bool stop;
	uint64_t
		landed_changes; /* value of changes in the last landed commit */
	uint64_t generation; /* last landed (or exported) generation */
	uint64_t commits_ok, commits_failed;
	int64_t last_commit_ms;
	pthread_t commit_thread;
	bool commit_thread_started;
	/* periodic checkpoints, protected by commit_mu */
	bool ckpt_want; /* the commit thread runs one when idle */
	uint64_t ckpt_changes; /* value of changes in the last checkpoint */
	uint64_t checkpoint_generation; /* the context's checkpoint counter */
	uint64_t checkpoints_ok;
	int64_t last_checkpoint_ms;
	char *ckpt_error; /* message of the last failed checkpoint */

	/* heartbeat */
	pthread_t hb_thread;
	bool hb_started;
	pthread_mutex_t hb_mu;
	pthread_cond_t hb_cv;
	bool hb_stop; /* protected by hb_mu */

	/* control socket */
	int ctl_fd;
	pthread_t ctl_thread;
	bool ctl_started;
};

/* ops.c */
extern const struct fuse_lowlevel_ops cfs_fuse_ops;
int cfs_fs_nodes_init(struct cfs_fs *fs);
void cfs_fs_nodes_destroy(struct cfs_fs *fs);

/* snapshot.c */
bool cfs_snap_shared(struct cfs_fs *fs, ino_t ino);
void cfs_hints_init(struct cfs_fs *fs);
void cfs_hints_free(struct cfs_fs *fs);
void cfs_hints_touch(struct cfs_fs *fs, struct cfs_node *n, bool force);
void cfs_hints_snapshot(struct cfs_fs *fs);
int cfs_commit_start(struct cfs_fs *fs);
void cfs_commit_stop(struct cfs_fs *fs);
/* Queues a FUSE request (req != NULL, replied later) or blocks until the
 * next commit has run (req == NULL). Returns the result for blocking. */
int cfs_commit_request(struct cfs_fs *fs, fuse_req_t req, const char *msg);
/* One commit right now (the caller ensures no commit thread runs). */
int cfs_commit_now(struct cfs_fs *fs, const char *msg);
bool cfs_fs_dirty(struct cfs_fs *fs);
int cfs_heartbeat_start(struct cfs_fs *fs);
void cfs_heartbeat_stop(struct cfs_fs *fs);
int cfs_state_write(struct cfs_fs *fs, bool clean);
/* Status document of the mount (caller frees). */
cJSON *cfs_fs_status_json(struct cfs_fs *fs);

/* mount.c */
bool cfs_pid_alive(pid_t pid);
typedef bool (*cfs_mountinfo_fn)(const char *mountpoint, const char *fstype,
				 const char *source, void *arg);
/* Calls fn for each line of /proc/self/mountinfo until it returns true. */
int cfs_mountinfo_each(cfs_mountinfo_fn fn, void *arg);

/* recover.c */
/*
 * Acquires the context lock for a mount or recover. A lock held by a
 * contextfs mount of this machine (runtime id fuse:<host>:..., owner
 * <host>:<pid>:<uuid>) whose process is gone is taken over; *dead_owner
 * (heap) then names it. The takeover is a compare-and-swap on the lock we
 * read, so a live writer that got in between wins.
 */
int cfs_mount_lock_acquire(struct cfs_store *st, const char *id,
			   const char *runtime_id, const char *owner,
			   int64_t ttl_ms, char **dead_owner);

/*
 * Removes the ro-<pid> staging areas of read-only mounts of id under cache
 * whose process is gone (killed before it could clean up). Best effort.
 */
void cfs_staging_sweep_ro(const char *cache, const char *id);

/* control.c */
int cfs_control_start(struct cfs_fs *fs);
void cfs_control_stop(struct cfs_fs *fs);

#define CFS_CONTROL_XATTR "user.contextfs.control"
#define CFS_CONTROL_MAX (64 * 1024)

#endif
