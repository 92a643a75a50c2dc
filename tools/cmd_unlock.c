/*
 * contextfs unlock: releases a context's lock. Without --force only the
 * lock's own owner (--owner) may release it; --force removes any lock (for
 * a writer that died; a live writer then fails at its commit point rather
 * than overwrite anything).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "core/ids.h"
#include "core/lock.h"
#include "tools/cli.h"

enum { OPT_FORCE, OPT_OWNER };

static const struct cli_opt opts[] = {
	{"force", 'f', false, OPT_FORCE},
	{"owner", 0, true, OPT_OWNER},
	{NULL, 0, false, 0},
};

static int run(struct cli *cli)
{
	const char *id = cli->argv[0];
	const char *owner = cli_opt(cli, OPT_OWNER);
	bool force = cli_flag(cli, OPT_FORCE);
	bool lock_was_corrupt = false;
	struct cfs_store *st = NULL;
	struct cfs_lock *lock = NULL;
	char *prev = NULL;
	cJSON *res;
	int rc;

	rc = cfs_id_check(id);
	if (rc)
		goto out;
	rc = cli_store_open(cli, &st);
	if (rc)
		goto out;
	rc = cfs_lock_read(&lock, st, id);
	if (rc == CFS_ECORRUPT && force) {
		cfs_error_clear();
		rc = 0;
		lock_was_corrupt = true;
	} else if (rc) {
		goto out;
	}
	if (lock && cfs_lock_owner(lock)) {
		prev = cfs_strdup(cfs_lock_owner(lock));
		if (!prev) {
			rc = CFS_ENOMEM;
			goto out;
		}
	}
	if (lock && !force && (!owner || !prev || strcmp(owner, prev) != 0)) {
		rc = cfs_error_set(CFS_ELOCKED,
				   "cannot release lock owned by %s (pass "
				   "--owner %s, or --force if that writer is "
				   "dead)",
				   prev ? prev : "an unknown owner",
				   prev ? prev : "OWNER");
		goto out;
	}
	rc = cfs_lock_release(st, id, owner, force);
	if (rc == CFS_ECORRUPT && force) {
		/* Unreadable lock data: --force removes the object itself. */
		char key[CFS_KEY_MAX];

		rc = cfs_key_lock(key, id);
		if (!rc)
			rc = cfs_store_delete(st, key);
		lock_was_corrupt = true;
	}
	if (rc)
		goto out;

	res = cli_result(cli);
	cJSON_AddStringToObject(res, "id", id);
	cJSON_AddBoolToObject(res, "released", lock || lock_was_corrupt);
	cli_json_add_str_or_null(res, "previousOwner", prev);
	if (lock_was_corrupt && !lock)
		cli_print(cli, "removed the corrupt lock of %s\n", id);
	else if (lock)
		cli_print(cli, "released the lock of %s (was held by %s)\n", id,
			  prev ? prev : "?");
	else
		cli_print(cli, "%s is not locked\n", id);
out:
	free(prev);
	cfs_lock_free(lock);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_unlock = {
	.name = "unlock",
	.args = "ID [--force] [--owner OWNER]",
	.summary = "release the lock of a context",
	.help = "  --owner OWNER   release only if the lock belongs to OWNER\n"
		"  -f, --force     release whoever holds it (use only when "
		"that writer is dead)\n"
		"\nA context that is not locked is not an error.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = 1,
	.run = run,
};
