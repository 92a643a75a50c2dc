/*
 * The commit engine (core/context.h): creates contexts, commits a directory
 * as the next generation or checkpoint with the reference's data-first,
 * compare-and-swap-last protocol (REFERENCE.md §2.3), exports, verifies,
 * restores and garbage-collects. Every plaintext byte lives in a private
 * temp directory (0700, files 0600) that is removed on every path; bundles
 * stream pack -> encrypt -> file -> store (an S3 upload follows the file as
 * it grows) and store -> pipe -> decrypt -> unpack, so no bundle is ever
 * held in memory and downloads overlap unpacking.
 */
#include "core/context.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sodium.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "core/bundle.h"
#include "core/crypto.h"
#include "core/error.h"
#include "core/ids.h"
#include "core/json.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/manifest.h"
#include "core/policy.h"
#include "core/record.h"
#include "core/util.h"
#include "core/version.h"

#define DEFAULT_AUTHOR "contextsdk"
#define DEFAULT_SAVE_MESSAGE "save context"
#define DEFAULT_CREATE_MESSAGE "create context"
#define DEFAULT_REASON "checkpoint"
/* Most objects one commit writes (tree; an image is never written). */
#define WRITTEN_MAX 4

/* The first failure's code and message, kept across best-effort cleanup
 * (whose warnings would otherwise overwrite the thread's error record). */
struct saved_error {
	int code;
	char msg[1024];
};

static void error_save(struct saved_error *s, int code)
{
	s->code = code;
	snprintf(s->msg, sizeof(s->msg), "%s", cfs_error_last());
}

static int error_restore(const struct saved_error *s)
{
	return cfs_error_set(s->code, "%s", s->msg);
}

/* ------------------------------------------------------------------ */
/* Private temporary directory                                         */
/* ------------------------------------------------------------------ */

struct tmpdir {
	char *path;
	int fd;
};

static void tmpdir_init(struct tmpdir *t)
{
	t->path = NULL;
	t->fd = -1;
}

/* A private directory under base (NULL: $TMPDIR). */
static int tmpdir_open_in(struct tmpdir *t, const char *base,
			  const char *prefix)
{
	int rc = cfs_mkdtemp(&t->path, base, prefix);

	if (rc)
		return rc;
	t->fd = open(t->path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (t->fd < 0)
		return cfs_error_errno(errno, "open %s", t->path);
	return 0;
}

static int tmpdir_open(struct tmpdir *t, const char *prefix)
{
	return tmpdir_open_in(t, NULL, prefix);
}

/* Removes everything; safe on a never-opened tmpdir. */
static void tmpdir_close(struct tmpdir *t)
{
	if (t->fd >= 0)
		close(t->fd);
	t->fd = -1;
	if (t->path) {
		struct saved_error e;

		error_save(&e, cfs_error_last_code());
		if (cfs_rmtree_at(AT_FDCWD, t->path))
			cfs_warn("could not remove temporary directory %s: %s",
				 t->path, cfs_error_last());
		error_restore(&e);
		free(t->path);
		t->path = NULL;
	}
}

/*
 * Where a commit writes its ciphertext bundle: the store's staging
 * directory when it has one (put then links the file instead of copying
 * it), else bt is not used and the bundle goes to t. Dead runs of this
 * host leave directories named contextfs-stage-<host>-<pid>-*; they are
 * swept here (another host sharing the store has its own names).
 */
static struct tmpdir *bundle_tmpdir(struct tmpdir *bt, struct tmpdir *t,
				    struct cfs_store *st)
{
	const char *dir = cfs_store_staging_dir(st);
	char host[64] = "", prefix[128];

	if (!dir)
		return t;
	(void)gethostname(host, sizeof(host) - 1);
	for (char *c = host; *c; c++)
		if (*c == '/' || *c == '-')
			*c = '_';
	snprintf(prefix, sizeof(prefix), "contextfs-stage-%s-", host);
	cfs_sweep_stale_tmpdirs(dir, prefix);
	snprintf(prefix, sizeof(prefix), "contextfs-stage-%s-%ld-", host,
		 (long)getpid());
	if (tmpdir_open_in(bt, dir, prefix)) {
		cfs_error_clear();
		tmpdir_close(bt);
		return t;
	}
	return bt;
}

static int tmpdir_file(int *out, struct tmpdir *t, const char *name)
{
	int fd = openat(t->fd, name,
			O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			0600);

	if (fd < 0)
		return cfs_error_errno(errno, "create temporary file %s/%s",
				       t->path, name);
	*out = fd;
	return 0;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static int rewind_fd(int fd)
{
	if (lseek(fd, 0, SEEK_SET) < 0)
		return cfs_error_errno(errno, "seek temporary file");
	return 0;
}

/* ------------------------------------------------------------------ */
/* Manifest access                                                     */
/* ------------------------------------------------------------------ */

static int manifest_read(struct cfs_manifest **out, char *etag,
			 struct cfs_store *st, const char *id)
{
	char key[CFS_KEY_MAX];
	struct cfs_objinfo info;
	char *buf = NULL;
	size_t len = 0;
	int rc;

	*out = NULL;
	if (etag)
		etag[0] = '\0';
	rc = cfs_key_manifest(key, id);
	if (rc)
		return rc;
	memset(&info, 0, sizeof(info));
	rc = cfs_store_get_buf(st, key, &buf, &len, &info);
	if (rc == CFS_ENOTFOUND)
		return cfs_error_set(CFS_ENOTFOUND,
				     "context not found: %s (no %s in %s)", id,
				     key, cfs_store_describe(st));
	if (rc)
		return rc;
	rc = cfs_manifest_parse(out, buf, len, id);
	free(buf);
	if (rc)
		return rc;
	if (etag)
		snprintf(etag, CFS_ETAG_MAX, "%s", info.etag);
	return 0;
}

int cfs_context_read_manifest(struct cfs_manifest **out,
			      char etag[CFS_ETAG_MAX], struct cfs_store *st,
			      const char *id)
{
	int rc = cfs_id_check(id);

	*out = NULL;
	if (rc)
		return rc;
	return manifest_read(out, etag, st, id);
}

/* A summary/record member that the engine may edit in place. The manifest
 * is owned by the engine here; the accessors only hand out const views. */
static cJSON *mut(const cJSON *j)
{
	return (cJSON *)(uintptr_t)j;
}

static uint64_t json_u64(const cJSON *obj, const char *key)
{
	int64_t v = 0;

	if (!cfs_json_int(obj, key, &v) || v < 0)
		return 0;
	return (uint64_t)v;
}

/* ------------------------------------------------------------------ */
/* Key lists                                                           */
/* ------------------------------------------------------------------ */

struct keylist {
	char **keys;
	size_t n, cap;
};

static void keylist_free(struct keylist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free(l->keys[i]);
	free(l->keys);
	l->keys = NULL;
	l->n = l->cap = 0;
}

static bool keylist_has(const struct keylist *l, const char *key)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->keys[i], key) == 0)
			return true;
	return false;
}

static int keylist_add(struct keylist *l, const char *key)
{
	if (keylist_has(l, key))
		return 0;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 8;
		char **k = realloc(l->keys, cap * sizeof(*k));

		if (!k)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		l->keys = k;
		l->cap = cap;
	}
	l->keys[l->n] = cfs_strdup(key);
	if (!l->keys[l->n])
		return CFS_ENOMEM;
	l->n++;
	return 0;
}

/* Every object key the manifest still needs. */
static int referenced_keys(struct keylist *l, const struct cfs_manifest *m)
{
	const cJSON *arr, *e;
	const char *k;
	int rc = 0;

	if ((k = cfs_manifest_tree_key(m)) && (rc = keylist_add(l, k)))
		return rc;
	if ((k = cfs_manifest_image_key(m)) && (rc = keylist_add(l, k)))
		return rc;
	arr = cfs_manifest_versions(m);
	cJSON_ArrayForEach(e, arr)
	{
		if ((k = cfs_json_str(e, "treeKey")) &&
		    (rc = keylist_add(l, k)))
			return rc;
	}
	e = cfs_manifest_latest_version(m);
	if (e && (k = cfs_json_str(e, "treeKey")) && (rc = keylist_add(l, k)))
		return rc;
	arr = cfs_manifest_checkpoints(m);
	cJSON_ArrayForEach(e, arr)
	{
		if ((k = cfs_json_str(e, "treeKey")) &&
		    (rc = keylist_add(l, k)))
			return rc;
	}
	e = cfs_manifest_latest_checkpoint(m);
	if (e && (k = cfs_json_str(e, "treeKey")) && (rc = keylist_add(l, k)))
		return rc;
	return 0;
}

/* Best-effort deletes (rollback and superseded objects): failures warn. */
static size_t delete_keys(struct cfs_store *st, const struct keylist *l,
			  const char *why)
{
	size_t done = 0;

	for (size_t i = 0; i < l->n; i++) {
		int rc = cfs_store_delete(st, l->keys[i]);

		if (rc)
			cfs_warn("could not delete %s object %s: %s (run gc "
				 "later)",
				 why, l->keys[i], cfs_error_last());
		else
			done++;
	}
	return done;
}

/* ------------------------------------------------------------------ */
/* Encryption parameters                                               */
/* ------------------------------------------------------------------ */

/*
 * Chooses the scrypt parameters of new encryptions: the caller's, else
 * those the context records in its current metadata (so later commits keep
 * the cost the context was created with). The keys object derives again
 * only when the parameters change.
 */
static int apply_scrypt(struct cfs_keys *keys, const struct cfs_scrypt_opts *o,
			const cJSON *recorded)
{
	struct cfs_scrypt_params p;
	struct cfs_encmeta meta;

	if (cfs_keys_has_raw(keys) || !cfs_keys_has_passphrase(keys))
		return 0; /* the raw key wins for encryption */
	if (o && o->cost) {
		p.cost = o->cost;
		p.block_size = o->block_size ? o->block_size : 8;
		p.parallelization = o->parallelization ? o->parallelization : 1;
		return cfs_keys_set_scrypt(keys, &p);
	}
	if (!recorded || cfs_encmeta_from_json(&meta, recorded) ||
	    meta.kdf != CFS_KDF_SCRYPT || !meta.has_scrypt) {
		cfs_error_clear();
		return 0; /* keep the keys object's parameters */
	}
	if (cfs_scrypt_params_validate(&meta.scrypt)) {
		/* Recorded parameters beyond our caps: use the defaults. */
		cfs_warn("ignoring the context's recorded scrypt parameters "
			 "for new encryptions: %s",
			 cfs_error_last());
		cfs_error_clear();
		return 0;
	}
	return cfs_keys_set_scrypt(keys, &meta.scrypt);
}

/* ------------------------------------------------------------------ */
/* pack -> encrypt -> file                                             */
/* ------------------------------------------------------------------ */

/*
 * The compressed stream is encrypted and written by a thread of its own:
 * the packing thread (walk, read, tar, feed the zstd workers) was the
 * commit's bottleneck while it also ran AES-GCM and write(2) (1 GiB tree:
 * main thread busy 100% of the pack, zstd workers 35%). A ring of
 * ENC_BUFS buffers bounds memory; the packer blocks when all are full.
 * The zstd workers hand their output over a job at a time and the disk
 * stalls now and then: with 4 MiB of ring the packer waited 0.9 s of a
 * 1 GiB commit for the writer, with 12 MiB 0.05-0.2 s.
 */
#define ENC_BUFS 12
#define ENC_BUF_SIZE (1u << 20)
#define ENC_DIRECT_ALIGN 4096u

/*
 * The bundle is fsynced before the manifest names it. What O_DIRECT wrote
 * may still sit in the device's cache (a VM's host page cache): a flusher
 * thread fdatasyncs every ENC_DIRECT_FLUSH bytes while the writer goes on,
 * so the final fsync finds little to flush (1 GiB tree: a final flush of
 * 0.2-0.8 s; flushing from the writer itself stalled it 90 ms each time).
 * A failed flush fails the commit: the kernel reports a writeback error
 * once per open file, so the final fsync on the same descriptor might
 * not see it again. Through the page cache (no O_DIRECT), writeback is
 * started every ENC_SINK_WRITEBACK bytes instead.
 */
#define ENC_DIRECT_FLUSH (32u << 20)
#define ENC_SINK_WRITEBACK (16u << 20)

struct enc_sink {
	struct cfs_cipher *cipher;
	int fd;
	const char *dir; /* where the bundle is written, for messages */
	uint64_t bytes; /* handed over by the packer */
	uint8_t *bufs[ENC_BUFS];
	size_t lens[ENC_BUFS];
	size_t fill; /* bytes in the buffer the packer fills */
	/* under mu */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned head; /* the oldest full buffer (the writer's) */
	unsigned nfull; /* full buffers, the writer's included */
	bool done; /* no more buffers will come */
	int err; /* the writer's failure, with its message: */
	struct saved_error why;
	/* the flusher's, under mu */
	pthread_cond_t flush_cv;
	uint64_t direct_written; /* bytes out with O_DIRECT so far */
	uint64_t flushed; /* of which fdatasync'd */
	bool flush_stop;
	int flush_errno; /* a failed fdatasync */
	pthread_t flusher;
	bool flusher_started;
	/* the writer's own */
	uint64_t written, synced; /* writeback started up to synced */
	bool direct; /* fd has O_DIRECT */
	struct cfs_growing *growing; /* told each write (streamed upload) */
	pthread_t thread;
	bool started;
};

/*
 * The directory that holds path, as *n bytes of *dir for "%.*s": "/" for
 * a name directly under it, "?" without a path. Full-disk messages name
 * it: the private directory itself is gone by the time the user reads.
 */
static void parent_of(const char *path, const char **dir, int *n)
{
	const char *slash = path ? strrchr(path, '/') : NULL;

	*dir = !path ? "?" : slash && slash > path ? path : "/";
	*n = slash && slash > path ? (int)(slash - path) : 1;
}

/* Names the directory holding the bundle's private temp dir. */
static int enc_io_error(const struct enc_sink *s, int e, const char *what)
{
	const char *dir;
	int n;

	parent_of(s->dir, &dir, &n);
	if (e == ENOSPC || e == EDQUOT)
		return cfs_error_set(CFS_EIO,
				     "%s the bundle in %.*s: %s; free space "
				     "there and try again (nothing was "
				     "committed)",
				     what, n, dir, strerror(e));
	return cfs_error_errno(e, "%s the bundle in %.*s", what, n, dir);
}

/*
 * Encrypts and writes one buffer in place (writer thread). Whole buffers
 * go out with O_DIRECT where the filesystem takes it: the bundle is
 * linked or uploaded, never read back soon, and copying it through the
 * page cache cost the 1 GiB commit a second of CPU (write(2) of 600 MB:
 * 1.04 s of system time buffered, 0.19 s direct). A short last buffer,
 * or a filesystem that refuses, writes through the page cache.
 */
static int enc_write_one(struct enc_sink *s, uint8_t *buf, size_t len)
{
	int rc = cfs_cipher_update(s->cipher, buf, len, buf);

	if (rc)
		return rc;
	if (s->direct && len % ENC_DIRECT_ALIGN == 0) {
		ssize_t n = pwrite(s->fd, buf, len, (off_t)s->written);

		if (n > 0 && (size_t)n == len) {
			s->written += len;
			if (s->growing)
				cfs_growing_advance(s->growing, s->written);
			pthread_mutex_lock(&s->mu);
			s->direct_written = s->written;
			if (s->direct_written - s->flushed >= ENC_DIRECT_FLUSH)
				pthread_cond_signal(&s->flush_cv);
			pthread_mutex_unlock(&s->mu);
			return 0;
		}
		if (n < 0 && errno != EINVAL && errno != EINTR)
			return enc_io_error(s, errno, "writing");
		/* refused or short: the rest goes through the cache */
		if (n > 0) {
			s->written += (size_t)n;
			buf += n;
			len -= (size_t)n;
		}
	}
	if (s->direct) {
		/* pwrite left the file offset alone */
		(void)fcntl(s->fd, F_SETFL, fcntl(s->fd, F_GETFL) & ~O_DIRECT);
		s->direct = false;
		if (lseek(s->fd, (off_t)s->written, SEEK_SET) < 0)
			return cfs_error_errno(errno, "seeking in the bundle");
	}
	while (len > 0) {
		ssize_t n = write(s->fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return enc_io_error(s, errno, "writing");
		s->written += (size_t)n;
		buf += n;
		len -= (size_t)n;
	}
	if (s->growing)
		cfs_growing_advance(s->growing, s->written);
	if (s->written - s->synced >= ENC_SINK_WRITEBACK) {
		/* advisory: errors surface at the final fsync */
		(void)sync_file_range(s->fd, (off_t)s->synced,
				      (off_t)(s->written - s->synced),
				      SYNC_FILE_RANGE_WRITE);
		s->synced = s->written;
	}
	return 0;
}

static void *enc_writer(void *arg)
{
	struct enc_sink *s = arg;

	pthread_mutex_lock(&s->mu);
	for (;;) {
		unsigned i;
		int rc;

		while (s->nfull == 0 && !s->done)
			pthread_cond_wait(&s->cv, &s->mu);
		if (s->nfull == 0 || s->err)
			break;
		i = s->head;
		pthread_mutex_unlock(&s->mu);
		rc = enc_write_one(s, s->bufs[i], s->lens[i]);
		pthread_mutex_lock(&s->mu);
		if (rc) {
			s->err = rc;
			error_save(&s->why, rc);
			pthread_cond_broadcast(&s->cv);
			break;
		}
		s->head = (s->head + 1) % ENC_BUFS;
		s->nfull--;
		pthread_cond_broadcast(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* Flushes what O_DIRECT wrote, ENC_DIRECT_FLUSH bytes at a time. */
static void *enc_flusher(void *arg)
{
	struct enc_sink *s = arg;

	pthread_mutex_lock(&s->mu);
	while (!s->flush_stop && !s->flush_errno) {
		uint64_t upto = s->direct_written;

		if (upto - s->flushed < ENC_DIRECT_FLUSH) {
			pthread_cond_wait(&s->flush_cv, &s->mu);
			continue;
		}
		pthread_mutex_unlock(&s->mu);
		if (fdatasync(s->fd) < 0 && errno != EINTR) {
			int e = errno;

			pthread_mutex_lock(&s->mu);
			s->flush_errno = e;
			if (!s->err) {
				/* the writer and the packer stop at once */
				s->err = enc_io_error(s, e, "flushing");
				error_save(&s->why, s->err);
				pthread_cond_broadcast(&s->cv);
			}
			break;
		}
		pthread_mutex_lock(&s->mu);
		s->flushed = upto;
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

static int enc_sink_init(struct enc_sink *s)
{
	memset(s, 0, sizeof(*s));
	s->fd = -1;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	pthread_cond_init(&s->flush_cv, NULL);
	for (unsigned i = 0; i < ENC_BUFS; i++) {
		void *p = NULL;

		if (posix_memalign(&p, ENC_DIRECT_ALIGN, ENC_BUF_SIZE))
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		s->bufs[i] = p;
	}
	return 0;
}

static int enc_sink_start(struct enc_sink *s)
{
	int fl = fcntl(s->fd, F_GETFL), e;

	s->direct = fl >= 0 && fcntl(s->fd, F_SETFL, fl | O_DIRECT) == 0;
	e = pthread_create(&s->thread, NULL, enc_writer, s);

	if (e)
		return cfs_error_errno(e, "cannot start the bundle writer");
	s->started = true;
	/* without it the final fsync flushes everything: slower, not wrong */
	if (s->direct && pthread_create(&s->flusher, NULL, enc_flusher, s) == 0)
		s->flusher_started = true;
	return 0;
}

/* Hands the filled buffer to the writer; waits for a free one. */
static int enc_sink_handoff(struct enc_sink *s)
{
	int rc;

	pthread_mutex_lock(&s->mu);
	if (!s->err) {
		s->lens[(s->head + s->nfull) % ENC_BUFS] = s->fill;
		s->nfull++;
		pthread_cond_broadcast(&s->cv);
		while (s->nfull == ENC_BUFS && !s->err)
			pthread_cond_wait(&s->cv, &s->mu);
	}
	rc = s->err;
	pthread_mutex_unlock(&s->mu);
	s->fill = 0;
	return rc ? error_restore(&s->why) : 0;
}

static int enc_sink_write(const void *data, size_t len, void *payload)
{
	struct enc_sink *s = payload;
	const uint8_t *p = data;

	while (len > 0) {
		/* the free buffer the packer fills next */
		uint8_t *buf;
		size_t n;

		pthread_mutex_lock(&s->mu);
		buf = s->bufs[(s->head + s->nfull) % ENC_BUFS];
		pthread_mutex_unlock(&s->mu);
		n = ENC_BUF_SIZE - s->fill;
		if (n > len)
			n = len;
		memcpy(buf + s->fill, p, n);
		s->fill += n;
		s->bytes += n;
		p += n;
		len -= n;
		if (s->fill == ENC_BUF_SIZE) {
			int rc = enc_sink_handoff(s);

			if (rc)
				return rc;
		}
	}
	return 0;
}

/*
 * Ends the stream: with ok, the last partial buffer is written and the
 * writer's failure, if any, returned; without, the writer just stops.
 */
static int enc_sink_finish(struct enc_sink *s, bool ok)
{
	int rc = 0;

	if (!s->started)
		return 0;
	if (ok && s->fill > 0)
		rc = enc_sink_handoff(s);
	pthread_mutex_lock(&s->mu);
	s->done = true;
	if (!ok && !s->err)
		s->err = CFS_ECANCELED;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->thread, NULL);
	s->started = false;
	cfs_thread_stop(s->flusher, &s->mu, &s->flush_cv, &s->flush_stop,
			&s->flusher_started);
	if (ok && !rc && s->err)
		rc = error_restore(&s->why);
	if (ok && !rc && s->flush_errno)
		rc = enc_io_error(s, s->flush_errno, "flushing");
	return rc;
}

static void enc_sink_free(struct enc_sink *s)
{
	enc_sink_finish(s, false);
	for (unsigned i = 0; i < ENC_BUFS; i++) {
		if (s->bufs[i]) {
			/* compressed plaintext passed through it */
			sodium_memzero(s->bufs[i], ENC_BUF_SIZE);
			free(s->bufs[i]);
		}
	}
	pthread_mutex_destroy(&s->mu);
	pthread_cond_destroy(&s->cv);
	pthread_cond_destroy(&s->flush_cv);
}

/*
 * A bundle uploaded while it is packed (stores with CFS_STORE_STREAMS_PUT:
 * S3 multipart): the upload follows the temp file as the writer thread
 * extends it, so a commit costs about max(pack, upload) instead of their
 * sum. The temp file stays the source of every part (retries re-read it),
 * so memory does not grow with the bundle.
 */
struct uploader {
	struct cfs_store *st;
	const char *key;
	struct cfs_cond cond;
	int fd; /* our own descriptor of the temp file */
	struct cfs_growing growing;
	pthread_t thread;
	bool started;
	int rc;
	struct saved_error why;
};

static void *upload_thread(void *arg)
{
	struct uploader *u = arg;

	u->rc = cfs_store_put_growing(u->st, u->key, u->fd, &u->growing,
				      &u->cond, NULL);
	if (u->rc)
		error_save(&u->why, u->rc);
	return NULL;
}

static int uploader_start(struct uploader *u, int bundle_fd)
{
	char proc[64];
	int e;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", bundle_fd);
	u->fd = open(proc, O_RDONLY | O_CLOEXEC);
	if (u->fd < 0)
		return cfs_error_errno(errno, "reopen the bundle for upload");
	cfs_growing_init(&u->growing);
	e = pthread_create(&u->thread, NULL, upload_thread, u);
	if (e) {
		cfs_growing_destroy(&u->growing);
		close_fd(&u->fd);
		return cfs_error_errno(e, "cannot start the upload");
	}
	u->started = true;
	return 0;
}

/* Waits for the upload; its result (ok: the object is stored). */
static int uploader_finish(struct uploader *u)
{
	if (!u->started)
		return 0;
	pthread_join(u->thread, NULL);
	u->started = false;
	cfs_growing_destroy(&u->growing);
	close_fd(&u->fd);
	return u->rc ? error_restore(&u->why) : 0;
}

/* The tail's bytes, as they are, after the head (struct cfs_commit_tail). */
static int copy_tail(const struct cfs_commit_tail *tail, struct enc_sink *s)
{
	uint8_t *buf = malloc(ENC_BUF_SIZE);
	off_t off = (off_t)tail->offset;
	int rc = 0;

	if (!buf)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	for (;;) {
		ssize_t n = pread(tail->fd, buf, ENC_BUF_SIZE, off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = cfs_error_errno(errno, "reading the packed roots");
			break;
		}
		if (n == 0)
			break;
		rc = enc_sink_write(buf, (size_t)n, s);
		if (rc)
			break;
		off += n;
	}
	/* compressed plaintext */
	sodium_memzero(buf, ENC_BUF_SIZE);
	free(buf);
	return rc;
}

/*
 * Packs rootfd (policy, extra members) and encrypts the stream into the
 * new private file "bundle.enc" of t. *fd_out is that file (rewound),
 * *enc_out its encryption metadata as JSON, *size_out the ciphertext (=
 * compressed bundle) size.
 */
static int pack_encrypt(int *fd_out, cJSON **enc_out, uint64_t *size_out,
			struct tmpdir *t, struct cfs_keys *keys, int rootfd,
			const struct cfs_policy *policy,
			const struct cfs_bundle_member *extra, size_t nextra,
			const struct cfs_commit_tail *tail, struct uploader *up)
{
	struct enc_sink s;
	struct cfs_encmeta meta;
	int rc;

	*fd_out = -1;
	*enc_out = NULL;
	*size_out = 0;
	rc = enc_sink_init(&s);
	if (rc)
		goto out;
	rc = tmpdir_file(&s.fd, t, "bundle.enc");
	if (rc)
		goto out;
	s.dir = t->path;
	memset(&meta, 0, sizeof(meta));
	rc = cfs_cipher_encrypt_new(&s.cipher, keys, &meta);
	if (rc)
		goto out;
	if (up) {
		rc = uploader_start(up, s.fd);
		if (rc)
			goto out;
		s.growing = &up->growing;
	}
	rc = enc_sink_start(&s);
	if (rc)
		goto out;
	if (tail) {
		rc = cfs_bundle_pack_head(rootfd, extra, nextra, enc_sink_write,
					  &s, NULL);
		if (!rc)
			rc = copy_tail(tail, &s);
	} else {
		rc = cfs_bundle_pack(rootfd, policy, extra, nextra,
				     enc_sink_write, &s, NULL);
	}
	{
		int rc2 = enc_sink_finish(&s, rc == 0);

		if (!rc)
			rc = rc2;
	}
	if (rc)
		goto out;
	if (s.bytes == 0) {
		rc = cfs_error_set(CFS_EIO, "packing produced an empty bundle");
		goto out;
	}
	rc = cfs_cipher_final(s.cipher);
	if (rc)
		goto out;
	*enc_out = cfs_encmeta_to_json(&meta);
	if (!*enc_out) {
		rc = cfs_error_last_code() ? cfs_error_last_code() : CFS_ENOMEM;
		goto out;
	}
	/* every buffer may have gone out direct: the callers read it with
	 * unaligned buffers (store copies, S3 MD5s) */
	if (s.direct &&
	    fcntl(s.fd, F_SETFL, fcntl(s.fd, F_GETFL) & ~O_DIRECT) < 0) {
		rc = cfs_error_errno(errno, "clearing O_DIRECT on the bundle");
		goto out;
	}
	rc = rewind_fd(s.fd);
	if (rc)
		goto out;
	*fd_out = s.fd;
	s.fd = -1;
	*size_out = s.bytes;
out:
	if (rc) {
		cJSON_Delete(*enc_out);
		*enc_out = NULL;
	}
	enc_sink_free(&s);
	if (up && up->started)
		cfs_growing_end(&up->growing, rc ? rc : 0);
	cfs_cipher_free(s.cipher);
	close_fd(&s.fd);
	return rc;
}

/* ------------------------------------------------------------------ */
/* store -> pipe -> decrypt -> unpack                                  */
/* ------------------------------------------------------------------ */

struct progress_scope {
	struct cfs_store *st;
	cfs_progress_fn fn;
	void *payload;
};

static void progress_push(struct progress_scope *s, struct cfs_store *st,
			  cfs_progress_fn fn, void *payload)
{
	/* Only touched when the caller asked for progress: a store shared
	 * by other threads keeps its own settings otherwise. */
	s->st = fn ? st : NULL;
	if (!fn)
		return;
	s->fn = st->progress;
	s->payload = st->progress_payload;
	st->progress = fn;
	st->progress_payload = payload;
}

static void progress_pop(struct progress_scope *s)
{
	if (!s->st)
		return;
	s->st->progress = s->fn;
	s->st->progress_payload = s->payload;
}

/* Feeds unpack with plaintext decrypted from a ciphertext fd. */
struct decrypt_source {
	struct cfs_cipher *cipher;
	int fd;
	bool done;
	int final_rc; /* cfs_cipher_final's result once the fd is drained */
	int tee_fd; /* >= 0: every plaintext byte is also written here */
};

static ssize_t decrypt_read(void *buf, size_t len, void *payload)
{
	struct decrypt_source *d = payload;
	ssize_t n;
	int rc;

	if (d->done)
		return 0;
	if (len > CFS_CRYPTO_CHUNK)
		len = CFS_CRYPTO_CHUNK;
	do {
		n = read(d->fd, buf, len);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return cfs_error_errno(errno, "read the downloaded object");
	if (n == 0) {
		d->done = true;
		d->final_rc = cfs_cipher_final(d->cipher);
		return d->final_rc ? d->final_rc : 0;
	}
	rc = cfs_cipher_update(d->cipher, buf, (size_t)n, buf);
	if (!rc && d->tee_fd >= 0) {
		rc = cfs_write_all(d->tee_fd, buf, (size_t)n);
		if (rc)
			cfs_error_prefix("write the plaintext bundle");
	}
	return rc ? rc : n;
}

/*
 * Runs the unpacker over d and, when the archive stops early (an unsafe or
 * corrupt member), decrypts the rest anyway so that d->final_rc always says
 * whether the object authenticated. *unpack_rc gets the unpacker's result
 * (its message kept); the return value is an error of the drain itself.
 */
static int decrypt_unpack(int *unpack_rc, struct decrypt_source *d,
			  int destdirfd, const struct cfs_unpack_opts *uo)
{
	struct saved_error se;
	uint8_t *junk;
	ssize_t n;

	*unpack_rc = cfs_bundle_unpack(destdirfd, decrypt_read, d, uo, NULL);
	if (d->done)
		return 0;
	junk = cfs_malloc(CFS_CRYPTO_CHUNK);
	if (!junk)
		return CFS_ENOMEM;
	error_save(&se, *unpack_rc);
	do {
		n = decrypt_read(junk, CFS_CRYPTO_CHUNK, d);
	} while (n > 0);
	sodium_memzero(junk, CFS_CRYPTO_CHUNK);
	free(junk);
	if (n < 0 && !d->done)
		return (int)n;
	error_restore(&se);
	return 0;
}

/*
 * A download streamed through a pipe: the store writes into one end on a
 * thread of its own while the caller decrypts and unpacks from the other,
 * so the transfer overlaps the unpacking and no copy of the bundle is
 * written to disk first. Bundle keys are never rewritten, so a broken
 * connection resumes with a Range request, which a pipe allows (only a
 * restart from byte 0 would not, and fails cleanly).
 */
struct fetch_stream {
	struct cfs_store *st;
	const char *key;
	int wfd;
	int rc;
	struct saved_error why;
	uint64_t bytes;
	pthread_t thread;
	bool started;
};

static void *fetch_thread(void *arg)
{
	struct fetch_stream *f = arg;
	struct cfs_objinfo info;
	sigset_t set;

	/* a reader that stopped early must give EPIPE, not kill us */
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	memset(&info, 0, sizeof(info));
	f->rc = cfs_store_get_fd(f->st, f->key, f->wfd, &info);
	if (f->rc)
		error_save(&f->why, f->rc);
	else
		f->bytes = info.size;
	close_fd(&f->wfd);
	return NULL;
}

static int fetch_stream_start(struct fetch_stream *f, int *rfd,
			      struct cfs_store *st, const char *key)
{
	int p[2], e;

	memset(f, 0, sizeof(*f));
	f->st = st;
	f->key = key;
	f->wfd = -1;
	*rfd = -1;
	if (pipe2(p, O_CLOEXEC) < 0)
		return cfs_error_errno(errno, "cannot create a pipe");
	(void)fcntl(p[1], F_SETPIPE_SZ, 1 << 20); /* fewer wakeups */
	f->wfd = p[1];
	e = pthread_create(&f->thread, NULL, fetch_thread, f);
	if (e) {
		close(p[0]);
		close_fd(&f->wfd);
		return cfs_error_errno(e, "cannot start the download");
	}
	f->started = true;
	*rfd = p[0];
	return 0;
}

/*
 * Closes the reading end (a download still running stops with EPIPE),
 * waits for the download and returns its result, which explains a short
 * stream better than the decryption's "truncated".
 */
static int fetch_stream_finish(struct fetch_stream *f, int *rfd)
{
	close_fd(rfd);
	if (!f->started)
		return 0;
	pthread_join(f->thread, NULL);
	f->started = false;
	return f->rc ? error_restore(&f->why) : 0;
}

/*
 * Streams key (ciphertext) from the store through AES-GCM into the
 * unpacker (fetch_stream): extraction into destdirfd, or validation only
 * (destdirfd < 0). No bundle, plaintext or not, is written to disk. GCM
 * authenticates only at the end, so a caller that extracts must extract
 * into a private staging directory and publish it only when this
 * returns 0; an authentication failure wins over any unpack error (a wrong
 * key yields garbage that fails to decompress first).
 */
/* o: progress and, when extracting, file hashing (NULL: neither) */
static int fetch_unpack(uint64_t *bytes, struct cfs_store *st,
			struct cfs_keys *keys, const char *key,
			const cJSON *enc, int destdirfd, int tee_fd,
			const struct cfs_export_opts *o)
{
	struct decrypt_source d = {NULL, -1, false, 0, tee_fd};
	struct fetch_stream f;
	struct cfs_unpack_opts uo;
	struct progress_scope ps;
	struct cfs_encmeta meta;
	int rc, rc2, urc = 0;

	if (bytes)
		*bytes = 0;
	if (!enc)
		return cfs_error_set(CFS_ECORRUPT,
				     "no encryption metadata recorded for %s",
				     key);
	rc = cfs_encmeta_from_json(&meta, enc);
	if (rc) {
		cfs_error_prefix("%s", key);
		return rc;
	}
	/* the key (scrypt) before the download */
	rc = cfs_cipher_decrypt_new(&d.cipher, keys, &meta);
	if (rc)
		goto out;
	progress_push(&ps, st, o ? o->progress : NULL,
		      o ? o->progress_payload : NULL);
	rc = fetch_stream_start(&f, &d.fd, st, key);
	if (!rc) {
		memset(&uo, 0, sizeof(uo));
		uo.validate_only = destdirfd < 0;
		if (o && destdirfd >= 0) {
			uo.file_hashed = o->file_hashed;
			uo.hash_payload = o->hash_payload;
		} else if (o) {
			uo.member = o->member;
			uo.member_payload = o->member_payload;
		}
		rc = decrypt_unpack(&urc, &d, destdirfd, &uo);
	}
	rc2 = fetch_stream_finish(&f, &d.fd);
	progress_pop(&ps);
	/* a cut download explains a "truncated" object better */
	if (rc2 && !rc)
		rc = rc2;
	if (rc)
		goto out;
	if (bytes)
		*bytes = f.bytes;
	if (d.final_rc == CFS_EAUTH) {
		rc = cfs_error_set(CFS_EAUTH,
				   "%s: authentication failed (wrong key, or "
				   "the object or its metadata was modified)",
				   key);
		goto out;
	}
	rc = d.final_rc ? d.final_rc : urc;
	if (rc)
		cfs_error_prefix("%s", key);
out:
	cfs_cipher_free(d.cipher);
	return rc;
}

/* What a commit says when keys do not decrypt m's tree object key. */
static int wrong_key(const struct cfs_manifest *m, const char *key)
{
	return cfs_error_set(CFS_EAUTH,
			     "the key does not decrypt the current data of %s "
			     "(the passphrase or key is not this context's, "
			     "or %s was modified); nothing was committed",
			     cfs_manifest_id(m), key);
}

/*
 * The temp directory's filesystem is full (the version record, the
 * previous file list and the diff's sort runs go there): says where, and
 * what to do, after what failed.
 */
static int tmp_full(const struct tmpdir *t)
{
	char *what = cfs_strdup(cfs_error_last());
	const char *dir;
	int n, rc;

	parent_of(t->path, &dir, &n);
	rc = cfs_error_set(CFS_EIO,
			   "%s; the commit's temporary files are under %.*s: "
			   "free space there or point TMPDIR at a larger "
			   "filesystem (nothing was committed)",
			   what ? what : "no space left on device", n, dir);
	free(what);
	return rc;
}

/*
 * Authenticates the current tree object of m with keys without keeping the
 * tree's files anywhere: a commit with a wrong passphrase or key must fail
 * before it writes anything. While it decrypts, it validates the archive
 * and copies the previous generation's .contextsdk/index.json, whatever
 * its size, into a file of the private temp directory t, *prev_fd (open
 * at its start: the base of the new version record's changedPaths; -1 if
 * the bundle has none). On success the keys adopt the object's salt, so
 * the commit's encryption reuses the key derived for this check. A current
 * object that is missing cannot be checked; that is only a warning, so a
 * context whose data was lost can still be committed over.
 */
static int check_key(int *prev_fd, struct cfs_store *st, struct cfs_keys *keys,
		     const struct cfs_manifest *m, struct tmpdir *t)
{
	const char *key = cfs_manifest_tree_key(m);
	const cJSON *enc = cfs_manifest_tree_encryption(m);
	struct decrypt_source d = {NULL, -1, false, 0, -1};
	struct fetch_stream f;
	struct cfs_unpack_opts uo;
	struct cfs_encmeta meta;
	bool captured = false;
	char *capmsg = NULL;
	int rc, rc2, urc = 0, ifd = -1, capfail = 0;

	*prev_fd = -1;
	if (!key || !enc)
		return 0;
	rc = cfs_encmeta_from_json(&meta, enc);
	if (rc) {
		cfs_error_prefix("%s", key);
		return rc;
	}
	rc = cfs_cipher_decrypt_new(&d.cipher, keys, &meta);
	if (!rc)
		rc = tmpdir_file(&ifd, t, "previous-index.json");
	if (rc)
		goto out;
	rc = fetch_stream_start(&f, &d.fd, st, key);
	if (!rc) {
		memset(&uo, 0, sizeof(uo));
		uo.validate_only = true;
		uo.capture_path = CFS_META_DIR "/index.json";
		uo.capture_fd = ifd;
		uo.captured = &captured;
		uo.capture_failed = &capfail;
		rc = decrypt_unpack(&urc, &d, -1, &uo);
		if (capfail)
			capmsg = cfs_strdup(cfs_error_last());
	}
	rc2 = fetch_stream_finish(&f, &d.fd);
	if (rc2 == CFS_ENOTFOUND && !rc) {
		cfs_warn("cannot check the key against %s: the object is "
			 "missing",
			 key);
		cfs_error_clear();
		captured = false;
		rc = 0;
		goto out;
	}
	if (rc2 && !rc)
		rc = rc2;
	if (rc)
		goto out;
	if (d.final_rc == CFS_EAUTH) {
		rc = wrong_key(m, key);
		goto out;
	}
	if (d.final_rc) {
		rc = d.final_rc;
		goto out;
	}
	if (urc && capfail) {
		/* our copy of its file list failed (a full disk), not the
		 * bundle: nothing is committed */
		rc = cfs_error_set(capfail, "%s", capmsg ? capmsg : "");
		goto out;
	}
	if (urc) {
		/* right key, damaged previous bundle: commit over it */
		cfs_warn("the current data of %s does not unpack (%s); "
			 "committing over it",
			 cfs_manifest_id(m), cfs_error_last());
		cfs_error_clear();
		captured = false;
	}
	rc = cfs_keys_adopt_salt(keys, &meta);
	if (!rc && captured)
		rc = rewind_fd(ifd);
out:
	if (!rc && captured) {
		/* the base of the next record's changedPaths, whatever its
		 * size: read entry by entry (core/record.c) */
		*prev_fd = ifd;
		ifd = -1;
	}
	close_fd(&ifd);
	free(capmsg);
	cfs_cipher_free(d.cipher);
	return rc == CFS_ENOSPC ? tmp_full(t) : rc;
}

/*
 * <tree>/.contextsdk/index.json open for reading, reached without following
 * links, when it is a regular file (its size in *size); else -1.
 */
static int open_index_json(int treefd, size_t *size)
{
	int dfd = openat(treefd, CFS_META_DIR,
			 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct stat sb;
	int fd;

	if (dfd < 0)
		return -1;
	fd = openat(dfd, "index.json",
		    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	close(dfd);
	if (fd >= 0 && (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode))) {
		close(fd);
		fd = -1;
	}
	if (fd >= 0)
		*size = (size_t)sb.st_size;
	return fd;
}

/* ------------------------------------------------------------------ */
/* The commit cache: the authenticated index between commits           */
/* ------------------------------------------------------------------ */

/* Most ciphertext key_confirm reads, and the zstd window it accepts. */
#define KEY_CONFIRM_MAX (512u << 10)
#define KEY_CONFIRM_WINDOW_LOG 24

/* Whether the 512 bytes at h are a tar header: ustar magic, checksum. */
static bool tar_header_valid(const uint8_t *h)
{
	unsigned long sum = 0, want = 0;
	int digits = 0;

	if (memcmp(h + 257, "ustar", 5) != 0)
		return false;
	for (int i = 0; i < 512; i++)
		sum += (i >= 148 && i < 156) ? ' ' : h[i];
	for (int i = 148; i < 156; i++) {
		if (h[i] >= '0' && h[i] <= '7') {
			want = want * 8 + (unsigned long)(h[i] - '0');
			digits++;
		} else if (digits > 0 || (h[i] != ' ' && h[i] != 0)) {
			break;
		}
	}
	return digits > 0 && sum == want;
}

/*
 * Confirms that keys decrypt the current tree object of m after reading
 * only its beginning: every bundle starts with a zstd frame whose first
 * block holds a tar header. A wrong key turns the frame's magic into noise
 * (CFS_EAUTH); a valid frame must then decompress to a tar header with
 * the ustar magic and a correct checksum, so a wrong key passes only by a
 * chance far below 2^-60. Anything else this cheap look cannot decide (a
 * window it will not allocate, an odd first member) returns another error
 * and the caller falls back to the full check. Not authentication: only
 * used with an index whose object we authenticated or wrote (the commit
 * cache). On success the keys adopt the object's salt, as check_key's do.
 */
static int key_confirm(struct cfs_store *st, struct cfs_keys *keys,
		       const struct cfs_manifest *m)
{
	const char *key = cfs_manifest_tree_key(m);
	struct cfs_cipher *cipher = NULL;
	struct cfs_encmeta meta;
	struct fetch_stream f;
	ZSTD_DCtx *zd = NULL;
	uint8_t in[16384], tar[512];
	ZSTD_outBuffer out = {tar, sizeof(tar), 0};
	size_t total = 0;
	int rfd = -1, rc, rc2;

	rc = cfs_encmeta_from_json(&meta, cfs_manifest_tree_encryption(m));
	if (rc)
		return rc;
	rc = cfs_cipher_decrypt_new(&cipher, keys, &meta);
	if (rc)
		return rc;
	zd = ZSTD_createDCtx();
	if (!zd || ZSTD_isError(ZSTD_DCtx_setParameter(
			   zd, ZSTD_d_windowLogMax, KEY_CONFIRM_WINDOW_LOG))) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	rc = fetch_stream_start(&f, &rfd, st, key);
	while (!rc && out.pos < out.size && total < KEY_CONFIRM_MAX) {
		size_t got = 0;
		ZSTD_inBuffer zin = {in, 0, 0};

		rc = cfs_read_all(rfd, in, sizeof(in), &got);
		if (rc || got == 0)
			break;
		rc = cfs_cipher_update(cipher, in, got, in);
		if (rc)
			break;
		total += got;
		zin.size = got;
		while (zin.pos < zin.size && out.pos < out.size) {
			size_t r = ZSTD_decompressStream(zd, &out, &zin);

			if (ZSTD_isError(r) &&
			    ZSTD_getErrorCode(r) == ZSTD_error_prefix_unknown) {
				/* no zstd magic: noise, a wrong key */
				rc = wrong_key(m, key);
				break;
			}
			if (ZSTD_isError(r)) {
				rc = cfs_error_set(CFS_ECORRUPT, "%s: %s", key,
						   ZSTD_getErrorName(r));
				break;
			}
			if (r == 0)
				break; /* the frame ended */
		}
	}
	/* we stop reading early: the download's EPIPE is expected */
	{
		struct saved_error se;

		error_save(&se, rc);
		rc2 = fetch_stream_finish(&f, &rfd);
		if (rc)
			error_restore(&se);
		else
			cfs_error_clear();
	}
	if (!rc && out.pos < out.size)
		rc = rc2 ? rc2
			 : cfs_error_set(CFS_ECORRUPT,
					 "%s: no tar header in its first %zu "
					 "bytes",
					 key, total);
	if (!rc && !tar_header_valid(tar))
		rc = cfs_error_set(CFS_ECORRUPT,
				   "%s does not start with a tar header", key);
out:
	sodium_memzero(in, sizeof(in));
	sodium_memzero(tar, sizeof(tar));
	ZSTD_freeDCtx(zd);
	cfs_cipher_free(cipher);
	return rc ? rc : cfs_keys_adopt_salt(keys, &meta);
}

/* <dir>/<sha256 of store and id>.json */
static char *cache_path_ext(const char *dir, struct cfs_store *st,
			    const char *id, const char *ext)
{
	struct cfs_buf b = CFS_BUF_INIT;
	char name[65];

	if (cfs_buf_puts(&b, cfs_store_describe(st)) ||
	    cfs_buf_put(&b, "", 1) || cfs_buf_puts(&b, id)) {
		cfs_buf_free(&b);
		return NULL;
	}
	cfs_sha256_hex(name, b.ptr, b.len);
	cfs_buf_free(&b);
	return cfs_asprintf("%s/%s.%s", dir, name, ext);
}

static char *cache_path(const char *dir, struct cfs_store *st, const char *id)
{
	return cache_path_ext(dir, st, id, "json");
}

/* The tag of a tree's encryption metadata, or NULL. */
static const char *enc_tag(const cJSON *enc)
{
	return cfs_json_str(enc, "authTag");
}

/* The cache file's header line is at most this long. */
#define CACHE_HEAD_MAX 4096

/*
 * The index cached for the current tree of m, open and positioned at its
 * first byte, or -1 when there is none for exactly that object (its key
 * and GCM tag). Read entry by entry, so it may be of any size.
 */
static int cache_load(const char *dir, struct cfs_store *st, const char *id,
		      const struct cfs_manifest *m)
{
	char *path = cache_path(dir, st, id), head[CACHE_HEAD_MAX], *nl;
	const char *tk = cfs_manifest_tree_key(m);
	const char *tag = enc_tag(cfs_manifest_tree_encryption(m));
	const cJSON *size;
	cJSON *o = NULL;
	struct stat sb;
	size_t got = 0, hlen;
	int fd = -1;
	bool ok = false;

	if (!path || !tk || !tag)
		goto out;
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) ||
	    cfs_read_all(fd, head, sizeof(head), &got))
		goto out;
	nl = memchr(head, '\n', got);
	if (!nl)
		goto out;
	hlen = (size_t)(nl - head);
	o = cJSON_ParseWithLength(head, hlen);
	size = cJSON_GetObjectItemCaseSensitive(o, "size");
	ok = o && cfs_json_str(o, "id") && !strcmp(cfs_json_str(o, "id"), id) &&
	     cfs_json_str(o, "treeKey") &&
	     !strcmp(cfs_json_str(o, "treeKey"), tk) &&
	     cfs_json_str(o, "tag") && !strcmp(cfs_json_str(o, "tag"), tag) &&
	     cJSON_IsNumber(size) &&
	     size->valuedouble == (double)((uint64_t)sb.st_size - hlen - 1) &&
	     lseek(fd, (off_t)hlen + 1, SEEK_SET) == (off_t)hlen + 1;
out:
	if (!ok && fd >= 0) {
		close(fd);
		fd = -1;
	}
	cfs_error_clear();
	cJSON_Delete(o);
	free(path);
	return fd;
}

/* Entries of the commit cache unused for this long are removed. */
#define CACHE_MAX_AGE_S (30 * 24 * 3600)

/*
 * Removes the cache's entries (index .json, stat cache .stat) not written
 * for CACHE_MAX_AGE_S (contexts and stores this machine no longer commits
 * to), so the directory does not grow with every context ever committed,
 * and temp files older than an hour (a commit killed mid-way).
 */
static void cache_prune(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	time_t now = time(NULL);

	if (!d)
		return;
	while ((de = readdir(d))) {
		struct stat sb;
		const char *name = de->d_name;
		size_t n = strlen(name);
		time_t max_age;

		if (n == 64 + 5 && (strcmp(name + 64, ".json") == 0 ||
				    strcmp(name + 64, ".stat") == 0))
			max_age = CACHE_MAX_AGE_S;
		else if (n > 64 + 10 && strstr(name + 64, ".tmp-"))
			max_age = 3600;
		else
			continue;
		if (fstatat(dirfd(d), name, &sb, AT_SYMLINK_NOFOLLOW) == 0 &&
		    S_ISREG(sb.st_mode) && sb.st_mtime < now - max_age)
			(void)unlinkat(dirfd(d), name, 0);
	}
	closedir(d);
}

/*
 * Best effort: remembers the index in fd (len bytes from its start: the
 * version record the tree holds as .contextsdk/index.json, authenticated
 * or written by us) for the tree object tree_key with encryption metadata
 * enc. The file is a header line, {"version", "id", "treeKey", "tag",
 * "size"}, then the index as it is; copied through a small buffer, so
 * memory does not grow with the number of files (fd's offset is left
 * alone).
 */
static void cache_save(const char *dir, struct cfs_store *st, const char *id,
		       const char *tree_key, const cJSON *enc, int fd,
		       size_t len)
{
	char *path = NULL, *head = NULL, *tmp = NULL;
	char hex[9];
	cJSON *o = NULL;
	int out = -1;
	bool ok = false;

	if (fd < 0 || !enc_tag(enc))
		return;
	o = cJSON_CreateObject();
	if (!o || !cJSON_AddNumberToObject(o, "version", 1) ||
	    !cJSON_AddStringToObject(o, "id", id) ||
	    !cJSON_AddStringToObject(o, "treeKey", tree_key) ||
	    !cJSON_AddStringToObject(o, "tag", enc_tag(enc)) ||
	    !cJSON_AddNumberToObject(o, "size", (double)len))
		goto out;
	head = cJSON_PrintUnformatted(o);
	path = cache_path(dir, st, id);
	cfs_random_hex(hex, 4);
	tmp = path ? cfs_asprintf("%s.tmp-%s", path, hex) : NULL;
	if (!head || !tmp || cfs_mkdir_p_at(AT_FDCWD, dir, 0700) != 0)
		goto out;
	out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		   0600);
	if (out < 0 || cfs_write_all(out, head, strlen(head)) ||
	    cfs_write_all(out, "\n", 1) || cfs_copy_fd(out, fd, 0, len))
		goto out;
	ok = close(out) == 0 && rename(tmp, path) == 0;
	out = -1;
	if (ok)
		cache_prune(dir);
out:
	if (out >= 0)
		close(out);
	if (!ok && tmp)
		(void)unlink(tmp);
	if (cfs_error_last()[0])
		cfs_debug("commit cache %s: %s", dir, cfs_error_last());
	cfs_error_clear();
	cJSON_Delete(o);
	free(head);
	free(tmp);
	free(path);
}

/* ------------------------------------------------------------------ */
/* Ref resolution                                                      */
/* ------------------------------------------------------------------ */

/* "2, 3, 4" (heap) — generations whose data the manifest still has. */
static char *kept_generations(const struct cfs_manifest *m)
{
	struct cfs_buf b = CFS_BUF_INIT;
	uint64_t cur = cfs_manifest_generation(m), last = 0;
	const cJSON *e;
	bool any = false;

	cJSON_ArrayForEach(e, cfs_manifest_versions(m))
	{
		uint64_t g = json_u64(e, "generation");
		const char *k;
		const cJSON *enc;

		if (cfs_manifest_generation_lookup(m, g, &k, &enc, NULL))
			continue;
		if (cfs_buf_printf(&b, "%s%" PRIu64, any ? ", " : "", g))
			goto fail;
		any = true;
		last = g;
	}
	if (last != cur) {
		const char *k;
		const cJSON *enc;

		if (!cfs_manifest_generation_lookup(m, cur, &k, &enc, NULL)) {
			if (cfs_buf_printf(&b, "%s%" PRIu64, any ? ", " : "",
					   cur))
				goto fail;
			any = true;
		}
	}
	cfs_error_clear();
	if (!any && cfs_buf_puts(&b, "none"))
		goto fail;
	return cfs_buf_detach(&b);
fail:
	cfs_buf_free(&b);
	return NULL;
}

/* The record of checkpoint n ("checkpoints" entry or latestCheckpoint). */
static const cJSON *checkpoint_record(const struct cfs_manifest *m, uint64_t n)
{
	const cJSON *e;

	cJSON_ArrayForEach(e, cfs_manifest_checkpoints(m))
	{
		if (json_u64(e, "generation") == n)
			return e;
	}
	e = cfs_manifest_latest_checkpoint(m);
	if (e && json_u64(e, "generation") == n)
		return e;
	return NULL;
}

/*
 * Where the tree of ref lives: key and metadata borrow from m. info (may
 * be NULL) receives generation / checkpoint / key.
 */
static int resolve_ref(const char **key, const cJSON **enc,
		       struct cfs_ref_info *info, const struct cfs_manifest *m,
		       const struct cfs_ref *ref)
{
	const char *id = ref->id;
	uint64_t size = 0;
	int rc;

	*key = NULL;
	*enc = NULL;
	switch (ref->kind) {
	case CFS_REF_LATEST:
		*key = cfs_manifest_tree_key(m);
		*enc = cfs_manifest_tree_encryption(m);
		if (!*key || !*enc)
			return cfs_error_set(CFS_ECORRUPT,
					     "manifest of %s names no tree "
					     "object or no encryption "
					     "metadata for it",
					     id);
		if (!cfs_manifest_is_tree(m))
			return cfs_error_set(
				CFS_EUNSUPPORTED,
				"context %s is an ext4 context; contextfs "
				"reads tree contexts only",
				id);
		if (info) {
			uint64_t g;

			info->generation = cfs_manifest_generation(m);
			info->checkpoint = 0;
			if (!cfs_key_parse_generation(id, *key, &g)) {
				/* treeKey flipped to a checkpoint */
				info->checkpoint =
					cfs_manifest_checkpoint_generation(m);
				info->generation = 0;
			}
		}
		break;
	case CFS_REF_GENERATION: {
		uint64_t cur = cfs_manifest_generation(m);
		char *kept;

		if (ref->number > cur)
			return cfs_error_set(CFS_ENOTFOUND,
					     "generation %" PRIu64
					     " of %s does not exist (current "
					     "generation is %" PRIu64 ")",
					     ref->number, id, cur);
		rc = cfs_manifest_generation_lookup(m, ref->number, key, enc,
						    &size);
		if (rc == 0)
			break;
		if (rc != CFS_ENOTFOUND)
			return rc;
		kept = kept_generations(m);
		rc = cfs_error_set(CFS_ENOTFOUND,
				   "generation %" PRIu64
				   " of %s is no longer retained (kept: %s)",
				   ref->number, id, kept ? kept : "?");
		free(kept);
		return rc;
	}
	case CFS_REF_CHECKPOINT: {
		uint64_t cur = cfs_manifest_checkpoint_generation(m);
		const cJSON *rec;

		if (ref->number > cur)
			return cfs_error_set(CFS_ENOTFOUND,
					     "checkpoint %" PRIu64
					     " of %s does not exist (latest "
					     "checkpoint is %" PRIu64 ")",
					     ref->number, id, cur);
		rc = cfs_manifest_checkpoint_lookup(m, ref->number, key, enc,
						    &size);
		if (rc == 0)
			break;
		if (rc != CFS_ENOTFOUND)
			return rc;
		rec = checkpoint_record(m, ref->number);
		if (rec && cfs_json_str(rec, "treeKey"))
			return cfs_error_set(
				CFS_ENOTFOUND,
				"checkpoint %" PRIu64 " of %s cannot be "
				"decrypted: the manifest no longer records its "
				"nonce, tag and salt (contextsdk 0.4 keeps "
				"them only in treeEncryption, which the next "
				"save overwrote); the object %s itself is "
				"intact",
				ref->number, id, cfs_json_str(rec, "treeKey"));
		return cfs_error_set(CFS_ENOTFOUND,
				     "checkpoint %" PRIu64
				     " of %s is not recorded in its manifest "
				     "(only checkpoints written by contextfs "
				     "or the latest one stay addressable)",
				     ref->number, id);
	}
	default:
		return cfs_error_set(CFS_EINVAL, "invalid ref kind");
	}
	if (info) {
		if (ref->kind == CFS_REF_GENERATION) {
			info->generation = ref->number;
			info->checkpoint = 0;
		} else if (ref->kind == CFS_REF_CHECKPOINT) {
			info->generation = 0;
			info->checkpoint = ref->number;
		}
	}
	if (info)
		snprintf(info->tree_key, sizeof(info->tree_key), "%s", *key);
	return 0;
}

/* ------------------------------------------------------------------ */
/* Export                                                              */
/* ------------------------------------------------------------------ */

/*
 * Moves every entry of the staging directory sfd (named stage inside
 * destdirfd) up into destdirfd, then removes the staging directory. The
 * export target was empty, so a name that exists there now is a race with
 * another writer: refused rather than overwritten.
 */
static int publish_stage(int destdirfd, int sfd, const char *stage)
{
	DIR *d;
	struct dirent *de;
	int dfd = dup(sfd), rc = 0;

	if (dfd < 0)
		return cfs_error_errno(errno, "dup");
	d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return cfs_error_errno(errno, "read %s", stage);
	}
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (renameat2(sfd, de->d_name, destdirfd, de->d_name,
			      RENAME_NOREPLACE) < 0) {
			rc = cfs_error_errno(errno,
					     "move %s into the export target",
					     de->d_name);
			break;
		}
	}
	closedir(d);
	if (!rc && unlinkat(destdirfd, stage, AT_REMOVEDIR) < 0)
		rc = cfs_error_errno(errno, "remove %s", stage);
	return rc;
}

/* Parses ref, reads its manifest and finds its tree object (export, fetch). */
static int open_ref(struct cfs_manifest **m, const char **key,
		    const cJSON **enc, struct cfs_ref_info *info,
		    struct cfs_store *st, const char *refstr)
{
	struct cfs_ref ref;
	int rc;

	*m = NULL;
	if (info)
		memset(info, 0, sizeof(*info));
	rc = cfs_ref_parse(&ref, refstr);
	if (!rc)
		rc = manifest_read(m, NULL, st, ref.id);
	if (!rc)
		rc = resolve_ref(key, enc, info, *m, &ref);
	return rc;
}

static int export_ref(struct cfs_ref_info *info, struct cfs_store *st,
		      struct cfs_keys *keys, const char *refstr, int destdirfd,
		      int bundle_fd, const struct cfs_export_opts *o)
{
	const char *cache_dir = o ? o->index_cache_dir : NULL;
	struct cfs_manifest *m = NULL;
	const char *key;
	const cJSON *enc;
	uint64_t bytes = 0;
	char hex[17], stage[64];
	bool staged = false;
	int sfd = -1;
	int rc;

	rc = open_ref(&m, &key, &enc, info, st, refstr);
	if (rc)
		goto out;
	/* extract privately; publish only once GCM has authenticated */
	cfs_random_hex(hex, 8);
	snprintf(stage, sizeof(stage), ".contextfs-export-%s", hex);
	if (mkdirat(destdirfd, stage, 0700) < 0) {
		rc = cfs_error_errno(errno, "create %s in the export target",
				     stage);
		goto out;
	}
	staged = true;
	sfd = openat(destdirfd, stage,
		     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (sfd < 0) {
		rc = cfs_error_errno(errno, "open %s", stage);
		goto out;
	}
	rc = fetch_unpack(&bytes, st, keys, key, enc, sfd, bundle_fd, o);
	if (rc) {
		cfs_error_prefix("export %s", refstr);
		goto out;
	}
	/*
	 * Authenticated and still private: the current tree's index seeds
	 * the commit cache, so the commit that follows an export does not
	 * download the tree again to check the key.
	 */
	if (cache_dir && cfs_manifest_tree_key(m) &&
	    strcmp(key, cfs_manifest_tree_key(m)) == 0) {
		size_t len = 0;
		int ifd = open_index_json(sfd, &len);

		if (ifd >= 0) {
			cache_save(cache_dir, st, cfs_manifest_id(m), key, enc,
				   ifd, len);
			close(ifd);
		}
	}
	rc = publish_stage(destdirfd, sfd, stage);
	if (rc)
		goto out;
	staged = false;
	if (info)
		info->size_bytes = bytes;
out:
	close_fd(&sfd);
	if (staged) {
		struct saved_error se;

		error_save(&se, rc);
		cfs_rmtree_at(destdirfd, stage);
		error_restore(&se);
	}
	cfs_manifest_free(m);
	return rc;
}

int cfs_context_export(struct cfs_ref_info *info, struct cfs_store *st,
		       struct cfs_keys *keys, const char *refstr, int destdirfd,
		       cfs_progress_fn progress, void *progress_payload)
{
	struct cfs_export_opts o = {.progress = progress,
				    .progress_payload = progress_payload};

	return export_ref(info, st, keys, refstr, destdirfd, -1, &o);
}

int cfs_context_export_opts(struct cfs_ref_info *info, struct cfs_store *st,
			    struct cfs_keys *keys, const char *refstr,
			    int destdirfd, const struct cfs_export_opts *o)
{
	return export_ref(info, st, keys, refstr, destdirfd, -1, o);
}

int cfs_context_export_bundle(struct cfs_ref_info *info, struct cfs_store *st,
			      struct cfs_keys *keys, const char *refstr,
			      int destdirfd, int bundle_fd,
			      const struct cfs_export_opts *o)
{
	return export_ref(info, st, keys, refstr, destdirfd, bundle_fd, o);
}

int cfs_context_fetch_bundle(struct cfs_ref_info *info, struct cfs_store *st,
			     struct cfs_keys *keys, const char *refstr, int fd,
			     cfs_progress_fn progress, void *progress_payload)
{
	struct cfs_export_opts o = {.progress = progress,
				    .progress_payload = progress_payload};

	return cfs_context_fetch_bundle_opts(info, st, keys, refstr, fd, &o);
}

int cfs_context_fetch_bundle_opts(struct cfs_ref_info *info,
				  struct cfs_store *st, struct cfs_keys *keys,
				  const char *refstr, int fd,
				  const struct cfs_export_opts *o)
{
	struct cfs_manifest *m = NULL;
	const char *key;
	const cJSON *enc;
	uint64_t bytes = 0;
	int rc;

	rc = open_ref(&m, &key, &enc, info, st, refstr);
	if (rc)
		goto out;
	rc = fetch_unpack(&bytes, st, keys, key, enc, -1, fd, o);
	if (rc) {
		cfs_error_prefix("fetch %s", refstr);
		goto out;
	}
	if (info)
		info->size_bytes = bytes;
out:
	cfs_manifest_free(m);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Verify                                                              */
/* ------------------------------------------------------------------ */

struct verify_state {
	struct cfs_store *st;
	struct cfs_keys *keys;
	struct tmpdir *t;
	cfs_verify_fn fn;
	void *payload;
	struct keylist seen;
	int first_error;
	struct saved_error first;
	unsigned n;
};

/* Checks one object; returns non-zero only when the walk must stop. */
static int verify_one(struct verify_state *vs, const char *key,
		      const cJSON *enc, const char *role)
{
	struct cfs_verify_item item;
	uint64_t bytes = 0;
	int rc, stop = 0;

	if (keylist_has(&vs->seen, key))
		return 0;
	rc = keylist_add(&vs->seen, key);
	if (rc)
		return rc;
	vs->n++;
	rc = fetch_unpack(&bytes, vs->st, vs->keys, key, enc, -1, -1, NULL);
	memset(&item, 0, sizeof(item));
	item.key = key;
	item.role = role;
	item.ok = rc == 0;
	item.bytes = bytes;
	item.error = rc;
	item.message = rc ? cfs_error_last() : NULL;
	if (rc && !vs->first_error) {
		vs->first_error = rc;
		error_save(&vs->first, rc);
	}
	if (vs->fn)
		stop = vs->fn(&item, vs->payload);
	return stop;
}

int cfs_context_verify(struct cfs_store *st, struct cfs_keys *keys,
		       const char *id, cfs_verify_fn fn, void *payload)
{
	struct cfs_manifest *m = NULL;
	struct verify_state vs;
	struct tmpdir t;
	const char *key;
	const cJSON *enc, *e, *versions, *cps;
	char role[64];
	int rc;

	tmpdir_init(&t);
	memset(&vs, 0, sizeof(vs));
	rc = cfs_id_check(id);
	if (rc)
		return rc;
	rc = manifest_read(&m, NULL, st, id);
	if (rc)
		goto out;
	if (!cfs_manifest_is_tree(m)) {
		rc = cfs_error_set(CFS_EUNSUPPORTED,
				   "context %s is an ext4 context; contextfs "
				   "verifies tree contexts only",
				   id);
		goto out;
	}
	rc = tmpdir_open(&t, "contextfs-verify-");
	if (rc)
		goto out;
	vs.st = st;
	vs.keys = keys;
	vs.t = &t;
	vs.fn = fn;
	vs.payload = payload;

	/* The current tree first. */
	key = cfs_manifest_tree_key(m);
	enc = cfs_manifest_tree_encryption(m);
	if (key) {
		rc = verify_one(&vs, key, enc, "current");
		if (rc)
			goto out;
	}
	/* Retained generations, newest first. */
	versions = cfs_manifest_versions(m);
	for (int i = cJSON_GetArraySize(versions) - 1; i >= 0; i--) {
		uint64_t g;

		e = cJSON_GetArrayItem(versions, i);
		g = json_u64(e, "generation");
		if (cfs_manifest_generation_lookup(m, g, &key, &enc, NULL))
			continue;
		snprintf(role, sizeof(role), "generation:%" PRIu64, g);
		rc = verify_one(&vs, key, enc, role);
		if (rc)
			goto out;
	}
	/* Checkpoints whose metadata is known, newest first. */
	cps = cfs_manifest_checkpoints(m);
	e = cfs_manifest_latest_checkpoint(m);
	if (e && !cfs_manifest_checkpoint_lookup(m, json_u64(e, "generation"),
						 &key, &enc, NULL)) {
		snprintf(role, sizeof(role), "checkpoint:%" PRIu64,
			 json_u64(e, "generation"));
		rc = verify_one(&vs, key, enc, role);
		if (rc)
			goto out;
	}
	for (int i = cJSON_GetArraySize(cps) - 1; i >= 0; i--) {
		uint64_t n = json_u64(cJSON_GetArrayItem(cps, i), "generation");

		if (cfs_manifest_checkpoint_lookup(m, n, &key, &enc, NULL))
			continue;
		snprintf(role, sizeof(role), "checkpoint:%" PRIu64, n);
		rc = verify_one(&vs, key, enc, role);
		if (rc)
			goto out;
	}
	cfs_error_clear();
	rc = 0;
out:
	tmpdir_close(&t);
	keylist_free(&vs.seen);
	cfs_manifest_free(m);
	if (rc == 0 && vs.first_error)
		rc = error_restore(&vs.first);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Retention                                                           */
/* ------------------------------------------------------------------ */

static void strip_data(cJSON *summary)
{
	cJSON_DeleteItemFromObjectCaseSensitive(summary, "treeKey");
	cJSON_DeleteItemFromObjectCaseSensitive(summary, "treeEncryption");
	cJSON_DeleteItemFromObjectCaseSensitive(summary, "sizeBytes");
}

/*
 * Drops the data references of every summary older than the last keep
 * generations (generation <= current - keep), collecting their keys into
 * doomed. Returns the number of summaries changed.
 */
static int apply_retention(size_t *changed, struct keylist *doomed,
			   struct cfs_manifest *m, uint64_t keep)
{
	uint64_t cur = cfs_manifest_generation(m);
	const cJSON *e;
	int rc;

	*changed = 0;
	cJSON_ArrayForEach(e, cfs_manifest_versions(m))
	{
		uint64_t g = json_u64(e, "generation");
		const char *k = cfs_json_str(e, "treeKey");

		if (!k || g + keep > cur)
			continue;
		rc = keylist_add(doomed, k);
		if (rc)
			return rc;
		strip_data(mut(e));
		(*changed)++;
	}
	e = cfs_manifest_latest_version(m);
	if (e && cfs_json_str(e, "treeKey") &&
	    json_u64(e, "generation") + keep <= cur) {
		rc = keylist_add(doomed, cfs_json_str(e, "treeKey"));
		if (rc)
			return rc;
		strip_data(mut(e));
		(*changed)++;
	}
	return 0;
}

/*
 * Keeps from doomed only the replaceable keys that the (new) manifest no
 * longer references.
 */
static int filter_doomed(struct keylist *out, const struct keylist *doomed,
			 const struct cfs_manifest *m, const char *id)
{
	struct keylist refs = {NULL, 0, 0};
	int rc = referenced_keys(&refs, m);

	for (size_t i = 0; rc == 0 && i < doomed->n; i++) {
		const char *k = doomed->keys[i];

		if (!cfs_key_replaceable(id, k) || keylist_has(&refs, k))
			continue;
		rc = keylist_add(out, k);
	}
	keylist_free(&refs);
	return rc;
}

/* ------------------------------------------------------------------ */
/* GC                                                                  */
/* ------------------------------------------------------------------ */

struct gc_walk {
	const char *id;
	const char *cp_prefix;
	uint64_t generation;
	uint64_t checkpoint_generation;
	const struct keylist *refs;
	struct keylist *victims;
};

/* contexts/<id>/checkpoints/<digits>.tree.tar.zst.enc -> n */
static bool parse_checkpoint_key(const char *prefix, const char *key,
				 uint64_t *n)
{
	size_t plen = strlen(prefix);
	const char *p, *end;
	uint64_t v = 0;

	if (strncmp(key, prefix, plen) != 0)
		return false;
	p = key + plen;
	for (end = p; *end >= '0' && *end <= '9'; end++) {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*end - '0');
	}
	if (end - p < 8 || strcmp(end, ".tree.tar.zst.enc") != 0)
		return false;
	*n = v;
	return true;
}

static int gc_collect(const char *key, void *payload)
{
	struct gc_walk *w = payload;
	uint64_t g;

	if (keylist_has(w->refs, key))
		return 0;
	if (cfs_key_parse_generation(w->id, key, &g)) {
		/* Newer than the manifest: a commit may be in flight. */
		if (g > w->generation)
			return 0;
		return keylist_add(w->victims, key);
	}
	if (parse_checkpoint_key(w->cp_prefix, key, &g)) {
		/*
		 * Only leftovers of failed checkpoints (numbers the manifest
		 * never reached); older unreferenced checkpoints are kept:
		 * the reference can still name them.
		 */
		if (g > w->checkpoint_generation)
			return keylist_add(w->victims, key);
		return 0;
	}
	/* Anything else under tree/ or image/ is not ours to judge. */
	return 0;
}

static int put_manifest(struct cfs_store *st, const char *id,
			const struct cfs_manifest *m, const char *etag,
			bool create_only, const char *what)
{
	char key[CFS_KEY_MAX];
	struct cfs_cond cond = {NULL, false};
	char *body = NULL;
	int rc;

	rc = cfs_key_manifest(key, id);
	if (rc)
		return rc;
	body = cfs_manifest_print(m);
	if (!body)
		return CFS_ENOMEM;
	if (create_only)
		cond.if_none_match = true;
	else if (etag && etag[0])
		cond.if_match = etag;
	else if (etag)
		cfs_warn("the store returned no ETag for %s; writing it "
			 "without compare-and-swap",
			 key);
	rc = cfs_store_put_buf(st, key, body, strlen(body), &cond, NULL);
	free(body);
	if (rc == CFS_ECONFLICT && what)
		rc = cfs_error_set(CFS_ECONFLICT,
				   "context manifest for %s changed during %s "
				   "(concurrent writer or lock takeover); %s "
				   "aborted",
				   id, what, what);
	return rc;
}

int cfs_context_gc(size_t *deleted, struct cfs_store *st, const char *id,
		   const struct cfs_gc_opts *opts)
{
	struct cfs_gc_opts dflt;
	struct cfs_manifest *m = NULL;
	struct keylist doomed = {NULL, 0, 0}, victims = {NULL, 0, 0};
	struct keylist refs = {NULL, 0, 0};
	char etag[CFS_ETAG_MAX], prefix[CFS_KEY_MAX], cp_prefix[CFS_KEY_MAX];
	struct gc_walk w;
	size_t changed = 0, count = 0;
	uint64_t keep;
	int rc;

	if (deleted)
		*deleted = 0;
	if (!opts) {
		memset(&dflt, 0, sizeof(dflt));
		opts = &dflt;
	}
	keep = opts->keep > 0 ? (uint64_t)opts->keep
			      : CFS_CONTEXT_DEFAULT_RETENTION;
	rc = cfs_id_check(id);
	if (rc)
		return rc;
	if (opts->owner) {
		rc = cfs_lock_assert_owner(st, id, opts->owner);
		if (rc)
			goto out;
	}
	rc = manifest_read(&m, etag, st, id);
	if (rc)
		goto out;
	rc = apply_retention(&changed, &doomed, m, keep);
	if (rc)
		goto out;
	if (changed && !opts->dry_run) {
		if (opts->owner) {
			rc = cfs_lock_assert_owner(st, id, opts->owner);
			if (rc)
				goto out;
		}
		rc = cfs_manifest_set_updated_at(m, cfs_now_ms());
		if (rc)
			goto out;
		rc = put_manifest(st, id, m, etag, false, "gc");
		if (rc)
			goto out;
	}
	rc = referenced_keys(&refs, m);
	if (rc)
		goto out;
	memset(&w, 0, sizeof(w));
	w.id = id;
	w.generation = cfs_manifest_generation(m);
	w.checkpoint_generation = cfs_manifest_checkpoint_generation(m);
	w.refs = &refs;
	w.victims = &victims;
	rc = cfs_key_checkpoint_prefix(cp_prefix, id);
	if (rc)
		goto out;
	w.cp_prefix = cp_prefix;
	if ((rc = cfs_key_tree_prefix(prefix, id)) ||
	    (rc = cfs_store_list(st, prefix, gc_collect, &w)))
		goto out;
	if ((rc = cfs_key_image_prefix(prefix, id)) ||
	    (rc = cfs_store_list(st, prefix, gc_collect, &w)))
		goto out;
	if ((rc = cfs_store_list(st, cp_prefix, gc_collect, &w)))
		goto out;
	/* Legacy fixed keys, once nothing names them. */
	for (int i = 0; i < 2; i++) {
		struct cfs_objinfo info;

		rc = i == 0 ? cfs_key_legacy_tree(prefix, id)
			    : cfs_key_legacy_image(prefix, id);
		if (rc)
			goto out;
		if (keylist_has(&refs, prefix))
			continue;
		rc = cfs_store_head(st, prefix, &info);
		if (rc == CFS_ENOTFOUND) {
			rc = 0;
			continue;
		}
		if (rc)
			goto out;
		rc = keylist_add(&victims, prefix);
		if (rc)
			goto out;
	}
	/* The data retention just dropped (listed above unless the store
	 * cannot list). */
	for (size_t i = 0; i < doomed.n; i++) {
		if (!cfs_key_replaceable(id, doomed.keys[i]) ||
		    keylist_has(&refs, doomed.keys[i]))
			continue;
		rc = keylist_add(&victims, doomed.keys[i]);
		if (rc)
			goto out;
	}
	for (size_t i = 0; i < victims.n; i++) {
		struct cfs_gc_item item = {victims.keys[i], false, 0};

		if (!opts->dry_run) {
			item.error = cfs_store_delete(st, victims.keys[i]);
			item.deleted = item.error == 0;
			if (item.error)
				cfs_warn("gc: could not delete %s: %s",
					 victims.keys[i], cfs_error_last());
		}
		if (item.deleted || opts->dry_run)
			count++;
		if (opts->fn && opts->fn(&item, opts->payload))
			break;
	}
	cfs_error_clear();
	rc = 0;
out:
	if (deleted)
		*deleted = count;
	keylist_free(&doomed);
	keylist_free(&victims);
	keylist_free(&refs);
	cfs_manifest_free(m);
	return rc;
}

/* ------------------------------------------------------------------ */
/* List                                                                */
/* ------------------------------------------------------------------ */

struct list_walk {
	cfs_context_list_fn fn;
	void *payload;
};

static int list_one(const char *key, void *payload)
{
	struct list_walk *w = payload;
	static const char pre[] = "contexts/", suf[] = "/manifest.json";
	size_t len = strlen(key), plen = sizeof(pre) - 1,
	       slen = sizeof(suf) - 1;
	char id[CFS_ID_MAX + 1];

	if (len <= plen + slen || strncmp(key, pre, plen) != 0 ||
	    strcmp(key + len - slen, suf) != 0)
		return 0;
	len -= plen + slen;
	if (len > CFS_ID_MAX)
		return 0;
	memcpy(id, key + plen, len);
	id[len] = '\0';
	if (!cfs_id_valid(id))
		return 0; /* e.g. contexts/a/b/manifest.json */
	return w->fn(id, w->payload);
}

int cfs_context_list(struct cfs_store *st, cfs_context_list_fn fn,
		     void *payload)
{
	struct list_walk w = {fn, payload};

	return cfs_store_list(st, "contexts/", list_one, &w);
}

/* ------------------------------------------------------------------ */
/* Seed tree (§5.2)                                                    */
/* ------------------------------------------------------------------ */

static int write_new_file(int dirfd, const char *path, const char *data,
			  mode_t mode)
{
	int fd = openat(dirfd, path,
			O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			mode);
	int rc;

	if (fd < 0)
		return cfs_error_errno(errno, "create %s", path);
	rc = cfs_write_all(fd, data, strlen(data));
	if (close(fd) < 0 && rc == 0)
		rc = cfs_error_errno(errno, "close %s", path);
	return rc;
}

/* {path, size, mode, mtime (ms), sha256}, the host-side index entry. */
static cJSON *seed_index_entry(int rootfd, const char *path, const char *data)
{
	char mode[16], mtime[40], sha[65];
	struct stat sb;
	cJSON *e;
	int64_t ms;

	if (fstatat(rootfd, path, &sb, AT_SYMLINK_NOFOLLOW) < 0) {
		cfs_error_errno(errno, "stat %s", path);
		return NULL;
	}
	snprintf(mode, sizeof(mode), "0o%o", (unsigned)(sb.st_mode & 0777));
	ms = (int64_t)sb.st_mtim.tv_sec * 1000 + sb.st_mtim.tv_nsec / 1000000;
	cfs_iso8601_ms(mtime, sizeof(mtime), ms);
	cfs_sha256_hex(sha, data, strlen(data));
	e = cJSON_CreateObject();
	if (!e || cfs_json_set_str(e, "path", path) ||
	    cfs_json_set_int(e, "size", (int64_t)sb.st_size) ||
	    cfs_json_set_str(e, "mode", mode) ||
	    cfs_json_set_str(e, "mtime", mtime) ||
	    cfs_json_set_str(e, "sha256", sha)) {
		cJSON_Delete(e);
		cfs_error_set(CFS_ENOMEM, "out of memory");
		return NULL;
	}
	return e;
}

/*
 * prepareContextTree: the layout directories (0777), contextsdk.json,
 * memory/session.md, workspace/README.md and .contextsdk/index.json, in
 * the new directory "root" of t. *rootfd_out receives it.
 */
static int seed_tree(int *rootfd_out, struct tmpdir *t, const char *id)
{
	static const char *const dirs[] = {"workspace", "memory", "artifacts",
					   "logs",	"cache",  "config",
					   CFS_META_DIR};
	/* Sorted by path, as the index wants them. */
	struct {
		const char *path;
		char *data;
	} files[2] = {{"memory/session.md", NULL},
		      {"workspace/README.md", NULL}};
	cJSON *doc = NULL, *arr = NULL;
	char *json = NULL;
	int rootfd = -1;
	int rc;

	*rootfd_out = -1;
	if (mkdirat(t->fd, "root", 0700) < 0)
		return cfs_error_errno(errno, "create %s/root", t->path);
	rootfd = openat(t->fd, "root",
			O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (rootfd < 0)
		return cfs_error_errno(errno, "open %s/root", t->path);
	for (size_t i = 0; i < CFS_ARRAY_SIZE(dirs); i++) {
		if (mkdirat(rootfd, dirs[i], 0777) < 0 ||
		    fchmodat(rootfd, dirs[i], 0777, 0) < 0) {
			rc = cfs_error_errno(errno, "create %s", dirs[i]);
			goto out;
		}
	}

	/* contextsdk.json */
	doc = cJSON_CreateObject();
	arr = cJSON_CreateArray();
	if (!doc || !arr) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < CFS_LAYOUT_COUNT; i++) {
		cJSON *s = cJSON_CreateString(cfs_layout[i]);

		if (!s || !cJSON_AddItemToArray(arr, s)) {
			cJSON_Delete(s);
			rc = cfs_error_set(CFS_ENOMEM, "out of memory");
			goto out;
		}
	}
	if ((rc = cfs_json_set_str(doc, "contextId", id)) ||
	    (rc = cfs_json_set_str(doc, "createdBy", "contextSDK")) ||
	    (rc = cfs_json_set(doc, "layout", arr)))
		goto out;
	arr = NULL;
	if ((rc = cfs_json_set_str(doc, "format", "tree")))
		goto out;
	json = cfs_json_print(doc, CFS_JSON_PRETTY | CFS_JSON_NEWLINE);
	if (!json) {
		rc = CFS_ENOMEM;
		goto out;
	}
	rc = write_new_file(rootfd, CFS_CONTEXT_JSON, json, 0644);
	if (rc)
		goto out;
	free(json);
	json = NULL;
	cJSON_Delete(doc);
	doc = NULL;

	files[0].data = cfs_asprintf("context=%s\nstatus=initialized\n", id);
	files[1].data =
		cfs_strdup("Portable agent workspace mounted by contextSDK.\n");
	if (!files[0].data || !files[1].data) {
		rc = CFS_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < 2; i++) {
		rc = write_new_file(rootfd, files[i].path, files[i].data, 0666);
		if (rc)
			goto out;
	}

	/* .contextsdk/index.json: {"version": 1, "files": [...]} */
	doc = cJSON_CreateObject();
	arr = cJSON_CreateArray();
	if (!doc || !arr) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < 2; i++) {
		cJSON *e =
			seed_index_entry(rootfd, files[i].path, files[i].data);

		if (!e || !cJSON_AddItemToArray(arr, e)) {
			cJSON_Delete(e);
			rc = cfs_error_last_code() ? cfs_error_last_code()
						   : CFS_ENOMEM;
			goto out;
		}
	}
	if ((rc = cfs_json_set_int(doc, "version", 1)) ||
	    (rc = cfs_json_set(doc, "files", arr)))
		goto out;
	arr = NULL;
	json = cfs_json_print(doc, CFS_JSON_PRETTY | CFS_JSON_NEWLINE);
	if (!json) {
		rc = CFS_ENOMEM;
		goto out;
	}
	rc = write_new_file(rootfd, CFS_META_DIR "/index.json", json, 0644);
	if (rc)
		goto out;
	*rootfd_out = rootfd;
	rootfd = -1;
out:
	for (size_t i = 0; i < 2; i++)
		free(files[i].data);
	free(json);
	cJSON_Delete(doc);
	cJSON_Delete(arr);
	close_fd(&rootfd);
	return rc;
}

/* The generation-1 summary: every seed file added. */
static cJSON *create_record(const char *author, const char *message,
			    int64_t now_ms)
{
	static const struct cfs_version_change added[] = {
		{"memory/session.md", CFS_CHANGE_ADDED},
		{"workspace/README.md", CFS_CHANGE_ADDED}};
	char ts[32];

	cfs_version_timestamp(ts, now_ms / 1000);
	return cfs_version_record_new(1, -1, ts, author, message, added,
				      CFS_ARRAY_SIZE(added), NULL, 0);
}

struct prune_walk {
	const char *keep;
	struct keylist *victims;
};

static int prune_collect(const char *key, void *payload)
{
	struct prune_walk *w = payload;

	if (strcmp(key, w->keep) == 0)
		return 0;
	return keylist_add(w->victims, key);
}

/* force over an existing context: everything under tree/, image/ and
 * checkpoints/ but the new tree. Listing errors count as empty (§2.4). */
static void prune_after_force(struct cfs_store *st, const char *id,
			      const char *keep)
{
	struct keylist victims = {NULL, 0, 0};
	struct prune_walk w = {keep, &victims};
	char prefix[CFS_KEY_MAX];
	int (*builders[])(char *, const char *) = {cfs_key_tree_prefix,
						   cfs_key_image_prefix,
						   cfs_key_checkpoint_prefix};

	for (size_t i = 0; i < CFS_ARRAY_SIZE(builders); i++) {
		if (builders[i](prefix, id))
			continue;
		if (cfs_store_list(st, prefix, prune_collect, &w))
			cfs_warn("could not list %s: %s", prefix,
				 cfs_error_last());
	}
	delete_keys(st, &victims, "old");
	keylist_free(&victims);
	cfs_error_clear();
}

void cfs_commit_opts_init(struct cfs_commit_opts *opts)
{
	memset(opts, 0, sizeof(*opts));
	opts->kind = CFS_COMMIT_SAVE;
	opts->expect_generation = -1;
	opts->prev_index_fd = -1;
}

void cfs_commit_result_clear(struct cfs_commit_result *res)
{
	if (!res)
		return;
	cJSON_Delete(res->changed_paths);
	if (res->has_index_fd)
		close(res->index_fd);
	memset(res, 0, sizeof(*res));
}

int cfs_context_create(struct cfs_manifest **out, struct cfs_store *st,
		       struct cfs_keys *keys, const char *id,
		       const struct cfs_create_opts *opts)
{
	struct cfs_create_opts dflt;
	struct cfs_manifest *m = NULL;
	struct cfs_manifest_init init;
	struct cfs_policy policy = {NULL, 0, NULL, 0};
	struct keylist written = {NULL, 0, 0};
	struct saved_error err;
	struct tmpdir t;
	char mkey[CFS_KEY_MAX], tkey[CFS_KEY_MAX], ikey[CFS_KEY_MAX];
	char attempt[CFS_ATTEMPT_LEN + 1];
	struct cfs_objinfo info;
	struct progress_scope ps;
	cJSON *enc = NULL, *pjson = NULL, *record = NULL;
	uint64_t size = 0;
	bool existed = false;
	int rootfd = -1, bfd = -1;
	int64_t now;
	int rc;

	tmpdir_init(&t);
	if (out)
		*out = NULL;
	if (!opts) {
		memset(&dflt, 0, sizeof(dflt));
		opts = &dflt;
	}
	rc = cfs_id_check(id);
	if (rc)
		return rc;
	if ((rc = cfs_key_manifest(mkey, id)))
		return rc;
	rc = cfs_store_head(st, mkey, &info);
	if (rc == 0) {
		existed = true;
		if (!opts->force)
			return cfs_error_set(CFS_EEXISTS,
					     "context already exists: %s", id);
	} else if (rc != CFS_ENOTFOUND) {
		return rc;
	}
	cfs_error_clear();

	rc = opts->policy ? cfs_policy_from_json(&policy, opts->policy)
			  : cfs_policy_default(&policy);
	if (rc)
		goto out;
	pjson = cfs_policy_to_json(&policy);
	if (!pjson) {
		rc = CFS_ENOMEM;
		goto out;
	}
	cfs_attempt_new(attempt);
	if ((rc = cfs_key_tree(tkey, id, 1, attempt)) ||
	    (rc = cfs_key_image(ikey, id, 1, attempt)))
		goto out;
	rc = apply_scrypt(keys, &opts->scrypt, NULL);
	if (rc)
		goto out;
	rc = tmpdir_open(&t, "contextfs-create-");
	if (rc)
		goto out;
	rc = seed_tree(&rootfd, &t, id);
	if (rc)
		goto out;
	rc = pack_encrypt(&bfd, &enc, &size, &t, keys, rootfd, &policy, NULL, 0,
			  NULL, NULL);
	if (rc)
		goto out;
	/* The plaintext seed is no longer needed. */
	close_fd(&rootfd);
	cfs_rmtree_at(t.fd, "root");

	now = cfs_now_ms();
	memset(&init, 0, sizeof(init));
	init.id = id;
	init.format = "tree";
	init.size_bytes = size;
	init.tree_key = tkey;
	init.image_key = ikey;
	init.encryption = enc;
	init.tree_encryption = enc;
	init.policy = pjson;
	init.now_ms = now;
	rc = cfs_manifest_new_for_create(&m, &init);
	if (rc)
		goto out;
	record = create_record(
		opts->author ? opts->author : DEFAULT_AUTHOR,
		opts->message ? opts->message : DEFAULT_CREATE_MESSAGE, now);
	if (!record) {
		rc = CFS_ENOMEM;
		goto out;
	}
	rc = cfs_manifest_add_version(m, record, tkey, enc, size, NULL);
	if (rc)
		goto out;

	/* Data first ... */
	rc = keylist_add(&written, tkey);
	if (rc)
		goto out;
	progress_push(&ps, st, opts->progress, opts->progress_payload);
	rc = cfs_store_put_tmpfile(st, tkey, bfd, NULL, NULL);
	progress_pop(&ps);
	if (rc)
		goto out;
	/* ... then the manifest, create-only unless forced. */
	rc = put_manifest(st, id, m, NULL, !opts->force, NULL);
	if (rc == CFS_EEXISTS)
		rc = cfs_error_set(CFS_EEXISTS, "context already exists: %s",
				   id);
	if (rc)
		goto out;
	keylist_free(&written);
	if (existed)
		prune_after_force(st, id, tkey);
	if (out) {
		*out = m;
		m = NULL;
	}
out:
	if (rc) {
		error_save(&err, rc);
		delete_keys(st, &written, "rolled back");
		error_restore(&err);
	}
	keylist_free(&written);
	close_fd(&rootfd);
	close_fd(&bfd);
	tmpdir_close(&t);
	cfs_policy_free(&policy);
	cJSON_Delete(pjson);
	cJSON_Delete(enc);
	cJSON_Delete(record);
	cfs_manifest_free(m);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Commit                                                              */
/* ------------------------------------------------------------------ */

/*
 * Keeps the previous generation's data addressable: when the previous
 * treeKey is that generation's tree object and its summary (written by the
 * reference, or by an older contextfs) has no data members yet, they are
 * added, so retention rather than the next save decides when it goes.
 */
static int retain_previous(struct cfs_manifest *nm,
			   const struct cfs_manifest *old, const char *id)
{
	const char *prev = cfs_manifest_tree_key(old);
	const cJSON *enc = cfs_manifest_tree_encryption(old);
	uint64_t gen = cfs_manifest_generation(old), g;
	cJSON *targets[2];
	const cJSON *e;
	size_t nt = 0;

	if (!prev || !enc || !cfs_key_parse_generation(id, prev, &g) ||
	    g != gen)
		return 0;
	cJSON_ArrayForEach(e, cfs_manifest_versions(nm))
	{
		if (json_u64(e, "generation") == gen) {
			targets[nt++] = mut(e);
			break;
		}
	}
	e = cfs_manifest_latest_version(nm);
	if (e && json_u64(e, "generation") == gen)
		targets[nt++] = mut(e);
	for (size_t i = 0; i < nt; i++) {
		cJSON *encc;

		if (cfs_json_str(targets[i], "treeKey"))
			continue;
		encc = cJSON_Duplicate(enc, true);
		if (!encc || cfs_json_set_str(targets[i], "treeKey", prev) ||
		    cfs_json_set(targets[i], "treeEncryption", encc) ||
		    cfs_json_set_int(targets[i], "sizeBytes",
				     (int64_t)cfs_manifest_size_bytes(old)))
			return cfs_error_set(CFS_ENOMEM, "out of memory");
	}
	return 0;
}

/*
 * When treeKey currently names a checkpoint whose record lacks its
 * decryption metadata (a reference-written checkpoint), records it before
 * the pointer moves on, so the checkpoint stays decryptable.
 */
static int keep_checkpoint_metadata(struct cfs_manifest *nm,
				    const struct cfs_manifest *old)
{
	const char *prev = cfs_manifest_tree_key(old);
	const cJSON *enc = cfs_manifest_tree_encryption(old);
	const cJSON *lc = cfs_manifest_latest_checkpoint(old);
	cJSON *copy;
	int rc;

	if (!prev || !enc || !lc ||
	    cJSON_GetObjectItemCaseSensitive(lc, "encryption"))
		return 0;
	if (!cfs_json_str(lc, "treeKey") ||
	    strcmp(cfs_json_str(lc, "treeKey"), prev) != 0)
		return 0;
	copy = cJSON_Duplicate(lc, true);
	if (!copy ||
	    cfs_json_set(copy, "encryption", cJSON_Duplicate(enc, true))) {
		cJSON_Delete(copy);
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	}
	rc = cfs_manifest_add_checkpoint(nm, copy);
	cJSON_Delete(copy);
	return rc;
}

/* Summaries that fell off the 50-entry window take their data along. */
static int collect_dropped(struct keylist *doomed, const cJSON *dropped)
{
	const cJSON *e;
	int rc;

	cJSON_ArrayForEach(e, dropped)
	{
		const char *k = cfs_json_str(e, "treeKey");

		if (k && (rc = keylist_add(doomed, k)))
			return rc;
	}
	return 0;
}

/*
 * srcdir's .contextsdk/index.json (the file list of the tree it was
 * exported from), never following links and only if it is a regular
 * file; anything unreadable means "no previous index", as the reference.
 */
/* cfs_index_emit_fn: the walk's files into the record. */
static int record_file(void *payload, struct cfs_file_entry *e)
{
	return cfs_record_build_file(payload, e);
}

/*
 * The base of changedPaths: the previous generation's index from its
 * bundle (prev_fd, read from its offset on: the commit cache's file has a
 * header line before it), else the one srcdir carries from its export
 * (which is stale if srcdir was committed since), else none.
 */
static int record_prev(struct cfs_record_build *rb, int prev_fd, int srcdirfd)
{
	size_t len = 0;
	int fd, rc;

	if (prev_fd >= 0)
		return cfs_record_build_prev_fd(rb, prev_fd);
	fd = open_index_json(srcdirfd, &len);
	cfs_error_clear();
	if (fd < 0)
		return 0;
	rc = cfs_record_build_prev_fd(rb, fd);
	close(fd);
	return rc;
}

/*
 * Builds the version record of the next generation: *out gets it without
 * its file list and with at most CFS_MANIFEST_CHANGED_PATHS_MAX changes
 * (the manifest's summary), *fd_out a private temp file of t holding the
 * full record as the bundle carries it (*len_out bytes). Neither list is
 * ever whole in memory (core/record.h): peak memory does not grow with
 * the number of files.
 */
static int build_record(cJSON **out, int *fd_out, size_t *len_out,
			struct tmpdir *t, int srcdirfd,
			const struct cfs_policy *policy, uint64_t gen,
			uint64_t parent, const char *author,
			const char *message, int64_t now_ms, int prev_fd,
			const struct cfs_hash_hints *hints,
			const struct cfs_commit_opts *opts)
{
	const struct cfs_version_change *changes;
	struct cfs_record_build *rb = NULL;
	cJSON *bare = NULL;
	size_t nfirst = 0, ntotal = 0;
	char ts[32];
	int rc;

	*out = NULL;
	rc = cfs_record_build_new(&rb, t->fd, 0,
				  CFS_MANIFEST_CHANGED_PATHS_MAX);
	if (rc)
		return rc;
	if (opts->tail && opts->index) {
		/* the caller's listing of the roots */
		for (size_t i = 0; i < opts->nindex && !rc; i++)
			rc = cfs_record_build_file(rb, &opts->index[i]);
	} else {
		rc = cfs_index_walk(srcdirfd, policy, hints, record_file, rb);
	}
	if (rc) {
		cfs_error_prefix("index the files to save");
		goto out;
	}
	rc = record_prev(rb, prev_fd, srcdirfd);
	if (rc) {
		cfs_error_prefix("read the previous file list");
		goto out;
	}
	cfs_version_timestamp(ts, now_ms / 1000);
	bare = cfs_version_record_new((int64_t)gen, (int64_t)parent, ts, author,
				      message, NULL, 0, NULL, 0);
	if (!bare) {
		rc = CFS_ENOMEM;
		goto out;
	}
	rc = tmpdir_file(fd_out, t, "record.json");
	if (!rc)
		rc = cfs_record_build_finish(len_out, rb, *fd_out, bare);
	if (rc) {
		cfs_error_prefix("write the version record");
		goto out;
	}
	/* the summary: the first changes and how many there were */
	changes = cfs_record_build_changes(rb, &nfirst, &ntotal);
	*out = cfs_version_record_new((int64_t)gen, (int64_t)parent, ts, author,
				      message, changes, nfirst, NULL, 0);
	if (!*out || (ntotal > nfirst &&
		      !cJSON_AddNumberToObject(*out, "changedPathsTotal",
					       (double)ntotal))) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
out:
	if (rc == CFS_ENOSPC)
		rc = tmp_full(t);
	cJSON_Delete(bare);
	cfs_record_build_free(rb);
	return rc;
}

/*
 * The stat cache of a save with a commit cache and no hints of the
 * caller's (`commit --from DIR`, like git's index): a file whose device,
 * inode, size, mtime and ctime all match what the last save from this
 * machine recorded keeps its hash instead of being read again (a 1 GiB /
 * 20,000-file tree with one file changed: the index took 0.8 s of
 * hashing). Written next to the cached index, without the files that
 * changed within 2 s before the index began (a change inside the same
 * timestamp tick as the hashing would leave mtime and ctime alike), to a
 * temp file before the pack (its tables are freed then) and renamed into
 * place only once the commit landed.
 */
#define STAT_CACHE_SLACK_S 2
/* files a stat cache holds at most: 3/4 of 65,536 slots, so each of its
 * two tables stays at 5.8 MB during the index (freed before the pack);
 * files beyond it are read every time */
#define STAT_CACHE_MAX (3u << 14)

struct stat_cache {
	struct cfs_inode_hashes old, now;
	struct cfs_hash_hints hints;
	struct timespec began;
	char *path, *tmp;
	dev_t dev; /* the committed directory's filesystem */
	size_t kept, read; /* files that kept their hash / were read */
};

static bool sc_lookup(void *payload, const struct stat *st, char sha256[65])
{
	struct stat_cache *c = payload;
	const uint8_t *h = st->st_dev == c->dev
				   ? cfs_inode_hashes_find(&c->old, st)
				   : NULL;

	if (!h)
		return false;
	cfs_hex_encode(sha256, h, 32);
	(void)cfs_inode_hashes_put(&c->now, st, h);
	c->kept++;
	return true;
}

static void sc_learn(void *payload, const struct stat *st, const char *sha256)
{
	struct stat_cache *c = payload;
	uint8_t sha[32];
	size_t n = 0;

	c->read++;
	if (st->st_dev != c->dev)
		return; /* another filesystem mounted below: not cached */
	if (cfs_hex_decode(sha, sizeof(sha), sha256, &n) == 0 && n == 32)
		(void)cfs_inode_hashes_put(&c->now, st, sha);
}

/*
 * Loads the last save's cache; false when there is no cache dir or srcdir
 * is not on a local filesystem.
 */
static bool sc_open(struct stat_cache *c, const char *dir, struct cfs_store *st,
		    const char *id, int srcdirfd)
{
	struct stat sb;

	memset(c, 0, sizeof(*c));
	if (!dir || fstat(srcdirfd, &sb) != 0 || !cfs_fs_is_local(srcdirfd))
		return false;
	c->dev = sb.st_dev;
	c->path = cache_path_ext(dir, st, id, "stat");
	if (!c->path)
		return false;
	c->old.max = STAT_CACHE_MAX;
	c->now.max = STAT_CACHE_MAX;
	cfs_inode_hashes_load(&c->old, c->path);
	c->old.ctime_too = true;
	clock_gettime(CLOCK_REALTIME, &c->began);
	/* nothing to look up: the walk keeps its stat-free opens */
	c->hints = (struct cfs_hash_hints){c->old.used ? sc_lookup : NULL,
					   sc_learn, NULL, c};
	return true;
}

/* After the index: the new cache to a temp file, the tables freed. */
static void sc_stage(struct stat_cache *c, const char *dir)
{
	struct timespec before = c->began;
	char hex[9];

	before.tv_sec -= STAT_CACHE_SLACK_S;
	cfs_random_hex(hex, 4);
	c->tmp = cfs_asprintf("%s.tmp-%s", c->path, hex);
	if (c->tmp && (cfs_mkdir_p_at(AT_FDCWD, dir, 0700) != 0 ||
		       cfs_inode_hashes_save(&c->now, c->tmp, before) != 0)) {
		free(c->tmp);
		c->tmp = NULL;
	}
	cfs_error_clear(); /* a cache: a failure costs a re-hash */
	cfs_inode_hashes_free(&c->old);
	cfs_inode_hashes_free(&c->now);
}

/* landed: the staged cache replaces the last one; else it is dropped */
static void sc_close(struct stat_cache *c, bool landed)
{
	if (c->tmp && !(landed && rename(c->tmp, c->path) == 0))
		(void)unlink(c->tmp);
	cfs_inode_hashes_free(&c->old);
	cfs_inode_hashes_free(&c->now);
	free(c->tmp);
	free(c->path);
	memset(c, 0, sizeof(*c));
}

int cfs_context_commit(struct cfs_commit_result *res, struct cfs_store *st,
		       struct cfs_keys *keys, const char *id, int srcdirfd,
		       const struct cfs_commit_opts *opts)
{
	struct stat_cache sc = {0};
	const struct cfs_hash_hints *hints;
	bool sc_on = false;
	struct cfs_commit_opts dflt;
	struct cfs_manifest *old = NULL, *nm = NULL;
	struct cfs_policy policy = {NULL, 0, NULL, 0};
	struct keylist written = {NULL, 0, 0}, doomed = {NULL, 0, 0};
	struct keylist victims = {NULL, 0, 0};
	struct cfs_bundle_member extra[2];
	struct progress_scope ps = {NULL, NULL, NULL};
	struct saved_error err;
	struct uploader up = {0};
	bool ps_on = false;
	struct tmpdir t, bt;
	char etag[CFS_ETAG_MAX], key[CFS_KEY_MAX], vpath[64];
	char attempt[CFS_ATTEMPT_LEN + 1];
	cJSON *enc = NULL, *pjson = NULL, *record = NULL, *dropped = NULL;
	cJSON *cprec = NULL;
	int prev_fd = -1;
	int recfd = -1;
	size_t reclen = 0;
	const char *what;
	bool save;
	uint64_t gen, next = 0, cpn = 0, size = 0, keep;
	size_t nextra = 0;
	int bfd = -1;
	int64_t now, t0;
	int rc;

	tmpdir_init(&t);
	tmpdir_init(&bt);
	if (res)
		memset(res, 0, sizeof(*res));
	if (!opts) {
		cfs_commit_opts_init(&dflt);
		opts = &dflt;
	}
	save = opts->kind != CFS_COMMIT_CHECKPOINT;
	what = save ? "save" : "checkpoint";
	keep = opts->retention > 0 ? (uint64_t)opts->retention
				   : CFS_CONTEXT_DEFAULT_RETENTION;
	rc = cfs_id_check(id);
	if (rc)
		return rc;
	if (srcdirfd < 0)
		return cfs_error_set(CFS_EINVAL, "no source directory to %s",
				     what);

	/* 1. the lock must be ours before anything happens */
	if (opts->owner) {
		rc = cfs_lock_assert_owner(st, id, opts->owner);
		if (rc)
			goto out;
	}
	/* 2. manifest body + ETag of the same revision */
	rc = manifest_read(&old, etag, st, id);
	if (rc)
		goto out;
	gen = cfs_manifest_generation(old);
	if (opts->expect_generation >= 0 &&
	    (uint64_t)opts->expect_generation != gen) {
		rc = cfs_error_set(CFS_ECONFLICT,
				   "context %s is at generation %" PRIu64
				   ", not the expected %" PRId64 "; %s aborted",
				   id, gen, opts->expect_generation, what);
		goto out;
	}
	if (!cfs_manifest_is_tree(old)) {
		rc = cfs_error_set(CFS_EUNSUPPORTED,
				   "context %s is an ext4 context; contextfs "
				   "commits tree contexts only",
				   id);
		goto out;
	}
	rc = cfs_policy_from_json(&policy, opts->policy
						   ? opts->policy
						   : cfs_manifest_policy(old));
	if (rc)
		goto out;
	pjson = cfs_policy_to_json(&policy);
	if (!pjson) {
		rc = CFS_ENOMEM;
		goto out;
	}
	now = cfs_now_ms();

	/* 3. fresh keys */
	if (save) {
		next = gen + 1;
		cfs_attempt_new(attempt);
		rc = cfs_key_tree(key, id, next, attempt);
	} else {
		cpn = cfs_manifest_checkpoint_generation(old) + 1;
		rc = cfs_key_checkpoint(key, id, cpn);
	}
	if (rc)
		goto out;

	rc = tmpdir_open(&t,
			 save ? "contextfs-save-" : "contextfs-checkpoint-");
	if (rc)
		goto out;
	t0 = cfs_monotonic_ms();
	if (!opts->key_verified) {
		/*
		 * The index of the tree this machine wrote or read last, when
		 * it is still the current one, saves downloading the whole
		 * tree: only the key needs confirming (1 GiB tree: 2.0 s on a
		 * local store, 5 s over a 1 Gbit/s link to S3).
		 */
		prev_fd =
			opts->index_cache_dir
				? cache_load(opts->index_cache_dir, st, id, old)
				: -1;
		rc = prev_fd >= 0 ? key_confirm(st, keys, old) : -1;
		if (rc == CFS_EAUTH)
			goto out;
		if (rc == 0) {
			cfs_log_timing(id, "commit: key check (cached index)",
				       &t0);
		} else {
			close_fd(&prev_fd);
			cfs_error_clear();
			rc = check_key(&prev_fd, st, keys, old, &t);
			if (rc)
				goto out;
			cfs_log_timing(id, "commit: key check", &t0);
		}
	}

	/* the version record travels inside the bundle, not in srcdir */
	hints = opts->hash_hints;
	if (save && !hints && !(opts->tail && opts->index))
		sc_on = sc_open(&sc, opts->index_cache_dir, st, id, srcdirfd);
	if (sc_on)
		hints = &sc.hints;
	if (save && prev_fd < 0 && opts->prev_index_fd >= 0) {
		/* the caller's record, read from its start (again on a retry) */
		rc = rewind_fd(opts->prev_index_fd);
		if (rc)
			goto out;
	}
	if (save) {
		rc = build_record(
			&record, &recfd, &reclen, &t, srcdirfd, &policy, next,
			gen,
			opts->author  ? opts->author
			: opts->owner ? opts->owner
				      : DEFAULT_AUTHOR,
			opts->message ? opts->message : DEFAULT_SAVE_MESSAGE,
			now, prev_fd >= 0 ? prev_fd : opts->prev_index_fd,
			hints, opts);
		if (rc)
			goto out;
		if (sc_on)
			sc_stage(&sc, opts->index_cache_dir);
		/*
		 * Give the index's small allocations back before the
		 * compressor threads allocate theirs. The record kept for
		 * the manifest is small: its changedPaths stop at
		 * CFS_MANIFEST_CHANGED_PATHS_MAX (build_record).
		 */
		close_fd(&prev_fd);
		malloc_trim(0);
		if (sc_on) {
			char phase[128];

			snprintf(phase, sizeof(phase),
				 "commit: index and version record (stat "
				 "cache: %zu kept their hash, %zu read)",
				 sc.kept, sc.read);
			cfs_log_timing(id, phase, &t0);
		} else {
			cfs_log_timing(id, "commit: index and version record",
				       &t0);
		}
		snprintf(vpath, sizeof(vpath),
			 CFS_META_DIR "/versions/%" PRIu64 ".json", next);
		extra[0] =
			(struct cfs_bundle_member){CFS_META_DIR "/index.json",
						   NULL,
						   reclen,
						   0644,
						   now / 1000,
						   recfd};
		extra[1] = (struct cfs_bundle_member){vpath, NULL,	 reclen,
						      0644,  now / 1000, recfd};
		nextra = 2;
	}

	/* 4. pack -> encrypt -> private temp file */
	rc = apply_scrypt(keys, &opts->scrypt,
			  cfs_manifest_tree_encryption(old));
	if (rc)
		goto out;
	/*
	 * A store that uploads while the bundle grows gets it now: a save's
	 * fresh key is rolled back on any later failure like any written one
	 * (a checkpoint's create-only key only once its put succeeded).
	 */
	if (cfs_store_streams_put(st)) {
		up.st = st;
		up.key = key;
		up.cond = (struct cfs_cond){NULL, !save};
		if (save && (rc = keylist_add(&written, key)))
			goto out;
		/* the upload thread reads the store's progress callback:
		 * set before it starts, cleared after it ended */
		progress_push(&ps, st, opts->progress, opts->progress_payload);
		ps_on = true;
	}
	rc = pack_encrypt(&bfd, &enc, &size, bundle_tmpdir(&bt, &t, st), keys,
			  srcdirfd, &policy, extra, nextra, opts->tail,
			  up.st ? &up : NULL);
	if (rc) {
		if (rc == CFS_ENOTFOUND)
			cfs_error_prefix("nothing to %s", what);
		goto out;
	}
	cfs_log_timing(id,
		       opts->tail ? "commit: pack the head, encrypt and write "
				    "(roots as received)"
				  : "commit: pack, encrypt and write",
		       &t0);

	/* the new manifest (pure computation, before anything is written) */
	rc = cfs_manifest_dup(&nm, old);
	if (rc)
		goto out;
	if ((rc = retain_previous(nm, old, id)) ||
	    (rc = keep_checkpoint_metadata(nm, old)))
		goto out;
	if (save) {
		if ((rc = cfs_manifest_set_generation(nm, next)) ||
		    (rc = cfs_manifest_add_version(nm, record, key, enc, size,
						   &dropped)) ||
		    (rc = collect_dropped(&doomed, dropped)))
			goto out;
	} else {
		cprec = cfs_manifest_checkpoint_record_new(
			cpn, opts->reason ? opts->reason : DEFAULT_REASON, now,
			key, size, enc);
		if (!cprec) {
			rc = CFS_ENOMEM;
			goto out;
		}
		if ((rc = cfs_manifest_set_checkpoint_generation(nm, cpn)) ||
		    (rc = cfs_manifest_add_checkpoint(nm, cprec)))
			goto out;
	}
	if ((rc = cfs_manifest_set_format(nm, "tree")) ||
	    (rc = cfs_manifest_set_tree_key(nm, key)) ||
	    (rc = cfs_manifest_set_encryption(nm, enc)) ||
	    (rc = cfs_manifest_set_size_bytes(nm, size)) ||
	    (rc = cfs_manifest_set_policy(nm, pjson)) ||
	    (rc = cfs_manifest_set_updated_at(nm, now)))
		goto out;
	{
		size_t changed;
		const char *prev = cfs_manifest_tree_key(old);

		if (prev && (rc = keylist_add(&doomed, prev)))
			goto out;
		rc = apply_retention(&changed, &doomed, nm, keep);
		if (rc)
			goto out;
	}
	rc = filter_doomed(&victims, &doomed, nm, id);
	if (rc)
		goto out;

	/* 5. data first, under its fresh key */
	if (save && !keylist_has(&written, key)) {
		rc = keylist_add(&written, key);
		if (rc)
			goto out;
	}
	if (!ps_on)
		progress_push(&ps, st, opts->progress, opts->progress_payload);
	ps_on = true;
	if (up.st) {
		rc = uploader_finish(&up);
	} else {
		struct cfs_cond cond = {NULL, !save};

		rc = cfs_store_put_tmpfile(st, key, bfd, &cond, NULL);
	}
	progress_pop(&ps);
	ps_on = false;
	if (rc == CFS_EEXISTS && !save) {
		rc = cfs_error_set(CFS_ECONFLICT,
				   "checkpoint object %s already exists but "
				   "the manifest of %s does not name it (a "
				   "concurrent checkpoint, or a leftover of a "
				   "crashed one: run gc under the lock); "
				   "checkpoint aborted",
				   key, id);
		goto out;
	}
	if (!save && rc != CFS_EEXISTS) {
		int rc2 = keylist_add(&written, key);

		if (rc2 && !rc)
			rc = rc2;
	}
	if (rc)
		goto out;
	close_fd(&bfd);
	tmpdir_close(&bt);
	tmpdir_close(&t);
	cfs_log_timing(id, "commit: store the bundle", &t0);

	/* 7. the commit point: is the lock still ours? */
	if (opts->owner) {
		rc = cfs_lock_assert_owner(st, id, opts->owner);
		if (rc)
			goto out;
	}
	/* 8. compare-and-swap the manifest */
	rc = cfs_manifest_fit(nm, CFS_MANIFEST_MAX_BYTES);
	if (rc)
		goto out;
	rc = put_manifest(st, id, nm, etag, false, what);
	if (rc)
		goto out;
	keylist_free(&written);
	cfs_log_timing(id, "commit: lock check and manifest", &t0);

	/* 10. superseded objects beyond retention; failures only warn */
	{
		size_t n = delete_keys(st, &victims, "superseded");

		if (res)
			res->gc_deleted = n;
		cfs_error_clear();
	}
	if (res) {
		res->generation = cfs_manifest_generation(nm);
		res->checkpoint_generation =
			cfs_manifest_checkpoint_generation(nm);
		snprintf(res->tree_key, sizeof(res->tree_key), "%s", key);
		res->size_bytes = size;
		if (save) {
			const cJSON *cp = cJSON_GetObjectItemCaseSensitive(
				record, "changedPaths");
			const cJSON *total = cJSON_GetObjectItemCaseSensitive(
				record, "changedPathsTotal");

			res->changed_paths = cJSON_Duplicate(cp, true);
			res->changed_total =
				cJSON_IsNumber(total)
					? (uint64_t)total->valuedouble
					: (uint64_t)cJSON_GetArraySize(cp);
		}
	}
	if (save && recfd >= 0 && res && opts->want_index_fd) {
		/* the file outlives the temp directory's removal */
		res->index_fd = fcntl(recfd, F_DUPFD_CLOEXEC, 0);
		res->has_index_fd = res->index_fd >= 0;
	}
	if (save && recfd >= 0 && opts->index_cache_dir)
		cache_save(opts->index_cache_dir, st, id, key, enc, recfd,
			   reclen);
	if (sc_on)
		sc_close(&sc, true);
	sc_on = false;
out:
	if (sc_on)
		sc_close(&sc, false);
	if (up.started) {
		/* failed before step 5: the upload ends (or is aborted) first */
		error_save(&err, rc);
		if (uploader_finish(&up) == 0 && !save && rc)
			(void)keylist_add(&written, key);
		error_restore(&err);
	}
	if (ps_on)
		progress_pop(&ps);
	if (rc) {
		/* 9. roll back what this call wrote */
		error_save(&err, rc);
		delete_keys(st, &written, "rolled back");
		error_restore(&err);
	}
	keylist_free(&written);
	keylist_free(&doomed);
	keylist_free(&victims);
	close_fd(&bfd);
	tmpdir_close(&bt);
	tmpdir_close(&t);
	cfs_policy_free(&policy);
	cJSON_Delete(pjson);
	cJSON_Delete(enc);
	cJSON_Delete(record);
	cJSON_Delete(dropped);
	cJSON_Delete(cprec);
	close_fd(&prev_fd);
	close_fd(&recfd);
	cfs_manifest_free(nm);
	cfs_manifest_free(old);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Restore                                                             */
/* ------------------------------------------------------------------ */

int cfs_context_restore(struct cfs_commit_result *res, struct cfs_store *st,
			struct cfs_keys *keys, const char *refstr,
			const struct cfs_commit_opts *opts)
{
	struct cfs_commit_opts o;
	struct cfs_ref ref;
	struct tmpdir t;
	char *msg = NULL;
	int fd = -1;
	int rc;

	tmpdir_init(&t);
	if (res)
		memset(res, 0, sizeof(*res));
	if (opts)
		o = *opts;
	else
		cfs_commit_opts_init(&o);
	o.kind = CFS_COMMIT_SAVE;
	rc = cfs_ref_parse(&ref, refstr);
	if (rc)
		return rc;
	/* Refuse early, before the download, when the lock is not ours. */
	if (o.owner) {
		rc = cfs_lock_assert_owner(st, ref.id, o.owner);
		if (rc)
			return rc;
	}
	if (!o.message) {
		msg = cfs_asprintf("restore %s", refstr);
		if (!msg)
			return CFS_ENOMEM;
		o.message = msg;
	}
	rc = tmpdir_open(&t, "contextfs-restore-");
	if (rc)
		goto out;
	if (mkdirat(t.fd, "tree", 0700) < 0) {
		rc = cfs_error_errno(errno, "create %s/tree", t.path);
		goto out;
	}
	fd = openat(t.fd, "tree",
		    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		rc = cfs_error_errno(errno, "open %s/tree", t.path);
		goto out;
	}
	rc = cfs_context_export(NULL, st, keys, refstr, fd, o.progress,
				o.progress_payload);
	if (rc)
		goto out;
	rc = cfs_context_commit(res, st, keys, ref.id, fd, &o);
out:
	close_fd(&fd);
	tmpdir_close(&t);
	free(msg);
	return rc;
}
