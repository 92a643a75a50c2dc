/*
 * contextfs probe: creates a sandbox of the chosen runtime, checks that it
 * has the tools sessions need (tar zstd python3 sha256sum mkdir sync) and
 * disposes of it (REFERENCE.md §10.1 probeRuntime). Exit 0 when nothing
 * is missing, 1 otherwise.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/runtime.h"
#include "tools/cli.h"
#include "tools/runtime_cli.h"

static const struct cli_opt opts[] = {
	CLI_RUNTIME_OPTS,
	{NULL, 0, false, 0},
};

static const char *const checked[] = {"tar",	   "zstd",  "python3",
				      "sha256sum", "mkdir", "sync"};

static int run(struct cli *cli)
{
	struct cfs_provisioner *prov = NULL;
	struct cfs_runtime *rt = NULL;
	char *missing = NULL;
	cJSON *probe, *arr, *details, *tools;
	int rc;

	rc = cli_runtime_open(cli, NULL, &prov, &rt);
	if (rc)
		goto out;
	rc = cfs_runtime_probe(&missing, rt);
	if (rc)
		goto out;

	probe = cJSON_AddObjectToObject(cli_result(cli), "probe");
	if (probe) {
		cli_runtime_describe(probe, rt);
		arr = cJSON_AddArrayToObject(probe, "missingTools");
		for (char *p = missing, *sp; arr && p && *p; p = sp) {
			sp = strchr(p, ' ');
			if (sp)
				*sp++ = '\0';
			cJSON_AddItemToArray(arr, cJSON_CreateString(p));
			if (!sp)
				break;
		}
		cJSON_AddBoolToObject(probe, "ok", !*missing);
		details = cJSON_AddObjectToObject(probe, "details");
		tools = details ? cJSON_AddArrayToObject(details,
							 "checkedTools")
				: NULL;
		for (size_t i = 0;
		     tools && i < sizeof(checked) / sizeof(checked[0]); i++)
			cJSON_AddItemToArray(tools,
					     cJSON_CreateString(checked[i]));
		if (details)
			cJSON_AddBoolToObject(details, "isolated",
					      rt->caps.root_links);
	}
	cli_print(cli, "runtime %s (%s): %s%s\n", rt->id,
		  rt->caps.root_links		       ? "bubblewrap sandbox"
		  : strcmp(rt->provider, "local") == 0 ? "plain directory"
						       : "remote sandbox",
		  *missing ? "missing tools: " : "all tools present", missing);
	if (*missing) {
		if (cli->json)
			cJSON_ReplaceItemInObjectCaseSensitive(
				cli_result(cli), "ok", cJSON_CreateFalse());
		cli->exit_status = 1;
	}
out:
	free(missing);
	cli_runtime_close(prov, rt);
	return rc;
}

const struct cli_command cli_cmd_probe = {
	.name = "probe",
	.args = "--runtime local|ssh|e2b|vercel [runtime options]",
	.summary = "check that a runtime's sandboxes have the tools sessions "
		   "need",
	.help = CLI_RUNTIME_HELP
	"\nCreates a sandbox, looks for tar zstd python3 sha256sum "
	"mkdir sync, disposes of it.\nExit 1 when a tool is "
	"missing.\n",
	.opts = opts,
	.min_args = 0,
	.max_args = 0,
	.run = run,
};
