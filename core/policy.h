/*
 * Persistence policy (REFERENCE.md §5.3): which top-level roots of a context
 * are packed into a bundle and which paths below them are left out. The
 * exclusion test reproduces the reference's runtime packer, which matches
 * with python's fnmatch (where `*` also matches `/`), plus the trimmed
 * trailing-slash-globstar form and a prefix rule. Also the context layout names and
 * the "unsafe archive path" predicate shared by pack, unpack and policy
 * validation (§5.5).
 */
#ifndef CFS_CORE_POLICY_H
#define CFS_CORE_POLICY_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>

/* The context layout: workspace memory artifacts logs cache config. */
#define CFS_LAYOUT_COUNT 6
extern const char *const cfs_layout[CFS_LAYOUT_COUNT];

/* Bookkeeping names packed before the policy roots. */
#define CFS_META_DIR ".contextsdk"
#define CFS_CONTEXT_JSON "contextsdk.json"

/* Caps on policies read from manifests. */
#define CFS_POLICY_MAX_ITEMS 1024
#define CFS_POLICY_MAX_ITEM_LEN 4096

struct cfs_policy {
	char **roots;
	size_t nroots;
	char **exclude;
	size_t nexclude;
};

/* True if name is one of cfs_layout. */
bool cfs_layout_has(const char *name);

/*
 * The reference's unsafe(value): after mapping `\` to `/`, value starts
 * with `/`, contains a NUL within len, or has a `..` segment (a trailing
 * `..` included). len is the byte length (names may carry NULs in tar).
 */
bool cfs_path_unsafe(const char *value, size_t len);

/* Default roots (layout minus cache) and default excludes. */
int cfs_policy_default(struct cfs_policy *out);

/*
 * Resolves a persistencePolicy object ({roots, exclude}); obj may be NULL.
 * A missing or empty array means the defaults (so excludes cannot be
 * disabled, as in the reference). Non-string items -> CFS_ECORRUPT; a root
 * that is empty or unsafe (absolute, `..`) -> CFS_EUNSAFE. Caps: 1024
 * items, 4096 bytes each.
 */
int cfs_policy_from_json(struct cfs_policy *out, const cJSON *obj);

/* {"roots": [...], "exclude": [...]}, or NULL (CFS_ENOMEM). */
cJSON *cfs_policy_to_json(const struct cfs_policy *policy);

int cfs_policy_copy(struct cfs_policy *out, const struct cfs_policy *in);

/*
 * The reference packer's excluded(rel): rel (with `\` mapped to `/`) is
 * excluded when for some pattern fnmatch(rel, pattern) or fnmatch(rel,
 * trimmed), trimmed being pattern without a trailing slash-globstar ("/" + "**"), or trimmed is
 * non-empty and rel starts with trimmed (trailing slashes removed) + `/`.
 */
bool cfs_policy_excluded(const struct cfs_policy *policy, const char *relpath);

/*
 * True when every path strictly below the directory reldir is excluded
 * (so a walk may skip it without changing which files are excluded): some
 * pattern ending in slash-globstar excludes reldir, or reldir is excluded by a
 * prefix rule or by a pattern without wildcards.
 */
bool cfs_policy_prunes(const struct cfs_policy *policy, const char *reldir);

/*
 * python's fnmatch.fnmatchcase(name, pattern): `*` matches any run of
 * characters (including `/`), `?` one character, `[seq]` / `[!seq]` a class
 * with ranges; an unclosed `[` is literal. Bytes are compared as bytes.
 */
bool cfs_fnmatch(const char *pattern, const char *name);

/* Frees the arrays and zeroes *policy (NULL-safe). */
void cfs_policy_free(struct cfs_policy *policy);

#endif
