/*
 * contextfs gc: applies retention (keep the data of the last N
 * generations) and deletes unreferenced objects under contexts/ID/tree/
 * and image/. Runs under the context lock so it never races a commit of
 * this tool; a dry run only reads.
 */
#include <stdio.h>
#include <stdlib.h>

#include "core/context.h"
#include "core/error.h"
#include "core/ids.h"
#include "tools/cli.h"

enum { OPT_KEEP, OPT_DRY_RUN };

static const struct cli_opt opts[] = {
	{"keep", 0, true, OPT_KEEP},
	{"dry-run", 'n', false, OPT_DRY_RUN},
	{NULL, 0, false, 0},
};

struct gc_state {
	struct cli *cli;
	cJSON *objects;
	bool dry_run;
	size_t failed;
};

static int on_item(const struct cfs_gc_item *it, void *payload)
{
	struct gc_state *gs = payload;
	cJSON *o = cJSON_CreateObject();

	if (!o)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	cJSON_AddItemToArray(gs->objects, o);
	cJSON_AddStringToObject(o, "key", it->key ? it->key : "");
	cJSON_AddBoolToObject(o, "deleted", it->deleted);
	if (it->error) {
		gs->failed++;
		cJSON_AddStringToObject(o, "error", cfs_error_name(it->error));
	}
	if (!gs->cli->json && !gs->cli->quiet)
		printf("%s %s%s\n",
		       gs->dry_run   ? "would delete"
		       : it->deleted ? "deleted"
				     : "kept",
		       it->key ? it->key : "",
		       it->error ? " (delete failed)" : "");
	return 0;
}

static int run(struct cli *cli)
{
	const char *id = cli->argv[0];
	struct cfs_gc_opts go = {0};
	struct gc_state gs = {0};
	struct cfs_store *st = NULL;
	char *owner = NULL;
	uint64_t keep = CFS_CONTEXT_DEFAULT_RETENTION;
	size_t deleted = 0;
	cJSON *res;
	int rc;

	rc = cfs_id_check(id);
	if (rc)
		goto out;
	if (cli_opt(cli, OPT_KEEP)) {
		rc = cli_parse_u64(&keep, "--keep", cli_opt(cli, OPT_KEEP), 1,
				   100000);
		if (rc)
			goto out;
	}
	rc = cli_flag(cli, OPT_DRY_RUN) ? cli_store_open(cli, &st)
					: cli_store_open_write(cli, &st, false);
	if (rc)
		goto out;
	rc = cli_manifest_read(cli, NULL, st, id);
	if (rc)
		goto out;

	res = cli_result(cli);
	cJSON_AddStringToObject(res, "id", id);
	cJSON_AddNumberToObject(res, "keep", (double)keep);
	cJSON_AddBoolToObject(res, "dryRun", cli_flag(cli, OPT_DRY_RUN));
	gs.cli = cli;
	gs.dry_run = cli_flag(cli, OPT_DRY_RUN);
	gs.objects = cJSON_AddArrayToObject(res, "objects");
	if (!gs.objects) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	if (!gs.dry_run) {
		rc = cli_lock_take(cli, st, id, &owner);
		if (rc)
			goto out;
	}
	go.keep = (int)keep;
	go.dry_run = gs.dry_run;
	go.owner = owner;
	go.fn = on_item;
	go.payload = &gs;
	rc = cfs_context_gc(&deleted, st, id, &go);
	if (owner) {
		cli_lock_drop(cli, st, id, owner);
		owner = NULL;
	}
	if (rc)
		goto out;
	cJSON_AddNumberToObject(res, "deleted", (double)deleted);
	if (gs.dry_run)
		cli_print(cli, "%zu object%s would be deleted\n", deleted,
			  deleted == 1 ? "" : "s");
	else
		cli_print(cli, "%zu object%s deleted\n", deleted,
			  deleted == 1 ? "" : "s");
	if (gs.failed)
		cli_warn(cli, "%zu deletion%s failed; run gc again later",
			 gs.failed, gs.failed == 1 ? "" : "s");
out:
	if (owner)
		cli_lock_drop(cli, st, id, owner);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_gc = {
	.name = "gc",
	.args = "ID [--keep N] [--dry-run]",
	.summary = "apply retention and delete unreferenced data objects",
	.help = "  --keep N        keep the data of the last N generations "
		"(default 5)\n"
		"  -n, --dry-run   show what would be deleted, change "
		"nothing\n"
		"\nCheckpoints, the manifest and the lock are never deleted "
		"by gc.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = 1,
	.run = run,
	.defer_signals = true,
};
