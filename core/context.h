/*
 * The commit engine: create, commit (save / checkpoint), export, verify,
 * restore, gc and list of contexts over a struct cfs_store (REFERENCE.md
 * §2.3, §2.4, §5.2, §8.1, §8.3, §8.4, §13.1). No FUSE and no HTTP: the CLI
 * and a mount drive this same API.
 *
 * Invariants:
 *   - data objects are written first under fresh keys, the manifest last
 *     with a compare-and-swap (If-Match on the ETag read at the start, or
 *     If-None-Match on create); on any failure every object this call wrote
 *     is deleted again, so the previous manifest and its data stay intact;
 *   - when an owner is given, lock ownership is asserted before any work
 *     and again right before the manifest write (the commit point);
 *   - superseded objects are deleted only after a successful manifest
 *     write, and only beyond retention (the data of the last N generations
 *     is kept and recorded in their version summaries, a contextfs
 *     extension); deletion failures only warn;
 *   - plaintext (seed trees, bundles) exists only in private temp files
 *     (0600 in a 0700 directory) that are removed on every path; whole
 *     bundles are streamed, never held in memory.
 *
 * Errors: CFS_EINVAL invalid id / ref / options; CFS_ENOTFOUND missing
 * context, generation or checkpoint; CFS_EEXISTS "context already exists:
 * <id>"; CFS_ECONFLICT lost compare-and-swap or expect_generation mismatch;
 * CFS_ELOCKED lock held by another owner; CFS_EAUTH wrong key or tampered
 * data; CFS_EUNSAFE / CFS_ECORRUPT unsafe archive or corrupt metadata;
 * storage errors propagate unchanged.
 */
#ifndef CFS_CORE_CONTEXT_H
#define CFS_CORE_CONTEXT_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/bundle.h"
#include "core/store.h"

struct cfs_keys; /* core/crypto.h: key material, caches derivations */
struct cfs_manifest; /* core/manifest.h */

/* Keep the data of the last N generations unless told otherwise. */
#define CFS_CONTEXT_DEFAULT_RETENTION 5
/* Big enough for every key the engine builds (see CFS_KEY_MAX in ids.h). */
#define CFS_CONTEXT_KEY_MAX 320

/*
 * scrypt parameters for NEW encryptions. cost 0 = "not set": create uses
 * the crypto default (131072/8/1), commits reuse the parameters the context
 * already records in treeEncryption.scrypt. Ignored for raw keys. The
 * chosen parameters are set on the caller's keys object
 * (cfs_keys_set_scrypt), which derives once per salt and parameter set.
 */
struct cfs_scrypt_opts {
	uint64_t cost;
	uint32_t block_size; /* 0 = 8 */
	uint32_t parallelization; /* 0 = 1 */
};

struct cfs_create_opts {
	bool force; /* overwrite an existing context, prune after */
	const cJSON *policy; /* persistencePolicy; NULL = defaults */
	struct cfs_scrypt_opts scrypt;
	const char *
		author; /* version summary of generation 1; NULL = "contextsdk" */
	const char *message; /* NULL = "create context" */
	cfs_progress_fn progress;
	void *progress_payload;
};

/*
 * Creates context id with the reference's seed tree (§5.2), generation 1.
 * *out (may be NULL) receives the written manifest. An existing context
 * without force -> CFS_EEXISTS "context already exists: <id>".
 */
int cfs_context_create(struct cfs_manifest **out, struct cfs_store *st,
		       struct cfs_keys *keys, const char *id,
		       const struct cfs_create_opts *opts);

enum cfs_commit_kind {
	CFS_COMMIT_SAVE = 0, /* next generation (§8.3) */
	CFS_COMMIT_CHECKPOINT = 1, /* next checkpoint, pointer flip (§8.4) */
};

struct cfs_hash_hints; /* core/version.h */
struct cfs_file_entry; /* core/version.h */

/*
 * The policy roots of a save already packed and compressed: the bytes
 * from offset to the end of fd are zstd frames holding the roots' tar
 * members and the end-of-archive blocks, checked by cfs_bundle_unpack's
 * tail rules (struct cfs_unpack_tail) while srcdir was extracted from
 * them.
 */
struct cfs_commit_tail {
	int fd;
	uint64_t offset;
};

struct cfs_commit_opts {
	enum cfs_commit_kind kind;
	/*
	 * Lock owner held by the caller; asserted before starting and at the
	 * commit point (another owner -> CFS_ELOCKED, nothing written). NULL
	 * = no assertion (only for callers that serialize writers otherwise).
	 */
	const char *owner;
	const char *author; /* save: NULL = owner, else "contextsdk" */
	const char *message; /* save: NULL = "save context" */
	const char *reason; /* checkpoint: NULL = "checkpoint" */
	/* -1 = any; else the current generation must equal it (CFS_ECONFLICT). */
	int64_t expect_generation;
	int retention; /* <= 0 = CFS_CONTEXT_DEFAULT_RETENTION */
	const cJSON *policy; /* NULL = the manifest's stored policy */
	struct cfs_scrypt_opts scrypt;
	/*
	 * false (the default): before packing, the current tree object is
	 * downloaded and authenticated with keys, so a wrong passphrase or
	 * key is refused (CFS_EAUTH / CFS_EKEY) instead of committing data
	 * nobody else can read. true: the caller already authenticated the
	 * current tree with these keys (a mount that exported it).
	 */
	bool key_verified;
	/*
	 * With key_verified, an fd open on the previous generation's version
	 * record (e.g. the index_fd of the caller's last commit result), read
	 * from its start: the base of changedPaths. -1 (the default) =
	 * srcdir's .contextsdk/index.json.
	 */
	int prev_index_fd;
	/* fill cfs_commit_result.index_fd (a mount keeps it for the next
	 * commit's prev_index_fd) */
	bool want_index_fd;
	/*
	 * Optional private directory (made 0700) where a save leaves the
	 * index of the tree it wrote, keyed by store and context. A later
	 * commit without key_verified whose current tree is still exactly
	 * that object (key and GCM tag) takes its changedPaths base from
	 * there and only confirms the key on the object's first bytes,
	 * instead of downloading and authenticating the whole tree.
	 */
	const char *index_cache_dir;
	/* optional: hashes the caller knows (core/version.h; a mount) */
	const struct cfs_hash_hints *hash_hints;
	/*
	 * Optional: srcdir's roots as they were received (a session's save).
	 * The bundle is then a head packed from srcdir (.contextsdk,
	 * contextsdk.json, the version record) followed by these bytes as
	 * they are, instead of srcdir's roots packed and compressed again.
	 */
	const struct cfs_commit_tail *tail;
	/*
	 * Optional, with tail: the file index of the roots as the caller
	 * listed them from the tail (core/version.h entries, in the order
	 * cfs_index_build walks them); srcdir then holds only the head.
	 */
	const struct cfs_file_entry *index;
	size_t nindex;
	cfs_progress_fn progress;
	void *progress_payload;
};

/* Defaults: kind save, expect_generation and prev_index_fd -1, everything
 * else unset. */
void cfs_commit_opts_init(struct cfs_commit_opts *opts);

struct cfs_commit_result {
	uint64_t generation; /* generation after the commit */
	uint64_t checkpoint_generation; /* checkpoint counter after it */
	char tree_key[CFS_CONTEXT_KEY_MAX]; /* object written */
	uint64_t size_bytes; /* compressed bundle bytes */
	/* save: [{path, type}] (owned), the first
	 * CFS_MANIFEST_CHANGED_PATHS_MAX as the manifest's summary keeps
	 * them (the bundle's record has all); else NULL */
	cJSON *changed_paths;
	uint64_t changed_total; /* save: how many paths changed */
	size_t gc_deleted; /* superseded objects deleted afterwards */
	/*
	 * save with want_index_fd: the version record written as
	 * .contextsdk/index.json, in an unnamed file of the private temp
	 * directory (owned when has_index_fd), so the caller keeps it without
	 * holding it in memory; pass it as prev_index_fd to the next
	 * key_verified commit
	 */
	bool has_index_fd;
	int index_fd;
};

/* Frees what a result owns and zeroes it (NULL-safe). */
void cfs_commit_result_clear(struct cfs_commit_result *res);

/*
 * Commits the managed roots of the directory srcdirfd (the persistence
 * policy's roots plus contextsdk.json; srcdir's own .contextsdk/ only for
 * its index.json as the previous file index) as the next generation or
 * checkpoint of id. The version record files (.contextsdk/index.json and
 * .contextsdk/versions/<g>.json) are added to the bundle in memory; srcdir
 * is never written. res may be NULL.
 */
int cfs_context_commit(struct cfs_commit_result *res, struct cfs_store *st,
		       struct cfs_keys *keys, const char *id, int srcdirfd,
		       const struct cfs_commit_opts *opts);

/* What a ref resolved to. */
struct cfs_ref_info {
	uint64_t generation; /* generation of the tree; 0 for a checkpoint */
	uint64_t checkpoint; /* checkpoint number; 0 otherwise */
	char tree_key[CFS_CONTEXT_KEY_MAX];
	uint64_t size_bytes; /* ciphertext bytes downloaded */
};

/*
 * Writes the tree named by ref ("ID", "ID@GEN", "ID@checkpoint:N") into
 * destdirfd (which the caller made empty). Downloads to a private temp
 * file, authenticates while decrypting to a second private temp file, then
 * unpacks with the archive safety rules. A generation whose data is gone ->
 * CFS_ENOTFOUND "generation N of <id> is no longer retained (kept: ...)".
 * info may be NULL.
 */
int cfs_context_export(struct cfs_ref_info *info, struct cfs_store *st,
		       struct cfs_keys *keys, const char *ref, int destdirfd,
		       cfs_progress_fn progress, void *progress_payload);

struct cfs_export_opts {
	cfs_progress_fn progress;
	void *progress_payload;
	/*
	 * Optional: when the ref is the context's current tree, leave its
	 * authenticated index where a later commit with the same
	 * cfs_commit_opts.index_cache_dir finds it.
	 */
	const char *index_cache_dir;
	/* optional: called for each regular file extracted (core/bundle.h) */
	cfs_file_hashed_fn file_hashed;
	void *hash_payload;
	/* cfs_context_fetch_bundle_opts: each member, its data hashed */
	cfs_member_fn member;
	void *member_payload;
};

/* cfs_context_export() with options. */
int cfs_context_export_opts(struct cfs_ref_info *info, struct cfs_store *st,
			    struct cfs_keys *keys, const char *refstr,
			    int destdirfd, const struct cfs_export_opts *o);

/*
 * cfs_context_export() that also writes the plaintext bundle (the tar.zst)
 * into bundle_fd in the same pass, for a caller that needs the tree and
 * the bundle (push: the merge's base and the upload). What bundle_fd holds
 * is trustworthy only when this returns 0; keep it private.
 */
int cfs_context_export_bundle(struct cfs_ref_info *info, struct cfs_store *st,
			      struct cfs_keys *keys, const char *ref,
			      int destdirfd, int bundle_fd,
			      const struct cfs_export_opts *o);

/*
 * Writes the plaintext bundle (the tar.zst) of ref into fd while it
 * authenticates it and checks it with the archive safety rules (nothing
 * extracted). What fd holds is trustworthy only when this returns 0: the
 * caller keeps fd private (0600 in a 0700 directory) and removes it on
 * failure. A runtime gets a tree this way without exporting and
 * repacking it. info may be NULL.
 */
/* cfs_context_fetch_bundle() with options (progress, member listing). */
int cfs_context_fetch_bundle_opts(struct cfs_ref_info *info,
				  struct cfs_store *st, struct cfs_keys *keys,
				  const char *refstr, int fd,
				  const struct cfs_export_opts *o);

int cfs_context_fetch_bundle(struct cfs_ref_info *info, struct cfs_store *st,
			     struct cfs_keys *keys, const char *ref, int fd,
			     cfs_progress_fn progress, void *progress_payload);

/* One object checked by verify. Strings borrow until the callback returns. */
struct cfs_verify_item {
	const char *key;
	const char *role; /* "current", "generation:N", "checkpoint:N" */
	bool ok;
	uint64_t bytes; /* ciphertext bytes (0 if not downloaded) */
	int error; /* CFS_E* when !ok */
	const char *message; /* when !ok */
};
/* A non-zero return stops the walk and is returned by verify. */
typedef int (*cfs_verify_fn)(const struct cfs_verify_item *item, void *payload);

/*
 * Downloads, authenticates and validates (archive safety, nothing written)
 * every object the manifest references: the current tree, the retained
 * generations and the checkpoints whose decryption metadata is known.
 * Returns 0 when all passed, else the code of the first failure (with its
 * message). fn may be NULL.
 */
int cfs_context_verify(struct cfs_store *st, struct cfs_keys *keys,
		       const char *id, cfs_verify_fn fn, void *payload);

/*
 * Exports ref into a private temp dir and commits it as the next
 * generation of ref's id (message "restore <ref>" unless opts->message is
 * set; opts->kind is ignored, always a save). opts may be NULL.
 */
int cfs_context_restore(struct cfs_commit_result *res, struct cfs_store *st,
			struct cfs_keys *keys, const char *ref,
			const struct cfs_commit_opts *opts);

/* One object considered by gc. */
struct cfs_gc_item {
	const char *key;
	bool deleted; /* false on dry run or failure */
	int error; /* CFS_E* of a failed delete, else 0 */
};
typedef int (*cfs_gc_fn)(const struct cfs_gc_item *item, void *payload);

struct cfs_gc_opts {
	int keep; /* <= 0 = CFS_CONTEXT_DEFAULT_RETENTION */
	bool dry_run;
	const char *owner; /* lock owner to assert, NULL = none */
	cfs_gc_fn fn; /* may be NULL */
	void *payload;
};

/*
 * Applies retention (drops the data references of generations older than
 * the last keep from the manifest with a compare-and-swap), then deletes
 * every object under contexts/<id>/tree/ and image/ that the manifest no
 * longer references (objects of generations newer than the manifest's are
 * left alone: they may belong to a commit in flight), the legacy current.*
 * objects once unreferenced, and checkpoint objects numbered above
 * checkpointGeneration (leftovers of crashed checkpoints; run gc under the
 * lock). Older unreferenced checkpoints are kept. *deleted (may be NULL)
 * receives the number of objects deleted (or that would be).
 */
int cfs_context_gc(size_t *deleted, struct cfs_store *st, const char *id,
		   const struct cfs_gc_opts *opts);

/* Reads (and normalizes) the manifest of id; etag may be NULL. */
int cfs_context_read_manifest(struct cfs_manifest **out,
			      char etag[CFS_ETAG_MAX], struct cfs_store *st,
			      const char *id);

/* Calls fn for every context id with a manifest under contexts/. */
typedef int (*cfs_context_list_fn)(const char *id, void *payload);
int cfs_context_list(struct cfs_store *st, cfs_context_list_fn fn,
		     void *payload);

#endif
