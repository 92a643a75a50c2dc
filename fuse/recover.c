/*
 * What a mount leaves behind when it dies, and how to get it back:
 * the lock takeover of a dead local mount (cfs_mount_lock_acquire), the
 * `contextfs recover` workflow (cfs_mount_recover) and the inventory of
 * mounts and leftover staging areas `contextfs doctor` shows.
 *
 * A staging area <cache>/contextfs/mounts/<id>/ belongs to whoever holds
 * the flock on its mount.lock (a running mount, or recover). Its
 * state.json names the base generation, the lock owner and the pid of the
 * mount that staged the tree.
 */
#include "fuse/fuse_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/context.h"
#include "core/error.h"
#include "core/json.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/manifest.h"
#include "core/util.h"

extern char **environ;

#define STATE_MAX (64 * 1024)
#define DOCTOR_MAX_ENTRIES 1000

/* ---- lock takeover ------------------------------------------------------ */

/*
 * True when the lock was written by a contextfs mount or recover of this
 * machine (runtime id "fuse:<host>:..." or "recover:<host>", owner
 * "<host>:<pid>:<uuid>") whose process no longer runs. A live pid (even a
 * reused one) never qualifies.
 */
static bool lock_owner_dead_here(const struct cfs_lock *l)
{
	const char *owner = cfs_lock_owner(l), *rt = cfs_lock_runtime_id(l);
	const char *host = cfs_hostname();
	size_t hl = strlen(host);
	char *end;

	if (!owner || !rt || !host[0])
		return false;
	bool mount_rt = strncmp(rt, "fuse:", 5) == 0 &&
			strncmp(rt + 5, host, hl) == 0 && rt[5 + hl] == ':';
	bool recover_rt =
		strncmp(rt, "recover:", 8) == 0 && strcmp(rt + 8, host) == 0;
	if (!mount_rt && !recover_rt)
		return false;
	if (strncmp(owner, host, hl) != 0 || owner[hl] != ':')
		return false;
	const char *p = owner + hl + 1;
	errno = 0;
	long pid = strtol(p, &end, 10);
	if (errno || end == p || *end != ':' || pid <= 1 || pid > 4194304)
		return false;
	return !cfs_pid_alive((pid_t)pid);
}

int cfs_mount_lock_acquire(struct cfs_store *st, const char *id,
			   const char *runtime_id, const char *owner,
			   int64_t ttl_ms, char **dead_owner)
{
	struct cfs_lock *cur = NULL;
	char *held_msg = NULL, *dead = NULL;
	bool adopted = false;
	int rc;

	*dead_owner = NULL;
	rc = cfs_lock_acquire(NULL, NULL, st, id, runtime_id, owner, ttl_ms,
			      false);
	if (rc != CFS_ELOCKED)
		return rc;
	held_msg = strdup(cfs_error_last());
	if (cfs_lock_read(&cur, st, id) != 0 || !cur ||
	    !lock_owner_dead_here(cur))
		goto refused;
	dead = strdup(cfs_lock_owner(cur));
	if (!dead) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	/*
	 * Re-acquire under the dead owner's name: a compare-and-swap on the
	 * revision just read, so a writer that got in meanwhile wins. Then
	 * release it and take a fresh lock create-only.
	 */
	rc = cfs_lock_acquire(NULL, &adopted, st, id, runtime_id, dead, ttl_ms,
			      false);
	if (rc)
		goto out;
	rc = cfs_lock_release(st, id, dead, false);
	if (rc)
		goto out;
	rc = cfs_lock_acquire(NULL, NULL, st, id, runtime_id, owner, ttl_ms,
			      false);
	if (rc)
		goto out;
	*dead_owner = dead;
	dead = NULL;
	goto out;
refused:
	rc = cfs_error_set(CFS_ELOCKED, "%s",
			   held_msg ? held_msg : "context is locked");
out:
	cfs_lock_free(cur);
	free(held_msg);
	free(dead);
	return rc;
}

/* ---- staging state ------------------------------------------------------ */

struct leftover_state {
	int64_t base; /* -1 unknown */
	int64_t pid; /* 0 unknown */
	char *owner;
	char *mountpoint;
};

static void state_clear(struct leftover_state *s)
{
	free(s->owner);
	free(s->mountpoint);
	memset(s, 0, sizeof(*s));
	s->base = -1;
}

static void state_read(struct leftover_state *s, const char *path)
{
	char *txt = NULL;
	size_t len = 0;
	cJSON *o;
	const char *v;

	memset(s, 0, sizeof(*s));
	s->base = -1;
	if (cfs_read_file_at(&txt, &len, AT_FDCWD, path, STATE_MAX) != 0) {
		cfs_error_clear();
		return;
	}
	o = cJSON_ParseWithLength(txt, len);
	if (o) {
		int64_t n;
		if (cfs_json_int(o, "baseGeneration", &n) && n >= 1)
			s->base = n;
		if (cfs_json_int(o, "pid", &n) && n > 0)
			s->pid = n;
		if ((v = cfs_json_str(o, "owner")) && *v)
			s->owner = strdup(v);
		if ((v = cfs_json_str(o, "mountpoint")) && *v)
			s->mountpoint = strdup(v);
	}
	cJSON_Delete(o);
	free(txt);
}

/* ---- recover ------------------------------------------------------------ */

void cfs_recover_result_clear(struct cfs_recover_result *res)
{
	if (!res)
		return;
	free(res->staging);
	free(res->path);
	free(res->dead_owner);
	free(res->unmounted);
	free(res->mountpoint);
	memset(res, 0, sizeof(*res));
}

/* cp -a src dst (dst must not exist): for moves across filesystems. */
static int copy_tree(const char *src, const char *dst)
{
	char *argv[] = {"cp", "-a", "--", (char *)src, (char *)dst, NULL};
	pid_t pid;
	int status = 0;

	if (posix_spawnp(&pid, "cp", NULL, NULL, argv, environ) != 0)
		return cfs_error_errno(errno, "cannot run cp");
	while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
		;
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return cfs_error_set(CFS_EIO, "copying %s to %s failed", src,
				     dst);
	return 0;
}

/* Moves the staged tree to dst (absent, or an empty directory). */
static int move_tree(const char *tree, const char *dst)
{
	struct stat sb;
	int rc;

	if (lstat(dst, &sb) == 0) {
		if (!S_ISDIR(sb.st_mode))
			return cfs_error_set(CFS_EEXISTS,
					     "%s exists and is not a directory",
					     dst);
		if (rmdir(dst) != 0)
			return errno == ENOTEMPTY || errno == EEXIST
				       ? cfs_error_set(CFS_EEXISTS,
						       "%s is not empty", dst)
				       : cfs_error_errno(errno, "replace %s",
							 dst);
	} else if (errno != ENOENT) {
		return cfs_error_errno(errno, "%s", dst);
	}
	if (rename(tree, dst) == 0)
		return 0;
	if (errno != EXDEV)
		return cfs_error_errno(errno, "move %s to %s", tree, dst);
	rc = copy_tree(tree, dst);
	if (rc) {
		(void)cfs_rmtree_at(AT_FDCWD, dst);
		return rc;
	}
	return cfs_rmtree_at(AT_FDCWD, tree);
}

static int recover_commit(struct cfs_recover_result *res,
			  const struct cfs_recover_opts *o, const char *tree,
			  const struct leftover_state *ls)
{
	struct cfs_commit_opts co;
	struct cfs_commit_result cr;
	char *owner = NULL, *runtime = NULL, *msg = NULL;
	bool locked = false;
	int dfd = -1, rc;

	memset(&cr, 0, sizeof(cr));
	rc = cfs_lock_owner_new(&owner);
	if (rc)
		goto out;
	runtime = cfs_asprintf("recover:%s", cfs_hostname());
	msg = o->message ? strdup(o->message)
			 : cfs_asprintf("recovered changes staged by %s",
					ls->owner ? ls->owner
						  : "a mount that died");
	if (!runtime || !msg) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	rc = cfs_mount_lock_acquire(o->store, o->id, runtime, owner, 0,
				    &res->dead_owner);
	if (rc)
		goto out;
	locked = true;
	dfd = open(tree, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		rc = cfs_error_errno(errno, "open %s", tree);
		goto out;
	}
	cfs_commit_opts_init(&co);
	co.owner = owner;
	co.author = o->author;
	co.message = msg;
	co.expect_generation = ls->base; /* the context must not move on */
	rc = cfs_context_commit(&cr, o->store, o->keys, o->id, dfd, &co);
	if (rc == 0) {
		res->action = CFS_RECOVER_COMMITTED;
		res->generation = cr.generation;
	}
out:
	if (dfd >= 0)
		close(dfd);
	if (locked && cfs_lock_release(o->store, o->id, owner, false) != 0)
		cfs_warn("recover %s: releasing the lock failed: %s", o->id,
			 cfs_error_last());
	cfs_commit_result_clear(&cr);
	free(owner);
	free(runtime);
	free(msg);
	return rc;
}

int cfs_mount_recover(struct cfs_recover_result *res,
		      const struct cfs_recover_opts *o)
{
	struct leftover_state ls;
	struct cfs_manifest *m = NULL;
	struct stat sb;
	char *cache = NULL, *tree = NULL, *state = NULL, *snap = NULL;
	char *lockpath = NULL, *tmp = NULL;
	int lockfd = -1, rc;

	memset(res, 0, sizeof(*res));
	res->base_generation = -1;
	memset(&ls, 0, sizeof(ls));
	ls.base = -1;
	if (!o->id || !o->store || !o->keys)
		return cfs_error_set(CFS_EINVAL, "recover: missing arguments");
	rc = cfs_id_check(o->id);
	if (rc)
		return rc;
	cache = o->cache_dir ? strdup(o->cache_dir) : cfs_mount_default_cache();
	if (!cache)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	res->staging = cfs_asprintf("%s/contextfs/mounts/%s", cache, o->id);
	if (!res->staging) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	tree = cfs_asprintf("%s/tree", res->staging);
	state = cfs_asprintf("%s/state.json", res->staging);
	snap = cfs_asprintf("%s/snap", res->staging);
	tmp = cfs_asprintf("%s/tree.tmp", res->staging);
	lockpath = cfs_asprintf("%s/mount.lock", res->staging);
	if (!tree || !state || !snap || !tmp || !lockpath) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	if (lstat(tree, &sb) != 0) {
		if (errno != ENOENT) {
			rc = cfs_error_errno(errno, "%s", tree);
			goto out;
		}
		res->action = CFS_RECOVER_NONE; /* nothing left over */
		goto out;
	}
	/* The staging area is ours, or a running mount's. */
	lockfd = open(lockpath, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (lockfd < 0) {
		rc = cfs_error_errno(errno, "open %s", lockpath);
		goto out;
	}
	if (flock(lockfd, LOCK_EX | LOCK_NB) != 0) {
		rc = errno == EWOULDBLOCK
			     ? cfs_error_set(CFS_ELOCKED,
					     "%s is mounted from this machine "
					     "and its staging area %s is in "
					     "use; commit with `contextfs "
					     "commit MOUNTPOINT`",
					     o->id, res->staging)
			     : cfs_error_errno(errno, "lock %s", lockpath);
		goto out;
	}
	state_read(&ls, state);
	res->base_generation = ls.base;
	if (ls.mountpoint) {
		res->mountpoint = strdup(ls.mountpoint);
		if (cfs_mount_is_stale(ls.mountpoint, NULL) &&
		    cfs_mount_clean_stale(ls.mountpoint) == 0)
			res->unmounted = strdup(ls.mountpoint);
		cfs_error_clear();
	}
	/* Leftovers of a commit or an export in flight are derived data. */
	(void)cfs_rmtree_at(AT_FDCWD, snap);
	(void)cfs_rmtree_at(AT_FDCWD, tmp);

	rc = cfs_context_read_manifest(&m, NULL, o->store, o->id);
	if (rc)
		goto out;
	res->current_generation = cfs_manifest_generation(m);
	if (ls.base > 0 && (uint64_t)ls.base == res->current_generation) {
		rc = recover_commit(res, o, tree, &ls);
		if (rc == 0) {
			(void)cfs_rmtree_at(AT_FDCWD, tree);
			(void)unlink(state);
			cfs_info("recover %s: committed the staged tree of "
				 "generation %lld as generation %llu",
				 o->id, (long long)ls.base,
				 (unsigned long long)res->generation);
			goto out;
		}
		if (rc != CFS_ECONFLICT)
			goto out; /* locked, unreachable, ...: keep it staged */
		/* Another writer landed first: set the tree aside. */
		cfs_error_clear();
		rc = 0;
	}
	res->path = o->into ? strdup(o->into)
			    : cfs_asprintf("%s/recovered-%lld", res->staging,
					   (long long)cfs_now_ms());
	if (!res->path) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	rc = move_tree(tree, res->path);
	if (rc)
		goto out;
	if (!o->into) {
		char *aside_state = cfs_asprintf("%s.json", res->path);
		if (aside_state)
			(void)rename(state, aside_state);
		free(aside_state);
	}
	(void)unlink(state);
	res->action = CFS_RECOVER_MOVED;
	cfs_info("recover %s: the staged tree (base generation %lld, current "
		 "%llu) was moved to %s",
		 o->id, (long long)ls.base,
		 (unsigned long long)res->current_generation, res->path);
out:
	if (lockfd >= 0)
		close(lockfd);
	cfs_manifest_free(m);
	state_clear(&ls);
	free(cache);
	free(tree);
	free(state);
	free(snap);
	free(tmp);
	free(lockpath);
	return rc;
}

void cfs_staging_sweep_ro(const char *cache, const char *id)
{
	char *dir = cfs_asprintf("%s/contextfs/mounts/%s", cache, id);
	DIR *d = dir ? opendir(dir) : NULL;
	struct dirent *de;
	int n = 0;

	while (d && (de = readdir(d)) && n < DOCTOR_MAX_ENTRIES) {
		char *end;
		long pid;

		if (strncmp(de->d_name, "ro-", 3) != 0)
			continue;
		n++;
		errno = 0;
		pid = strtol(de->d_name + 3, &end, 10);
		if (errno || *end || pid <= 1 || pid == (long)getpid() ||
		    cfs_pid_alive((pid_t)pid))
			continue;
		char *p = cfs_asprintf("%s/%s", dir, de->d_name);
		if (p && cfs_rmtree_at(AT_FDCWD, p) == 0)
			cfs_info("removed %s, the staging area of a read-only "
				 "mount that died",
				 p);
		free(p);
	}
	if (d)
		closedir(d);
	free(dir);
	cfs_error_clear();
}

/* ---- doctor ------------------------------------------------------------- */

struct doctor_mounts {
	cJSON *arr;
};

static bool doctor_mount_cb(const char *mp, const char *fstype, const char *src,
			    void *arg)
{
	struct doctor_mounts *dm = arg;
	cJSON *e;

	if (strcmp(fstype, "fuse.contextfs") != 0)
		return false;
	if (cJSON_GetArraySize(dm->arr) >= DOCTOR_MAX_ENTRIES)
		return true;
	e = cJSON_CreateObject();
	if (!e)
		return true;
	cJSON_AddStringToObject(e, "mountpoint", mp);
	cJSON_AddStringToObject(
		e, "id", strncmp(src, "contextfs:", 10) == 0 ? src + 10 : src);
	cJSON_AddItemToArray(dm->arr, e);
	return false;
}

/* Adds the live daemon's status (or alive: false) to each mount. */
static void doctor_mount_status(cJSON *arr)
{
	cJSON *e;

	cJSON_ArrayForEach(e, arr)
	{
		const char *mp = cfs_json_str(e, "mountpoint");
		cJSON *req = cJSON_CreateObject(), *rep = NULL;
		bool alive = false;

		if (mp && req && !cfs_mount_is_stale(mp, NULL)) {
			cJSON_AddStringToObject(req, "op", "status");
			if (cfs_mount_request(&rep, mp, req) == 0) {
				static const char *const keep[] = {
					"ref",
					"pid",
					"readOnly",
					"state",
					"dirty",
					"generation",
					"staging",
					"pendingError",
					"checkpointGeneration",
				};
				alive = true;
				for (size_t i = 0; i < CFS_ARRAY_SIZE(keep);
				     i++) {
					const cJSON *v =
						cJSON_GetObjectItemCaseSensitive(
							rep, keep[i]);
					if (v)
						cJSON_AddItemToObject(
							e, keep[i],
							cJSON_Duplicate(v, 1));
				}
			}
		}
		cfs_error_clear();
		cJSON_AddBoolToObject(e, "alive", alive);
		cJSON_Delete(req);
		cJSON_Delete(rep);
	}
}

static void doctor_leftovers(cJSON *arr, const char *mounts_dir)
{
	DIR *d = opendir(mounts_dir), *d2;
	struct dirent *de, *de2;

	if (!d)
		return;
	while ((de = readdir(d)) &&
	       cJSON_GetArraySize(arr) < DOCTOR_MAX_ENTRIES) {
		if (de->d_name[0] == '.' || cfs_id_check(de->d_name) != 0) {
			cfs_error_clear();
			continue;
		}
		char *area = cfs_asprintf("%s/%s", mounts_dir, de->d_name);
		if (!area)
			break;
		d2 = opendir(area);
		while (d2 && (de2 = readdir(d2)) &&
		       cJSON_GetArraySize(arr) < DOCTOR_MAX_ENTRIES) {
			const char *n = de2->d_name;
			bool staged = strcmp(n, "tree") == 0;
			bool aside = strncmp(n, "recovered-", 10) == 0 &&
				     !strchr(n, '.');
			if (!staged && !aside)
				continue;
			struct leftover_state ls;
			char *sp = staged ? cfs_asprintf("%s/state.json", area)
					  : cfs_asprintf("%s/%s.json", area, n);
			if (!sp)
				break;
			state_read(&ls, sp);
			free(sp);
			/* A tree a running mount serves is no leftover. */
			if (staged && ls.pid > 0 &&
			    cfs_pid_alive((pid_t)ls.pid)) {
				state_clear(&ls);
				continue;
			}
			cJSON *e = cJSON_CreateObject();
			if (e) {
				cJSON_AddStringToObject(e, "id", de->d_name);
				cJSON_AddStringToObject(e, "kind",
							staged ? "staged"
							       : "set-aside");
				char *p = cfs_asprintf("%s/%s", area, n);
				if (p)
					cJSON_AddStringToObject(e, "path", p);
				free(p);
				if (ls.base > 0)
					cJSON_AddNumberToObject(
						e, "baseGeneration",
						(double)ls.base);
				else
					cJSON_AddNullToObject(e,
							      "baseGeneration");
				if (ls.mountpoint)
					cJSON_AddStringToObject(e, "mountpoint",
								ls.mountpoint);
				cJSON_AddItemToArray(arr, e);
			}
			state_clear(&ls);
		}
		if (d2)
			closedir(d2);
		free(area);
	}
	closedir(d);
}

cJSON *cfs_mount_doctor_json(const char *cache_dir)
{
	cJSON *o = cJSON_CreateObject();
	struct doctor_mounts dm;
	char *cache = NULL, *mounts_dir = NULL;

	if (!o)
		return NULL;
	dm.arr = cJSON_AddArrayToObject(o, "mounts");
	if (dm.arr) {
		(void)cfs_mountinfo_each(doctor_mount_cb, &dm);
		doctor_mount_status(dm.arr);
	}
	cache = cache_dir ? strdup(cache_dir) : cfs_mount_default_cache();
	if (cache) {
		cJSON_AddStringToObject(o, "cacheDir", cache);
		mounts_dir = cfs_asprintf("%s/contextfs/mounts", cache);
	}
	cJSON *arr = cJSON_AddArrayToObject(o, "leftovers");
	if (arr && mounts_dir)
		doctor_leftovers(arr, mounts_dir);
	cfs_error_clear();
	free(cache);
	free(mounts_dir);
	return o;
}
