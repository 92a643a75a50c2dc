/*
 * Shared plumbing of the contextfs command-line tool: the command table
 * entry type, option parsing (global options may appear anywhere), store
 * and key-material resolution, the optional JSON config file, --json
 * output, the mapping from CFS_E* codes to documented exit codes, the
 * progress line and the no-echo passphrase prompt.
 *
 * Commands stay thin: they parse nothing themselves, call into core/ and
 * describe their result either as a cJSON document (--json) or as a few
 * human lines on stdout. Errors travel as CFS_E* codes with the message in
 * the thread-local error record; cli_finish() turns them into one stderr
 * line (or one JSON document) and the exit code.
 *
 * Secrets never come from argv. Environment copies are moved into sodium
 * memory and wiped from environ at startup (cli_secrets_capture), so child
 * processes and /proc/self/environ never carry them.
 */
#ifndef CFS_TOOLS_CLI_H
#define CFS_TOOLS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include <cjson/cJSON.h>

#include "tools/aws_files.h"

#include "core/store.h"
#include "storage/storage.h"

struct cfs_keys;
struct cfs_manifest;

/* Documented exit codes (contextfs(1), EXIT STATUS). */
enum cli_exit {
	CLI_EXIT_OK = 0,
	CLI_EXIT_ERROR = 1,
	CLI_EXIT_USAGE = 2, /* usage error or missing key material */
	CLI_EXIT_NOTFOUND = 3, /* context, generation or object missing */
	CLI_EXIT_LOCKED = 4, /* lock held, lost CAS, generation mismatch */
	CLI_EXIT_AUTH = 5, /* wrong key, tampered ciphertext or tag */
	CLI_EXIT_UNSAFE = 6, /* unsafe or corrupt input */
	CLI_EXIT_IO = 7, /* I/O or storage error */
};

/* Upper bounds on things read from outside. */
#define CLI_SECRET_MAX 1024 /* passphrase / hex key bytes */
#define CLI_CONFIG_MAX (1u << 20) /* config file */
#define CLI_MAX_ARGS 64 /* positional args per command (run: words) */
#define CLI_MAX_OPTS 24 /* options per command */

/* A command-specific option. id indexes cli->optv / cli->optset. */
struct cli_opt {
	const char *name; /* long name without "--" */
	int short_name; /* 0 if none */
	bool has_arg;
	int id; /* 0 .. CLI_MAX_OPTS-1 */
};

struct cli;

struct cli_command {
	const char *name;
	const char *args; /* synopsis after the name: "ID [--force]" */
	const char *summary; /* one line for the command list */
	const char *help; /* option and behaviour lines for COMMAND --help */
	const struct cli_opt *opts; /* terminated by an entry with name NULL */
	int min_args;
	int max_args;
	int (*run)(struct cli *cli);
	/*
	 * Defer SIGINT/SIGTERM/SIGHUP while run() works (commands that hold
	 * the lock or plaintext temp files): the operation completes and
	 * cleans up; an operation that then succeeded exits 0, a failed one
	 * dies of the signal. A second signal acts at once. Commands that
	 * install their own handlers (a FUSE daemon) leave this false:
	 * libfuse only takes over signals whose disposition is SIG_DFL.
	 */
	bool defer_signals;
};

struct cli {
	/* Global options. */
	const char *store_dir; /* --store DIR or s3://BUCKET[/PREFIX] */
	const char *passphrase_file;
	bool json;
	bool quiet;

	/* The command, its positional args and options. */
	const struct cli_command *cmd;
	int argc;
	char *argv[CLI_MAX_ARGS];
	const char *optv[CLI_MAX_OPTS]; /* value, or "" for a set flag */
	bool optset[CLI_MAX_OPTS];

	/* Config file (NULL when none), and the env var names it selects. */
	char *config_path;
	cJSON *config;
	const char *passphrase_env;
	const char *raw_key_env;
	/* doctor only: a config error reported as a check, not fatal. */
	int config_rc;
	char *config_error;

	/* Secrets captured from the environment (sodium memory) or NULL. */
	char *env_passphrase;
	char *env_raw_key;
	/* S3 credentials, captured and wiped from environ the same way. */
	char *s3_access_key; /* CONTEXTSDK_S3_ACCESS_KEY_ID */
	char *s3_secret_key; /* CONTEXTSDK_S3_SECRET_ACCESS_KEY */
	char *aws_access_key; /* AWS_ACCESS_KEY_ID */
	char *aws_secret_key; /* AWS_SECRET_ACCESS_KEY */
	char *aws_session_token; /* AWS_SESSION_TOKEN */
	/* the AWS shared files' profile (tools/aws_files.h), loaded once */
	struct aws_profile aws_prof;
	bool aws_prof_loaded;
	char *aws_prof_desc; /* "profile P in FILE" (heap) */

	/* --json result document, built by the command. */
	cJSON *result;
	/*
	 * A successful command's exit status when not 0 (run: the wrapped
	 * command's exit code).
	 */
	int exit_status;

	/* Progress line state. */
	bool progress_enabled;
	bool progress_shown;
	const char *progress_label;
	int64_t progress_start_ms;
	int64_t progress_last_ms;
	uint64_t progress_last_done;
};

/* The command table (contextfs.c). */
extern const struct cli_command *const cli_commands[];

/* Commands (tools/cmd_<name>.c). */
extern const struct cli_command cli_cmd_init;
extern const struct cli_command cli_cmd_status;
extern const struct cli_command cli_cmd_verify;
extern const struct cli_command cli_cmd_log;
extern const struct cli_command cli_cmd_export;
extern const struct cli_command cli_cmd_commit;
extern const struct cli_command cli_cmd_checkpoint;
extern const struct cli_command cli_cmd_unlock;
extern const struct cli_command cli_cmd_restore;
extern const struct cli_command cli_cmd_gc;
extern const struct cli_command cli_cmd_list;
extern const struct cli_command cli_cmd_doctor;
extern const struct cli_command cli_cmd_run;
extern const struct cli_command cli_cmd_probe;

/*
 * Runs the whole tool: parse, config, secrets, dispatch, output. Returns
 * the process exit code.
 */
int cli_main(int argc, char **argv);

/* Maps a CFS_E* code to the documented exit code. */
int cli_exit_code(int code);

/* Option access by id. */
static inline const char *cli_opt(const struct cli *cli, int id)
{
	return cli->optset[id] ? cli->optv[id] : NULL;
}
static inline bool cli_flag(const struct cli *cli, int id)
{
	return cli->optset[id];
}

/*
 * Parses a decimal unsigned number option ("--keep 5"); CFS_EINVAL naming
 * the option when it is not a plain number within [min, max].
 */
int cli_parse_u64(uint64_t *out, const char *optname, const char *s,
		  uint64_t min, uint64_t max);

/*
 * Where the store is (contextfs(1), STORAGE): a local directory or an S3
 * bucket, resolved as the reference's storageFromEnv (REFERENCE.md
 * §12.1) plus --store s3://BUCKET[/PREFIX], the AWS_* credential,
 * region and endpoint variables and the CONTEXTFS_S3_* tunables.
 */
struct cli_store_spec {
	bool s3;
	const char *source; /* what chose it: "--store", "config", ... */
	char *directory; /* fs only (heap) */
	/* S3 only: strings point into this spec or into cli's secrets. */
	struct cfs_s3_config s3cfg;
	char *bucket, *prefix, *region, *endpoint;
	const char *credentials; /* variable the access key came from */
	bool path_style_auto; /* path style because the host is an IP */
	bool tunables_set; /* CONTEXTFS_S3_RETRIES was given */
};

/*
 * Resolves the store without opening it; clear the spec with
 * cli_store_spec_clear(). S3 errors: CFS_EKEY "<NAME> is required" for
 * half a credential pair or none, CFS_EINVAL for bad settings.
 */
int cli_store_resolve(struct cli *cli, struct cli_store_spec *spec);
void cli_store_spec_clear(struct cli_store_spec *spec);
/* Opens a resolved store. */
int cli_store_open_spec(const struct cli_store_spec *spec,
			struct cfs_store **out);

/* Opens the store for a command that only reads (or releases a lock). */
int cli_store_open(struct cli *cli, struct cfs_store **out);

/*
 * Opens the store for a command that writes. On S3 it first proves that
 * the server enforces conditional writes (cfs_store_check_conditional,
 * once per command) and refuses with CFS_EIO and the probe's message if
 * it ignores them: the lock and the manifest compare-and-swap would
 * silently break. fresh: probe on a separate connection pool, so *out
 * holds no open connection (mount forks its daemon after this).
 */
int cli_store_open_write(struct cli *cli, struct cfs_store **out, bool fresh);

/*
 * Reads the manifest of id; a missing context becomes CFS_ENOTFOUND
 * "context <id> not found in <store>". *out may be NULL (existence check).
 */
int cli_manifest_read(struct cli *cli, struct cfs_manifest **out,
		      struct cfs_store *st, const char *id);

/*
 * Takes the context's lock for one CLI write with a fresh owner
 * (*owner_out, heap) and releases it again (warning on failure).
 */
int cli_lock_take(struct cli *cli, struct cfs_store *st, const char *id,
		  char **owner_out);
void cli_lock_drop(struct cli *cli, struct cfs_store *st, const char *id,
		   char *owner);

/*
 * The locked write shared by commit, checkpoint and restore: opens the
 * store for writing, requires the context (cli_manifest_read), resolves
 * the keys, takes the lock, runs write() with co->owner and the progress
 * callback set and the progress line labelled label, then releases the
 * lock whatever write() returned. Returns write()'s result or the first
 * error before it; *cr is filled by write().
 */
struct cfs_commit_opts;
struct cfs_commit_result;
typedef int (*cli_locked_write_fn)(struct cfs_commit_result *cr,
				   struct cfs_store *st, struct cfs_keys *keys,
				   const struct cfs_commit_opts *co,
				   void *payload);
int cli_write_locked(struct cli *cli, struct cfs_commit_result *cr,
		     const char *id, const char *label,
		     struct cfs_commit_opts *co, cli_locked_write_fn write,
		     void *payload);
/*
 * Where CLI commits keep the index of the tree they wrote or exported
 * (cfs_commit_opts.index_cache_dir): <cache>/contextfs/commits (heap).
 */
char *cli_commit_cache_dir(void);

/* cli_write_locked() with cfs_context_commit() of directory dirfd. */
int cli_commit_dir_locked(struct cli *cli, struct cfs_commit_result *cr,
			  const char *id, int dirfd, const char *label,
			  struct cfs_commit_opts *co);

/*
 * Checks a --passphrase-file without keeping its contents (doctor): 0 or
 * the error reading it would give.
 */
int cli_passphrase_file_check(struct cli *cli);

/* Adds {id, generation, treeKey, sizeBytes, changedPaths} to the result. */
struct cfs_commit_result;
void cli_add_commit_result(struct cli *cli, const char *id,
			   const struct cfs_commit_result *cr);

/*
 * Opens a file holding key material (what: "passphrase file", "keyfile")
 * and fstats it into *st: a missing file is CFS_EKEY, anything but a
 * regular file or a fifo is CFS_EKEY "<what> <path> is not a regular
 * file". The caller checks the permissions it requires.
 */
struct stat;
int cli_secret_file_open(int *fd_out, struct stat *st, const char *what,
			 const char *path);

/* Opens a directory argument (O_DIRECTORY); what names it in errors. */
int cli_open_dir(int *fd_out, const char *what, const char *path);

/*
 * Resolves key material: raw hex key from the environment; passphrase from
 * --passphrase-file, else the environment, else a no-echo prompt when stdin
 * is a TTY (confirm: ask twice, for new contexts). No key at all ->
 * CFS_EKEY "<PASSPHRASE_ENV> or <RAW_KEY_ENV> is required".
 */
int cli_keys(struct cli *cli, bool confirm, struct cfs_keys **out);

/*
 * The scrypt cost for new encryptions from --scrypt-cost (optval, may be
 * NULL) or CONTEXTFS_SCRYPT_COST; 0 = library default. CFS_EINVAL when
 * not a power of two in [2, 2^20].
 */
int cli_scrypt_cost(uint64_t *out, const char *optval);

/* The result document ({"ok": true} first), created on first use. */
cJSON *cli_result(struct cli *cli);

/* Human output helper: printf to stdout unless --json or --quiet. */
void cli_print(struct cli *cli, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Warnings to stderr ("contextfs: warning: ..."), suppressed by --quiet. */
void cli_warn(struct cli *cli, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/*
 * Progress line: cli_progress_begin() names the transfer; pass
 * cli_progress_cb with payload = cli to the store/engine; cli_progress_end()
 * clears the line. All no-ops unless stderr is a TTY and neither --quiet
 * nor --json was given.
 */
void cli_progress_begin(struct cli *cli, const char *label);
void cli_progress_cb(uint64_t done, uint64_t total, void *payload);
void cli_progress_end(struct cli *cli);

/* Formats a byte count ("12.3 MiB") into out. */
void cli_format_bytes(char *out, size_t outlen, uint64_t bytes);

/* Adds obj[key] = string or null. */
void cli_json_add_str_or_null(cJSON *obj, const char *key, const char *val);

#endif
