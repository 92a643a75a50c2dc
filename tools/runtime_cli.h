/*
 * Runtime selection shared by `contextfs run` and `contextfs probe`:
 * --runtime NAME (or the config's defaultRuntime) and the local adapter's
 * --sandbox auto|bwrap|plain.
 */
#ifndef CFS_TOOLS_RUNTIME_CLI_H
#define CFS_TOOLS_RUNTIME_CLI_H

#include "core/runtime.h"
#include "tools/cli.h"

/*
 * Creates a runtime through its provisioner. name NULL -> config
 * defaultRuntime, else CFS_EINVAL "--runtime is required ...". Release
 * with cli_runtime_close().
 */
int cli_runtime_open(struct cli *cli, const char *name, const char *sandbox,
		     const char *context_id, struct cfs_provisioner **prov_out,
		     struct cfs_runtime **rt_out);
void cli_runtime_close(struct cfs_provisioner *prov, struct cfs_runtime *rt);

/* Adds {runtimeId, provider, capabilities} members to obj. */
void cli_runtime_describe(cJSON *obj, const struct cfs_runtime *rt);

#endif
