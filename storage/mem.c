/*
 * In-memory storage backend (the reference's MemoryStorage, REFERENCE.md
 * §3.2) with fault injection for tests. Objects live in a singly linked
 * list protected by one mutex; every put stores a private copy of the body
 * and a fresh UUID v4 ETag (so compare-and-swap is ABA-safe even when the
 * bytes repeat). list() snapshots the keys under the mutex and calls the
 * callback without it, so callbacks may call back into the store.
 */
#include "storage/storage.h"
#include "core/error.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Cap on one object read from a put's fd (the mem store is for tests). */
#define MEM_OBJECT_MAX ((size_t)1 << 30)
#define MEM_FAULT_KINDS (CFS_MEM_FAULT_NO_ETAG + 1)

struct mem_obj {
	struct mem_obj *next;
	char *key;
	char *data;
	size_t len;
	int64_t mtime_ms;
	char etag[37];
};

struct mem_fault {
	bool armed;
	unsigned nth; /* 0 = every matching call */
	unsigned seen; /* matching calls since armed */
	char *key_substr;
};

struct mem_store {
	struct cfs_store base; /* first member */
	pthread_mutex_t mu;
	struct mem_obj *objs; /* protected by mu */
	size_t count; /* protected by mu */
	struct mem_fault faults[MEM_FAULT_KINDS]; /* protected by mu */
};

static struct mem_store *mem_of(struct cfs_store *st)
{
	return (struct mem_store *)st;
}

static struct mem_obj *find(struct mem_store *m, const char *key,
			    struct mem_obj ***link_out)
{
	struct mem_obj **link = &m->objs;

	for (; *link; link = &(*link)->next) {
		if (strcmp((*link)->key, key) == 0) {
			if (link_out)
				*link_out = link;
			return *link;
		}
	}
	return NULL;
}

/* True when the armed fault f fires on this call. Caller holds mu. */
static bool fault_fires(struct mem_store *m, enum cfs_mem_fault f,
			const char *key)
{
	struct mem_fault *ft = &m->faults[f];

	if (!ft->armed)
		return false;
	if (ft->key_substr && !strstr(key, ft->key_substr))
		return false;
	ft->seen++;
	if (ft->nth == 0)
		return true;
	if (ft->seen == ft->nth) {
		ft->armed = false;
		return true;
	}
	return false;
}

static int write_fd(int fd, const char *data, size_t len, struct cfs_store *st)
{
	const size_t chunk = 1u << 20;
	size_t off = 0;
	int rc;

	while (off < len) {
		size_t n = len - off < chunk ? len - off : chunk;

		rc = cfs_write_all(fd, data + off, n);
		if (rc)
			return rc;
		off += n;
		if (st->progress)
			st->progress(off, len, st->progress_payload);
	}
	return 0;
}

static int mem_get(struct cfs_store *st, const char *key, int fd,
		   struct cfs_buf *buf, size_t max, struct cfs_objinfo *info)
{
	struct mem_store *m = mem_of(st);
	struct mem_obj *o;
	char *copy = NULL;
	size_t len = 0;
	struct cfs_objinfo got;
	bool no_etag;
	int rc = 0;

	memset(&got, 0, sizeof(got));
	pthread_mutex_lock(&m->mu);
	if (fault_fires(m, CFS_MEM_FAULT_GET_FAIL, key)) {
		rc = cfs_error_set(CFS_EIO, "injected get failure: %s", key);
		goto unlock;
	}
	o = find(m, key, NULL);
	if (!o) {
		rc = cfs_error_set(CFS_ENOTFOUND, "object not found: %s", key);
		goto unlock;
	}
	if (fd < 0 && o->len > max) {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "object %s is larger than %zu bytes", key,
				   max);
		goto unlock;
	}
	/* Copy out under the mutex, write to fd without it. */
	copy = cfs_malloc(o->len);
	if (!copy) {
		rc = CFS_ENOMEM;
		goto unlock;
	}
	memcpy(copy, o->data, o->len);
	len = o->len;
	got.size = o->len;
	got.mtime_ms = o->mtime_ms;
	no_etag = fault_fires(m, CFS_MEM_FAULT_NO_ETAG, key);
	if (!no_etag)
		memcpy(got.etag, o->etag, sizeof(o->etag));
unlock:
	pthread_mutex_unlock(&m->mu);
	if (rc)
		goto out;
	if (fd >= 0)
		rc = write_fd(fd, copy, len, st);
	else
		rc = cfs_buf_put(buf, copy, len);
	if (!rc && info)
		*info = got;
out:
	free(copy);
	return rc;
}

/* Reads the put's body into a private heap copy. */
static int read_source(char **out, size_t *len_out, const char *key,
		       const struct cfs_source *src, struct cfs_store *st)
{
	struct cfs_buf b = CFS_BUF_INIT;
	const size_t chunk = 1u << 20;
	off_t off = 0;
	bool seekable = true;
	int rc = 0;

	*out = NULL;
	if (src->fd < 0) {
		*out = cfs_malloc(src->len);
		if (!*out)
			return CFS_ENOMEM;
		if (src->len)
			memcpy(*out, src->buf, src->len);
		*len_out = src->len;
		return 0;
	}
	for (;;) {
		ssize_t n;

		rc = cfs_buf_grow(&b, chunk);
		if (rc)
			goto out;
		if (seekable)
			n = pread(src->fd, b.ptr + b.len, chunk, off);
		else
			n = read(src->fd, b.ptr + b.len, chunk);
		if (n < 0 && errno == ESPIPE && seekable) {
			seekable = false;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = cfs_error_errno(errno, "read body of %s", key);
			goto out;
		}
		if (n == 0)
			break;
		b.len += (size_t)n;
		off += n;
		if (b.len > MEM_OBJECT_MAX) {
			rc = cfs_error_set(CFS_EINVAL,
					   "object %s is larger than the "
					   "memory store's %zu byte cap",
					   key, MEM_OBJECT_MAX);
			goto out;
		}
		if (st->progress)
			st->progress(b.len, 0, st->progress_payload);
	}
	*len_out = b.len;
	*out = b.ptr ? b.ptr : cfs_malloc(1);
	b.ptr = NULL;
	if (!*out)
		rc = CFS_ENOMEM;
out:
	cfs_buf_free(&b);
	return rc;
}

static int mem_put(struct cfs_store *st, const char *key,
		   const struct cfs_source *src, const struct cfs_cond *cond,
		   char etag_out[CFS_ETAG_MAX])
{
	struct mem_store *m = mem_of(st);
	bool conditional = cond && (cond->if_match || cond->if_none_match);
	struct mem_obj *o, *fresh = NULL;
	char *data = NULL;
	size_t len = 0;
	int rc;

	rc = read_source(&data, &len, key, src, st);
	if (rc)
		return rc;
	pthread_mutex_lock(&m->mu);
	if (fault_fires(m, CFS_MEM_FAULT_PUT_FAIL, key)) {
		rc = cfs_error_set(CFS_EIO, "injected put failure: %s", key);
		goto unlock;
	}
	o = find(m, key, NULL);
	if (conditional && fault_fires(m, CFS_MEM_FAULT_LOSE_CAS, key)) {
		rc = cond->if_none_match
			     ? cfs_error_set(CFS_EEXISTS,
					     "object already exists: %s", key)
			     : cfs_error_set(CFS_ECONFLICT,
					     "precondition failed for object: "
					     "%s",
					     key);
		goto unlock;
	}
	if (cond && cond->if_none_match && o) {
		rc = cfs_error_set(CFS_EEXISTS, "object already exists: %s",
				   key);
		goto unlock;
	}
	if (cond && cond->if_match &&
	    (!o || strcmp(o->etag, cond->if_match) != 0)) {
		rc = cfs_error_set(CFS_ECONFLICT,
				   "precondition failed for object: %s", key);
		goto unlock;
	}
	if (!o) {
		fresh = cfs_calloc(1, sizeof(*fresh));
		if (!fresh || !(fresh->key = cfs_strdup(key))) {
			free(fresh);
			rc = CFS_ENOMEM;
			goto unlock;
		}
		fresh->next = m->objs;
		m->objs = fresh;
		m->count++;
		o = fresh;
	}
	free(o->data);
	o->data = data;
	data = NULL;
	o->len = len;
	o->mtime_ms = cfs_now_ms();
	cfs_uuid4(o->etag);
	if (etag_out)
		memcpy(etag_out, o->etag, sizeof(o->etag));
unlock:
	pthread_mutex_unlock(&m->mu);
	free(data);
	return rc;
}

static int mem_head(struct cfs_store *st, const char *key,
		    struct cfs_objinfo *info)
{
	struct mem_store *m = mem_of(st);
	struct mem_obj *o;
	int rc = 0;

	pthread_mutex_lock(&m->mu);
	o = find(m, key, NULL);
	if (!o) {
		rc = cfs_error_set(CFS_ENOTFOUND, "object not found: %s", key);
		goto unlock;
	}
	if (info) {
		memset(info, 0, sizeof(*info));
		info->size = o->len;
		info->mtime_ms = o->mtime_ms;
		if (!fault_fires(m, CFS_MEM_FAULT_NO_ETAG, key))
			memcpy(info->etag, o->etag, sizeof(o->etag));
	}
unlock:
	pthread_mutex_unlock(&m->mu);
	return rc;
}

static int mem_del(struct cfs_store *st, const char *key)
{
	struct mem_store *m = mem_of(st);
	struct mem_obj *o, **link = NULL;
	int rc = 0;

	pthread_mutex_lock(&m->mu);
	if (fault_fires(m, CFS_MEM_FAULT_DELETE_FAIL, key)) {
		rc = cfs_error_set(CFS_EIO, "injected delete failure: %s", key);
		goto unlock;
	}
	o = find(m, key, &link);
	if (o) {
		*link = o->next;
		m->count--;
		free(o->key);
		free(o->data);
		free(o);
	}
unlock:
	pthread_mutex_unlock(&m->mu);
	return rc;
}

static int mem_list(struct cfs_store *st, const char *prefix, cfs_list_fn fn,
		    void *payload)
{
	struct mem_store *m = mem_of(st);
	size_t plen = strlen(prefix), n = 0, i;
	struct mem_obj *o;
	char **keys = NULL;
	int rc = 0;

	pthread_mutex_lock(&m->mu);
	keys = cfs_calloc(m->count + 1, sizeof(*keys));
	if (!keys) {
		rc = CFS_ENOMEM;
		goto unlock;
	}
	for (o = m->objs; o; o = o->next) {
		if (strncmp(o->key, prefix, plen) != 0)
			continue;
		keys[n] = cfs_strdup(o->key);
		if (!keys[n]) {
			rc = CFS_ENOMEM;
			goto unlock;
		}
		n++;
	}
unlock:
	pthread_mutex_unlock(&m->mu);
	for (i = 0; !rc && i < n; i++)
		rc = fn(keys[i], payload);
	for (i = 0; keys && i < n; i++)
		free(keys[i]);
	free(keys);
	return rc;
}

static const char *mem_describe(struct cfs_store *st)
{
	return "memory";
}

static void mem_free(struct cfs_store *st)
{
	struct mem_store *m = mem_of(st);
	struct mem_obj *o, *next;
	size_t i;

	for (o = m->objs; o; o = next) {
		next = o->next;
		free(o->key);
		free(o->data);
		free(o);
	}
	for (i = 0; i < MEM_FAULT_KINDS; i++)
		free(m->faults[i].key_substr);
	pthread_mutex_destroy(&m->mu);
	free(m);
}

static const struct cfs_store_ops mem_ops = {
	.version = CFS_STORE_OPS_VERSION,
	.name = "mem",
	.get = mem_get,
	.put = mem_put,
	.head = mem_head,
	.del = mem_del,
	.list = mem_list,
	.describe = mem_describe,
	.free = mem_free,
};

int cfs_store_mem_new(struct cfs_store **out)
{
	struct mem_store *m;

	*out = NULL;
	m = cfs_calloc(1, sizeof(*m));
	if (!m)
		return CFS_ENOMEM;
	pthread_mutex_init(&m->mu, NULL);
	m->base.ops = &mem_ops;
	*out = &m->base;
	return 0;
}

void cfs_store_mem_fault(struct cfs_store *st, enum cfs_mem_fault f,
			 unsigned nth, const char *key_substr)
{
	struct mem_store *m = mem_of(st);
	size_t i;

	if (!st || st->ops != &mem_ops)
		return;
	pthread_mutex_lock(&m->mu);
	if (f == CFS_MEM_FAULT_NONE) {
		for (i = 0; i < MEM_FAULT_KINDS; i++) {
			free(m->faults[i].key_substr);
			memset(&m->faults[i], 0, sizeof(m->faults[i]));
		}
	} else if ((unsigned)f < MEM_FAULT_KINDS) {
		struct mem_fault *ft = &m->faults[f];

		free(ft->key_substr);
		memset(ft, 0, sizeof(*ft));
		ft->key_substr = key_substr ? strdup(key_substr) : NULL;
		ft->nth = nth;
		ft->armed = !key_substr || ft->key_substr;
	}
	pthread_mutex_unlock(&m->mu);
}

size_t cfs_store_mem_count(struct cfs_store *st)
{
	struct mem_store *m = mem_of(st);
	size_t n;

	if (!st || st->ops != &mem_ops)
		return 0;
	pthread_mutex_lock(&m->mu);
	n = m->count;
	pthread_mutex_unlock(&m->mu);
	return n;
}
