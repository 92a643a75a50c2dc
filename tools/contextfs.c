/*
 * contextfs: the command-line front end. This file is only the command
 * table; each command lives in tools/cmd_<name>.c and the shared plumbing
 * (parsing, keys, output, exit codes) in tools/cli.c.
 */
#include <stddef.h>

#include "tools/cli.h"
#include "tools/mount_cli.h"

/* The mount commands (tools/cmd_mount.c, tools/cmd_umount.c). */
extern const struct cli_command cli_cmd_mount;
extern const struct cli_command cli_cmd_umount;
extern const struct cli_command cli_cmd_sync;
extern const struct cli_command cli_cmd_mount_status;
extern const struct cli_command cli_cmd_recover;

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
	NULL,
};

int main(int argc, char **argv)
{
	/* Installed as mount.contextfs / mount.fuse.contextfs too. */
	if (argc > 0 && cli_mount_helper_name(argv[0]))
		return cli_mount_helper_main(argc, argv);
	return cli_main(argc, argv);
}
