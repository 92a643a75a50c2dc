/*
 * contextfs commit: takes the context's lock, commits the managed roots of
 * a local directory as the next generation, releases the lock. The
 * directory is only read.
 *
 * `contextfs commit MOUNTPOINT [-m MSG]` asks the mount serving
 * MOUNTPOINT to commit (tools/mount_cli.h), like `contextfs sync`.
 */
#include <stdlib.h>
#include <unistd.h>

#include "core/context.h"
#include "core/error.h"
#include "core/ids.h"
#include "tools/cli.h"
#include "tools/mount_cli.h"

enum { OPT_FROM, OPT_MESSAGE, OPT_AUTHOR, OPT_EXPECT };

static const struct cli_opt opts[] = {
	{"from", 0, true, OPT_FROM},
	{"message", 'm', true, OPT_MESSAGE},
	{"author", 0, true, OPT_AUTHOR},
	{"expect-generation", 0, true, OPT_EXPECT},
	{NULL, 0, false, 0},
};

static int run(struct cli *cli)
{
	const char *id = cli->argv[0];
	const char *from = cli_opt(cli, OPT_FROM);
	struct cfs_commit_opts co;
	struct cfs_commit_result cr = {0};
	char size[32];
	uint64_t expect = 0;
	int dirfd = -1, rc;
	uint64_t n;

	cfs_commit_opts_init(&co);
	if (cli_is_mountpoint(id)) {
		if (from || cli_opt(cli, OPT_AUTHOR) ||
		    cli_opt(cli, OPT_EXPECT))
			return cfs_error_set(CFS_EINVAL,
					     "commit MOUNTPOINT takes only -m "
					     "MSG (the mount commits its own "
					     "tree)");
		return cli_mount_commit(cli, id, cli_opt(cli, OPT_MESSAGE));
	}
	rc = cfs_id_check(id);
	if (rc)
		goto out;
	if (!from) {
		rc = cfs_error_set(CFS_EINVAL,
				   "commit needs --from DIR (the directory "
				   "holding workspace/, memory/, ...)");
		goto out;
	}
	if (cli_opt(cli, OPT_EXPECT)) {
		rc = cli_parse_u64(&expect, "--expect-generation",
				   cli_opt(cli, OPT_EXPECT), 1, INT64_MAX);
		if (rc)
			goto out;
		co.expect_generation = (int64_t)expect;
	}
	rc = cli_open_dir(&dirfd, "--from directory", from);
	if (rc)
		goto out;

	co.kind = CFS_COMMIT_SAVE;
	co.author = cli_opt(cli, OPT_AUTHOR) ? cli_opt(cli, OPT_AUTHOR)
					     : "contextsdk";
	co.message = cli_opt(cli, OPT_MESSAGE);
	rc = cli_commit_dir_locked(cli, &cr, id, dirfd, "commit", &co);
	if (rc)
		goto out;

	cli_add_commit_result(cli, id, &cr);
	n = cr.changed_total;
	cli_format_bytes(size, sizeof(size), cr.size_bytes);
	cli_print(cli,
		  "committed %s generation %llu (%s, %llu changed path%s)\n",
		  id, (unsigned long long)cr.generation, size,
		  (unsigned long long)n, n == 1 ? "" : "s");
out:
	cfs_commit_result_clear(&cr);
	if (dirfd >= 0)
		close(dirfd);
	return rc;
}

const struct cli_command cli_cmd_commit = {
	.name = "commit",
	.args = "ID --from DIR [-m MSG] [--author A] [--expect-generation N] | "
		"MOUNTPOINT [-m MSG]",
	.summary = "commit a directory, or a mount, as the next generation",
	.help = "  --from DIR               directory with the context roots "
		"(workspace/, memory/,\n"
		"                           artifacts/, logs/, config/, "
		"contextsdk.json)\n"
		"  -m, --message MSG        version message\n"
		"  --author A               version author (default "
		"contextsdk)\n"
		"  --expect-generation N    fail (exit 4) unless the current "
		"generation is N\n"
		"\nTakes the context lock for the duration; a lock held by "
		"another writer exits 4.\n"
		"With a contextfs MOUNTPOINT: the mount commits its tree now "
		"and the command\nreturns once the new manifest landed.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = 1,
	.run = run,
	.defer_signals = true,
};
