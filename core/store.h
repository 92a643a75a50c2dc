/*
 * The storage backend contract the engine drives (libgit2's refdb is the
 * model): whole-object get, put with compare-and-swap conditions, head,
 * delete and list. Backends live in storage/ (fs.c, mem.c, s3.c) and fill
 * in struct cfs_store_ops; core never names a backend.
 *
 * Bodies stream: a put reads from an fd (or a small buffer) and a get writes
 * into an fd (or a capped buffer), so nothing holds a whole bundle in memory.
 *
 * Errors (with the reference's messages, REFERENCE.md §3):
 *   get/head of a missing key  CFS_ENOTFOUND "object not found: <key>"
 *   if_none_match and exists   CFS_EEXISTS   "object already exists: <key>"
 *   if_match mismatch/missing  CFS_ECONFLICT "precondition failed for object: <key>"
 *   key escaping the store     CFS_EUNSAFE   "storage key escapes the storage directory: <key>"
 *   transport (retryable)      CFS_EAGAIN / CFS_ETIMEDOUT; disk full CFS_ENOSPC
 */
#ifndef CFS_CORE_STORE_H
#define CFS_CORE_STORE_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

#define CFS_STORE_OPS_VERSION 1
#define CFS_ETAG_MAX 128
/*
 * Cap for small JSON objects (manifest, lock) read into memory. Above what
 * contextfs writes (a manifest is kept under CFS_MANIFEST_MAX_BYTES), so
 * that larger manifests written by the reference stay readable.
 */
#define CFS_SMALL_OBJECT_MAX (64u << 20)

struct cfs_objinfo {
	uint64_t size;
	int64_t mtime_ms; /* 0 if unknown */
	char etag[CFS_ETAG_MAX]; /* "" if the backend has none */
};

/* A put's body: either buf/len (fd == -1) or the whole of fd from offset 0. */
struct cfs_source {
	const void *buf;
	size_t len;
	int fd;
	/*
	 * fd is a private temporary file the caller will neither write nor
	 * reuse after the put: a backend on the same filesystem may link it
	 * into place instead of copying it.
	 */
	bool may_link;
	/*
	 * fd is still being written by another thread (the commit engine's
	 * bundle while it packs): a backend with CFS_STORE_STREAMS_PUT reads
	 * it as it grows (cfs_growing_wait); the dispatcher waits for the end
	 * before handing it to any other backend. NULL: fd is complete.
	 */
	struct cfs_growing *growing;
};

/*
 * The length of a file one thread appends to while another reads it. The
 * writer advances it and ends it (rc 0: complete; else it failed and the
 * reader must give up).
 */
struct cfs_growing {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint64_t size;
	bool ended;
	int failed;
};

void cfs_growing_init(struct cfs_growing *g);
void cfs_growing_destroy(struct cfs_growing *g);
void cfs_growing_advance(struct cfs_growing *g, uint64_t size);
void cfs_growing_end(struct cfs_growing *g, int rc);
/*
 * Blocks until the file holds at least want bytes or has ended. *size gets
 * its length, *ended whether that is final. Returns 0, or CFS_ECANCELED
 * with a message when the writer failed.
 */
int cfs_growing_wait(struct cfs_growing *g, uint64_t want, uint64_t *size,
		     bool *ended);

/* Compare-and-swap conditions of a put; both unset = unconditional. */
struct cfs_cond {
	const char *if_match; /* ETag the current object must have */
	bool if_none_match; /* create-only ("If-None-Match: *") */
};

/* Progress of long transfers: bytes done of total (0 if unknown). */
typedef void (*cfs_progress_fn)(uint64_t done, uint64_t total, void *payload);

struct cfs_store;

typedef int (*cfs_list_fn)(const char *key, void *payload);

struct cfs_store_ops {
	int version; /* CFS_STORE_OPS_VERSION */
	const char *name; /* "fs", "mem", "s3" */
	/*
	 * Writes the object's body to fd (from fd's current offset) or, when
	 * fd < 0, into buf (at most max bytes, else CFS_ECORRUPT). Fills info
	 * (may be NULL) with the ETag of the SAME revision as the body.
	 */
	int (*get)(struct cfs_store *st, const char *key, int fd,
		   struct cfs_buf *buf, size_t max, struct cfs_objinfo *info);
	/* Writes the body; on success copies the new ETag to etag_out. */
	int (*put)(struct cfs_store *st, const char *key,
		   const struct cfs_source *src, const struct cfs_cond *cond,
		   char etag_out[CFS_ETAG_MAX]);
	int (*head)(struct cfs_store *st, const char *key,
		    struct cfs_objinfo *info);
	/* Deleting a missing object is not an error. */
	int (*del)(struct cfs_store *st, const char *key);
	/* Calls fn for every key under prefix ("contexts/x/tree/"); a non-zero
	 * return from fn stops the walk and is returned. Order unspecified. */
	int (*list)(struct cfs_store *st, const char *prefix, cfs_list_fn fn,
		    void *payload);
	/* A short human description ("/root/.contextsdk/storage"). */
	const char *(*describe)(struct cfs_store *st);
	void (*free)(struct cfs_store *st);
	unsigned flags; /* CFS_STORE_* below */
	/*
	 * Optional: a private (0700) directory on the store's own filesystem
	 * where the engine may stage a file it is about to put, so that put
	 * links it into place instead of copying it; NULL = none ($TMPDIR).
	 * Only ciphertext goes there.
	 */
	const char *(*staging_dir)(struct cfs_store *st);
};

/* put takes a cfs_source with growing != NULL (uploads while it grows). */
#define CFS_STORE_STREAMS_PUT 1u

/* Every backend embeds this as its first member. */
struct cfs_store {
	const struct cfs_store_ops *ops;
	cfs_progress_fn progress; /* optional, for big gets/puts */
	void *progress_payload;
};

/* Thin dispatchers (core/store.c), NULL-safe where it makes sense. */
const char *cfs_store_staging_dir(struct cfs_store *st);
int cfs_store_get_fd(struct cfs_store *st, const char *key, int fd,
		     struct cfs_objinfo *info);
/* Reads a small object into a NUL-terminated heap string (*out). */
int cfs_store_get_buf(struct cfs_store *st, const char *key, char **out,
		      size_t *len, struct cfs_objinfo *info);
int cfs_store_put_fd(struct cfs_store *st, const char *key, int fd,
		     const struct cfs_cond *cond, char etag_out[CFS_ETAG_MAX]);
/* cfs_store_put_fd of a private temporary file (see cfs_source.may_link). */
int cfs_store_put_tmpfile(struct cfs_store *st, const char *key, int fd,
			  const struct cfs_cond *cond,
			  char etag_out[CFS_ETAG_MAX]);
/*
 * cfs_store_put_tmpfile of a file still being written (see
 * cfs_source.growing). Returns once the whole file is stored, or the
 * writer's failure.
 */
int cfs_store_put_growing(struct cfs_store *st, const char *key, int fd,
			  struct cfs_growing *g, const struct cfs_cond *cond,
			  char etag_out[CFS_ETAG_MAX]);
/* Whether puts of growing files overlap the writing (else they wait). */
bool cfs_store_streams_put(const struct cfs_store *st);
int cfs_store_put_buf(struct cfs_store *st, const char *key, const void *buf,
		      size_t len, const struct cfs_cond *cond,
		      char etag_out[CFS_ETAG_MAX]);
int cfs_store_head(struct cfs_store *st, const char *key,
		   struct cfs_objinfo *info);
int cfs_store_delete(struct cfs_store *st, const char *key);
int cfs_store_list(struct cfs_store *st, const char *prefix, cfs_list_fn fn,
		   void *payload);
const char *cfs_store_describe(struct cfs_store *st);
void cfs_store_free(struct cfs_store *st);

#endif
