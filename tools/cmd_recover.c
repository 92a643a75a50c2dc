/*
 * contextfs recover ID [--into DIR] [--cache DIR]: saves what a mount that
 * died (kill -9, crash, power loss) left staged on this machine
 * (fuse/mount.h, cfs_mount_recover): commits it when its base is still
 * the current generation, else moves it aside; says what it did.
 */
#include <stdlib.h>

#include "core/crypto.h"
#include "core/error.h"
#include "core/store.h"
#include "fuse/mount.h"
#include "tools/cli.h"

enum { OPT_INTO, OPT_CACHE, OPT_MESSAGE, OPT_AUTHOR };

static const struct cli_opt opts[] = {
	{"into", 0, true, OPT_INTO},
	{"cache", 0, true, OPT_CACHE},
	{"message", 'm', true, OPT_MESSAGE},
	{"author", 0, true, OPT_AUTHOR},
	{NULL, 0, false, 0},
};

static const char *action_name(enum cfs_recover_action a)
{
	switch (a) {
	case CFS_RECOVER_COMMITTED:
		return "committed";
	case CFS_RECOVER_MOVED:
		return "moved";
	default:
		return "none";
	}
}

static int run(struct cli *cli)
{
	struct cfs_recover_opts ro = {0};
	struct cfs_recover_result res = {0};
	struct cfs_store *st = NULL;
	struct cfs_keys *keys = NULL;
	cJSON *out;
	int rc;

	ro.id = cli->argv[0];
	ro.into = cli_opt(cli, OPT_INTO);
	ro.cache_dir = cli_opt(cli, OPT_CACHE);
	ro.message = cli_opt(cli, OPT_MESSAGE);
	ro.author = cli_opt(cli, OPT_AUTHOR);
	rc = cli_store_open_write(cli, &st, false);
	if (rc)
		goto out;
	rc = cli_manifest_read(cli, NULL, st, ro.id);
	if (rc)
		goto out;
	rc = cli_keys(cli, false, &keys);
	if (rc)
		goto out;
	ro.store = st;
	ro.keys = keys;
	rc = cfs_mount_recover(&res, &ro);
	if (rc) {
		if (res.staging)
			cfs_error_prefix("recover %s: the staged tree stays in "
					 "%s/tree",
					 ro.id, res.staging);
		goto out;
	}
	out = cli_result(cli);
	if (out) {
		cJSON_AddStringToObject(out, "id", ro.id);
		cJSON_AddStringToObject(out, "action", action_name(res.action));
		cJSON_AddStringToObject(out, "staging", res.staging);
		if (res.base_generation > 0)
			cJSON_AddNumberToObject(out, "baseGeneration",
						(double)res.base_generation);
		else
			cJSON_AddNullToObject(out, "baseGeneration");
		if (res.action != CFS_RECOVER_NONE)
			cJSON_AddNumberToObject(out, "currentGeneration",
						(double)res.current_generation);
		if (res.action == CFS_RECOVER_COMMITTED)
			cJSON_AddNumberToObject(out, "generation",
						(double)res.generation);
		cli_json_add_str_or_null(out, "path", res.path);
		cli_json_add_str_or_null(out, "tookOverLockOf", res.dead_owner);
		cli_json_add_str_or_null(out, "unmounted", res.unmounted);
	}
	if (res.unmounted)
		cli_print(cli, "unmounted %s, a dead mount of %s\n",
			  res.unmounted, ro.id);
	if (res.dead_owner)
		cli_print(cli,
			  "took over the lock of %s held by %s (its "
			  "process is gone)\n",
			  ro.id, res.dead_owner);
	switch (res.action) {
	case CFS_RECOVER_NONE:
		cli_print(cli,
			  "nothing to recover: no staged tree of %s in %s\n",
			  ro.id, res.staging);
		break;
	case CFS_RECOVER_COMMITTED:
		cli_print(cli,
			  "committed the staged changes of %s (based on "
			  "generation %lld) as generation %llu\n",
			  ro.id, (long long)res.base_generation,
			  (unsigned long long)res.generation);
		break;
	case CFS_RECOVER_MOVED:
		if (res.base_generation > 0)
			cli_print(cli,
				  "%s moved on (generation %llu) since the "
				  "staged tree's base generation %lld: moved "
				  "it to %s, not committed\n",
				  ro.id,
				  (unsigned long long)res.current_generation,
				  (long long)res.base_generation, res.path);
		else
			cli_print(cli,
				  "the staged tree of %s has no known base "
				  "generation: moved it to %s, not committed\n",
				  ro.id, res.path);
		break;
	}
out:
	cfs_recover_result_clear(&res);
	cfs_keys_free(keys);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_recover = {
	.name = "recover",
	.args = "ID [--into DIR] [--cache DIR] [-m MSG] [--author A]",
	.summary = "save what a mount that died left staged on this machine",
	.help = "  --into DIR      where to move the staged tree when it cannot "
		"be committed\n"
		"                  (default <cache>/contextfs/mounts/ID/"
		"recovered-<ms>)\n"
		"  --cache DIR     the mount's cache=DIR (default "
		"$XDG_CACHE_HOME or ~/.cache)\n"
		"  -m, --message MSG   version message of the recovery commit\n"
		"  --author A      version author\n"
		"\nWhen the staged tree's base is still the current generation "
		"it is committed\n(a lock left by the dead mount on this "
		"machine is taken over); otherwise it\nis moved aside, never "
		"deleted. Refused while a mount of ID uses the staging area.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = 1,
	.run = run,
};
