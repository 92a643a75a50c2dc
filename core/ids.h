/*
 * Context ids, object keys and context paths (REFERENCE.md §2.1, §2.2,
 * §5.4). Every key builder validates the id first, so no key is ever
 * computed from an id that could escape its "contexts/<id>/" prefix.
 * Also parses the user-facing refs "ID", "ID@GEN" and "ID@checkpoint:N".
 */
#ifndef CFS_CORE_IDS_H
#define CFS_CORE_IDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFS_ID_MAX 200
/* Longest key we build: "contexts/" + 200 + "/tree/" + 20 digits + ... */
#define CFS_KEY_MAX 320
/* 4 random bytes as 8 lowercase hex chars (+ NUL). */
#define CFS_ATTEMPT_LEN 8

/*
 * §2.1: ^(?!\.{1,2}$)[A-Za-z0-9][A-Za-z0-9._-]{0,199}$
 */
bool cfs_id_valid(const char *id);

/*
 * 0, or CFS_EINVAL with the reference's message:
 * invalid context id: "<id JSON-escaped>" — ids must start with a letter or
 * digit and use only letters, digits, ".", "_", "-" (max 200 chars)
 */
int cfs_id_check(const char *id);

/*
 * sanitizeId: every char outside [A-Za-z0-9_.-] becomes '-' (bytewise; a
 * multi-byte UTF-8 char becomes one '-' like the reference's per-code-unit
 * replace for BMP chars). Empty result -> CFS_EINVAL "context id must
 * contain at least one portable character". *out is a heap string.
 */
int cfs_id_sanitize(char **out, const char *id);

/*
 * Key builders. All write a NUL-terminated key into out (CFS_KEY_MAX bytes)
 * and return 0, or CFS_EINVAL for an invalid id (message as cfs_id_check).
 */
int cfs_key_context_prefix(char out[CFS_KEY_MAX],
			   const char *id); /* contexts/<id>/ */
int cfs_key_manifest(char out[CFS_KEY_MAX], const char *id);
int cfs_key_lock(char out[CFS_KEY_MAX], const char *id);
int cfs_key_tree_prefix(char out[CFS_KEY_MAX], const char *id); /* .../tree/ */
int cfs_key_image_prefix(char out[CFS_KEY_MAX],
			 const char *id); /* .../image/ */
/* contextKeys().checkpoints: "contexts/<id>/checkpoints" (no slash). */
int cfs_key_checkpoints(char out[CFS_KEY_MAX], const char *id);
/* Listing prefix "contexts/<id>/checkpoints/". */
int cfs_key_checkpoint_prefix(char out[CFS_KEY_MAX], const char *id);
/*
 * contexts/<id>/tree/<%08 generation>-<attempt>.tree.tar.zst.enc; attempt
 * must be exactly 8 lowercase hex chars (CFS_EINVAL otherwise).
 */
int cfs_key_tree(char out[CFS_KEY_MAX], const char *id, uint64_t generation,
		 const char *attempt);
/* contexts/<id>/image/<%08 generation>-<attempt>.img.enc */
int cfs_key_image(char out[CFS_KEY_MAX], const char *id, uint64_t generation,
		  const char *attempt);
/* contexts/<id>/checkpoints/<%08 n>.tree.tar.zst.enc */
int cfs_key_checkpoint(char out[CFS_KEY_MAX], const char *id, uint64_t n);
/* Legacy (<= 0.2.0) fixed keys: current.tree.tar.zst.enc / current.img.enc */
int cfs_key_legacy_tree(char out[CFS_KEY_MAX], const char *id);
int cfs_key_legacy_image(char out[CFS_KEY_MAX], const char *id);

/* A fresh attempt suffix: 4 random bytes, 8 lowercase hex chars + NUL. */
void cfs_attempt_new(char out[CFS_ATTEMPT_LEN + 1]);

/*
 * §2.2 GC eligibility: key starts with contexts/<id>/tree/ or
 * contexts/<id>/image/, or is exactly one of the two legacy current.* keys.
 * Checkpoint objects are never replaceable. False for an invalid id.
 */
bool cfs_key_replaceable(const char *id, const char *key);

/*
 * Parses the generation out of a tree/image key of this id
 * ("contexts/<id>/tree/00000012-ab12cd34.tree.tar.zst.enc" -> 12).
 * Returns false when key is not such a key.
 */
bool cfs_key_parse_generation(const char *id, const char *key, uint64_t *gen);

/*
 * §5.4 normalizeContextPath: strips leading '/', drops empty segments,
 * NULL or no segments -> "workspace"; "." / ".." segments -> CFS_EINVAL
 * "invalid context path: <input>"; first segment must be a managed root
 * (workspace, memory, artifacts, logs, cache, config, .contextsdk) else
 * CFS_EINVAL "path must be under one of: workspace, memory, artifacts,
 * logs, cache, config, .contextsdk". *out is a heap string.
 */
int cfs_context_path_normalize(char **out, const char *input);

/* References to a stored tree: "ID", "ID@GEN", "ID@checkpoint:N". */
enum cfs_ref_kind {
	CFS_REF_LATEST = 0, /* the manifest's current treeKey */
	CFS_REF_GENERATION = 1, /* a saved generation */
	CFS_REF_CHECKPOINT = 2, /* a checkpoint */
};

struct cfs_ref {
	char id[CFS_ID_MAX + 1];
	enum cfs_ref_kind kind;
	uint64_t number; /* generation or checkpoint number; 0 for LATEST */
};

/*
 * Parses a ref; the id is validated. Numbers are plain decimal, >= 1 for
 * generations and checkpoints, no sign or spaces. CFS_EINVAL with a
 * message naming the bad part otherwise.
 */
int cfs_ref_parse(struct cfs_ref *out, const char *s);

#endif
