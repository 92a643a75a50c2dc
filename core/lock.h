/*
 * The single-writer lock (REFERENCE.md §7): contexts/<id>/lock.json, a
 * JSON object {version, contextId, owner, runtimeId, createdAt,
 * heartbeatAt, expiresAt} (unknown members preserved), acquired and renewed
 * with compare-and-swap writes through core/store.h.
 *
 * Errors: a held, lost or refused lock -> CFS_ELOCKED with the reference's
 * messages; unparseable lock data -> CFS_ECORRUPT "context <id> lock data is
 * corrupt; release it with force to recover"; storage errors propagate.
 */
#ifndef CFS_CORE_LOCK_H
#define CFS_CORE_LOCK_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/store.h"

#define CFS_LOCK_DEFAULT_TTL_MS 1800000
#define CFS_LOCK_MAX_BYTES (1u << 20)

struct cfs_lock;

/*
 * Reads the lock: 0 with *out = NULL when there is none, 0 with the lock
 * (and the ETag of that revision, "" if the store has none), or an error.
 */
int cfs_lock_read(struct cfs_lock **out, struct cfs_store *st, const char *id);

/*
 * acquireLock. Refuses (CFS_ELOCKED) an unexpired lock of another owner:
 * "context <id> is locked by <owner> until <expiresAt> (use unlock --force
 * if that writer is dead)"; adopts an unexpired lock of the same owner
 * (*adopted = true; runtimeId updated, createdAt kept); otherwise writes a
 * fresh lock: create-only when none exists, If-Match on the observed ETag
 * over an expired lock (refused without an ETag), unconditional with
 * force. *out (may be NULL) receives the written lock with its new ETag.
 * runtime_id may be NULL (member omitted). ttl_ms <= 0 means the default.
 */
int cfs_lock_acquire(struct cfs_lock **out, bool *adopted, struct cfs_store *st,
		     const char *id, const char *runtime_id, const char *owner,
		     int64_t ttl_ms, bool force);

/* renewLock: extends heartbeatAt/expiresAt of our own lock (CAS). */
int cfs_lock_renew(struct cfs_lock **out, struct cfs_store *st, const char *id,
		   const char *owner, int64_t ttl_ms);

/* assertLockOwnership: no lock -> 0; another owner -> CFS_ELOCKED. */
int cfs_lock_assert_owner(struct cfs_store *st, const char *id,
			  const char *owner);

/*
 * releaseLock: no lock -> 0; without force the owner must match
 * (CFS_ELOCKED "cannot release lock owned by <owner>"); then deletes.
 */
int cfs_lock_release(struct cfs_store *st, const char *id, const char *owner,
		     bool force);

/* "<hostname>:<pid>:<uuid4>" (heap string). */
int cfs_lock_owner_new(char **out);

/* Accessors (strings NULL when missing). */
const char *cfs_lock_owner(const struct cfs_lock *l);
const char *cfs_lock_context_id(const struct cfs_lock *l);
const char *cfs_lock_runtime_id(const struct cfs_lock *l);
const char *cfs_lock_created_at(const struct cfs_lock *l);
const char *cfs_lock_heartbeat_at(const struct cfs_lock *l);
const char *cfs_lock_expires_at(const struct cfs_lock *l);
/* expiresAt in ms since the epoch, -1 if missing or unparseable. */
int64_t cfs_lock_expires_ms(const struct cfs_lock *l);
/* expiresAt <= now_ms; an unparseable expiresAt never expires (as the
 * reference's NaN comparison). */
bool cfs_lock_expired(const struct cfs_lock *l, int64_t now_ms);
const char *cfs_lock_etag(const struct cfs_lock *l); /* "" if none */
const cJSON *cfs_lock_json(const struct cfs_lock *l);
/* JSON.stringify(lock, null, 2), no trailing newline. */
char *cfs_lock_print(const struct cfs_lock *l);
void cfs_lock_free(struct cfs_lock *l);

/* Test hook: the clock the lock protocol uses (NULL = cfs_now_ms). */
typedef int64_t (*cfs_clock_fn)(void);
void cfs_lock_set_clock(cfs_clock_fn fn);
/* The lock module's current time (the hook or cfs_now_ms()). */
int64_t cfs_lock_now_ms(void);

#endif
