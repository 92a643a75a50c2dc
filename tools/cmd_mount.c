/*
 * contextfs mount: serves a context as a live directory (fuse/mount.h).
 * Without -f the command returns once the mount answers, or fails with
 * the daemon's reason; with -f it serves in the foreground until the
 * mount ends. Historical refs (ID@GEN, ID@checkpoint:N) mount read-only.
 */
#include <stdlib.h>
#include <string.h>

#include "core/crypto.h"
#include "core/error.h"
#include "core/store.h"
#include "fuse/mount.h"
#include "tools/cli.h"

enum { OPT_O, OPT_FG, OPT_LOG, OPT_DEBUG };

static const struct cli_opt opts[] = {
	{"options", 'o', true, OPT_O},
	{"foreground", 'f', false, OPT_FG},
	{"log-file", 0, true, OPT_LOG},
	{"debug", 'd', false, OPT_DEBUG},
	{NULL, 0, false, 0},
};

static int run(struct cli *cli)
{
	struct cfs_mount_opts mo;
	struct cfs_store *st = NULL;
	struct cfs_keys *keys = NULL;
	int rc;

	cfs_mount_opts_init(&mo);
	mo.ref = cli->argv[0];
	mo.mountpoint = cli->argv[1];
	mo.foreground = cli_flag(cli, OPT_FG);
	mo.debug = cli_flag(cli, OPT_DEBUG);
	if (cli_opt(cli, OPT_O)) {
		rc = cfs_mount_opts_parse(&mo, cli_opt(cli, OPT_O));
		if (rc)
			goto out;
	}
	if (cli_opt(cli, OPT_LOG)) {
		rc = cfs_mount_opts_parse(&mo, "log_file=x");
		if (rc)
			goto out;
		free(mo.log_file);
		mo.log_file = strdup(cli_opt(cli, OPT_LOG));
		if (!mo.log_file) {
			rc = cfs_error_set(CFS_ENOMEM, "out of memory");
			goto out;
		}
	}
	/* A writable mount proves conditional writes first (on S3), on its
	 * own connections: the daemon forks after this. */
	if (mo.read_only || strchr(mo.ref, '@'))
		rc = cli_store_open(cli, &st);
	else
		rc = cli_store_open_write(cli, &st, true);
	if (rc)
		goto out;
	rc = cli_keys(cli, false, &keys);
	if (rc)
		goto out;
	mo.store = st;
	mo.keys = keys;
	rc = cfs_mount_run(&mo);
	if (rc == 0) {
		cJSON *res = cli_result(cli);
		if (res) {
			cJSON_AddStringToObject(res, "ref", mo.ref);
			cJSON_AddStringToObject(res, "mountpoint",
						mo.mountpoint);
		}
		if (!mo.foreground)
			cli_print(cli, "mounted %s on %s\n", mo.ref,
				  mo.mountpoint);
	}
out:
	cfs_mount_opts_clear(&mo);
	cfs_keys_free(keys);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_mount = {
	.name = "mount",
	.args = "ID[@GEN|@checkpoint:N] MOUNTPOINT [-o OPTIONS] [-f]",
	.summary = "serve a context as a live directory (FUSE)",
	.help = "  -o OPTIONS      comma-separated: ro, cache=DIR, "
		"fsync=commit|local,\n"
		"                  lock_ttl=SECONDS, attr_timeout=SECONDS, "
		"commit_interval=SECONDS,\n"
		"                  checkpoint_interval=SECONDS, author=NAME, "
		"log_file=FILE,\n"
		"                  allow_other, writeback_cache, debug\n"
		"  -f, --foreground  stay in the foreground (log to stderr)\n"
		"  --log-file FILE   daemon log (default: syslog)\n"
		"  -d, --debug       log every request\n"
		"fsync, fsyncdir, `contextfs commit MOUNTPOINT` and unmount "
		"commit the\ntree as the next generation and return once it "
		"has landed.\n",
	.opts = opts,
	.min_args = 2,
	.max_args = 2,
	.run = run,
};
