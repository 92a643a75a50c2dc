/*
 * Thin dispatchers over the storage backend contract (core/store.h). They
 * validate arguments, fill in defaults (no conditions, an ETag buffer the
 * caller did not ask for) and apply the small-object cap; everything else
 * is the backend's job.
 */
#include "core/store.h"
#include "core/error.h"

#include <assert.h>
#include <stdlib.h>

static int check_args(struct cfs_store *st, const char *key)
{
	if (!st)
		return cfs_error_set(CFS_EINVAL, "no storage backend");
	assert(st->ops && st->ops->version == CFS_STORE_OPS_VERSION);
	if (!key || !key[0])
		return cfs_error_set(CFS_EINVAL, "empty storage key");
	return 0;
}

int cfs_store_get_fd(struct cfs_store *st, const char *key, int fd,
		     struct cfs_objinfo *info)
{
	int rc = check_args(st, key);

	if (rc)
		return rc;
	if (fd < 0)
		return cfs_error_set(CFS_EINVAL, "get %s: invalid output fd",
				     key);
	return st->ops->get(st, key, fd, NULL, 0, info);
}

int cfs_store_get_buf(struct cfs_store *st, const char *key, char **out,
		      size_t *len, struct cfs_objinfo *info)
{
	struct cfs_buf b = CFS_BUF_INIT;
	int rc;

	*out = NULL;
	if (len)
		*len = 0;
	rc = check_args(st, key);
	if (rc)
		return rc;
	rc = st->ops->get(st, key, -1, &b, CFS_SMALL_OBJECT_MAX, info);
	if (rc) {
		cfs_buf_free(&b);
		return rc;
	}
	if (len)
		*len = b.len;
	*out = cfs_buf_detach(&b);
	return *out ? 0 : CFS_ENOMEM;
}

static int put(struct cfs_store *st, const char *key,
	       const struct cfs_source *src, const struct cfs_cond *cond,
	       char etag_out[CFS_ETAG_MAX])
{
	static const struct cfs_cond none = {NULL, false};
	char scratch[CFS_ETAG_MAX];
	int rc = check_args(st, key);

	if (rc)
		return rc;
	return st->ops->put(st, key, src, cond ? cond : &none,
			    etag_out ? etag_out : scratch);
}

int cfs_store_put_fd(struct cfs_store *st, const char *key, int fd,
		     const struct cfs_cond *cond, char etag_out[CFS_ETAG_MAX])
{
	struct cfs_source src = {NULL, 0, fd, false, NULL};

	if (fd < 0)
		return cfs_error_set(CFS_EINVAL, "put %s: invalid input fd",
				     key ? key : "");
	return put(st, key, &src, cond, etag_out);
}

int cfs_store_put_tmpfile(struct cfs_store *st, const char *key, int fd,
			  const struct cfs_cond *cond,
			  char etag_out[CFS_ETAG_MAX])
{
	struct cfs_source src = {NULL, 0, fd, true, NULL};

	if (fd < 0)
		return cfs_error_set(CFS_EINVAL, "put %s: invalid input fd",
				     key ? key : "");
	return put(st, key, &src, cond, etag_out);
}

void cfs_growing_init(struct cfs_growing *g)
{
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
	g->size = 0;
	g->ended = false;
	g->failed = 0;
}

void cfs_growing_destroy(struct cfs_growing *g)
{
	pthread_mutex_destroy(&g->mu);
	pthread_cond_destroy(&g->cv);
}

void cfs_growing_advance(struct cfs_growing *g, uint64_t size)
{
	pthread_mutex_lock(&g->mu);
	g->size = size;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

void cfs_growing_end(struct cfs_growing *g, int rc)
{
	pthread_mutex_lock(&g->mu);
	g->ended = true;
	g->failed = rc;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

int cfs_growing_wait(struct cfs_growing *g, uint64_t want, uint64_t *size,
		     bool *ended)
{
	int failed;

	pthread_mutex_lock(&g->mu);
	while (!g->ended && g->size < want)
		pthread_cond_wait(&g->cv, &g->mu);
	*size = g->size;
	*ended = g->ended;
	failed = g->failed;
	pthread_mutex_unlock(&g->mu);
	if (failed)
		return cfs_error_set(CFS_ECANCELED,
				     "the data being uploaded could not be "
				     "produced");
	return 0;
}

const char *cfs_store_staging_dir(struct cfs_store *st)
{
	if (!st || !st->ops || !st->ops->staging_dir)
		return NULL;
	return st->ops->staging_dir(st);
}

bool cfs_store_streams_put(const struct cfs_store *st)
{
	return st && st->ops && (st->ops->flags & CFS_STORE_STREAMS_PUT);
}

int cfs_store_put_growing(struct cfs_store *st, const char *key, int fd,
			  struct cfs_growing *g, const struct cfs_cond *cond,
			  char etag_out[CFS_ETAG_MAX])
{
	struct cfs_source src = {NULL, 0, fd, true, g};

	if (fd < 0 || !g)
		return cfs_error_set(CFS_EINVAL, "put %s: invalid input",
				     key ? key : "");
	if (!cfs_store_streams_put(st)) {
		uint64_t size;
		bool ended;
		int rc = cfs_growing_wait(g, UINT64_MAX, &size, &ended);

		if (rc)
			return rc;
		src.growing = NULL;
	}
	return put(st, key, &src, cond, etag_out);
}

int cfs_store_put_buf(struct cfs_store *st, const char *key, const void *buf,
		      size_t len, const struct cfs_cond *cond,
		      char etag_out[CFS_ETAG_MAX])
{
	struct cfs_source src = {buf ? buf : "", buf ? len : 0, -1, false,
				 NULL};

	return put(st, key, &src, cond, etag_out);
}

int cfs_store_head(struct cfs_store *st, const char *key,
		   struct cfs_objinfo *info)
{
	struct cfs_objinfo scratch;
	int rc = check_args(st, key);

	if (rc)
		return rc;
	return st->ops->head(st, key, info ? info : &scratch);
}

int cfs_store_delete(struct cfs_store *st, const char *key)
{
	int rc = check_args(st, key);

	if (rc)
		return rc;
	return st->ops->del(st, key);
}

int cfs_store_list(struct cfs_store *st, const char *prefix, cfs_list_fn fn,
		   void *payload)
{
	if (!st)
		return cfs_error_set(CFS_EINVAL, "no storage backend");
	assert(fn);
	return st->ops->list(st, prefix ? prefix : "", fn, payload);
}

const char *cfs_store_describe(struct cfs_store *st)
{
	if (!st)
		return "(no storage)";
	return st->ops->describe(st);
}

void cfs_store_free(struct cfs_store *st)
{
	if (st)
		st->ops->free(st);
}
