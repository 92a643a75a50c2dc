/*
 * contextfs init: creates a context with the reference's seed tree
 * (generation 1). New passphrase encryptions use --scrypt-cost or
 * CONTEXTFS_SCRYPT_COST (default 131072); the passphrase prompt asks twice.
 */
#include <stdlib.h>

#include "core/context.h"
#include "core/crypto.h"
#include "core/error.h"
#include "core/ids.h"
#include "core/manifest.h"
#include "tools/cli.h"

enum { OPT_FORCE, OPT_SCRYPT_COST };

static const struct cli_opt opts[] = {
	{"force", 'f', false, OPT_FORCE},
	{"scrypt-cost", 0, true, OPT_SCRYPT_COST},
	{NULL, 0, false, 0},
};

static int run(struct cli *cli)
{
	const char *id = cli->argv[0];
	struct cfs_create_opts co = {0};
	struct cfs_store *st = NULL;
	struct cfs_keys *keys = NULL;
	struct cfs_manifest *m = NULL;
	uint64_t cost = 0;
	cJSON *res, *doc;
	char size[32];
	int rc;

	rc = cfs_id_check(id);
	if (rc)
		goto out;
	rc = cli_scrypt_cost(&cost, cli_opt(cli, OPT_SCRYPT_COST));
	if (rc)
		goto out;
	rc = cli_store_open_write(cli, &st, false);
	if (rc)
		goto out;
	if (!cli_flag(cli, OPT_FORCE)) {
		/* Fail before prompting; create re-checks atomically. */
		rc = cli_manifest_read(cli, NULL, st, id);
		if (rc == 0) {
			rc = cfs_error_set(CFS_EEXISTS,
					   "context already exists: %s", id);
			goto out;
		}
		if (rc != CFS_ENOTFOUND)
			goto out;
		cfs_error_clear();
	}
	rc = cli_keys(cli, true, &keys);
	if (rc)
		goto out;
	co.force = cli_flag(cli, OPT_FORCE);
	co.scrypt.cost = cost;
	co.progress = cli_progress_cb;
	co.progress_payload = cli;
	cli_progress_begin(cli, "init");
	rc = cfs_context_create(&m, st, keys, id, &co);
	cli_progress_end(cli);
	if (rc)
		goto out;

	res = cli_result(cli);
	cJSON_AddStringToObject(res, "id", id);
	cJSON_AddNumberToObject(res, "generation",
				(double)cfs_manifest_generation(m));
	cJSON_AddStringToObject(res, "treeKey", cfs_manifest_tree_key(m));
	cJSON_AddNumberToObject(res, "sizeBytes",
				(double)cfs_manifest_size_bytes(m));
	doc = cJSON_Duplicate(cfs_manifest_json(m), 1);
	if (doc)
		cJSON_AddItemToObject(res, "manifest", doc);
	cli_format_bytes(size, sizeof(size), cfs_manifest_size_bytes(m));
	cli_print(cli, "created context %s (generation %llu, %s) in %s\n", id,
		  (unsigned long long)cfs_manifest_generation(m), size,
		  cfs_store_describe(st));
out:
	cfs_manifest_free(m);
	cfs_keys_free(keys);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_init = {
	.name = "init",
	.args = "ID [--force] [--scrypt-cost N]",
	.summary = "create a context with the seed tree (generation 1)",
	.help = "  -f, --force          replace an existing context (its old "
		"objects are pruned)\n"
		"  --scrypt-cost N      scrypt cost of the new encryption, a "
		"power of two\n"
		"                       (default 131072; also "
		"CONTEXTFS_SCRYPT_COST)\n"
		"\nAn existing context without --force exits 4.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = 1,
	.run = run,
	.defer_signals = true,
};
