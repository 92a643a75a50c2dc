/*
 * contextfs log: the version history the manifest records (the last 50
 * saves, newest last in JSON, newest first for humans) and the
 * checkpoints, with whether each one's data is still retained.
 */
#include <stdio.h>
#include <stdlib.h>

#include "core/context.h"
#include "core/error.h"
#include "core/json.h"
#include "core/manifest.h"
#include "tools/cli.h"

static const struct cli_opt opts[] = {
	{NULL, 0, false, 0},
};

static void copy_member(cJSON *dst, const cJSON *src, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(src, key);
	cJSON *dup;

	if (!v) {
		cJSON_AddNullToObject(dst, key);
		return;
	}
	dup = cJSON_Duplicate(v, 1);
	if (dup)
		cJSON_AddItemToObject(dst, key, dup);
}

static bool json_u64(const cJSON *obj, const char *key, uint64_t *out)
{
	int64_t v;

	if (!cfs_json_int(obj, key, &v) || v < 0)
		return false;
	*out = (uint64_t)v;
	return true;
}

static cJSON *version_entry(const struct cfs_manifest *m, const cJSON *rec)
{
	cJSON *e = cJSON_CreateObject();
	const char *key = NULL;
	uint64_t gen = 0, size = 0;
	bool retained = false;

	if (!e)
		return NULL;
	if (json_u64(rec, "generation", &gen) &&
	    cfs_manifest_generation_lookup(m, gen, &key, NULL, &size) == 0)
		retained = true;
	cfs_error_clear();
	copy_member(e, rec, "generation");
	copy_member(e, rec, "parentGeneration");
	copy_member(e, rec, "timestamp");
	copy_member(e, rec, "author");
	copy_member(e, rec, "message");
	copy_member(e, rec, "changedPaths");
	copy_member(e, rec, "changedPathsTotal");
	cJSON_AddBoolToObject(e, "retained", retained);
	cli_json_add_str_or_null(e, "treeKey", retained ? key : NULL);
	if (retained)
		cJSON_AddNumberToObject(e, "sizeBytes", (double)size);
	return e;
}

static cJSON *checkpoint_entry(const struct cfs_manifest *m, const cJSON *rec)
{
	cJSON *e = cJSON_CreateObject();
	uint64_t n = 0;
	bool retained = false;

	if (!e)
		return NULL;
	if (json_u64(rec, "generation", &n) &&
	    cfs_manifest_checkpoint_lookup(m, n, NULL, NULL, NULL) == 0)
		retained = true;
	cfs_error_clear();
	copy_member(e, rec, "generation");
	copy_member(e, rec, "reason");
	copy_member(e, rec, "timestamp");
	copy_member(e, rec, "treeKey");
	copy_member(e, rec, "sizeBytes");
	cJSON_AddBoolToObject(e, "retained", retained);
	return e;
}

static void print_version(const cJSON *e, uint64_t current)
{
	const cJSON *paths =
		cJSON_GetObjectItemCaseSensitive(e, "changedPaths");
	const char *msg = cfs_json_str(e, "message");
	int64_t gen = 0, parent = -1, total = 0;
	const cJSON *p;
	bool retained = false;

	cfs_json_int(e, "generation", &gen);
	cfs_json_int(e, "parentGeneration", &parent);
	cfs_json_bool(e, "retained", &retained);
	printf("generation %lld", (long long)gen);
	if (parent >= 0)
		printf(" (parent %lld)", (long long)parent);
	if ((uint64_t)gen == current)
		printf(" [current]");
	printf("%s\n", retained ? "" : " [data not retained]");
	printf("    %s  %s\n",
	       cfs_json_str(e, "timestamp") ? cfs_json_str(e, "timestamp")
					    : "-",
	       cfs_json_str(e, "author") ? cfs_json_str(e, "author") : "-");
	if (msg && *msg)
		printf("    %s\n", msg);
	cJSON_ArrayForEach(p, paths)
	{
		const char *type = cfs_json_str(p, "type");
		const char *path = cfs_json_str(p, "path");
		char c = '?';

		if (type && type[0] == 'a')
			c = 'A';
		else if (type && type[0] == 'm')
			c = 'M';
		else if (type && type[0] == 'r')
			c = 'D';
		printf("    %c %s\n", c, path ? path : "?");
	}
	/* a summary lists at most 1,000 paths; the bundle's record all */
	if (cfs_json_int(e, "changedPathsTotal", &total) &&
	    total > cJSON_GetArraySize(paths))
		printf("    ... and %lld more (the generation's "
		       ".contextsdk/versions/%lld.json lists them all)\n",
		       (long long)(total - cJSON_GetArraySize(paths)),
		       (long long)gen);
	printf("\n");
}

static int run(struct cli *cli)
{
	const char *id = cli->argv[0];
	struct cfs_store *st = NULL;
	struct cfs_manifest *m = NULL;
	const cJSON *versions, *cps, *rec;
	cJSON *res, *jv, *jc, *e;
	int rc, i, n;

	rc = cli_store_open(cli, &st);
	if (rc)
		goto out;
	rc = cli_manifest_read(cli, &m, st, id);
	if (rc)
		goto out;

	res = cli_result(cli);
	cJSON_AddStringToObject(res, "id", id);
	cJSON_AddNumberToObject(res, "generation",
				(double)cfs_manifest_generation(m));
	cJSON_AddNumberToObject(res, "checkpointGeneration",
				(double)cfs_manifest_checkpoint_generation(m));
	jv = cJSON_AddArrayToObject(res, "versions");
	jc = cJSON_AddArrayToObject(res, "checkpoints");
	if (!jv || !jc) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	versions = cfs_manifest_versions(m);
	cJSON_ArrayForEach(rec, versions)
	{
		e = version_entry(m, rec);
		if (e)
			cJSON_AddItemToArray(jv, e);
	}
	cps = cfs_manifest_checkpoints(m);
	if (cJSON_GetArraySize(cps) == 0 && cfs_manifest_latest_checkpoint(m)) {
		e = checkpoint_entry(m, cfs_manifest_latest_checkpoint(m));
		if (e)
			cJSON_AddItemToArray(jc, e);
	} else {
		cJSON_ArrayForEach(rec, cps)
		{
			e = checkpoint_entry(m, rec);
			if (e)
				cJSON_AddItemToArray(jc, e);
		}
	}
	if (cli->json)
		goto out;

	n = cJSON_GetArraySize(jv);
	if (n == 0)
		printf("no saves recorded yet (generation %llu)\n\n",
		       (unsigned long long)cfs_manifest_generation(m));
	for (i = n - 1; i >= 0; i--)
		print_version(cJSON_GetArrayItem(jv, i),
			      cfs_manifest_generation(m));
	n = cJSON_GetArraySize(jc);
	for (i = n - 1; i >= 0; i--) {
		const cJSON *c = cJSON_GetArrayItem(jc, i);
		int64_t g = 0;
		bool kept = false;

		cfs_json_int(c, "generation", &g);
		cfs_json_bool(c, "retained", &kept);
		printf("checkpoint %lld%s\n    %s  %s\n\n", (long long)g,
		       kept ? "" : " [data not retained]",
		       cfs_json_str(c, "timestamp")
			       ? cfs_json_str(c, "timestamp")
			       : "-",
		       cfs_json_str(c, "reason") ? cfs_json_str(c, "reason")
						 : "-");
	}
out:
	cfs_manifest_free(m);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_log = {
	.name = "log",
	.args = "ID",
	.summary = "show the version history and the checkpoints",
	.help = "Versions come from the manifest (the last 50 saves). A "
		"version or checkpoint\nwhose data is no longer retained "
		"cannot be exported or restored.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = 1,
	.run = run,
};
