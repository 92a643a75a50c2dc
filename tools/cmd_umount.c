/*
 * contextfs umount / sync / mount-status: the commands that talk to a
 * running mount through its control socket (fuse/mount.h).
 *   umount MOUNTPOINT [--force]   final commit, unmount, wait for the
 *                                 daemon to release the lock
 *   sync MOUNTPOINT [-m MSG]      commit now; returns once it landed
 *                                 (also `commit MOUNTPOINT [-m MSG]`)
 *   mount-status MOUNTPOINT       clean/dirty, generation, pending error
 *                                 (also `status MOUNTPOINT`)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "fuse/mount.h"
#include "tools/cli.h"
#include "tools/mount_cli.h"

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

bool cli_is_mountpoint(const char *arg)
{
	return cfs_mount_is_mountpoint(arg) || cfs_mount_is_stale(arg, NULL);
}

/* A dead daemon: say what to do instead of "cannot reach". */
static int dead_mount_error(const char *mountpoint)
{
	char *id = NULL;
	int rc;

	if (!cfs_mount_is_stale(mountpoint, &id))
		return 0;
	rc = cfs_error_set(CFS_EIO,
			   "%s is a contextfs mount of %s whose daemon is gone "
			   "(transport endpoint is not connected): `contextfs "
			   "umount %s` cleans it up and `contextfs recover %s` "
			   "saves what it staged",
			   mountpoint, id ? id : "?", mountpoint,
			   id ? id : "ID");
	free(id);
	return rc;
}

static void print_status(struct cli *cli, const char *mountpoint,
			 const cJSON *rep)
{
	const char *err = str_of(rep, "pendingError");
	const char *ckerr = str_of(rep, "checkpointError");

	cli_print(cli,
		  "%s: %s, generation %.0f of %s (checkpoint %.0f)%s%s%s%s\n"
		  "staging: %s\nlongest writer stall: %.1f ms\n",
		  mountpoint, str_of(rep, "state") ? str_of(rep, "state") : "?",
		  num_of(rep, "generation"),
		  str_of(rep, "ref") ? str_of(rep, "ref") : "?",
		  num_of(rep, "checkpointGeneration"),
		  err ? "\npending error: " : "", err ? err : "",
		  ckerr ? "\ncheckpoint error: " : "", ckerr ? ckerr : "",
		  str_of(rep, "staging") ? str_of(rep, "staging") : "?",
		  num_of(rep, "maxWriterStallMs"));
}

static int request(struct cli *cli, const char *mountpoint, const char *op,
		   const char *msg)
{
	cJSON *req, *rep = NULL;
	int rc;

	rc = dead_mount_error(mountpoint);
	if (rc)
		return rc;
	req = cJSON_CreateObject();
	if (!req)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	cJSON_AddStringToObject(req, "op", op);
	if (msg)
		cJSON_AddStringToObject(req, "message", msg);
	rc = cfs_mount_request(&rep, mountpoint, req);
	if (rc == 0) {
		add_status(cli, rep);
		if (strcmp(op, "commit") == 0)
			cli_print(cli, "%s: generation %.0f of %s landed\n",
				  mountpoint, num_of(rep, "generation"),
				  str_of(rep, "id") ? str_of(rep, "id") : "?");
		else
			print_status(cli, mountpoint, rep);
	}
	cJSON_Delete(req);
	cJSON_Delete(rep);
	return rc;
}

int cli_mount_commit(struct cli *cli, const char *mountpoint, const char *msg)
{
	return request(cli, mountpoint, "commit", msg);
}

int cli_mount_status(struct cli *cli, const char *mountpoint)
{
	return request(cli, mountpoint, "status", NULL);
}

void cli_mount_doctor(struct cli *cli, cJSON *res)
{
	cJSON *doc = cfs_mount_doctor_json(NULL);
	const cJSON *it;

	if (!doc)
		return;
	if (!cli->json) {
		const cJSON *mounts =
			cJSON_GetObjectItemCaseSensitive(doc, "mounts");
		const cJSON *left =
			cJSON_GetObjectItemCaseSensitive(doc, "leftovers");
		printf("mounts:%s\n",
		       cJSON_GetArraySize(mounts) ? "" : " none");
		cJSON_ArrayForEach(it, mounts)
		{
			const cJSON *alive =
				cJSON_GetObjectItemCaseSensitive(it, "alive");
			printf("  %s  %s  %s\n",
			       str_of(it, "mountpoint") ? str_of(it, "mountpoint")
							: "?",
			       str_of(it, "id") ? str_of(it, "id") : "?",
			       !cJSON_IsTrue(alive)  ? "DEAD (contextfs umount "
						       "it, then contextfs "
						       "recover ID)"
			       : str_of(it, "state") ? str_of(it, "state")
						     : "?");
		}
		printf("leftover staging in %s:%s\n",
		       str_of(doc, "cacheDir") ? str_of(doc, "cacheDir") : "?",
		       cJSON_GetArraySize(left) ? "" : " none");
		cJSON_ArrayForEach(it, left)
		{
			const cJSON *b = cJSON_GetObjectItemCaseSensitive(
				it, "baseGeneration");
			printf("  %s  %s  %s (base generation %.0f)%s\n",
			       str_of(it, "id") ? str_of(it, "id") : "?",
			       str_of(it, "kind") ? str_of(it, "kind") : "?",
			       str_of(it, "path") ? str_of(it, "path") : "?",
			       cJSON_IsNumber(b) ? b->valuedouble : 0,
			       strcmp(str_of(it, "kind") ? str_of(it, "kind")
							 : "",
				      "staged") == 0
				       ? ": contextfs recover ID saves it"
				       : "");
		}
	}
	if (res)
		cJSON_AddItemToObject(res, "fuse", doc);
	else
		cJSON_Delete(doc);
}

static int run_sync(struct cli *cli)
{
	return cli_mount_commit(cli, cli->argv[0], cli_opt(cli, OPT_MESSAGE));
}

static int run_status(struct cli *cli)
{
	return cli_mount_status(cli, cli->argv[0]);
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
