/*
 * contextfs checkpoint: commits a directory as the next checkpoint (the
 * manifest's treeKey flips to it; the generation stays), under the lock.
 * The checkpoint keeps its own decryption metadata in the manifest, so it
 * stays exportable after later saves.
 */
#include <stdlib.h>
#include <unistd.h>

#include "core/context.h"
#include "core/error.h"
#include "core/ids.h"
#include "tools/cli.h"

enum { OPT_FROM, OPT_REASON };

static const struct cli_opt opts[] = {
	{"from", 0, true, OPT_FROM},
	{"reason", 0, true, OPT_REASON},
	{NULL, 0, false, 0},
};

static int run(struct cli *cli)
{
	const char *id = cli->argv[0];
	const char *from = cli_opt(cli, OPT_FROM);
	struct cfs_commit_opts co;
	struct cfs_commit_result cr = {0};
	cJSON *res;
	int dirfd = -1, rc;

	cfs_commit_opts_init(&co);
	rc = cfs_id_check(id);
	if (rc)
		goto out;
	if (!from) {
		rc = cfs_error_set(CFS_EINVAL, "checkpoint needs --from DIR");
		goto out;
	}
	rc = cli_open_dir(&dirfd, "--from directory", from);
	if (rc)
		goto out;

	co.kind = CFS_COMMIT_CHECKPOINT;
	co.reason =
		cli_opt(cli, OPT_REASON) ? cli_opt(cli, OPT_REASON) : "manual";
	rc = cli_commit_dir_locked(cli, &cr, id, dirfd, "checkpoint", &co);
	if (rc)
		goto out;

	res = cli_result(cli);
	cJSON_AddStringToObject(res, "id", id);
	cJSON_AddNumberToObject(res, "checkpointGeneration",
				(double)cr.checkpoint_generation);
	cJSON_AddNumberToObject(res, "generation", (double)cr.generation);
	cJSON_AddStringToObject(res, "treeKey", cr.tree_key);
	cJSON_AddNumberToObject(res, "sizeBytes", (double)cr.size_bytes);
	cli_print(cli, "checkpoint %llu of %s written (%s)\n",
		  (unsigned long long)cr.checkpoint_generation, id,
		  cr.tree_key);
out:
	cfs_commit_result_clear(&cr);
	if (dirfd >= 0)
		close(dirfd);
	return rc;
}

const struct cli_command cli_cmd_checkpoint = {
	.name = "checkpoint",
	.args = "ID --from DIR [--reason R]",
	.summary = "commit a directory as the next checkpoint",
	.help = "  --from DIR     directory with the context roots\n"
		"  --reason R     reason recorded with the checkpoint "
		"(default manual)\n"
		"\nThe generation does not change; export ID@checkpoint:N "
		"reads it back.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = 1,
	.run = run,
	.defer_signals = true,
};
