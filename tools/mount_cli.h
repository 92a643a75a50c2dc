/*
 * The client side of the mount commands (tools/cmd_umount.c), shared with
 * `contextfs commit MOUNTPOINT` and `contextfs status MOUNTPOINT`, which
 * dispatch here when their argument is a contextfs mountpoint.
 */
#ifndef CFS_TOOLS_MOUNT_CLI_H
#define CFS_TOOLS_MOUNT_CLI_H

#include <stdbool.h>

#include <cjson/cJSON.h>

struct cli;

/*
 * True when arg is the root of a contextfs mount, live or with a dead
 * daemon (a context id never contains '/', but a relative mountpoint may
 * look like one: a directory that is a contextfs mount wins).
 */
bool cli_is_mountpoint(const char *arg);

/* Commits the mount now; returns once the new manifest landed. */
int cli_mount_commit(struct cli *cli, const char *mountpoint, const char *msg);

/* The mount's state: clean/dirty, generations, pending error. */
int cli_mount_status(struct cli *cli, const char *mountpoint);

/*
 * doctor: adds "fuse": {mounts, cacheDir, leftovers} to res (see
 * cfs_mount_doctor_json) and prints them unless --json. Informational:
 * never a failed check.
 */
void cli_mount_doctor(struct cli *cli, cJSON *res);

/*
 * The mount(8) helper (tools/mount_helper.c): true when argv0's base name
 * is mount.contextfs or mount.fuse.contextfs; then main() runs
 * cli_mount_helper_main instead of cli_main.
 */
bool cli_mount_helper_name(const char *argv0);
int cli_mount_helper_main(int argc, char **argv);

#endif
