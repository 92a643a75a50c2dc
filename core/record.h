/*
 * A save's version record (REFERENCE.md §13.1) built in bounded memory,
 * whatever the number of files: the current file list goes out entry by
 * entry as the index walk lists it, the previous index is read entry by
 * entry from a file or a buffer, and the diff between them (changedPaths,
 * in the reference's order: every current path in byte order that is new
 * or whose sha256 differs, then every previous path in byte order that is
 * gone) merges both lists sorted by an external sort whose runs spill into
 * a private directory once they pass a fixed budget.
 *
 * The record's bytes are those of cfs_version_record_write() given the
 * lists cfs_index_from_json() and cfs_version_diff() compute in memory
 * (tests/unit/test_version.c and tests/fuzz/fuzz_index.c check both
 * against each other), except that a previous index has no size cap here
 * (the in-memory reader ignores one above CFS_INDEX_JSON_MAX) and one
 * whose single entry passes 1 MiB counts as malformed.
 */
#ifndef CFS_CORE_RECORD_H
#define CFS_CORE_RECORD_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "core/version.h"

/* Memory the sorts hold before they spill a run (each of three). */
#define CFS_RECORD_SORT_BUDGET (6u << 20)

struct cfs_record_build;

/*
 * A builder whose spill files go to dirfd (a private 0700 directory:
 * they hold paths and hashes); sort_budget 0 = CFS_RECORD_SORT_BUDGET;
 * keep_first: how many changes cfs_record_build_changes() keeps.
 */
int cfs_record_build_new(struct cfs_record_build **out, int dirfd,
			 size_t sort_budget, size_t keep_first);

/* The next file of the record's "files" list, in the order it lists them
 * (the index walk's); e->path is not kept. */
int cfs_record_build_file(struct cfs_record_build *b,
			  const struct cfs_file_entry *e);

/*
 * The previous index (an index.json or version record: its "files"), read
 * from fd's current offset to its end, or from buf. As the reference, a
 * document that does not parse is an empty list. At most once per build.
 */
int cfs_record_build_prev_fd(struct cfs_record_build *b, int fd);
int cfs_record_build_prev_buf(struct cfs_record_build *b, const char *buf,
			      size_t len);

/*
 * Writes the record to fd: record is the record without lists (both
 * members empty arrays, cfs_version_record_new() with no changes and no
 * files), filled with the diff and the files given. *len_out: bytes
 * written.
 */
int cfs_record_build_finish(size_t *len_out, struct cfs_record_build *b, int fd,
			    const cJSON *record);

/* After finish: the first keep_first changes (paths owned by b) and the
 * number of all of them. */
const struct cfs_version_change *
cfs_record_build_changes(const struct cfs_record_build *b, size_t *nfirst,
			 size_t *ntotal);

/* Files given so far. */
size_t cfs_record_build_nfiles(const struct cfs_record_build *b);

void cfs_record_build_free(struct cfs_record_build *b);

#endif
