/*
 * contextfs umount / sync / mount-status: the commands that talk to a
 * running mount through its control socket (fuse/mount.h).
 *   umount MOUNTPOINT [--force]   final commit, unmount, wait for the
 *                                 daemon to release the lock
 *   sync MOUNTPOINT [-m MSG]      commit now; returns once it landed
 *   mount-status MOUNTPOINT       clean/dirty, generation, pending error
 */
#include <string.h>

#include "core/error.h"
#include "fuse/mount.h"
#include "tools/cli.h"

enum { OPT_FORCE, OPT_MESSAGE };

static const struct cli_opt umount_opts[] = {
	{"force", 0, false, OPT_FORCE},
	{NULL, 0, false, 0},
};

static const struct cli_opt sync_opts[] = {
	{"message", 'm', true, OPT_MESSAGE},
	{NULL, 0, false, 0},
};

static const struct cli_opt status_opts[] = {
	{NULL, 0, false, 0},
};

static int run_umount(struct cli *cli)
{
	int rc = cfs_mount_unmount(cli->argv[0], cli_flag(cli, OPT_FORCE),
				   120000);
	if (rc == 0) {
		cJSON *res = cli_result(cli);
		if (res)
			cJSON_AddStringToObject(res, "mountpoint",
						cli->argv[0]);
		cli_print(cli, "unmounted %s\n", cli->argv[0]);
	}
	return rc;
}

/* Copies the daemon's status members into the CLI result. */
static void add_status(struct cli *cli, const cJSON *rep)
{
	cJSON *res = cli_result(cli);
	const cJSON *it;

	if (!res || !rep)
		return;
	cJSON_ArrayForEach(it, rep)
	{
		if (strcmp(it->string, "ok") == 0)
			continue;
		cJSON_AddItemToObject(res, it->string, cJSON_Duplicate(it, 1));
	}
}

static const char *str_of(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static double num_of(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

static int request(struct cli *cli, const char *op, const char *msg)
{
	cJSON *req = cJSON_CreateObject(), *rep = NULL;
	int rc;

	if (!req)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	cJSON_AddStringToObject(req, "op", op);
	if (msg)
		cJSON_AddStringToObject(req, "message", msg);
	rc = cfs_mount_request(&rep, cli->argv[0], req);
	if (rc == 0) {
		add_status(cli, rep);
		const char *err = str_of(rep, "pendingError");
		if (strcmp(op, "commit") == 0)
			cli_print(cli, "%s: generation %.0f of %s landed\n",
				  cli->argv[0], num_of(rep, "generation"),
				  str_of(rep, "id") ? str_of(rep, "id") : "?");
		else
			cli_print(
				cli,
				"%s: %s, generation %.0f of %s%s%s\n"
				"staging: %s\nlongest writer stall: %.1f "
				"ms\n",
				cli->argv[0],
				str_of(rep, "state") ? str_of(rep, "state")
						     : "?",
				num_of(rep, "generation"),
				str_of(rep, "ref") ? str_of(rep, "ref") : "?",
				err ? "\npending error: " : "", err ? err : "",
				str_of(rep, "staging") ? str_of(rep, "staging")
						       : "?",
				num_of(rep, "maxWriterStallMs"));
	}
	cJSON_Delete(req);
	cJSON_Delete(rep);
	return rc;
}

static int run_sync(struct cli *cli)
{
	return request(cli, "commit", cli_opt(cli, OPT_MESSAGE));
}

static int run_status(struct cli *cli)
{
	return request(cli, "status", NULL);
}

const struct cli_command cli_cmd_umount = {
	.name = "umount",
	.args = "MOUNTPOINT [--force]",
	.summary = "commit, unmount and release the lock of a mount",
	.help = "  --force   unmount even if the final commit fails (the "
		"changes stay staged)\n",
	.opts = umount_opts,
	.min_args = 1,
	.max_args = 1,
	.run = run_umount,
};

const struct cli_command cli_cmd_sync = {
	.name = "sync",
	.args = "MOUNTPOINT [-m MSG]",
	.summary = "commit a mount now; returns once the manifest landed",
	.help = "  -m, --message MSG   commit message\n",
	.opts = sync_opts,
	.min_args = 1,
	.max_args = 1,
	.run = run_sync,
};

const struct cli_command cli_cmd_mount_status = {
	.name = "mount-status",
	.args = "MOUNTPOINT",
	.summary = "clean/dirty, last landed generation, pending error",
	.help = "",
	.opts = status_opts,
	.min_args = 1,
	.max_args = 1,
	.run = run_status,
};
