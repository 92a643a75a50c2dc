/*
 * Version records: file index of a context tree, diff against the previous
 * index, and the record JSON (see version.h, REFERENCE.md §13.1).
 */
#include "core/version.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "core/json.h"
#include "core/log.h"
#include "core/util.h"

#define INDEX_MAX_DEPTH 256

const char *cfs_change_type_name(enum cfs_change_type type)
{
	switch (type) {
	case CFS_CHANGE_ADDED:
		return "added";
	case CFS_CHANGE_MODIFIED:
		return "modified";
	case CFS_CHANGE_REMOVED:
		return "removed";
	}
	return "unknown";
}

void cfs_index_free(struct cfs_file_entry *files, size_t n)
{
	if (!files)
		return;
	for (size_t i = 0; i < n; i++)
		free(files[i].path);
	free(files);
}

/*
 * Hashing every file is the index's cost (1 GiB: ~0.7 s of SHA-256 on one
 * core), so the walk hands open files to a few threads; at most
 * HASH_IN_FLIGHT are open at once. Results land in per-file jobs, which
 * the walk copies into the entries by index (the entries array may move
 * while it grows) every few batches and at the end. Files go over in batches of HASH_BATCH and a thread is woken
 * only when one waits: a handover per file cost four futex calls, a fifth
 * of the index's system time for 20,000 small files.
 */
#define HASH_THREADS_MAX 4
#define HASH_IN_FLIGHT 64
#define HASH_BATCH 16

struct hash_job {
	size_t idx;
	int fd;
	int rc;
	char *err; /* message of a failure */
	char sha256[65];
	struct stat st;
	struct hash_job *next;
};

struct hash_batch {
	struct hash_job *first, *last;
	size_t n;
	struct hash_batch *next;
};

struct hash_pool {
	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* hashers wait for a batch */
	pthread_cond_t room_cv; /* the walk waits for room */
	struct hash_batch *queue, *tail; /* protected by mu */
	struct hash_job *done; /* protected by mu */
	size_t in_flight; /* queued or hashing, protected by mu */
	int idle; /* hashers waiting, protected by mu */
	bool walk_waits; /* protected by mu */
	bool closing; /* protected by mu */
	struct hash_batch filling; /* the walk's own */
	int fail_rc; /* the walk's own: the first job that failed */
	char *fail_msg;
	pthread_t threads[HASH_THREADS_MAX];
	int nthreads;
};

/*
 * A job whose fd turns out not to be a regular file (a device mounted over
 * the name, which readdir still calls a file, or a name replaced since)
 * ends with an empty sha256: the entry is dropped, as the walk skips such
 * things when its lstat sees them.
 */
static void hash_one(struct hash_job *j)
{
	j->rc = cfs_sha256_fd_stat(j->sha256, j->fd, &j->st);
	if (j->rc)
		j->err = strdup(cfs_error_last());
	close(j->fd);
	j->fd = -1;
}

static void *hash_worker(void *arg)
{
	struct hash_pool *p = arg;

	pthread_mutex_lock(&p->mu);
	for (;;) {
		struct hash_batch *b = p->queue;

		if (!b) {
			if (p->closing)
				break;
			p->idle++;
			pthread_cond_wait(&p->work_cv, &p->mu);
			p->idle--;
			continue;
		}
		p->queue = b->next;
		if (!p->queue)
			p->tail = NULL;
		pthread_mutex_unlock(&p->mu);
		for (struct hash_job *j = b->first; j; j = j->next)
			hash_one(j);
		pthread_mutex_lock(&p->mu);
		b->last->next = p->done;
		p->done = b->first;
		p->in_flight -= b->n;
		if (p->walk_waits)
			pthread_cond_signal(&p->room_cv);
		free(b);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

static void hash_pool_start(struct hash_pool *p)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	int want = ncpu > HASH_THREADS_MAX ? HASH_THREADS_MAX : (int)ncpu;

	memset(p, 0, sizeof(*p));
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->work_cv, NULL);
	pthread_cond_init(&p->room_cv, NULL);
	for (int i = 0; i < want && want > 1; i++) {
		if (pthread_create(&p->threads[p->nthreads], NULL, hash_worker,
				   p) == 0)
			p->nthreads++;
	}
}

/* Queues the walk's batch; waits while too many files are open. */
static int hash_pool_flush(struct hash_pool *p)
{
	struct hash_batch *b;

	if (p->filling.n == 0)
		return 0;
	b = malloc(sizeof(*b));
	if (!b)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	*b = p->filling;
	b->next = NULL;
	memset(&p->filling, 0, sizeof(p->filling));
	pthread_mutex_lock(&p->mu);
	if (p->tail)
		p->tail->next = b;
	else
		p->queue = b;
	p->tail = b;
	p->in_flight += b->n;
	if (p->idle > 0)
		pthread_cond_signal(&p->work_cv);
	/* room for the next batch too: at most HASH_IN_FLIGHT files open */
	while (p->in_flight + HASH_BATCH > HASH_IN_FLIGHT) {
		p->walk_waits = true;
		pthread_cond_wait(&p->room_cv, &p->mu);
	}
	p->walk_waits = false;
	pthread_mutex_unlock(&p->mu);
	return 0;
}

/* Adds fd (owned from now on) for entry idx to the walk's batch. */
static int hash_pool_add(struct hash_pool *p, size_t idx, int fd)
{
	struct hash_job *j = calloc(1, sizeof(*j));

	if (!j) {
		close(fd);
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	}
	j->idx = idx;
	j->fd = fd;
	if (p->filling.last)
		p->filling.last->next = j;
	else
		p->filling.first = j;
	p->filling.last = j;
	if (++p->filling.n < HASH_BATCH)
		return 0;
	return hash_pool_flush(p);
}

/* An entry's size, permission bits and mtime from st. */
static void entry_stat(struct cfs_file_entry *e, const struct stat *st)
{
	e->size = (uint64_t)st->st_size;
	e->mode = st->st_mode & 07777;
	e->mtime = st->st_mtim.tv_sec;
}

/* entry_stat() and a copy of rel as the path. */
static int entry_set(struct cfs_file_entry *e, const char *rel,
		     const struct stat *st)
{
	e->path = cfs_strdup(rel);
	if (!e->path)
		return CFS_ENOMEM;
	entry_stat(e, st);
	return 0;
}

/*
 * The walk's list: a window of entries, v[0] being the base-th file
 * listed. An entry leaves it (to emit, in order) once it is complete:
 * pend[i] marks those whose hash is still being computed.
 */
struct index_builder {
	int rootfd;
	const struct cfs_policy *policy;
	struct cfs_file_entry *v;
	unsigned char *pend;
	size_t n, cap, base;
	struct hash_pool *pool; /* NULL: hash in the walking thread */
	const struct cfs_hash_hints *hints; /* NULL: none */
	cfs_index_emit_fn emit;
	void *payload;
};

/*
 * Copies finished jobs' results into the window and frees the jobs (the
 * walk's thread); the first failure is kept for hash_pool_finish().
 */
static void hash_apply(struct hash_pool *p, struct hash_job *j,
		       struct index_builder *b)
{
	const struct cfs_hash_hints *hints = b->hints;
	struct hash_job *next;

	for (; j; j = next) {
		struct cfs_file_entry *e = &b->v[j->idx - b->base];

		next = j->next;
		b->pend[j->idx - b->base] = 0;
		if (j->rc && !p->fail_rc) {
			p->fail_rc = j->rc;
			p->fail_msg =
				cfs_asprintf("cannot hash %s: %s", e->path,
					     j->err ? j->err : "");
		} else if (!j->rc && j->sha256[0]) {
			memcpy(e->sha256, j->sha256, sizeof(e->sha256));
			entry_stat(e, &j->st);
			if (hints && hints->learn)
				hints->learn(hints->payload, &j->st, j->sha256);
		}
		free(j->err);
		free(j);
	}
}

/*
 * Takes the results of the jobs finished so far while the walk goes on:
 * kept to the end, the finished jobs grew with the tree (200,000 files:
 * 50 MB of them at the commit's peak).
 */
static void hash_pool_reap(struct hash_pool *p, struct index_builder *b)
{
	struct hash_job *j;

	pthread_mutex_lock(&p->mu);
	j = p->done;
	p->done = NULL;
	pthread_mutex_unlock(&p->mu);
	hash_apply(p, j, b);
}

/*
 * Waits for every queued file, stops the threads and copies the results
 * into v; returns rc, else the first failure (its message set).
 */
static int hash_pool_finish(struct hash_pool *p, struct index_builder *b,
			    int rc)
{
	struct hash_job *j, *next;

	if (!rc)
		rc = hash_pool_flush(p);
	/* a batch never queued (a failed walk): its files were not hashed */
	for (j = p->filling.first; j; j = next) {
		next = j->next;
		close(j->fd);
		free(j);
	}
	pthread_mutex_lock(&p->mu);
	p->closing = true;
	pthread_cond_broadcast(&p->work_cv);
	pthread_mutex_unlock(&p->mu);
	for (int i = 0; i < p->nthreads; i++)
		pthread_join(p->threads[i], NULL);
	hash_apply(p, p->done, b);
	p->done = NULL;
	if (!rc && p->fail_rc)
		rc = cfs_error_set(p->fail_rc, "%s",
				   p->fail_msg ? p->fail_msg
					       : "cannot hash a file");
	free(p->fail_msg);
	p->fail_msg = NULL;
	pthread_cond_destroy(&p->work_cv);
	pthread_cond_destroy(&p->room_cv);
	pthread_mutex_destroy(&p->mu);
	return rc;
}

/*
 * Emits the complete entries at the head of the window, in order (those
 * the hashers found not to be files are dropped, see hash_one), and
 * slides it.
 */
static int ib_drain(struct index_builder *b)
{
	size_t k = 0;
	int rc = 0;

	while (k < b->n && !b->pend[k] && !rc) {
		struct cfs_file_entry *e = &b->v[k++];

		if (e->sha256[0])
			rc = b->emit(b->payload, e);
		free(e->path);
	}
	if (k == 0)
		return rc;
	memmove(b->v, b->v + k, (b->n - k) * sizeof(*b->v));
	memmove(b->pend, b->pend + k, b->n - k);
	b->n -= k;
	b->base += k;
	return rc;
}

/* Drops what is left in the window (a failed walk). */
static void ib_discard(struct index_builder *b)
{
	for (size_t i = 0; i < b->n; i++)
		free(b->v[i].path);
	free(b->v);
	free(b->pend);
}

/* Waits until a job is done; false when none is queued or hashing. */
static bool hash_pool_wait(struct hash_pool *p)
{
	bool any;

	pthread_mutex_lock(&p->mu);
	while (!p->done && p->in_flight > 0) {
		p->walk_waits = true;
		pthread_cond_wait(&p->room_cv, &p->mu);
	}
	p->walk_waits = false;
	any = p->done != NULL;
	pthread_mutex_unlock(&p->mu);
	return any;
}

/*
 * Room for one more entry at v[n], zeroed. A full window is drained
 * first; when its head is still being hashed (or waits in the batch the
 * walk has not queued yet: a save whose hints know all files but a few),
 * the batch is queued and the walk waits for the head, so the window
 * never grows past 4 * HASH_IN_FLIGHT entries with a pool.
 */
static int ib_reserve(struct index_builder *b)
{
	if (b->n == b->cap && b->cap >= 4 * HASH_IN_FLIGHT) {
		int rc = 0;

		if (b->pool) {
			hash_pool_reap(b->pool, b);
			if (b->n && b->pend[0])
				rc = hash_pool_flush(b->pool);
			while (!rc && b->n && b->pend[0] &&
			       hash_pool_wait(b->pool))
				hash_pool_reap(b->pool, b);
		}
		if (!rc)
			rc = ib_drain(b);
		if (rc)
			return rc;
	}
	if (b->n == b->cap) {
		size_t ncap = b->cap ? b->cap * 2 : 64, bytes;
		struct cfs_file_entry *nv;
		unsigned char *np;

		if (cfs_mul_overflows(ncap, sizeof(*nv), &bytes))
			return cfs_error_set(CFS_ENOMEM, "index too large");
		nv = realloc(b->v, bytes);
		if (!nv)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		b->v = nv;
		np = realloc(b->pend, ncap);
		if (!np)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		b->pend = np;
		b->cap = ncap;
	}
	memset(&b->v[b->n], 0, sizeof(b->v[b->n]));
	b->pend[b->n] = 0;
	return 0;
}

/*
 * A regular file the hints know by the walk's own stat: listed without
 * opening it (true), or false (nothing changed; open and ib_add).
 */
static bool ib_hinted(struct index_builder *b, const char *rel,
		      const struct stat *st, int *rc)
{
	struct cfs_file_entry *e;

	*rc = 0;
	if (!b->hints || !b->hints->lookup || !S_ISREG(st->st_mode))
		return false;
	*rc = ib_reserve(b);
	if (*rc)
		return true;
	e = &b->v[b->n];
	if (!b->hints->lookup(b->hints->payload, st, e->sha256))
		return false;
	*rc = entry_set(e, rel, st);
	if (!*rc)
		b->n++;
	return true;
}

/*
 * Lists the open file *fd (taken: *fd is -1 afterwards) as rel; ask: look
 * it up in the hints first (not when the walk already did, by its lstat).
 */
static int ib_add(struct index_builder *b, const char *rel, int *fd, bool ask)
{
	struct cfs_file_entry *e;
	struct stat st;
	int rc = ib_reserve(b);

	if (rc)
		return rc;
	e = &b->v[b->n];
	if (ask && b->hints && b->hints->lookup && fstat(*fd, &st) == 0 &&
	    S_ISREG(st.st_mode) &&
	    b->hints->lookup(b->hints->payload, &st, e->sha256)) {
		rc = entry_set(e, rel, &st);
		if (!rc)
			b->n++;
		return rc;
	}
	if (b->pool) {
		e->path = cfs_strdup(rel);
		if (!e->path)
			return CFS_ENOMEM;
		b->pend[b->n++] = 1;
		rc = hash_pool_add(b->pool, b->base + b->n - 1, *fd);
		*fd = -1;
		if (!rc && (b->base + b->n) % (4 * HASH_BATCH) == 0) {
			hash_pool_reap(b->pool, b);
			rc = ib_drain(b);
		}
		return rc;
	}
	/* stat after reading, as the reference does */
	rc = cfs_sha256_fd_stat(e->sha256, *fd, &st);
	if (rc) {
		cfs_error_prefix("cannot hash %s", rel);
		return rc;
	}
	if (!e->sha256[0])
		return 0; /* not a regular file after all (hash_one) */
	rc = entry_set(e, rel, &st);
	if (rc)
		return rc;
	b->n++;
	if (b->hints && b->hints->learn)
		b->hints->learn(b->hints->payload, &st, e->sha256);
	return 0;
}

/*
 * An entry readdir calls a regular file, without hints to look up by its
 * stat: opened without a stat first (one system call less per file; the
 * hasher checks what it opened). 1: listed or gone; 0: stat it after all
 * (it became something else, or the open failed otherwise).
 */
static int ib_add_direct(struct index_builder *b, int dfd, const char *name,
			 const char *rel, int *rc)
{
	int fd;

	*rc = 0;
	if (b->hints && b->hints->lookup)
		return 0;
	if (cfs_policy_excluded(b->policy, rel))
		return 1;
	fd = openat(dfd, name,
		    O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return errno == ENOENT ? 1 : 0; /* vanished: not listed */
	*rc = ib_add(b, rel, &fd, false);
	if (fd >= 0)
		close(fd);
	return 1;
}

/* Opens rel (relative to rootfd) following symlinks only beneath rootfd. */
static int open_beneath(int rootfd, const char *rel)
{
#ifdef SYS_openat2
	struct open_how how = {
		.flags = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
	};
	return (int)syscall(SYS_openat2, rootfd, rel, &how, sizeof(how));
#else
	(void)rootfd;
	(void)rel;
	errno = ENOSYS;
	return -1;
#endif
}

static void names_free(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static int ib_walk(struct index_builder *b, int dfd, struct cfs_buf *rel,
		   int depth)
{
	struct cfs_names names = {0};
	int rc;

	if (depth > INDEX_MAX_DEPTH)
		return cfs_error_set(CFS_EUNSUPPORTED,
				     "%s nests deeper than %d directories",
				     rel->ptr, INDEX_MAX_DEPTH);
	rc = cfs_names_read_dir(&names, dfd, rel->ptr);
	if (rc) {
		cfs_names_free(&names);
		return rc;
	}
	cfs_names_sort_unique(&names);
	for (size_t i = 0; i < names.n && rc == 0; i++) {
		size_t keep = rel->len;
		struct stat st;
		int fd = -1;

		rc = cfs_buf_puts(rel, "/");
		if (!rc)
			rc = cfs_buf_puts(rel, names.v[i]);
		if (rc)
			break;
		if (names.type[i] == DT_REG &&
		    ib_add_direct(b, dfd, names.v[i], rel->ptr, &rc)) {
			/* listed, gone or failed */
		} else if (fstatat(dfd, names.v[i], &st, AT_SYMLINK_NOFOLLOW) <
			   0) {
			if (errno != ENOENT) /* vanished: not listed */
				rc = cfs_error_errno(errno, "cannot stat %s",
						     rel->ptr);
		} else if (S_ISDIR(st.st_mode)) {
			if (!cfs_policy_prunes(b->policy, rel->ptr)) {
				fd = openat(dfd, names.v[i],
					    O_RDONLY | O_DIRECTORY |
						    O_NOFOLLOW | O_CLOEXEC);
				if (fd < 0)
					rc = cfs_error_errno(errno,
							     "cannot open %s",
							     rel->ptr);
				else
					rc = ib_walk(b, fd, rel, depth + 1);
			}
		} else if (S_ISREG(st.st_mode)) {
			if (!cfs_policy_excluded(b->policy, rel->ptr) &&
			    !ib_hinted(b, rel->ptr, &st, &rc)) {
				fd = openat(dfd, names.v[i],
					    O_RDONLY | O_NOFOLLOW | O_NONBLOCK |
						    O_NOCTTY | O_CLOEXEC);
				if (fd < 0)
					rc = cfs_error_errno(errno,
							     "cannot open %s",
							     rel->ptr);
				else
					rc = ib_add(b, rel->ptr, &fd, false);
			}
		} else if (S_ISLNK(st.st_mode)) {
			struct stat tst;
			if (!cfs_policy_excluded(b->policy, rel->ptr)) {
				fd = open_beneath(b->rootfd, rel->ptr);
				if (fd < 0)
					cfs_debug("index: skipping link %s: %s",
						  rel->ptr, strerror(errno));
				else if (fstat(fd, &tst) == 0 &&
					 S_ISREG(tst.st_mode))
					rc = ib_add(b, rel->ptr, &fd, true);
			}
		}
		if (fd >= 0)
			close(fd);
		rel->len = keep;
		rel->ptr[keep] = '\0';
	}
	cfs_names_free(&names);
	return rc;
}

int cfs_index_build(struct cfs_file_entry **out, size_t *nout, int rootfd,
		    const struct cfs_policy *policy)
{
	return cfs_index_build_hinted(out, nout, rootfd, policy, NULL);
}

/* cfs_index_build's list: emit appends, taking the path. */
struct index_list {
	struct cfs_file_entry *v;
	size_t n, cap;
};

static int list_add(void *payload, struct cfs_file_entry *e)
{
	struct index_list *l = payload;

	if (l->n == l->cap) {
		size_t nc = l->cap ? l->cap * 2 : 64, bytes;
		struct cfs_file_entry *nv;

		if (cfs_mul_overflows(nc, sizeof(*nv), &bytes))
			return cfs_error_set(CFS_ENOMEM, "index too large");
		nv = realloc(l->v, bytes);
		if (!nv)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		l->v = nv;
		l->cap = nc;
	}
	l->v[l->n++] = *e;
	e->path = NULL;
	return 0;
}

int cfs_index_build_hinted(struct cfs_file_entry **out, size_t *nout,
			   int rootfd, const struct cfs_policy *policy,
			   const struct cfs_hash_hints *hints)
{
	struct index_list l = {NULL, 0, 0};
	int rc = cfs_index_walk(rootfd, policy, hints, list_add, &l);

	if (rc) {
		cfs_index_free(l.v, l.n);
		return rc;
	}
	*out = l.v;
	*nout = l.n;
	return 0;
}

int cfs_index_walk(int rootfd, const struct cfs_policy *policy,
		   const struct cfs_hash_hints *hints, cfs_index_emit_fn emit,
		   void *payload)
{
	struct hash_pool pool;
	struct index_builder b = {
		.rootfd = rootfd,
		.policy = policy,
		.hints = hints,
		.emit = emit,
		.payload = payload,
	};
	struct cfs_buf rel = CFS_BUF_INIT;
	char **seen = cfs_calloc(policy->nroots + 1, sizeof(*seen));
	size_t nseen = 0;
	int rc = 0;

	if (!seen)
		return CFS_ENOMEM;
	hash_pool_start(&pool);
	if (pool.nthreads > 0)
		b.pool = &pool;
	for (size_t i = 0; i < policy->nroots && rc == 0; i++) {
		const char *root = policy->roots[i];
		char *copy = NULL, *save = NULL, *tok;
		int fd = -1;
		bool seen_before = false;

		if (!root || !root[0])
			continue;
		if (cfs_path_unsafe(root, strlen(root))) {
			rc = cfs_error_set(CFS_EUNSAFE,
					   "unsafe persistence policy root: %s",
					   root);
			break;
		}
		/* normalized root name: components without "" and "." */
		copy = cfs_strdup(root);
		if (!copy) {
			rc = CFS_ENOMEM;
			break;
		}
		rel.len = 0;
		if (rel.ptr)
			rel.ptr[0] = '\0';
		fd = dup(rootfd);
		for (tok = strtok_r(copy, "/", &save); tok && fd >= 0 && !rc;
		     tok = strtok_r(NULL, "/", &save)) {
			int next;
			if (strcmp(tok, ".") == 0)
				continue;
			if (rel.len)
				rc = cfs_buf_puts(&rel, "/");
			if (!rc)
				rc = cfs_buf_puts(&rel, tok);
			next = openat(fd, tok,
				      O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					      O_CLOEXEC);
			close(fd);
			fd = next;
		}
		free(copy);
		for (size_t j = 0; j < nseen && rel.len; j++)
			if (strcmp(seen[j], rel.ptr) == 0)
				seen_before = true;
		if (!rc && fd >= 0 && rel.len && !seen_before) {
			seen[nseen] = cfs_strdup(rel.ptr);
			if (!seen[nseen])
				rc = CFS_ENOMEM;
			else
				nseen++;
			if (!rc)
				rc = ib_walk(&b, fd, &rel, 0);
		}
		if (fd >= 0)
			close(fd);
	}
	names_free(seen, nseen);
	cfs_buf_free(&rel);
	rc = hash_pool_finish(&pool, &b, rc);
	if (!rc)
		rc = ib_drain(&b);
	ib_discard(&b);
	if (hints && hints->done)
		hints->done(hints->payload, rc == 0);
	return rc;
}

/* Fills e from one index entry; false (e untouched) if it has no path. */
static bool entry_from_json(struct cfs_file_entry *e, const cJSON *it, int *rc)
{
	const char *path = cfs_json_str(it, "path");
	const char *sha = cfs_json_str(it, "sha256");
	const char *mode = cfs_json_str(it, "mode");
	const char *mtime = cfs_json_str(it, "mtime");
	int64_t size;

	if (!path)
		return false;
	memset(e, 0, sizeof(*e));
	e->path = cfs_strdup(path);
	if (!e->path) {
		*rc = CFS_ENOMEM;
		return false;
	}
	if (sha && strlen(sha) < sizeof(e->sha256))
		memcpy(e->sha256, sha, strlen(sha) + 1);
	if (cfs_json_int(it, "size", &size) && size >= 0)
		e->size = (uint64_t)size;
	if (mode && strncmp(mode, "0o", 2) == 0)
		e->mode = (unsigned)strtoul(mode + 2, NULL, 8) & 07777;
	if (mtime) {
		int64_t ms = cfs_iso8601_parse_ms(mtime);
		e->mtime = ms >= 0 ? ms / 1000 : 0;
	}
	return true;
}

static const char *js_ws(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* Past the JSON value at p (syntax only loosely checked), or NULL. */
static const char *js_skip(const char *p, const char *end)
{
	size_t depth = 0;

	p = js_ws(p, end);
	do {
		if (p >= end)
			return NULL;
		if (*p == '"') {
			for (p++; p < end && *p != '"'; p++) {
				if (*p == '\\')
					p++;
			}
			if (p >= end)
				return NULL;
			p++;
		} else if (*p == '{' || *p == '[') {
			if (++depth > 512)
				return NULL;
			p++;
		} else if (*p == '}' || *p == ']') {
			if (depth == 0)
				return NULL;
			depth--;
			p++;
		} else if (depth > 0 &&
			   (*p == ',' || *p == ':' || *p == ' ' || *p == '\t' ||
			    *p == '\n' || *p == '\r')) {
			p++;
		} else {
			const char *q = p;

			while (p < end && !strchr(",:]} \t\n\r\"{[", *p))
				p++;
			if (p == q)
				return NULL;
		}
	} while (depth > 0);
	return p;
}

/*
 * Reads the "files" list of an index.json / version record. The document
 * is walked, not parsed whole: each file entry is parsed on its own, so
 * memory stays proportional to the result, not to a cJSON tree of the
 * whole list (which costs ~10x the text).
 */
int cfs_index_from_json(struct cfs_file_entry **out, size_t *nout,
			const char *buf, size_t len)
{
	const char *p, *end = buf + len;
	struct cfs_file_entry *v = NULL;
	size_t n = 0, cap = 0;
	int rc = 0;

	*out = NULL;
	*nout = 0;
	if (!buf || len == 0 || len > CFS_INDEX_JSON_MAX)
		return 0;
	p = js_ws(buf, end);
	if (p >= end || *p != '{')
		return 0;
	p = js_ws(p + 1, end);
	while (p < end && *p != '}') {
		const char *key = p, *kend;
		bool files;

		if (*p != '"')
			goto malformed;
		kend = js_skip(p, end);
		if (!kend)
			goto malformed;
		files = kend - key == 7 && memcmp(key, "\"files\"", 7) == 0;
		p = js_ws(kend, end);
		if (p >= end || *p != ':')
			goto malformed;
		p = js_ws(p + 1, end);
		if (files && p < end && *p == '[') {
			p = js_ws(p + 1, end);
			while (p < end && *p != ']') {
				const char *e = js_skip(p, end);
				cJSON *it;

				if (!e)
					goto malformed;
				it = cJSON_ParseWithLength(p, (size_t)(e - p));
				if (it && cJSON_IsObject(it)) {
					if (n == cap) {
						size_t nc = cap ? cap * 2 : 256;
						struct cfs_file_entry *nv =
							realloc(v,
								nc * sizeof(*v));
						if (!nv) {
							cJSON_Delete(it);
							rc = cfs_error_set(
								CFS_ENOMEM,
								"out of memory");
							goto fail;
						}
						v = nv;
						cap = nc;
					}
					if (entry_from_json(&v[n], it, &rc))
						n++;
				}
				cJSON_Delete(it);
				if (rc)
					goto fail;
				p = js_ws(e, end);
				if (p < end && *p == ',')
					p = js_ws(p + 1, end);
			}
			if (p >= end)
				goto malformed;
			p++;
		} else {
			p = js_skip(p, end);
			if (!p)
				goto malformed;
		}
		p = js_ws(p, end);
		if (p < end && *p == ',')
			p = js_ws(p + 1, end);
	}
	*out = v;
	*nout = n;
	return 0;
malformed:
	/* as the reference: an unreadable previous index means "none" */
	cfs_index_free(v, n);
	return 0;
fail:
	cfs_index_free(v, n);
	return rc;
}

struct keyed {
	const struct cfs_file_entry *e;
	size_t idx;
};

static int keyed_cmp(const void *a, const void *b)
{
	const struct keyed *x = a, *y = b;
	int c = strcmp(x->e->path, y->e->path);

	if (c)
		return c;
	return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* Sorted by path; for duplicate paths only the last one stays (dict). */
static int sorted_unique(struct keyed **out, size_t *nout,
			 const struct cfs_file_entry *v, size_t n)
{
	struct keyed *k = cfs_calloc(n ? n : 1, sizeof(*k));
	size_t w = 0;

	if (!k)
		return CFS_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		k[i].e = &v[i];
		k[i].idx = i;
	}
	if (n > 1)
		qsort(k, n, sizeof(*k), keyed_cmp);
	for (size_t i = 0; i < n; i++) {
		if (w > 0 && strcmp(k[w - 1].e->path, k[i].e->path) == 0)
			w--;
		k[w++] = k[i];
	}
	*out = k;
	*nout = w;
	return 0;
}

static const struct cfs_file_entry *find(const struct keyed *k, size_t n,
					 const char *path)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(k[mid].e->path, path);
		if (c == 0)
			return k[mid].e;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

int cfs_version_diff(struct cfs_version_change **out, size_t *nout,
		     const struct cfs_file_entry *prev, size_t nprev,
		     const struct cfs_file_entry *cur, size_t ncur)
{
	struct keyed *p = NULL, *c = NULL;
	struct cfs_version_change *ch = NULL;
	size_t np = 0, nc = 0, n = 0, total;
	int rc;

	*out = NULL;
	*nout = 0;
	rc = sorted_unique(&p, &np, prev, nprev);
	if (!rc)
		rc = sorted_unique(&c, &nc, cur, ncur);
	if (rc)
		goto out;
	if (cfs_add_overflows(np, nc, &total)) {
		rc = cfs_error_set(CFS_ENOMEM, "index too large");
		goto out;
	}
	ch = cfs_calloc(total ? total : 1, sizeof(*ch));
	if (!ch) {
		rc = CFS_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < nc; i++) {
		const struct cfs_file_entry *before = find(p, np, c[i].e->path);
		if (!before) {
			ch[n].path = c[i].e->path;
			ch[n++].type = CFS_CHANGE_ADDED;
		} else if (!before->sha256[0] ||
			   strcmp(before->sha256, c[i].e->sha256) != 0) {
			ch[n].path = c[i].e->path;
			ch[n++].type = CFS_CHANGE_MODIFIED;
		}
	}
	for (size_t i = 0; i < np; i++) {
		if (!find(c, nc, p[i].e->path)) {
			ch[n].path = p[i].e->path;
			ch[n++].type = CFS_CHANGE_REMOVED;
		}
	}
	if (n) {
		*out = ch;
		*nout = n;
		ch = NULL;
	}
out:
	free(ch);
	free(p);
	free(c);
	return rc;
}

void cfs_version_timestamp(char out[32], int64_t epoch_s)
{
	struct tm tm;
	time_t t = (time_t)epoch_s;

	if (!gmtime_r(&t, &tm) ||
	    strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
		snprintf(out, 32, "1970-01-01T00:00:00Z");
}

static bool add_str(cJSON *o, const char *k, const char *v)
{
	return cJSON_AddStringToObject(o, k, v ? v : "") != NULL;
}

static bool add_num(cJSON *o, const char *k, double v)
{
	return cJSON_AddNumberToObject(o, k, v) != NULL;
}

cJSON *cfs_version_changes_to_json(const struct cfs_version_change *c, size_t n)
{
	cJSON *arr = cJSON_CreateArray();

	if (!arr)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(arr, o)) {
			cJSON_Delete(o);
			goto fail;
		}
		if (!add_str(o, "path", c[i].path) ||
		    !add_str(o, "type", cfs_change_type_name(c[i].type)))
			goto fail;
	}
	return arr;
fail:
	cJSON_Delete(arr);
	cfs_error_set(CFS_ENOMEM, "out of memory building version JSON");
	return NULL;
}

cJSON *cfs_version_files_to_json(const struct cfs_file_entry *files, size_t n)
{
	cJSON *arr = cJSON_CreateArray();

	if (!arr)
		goto fail;
	for (size_t i = 0; i < n; i++) {
		char mode[16], mtime[32];
		cJSON *o = cJSON_CreateObject();
		if (!o || !cJSON_AddItemToArray(arr, o)) {
			cJSON_Delete(o);
			goto fail;
		}
		/* python oct(): "0o644", "0o0" */
		snprintf(mode, sizeof(mode), "0o%o", files[i].mode & 07777);
		cfs_version_timestamp(mtime, files[i].mtime);
		/* keys in sorted order, as the reference's JSON round trip */
		if (!add_str(o, "mode", mode) || !add_str(o, "mtime", mtime) ||
		    !add_str(o, "path", files[i].path) ||
		    !add_str(o, "sha256", files[i].sha256) ||
		    !add_num(o, "size", (double)files[i].size))
			goto fail;
	}
	return arr;
fail:
	cJSON_Delete(arr);
	cfs_error_set(CFS_ENOMEM, "out of memory building version JSON");
	return NULL;
}

cJSON *cfs_version_record_new(int64_t generation, int64_t parent,
			      const char *timestamp, const char *author,
			      const char *message,
			      const struct cfs_version_change *changes,
			      size_t nchanges,
			      const struct cfs_file_entry *files, size_t nfiles)
{
	cJSON *rec = cJSON_CreateObject();
	cJSON *ch = NULL, *fl = NULL;
	char now[32];

	if (!rec)
		goto fail;
	if (!timestamp) {
		cfs_version_timestamp(now, cfs_now_ms() / 1000);
		timestamp = now;
	}
	ch = cfs_version_changes_to_json(changes, nchanges);
	if (!ch)
		goto fail;
	fl = cfs_version_files_to_json(files, nfiles);
	if (!fl)
		goto fail;
	/* members in sorted order (the reference's records are sorted) */
	if (!add_str(rec, "author", author))
		goto fail;
	if (!cJSON_AddItemToObject(rec, "changedPaths", ch))
		goto fail;
	ch = NULL;
	if (!cJSON_AddItemToObject(rec, "files", fl))
		goto fail;
	fl = NULL;
	if (!add_num(rec, "generation", (double)generation) ||
	    !add_str(rec, "message", message))
		goto fail;
	if (parent >= 0 ? !add_num(rec, "parentGeneration", (double)parent)
			: !cJSON_AddNullToObject(rec, "parentGeneration"))
		goto fail;
	if (!add_str(rec, "timestamp", timestamp) ||
	    !add_num(rec, "version", 1))
		goto fail;
	return rec;
fail:
	cJSON_Delete(ch);
	cJSON_Delete(fl);
	cJSON_Delete(rec);
	cfs_error_set(CFS_ENOMEM, "out of memory building version record");
	return NULL;
}

char *cfs_version_record_print(const cJSON *record)
{
	return cfs_json_print(record, CFS_JSON_PRETTY | CFS_JSON_SORT_KEYS |
					      CFS_JSON_NEWLINE |
					      CFS_JSON_ASCII);
}

/* ------------------------------------------------------------------ */
/* Hashes by inode */

struct cfs_inode_hash {
	dev_t dev;
	ino_t ino;
	off_t size;
	struct timespec mtime;
	uint8_t sha[32];
	bool used;
	struct timespec ctime;
};

static size_t ih_slot_of(const struct cfs_inode_hashes *h, dev_t dev, ino_t ino)
{
	uint64_t k = ((uint64_t)ino * 0x9e3779b97f4a7c15ULL) ^ (uint64_t)dev;
	size_t i = (size_t)(k ^ (k >> 29)) & (h->cap - 1);

	while (h->v[i].used && (h->v[i].ino != ino || h->v[i].dev != dev))
		i = (i + 1) & (h->cap - 1);
	return i;
}

/* Room for one more entry (at most 3/4 of the slots in use; ih_set
 * enforces the maximum). */
static bool ih_reserve(struct cfs_inode_hashes *h)
{
	struct cfs_inode_hash *nv;
	size_t ncap;

	/* at most 3/4 full: 20,000 files fit 32,768 slots (2.9 MB) */
	if ((h->used + 1) * 4 <= h->cap * 3)
		return true;
	ncap = h->cap ? h->cap * 2 : 1024;
	if (!(nv = calloc(ncap, sizeof(*nv))))
		return false;
	for (size_t i = 0; i < h->cap; i++) {
		if (h->v[i].used) {
			struct cfs_inode_hashes n = {nv, ncap,	0,
						     0,	 false, false};

			nv[ih_slot_of(&n, h->v[i].dev, h->v[i].ino)] = h->v[i];
		}
	}
	free(h->v);
	h->v = nv;
	h->cap = ncap;
	return true;
}

static bool ih_set(struct cfs_inode_hashes *h, const struct cfs_inode_hash *x)
{
	size_t max = h->max ? h->max : CFS_INODE_HASHES_MAX;
	struct cfs_inode_hash *e;

	if (h->cap) {
		e = &h->v[ih_slot_of(h, x->dev, x->ino)];
		if (e->used) { /* known: updated in place */
			*e = *x;
			e->used = true;
			return true;
		}
	}
	if (h->used >= max || !ih_reserve(h)) {
		h->full = true;
		return false;
	}
	e = &h->v[ih_slot_of(h, x->dev, x->ino)];
	if (!e->used)
		h->used++;
	*e = *x;
	e->used = true;
	return true;
}

bool cfs_inode_hashes_put(struct cfs_inode_hashes *h, const struct stat *st,
			  const uint8_t *sha)
{
	struct cfs_inode_hash x = {st->st_dev,	st->st_ino, st->st_size,
				   st->st_mtim, {0},	    true,
				   st->st_ctim};

	if (sha)
		memcpy(x.sha, sha, sizeof(x.sha));
	return ih_set(h, &x);
}

static const struct cfs_inode_hash *ih_get(const struct cfs_inode_hashes *h,
					   dev_t dev, ino_t ino)
{
	const struct cfs_inode_hash *e;

	if (!h->cap)
		return NULL;
	e = &h->v[ih_slot_of(h, dev, ino)];
	return e->used ? e : NULL;
}

const uint8_t *cfs_inode_hashes_find(const struct cfs_inode_hashes *h,
				     const struct stat *st)
{
	const struct cfs_inode_hash *e = ih_get(h, st->st_dev, st->st_ino);

	if (!e || e->size != st->st_size ||
	    e->mtime.tv_sec != st->st_mtim.tv_sec ||
	    e->mtime.tv_nsec != st->st_mtim.tv_nsec)
		return NULL;
	if (h->ctime_too && (e->ctime.tv_sec != st->st_ctim.tv_sec ||
			     e->ctime.tv_nsec != st->st_ctim.tv_nsec))
		return NULL;
	return e->sha;
}

bool cfs_inode_hashes_has(const struct cfs_inode_hashes *h, dev_t dev,
			  ino_t ino)
{
	return ih_get(h, dev, ino) != NULL;
}

bool cfs_inode_hashes_union(struct cfs_inode_hashes *dst,
			    const struct cfs_inode_hashes *src)
{
	for (size_t i = 0; i < src->cap; i++)
		if (src->v[i].used && !ih_set(dst, &src->v[i]))
			return false;
	return true;
}

void cfs_inode_hashes_note(void *payload, int fd, const char sha256[65])
{
	uint8_t sha[32];
	size_t n = 0;
	struct stat st;

	if (fstat(fd, &st) == 0 &&
	    cfs_hex_decode(sha, sizeof(sha), sha256, &n) == 0 && n == 32)
		(void)cfs_inode_hashes_put(payload, &st, sha);
}

bool cfs_inode_hashes_lookup(void *payload, const struct stat *st,
			     char sha256[65])
{
	const uint8_t *sha = cfs_inode_hashes_find(payload, st);

	if (sha)
		cfs_hex_encode(sha256, sha, 32);
	return sha != NULL;
}

void cfs_inode_hashes_free(struct cfs_inode_hashes *h)
{
	size_t max = h->max;

	free(h->v);
	memset(h, 0, sizeof(*h));
	h->max = max;
}

/* ---- the stat cache on disk ---------------------------------------- */

/*
 * "CFSSTAT1", a u64 count, count records of 11 u64 (dev, ino, size, mtime
 * s/ns, ctime s/ns, the sha256's 32 raw bytes), all in this machine's byte
 * order (read back only by the machine that wrote it), then the SHA-256 of
 * everything before it in 64 hex digits.
 */
#define STATCACHE_MAGIC "CFSSTAT1"
#define STATCACHE_REC 11

static bool ts_before(struct timespec a, struct timespec b)
{
	return a.tv_sec < b.tv_sec ||
	       (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

int cfs_inode_hashes_save(const struct cfs_inode_hashes *h, const char *path,
			  struct timespec not_after)
{
	struct cfs_buf b = CFS_BUF_INIT;
	uint64_t n = 0;
	int fd = -1, rc;

	rc = cfs_buf_put(&b, STATCACHE_MAGIC, 8) || cfs_buf_put(&b, &n, 8);
	for (size_t i = 0; !rc && i < h->cap; i++) {
		const struct cfs_inode_hash *e = &h->v[i];
		uint64_t r[STATCACHE_REC] = {
			(uint64_t)e->dev,	    (uint64_t)e->ino,
			(uint64_t)e->size,	    (uint64_t)e->mtime.tv_sec,
			(uint64_t)e->mtime.tv_nsec, (uint64_t)e->ctime.tv_sec,
			(uint64_t)e->ctime.tv_nsec};

		if (!e->used || !ts_before(e->ctime, not_after) ||
		    !ts_before(e->mtime, not_after))
			continue;
		memcpy(&r[7], e->sha, sizeof(e->sha));
		rc = cfs_buf_put(&b, r, sizeof(r));
		n++;
	}
	if (rc) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	memcpy(b.ptr + 8, &n, 8);
	{
		/* a torn write after a crash must not pass for a record */
		char hex[65];

		cfs_sha256_hex(hex, b.ptr, b.len);
		if (cfs_buf_puts(&b, hex)) {
			rc = cfs_error_set(CFS_ENOMEM, "out of memory");
			goto out;
		}
	}
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0) {
		rc = cfs_error_errno(errno, "cannot create %s", path);
		goto out;
	}
	rc = cfs_write_all(fd, b.ptr, b.len);
	close(fd);
	if (rc)
		(void)unlink(path);
out:
	cfs_buf_free(&b);
	return rc;
}

void cfs_inode_hashes_load(struct cfs_inode_hashes *h, const char *path)
{
	size_t max = h->max ? h->max : CFS_INODE_HASHES_MAX;
	size_t len = 0;
	char *buf = NULL;
	uint64_t n;

	if (cfs_read_file_at(&buf, &len, AT_FDCWD, path,
			     16 + max * STATCACHE_REC * 8 + 64) != 0 ||
	    len < 16 + 64 || memcmp(buf, STATCACHE_MAGIC, 8) != 0)
		goto out;
	memcpy(&n, buf + 8, 8);
	if (n > max || len != 16 + n * STATCACHE_REC * 8 + 64)
		goto out;
	{
		char hex[65];

		cfs_sha256_hex(hex, buf, len - 64);
		if (memcmp(hex, buf + len - 64, 64) != 0)
			goto out;
	}
	for (uint64_t i = 0; i < n; i++) {
		uint64_t r[STATCACHE_REC];
		struct cfs_inode_hash x = {0};

		memcpy(r, buf + 16 + i * sizeof(r), sizeof(r));
		x.dev = (dev_t)r[0];
		x.ino = (ino_t)r[1];
		x.size = (off_t)r[2];
		x.mtime.tv_sec = (time_t)r[3];
		x.mtime.tv_nsec = (long)r[4];
		x.ctime.tv_sec = (time_t)r[5];
		x.ctime.tv_nsec = (long)r[6];
		memcpy(x.sha, &r[7], sizeof(x.sha));
		x.used = true;
		if (!ih_set(h, &x))
			break;
	}
out:
	free(buf);
	cfs_error_clear();
}
