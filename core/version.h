/*
 * Version records (REFERENCE.md §5.2, §13.1): the per-save file index of a
 * context tree ({path, size, mode, mtime, sha256} for every regular file
 * under the persistence policy's roots), the diff against the previous
 * index, and the record written as .contextsdk/index.json and
 * .contextsdk/versions/<generation>.json inside the bundle.
 */
#ifndef CFS_CORE_VERSION_H
#define CFS_CORE_VERSION_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <sys/stat.h>
#include <time.h>
#include <stdint.h>

#include "core/policy.h"

/* index.json read back for the diff is capped (it lives inside a bundle). */
#define CFS_INDEX_JSON_MAX (256u << 20)

struct cfs_file_entry {
	char *path; /* root-relative POSIX path */
	uint64_t size;
	unsigned mode; /* permission bits incl. set-id/sticky (07777) */
	int64_t mtime; /* seconds since the epoch */
	char sha256[65]; /* lowercase hex; "" when unknown (old index) */
};

enum cfs_change_type {
	CFS_CHANGE_ADDED,
	CFS_CHANGE_MODIFIED,
	CFS_CHANGE_REMOVED,
};

struct cfs_version_change {
	const char *path; /* borrowed from the file lists passed to diff */
	enum cfs_change_type type;
};

/* "added" / "modified" / "removed". */
const char *cfs_change_type_name(enum cfs_change_type type);

/*
 * The reference snapshot's file list: for each policy root in policy
 * order that exists, every regular file below it, in sorted path order
 * (component-wise, like python's sorted() of pathlib paths), that is not
 * excluded by the policy. Symlinks are followed the way the reference's
 * rglob() + is_file() does: a symlink to a regular file is listed with the
 * target's size/mode/mtime/content, a symlink to a directory is not
 * descended. Unlike the reference, a symlink is only followed while it
 * resolves inside rootfd (openat2 RESOLVE_BENEATH); others are skipped.
 * Roots themselves are opened without following links.
 */
int cfs_index_build(struct cfs_file_entry **out, size_t *n, int rootfd,
		    const struct cfs_policy *policy);

/*
 * Hashes a caller already knows (a mount's daemon, which sees every
 * write): lookup gets the fstat of a regular file about to be hashed and
 * returns true with its SHA-256 (hex) when the file is known unchanged;
 * learn gets each hash computed (with the fstat taken after reading);
 * done ends the build (ok: every file was listed). Called from one thread
 * at a time.
 */
struct cfs_hash_hints {
	bool (*lookup)(void *payload, const struct stat *st, char sha256[65]);
	void (*learn)(void *payload, const struct stat *st, const char *sha256);
	void (*done)(void *payload, bool ok);
	void *payload;
};

/* cfs_index_build() with hints (NULL: none). */
int cfs_index_build_hinted(struct cfs_file_entry **out, size_t *n, int rootfd,
			   const struct cfs_policy *policy,
			   const struct cfs_hash_hints *hints);

void cfs_index_free(struct cfs_file_entry *files, size_t n);

/*
 * Receives the walk's entries one at a time, in cfs_index_build()'s
 * order; it may take e->path (set it to NULL), else the path is freed
 * after the call. Non-zero stops the walk with that error.
 */
typedef int (*cfs_index_emit_fn)(void *payload, struct cfs_file_entry *e);

/*
 * cfs_index_build_hinted() without the list: each entry goes to emit as
 * soon as it and every entry before it are complete, so the walk's memory
 * does not grow with the number of files.
 */
int cfs_index_walk(int rootfd, const struct cfs_policy *policy,
		   const struct cfs_hash_hints *hints, cfs_index_emit_fn emit,
		   void *payload);

/*
 * File hashes by inode, (dev, ino) -> (size, mtime, sha256): a hash is
 * given back only while the size and mtime (ns) still match. Used for the
 * files an unpacker hashed as it extracted them (session saves, push) and
 * for a mount's hints (fuse/hints.c, which also keeps plain inode sets in
 * it: put with a zero stat, has). Bounded: past max entries (0 =
 * CFS_INODE_HASHES_MAX) puts fail and whoever needs a hash reads the file.
 * Zero-initialise; one thread at a time.
 */
#define CFS_INODE_HASHES_MAX (1u << 17)

struct cfs_inode_hash; /* core/version.c */

struct cfs_inode_hashes {
	struct cfs_inode_hash *v;
	size_t cap, used;
	size_t max; /* entries at most; 0 = CFS_INODE_HASHES_MAX */
	bool full; /* a put failed (full or out of memory) */
	/* find also requires the ctime to match (a table loaded from disk,
	 * whose files anything may have rewritten with their old mtime) */
	bool ctime_too;
};

/* Records st's file (dev, ino, size, mtime) with sha (32 bytes; NULL:
 * zeros). false: no room. */
bool cfs_inode_hashes_put(struct cfs_inode_hashes *h, const struct stat *st,
			  const uint8_t *sha);

/* The recorded hash of st's file if its size and mtime still match. */
const uint8_t *cfs_inode_hashes_find(const struct cfs_inode_hashes *h,
				     const struct stat *st);

/* Whether (dev, ino) is recorded at all. */
bool cfs_inode_hashes_has(const struct cfs_inode_hashes *h, dev_t dev,
			  ino_t ino);

/* Records every entry of src in dst; false: dst ran out of room. */
bool cfs_inode_hashes_union(struct cfs_inode_hashes *dst,
			    const struct cfs_inode_hashes *src);

/* cfs_file_hashed_fn: records fd's file (fstat) with its hex hash. */
void cfs_inode_hashes_note(void *hashes, int fd, const char sha256[65]);

/* cfs_hash_hints.lookup: cfs_inode_hashes_find() as hex. */
bool cfs_inode_hashes_lookup(void *hashes, const struct stat *st,
			     char sha256[65]);

void cfs_inode_hashes_free(struct cfs_inode_hashes *h);

/*
 * A commit's stat cache (like git's index). Save: creates path (0600,
 * O_EXCL) with the table's entries, less those whose ctime or mtime is not
 * before not_after (files that changed around the time they were hashed,
 * within a timestamp tick of it, must be read again). Load: adds path's
 * entries to h; a missing, short or foreign file adds nothing. Entries
 * keep dev, ino, size, mtime and ctime.
 */
int cfs_inode_hashes_save(const struct cfs_inode_hashes *h, const char *path,
			  struct timespec not_after);
void cfs_inode_hashes_load(struct cfs_inode_hashes *h, const char *path);

/*
 * The previous file list from an index.json (or versions/<g>.json) buffer:
 * the "files" array of the object. Like the reference, an unreadable or
 * malformed document yields an empty list (returns 0); entries without a
 * string path are skipped. Only CFS_ENOMEM is an error.
 */
int cfs_index_from_json(struct cfs_file_entry **out, size_t *n, const char *buf,
			size_t len);

/*
 * diffVersionFiles(previous, current): every path of current in sorted
 * (byte) order -> added if absent before, modified if the sha256 differs;
 * then every path of previous in sorted order absent now -> removed. The
 * changes borrow paths from prev/cur. *out is NULL when there are none.
 */
int cfs_version_diff(struct cfs_version_change **out, size_t *n,
		     const struct cfs_file_entry *prev, size_t nprev,
		     const struct cfs_file_entry *cur, size_t ncur);

/* "YYYY-MM-DDTHH:MM:SSZ" (UTC, whole seconds) of epoch seconds. */
void cfs_version_timestamp(char out[32], int64_t epoch_s);

/* [{path, type}] / [{path, size, mode: "0o644", mtime, sha256}]. */
cJSON *cfs_version_changes_to_json(const struct cfs_version_change *c,
				   size_t n);
cJSON *cfs_version_files_to_json(const struct cfs_file_entry *files, size_t n);

/*
 * The record {version: 1, generation, parentGeneration (int or null when
 * parent < 0), timestamp, author, message, changedPaths, files}. timestamp
 * NULL = now. NULL on allocation failure (CFS_ENOMEM set).
 */
cJSON *cfs_version_record_new(int64_t generation, int64_t parent,
			      const char *timestamp, const char *author,
			      const char *message,
			      const struct cfs_version_change *changes,
			      size_t nchanges,
			      const struct cfs_file_entry *files,
			      size_t nfiles);

/*
 * The record as the reference's snapshot writes the in-bundle files:
 * python json.dumps(indent=2, sort_keys=True) + "\n" (ASCII-escaped).
 * Heap string or NULL (CFS_ENOMEM).
 */
char *cfs_version_record_print(const cJSON *record);

/*
 * Writes the same bytes as cfs_version_record_print() of the record with
 * changes[] as its "changedPaths" and files[] as its "files" member, to
 * fd, without building either list as JSON in memory: record must have
 * both as empty arrays (as built with nchanges and nfiles 0); each entry
 * is printed on its own. *len_out receives the bytes written. Memory
 * stays constant whatever the number of files and changes.
 */
int cfs_version_record_write(size_t *len_out, int fd, const cJSON *record,
			     const struct cfs_version_change *changes,
			     size_t nchanges,
			     const struct cfs_file_entry *files, size_t nfiles);

#endif
