/*
 * The S3 server of the unit tests from the environment (s3_helper.h).
 */
#include "tests/unit/s3_helper.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "tests/unit/tap.h"

bool s3h_config(struct cfs_s3_config *cfg, char *prefix, size_t cap,
		const char *tag)
{
	const char *ep = getenv("S3_ENDPOINT"), *bucket = getenv("S3_BUCKET");
	const char *ak = getenv("S3_ACCESS_KEY"), *sk = getenv("S3_SECRET_KEY");
	char rnd[9];

	memset(cfg, 0, sizeof(*cfg));
	if (!ep || !*ep || !bucket || !*bucket || !ak || !*ak || !sk || !*sk)
		return false;
	cfs_random_hex(rnd, 4);
	snprintf(prefix, cap, "%s-%s", tag, rnd);
	cfg->endpoint = ep;
	cfg->bucket = bucket;
	cfg->region = getenv("S3_REGION");
	cfg->access_key = ak;
	cfg->secret_key = sk;
	cfg->path_style = true;
	cfg->prefix = prefix;
	return true;
}

struct cfs_store *s3h_open(const struct cfs_s3_config *cfg)
{
	struct cfs_store *st = NULL;

	if (cfs_store_s3_open(&st, cfg)) {
		tap_diag("open the S3 store: %s", cfs_error_last());
		return NULL;
	}
	return st;
}

struct keys {
	char **v;
	size_t n, cap;
};

static int add_key(const char *key, void *payload)
{
	struct keys *k = payload;

	if (k->n == k->cap) {
		size_t cap = k->cap ? k->cap * 2 : 64;
		char **v = realloc(k->v, cap * sizeof(*v));

		if (!v)
			return CFS_ENOMEM;
		k->v = v;
		k->cap = cap;
	}
	k->v[k->n] = strdup(key);
	return k->v[k->n++] ? 0 : CFS_ENOMEM;
}

static int count_key(const char *key, void *payload)
{
	(void)key;
	(*(size_t *)payload)++;
	return 0;
}

int s3h_wipe(struct cfs_store *st, size_t *deleted)
{
	struct keys k = {NULL, 0, 0};
	size_t done = 0, left = 0;
	int rc;

	rc = cfs_store_list(st, "", add_key, &k);
	if (rc)
		tap_diag("wipe: list: %s", cfs_error_last());
	for (size_t i = 0; i < k.n; i++) {
		if (k.v[i] && cfs_store_delete(st, k.v[i]) == 0)
			done++;
		else if (k.v[i])
			tap_diag("wipe: delete %s: %s", k.v[i],
				 cfs_error_last());
		free(k.v[i]);
	}
	free(k.v);
	if (deleted)
		*deleted = done;
	if (!rc && cfs_store_list(st, "", count_key, &left) == 0 && !left)
		return 0;
	tap_diag("wipe: %zu objects left under %s", left,
		 cfs_store_describe(st));
	return -1;
}
