/*
 * Commits of a mount: the snapshot, the commit thread that coalesces
 * requests, the lock heartbeat and the mount's state file.
 *
 * Snapshot: with writers frozen (fs->freeze, write side), the staging tree
 * is mirrored into base_dir/snap as a hard-link farm (directories made,
 * single-link files and symlinks linked, multi-link files copied), and the
 * inode numbers linked are recorded. Writers resume at once; a writer that
 * wants to change a shared file first gives the staging name a private copy
 * (ops.c cow_node), so the snapshot stays exactly what it was while the
 * engine packs, encrypts and uploads it without any lock held.
 *
 * Coalescing: commits are numbered. A request made while commit R runs
 * waits for R+1 (its changes may have missed R's snapshot); all requests
 * made before R+1 starts share it. So at most one commit runs and one is
 * pending, however many fsyncs arrive.
 */
#include "fuse/fuse_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/context.h"
#include "core/error.h"
#include "core/json.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/util.h"

#define SNAP_MAX_DEPTH 256

/* ---- shared-inode set --------------------------------------------------- */

static int ino_cmp(const void *a, const void *b)
{
	ino_t x = *(const ino_t *)a, y = *(const ino_t *)b;
	return x < y ? -1 : x > y;
}

bool cfs_snap_shared(struct cfs_fs *fs, ino_t ino)
{
	bool found = false;
	if (!atomic_load(&fs->snap_active))
		return false;
	pthread_mutex_lock(&fs->snap_mu);
	if (atomic_load(&fs->snap_active) && fs->snap_count)
		found = bsearch(&ino, fs->snap_inos, fs->snap_count,
				sizeof(ino_t), ino_cmp) != NULL;
	pthread_mutex_unlock(&fs->snap_mu);
	return found;
}

static int snap_add(struct cfs_fs *fs, ino_t ino)
{
	if (fs->snap_count == fs->snap_cap) {
		size_t ncap = fs->snap_cap ? fs->snap_cap * 2 : 4096;
		ino_t *n = realloc(fs->snap_inos, ncap * sizeof(*n));
		if (!n)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		fs->snap_inos = n;
		fs->snap_cap = ncap;
	}
	fs->snap_inos[fs->snap_count++] = ino;
	return 0;
}

/* ---- the hard-link farm ------------------------------------------------- */

static int copy_regular(int sdir, const char *name, int ddir, mode_t mode)
{
	int in = -1, out = -1, rc = 0;
	off_t off = 0;
	struct stat st;

	in = openat(sdir, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (in < 0)
		return cfs_error_errno(errno, "snapshot: open %s", name);
	if (fstat(in, &st) != 0) {
		rc = cfs_error_errno(errno, "snapshot: stat %s", name);
		goto out;
	}
	out = openat(ddir, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
		     mode & 07777);
	if (out < 0) {
		rc = cfs_error_errno(errno, "snapshot: create %s", name);
		goto out;
	}
	while (off < st.st_size) {
		ssize_t k = copy_file_range(in, &off, out, NULL,
					    (size_t)(st.st_size - off), 0);
		if (k < 0) {
			rc = cfs_error_errno(errno, "snapshot: copy %s", name);
			goto out;
		}
		if (k == 0)
			break;
	}
	struct timespec ts[2] = {st.st_atim, st.st_mtim};
	(void)futimens(out, ts);
out:
	if (in >= 0)
		close(in);
	if (out >= 0)
		close(out);
	return rc;
}

/*
 * Files with several names: the first name met is copied into the
 * snapshot, every later name is hard-linked to that copy, so that the
 * commit stores them as one file and hard links as the staging tree has
 * them (the packer turns repeated inodes into tar hard links).
 */
struct farm_link {
	ino_t ino; /* staging inode; 0 = free slot */
	char *rel; /* path of the copy, relative to the snapshot root */
};

struct farm {
	int snapfd; /* snapshot root */
	char rel[PATH_MAX]; /* path of the directory being mirrored */
	size_t len;
	struct farm_link *links; /* open addressing, size power of two */
	size_t nlinks, cap;
};

static size_t link_slot(const struct farm *f, ino_t ino)
{
	size_t i = (size_t)((uint64_t)ino * 0x9E3779B97F4A7C15ull >> 17);
	for (i &= f->cap - 1; f->links[i].ino && f->links[i].ino != ino;
	     i = (i + 1) & (f->cap - 1))
		;
	return i;
}

static const char *link_find(const struct farm *f, ino_t ino)
{
	if (!f->cap)
		return NULL;
	size_t i = link_slot(f, ino);
	return f->links[i].ino ? f->links[i].rel : NULL;
}

static int link_add(struct farm *f, ino_t ino, const char *rel)
{
	if ((f->nlinks + 1) * 2 > f->cap) {
		size_t ocap = f->cap, ncap = ocap ? ocap * 2 : 64;
		struct farm_link *old = f->links;
		f->links = calloc(ncap, sizeof(*f->links));
		if (!f->links) {
			f->links = old;
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		}
		f->cap = ncap;
		for (size_t i = 0; i < ocap; i++)
			if (old[i].ino)
				f->links[link_slot(f, old[i].ino)] = old[i];
		free(old);
	}
	char *r = strdup(rel);
	if (!r)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	size_t i = link_slot(f, ino);
	f->links[i].ino = ino;
	f->links[i].rel = r;
	f->nlinks++;
	return 0;
}

static void farm_free(struct farm *f)
{
	for (size_t i = 0; i < f->cap; i++)
		free(f->links[i].rel);
	free(f->links);
	f->links = NULL;
	f->cap = f->nlinks = 0;
}

/* Appends "/name" (or "name" at the root) to f->rel; restore with f->len. */
static int farm_push(struct farm *f, const char *name)
{
	int k = snprintf(f->rel + f->len, sizeof(f->rel) - f->len, "%s%s",
			 f->len ? "/" : "", name);
	if (k < 0 || (size_t)k >= sizeof(f->rel) - f->len)
		return cfs_error_set(CFS_EUNSAFE, "snapshot: path too long");
	f->len += (size_t)k;
	return 0;
}

/* Mirrors directory sdir into ddir; caller holds the freeze. */
static int farm_dir(struct cfs_fs *fs, struct farm *f, int sdir, int ddir,
		    int depth, bool top)
{
	DIR *dp = NULL;
	struct dirent *de;
	int rc = 0, dfd;

	if (depth > SNAP_MAX_DEPTH)
		return cfs_error_set(CFS_EUNSAFE,
				     "snapshot: directory tree deeper than %d",
				     SNAP_MAX_DEPTH);
	dfd = openat(sdir, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return cfs_error_errno(errno, "snapshot: open directory");
	dp = fdopendir(dfd);
	if (!dp) {
		close(dfd);
		return cfs_error_errno(errno, "snapshot: open directory");
	}
	while ((errno = 0, de = readdir(dp))) {
		const char *nm = de->d_name;
		struct stat st;
		if (strcmp(nm, ".") == 0 || strcmp(nm, "..") == 0)
			continue;
		/* cache/ is local by design (never packed). */
		if (top && strcmp(nm, "cache") == 0)
			continue;
		if (fstatat(dirfd(dp), nm, &st, AT_SYMLINK_NOFOLLOW) != 0) {
			rc = cfs_error_errno(errno, "snapshot: stat %s", nm);
			break;
		}
		if (S_ISDIR(st.st_mode)) {
			int s2 = -1, d2 = -1;
			if (mkdirat(ddir, nm, 0700) != 0) {
				rc = cfs_error_errno(errno,
						     "snapshot: mkdir %s", nm);
				break;
			}
			s2 = openat(dirfd(dp), nm,
				    O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					    O_CLOEXEC);
			d2 = openat(ddir, nm,
				    O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					    O_CLOEXEC);
			if (s2 < 0 || d2 < 0)
				rc = cfs_error_errno(errno, "snapshot: open %s",
						     nm);
			else {
				size_t len = f->len;
				rc = farm_push(f, nm);
				if (rc == 0)
					rc = farm_dir(fs, f, s2, d2, depth + 1,
						      false);
				f->len = len;
				f->rel[len] = '\0';
			}
			if (rc == 0) {
				struct timespec ts[2] = {st.st_atim,
							 st.st_mtim};
				(void)fchmod(d2, st.st_mode & 07777);
				(void)futimens(d2, ts);
			}
			if (s2 >= 0)
				close(s2);
			if (d2 >= 0)
				close(d2);
			if (rc)
				break;
		} else if (S_ISREG(st.st_mode) && st.st_nlink > 1) {
			/* Hard-linked by the user: a copy (so that the
			 * staging links stay intact), linked as often. */
			const char *first = link_find(f, st.st_ino);
			size_t len = f->len;
			if (first) {
				if (linkat(f->snapfd, first, ddir, nm, 0) != 0)
					rc = cfs_error_errno(
						errno, "snapshot: link %s", nm);
			} else {
				rc = copy_regular(dirfd(dp), nm, ddir,
						  st.st_mode);
				if (rc == 0)
					rc = farm_push(f, nm);
				if (rc == 0)
					rc = link_add(f, st.st_ino, f->rel);
				f->len = len;
				f->rel[len] = '\0';
			}
			if (rc)
				break;
		} else if (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode)) {
			if (linkat(dirfd(dp), nm, ddir, nm, 0) != 0) {
				rc = cfs_error_errno(errno, "snapshot: link %s",
						     nm);
				break;
			}
			/* Symlinks are never changed in place. */
			if (S_ISREG(st.st_mode)) {
				rc = snap_add(fs, st.st_ino);
				if (rc)
					break;
			}
		}
		/* fifos, sockets and devices are not part of a context */
	}
	if (rc == 0 && errno)
		rc = cfs_error_errno(errno, "snapshot: read directory");
	closedir(dp);
	return rc;
}

/*
 * Removes the snapshot (if any), then clears the shared set. snap_seq is odd
 * while the snapshot's links change (here, and in snap_take from the start
 * of the farm until the set is published): ops.c stats again rather than
 * report a link count the snapshot's links may have skewed.
 */
static void snap_drop(struct cfs_fs *fs)
{
	if (!(atomic_load(&fs->snap_seq) & 1))
		atomic_fetch_add(&fs->snap_seq, 1);
	(void)cfs_rmtree_at(AT_FDCWD, fs->snap_path);
	pthread_mutex_lock(&fs->snap_mu);
	atomic_store(&fs->snap_active, false);
	fs->snap_count = 0;
	pthread_mutex_unlock(&fs->snap_mu);
	atomic_fetch_add(&fs->snap_seq, 1);
}

/*
 * Takes the snapshot. *changes_out receives the change counter the
 * snapshot contains; *snapfd_out an fd of the snapshot directory.
 */
static int snap_take(struct cfs_fs *fs, uint64_t *changes_out, int *snapfd_out)
{
	int rc, sfd = -1;
	int64_t t0, t1;

	snap_drop(fs);
	if (mkdir(fs->snap_path, 0700) != 0)
		return cfs_error_errno(errno, "create %s", fs->snap_path);
	sfd = open(fs->snap_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (sfd < 0)
		return cfs_error_errno(errno, "open %s", fs->snap_path);

	pthread_rwlock_wrlock(&fs->freeze);
	t0 = cfs_monotonic_ms();
	*changes_out = atomic_load(&fs->changes);
	pthread_mutex_lock(&fs->snap_mu);
	fs->snap_count = 0;
	atomic_fetch_add(&fs->snap_seq, 1); /* odd: links being made */
	struct farm *farm = calloc(1, sizeof(*farm));
	if (!farm) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
	} else {
		farm->snapfd = sfd;
		rc = farm_dir(fs, farm, fs->root_fd, sfd, 0, true);
		farm_free(farm);
		free(farm);
	}
	if (rc == 0 && fs->snap_count) {
		qsort(fs->snap_inos, fs->snap_count, sizeof(ino_t), ino_cmp);
		atomic_store(&fs->snap_active, true);
	}
	if (rc == 0)
		atomic_fetch_add(&fs->snap_seq, 1); /* even: set published */
	pthread_mutex_unlock(&fs->snap_mu);
	cfs_hints_snapshot(fs); /* no writer runs: the cycle ends here */
	t1 = cfs_monotonic_ms();
	pthread_rwlock_unlock(&fs->freeze);

	uint64_t us = (uint64_t)(t1 - t0) * 1000;
	atomic_store(&fs->last_freeze_us, us);
	uint64_t cur = atomic_load(&fs->max_stall_us);
	while (us > cur &&
	       !atomic_compare_exchange_weak(&fs->max_stall_us, &cur, us))
		;
	cfs_debug("%s: snapshot of %zu files in %lld ms", fs->mountpoint,
		  fs->snap_count, (long long)(t1 - t0));
	if (rc) {
		close(sfd);
		snap_drop(fs);
		return rc;
	}
	*snapfd_out = sfd;
	return 0;
}

/* ---- state file --------------------------------------------------------- */

int cfs_state_write(struct cfs_fs *fs, bool clean)
{
	cJSON *o = cJSON_CreateObject();
	char *txt = NULL;
	int rc;

	if (!o)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	cJSON_AddStringToObject(o, "id", fs->ref.id);
	cJSON_AddNumberToObject(o, "baseGeneration", (double)fs->generation);
	cJSON_AddStringToObject(o, "owner", fs->owner ? fs->owner : "");
	cJSON_AddStringToObject(o, "mountpoint", fs->mountpoint);
	cJSON_AddNumberToObject(o, "pid", (double)getpid());
	cJSON_AddBoolToObject(o, "clean", clean);
	txt = cJSON_Print(o);
	cJSON_Delete(o);
	if (!txt)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	rc = cfs_write_file_at(AT_FDCWD, fs->state_path, txt, strlen(txt), 0600,
			       true);
	free(txt);
	return rc;
}

/* ---- one commit --------------------------------------------------------- */

bool cfs_fs_dirty(struct cfs_fs *fs)
{
	pthread_mutex_lock(&fs->commit_mu);
	bool d = atomic_load(&fs->changes) != fs->landed_changes;
	pthread_mutex_unlock(&fs->commit_mu);
	return d;
}

static void set_error(struct cfs_fs *fs, const char *msg)
{
	pthread_mutex_lock(&fs->commit_mu);
	free(fs->last_error);
	fs->last_error = msg ? strdup(msg) : NULL;
	pthread_mutex_unlock(&fs->commit_mu);
}

int cfs_commit_now(struct cfs_fs *fs, const char *msg)
{
	struct cfs_commit_opts co;
	struct cfs_commit_result res;
	uint64_t snap_changes = 0;
	int sfd = -1, rc;

	memset(&res, 0, sizeof(res));
	if (fs->ro)
		return 0;
	if (atomic_load(&fs->lock_lost))
		return cfs_error_set(
			CFS_ELOCKED,
			"the lock on %s was lost; changes are kept "
			"in %s (see contextfs status)",
			fs->ref.id, fs->tree_path);
	if (!cfs_fs_dirty(fs))
		return 0;
	rc = snap_take(fs, &snap_changes, &sfd);
	if (rc)
		goto out;
	cfs_commit_opts_init(&co);
	co.owner = fs->owner;
	co.author = fs->author;
	co.message = msg ? msg : "contextfs mount commit";
	co.key_verified = fs->prev_index_fd >= 0;
	co.prev_index_fd = fs->prev_index_fd;
	co.want_index_fd = true;
	co.hash_hints = &fs->hints; /* unchanged files keep their hash */
	rc = cfs_context_commit(&res, fs->st, fs->keys, fs->ref.id, sfd, &co);
	close(sfd);
	snap_drop(fs);
	if (rc)
		goto out;
	if (fs->prev_index_fd >= 0)
		close(fs->prev_index_fd);
	/* -1 if it could not be kept: the next commit checks again */
	fs->prev_index_fd = res.has_index_fd ? res.index_fd : -1;
	res.has_index_fd = false;
	pthread_mutex_lock(&fs->commit_mu);
	fs->landed_changes = snap_changes;
	fs->generation = res.generation;
	fs->checkpoint_generation = res.checkpoint_generation;
	fs->commits_ok++;
	fs->last_commit_ms = cfs_now_ms();
	free(fs->last_error);
	fs->last_error = NULL;
	pthread_mutex_unlock(&fs->commit_mu);
	(void)cfs_state_write(fs, !cfs_fs_dirty(fs));
	cfs_info("%s: committed generation %llu of %s (%llu bytes)",
		 fs->mountpoint, (unsigned long long)res.generation, fs->ref.id,
		 (unsigned long long)res.size_bytes);
out:
	if (rc) {
		pthread_mutex_lock(&fs->commit_mu);
		fs->commits_failed++;
		pthread_mutex_unlock(&fs->commit_mu);
		if (rc == CFS_ELOCKED) {
			atomic_store(&fs->lock_lost, true);
			cfs_error_prefix(
				"lock lost, the mount is now read-only "
				"and changes stay in %s",
				fs->tree_path);
		}
		set_error(fs, cfs_error_last());
		cfs_error_log("%s: commit failed (changes stay staged): %s",
			      fs->mountpoint, cfs_error_last());
	}
	cfs_commit_result_clear(&res);
	return rc;
}

/*
 * One checkpoint (REFERENCE.md §8.4) of the staged tree: the same snapshot
 * as a commit, stored as the next checkpoint; the generation, the version
 * history and the dirty state do not change (the next fsync, commit or
 * unmount still lands a generation). Skipped when nothing changed since
 * the last landed commit or checkpoint.
 */
static int checkpoint_now(struct cfs_fs *fs)
{
	struct cfs_commit_opts co;
	struct cfs_commit_result res;
	uint64_t snap_changes = 0, cur;
	int sfd = -1, rc;
	bool need;

	memset(&res, 0, sizeof(res));
	if (fs->ro || atomic_load(&fs->lock_lost))
		return 0;
	pthread_mutex_lock(&fs->commit_mu);
	cur = atomic_load(&fs->changes);
	need = cur != fs->landed_changes && cur != fs->ckpt_changes;
	pthread_mutex_unlock(&fs->commit_mu);
	if (!need)
		return 0;
	rc = snap_take(fs, &snap_changes, &sfd);
	if (rc)
		goto out;
	cfs_commit_opts_init(&co);
	co.kind = CFS_COMMIT_CHECKPOINT;
	co.owner = fs->owner;
	co.reason = "periodic checkpoint (contextfs mount)";
	/* authenticated by our first commit, if there was one */
	co.key_verified = fs->prev_index_fd >= 0;
	rc = cfs_context_commit(&res, fs->st, fs->keys, fs->ref.id, sfd, &co);
	close(sfd);
	snap_drop(fs);
	if (rc)
		goto out;
	pthread_mutex_lock(&fs->commit_mu);
	fs->ckpt_changes = snap_changes;
	fs->checkpoint_generation = res.checkpoint_generation;
	fs->checkpoints_ok++;
	fs->last_checkpoint_ms = cfs_now_ms();
	free(fs->ckpt_error);
	fs->ckpt_error = NULL;
	pthread_mutex_unlock(&fs->commit_mu);
	cfs_info("%s: checkpoint %llu of %s (%llu bytes)", fs->mountpoint,
		 (unsigned long long)res.checkpoint_generation, fs->ref.id,
		 (unsigned long long)res.size_bytes);
out:
	if (rc) {
		if (rc == CFS_ELOCKED) {
			atomic_store(&fs->lock_lost, true);
			cfs_error_prefix(
				"lock lost, the mount is now read-only "
				"and changes stay in %s",
				fs->tree_path);
			set_error(fs, cfs_error_last());
		}
		pthread_mutex_lock(&fs->commit_mu);
		free(fs->ckpt_error);
		fs->ckpt_error = strdup(cfs_error_last());
		pthread_mutex_unlock(&fs->commit_mu);
		cfs_error_log("%s: checkpoint failed (changes stay staged): %s",
			      fs->mountpoint, cfs_error_last());
	}
	cfs_commit_result_clear(&res);
	return rc;
}

/* ---- commit thread ------------------------------------------------------ */

static void *commit_main(void *arg)
{
	struct cfs_fs *fs = arg;

	pthread_mutex_lock(&fs->commit_mu);
	for (;;) {
		while (fs->want <= fs->started && !fs->stop && !fs->ckpt_want)
			pthread_cond_wait(&fs->commit_cv, &fs->commit_mu);
		if (fs->want <= fs->started && fs->stop)
			break; /* stopping, nothing pending */
		if (fs->want <= fs->started) {
			/* idle: a periodic checkpoint */
			fs->ckpt_want = false;
			fs->running = true;
			pthread_mutex_unlock(&fs->commit_mu);
			(void)checkpoint_now(fs);
			pthread_mutex_lock(&fs->commit_mu);
			fs->running = false;
			continue;
		}
		uint64_t n = ++fs->started;
		char *msg = fs->pending_msg;
		fs->pending_msg = NULL;
		fs->running = true;
		pthread_mutex_unlock(&fs->commit_mu);

		int rc = cfs_commit_now(fs, msg);
		free(msg);

		pthread_mutex_lock(&fs->commit_mu);
		fs->running = false;
		fs->completed = n;
		fs->last_rc = rc;
		struct cfs_waiter *done = NULL, **pp = &fs->waiters;
		while (*pp) {
			struct cfs_waiter *w = *pp;
			if (w->req && w->ticket <= n) {
				*pp = w->next;
				w->next = done;
				done = w;
			} else {
				pp = &w->next;
			}
		}
		pthread_cond_broadcast(&fs->done_cv);
		pthread_mutex_unlock(&fs->commit_mu);
		while (done) {
			struct cfs_waiter *w = done;
			done = w->next;
			/* lost lock: the mount is read-only from now on */
			fuse_reply_err(w->req, rc == CFS_ELOCKED ? EROFS
					       : rc ? cfs_error_to_errno(rc)
						    : 0);
			free(w);
		}
		pthread_mutex_lock(&fs->commit_mu);
	}
	pthread_mutex_unlock(&fs->commit_mu);
	return NULL;
}

int cfs_commit_request(struct cfs_fs *fs, fuse_req_t req, const char *msg)
{
	struct cfs_waiter *w = NULL;
	int rc = 0;

	if (req) {
		w = calloc(1, sizeof(*w));
		if (!w) {
			fuse_reply_err(req, ENOMEM);
			return CFS_ENOMEM;
		}
	}
	pthread_mutex_lock(&fs->commit_mu);
	/* Nothing changed since the last landed commit and none is queued. */
	if (atomic_load(&fs->changes) == fs->landed_changes && !fs->running &&
	    fs->want <= fs->started && !fs->last_error) {
		pthread_mutex_unlock(&fs->commit_mu);
		if (req) {
			free(w);
			fuse_reply_err(req, 0);
		}
		return 0;
	}
	if (fs->stop) {
		pthread_mutex_unlock(&fs->commit_mu);
		free(w);
		if (req)
			fuse_reply_err(req, ESHUTDOWN);
		return cfs_error_set(CFS_ECANCELED, "the mount is stopping");
	}
	uint64_t ticket = fs->started + 1;
	if (fs->want < ticket)
		fs->want = ticket;
	if (msg) {
		free(fs->pending_msg);
		fs->pending_msg = strdup(msg);
	}
	pthread_cond_signal(&fs->commit_cv);
	if (w) {
		w->req = req;
		w->ticket = ticket;
		w->next = fs->waiters;
		fs->waiters = w;
		pthread_mutex_unlock(&fs->commit_mu);
		return 0;
	}
	while (fs->completed < ticket)
		pthread_cond_wait(&fs->done_cv, &fs->commit_mu);
	rc = fs->last_rc;
	if (rc)
		cfs_error_set(rc, "%s",
			      fs->last_error ? fs->last_error
					     : "commit failed");
	pthread_mutex_unlock(&fs->commit_mu);
	return rc;
}

/* Queues a commit without waiting for it (periodic commits). */
static void commit_kick(struct cfs_fs *fs, const char *msg)
{
	pthread_mutex_lock(&fs->commit_mu);
	if (!fs->stop && fs->want <= fs->started) {
		fs->want = fs->started + 1;
		if (msg && !fs->pending_msg)
			fs->pending_msg = strdup(msg);
		pthread_cond_signal(&fs->commit_cv);
	}
	pthread_mutex_unlock(&fs->commit_mu);
}

/* Asks the commit thread for a checkpoint when it is idle. */
static void checkpoint_kick(struct cfs_fs *fs)
{
	pthread_mutex_lock(&fs->commit_mu);
	if (!fs->stop) {
		fs->ckpt_want = true;
		pthread_cond_signal(&fs->commit_cv);
	}
	pthread_mutex_unlock(&fs->commit_mu);
}

int cfs_commit_start(struct cfs_fs *fs)
{
	pthread_mutex_init(&fs->commit_mu, NULL);
	pthread_mutex_init(&fs->snap_mu, NULL);
	cfs_hints_init(fs);
	pthread_cond_init(&fs->commit_cv, NULL);
	pthread_cond_init(&fs->done_cv, NULL);
	if (fs->ro)
		return 0;
	if (pthread_create(&fs->commit_thread, NULL, commit_main, fs) != 0)
		return cfs_error_set(CFS_ERROR, "cannot start commit thread");
	fs->commit_thread_started = true;
	return 0;
}

/* Lets a running and a pending commit finish, then stops the thread. */
void cfs_commit_stop(struct cfs_fs *fs)
{
	cfs_thread_stop(fs->commit_thread, &fs->commit_mu, &fs->commit_cv,
			&fs->stop, &fs->commit_thread_started);
}

/* ---- lock heartbeat ----------------------------------------------------- */

static void *hb_main(void *arg)
{
	struct cfs_fs *fs = arg;
	int64_t period = fs->ttl_ms / 3;
	int64_t last_commit = cfs_monotonic_ms();
	int64_t last_ckpt = last_commit, last_renew = last_commit;
	int64_t ci = (int64_t)fs->commit_interval_s * 1000;
	int64_t ki = (int64_t)fs->checkpoint_interval_s * 1000;

	if (period < 200)
		period = 200;
	pthread_mutex_lock(&fs->hb_mu);
	while (!fs->hb_stop) {
		struct timespec ts;
		int64_t now = cfs_monotonic_ms();
		/* sleep until the next renewal, commit or checkpoint is due */
		int64_t wait = last_renew + period - now;
		if (ci && last_commit + ci - now < wait)
			wait = last_commit + ci - now;
		if (ki && last_ckpt + ki - now < wait)
			wait = last_ckpt + ki - now;
		if (wait < 1)
			wait = 1;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += wait / 1000;
		ts.tv_nsec += (wait % 1000) * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&fs->hb_cv, &fs->hb_mu, &ts);
		if (fs->hb_stop)
			break;
		pthread_mutex_unlock(&fs->hb_mu);
		bool renew = cfs_monotonic_ms() - last_renew >= period;
		if (renew)
			last_renew = cfs_monotonic_ms();
		if (renew && !atomic_load(&fs->lock_lost)) {
			int rc = cfs_lock_renew(NULL, fs->st, fs->ref.id,
						fs->owner, fs->ttl_ms);
			if (rc == CFS_ELOCKED || rc == CFS_ENOTFOUND) {
				atomic_store(&fs->lock_lost, true);
				cfs_error_set(rc,
					      "lock on %s lost (%s): the mount "
					      "is read-only, changes are kept "
					      "in %s",
					      fs->ref.id, cfs_error_last(),
					      fs->tree_path);
				set_error(fs, cfs_error_last());
				cfs_error_log("%s: %s", fs->mountpoint,
					      cfs_error_last());
			} else if (rc) {
				cfs_warn("%s: lock renewal failed, will retry: "
					 "%s",
					 fs->mountpoint, cfs_error_last());
			}
		}
		if (ci && cfs_monotonic_ms() - last_commit >= ci) {
			last_commit = cfs_monotonic_ms();
			if (cfs_fs_dirty(fs) && !atomic_load(&fs->lock_lost))
				commit_kick(fs, "periodic commit");
		}
		if (ki && cfs_monotonic_ms() - last_ckpt >= ki) {
			last_ckpt = cfs_monotonic_ms();
			if (cfs_fs_dirty(fs) && !atomic_load(&fs->lock_lost))
				checkpoint_kick(fs);
		}
		pthread_mutex_lock(&fs->hb_mu);
	}
	pthread_mutex_unlock(&fs->hb_mu);
	return NULL;
}

int cfs_heartbeat_start(struct cfs_fs *fs)
{
	pthread_mutex_init(&fs->hb_mu, NULL);
	pthread_cond_init(&fs->hb_cv, NULL);
	if (fs->ro)
		return 0;
	if (pthread_create(&fs->hb_thread, NULL, hb_main, fs) != 0)
		return cfs_error_set(CFS_ERROR, "cannot start lock heartbeat");
	fs->hb_started = true;
	return 0;
}

void cfs_heartbeat_stop(struct cfs_fs *fs)
{
	if (!fs->hb_started)
		return;
	pthread_mutex_lock(&fs->hb_mu);
	fs->hb_stop = true;
	pthread_cond_signal(&fs->hb_cv);
	pthread_mutex_unlock(&fs->hb_mu);
	pthread_join(fs->hb_thread, NULL);
	fs->hb_started = false;
}

/* ---- status ------------------------------------------------------------- */

cJSON *cfs_fs_status_json(struct cfs_fs *fs)
{
	cJSON *o = cJSON_CreateObject();
	char ts[40];

	if (!o)
		return NULL;
	pthread_mutex_lock(&fs->commit_mu);
	bool dirty = atomic_load(&fs->changes) != fs->landed_changes;
	cJSON_AddBoolToObject(o, "ok", true);
	cJSON_AddStringToObject(o, "id", fs->ref.id);
	cJSON_AddStringToObject(o, "ref", fs->refstr);
	cJSON_AddStringToObject(o, "mountpoint", fs->mountpoint);
	cJSON_AddStringToObject(o, "staging", fs->tree_path);
	cJSON_AddNumberToObject(o, "pid", (double)getpid());
	cJSON_AddBoolToObject(o, "readOnly", fs->ro);
	/* what the kernel agreed to (fuse/initshim.h, -o writeback_cache) */
	cJSON_AddBoolToObject(o, "writebackCache", fs->writeback);
	cJSON_AddBoolToObject(o, "handleKillprivV2", fs->initshim.granted);
	cJSON_AddBoolToObject(o, "kernelPermissionChecks", fs->kernel_perms);
	cJSON_AddNumberToObject(o, "attrTimeout", fs->timeout);
	cJSON_AddBoolToObject(o, "flushOnClose", !fs->close_silent);
	cJSON_AddStringToObject(o, "fsync",
				fs->fsync_local ? "local" : "commit");
	cJSON_AddStringToObject(o, "state",
				atomic_load(&fs->lock_lost) ? "lock-lost"
				: fs->last_error	    ? "error"
				: dirty			    ? "dirty"
							    : "clean");
	cJSON_AddBoolToObject(o, "dirty", dirty);
	cJSON_AddNumberToObject(o, "generation", (double)fs->generation);
	cJSON_AddBoolToObject(o, "commitRunning", fs->running);
	cJSON_AddBoolToObject(o, "commitPending", fs->want > fs->started);
	cJSON_AddNumberToObject(o, "commits", (double)fs->commits_ok);
	cJSON_AddNumberToObject(o, "failedCommits", (double)fs->commits_failed);
	if (fs->last_commit_ms) {
		cfs_iso8601_ms(ts, sizeof(ts), fs->last_commit_ms);
		cJSON_AddStringToObject(o, "lastCommitAt", ts);
	} else {
		cJSON_AddNullToObject(o, "lastCommitAt");
	}
	if (fs->last_error)
		cJSON_AddStringToObject(o, "pendingError", fs->last_error);
	else
		cJSON_AddNullToObject(o, "pendingError");
	cJSON_AddNumberToObject(o, "checkpointGeneration",
				(double)fs->checkpoint_generation);
	cJSON_AddNumberToObject(o, "checkpoints", (double)fs->checkpoints_ok);
	if (fs->last_checkpoint_ms) {
		cfs_iso8601_ms(ts, sizeof(ts), fs->last_checkpoint_ms);
		cJSON_AddStringToObject(o, "lastCheckpointAt", ts);
	} else {
		cJSON_AddNullToObject(o, "lastCheckpointAt");
	}
	if (fs->ckpt_error)
		cJSON_AddStringToObject(o, "checkpointError", fs->ckpt_error);
	else
		cJSON_AddNullToObject(o, "checkpointError");
	cJSON_AddNumberToObject(o, "commitInterval",
				(double)fs->commit_interval_s);
	cJSON_AddNumberToObject(o, "checkpointInterval",
				(double)fs->checkpoint_interval_s);
	cJSON_AddBoolToObject(o, "lockLost", atomic_load(&fs->lock_lost));
	if (fs->owner)
		cJSON_AddStringToObject(o, "owner", fs->owner);
	cJSON_AddNumberToObject(o, "maxWriterStallMs",
				(double)atomic_load(&fs->max_stall_us) /
					1000.0);
	cJSON_AddNumberToObject(o, "lastFreezeMs",
				(double)atomic_load(&fs->last_freeze_us) /
					1000.0);
	cJSON_AddNumberToObject(o, "copyOnWrites",
				(double)atomic_load(&fs->cow_copies));
	cJSON_AddNumberToObject(o, "hashesReused",
				(double)atomic_load(&fs->hint_reused));
	pthread_mutex_unlock(&fs->commit_mu);
	return o;
}
