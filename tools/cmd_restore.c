/*
 * contextfs restore: commits an older generation or a checkpoint as the
 * next generation (history is kept; nothing is rewound), under the lock.
 */
#include <stdlib.h>

#include "core/context.h"
#include "core/error.h"
#include "core/ids.h"
#include "tools/cli.h"

enum { OPT_MESSAGE, OPT_AUTHOR };

static const struct cli_opt opts[] = {
	{"message", 'm', true, OPT_MESSAGE},
	{"author", 0, true, OPT_AUTHOR},
	{NULL, 0, false, 0},
};

static int restore_ref(struct cfs_commit_result *cr, struct cfs_store *st,
		       struct cfs_keys *keys, const struct cfs_commit_opts *co,
		       void *payload)
{
	return cfs_context_restore(cr, st, keys, payload, co);
}

static int run(struct cli *cli)
{
	const char *refstr = cli->argv[0];
	struct cfs_ref ref;
	struct cfs_commit_opts co;
	struct cfs_commit_result cr = {0};
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
	co.author = cli_opt(cli, OPT_AUTHOR) ? cli_opt(cli, OPT_AUTHOR)
					     : "contextsdk";
	co.message = cli_opt(cli, OPT_MESSAGE);
	rc = cli_write_locked(cli, &cr, ref.id, "restore", &co, restore_ref,
			      cli->argv[0]);
	if (rc)
		goto out;

	cli_add_commit_result(cli, ref.id, &cr);
	cJSON_AddStringToObject(cli_result(cli), "restoredFrom", refstr);
	cli_print(cli, "restored %s as generation %llu of %s\n", refstr,
		  (unsigned long long)cr.generation, ref.id);
out:
	cfs_commit_result_clear(&cr);
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
