/*
 * Local directory storage backend, byte-compatible with the reference's
 * FsStorage (REFERENCE.md §3.3) so contextfs and the reference can share
 * one store:
 *
 *   <root>/<key>                      the object (keys map 1:1 to files)
 *   <root>/<key>.etagid               its ETag: a UUID v4, no newline, 0600
 *   <root>/<key>.lock/heartbeat       per-key writer lock holding a token
 *   <root>/<key>.tmp-<pid>-<uuid>     temp files of writes in progress
 *
 * Writers (every put, and deletes of existing objects) hold the per-key
 * lock: mkdir(<key>.lock) is the atomic acquire, the heartbeat file's mtime
 * says the holder is alive (refreshed by a small thread every 3,333 ms), a
 * heartbeat older than 10,000 ms is stale and the lock is broken, and we
 * give up after 60,000 ms. Breaking renames the lock directory to a private
 * name first, so two breakers cannot both "break" and a third writer's
 * fresh lock is not removed by the slower breaker.
 *
 * Differences from the reference, all compatible with it:
 *  - Durable: the temp body and the sidecar are fsynced before their
 *    renames and the directory after them; new parent directories too.
 *  - The sidecar is replaced atomically (temp file + rename), and it is
 *    replaced AFTER the body. Under the reference's order (sidecar first)
 *    an unlocked reader can pair the new ETag with the old body and win a
 *    compare-and-swap on stale data, losing the acknowledged write; with
 *    body first, the worst an unlocked (reference) reader sees is the old
 *    ETag with the new body, and its compare-and-swap then fails safely.
 *  - Reads return a body and an ETag of the same revision (the reference
 *    does not): read the sidecar, check no writer holds the key lock, open
 *    the body, check the lock again, re-read the sidecar; accept only if
 *    both sidecar reads agree and the lock was absent both times (or its
 *    holder is dead). Writers change the pair only while holding the lock,
 *    so a mismatched pair can only come from a read that straddles a
 *    locked window, which one of the checks then observes; see
 *    open_consistent().
 *  - A lock directory without a heartbeat file ages by the directory's
 *    mtime (the holder may be between mkdir and writing the heartbeat)
 *    instead of counting as stale at once; release removes the lock only
 *    if the heartbeat still holds our token; a put whose lock was broken
 *    under it fails with CFS_ELOCKED instead of publishing.
 *  - Keys with empty, "." or ".." segments, absolute keys and overlong keys
 *    are rejected (CFS_EUNSAFE) instead of being normalised, and so are
 *    keys whose last segment would alias a sidecar, lock or temp file
 *    ("x.etagid", "x.lock", "x.tmp-1"). (A C string cannot hold a NUL.)
 */
#include "storage/storage.h"
#include "core/error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <pwd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define FS_KEY_MAX 1024
#define FS_SIDECAR_MAX 4096
#define FS_LIST_DEPTH_MAX 64
#define FS_COPY_BUF (256u << 10)
#define FS_COPY_CHUNK (8u << 20) /* per copy_file_range call: progress */
#define FS_READ_RETRY_MS 10

#define FS_DEFAULT_STALE_MS 10000
#define FS_DEFAULT_TIMEOUT_MS 60000
#define FS_DEFAULT_RETRY_MS 50
#define FS_DEFAULT_REFRESH_MS 3333

struct fs_store {
	struct cfs_store base; /* first member */
	char *root; /* absolute, no trailing slash */
	char *staging; /* <root>/.contextfs-staging once made, else NULL */
	bool staging_tried;
	unsigned stale_ms, timeout_ms, retry_ms, refresh_ms;
};

/* A held per-key lock and its heartbeat thread. */
struct fs_lock {
	char *dir; /* <path>.lock */
	char *hb; /* <path>.lock/heartbeat */
	char token[37];
	unsigned refresh_ms;
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool stop; /* protected by mu */
	atomic_bool lost; /* set by the heartbeat thread */
};

static struct fs_store *fs_of(struct cfs_store *st)
{
	return (struct fs_store *)st;
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int64_t mtime_ms_of(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000 +
	       st->st_mtim.tv_nsec / 1000000;
}

/* ---- keys and paths ---------------------------------------------------- */

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/*
 * Validates a key (or, with allow_dir, a list prefix that may be empty or
 * end in '/'). Rejects what could leave the root or alias another key.
 */
static int check_key(const char *key, bool allow_dir)
{
	const char *seg = key, *p;
	size_t n = strlen(key);

	if (n > FS_KEY_MAX)
		return cfs_error_set(CFS_EUNSAFE,
				     "storage key is longer than %d bytes: "
				     "%.64s...",
				     FS_KEY_MAX, key);
	if (n == 0) {
		if (allow_dir)
			return 0;
		return cfs_error_set(CFS_EUNSAFE, "empty storage key");
	}
	if (key[0] == '/')
		goto escapes;
	for (p = key;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		if (p == seg) {
			/* empty segment: only a prefix's trailing '/' */
			if (!(allow_dir && *p == '\0'))
				return cfs_error_set(CFS_EUNSAFE,
						     "storage key has an empty "
						     "path segment: %s",
						     key);
		} else if (p - seg == 2 && seg[0] == '.' && seg[1] == '.') {
			goto escapes;
		} else if (p - seg == 1 && seg[0] == '.') {
			return cfs_error_set(CFS_EUNSAFE,
					     "storage key has a \".\" path "
					     "segment: %s",
					     key);
		}
		if (*p == '\0')
			break;
		seg = p + 1;
	}
	/* seg is the last segment: it must not alias our bookkeeping. */
	if (!allow_dir && (ends_with(seg, ".etagid") ||
			   ends_with(seg, ".lock") || strstr(seg, ".tmp-")))
		return cfs_error_set(CFS_EUNSAFE,
				     "storage key ends like the store's own "
				     "files (.etagid, .lock, .tmp-): %s",
				     key);
	return 0;
escapes:
	return cfs_error_set(CFS_EUNSAFE,
			     "storage key escapes the storage directory: %s",
			     key);
}

static char *key_path(struct fs_store *fs, const char *key)
{
	return cfs_asprintf("%s/%s", fs->root, key);
}

/* Directory part of path (heap). */
static char *dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');

	if (!slash || slash == path)
		return cfs_strdup("/");
	return cfs_strndup(path, (size_t)(slash - path));
}

static int fsync_path(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	int rc = 0;

	if (fd < 0)
		return cfs_error_errno(errno, "open %s", dir);
	if (fsync(fd) < 0 && errno != EINVAL)
		rc = cfs_error_errno(errno, "fsync %s", dir);
	close(fd);
	return rc;
}

/* mkdir -p dir (0700); fsyncs the parent of every directory it creates. */
static int mkdir_durable(const char *dir)
{
	struct stat st;
	char *parent = NULL;
	int rc = 0;

	if (stat(dir, &st) == 0) {
		if (S_ISDIR(st.st_mode))
			return 0;
		return cfs_error_set(CFS_EIO,
				     "%s exists and is not a "
				     "directory",
				     dir);
	}
	if (errno != ENOENT)
		return cfs_error_errno(errno, "stat %s", dir);
	parent = dir_of(dir);
	if (!parent)
		return CFS_ENOMEM;
	if (strcmp(parent, dir) != 0) {
		rc = mkdir_durable(parent);
		if (rc)
			goto out;
	}
	if (mkdir(dir, 0700) < 0) {
		if (errno != EEXIST)
			rc = cfs_error_errno(errno, "create directory %s", dir);
		goto out;
	}
	rc = fsync_path(parent);
out:
	free(parent);
	return rc;
}

/*
 * Reads the .etagid sidecar of path into etag (trimmed). *have = false when
 * it is missing or empty (the ETag is then the body's SHA-256).
 */
static int read_sidecar(const char *path, char etag[CFS_ETAG_MAX], bool *have)
{
	char buf[FS_SIDECAR_MAX + 1];
	char *side = NULL, *s, *e;
	size_t len = 0;
	int fd = -1, rc = 0;

	*have = false;
	etag[0] = '\0';
	side = cfs_asprintf("%s.etagid", path);
	if (!side)
		return CFS_ENOMEM;
	fd = open(side, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT && errno != ENOTDIR)
			rc = cfs_error_errno(errno, "open %s", side);
		goto out;
	}
	rc = cfs_read_all(fd, buf, sizeof(buf), &len);
	if (rc) {
		cfs_error_prefix("%s", side);
		goto out;
	}
	buf[len] = '\0';
	for (s = buf; *s == ' ' || *s == '\t' || *s == '\n' || *s == '\r';)
		s++;
	e = buf + len;
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' ||
			 e[-1] == '\r'))
		e--;
	if ((size_t)(e - s) >= CFS_ETAG_MAX) {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "ETag sidecar %s is longer than %d bytes",
				   side, CFS_ETAG_MAX - 1);
		goto out;
	}
	if (memchr(s, '\0', (size_t)(e - s))) {
		rc = cfs_error_set(CFS_ECORRUPT, "ETag sidecar %s holds a NUL",
				   side);
		goto out;
	}
	memcpy(etag, s, (size_t)(e - s));
	etag[e - s] = '\0';
	*have = e > s;
out:
	if (fd >= 0)
		close(fd);
	free(side);
	return rc;
}

/* ---- per-key lock ------------------------------------------------------ */

enum lock_state { LOCK_ABSENT, LOCK_FRESH, LOCK_STALE };

/*
 * Looks at lockdir: absent, held (heartbeat younger than stale_ms) or stale.
 * A lock without a heartbeat file ages by the directory's own mtime. ino_out
 * (may be NULL) receives the lock directory's inode.
 */
static int lock_state(enum lock_state *state, ino_t *ino_out,
		      const char *lockdir, const char *hb, unsigned stale_ms)
{
	struct stat d, h;
	int64_t age;

	*state = LOCK_ABSENT;
	if (lstat(lockdir, &d) < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return 0;
		return cfs_error_errno(errno, "stat %s", lockdir);
	}
	if (ino_out)
		*ino_out = d.st_ino;
	if (lstat(hb, &h) == 0)
		d = h;
	else if (errno != ENOENT)
		return cfs_error_errno(errno, "stat %s", hb);
	age = cfs_now_ms() - mtime_ms_of(&d);
	*state = age > (int64_t)stale_ms ? LOCK_STALE : LOCK_FRESH;
	return 0;
}

/* True when the heartbeat file holds token. */
static bool heartbeat_is(const char *hb, const char *token)
{
	char buf[64];
	ssize_t n;
	int fd = open(hb, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);

	if (fd < 0)
		return false;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return false;
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	return strcmp(buf, token) == 0;
}

static void *heartbeat_main(void *arg)
{
	struct fs_lock *lk = arg;
	struct timespec ts;

	pthread_mutex_lock(&lk->mu);
	while (!lk->stop) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += lk->refresh_ms / 1000;
		ts.tv_nsec += (long)(lk->refresh_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&lk->cv, &lk->mu, &ts);
		if (lk->stop)
			break;
		/* Bump the mtime only while the lock is still ours. */
		if (!heartbeat_is(lk->hb, lk->token) ||
		    utimensat(AT_FDCWD, lk->hb, NULL, AT_SYMLINK_NOFOLLOW) < 0)
			atomic_store(&lk->lost, true);
	}
	pthread_mutex_unlock(&lk->mu);
	return NULL;
}

/*
 * Breaks a stale lock judged on inode ino: renames it to a private name
 * (ending in ".lock" so listings skip it even if we die here) and removes
 * that. If the rename caught a different, fresh lock, puts it back.
 */
static int lock_break(const char *path, const char *lockdir, ino_t ino)
{
	char uuid[37];
	char *grave = NULL;
	struct stat st;
	int rc = 0;

	cfs_uuid4(uuid);
	grave = cfs_asprintf("%s.tmp-%d-%s.lock", path, (int)getpid(), uuid);
	if (!grave)
		return CFS_ENOMEM;
	if (rename(lockdir, grave) < 0) {
		if (errno != ENOENT)
			rc = cfs_error_errno(errno, "break stale lock %s",
					     lockdir);
		goto out;
	}
	if (lstat(grave, &st) == 0 && st.st_ino != ino) {
		/* A new holder took the key since we judged it: give back. */
		if (renameat2(AT_FDCWD, grave, AT_FDCWD, lockdir,
			      RENAME_NOREPLACE) == 0)
			goto out;
	}
	rc = cfs_rmtree_at(AT_FDCWD, grave);
out:
	free(grave);
	return rc;
}

static void lock_free(struct fs_lock *lk)
{
	if (!lk)
		return;
	if (lk->thread_started) {
		pthread_mutex_lock(&lk->mu);
		lk->stop = true;
		pthread_cond_signal(&lk->cv);
		pthread_mutex_unlock(&lk->mu);
		pthread_join(lk->thread, NULL);
	}
	pthread_cond_destroy(&lk->cv);
	pthread_mutex_destroy(&lk->mu);
	free(lk->dir);
	free(lk->hb);
	free(lk);
}

/* Stops the heartbeat and removes the lock if it is still ours. */
static void lock_release(struct fs_lock *lk)
{
	if (!lk)
		return;
	cfs_thread_stop(lk->thread, &lk->mu, &lk->cv, &lk->stop,
			&lk->thread_started);
	if (heartbeat_is(lk->hb, lk->token))
		cfs_rmtree_at(AT_FDCWD, lk->dir);
	lock_free(lk);
}

static int lock_write_heartbeat(struct fs_lock *lk)
{
	int fd, rc;

	fd = open(lk->hb, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0)
		return cfs_error_errno(errno, "create %s", lk->hb);
	rc = cfs_write_all(fd, lk->token, strlen(lk->token));
	if (close(fd) < 0 && !rc)
		rc = cfs_error_errno(errno, "close %s", lk->hb);
	if (rc)
		cfs_error_prefix("write %s", lk->hb);
	return rc;
}

static int lock_acquire(struct fs_lock **out, struct fs_store *fs,
			const char *path)
{
	struct fs_lock *lk;
	int64_t deadline = cfs_monotonic_ms() + fs->timeout_ms;
	pthread_condattr_t ca;
	int rc = 0;

	*out = NULL;
	lk = cfs_calloc(1, sizeof(*lk));
	if (!lk)
		return CFS_ENOMEM;
	pthread_mutex_init(&lk->mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&lk->cv, &ca);
	pthread_condattr_destroy(&ca);
	atomic_init(&lk->lost, false);
	lk->refresh_ms = fs->refresh_ms;
	cfs_uuid4(lk->token);
	lk->dir = cfs_asprintf("%s.lock", path);
	lk->hb = cfs_asprintf("%s.lock/heartbeat", path);
	if (!lk->dir || !lk->hb) {
		rc = CFS_ENOMEM;
		goto out;
	}
	for (;;) {
		enum lock_state state;
		ino_t ino = 0;

		if (mkdir(lk->dir, 0700) == 0) {
			rc = lock_write_heartbeat(lk);
			if (rc) {
				cfs_rmtree_at(AT_FDCWD, lk->dir);
				goto out;
			}
			break;
		}
		if (errno != EEXIST) {
			rc = cfs_error_errno(errno, "create lock %s", lk->dir);
			goto out;
		}
		rc = lock_state(&state, &ino, lk->dir, lk->hb, fs->stale_ms);
		if (rc)
			goto out;
		if (state == LOCK_STALE) {
			rc = lock_break(path, lk->dir, ino);
			if (rc)
				goto out;
			continue;
		}
		if (state == LOCK_ABSENT)
			continue;
		if (cfs_monotonic_ms() >= deadline) {
			rc = cfs_error_set(CFS_ETIMEDOUT,
					   "timed out waiting for storage key "
					   "lock: %s",
					   lk->dir);
			goto out;
		}
		sleep_ms(fs->retry_ms);
	}
	if (pthread_create(&lk->thread, NULL, heartbeat_main, lk) != 0) {
		/* Without a heartbeat a long put could be broken as stale. */
		rc = cfs_error_set(CFS_ENOMEM, "cannot start lock heartbeat");
		if (heartbeat_is(lk->hb, lk->token))
			cfs_rmtree_at(AT_FDCWD, lk->dir);
		goto out;
	}
	lk->thread_started = true;
	*out = lk;
	lk = NULL;
out:
	lock_free(lk);
	return rc;
}

/* Fails if our lock was broken while we held it (checked before publish). */
static int lock_check(struct fs_lock *lk, const char *key)
{
	if (!atomic_load(&lk->lost) && heartbeat_is(lk->hb, lk->token))
		return 0;
	return cfs_error_set(CFS_ELOCKED,
			     "lost storage key lock %s while writing %s "
			     "(another writer broke it as stale); nothing "
			     "was published",
			     lk->dir, key);
}

/* ---- copying ----------------------------------------------------------- */

static void progress(struct cfs_store *st, uint64_t done, uint64_t total)
{
	if (st->progress)
		st->progress(done, total, st->progress_payload);
}

/*
 * Copies all of in (from offset 0 when seekable, else from its current
 * position) to out at out's current offset, without holding the data in
 * memory: copy_file_range, then sendfile, then a 256 KiB buffer loop.
 * in_name/out_name name the two ends in error messages.
 */
static int copy_fd(struct cfs_store *st, int out, const char *out_name, int in,
		   const char *in_name, uint64_t total)
{
	enum { USE_CFR, USE_SENDFILE, USE_LOOP } how = USE_CFR;
	uint64_t done = 0;
	off_t off = 0;
	bool seekable = lseek(in, 0, SEEK_CUR) >= 0;
	char *buf = NULL;
	int rc = 0;

	if (!seekable)
		how = USE_LOOP;
	for (;;) {
		ssize_t n;

		if (how == USE_CFR) {
			n = copy_file_range(in, &off, out, NULL, FS_COPY_CHUNK,
					    0);
			if (n < 0 && errno != EINTR && errno != ENOSPC &&
			    errno != EDQUOT && errno != EIO) {
				if (done)
					goto write_err;
				how = USE_SENDFILE;
				continue;
			}
		} else if (how == USE_SENDFILE) {
			n = sendfile(out, in, &off, FS_COPY_CHUNK);
			if (n < 0 && (errno == EINVAL || errno == ENOSYS) &&
			    !done) {
				how = USE_LOOP;
				continue;
			}
		} else {
			ssize_t w;

			if (!buf) {
				buf = cfs_malloc(FS_COPY_BUF);
				if (!buf)
					return CFS_ENOMEM;
			}
			n = seekable ? pread(in, buf, FS_COPY_BUF, off)
				     : read(in, buf, FS_COPY_BUF);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				rc = cfs_error_errno(errno, "read %s", in_name);
				goto out;
			}
			if (n > 0) {
				w = n;
				rc = cfs_write_all(out, buf, (size_t)w);
				if (rc) {
					cfs_error_prefix("%s", out_name);
					goto out;
				}
				off += n;
			}
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto write_err;
		if (n == 0)
			break;
		done += (uint64_t)n;
		progress(st, done, total);
	}
	goto out;
write_err:
	/* copy_file_range/sendfile do not say which end failed; ENOSPC,
	 * EDQUOT, EROFS and EIO are the output's, the rest the input's. */
	if (errno == ENOSPC || errno == EDQUOT || errno == EROFS ||
	    errno == EIO || errno == EFBIG)
		rc = cfs_error_errno(errno, "write %s", out_name);
	else
		rc = cfs_error_errno(errno, "copy %s to %s", in_name, out_name);
out:
	free(buf);
	return rc;
}

/* ---- get / head -------------------------------------------------------- */

/*
 * Opens the object's body together with the ETag of the same revision.
 *
 * Writers replace the body and the sidecar only while holding the key lock
 * (ours body first, the reference's sidecar first). Read sidecar s1 (t1),
 * see no lock (tL1), open the body (t2), see no lock (tL2), read sidecar s2
 * (t3), and require s1 == s2. If the body is older than s1, then t1 and t2
 * both fell inside one writer's locked window (between its sidecar and body
 * renames), so tL1 would have seen the lock; if the body is newer than s1,
 * either that writer finished before t3 (s2 != s1) or t2 and t3 both fell
 * inside its locked window (between its body and sidecar renames), so tL2
 * would have seen the lock. A lock whose holder is dead (stale) is
 * tolerated: its state is final until the next writer breaks it.
 */
static int open_consistent(int *fd_out, char etag[CFS_ETAG_MAX],
			   bool *have_etag, struct stat *st,
			   struct fs_store *fs, const char *key,
			   const char *path)
{
	int64_t deadline = cfs_monotonic_ms() + fs->timeout_ms;
	char *lockdir = NULL, *hb = NULL;
	char s2[CFS_ETAG_MAX];
	int fd = -1, rc;

	*fd_out = -1;
	lockdir = cfs_asprintf("%s.lock", path);
	hb = cfs_asprintf("%s.lock/heartbeat", path);
	if (!lockdir || !hb) {
		rc = CFS_ENOMEM;
		goto out;
	}
	for (;;) {
		enum lock_state l1, l2 = LOCK_ABSENT;
		bool have2;

		rc = read_sidecar(path, etag, have_etag);
		if (rc)
			goto out;
		rc = lock_state(&l1, NULL, lockdir, hb, fs->stale_ms);
		if (rc)
			goto out;
		fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) {
			if (errno == ENOENT || errno == ENOTDIR)
				rc = cfs_error_set(CFS_ENOTFOUND,
						   "object not found: %s", key);
			else if (errno == ELOOP)
				rc = cfs_error_set(CFS_EUNSAFE,
						   "storage object is a "
						   "symlink: %s",
						   path);
			else
				rc = cfs_error_errno(errno, "open %s", path);
			goto out;
		}
		if (fstat(fd, st) < 0) {
			rc = cfs_error_errno(errno, "stat %s", path);
			goto out;
		}
		if (!S_ISREG(st->st_mode)) {
			rc = cfs_error_set(CFS_ENOTFOUND,
					   "object not found: %s (%s is not a "
					   "regular file)",
					   key, path);
			goto out;
		}
		if (l1 != LOCK_FRESH) {
			rc = lock_state(&l2, NULL, lockdir, hb, fs->stale_ms);
			if (rc)
				goto out;
		}
		if (l1 != LOCK_FRESH && l2 != LOCK_FRESH) {
			rc = read_sidecar(path, s2, &have2);
			if (rc)
				goto out;
			if (have2 == *have_etag && strcmp(s2, etag) == 0)
				break;
			/* A writer finished in between: read again. */
		}
		close(fd);
		fd = -1;
		if (cfs_monotonic_ms() >= deadline) {
			rc = cfs_error_set(CFS_ETIMEDOUT,
					   "timed out waiting for a consistent "
					   "read of %s (a writer holds %s)",
					   key, lockdir);
			goto out;
		}
		if (l1 == LOCK_FRESH || l2 == LOCK_FRESH)
			sleep_ms(FS_READ_RETRY_MS);
	}
	*fd_out = fd;
	fd = -1;
out:
	if (fd >= 0)
		close(fd);
	free(lockdir);
	free(hb);
	return rc;
}

static int fill_info(struct cfs_objinfo *info, int fd, const struct stat *st,
		     const char *etag, bool have_etag, const char *path)
{
	char sha[65];
	int rc;

	memset(info, 0, sizeof(*info));
	info->size = (uint64_t)st->st_size;
	info->mtime_ms = mtime_ms_of(st);
	if (have_etag) {
		snprintf(info->etag, sizeof(info->etag), "%s", etag);
		return 0;
	}
	/* Written by another tool: the ETag is the body's SHA-256. */
	rc = cfs_sha256_fd(sha, fd);
	if (rc) {
		cfs_error_prefix("%s", path);
		return rc;
	}
	snprintf(info->etag, sizeof(info->etag), "%s", sha);
	return 0;
}

static int read_to_buf(struct cfs_store *st, struct cfs_buf *buf, size_t max,
		       int fd, uint64_t size, const char *key, const char *path)
{
	uint64_t done = 0;
	int rc;

	if (size > max)
		goto too_big;
	rc = cfs_buf_grow(buf, (size_t)size);
	if (rc)
		return rc;
	for (;;) {
		ssize_t n;

		rc = cfs_buf_grow(buf, FS_COPY_BUF);
		if (rc)
			return rc;
		n = pread(fd, buf->ptr + buf->len, FS_COPY_BUF, (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return cfs_error_errno(errno, "read %s", path);
		if (n == 0)
			break;
		buf->len += (size_t)n;
		buf->ptr[buf->len] = '\0';
		done += (uint64_t)n;
		if (done > max)
			goto too_big;
		progress(st, done, size);
	}
	buf->ptr[buf->len] = '\0';
	return 0;
too_big:
	return cfs_error_set(CFS_ECORRUPT, "object %s is larger than %zu bytes",
			     key, max);
}

/*
 * Validates key and opens its body consistently with its ETag
 * (open_consistent); *path_out (heap) names the body.
 */
static int open_object(int *body_out, char **path_out, char etag[CFS_ETAG_MAX],
		       bool *have_etag, struct stat *sb, struct fs_store *fs,
		       const char *key)
{
	int rc;

	*body_out = -1;
	*path_out = NULL;
	rc = check_key(key, false);
	if (rc)
		return rc;
	*path_out = key_path(fs, key);
	if (!*path_out)
		return CFS_ENOMEM;
	return open_consistent(body_out, etag, have_etag, sb, fs, key,
			       *path_out);
}

static int fs_get(struct cfs_store *st, const char *key, int fd,
		  struct cfs_buf *buf, size_t max, struct cfs_objinfo *info)
{
	struct fs_store *fs = fs_of(st);
	struct cfs_objinfo got;
	char etag[CFS_ETAG_MAX];
	bool have_etag = false;
	char *path = NULL;
	struct stat sb;
	int body = -1, rc;

	rc = open_object(&body, &path, etag, &have_etag, &sb, fs, key);
	if (rc)
		goto out;
	if (fd >= 0) {
		char out_name[32];

		snprintf(out_name, sizeof(out_name), "fd %d", fd);
		rc = copy_fd(st, fd, out_name, body, path,
			     (uint64_t)sb.st_size);
	} else {
		rc = read_to_buf(st, buf, max, body, (uint64_t)sb.st_size, key,
				 path);
	}
	if (rc)
		goto out;
	if (info) {
		rc = fill_info(&got, body, &sb, etag, have_etag, path);
		if (!rc)
			*info = got;
	}
out:
	if (body >= 0)
		close(body);
	free(path);
	return rc;
}

static int fs_head(struct cfs_store *st, const char *key,
		   struct cfs_objinfo *info)
{
	struct fs_store *fs = fs_of(st);
	char etag[CFS_ETAG_MAX];
	bool have_etag = false;
	char *path = NULL;
	struct stat sb;
	int body = -1, rc;

	rc = open_object(&body, &path, etag, &have_etag, &sb, fs, key);
	if (!rc)
		rc = fill_info(info, body, &sb, etag, have_etag, path);
	if (body >= 0)
		close(body);
	free(path);
	return rc;
}

/* ---- put --------------------------------------------------------------- */

/*
 * Validates key and allocates what a writer of it touches: the body path,
 * its ETag sidecar and their directory (heap; the caller frees them, also
 * on error).
 */
static int object_paths(char **path, char **side, char **dir,
			struct fs_store *fs, const char *key)
{
	int rc;

	*path = *side = *dir = NULL;
	rc = check_key(key, false);
	if (rc)
		return rc;
	*path = key_path(fs, key);
	*side = cfs_asprintf("%s.etagid", *path ? *path : "");
	*dir = *path ? dir_of(*path) : NULL;
	if (!*path || !*side || !*dir)
		return CFS_ENOMEM;
	return 0;
}

/* Checks the put's conditions against the current object (under lock). */
static int check_cond(struct fs_store *fs, const char *key, const char *path,
		      const struct cfs_cond *cond)
{
	char etag[CFS_ETAG_MAX], sha[65];
	bool have = false;
	struct stat sb;
	int fd, rc;

	if (!cond || (!cond->if_match && !cond->if_none_match))
		return 0;
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0 && errno != ENOENT)
		return cfs_error_errno(errno, "open %s", path);
	if (fd >= 0 && (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode))) {
		close(fd);
		return cfs_error_set(CFS_EIO, "%s is not a regular file", path);
	}
	if (cond->if_none_match && fd >= 0) {
		close(fd);
		return cfs_error_set(CFS_EEXISTS, "object already exists: %s",
				     key);
	}
	if (!cond->if_match) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	if (fd < 0)
		goto conflict;
	rc = read_sidecar(path, etag, &have);
	if (!rc && !have) {
		rc = cfs_sha256_fd(sha, fd);
		snprintf(etag, sizeof(etag), "%s", sha);
	}
	close(fd);
	if (rc)
		return rc;
	if (strcmp(etag, cond->if_match) == 0)
		return 0;
conflict:
	return cfs_error_set(CFS_ECONFLICT,
			     "precondition failed for object: %s", key);
}

/* Writes the body to a new temp file beside path and fsyncs it. */
static int write_temp_body(char **tmp_out, struct cfs_store *st,
			   const char *path, const struct cfs_source *src)
{
	char uuid[37];
	char *tmp;
	struct stat sb;
	int fd, rc = 0;

	cfs_uuid4(uuid);
	*tmp_out = tmp =
		cfs_asprintf("%s.tmp-%d-%s", path, (int)getpid(), uuid);
	if (!tmp)
		return CFS_ENOMEM;
	if (src->fd >= 0 && src->may_link && fstat(src->fd, &sb) == 0 &&
	    S_ISREG(sb.st_mode) && sb.st_nlink == 1) {
		/*
		 * A private temporary on our filesystem: link it into place
		 * instead of copying it (a bundle is written once, not twice).
		 */
		char proc[64];

		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", src->fd);
		if (linkat(AT_FDCWD, proc, AT_FDCWD, tmp, AT_SYMLINK_FOLLOW) ==
		    0) {
			fd = open(tmp, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
			if (fd < 0)
				return cfs_error_errno(errno, "open %s", tmp);
			if (fchmod(fd, 0600) < 0)
				rc = cfs_error_errno(errno, "chmod %s", tmp);
			if (!rc)
				progress(st, (uint64_t)sb.st_size,
					 (uint64_t)sb.st_size);
			if (!rc && fsync(fd) < 0)
				rc = cfs_error_errno(errno, "fsync %s", tmp);
			if (close(fd) < 0 && !rc)
				rc = cfs_error_errno(errno, "close %s", tmp);
			return rc;
		}
		/* EXDEV, no /proc, ...: copy as usual */
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0)
		return cfs_error_errno(errno, "create %s", tmp);
	if (src->fd >= 0) {
		uint64_t total = 0;

		if (fstat(src->fd, &sb) == 0 && S_ISREG(sb.st_mode))
			total = (uint64_t)sb.st_size;
		rc = copy_fd(st, fd, tmp, src->fd, "put source", total);
	} else {
		rc = cfs_write_all(fd, src->buf, src->len);
		if (rc)
			cfs_error_prefix("%s", tmp);
		else
			progress(st, src->len, src->len);
	}
	if (!rc && fsync(fd) < 0)
		rc = cfs_error_errno(errno, "fsync %s", tmp);
	if (close(fd) < 0 && !rc)
		rc = cfs_error_errno(errno, "close %s", tmp);
	return rc;
}

/* Writes the ETag token to a temp sidecar (0600, no newline), fsynced. */
static int write_temp_sidecar(char **tmp_out, const char *path,
			      const char *token)
{
	char uuid[37];
	char *tmp;
	int fd, rc;

	cfs_uuid4(uuid);
	*tmp_out = tmp =
		cfs_asprintf("%s.etagid.tmp-%d-%s", path, (int)getpid(), uuid);
	if (!tmp)
		return CFS_ENOMEM;
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0)
		return cfs_error_errno(errno, "create %s", tmp);
	rc = cfs_write_all(fd, token, strlen(token));
	if (rc)
		cfs_error_prefix("%s", tmp);
	if (!rc && fsync(fd) < 0)
		rc = cfs_error_errno(errno, "fsync %s", tmp);
	if (close(fd) < 0 && !rc)
		rc = cfs_error_errno(errno, "close %s", tmp);
	return rc;
}

static int fs_put(struct cfs_store *st, const char *key,
		  const struct cfs_source *src, const struct cfs_cond *cond,
		  char etag_out[CFS_ETAG_MAX])
{
	struct fs_store *fs = fs_of(st);
	struct fs_lock *lk = NULL;
	char *path = NULL, *dir = NULL, *tmp = NULL, *side = NULL;
	char *side_tmp = NULL;
	char token[37];
	int rc;

	rc = object_paths(&path, &side, &dir, fs, key);
	if (rc)
		goto out;
	rc = mkdir_durable(dir);
	if (rc)
		goto out;
	rc = lock_acquire(&lk, fs, path);
	if (rc)
		goto out;
	rc = check_cond(fs, key, path, cond);
	if (rc)
		goto out;
	rc = write_temp_body(&tmp, st, path, src);
	if (rc)
		goto out;
	cfs_uuid4(token);
	rc = write_temp_sidecar(&side_tmp, path, token);
	if (rc)
		goto out;
	rc = lock_check(lk, key);
	if (rc)
		goto out;
	/* Body first, then its ETag: see the comment at the top. */
	if (rename(tmp, path) < 0) {
		rc = cfs_error_errno(errno, "rename %s over %s", tmp, path);
		goto out;
	}
	free(tmp);
	tmp = NULL;
	if (rename(side_tmp, side) < 0) {
		rc = cfs_error_errno(errno, "rename %s over %s", side_tmp,
				     side);
		goto out;
	}
	free(side_tmp);
	side_tmp = NULL;
	rc = fsync_path(dir);
	if (rc)
		goto out;
	if (etag_out)
		snprintf(etag_out, CFS_ETAG_MAX, "%s", token);
out:
	if (tmp)
		unlink(tmp);
	if (side_tmp)
		unlink(side_tmp);
	lock_release(lk);
	free(tmp);
	free(side_tmp);
	free(side);
	free(dir);
	free(path);
	return rc;
}

/* ---- delete ------------------------------------------------------------ */

static int unlink_missing_ok(const char *path)
{
	if (unlink(path) == 0 || errno == ENOENT || errno == ENOTDIR)
		return 0;
	return cfs_error_errno(errno, "remove %s", path);
}

static int fs_del(struct cfs_store *st, const char *key)
{
	struct fs_store *fs = fs_of(st);
	struct fs_lock *lk = NULL;
	char *path = NULL, *side = NULL, *dir = NULL;
	struct stat sb;
	int rc;

	rc = object_paths(&path, &side, &dir, fs, key);
	if (rc)
		goto out;
	/* Missing (and no orphan sidecar): nothing to do, no lock taken. */
	if (lstat(path, &sb) < 0 && (errno == ENOENT || errno == ENOTDIR) &&
	    lstat(side, &sb) < 0 && (errno == ENOENT || errno == ENOTDIR))
		goto out;
	rc = lock_acquire(&lk, fs, path);
	if (rc)
		goto out;
	rc = unlink_missing_ok(path);
	if (!rc)
		rc = unlink_missing_ok(side);
	if (!rc)
		rc = fsync_path(dir);
out:
	lock_release(lk);
	free(dir);
	free(side);
	free(path);
	return rc;
}

/* ---- list -------------------------------------------------------------- */

/* Walks directory dfd (owned) whose keys start with rel ("" = root). */
static int list_dir(int dfd, const char *rel, int depth, cfs_list_fn fn,
		    void *payload)
{
	DIR *d = fdopendir(dfd);
	struct dirent *de;
	int rc = 0;

	if (!d) {
		rc = cfs_error_errno(errno, "list %s", rel[0] ? rel : ".");
		close(dfd);
		return rc;
	}
	if (depth > FS_LIST_DEPTH_MAX) {
		closedir(d);
		return cfs_error_set(CFS_EUNSAFE,
				     "storage directory nested deeper than %d "
				     "levels at %s",
				     FS_LIST_DEPTH_MAX, rel);
	}
	while (!rc) {
		unsigned char type;
		char *key;

		errno = 0;
		de = readdir(d);
		if (!de) {
			if (errno)
				rc = cfs_error_errno(errno, "list %s", rel);
			break;
		}
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		type = de->d_type;
		if (type == DT_UNKNOWN) {
			struct stat sb;

			if (fstatat(dirfd(d), de->d_name, &sb,
				    AT_SYMLINK_NOFOLLOW) < 0)
				continue;
			type = S_ISDIR(sb.st_mode)   ? DT_DIR
			       : S_ISREG(sb.st_mode) ? DT_REG
						     : DT_UNKNOWN;
		}
		if (type == DT_DIR && ends_with(de->d_name, ".lock"))
			continue;
		if (type == DT_REG && (ends_with(de->d_name, ".etagid") ||
				       strstr(de->d_name, ".tmp-")))
			continue;
		if (type != DT_DIR && type != DT_REG)
			continue; /* symlinks, sockets, ... are not objects */
		key = rel[0] ? cfs_asprintf("%s/%s", rel, de->d_name)
			     : cfs_strdup(de->d_name);
		if (!key) {
			rc = CFS_ENOMEM;
			break;
		}
		if (type == DT_REG) {
			rc = fn(key, payload);
		} else {
			int sub = openat(dirfd(d), de->d_name,
					 O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
						 O_CLOEXEC);

			if (sub >= 0)
				rc = list_dir(sub, key, depth + 1, fn, payload);
			else if (errno != ENOENT)
				rc = cfs_error_errno(errno, "list %s", key);
		}
		free(key);
	}
	closedir(d);
	return rc;
}

static int fs_list(struct cfs_store *st, const char *prefix, cfs_list_fn fn,
		   void *payload)
{
	struct fs_store *fs = fs_of(st);
	char *rel = NULL, *path = NULL;
	size_t n;
	struct stat sb;
	int rc, dfd;

	rc = check_key(prefix, true);
	if (rc)
		return rc;
	n = strlen(prefix);
	while (n > 0 && prefix[n - 1] == '/')
		n--;
	rel = cfs_strndup(prefix, n);
	path = rel ? (n ? key_path(fs, rel) : cfs_strdup(fs->root)) : NULL;
	if (!rel || !path) {
		rc = CFS_ENOMEM;
		goto out;
	}
	if (lstat(path, &sb) < 0) {
		if (errno != ENOENT && errno != ENOTDIR)
			rc = cfs_error_errno(errno, "list %s", path);
		goto out;
	}
	if (S_ISREG(sb.st_mode)) {
		/* The prefix names an object: just it (not with a '/'). */
		if (n == strlen(prefix))
			rc = fn(prefix, payload);
		goto out;
	}
	if (!S_ISDIR(sb.st_mode))
		goto out;
	dfd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0) {
		if (errno != ENOENT)
			rc = cfs_error_errno(errno, "list %s", path);
		goto out;
	}
	rc = list_dir(dfd, rel, 0, fn, payload);
out:
	free(path);
	free(rel);
	return rc;
}

/* ---- open / free ------------------------------------------------------- */

static const char *fs_describe(struct cfs_store *st)
{
	return fs_of(st)->root;
}

/*
 * <root>/.contextfs-staging (0700, ours, not a symlink): where a commit
 * writes its ciphertext bundle, so that put links it into place even when
 * $TMPDIR is another filesystem (a tmpfs /tmp: the bundle would fill
 * memory, then be copied). Outside contexts/, so no listing sees it.
 */
static const char *fs_staging_dir(struct cfs_store *st)
{
	struct fs_store *fs = fs_of(st);
	struct stat sb;
	char *p;

	if (fs->staging_tried)
		return fs->staging;
	fs->staging_tried = true;
	p = cfs_asprintf("%s/.contextfs-staging", fs->root);
	if (!p)
		return NULL;
	if ((mkdir(p, 0700) < 0 && errno != EEXIST) || lstat(p, &sb) < 0 ||
	    !S_ISDIR(sb.st_mode) || sb.st_uid != geteuid() ||
	    ((sb.st_mode & 0777) != 0700 && chmod(p, 0700) < 0)) {
		free(p);
		return NULL;
	}
	fs->staging = p;
	return p;
}

static void fs_free(struct cfs_store *st)
{
	struct fs_store *fs = fs_of(st);

	free(fs->staging);
	free(fs->root);
	free(fs);
}

static const struct cfs_store_ops fs_ops = {
	.version = CFS_STORE_OPS_VERSION,
	.name = "fs",
	.get = fs_get,
	.put = fs_put,
	.head = fs_head,
	.del = fs_del,
	.list = fs_list,
	.describe = fs_describe,
	.free = fs_free,
	.staging_dir = fs_staging_dir,
};

char *cfs_store_fs_default_dir(void)
{
	const char *home = getenv("HOME");
	struct passwd pw, *res = NULL;
	char pwbuf[4096];

	if (!home || !home[0]) {
		if (getpwuid_r(getuid(), &pw, pwbuf, sizeof(pwbuf), &res) ==
			    0 &&
		    res && res->pw_dir && res->pw_dir[0])
			home = res->pw_dir;
	}
	if (!home || !home[0]) {
		cfs_error_set(CFS_EINVAL,
			      "cannot find the home directory for "
			      "the default storage directory (set HOME or "
			      "pass a storage directory)");
		return NULL;
	}
	return cfs_asprintf("%s/.contextsdk/storage", home);
}

int cfs_store_fs_open(struct cfs_store **out, const char *directory)
{
	struct fs_store *fs = NULL;
	char *dir = NULL, *cwd = NULL;
	struct stat sb;
	size_t n;
	int rc = 0;

	*out = NULL;
	if (!directory || !directory[0]) {
		dir = cfs_store_fs_default_dir();
		if (!dir)
			return cfs_error_last_code();
	} else if (directory[0] == '/') {
		dir = cfs_strdup(directory);
	} else {
		cwd = getcwd(NULL, 0);
		if (!cwd)
			return cfs_error_errno(errno, "getcwd");
		dir = cfs_asprintf("%s/%s", strcmp(cwd, "/") ? cwd : "",
				   directory);
	}
	if (!dir) {
		rc = CFS_ENOMEM;
		goto out;
	}
	n = strlen(dir);
	while (n > 1 && dir[n - 1] == '/')
		dir[--n] = '\0';
	if (n + FS_KEY_MAX + 128 > PATH_MAX) {
		rc = cfs_error_set(CFS_EINVAL,
				   "storage directory path is too "
				   "long: %.64s...",
				   dir);
		goto out;
	}
	if (stat(dir, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
		rc = cfs_error_set(CFS_EINVAL,
				   "storage directory %s is not a directory",
				   dir);
		goto out;
	}
	fs = cfs_calloc(1, sizeof(*fs));
	if (!fs) {
		rc = CFS_ENOMEM;
		goto out;
	}
	fs->base.ops = &fs_ops;
	fs->root = dir;
	dir = NULL;
	fs->stale_ms = FS_DEFAULT_STALE_MS;
	fs->timeout_ms = FS_DEFAULT_TIMEOUT_MS;
	fs->retry_ms = FS_DEFAULT_RETRY_MS;
	fs->refresh_ms = FS_DEFAULT_REFRESH_MS;
	*out = &fs->base;
out:
	free(cwd);
	free(dir);
	return rc;
}

void cfs_store_fs_set_lock_timing(struct cfs_store *st, unsigned stale_ms,
				  unsigned timeout_ms, unsigned retry_ms,
				  unsigned refresh_ms)
{
	struct fs_store *fs;

	if (!st || st->ops != &fs_ops)
		return;
	fs = fs_of(st);
	if (stale_ms)
		fs->stale_ms = stale_ms;
	if (timeout_ms)
		fs->timeout_ms = timeout_ms;
	if (retry_ms)
		fs->retry_ms = retry_ms;
	if (refresh_ms)
		fs->refresh_ms = refresh_ms;
}
