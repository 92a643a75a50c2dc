/*
 * Lifecycle of a mount: options, the staging area, the lock, export,
 * daemonizing with a readiness pipe, the FUSE session, and the final
 * commit and lock release on unmount, SIGTERM or SIGINT. Also the client
 * helpers that find a live mount and unmount it.
 *
 * Staging layout (all 0700): <cache>/contextfs/mounts/<id>/
 *   tree/          the served tree (kept when changes could not be
 *                  committed; reused by the next mount when its base is
 *                  still the current generation, else moved to
 *                  recovered-<ms>/; see also `contextfs recover`)
 *   snap/          the snapshot of a commit in flight
 *   state.json     base generation, owner, clean flag
 *   control.sock   control socket
 * Read-only mounts use <id>/ro-<pid>/ and remove it on unmount.
 */
#include "fuse/fuse_i.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/context.h"
#include "core/error.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/manifest.h"
#include "core/util.h"
#include "fuse/initshim.h"

extern char **environ;

/* ---- options ------------------------------------------------------------ */

void cfs_mount_opts_init(struct cfs_mount_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->attr_timeout = CFS_MOUNT_ATTR_TIMEOUT;
}

void cfs_mount_opts_clear(struct cfs_mount_opts *o)
{
	free(o->cache_dir);
	free(o->log_file);
	free(o->author);
	o->cache_dir = o->log_file = o->author = NULL;
}

static int parse_num(uint64_t *out, const char *opt, const char *v,
		     uint64_t max)
{
	char *end;
	errno = 0;
	unsigned long long x = strtoull(v, &end, 10);
	if (!*v || *end || errno || x > max || v[0] == '-')
		return cfs_error_set(CFS_EINVAL,
				     "mount option %s needs a number up to "
				     "%llu, got '%s'",
				     opt, (unsigned long long)max, v);
	*out = x;
	return 0;
}

static int set_str(char **dst, const char *v, const char *opt)
{
	if (!*v)
		return cfs_error_set(CFS_EINVAL,
				     "mount option %s needs a value", opt);
	char *d = strdup(v);
	if (!d)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	free(*dst);
	*dst = d;
	return 0;
}

int cfs_mount_opts_parse(struct cfs_mount_opts *o, const char *optstr)
{
	char *copy = strdup(optstr), *save = NULL, *tok;
	int rc = 0;

	if (!copy)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	for (tok = strtok_r(copy, ",", &save); tok && rc == 0;
	     tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		const char *v = eq ? eq + 1 : NULL;
		uint64_t n = 0;
		if (eq)
			*eq = '\0';
		if (!v && strcmp(tok, "ro") == 0) {
			o->read_only = true;
		} else if (!v && strcmp(tok, "rw") == 0) {
			o->read_only = false;
		} else if (!v && strcmp(tok, "allow_other") == 0) {
			o->allow_other = true;
		} else if (!v && strcmp(tok, "debug") == 0) {
			o->debug = true;
		} else if (!v && strcmp(tok, "writeback_cache") == 0) {
			o->writeback_cache = true;
		} else if (!v && strcmp(tok, "no_writeback_cache") == 0) {
			o->writeback_cache = false;
		} else if (!v && strcmp(tok, "default_permissions") == 0) {
			o->default_permissions = true;
		} else if (!v && (strcmp(tok, "dev") == 0 ||
				  strcmp(tok, "suid") == 0 ||
				  strcmp(tok, "exec") == 0 ||
				  strcmp(tok, "auto") == 0 ||
				  strcmp(tok, "noauto") == 0 ||
				  strcmp(tok, "user") == 0 ||
				  strcmp(tok, "nouser") == 0 ||
				  strcmp(tok, "_netdev") == 0)) {
			/* always on, or fstab noise */
		} else if (v && strcmp(tok, "cache") == 0) {
			rc = set_str(&o->cache_dir, v, tok);
		} else if (v && strcmp(tok, "log_file") == 0) {
			rc = set_str(&o->log_file, v, tok);
		} else if (v && strcmp(tok, "author") == 0) {
			rc = set_str(&o->author, v, tok);
		} else if (v && strcmp(tok, "fsync") == 0) {
			if (strcmp(v, "local") == 0)
				o->fsync_local = true;
			else if (strcmp(v, "commit") == 0)
				o->fsync_local = false;
			else
				rc = cfs_error_set(CFS_EINVAL,
						   "mount option fsync must be "
						   "'commit' or 'local', got "
						   "'%s'",
						   v);
		} else if (v && strcmp(tok, "lock_ttl") == 0) {
			rc = parse_num(&n, tok, v, 86400 * 7);
			if (rc == 0 && n < 1)
				rc = cfs_error_set(
					CFS_EINVAL,
					"lock_ttl must be at least 1 "
					"second");
			o->lock_ttl_ms = (int64_t)n * 1000;
		} else if (v && strcmp(tok, "attr_timeout") == 0) {
			rc = parse_num(&n, tok, v, CFS_MOUNT_ATTR_TIMEOUT);
			o->attr_timeout = (double)n;
		} else if (v && strcmp(tok, "commit_interval") == 0) {
			rc = parse_num(&n, tok, v, 86400 * 7);
			o->commit_interval_s = (unsigned)n;
		} else if (v && strcmp(tok, "checkpoint_interval") == 0) {
			rc = parse_num(&n, tok, v, 86400 * 7);
			o->checkpoint_interval_s = (unsigned)n;
		} else {
			rc = cfs_error_set(
				CFS_EINVAL,
				"unknown mount option: %s (known: ro, "
				"rw, cache=DIR, fsync=commit|local, "
				"lock_ttl=S, attr_timeout=S, "
				"commit_interval=S, "
				"checkpoint_interval=S, author=A, "
				"log_file=F, allow_other, "
				"[no_]writeback_cache, debug)",
				tok);
		}
	}
	free(copy);
	return rc;
}

/* ---- finding mounts ----------------------------------------------------- */

/* Decodes mountinfo's octal escapes (\040) in place. */
static void unescape(char *s)
{
	char *w = s;
	for (char *r = s; *r;) {
		if (r[0] == '\\' && r[1] >= '0' && r[1] <= '7' && r[2] &&
		    r[3]) {
			*w++ = (char)(((r[1] - '0') << 6) |
				      ((r[2] - '0') << 3) | (r[3] - '0'));
			r += 4;
		} else {
			*w++ = *r++;
		}
	}
	*w = '\0';
}

int cfs_mountinfo_each(cfs_mountinfo_fn fn, void *arg)
{
	char *line = NULL;
	size_t cap = 0;
	bool stop = false;
	FILE *f;

	f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return cfs_error_errno(errno, "read /proc/self/mountinfo");
	while (!stop && getline(&line, &cap, f) > 0) {
		char *save = NULL, *mp = NULL, *fstype = NULL, *src = NULL;
		char *tok;
		int i = 0, after = 0;
		bool dash = false;
		for (tok = strtok_r(line, " \n", &save); tok;
		     tok = strtok_r(NULL, " \n", &save), i++) {
			if (i == 4)
				mp = tok;
			if (dash) {
				if (after++ == 0) {
					fstype = tok;
				} else {
					src = tok;
					break;
				}
			} else if (i > 5 && strcmp(tok, "-") == 0) {
				dash = true;
			}
		}
		if (!mp || !fstype)
			continue;
		unescape(mp);
		if (src)
			unescape(src);
		stop = fn(mp, fstype, src ? src : "", arg);
	}
	free(line);
	fclose(f);
	return 0;
}

struct find_mp {
	const char *path;
	char *id; /* from the source "contextfs:<id>" */
	bool found;
};

static bool find_mp_cb(const char *mp, const char *fstype, const char *src,
		       void *arg)
{
	struct find_mp *fm = arg;
	if (strcmp(fstype, "fuse.contextfs") != 0 || strcmp(mp, fm->path) != 0)
		return false;
	/* The last entry wins (a mount stacked over an older one). */
	fm->found = true;
	free(fm->id);
	fm->id = strncmp(src, "contextfs:", 10) == 0 ? strdup(src + 10) : NULL;
	return false;
}

bool cfs_mount_is_mountpoint(const char *path)
{
	char real[PATH_MAX];
	struct find_mp fm = {real, NULL, false};

	if (!realpath(path, real))
		return false;
	(void)cfs_mountinfo_each(find_mp_cb, &fm);
	free(fm.id);
	return fm.found;
}

/*
 * Like realpath(), without entering the last component (which may be a
 * FUSE mount whose daemon is gone: every stat of it fails ENOTCONN).
 */
static int resolve_no_follow_last(char out[PATH_MAX], const char *path)
{
	char buf[PATH_MAX], dir[PATH_MAX];
	size_t n = strlen(path);
	const char *base;

	if (n == 0 || n >= sizeof(buf))
		return cfs_error_set(CFS_EINVAL, "bad path '%s'", path);
	memcpy(buf, path, n + 1);
	while (n > 1 && buf[n - 1] == '/')
		buf[--n] = '\0';
	char *slash = strrchr(buf, '/');
	if (!slash) {
		base = buf;
		if (!realpath(".", dir))
			return cfs_error_errno(errno, "resolve .");
	} else {
		base = slash + 1;
		*slash = '\0';
		if (!realpath(buf[0] ? buf : "/", dir))
			return cfs_error_errno(errno, "resolve %s", path);
	}
	if (strcmp(base, ".") == 0 || strcmp(base, "..") == 0 || !*base) {
		if (!realpath(path, out))
			return cfs_error_errno(errno, "resolve %s", path);
		return 0;
	}
	if (snprintf(out, PATH_MAX, "%s/%s", strcmp(dir, "/") ? dir : "",
		     base) >= PATH_MAX)
		return cfs_error_set(CFS_EINVAL, "path too long: %s", path);
	return 0;
}

bool cfs_mount_is_stale(const char *path, char **id_out)
{
	char real[PATH_MAX];
	struct stat sb;
	struct find_mp fm = {real, NULL, false};

	if (id_out)
		*id_out = NULL;
	if (stat(path, &sb) == 0 ||
	    (errno != ENOTCONN && errno != ECONNABORTED))
		return false;
	if (resolve_no_follow_last(real, path) != 0)
		return false;
	(void)cfs_mountinfo_each(find_mp_cb, &fm);
	if (fm.found && id_out)
		*id_out = fm.id;
	else
		free(fm.id);
	return fm.found;
}

/* ---- staging ------------------------------------------------------------ */

char *cfs_mount_default_cache(void)
{
	const char *x = getenv("XDG_CACHE_HOME");
	if (x && x[0] == '/')
		return strdup(x);
	const char *home = getenv("HOME");
	if (!home || home[0] != '/')
		home = "/tmp";
	return cfs_asprintf("%s/.cache", home);
}

/* Reads baseGeneration of a leftover state.json; -1 if unknown. */
static int64_t leftover_base(const char *state_path)
{
	char *txt = NULL;
	size_t len = 0;
	int64_t g = -1;

	if (cfs_read_file_at(&txt, &len, AT_FDCWD, state_path, 65536) != 0)
		return -1;
	cJSON *o = cJSON_Parse(txt);
	const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "baseGeneration");
	if (cJSON_IsNumber(b) && b->valuedouble >= 1)
		g = (int64_t)b->valuedouble;
	cJSON_Delete(o);
	free(txt);
	return g;
}

/*
 * Prepares fs->tree_path: reuses a leftover tree whose base is still the
 * current generation (its unsaved changes will be committed), moves any
 * other leftover aside, or exports the ref.
 */
static int staging_prepare(struct cfs_fs *fs, bool *recovered)
{
	struct cfs_ref_info info;
	struct stat sb;
	char *tmp = NULL;
	int dfd = -1, rc = 0;

	*recovered = false;
	memset(&info, 0, sizeof(info));
	if (!fs->ro && lstat(fs->tree_path, &sb) == 0) {
		struct cfs_manifest *m = NULL;
		int64_t base = leftover_base(fs->state_path);
		rc = cfs_context_read_manifest(&m, NULL, fs->st, fs->ref.id);
		if (rc)
			return rc;
		uint64_t cur = cfs_manifest_generation(m);
		cfs_manifest_free(m);
		if (base > 0 && (uint64_t)base == cur) {
			fs->generation = cur;
			*recovered = true;
			cfs_warn("%s: found staged changes of a previous mount "
				 "of %s based on the current generation %llu "
				 "in %s; serving them (they are committed on "
				 "the next fsync, commit or unmount)",
				 fs->mountpoint, fs->ref.id,
				 (unsigned long long)cur, fs->tree_path);
			return 0;
		}
		char *aside = cfs_asprintf("%s/recovered-%lld", fs->base_dir,
					   (long long)cfs_now_ms());
		if (!aside)
			return CFS_ENOMEM;
		if (rename(fs->tree_path, aside) != 0) {
			rc = cfs_error_errno(errno, "move %s aside",
					     fs->tree_path);
			free(aside);
			return rc;
		}
		char *aside_state = cfs_asprintf("%s.json", aside);
		if (aside_state)
			(void)rename(fs->state_path, aside_state);
		free(aside_state);
		cfs_warn("%s: a leftover staged tree of %s (base generation "
			 "%lld, current %llu) was moved to %s; nothing was "
			 "deleted",
			 fs->mountpoint, fs->ref.id, (long long)base,
			 (unsigned long long)cur, aside);
		fprintf(stderr,
			"contextfs: warning: leftover staged changes of %s "
			"moved to %s\n",
			fs->ref.id, aside);
		free(aside);
	}
	tmp = cfs_asprintf("%s.tmp", fs->tree_path);
	if (!tmp)
		return CFS_ENOMEM;
	(void)cfs_rmtree_at(AT_FDCWD, tmp);
	if (mkdir(tmp, 0700) != 0) {
		rc = cfs_error_errno(errno, "create %s", tmp);
		goto out;
	}
	dfd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		rc = cfs_error_errno(errno, "open %s", tmp);
		goto out;
	}
	rc = cfs_context_export(&info, fs->st, fs->keys, fs->refstr, dfd, NULL,
				NULL);
	if (rc)
		goto out;
	/* cache/ is never packed but is part of the layout. */
	(void)mkdirat(dfd, "cache", 0777);
	(void)fchmod(dfd, 0755); /* base_dir stays 0700 */
	if (rename(tmp, fs->tree_path) != 0) {
		rc = cfs_error_errno(errno, "rename %s", tmp);
		goto out;
	}
	fs->generation = info.generation;
out:
	if (dfd >= 0)
		close(dfd);
	if (rc)
		(void)cfs_rmtree_at(AT_FDCWD, tmp);
	free(tmp);
	return rc;
}

/* ---- readiness pipe ----------------------------------------------------- */

/* Whether the running kernel is at least major.minor. */
static bool kernel_at_least(int major, int minor)
{
	struct utsname u;
	int ma = 0, mi = 0;

	if (uname(&u) != 0 || sscanf(u.release, "%d.%d", &ma, &mi) != 2)
		return false;
	return ma > major || (ma == major && mi >= minor);
}

/* libfuse hands custom io the session's userdata: our cfs_fs */
static ssize_t shim_read(int fd, void *buf, size_t len, void *userdata)
{
	struct cfs_fs *fs = userdata;

	return cfs_initshim_read(&fs->initshim, fd, buf, len);
}

static ssize_t shim_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct cfs_fs *fs = userdata;

	return cfs_initshim_writev(&fs->initshim, fd, iov, count);
}

/*
 * -o writeback_cache: SIGTERM, SIGINT and SIGHUP must not end the loop
 * while the kernel still holds pages that write(2) accepted; ending it
 * first would leave the kernel nobody to write them back to. The signal
 * only wakes this thread, which syncfs()es the mount (the loop keeps
 * serving the WRITEs that causes), then stops the loop and wakes one of
 * its workers with a lookup nobody has cached.
 */
static int term_pipe[2] = {-1, -1};

static void term_signal(int sig)
{
	char c = (char)sig;
	int e = errno;

	(void)!write(term_pipe[1], &c, 1);
	errno = e;
}

static void *term_thread(void *arg)
{
	struct cfs_fs *fs = arg;
	char c, name[PATH_MAX];
	struct stat sb;
	ssize_t n;
	int fd;

	while ((n = read(term_pipe[0], &c, 1)) < 0 && errno == EINTR)
		;
	if (n != 1)
		return NULL; /* closed: the loop ended some other way */
	cfs_info("%s: signal %d: writing back cached pages, then unmounting",
		 fs->mountpoint, (int)c);
	fd = open(fs->mountpoint, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || syncfs(fd) < 0)
		cfs_warn("%s: writing back before the final commit failed: %s",
			 fs->mountpoint, strerror(errno));
	if (fd >= 0)
		close(fd);
	fuse_session_exit(fs->se);
	snprintf(name, sizeof(name), "%s/.contextfs-stop-%d", fs->mountpoint,
		 (int)getpid());
	(void)lstat(name, &sb);
	return NULL;
}

static int term_start(struct cfs_fs *fs, pthread_t *th)
{
	struct sigaction sa;
	int e;

	if (pipe2(term_pipe, O_CLOEXEC) < 0)
		return cfs_error_errno(errno, "pipe");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = term_signal;
	sigemptyset(&sa.sa_mask);
	e = pthread_create(th, NULL, term_thread, fs);
	if (e) {
		close(term_pipe[0]);
		close(term_pipe[1]);
		term_pipe[0] = term_pipe[1] = -1;
		return cfs_error_errno(e, "cannot start the signal thread");
	}
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	return 0;
}

static void term_stop(pthread_t th)
{
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	close(term_pipe[1]);
	pthread_join(th, NULL);
	close(term_pipe[0]);
	term_pipe[0] = term_pipe[1] = -1;
}

static void ready_send(int fd, int rc, const char *msg)
{
	char buf[4096];
	if (fd < 0)
		return;
	int k = snprintf(buf, sizeof(buf), "%d %s", rc, msg ? msg : "");
	if (k > 0)
		(void)cfs_write_all(fd, buf,
				    (size_t)k < sizeof(buf) ? (size_t)k
							    : sizeof(buf) - 1);
	close(fd);
}

static int ready_wait(int fd, pid_t child, const char *mountpoint)
{
	char buf[4096];
	size_t got = 0;
	struct stat sb;

	for (;;) {
		ssize_t k = read(fd, buf + got, sizeof(buf) - 1 - got);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			break;
		got += (size_t)k;
		if (got == sizeof(buf) - 1)
			break;
	}
	close(fd);
	buf[got] = '\0';
	if (got == 0) {
		int status = 0;
		(void)waitpid(child, &status, 0);
		return cfs_error_set(CFS_ERROR,
				     "the mount daemon exited during startup "
				     "(status %d); see its log",
				     status);
	}
	char *sp = strchr(buf, ' ');
	int rc = (int)strtol(buf, NULL, 10);
	if (rc != 0)
		return cfs_error_set(rc, "%s", sp ? sp + 1 : "mount failed");
	/* The mount answers (this blocks until the loop serves). */
	if (stat(mountpoint, &sb) != 0)
		return cfs_error_errno(errno, "mount %s does not answer",
				       mountpoint);
	return 0;
}

/* ---- the daemon --------------------------------------------------------- */

static void fs_free(struct cfs_fs *fs)
{
	if (fs->root_fd >= 0)
		close(fs->root_fd);
	cfs_fs_nodes_destroy(fs);
	cfs_hints_free(fs);
	free(fs->refstr);
	free(fs->mountpoint);
	free(fs->base_dir);
	free(fs->tree_path);
	free(fs->snap_path);
	free(fs->sock_path);
	free(fs->state_path);
	free(fs->owner);
	free(fs->runtime_id);
	free(fs->author);
	free(fs->snap_inos);
	free(fs->last_error);
	if (fs->prev_index_fd >= 0)
		close(fs->prev_index_fd);
	free(fs->ckpt_error);
	free(fs->pending_msg);
	free(fs);
}

static int serve(const struct cfs_mount_opts *o, int ready_fd)
{
	struct cfs_fs *fs = calloc(1, sizeof(*fs));
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *lcfg = NULL;
	char *cache = NULL, *fuse_o = NULL, *dead_owner = NULL;
	char real[PATH_MAX];
	bool locked = false, mounted = false, handlers = false, recovered;
	bool term = false;
	pthread_t term_th;
	int lockfd = -1, rc = 0, final_rc = 0;

	if (!fs) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	fs->root_fd = -1;
	fs->prev_index_fd = -1;
	fs->ctl_fd = -1;
	fs->st = o->store;
	fs->keys = o->keys;
	fs->uid = geteuid();
	fs->timeout = o->attr_timeout;
	fs->fsync_local = o->fsync_local;
	fs->wb_wanted = o->writeback_cache && !o->read_only;
	if (fs->wb_wanted && !kernel_at_least(6, 15))
		cfs_warn(
			"%s: -o writeback_cache is verified on Linux >= 6.15 "
			"only: older kernels may finish writeback before the "
			"daemon has the data, so a commit or SIGTERM could miss "
			"pages; prefer the default write-through mount there",
			fs->mountpoint);
	fs->debug = o->debug;
	fs->commit_interval_s = o->commit_interval_s;
	fs->checkpoint_interval_s = o->checkpoint_interval_s;
	fs->ttl_ms =
		o->lock_ttl_ms > 0 ? o->lock_ttl_ms : CFS_LOCK_DEFAULT_TTL_MS;
	rc = cfs_ref_parse(&fs->ref, o->ref);
	if (rc)
		goto out;
	/* Historical trees are read-only: committing them would fork. */
	fs->ro = o->read_only || fs->ref.kind != CFS_REF_LATEST;
	if (!realpath(o->mountpoint, real)) {
		rc = cfs_error_errno(errno, "mountpoint %s", o->mountpoint);
		goto out;
	}
	fs->refstr = strdup(o->ref);
	fs->mountpoint = strdup(real);
	cache = o->cache_dir ? strdup(o->cache_dir) : cfs_mount_default_cache();
	if (!fs->refstr || !fs->mountpoint || !cache) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	if (cfs_mount_is_mountpoint(real)) {
		rc = cfs_error_set(CFS_EEXISTS,
				   "%s is already a contextfs mount", real);
		goto out;
	}
	if (fs->ro)
		fs->base_dir = cfs_asprintf("%s/contextfs/mounts/%s/ro-%d",
					    cache, fs->ref.id, (int)getpid());
	else
		fs->base_dir = cfs_asprintf("%s/contextfs/mounts/%s", cache,
					    fs->ref.id);
	if (!fs->base_dir) {
		rc = CFS_ENOMEM;
		goto out;
	}
	fs->tree_path = cfs_asprintf("%s/tree", fs->base_dir);
	fs->snap_path = cfs_asprintf("%s/snap", fs->base_dir);
	fs->sock_path = cfs_asprintf("%s/control.sock", fs->base_dir);
	fs->state_path = cfs_asprintf("%s/state.json", fs->base_dir);
	if (!fs->tree_path || !fs->snap_path || !fs->sock_path ||
	    !fs->state_path) {
		rc = CFS_ENOMEM;
		goto out;
	}
	rc = cfs_mkdir_p_at(AT_FDCWD, fs->base_dir, 0700);
	if (rc)
		goto out;
	(void)chmod(fs->base_dir, 0700);
	cfs_staging_sweep_ro(cache, fs->ref.id);

	/* One mount per staging area on this machine. */
	char *lockpath = cfs_asprintf("%s/mount.lock", fs->base_dir);
	if (!lockpath) {
		rc = CFS_ENOMEM;
		goto out;
	}
	lockfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	free(lockpath);
	if (lockfd < 0 || flock(lockfd, LOCK_EX | LOCK_NB) != 0) {
		rc = errno == EWOULDBLOCK
			     ? cfs_error_set(
				       CFS_ELOCKED,
				       "context %s is already mounted (or "
				       "being recovered) from this machine "
				       "(staging area %s)",
				       fs->ref.id, fs->base_dir)
			     : cfs_error_errno(errno, "lock %s", fs->base_dir);
		goto out;
	}

	if (!fs->ro) {
		rc = cfs_lock_owner_new(&fs->owner);
		if (rc)
			goto out;
		fs->runtime_id = cfs_asprintf("fuse:%s:%s", cfs_hostname(),
					      fs->mountpoint);
		fs->author = o->author ? strdup(o->author) : NULL;
		if (!fs->runtime_id) {
			rc = CFS_ENOMEM;
			goto out;
		}
		rc = cfs_mount_lock_acquire(fs->st, fs->ref.id, fs->runtime_id,
					    fs->owner, fs->ttl_ms, &dead_owner);
		if (rc)
			goto out;
		locked = true;
		if (dead_owner)
			cfs_warn("%s: took over the lock of %s from %s, a "
				 "mount on this machine whose process is gone",
				 fs->mountpoint, fs->ref.id, dead_owner);
	}
	rc = staging_prepare(fs, &recovered);
	if (rc)
		goto out;
	{
		struct cfs_manifest *m = NULL;
		if (cfs_context_read_manifest(&m, NULL, fs->st, fs->ref.id) ==
		    0) {
			fs->checkpoint_generation =
				cfs_manifest_checkpoint_generation(m);
			/* The current tree is a checkpoint (pointer flip):
			 * the context's generation is still the base. */
			if (fs->ref.kind == CFS_REF_LATEST &&
			    fs->generation == 0)
				fs->generation = cfs_manifest_generation(m);
		}
		cfs_manifest_free(m);
		cfs_error_clear();
	}
	fs->root_fd = open(fs->tree_path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fs->root_fd < 0) {
		rc = cfs_error_errno(errno, "open %s", fs->tree_path);
		goto out;
	}
	fs->close_silent = cfs_fs_close_is_silent(fs->root_fd);
	rc = cfs_fs_nodes_init(fs);
	if (rc)
		goto out;
	rc = cfs_commit_start(fs);
	if (rc)
		goto out;
	if (recovered)
		atomic_store(&fs->changes, 1); /* unknown: commit once */
	if (!fs->ro)
		(void)cfs_state_write(fs, !recovered);

	/*
	 * The kernel checks permissions (default_permissions) unless only
	 * root can use the mount: a root daemon without allow_other, whose
	 * callers the kernel restricts to uid and gid 0. Root passes every
	 * check the kernel would make (exec of a file without x bits the
	 * kernel still refuses, access(2) is op_access), and skipping them
	 * saves a GETATTR of the parent per create, unlink or rename: every
	 * change to a directory expires its cached attributes.
	 * -o default_permissions asks for them anyway (a root without
	 * CAP_DAC_OVERRIDE would otherwise get the daemon's rights).
	 */
	fs->kernel_perms =
		fs->uid != 0 || o->allow_other || o->default_permissions;
	fuse_o = cfs_asprintf(
		"fsname=contextfs:%s,subtype=contextfs%s%s%s", fs->ref.id,
		fs->kernel_perms ? ",default_permissions" : "",
		fs->ro ? ",ro" : "", o->allow_other ? ",allow_other" : "");
	if (!fuse_o || fuse_opt_add_arg(&args, "contextfs") ||
	    fuse_opt_add_arg(&args, "-o") || fuse_opt_add_arg(&args, fuse_o) ||
	    (o->debug && fuse_opt_add_arg(&args, "-d"))) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	fs->se = fuse_session_new(&args, &cfs_fuse_ops, sizeof(cfs_fuse_ops),
				  fs);
	if (!fs->se) {
		rc = cfs_error_set(CFS_ERROR, "cannot create the FUSE session");
		goto out;
	}
	/* libfuse installs its handlers only over SIG_DFL: whatever the
	 * caller set, unmount, SIGTERM and SIGINT must end the loop. */
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	if (fuse_set_signal_handlers(fs->se) != 0) {
		rc = cfs_error_set(CFS_ERROR, "cannot set signal handlers");
		goto out;
	}
	handlers = true;
	if (fs->wb_wanted) {
		rc = term_start(fs, &term_th);
		if (rc)
			goto out;
		term = true;
	}
	if (fuse_session_mount(fs->se, fs->mountpoint) != 0) {
		rc = cfs_error_set(CFS_EIO,
				   "cannot mount on %s (is /dev/fuse "
				   "available and the directory not in use?)",
				   fs->mountpoint);
		goto out;
	}
	mounted = true;
	{
		/* see fuse/initshim.h: no GETXATTR round trip per write */
		static const struct fuse_custom_io io = {
			.read = shim_read,
			.writev = shim_writev,
		};
		int sfd = fuse_session_fd(fs->se);

		if (sfd < 0 || fuse_session_custom_io(fs->se, &io, sfd) != 0)
			cfs_warn("%s: cannot hook the FUSE INIT exchange; "
				 "writes will ask for security.capability",
				 fs->mountpoint);
	}
	rc = cfs_control_start(fs);
	if (rc == 0)
		rc = cfs_heartbeat_start(fs);
	if (rc)
		goto out;

	cfs_info("%s: mounted %s generation %llu%s (staging %s)",
		 fs->mountpoint, fs->refstr, (unsigned long long)fs->generation,
		 fs->ro ? " read-only" : "", fs->tree_path);
	if (ready_fd >= 0) {
		ready_send(ready_fd, 0, "ready");
		ready_fd = -1;
		int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
		if (nul >= 0) {
			dup2(nul, 0);
			dup2(nul, 1);
			dup2(nul, 2);
			close(nul);
		}
	}

	lcfg = fuse_loop_cfg_create();
	if (lcfg)
		fuse_loop_cfg_set_max_threads(lcfg, 64);
	(void)fuse_session_loop_mt(fs->se, lcfg);
	cfs_info("%s: unmounting", fs->mountpoint);

out:
	if (mounted) {
		fuse_session_unmount(fs->se);
		mounted = false;
	}
	if (term)
		term_stop(term_th);
	if (handlers)
		fuse_remove_signal_handlers(fs->se);
	if (fs && fs->se)
		fuse_session_destroy(fs->se);
	if (fs) {
		cfs_heartbeat_stop(fs);
		cfs_commit_stop(fs);
	}
	if (rc == 0 && fs && !fs->ro) {
		/* Unmount, SIGTERM, SIGINT: land what is staged. */
		final_rc = cfs_commit_now(fs, "unmount");
		if (final_rc == 0 && !cfs_fs_dirty(fs)) {
			(void)cfs_rmtree_at(AT_FDCWD, fs->tree_path);
			(void)unlink(fs->state_path);
		} else {
			cfs_error_log("%s: unmounted with uncommitted changes; "
				      "they stay in %s and the next mount of "
				      "%s on this machine picks them up",
				      fs->mountpoint, fs->tree_path,
				      fs->ref.id);
		}
	}
	if (fs)
		cfs_control_stop(fs);
	if (locked && !atomic_load(&fs->lock_lost)) {
		if (cfs_lock_release(fs->st, fs->ref.id, fs->owner, false))
			cfs_warn("%s: releasing the lock failed: %s",
				 fs->mountpoint, cfs_error_last());
	}
	if (fs && fs->ro && fs->base_dir)
		(void)cfs_rmtree_at(AT_FDCWD, fs->base_dir);
	if (rc && ready_fd >= 0) {
		ready_send(ready_fd, rc, cfs_error_last());
		ready_fd = -1;
	}
	if (rc)
		cfs_error_log("mount of %s failed: %s", o->ref,
			      cfs_error_last());
	if (lockfd >= 0)
		close(lockfd);
	if (lcfg)
		fuse_loop_cfg_destroy(lcfg);
	fuse_opt_free_args(&args);
	free(fuse_o);
	free(cache);
	free(dead_owner);
	if (fs)
		fs_free(fs);
	return rc ? rc : final_rc;
}

int cfs_mount_run(const struct cfs_mount_opts *o)
{
	int pfd[2];
	pid_t pid;

	struct cfs_mount_opts abs_o = *o;
	char mp[PATH_MAX], cache[PATH_MAX];

	if (!o->ref || !o->mountpoint || !o->store || !o->keys)
		return cfs_error_set(CFS_EINVAL, "mount: missing arguments");
	/* A previous daemon died here: clean its mount up first. */
	if (cfs_mount_is_stale(o->mountpoint, NULL)) {
		int rc = cfs_mount_clean_stale(o->mountpoint);
		if (rc)
			return rc;
	}
	/* The daemon runs in "/": resolve relative paths now. */
	if (!realpath(o->mountpoint, mp))
		return cfs_error_errno(errno, "mountpoint %s", o->mountpoint);
	abs_o.mountpoint = mp;
	if (o->cache_dir) {
		if (cfs_mkdir_p_at(AT_FDCWD, o->cache_dir, 0700) != 0 ||
		    !realpath(o->cache_dir, cache))
			return cfs_error_errno(errno, "cache directory %s",
					       o->cache_dir);
		abs_o.cache_dir = cache;
	}
	o = &abs_o;
	if (o->debug)
		cfs_log_set_level(CFS_LOG_DEBUG);
	else
		cfs_log_set_level(CFS_LOG_INFO);
	if (o->foreground) {
		if (o->log_file && cfs_log_to_file(o->log_file))
			return cfs_error_last_code();
		return serve(o, -1);
	}
	if (pipe2(pfd, O_CLOEXEC) != 0)
		return cfs_error_errno(errno, "pipe");
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		close(pfd[0]);
		close(pfd[1]);
		return cfs_error_errno(errno, "fork");
	}
	if (pid > 0) {
		close(pfd[1]);
		return ready_wait(pfd[0], pid, o->mountpoint);
	}
	close(pfd[0]);
	setsid();
	if (o->log_file) {
		if (cfs_log_to_file(o->log_file)) {
			ready_send(pfd[1], cfs_error_last_code(),
				   cfs_error_last());
			_exit(1);
		}
	} else {
		cfs_log_to_syslog("contextfs");
	}
	if (chdir("/") != 0)
		_exit(1);
	int rc = serve(o, pfd[1]);
	_exit(rc ? 1 : 0);
}

/* ---- unmount ------------------------------------------------------------ */

static int run_fusermount(const char *mountpoint, bool lazy)
{
	char *argv[] = {"fusermount3", "-u", lazy ? "-z" : NULL,
			(char *)mountpoint, NULL};
	pid_t pid;
	int status = 0;

	if (!lazy) {
		argv[2] = (char *)mountpoint;
		argv[3] = NULL;
	}
	if (posix_spawnp(&pid, "fusermount3", NULL, NULL, argv, environ) != 0)
		return cfs_error_errno(errno, "cannot run fusermount3");
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return cfs_error_set(CFS_EIO,
				     "fusermount3 -u %s failed (is the mount "
				     "busy?)",
				     mountpoint);
	return 0;
}

/* True while pid runs (a zombie nobody reaps counts as gone). */
bool cfs_pid_alive(pid_t pid)
{
	char path[64], buf[256];
	int fd;
	ssize_t k;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	k = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (k <= 0)
		return false;
	buf[k] = '\0';
	char *rp = strrchr(buf, ')');
	return !(rp && rp[1] == ' ' && (rp[2] == 'Z' || rp[2] == 'X'));
}

int cfs_mount_clean_stale(const char *mountpoint)
{
	char real[PATH_MAX];
	char *id = NULL;
	int rc;

	if (!cfs_mount_is_stale(mountpoint, &id))
		return cfs_error_set(CFS_EINVAL,
				     "%s is not a dead contextfs mount",
				     mountpoint);
	rc = resolve_no_follow_last(real, mountpoint);
	if (rc == 0)
		rc = run_fusermount(real, true);
	if (rc == 0)
		cfs_warn("%s was a contextfs mount of %s whose daemon is gone "
			 "(transport endpoint is not connected); unmounted it. "
			 "Its unsaved changes, if any, stay staged: `contextfs "
			 "recover %s` commits or sets them aside",
			 real, id ? id : "?", id ? id : "ID");
	free(id);
	return rc;
}

int cfs_mount_unmount(const char *mountpoint, bool force, int timeout_ms)
{
	cJSON *req = NULL, *rep = NULL;
	pid_t pid = 0;
	int rc;

	/* A dead daemon: nothing to commit or wait for, just unmount. */
	if (cfs_mount_is_stale(mountpoint, NULL))
		return cfs_mount_clean_stale(mountpoint);

	req = cJSON_CreateObject();
	if (!req)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	cJSON_AddStringToObject(req, "op", "status");
	rc = cfs_mount_request(&rep, mountpoint, req);
	if (rc == 0) {
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(rep, "pid");
		const cJSON *ro =
			cJSON_GetObjectItemCaseSensitive(rep, "readOnly");
		if (cJSON_IsNumber(p))
			pid = (pid_t)p->valuedouble;
		if (!force && !cJSON_IsTrue(ro)) {
			cJSON_Delete(rep);
			rep = NULL;
			cJSON_ReplaceItemInObject(req, "op",
						  cJSON_CreateString("commit"));
			cJSON_AddStringToObject(req, "message", "unmount");
			rc = cfs_mount_request(&rep, mountpoint, req);
			if (rc)
				cfs_error_prefix("not unmounting %s, the final "
						 "commit failed (changes stay "
						 "staged; use --force to "
						 "unmount anyway)",
						 mountpoint);
		}
	} else if (force || cfs_mount_is_mountpoint(mountpoint)) {
		rc = force ? 0 : rc; /* a dead daemon: just unmount */
		if (!force)
			cfs_error_prefix("cannot reach the daemon (use --force "
					 "to unmount anyway)");
	}
	cJSON_Delete(req);
	cJSON_Delete(rep);
	if (rc)
		return rc;
	rc = run_fusermount(mountpoint, false);
	if (rc)
		return rc;
	/* The daemon commits anything left, releases the lock and exits. */
	for (int waited = 0; pid > 0 && waited < timeout_ms; waited += 20) {
		if (!cfs_pid_alive(pid))
			return 0;
		usleep(20000);
	}
	if (pid > 0 && cfs_pid_alive(pid))
		return cfs_error_set(CFS_ETIMEDOUT,
				     "unmounted %s, but the daemon (pid %d) is "
				     "still finishing",
				     mountpoint, (int)pid);
	return 0;
}
