/*
 * contextfs verify: downloads, authenticates and validates every object the
 * manifest references (current tree, retained generations, checkpoints with
 * known decryption metadata). Nothing is written anywhere but private temp
 * files. Exits with the code of the first failure.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/context.h"
#include "core/crypto.h"
#include "core/error.h"
#include "core/ids.h"
#include "tools/cli.h"

static const struct cli_opt opts[] = {
	{NULL, 0, false, 0},
};

struct verify_state {
	struct cli *cli;
	cJSON *objects;
	size_t failed;
};

static int on_item(const struct cfs_verify_item *it, void *payload)
{
	struct verify_state *vs = payload;
	cJSON *o = cJSON_CreateObject();
	char size[32];

	if (!o)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	cJSON_AddItemToArray(vs->objects, o);
	cJSON_AddStringToObject(o, "key", it->key ? it->key : "");
	cJSON_AddStringToObject(o, "role", it->role ? it->role : "");
	cJSON_AddBoolToObject(o, "ok", it->ok);
	cJSON_AddNumberToObject(o, "bytes", (double)it->bytes);
	if (!it->ok) {
		cJSON *e = cJSON_AddObjectToObject(o, "error");

		vs->failed++;
		cJSON_AddStringToObject(e, "code", cfs_error_name(it->error));
		cJSON_AddStringToObject(e, "message",
					it->message ? it->message : "");
	}
	if (vs->cli->json)
		return 0;
	cli_progress_end(vs->cli);
	cli_format_bytes(size, sizeof(size), it->bytes);
	if (it->ok)
		printf("ok      %-14s %s (%s)\n", it->role, it->key, size);
	else if (it->message && it->key &&
		 strncmp(it->message, it->key, strlen(it->key)) == 0)
		printf("FAILED  %-14s %s\n", it->role, it->message);
	else
		printf("FAILED  %-14s %s: %s\n", it->role, it->key,
		       it->message ? it->message : cfs_error_name(it->error));
	fflush(stdout);
	return 0;
}

static int run(struct cli *cli)
{
	const char *id = cli->argv[0];
	struct verify_state vs = {0};
	struct cfs_store *st = NULL;
	struct cfs_keys *keys = NULL;
	cJSON *res;
	int rc, n;

	rc = cfs_id_check(id);
	if (rc)
		goto out;
	rc = cli_store_open(cli, &st);
	if (rc)
		goto out;
	rc = cli_manifest_read(cli, NULL, st, id);
	if (rc)
		goto out;
	rc = cli_keys(cli, false, &keys);
	if (rc)
		goto out;

	res = cli_result(cli);
	cJSON_AddStringToObject(res, "id", id);
	vs.cli = cli;
	vs.objects = cJSON_AddArrayToObject(res, "objects");
	if (!vs.objects) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	if (cli->progress_enabled) {
		st->progress = cli_progress_cb;
		st->progress_payload = cli;
	}
	cli_progress_begin(cli, "verify");
	rc = cfs_context_verify(st, keys, id, on_item, &vs);
	cli_progress_end(cli);
	n = cJSON_GetArraySize(vs.objects);
	if (rc) {
		if (vs.failed)
			cfs_error_prefix("%zu of %d objects of %s failed "
					 "verification; first",
					 vs.failed, n, id);
		goto out;
	}
	cli_print(cli, "%s: %d object%s verified\n", id, n, n == 1 ? "" : "s");
out:
	cfs_keys_free(keys);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_verify = {
	.name = "verify",
	.args = "ID",
	.summary = "download, authenticate and validate every stored object",
	.help = "Checks the current tree, the retained generations and the "
		"checkpoints whose\ndecryption metadata is known. Exits with "
		"the code of the first failure\n(5 wrong key or tampered data, "
		"6 unsafe archive, 3 missing object).\n",
	.opts = opts,
	.min_args = 1,
	.max_args = 1,
	.run = run,
	.defer_signals = true,
};
