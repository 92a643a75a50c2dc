/*
 * Constructors of the storage backends. Each returns a struct cfs_store
 * that core drives through core/store.h.
 */
#ifndef CFS_STORAGE_STORAGE_H
#define CFS_STORAGE_STORAGE_H

#include "core/store.h"

/*
 * Local directory store, byte-compatible with the reference's FsStorage
 * (REFERENCE.md §3.3): .etagid sidecars, <key>.lock/heartbeat key locks,
 * temp files <path>.tmp-<pid>-<uuid>. The directory is created lazily.
 */
int cfs_store_fs_open(struct cfs_store **out, const char *directory);

/* Default directory: $HOME/.contextsdk/storage (heap string). */
char *cfs_store_fs_default_dir(void);

/*
 * Test hook: overrides the per-key lock timings of an fs store (ms; 0 keeps
 * the default: stale after 10000, give up after 60000, retry every 50,
 * heartbeat refresh every 3333). Not for production use.
 */
void cfs_store_fs_set_lock_timing(struct cfs_store *st, unsigned stale_ms,
				  unsigned timeout_ms, unsigned retry_ms,
				  unsigned refresh_ms);

/* In-memory store with fault injection for tests. */
enum cfs_mem_fault {
	CFS_MEM_FAULT_NONE = 0,
	CFS_MEM_FAULT_PUT_FAIL,   /* the nth put (matching key_substr) fails with CFS_EIO */
	CFS_MEM_FAULT_LOSE_CAS,   /* the nth conditional put fails with CFS_ECONFLICT */
	CFS_MEM_FAULT_GET_FAIL,   /* the nth get fails with CFS_EIO */
	CFS_MEM_FAULT_DELETE_FAIL,/* the nth delete fails with CFS_EIO */
	CFS_MEM_FAULT_NO_ETAG,    /* gets/heads return no ETag */
};
int cfs_store_mem_new(struct cfs_store **out);
/*
 * Arms fault f on the nth (1-based) matching call counted from now;
 * key_substr may be NULL (every key matches). nth == 0 fires on every
 * matching call (for CFS_MEM_FAULT_NO_ETAG: every get/head from now on).
 * One fault per kind is armed at a time; CFS_MEM_FAULT_NONE disarms all.
 */
void cfs_store_mem_fault(struct cfs_store *st, enum cfs_mem_fault f,
			 unsigned nth, const char *key_substr);
/* Number of stored objects (tests). */
size_t cfs_store_mem_count(struct cfs_store *st);

#endif
