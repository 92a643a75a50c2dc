/*
 * contextfs: the command-line front end. This file is only the command
 * table; each command lives in tools/cmd_<name>.c and the shared plumbing
 * (parsing, keys, output, exit codes) in tools/cli.c.
 */
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#include "tools/cli.h"
#include "tools/mount_cli.h"

/* The mount commands (tools/cmd_mount.c, tools/cmd_umount.c). */
extern const struct cli_command cli_cmd_mount;
extern const struct cli_command cli_cmd_umount;
extern const struct cli_command cli_cmd_sync;
extern const struct cli_command cli_cmd_mount_status;
extern const struct cli_command cli_cmd_recover;
extern const struct cli_command cli_cmd_push;

/* Installed as contextfs-push: `contextfs-push ARGS` = `contextfs push ARGS`. */
static bool push_name(const char *argv0)
{
	const char *base = argv0 ? strrchr(argv0, '/') : NULL;

	base = base ? base + 1 : argv0;
	return base && strcmp(base, "contextfs-push") == 0;
}

const struct cli_command *const cli_commands[] = {
	&cli_cmd_init,
	&cli_cmd_status,
	&cli_cmd_log,
	&cli_cmd_list,
	&cli_cmd_commit,
	&cli_cmd_checkpoint,
	&cli_cmd_export,
	&cli_cmd_restore,
	&cli_cmd_verify,
	&cli_cmd_unlock,
	&cli_cmd_gc,
	&cli_cmd_doctor,
	&cli_cmd_mount,
	&cli_cmd_umount,
	&cli_cmd_sync,
	&cli_cmd_mount_status,
	&cli_cmd_recover, /* tools/cmd_recover.c */
	&cli_cmd_run, /* tools/cmd_run.c */
	&cli_cmd_probe,
	&cli_cmd_push, /* tools/cmd_push.c, also contextfs-push */
	NULL,
};

int main(int argc, char **argv)
{
	/* Installed as mount.contextfs / mount.fuse.contextfs too. */
	if (argc > 0 && cli_mount_helper_name(argv[0]))
		return cli_mount_helper_main(argc, argv);
	if (argc > 0 && argc < CLI_MAX_ARGS && push_name(argv[0])) {
		char *args[CLI_MAX_ARGS + 2];

		args[0] = argv[0];
		args[1] = (char *)"push";
		for (int i = 1; i <= argc; i++)
			args[i + 1] = argv[i];
		return cli_main(argc + 1, args);
	}
	return cli_main(argc, argv);
}
