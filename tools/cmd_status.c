/*
 * contextfs status: the manifest summary and the lock of one context.
 * `contextfs status MOUNTPOINT` shows the state of a mount instead
 * (tools/mount_cli.h).
 */
#include <stdio.h>
#include <stdlib.h>

#include "core/context.h"
#include "core/error.h"
#include "core/json.h"
#include "core/lock.h"
#include "core/manifest.h"
#include "core/util.h"
#include "tools/cli.h"
#include "tools/mount_cli.h"

static const struct cli_opt opts[] = {
	{NULL, 0, false, 0},
};

static int run(struct cli *cli)
{
	const char *id = cli->argv[0];
	struct cfs_store *st = NULL;
	struct cfs_manifest *m = NULL;
	struct cfs_lock *lock = NULL;
	const cJSON *latest;
	cJSON *res, *jl, *doc;
	bool expired = false;
	char *lock_error = NULL;
	char size[32];
	int rc;

	if (cli_is_mountpoint(id))
		return cli_mount_status(cli, id);
	rc = cli_store_open(cli, &st);
	if (rc)
		goto out;
	rc = cli_manifest_read(cli, &m, st, id);
	if (rc)
		goto out;
	rc = cfs_lock_read(&lock, st, id);
	if (rc == CFS_ECORRUPT) {
		/* Still show the context; say how to recover the lock. */
		lock_error = cfs_strdup(cfs_error_last());
		cfs_error_clear();
		rc = 0;
	}
	if (rc)
		goto out;
	if (lock)
		expired = cfs_lock_expired(lock, cfs_lock_now_ms());

	res = cli_result(cli);
	cJSON_AddStringToObject(res, "id", id);
	cJSON_AddNumberToObject(res, "generation",
				(double)cfs_manifest_generation(m));
	cJSON_AddNumberToObject(res, "checkpointGeneration",
				(double)cfs_manifest_checkpoint_generation(m));
	cli_json_add_str_or_null(res, "format", cfs_manifest_format(m));
	cli_json_add_str_or_null(res, "treeKey", cfs_manifest_tree_key(m));
	cJSON_AddNumberToObject(res, "sizeBytes",
				(double)cfs_manifest_size_bytes(m));
	cli_json_add_str_or_null(res, "createdAt", cfs_manifest_created_at(m));
	cli_json_add_str_or_null(res, "updatedAt", cfs_manifest_updated_at(m));
	if (lock) {
		jl = cJSON_AddObjectToObject(res, "lock");
		cli_json_add_str_or_null(jl, "owner", cfs_lock_owner(lock));
		cli_json_add_str_or_null(jl, "runtimeId",
					 cfs_lock_runtime_id(lock));
		cli_json_add_str_or_null(jl, "expiresAt",
					 cfs_lock_expires_at(lock));
		cJSON_AddBoolToObject(jl, "expired", expired);
	} else if (lock_error) {
		jl = cJSON_AddObjectToObject(res, "lock");
		cJSON_AddNullToObject(jl, "owner");
		cJSON_AddNullToObject(jl, "runtimeId");
		cJSON_AddNullToObject(jl, "expiresAt");
		cJSON_AddBoolToObject(jl, "expired", false);
		cJSON_AddBoolToObject(jl, "corrupt", true);
		cJSON_AddStringToObject(jl, "error", lock_error);
	} else {
		cJSON_AddNullToObject(res, "lock");
	}
	doc = cJSON_Duplicate(cfs_manifest_json(m), 1);
	if (doc)
		cJSON_AddItemToObject(res, "manifest", doc);

	if (cli->json)
		goto out;
	cli_format_bytes(size, sizeof(size), cfs_manifest_size_bytes(m));
	printf("context     %s\n", id);
	printf("store       %s\n", cfs_store_describe(st));
	printf("format      %s\n", cfs_manifest_format(m));
	printf("generation  %llu\n",
	       (unsigned long long)cfs_manifest_generation(m));
	printf("checkpoint  %llu\n",
	       (unsigned long long)cfs_manifest_checkpoint_generation(m));
	printf("tree        %s (%s)\n", cfs_manifest_tree_key(m), size);
	printf("created     %s\n",
	       cfs_manifest_created_at(m) ? cfs_manifest_created_at(m) : "-");
	printf("updated     %s\n",
	       cfs_manifest_updated_at(m) ? cfs_manifest_updated_at(m) : "-");
	latest = cfs_manifest_latest_version(m);
	if (latest) {
		const char *msg = cfs_json_str(latest, "message");
		const char *author = cfs_json_str(latest, "author");
		const char *ts = cfs_json_str(latest, "timestamp");

		printf("last save   %s by %s: %s\n", ts ? ts : "-",
		       author ? author : "-", msg ? msg : "-");
	}
	if (lock_error)
		printf("lock        corrupt: %s\n", lock_error);
	else if (!lock)
		printf("lock        none\n");
	else
		printf("lock        %s by %s until %s\n",
		       expired ? "expired, was held" : "held",
		       cfs_lock_owner(lock) ? cfs_lock_owner(lock) : "?",
		       cfs_lock_expires_at(lock) ? cfs_lock_expires_at(lock)
						 : "?");
out:
	free(lock_error);
	cfs_lock_free(lock);
	cfs_manifest_free(m);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_status = {
	.name = "status",
	.args = "ID | MOUNTPOINT",
	.summary = "show a context's manifest and lock, or a mount's state",
	.help = "Reads only plaintext metadata; needs no key.\n"
		"With a contextfs MOUNTPOINT: clean/dirty, last landed "
		"generation,\ncheckpoint and pending error of that mount.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = 1,
	.run = run,
};
