/*
 * Shared plumbing of the contextfs tool (see cli.h): argv parsing with the
 * command table, the JSON config file, store and key resolution, secret
 * hygiene (environment wiping, no-echo prompt that restores the terminal
 * on every path), --json output, exit codes and the progress line.
 */
#include "tools/cli.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <sodium.h>

#include "core/context.h"
#include "core/crypto.h"
#include "core/error.h"
#include "core/ids.h"
#include "core/json.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/manifest.h"
#include "core/util.h"
#include "fuse/mount.h"
#include "storage/storage.h"

#ifndef CFS_VERSION
#define CFS_VERSION "0.0.0"
#endif

#define DEFAULT_PASSPHRASE_ENV "CONTEXTSDK_PASSPHRASE"
#define DEFAULT_RAW_KEY_ENV "CONTEXTSDK_KEY_HEX"
#define DEFAULT_CONFIG_FILE "contextsdk.config.json"
#define ENV_NAME_MAX 128
#define SCRYPT_COST_MAX (1u << 20) /* 1 GiB at blockSize 8 */

extern char **environ;

/* Global option ids live above the command range. */
enum {
	GOPT_STORE = 100,
	GOPT_PASSPHRASE_FILE,
	GOPT_JSON,
	GOPT_QUIET,
	GOPT_HELP,
	GOPT_VERSION,
};

static const struct cli_opt global_opts[] = {
	{"store", 0, true, GOPT_STORE},
	{"passphrase-file", 0, true, GOPT_PASSPHRASE_FILE},
	{"json", 0, false, GOPT_JSON},
	{"quiet", 'q', false, GOPT_QUIET},
	{"help", 'h', false, GOPT_HELP},
	{"version", 0, false, GOPT_VERSION},
	{NULL, 0, false, 0},
};

/* ------------------------------------------------------------------ */
/* Exit codes */

int cli_exit_code(int code)
{
	switch (code) {
	case CFS_OK:
		return CLI_EXIT_OK;
	case CFS_ENOTFOUND:
		return CLI_EXIT_NOTFOUND;
	case CFS_ELOCKED:
	case CFS_ECONFLICT:
	case CFS_EEXISTS:
		return CLI_EXIT_LOCKED;
	case CFS_EAUTH:
		return CLI_EXIT_AUTH;
	case CFS_EUNSAFE:
	case CFS_ECORRUPT:
		return CLI_EXIT_UNSAFE;
	case CFS_EIO:
	case CFS_ENOSPC:
	case CFS_EAGAIN:
	case CFS_ETIMEDOUT:
	case CFS_EPERM:
		return CLI_EXIT_IO;
	case CFS_EINVAL:
	case CFS_EKEY:
		return CLI_EXIT_USAGE;
	default:
		return CLI_EXIT_ERROR;
	}
}

/* ------------------------------------------------------------------ */
/* Output */

cJSON *cli_result(struct cli *cli)
{
	if (!cli->result) {
		cli->result = cJSON_CreateObject();
		if (cli->result)
			cJSON_AddBoolToObject(cli->result, "ok", 1);
	}
	return cli->result;
}

void cli_json_add_str_or_null(cJSON *obj, const char *key, const char *val)
{
	if (!obj)
		return;
	if (val)
		cJSON_AddStringToObject(obj, key, val);
	else
		cJSON_AddNullToObject(obj, key);
}

void cli_print(struct cli *cli, const char *fmt, ...)
{
	va_list ap;

	if (cli->json || cli->quiet)
		return;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
}

void cli_warn(struct cli *cli, const char *fmt, ...)
{
	va_list ap;

	if (cli->quiet)
		return;
	cli_progress_end(cli);
	fputs("contextfs: warning: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void cli_format_bytes(char *out, size_t outlen, uint64_t bytes)
{
	static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
	double v = (double)bytes;
	size_t i = 0;

	if (bytes < 1024) {
		snprintf(out, outlen, "%llu B", (unsigned long long)bytes);
		return;
	}
	v /= 1024.0;
	while (v >= 1024.0 && i + 1 < CFS_ARRAY_SIZE(units)) {
		v /= 1024.0;
		i++;
	}
	snprintf(out, outlen, "%.1f %s", v, units[i]);
}

/* Message for a failed code: the thread's record if it belongs to code. */
static const char *error_message(int code)
{
	const char *msg = cfs_error_last();

	if (msg && *msg && cfs_error_last_code() == code)
		return msg;
	if (msg && *msg && code == CFS_ERROR)
		return msg;
	switch (code) {
	case CFS_ENOMEM:
		return "out of memory";
	case CFS_ENOTFOUND:
		return "not found";
	default:
		return msg && *msg ? msg : cfs_error_name(code);
	}
}

/*
 * Prints the outcome: the JSON document (with "ok" and "error" adjusted)
 * or the human error line. Returns the exit code.
 */
static int cli_finish(struct cli *cli, int rc)
{
	char *text;

	cli_progress_end(cli);
	if (!cli->json) {
		if (rc) {
			/* One line: flatten any newline in the message. */
			char line[1100];
			size_t i;

			snprintf(line, sizeof(line), "%s", error_message(rc));
			for (i = 0; line[i]; i++)
				if (line[i] == '\n' || line[i] == '\r')
					line[i] = ' ';
			fprintf(stderr, "contextfs: %s\n", line);
		}
		fflush(stdout);
		return cli_exit_code(rc);
	}
	if (!cli->result || rc == CFS_ENOMEM) {
		cJSON_Delete(cli->result);
		cli->result = NULL;
	}
	if (rc) {
		cJSON *err = cJSON_CreateObject();
		cJSON *doc = cli->result ? cli->result : cJSON_CreateObject();

		cli->result = doc;
		if (!doc || !err) {
			cJSON_Delete(err);
			fputs("{\"ok\": false, \"error\": {\"code\": \"nomem\", "
			      "\"message\": \"out of memory\"}}\n",
			      stdout);
			return cli_exit_code(rc);
		}
		cJSON_AddStringToObject(err, "code", cfs_error_name(rc));
		cJSON_AddStringToObject(err, "message", error_message(rc));
		if (cJSON_GetObjectItemCaseSensitive(doc, "ok"))
			cJSON_ReplaceItemInObjectCaseSensitive(
				doc, "ok", cJSON_CreateBool(0));
		else
			cJSON_AddBoolToObject(doc, "ok", 0);
		cJSON_DeleteItemFromObjectCaseSensitive(doc, "error");
		cJSON_AddItemToObject(doc, "error", err);
	} else if (!cli_result(cli)) {
		fputs("{\"ok\": true}\n", stdout);
		return CLI_EXIT_OK;
	}
	text = cfs_json_print(cli->result, CFS_JSON_PRETTY | CFS_JSON_NEWLINE);
	if (!text) {
		fputs("{\"ok\": false, \"error\": {\"code\": \"nomem\", "
		      "\"message\": \"out of memory\"}}\n",
		      stdout);
		return rc ? cli_exit_code(rc) : CLI_EXIT_ERROR;
	}
	fputs(text, stdout);
	free(text);
	if (fflush(stdout) != 0 && !rc)
		return CLI_EXIT_IO;
	return cli_exit_code(rc);
}

/* ------------------------------------------------------------------ */
/* Progress */

void cli_progress_begin(struct cli *cli, const char *label)
{
	cli->progress_label = label;
	cli->progress_start_ms = cfs_monotonic_ms();
	cli->progress_last_ms = 0;
	cli->progress_last_done = 0;
}

void cli_progress_cb(uint64_t done, uint64_t total, void *payload)
{
	struct cli *cli = payload;
	char d[32], t[32], r[32];
	int64_t now, elapsed;
	double rate;

	if (!cli || !cli->progress_enabled)
		return;
	now = cfs_monotonic_ms();
	/* A new transfer (verify walks several objects) restarts the rate. */
	if (!cli->progress_start_ms || done < cli->progress_last_done)
		cli->progress_start_ms = now;
	cli->progress_last_done = done;
	/* Quick transfers draw nothing; then 10 updates a second at most. */
	if (now - cli->progress_start_ms < 300 && !cli->progress_shown)
		return;
	if (cli->progress_last_ms && now - cli->progress_last_ms < 100 &&
	    (total == 0 || done < total))
		return;
	cli->progress_last_ms = now;
	elapsed = now - cli->progress_start_ms;
	rate = elapsed > 0 ? (double)done * 1000.0 / (double)elapsed : 0.0;
	cli_format_bytes(d, sizeof(d), done);
	cli_format_bytes(r, sizeof(r), (uint64_t)rate);
	if (total)
		cli_format_bytes(t, sizeof(t), total);
	fprintf(stderr, "\r\033[K%s %s%s%s  %s/s",
		cli->progress_label ? cli->progress_label : "transfer", d,
		total ? " / " : "", total ? t : "", r);
	fflush(stderr);
	cli->progress_shown = true;
}

void cli_progress_end(struct cli *cli)
{
	if (cli->progress_shown) {
		fputs("\r\033[K", stderr);
		fflush(stderr);
		cli->progress_shown = false;
	}
	cli->progress_last_ms = 0;
}

/* ------------------------------------------------------------------ */
/* Numbers */

int cli_parse_u64(uint64_t *out, const char *optname, const char *s,
		  uint64_t min, uint64_t max)
{
	uint64_t v = 0;
	const char *p;

	if (!s || !*s || strlen(s) > 20)
		goto bad;
	for (p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			goto bad;
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			goto bad;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (v < min || v > max)
		goto bad;
	*out = v;
	return 0;
bad:
	return cfs_error_set(CFS_EINVAL,
			     "%s must be a whole number from %llu to %llu, "
			     "got \"%.40s\"",
			     optname, (unsigned long long)min,
			     (unsigned long long)max, s ? s : "");
}

int cli_scrypt_cost(uint64_t *out, const char *optval)
{
	const char *what = "--scrypt-cost";
	const char *s = optval;
	uint64_t v = 0;
	int rc;

	*out = 0;
	if (!s) {
		s = getenv("CONTEXTFS_SCRYPT_COST");
		what = "CONTEXTFS_SCRYPT_COST";
		if (!s || !*s)
			return 0;
	}
	rc = cli_parse_u64(&v, what, s, 2, SCRYPT_COST_MAX);
	if (rc)
		return rc;
	if (v & (v - 1))
		return cfs_error_set(CFS_EINVAL,
				     "%s must be a power of two greater "
				     "than one (e.g. 1024 or 131072)",
				     what);
	*out = v;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Config file */

static bool env_name_valid(const char *s)
{
	size_t i;

	if (!s || !*s || strlen(s) > ENV_NAME_MAX)
		return false;
	for (i = 0; s[i]; i++) {
		char c = s[i];

		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		      c == '_' || (i > 0 && c >= '0' && c <= '9')))
			return false;
	}
	return true;
}

/* Optional string member at obj.section.key; wrong type -> ECORRUPT. */
static int config_str(struct cli *cli, const char *section, const char *key,
		      const char **out)
{
	const cJSON *sec, *item;

	*out = NULL;
	sec = cJSON_GetObjectItemCaseSensitive(cli->config, section);
	if (!sec || cJSON_IsNull(sec))
		return 0;
	if (!cJSON_IsObject(sec))
		return cfs_error_set(CFS_ECORRUPT,
				     "config %s: \"%s\" must be an object",
				     cli->config_path, section);
	item = cJSON_GetObjectItemCaseSensitive(sec, key);
	if (!item || cJSON_IsNull(item))
		return 0;
	if (!cJSON_IsString(item) || !item->valuestring[0])
		return cfs_error_set(CFS_ECORRUPT,
				     "config %s: \"%s.%s\" must be a "
				     "non-empty string",
				     cli->config_path, section, key);
	*out = item->valuestring;
	return 0;
}

/* Optional boolean member at obj.section.key; wrong type -> ECORRUPT. */
static int config_bool(struct cli *cli, const char *section, const char *key,
		       bool *out)
{
	const cJSON *sec, *item;

	*out = false;
	if (!cli->config)
		return 0;
	sec = cJSON_GetObjectItemCaseSensitive(cli->config, section);
	if (!sec || !cJSON_IsObject(sec))
		return 0; /* config_str reports a non-object section */
	item = cJSON_GetObjectItemCaseSensitive(sec, key);
	if (!item || cJSON_IsNull(item))
		return 0;
	if (!cJSON_IsBool(item))
		return cfs_error_set(CFS_ECORRUPT,
				     "config %s: \"%s.%s\" must be true or "
				     "false",
				     cli->config_path, section, key);
	*out = cJSON_IsTrue(item);
	return 0;
}

static int config_load(struct cli *cli)
{
	const char *path = getenv("CONTEXTSDK_CONFIG");
	const char *name;
	char *buf = NULL;
	size_t len = 0;
	int rc;

	cli->passphrase_env = DEFAULT_PASSPHRASE_ENV;
	cli->raw_key_env = DEFAULT_RAW_KEY_ENV;
	if (path && *path) {
		rc = cfs_read_file_at(&buf, &len, AT_FDCWD, path,
				      CLI_CONFIG_MAX);
		if (rc) {
			cfs_error_prefix("cannot read CONTEXTSDK_CONFIG");
			return rc == CFS_ENOTFOUND ? CFS_EINVAL : rc;
		}
	} else {
		path = DEFAULT_CONFIG_FILE;
		rc = cfs_read_file_at(&buf, &len, AT_FDCWD, path,
				      CLI_CONFIG_MAX);
		if (rc == CFS_ENOTFOUND) {
			cfs_error_clear();
			return 0;
		}
		if (rc) {
			cfs_error_prefix("cannot read ./%s", path);
			return rc;
		}
	}
	cli->config_path = cfs_strdup(path);
	if (!cli->config_path) {
		free(buf);
		return CFS_ENOMEM;
	}
	cli->config = cfs_json_parse(buf, len, path);
	free(buf);
	if (!cli->config)
		return cfs_error_last_code() ? cfs_error_last_code()
					     : CFS_ECORRUPT;
	if (!cJSON_IsObject(cli->config))
		return cfs_error_set(CFS_ECORRUPT,
				     "config %s must be a JSON object", path);

	/* Validate the whole shape now, whatever this command reads. */
	rc = config_str(cli, "storage", "directory", &name);
	if (!rc)
		rc = config_str(cli, "storage", "type", &name);
	if (!rc && name && strcmp(name, "fs") && strcmp(name, "s3"))
		rc = cfs_error_set(CFS_ECORRUPT,
				   "config %s: storage.type must be \"fs\" "
				   "or \"s3\", got \"%.40s\"",
				   path, name);
	{
		static const char *const keys[] = {"bucket", "prefix", "region",
						   "endpoint"};
		bool b;

		for (size_t i = 0; !rc && i < CFS_ARRAY_SIZE(keys); i++)
			rc = config_str(cli, "storage", keys[i], &name);
		if (!rc)
			rc = config_bool(cli, "storage", "forcePathStyle", &b);
	}
	if (rc)
		return rc;
	rc = config_str(cli, "encryption", "passphraseEnv", &name);
	if (rc)
		return rc;
	if (name) {
		if (!env_name_valid(name))
			return cfs_error_set(CFS_ECORRUPT,
					     "config %s: encryption."
					     "passphraseEnv is not a valid "
					     "environment variable name",
					     path);
		cli->passphrase_env = name;
	}
	rc = config_str(cli, "encryption", "rawKeyHexEnv", &name);
	if (rc)
		return rc;
	if (name) {
		if (!env_name_valid(name))
			return cfs_error_set(CFS_ECORRUPT,
					     "config %s: encryption."
					     "rawKeyHexEnv is not a valid "
					     "environment variable name",
					     path);
		cli->raw_key_env = name;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Secrets from the environment */

/*
 * Removes name from the environment and overwrites its "NAME=value"
 * strings in place, so /proc/self/environ (which shows the original
 * block) carries neither the value nor the name afterwards.
 */
static void env_wipe(const char *name)
{
	size_t n = strlen(name);
	char *found[8];
	size_t nfound = 0, i;
	char **e;

	for (e = environ; e && *e && nfound < CFS_ARRAY_SIZE(found); e++)
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			found[nfound++] = *e;
	/* glibc never frees environment strings, so they stay valid. */
	unsetenv(name);
	for (i = 0; i < nfound; i++)
		sodium_memzero(found[i], strlen(found[i]));
}

static int env_capture_max(const char *name, char **out, size_t max)
{
	const char *v = getenv(name);
	int rc = 0;

	*out = NULL;
	if (!v)
		return 0;
	if (*v) {
		if (strlen(v) >= max) {
			rc = cfs_error_set(CFS_EKEY,
					   "%s is longer than %zu bytes", name,
					   max - 1);
		} else {
			*out = cfs_secret_strdup(v);
			if (!*out)
				rc = CFS_ENOMEM;
		}
	}
	env_wipe(name);
	return rc;
}

static int env_capture(const char *name, char **out)
{
	return env_capture_max(name, out, CLI_SECRET_MAX);
}

/*
 * S3 credentials: captured into sodium memory and wiped from environ
 * before anything runs (child processes, /proc/self/environ). AWS
 * session tokens run to a few KiB.
 */
static int s3_secrets_capture(struct cli *cli)
{
	int rc =
		env_capture("CONTEXTSDK_S3_ACCESS_KEY_ID", &cli->s3_access_key);
	int rc2 = env_capture("CONTEXTSDK_S3_SECRET_ACCESS_KEY",
			      &cli->s3_secret_key);
	int rc3 = env_capture("AWS_ACCESS_KEY_ID", &cli->aws_access_key);
	int rc4 = env_capture("AWS_SECRET_ACCESS_KEY", &cli->aws_secret_key);
	int rc5 = env_capture_max("AWS_SESSION_TOKEN", &cli->aws_session_token,
				  16384);

	return rc ? rc : rc2 ? rc2 : rc3 ? rc3 : rc4 ? rc4 : rc5;
}

static int secrets_capture(struct cli *cli)
{
	int rc, rc2, rc3;

	rc3 = s3_secrets_capture(cli);
	rc = env_capture(cli->raw_key_env, &cli->env_raw_key);
	if (strcmp(cli->raw_key_env, cli->passphrase_env) == 0)
		return rc ? rc : rc3;
	rc2 = env_capture(cli->passphrase_env, &cli->env_passphrase);
	return rc ? rc : rc2 ? rc2 : rc3;
}

/* Also wipes the default names when a config renamed them, and the S3
 * secrets on paths that never captured them. */
static void secrets_wipe_defaults(void)
{
	static const char *const names[] = {
		DEFAULT_PASSPHRASE_ENV,
		DEFAULT_RAW_KEY_ENV,
		"CONTEXTSDK_S3_SECRET_ACCESS_KEY",
		"AWS_SECRET_ACCESS_KEY",
		"AWS_SESSION_TOKEN",
	};
	size_t i;

	for (i = 0; i < CFS_ARRAY_SIZE(names); i++)
		if (getenv(names[i]))
			env_wipe(names[i]);
}

/* ------------------------------------------------------------------ */
/* Passphrase file */

int cli_secret_file_open(int *fd_out, struct stat *st, const char *what,
			 const char *path)
{
	int fd, rc;

	*fd_out = -1;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		rc = cfs_error_errno(errno, "cannot open %s %s", what, path);
		return rc == CFS_ENOTFOUND ? CFS_EKEY : rc;
	}
	if (fstat(fd, st) != 0) {
		rc = cfs_error_errno(errno, "cannot stat %s", path);
		close(fd);
		return rc;
	}
	if (!S_ISREG(st->st_mode) && !S_ISFIFO(st->st_mode)) {
		close(fd);
		return cfs_error_set(CFS_EKEY, "%s %s is not a regular file",
				     what, path);
	}
	*fd_out = fd;
	return 0;
}

/* Strips one trailing "\n" or "\r\n". */
static void strip_newline(char *s, size_t *len)
{
	if (*len && s[*len - 1] == '\n')
		s[--*len] = '\0';
	if (*len && s[*len - 1] == '\r')
		s[--*len] = '\0';
}

static int read_passphrase_file(const char *path, char **out)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	int fd, rc = 0;

	*out = NULL;
	rc = cli_secret_file_open(&fd, &st, "passphrase file", path);
	if (rc)
		return rc;
	if (st.st_mode & (S_IRGRP | S_IROTH)) {
		rc = cfs_error_set(CFS_EKEY,
				   "%s is readable by others; chmod 600 it",
				   path);
		goto out;
	}
	if (st.st_mode & (S_IWGRP | S_IWOTH)) {
		rc = cfs_error_set(CFS_EKEY,
				   "%s is writable by others; chmod 600 it",
				   path);
		goto out;
	}
	buf = sodium_malloc(CLI_SECRET_MAX + 1);
	if (!buf) {
		rc = cfs_error_set(CFS_ENOMEM, "out of secure memory");
		goto out;
	}
	for (;;) {
		ssize_t n;

		if (len == CLI_SECRET_MAX) {
			char extra;

			n = read(fd, &extra, 1);
			if (n > 0) {
				rc = cfs_error_set(CFS_EKEY,
						   "passphrase file %s is "
						   "longer than %d bytes",
						   path, CLI_SECRET_MAX - 2);
				goto out;
			}
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				rc = cfs_error_errno(errno, "cannot read %s",
						     path);
				goto out;
			}
			break;
		}
		n = read(fd, buf + len, CLI_SECRET_MAX - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = cfs_error_errno(errno, "cannot read %s", path);
			goto out;
		}
		if (n == 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	/* One line: the passphrase, then only line endings. */
	{
		char *nl = memchr(buf, '\n', len);

		if (nl) {
			size_t i;

			for (i = (size_t)(nl - buf); i < len; i++) {
				if (buf[i] != '\n' && buf[i] != '\r') {
					rc = cfs_error_set(
						CFS_EKEY,
						"passphrase file %s has more "
						"than one line",
						path);
					goto out;
				}
			}
			len = (size_t)(nl - buf) + 1;
			buf[len] = '\0';
		}
	}
	strip_newline(buf, &len);
	if (memchr(buf, '\0', len)) {
		rc = cfs_error_set(CFS_EKEY,
				   "passphrase file %s contains a NUL byte",
				   path);
		goto out;
	}
	if (len == 0) {
		rc = cfs_error_set(CFS_EKEY, "passphrase file %s is empty",
				   path);
		goto out;
	}
	*out = buf;
	buf = NULL;
out:
	if (buf)
		sodium_free(buf); /* wipes */
	close(fd);
	return rc;
}

int cli_passphrase_file_check(struct cli *cli)
{
	char *pass = NULL;
	int rc;

	if (!cli->passphrase_file)
		return 0;
	rc = read_passphrase_file(cli->passphrase_file, &pass);
	if (pass)
		sodium_free(pass);
	return rc;
}

/* ------------------------------------------------------------------ */
/* No-echo prompt */

static struct termios prompt_saved;
static volatile sig_atomic_t prompt_active;
static const int prompt_signals[] = {SIGINT,  SIGTERM, SIGHUP, SIGQUIT,
				     SIGTSTP, SIGTTIN, SIGTTOU};
static struct sigaction prompt_old_actions[7];

static void prompt_echo_off(void)
{
	struct termios t = prompt_saved;

	t.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK | ECHONL);
	t.c_lflag |= ICANON;
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &t);
}

/*
 * Restores the terminal before the default action runs. Job control stops
 * via SIGSTOP (cannot be blocked inside the handler) and turns echo off
 * again on resume.
 */
static void prompt_signal(int sig)
{
	int saved_errno = errno;

	if (prompt_active)
		tcsetattr(STDIN_FILENO, TCSANOW, &prompt_saved);
	if (sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU) {
		kill(getpid(), SIGSTOP);
		if (prompt_active)
			prompt_echo_off();
		errno = saved_errno;
		return;
	}
	signal(sig, SIG_DFL);
	raise(sig);
	errno = saved_errno;
}

static void prompt_handlers(bool install)
{
	size_t i;

	for (i = 0; i < CFS_ARRAY_SIZE(prompt_signals); i++) {
		if (install) {
			struct sigaction sa;

			memset(&sa, 0, sizeof(sa));
			sa.sa_handler = prompt_signal;
			sigemptyset(&sa.sa_mask);
			sigaction(prompt_signals[i], &sa,
				  &prompt_old_actions[i]);
		} else {
			sigaction(prompt_signals[i], &prompt_old_actions[i],
				  NULL);
		}
	}
}

/* Reads one line with echo off into sodium memory (*out). */
static int prompt_secret(const char *prompt, char **out)
{
	char *buf;
	char c = 0;
	size_t len = 0;
	bool too_long = false;
	int rc = 0, tty;
	ssize_t w;

	*out = NULL;
	if (tcgetattr(STDIN_FILENO, &prompt_saved) != 0)
		return cfs_error_errno(errno, "cannot read terminal settings");
	buf = sodium_malloc(CLI_SECRET_MAX);
	if (!buf)
		return cfs_error_set(CFS_ENOMEM, "out of secure memory");
	/* The prompt goes to the terminal even when stderr is redirected. */
	tty = open("/dev/tty", O_WRONLY | O_CLOEXEC | O_NOCTTY);

	/* Echo goes off BEFORE the prompt appears. */
	prompt_handlers(true);
	prompt_active = 1;
	prompt_echo_off();
	w = write(tty >= 0 ? tty : STDERR_FILENO, prompt, strlen(prompt));
	for (;;) {
		ssize_t n = read(STDIN_FILENO, &c, 1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = cfs_error_errno(errno, "cannot read passphrase");
			break;
		}
		if (n == 0 || c == '\n')
			break;
		if (len + 1 >= CLI_SECRET_MAX) {
			too_long = true;
			continue;
		}
		buf[len++] = c;
	}
	sodium_memzero(&c, sizeof(c));
	tcsetattr(STDIN_FILENO, TCSAFLUSH, &prompt_saved);
	prompt_active = 0;
	prompt_handlers(false);
	w = write(tty >= 0 ? tty : STDERR_FILENO, "\n", 1);
	(void)w;
	if (tty >= 0)
		close(tty);
	buf[len] = '\0';
	if (!rc && len && buf[len - 1] == '\r')
		buf[--len] = '\0';
	if (!rc && too_long)
		rc = cfs_error_set(CFS_EKEY,
				   "passphrase is longer than %d bytes",
				   CLI_SECRET_MAX - 2);
	if (!rc && len == 0)
		rc = cfs_error_set(CFS_EKEY, "empty passphrase; nothing "
					     "entered");
	if (rc) {
		sodium_free(buf);
		return rc;
	}
	*out = buf;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Keys */

int cli_keys(struct cli *cli, bool confirm, struct cfs_keys **out)
{
	char *pass = NULL, *again = NULL;
	const char *use_pass = NULL;
	int rc = 0;

	*out = NULL;
	if (cli->passphrase_file) {
		rc = read_passphrase_file(cli->passphrase_file, &pass);
		if (rc)
			goto out;
		use_pass = pass;
	} else if (cli->env_passphrase) {
		use_pass = cli->env_passphrase;
	} else if (!cli->env_raw_key && isatty(STDIN_FILENO)) {
		rc = prompt_secret(confirm ? "New context passphrase: "
					   : "Passphrase: ",
				   &pass);
		if (rc)
			goto out;
		if (confirm) {
			rc = prompt_secret("Repeat passphrase: ", &again);
			if (rc)
				goto out;
			if (sodium_memcmp(pass, again, strlen(pass) + 1) != 0 ||
			    strlen(pass) != strlen(again)) {
				rc = cfs_error_set(CFS_EKEY,
						   "passphrases do not match");
				goto out;
			}
		}
		use_pass = pass;
	}
	if (!use_pass && !cli->env_raw_key) {
		rc = cfs_error_set(CFS_EKEY, "%s or %s is required",
				   cli->passphrase_env, cli->raw_key_env);
		goto out;
	}
	rc = cfs_keys_new(out, use_pass, cli->env_raw_key);
	/*
	 * A process holding key material is not dumpable: no core file, and
	 * other processes of the same user cannot ptrace it or read its
	 * memory (as ssh-agent does).
	 */
	if (!rc)
		prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
out:
	if (pass)
		sodium_free(pass);
	if (again)
		sodium_free(again);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Store */

/* A non-empty environment variable or NULL. */
static const char *env_str(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? v : NULL;
}

/* Config string member or NULL when there is no config. */
static int config_opt(struct cli *cli, const char *key, const char **out)
{
	*out = NULL;
	return cli->config ? config_str(cli, "storage", key, out) : 0;
}

/* True when the endpoint's host is an IP literal (no virtual hosts). */
static bool endpoint_host_is_ip(const char *ep)
{
	const char *h = strstr(ep, "://");
	char host[256];
	size_t n;
	unsigned char addr[16];

	h = h ? h + 3 : ep;
	if (*h == '[')
		return true; /* IPv6 literal */
	n = strcspn(h, ":/?#");
	if (n == 0 || n >= sizeof(host))
		return false;
	memcpy(host, h, n);
	host[n] = '\0';
	return inet_pton(AF_INET, host, addr) == 1;
}

/* Tunable from CONTEXTFS_S3_<name> (unset: *out unchanged). */
static int s3_tunable(const char *name, uint64_t min, uint64_t max,
		      uint64_t *out, bool *set)
{
	const char *v = env_str(name);

	if (!v)
		return 0;
	if (set)
		*set = true;
	return cli_parse_u64(out, name, v, min, max);
}

static int s3_tunables(struct cfs_s3_config *c, bool *retries_set)
{
	uint64_t v;
	const char *im;
	int rc;

	v = 0;
	rc = s3_tunable("CONTEXTFS_S3_RETRIES", 1, 100, &v, retries_set);
	c->max_retries = (unsigned)v;
	v = 0;
	if (!rc)
		rc = s3_tunable("CONTEXTFS_S3_CONNECT_TIMEOUT_MS", 100, 600000,
				&v, NULL);
	c->connect_timeout_ms = (unsigned)v;
	v = 0;
	if (!rc)
		rc = s3_tunable("CONTEXTFS_S3_STALL_TIMEOUT", 1, 86400, &v,
				NULL);
	c->stall_timeout_s = (unsigned)v;
	if (!rc)
		rc = s3_tunable("CONTEXTFS_S3_PART_SIZE", 5ull << 20,
				5ull << 30, &c->part_size, NULL);
	if (!rc)
		rc = s3_tunable("CONTEXTFS_S3_MULTIPART_THRESHOLD", 5ull << 20,
				5ull << 30, &c->multipart_threshold, NULL);
	v = 0;
	if (!rc)
		rc = s3_tunable("CONTEXTFS_S3_PARALLEL_PARTS", 1, 16, &v, NULL);
	c->parallel_parts = (unsigned)v;
	if (rc)
		return rc;
	im = env_str("CONTEXTFS_S3_IF_MATCH");
	if (!im || !strcmp(im, "auto"))
		c->if_match = CFS_S3_IF_MATCH_AUTO;
	else if (!strcmp(im, "quoted"))
		c->if_match = CFS_S3_IF_MATCH_QUOTED;
	else if (!strcmp(im, "unquoted"))
		c->if_match = CFS_S3_IF_MATCH_UNQUOTED;
	else
		return cfs_error_set(CFS_EINVAL,
				     "CONTEXTFS_S3_IF_MATCH must be auto, "
				     "quoted or unquoted");
	c->ca_file = env_str("CONTEXTFS_S3_CA_FILE");
	if (!c->ca_file)
		c->ca_file = env_str("AWS_CA_BUNDLE");
	return 0;
}

/* The AWS shared files' profile, read at most once per run. */
static int aws_profile(struct cli *cli, struct aws_profile **out)
{
	int rc = 0;

	if (!cli->aws_prof_loaded) {
		rc = aws_profile_load(&cli->aws_prof);
		cli->aws_prof_loaded = rc == 0;
	}
	*out = rc ? NULL : &cli->aws_prof;
	return rc;
}

/*
 * Credentials: an explicit CONTEXTSDK_S3_* pair (either set -> both
 * required, as the reference), else the AWS_* pair and session token,
 * else the AWS shared files' profile (AWS_PROFILE or "default").
 */
static int s3_credentials(struct cli *cli, struct cli_store_spec *sp)
{
	struct cfs_s3_config *c = &sp->s3cfg;

	if (cli->s3_access_key || cli->s3_secret_key) {
		if (!cli->s3_access_key)
			return cfs_error_set(CFS_EKEY, "CONTEXTSDK_S3_ACCESS_"
						       "KEY_ID is required");
		if (!cli->s3_secret_key)
			return cfs_error_set(CFS_EKEY,
					     "CONTEXTSDK_S3_SECRET_ACCESS_KEY "
					     "is required");
		c->access_key = cli->s3_access_key;
		c->secret_key = cli->s3_secret_key;
		sp->credentials = "CONTEXTSDK_S3_ACCESS_KEY_ID";
		return 0;
	}
	if (cli->aws_access_key || cli->aws_secret_key) {
		if (!cli->aws_access_key)
			return cfs_error_set(CFS_EKEY,
					     "AWS_ACCESS_KEY_ID is required");
		if (!cli->aws_secret_key)
			return cfs_error_set(CFS_EKEY,
					     "AWS_SECRET_ACCESS_KEY is "
					     "required");
		c->access_key = cli->aws_access_key;
		c->secret_key = cli->aws_secret_key;
		c->session_token = cli->aws_session_token;
		sp->credentials = "AWS_ACCESS_KEY_ID";
		return 0;
	}
	{
		struct aws_profile *p;
		int rc = aws_profile(cli, &p);

		if (rc)
			return rc;
		if (p->access_key && p->secret_key) {
			free(cli->aws_prof_desc);
			cli->aws_prof_desc = cfs_asprintf("profile %s in %s",
							  p->name, p->source);
			if (!cli->aws_prof_desc)
				return CFS_ENOMEM;
			c->access_key = p->access_key;
			c->secret_key = p->secret_key;
			c->session_token = p->session_token;
			sp->credentials = cli->aws_prof_desc;
			return 0;
		}
		if (p->named && !p->found)
			return cfs_error_set(CFS_EKEY,
					     "AWS_PROFILE=%s: no such profile "
					     "in the AWS credentials or config "
					     "file (~/.aws/credentials, "
					     "~/.aws/config)",
					     p->name);
		if (p->found)
			return cfs_error_set(CFS_EKEY,
					     "AWS profile %s has no "
					     "aws_access_key_id and "
					     "aws_secret_access_key",
					     p->name);
	}
	return cfs_error_set(CFS_EKEY,
			     "S3 credentials are required for s3://%s: set "
			     "CONTEXTSDK_S3_ACCESS_KEY_ID and "
			     "CONTEXTSDK_S3_SECRET_ACCESS_KEY (or "
			     "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
			     "an AWS profile in ~/.aws/credentials)",
			     sp->bucket);
}

/* Fills the S3 half of the spec; sp->bucket and sp->prefix are set. */
static int s3_resolve(struct cli *cli, struct cli_store_spec *sp)
{
	const char *region, *endpoint = NULL, *cfgv = NULL;
	const char *fps = env_str("CONTEXTSDK_S3_FORCE_PATH_STYLE");
	bool cfg_path_style = false;
	int rc;

	sp->s3 = true;
	/* Region: CONTEXTSDK_S3_REGION ?? AWS_REGION ?? config ?? "auto". */
	region = env_str("CONTEXTSDK_S3_REGION");
	if (!region)
		region = env_str("AWS_REGION");
	if (!region) {
		rc = config_opt(cli, "region", &region);
		if (rc)
			return rc;
	}
	if (!region)
		region = env_str("AWS_DEFAULT_REGION");
	if (!region) {
		struct aws_profile *p;

		rc = aws_profile(cli, &p);
		if (rc)
			return rc;
		region = p->region;
	}
	if (!region)
		region = "auto";
	/* Endpoint: CONTEXTSDK_S3_ENDPOINT ?? config ?? AWS_ENDPOINT_URL_S3
	 * ?? AWS_ENDPOINT_URL ?? AWS itself. */
	endpoint = env_str("CONTEXTSDK_S3_ENDPOINT");
	if (!endpoint) {
		rc = config_opt(cli, "endpoint", &cfgv);
		if (rc)
			return rc;
		endpoint = cfgv;
	}
	if (!endpoint)
		endpoint = env_str("AWS_ENDPOINT_URL_S3");
	if (!endpoint)
		endpoint = env_str("AWS_ENDPOINT_URL");
	rc = config_bool(cli, "storage", "forcePathStyle", &cfg_path_style);
	if (rc)
		return rc;
	sp->region = cfs_strdup(region);
	sp->endpoint = endpoint ? cfs_strdup(endpoint) : NULL;
	if (!sp->region || (endpoint && !sp->endpoint))
		return CFS_ENOMEM;
	sp->s3cfg.bucket = sp->bucket;
	sp->s3cfg.prefix = sp->prefix;
	sp->s3cfg.region = sp->region;
	sp->s3cfg.endpoint = sp->endpoint;
	sp->s3cfg.path_style =
		cfg_path_style ||
		(fps && (!strcmp(fps, "1") || !strcmp(fps, "true")));
	/* bucket.127.0.0.1 cannot resolve: an IP endpoint is path style. */
	if (!sp->s3cfg.path_style && endpoint &&
	    endpoint_host_is_ip(endpoint)) {
		sp->s3cfg.path_style = true;
		sp->path_style_auto = true;
	}
	rc = s3_tunables(&sp->s3cfg, &sp->tunables_set);
	if (rc)
		return rc;
	return s3_credentials(cli, sp);
}

/* --store s3://BUCKET[/PREFIX] */
static int s3_url_parse(struct cli_store_spec *sp, const char *url)
{
	const char *b = url + 5, *slash = strchr(b, '/');
	size_t blen = slash ? (size_t)(slash - b) : strlen(b);
	const char *p = slash ? slash : "";

	if (blen == 0 || blen > 255)
		return cfs_error_set(CFS_EINVAL,
				     "--store %s: expected s3://BUCKET or "
				     "s3://BUCKET/PREFIX",
				     url);
	while (*p == '/')
		p++;
	sp->bucket = cfs_strndup(b, blen);
	sp->prefix = *p ? cfs_strdup(p) : NULL;
	if (!sp->bucket || (*p && !sp->prefix))
		return CFS_ENOMEM;
	return 0;
}

static int fs_resolve(struct cli *cli, struct cli_store_spec *sp)
{
	const char *dir = env_str("CONTEXTSDK_STORAGE_DIR");
	int rc;

	sp->source = "CONTEXTSDK_STORAGE_DIR";
	if (!dir) {
		rc = config_opt(cli, "directory", &dir);
		if (rc)
			return rc;
		sp->source = "config";
	}
	if (dir) {
		sp->directory = cfs_strdup(dir);
		return sp->directory ? 0 : CFS_ENOMEM;
	}
	sp->source = "default";
	sp->directory = cfs_store_fs_default_dir();
	if (!sp->directory)
		return cfs_error_set(CFS_EINVAL,
				     "cannot find a home directory for the "
				     "default store; pass --store DIR");
	return 0;
}

void cli_store_spec_clear(struct cli_store_spec *sp)
{
	free(sp->directory);
	free(sp->bucket);
	free(sp->prefix);
	free(sp->region);
	free(sp->endpoint);
	memset(sp, 0, sizeof(*sp));
}

int cli_store_resolve(struct cli *cli, struct cli_store_spec *sp)
{
	const char *type = NULL, *bucket, *prefix = NULL;
	int rc;

	memset(sp, 0, sizeof(*sp));
	if (cli->store_dir) {
		sp->source = "--store";
		if (strncmp(cli->store_dir, "s3://", 5) == 0) {
			rc = s3_url_parse(sp, cli->store_dir);
			if (!rc)
				rc = s3_resolve(cli, sp);
		} else {
			sp->directory = cfs_strdup(cli->store_dir);
			rc = sp->directory ? 0 : CFS_ENOMEM;
		}
		goto out;
	}
	rc = config_opt(cli, "type", &type);
	if (rc)
		goto out;
	/* storage.type "fs": a stray CONTEXTSDK_S3_BUCKET is ignored. */
	if (type && !strcmp(type, "fs")) {
		rc = fs_resolve(cli, sp);
		goto out;
	}
	bucket = env_str("CONTEXTSDK_S3_BUCKET");
	sp->source = "CONTEXTSDK_S3_BUCKET";
	if (!bucket) {
		rc = config_opt(cli, "bucket", &bucket);
		if (rc)
			goto out;
		sp->source = "config";
	}
	if (!bucket && type && !strcmp(type, "s3")) {
		rc = cfs_error_set(CFS_EINVAL,
				   "config %s: storage type \"s3\" needs a "
				   "bucket: set storage.bucket or "
				   "CONTEXTSDK_S3_BUCKET",
				   cli->config_path);
		goto out;
	}
	if (!bucket) {
		rc = fs_resolve(cli, sp);
		goto out;
	}
	prefix = env_str("CONTEXTSDK_S3_PREFIX");
	if (!prefix) {
		rc = config_opt(cli, "prefix", &prefix);
		if (rc)
			goto out;
	}
	sp->bucket = cfs_strdup(bucket);
	sp->prefix = prefix ? cfs_strdup(prefix) : NULL;
	if (!sp->bucket || (prefix && !sp->prefix)) {
		rc = CFS_ENOMEM;
		goto out;
	}
	rc = s3_resolve(cli, sp);
out:
	if (rc) {
		const char *src = sp->source;

		cli_store_spec_clear(sp);
		sp->source = src;
	}
	return rc;
}

int cli_store_open_spec(const struct cli_store_spec *sp, struct cfs_store **out)
{
	*out = NULL;
	if (sp->s3)
		return cfs_store_s3_open(out, &sp->s3cfg);
	return cfs_store_fs_open(out, sp->directory);
}

int cli_store_open(struct cli *cli, struct cfs_store **out)
{
	struct cli_store_spec sp;
	int rc;

	*out = NULL;
	rc = cli_store_resolve(cli, &sp);
	if (!rc)
		rc = cli_store_open_spec(&sp, out);
	cli_store_spec_clear(&sp);
	return rc;
}

int cli_store_open_write(struct cli *cli, struct cfs_store **out, bool fresh)
{
	struct cli_store_spec sp;
	struct cfs_store *st = NULL;
	int rc;

	*out = NULL;
	rc = cli_store_resolve(cli, &sp);
	if (!rc)
		rc = cli_store_open_spec(&sp, &st);
	if (rc || !sp.s3)
		goto out;
	/* A server that ignores If-None-Match / If-Match cannot hold the
	 * lock or the manifest compare-and-swap: refuse before writing. */
	rc = cfs_store_check_conditional(st);
	if (rc == CFS_EUNSUPPORTED) {
		char msg[1024];

		snprintf(msg, sizeof(msg), "%s", cfs_error_last());
		rc = cfs_error_set(CFS_EIO, "%s", msg);
	}
	if (!rc && fresh) {
		cfs_store_free(st);
		st = NULL;
		rc = cli_store_open_spec(&sp, &st);
	}
out:
	cli_store_spec_clear(&sp);
	if (rc) {
		cfs_store_free(st);
		return rc;
	}
	*out = st;
	return 0;
}

int cli_manifest_read(struct cli *cli, struct cfs_manifest **out,
		      struct cfs_store *st, const char *id)
{
	struct cfs_manifest *m = NULL;
	int rc;

	if (out)
		*out = NULL;
	rc = cfs_id_check(id);
	if (rc)
		return rc;
	rc = cfs_context_read_manifest(&m, NULL, st, id);
	if (rc == CFS_ENOTFOUND)
		return cfs_error_set(CFS_ENOTFOUND,
				     "context %s not found in %s (see "
				     "contextfs list)",
				     id, cfs_store_describe(st));
	if (rc)
		return rc;
	if (out)
		*out = m;
	else
		cfs_manifest_free(m);
	return 0;
}

int cli_lock_take(struct cli *cli, struct cfs_store *st, const char *id,
		  char **owner_out)
{
	char *owner = NULL;
	int rc;

	*owner_out = NULL;
	rc = cfs_lock_owner_new(&owner);
	if (rc)
		return rc;
	rc = cfs_lock_acquire(NULL, NULL, st, id, "contextfs-cli", owner,
			      CFS_LOCK_DEFAULT_TTL_MS, false);
	if (rc) {
		free(owner);
		return rc;
	}
	*owner_out = owner;
	return 0;
}

void cli_lock_drop(struct cli *cli, struct cfs_store *st, const char *id,
		   char *owner)
{
	int saved_code, rc;
	char saved_msg[1024];

	if (!owner)
		return;
	/* Keep the operation's error record intact across the release. */
	saved_code = cfs_error_last_code();
	snprintf(saved_msg, sizeof(saved_msg), "%s", cfs_error_last());
	rc = cfs_lock_release(st, id, owner, false);
	if (rc)
		cli_warn(cli,
			 "could not release the lock of %s: %s (it expires "
			 "by itself, or run contextfs unlock --force %s)",
			 id, cfs_error_last(), id);
	cfs_error_set(saved_code, "%s", saved_msg);
	free(owner);
}

int cli_write_locked(struct cli *cli, struct cfs_commit_result *cr,
		     const char *id, const char *label,
		     struct cfs_commit_opts *co, cli_locked_write_fn write,
		     void *payload)
{
	struct cfs_store *st = NULL;
	struct cfs_keys *keys = NULL;
	char *owner = NULL;
	int rc;

	rc = cli_store_open_write(cli, &st, false);
	if (rc)
		goto out;
	rc = cli_manifest_read(cli, NULL, st, id);
	if (rc)
		goto out;
	rc = cli_keys(cli, false, &keys);
	if (rc)
		goto out;
	rc = cli_lock_take(cli, st, id, &owner);
	if (rc)
		goto out;

	co->owner = owner;
	co->progress = cli_progress_cb;
	co->progress_payload = cli;
	cli_progress_begin(cli, label);
	rc = write(cr, st, keys, co, payload);
	cli_progress_end(cli);
	co->owner = NULL;
	cli_lock_drop(cli, st, id, owner);
out:
	cfs_keys_free(keys);
	cfs_store_free(st);
	return rc;
}

struct dir_write {
	const char *id;
	int dirfd;
};

static int commit_dir(struct cfs_commit_result *cr, struct cfs_store *st,
		      struct cfs_keys *keys, const struct cfs_commit_opts *co,
		      void *payload)
{
	const struct dir_write *w = payload;
	struct cfs_commit_opts o = *co;
	char *dir = cli_commit_cache_dir();
	int rc;

	/* the index of our last commit saves a download (context.h) */
	o.index_cache_dir = dir;
	rc = cfs_context_commit(cr, st, keys, w->id, w->dirfd, &o);
	free(dir);
	return rc;
}

char *cli_commit_cache_dir(void)
{
	char *cache = cfs_mount_default_cache();
	char *dir = cache ? cfs_asprintf("%s/contextfs/commits", cache) : NULL;

	free(cache);
	return dir;
}

int cli_commit_dir_locked(struct cli *cli, struct cfs_commit_result *cr,
			  const char *id, int dirfd, const char *label,
			  struct cfs_commit_opts *co)
{
	struct dir_write w = {id, dirfd};

	return cli_write_locked(cli, cr, id, label, co, commit_dir, &w);
}

int cli_open_dir(int *fd_out, const char *what, const char *path)
{
	struct stat st;
	int fd;

	*fd_out = -1;
	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;

		if (e == ENOENT || e == ENOTDIR)
			return cfs_error_set(CFS_EINVAL, "%s %s: %s", what,
					     path, strerror(e));
		return cfs_error_errno(e, "%s %s", what, path);
	}
	if (fstat(fd, &st) != 0) {
		close(fd);
		return cfs_error_errno(errno, "%s %s", what, path);
	}
	*fd_out = fd;
	return 0;
}

/* Adds the commit result members shared by commit and restore. */
void cli_add_commit_result(struct cli *cli, const char *id,
			   const struct cfs_commit_result *cr)
{
	cJSON *res = cli_result(cli);
	cJSON *paths;

	cJSON_AddStringToObject(res, "id", id);
	cJSON_AddNumberToObject(res, "generation", (double)cr->generation);
	cJSON_AddStringToObject(res, "treeKey", cr->tree_key);
	cJSON_AddNumberToObject(res, "sizeBytes", (double)cr->size_bytes);
	paths = cr->changed_paths ? cJSON_Duplicate(cr->changed_paths, 1)
				  : cJSON_CreateArray();
	if (paths)
		cJSON_AddItemToObject(res, "changedPaths", paths);
	/* a cut list, as in the manifest's summary */
	if (cr->changed_paths &&
	    cr->changed_total > (uint64_t)cJSON_GetArraySize(cr->changed_paths))
		cJSON_AddNumberToObject(res, "changedPathsTotal",
					(double)cr->changed_total);
}

/* ------------------------------------------------------------------ */
/* Usage */

static void usage_top(FILE *f)
{
	size_t i;

	fprintf(f, "usage: contextfs [GLOBAL OPTIONS] COMMAND [ARGS]\n\n"
		   "Encrypted, versioned agent contexts in a local object "
		   "store.\n\nCommands:\n");
	for (i = 0; cli_commands[i]; i++)
		fprintf(f, "  %-13s %s\n", cli_commands[i]->name,
			cli_commands[i]->summary);
	fprintf(f,
		"  help CMD      show the help of a command\n"
		"\nGlobal options (also accepted after the command):\n"
		"  --store DIR|s3://BUCKET[/PREFIX]\n"
		"                          local store directory or S3 "
		"bucket\n"
		"  --passphrase-file FILE  read the passphrase from FILE "
		"(mode 0600)\n"
		"  --json                  print one JSON document on stdout\n"
		"  -q, --quiet             no progress line or chatter\n"
		"  -h, --help              show this help\n"
		"  --version               print the version\n"
		"\nKey material comes from CONTEXTSDK_KEY_HEX, "
		"CONTEXTSDK_PASSPHRASE,\n--passphrase-file or a prompt; "
		"never from the command line. S3 credentials\ncome from "
		"CONTEXTSDK_S3_ACCESS_KEY_ID / CONTEXTSDK_S3_SECRET_ACCESS_KEY "
		"or AWS_*.\nSee contextfs(1).\n");
}

static void usage_cmd(FILE *f, const struct cli_command *cmd)
{
	fprintf(f, "usage: contextfs %s %s\n\n%s\n", cmd->name, cmd->args,
		cmd->summary);
	if (cmd->help && *cmd->help)
		fprintf(f, "\n%s", cmd->help);
	fprintf(f, "\nGlobal options: --store DIR, --passphrase-file FILE, "
		   "--json, -q, -h.\n");
}

static const struct cli_command *find_command(const char *name)
{
	size_t i;

	for (i = 0; cli_commands[i]; i++)
		if (strcmp(cli_commands[i]->name, name) == 0)
			return cli_commands[i];
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Argument parsing */

static const struct cli_opt *lookup_long(const struct cli_opt *cmdopts,
					 const char *name, size_t n)
{
	const struct cli_opt *o;

	for (o = global_opts; o->name; o++)
		if (strlen(o->name) == n && strncmp(o->name, name, n) == 0)
			return o;
	for (o = cmdopts; o && o->name; o++)
		if (strlen(o->name) == n && strncmp(o->name, name, n) == 0)
			return o;
	return NULL;
}

static const struct cli_opt *lookup_short(const struct cli_opt *cmdopts, int c)
{
	const struct cli_opt *o;

	for (o = global_opts; o->name; o++)
		if (o->short_name == c)
			return o;
	for (o = cmdopts; o && o->name; o++)
		if (o->short_name == c)
			return o;
	return NULL;
}

struct parse_state {
	bool help;
	bool version;
	const char *command; /* first positional */
};

static int apply_opt(struct cli *cli, struct parse_state *ps,
		     const struct cli_opt *o, const char *val)
{
	switch (o->id) {
	case GOPT_STORE:
		if (!*val)
			return cfs_error_set(CFS_EINVAL,
					     "--store needs a directory or "
					     "s3://BUCKET[/PREFIX]");
		cli->store_dir = val;
		return 0;
	case GOPT_PASSPHRASE_FILE:
		if (!*val)
			return cfs_error_set(CFS_EINVAL,
					     "--passphrase-file needs a file");
		cli->passphrase_file = val;
		return 0;
	case GOPT_JSON:
		cli->json = true;
		return 0;
	case GOPT_QUIET:
		cli->quiet = true;
		return 0;
	case GOPT_HELP:
		ps->help = true;
		return 0;
	case GOPT_VERSION:
		ps->version = true;
		return 0;
	default:
		if (o->id < 0 || o->id >= CLI_MAX_OPTS)
			return cfs_error_set(CFS_ERROR, "bad option table");
		cli->optv[o->id] = val ? val : "";
		cli->optset[o->id] = true;
		return 0;
	}
}

static int add_positional(struct cli *cli, struct parse_state *ps, char *arg)
{
	if (!ps->command) {
		ps->command = arg;
		return 0;
	}
	if (cli->argc >= CLI_MAX_ARGS)
		return cfs_error_set(CFS_EINVAL, "too many arguments");
	cli->argv[cli->argc++] = arg;
	return 0;
}

/*
 * One pass over argv with the global options plus cmdopts (NULL before
 * the command is known: then unknown options are skipped, not fatal, and
 * the pass only finds the command word).
 */
static int parse_args(struct cli *cli, struct parse_state *ps, int argc,
		      char **argv, const struct cli_opt *cmdopts, bool strict)
{
	bool dashdash = false;
	int i, rc;

	for (i = 1; i < argc; i++) {
		char *arg = argv[i];

		if (dashdash || arg[0] != '-' || arg[1] == '\0') {
			rc = add_positional(cli, ps, arg);
			if (rc && strict)
				return rc;
			continue;
		}
		if (strcmp(arg, "--") == 0) {
			dashdash = true;
			continue;
		}
		if (arg[1] == '-') {
			const char *name = arg + 2;
			const char *eq = strchr(name, '=');
			size_t n = eq ? (size_t)(eq - name) : strlen(name);
			const struct cli_opt *o = lookup_long(cmdopts, name, n);
			const char *val = NULL;

			if (!o) {
				if (!strict)
					continue;
				return cfs_error_set(
					CFS_EINVAL,
					"unknown option --%.*s "
					"(see contextfs %s "
					"--help)",
					(int)(n > 64 ? 64 : n), name,
					cli->cmd ? cli->cmd->name : "");
			}
			if (o->has_arg) {
				if (eq)
					val = eq + 1;
				else if (i + 1 < argc)
					val = argv[++i];
				else
					return cfs_error_set(CFS_EINVAL,
							     "option --%s "
							     "needs a value",
							     o->name);
			} else if (eq) {
				return cfs_error_set(CFS_EINVAL,
						     "option --%s takes no "
						     "value",
						     o->name);
			}
			rc = apply_opt(cli, ps, o, val);
			if (rc && strict)
				return rc;
			continue;
		}
		/* Short options, possibly clustered: -qm MSG, -mMSG. */
		for (size_t j = 1; arg[j]; j++) {
			const struct cli_opt *o = lookup_short(cmdopts, arg[j]);
			const char *val = NULL;

			if (!o) {
				if (!strict)
					break;
				return cfs_error_set(
					CFS_EINVAL,
					"unknown option -%c (see "
					"contextfs %s --help)",
					arg[j], cli->cmd ? cli->cmd->name : "");
			}
			if (o->has_arg) {
				if (arg[j + 1])
					val = arg + j + 1;
				else if (i + 1 < argc)
					val = argv[++i];
				else
					return cfs_error_set(CFS_EINVAL,
							     "option -%c "
							     "needs a value",
							     arg[j]);
				rc = apply_opt(cli, ps, o, val);
				if (rc && strict)
					return rc;
				break;
			}
			rc = apply_opt(cli, ps, o, NULL);
			if (rc && strict)
				return rc;
		}
	}
	return 0;
}

/*
 * First pass: find the command word. Global options taking a value skip
 * their value; anything else that looks like an option is ignored.
 */
static const char *find_command_word(int argc, char **argv)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--") == 0)
			return i + 1 < argc ? argv[i + 1] : NULL;
		if (a[0] != '-' || a[1] == '\0')
			return a;
		if ((strcmp(a, "--store") == 0 ||
		     strcmp(a, "--passphrase-file") == 0) &&
		    i + 1 < argc)
			i++;
	}
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Interrupts */

/*
 * While a command with defer_signals runs, the first SIGINT/SIGTERM/SIGHUP
 * is deferred: the operation finishes and cleans up (private plaintext temp
 * files, the lock it holds). The core has no cancellation points, and
 * neither the lock release nor the temp cleanup is async-signal-safe, so
 * they cannot run inside a handler. The exit status tells the truth: 0 if
 * the operation landed, else death by the signal. A second signal takes
 * the default action at once.
 */
static volatile sig_atomic_t interrupted;
static const int defer_signals[] = {SIGINT, SIGTERM, SIGHUP};

static void defer_signal(int sig)
{
	static const char msg[] =
		"\ncontextfs: interrupted; finishing the current step so no "
		"lock or plaintext is left behind (interrupt again to stop "
		"at once)\n";
	size_t i;
	ssize_t w;

	interrupted = sig;
	for (i = 0; i < CFS_ARRAY_SIZE(defer_signals); i++)
		signal(defer_signals[i], SIG_DFL);
	w = write(STDERR_FILENO, msg, sizeof(msg) - 1);
	(void)w;
}

static void defer_install(void)
{
	struct sigaction sa;
	size_t i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = defer_signal;
	sigemptyset(&sa.sa_mask);
	for (i = 0; i < CFS_ARRAY_SIZE(defer_signals); i++) {
		struct sigaction old;

		/* Keep signals the parent told us to ignore ignored. */
		if (sigaction(defer_signals[i], NULL, &old) == 0 &&
		    old.sa_handler == SIG_IGN)
			continue;
		sigaction(defer_signals[i], &sa, NULL);
	}
}

/* ------------------------------------------------------------------ */
/* Main */

static void cli_free(struct cli *cli)
{
	cJSON_Delete(cli->result);
	cJSON_Delete(cli->config);
	free(cli->config_path);
	free(cli->config_error);
	cfs_secret_free(cli->env_passphrase);
	cfs_secret_free(cli->env_raw_key);
	cfs_secret_free(cli->s3_access_key);
	cfs_secret_free(cli->s3_secret_key);
	cfs_secret_free(cli->aws_access_key);
	cfs_secret_free(cli->aws_secret_key);
	cfs_secret_free(cli->aws_session_token);
	aws_profile_clear(&cli->aws_prof);
	free(cli->aws_prof_desc);
}

/* Usage errors: human message plus a hint, or the JSON error document. */
static int usage_error(struct cli *cli, int rc)
{
	if (!cli->json && cli->cmd) {
		fprintf(stderr, "contextfs: %s\n", error_message(rc));
		fprintf(stderr, "usage: contextfs %s %s\n", cli->cmd->name,
			cli->cmd->args);
		return cli_exit_code(rc);
	}
	return cli_finish(cli, rc);
}

int cli_main(int argc, char **argv)
{
	struct cli cli;
	struct parse_state ps;
	const char *word;
	int rc, code;

	memset(&cli, 0, sizeof(cli));
	memset(&ps, 0, sizeof(ps));
	signal(SIGPIPE, SIG_IGN);
	cfs_log_set_level(CFS_LOG_WARN);

	if (cfs_init() != 0) {
		fprintf(stderr, "contextfs: %s\n", cfs_error_last());
		secrets_wipe_defaults();
		return CLI_EXIT_ERROR;
	}

	word = find_command_word(argc, argv);
	if (word) {
		if (strcmp(word, "help") == 0) {
			cli.cmd = NULL;
		} else {
			cli.cmd = find_command(word);
			if (!cli.cmd) {
				/* Pick up --json for the error document. */
				parse_args(&cli, &ps, argc, argv, NULL, false);
				memset(&ps, 0, sizeof(ps));
				rc = cfs_error_set(CFS_EINVAL,
						   "unknown command \"%.64s\" "
						   "(see contextfs --help)",
						   word);
				code = cli_finish(&cli, rc);
				secrets_wipe_defaults();
				cli_free(&cli);
				return code;
			}
		}
	}
	rc = parse_args(&cli, &ps, argc, argv, cli.cmd ? cli.cmd->opts : NULL,
			true);
	if (rc) {
		/* --json after the bad word still asks for a JSON error. */
		for (int i = 1; i < argc && strcmp(argv[i], "--"); i++)
			if (strcmp(argv[i], "--json") == 0)
				cli.json = true;
		code = usage_error(&cli, rc);
		goto done;
	}
	if (cli.quiet)
		cfs_log_set_level(CFS_LOG_ERROR);

	if (word && strcmp(word, "help") == 0) {
		const struct cli_command *c =
			cli.argc > 0 ? find_command(cli.argv[0]) : NULL;

		if (cli.argc > 0 && !c) {
			rc = cfs_error_set(CFS_EINVAL,
					   "unknown command \"%.64s\" (see "
					   "contextfs --help)",
					   cli.argv[0]);
			code = cli_finish(&cli, rc);
			goto done;
		}
		if (c)
			usage_cmd(stdout, c);
		else
			usage_top(stdout);
		code = CLI_EXIT_OK;
		goto done;
	}
	if (ps.help) {
		if (cli.cmd)
			usage_cmd(stdout, cli.cmd);
		else
			usage_top(stdout);
		code = CLI_EXIT_OK;
		goto done;
	}
	if (ps.version) {
		if (cli.json) {
			cJSON_AddStringToObject(cli_result(&cli), "version",
						CFS_VERSION);
			code = cli_finish(&cli, 0);
		} else {
			printf("contextfs %s\n", CFS_VERSION);
			code = CLI_EXIT_OK;
		}
		goto done;
	}
	if (!cli.cmd) {
		usage_top(stderr);
		code = CLI_EXIT_USAGE;
		goto done;
	}
	if (cli.argc < cli.cmd->min_args || cli.argc > cli.cmd->max_args) {
		rc = cfs_error_set(CFS_EINVAL, "%s: %s",
				   cli.argc < cli.cmd->min_args
					   ? "missing argument"
					   : "too many arguments",
				   cli.cmd->name);
		code = usage_error(&cli, rc);
		goto done;
	}

	cli.progress_enabled = !cli.json && !cli.quiet && isatty(STDERR_FILENO);

	rc = config_load(&cli);
	if (rc && cli.cmd == &cli_cmd_doctor) {
		cli.config_rc = rc;
		cli.config_error = cfs_strdup(error_message(rc));
		cJSON_Delete(cli.config);
		cli.config = NULL;
		cli.passphrase_env = DEFAULT_PASSPHRASE_ENV;
		cli.raw_key_env = DEFAULT_RAW_KEY_ENV;
		rc = 0;
	}
	if (!rc)
		rc = secrets_capture(&cli);
	secrets_wipe_defaults();
	if (!rc) {
		cfs_error_clear();
		if (cli.cmd->defer_signals)
			defer_install();
		rc = cli.cmd->run(&cli);
	}
	code = cli_finish(&cli, rc);
	if (!rc && cli.exit_status > 0)
		code = cli.exit_status;
	if (interrupted && !rc) {
		/* The work landed: say so truthfully, exit 0. */
		if (!cli.json && !cli.quiet)
			fprintf(stderr,
				"contextfs: interrupted; %s completed "
				"before stopping\n",
				cli.cmd->name);
		interrupted = 0;
	}
done:
	secrets_wipe_defaults();
	cli_free(&cli);
	if (interrupted) {
		/* Failed after an interrupt: die of the signal, so a calling
		 * shell stops too. */
		fflush(stdout);
		signal(interrupted, SIG_DFL);
		raise(interrupted);
	}
	return code;
}
