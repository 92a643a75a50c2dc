/*
 * contextfs push (also installed as contextfs-push): carries a consistent
 * snapshot of a LIVE mount into a sandbox, runs a command there and
 * merges what the sandbox changed back into the mount, three-way:
 *
 *   base   = the snapshot pushed (a committed generation of the mount);
 *   theirs = the sandbox's managed roots after the command (packed there,
 *            downloaded and validated here as every session save is);
 *   ours   = the mount as it is now (it stayed writable throughout).
 *
 * The snapshot: we ask the daemon to commit (`contextfs commit MP`; a
 * clean mount answers at once) and export the generation it reports with
 * the engine. That is the sound choice: the daemon's commit is the only
 * point-in-time view of the staging tree (it freezes writers while it
 * mirrors the tree), the export is authenticated and validated like any
 * read, and it needs no private access to the daemon's staging area,
 * which another process must not read while writers run. A generation is
 * also exactly what the persistence policy keeps, so excluded paths and
 * cache/ are never pushed, and the base stays reproducible.
 *
 * The mount keeps the context lock: the session is detached (no lock, no
 * save; core/session.h src_dir), and every change lands through the
 * mountpoint path with ordinary system calls, so the daemon stages and
 * commits them itself (`push: COMMAND`). Paths are walked one component
 * at a time with O_NOFOLLOW: a symlink in the mount or in the sandbox's
 * tree never redirects a write.
 *
 * --keep leaves the sandbox (state under <cache>/contextfs/push/<ID>/:
 * state.json, the base for the next merge as a plaintext bundle in a 0700
 * directory, and a local sandbox's root); --sandbox ID reuses it
 * (extracting the new snapshot there keeps excluded paths such as
 * node_modules), --pull merges what it holds without running anything.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "adapters/adapters.h"
#include "core/bundle.h"
#include "core/context.h"
#include "core/crypto.h"
#include "core/error.h"
#include "core/ids.h"
#include "core/log.h"
#include "core/manifest.h"
#include "core/policy.h"
#include "core/session.h"
#include "core/util.h"
#include "fuse/mount.h"
#include "tools/cli.h"
#include "tools/mount_cli.h"
#include "tools/runtime_cli.h"

#define CONFLICT_SUFFIX ".contextfs-sandbox"
#define CONFLICT_COPIES_MAX 1000
#define PUSH_ENTRIES_MAX 1000000
#define STATE_MAX (64u << 10)
#define MESSAGE_MAX 200

enum {
	OPT_KEEP = RT_OPT_COUNT,
	OPT_PULL,
	OPT_SANDBOX,
	OPT_TIMEOUT,
};

static const struct cli_opt opts[] = {
	CLI_RUNTIME_OPTS,
	{"keep", 0, false, OPT_KEEP},
	{"pull", 0, false, OPT_PULL},
	{"sandbox-id", 0, true, OPT_SANDBOX},
	{"timeout", 0, true, OPT_TIMEOUT},
	{NULL, 0, false, 0},
};

/* ------------------------------------------------------------------ */
/* Trees: the entries of the managed roots of a directory */

struct ent {
	char *path;
	mode_t mode; /* st_mode: type and permission bits */
	off_t size;
	struct timespec mtime;
	char sha256[65]; /* regular file: its hash when known, else "" */
	char *link; /* a listed tree's symlink target (else read from fd) */
	char *hardlink; /* while a listing is built: the linked member */
	size_t seq; /* while a listing is built: archive order */
};

struct tree {
	int fd; /* the tree's root directory */
	struct ent *v;
	size_t n, cap;
	/* hashes of the files as they were extracted (NULL: none) */
	struct cfs_inode_hashes *hashes;
};

static void tree_clear(struct tree *t)
{
	for (size_t i = 0; i < t->n; i++) {
		free(t->v[i].path);
		free(t->v[i].link);
		free(t->v[i].hardlink);
	}
	free(t->v);
	if (t->fd >= 0)
		close(t->fd);
	t->v = NULL;
	t->n = t->cap = 0;
	t->fd = -1;
}

static int tree_add(struct tree *t, const char *path, const struct stat *sb)
{
	int rc;

	if (t->n >= PUSH_ENTRIES_MAX)
		return cfs_error_set(CFS_EUNSAFE,
				     "more than %d entries to merge",
				     PUSH_ENTRIES_MAX);
	rc = cfs_array_grow(&t->v, &t->cap, t->n, sizeof(*t->v));
	if (rc)
		return rc;
	t->v[t->n].path = cfs_strdup(path);
	if (!t->v[t->n].path)
		return CFS_ENOMEM;
	t->v[t->n].mode = sb->st_mode;
	t->v[t->n].size = sb->st_size;
	t->v[t->n].mtime = sb->st_mtim;
	t->v[t->n].sha256[0] = '\0';
	t->v[t->n].link = t->v[t->n].hardlink = NULL;
	t->v[t->n].seq = t->n;
	if (t->hashes && S_ISREG(sb->st_mode))
		(void)cfs_inode_hashes_lookup(t->hashes, sb, t->v[t->n].sha256);
	t->n++;
	return 0;
}

/* True when rel is merged: not excluded by the policy, not under cache/. */
static bool managed(const struct cfs_policy *pol, const char *rel)
{
	return strcmp(rel, "cache") != 0 && strncmp(rel, "cache/", 6) != 0 &&
	       !cfs_policy_excluded(pol, rel);
}

static int walk(struct tree *t, const struct cfs_policy *pol, int dfd,
		const char *rel)
{
	DIR *d;
	struct dirent *de;
	int rc = 0, fd;

	fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return cfs_error_errno(errno, "opening %s", rel);
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return cfs_error_errno(errno, "reading %s", rel);
	}
	while (!rc && (de = readdir(d))) {
		struct stat sb;
		char *p;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		p = cfs_asprintf("%s/%s", rel, de->d_name);
		if (!p) {
			rc = CFS_ENOMEM;
			break;
		}
		/* sb is set only for a managed entry */
		if (!managed(pol, p)) {
			free(p);
			continue;
		}
		if (fstatat(dfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW))
			rc = cfs_error_errno(errno, "stat %s", p);
		else if (S_ISREG(sb.st_mode) || S_ISLNK(sb.st_mode) ||
			 S_ISDIR(sb.st_mode))
			rc = tree_add(t, p, &sb);
		if (!rc && S_ISDIR(sb.st_mode) && !cfs_policy_prunes(pol, p)) {
			int cfd = openat(dfd, de->d_name,
					 O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
						 O_CLOEXEC);

			if (cfd < 0) {
				rc = cfs_error_errno(errno, "opening %s", p);
			} else {
				rc = walk(t, pol, cfd, p);
				close(cfd);
			}
		}
		free(p);
	}
	closedir(d);
	return rc;
}

static int ent_cmp(const void *a, const void *b)
{
	return strcmp(((const struct ent *)a)->path,
		      ((const struct ent *)b)->path);
}

/* Loads contextsdk.json and the policy roots of the directory path. */
static int tree_load(struct tree *t, const struct cfs_policy *pol,
		     const char *path)
{
	int rc = 0;

	t->fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (t->fd < 0)
		return cfs_error_errno(errno, "opening %s", path);
	for (size_t i = 0; !rc && i <= pol->nroots; i++) {
		const char *top = i ? pol->roots[i - 1] : CFS_CONTEXT_JSON;
		struct stat sb;
		int cfd;

		if (strchr(top, '/') || !managed(pol, top) ||
		    fstatat(t->fd, top, &sb, AT_SYMLINK_NOFOLLOW))
			continue;
		if (!S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode) &&
		    !S_ISLNK(sb.st_mode))
			continue;
		rc = tree_add(t, top, &sb);
		if (rc || !S_ISDIR(sb.st_mode))
			continue;
		cfd = openat(t->fd, top,
			     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (cfd < 0)
			return cfs_error_errno(errno, "opening %s", top);
		rc = walk(t, pol, cfd, top);
		close(cfd);
	}
	if (!rc && t->n)
		qsort(t->v, t->n, sizeof(*t->v), ent_cmp);
	return rc;
}

/*
 * Opens the parent directory of rel below rootfd, one component at a
 * time with O_NOFOLLOW (a symlink on the way is ENOTDIR/ELOOP, never
 * followed). create: make missing directories (0755). *leaf points into
 * rel. Returns the fd or -errno.
 */
static int open_parent(int rootfd, const char *rel, bool create,
		       const char **leaf)
{
	const char *p = rel, *slash;
	int fd = dup(rootfd);

	if (fd < 0)
		return -errno;
	while ((slash = strchr(p, '/'))) {
		char name[256];
		size_t n = (size_t)(slash - p);
		int nfd;

		if (n == 0 || n >= sizeof(name)) {
			close(fd);
			return -ENAMETOOLONG;
		}
		memcpy(name, p, n);
		name[n] = '\0';
		nfd = openat(fd, name,
			     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (nfd < 0 && errno == ENOENT && create) {
			if (mkdirat(fd, name, 0755) && errno != EEXIST) {
				int e = errno;

				close(fd);
				return -e;
			}
			nfd = openat(fd, name,
				     O_RDONLY | O_DIRECTORY | O_NOFOLLOW |
					     O_CLOEXEC);
		}
		if (nfd < 0) {
			int e = errno == ELOOP ? ENOTDIR : errno;

			close(fd);
			return -e;
		}
		close(fd);
		fd = nfd;
		p = slash + 1;
	}
	*leaf = p;
	return fd;
}

/* lstat of rel below rootfd without following any symlink; false = absent */
static bool stat_rel(int rootfd, const char *rel, struct stat *sb)
{
	const char *leaf;
	int pfd = open_parent(rootfd, rel, false, &leaf);
	bool ok;

	if (pfd < 0)
		return false;
	ok = fstatat(pfd, leaf, sb, AT_SYMLINK_NOFOLLOW) == 0;
	close(pfd);
	return ok;
}

static int open_rel(int rootfd, const char *rel)
{
	const char *leaf;
	int pfd = open_parent(rootfd, rel, false, &leaf), fd;

	if (pfd < 0)
		return -1;
	fd = openat(pfd, leaf, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	close(pfd);
	return fd;
}

static char *readlink_rel(int rootfd, const char *rel)
{
	const char *leaf;
	char buf[4096];
	int pfd = open_parent(rootfd, rel, false, &leaf);
	ssize_t n;

	if (pfd < 0)
		return NULL;
	n = readlinkat(pfd, leaf, buf, sizeof(buf) - 1);
	close(pfd);
	if (n < 0)
		return NULL;
	return cfs_strndup(buf, (size_t)n);
}

/* Byte-for-byte equality of two regular files (same size known). */
static bool same_content(int afd, const char *a, int bfd, const char *b)
{
	char x[65536], y[65536];
	int fa = open_rel(afd, a), fb = open_rel(bfd, b);
	bool same = fa >= 0 && fb >= 0;

	while (same) {
		size_t gx = 0, gy = 0;

		if (cfs_read_all(fa, x, sizeof(x), &gx) ||
		    cfs_read_all(fb, y, sizeof(y), &gy) || gx != gy ||
		    memcmp(x, y, gx)) {
			same = false;
			break;
		}
		if (gx < sizeof(x))
			break;
	}
	if (fa >= 0)
		close(fa);
	if (fb >= 0)
		close(fb);
	return same;
}

/*
 * What the sandbox's extractor (python tarfile, filter='data') makes of a
 * file mode: group/other write and set-id bits dropped, owner rw added,
 * x bits dropped when the owner has none. A sandbox file whose mode equals
 * this of the base's did not chmod: the mount keeps its mode.
 */
static mode_t sandbox_mode(mode_t m)
{
	m &= 0755;
	if (!(m & 0100))
		m &= ~(mode_t)0111;
	return m | 0600;
}

/* A side of the merge: one entry (or none) of a tree. */
struct side {
	bool present;
	struct stat sb;
	int rootfd;
	const char *path;
	const char *sha256; /* regular file: its hash when known, else NULL */
	const char *link; /* symlink target when known, else read */
};

static bool same_link(const struct side *a, const struct side *b)
{
	char *x = a->link ? cfs_strdup(a->link)
			  : readlink_rel(a->rootfd, a->path);
	char *y = b->link ? cfs_strdup(b->link)
			  : readlink_rel(b->rootfd, b->path);
	bool same = x && y && strcmp(x, y) == 0;

	free(x);
	free(y);
	return same;
}

/*
 * Equality of two sides. loose_mode: a file mode also matches what the
 * sandbox's extractor makes of the other one (comparing with the sandbox).
 * Directories compare by type only: their modes are not merged.
 */
static bool same_side(const struct side *a, const struct side *b,
		      bool loose_mode)
{
	mode_t ma, mb;

	if (a->present != b->present)
		return false;
	if (!a->present)
		return true;
	if ((a->sb.st_mode & S_IFMT) != (b->sb.st_mode & S_IFMT))
		return false;
	if (S_ISDIR(a->sb.st_mode))
		return true;
	if (S_ISLNK(a->sb.st_mode))
		return same_link(a, b);
	ma = a->sb.st_mode & 07777;
	mb = b->sb.st_mode & 07777;
	if (ma != mb && !(loose_mode && sandbox_mode(ma) == mb))
		return false;
	if (a->sb.st_size != b->sb.st_size)
		return false;
	/* both hashed while they were extracted: no need to read them */
	if (a->sha256 && b->sha256)
		return strcmp(a->sha256, b->sha256) == 0;
	/* one side only listed (the base): hash the other one */
	if (a->sha256 || b->sha256) {
		const struct side *r = a->sha256 ? b : a;
		char h[65];
		int fd = open_rel(r->rootfd, r->path);
		bool same = fd >= 0 && cfs_sha256_fd(h, fd) == 0 &&
			    strcmp(h, a->sha256 ? a->sha256 : b->sha256) == 0;

		if (fd >= 0)
			close(fd);
		return same;
	}
	return same_content(a->rootfd, a->path, b->rootfd, b->path);
}

/* ------------------------------------------------------------------ */
/* Applying to the mount */

enum action { ACT_SKIP, ACT_APPLY, ACT_CONFLICT };

struct item {
	const char *path;
	struct side b, t, o; /* o.sb: the mount's entry when decided */
	enum action act;
};

struct merge {
	struct cli *cli;
	int mountfd;
	cJSON *conflicts; /* [{path, kind, sandboxCopy}] */
	unsigned added, modified, deleted, kept;
	int error; /* first failure to apply (reported, merge continues) */
	const struct item *items; /* every path of the merge, sorted */
	size_t nitems;
};

/* What became of one change applied to the mount. */
enum outcome {
	OUT_APPLIED,
	OUT_RACED, /* the mount changed since the decision: a conflict */
	OUT_NOTHING /* already so in the mount */
};

static void merge_fail(struct merge *m, const char *what, const char *path,
		       int err)
{
	cli_warn(m->cli, "could not %s %s in the mount: %s", what, path,
		 strerror(err));
	if (!m->error)
		m->error =
			cfs_error_errno(err, "%s %s in the mount", what, path);
}

static bool in_merge(const struct merge *m, const char *path)
{
	size_t lo = 0, hi = m->nitems;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(path, m->items[mid].path);

		if (c == 0)
			return true;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return false;
}

/*
 * Whether the mount's entry is still the one the merge was decided on:
 * same inode, type, size and mtime. Not ctime: the daemon's own commits
 * move it (the snapshot hard-links every file: fuse/snapshot.c)
 * while the kernel may still answer with the cached value, so it would
 * make every file committed meanwhile a conflict; and a rename moves it,
 * which the check after a swap must ignore. What this misses is a rewrite
 * that restores size and mtime on purpose (touch -r, cp -p over it).
 */
static bool same_entry(const struct stat *now, const struct stat *was)
{
	return now->st_ino == was->st_ino &&
	       (now->st_mode & S_IFMT) == (was->st_mode & S_IFMT) &&
	       now->st_size == was->st_size &&
	       now->st_mtim.tv_sec == was->st_mtim.tv_sec &&
	       now->st_mtim.tv_nsec == was->st_mtim.tv_nsec;
}

/* A name for our own entries while they are swapped in or out. */
static void tmp_name(char *buf, size_t size)
{
	char hex[17];

	cfs_random_hex(hex, 8);
	snprintf(buf, size, ".contextfs-push-%s", hex);
}

/*
 * Creates theirs' file or symlink as name in pfd, never replacing
 * anything (O_EXCL; symlinkat does not replace): EEXIST when the name is
 * taken. *made: the new entry's stat. What a failure leaves half-made is
 * removed again.
 */
static int make_entry(struct stat *made, const struct side *t, int pfd,
		      const char *name, mode_t mode)
{
	int in = -1, out = -1, rc = 0;

	if (S_ISLNK(t->sb.st_mode)) {
		char *target = readlink_rel(t->rootfd, t->path);

		if (!target)
			return EIO;
		if (symlinkat(target, pfd, name))
			rc = errno;
		else if (fstatat(pfd, name, made, AT_SYMLINK_NOFOLLOW))
			rc = errno;
		if (rc && rc != EEXIST)
			(void)unlinkat(pfd, name, 0);
		free(target);
		return rc;
	}
	in = open_rel(t->rootfd, t->path);
	if (in < 0)
		return errno;
	out = openat(pfd, name,
		     O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
		     0600);
	if (out < 0) {
		rc = errno;
		close(in);
		return rc;
	}
	for (;;) {
		char buf[65536];
		ssize_t n = read(in, buf, sizeof(buf));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = errno;
			break;
		}
		if (n == 0)
			break;
		if (cfs_write_all(out, buf, (size_t)n)) {
			rc = EIO;
			break;
		}
	}
	if (!rc && fchmod(out, mode & 07777))
		rc = errno;
	if (!rc) {
		struct timespec ts[2] = {t->sb.st_mtim, t->sb.st_mtim};

		(void)futimens(out, ts);
	}
	if (!rc && fstat(out, made))
		rc = errno;
	if (close(out) && !rc)
		rc = errno;
	if (rc)
		(void)unlinkat(pfd, name, 0);
	close(in);
	return rc;
}

/*
 * Writes theirs beside its path as a conflict copy: NAME.contextfs-sandbox,
 * else NAME.contextfs-sandbox.1, .2, ...: the first name that is neither
 * taken in the mount (an existing entry, an earlier copy not yet reviewed
 * included, is never replaced or removed) nor a path of this merge (the
 * sandbox may have made that name itself). *out: the name used.
 */
static int put_copy(char **out, struct merge *m, const struct side *t)
{
	const char *leaf;
	int pfd = open_parent(m->mountfd, t->path, true, &leaf);
	int err = EEXIST;

	*out = NULL;
	if (pfd < 0)
		return -pfd;
	for (unsigned i = 0; err == EEXIST && i <= CONFLICT_COPIES_MAX; i++) {
		char *rel =
			i ? cfs_asprintf("%s%s.%u", t->path, CONFLICT_SUFFIX, i)
			  : cfs_asprintf("%s%s", t->path, CONFLICT_SUFFIX);
		struct stat made;

		if (!rel) {
			err = ENOMEM;
			break;
		}
		if (!in_merge(m, rel))
			err = make_entry(&made, t, pfd, rel + (leaf - t->path),
					 t->sb.st_mode);
		if (!err)
			*out = rel;
		else
			free(rel);
	}
	close(pfd);
	return err;
}

static void add_conflict(struct merge *m, const char *path, const char *kind,
			 const char *copy)
{
	cJSON *c = cJSON_CreateObject();

	if (c) {
		cJSON_AddStringToObject(c, "path", path);
		cJSON_AddStringToObject(c, "kind", kind);
		cli_json_add_str_or_null(c, "sandboxCopy", copy);
		cJSON_AddItemToArray(m->conflicts, c);
	}
	if (copy)
		fprintf(stderr,
			"contextfs-push: conflict: %s: %s; the mount's "
			"version is kept, the sandbox's is in %s\n",
			path, kind, copy);
	else
		fprintf(stderr,
			"contextfs-push: conflict: %s: %s; the mount's "
			"version is kept\n",
			path, kind);
}

/* Both sides changed path differently: keep ours, put theirs beside it. */
static void conflict(struct merge *m, const struct side *b,
		     const struct side *t, const struct side *o)
{
	const char *kind = !t->present	 ? "deleted in the sandbox, changed "
					   "in the mount"
			   : !o->present ? "changed in the sandbox, deleted "
					   "in the mount"
			   : b->present	 ? "changed in the sandbox and in "
					   "the mount"
					 : "added in the sandbox and in the "
					   "mount";
	char *copy = NULL;

	if (t->present && !S_ISDIR(t->sb.st_mode)) {
		int err = put_copy(&copy, m, t);

		if (err)
			merge_fail(m, "write the sandbox's copy of", t->path,
				   err);
	}
	add_conflict(m, t->path, kind, copy);
	free(copy);
}

/* The mount's entry at leaf changed after the decision: a conflict. */
static void raced(struct merge *m, const struct item *it, int pfd,
		  const char *leaf)
{
	struct side now = it->o;

	now.present = fstatat(pfd, leaf, &now.sb, AT_SYMLINK_NOFOLLOW) == 0;
	conflict(m, &it->b, &it->t, &now);
}

/*
 * Replaces the mount's file or symlink at leaf, decided on as it->o, with
 * theirs (a file, a symlink or an empty directory), unless it changed
 * since. Check, then swap: theirs is made complete under a temporary name
 * in the same directory and exchanged with the entry (RENAME_EXCHANGE, so
 * a reader sees the old or the new entry, never a partial file, and an
 * edit cannot land between the check and a truncation); the displaced
 * entry is checked again and, if the user rewrote or replaced it in
 * between, exchanged back. Not seen: a write through a descriptor opened
 * before the swap that lands after the second check, which no scheme by
 * path can see.
 */
static int replace_entry(enum outcome *res, struct merge *m,
			 const struct item *it, int pfd, const char *leaf,
			 mode_t mode)
{
	bool dir = S_ISDIR(it->t.sb.st_mode);
	struct stat now, made;
	char tmp[48];
	int rc = 0;

	*res = OUT_RACED;
	if (fstatat(pfd, leaf, &now, AT_SYMLINK_NOFOLLOW) ||
	    !same_entry(&now, &it->o.sb))
		return 0;
	tmp_name(tmp, sizeof(tmp));
	if (!dir)
		rc = make_entry(&made, &it->t, pfd, tmp, mode);
	else if (mkdirat(pfd, tmp, mode & 0777) ||
		 fstatat(pfd, tmp, &made, AT_SYMLINK_NOFOLLOW))
		rc = errno;
	if (rc)
		return rc;
	if (renameat2(pfd, tmp, pfd, leaf, RENAME_EXCHANGE)) {
		rc = errno;
		(void)unlinkat(pfd, tmp, dir ? AT_REMOVEDIR : 0);
		return rc == ENOENT ? 0 : rc; /* removed in the mount */
	}
	if (fstatat(pfd, tmp, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
	    same_entry(&now, &it->o.sb)) {
		*res = OUT_APPLIED;
		return unlinkat(pfd, tmp, 0) ? errno : 0;
	}
	if (renameat2(pfd, tmp, pfd, leaf, RENAME_EXCHANGE) == 0 &&
	    fstatat(pfd, tmp, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
	    now.st_ino == made.st_ino)
		return unlinkat(pfd, tmp, dir ? AT_REMOVEDIR : 0) ? errno : 0;
	cli_warn(m->cli,
		 "%s kept changing in the mount while it was merged: check "
		 "it and %s beside it",
		 it->path, tmp);
	return EBUSY;
}

/*
 * Removes the mount's file or symlink at leaf, decided on as it->o,
 * unless it changed since: checked, moved aside to a temporary name (a
 * change cannot land between the check and the removal), checked again,
 * unlinked; a changed entry is moved back.
 */
static int delete_entry(enum outcome *res, struct merge *m,
			const struct item *it, int pfd, const char *leaf)
{
	struct stat now;
	char tmp[48];

	*res = OUT_NOTHING;
	if (fstatat(pfd, leaf, &now, AT_SYMLINK_NOFOLLOW))
		return errno == ENOENT ? 0 : errno;
	*res = OUT_RACED;
	if (!same_entry(&now, &it->o.sb))
		return 0;
	tmp_name(tmp, sizeof(tmp));
	if (renameat2(pfd, leaf, pfd, tmp, RENAME_NOREPLACE)) {
		*res = OUT_NOTHING;
		return errno == ENOENT ? 0 : errno;
	}
	if (fstatat(pfd, tmp, &now, AT_SYMLINK_NOFOLLOW) == 0 &&
	    same_entry(&now, &it->o.sb)) {
		*res = OUT_APPLIED;
		return unlinkat(pfd, tmp, 0) ? errno : 0;
	}
	if (renameat2(pfd, tmp, pfd, leaf, RENAME_NOREPLACE) == 0)
		return 0;
	cli_warn(m->cli,
		 "%s changed in the mount while it was removed: the mount's "
		 "version is now %s beside it",
		 it->path, tmp);
	return EBUSY;
}

static void remove_entry(struct merge *m, const struct item *it)
{
	const char *leaf;
	int pfd = open_parent(m->mountfd, it->path, false, &leaf), err;
	enum outcome res;

	if (pfd < 0) {
		merge_fail(m, "remove", it->path, -pfd);
		return;
	}
	if (!S_ISDIR(it->o.sb.st_mode)) {
		err = delete_entry(&res, m, it, pfd, leaf);
		if (err)
			merge_fail(m, "remove", it->path, err);
		else if (res == OUT_RACED)
			raced(m, it, pfd, leaf);
		else if (res == OUT_APPLIED)
			m->deleted++;
	} else if (unlinkat(pfd, leaf, AT_REMOVEDIR) && errno != ENOENT) {
		/* rmdir: removes nothing the user could have added since */
		if (errno == ENOTEMPTY || errno == EEXIST) {
			/* The mount added files there (or keeps excluded). */
			m->kept++;
			cli_warn(m->cli,
				 "%s was removed in the sandbox but is not "
				 "empty in the mount; kept",
				 it->path);
		} else {
			merge_fail(m, "remove", it->path, errno);
		}
	}
	close(pfd);
}

/*
 * Adds theirs where the mount had nothing when the merge was decided:
 * O_EXCL, so what the user made there since is never replaced.
 */
static int add_entry(enum outcome *res, const struct item *it, int pfd,
		     const char *leaf, mode_t mode)
{
	struct stat made;
	int rc;

	*res = OUT_APPLIED;
	if (!S_ISDIR(it->t.sb.st_mode)) {
		rc = make_entry(&made, &it->t, pfd, leaf, mode);
	} else if (mkdirat(pfd, leaf, mode & 0777) == 0) {
		return 0;
	} else {
		rc = errno;
		/* made by the mount too: the two merge */
		if (rc == EEXIST &&
		    fstatat(pfd, leaf, &made, AT_SYMLINK_NOFOLLOW) == 0 &&
		    S_ISDIR(made.st_mode))
			return 0;
	}
	if (rc == EEXIST)
		*res = OUT_RACED;
	return rc == EEXIST ? 0 : rc;
}

/* For a path the sandbox changed (theirs differs from the base). */
static void decide(struct item *it)
{
	/* both made the same change: nothing to do */
	if (same_side(&it->o, &it->t, true))
		it->act = ACT_SKIP;
	else if (same_side(&it->b, &it->o, false))
		it->act = ACT_APPLY;
	else
		it->act = ACT_CONFLICT;
}

static void apply(struct merge *m, const struct item *it)
{
	bool dir = S_ISDIR(it->t.sb.st_mode);
	enum outcome res;
	const char *leaf;
	mode_t mode;
	int pfd, err;

	if (dir && it->o.present && S_ISDIR(it->o.sb.st_mode))
		return;
	/* A chmod in the sandbox is applied; the extractor's own is not. */
	mode = it->t.sb.st_mode & 07777;
	if (!dir && it->b.present && S_ISREG(it->b.sb.st_mode) &&
	    sandbox_mode(it->b.sb.st_mode & 07777) == mode)
		mode = it->b.sb.st_mode & 07777;
	pfd = open_parent(m->mountfd, it->path, true, &leaf);
	if (pfd < 0) {
		merge_fail(m, dir ? "create" : "write", it->path, -pfd);
		return;
	}
	/* a directory of ours was removed first (or kept: not empty) */
	if (!it->o.present || S_ISDIR(it->o.sb.st_mode))
		err = add_entry(&res, it, pfd, leaf, mode);
	else
		err = replace_entry(&res, m, it, pfd, leaf, mode);
	if (err)
		merge_fail(m, dir ? "create" : "write", it->path, err);
	else if (res == OUT_RACED)
		raced(m, it, pfd, leaf);
	else if (!dir && it->o.present && !S_ISDIR(it->o.sb.st_mode))
		m->modified++;
	else if (!dir)
		m->added++;
	close(pfd);
}

/*
 * Test-only (tests/integration/test_push.py): with
 * CONTEXTFS_TEST_PUSH_PAUSE_FILE=PATH in the environment, the merge
 * creates PATH once every path is decided and waits, a minute at most,
 * until PATH is gone before it applies anything, so a test can change the
 * mount in exactly that window. Unset, as outside the tests, it does
 * nothing; it never replaces an existing PATH.
 */
static void test_pause(void)
{
	cli_test_pause("CONTEXTFS_TEST_PUSH_PAUSE_FILE");
}

/*
 * The three-way merge of the managed roots. Decisions are taken first on
 * the state of all three trees; removals then run children first, and
 * creations and updates parents first. The mount stays writable
 * throughout, so every change re-checks the mount's entry against what
 * was decided on (add_entry, replace_entry, delete_entry) and turns into
 * a conflict when the user got there first.
 */
static int merge_trees(struct merge *m, const struct tree *base,
		       const struct tree *theirs)
{
	struct item *items = NULL;
	size_t n = 0, i = 0, j = 0;
	int rc = 0;

	if (base->n + theirs->n == 0)
		return 0;
	items = cfs_calloc(base->n + theirs->n, sizeof(*items));
	if (!items)
		return CFS_ENOMEM;
	/* the sorted union of both trees' paths */
	while (i < base->n || j < theirs->n) {
		int c = i >= base->n ? 1
			: j >= theirs->n
				? -1
				: strcmp(base->v[i].path, theirs->v[j].path);
		struct item *it = &items[n++];

		it->path = c <= 0 ? base->v[i].path : theirs->v[j].path;
		it->b.rootfd = base->fd;
		it->t.rootfd = theirs->fd;
		it->o.rootfd = m->mountfd;
		it->b.path = it->t.path = it->o.path = it->path;
		if (c <= 0) {
			it->b.present = true;
			it->b.sb.st_mode = base->v[i].mode;
			it->b.sb.st_size = base->v[i].size;
			it->b.sb.st_mtim = base->v[i].mtime;
			it->b.sha256 =
				base->v[i].sha256[0] ? base->v[i].sha256 : NULL;
			it->b.link = base->v[i].link;
			i++;
		}
		if (c >= 0) {
			it->t.present = true;
			it->t.sb.st_mode = theirs->v[j].mode;
			it->t.sb.st_size = theirs->v[j].size;
			it->t.sb.st_mtim = theirs->v[j].mtime;
			it->t.sha256 = theirs->v[j].sha256[0]
					       ? theirs->v[j].sha256
					       : NULL;
			j++;
		}
		/* what the sandbox left alone needs no look at the mount
		 * (each look is a walk of FUSE lookups) */
		if (same_side(&it->b, &it->t, true)) {
			it->act = ACT_SKIP;
			continue;
		}
		it->o.present = stat_rel(m->mountfd, it->path, &it->o.sb);
		decide(it);
	}
	m->items = items;
	m->nitems = n;
	test_pause();
	/* removals (theirs deleted it, or changed its type), deepest first */
	for (size_t k = n; k-- > 0;) {
		struct item *it = &items[k];

		if (it->act != ACT_APPLY || !it->o.present)
			continue;
		if (!it->t.present ||
		    (S_ISDIR(it->o.sb.st_mode) && !S_ISDIR(it->t.sb.st_mode)))
			remove_entry(m, it);
	}
	for (size_t k = 0; k < n; k++) {
		struct item *it = &items[k];

		if (it->act == ACT_CONFLICT)
			conflict(m, &it->b, &it->t, &it->o);
		else if (it->act == ACT_APPLY && it->t.present)
			apply(m, it);
	}
	m->items = NULL;
	m->nitems = 0;
	free(items);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Kept sandboxes: <cache>/contextfs/push/<ID>/ */

static bool sandbox_id_valid(const char *s)
{
	size_t n = strlen(s);

	if (n < 6 || n > 64 || strncmp(s, "push-", 5) != 0)
		return false;
	for (size_t i = 5; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') ||
		      (s[i] >= '0' && s[i] <= '9')))
			return false;
	return true;
}

static char *state_dir(const char *sid)
{
	char *cache = cfs_mount_default_cache();
	char *p =
		cache ? cfs_asprintf("%s/contextfs/push/%s", cache, sid) : NULL;

	free(cache);
	return p;
}

/* The local sandbox root inside a kept sandbox's state directory. */
static char *local_root_in(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char *root = NULL;

	if (!d)
		return NULL;
	while ((de = readdir(d)))
		if (strncmp(de->d_name, "contextfs-sandbox-", 18) == 0) {
			root = cfs_asprintf("%s/%s", dir, de->d_name);
			break;
		}
	closedir(d);
	return root;
}

static const char *jstr(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static int state_read(cJSON **out, const char *dir)
{
	char *text = NULL;
	size_t len = 0;
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc;

	if (dfd < 0)
		return errno == ENOENT
			       ? cfs_error_set(CFS_ENOTFOUND,
					       "no kept sandbox %s (%s)",
					       strrchr(dir, '/') + 1, dir)
			       : cfs_error_errno(errno, "opening %s", dir);
	rc = cfs_read_file_at(&text, &len, dfd, "state.json", STATE_MAX);
	close(dfd);
	if (rc)
		return rc;
	*out = cJSON_Parse(text);
	free(text);
	if (!*out || !cJSON_IsObject(*out)) {
		cJSON_Delete(*out);
		*out = NULL;
		return cfs_error_set(CFS_ECORRUPT, "%s/state.json is corrupt",
				     dir);
	}
	return 0;
}

/*
 * Records the sandbox and the next merge's base (the tree in treefd, as
 * pulled from the sandbox or pushed into it) as a plaintext bundle.
 */
static int state_write(const char *dir, const cJSON *state, int treefd,
		       const struct cfs_policy *pol)
{
	char *text = cJSON_Print(state);
	int dfd = -1, bfd = -1, rc;

	if (!text)
		return CFS_ENOMEM;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		rc = cfs_error_errno(errno, "opening %s", dir);
		goto out;
	}
	bfd = openat(dfd, "base.tar.zst.tmp",
		     O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
		     0600);
	if (bfd < 0) {
		rc = cfs_error_errno(errno, "creating %s/base.tar.zst", dir);
		goto out;
	}
	rc = cfs_bundle_pack(treefd, pol, NULL, 0, cfs_bundle_fd_sink, &bfd,
			     NULL);
	if (!rc && renameat(dfd, "base.tar.zst.tmp", dfd, "base.tar.zst"))
		rc = cfs_error_errno(errno, "writing %s/base.tar.zst", dir);
	if (rc) /* no plaintext left behind */
		(void)unlinkat(dfd, "base.tar.zst.tmp", 0);
	if (!rc)
		rc = cfs_write_file_at(dfd, "state.json", text, strlen(text),
				       0600, true);
out:
	if (bfd >= 0)
		close(bfd);
	if (dfd >= 0)
		close(dfd);
	free(text);
	return rc;
}

static int list_bundle(struct tree *base, const struct cfs_policy *pol, int fd);

/* A kept sandbox's base: the listing of its state's base.tar.zst. */
static int base_from_state(const char *dir, struct tree *base,
			   const struct cfs_policy *pol)
{
	char *p = cfs_asprintf("%s/base.tar.zst", dir);
	int fd, rc;

	if (!p)
		return CFS_ENOMEM;
	fd = open(p, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	free(p);
	if (fd < 0)
		return cfs_error_errno(errno, "opening %s/base.tar.zst", dir);
	rc = list_bundle(base, pol, fd);
	close(fd);
	return rc;
}

/* ------------------------------------------------------------------ */

static int mount_op(cJSON **reply, const char *mp, const char *op,
		    const char *msg)
{
	cJSON *req = cJSON_CreateObject();
	int rc;

	if (!req)
		return CFS_ENOMEM;
	cJSON_AddStringToObject(req, "op", op);
	if (msg)
		cJSON_AddStringToObject(req, "message", msg);
	rc = cfs_mount_request(reply, mp, req);
	cJSON_Delete(req);
	return rc;
}

static double jnum(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	return cJSON_IsNumber(v) ? v->valuedouble : -1;
}

/* The words after the mountpoint, each single-quoted, joined by spaces. */
static int build_command(char **out, char **words, struct cli *cli)
{
	struct cfs_buf b = CFS_BUF_INIT, w = CFS_BUF_INIT;
	int rc = cfs_buf_puts(&b, "");

	rc = rc ? rc : cfs_buf_puts(&w, "");
	for (int i = 1; i < cli->argc && !rc; i++) {
		if (i > 1)
			rc = cfs_buf_puts(&b, " ");
		if (!rc)
			rc = cfs_shell_quote(&b, cli->argv[i]);
		if (!rc && w.len < MESSAGE_MAX)
			rc = cfs_buf_printf(&w, "%s%s", i > 1 ? " " : "",
					    cli->argv[i]);
	}
	if (rc) {
		cfs_buf_free(&b);
		cfs_buf_free(&w);
		return rc;
	}
	*out = cfs_buf_detach(&b);
	*words = cfs_buf_detach(&w);
	if (strlen(*words) > MESSAGE_MAX)
		memcpy(*words + MESSAGE_MAX - 3, "...", 4);
	return 0;
}

/*
 * Opens the push's sandbox runtime: the kept one of a state (local or
 * another runtime with the same options), a new kept local one, or the
 * runtime the options name. Runs on a thread while the base is fetched.
 */
struct sandbox_open {
	struct cli *cli;
	cJSON *state;
	const char *sid, *sdir, *id;
	bool keep;
	struct cfs_provisioner *prov; /* out */
	struct cfs_runtime *rt; /* out */
	char *root; /* out: a kept local sandbox's root */
	int rc, code; /* out, with the message (threads keep their own) */
	char *msg;
};

static int sandbox_open_do(struct sandbox_open *x)
{
	struct cli *cli = x->cli;
	cJSON *state = x->state;
	const char *sid = x->sid, *sdir = x->sdir, *id = x->id;
	const char *want = cli_opt(cli, RT_OPT_RUNTIME);
	const char *had = state ? jstr(state, "runtime") : NULL;
	bool keep = x->keep;
	int rc;

	if (had && want && strcmp(had, want) != 0) {
		return cfs_error_set(CFS_EINVAL,
				     "sandbox %s runs on %s, not %s", sid, had,
				     want);
	}
	if (!had && keep && !want) {
		return cfs_error_set(CFS_EINVAL,
				     "--keep needs --runtime local|ssh");
	}
	if (had && strcmp(had, "local") == 0) {
		x->root = local_root_in(sdir);
		rc = x->root ? cfs_local_runtime_open(&x->rt, NULL, x->root)
			     : cfs_error_set(CFS_ENOTFOUND,
					     "sandbox %s is gone", sid);
	} else if (!had && keep && strcmp(want, "local") == 0) {
		struct cfs_local_opts lo = {0};
		const char *mode = cli_opt(cli, RT_OPT_SANDBOX);

		lo.mode = !mode || !strcmp(mode, "auto") ? CFS_LOCAL_AUTO
			  : !strcmp(mode, "bwrap")	 ? CFS_LOCAL_BWRAP
							 : CFS_LOCAL_PLAIN;
		lo.base_dir = sdir;
		rc = cfs_local_runtime_new(&x->rt, &lo);
	} else {
		if (had && !want) {
			return cfs_error_set(CFS_EINVAL,
					     "sandbox %s runs on %s: "
					     "pass --runtime %s and its "
					     "options again",
					     sid, had, had);
		}
		rc = cli_runtime_open(cli, id, &x->prov, &x->rt);
	}
	if (rc)
		return rc;
	if (state && jstr(state, "runtimeId") &&
	    strcmp(jstr(state, "runtimeId"), x->rt->id) != 0)
		return cfs_error_set(CFS_EINVAL, "sandbox %s is on %s, not %s",
				     sid, jstr(state, "runtimeId"), x->rt->id);
	return 0;
}

static void *sandbox_open_main(void *arg)
{
	struct sandbox_open *x = arg;

	x->rc = sandbox_open_do(x);
	if (x->rc) {
		x->code = cfs_error_last_code();
		x->msg = cfs_strdup(cfs_error_last());
	}
	return NULL;
}

/*
 * Whether tree_load would list path: below contextsdk.json or a top-level
 * policy root, managed with each of its ancestors, no ancestor below the
 * top pruned.
 */
static bool listed(const struct cfs_policy *pol, const char *path)
{
	size_t top = strcspn(path, "/"), len = strlen(path);
	bool ok = top == strlen(CFS_CONTEXT_JSON) &&
		  strncmp(path, CFS_CONTEXT_JSON, top) == 0;
	char *p;

	for (size_t i = 0; !ok && i < pol->nroots; i++)
		ok = !strchr(pol->roots[i], '/') &&
		     strlen(pol->roots[i]) == top &&
		     strncmp(path, pol->roots[i], top) == 0;
	if (!ok || !(p = cfs_strdup(path)))
		return false;
	/* each prefix ending at a '/' or at the end: p[0..k) */
	for (size_t k = top;; k += 1 + strcspn(path + k + 1, "/")) {
		p[k] = '\0';
		ok = managed(pol, p) &&
		     (k == top || k == len || !cfs_policy_prunes(pol, p));
		p[k] = path[k];
		if (!ok || k == len)
			break;
	}
	free(p);
	return ok;
}

/* The base, listed from its bundle without extracting it. */
struct listing {
	struct tree *t;
	const struct cfs_policy *pol;
	struct ent *regs; /* every regular file, for hard links */
	size_t nregs, cap;
};

/* cfs_member_fn */
static int list_member(void *payload, const struct cfs_member_info *m)
{
	struct listing *l = payload;
	struct stat sb;
	struct ent *e;
	int rc;

	if (m->type == S_IFREG && !m->hardlink) {
		rc = cfs_array_grow(&l->regs, &l->cap, l->nregs,
				    sizeof(*l->regs));
		if (rc)
			return rc;
		e = &l->regs[l->nregs];
		memset(e, 0, sizeof(*e));
		e->path = cfs_strdup(m->path);
		if (!e->path)
			return CFS_ENOMEM;
		e->mode = S_IFREG | m->perm;
		e->size = m->size;
		e->mtime = m->mtime;
		e->seq = l->nregs++;
		if (m->sha256)
			memcpy(e->sha256, m->sha256, sizeof(e->sha256));
	}
	if (!listed(l->pol, m->path))
		return 0;
	memset(&sb, 0, sizeof(sb));
	sb.st_mode = m->type | m->perm;
	sb.st_size = m->size;
	sb.st_mtim = m->mtime;
	rc = tree_add(l->t, m->path, &sb);
	if (rc)
		return rc;
	e = &l->t->v[l->t->n - 1];
	if (m->sha256)
		memcpy(e->sha256, m->sha256, sizeof(e->sha256));
	if (m->link && m->hardlink)
		e->hardlink = cfs_strdup(m->link);
	else if (m->link)
		e->link = cfs_strdup(m->link);
	return m->link && !e->link && !e->hardlink ? CFS_ENOMEM : 0;
}

static void listing_free(struct listing *l)
{
	for (size_t i = 0; i < l->nregs; i++)
		free(l->regs[i].path);
	free(l->regs);
	l->regs = NULL;
	l->nregs = l->cap = 0;
}

/* by path, then archive order */
static int ent_seq_cmp(const void *a, const void *b)
{
	const struct ent *x = a, *y = b;
	int c = strcmp(x->path, y->path);

	return c ? c : x->seq < y->seq ? -1 : x->seq > y->seq;
}

/*
 * Sorts a listing as tree_load does, keeps the last member of a path (as
 * extraction would) and gives hard links their file's mode, size and hash.
 */
static int listing_finish(struct listing *l)
{
	struct tree *t = l->t;
	size_t k = 0;

	if (t->n)
		qsort(t->v, t->n, sizeof(*t->v), ent_seq_cmp);
	if (l->nregs)
		qsort(l->regs, l->nregs, sizeof(*l->regs), ent_seq_cmp);
	for (size_t i = 0; i < t->n; i++) {
		if (i + 1 < t->n &&
		    strcmp(t->v[i].path, t->v[i + 1].path) == 0) {
			free(t->v[i].path);
			free(t->v[i].link);
			free(t->v[i].hardlink);
			continue;
		}
		t->v[k++] = t->v[i];
	}
	t->n = k;
	for (size_t i = 0; i < t->n; i++) {
		struct ent *e = &t->v[i];
		const struct ent *r = NULL;
		size_t lo = 0, hi = l->nregs;

		if (!e->hardlink)
			continue;
		/* the last regular member of that name */
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;

			if (strcmp(l->regs[mid].path, e->hardlink) <= 0)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (lo > 0 && strcmp(l->regs[lo - 1].path, e->hardlink) == 0)
			r = &l->regs[lo - 1];
		if (!r || !r->sha256[0])
			return cfs_error_set(CFS_ECORRUPT,
					     "base: hard link %s to an unknown "
					     "file %s",
					     e->path, e->hardlink);
		e->mode = r->mode;
		e->size = r->size;
		e->mtime = r->mtime;
		memcpy(e->sha256, r->sha256, sizeof(e->sha256));
		free(e->hardlink);
		e->hardlink = NULL;
	}
	return 0;
}

/* base: the listing of the plaintext bundle fd (checked, not extracted). */
static int list_bundle(struct tree *base, const struct cfs_policy *pol, int fd)
{
	struct listing l = {base, pol, NULL, 0, 0};
	struct cfs_unpack_opts uo = {.validate_only = true,
				     .member = list_member,
				     .member_payload = &l};
	int rc = cfs_bundle_unpack(-1, cfs_bundle_fd_source, &fd, &uo, NULL);

	if (!rc)
		rc = listing_finish(&l);
	listing_free(&l);
	return rc;
}

/*
 * The pushed generation, once: its plaintext bundle goes to
 * <tmp>/base.tar.zst (the session uploads it as it is) while the same pass
 * authenticates and checks it and lists it into base, every file hashed:
 * the merge's base, never extracted.
 */
static int fetch_base(char **bundle_out, struct cfs_store *st,
		      struct cfs_keys *keys, const char *ref, const char *tmp,
		      struct tree *base, const struct cfs_policy *pol)
{
	struct listing l = {base, pol, NULL, 0, 0};
	struct cfs_export_opts eo = {.member = list_member,
				     .member_payload = &l};
	char *path = cfs_asprintf("%s/base.tar.zst", tmp);

	int fd, rc;

	*bundle_out = NULL;
	if (!path)
		return CFS_ENOMEM;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = cfs_error_errno(errno, "creating %s", path);
		free(path);
		return rc;
	}
	rc = cfs_context_fetch_bundle_opts(NULL, st, keys, ref, fd, &eo);
	close(fd);
	if (!rc)
		rc = listing_finish(&l);
	listing_free(&l);
	if (rc) {
		unlink(path);
		free(path);
		return rc;
	}
	*bundle_out = path;
	return 0;
}

static int parse_timeout(int64_t *out, const char *s)
{
	uint64_t v = 0;
	const char *p = s;
	int64_t unit = 1000;

	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (uint64_t)(*p - '0');
		if (v > (uint64_t)INT64_MAX / 86400000)
			goto bad;
	}
	if (p == s)
		goto bad;
	if (!strcmp(p, "ms"))
		unit = 1;
	else if (!*p || !strcmp(p, "s"))
		unit = 1000;
	else if (!strcmp(p, "m"))
		unit = 60000;
	else if (!strcmp(p, "h"))
		unit = 3600000;
	else
		goto bad;
	*out = (int64_t)v * unit;
	return 0;
bad:
	return cfs_error_set(CFS_EINVAL, "invalid duration for --timeout: %s",
			     s);
}

static int subdir(int *fd, const char *tmp, const char *name, char **path)
{
	*path = cfs_asprintf("%s/%s", tmp, name);
	if (!*path)
		return CFS_ENOMEM;
	if (mkdir(*path, 0700))
		return cfs_error_errno(errno, "creating %s", *path);
	*fd = open(*path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (*fd < 0)
		return cfs_error_errno(errno, "opening %s", *path);
	return 0;
}

static int run(struct cli *cli)
{
	const char *mp = cli->argv[0];
	const char *sid = cli_opt(cli, OPT_SANDBOX);
	bool keep = cli_flag(cli, OPT_KEEP), pull = cli_flag(cli, OPT_PULL);
	struct cfs_session_opts so = {0};
	struct cfs_run_result res = {0};
	struct cfs_policy pol = {0};
	struct cfs_store *st = NULL;
	struct cfs_keys *keys = NULL;
	struct cfs_manifest *man = NULL;
	struct cfs_provisioner *prov = NULL;
	struct cfs_runtime *rt = NULL;
	struct cfs_session *sess = NULL;
	struct cfs_inode_hashes base_h = {0}, theirs_h = {0};
	struct tree base = {.fd = -1, .hashes = &base_h},
		    theirs = {.fd = -1, .hashes = &theirs_h};
	struct merge m = {0};
	cJSON *status = NULL, *reply = NULL, *state = NULL;
	char *command = NULL, *words = NULL, *tmp = NULL, *sdir = NULL;
	char *base_path = NULL, *theirs_path = NULL, *mount_path = NULL;
	char *base_bundle = NULL;
	char *msg = NULL, *root = NULL, newsid[24];
	struct sandbox_open sbx = {0};
	const char *id;
	int64_t timeout = 0, t0 = cfs_monotonic_ms();
	double base_gen = -1, gen = -1;
	int basefd = -1, theirsfd = -1, rc;
	bool ran = false, new_state = false, dispose = !keep;
	struct sigaction old[2];

	cli_stop_signals_install(old);
	m.mountfd = -1;
	m.cli = cli;

	/* ---- arguments */
	if (!cfs_mount_is_mountpoint(mp)) {
		rc = cfs_error_set(CFS_EINVAL,
				   "%s is not the root of a live contextfs "
				   "mount",
				   mp);
		goto out;
	}
	rc = build_command(&command, &words, cli);
	if (rc)
		goto out;
	if (pull && (cli->argc > 1 || !sid)) {
		rc = cfs_error_set(CFS_EINVAL,
				   "--pull takes --sandbox-id ID and no "
				   "command");
		goto out;
	}
	if (!pull && !*command) {
		rc = cfs_error_set(CFS_EINVAL,
				   "push needs -- COMMAND (or --pull "
				   "--sandbox-id ID)");
		goto out;
	}
	if (sid && !sandbox_id_valid(sid)) {
		rc = cfs_error_set(CFS_EINVAL, "invalid sandbox id: %s", sid);
		goto out;
	}
	if (cli_opt(cli, OPT_TIMEOUT)) {
		rc = parse_timeout(&timeout, cli_opt(cli, OPT_TIMEOUT));
		if (rc)
			goto out;
	}

	/* ---- the mount, the context, the keys */
	rc = mount_op(&status, mp, "status", NULL);
	if (rc)
		goto out;
	id = jstr(status, "id");
	if (!id || cfs_id_check(id)) {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "the mount at %s did not name its context",
				   mp);
		goto out;
	}
	if (strchr(jstr(status, "ref") ? jstr(status, "ref") : "", '@')) {
		rc = cfs_error_set(CFS_EINVAL,
				   "%s is a read-only mount of an older state",
				   mp);
		goto out;
	}
	rc = cli_store_open(cli, &st);
	rc = rc ? rc : cli_manifest_read(cli, &man, st, id);
	rc = rc ? rc : cli_keys(cli, false, &keys);
	rc = rc ? rc : cfs_policy_from_json(&pol, cfs_manifest_policy(man));
	if (rc)
		goto out;
	m.mountfd = open(mp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (m.mountfd < 0) {
		rc = cfs_error_errno(errno, "opening %s", mp);
		goto out;
	}
	m.conflicts = cJSON_CreateArray();
	if (!m.conflicts) {
		rc = CFS_ENOMEM;
		goto out;
	}

	/* ---- private plaintext area (swept like a session's if we die) */
	{
		char prefix[48];

		cfs_sweep_stale_tmpdirs(NULL, "contextfs-session-");
		snprintf(prefix, sizeof(prefix), "contextfs-session-%ld-",
			 (long)getpid());
		rc = cfs_mkdtemp(&tmp, NULL, prefix);
	}
	rc = rc ? rc : subdir(&basefd, tmp, "base", &base_path);
	rc = rc ? rc : subdir(&theirsfd, tmp, "theirs", &theirs_path);
	if (rc)
		goto out;

	/* ---- a kept sandbox's state */
	if (sid) {
		sdir = state_dir(sid);
		if (!sdir) {
			rc = CFS_ENOMEM;
			goto out;
		}
		rc = state_read(&state, sdir);
		if (rc)
			goto out;
		if (!jstr(state, "contextId") ||
		    strcmp(jstr(state, "contextId"), id) != 0) {
			rc = cfs_error_set(CFS_EINVAL,
					   "sandbox %s holds context %s, not "
					   "%s",
					   sid,
					   jstr(state, "contextId")
						   ? jstr(state, "contextId")
						   : "?",
					   id);
			goto out;
		}
	} else if (keep) {
		char hex[9];

		cfs_random_hex(hex, 4);
		snprintf(newsid, sizeof(newsid), "push-%s", hex);
		sid = newsid;
		sdir = state_dir(sid);
		if (!sdir) {
			rc = CFS_ENOMEM;
			goto out;
		}
		rc = cfs_mkdir_p_at(AT_FDCWD, sdir, 0700);
		if (rc)
			goto out;
		new_state = true;
		state = cJSON_CreateObject();
		if (!state) {
			rc = CFS_ENOMEM;
			goto out;
		}
		cJSON_AddStringToObject(state, "sandbox", sid);
		cJSON_AddStringToObject(state, "contextId", id);
	}

	/* ---- the snapshot: a commit of the mount, read back by generation */
	sbx = (struct sandbox_open){cli,  state, sid,  sdir, id, keep,
				    NULL, NULL,	 NULL, 0,    0,	 NULL};
	if (pull) {
		rc = base_from_state(sdir, &base, &pol);
		if (rc)
			goto out;
		base_gen = jnum(state, "baseGeneration");
		sandbox_open_main(&sbx);
	} else {
		pthread_t th;
		int e;

		char ref[CFS_ID_MAX + 32];

		msg = cfs_asprintf("push: snapshot for %s", words);
		rc = msg ? mount_op(&reply, mp, "commit", msg) : CFS_ENOMEM;
		if (rc) {
			cfs_error_prefix("committing %s before the push", mp);
			goto out;
		}
		cfs_log_timing(id, "push: snapshot commit", &t0);
		base_gen = jnum(reply, "generation");
		snprintf(ref, sizeof(ref), "%s@%.0f", id, base_gen);
		/* the runtime opens while the base is fetched */
		e = pthread_create(&th, NULL, sandbox_open_main, &sbx);
		if (e)
			sandbox_open_main(&sbx);
		rc = fetch_base(&base_bundle, st, keys, ref, tmp, &base, &pol);
		if (!e)
			pthread_join(th, NULL);
		if (rc)
			goto out;
		cfs_log_timing(id, "push: fetch the base, open the runtime",
			       &t0);
		cJSON_Delete(reply);
		reply = NULL;
	}

	/* ---- the sandbox (opened above, beside the base's fetch) */
	prov = sbx.prov;
	rt = sbx.rt;
	root = sbx.root;
	sbx.prov = NULL;
	sbx.rt = NULL;
	sbx.root = NULL;
	if (sbx.rc) {
		rc = cfs_error_set(sbx.code ? sbx.code : sbx.rc, "%s",
				   sbx.msg ? sbx.msg
					   : "cannot open the sandbox");
		goto out;
	}
	if (state && jstr(state, "mountPath")) {
		mount_path = cfs_strdup(jstr(state, "mountPath"));
	} else {
		/* A host that is not disposable (ssh) gets its own dir. */
		char hex[9];

		cfs_random_hex(hex, 4);
		mount_path = strcmp(rt->provider, "local") == 0
				     ? cfs_asprintf("%s/%s", rt->mount_base, id)
				     : cfs_asprintf("%s/%s-push-%s",
						    rt->mount_base, id, hex);
	}
	if (!mount_path) {
		rc = CFS_ENOMEM;
		goto out;
	}
	if (new_state) {
		cJSON_AddStringToObject(state, "runtime", rt->provider);
		cJSON_AddStringToObject(state, "runtimeId", rt->id);
		cJSON_AddStringToObject(state, "mountPath", mount_path);
		cJSON_AddStringToObject(state, "mountpoint", mp);
	}
	rt->cancel = &cli_stop_cancel;
	so.mount_path = mount_path;
	so.src_dir = pull ? NULL : base_path;
	so.src_bundle = pull ? NULL : base_bundle;
	so.reuse = pull;
	so.keep_excluded = state && !new_state;
	rc = cfs_session_attach(&sess, st, keys, id, rt, &so);
	if (rc)
		goto out;

	/* ---- run */
	if (!pull) {
		rc = cfs_session_run(&res, sess, command, timeout);
		if (rc)
			goto out;
		ran = true;
		if (!cli->json) {
			if (res.out_len)
				fwrite(res.out, 1, res.out_len, stdout);
			fflush(stdout);
			if (res.err_len)
				fwrite(res.err, 1, res.err_len, stderr);
			fflush(stderr);
		}
	}

	/* ---- pull and merge */
	rc = cfs_session_fetch(sess, theirsfd, &theirs_h);
	rc = rc ? rc : tree_load(&theirs, &pol, theirs_path);
	if (rc)
		goto out;
	cfs_log_timing(id, "push: load the trees", &t0);
	rc = merge_trees(&m, &base, &theirs);
	if (rc)
		goto out;
	cfs_log_timing(id, "push: merge", &t0);

	/* ---- commit the mount */
	free(msg);
	msg = pull ? cfs_asprintf("push: pull from sandbox %s", sid)
		   : cfs_asprintf("push: %s", words);
	rc = msg ? mount_op(&reply, mp, "commit", msg) : CFS_ENOMEM;
	if (rc) {
		cfs_error_prefix("committing the merged changes in %s", mp);
		goto out;
	}
	cfs_log_timing(id, "push: commit the mount", &t0);
	gen = jnum(reply, "generation");
	if (state) {
		cJSON_DeleteItemFromObjectCaseSensitive(state,
							"baseGeneration");
		cJSON_AddNumberToObject(state, "baseGeneration", gen);
		rc = state_write(sdir, state, theirs.fd, &pol);
		if (rc)
			goto out;
	}
	if (m.error)
		rc = cfs_error_set(m.error, "some sandbox changes could not "
					    "be applied to the mount (see "
					    "above)");

out:
	if (rt)
		rt->cancel = NULL; /* cleanup below must run */
	if (sess) {
		int keep_code = cfs_error_last_code();
		char *keep_msg = rc ? cfs_strdup(cfs_error_last()) : NULL;

		cfs_session_detach(sess);
		if (rc)
			cfs_error_set(keep_code ? keep_code : rc, "%s",
				      keep_msg ? keep_msg : "");
		free(keep_msg);
	}
	if (rt && dispose && !prov) {
		/* Ours to remove: a kept sandbox now let go, or an ssh dir. */
		if (strcmp(rt->provider, "local") == 0) {
			cfs_runtime_dispose(rt);
		} else if (mount_path) {
			struct cfs_buf b = CFS_BUF_INIT;
			struct cfs_run_result rr;

			rt->cancel = NULL;
			if (!cfs_buf_puts(&b, "rm -rf -- ") &&
			    !cfs_shell_quote(&b, mount_path) &&
			    cfs_runtime_run(&rr, rt, b.ptr, NULL, 600000) == 0)
				cfs_run_result_clear(&rr);
			cfs_buf_free(&b);
		}
		if (sdir)
			cfs_rmtree_at(AT_FDCWD, sdir);
	} else if (new_state && rc) {
		/* A --keep push that failed before it kept anything. */
		if (rt && !prov)
			cfs_runtime_dispose(rt);
		cfs_rmtree_at(AT_FDCWD, sdir);
		sid = NULL;
	}
	cli_runtime_close(prov, rt);
	if (sbx.rt || sbx.prov)
		cli_runtime_close(sbx.prov, sbx.rt);
	free(sbx.root);
	free(sbx.msg);
	if (cli_stop_signal && !rc) {
		rc = cfs_error_set(CFS_ECANCELED, "interrupted");
	}
	if (cli->json) {
		cJSON *doc = cli_result(cli), *r;

		if (doc) {
			if (ran &&
			    (r = cJSON_AddObjectToObject(doc, "result"))) {
				cJSON_AddNumberToObject(r, "exitCode",
							res.exit_code);
				cJSON_AddStringToObject(r, "stdout",
							res.out ? res.out : "");
				cJSON_AddStringToObject(r, "stderr",
							res.err ? res.err : "");
				if (res.exit_code)
					cJSON_ReplaceItemInObjectCaseSensitive(
						doc, "ok", cJSON_CreateFalse());
			}
			cJSON_AddStringToObject(doc, "mountpoint", mp);
			if (base_gen >= 0)
				cJSON_AddNumberToObject(doc, "baseGeneration",
							base_gen);
			if (gen >= 0)
				cJSON_AddNumberToObject(doc, "generation", gen);
			cJSON_AddNumberToObject(doc, "added", m.added);
			cJSON_AddNumberToObject(doc, "modified", m.modified);
			cJSON_AddNumberToObject(doc, "deleted", m.deleted);
			if (m.conflicts) {
				cJSON_AddItemToObject(doc, "conflicts",
						      m.conflicts);
				m.conflicts = NULL;
			}
			cli_json_add_str_or_null(doc, "sandbox",
						 keep && !rc ? sid : NULL);
		}
	} else if (!rc && !cli->quiet) {
		fprintf(stderr,
			"contextfs-push: %u added, %u modified, %u deleted, "
			"%d conflict%s; generation %.0f of %s\n",
			m.added, m.modified, m.deleted,
			cJSON_GetArraySize(m.conflicts),
			cJSON_GetArraySize(m.conflicts) == 1 ? "" : "s", gen,
			id ? id : "?");
		if (keep)
			fprintf(stderr,
				"contextfs-push: sandbox %s kept (reuse: "
				"--sandbox-id %s)\n",
				sid, sid);
	}
	if (!rc && ran)
		cli->exit_status = res.exit_code;
	if (cli_stop_signal)
		cli->exit_status = 128 + cli_stop_signal;
	cli_stop_signals_restore(old);
	tree_clear(&base);
	tree_clear(&theirs);
	cfs_inode_hashes_free(&base_h);
	cfs_inode_hashes_free(&theirs_h);
	if (basefd >= 0)
		close(basefd);
	if (theirsfd >= 0)
		close(theirsfd);
	if (m.mountfd >= 0)
		close(m.mountfd);
	if (tmp) {
		cfs_rmtree_at(AT_FDCWD, tmp);
		free(tmp);
	}
	cJSON_Delete(m.conflicts);
	cJSON_Delete(status);
	cJSON_Delete(reply);
	cJSON_Delete(state);
	cfs_run_result_clear(&res);
	cfs_policy_free(&pol);
	cfs_manifest_free(man);
	cfs_keys_free(keys);
	cfs_store_free(st);
	free(command);
	free(words);
	free(sdir);
	free(root);
	free(base_path);
	free(base_bundle);
	free(theirs_path);
	free(mount_path);
	free(msg);
	return rc;
}

const struct cli_command cli_cmd_push = {
	.name = "push",
	.args = "MOUNTPOINT --runtime local|ssh [--keep] [--sandbox-id ID] "
		"[--pull] -- COMMAND [ARG...]",
	.summary = "run a command in a sandbox on a snapshot of a live mount, "
		   "merge the result back",
	.help = CLI_RUNTIME_HELP
	"  --keep                   leave the sandbox for the next push "
	"(prints its id)\n"
	"  --sandbox-id ID          push into (or --pull from) a kept "
	"sandbox\n"
	"  --pull                   merge what the kept sandbox holds, "
	"run nothing\n"
	"  --timeout D              kill the command after D (500ms, "
	"30s, 5m, 1h)\n"
	"\nAlso installed as contextfs-push. The mount commits, that "
	"generation goes into the\nsandbox, COMMAND runs there (output "
	"passes through, its exit code becomes push's),\nand the "
	"sandbox's changes are merged into the mount three-way: changes "
	"on one side\nland, changes on both sides keep the mount's "
	"version and put the sandbox's\nbeside it as NAME" CONFLICT_SUFFIX
	" (or .1, .2 ... if taken). The mount then "
	"commits\n\"push: COMMAND\".\n"
	"With --json: {ok, result: {exitCode, stdout, stderr}, "
	"baseGeneration, generation,\nadded, modified, deleted, "
	"conflicts: [{path, kind, sandboxCopy}], sandbox}.\n",
	.opts = opts,
	.min_args = 1,
	.max_args = CLI_MAX_ARGS,
	.run = run,
	.defer_signals = false,
};
