/*
 * Sessions (REFERENCE.md §8.2-§8.5, §9): a context carried into a sandbox
 * through the runtime contract (core/runtime.h) and brought back safely.
 * No process code here: everything in the sandbox happens through
 * cfs_runtime_run / upload / download.
 *
 *   attach: take the lock (adopting our own), export the current tree
 *     locally into a private 0700 temp dir (authenticated and validated by
 *     the engine), pack it as a plaintext bundle, upload it, extract it in
 *     the sandbox with the reference's validating extractor (python3
 *     tarfile + zstd, the §5.5 runtime rules), remove the plaintext bundle
 *     there; a heartbeat thread renews the lock and keeps the sandbox
 *     alive;
 *   run: `cd <mount> && <command>` (a non-zero exit is a result);
 *   save / checkpoint: assert the lock before any sandbox command, pack in
 *     the sandbox, download, VALIDATE locally by unpacking into a private
 *     dir with the archive safety rules (the reference does not), then
 *     commit through the engine (owner asserted at the commit point);
 *   detach: remove the sandbox links and bundle, stop the heartbeat,
 *     release the lock, remove the local temp dir.
 *
 * A lock lost while attached (renewal refused) makes every later save
 * fail with CFS_ELOCKED; nothing is committed over the new owner.
 */
#ifndef CFS_CORE_SESSION_H
#define CFS_CORE_SESSION_H

#include <stdbool.h>
#include <stdint.h>

#include "core/context.h"
#include "core/runtime.h"
#include "core/store.h"
#include "core/version.h"

struct cfs_keys;
struct cfs_policy;
struct cfs_session;

/* Session events (REFERENCE.md §9.3-§9.4, the reference's SessionEvent). */
enum cfs_session_event_type {
	CFS_SESSION_HEARTBEAT_FAILURE,
	CFS_SESSION_DEGRADED,
	CFS_SESSION_EMERGENCY_CHECKPOINT,
	CFS_SESSION_RECOVERY_START,
	CFS_SESSION_RECOVERY_SUCCESS,
	CFS_SESSION_RECOVERY_FAILURE,
	CFS_SESSION_RECOVERY_ABORTED,
};

struct cfs_session_event {
	enum cfs_session_event_type type;
	const char *context_id;
	unsigned int attempt; /* recovery-*: 1-based */
	int consecutive_failures; /* heartbeat-failure, degraded */
	uint64_t recovered_to_generation; /* recovery-success */
	uint64_t recovered_to_checkpoint_generation; /* recovery-success */
	const char *error; /* NULL when none */
};

/* "heartbeat-failure", "degraded", ... (the reference's names). */
const char *cfs_session_event_name(enum cfs_session_event_type type);

typedef void (*cfs_session_event_fn)(const struct cfs_session_event *ev,
				     void *payload);

struct cfs_session_opts {
	const char *owner; /* NULL = a fresh owner (host:pid:uuid) */
	int64_t lock_ttl_ms; /* <= 0 = CFS_LOCK_DEFAULT_TTL_MS */
	bool force_unlock; /* take the lock over whoever holds it */
	/* Timeout of the session's own sandbox scripts; <= 0 = 15 min. */
	int64_t command_timeout_ms;
	const char *mount_path; /* NULL = <runtime mount_base>/<id> */
	/*
	 * Heartbeat period: 0 = a third of the lock TTL (and of the
	 * sandbox lifetime), at least 1 s; < 0 = no heartbeat thread.
	 */
	int64_t heartbeat_ms;
	/*
	 * Detached sessions (contextfs-push): attach the tree of this local
	 * directory (a snapshot the caller exported) instead of the current
	 * one. The session takes no lock and cannot save; the caller brings
	 * the sandbox's tree back with cfs_session_fetch().
	 */
	const char *src_dir;
	/*
	 * With src_dir: a plaintext bundle of that same tree (the caller's
	 * file, left in place), uploaded instead of packing src_dir again.
	 */
	const char *src_bundle;
	/*
	 * Locked sessions: a plaintext bundle of the tree stored under
	 * prefetched_key, fetched by the caller (cfs_context_fetch_bundle,
	 * private, left in place) while the runtime was being opened. Used
	 * when the manifest still names that tree once the lock is held;
	 * otherwise the current tree is fetched as usual.
	 */
	const char *prefetched_bundle;
	const char *prefetched_key;
	/* Detached: the sandbox already holds the tree (a kept sandbox);
	 * upload nothing. */
	bool reuse;
	/*
	 * Events, called from the heartbeat thread (heartbeat-failure,
	 * degraded, emergency-checkpoint); must not call back into the
	 * session. NULL = none.
	 */
	cfs_session_event_fn on_event;
	void *event_payload;
	/* Consecutive failed heartbeats that make the session degraded
	 * (0 = 3); a healthy beat clears the state. */
	int failure_threshold;
	/* On becoming degraded, take one best-effort checkpoint (reason
	 * "emergency") while the sandbox may still answer. */
	bool emergency_checkpoint;
	/*
	 * Clearing the managed roots before extracting leaves the policy's
	 * excluded paths (node_modules, .venv, ...) of a kept sandbox alone.
	 */
	bool keep_excluded;
};

/*
 * Attaches context id to rt. st, keys and rt are borrowed and must outlive
 * the session. On failure nothing is left behind: the lock is released
 * (unless it was adopted) and the local temp dir removed.
 */
int cfs_session_attach(struct cfs_session **out, struct cfs_store *st,
		       struct cfs_keys *keys, const char *id,
		       struct cfs_runtime *rt,
		       const struct cfs_session_opts *opts);

/*
 * Runs command in the mount directory (cd '<mount>' && command).
 * timeout_ms <= 0 = none. A non-zero exit is returned in res.
 */
int cfs_session_run(struct cfs_run_result *res, struct cfs_session *s,
		    const char *command, int64_t timeout_ms);

struct cfs_session_save_opts {
	enum cfs_commit_kind kind; /* save (default) or checkpoint */
	const char *author; /* save: NULL = the owner */
	const char *message; /* save: NULL = "save context" */
	const char *reason; /* checkpoint: NULL = "checkpoint" */
};

/* Saves (or checkpoints) what the sandbox holds. res may be NULL. */
int cfs_session_save(struct cfs_commit_result *res, struct cfs_session *s,
		     const struct cfs_session_save_opts *opts);

/*
 * Packs what the sandbox holds (the same packer as save), downloads it and
 * unpacks it into destdirfd (empty, the caller's) with the archive safety
 * rules. Nothing is committed. Works for detached and locked sessions.
 * hashes (optional) gets the sha256 of every file extracted.
 */
int cfs_session_fetch(struct cfs_session *s, int destdirfd,
		      struct cfs_inode_hashes *hashes);

/*
 * Detaches (best effort in the sandbox), stops the heartbeat, releases the
 * lock and frees the session. Returns the lock release's result. NULL-safe.
 */
int cfs_session_detach(struct cfs_session *s);

/*
 * Frees the session without touching the sandbox or the lock (after the
 * sandbox died: the lock stays for a recovery under the same owner).
 */
void cfs_session_abandon(struct cfs_session *s);

/*
 * Starts periodic checkpoints (reason "periodic") every interval_ms while
 * the session is attached; failures are logged, never fatal. Saves and
 * checkpoints of one session never interleave. Stopped by
 * cfs_session_stop_checkpoints() or at detach.
 */
int cfs_session_start_checkpoints(struct cfs_session *s, int64_t interval_ms);
void cfs_session_stop_checkpoints(struct cfs_session *s);
/* Checkpoints taken by the periodic timer so far. */
unsigned int cfs_session_checkpoints(const struct cfs_session *s);

/*
 * The bash script a session runs in the sandbox to unpack ("unpack": clear
 * the managed roots, check and extract bundle into mount) or to pack
 * ("pack": mount's persisted roots into bundle), for tests and for anyone
 * auditing what runs in their sandbox. policy_json is the compact resolved
 * policy. Heap string; NULL for another name or out of memory.
 */
char *cfs_session_script(const char *which, const char *bundle,
			 const char *mount, const char *policy_json,
			 bool keep_excluded);

const char *cfs_session_owner(const struct cfs_session *s);
const char *cfs_session_mount_path(const struct cfs_session *s);
/* The context's resolved persistence policy. */
const struct cfs_policy *cfs_session_policy(const struct cfs_session *s);
/* True once a heartbeat found the lock taken over or gone. */
bool cfs_session_lock_lost(const struct cfs_session *s);
/* Consecutive failed heartbeats (renewal or keep-alive). */
int cfs_session_heartbeat_failures(const struct cfs_session *s);
/* True while failed heartbeats reached the threshold (§9.3). */
bool cfs_session_degraded(const struct cfs_session *s);

#endif
