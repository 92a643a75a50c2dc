/*
 * Runtime selection shared by `contextfs run` and `contextfs probe`:
 * --runtime NAME (or the config's defaultRuntime), the local adapter's
 * --sandbox auto|bwrap|plain and the ssh / e2b / vercel options.
 */
#ifndef CFS_TOOLS_RUNTIME_CLI_H
#define CFS_TOOLS_RUNTIME_CLI_H

#include <signal.h>

#include "core/runtime.h"
#include "tools/cli.h"

/* Option ids shared by the commands; their own ids start at RT_OPT_COUNT. */
enum {
	RT_OPT_RUNTIME,
	RT_OPT_SANDBOX,
	RT_OPT_SSH_HOST,
	RT_OPT_SSH_USER,
	RT_OPT_SSH_PORT,
	RT_OPT_SSH_KEY,
	RT_OPT_SSH_KNOWN_HOSTS,
	RT_OPT_SSH_ACCEPT_NEW,
	RT_OPT_SSH_DIR,
	RT_OPT_E2B_TEMPLATE,
	RT_OPT_VERCEL_RUNTIME,
	RT_OPT_COUNT,
};

#define CLI_RUNTIME_OPTS                                                      \
	{"runtime", 0, true, RT_OPT_RUNTIME},                                 \
		{"sandbox", 0, true, RT_OPT_SANDBOX},                         \
		{"ssh-host", 0, true, RT_OPT_SSH_HOST},                       \
		{"ssh-user", 0, true, RT_OPT_SSH_USER},                       \
		{"ssh-port", 0, true, RT_OPT_SSH_PORT},                       \
		{"ssh-key", 0, true, RT_OPT_SSH_KEY},                         \
		{"ssh-known-hosts", 0, true, RT_OPT_SSH_KNOWN_HOSTS},         \
		{"ssh-accept-new-host-key", 0, false, RT_OPT_SSH_ACCEPT_NEW}, \
		{"ssh-dir", 0, true, RT_OPT_SSH_DIR},                         \
		{"e2b-template", 0, true, RT_OPT_E2B_TEMPLATE},               \
	{                                                                     \
		"vercel-runtime", 0, true, RT_OPT_VERCEL_RUNTIME              \
	}

#define CLI_RUNTIME_HELP                                                      \
	"  --runtime R              local, ssh, e2b or vercel (default: the " \
	"config's "                                                           \
	"defaultRuntime)\n"                                                   \
	"  --sandbox MODE           local: auto (bubblewrap when it works), " \
	"bwrap, plain\n"                                                      \
	"  --ssh-host H, --ssh-user U, --ssh-port N, --ssh-key FILE\n"        \
	"                           ssh: where to connect (config "           \
	"providers.ssh)\n"                                                    \
	"  --ssh-known-hosts FILE   ssh: host keys to verify against "        \
	"(default ~/.ssh/known_hosts)\n"                                      \
	"  --ssh-accept-new-host-key  ssh: record an unknown host's key\n"    \
	"  --ssh-dir DIR            ssh: remote base for tmp/ and mnt/ "      \
	"(default ~/.contextsdk)\n"                                           \
	"  --e2b-template T         e2b: sandbox template (default base; "    \
	"key in E2B_API_KEY)\n"                                               \
	"  --vercel-runtime R       vercel: image (default python3.13; "      \
	"VERCEL_TOKEN, _TEAM_ID,\n"                                           \
	"                           _PROJECT_ID or VERCEL_OIDC_TOKEN)\n"

/*
 * Creates the runtime the RT_OPT_* options (or the config's
 * defaultRuntime and providers.ssh) select. Release with
 * cli_runtime_close().
 */
int cli_runtime_open(struct cli *cli, const char *context_id,
		     struct cfs_provisioner **prov_out,
		     struct cfs_runtime **rt_out);
void cli_runtime_close(struct cfs_provisioner *prov, struct cfs_runtime *rt);

/*
 * SIGINT / SIGTERM while a sandbox command runs (run, push): the first
 * signal is recorded in cli_stop_signal and cli_stop_cancel is set (point
 * a runtime's cancel at it, so the command stops); the command then saves
 * or cleans up and exits 128 + signal. install resets both and keeps the
 * previous handlers in old, restore puts them back.
 */
extern volatile sig_atomic_t cli_stop_cancel;

/*
 * Test-only: with env_name=PATH in the environment, creates PATH and waits,
 * a minute at most, until a test removes it (a window in which the test
 * changes the world). Unset, as outside the tests, it does nothing; it
 * never replaces an existing PATH.
 */
void cli_test_pause(const char *env_name);
extern volatile sig_atomic_t cli_stop_signal;
void cli_stop_signals_install(struct sigaction old[2]);
void cli_stop_signals_restore(const struct sigaction old[2]);

/* Adds {runtimeId, provider, capabilities} members to obj. */
void cli_runtime_describe(cJSON *obj, const struct cfs_runtime *rt);

#endif
