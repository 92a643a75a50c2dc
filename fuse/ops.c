/*
 * The FUSE low-level operations of a contextfs mount, and the node table.
 *
 * Every operation works on the private staging tree through the staging
 * root fd: a node is resolved to its path "a/b/c" (parent chain + names),
 * or, when it has no name any more (unlinked but open) or several names,
 * to an fd it holds. Errors are the errno the staging filesystem gave, so
 * tools see exactly what Linux says.
 *
 * Writers take fs->freeze (read side) so that a commit can take a
 * consistent snapshot; a file shared with the snapshot is copied before
 * it is changed (copy-on-write: the staging name gets a new inode and every
 * open handle is moved to it, the snapshot keeps the old one).
 *
 * Kernel-visible inode numbers are node ids (stable while the kernel knows
 * the node, unaffected by copy-on-write).
 */
#include "fuse/fuse_i.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include "core/error.h"
#include "core/log.h"
#include "core/util.h"

#define TABLE_INITIAL 1024
#define CFS_ROOT_ATTR_TIMEOUT 1.0

static struct cfs_fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

static struct cfs_node *node_of(struct cfs_fs *fs, fuse_ino_t ino)
{
	if (ino == FUSE_ROOT_ID)
		return &fs->root;
	return (struct cfs_node *)(uintptr_t)ino;
}

static fuse_ino_t ino_of(struct cfs_fs *fs, struct cfs_node *n)
{
	return n == &fs->root ? FUSE_ROOT_ID : (fuse_ino_t)(uintptr_t)n;
}

/* ---- node table (all under table_mu) ---------------------------------- */

static size_t bucket(struct cfs_fs *fs, ino_t bino)
{
	return (size_t)((uint64_t)bino * 0x9E3779B97F4A7C15ull >> 20) &
	       (fs->table_size - 1);
}

static void table_insert(struct cfs_fs *fs, struct cfs_node *n)
{
	if (fs->table_count + 1 > fs->table_size / 2) {
		size_t nsz = fs->table_size * 2;
		struct cfs_node **nt = calloc(nsz, sizeof(*nt));
		if (nt) {
			struct cfs_node **old = fs->table;
			size_t osz = fs->table_size;
			fs->table = nt;
			fs->table_size = nsz;
			for (size_t i = 0; i < osz; i++) {
				struct cfs_node *c = old[i], *nx;
				for (; c; c = nx) {
					nx = c->hnext;
					size_t b = bucket(fs, c->bino);
					c->hnext = nt[b];
					nt[b] = c;
				}
			}
			free(old);
		}
	}
	size_t b = bucket(fs, n->bino);
	n->hnext = fs->table[b];
	fs->table[b] = n;
	n->hashed = true;
	fs->table_count++;
}

static void table_remove(struct cfs_fs *fs, struct cfs_node *n)
{
	if (!n->hashed)
		return;
	struct cfs_node **pp = &fs->table[bucket(fs, n->bino)];
	for (; *pp; pp = &(*pp)->hnext) {
		if (*pp == n) {
			*pp = n->hnext;
			fs->table_count--;
			break;
		}
	}
	n->hashed = false;
	n->hnext = NULL;
}

static struct cfs_node *table_find(struct cfs_fs *fs, ino_t bino)
{
	if (fs->root.bino == bino)
		return &fs->root;
	for (struct cfs_node *n = fs->table[bucket(fs, bino)]; n; n = n->hnext)
		if (n->bino == bino)
			return n;
	return NULL;
}

/* Frees n (and unreferenced ancestors) once nothing refers to it. */
static void node_maybe_free(struct cfs_fs *fs, struct cfs_node *n)
{
	while (n && n != &fs->root && n->nlookup == 0 && n->refs == 0 &&
	       !n->handles) {
		struct cfs_node *p = n->parent;
		table_remove(fs, n);
		if (n->opath >= 0)
			close(n->opath);
		pthread_rwlock_destroy(&n->rw);
		free(n->name);
		free(n);
		if (!p)
			break;
		p->refs--;
		n = p;
	}
}

/* Detaches n from its name (unlinked, or replaced by a rename). */
static void node_detach(struct cfs_fs *fs, struct cfs_node *n)
{
	struct cfs_node *p = n->parent;
	if (!p)
		return;
	n->parent = NULL;
	free(n->name);
	n->name = NULL;
	p->refs--;
	node_maybe_free(fs, p);
}

static int node_set_alias(struct cfs_fs *fs, struct cfs_node *n,
			  struct cfs_node *parent, const char *name)
{
	char *nm = strdup(name);
	if (!nm)
		return -ENOMEM;
	parent->refs++;
	struct cfs_node *old = n->parent;
	free(n->name);
	n->name = nm;
	n->parent = parent;
	if (old) {
		old->refs--;
		node_maybe_free(fs, old);
	}
	return 0;
}

int cfs_fs_nodes_init(struct cfs_fs *fs)
{
	struct stat st;
	pthread_rwlockattr_t a;

	fs->table_size = TABLE_INITIAL;
	fs->table = calloc(fs->table_size, sizeof(*fs->table));
	if (!fs->table)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	if (fstat(fs->root_fd, &st) != 0)
		return cfs_error_errno(errno, "stat %s", fs->tree_path);
	memset(&fs->root, 0, sizeof(fs->root));
	fs->root.bino = st.st_ino;
	fs->root.is_dir = true;
	fs->root.nlookup = 2;
	fs->root.opath = -1;
	pthread_rwlock_init(&fs->root.rw, NULL);
	pthread_mutex_init(&fs->table_mu, NULL);
	pthread_rwlockattr_init(&a);
	/* Writers (the snapshot, renames) must not starve behind readers. */
	pthread_rwlockattr_setkind_np(
		&a, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&fs->freeze, &a);
	pthread_rwlock_init(&fs->ns, &a);
	pthread_rwlockattr_destroy(&a);
	return 0;
}

void cfs_fs_nodes_destroy(struct cfs_fs *fs)
{
	if (!fs->table)
		return;
	for (size_t i = 0; i < fs->table_size; i++) {
		struct cfs_node *n = fs->table[i], *nx;
		for (; n; n = nx) {
			nx = n->hnext;
			n->hashed = false;
		}
	}
	/* Remaining nodes are reclaimed with the process; just drop the table. */
	free(fs->table);
	fs->table = NULL;
}

/* ---- path resolution ---------------------------------------------------- */

/*
 * Where a node lives: rel relative to fs->root_fd, or fd (owned, -1 if
 * none) when the node has no usable name.
 */
struct loc {
	int fd;
	char rel[PATH_MAX];
};

static void loc_done(struct loc *l)
{
	if (l->fd >= 0)
		close(l->fd);
	l->fd = -1;
}

/*
 * Builds n's path; caller holds fs->ns (either side), and n->rw when
 * rw_held (cow_node holds it for writing: taking it again here would fail
 * with EDEADLK, and the unlock that follows would release the caller's
 * write lock and corrupt the lock).
 */
static int node_resolve_rw(struct cfs_fs *fs, struct cfs_node *n, struct loc *l,
			   bool rw_held)
{
	const char *parts[PATH_MAX / 2];
	size_t np = 0, len = 0;
	int rc = 0;

	l->fd = -1;
	l->rel[0] = '\0';
	if (n == &fs->root) {
		l->rel[0] = '.';
		l->rel[1] = '\0';
		return 0;
	}
	pthread_mutex_lock(&fs->table_mu);
	if (!n->parent) {
		if (n->opath >= 0) {
			l->fd = fcntl(n->opath, F_DUPFD_CLOEXEC, 0);
			rc = l->fd < 0 ? -errno : 0;
		} else {
			rc = -ENOENT;
		}
		pthread_mutex_unlock(&fs->table_mu);
		if (rc == -ENOENT) {
			if (!rw_held)
				pthread_rwlock_rdlock(&n->rw);
			if (n->handles) {
				l->fd = fcntl(n->handles->fd, F_DUPFD_CLOEXEC,
					      0);
				rc = l->fd < 0 ? -errno : 0;
			}
			if (!rw_held)
				pthread_rwlock_unlock(&n->rw);
		}
		return rc;
	}
	for (struct cfs_node *c = n; c && c != &fs->root; c = c->parent) {
		if (!c->parent) {
			rc = -ENOENT; /* an ancestor was removed */
			break;
		}
		if (np == CFS_ARRAY_SIZE(parts)) {
			rc = -ENAMETOOLONG;
			break;
		}
		parts[np++] = c->name;
	}
	if (rc == 0) {
		for (size_t i = np; i-- > 0;) {
			size_t k = strlen(parts[i]);
			if (len + k + 2 > sizeof(l->rel)) {
				rc = -ENAMETOOLONG;
				break;
			}
			memcpy(l->rel + len, parts[i], k);
			len += k;
			l->rel[len++] = i ? '/' : '\0';
		}
	}
	pthread_mutex_unlock(&fs->table_mu);
	return rc;
}

static int node_resolve(struct cfs_fs *fs, struct cfs_node *n, struct loc *l)
{
	return node_resolve_rw(fs, n, l, false);
}

/* Path of child name in directory parent (must have a name). */
static int child_resolve(struct cfs_fs *fs, struct cfs_node *parent,
			 const char *name, char out[PATH_MAX])
{
	struct loc l;
	int rc = node_resolve(fs, parent, &l);
	if (rc)
		return rc;
	if (l.fd >= 0) {
		loc_done(&l);
		return -ENOENT; /* a removed directory has no children */
	}
	int k;
	if (parent == &fs->root)
		k = snprintf(out, PATH_MAX, "%s", name);
	else
		k = snprintf(out, PATH_MAX, "%s/%s", l.rel, name);
	if (k < 0 || k >= PATH_MAX)
		return -ENAMETOOLONG;
	return 0;
}

/*
 * fstatat with the link count users see. A commit's snapshot holds an
 * extra link to every file it shares (snapshot.c farm_dir), which must not
 * show: a shared file counts one link less. snap_seq is odd while the
 * snapshot's links are made or removed; a stat that such a change may have
 * overlapped is made again, so the count matches the shared set.
 */
static int stat_at(struct cfs_fs *fs, int dirfd, const char *path, int flags,
		   struct stat *st)
{
	for (;;) {
		uint64_t seq = atomic_load(&fs->snap_seq);
		if (fstatat(dirfd, path, st, flags) != 0)
			return -errno;
		if (!S_ISREG(st->st_mode))
			return 0;
		bool shared = cfs_snap_shared(fs, st->st_ino);
		if (!(seq & 1) && atomic_load(&fs->snap_seq) == seq) {
			if (shared && st->st_nlink > 0)
				st->st_nlink--;
			return 0;
		}
		struct timespec pause = {.tv_sec = 0, .tv_nsec = 200000};
		nanosleep(&pause, NULL);
	}
}

static int loc_stat(struct cfs_fs *fs, const struct loc *l, struct stat *st)
{
	return l->fd >= 0 ? stat_at(fs, l->fd, "", AT_EMPTY_PATH, st)
			  : stat_at(fs, fs->root_fd, l->rel,
				    AT_SYMLINK_NOFOLLOW, st);
}

/* An absolute path naming l (proc magic link for fds). */
static int loc_abs(struct cfs_fs *fs, const struct loc *l, char out[PATH_MAX])
{
	int k = l->fd >= 0 ? snprintf(out, PATH_MAX, "/proc/self/fd/%d", l->fd)
			   : snprintf(out, PATH_MAX, "%s/%s", fs->tree_path,
				      l->rel);
	return (k < 0 || k >= PATH_MAX) ? -ENAMETOOLONG : 0;
}

static int loc_open(struct cfs_fs *fs, const struct loc *l, int flags)
{
	char p[PATH_MAX];
	int fd;

	flags |= O_CLOEXEC;
	if (l->fd < 0) {
		fd = openat(fs->root_fd, l->rel, flags | O_NOFOLLOW);
	} else {
		if (loc_abs(fs, l, p))
			return -ENAMETOOLONG;
		/* the magic link must be followed: a caller's O_NOFOLLOW
		 * was for its own path, which the kernel already resolved */
		fd = open(p, flags & ~O_NOFOLLOW);
	}
	return fd < 0 ? -errno : fd;
}

/* ---- helpers ------------------------------------------------------------ */

static const char *const top_names[] = {
	"workspace", "memory", "artifacts",   "logs",
	"cache",     "config", ".contextsdk", "contextsdk.json",
};

static bool top_allowed(const char *name)
{
	for (size_t i = 0; i < CFS_ARRAY_SIZE(top_names); i++)
		if (strcmp(name, top_names[i]) == 0)
			return true;
	return false;
}

/* Creating name in parent: refused at the top level outside the layout. */
static int check_create(struct cfs_fs *fs, struct cfs_node *parent,
			const char *name, const char *what)
{
	if (parent != &fs->root || top_allowed(name))
		return 0;
	cfs_warn("%s: refused to %s '%s' at the top level: only workspace, "
		 "memory, artifacts, logs, cache, config, .contextsdk and "
		 "contextsdk.json are kept there",
		 fs->mountpoint, what, name);
	return -EPERM;
}

/* Starts a mutation: EROFS when read-only or the lock is lost. */
/*
 * The backing open flags. With the writeback cache the kernel may read a
 * file opened write-only (to fill partly written pages) and sends explicit
 * offsets for O_APPEND writes itself.
 */
static int backing_flags(const struct cfs_fs *fs, int flags)
{
	if (!fs->writeback)
		return flags;
	if ((flags & O_ACCMODE) == O_WRONLY)
		flags = (flags & ~O_ACCMODE) | O_RDWR;
	return flags & ~O_APPEND;
}

/*
 * A WRITE the kernel sends from its page cache (writeback) was accepted by
 * write(2) long ago: after a lost lock it still goes into the staging tree
 * (kept for `contextfs recover`) instead of being dropped with EROFS.
 */
static int wr_begin_write(struct cfs_fs *fs, const struct fuse_file_info *fi)
{
	if (fs->ro)
		return -EROFS;
	if (atomic_load(&fs->lock_lost) && !fi->writepage)
		return -EROFS;
	pthread_rwlock_rdlock(&fs->freeze);
	return 0;
}

static int wr_begin(struct cfs_fs *fs)
{
	if (fs->ro)
		return -EROFS;
	if (atomic_load(&fs->lock_lost))
		return -EROFS;
	pthread_rwlock_rdlock(&fs->freeze);
	return 0;
}

static void wr_end(struct cfs_fs *fs, int rc)
{
	if (rc == 0)
		atomic_fetch_add(&fs->changes, 1);
	pthread_rwlock_unlock(&fs->freeze);
}

/*
 * How long the kernel may keep n's attributes. The root's stay short: a
 * stat of the mountpoint is how tools (cfs_mount_is_stale, users) find a
 * mount whose daemon died, and it must reach the daemon to fail ENOTCONN.
 */
static double attr_timeout(const struct cfs_fs *fs, const struct cfs_node *n)
{
	if (n == &fs->root && fs->timeout > CFS_ROOT_ATTR_TIMEOUT)
		return CFS_ROOT_ATTR_TIMEOUT;
	return fs->timeout;
}

/* st (of the backing inode) as the kernel sees it. */
static void fill_attr(struct cfs_fs *fs, struct cfs_node *n, struct stat *st)
{
	st->st_ino = ino_of(fs, n);
}

/* Makes new entries owned by the caller when we run as another user. */
static void chown_new(struct cfs_fs *fs, fuse_req_t req, int dirfd,
		      const char *path, int flags)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	if (fs->uid != 0 || (ctx->uid == 0 && ctx->gid == 0))
		return;
	if (fchownat(dirfd, path, ctx->uid, ctx->gid, flags) != 0)
		cfs_debug("chown %s: %s", path, strerror(errno));
}

/*
 * Looks up name in parent (its path already known as path, caller holds
 * fs->ns read side) and fills e, creating or reusing the node.
 */
static int do_lookup(struct cfs_fs *fs, struct cfs_node *parent,
		     const char *name, const char *path,
		     struct fuse_entry_param *e)
{
	struct stat st;
	struct cfs_node *n;
	int rc = 0;

	memset(e, 0, sizeof(*e));
	rc = stat_at(fs, fs->root_fd, path, AT_SYMLINK_NOFOLLOW, &st);
	if (rc)
		return rc;
	pthread_mutex_lock(&fs->table_mu);
	n = table_find(fs, st.st_ino);
	if (n) {
		if (!n->parent && n != &fs->root) {
			rc = node_set_alias(fs, n, parent, name);
			if (rc)
				goto out;
		}
	} else {
		n = calloc(1, sizeof(*n));
		if (!n) {
			rc = -ENOMEM;
			goto out;
		}
		n->opath = -1;
		n->bino = st.st_ino;
		n->is_dir = S_ISDIR(st.st_mode);
		n->generation = ++fs->next_generation;
		pthread_rwlock_init(&n->rw, NULL);
		rc = node_set_alias(fs, n, parent, name);
		if (rc) {
			free(n);
			goto out;
		}
		table_insert(fs, n);
	}
	/* Several names: keep an O_PATH fd so it survives losing this one. */
	if (!n->is_dir && st.st_nlink > 1 && n->opath < 0)
		n->opath = openat(fs->root_fd, path,
				  O_PATH | O_NOFOLLOW | O_CLOEXEC);
	n->nlookup++;
	fill_attr(fs, n, &st);
	e->ino = ino_of(fs, n);
	e->generation = n->generation;
	e->attr = st;
	e->attr_timeout = fs->timeout;
	e->entry_timeout = fs->timeout;
out:
	pthread_mutex_unlock(&fs->table_mu);
	return rc;
}

/* Whether the caller is in group gid (as the kernel's in_group_p). */
static bool in_group(fuse_req_t req, const struct fuse_ctx *ctx, gid_t gid)
{
	gid_t list[64];
	int n;

	if (ctx->gid == gid)
		return true;
	n = fuse_req_getgroups(req, 64, list);
	for (int i = 0; i < n && i < 64; i++)
		if (list[i] == gid)
			return true;
	return false;
}

/*
 * Clears setuid, and setgid where group-execute makes it one or the
 * caller is not in the file's group (as Linux does since 6.x), after a
 * write or truncate by a caller without CAP_FSETID, as a local filesystem
 * does. The kernel leaves this to us (FUSE_HANDLE_KILLPRIV[_V2]: see
 * fuse/initshim.h), and the daemon's own write would not do it: it runs as
 * root. libfuse 3.14 does not pass the kernel's per-request kill flag, so
 * "without CAP_FSETID" is approximated as "not uid 0".
 */
static bool kill_suidgid(fuse_req_t req, int fd)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	struct stat st;
	mode_t kill = 0;

	if (!ctx || ctx->uid == 0 || fd < 0 || fstat(fd, &st) < 0 ||
	    !S_ISREG(st.st_mode))
		return false;
	if (st.st_mode & S_ISUID)
		kill |= S_ISUID;
	if ((st.st_mode & S_ISGID) &&
	    ((st.st_mode & S_IXGRP) || !in_group(req, ctx, st.st_gid)))
		kill |= S_ISGID;
	if (!kill)
		return false;
	if (fchmod(fd, st.st_mode & 07777 & ~kill) < 0) {
		cfs_warn("cannot clear setuid/setgid after a write: %s",
			 strerror(errno));
		return false;
	}
	return true;
}

/* ---- operations --------------------------------------------------------- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct cfs_fs *fs = userdata;

	/* Local POSIX and flock locks: the kernel handles them for us. */
	conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
	if (conn->capable & FUSE_CAP_SPLICE_READ)
		conn->want |= FUSE_CAP_SPLICE_READ;
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO)
		conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
	/* The staging tree changes only through us: keep caches. */
	if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA)
		conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/*
	 * Write-through by default: every write(2) is in the staging tree
	 * when it returns, so a commit, a SIGKILL or a lost lock never meets
	 * data the kernel still holds. -o writeback_cache trades that for
	 * speed (docs/SEMANTICS.md).
	 */
	if (fs->wb_wanted && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) {
		conn->want |= FUSE_CAP_WRITEBACK_CACHE;
		fs->writeback = true;
	} else {
		conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
	}
	cfs_info("%s: serving %s (%s)", fs->mountpoint, fs->refstr,
		 fs->ro ? "read-only" : "read-write");
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct cfs_fs *fs = fs_of(req);
	struct fuse_entry_param e;
	char path[PATH_MAX];
	int rc;

	if (strlen(name) > NAME_MAX) {
		fuse_reply_err(req, ENAMETOOLONG);
		return;
	}
	pthread_rwlock_rdlock(&fs->ns);
	rc = child_resolve(fs, node_of(fs, parent), name, path);
	if (rc == 0)
		rc = do_lookup(fs, node_of(fs, parent), name, path, &e);
	pthread_rwlock_unlock(&fs->ns);
	if (rc == -ENOENT) {
		/* Negative entry: cache the absence as long as entries. */
		memset(&e, 0, sizeof(e));
		e.entry_timeout = fs->timeout;
		fuse_reply_entry(req, &e);
		return;
	}
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_entry(req, &e);
}

static void forget_one(struct cfs_fs *fs, fuse_ino_t ino, uint64_t nlookup)
{
	struct cfs_node *n = node_of(fs, ino);
	if (n == &fs->root)
		return;
	pthread_mutex_lock(&fs->table_mu);
	n->nlookup = n->nlookup > nlookup ? n->nlookup - nlookup : 0;
	node_maybe_free(fs, n);
	pthread_mutex_unlock(&fs->table_mu);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	forget_one(fs_of(req), ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		forget_one(fs_of(req), forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *n = node_of(fs, ino);
	struct stat st;
	struct loc l;
	int rc;

	if (fi) {
		struct cfs_handle *h = (struct cfs_handle *)(uintptr_t)fi->fh;
		pthread_rwlock_rdlock(&n->rw);
		rc = stat_at(fs, h->fd, "", AT_EMPTY_PATH, &st);
		pthread_rwlock_unlock(&n->rw);
	} else {
		pthread_rwlock_rdlock(&fs->ns);
		rc = node_resolve(fs, n, &l);
		if (rc == 0)
			rc = loc_stat(fs, &l, &st);
		loc_done(&l);
		pthread_rwlock_unlock(&fs->ns);
	}
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fill_attr(fs, n, &st);
	fuse_reply_attr(req, &st, attr_timeout(fs, n));
}

/* ---- copy-on-write ------------------------------------------------------ */

static int copy_xattrs(int src, int dst)
{
	char names[4096];
	ssize_t len = flistxattr(src, names, sizeof(names));
	if (len < 0)
		return (errno == ENOTSUP || errno == ERANGE) ? 0 : -errno;
	for (ssize_t i = 0; i < len; i += (ssize_t)strlen(names + i) + 1) {
		char val[4096];
		ssize_t vl = fgetxattr(src, names + i, val, sizeof(val));
		if (vl >= 0)
			(void)fsetxattr(dst, names + i, val, (size_t)vl, 0);
	}
	return 0;
}

/* Copies src (from 0) into dst with the same mode, owner, times, xattrs. */
static int copy_file_fd(int src, int dst)
{
	struct stat st;
	off_t off_in = 0, off_out = 0;

	if (fstat(src, &st) != 0)
		return -errno;
	while (off_in < st.st_size) {
		ssize_t k = copy_file_range(src, &off_in, dst, &off_out,
					    (size_t)(st.st_size - off_in), 0);
		if (k < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EXDEV && errno != ENOSYS &&
			    errno != EOPNOTSUPP)
				return -errno;
			/* fall back to read/write */
			char buf[65536];
			ssize_t r = pread(src, buf, sizeof(buf), off_in);
			if (r < 0)
				return -errno;
			if (r == 0)
				break;
			if (pwrite(dst, buf, (size_t)r, off_out) != r)
				return errno ? -errno : -EIO;
			off_in += r;
			off_out += r;
			continue;
		}
		if (k == 0)
			break;
	}
	if (fchmod(dst, st.st_mode & 07777) != 0)
		return -errno;
	if (fchown(dst, st.st_uid, st.st_gid) != 0 && errno != EPERM)
		return -errno;
	(void)copy_xattrs(src, dst);
	struct timespec ts[2] = {st.st_atim, st.st_mtim};
	(void)futimens(dst, ts);
	return 0;
}

/*
 * Finds the staging name of inode ino below directory rel (len bytes of
 * path[], relative to the staging root) by walking the tree; 0 with the
 * name in path, -ENOENT if there is none. Caller holds fs->ns, so names do
 * not move meanwhile.
 */
static int find_ino(struct cfs_fs *fs, ino_t ino, char path[PATH_MAX],
		    size_t len, int depth)
{
	int fd, rc = -ENOENT;
	DIR *dp;
	struct dirent *de;

	if (depth > 256)
		return -ENOENT;
	fd = openat(fs->root_fd, len ? path : ".",
		    O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -ENOENT;
	dp = fdopendir(fd);
	if (!dp) {
		close(fd);
		return -ENOENT;
	}
	while (rc == -ENOENT && (de = readdir(dp))) {
		if (strcmp(de->d_name, ".") == 0 ||
		    strcmp(de->d_name, "..") == 0)
			continue;
		if (de->d_type != DT_UNKNOWN && de->d_type != DT_DIR &&
		    de->d_type != DT_REG)
			continue;
		int k = snprintf(path + len, PATH_MAX - len, "%s%s",
				 len ? "/" : "", de->d_name);
		if (k < 0 || (size_t)k >= PATH_MAX - len)
			continue;
		struct stat st;
		if (fstatat(fs->root_fd, path, &st, AT_SYMLINK_NOFOLLOW) != 0)
			continue;
		if (S_ISREG(st.st_mode) && st.st_ino == ino)
			rc = 0;
		else if (S_ISDIR(st.st_mode))
			rc = find_ino(fs, ino, path, len + (size_t)k,
				      depth + 1);
	}
	closedir(dp);
	if (rc)
		path[len] = '\0';
	return rc;
}

/*
 * Breaks the sharing of n's inode with the snapshot: copies it to a new
 * inode that takes over the staging name and every open handle. Caller
 * holds fs->freeze (read side) and nothing else.
 */
static int cow_node(struct cfs_fs *fs, struct cfs_node *n)
{
	struct loc l = {.fd = -1};
	int src = -1, tmp = -1, rc;
	int64_t t0 = cfs_monotonic_ms();
	char p[PATH_MAX], dir[PATH_MAX], found[PATH_MAX];
	struct stat st;

	pthread_rwlock_rdlock(&fs->ns);
	pthread_rwlock_wrlock(&n->rw);
	if (!cfs_snap_shared(fs, n->bino)) {
		rc = 0; /* someone else copied it */
		goto out;
	}
	rc = node_resolve_rw(fs, n, &l, true);
	if (rc)
		goto out;
	src = loc_open(fs, &l, O_RDONLY);
	if (src < 0) {
		rc = src;
		src = -1;
		goto out;
	}
	/*
	 * The staging name the copy takes. A node without a name may still
	 * have one in the staging tree: a hard link whose first name (the
	 * node's) was removed. Then more links than the snapshot's remain,
	 * and the copy must replace that name, or later writes would go to
	 * an orphan and never be committed.
	 */
	const char *target = l.fd < 0 ? l.rel : NULL;
	if (!target) {
		struct stat sst;
		if (fstat(src, &sst) == 0 && sst.st_nlink > 1) {
			found[0] = '\0';
			if (find_ino(fs, sst.st_ino, found, 0, 0) == 0)
				target = found;
		}
	}
	/* An unnamed file in the same directory (same filesystem). */
	if (!target) {
		snprintf(dir, sizeof(dir), ".");
	} else {
		const char *slash = strrchr(target, '/');
		if (slash)
			snprintf(dir, sizeof(dir), "%.*s",
				 (int)(slash - target), target);
		else
			snprintf(dir, sizeof(dir), ".");
	}
	tmp = openat(fs->root_fd, dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (tmp < 0) {
		rc = -errno;
		goto out;
	}
	rc = copy_file_fd(src, tmp);
	if (rc)
		goto out;
	if (target) {
		char tname[PATH_MAX];
		char rnd[17];
		cfs_random_hex(rnd, 8);
		int k = snprintf(tname, sizeof(tname), "%s/.cfs-cow-%s", dir,
				 rnd);
		if (k < 0 || k >= (int)sizeof(tname)) {
			rc = -ENAMETOOLONG;
			goto out;
		}
		snprintf(p, sizeof(p), "/proc/self/fd/%d", tmp);
		if (linkat(AT_FDCWD, p, fs->root_fd, tname,
			   AT_SYMLINK_FOLLOW) != 0) {
			rc = -errno;
			goto out;
		}
		if (renameat(fs->root_fd, tname, fs->root_fd, target) != 0) {
			rc = -errno;
			unlinkat(fs->root_fd, tname, 0);
			goto out;
		}
	}
	/* Move every open handle to the new inode. */
	snprintf(p, sizeof(p), "/proc/self/fd/%d", tmp);
	for (struct cfs_handle *h = n->handles; h; h = h->next) {
		/* not O_NOFOLLOW (sqlite opens with it): p is a magic link */
		int fl = h->flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOFOLLOW);
		int nfd = open(p, fl | O_CLOEXEC);
		if (nfd < 0) {
			rc = -errno;
			cfs_error_log("%s: copy-on-write could not reopen a "
				      "handle: %s",
				      fs->mountpoint, strerror(errno));
			goto out;
		}
		if (dup3(nfd, h->fd, O_CLOEXEC) < 0)
			rc = -errno;
		close(nfd);
		if (rc)
			goto out;
	}
	if (fstat(tmp, &st) != 0) {
		rc = -errno;
		goto out;
	}
	pthread_mutex_lock(&fs->table_mu);
	table_remove(fs, n);
	n->bino = st.st_ino;
	table_insert(fs, n);
	if (n->opath >= 0) {
		close(n->opath);
		n->opath = open(p, O_PATH | O_CLOEXEC);
	}
	pthread_mutex_unlock(&fs->table_mu);
	atomic_fetch_add(&fs->cow_copies, 1);
out:
	if (rc)
		cfs_error_log("%s: copy-on-write of %s failed: %s",
			      fs->mountpoint, l.fd >= 0 ? "(unlinked)" : l.rel,
			      strerror(-rc));
	if (tmp >= 0)
		close(tmp);
	if (src >= 0)
		close(src);
	loc_done(&l);
	pthread_rwlock_unlock(&n->rw);
	pthread_rwlock_unlock(&fs->ns);
	uint64_t us = (uint64_t)(cfs_monotonic_ms() - t0) * 1000;
	uint64_t cur = atomic_load(&fs->max_stall_us);
	while (us > cur &&
	       !atomic_compare_exchange_weak(&fs->max_stall_us, &cur, us))
		;
	return rc;
}

/* Ensures n is not shared with a snapshot before it is modified. */
static int cow_prepare(struct cfs_fs *fs, struct cfs_node *n)
{
	int rc;

	/* the next commit must hash this file again (fuse/hints.c) */
	cfs_hints_touch(fs, n, false);
	if (n->is_dir || !atomic_load(&fs->snap_active))
		return 0;
	pthread_mutex_lock(&fs->table_mu);
	ino_t b = n->bino;
	pthread_mutex_unlock(&fs->table_mu);
	if (!cfs_snap_shared(fs, b))
		return 0;
	rc = cow_node(fs, n);
	if (!rc) /* its private copy is a new inode */
		cfs_hints_touch(fs, n, true);
	return rc;
}

/* ---- attributes --------------------------------------------------------- */

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int valid, struct fuse_file_info *fi)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *n = node_of(fs, ino);
	struct cfs_handle *h =
		fi ? (struct cfs_handle *)(uintptr_t)fi->fh : NULL;
	struct loc l = {.fd = -1};
	char abs[PATH_MAX];
	struct stat st;
	int rc = wr_begin(fs);

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	rc = cow_prepare(fs, n);
	if (rc)
		goto done;
	pthread_rwlock_rdlock(&fs->ns);
	pthread_rwlock_rdlock(&n->rw);
	if (h) {
		l.fd = fcntl(h->fd, F_DUPFD_CLOEXEC, 0);
		rc = l.fd < 0 ? -errno : 0;
	} else {
		rc = node_resolve_rw(fs, n, &l, true);
	}
	if (rc)
		goto out;
	rc = loc_abs(fs, &l, abs);
	if (rc)
		goto out;
	if (valid & FUSE_SET_ATTR_MODE) {
		rc = (l.fd >= 0 ? fchmod(l.fd, attr->st_mode & 07777)
				: fchmodat(fs->root_fd, l.rel,
					   attr->st_mode & 07777, 0))
			     ? -errno
			     : 0;
		if (rc == -EBADF && l.fd >= 0)
			rc = chmod(abs, attr->st_mode & 07777) ? -errno : 0;
		if (rc)
			goto out;
	}
	if (valid & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		uid_t u =
			(valid & FUSE_SET_ATTR_UID) ? attr->st_uid : (uid_t)-1;
		gid_t g =
			(valid & FUSE_SET_ATTR_GID) ? attr->st_gid : (gid_t)-1;
		rc = (l.fd >= 0 ? fchownat(l.fd, "", u, g, AT_EMPTY_PATH)
				: fchownat(fs->root_fd, l.rel, u, g,
					   AT_SYMLINK_NOFOLLOW))
			     ? -errno
			     : 0;
		if (rc)
			goto out;
	}
	if (valid & FUSE_SET_ATTR_SIZE) {
		if (h) {
			rc = ftruncate(h->fd, attr->st_size) ? -errno : 0;
			if (!rc)
				kill_suidgid(req, h->fd);
		} else {
			int fd = loc_open(fs, &l, O_WRONLY);
			if (fd < 0) {
				rc = fd;
			} else {
				rc = ftruncate(fd, attr->st_size) ? -errno : 0;
				if (!rc)
					kill_suidgid(req, fd);
				close(fd);
			}
		}
		if (rc)
			goto out;
	}
	if (valid & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
		struct timespec ts[2];
		ts[0].tv_sec = 0;
		ts[0].tv_nsec = UTIME_OMIT;
		ts[1] = ts[0];
		if (valid & FUSE_SET_ATTR_ATIME_NOW)
			ts[0].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_ATIME)
			ts[0] = attr->st_atim;
		if (valid & FUSE_SET_ATTR_MTIME_NOW)
			ts[1].tv_nsec = UTIME_NOW;
		else if (valid & FUSE_SET_ATTR_MTIME)
			ts[1] = attr->st_mtim;
		if (l.fd >= 0)
			rc = utimensat(AT_FDCWD, abs, ts, 0) ? -errno : 0;
		else
			rc = utimensat(fs->root_fd, l.rel, ts,
				       AT_SYMLINK_NOFOLLOW)
				     ? -errno
				     : 0;
		if (rc)
			goto out;
	}
	rc = loc_stat(fs, &l, &st);
out:
	loc_done(&l);
	pthread_rwlock_unlock(&n->rw);
	pthread_rwlock_unlock(&fs->ns);
done:
	wr_end(fs, rc);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	fill_attr(fs, n, &st);
	fuse_reply_attr(req, &st, attr_timeout(fs, n));
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	struct cfs_fs *fs = fs_of(req);
	char buf[PATH_MAX + 1];
	struct loc l;
	ssize_t k;

	pthread_rwlock_rdlock(&fs->ns);
	int rc = node_resolve(fs, node_of(fs, ino), &l);
	if (rc == 0) {
		k = l.fd >= 0 ? readlinkat(l.fd, "", buf, PATH_MAX)
			      : readlinkat(fs->root_fd, l.rel, buf, PATH_MAX);
		rc = k < 0 ? -errno : 0;
		if (k >= 0)
			buf[k] = '\0';
	}
	loc_done(&l);
	pthread_rwlock_unlock(&fs->ns);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_readlink(req, buf);
}

/* ---- namespace ---------------------------------------------------------- */

/*
 * Common tail of mknod/mkdir/symlink: creates name in parent with make()
 * and replies with its entry.
 */
enum mk_kind { MK_DIR, MK_NOD, MK_SYMLINK };

static void do_make(fuse_req_t req, fuse_ino_t parent, const char *name,
		    enum mk_kind kind, mode_t mode, dev_t rdev,
		    const char *target)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *p = node_of(fs, parent);
	struct fuse_entry_param e;
	char path[PATH_MAX];
	int rc = wr_begin(fs);

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	rc = check_create(fs, p, name,
			  kind == MK_DIR ? "create directory" : "create");
	if (rc)
		goto done;
	pthread_rwlock_rdlock(&fs->ns);
	rc = child_resolve(fs, p, name, path);
	if (rc == 0) {
		if (kind == MK_DIR)
			rc = mkdirat(fs->root_fd, path, mode);
		else if (kind == MK_SYMLINK)
			rc = symlinkat(target, fs->root_fd, path);
		else
			rc = mknodat(fs->root_fd, path, mode, rdev);
		rc = rc ? -errno : 0;
	}
	if (rc == 0) {
		chown_new(fs, req, fs->root_fd, path, AT_SYMLINK_NOFOLLOW);
		rc = do_lookup(fs, p, name, path, &e);
	}
	pthread_rwlock_unlock(&fs->ns);
done:
	wr_end(fs, rc);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_entry(req, &e);
}

static void op_mknod(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode, dev_t rdev)
{
	do_make(req, parent, name, MK_NOD, mode, rdev, NULL);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name,
		     mode_t mode)
{
	do_make(req, parent, name, MK_DIR, mode, 0, NULL);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t parent,
		       const char *name)
{
	do_make(req, parent, name, MK_SYMLINK, 0, 0, link);
}

/*
 * Detaches the node of backing inode bino if its name is (p, name). *keep,
 * if >= 0, is an O_PATH fd of a removed directory: a node the kernel still
 * knows takes it, so that fstat of an open directory that was removed
 * answers as Linux does (link count 0) instead of ENOENT.
 */
static void detach_name(struct cfs_fs *fs, ino_t bino, nlink_t nlink_after,
			struct cfs_node *p, const char *name, int *keep)
{
	pthread_mutex_lock(&fs->table_mu);
	struct cfs_node *n = table_find(fs, bino);
	if (n && n != &fs->root && n->parent == p && n->name &&
	    strcmp(n->name, name) == 0) {
		node_detach(fs, n);
		if (*keep >= 0 && n->opath < 0 && n->nlookup > 0) {
			n->opath = *keep;
			*keep = -1;
		}
		/* Gone for good and not open: its inode number may be reused. */
		if (nlink_after == 0 && !n->handles && n->opath < 0) {
			table_remove(fs, n);
			node_maybe_free(fs, n);
		}
	}
	pthread_mutex_unlock(&fs->table_mu);
}

static void do_remove(fuse_req_t req, fuse_ino_t parent, const char *name,
		      int flags)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *p = node_of(fs, parent);
	char path[PATH_MAX];
	struct stat st;
	int keep = -1;
	int rc = wr_begin(fs);

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	pthread_rwlock_wrlock(&fs->ns);
	rc = child_resolve(fs, p, name, path);
	if (rc == 0)
		rc = stat_at(fs, fs->root_fd, path, AT_SYMLINK_NOFOLLOW, &st);
	if (rc == 0 && S_ISDIR(st.st_mode))
		keep = openat(fs->root_fd, path,
			      O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (rc == 0)
		rc = unlinkat(fs->root_fd, path, flags) ? -errno : 0;
	if (rc == 0)
		detach_name(fs, st.st_ino,
			    S_ISDIR(st.st_mode) ? 0 : st.st_nlink - 1, p, name,
			    &keep);
	pthread_rwlock_unlock(&fs->ns);
	if (keep >= 0)
		close(keep);
	wr_end(fs, rc);
	fuse_reply_err(req, -rc);
}

static void op_unlink(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	do_remove(req, parent, name, 0);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	do_remove(req, parent, name, AT_REMOVEDIR);
}

static void op_rename(fuse_req_t req, fuse_ino_t parent, const char *name,
		      fuse_ino_t newparent, const char *newname,
		      unsigned int flags)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *p = node_of(fs, parent), *np = node_of(fs, newparent);
	char from[PATH_MAX], to[PATH_MAX];
	struct stat sfrom, sto;
	bool have_to = false, to_gone = false;
	int keep = -1;
	int rc = wr_begin(fs);

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
		rc = -EINVAL;
		goto done;
	}
	rc = check_create(fs, np, newname, "rename into");
	if (rc == 0 && (flags & RENAME_EXCHANGE))
		rc = check_create(fs, p, name, "rename into");
	if (rc)
		goto done;
	pthread_rwlock_wrlock(&fs->ns);
	rc = child_resolve(fs, p, name, from);
	if (rc == 0)
		rc = child_resolve(fs, np, newname, to);
	if (rc == 0)
		rc = fstatat(fs->root_fd, from, &sfrom, AT_SYMLINK_NOFOLLOW)
			     ? -errno
			     : 0;
	if (rc == 0)
		have_to = stat_at(fs, fs->root_fd, to, AT_SYMLINK_NOFOLLOW,
				  &sto) == 0;
	/* A replaced target whose last link goes away is gone. */
	if (rc == 0 && have_to && !(flags & RENAME_EXCHANGE)) {
		to_gone = S_ISDIR(sto.st_mode) || sto.st_nlink == 1;
		/* as in rmdir: an open replaced directory stays statable */
		if (S_ISDIR(sto.st_mode))
			keep = openat(fs->root_fd, to,
				      O_PATH | O_DIRECTORY | O_NOFOLLOW |
					      O_CLOEXEC);
	}
	if (rc == 0)
		rc = renameat2(fs->root_fd, from, fs->root_fd, to, flags)
			     ? -errno
			     : 0;
	if (rc == 0) {
		pthread_mutex_lock(&fs->table_mu);
		struct cfs_node *a = table_find(fs, sfrom.st_ino);
		struct cfs_node *b =
			have_to ? table_find(fs, sto.st_ino) : NULL;
		if (a == b)
			b = NULL; /* hard links of one inode: a no-op rename */
		if (a &&
		    !(a->parent == p && a->name && strcmp(a->name, name) == 0))
			a = NULL; /* known under another name: keep that */
		if (b && !(b->parent == np && b->name &&
			   strcmp(b->name, newname) == 0))
			b = NULL;
		if (flags & RENAME_EXCHANGE) {
			if (a && node_set_alias(fs, a, np, newname))
				node_detach(fs, a);
			if (b && node_set_alias(fs, b, p, name))
				node_detach(fs, b);
		} else if (sfrom.st_ino != (have_to ? sto.st_ino : 0)) {
			if (b) {
				node_detach(fs, b);
				if (keep >= 0 && b->opath < 0 &&
				    b->nlookup > 0) {
					b->opath = keep;
					keep = -1;
				}
				/* Its inode number may be reused now: a new
				 * file must not be taken for it. */
				if (to_gone && !b->handles && b->opath < 0) {
					table_remove(fs, b);
					node_maybe_free(fs, b);
				}
			}
			if (a && node_set_alias(fs, a, np, newname))
				node_detach(fs, a);
		}
		pthread_mutex_unlock(&fs->table_mu);
	}
	pthread_rwlock_unlock(&fs->ns);
	if (keep >= 0)
		close(keep);
done:
	wr_end(fs, rc);
	fuse_reply_err(req, -rc);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent,
		    const char *newname)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *n = node_of(fs, ino), *np = node_of(fs, newparent);
	struct fuse_entry_param e;
	char to[PATH_MAX], abs[PATH_MAX];
	struct loc l = {.fd = -1};
	int rc = wr_begin(fs);

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	rc = check_create(fs, np, newname, "link");
	if (rc == 0)
		rc = cow_prepare(fs, n);
	if (rc)
		goto done;
	pthread_rwlock_wrlock(&fs->ns);
	rc = node_resolve(fs, n, &l);
	if (rc == 0)
		rc = child_resolve(fs, np, newname, to);
	if (rc == 0) {
		if (l.fd >= 0) {
			rc = loc_abs(fs, &l, abs);
			if (rc == 0)
				rc = linkat(AT_FDCWD, abs, fs->root_fd, to,
					    AT_SYMLINK_FOLLOW)
					     ? -errno
					     : 0;
		} else {
			rc = linkat(fs->root_fd, l.rel, fs->root_fd, to, 0)
				     ? -errno
				     : 0;
		}
	}
	if (rc == 0)
		rc = do_lookup(fs, np, newname, to, &e);
	loc_done(&l);
	pthread_rwlock_unlock(&fs->ns);
done:
	wr_end(fs, rc);
	if (rc)
		fuse_reply_err(req, -rc);
	else
		fuse_reply_entry(req, &e);
}

/* ---- files -------------------------------------------------------------- */

static int handle_new(struct cfs_fs *fs, struct cfs_node *n, int fd, int flags,
		      struct fuse_file_info *fi)
{
	struct cfs_handle *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->fd = fd;
	h->flags = flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY);
	h->node = n;
	pthread_rwlock_wrlock(&n->rw);
	h->next = n->handles;
	n->handles = h;
	pthread_rwlock_unlock(&n->rw);
	fi->fh = (uint64_t)(uintptr_t)h;
	/* Only we change the staging tree: the page cache stays valid. */
	fi->keep_cache = 1;
	fi->direct_io = 0;
	(void)fs;
	return 0;
}

static void handle_free(struct cfs_fs *fs, struct cfs_handle *h)
{
	struct cfs_node *n = h->node;
	pthread_rwlock_wrlock(&n->rw);
	for (struct cfs_handle **pp = &n->handles; *pp; pp = &(*pp)->next) {
		if (*pp == h) {
			*pp = h->next;
			break;
		}
	}
	bool last = n->handles == NULL;
	pthread_rwlock_unlock(&n->rw);
	close(h->fd);
	free(h);
	if (last && n != &fs->root) {
		pthread_mutex_lock(&fs->table_mu);
		/* An unlinked file whose last handle closed: inode is gone. */
		if (!n->parent && n->opath < 0 && n->hashed)
			table_remove(fs, n);
		node_maybe_free(fs, n);
		pthread_mutex_unlock(&fs->table_mu);
	}
}

static bool writes(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
}

static void op_create(fuse_req_t req, fuse_ino_t parent, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *p = node_of(fs, parent);
	struct fuse_entry_param e;
	char path[PATH_MAX];
	int fd = -1;
	int rc = wr_begin(fs);

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	rc = check_create(fs, p, name, "create");
	if (rc)
		goto done;
	pthread_rwlock_rdlock(&fs->ns);
	rc = child_resolve(fs, p, name, path);
	if (rc == 0) {
		fd = openat(fs->root_fd, path,
			    (backing_flags(fs, fi->flags) | O_CREAT |
			     O_NOFOLLOW | O_CLOEXEC) &
				    ~O_DIRECT,
			    mode);
		rc = fd < 0 ? -errno : 0;
	}
	if (rc == 0) {
		chown_new(fs, req, fs->root_fd, path, AT_SYMLINK_NOFOLLOW);
		rc = do_lookup(fs, p, name, path, &e);
	}
	pthread_rwlock_unlock(&fs->ns);
	if (rc == 0) {
		rc = handle_new(fs, node_of(fs, e.ino), fd,
				backing_flags(fs, fi->flags), fi);
		if (rc)
			forget_one(fs, e.ino, 1);
		else
			fd = -1;
	}
done:
	wr_end(fs, rc);
	if (fd >= 0)
		close(fd);
	if (rc)
		fuse_reply_err(req, -rc);
	else if (fuse_reply_create(req, &e, fi) == -ENOENT)
		handle_free(fs, (struct cfs_handle *)(uintptr_t)fi->fh);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *n = node_of(fs, ino);
	bool w = writes(fi->flags);
	struct loc l;
	int rc = 0, fd = -1;

	if (w) {
		rc = wr_begin(fs);
		if (rc) {
			fuse_reply_err(req, -rc);
			return;
		}
		rc = cow_prepare(fs, n);
	}
	if (rc == 0) {
		pthread_rwlock_rdlock(&fs->ns);
		rc = node_resolve(fs, n, &l);
		if (rc == 0) {
			fd = loc_open(fs, &l,
				      backing_flags(fs, fi->flags) &
					      ~(O_CREAT | O_EXCL | O_NOCTTY |
						O_DIRECT));
			rc = fd < 0 ? fd : 0;
		}
		loc_done(&l);
		pthread_rwlock_unlock(&fs->ns);
	}
	/* an atomic O_TRUNC open truncates here, not through setattr */
	if (rc == 0 && w && (fi->flags & O_TRUNC) && kill_suidgid(req, fd))
		(void)fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
	if (rc == 0) {
		rc = handle_new(fs, n, fd, backing_flags(fs, fi->flags), fi);
		if (rc)
			close(fd);
	}
	if (w)
		wr_end(fs, (fi->flags & O_TRUNC) ? rc : 1);
	if (rc)
		fuse_reply_err(req, -rc);
	else if (fuse_reply_open(req, fi) == -ENOENT)
		handle_free(fs, (struct cfs_handle *)(uintptr_t)fi->fh);
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct cfs_handle *h = (struct cfs_handle *)(uintptr_t)fi->fh;
	struct fuse_bufvec buf = FUSE_BUFVEC_INIT(size);

	/*
	 * No lock: a concurrent copy-on-write swaps the fd for one with the
	 * same contents (dup3 is atomic).
	 */
	buf.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	buf.buf[0].fd = h->fd;
	buf.buf[0].pos = off;
	fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

static void op_write_buf(fuse_req_t req, fuse_ino_t ino,
			 struct fuse_bufvec *in_buf, off_t off,
			 struct fuse_file_info *fi)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_handle *h = (struct cfs_handle *)(uintptr_t)fi->fh;
	struct cfs_node *n = h->node;
	struct fuse_bufvec out = FUSE_BUFVEC_INIT(fuse_buf_size(in_buf));
	bool killed;
	ssize_t k;
	int rc = wr_begin_write(fs, fi);

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	rc = cow_prepare(fs, n);
	if (rc) {
		wr_end(fs, rc);
		fuse_reply_err(req, -rc);
		return;
	}
	pthread_rwlock_rdlock(&n->rw);
	out.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
	out.buf[0].fd = h->fd;
	out.buf[0].pos = off;
	k = fuse_buf_copy(&out, in_buf, 0);
	killed = k > 0 && kill_suidgid(req, h->fd);
	pthread_rwlock_unlock(&n->rw);
	/* the kernel's cached mode still has the bits (attributes only:
	 * no page or inode lock is taken, so this is safe in a handler) */
	if (killed)
		(void)fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
	wr_end(fs, k < 0 ? (int)k : 0);
	if (k < 0)
		fuse_reply_err(req, (int)-k);
	else
		fuse_reply_write(req, (size_t)k);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct cfs_handle *h = (struct cfs_handle *)(uintptr_t)fi->fh;

	/*
	 * Where close(2) of the staging fs can report nothing, ENOSYS makes
	 * the kernel stop sending FLUSH: one round trip less per close. It
	 * still writes dirty pages back (writeback_cache) before close
	 * returns; only the FLUSH request itself goes.
	 */
	if (fs_of(req)->close_silent) {
		fuse_reply_err(req, ENOSYS);
		return;
	}
	/* close(dup(fd)) reports delayed write errors of the staging fs. */
	int fd = dup(h->fd);
	int rc = fd < 0 ? errno : (close(fd) ? errno : 0);
	fuse_reply_err(req, rc);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	handle_free(fs_of(req), (struct cfs_handle *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

/* fsync / fsyncdir: a commit (or only the staging disk with fsync=local). */
static void do_fsync(fuse_req_t req, int fd, int datasync)
{
	struct cfs_fs *fs = fs_of(req);

	if (fs->ro) {
		fuse_reply_err(req, 0);
		return;
	}
	if (fs->fsync_local) {
		int rc = (datasync ? fdatasync(fd) : fsync(fd)) ? errno : 0;
		fuse_reply_err(req, rc);
		return;
	}
	if (atomic_load(&fs->lock_lost)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	cfs_commit_request(fs, req, NULL);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync,
		     struct fuse_file_info *fi)
{
	struct cfs_handle *h = (struct cfs_handle *)(uintptr_t)fi->fh;
	do_fsync(req, h->fd, datasync);
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset,
			 off_t length, struct fuse_file_info *fi)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_handle *h = (struct cfs_handle *)(uintptr_t)fi->fh;
	bool killed = false;
	int rc = wr_begin(fs);

	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	rc = cow_prepare(fs, h->node);
	if (rc == 0) {
		pthread_rwlock_rdlock(&h->node->rw);
		rc = fallocate(h->fd, mode, offset, length) ? -errno : 0;
		killed = rc == 0 && kill_suidgid(req, h->fd);
		pthread_rwlock_unlock(&h->node->rw);
	}
	wr_end(fs, rc);
	if (killed)
		(void)fuse_lowlevel_notify_inval_inode(fs->se, ino, -1, 0);
	fuse_reply_err(req, -rc);
}

static void op_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		     struct fuse_file_info *fi)
{
	struct cfs_handle *h = (struct cfs_handle *)(uintptr_t)fi->fh;
	off_t r;

	if (fs_of(req)->writeback) {
		/*
		 * The backing file lags the kernel's pages: let the kernel
		 * answer from its own size (ENOSYS makes that permanent).
		 */
		fuse_reply_err(req, ENOSYS);
		return;
	}
	r = lseek(h->fd, off, whence);
	if (r < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_lseek(req, r);
}

/* ---- directories -------------------------------------------------------- */

struct cfs_dirh {
	DIR *dp;
	off_t offset;
	struct dirent *entry;
};

static void op_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_dirh *d = calloc(1, sizeof(*d));
	struct loc l;
	int fd = -1, rc;

	if (!d) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	pthread_rwlock_rdlock(&fs->ns);
	rc = node_resolve(fs, node_of(fs, ino), &l);
	if (rc == 0) {
		fd = loc_open(fs, &l, O_RDONLY | O_DIRECTORY);
		rc = fd < 0 ? fd : 0;
	}
	loc_done(&l);
	pthread_rwlock_unlock(&fs->ns);
	if (rc == 0) {
		d->dp = fdopendir(fd);
		if (!d->dp) {
			rc = -errno;
			close(fd);
		}
	}
	if (rc) {
		free(d);
		fuse_reply_err(req, -rc);
		return;
	}
	fi->fh = (uint64_t)(uintptr_t)d;
	fi->cache_readdir = 0;
	if (fuse_reply_open(req, fi) == -ENOENT) {
		closedir(d->dp);
		free(d);
	}
}

static bool hidden_entry(struct cfs_fs *fs, fuse_ino_t ino, const char *name)
{
	(void)fs;
	(void)ino;
	(void)name;
	return false;
}

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
		       off_t offset, struct fuse_file_info *fi, bool plus)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_dirh *d = (struct cfs_dirh *)(uintptr_t)fi->fh;
	struct cfs_node *dn = node_of(fs, ino);
	char *buf = calloc(1, size), *p;
	size_t rem = size;
	int err = 0;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	p = buf;
	if (offset != d->offset) {
		seekdir(d->dp, offset);
		d->entry = NULL;
		d->offset = offset;
	}
	for (;;) {
		size_t used;
		if (!d->entry) {
			errno = 0;
			d->entry = readdir(d->dp);
			if (!d->entry) {
				if (errno && rem == size)
					err = errno;
				break;
			}
		}
		const char *name = d->entry->d_name;
		off_t next = d->entry->d_off;
		if (hidden_entry(fs, ino, name)) {
			d->entry = NULL;
			d->offset = next;
			continue;
		}
		if (plus) {
			struct fuse_entry_param e;
			bool dot = strcmp(name, ".") == 0 ||
				   strcmp(name, "..") == 0;
			memset(&e, 0, sizeof(e));
			if (dot) {
				e.attr.st_ino = d->entry->d_ino;
				e.attr.st_mode = (mode_t)d->entry->d_type << 12;
			} else {
				char path[PATH_MAX];
				int rc;
				pthread_rwlock_rdlock(&fs->ns);
				rc = child_resolve(fs, dn, name, path);
				if (rc == 0)
					rc = do_lookup(fs, dn, name, path, &e);
				pthread_rwlock_unlock(&fs->ns);
				if (rc) {
					/* raced with a removal: skip it */
					d->entry = NULL;
					d->offset = next;
					continue;
				}
			}
			used = fuse_add_direntry_plus(req, p, rem, name, &e,
						      next);
			if (used > rem) {
				if (!dot)
					forget_one(fs, e.ino, 1);
				break;
			}
		} else {
			struct stat st;
			memset(&st, 0, sizeof(st));
			st.st_ino = d->entry->d_ino;
			st.st_mode = (mode_t)d->entry->d_type << 12;
			used = fuse_add_direntry(req, p, rem, name, &st, next);
			if (used > rem)
				break;
		}
		p += used;
		rem -= used;
		d->entry = NULL;
		d->offset = next;
	}
	if (err && rem == size)
		fuse_reply_err(req, err);
	else
		fuse_reply_buf(req, buf, size - rem);
	free(buf);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
		       off_t offset, struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, offset, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size,
			   off_t offset, struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, offset, fi, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino,
			  struct fuse_file_info *fi)
{
	struct cfs_dirh *d = (struct cfs_dirh *)(uintptr_t)fi->fh;
	closedir(d->dp);
	free(d);
	fuse_reply_err(req, 0);
}

static void op_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
			struct fuse_file_info *fi)
{
	struct cfs_dirh *d = (struct cfs_dirh *)(uintptr_t)fi->fh;
	do_fsync(req, dirfd(d->dp), datasync);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct cfs_fs *fs = fs_of(req);
	struct statvfs sv;
	if (fstatvfs(fs->root_fd, &sv) != 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
}

static void op_access(fuse_req_t req, fuse_ino_t ino, int mask)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *n = node_of(fs, ino);
	struct stat st;
	struct loc l;
	int rc;

	pthread_rwlock_rdlock(&fs->ns);
	rc = node_resolve(fs, n, &l);
	if (rc == 0)
		rc = loc_stat(fs, &l, &st);
	loc_done(&l);
	pthread_rwlock_unlock(&fs->ns);
	if (rc == 0 && (mask & W_OK) && (fs->ro || atomic_load(&fs->lock_lost)))
		rc = -EROFS;
	if (rc == 0 && mask != F_OK) {
		const struct fuse_ctx *c = fuse_req_ctx(req);
		mode_t m = st.st_mode;
		int want = mask & 7, have;
		if (c->uid == 0) {
			have = R_OK | W_OK;
			if (S_ISDIR(m) || (m & 0111))
				have |= X_OK;
		} else if (c->uid == st.st_uid) {
			have = (m >> 6) & 7;
		} else if (c->gid == st.st_gid) {
			have = (m >> 3) & 7;
		} else {
			have = m & 7;
		}
		if ((want & have) != want)
			rc = -EACCES;
	}
	fuse_reply_err(req, -rc);
}

/* ---- extended attributes ------------------------------------------------ */

static bool user_xattr(const char *name)
{
	return strncmp(name, "user.", 5) == 0;
}

static int xattr_path(struct cfs_fs *fs, struct cfs_node *n, struct loc *l,
		      char abs[PATH_MAX])
{
	int rc = node_resolve(fs, n, l);
	if (rc == 0)
		rc = loc_abs(fs, l, abs);
	return rc;
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			size_t size)
{
	struct cfs_fs *fs = fs_of(req);
	struct loc l = {.fd = -1};
	char abs[PATH_MAX];
	char *val = NULL;
	ssize_t k;
	int rc;

	if (ino == FUSE_ROOT_ID && strcmp(name, CFS_CONTROL_XATTR) == 0) {
		size_t len = strlen(fs->sock_path);
		if (size == 0)
			fuse_reply_xattr(req, len);
		else if (size < len)
			fuse_reply_err(req, ERANGE);
		else
			fuse_reply_buf(req, fs->sock_path, len);
		return;
	}
	if (!user_xattr(name)) {
		/* Only user.* is kept; everything else is simply absent. */
		fuse_reply_err(req, ENODATA);
		return;
	}
	if (size > XATTR_SIZE_MAX)
		size = XATTR_SIZE_MAX;
	if (size) {
		val = malloc(size);
		if (!val) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
	}
	pthread_rwlock_rdlock(&fs->ns);
	rc = xattr_path(fs, node_of(fs, ino), &l, abs);
	if (rc == 0) {
		k = l.fd >= 0 ? getxattr(abs, name, val, size)
			      : lgetxattr(abs, name, val, size);
		rc = k < 0 ? -errno : 0;
	}
	loc_done(&l);
	pthread_rwlock_unlock(&fs->ns);
	if (rc)
		fuse_reply_err(req, -rc);
	else if (size)
		fuse_reply_buf(req, val, (size_t)k);
	else
		fuse_reply_xattr(req, (size_t)k);
	free(val);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct cfs_fs *fs = fs_of(req);
	struct loc l = {.fd = -1};
	char abs[PATH_MAX];
	char *all = NULL, *out = NULL;
	ssize_t k = 0;
	size_t olen = 0;
	int rc;

	pthread_rwlock_rdlock(&fs->ns);
	rc = xattr_path(fs, node_of(fs, ino), &l, abs);
	if (rc == 0) {
		k = l.fd >= 0 ? listxattr(abs, NULL, 0)
			      : llistxattr(abs, NULL, 0);
		rc = k < 0 ? -errno : 0;
	}
	if (rc == 0 && k > 0) {
		all = malloc((size_t)k);
		out = malloc((size_t)k);
		if (!all || !out)
			rc = -ENOMEM;
		else {
			k = l.fd >= 0 ? listxattr(abs, all, (size_t)k)
				      : llistxattr(abs, all, (size_t)k);
			rc = k < 0 ? -errno : 0;
		}
	}
	loc_done(&l);
	pthread_rwlock_unlock(&fs->ns);
	for (ssize_t i = 0; rc == 0 && i < k;
	     i += (ssize_t)strlen(all + i) + 1) {
		if (!user_xattr(all + i))
			continue;
		size_t nl = strlen(all + i) + 1;
		memcpy(out + olen, all + i, nl);
		olen += nl;
	}
	if (rc)
		fuse_reply_err(req, -rc);
	else if (size == 0)
		fuse_reply_xattr(req, olen);
	else if (size < olen)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, out, olen);
	free(all);
	free(out);
}

static void op_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			const char *value, size_t size, int flags)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *n = node_of(fs, ino);
	struct loc l = {.fd = -1};
	char abs[PATH_MAX];
	int rc;

	if (!user_xattr(name) ||
	    (ino == FUSE_ROOT_ID && strcmp(name, CFS_CONTROL_XATTR) == 0)) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	rc = wr_begin(fs);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	rc = cow_prepare(fs, n);
	if (rc == 0) {
		pthread_rwlock_rdlock(&fs->ns);
		rc = xattr_path(fs, n, &l, abs);
		if (rc == 0)
			rc = (l.fd >= 0
				      ? setxattr(abs, name, value, size, flags)
				      : lsetxattr(abs, name, value, size,
						  flags))
				     ? -errno
				     : 0;
		loc_done(&l);
		pthread_rwlock_unlock(&fs->ns);
	}
	wr_end(fs, rc);
	fuse_reply_err(req, -rc);
}

static void op_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	struct cfs_fs *fs = fs_of(req);
	struct cfs_node *n = node_of(fs, ino);
	struct loc l = {.fd = -1};
	char abs[PATH_MAX];
	int rc;

	if (!user_xattr(name)) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	rc = wr_begin(fs);
	if (rc) {
		fuse_reply_err(req, -rc);
		return;
	}
	rc = cow_prepare(fs, n);
	if (rc == 0) {
		pthread_rwlock_rdlock(&fs->ns);
		rc = xattr_path(fs, n, &l, abs);
		if (rc == 0)
			rc = (l.fd >= 0 ? removexattr(abs, name)
					: lremovexattr(abs, name))
				     ? -errno
				     : 0;
		loc_done(&l);
		pthread_rwlock_unlock(&fs->ns);
	}
	wr_end(fs, rc);
	fuse_reply_err(req, -rc);
}

const struct fuse_lowlevel_ops cfs_fuse_ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.symlink = op_symlink,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.rename = op_rename,
	.link = op_link,
	.create = op_create,
	.open = op_open,
	.read = op_read,
	.write_buf = op_write_buf,
	.flush = op_flush,
	.release = op_release,
	.fsync = op_fsync,
	.fallocate = op_fallocate,
	.lseek = op_lseek,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.fsyncdir = op_fsyncdir,
	.statfs = op_statfs,
	.access = op_access,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.setxattr = op_setxattr,
	.removexattr = op_removexattr,
};
