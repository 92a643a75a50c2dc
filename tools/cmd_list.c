/*
 * contextfs list: the contexts in the store, with their generation and
 * last update. A context whose manifest cannot be read is listed with its
 * error instead of failing the whole listing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/context.h"
#include "core/error.h"
#include "core/manifest.h"
#include "core/util.h"
#include "tools/cli.h"

#define LIST_MAX 100000

static const struct cli_opt opts[] = {
	{NULL, 0, false, 0},
};

struct ids {
	char **v;
	size_t n, cap;
};

static int collect(const char *id, void *payload)
{
	struct ids *ids = payload;

	if (ids->n == LIST_MAX)
		return cfs_error_set(CFS_ECORRUPT,
				     "more than %d contexts in the store",
				     LIST_MAX);
	if (ids->n == ids->cap) {
		size_t cap = ids->cap ? ids->cap * 2 : 16;
		char **v = realloc(ids->v, cap * sizeof(*v));

		if (!v)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		ids->v = v;
		ids->cap = cap;
	}
	ids->v[ids->n] = cfs_strdup(id);
	if (!ids->v[ids->n])
		return CFS_ENOMEM;
	ids->n++;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run(struct cli *cli)
{
	struct cfs_store *st = NULL;
	struct ids ids = {0};
	cJSON *res, *arr;
	size_t i;
	int rc;

	rc = cli_store_open(cli, &st);
	if (rc)
		goto out;
	rc = cfs_context_list(st, collect, &ids);
	if (rc == CFS_ENOTFOUND) /* no store directory yet: no contexts */
		rc = 0;
	if (rc)
		goto out;
	if (ids.n > 1)
		qsort(ids.v, ids.n, sizeof(*ids.v), cmp_str);

	res = cli_result(cli);
	cJSON_AddStringToObject(res, "store", cfs_store_describe(st));
	arr = cJSON_AddArrayToObject(res, "contexts");
	if (!arr) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	if (!cli->json && ids.n == 0)
		cli_print(cli, "no contexts in %s\n", cfs_store_describe(st));
	for (i = 0; i < ids.n; i++) {
		struct cfs_manifest *m = NULL;
		cJSON *e = cJSON_CreateObject();
		int mrc;

		if (!e) {
			rc = cfs_error_set(CFS_ENOMEM, "out of memory");
			goto out;
		}
		cJSON_AddItemToArray(arr, e);
		cJSON_AddStringToObject(e, "id", ids.v[i]);
		mrc = cfs_context_read_manifest(&m, NULL, st, ids.v[i]);
		if (mrc) {
			cJSON *err = cJSON_AddObjectToObject(e, "error");

			cJSON_AddStringToObject(err, "code",
						cfs_error_name(mrc));
			cJSON_AddStringToObject(err, "message",
						cfs_error_last());
			if (!cli->json)
				printf("%-32s (unreadable: %s)\n", ids.v[i],
				       cfs_error_last());
			cfs_error_clear();
			continue;
		}
		cJSON_AddNumberToObject(e, "generation",
					(double)cfs_manifest_generation(m));
		cJSON_AddNumberToObject(
			e, "checkpointGeneration",
			(double)cfs_manifest_checkpoint_generation(m));
		cJSON_AddNumberToObject(e, "sizeBytes",
					(double)cfs_manifest_size_bytes(m));
		cli_json_add_str_or_null(e, "updatedAt",
					 cfs_manifest_updated_at(m));
		if (!cli->json)
			printf("%-32s generation %-6llu %s\n", ids.v[i],
			       (unsigned long long)cfs_manifest_generation(m),
			       cfs_manifest_updated_at(m)
				       ? cfs_manifest_updated_at(m)
				       : "-");
		cfs_manifest_free(m);
	}
out:
	for (i = 0; i < ids.n; i++)
		free(ids.v[i]);
	free(ids.v);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_list = {
	.name = "list",
	.args = "",
	.summary = "list the contexts in the store",
	.help = "JSON: {ok, store, contexts: [{id, generation, "
		"checkpointGeneration, sizeBytes,\nupdatedAt}]}; an unreadable "
		"manifest is listed with an \"error\" member.\n",
	.opts = opts,
	.min_args = 0,
	.max_args = 0,
	.run = run,
};
