/*
 * contextfs restore: commits an older generation or a checkpoint as the
 * next generation (history is kept; nothing is rewound), under the lock.
 */
#include <stdlib.h>

#include "core/context.h"
#include "core/crypto.h"
#include "core/error.h"
#include "core/ids.h"
#include "tools/cli.h"

enum { OPT_MESSAGE, OPT_AUTHOR };

static const struct cli_opt opts[] = {
	{"message", 'm', true, OPT_MESSAGE},
	{"author", 0, true, OPT_AUTHOR},
	{NULL, 0, false, 0},
};

static int run(struct cli *cli)
{
	const char *refstr = cli->argv[0];
	struct cfs_ref ref;
	struct cfs_commit_opts co;
	struct cfs_commit_result cr = {0};
	struct cfs_store *st = NULL;
	struct cfs_keys *keys = NULL;
	char *owner = NULL;
	int rc;

	cfs_commit_opts_init(&co);
	rc = cfs_ref_parse(&ref, refstr);
	if (rc)
		goto out;
	if (ref.kind == CFS_REF_LATEST) {
		rc = cfs_error_set(CFS_EINVAL,
				   "restore needs ID@GEN or ID@checkpoint:N "
				   "(see contextfs log %s)",
				   ref.id);
		goto out;
	}
	rc = cli_store_open_write(cli, &st, false);
	if (rc)
		goto out;
	rc = cli_manifest_read(cli, NULL, st, ref.id);
	if (rc)
		goto out;
	rc = cli_keys(cli, false, &keys);
	if (rc)
		goto out;
	rc = cli_lock_take(cli, st, ref.id, &owner);
	if (rc)
		goto out;

	co.owner = owner;
	co.author = cli_opt(cli, OPT_AUTHOR) ? cli_opt(cli, OPT_AUTHOR)
					     : "contextsdk";
	co.message = cli_opt(cli, OPT_MESSAGE);
	co.progress = cli_progress_cb;
	co.progress_payload = cli;
	cli_progress_begin(cli, "restore");
	rc = cfs_context_restore(&cr, st, keys, refstr, &co);
	cli_progress_end(cli);
	cli_lock_drop(cli, st, ref.id, owner);
	owner = NULL;
	if (rc)
		goto out;

	cli_add_commit_result(cli, ref.id, &cr);
	cJSON_AddStringToObject(cli_result(cli), "restoredFrom", refstr);
	cli_print(cli, "restored %s as generation %llu of %s\n", refstr,
		  (unsigned long long)cr.generation, ref.id);
out:
	cfs_commit_result_clear(&cr);
	if (owner)
		cli_lock_drop(cli, st, ref.id, owner);
	cfs_keys_free(keys);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_restore = {
	.name = "restore",
	.args = "ID@GEN|ID@checkpoint:N [-m MSG] [--author A]",
	.summary = "commit an older generation or checkpoint as the next "
		   "generation",
	.help = "  -m, --message MSG   version message (default \"restore "
		"<ref>\")\n"
		"  --author A          version author (default contextsdk)\n"
		"\nA generation whose data is no longer retained exits 3.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = 1,
	.run = run,
	.defer_signals = true,
};
