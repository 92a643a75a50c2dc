/*
 * contextfs doctor: reports whether this environment can use contextfs:
 * the store (resolved as every command does): a directory that exists and
 * is writable, or an S3 bucket that answers a listing of contexts/ with
 * these credentials and enforces conditional writes;
 * the config file, which key material is present (booleans only, never a
 * secret or its length), the scrypt setting, the temp directory, and the
 * versions of the libraries doing the work. Exit 0 when usable.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <openssl/crypto.h>
#include <sodium.h>
#include <zstd.h>

#include "core/crypto.h"
#include "core/error.h"
#include "core/util.h"
#include "tools/cli.h"
#include "tools/mount_cli.h"

#ifndef CFS_VERSION
#define CFS_VERSION "0.0.0"
#endif

static const struct cli_opt opts[] = {
	{NULL, 0, false, 0},
};

struct doctor {
	struct cli *cli;
	cJSON *checks;
	int first_fail; /* code of the first failed required check */
};

static void check(struct doctor *d, const char *name, bool required, int rc,
		  const char *message, const char *hint)
{
	cJSON *c = cJSON_CreateObject();

	if (rc && required && !d->first_fail)
		d->first_fail = rc;
	if (!c)
		return;
	cJSON_AddItemToArray(d->checks, c);
	cJSON_AddStringToObject(c, "name", name);
	cJSON_AddBoolToObject(c, "ok", rc == 0);
	cJSON_AddBoolToObject(c, "required", required);
	cJSON_AddStringToObject(c, "message", message);
	if (rc && hint)
		cJSON_AddStringToObject(c, "hint", hint);
	if (d->cli->json)
		return;
	printf("  %-5s %-12s %s\n",
	       rc == 0	  ? "ok"
	       : required ? "FAIL"
			  : "warn",
	       name, message);
	if (rc && hint)
		printf("        %-12s hint: %s\n", "", hint);
}

/* Absolute path of an executable on PATH, or NULL (heap string). */
static char *which(const char *name)
{
	const char *path = getenv("PATH");
	const char *p, *end;

	if (!path || !*path)
		path = "/usr/local/bin:/usr/bin:/bin";
	for (p = path; *p; p = *end ? end + 1 : end) {
		char *cand;

		end = strchr(p, ':');
		if (!end)
			end = p + strlen(p);
		if (end == p)
			continue;
		cand = cfs_asprintf("%.*s/%s", (int)(end - p), p, name);
		if (!cand)
			return NULL;
		if (access(cand, X_OK) == 0)
			return cand;
		free(cand);
	}
	return NULL;
}

/* Probes a directory by creating and removing a private temp file. */
static int probe_writable(const char *dir)
{
	char *tmpl = cfs_asprintf("%s/.contextfs-doctor-XXXXXX", dir);
	int fd, rc = 0;

	if (!tmpl)
		return CFS_ENOMEM;
	fd = mkstemp(tmpl);
	if (fd < 0) {
		rc = cfs_error_errno(errno, "cannot write in %s", dir);
	} else {
		close(fd);
		unlink(tmpl);
	}
	free(tmpl);
	return rc;
}

/* Nearest existing ancestor of path (heap string). */
static char *existing_parent(const char *path)
{
	char *p = cfs_strdup(path);
	struct stat sb;

	while (p) {
		char *slash = strrchr(p, '/');

		if (!slash) {
			free(p);
			return cfs_strdup(".");
		}
		if (slash == p) {
			p[1] = '\0';
			return p;
		}
		*slash = '\0';
		if (stat(p, &sb) == 0)
			return p;
	}
	return NULL;
}

struct count_ctx {
	unsigned contexts;
};

static int count_manifest(const char *key, void *payload)
{
	struct count_ctx *c = payload;
	size_t n = strlen(key);

	/* contexts/<id>/manifest.json */
	if (n > 23 && !strcmp(key + n - 14, "/manifest.json") &&
	    !memchr(key + 9, '/', n - 9 - 14))
		c->contexts++;
	return 0;
}

/* A hint for a failed S3 request, by error kind. */
static const char *s3_hint(int rc, const char *msg)
{
	if (rc == CFS_EPERM)
		return "check the access key and secret (CONTEXTSDK_S3_ACCESS_"
		       "KEY_ID / CONTEXTSDK_S3_SECRET_ACCESS_KEY or AWS_ACCESS_"
		       "KEY_ID / AWS_SECRET_ACCESS_KEY), AWS_SESSION_TOKEN, "
		       "the region, the clock and the bucket policy";
	if (msg && strstr(msg, "does not exist"))
		return "create the bucket, or fix CONTEXTSDK_S3_BUCKET / "
		       "--store s3://BUCKET and the endpoint";
	if (rc == CFS_EAGAIN || rc == CFS_ETIMEDOUT)
		return "is the endpoint reachable? check CONTEXTSDK_S3_ENDPOINT "
		       "(or AWS_ENDPOINT_URL), proxies and the network";
	if (rc == CFS_ENOSPC)
		return "the bucket is over its quota";
	return "check CONTEXTSDK_S3_ENDPOINT, CONTEXTSDK_S3_REGION and the "
	       "bucket";
}

/* S3: reachability + credentials + bucket, then conditional writes. */
static void check_s3(struct doctor *d, cJSON *js, struct cli_store_spec *sp)
{
	struct cfs_store *st = NULL;
	struct count_ctx cc = {0};
	char *msg = NULL;
	int rc;

	cJSON_AddStringToObject(js, "bucket", sp->bucket);
	cli_json_add_str_or_null(js, "prefix", sp->prefix);
	cJSON_AddStringToObject(js, "region", sp->region);
	cli_json_add_str_or_null(js, "endpoint", sp->endpoint);
	cJSON_AddBoolToObject(js, "pathStyle", sp->s3cfg.path_style);
	cJSON_AddStringToObject(js, "source", sp->source);
	cJSON_AddStringToObject(js, "credentials", sp->credentials);
	cJSON_AddBoolToObject(js, "sessionToken",
			      sp->s3cfg.session_token != NULL);
	/* Doctor answers fast: one retry unless CONTEXTFS_S3_RETRIES. */
	if (!sp->tunables_set)
		sp->s3cfg.max_retries = 1;
	rc = cli_store_open_spec(sp, &st);
	if (rc) {
		cJSON_AddBoolToObject(js, "reachable", false);
		cJSON_AddBoolToObject(js, "conditionalWrites", false);
		check(d, "storage", true, rc, cfs_error_last(),
		      "fix the S3 settings (contextfs(1), STORAGE)");
		return;
	}
	msg = cfs_asprintf("%s (from %s, credentials from %s%s%s)",
			   cfs_store_describe(st), sp->source, sp->credentials,
			   sp->s3cfg.path_style ? ", path style" : "",
			   sp->path_style_auto ? " for an IP endpoint" : "");
	check(d, "storage", true, 0, msg ? msg : "S3 store", NULL);
	free(msg);

	rc = cfs_store_list(st, "contexts/", count_manifest, &cc);
	if (rc && rc != CFS_EPERM && rc != CFS_ENOSPC && rc != CFS_EAGAIN &&
	    rc != CFS_ETIMEDOUT && rc != CFS_ENOMEM)
		rc = CFS_EIO;
	msg = rc ? cfs_strdup(cfs_error_last())
		 : cfs_asprintf("bucket %s reachable, credentials accepted; "
				"%u context%s under contexts/",
				sp->bucket, cc.contexts,
				cc.contexts == 1 ? "" : "s");
	cJSON_AddBoolToObject(js, "reachable", rc == 0);
	if (!rc)
		cJSON_AddNumberToObject(js, "contexts", cc.contexts);
	check(d, "s3-access", true, rc, msg ? msg : "S3 access",
	      s3_hint(rc, msg));
	free(msg);
	msg = NULL;
	if (rc) {
		cJSON_AddBoolToObject(js, "conditionalWrites", false);
		cfs_store_free(st);
		return;
	}

	rc = cfs_store_check_conditional(st);
	cJSON_AddBoolToObject(js, "conditionalWrites", rc == 0);
	if (rc == CFS_EUNSUPPORTED) {
		msg = cfs_asprintf("%s; the store is NOT usable for writes "
				   "(reads work)",
				   cfs_error_last());
		rc = CFS_EIO;
	} else {
		msg = rc ? cfs_strdup(cfs_error_last())
			 : cfs_strdup("the server enforces If-None-Match and "
				      "If-Match (the lock and commits are "
				      "safe)");
	}
	check(d, "s3-writes", true, rc, msg ? msg : "conditional writes",
	      rc == CFS_EPERM ? "the credentials cannot write to the bucket"
			      : "use a server that enforces conditional writes "
				"(AWS S3, Ceph RGW, MinIO, R2)");
	free(msg);
	cfs_store_free(st);
}

static void check_storage(struct doctor *d, cJSON *res)
{
	struct cli *cli = d->cli;
	struct cli_store_spec sp;
	const char *source = NULL;
	char *dir = NULL, *msg = NULL, *parent = NULL;
	bool exists = false, writable = false;
	cJSON *js;
	struct stat sb;
	int rc;

	js = cJSON_AddObjectToObject(res, "storage");
	rc = cli_store_resolve(cli, &sp);
	if (rc) {
		/* Name what was being resolved (an S3 source or a dir). */
		bool s3 = sp.source && strcmp(sp.source, "default") &&
			  strcmp(sp.source, "CONTEXTSDK_STORAGE_DIR") &&
			  (strcmp(sp.source, "--store") ||
			   !strncmp(cli->store_dir, "s3://", 5));

		cJSON_AddStringToObject(js, "mode", s3 ? "s3" : "fs");
		cli_json_add_str_or_null(js, "source", sp.source);
		check(d, "storage", true, rc, cfs_error_last(),
		      rc == CFS_EKEY ? "export the S3 credential variables "
				       "(never pass them as arguments)"
				     : "pass --store DIR or --store "
				       "s3://BUCKET, or fix the STORAGE "
				       "settings (contextfs(1))");
		return;
	}
	if (sp.s3) {
		cJSON_AddStringToObject(js, "mode", "s3");
		check_s3(d, js, &sp);
		cli_store_spec_clear(&sp);
		return;
	}
	cJSON_AddStringToObject(js, "mode", "fs");
	dir = sp.directory;
	sp.directory = NULL;
	source = sp.source;
	cli_store_spec_clear(&sp);
	if (dir[0] != '/') {
		/* Show where a relative directory really is. */
		char cwd[4096];

		if (getcwd(cwd, sizeof(cwd))) {
			char *abs = cfs_asprintf("%s/%s", cwd, dir);

			if (abs) {
				free(dir);
				dir = abs;
			}
		}
	}
	cJSON_AddStringToObject(js, "directory", dir);
	cJSON_AddStringToObject(js, "source", source);
	if (stat(dir, &sb) == 0) {
		exists = true;
		if (!S_ISDIR(sb.st_mode)) {
			rc = cfs_error_set(CFS_EIO, "%s is not a directory",
					   dir);
		} else {
			rc = probe_writable(dir);
			writable = rc == 0;
		}
		msg = rc ? cfs_strdup(cfs_error_last())
			 : cfs_asprintf("%s (from %s) exists and is "
					"writable",
					dir, source);
	} else if (errno == ENOENT) {
		/* Created on first use: its nearest parent must allow it. */
		parent = existing_parent(dir);
		rc = parent ? probe_writable(parent) : CFS_ENOMEM;
		writable = rc == 0;
		msg = rc ? cfs_strdup(cfs_error_last())
			 : cfs_asprintf("%s (from %s) does not exist yet; "
					"it is created on first use",
					dir, source);
	} else {
		rc = cfs_error_errno(errno, "cannot access %s", dir);
		msg = cfs_strdup(cfs_error_last());
	}
	if (rc && rc != CFS_EPERM && rc != CFS_ENOSPC && rc != CFS_ENOMEM)
		rc = CFS_EIO; /* an unusable store is a storage error (7) */
	cJSON_AddBoolToObject(js, "exists", exists);
	cJSON_AddBoolToObject(js, "writable", writable);
	check(d, "storage", true, rc, msg ? msg : "store directory",
	      "make the directory writable, or pass --store DIR / set "
	      "CONTEXTSDK_STORAGE_DIR to one that is");
	free(msg);
	free(parent);
	free(dir);
}

static void check_keys(struct doctor *d, cJSON *res)
{
	struct cli *cli = d->cli;
	bool tty = isatty(STDIN_FILENO);
	bool have_file = cli->passphrase_file != NULL;
	cJSON *env;
	char *msg = NULL;
	int rc = 0;

	env = cJSON_AddObjectToObject(res, "env");
	cJSON_AddBoolToObject(env, "passphrase", cli->env_passphrase != NULL);
	cJSON_AddBoolToObject(env, "rawKey", cli->env_raw_key != NULL);
	cJSON_AddStringToObject(env, "passphraseEnv", cli->passphrase_env);
	cJSON_AddStringToObject(env, "rawKeyEnv", cli->raw_key_env);
	cJSON_AddBoolToObject(env, "passphraseFile", have_file);
	cli_json_add_str_or_null(env, "config", cli->config_path);
	cli_json_add_str_or_null(env, "storageDir",
				 getenv("CONTEXTSDK_STORAGE_DIR"));
	/* S3 settings: presence only for the credentials. */
	cli_json_add_str_or_null(env, "s3Bucket",
				 getenv("CONTEXTSDK_S3_BUCKET"));
	cJSON_AddBoolToObject(env, "s3AccessKey", cli->s3_access_key != NULL);
	cJSON_AddBoolToObject(env, "s3SecretKey", cli->s3_secret_key != NULL);
	cJSON_AddBoolToObject(env, "awsAccessKey", cli->aws_access_key != NULL);
	cJSON_AddBoolToObject(env, "awsSecretKey", cli->aws_secret_key != NULL);
	cJSON_AddBoolToObject(env, "awsSessionToken",
			      cli->aws_session_token != NULL);

	/* The config file. */
	if (cli->config_rc) {
		check(d, "config", true, cli->config_rc,
		      cli->config_error ? cli->config_error : "invalid config",
		      "fix the file or point CONTEXTSDK_CONFIG elsewhere");
	} else {
		msg = cli->config_path
			      ? cfs_asprintf("using %s", cli->config_path)
			      : cfs_strdup("no config file (optional)");
		check(d, "config", true, 0, msg ? msg : "config", NULL);
		free(msg);
		msg = NULL;
	}

	/* The raw key must be well formed (never printed). */
	if (cli->env_raw_key) {
		struct cfs_keys *k = NULL;

		rc = cfs_keys_new(&k, NULL, cli->env_raw_key);
		cfs_keys_free(k);
		msg = rc ? cfs_asprintf("%s: %s", cli->raw_key_env,
					cfs_error_last())
			 : cfs_asprintf("%s is set (raw key; wins for new "
					"encryptions)",
					cli->raw_key_env);
		check(d, "raw-key", true, rc, msg ? msg : "raw key",
		      "it must be 64 hex digits (32 bytes)");
		free(msg);
		msg = NULL;
	}
	if (have_file) {
		rc = cli_passphrase_file_check(cli);
		msg = rc ? cfs_strdup(cfs_error_last())
			 : cfs_asprintf("--passphrase-file %s is private "
					"and readable",
					cli->passphrase_file);
		check(d, "passphrase-file", true, rc,
		      msg ? msg : "passphrase file",
		      "chmod 600 the file and make sure it holds one line");
		free(msg);
		msg = NULL;
	}
	rc = 0;
	if (cli->env_passphrase || cli->env_raw_key || have_file)
		msg = cfs_asprintf(
			"key material present (%s%s%s%s%s)",
			cli->env_raw_key ? cli->raw_key_env : "",
			cli->env_raw_key && cli->env_passphrase ? ", " : "",
			cli->env_passphrase ? cli->passphrase_env : "",
			(cli->env_raw_key || cli->env_passphrase) && have_file
				? ", "
				: "",
			have_file ? "--passphrase-file" : "");
	else if (tty)
		msg = cfs_strdup("no key in the environment; commands that "
				 "need one will prompt");
	else {
		rc = cfs_error_set(CFS_EKEY, "%s or %s is required",
				   cli->passphrase_env, cli->raw_key_env);
		msg = cfs_strdup(cfs_error_last());
	}
	/* Not required: status, log, list, unlock and gc need no key. */
	check(d, "key", false, rc, msg ? msg : "key material",
	      "export the passphrase variable, or pass --passphrase-file "
	      "FILE (mode 0600)");
	free(msg);
}

static void check_misc(struct doctor *d)
{
	const char *tmp = getenv("TMPDIR");
	uint64_t cost = 0;
	char *msg;
	int rc;

	rc = cli_scrypt_cost(&cost, NULL);
	if (cost)
		msg = cfs_asprintf("CONTEXTFS_SCRYPT_COST=%llu for new "
				   "contexts",
				   (unsigned long long)cost);
	else if (rc)
		msg = cfs_strdup(cfs_error_last());
	else
		msg = cfs_strdup("scrypt cost 131072 for new contexts "
				 "(default)");
	check(d, "scrypt", true, rc, msg ? msg : "scrypt",
	      "set CONTEXTFS_SCRYPT_COST to a power of two such as 131072");
	free(msg);

	if (!tmp || !*tmp)
		tmp = "/tmp";
	rc = probe_writable(tmp);
	msg = rc ? cfs_strdup(cfs_error_last())
		 : cfs_asprintf("temporary directory %s is writable", tmp);
	check(d, "tempdir", true, rc, msg ? msg : "tempdir",
	      "set TMPDIR to a writable directory with room for one bundle");
	free(msg);
}

static void add_tools(cJSON *res)
{
	cJSON *t = cJSON_AddObjectToObject(res, "tools");
	char *fm = which("fusermount3");

	if (!fm)
		fm = which("fusermount");
	cJSON_AddStringToObject(t, "libsodium", sodium_version_string());
	cJSON_AddStringToObject(t, "openssl", OpenSSL_version(OPENSSL_VERSION));
	cJSON_AddStringToObject(t, "zstd", ZSTD_versionString());
	cJSON_AddStringToObject(t, "libarchive", archive_version_string());
	cJSON_AddStringToObject(t, "cjson", cJSON_Version());
	cli_json_add_str_or_null(t, "fusermount", fm);
	cJSON_AddBoolToObject(t, "aesni", crypto_aead_aes256gcm_is_available());
	free(fm);
}

static int run(struct cli *cli)
{
	struct doctor d = {0};
	cJSON *res = cli_result(cli);

	if (!res)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	d.cli = cli;
	cJSON_AddStringToObject(res, "version", CFS_VERSION);
	if (!cli->json)
		printf("contextfs %s\nchecks:\n", CFS_VERSION);
	/* Members first, then the checks array after them. */
	d.checks = cJSON_CreateArray();
	if (!d.checks)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	check_storage(&d, res);
	check_keys(&d, res);
	check_misc(&d);
	add_tools(res);
	cli_mount_doctor(cli, res); /* mounts, leftover staging areas */
	cJSON_AddItemToObject(res, "checks", d.checks);
	if (!cli->json) {
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(res, "tools");
		const cJSON *it;

		printf("libraries:\n");
		cJSON_ArrayForEach(it, t)
		{
			if (cJSON_IsString(it))
				printf("  %-12s %s\n", it->string,
				       it->valuestring);
		}
		printf(d.first_fail ? "\ncontextfs is NOT usable here\n"
				    : "\ncontextfs is usable\n");
	}
	if (d.first_fail)
		return cfs_error_set(d.first_fail,
				     "doctor found a problem; see the failed "
				     "checks");
	return 0;
}

const struct cli_command cli_cmd_doctor = {
	.name = "doctor",
	.args = "",
	.summary = "check the environment, store and key material",
	.help = "Reports booleans about key material, never secrets. Exits "
		"0 when contextfs is\nusable here, else with the code of the "
		"first failed required check.\n",
	.opts = opts,
	.min_args = 0,
	.max_args = 0,
	.run = run,
};
