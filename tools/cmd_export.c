/*
 * contextfs export: writes a stored tree (the current one, a retained
 * generation or a checkpoint) into a new or empty directory. The engine
 * authenticates the whole object before unpacking; if anything fails, what
 * was written into the directory is removed again, so a failed export
 * never leaves a partial tree behind.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/context.h"
#include "core/crypto.h"
#include "core/error.h"
#include "core/ids.h"
#include "core/util.h"
#include "tools/cli.h"

static const struct cli_opt opts[] = {
	{NULL, 0, false, 0},
};

/* 1 when fd's directory has entries, 0 when empty, < 0 on error. */
static int dir_nonempty(int fd, const char *path)
{
	struct dirent *de;
	int dfd = dup(fd), found = 0;
	DIR *d;

	if (dfd < 0)
		return cfs_error_errno(errno, "%s", path);
	d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return cfs_error_errno(errno, "%s", path);
	}
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
			found = 1;
			break;
		}
	}
	closedir(d);
	return found;
}

/* Removes everything inside fd's directory (it was empty before). */
static void dir_empty_out(int fd)
{
	struct dirent *de;
	int dfd = dup(fd);
	DIR *d;

	if (dfd < 0)
		return;
	d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return;
	}
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		cfs_rmtree_at(fd, de->d_name);
		rewinddir(d);
	}
	closedir(d);
}

static int run(struct cli *cli)
{
	const char *refstr = cli->argv[0];
	const char *dir = cli->argv[1];
	struct cfs_ref ref;
	struct cfs_ref_info info;
	struct cfs_store *st = NULL;
	struct cfs_keys *keys = NULL;
	struct stat sb;
	bool created = false;
	char size[32];
	cJSON *res;
	int fd = -1, rc;

	memset(&info, 0, sizeof(info));
	rc = cfs_ref_parse(&ref, refstr);
	if (rc)
		goto out;
	rc = cli_store_open(cli, &st);
	if (rc)
		goto out;
	rc = cli_manifest_read(cli, NULL, st, ref.id);
	if (rc)
		goto out;

	if (lstat(dir, &sb) != 0) {
		if (errno != ENOENT) {
			rc = cfs_error_errno(errno, "export directory %s", dir);
			goto out;
		}
		rc = cfs_mkdir_p_at(AT_FDCWD, dir, 0700);
		if (rc)
			goto out;
		created = true;
	}
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		rc = errno == ENOTDIR
			     ? cfs_error_set(CFS_EINVAL,
					     "export target %s is not a "
					     "directory",
					     dir)
			     : cfs_error_errno(errno, "export directory %s",
					       dir);
		goto out;
	}
	if (created)
		fchmod(fd, 0700);
	rc = dir_nonempty(fd, dir);
	if (rc < 0)
		goto out;
	if (rc > 0) {
		rc = cfs_error_set(CFS_EINVAL,
				   "export directory %s is not empty; pass a "
				   "new or empty directory",
				   dir);
		goto out;
	}
	rc = cli_keys(cli, false, &keys);
	if (rc)
		goto out;

	cli_progress_begin(cli, "export");
	{
		struct cfs_export_opts eo = {
			.progress = cli_progress_cb,
			.progress_payload = cli,
			.index_cache_dir = cli_commit_cache_dir()};

		/* the commit that usually follows finds the index there */
		rc = cfs_context_export_opts(&info, st, keys, refstr, fd, &eo);
		free((char *)eo.index_cache_dir);
	}
	cli_progress_end(cli);
	if (rc) {
		/* Never leave a partial tree behind. */
		char msg[1024];
		int code = rc;

		snprintf(msg, sizeof(msg), "%s", cfs_error_last());
		if (!created)
			dir_empty_out(fd);
		cfs_error_set(code, "%s", msg);
		goto out;
	}

	res = cli_result(cli);
	cJSON_AddStringToObject(res, "id", ref.id);
	cJSON_AddStringToObject(res, "ref", refstr);
	if (info.checkpoint) {
		cJSON_AddNullToObject(res, "generation");
		cJSON_AddNumberToObject(res, "checkpoint",
					(double)info.checkpoint);
	} else {
		cJSON_AddNumberToObject(res, "generation",
					(double)info.generation);
		cJSON_AddNullToObject(res, "checkpoint");
	}
	cJSON_AddStringToObject(res, "treeKey", info.tree_key);
	cJSON_AddNumberToObject(res, "bytes", (double)info.size_bytes);
	cJSON_AddStringToObject(res, "directory", dir);
	cli_format_bytes(size, sizeof(size), info.size_bytes);
	if (info.checkpoint)
		cli_print(cli, "exported %s checkpoint %llu (%s) to %s\n",
			  ref.id, (unsigned long long)info.checkpoint, size,
			  dir);
	else
		cli_print(cli, "exported %s generation %llu (%s) to %s\n",
			  ref.id, (unsigned long long)info.generation, size,
			  dir);
out:
	if (rc) {
		/* Cleanup must not replace the error being reported. */
		char msg[1024];
		int code = rc;

		snprintf(msg, sizeof(msg), "%s", cfs_error_last());
		if (created) {
			if (fd >= 0) {
				close(fd);
				fd = -1;
			}
			cfs_rmtree_at(AT_FDCWD, dir);
		}
		cfs_error_set(code, "%s", msg);
	}
	if (fd >= 0)
		close(fd);
	cfs_keys_free(keys);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_export = {
	.name = "export",
	.args = "ID[@GEN|@checkpoint:N] DIR",
	.summary = "write a stored tree into a new or empty directory",
	.help = "DIR is created (mode 0700) if missing and must be empty. "
		"ID exports the current\ntree, ID@GEN a retained generation, "
		"ID@checkpoint:N a checkpoint. A generation\nwhose data is "
		"gone exits 3; a wrong key or tampered data exits 5 and "
		"leaves DIR\nas it was.\n",
	.opts = opts,
	.min_args = 2,
	.max_args = 2,
	.run = run,
	.defer_signals = true,
};
