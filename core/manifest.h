/*
 * The context manifest (REFERENCE.md §6): the single commit point of a
 * context, stored as contexts/<id>/manifest.json in JSON.stringify(m, null,
 * 2) layout. struct cfs_manifest is backed by the parsed cJSON document, so
 * fields this code does not know (runtimeState, enterprise fields, future
 * fields) survive a rewrite in their original order; new members are
 * appended at the end, as the reference's object spread does.
 *
 * contextfs extensions (ignored by the reference, which keeps unknown
 * fields through its spread):
 *   - a version summary (versions[], latestVersion) may carry "treeKey",
 *     "treeEncryption" and "sizeBytes" of that generation's bundle, so a
 *     retained generation stays addressable and decryptable (ID@GEN);
 *   - a checkpoint record may carry "encryption" (the checkpoint bundle's
 *     metadata), so a checkpoint stays decryptable after the next save
 *     overwrites treeEncryption;
 *   - a manifest-level array "checkpoints" lists every checkpoint record
 *     whose object still exists (oldest first).
 */
#ifndef CFS_CORE_MANIFEST_H
#define CFS_CORE_MANIFEST_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFS_MANIFEST_VERSIONS_MAX 50
#define CFS_MANIFEST_DEFAULT_SIZE_BYTES 268435456ull
/* contextfs never writes a manifest larger than this (cfs_manifest_fit). */
#define CFS_MANIFEST_MAX_BYTES (16u << 20)
/* Cap on a manifest read from storage (the reference writes unbounded
 * changedPaths lists, so its manifests can be larger). */
#define CFS_MANIFEST_READ_MAX (64u << 20)
/*
 * A version summary in the manifest lists at most this many changed paths
 * (the full list is in the bundle's .contextsdk/versions/<g>.json); a cut
 * list carries the contextfs extension member "changedPathsTotal".
 */
#define CFS_MANIFEST_CHANGED_PATHS_MAX 1000

struct cfs_manifest;

/*
 * Parses a stored manifest and applies the reference's read normalization
 * (missing format/filesystem -> "ext4", missing treeKey/imageKey -> the
 * legacy current.* keys, missing treeEncryption -> encryption when the
 * format is "tree", missing imageEncryption -> encryption otherwise). The
 * defaults are appended to the document, so they are written on the next
 * save, as the reference does. id names the context in messages (may be
 * NULL). Corrupt JSON or a non-object -> CFS_ECORRUPT "manifest for <id> is
 * corrupt: ...". A manifest whose "id" is not a valid id -> CFS_ECORRUPT.
 */
int cfs_manifest_parse(struct cfs_manifest **out, const char *buf, size_t len,
		       const char *id);

/* Inputs of a new manifest (createContext). */
struct cfs_manifest_init {
	const char *id;
	const char *format; /* "tree" or "ext4" */
	uint64_t size_bytes;
	const char *tree_key;
	const char *image_key;
	const cJSON *encryption; /* copied */
	const cJSON *tree_encryption; /* copied; NULL = same as encryption */
	const cJSON *policy; /* resolved persistencePolicy; NULL = omitted */
	int64_t now_ms; /* createdAt = updatedAt */
};

/*
 * Builds a generation-1 manifest with the reference's member order:
 * version, id, format, filesystem, sizeBytes, generation,
 * checkpointGeneration, imageKey, treeKey, encryption, treeEncryption,
 * layout, versions, persistencePolicy, createdAt, updatedAt.
 */
int cfs_manifest_new_for_create(struct cfs_manifest **out,
				const struct cfs_manifest_init *init);

int cfs_manifest_dup(struct cfs_manifest **out, const struct cfs_manifest *m);
void cfs_manifest_free(struct cfs_manifest *m);

/* JSON.stringify(m, null, 2): heap string, no trailing newline. */
char *cfs_manifest_print(const struct cfs_manifest *m);

/* The whole document (for status output and fields without an accessor). */
const cJSON *cfs_manifest_json(const struct cfs_manifest *m);

/* Getters (after normalization; numbers default to 0 when missing). */
const char *cfs_manifest_id(const struct cfs_manifest *m);
const char *cfs_manifest_format(const struct cfs_manifest *m);
bool cfs_manifest_is_tree(const struct cfs_manifest *m);
uint64_t cfs_manifest_generation(const struct cfs_manifest *m);
uint64_t cfs_manifest_checkpoint_generation(const struct cfs_manifest *m);
uint64_t cfs_manifest_size_bytes(const struct cfs_manifest *m);
const char *cfs_manifest_tree_key(const struct cfs_manifest *m);
const char *cfs_manifest_image_key(const struct cfs_manifest *m);
const char *cfs_manifest_created_at(const struct cfs_manifest *m);
const char *cfs_manifest_updated_at(const struct cfs_manifest *m);
/* EncryptionMetadata objects (decode with cfs_encmeta_from_json); NULL if
 * absent. */
const cJSON *cfs_manifest_encryption(const struct cfs_manifest *m);
const cJSON *cfs_manifest_tree_encryption(const struct cfs_manifest *m);
const cJSON *cfs_manifest_image_encryption(const struct cfs_manifest *m);
/* persistencePolicy object or NULL (caller applies defaults). */
const cJSON *cfs_manifest_policy(const struct cfs_manifest *m);
const cJSON *cfs_manifest_runtime_state(const struct cfs_manifest *m);
/* versions array (oldest first) or NULL; latestVersion or NULL. */
const cJSON *cfs_manifest_versions(const struct cfs_manifest *m);
const cJSON *cfs_manifest_latest_version(const struct cfs_manifest *m);
const cJSON *cfs_manifest_latest_checkpoint(const struct cfs_manifest *m);
/* contextfs extension "checkpoints" array or NULL. */
const cJSON *cfs_manifest_checkpoints(const struct cfs_manifest *m);

/* Setters: replace in place (keeping member order) or append. 0 or
 * CFS_ENOMEM / CFS_EINVAL. JSON arguments are copied. */
int cfs_manifest_set_format(struct cfs_manifest *m,
			    const char *format); /* + filesystem */
int cfs_manifest_set_generation(struct cfs_manifest *m, uint64_t gen);
int cfs_manifest_set_checkpoint_generation(struct cfs_manifest *m, uint64_t n);
int cfs_manifest_set_size_bytes(struct cfs_manifest *m, uint64_t size);
int cfs_manifest_set_tree_key(struct cfs_manifest *m, const char *key);
int cfs_manifest_set_image_key(struct cfs_manifest *m, const char *key);
/* Sets both "encryption" and "treeEncryption" (a tree save/checkpoint). */
int cfs_manifest_set_encryption(struct cfs_manifest *m, const cJSON *enc);
/* Sets only "treeEncryption". */
int cfs_manifest_set_tree_encryption(struct cfs_manifest *m, const cJSON *enc);
int cfs_manifest_set_image_encryption(struct cfs_manifest *m, const cJSON *enc);
int cfs_manifest_set_policy(struct cfs_manifest *m, const cJSON *policy);
int cfs_manifest_set_runtime_state(struct cfs_manifest *m, const cJSON *state);
/* updatedAt = ISO-8601 of now_ms. */
int cfs_manifest_set_updated_at(struct cfs_manifest *m, int64_t now_ms);

/*
 * Records a save: the summary is a copy of record (a ContextVersionRecord)
 * with "files" set to [] (in place, or appended), plus the contextfs
 * extension fields treeKey / treeEncryption / sizeBytes when tree_key is
 * non-NULL. Appends it to versions (keeping only the last 50) and sets
 * latestVersion to it. If dropped is non-NULL it receives a cJSON array of
 * the summaries that fell off (caller cJSON_Delete()s; the engine may GC
 * their tree objects), else they are discarded.
 */
/*
 * Makes the printed manifest fit in max_bytes, so that it can always be
 * read back: empties the changedPaths of the oldest summaries first
 * (recording "changedPathsTotal"). CFS_EUNSUPPORTED if it still does not
 * fit; nothing may then be written.
 */
int cfs_manifest_fit(struct cfs_manifest *m, size_t max_bytes);

int cfs_manifest_add_version(struct cfs_manifest *m, const cJSON *record,
			     const char *tree_key, const cJSON *tree_enc,
			     uint64_t size_bytes, cJSON **dropped);

/* The summary of generation gen in versions[] (or latestVersion), or NULL. */
const cJSON *cfs_manifest_version_find(const struct cfs_manifest *m,
				       uint64_t gen);

/*
 * Builds a ContextCheckpointRecord {version: 1, generation, reason,
 * timestamp, treeKey, sizeBytes} plus the extension "encryption" (copied)
 * when enc is non-NULL. NULL with CFS_ENOMEM on failure.
 */
cJSON *cfs_manifest_checkpoint_record_new(uint64_t n, const char *reason,
					  int64_t now_ms, const char *tree_key,
					  uint64_t size_bytes,
					  const cJSON *enc);
/*
 * Sets latestCheckpoint to a copy of record and appends a copy to the
 * "checkpoints" extension array (replacing an entry of the same
 * generation).
 */
int cfs_manifest_add_checkpoint(struct cfs_manifest *m, const cJSON *record);
/* Drops checkpoint n from the "checkpoints" array (its data is gone). */
int cfs_manifest_remove_checkpoint(struct cfs_manifest *m, uint64_t n);

/*
 * Where the bundle of a saved generation / a checkpoint lives and how it is
 * encrypted. Pointers borrow from m. CFS_ENOTFOUND with a message when the
 * manifest has no (decryptable) record of it:
 *   generation: the current generation while treeKey is its tree object, or
 *     a version summary carrying treeKey + treeEncryption;
 *   checkpoint: an entry of "checkpoints" or latestCheckpoint carrying
 *     "encryption", or latestCheckpoint while treeKey still names it (then
 *     treeEncryption is its metadata).
 * Any of tree_key, enc and size may be NULL (existence checks).
 */
int cfs_manifest_generation_lookup(const struct cfs_manifest *m, uint64_t gen,
				   const char **tree_key, const cJSON **enc,
				   uint64_t *size);
int cfs_manifest_checkpoint_lookup(const struct cfs_manifest *m, uint64_t n,
				   const char **tree_key, const cJSON **enc,
				   uint64_t *size);

#endif
