/*
 * Runtime contract helpers: version-checked dispatch, the per-thread
 * command error (the reference's RuntimeCommandError), shell quoting and
 * the probe. No process code: adapters implement the vtable.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/runtime.h"
#include "core/util.h"

/* Stdout/stderr kept in a command error (the message shows less). */
#define CMDERR_KEEP (64u << 10)
#define CMDERR_SHOW 2000

static _Thread_local struct cfs_command_error cmd_error;
static _Thread_local bool cmd_error_set;

void cfs_run_result_clear(struct cfs_run_result *res)
{
	if (!res)
		return;
	free(res->out);
	free(res->err);
	memset(res, 0, sizeof(*res));
}

static int check_ops(struct cfs_runtime *rt)
{
	if (!rt || !rt->ops || rt->ops->version != CFS_RUNTIME_VERSION)
		return cfs_error_set(CFS_EINVAL,
				     "runtime adapter has an unsupported "
				     "contract version");
	return 0;
}

int cfs_runtime_run(struct cfs_run_result *res, struct cfs_runtime *rt,
		    const char *command, const char *user, int64_t timeout_ms)
{
	int rc = check_ops(rt);

	memset(res, 0, sizeof(*res));
	if (rc)
		return rc;
	return rt->ops->run(res, rt, command, user, timeout_ms);
}

int cfs_runtime_upload(struct cfs_runtime *rt, const char *local_path,
		       const char *remote_path)
{
	int rc = check_ops(rt);

	return rc ? rc : rt->ops->upload(rt, local_path, remote_path);
}

int cfs_runtime_download(struct cfs_runtime *rt, const char *remote_path,
			 const char *local_path)
{
	int rc = check_ops(rt);

	return rc ? rc : rt->ops->download(rt, remote_path, local_path);
}

bool cfs_runtime_streams(const struct cfs_runtime *rt)
{
	return rt && rt->ops && rt->ops->version == CFS_RUNTIME_VERSION &&
	       rt->ops->run_io;
}

int cfs_runtime_run_io(struct cfs_run_result *res, struct cfs_runtime *rt,
		       const char *command, int in_fd, int out_fd,
		       int64_t timeout_ms)
{
	int rc = check_ops(rt);

	memset(res, 0, sizeof(*res));
	if (rc)
		return rc;
	if (!rt->ops->run_io)
		return cfs_error_set(CFS_EUNSUPPORTED,
				     "runtime %s cannot stream a command's "
				     "input or output",
				     rt->id);
	return rt->ops->run_io(res, rt, command, in_fd, out_fd, timeout_ms);
}

int cfs_runtime_keep_alive(struct cfs_runtime *rt)
{
	int rc = check_ops(rt);

	if (rc)
		return rc;
	return rt->ops->keep_alive ? rt->ops->keep_alive(rt) : 0;
}

int cfs_runtime_kill(struct cfs_runtime *rt)
{
	int rc = check_ops(rt);

	if (rc)
		return rc;
	if (!rt->ops->kill)
		return cfs_error_set(CFS_EUNSUPPORTED,
				     "runtime adapter %s does not support "
				     "kill()",
				     rt->id);
	return rt->ops->kill(rt);
}

int cfs_runtime_dispose(struct cfs_runtime *rt)
{
	int rc = check_ops(rt);

	if (rc)
		return rc;
	return rt->ops->dispose ? rt->ops->dispose(rt) : 0;
}

void cfs_runtime_free(struct cfs_runtime *rt)
{
	if (rt && rt->ops && rt->ops->free)
		rt->ops->free(rt);
}

void cfs_runtime_command_error_clear(void)
{
	free(cmd_error.out);
	free(cmd_error.err);
	memset(&cmd_error, 0, sizeof(cmd_error));
	cmd_error_set = false;
}

const struct cfs_command_error *cfs_runtime_last_command_error(void)
{
	return cmd_error_set ? &cmd_error : NULL;
}

/* Trims leading and trailing whitespace: [*start, *start + *len). */
static void trim(const char **start, size_t *len)
{
	const char *s = *start;
	size_t n = *len;

	while (n && strchr(" \t\r\n", s[0]))
		s++, n--;
	while (n && strchr(" \t\r\n", s[n - 1]))
		n--;
	*start = s;
	*len = n;
}

int cfs_runtime_check(const struct cfs_run_result *res, const char *label)
{
	const char *o = res->out ? res->out : "", *e = res->err ? res->err : "";
	size_t on = res->out ? res->out_len : 0,
	       en = res->err ? res->err_len : 0;

	if (res->exit_code == 0)
		return 0;
	cfs_runtime_command_error_clear();
	snprintf(cmd_error.label, sizeof(cmd_error.label), "%s", label);
	cmd_error.exit_code = res->exit_code;
	cmd_error.out = cfs_strndup(o, on > CMDERR_KEEP ? CMDERR_KEEP : on);
	cmd_error.err = cfs_strndup(e, en > CMDERR_KEEP ? CMDERR_KEEP : en);
	cmd_error_set = true;
	trim(&o, &on);
	trim(&e, &en);
	if (on > CMDERR_SHOW) {
		o += on - CMDERR_SHOW;
		on = CMDERR_SHOW;
	}
	if (en > CMDERR_SHOW) {
		e += en - CMDERR_SHOW;
		en = CMDERR_SHOW;
	}
	return cfs_error_set(CFS_ERROR,
			     "%s failed with exit code %d%s%.*s%s%.*s", label,
			     res->exit_code, on ? "\n" : "", (int)on, o,
			     en ? "\n" : "", (int)en, e);
}

int cfs_shell_quote(struct cfs_buf *b, const char *s)
{
	int rc = cfs_buf_put(b, "'", 1);

	for (; !rc && *s; s++)
		rc = *s == '\'' ? cfs_buf_puts(b, "'\\''")
				: cfs_buf_put(b, s, 1);
	return rc ? rc : cfs_buf_put(b, "'", 1);
}

int cfs_runtime_probe(char **missing_out, struct cfs_runtime *rt)
{
	static const char script[] =
		"set -Eeuo pipefail\n"
		"for t in tar zstd python3 sha256sum mkdir sync; do\n"
		"  command -v \"$t\" >/dev/null 2>&1 || printf '%s\\n' \"$t\"\n"
		"done\n";
	struct cfs_run_result res;
	struct cfs_buf m = CFS_BUF_INIT;
	int rc;

	if (missing_out)
		*missing_out = NULL;
	rc = cfs_runtime_run(&res, rt, script, NULL, 60000);
	if (rc)
		goto out;
	rc = cfs_runtime_check(&res, "probe runtime");
	if (rc)
		goto out;
	for (size_t i = 0; i < res.out_len && !rc; i++) {
		char c = res.out[i];

		if (c == '\n') {
			if (m.len && m.ptr[m.len - 1] != ' ')
				rc = cfs_buf_put(&m, " ", 1);
		} else if (c > ' ' && c < 127) {
			rc = cfs_buf_put(&m, &c, 1);
		}
	}
	if (!rc && m.len && m.ptr[m.len - 1] == ' ')
		m.ptr[--m.len] = '\0';
	if (!rc && missing_out) {
		*missing_out = m.len ? cfs_buf_detach(&m) : cfs_strdup("");
		if (!*missing_out)
			rc = CFS_ENOMEM;
	}
out:
	cfs_buf_free(&m);
	cfs_run_result_clear(&res);
	return rc;
}

int cfs_runtime_prepare_dirs(struct cfs_runtime *rt, const char *script,
			     int64_t timeout_ms, const char *what,
			     char **tmp_dir, char **mount_base)
{
	struct cfs_run_result res;
	const char *home;
	size_t n;
	int rc;

	*tmp_dir = *mount_base = NULL;
	rt->tmp_dir = "/nonexistent"; /* nothing staged yet */
	rc = cfs_runtime_run(&res, rt,
			     script ? script : CFS_RUNTIME_HOME_SCRIPT, NULL,
			     timeout_ms);
	if (rc) {
		cfs_error_prefix("prepare %s", what);
		return rc;
	}
	rc = cfs_runtime_check(&res, "prepare sandbox directories");
	home = res.out ? res.out : "";
	n = res.out_len;
	while (n && home[n - 1] == '\n')
		n--;
	if (!rc && (n == 0 || home[0] != '/' || memchr(home, '\n', n)))
		rc = cfs_error_set(CFS_EIO,
				   "%s: cannot resolve its working directory",
				   what);
	if (!rc) {
		*tmp_dir = cfs_asprintf("%.*s/tmp", (int)n, home);
		*mount_base = cfs_asprintf("%.*s/mnt", (int)n, home);
		if (!*tmp_dir || !*mount_base) {
			free(*tmp_dir);
			free(*mount_base);
			*tmp_dir = *mount_base = NULL;
			rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		}
	}
	cfs_run_result_clear(&res);
	if (!rc) {
		rt->tmp_dir = *tmp_dir;
		rt->mount_base = *mount_base;
	}
	return rc;
}
