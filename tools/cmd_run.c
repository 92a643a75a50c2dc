/*
 * contextfs run: carries a context into a disposable sandbox, runs one
 * command there and saves what it left (REFERENCE.md §12.4, the
 * reference's runWithContext): provision, attach under the lock, run
 * `cd <mount> && COMMAND`, save as the next generation, detach, dispose.
 *
 * The command's exit code becomes contextfs's and its output passes
 * through; a non-zero exit is a result, so the work is still saved. A
 * command that could not finish (timeout, dead sandbox) is an error: what
 * the sandbox holds is still saved when possible ("run failure save"),
 * then contextfs exits with the error's code.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "adapters/adapters.h"
#include "core/context.h"
#include "core/crypto.h"
#include "core/error.h"
#include "core/ids.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/manifest.h"
#include "core/session.h"
#include "core/util.h"
#include "tools/cli.h"
#include "tools/runtime_cli.h"

enum {
	OPT_CREATE = RT_OPT_COUNT,
	OPT_MESSAGE,
	OPT_AUTHOR,
	OPT_TIMEOUT,
	OPT_FORCE_UNLOCK,
	OPT_SCRYPT_COST,
	OPT_LOCK_TTL,
	OPT_CHECKPOINT_INTERVAL,
	OPT_RECOVER,
	OPT_RECOVER_ATTEMPTS,
	OPT_RECOVER_RERUN,
	OPT_FAILURE_THRESHOLD,
};

static const struct cli_opt opts[] = {
	CLI_RUNTIME_OPTS,
	{"create-if-missing", 0, false, OPT_CREATE},
	{"message", 'm', true, OPT_MESSAGE},
	{"author", 0, true, OPT_AUTHOR},
	{"timeout", 0, true, OPT_TIMEOUT},
	{"force-unlock", 0, false, OPT_FORCE_UNLOCK},
	{"scrypt-cost", 0, true, OPT_SCRYPT_COST},
	{"lock-ttl", 0, true, OPT_LOCK_TTL},
	{"checkpoint-interval", 0, true, OPT_CHECKPOINT_INTERVAL},
	{"recover", 0, false, OPT_RECOVER},
	{"recover-attempts", 0, true, OPT_RECOVER_ATTEMPTS},
	{"recover-rerun", 0, false, OPT_RECOVER_RERUN},
	{"failure-threshold", 0, true, OPT_FAILURE_THRESHOLD},
	{NULL, 0, false, 0},
};

/* ------------------------------------------------------------------ */
/* Runtime selection (tools/runtime_cli.h) */

static const char *config_default_runtime(struct cli *cli)
{
	const cJSON *v =
		cJSON_GetObjectItemCaseSensitive(cli->config, "defaultRuntime");

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static const char *ssh_config(struct cli *cli, const char *key)
{
	const cJSON *p =
		cJSON_GetObjectItemCaseSensitive(cli->config, "providers");
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(
		cJSON_GetObjectItemCaseSensitive(p, "ssh"), key);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int open_ssh(struct cli *cli, struct cfs_runtime **rt_out)
{
	struct cfs_ssh_opts so = {0};
	const char *port = cli_opt(cli, RT_OPT_SSH_PORT);
	uint64_t n = 0;
	int rc;

	so.host = cli_opt(cli, RT_OPT_SSH_HOST) ? cli_opt(cli, RT_OPT_SSH_HOST)
						: ssh_config(cli, "host");
	so.user = cli_opt(cli, RT_OPT_SSH_USER) ? cli_opt(cli, RT_OPT_SSH_USER)
						: ssh_config(cli, "user");
	so.identity_file = cli_opt(cli, RT_OPT_SSH_KEY)
				   ? cli_opt(cli, RT_OPT_SSH_KEY)
				   : ssh_config(cli, "identityFile");
	so.known_hosts_file = cli_opt(cli, RT_OPT_SSH_KNOWN_HOSTS);
	so.accept_new_host_key = cli_flag(cli, RT_OPT_SSH_ACCEPT_NEW);
	so.remote_dir = cli_opt(cli, RT_OPT_SSH_DIR);
	if (!so.host)
		return cfs_error_set(
			CFS_EINVAL, "--ssh-host is required for --runtime ssh");
	if (port) {
		rc = cli_parse_u64(&n, "--ssh-port", port, 1, 65535);
		if (rc)
			return rc;
		so.port = (int)n;
	}
	return cfs_ssh_runtime_new(rt_out, &so);
}

static int local_provisioner(struct cfs_provisioner **prov, const char *sandbox)
{
	struct cfs_local_opts lo = {0};

	if (!sandbox || strcmp(sandbox, "auto") == 0)
		lo.mode = CFS_LOCAL_AUTO;
	else if (strcmp(sandbox, "bwrap") == 0)
		lo.mode = CFS_LOCAL_BWRAP;
	else if (strcmp(sandbox, "plain") == 0)
		lo.mode = CFS_LOCAL_PLAIN;
	else
		return cfs_error_set(CFS_EINVAL,
				     "--sandbox must be auto, bwrap or plain");
	return cfs_local_provisioner_new(prov, &lo);
}

int cli_runtime_open(struct cli *cli, const char *context_id,
		     struct cfs_provisioner **prov_out,
		     struct cfs_runtime **rt_out)
{
	struct cfs_provisioner *prov = NULL;
	const char *name = cli_opt(cli, RT_OPT_RUNTIME);
	const char *sandbox = cli_opt(cli, RT_OPT_SANDBOX);
	int rc;

	*prov_out = NULL;
	*rt_out = NULL;
	if (!name)
		name = config_default_runtime(cli);
	if (!name)
		return cfs_error_set(CFS_EINVAL,
				     "--runtime is required unless "
				     "defaultRuntime is set in the config "
				     "file");
	if (strcmp(name, "ssh") == 0)
		return open_ssh(cli, rt_out);
	if (strcmp(name, "e2b") == 0) {
		/* the provisioner borrows its options: static storage */
		static struct cfs_e2b_opts eo;

		eo.template_id = cli_opt(cli, RT_OPT_E2B_TEMPLATE);
		rc = cfs_e2b_provisioner_new(&prov, &eo);
	} else if (strcmp(name, "vercel") == 0) {
		static struct cfs_vercel_opts vo;

		vo.runtime = cli_opt(cli, RT_OPT_VERCEL_RUNTIME);
		rc = cfs_vercel_provisioner_new(&prov, &vo);
	} else if (strcmp(name, "local") != 0) {
		return cfs_error_set(CFS_EINVAL,
				     "unsupported runtime: %s (available: "
				     "local, ssh, e2b, vercel)",
				     name);
	} else {
		rc = local_provisioner(&prov, sandbox);
	}
	if (rc)
		return rc;
	rc = prov->create(rt_out, prov, context_id);
	if (rc) {
		if (prov->free)
			prov->free(prov);
		return rc;
	}
	*prov_out = prov;
	return 0;
}

void cli_runtime_close(struct cfs_provisioner *prov, struct cfs_runtime *rt)
{
	if (prov) {
		prov->destroy(prov, rt);
		if (prov->free)
			prov->free(prov);
	} else {
		cfs_runtime_free(rt);
	}
}

void cli_runtime_describe(cJSON *obj, const struct cfs_runtime *rt)
{
	cJSON *caps = cJSON_CreateObject();

	cJSON_AddStringToObject(obj, "runtimeId", rt->id);
	cJSON_AddStringToObject(obj, "provider", rt->provider);
	if (!caps)
		return;
	cJSON_AddBoolToObject(caps, "loopExt4", rt->caps.loop_ext4);
	cJSON_AddBoolToObject(caps, "directoryBundle",
			      rt->caps.directory_bundle);
	cJSON_AddBoolToObject(caps, "providerVolume", rt->caps.provider_volume);
	cJSON_AddBoolToObject(caps, "providerSnapshot",
			      rt->caps.provider_snapshot);
	cJSON_AddItemToObject(obj, "capabilities", caps);
}

/* ------------------------------------------------------------------ */

/* `^(\d+)(ms|s|m|h|d)?$` (no unit = ms), as the reference's durations. */
static int parse_duration_ms(int64_t *out, const char *opt, const char *s)
{
	static const struct {
		const char *unit;
		int64_t ms;
	} units[] = {{"", 1},	   {"ms", 1},	   {"s", 1000},
		     {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
	uint64_t v = 0;
	const char *p = s;

	if (!*p)
		goto bad;
	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > (uint64_t)INT64_MAX / 86400000)
			goto bad;
	}
	if (p == s)
		goto bad;
	for (size_t i = 0; i < CFS_ARRAY_SIZE(units); i++) {
		if (strcmp(p, units[i].unit) == 0) {
			*out = (int64_t)v * units[i].ms;
			return 0;
		}
	}
bad:
	return cfs_error_set(CFS_EINVAL, "invalid duration for %s: %s", opt, s);
}

/* The words after the id, each single-quoted, joined with spaces. */
static int build_command(char **out, struct cli *cli)
{
	struct cfs_buf b = CFS_BUF_INIT;
	int rc = 0;

	for (int i = 1; i < cli->argc && !rc; i++) {
		if (i > 1)
			rc = cfs_buf_puts(&b, " ");
		if (!rc)
			rc = cfs_shell_quote(&b, cli->argv[i]);
	}
	if (!rc && !b.ptr)
		rc = cfs_buf_puts(&b, "");
	if (rc) {
		cfs_buf_free(&b);
		return rc;
	}
	*out = cfs_buf_detach(&b);
	return 0;
}

static int ensure_context(struct cli *cli, struct cfs_store *st, const char *id,
			  struct cfs_keys **keys)
{
	struct cfs_create_opts co = {0};
	uint64_t cost = 0;
	int rc = cli_manifest_read(cli, NULL, st, id);

	if (rc != CFS_ENOTFOUND || !cli_flag(cli, OPT_CREATE))
		return rc ? rc : cli_keys(cli, false, keys);
	cfs_error_clear();
	rc = cli_scrypt_cost(&cost, cli_opt(cli, OPT_SCRYPT_COST));
	if (rc)
		return rc;
	rc = cli_keys(cli, true, keys);
	if (rc)
		return rc;
	co.scrypt.cost = cost;
	rc = cfs_context_create(NULL, st, *keys, id, &co);
	/* Another writer created it first: use theirs. */
	if (rc == CFS_EEXISTS) {
		cfs_error_clear();
		rc = 0;
	}
	return rc;
}

volatile sig_atomic_t cli_stop_cancel;

void cli_test_pause(const char *env_name)
{
	const char *p = getenv(env_name);
	struct timespec tick = {0, 50000000};
	int fd;

	if (!p || !*p)
		return;
	fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0)
		return;
	close(fd);
	for (int i = 0; i < 1200 && access(p, F_OK) == 0; i++)
		nanosleep(&tick, NULL);
}
volatile sig_atomic_t cli_stop_signal;

static void on_signal(int sig)
{
	if (!cli_stop_signal)
		cli_stop_signal = sig;
	cli_stop_cancel = 1;
}

void cli_stop_signals_install(struct sigaction old[2])
{
	struct sigaction sa;

	cli_stop_cancel = cli_stop_signal = 0;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old[0]);
	sigaction(SIGTERM, &sa, &old[1]);
}

void cli_stop_signals_restore(const struct sigaction old[2])
{
	sigaction(SIGINT, &old[0], NULL);
	sigaction(SIGTERM, &old[1], NULL);
}

static void write_bytes(FILE *f, const char *p, size_t n)
{
	if (n)
		fwrite(p, 1, n, f);
	fflush(f);
}

/* ------------------------------------------------------------------ */
/* Session events and crash recovery (REFERENCE.md §9.3-§9.4) */

struct events {
	struct cli *cli;
	pthread_mutex_t mu;
	cJSON *list; /* --json: every event */
};

static void on_event(const struct cfs_session_event *ev, void *payload)
{
	struct events *e = payload;
	const char *name = cfs_session_event_name(ev->type);

	pthread_mutex_lock(&e->mu);
	if (e->list) {
		cJSON *o = cJSON_CreateObject();

		if (o) {
			cJSON_AddStringToObject(o, "type", name);
			cJSON_AddStringToObject(o, "contextId", ev->context_id);
			if (ev->attempt)
				cJSON_AddNumberToObject(o, "attempt",
							ev->attempt);
			if (ev->consecutive_failures)
				cJSON_AddNumberToObject(
					o, "consecutiveFailures",
					ev->consecutive_failures);
			if (ev->type == CFS_SESSION_RECOVERY_SUCCESS) {
				cJSON_AddNumberToObject(
					o, "recoveredToGeneration",
					(double)ev->recovered_to_generation);
				cJSON_AddNumberToObject(
					o, "recoveredToCheckpointGeneration",
					(double)ev
						->recovered_to_checkpoint_generation);
			}
			if (ev->error)
				cJSON_AddStringToObject(o, "error", ev->error);
			cJSON_AddItemToArray(e->list, o);
		}
	}
	if (!e->cli->quiet) {
		fprintf(stderr, "contextfs: session %s: %s", ev->context_id,
			name);
		if (ev->attempt)
			fprintf(stderr, " (attempt %u)", ev->attempt);
		if (ev->consecutive_failures)
			fprintf(stderr, " (%d consecutive failures)",
				ev->consecutive_failures);
		if (ev->type == CFS_SESSION_RECOVERY_SUCCESS)
			fprintf(stderr,
				": restored generation %llu, checkpoint %llu",
				(unsigned long long)ev->recovered_to_generation,
				(unsigned long long)
					ev->recovered_to_checkpoint_generation);
		if (ev->error)
			fprintf(stderr, ": %s", ev->error);
		fputc('\n', stderr);
	}
	pthread_mutex_unlock(&e->mu);
}

static void emit(struct events *e, enum cfs_session_event_type type,
		 const char *id, unsigned attempt, const char *error,
		 uint64_t gen, uint64_t ckpt)
{
	struct cfs_session_event ev = {type, id, attempt, 0, gen, ckpt, error};

	on_event(&ev, e);
}

/* Whether the sandbox still runs commands (`:` within 10 s). */
static bool runtime_alive(struct cfs_runtime *rt)
{
	struct cfs_run_result r = {0};
	int rc = cfs_runtime_run(&r, rt, ":", NULL, 10000);
	bool ok = rc == 0 && r.exit_code == 0;

	cfs_run_result_clear(&r);
	cfs_error_clear();
	return ok;
}

struct recovery {
	struct cli *cli;
	struct events *ev;
	struct cfs_store *st;
	struct cfs_keys *keys;
	struct cfs_provisioner *prov;
	const char *id;
	struct cfs_session_opts *so;
	int64_t ckpt_ms;
	unsigned max_attempts, used; /* per run, never reset */
};

/*
 * The command failed (not a non-zero exit: an error). If the sandbox is
 * dead, re-provision through the provisioner and attach again under the
 * SAME lock owner (the live lock is adopted): the tree is whatever the
 * latest manifest names, the last save or checkpoint; work after it died
 * with the sandbox. Returns true with *sess and *rt replaced on success;
 * false leaves *sess NULL when the old session was given up.
 */
static bool recover(struct recovery *x, struct cfs_session **sess,
		    struct cfs_runtime **rt, const char *cause)
{
	char *owner;

	if (runtime_alive(*rt))
		return false; /* a live sandbox: a plain error, no recovery */
	owner = cfs_strdup(cfs_session_owner(*sess));
	if (!owner)
		return false;
	cfs_session_abandon(*sess); /* keeps the lock and the sandbox */
	*sess = NULL;
	/* the lock must not lapse while a new sandbox starts */
	(void)cfs_lock_renew(NULL, x->st, x->id, owner, x->so->lock_ttl_ms);
	cfs_error_clear();
	while (x->used < x->max_attempts) {
		unsigned attempt = ++x->used;
		struct cfs_manifest *m = NULL;
		int rc;

		emit(x->ev, CFS_SESSION_RECOVERY_START, x->id, attempt, NULL, 0,
		     0);
		if (*rt)
			x->prov->destroy(x->prov, *rt);
		*rt = NULL;
		rc = x->prov->create(rt, x->prov, x->id);
		if (!rc) {
			(*rt)->cancel = &cli_stop_cancel;
			x->so->owner = owner;
			rc = cfs_session_attach(sess, x->st, x->keys, x->id,
						*rt, x->so);
			x->so->owner = NULL;
		}
		if (!rc)
			rc = cfs_session_start_checkpoints(*sess, x->ckpt_ms);
		if (!rc)
			rc = cfs_context_read_manifest(&m, NULL, x->st, x->id);
		if (rc) {
			emit(x->ev, CFS_SESSION_RECOVERY_FAILURE, x->id,
			     attempt, cfs_error_last(), 0, 0);
			if (*sess) {
				cfs_session_abandon(*sess);
				*sess = NULL;
			}
			continue;
		}
		emit(x->ev, CFS_SESSION_RECOVERY_SUCCESS, x->id, attempt, NULL,
		     cfs_manifest_generation(m),
		     cfs_manifest_checkpoint_generation(m));
		if (!x->cli->quiet)
			fprintf(stderr,
				"contextfs: the sandbox died; a new one holds "
				"what %s last saved or checkpointed "
				"(generation %llu, checkpoint %llu); work done "
				"after that in the dead sandbox is lost\n",
				x->id,
				(unsigned long long)cfs_manifest_generation(m),
				(unsigned long long)
					cfs_manifest_checkpoint_generation(m));
		cfs_manifest_free(m);
		free(owner);
		return true;
	}
	emit(x->ev, CFS_SESSION_RECOVERY_ABORTED, x->id, x->used, cause, 0, 0);
	free(owner);
	return false;
}

/*
 * The runtime opens (an ssh connection, a cloud sandbox provisioned) on a
 * thread while the current tree is fetched: the session uses that fetch
 * when the tree is still current once it holds the lock.
 */
struct opener {
	struct cli *cli;
	const char *id;
	struct cfs_provisioner *prov;
	struct cfs_runtime *rt;
	int rc, code;
	char *msg;
};

static void *opener_main(void *arg)
{
	struct opener *o = arg;

	/* tests/integration/test_run.py: a commit lands in this window */
	cli_test_pause("CONTEXTFS_TEST_RUN_PAUSE_FILE");
	o->rc = cli_runtime_open(o->cli, o->id, &o->prov, &o->rt);
	if (o->rc) {
		o->code = cfs_error_last_code();
		o->msg = cfs_strdup(cfs_error_last());
	}
	return NULL;
}

struct prefetch {
	char *dir; /* private (0700); NULL: nothing fetched */
	char *path;
	struct cfs_ref_info info;
};

static void prefetch_drop(struct prefetch *pf)
{
	if (pf->dir)
		cfs_rmtree_at(AT_FDCWD, pf->dir);
	free(pf->dir);
	free(pf->path);
	memset(pf, 0, sizeof(*pf));
}

/* Best effort: any failure leaves the session to fetch as usual. */
static void prefetch_run(struct prefetch *pf, struct cfs_store *st,
			 struct cfs_keys *keys, const char *id)
{
	int64_t t0 = cfs_monotonic_ms();
	int fd;

	memset(pf, 0, sizeof(*pf));
	if (cfs_mkdtemp(&pf->dir, NULL, "contextfs-prefetch-") != 0)
		goto fail;
	pf->path = cfs_asprintf("%s/tree.tar.zst", pf->dir);
	if (!pf->path)
		goto fail;
	fd = open(pf->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		goto fail;
	if (cfs_context_fetch_bundle(&pf->info, st, keys, id, fd, NULL, NULL) !=
	    0) {
		close(fd);
		goto fail;
	}
	if (close(fd) == 0) {
		cfs_log_timing(id, "fetch, while the runtime opens", &t0);
		return;
	}
fail:
	cfs_error_clear();
	prefetch_drop(pf);
}

static int run(struct cli *cli)
{
	const char *id = cli->argv[0];
	struct cfs_session_opts so = {0};
	struct cfs_session_save_opts sv = {0};
	struct cfs_commit_result cr = {0};
	struct cfs_run_result res = {0};
	struct cfs_store *st = NULL;
	struct cfs_keys *keys = NULL;
	struct cfs_provisioner *prov = NULL;
	struct cfs_runtime *rt = NULL;
	struct cfs_session *sess = NULL;
	char *command = NULL;
	int64_t timeout = 0, ttl = 0, ckpt = 0;
	bool ran = false;
	int rc, run_rc = 0;
	cJSON *doc, *r;
	struct sigaction old_sa[2];
	struct events events = {cli, PTHREAD_MUTEX_INITIALIZER, NULL};
	struct recovery rx = {0};
	struct prefetch pf = {0};

	/* SIGINT / SIGTERM: stop the command, save what the sandbox holds
	 * ("contextfs run SIGTERM save"), release the lock, exit 130 / 143 */
	cli_stop_signals_install(old_sa);
	if (cli->json)
		events.list = cJSON_CreateArray();
	rx.cli = cli;
	rx.ev = &events;
	rx.id = id;
	rx.max_attempts = 1;
	if (cli_opt(cli, OPT_RECOVER_ATTEMPTS)) {
		char *end;
		long n = strtol(cli_opt(cli, OPT_RECOVER_ATTEMPTS), &end, 10);

		if (*end || n < 1 || n > 100) {
			rc = cfs_error_set(CFS_EINVAL,
					   "--recover-attempts takes a number "
					   "from 1 to 100");
			goto out;
		}
		rx.max_attempts = (unsigned)n;
	}
	if (cli_opt(cli, OPT_FAILURE_THRESHOLD)) {
		char *end;
		long n = strtol(cli_opt(cli, OPT_FAILURE_THRESHOLD), &end, 10);

		if (*end || n < 1 || n > 1000) {
			rc = cfs_error_set(CFS_EINVAL,
					   "--failure-threshold takes a number "
					   "from 1 to 1000");
			goto out;
		}
		so.failure_threshold = (int)n;
	}

	rc = cfs_id_check(id);
	if (rc)
		goto out;
	if (cli_opt(cli, OPT_TIMEOUT)) {
		rc = parse_duration_ms(&timeout, "--timeout",
				       cli_opt(cli, OPT_TIMEOUT));
		if (rc)
			goto out;
	}
	if (cli_opt(cli, OPT_LOCK_TTL)) {
		rc = parse_duration_ms(&ttl, "--lock-ttl",
				       cli_opt(cli, OPT_LOCK_TTL));
		if (rc)
			goto out;
	}
	if (cli_opt(cli, OPT_CHECKPOINT_INTERVAL)) {
		rc = parse_duration_ms(&ckpt, "--checkpoint-interval",
				       cli_opt(cli, OPT_CHECKPOINT_INTERVAL));
		if (rc)
			goto out;
	}
	rc = build_command(&command, cli);
	if (rc)
		goto out;
	rc = cli_store_open_write(cli, &st, false);
	if (rc)
		goto out;
	rc = ensure_context(cli, st, id, &keys);
	if (rc)
		goto out;
	{
		struct opener o = {cli, id, NULL, NULL, 0, 0, NULL};
		pthread_t th;
		int e = pthread_create(&th, NULL, opener_main, &o);

		if (e) {
			opener_main(&o);
		} else {
			prefetch_run(&pf, st, keys, id);
			pthread_join(th, NULL);
		}
		prov = o.prov;
		rt = o.rt;
		rc = o.rc;
		if (rc)
			cfs_error_set(o.code ? o.code : rc, "%s",
				      o.msg ? o.msg
					    : "cannot open the runtime");
		free(o.msg);
		if (rc)
			goto out;
	}
	so.prefetched_bundle = pf.path;
	so.prefetched_key = pf.info.tree_key;

	rt->cancel = &cli_stop_cancel;
	so.force_unlock = cli_flag(cli, OPT_FORCE_UNLOCK);
	so.lock_ttl_ms = ttl;
	so.on_event = on_event;
	so.event_payload = &events;
	so.emergency_checkpoint = cli_flag(cli, OPT_RECOVER);
	rc = cfs_session_attach(&sess, st, keys, id, rt, &so);
	/* a re-attach after a sandbox died fetches what is current then */
	so.prefetched_bundle = so.prefetched_key = NULL;
	prefetch_drop(&pf);
	if (rc)
		goto out;

	rc = cfs_session_start_checkpoints(sess, ckpt);
	if (rc)
		goto out;
	rx.st = st;
	rx.keys = keys;
	rx.prov = prov;
	rx.so = &so;
	rx.ckpt_ms = ckpt;
	for (;;) {
		if (*command) {
			run_rc = cfs_session_run(&res, sess, command, timeout);
			ran = run_rc == 0;
		} else {
			ran = true;
		}
		if (!run_rc || cli_stop_signal || !cli_flag(cli, OPT_RECOVER))
			break;
		{
			char *cause = cfs_strdup(cfs_error_last());
			bool back;

			back = prov && recover(&rx, &sess, &rt, cause);
			if (!back && !sess) {
				/* given up: no session left to save from */
				cfs_error_set(run_rc, "%s",
					      cause ? cause : "sandbox died");
				free(cause);
				rc = run_rc;
				goto out;
			}
			if (!back || !cli_flag(cli, OPT_RECOVER_RERUN)) {
				cfs_error_set(run_rc, "%s",
					      cause ? cause : "sandbox died");
				free(cause);
				break;
			}
			free(cause);
			cfs_run_result_clear(&res);
			run_rc = 0;
		}
	}

	sv.kind = CFS_COMMIT_SAVE;
	sv.author = cli_opt(cli, OPT_AUTHOR);
	cfs_session_stop_checkpoints(sess);
	rt->cancel = NULL; /* the save below must run to completion */
	if (cli_stop_signal) {
		char msg[64];
		int sig = cli_stop_signal;

		snprintf(msg, sizeof(msg), "contextfs run %s save",
			 sig == SIGINT ? "SIGINT" : "SIGTERM");
		sv.message = msg;
		rc = cfs_session_save(&cr, sess, &sv);
		if (rc)
			cli_warn(cli, "interrupted; saving failed: %s",
				 cfs_error_last());
		else if (!cli->quiet)
			fprintf(stderr,
				"contextfs: interrupted by %s; saved "
				"generation %llu\n",
				sig == SIGINT ? "SIGINT" : "SIGTERM",
				(unsigned long long)cr.generation);
		cfs_session_detach(sess);
		sess = NULL;
		ran = false;
		rc = 0;
		cli->exit_status = 128 + sig;
		goto out;
	}
	if (run_rc) {
		/* Keep the error; save what the sandbox holds, if it can. */
		int code = run_rc;
		char *msg = cfs_strdup(cfs_error_last());

		sv.message = "contextfs run failure save";
		if (cfs_session_save(NULL, sess, &sv) != 0)
			cli_warn(cli, "could not save after the failure: %s",
				 cfs_error_last());
		cfs_error_set(code, "%s", msg ? msg : "command failed");
		free(msg);
		rc = run_rc;
	} else {
		sv.message = cli_opt(cli, OPT_MESSAGE)
				     ? cli_opt(cli, OPT_MESSAGE)
				     : "contextfs run";
		rc = cfs_session_save(&cr, sess, &sv);
	}
	{
		int keep = cfs_error_last_code();
		char *msg = rc ? cfs_strdup(cfs_error_last()) : NULL;
		int drc = cfs_session_detach(sess);

		sess = NULL;
		if (drc)
			cli_warn(cli, "releasing the lock: %s",
				 cfs_error_last());
		if (rc)
			cfs_error_set(keep ? keep : rc, "%s", msg ? msg : "");
		free(msg);
	}

out:
	prefetch_drop(&pf);
	if (ran) {
		if (cli->json) {
			doc = cli_result(cli);
			r = cJSON_CreateObject();
			if (doc && r) {
				cJSON_AddNumberToObject(r, "exitCode",
							res.exit_code);
				cJSON_AddStringToObject(r, "stdout",
							res.out ? res.out : "");
				cJSON_AddStringToObject(r, "stderr",
							res.err ? res.err : "");
				cJSON_AddItemToObject(doc, "result", r);
				r = NULL;
				if (res.exit_code != 0)
					cJSON_ReplaceItemInObjectCaseSensitive(
						doc, "ok", cJSON_CreateFalse());
				if (!rc)
					cJSON_AddNumberToObject(
						doc, "generation",
						(double)cr.generation);
			}
			cJSON_Delete(r);
		} else {
			write_bytes(stdout, res.out, res.out_len);
			write_bytes(stderr, res.err, res.err_len);
		}
		if (!rc)
			cli->exit_status = res.exit_code;
	}
	if (events.list && cli->json) {
		doc = cli_result(cli);
		if (doc) {
			cJSON_AddItemToObject(doc, "events", events.list);
			events.list = NULL;
		}
	}
	cli_stop_signals_restore(old_sa);
	if (sess) {
		int keep = cfs_error_last_code();
		char *msg = cfs_strdup(cfs_error_last());

		cfs_session_detach(sess);
		if (msg)
			cfs_error_set(keep, "%s", msg);
		free(msg);
	}
	cli_runtime_close(prov, rt);
	cJSON_Delete(events.list);
	cfs_commit_result_clear(&cr);
	cfs_run_result_clear(&res);
	free(command);
	cfs_keys_free(keys);
	cfs_store_free(st);
	return rc;
}

const struct cli_command cli_cmd_run = {
	.name = "run",
	.args = "ID --runtime local|ssh|e2b|vercel [options] -- COMMAND "
		"[ARG...]",
	.summary = "run a command in a sandbox holding the context, save the "
		   "result",
	.help = CLI_RUNTIME_HELP
	"  --create-if-missing      create the context first when it "
	"does not exist\n"
	"  -m, --message MSG        version message (default "
	"\"contextfs run\")\n"
	"  --author A               version author (default: the lock "
	"owner)\n"
	"  --timeout D              kill the command after D (500ms, "
	"30s, 5m, 1h; default none)\n"
	"  --checkpoint-interval D  checkpoint the sandbox's tree every "
	"D while the command runs\n"
	"  --lock-ttl D             lock lifetime, renewed while the "
	"command runs (default 30m)\n"
	"  --force-unlock           take the lock over from a dead "
	"writer\n"
	"  --recover                if the sandbox dies, start a new "
	"one from the last save or\n"
	"                           checkpoint under the same lock "
	"(work after it is lost);\n"
	"                           also one emergency checkpoint when "
	"heartbeats keep failing\n"
	"  --recover-attempts N     sandboxes to try (default 1)\n"
	"  --recover-rerun          run COMMAND again in the recovered "
	"sandbox\n"
	"  --failure-threshold N    failed heartbeats before the session "
	"is degraded (default 3)\n"
	"\nThe context is extracted at /mnt/contextsdk/ID in the "
	"sandbox (also reachable as\n/workspace, /memory, ... under "
	"bubblewrap); COMMAND runs there through bash.\nIts stdout "
	"and stderr pass through and its exit code becomes "
	"contextfs's; the\nsandbox's tree is saved as the next "
	"generation either way. With --json:\n{ok, result: {exitCode, "
	"stdout, stderr}, generation, events}. A timeout or a dead\n"
	"sandbox is an error (exit 7) after a best-effort save. Session "
	"events\n(heartbeat-failure, degraded, emergency-checkpoint, "
	"recovery-*) go to stderr.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = CLI_MAX_ARGS,
	.run = run,
	/* run handles SIGINT / SIGTERM itself (save, then exit 130 / 143) */
	.defer_signals = false,
};
