/*
 * Hashes the daemon already knows, for the next commit's index.
 *
 * Every commit lists each file of the snapshot with its SHA-256
 * (.contextsdk/index.json), which read and hashed the whole tree every time
 * (1 GiB: ~1 s of a 4-5 s commit). The daemon sees every change: each
 * modification of a file (write, truncate, fallocate, open with O_TRUNC,
 * chmod/utimens, xattrs, link) passes cow_prepare, which records the
 * backing inode here (once per node per commit cycle). The snapshot, taken
 * with writers frozen, moves that set into "taken". The commit's index
 * build then reuses the hash of an inode it hashed in the previous build
 * when the inode is not in "taken" and its size and mtime (ns) are those
 * it had; everything else is hashed and learned. A build that fails
 * forgets everything (the next one hashes the whole tree).
 *
 * ctime cannot stand in for the change set: the snapshot's hard links
 * change every file's ctime. Files with several links are copied into the
 * snapshot (new inodes) and are always hashed: only inodes the snapshot
 * shares with the staging tree are looked up or learned.
 *
 * Locking: hint_changed under hint_mu (writers, under the freeze's read
 * side); hint_taken, hint_map and hint_next belong to the commit thread,
 * except that the snapshot (freeze's write side, no writer running) merges
 * hint_changed into hint_taken.
 */
#include "fuse/fuse_i.h"

#include <stdlib.h>
#include <string.h>

#include "core/util.h"

/* Beyond this many files the map stops learning (memory; ~80 B each). */
#define HINT_MAP_MAX (1u << 21)

/*
 * The maps are core/version.h's inode tables; the change sets are tables
 * of inode numbers alone (device 0, no hash).
 */
static bool set_add(struct cfs_inode_hashes *set, ino_t ino)
{
	struct stat st;

	memset(&st, 0, sizeof(st));
	st.st_ino = ino;
	return cfs_inode_hashes_put(set, &st, NULL);
}

static bool set_has(const struct cfs_inode_hashes *set, ino_t ino)
{
	return cfs_inode_hashes_has(set, 0, ino);
}

/* Empties m, keeping its bound. */
static void map_clear(struct cfs_inode_hashes *m)
{
	cfs_inode_hashes_free(m);
	m->max = HINT_MAP_MAX;
}

/* ---- the callbacks of the index build (commit thread) ------------------- */

static bool hint_lookup(void *payload, const struct stat *st, char out[65])
{
	struct cfs_fs *fs = payload;
	const uint8_t *sha;

	/*
	 * Only inodes the snapshot shares with the staging tree, whose every
	 * change cow_prepare records: a file with several links is a fresh
	 * copy in the snapshot, whose inode number ext4 may hand out again
	 * to the next snapshot's copy of a changed file.
	 */
	if (!cfs_snap_shared(fs, st->st_ino) ||
	    set_has(&fs->hint_taken, st->st_ino))
		return false;
	sha = cfs_inode_hashes_find(&fs->hint_map, st);
	if (!sha)
		return false;
	cfs_hex_encode(out, sha, 32);
	/* a reused hash is as good as a new one for the next build */
	(void)cfs_inode_hashes_put(&fs->hint_next, st, sha);
	atomic_fetch_add(&fs->hint_reused, 1);
	return true;
}

static void hint_learn(void *payload, const struct stat *st, const char *sha256)
{
	struct cfs_fs *fs = payload;
	uint8_t bin[32];
	size_t n = 0;

	if (cfs_snap_shared(fs, st->st_ino) &&
	    cfs_hex_decode(bin, sizeof(bin), sha256, &n) == 0 && n == 32)
		(void)cfs_inode_hashes_put(&fs->hint_next, st, bin);
}

static void hint_done(void *payload, bool ok)
{
	struct cfs_fs *fs = payload;

	map_clear(&fs->hint_map);
	if (ok) {
		fs->hint_map = fs->hint_next;
		memset(&fs->hint_next, 0, sizeof(fs->hint_next));
		fs->hint_next.max = HINT_MAP_MAX;
	} else {
		map_clear(&fs->hint_next);
	}
	map_clear(&fs->hint_taken);
}

/* ---- the daemon's side --------------------------------------------------- */

void cfs_hints_init(struct cfs_fs *fs)
{
	pthread_mutex_init(&fs->hint_mu, NULL);
	atomic_store(&fs->hint_gen, 1);
	fs->hint_changed.max = fs->hint_taken.max = HINT_MAP_MAX;
	fs->hint_map.max = fs->hint_next.max = HINT_MAP_MAX;
	fs->hints =
		(struct cfs_hash_hints){hint_lookup, hint_learn, hint_done, fs};
}

/* Frees the sets and maps (safe on a zeroed fs: no init needed). */
void cfs_hints_free(struct cfs_fs *fs)
{
	map_clear(&fs->hint_changed);
	map_clear(&fs->hint_taken);
	map_clear(&fs->hint_map);
	map_clear(&fs->hint_next);
}

/*
 * Records that n's file is about to change (caller holds the freeze's read
 * side). force: even if n was recorded in this cycle (its backing inode
 * was just replaced by a private copy).
 */
void cfs_hints_touch(struct cfs_fs *fs, struct cfs_node *n, bool force)
{
	uint64_t gen = atomic_load(&fs->hint_gen);
	ino_t ino;
	bool ok;

	if (n->is_dir || (!force && atomic_load(&n->hint_gen) == gen))
		return;
	pthread_mutex_lock(&fs->table_mu);
	ino = n->bino;
	pthread_mutex_unlock(&fs->table_mu);
	pthread_mutex_lock(&fs->hint_mu);
	ok = ino == 0 || set_add(&fs->hint_changed, ino);
	if (!ok) /* out of memory: the next build must not trust the map */
		fs->hint_lost = true;
	pthread_mutex_unlock(&fs->hint_mu);
	atomic_store(&n->hint_gen, gen);
}

/*
 * At the snapshot (freeze's write side held: no writer runs): what changed
 * since the last snapshot joins what the next build must hash; a new
 * cycle starts.
 */
void cfs_hints_snapshot(struct cfs_fs *fs)
{
	bool lost;

	pthread_mutex_lock(&fs->hint_mu);
	lost = fs->hint_lost;
	fs->hint_lost = false;
	if (!lost &&
	    !cfs_inode_hashes_union(&fs->hint_taken, &fs->hint_changed))
		lost = true;
	map_clear(&fs->hint_changed);
	pthread_mutex_unlock(&fs->hint_mu);
	if (lost)
		map_clear(&fs->hint_map);
	map_clear(&fs->hint_next);
	atomic_fetch_add(&fs->hint_gen, 1);
}
