/*
 * Bundle pack and unpack: libarchive for the tar layer (PAX written, PAX and
 * GNU read), libzstd streaming for compression, both driven through small
 * callbacks so no bundle is ever held in memory. The packer walks the tree
 * relative to directory fds with O_NOFOLLOW and reproduces the reference's
 * member order and filters; the unpacker applies the reference's archive
 * safety rules and extracts one path component at a time, so a symlink in
 * the archive (or in dest) cannot redirect a later member. See bundle.h and
 * REFERENCE.md §5.
 */
#include "core/bundle.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>
#include <zstd_errors.h>
#include <openssl/evp.h>
#include <sodium.h>

#include "core/error.h"
#include "core/log.h"
#include "core/util.h"

#define IO_CHUNK (128 * 1024)
#define TAR_RECORD 10240
/* Most libzstd worker threads we start (each costs a few MiB). */
#define ZSTD_MAX_WORKERS 4
/*
 * Bytes a worker compresses at a time. 1 GiB / 20,000-file commit on 2
 * cores: 1 MiB jobs 9.6-10.7 s at 37 MiB peak RSS, 2 MiB 6.4-6.8 s at
 * 43 MiB, 4 MiB 6.5-9.2 s at 61 MiB (the cap is 64 MiB): 2 MiB.
 */
#define ZSTD_JOB_SIZE (2 << 20)
/* Header bytes (tar/pax/GNU long names) tolerated per member. */
#define HEADER_SLACK (1 << 20)
/* Decompressed bytes tolerated after the end-of-archive marker. */
#define TRAILER_MAX (1 << 20)

int cfs_bundle_fd_sink(const void *buf, size_t len, void *payload)
{
	return cfs_write_all(*(int *)payload, buf, len);
}

ssize_t cfs_bundle_fd_source(void *buf, size_t len, void *payload)
{
	int fd = *(int *)payload;
	ssize_t n;

	do {
		n = read(fd, buf, len);
	} while (n < 0 && errno == EINTR);
	if (n < 0)
		return cfs_error_errno(errno, "reading bundle");
	return n;
}

/*
 * libarchive converts names between the locale's charset and the UTF-8 of
 * PAX headers. Context trees hold UTF-8 names, and a daemon often runs in
 * the "C" locale, where every non-ASCII name would be written as
 * hdrcharset=BINARY. So both directions run with a UTF-8 LC_CTYPE for the
 * calling thread only (uselocale), never touching the process locale.
 */
struct utf8_scope {
	locale_t loc, old;
};

static void utf8_enter(struct utf8_scope *s)
{
	s->old = (locale_t)0;
	s->loc = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
	if (s->loc)
		s->old = uselocale(s->loc);
}

static void utf8_leave(struct utf8_scope *s)
{
	if (!s->loc)
		return;
	uselocale(s->old);
	freelocale(s->loc);
	s->loc = (locale_t)0;
}

/* ======================================================================
 * Pack
 * ====================================================================== */

struct inode_slot {
	dev_t dev;
	ino_t ino;
	char *arcpath; /* NULL = empty slot */
};

struct packer {
	struct archive *a;
	const struct cfs_policy *policy;
	const struct cfs_bundle_member *extra;
	size_t nextra;
	cfs_write_fn sink;
	void *payload;
	ZSTD_CCtx *zc;
	unsigned char *zout;
	size_t zout_cap;
	char *iobuf;
	int err; /* first failure inside a libarchive callback */
	struct cfs_bundle_stats st;
	struct inode_slot *links; /* open addressing, power-of-two size */
	size_t nlinks, links_cap;
};

static int pk_emit(struct packer *p, const void *buf, size_t len)
{
	int rc;

	if (len == 0)
		return 0;
	rc = p->sink(buf, len, p->payload);
	if (rc) {
		if (!cfs_error_last()[0])
			cfs_error_set(rc, "writing bundle failed");
		return rc;
	}
	p->st.compressed_bytes += len;
	return 0;
}

static int pk_compress(struct packer *p, const void *buf, size_t len,
		       ZSTD_EndDirective mode)
{
	ZSTD_inBuffer in = {buf, len, 0};

	for (;;) {
		ZSTD_outBuffer out = {p->zout, p->zout_cap, 0};
		size_t r = ZSTD_compressStream2(p->zc, &out, &in, mode);
		int rc;

		if (ZSTD_isError(r))
			return cfs_error_set(CFS_EIO,
					     "zstd compression failed: %s",
					     ZSTD_getErrorName(r));
		rc = pk_emit(p, out.dst, out.pos);
		if (rc)
			return rc;
		if (mode == ZSTD_e_end ? r == 0 : in.pos == in.size)
			return 0;
	}
}

static la_ssize_t pk_write_cb(struct archive *a, void *cd, const void *buf,
			      size_t len)
{
	struct packer *p = cd;
	int rc;

	if (p->err)
		return -1;
	rc = pk_compress(p, buf, len, ZSTD_e_continue);
	if (rc) {
		p->err = rc;
		archive_set_error(a, EIO, "%s", cfs_error_last());
		return -1;
	}
	p->st.tar_bytes += len;
	return (la_ssize_t)len;
}

/* Maps a libarchive failure to our error (a callback's error wins). */
static int pk_archive_error(struct packer *p, const char *what)
{
	if (p->err)
		return p->err;
	return cfs_error_set(CFS_EIO, "%s: %s", what,
			     archive_error_string(p->a)
				     ? archive_error_string(p->a)
				     : "libarchive error");
}

static size_t inode_hash(dev_t dev, ino_t ino)
{
	uint64_t h = (uint64_t)ino * 0x9e3779b97f4a7c15ULL ^ (uint64_t)dev;
	return (size_t)(h ^ (h >> 29));
}

static const char *links_find(struct packer *p, dev_t dev, ino_t ino)
{
	if (!p->links_cap)
		return NULL;
	for (size_t i = inode_hash(dev, ino) & (p->links_cap - 1);;
	     i = (i + 1) & (p->links_cap - 1)) {
		struct inode_slot *s = &p->links[i];
		if (!s->arcpath)
			return NULL;
		if (s->dev == dev && s->ino == ino)
			return s->arcpath;
	}
}

static int links_add(struct packer *p, dev_t dev, ino_t ino, const char *arc)
{
	if ((p->nlinks + 1) * 2 > p->links_cap) {
		size_t ncap = p->links_cap ? p->links_cap * 2 : 64;
		struct inode_slot *n = cfs_calloc(ncap, sizeof(*n));
		if (!n)
			return CFS_ENOMEM;
		for (size_t i = 0; i < p->links_cap; i++) {
			struct inode_slot *s = &p->links[i];
			size_t j;
			if (!s->arcpath)
				continue;
			for (j = inode_hash(s->dev, s->ino) & (ncap - 1);
			     n[j].arcpath; j = (j + 1) & (ncap - 1))
				;
			n[j] = *s;
		}
		free(p->links);
		p->links = n;
		p->links_cap = ncap;
	}
	size_t i = inode_hash(dev, ino) & (p->links_cap - 1);
	while (p->links[i].arcpath)
		i = (i + 1) & (p->links_cap - 1);
	p->links[i].arcpath = cfs_strdup(arc);
	if (!p->links[i].arcpath)
		return CFS_ENOMEM;
	p->links[i].dev = dev;
	p->links[i].ino = ino;
	p->nlinks++;
	return 0;
}

static void links_free(struct packer *p)
{
	for (size_t i = 0; i < p->links_cap; i++)
		free(p->links[i].arcpath);
	free(p->links);
	p->links = NULL;
	p->links_cap = p->nlinks = 0;
}

/* Writes one tar header. Directories get their trailing '/' from libarchive. */
static int pk_header(struct packer *p, const char *arc, mode_t type,
		     mode_t perm, int64_t sec, long nsec, int64_t size,
		     const char *symlink, const char *hardlink)
{
	struct archive_entry *e = archive_entry_new();
	int rc = 0, r;

	if (!e)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	archive_entry_copy_pathname(e, arc);
	archive_entry_set_filetype(e, type);
	archive_entry_set_perm(e, perm & 07777);
	archive_entry_set_mtime(e, (time_t)sec, nsec);
	archive_entry_set_uid(e, 0);
	archive_entry_set_gid(e, 0);
	archive_entry_set_size(e, size);
	if (symlink)
		archive_entry_copy_symlink(e, symlink);
	if (hardlink)
		archive_entry_copy_hardlink(e, hardlink);
	r = archive_write_header(p->a, e);
	if (r < ARCHIVE_WARN)
		rc = pk_archive_error(p, "writing tar header");
	else if (r == ARCHIVE_WARN)
		cfs_debug("tar header for %s: %s", arc,
			  archive_error_string(p->a));
	archive_entry_free(e);
	if (rc == 0)
		p->st.entries++;
	return rc;
}

static int pk_data(struct packer *p, const void *buf, size_t len)
{
	la_ssize_t w = archive_write_data(p->a, buf, len);

	if (w < 0 || (size_t)w != len)
		return pk_archive_error(p, "writing tar data");
	p->st.bytes += len;
	return 0;
}

static int pk_extra(struct packer *p, const struct cfs_bundle_member *m)
{
	int rc = pk_header(p, m->path, AE_IFREG, m->mode, m->mtime, 0,
			   (int64_t)m->len, NULL, NULL);
	if (rc)
		return rc;
	p->st.files++;
	if (!m->len)
		return 0;
	if (m->data)
		return pk_data(p, m->data, m->len);
	for (off_t off = 0; (size_t)off < m->len;) {
		size_t want = m->len - (size_t)off;
		ssize_t n;

		if (want > IO_CHUNK)
			want = IO_CHUNK;
		n = pread(m->fd, p->iobuf, want, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return cfs_error_errno(errno, "read %s", m->path);
		if (n == 0)
			return cfs_error_set(CFS_EIO, "%s shrank while packing",
					     m->path);
		rc = pk_data(p, p->iobuf, (size_t)n);
		if (rc)
			return rc;
		off += n;
	}
	return 0;
}

/* Extra member whose path equals arc, or NULL. */
static const struct cfs_bundle_member *extra_exact(struct packer *p,
						   const char *arc)
{
	for (size_t i = 0; i < p->nextra; i++)
		if (strcmp(p->extra[i].path, arc) == 0)
			return &p->extra[i];
	return NULL;
}

/* First extra member strictly below arc, or NULL. */
static const struct cfs_bundle_member *extra_below(struct packer *p,
						   const char *arc)
{
	size_t n = strlen(arc);

	for (size_t i = 0; i < p->nextra; i++)
		if (strncmp(p->extra[i].path, arc, n) == 0 &&
		    p->extra[i].path[n] == '/')
			return &p->extra[i];
	return NULL;
}

/*
 * Children of the directory arc: the names on disk (dfd >= 0) plus the
 * first components of extra members below arc, sorted, without duplicates.
 */
static int pk_children(struct packer *p, struct cfs_names *out, int dfd,
		       const char *arc)
{
	size_t alen = strlen(arc);
	int rc;

	if (dfd >= 0) {
		rc = cfs_names_read_dir(out, dfd, arc);
		if (rc)
			return rc;
	}
	for (size_t i = 0; i < p->nextra; i++) {
		const char *path = p->extra[i].path, *s, *slash;
		if (strncmp(path, arc, alen) != 0 || path[alen] != '/')
			continue;
		s = path + alen + 1;
		slash = strchr(s, '/');
		rc = cfs_names_add(out, s,
				   slash ? (size_t)(slash - s) : strlen(s));
		if (rc)
			return rc;
	}
	/* drops duplicates (a name both on disk and among the extras) */
	cfs_names_sort_unique(out);
	return 0;
}

#define PK_OPEN_FLAGS \
	(O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)

/*
 * Packs the open regular file fd (closed here) as arc; lst: the walk's
 * lstat of the name, NULL when readdir's d_type stood in for it. Without
 * lst, fd may be no regular file (a device mounted over the name, which
 * readdir still calls a file): returns 1 then, for the caller to look at
 * the name with lstat.
 */
static int pk_file(struct packer *p, int fd, const char *arc,
		   const struct stat *lst)
{
	struct stat st;
	int rc = 0;
	int64_t left;

	if (fstat(fd, &st) < 0) {
		rc = cfs_error_errno(errno, "cannot stat %s", arc);
		goto out;
	}
	if (!lst && !S_ISREG(st.st_mode)) {
		rc = 1;
		goto out;
	}
	if (!S_ISREG(st.st_mode) ||
	    (lst && (st.st_ino != lst->st_ino || st.st_dev != lst->st_dev))) {
		rc = cfs_error_set(CFS_EIO,
				   "%s was replaced while packing; retry the "
				   "commit",
				   arc);
		goto out;
	}
	if (st.st_nlink > 1) {
		const char *first = links_find(p, st.st_dev, st.st_ino);
		if (first) {
			rc = pk_header(p, arc, AE_IFREG, st.st_mode,
				       st.st_mtim.tv_sec, st.st_mtim.tv_nsec, 0,
				       NULL, first);
			goto out;
		}
	}
	rc = pk_header(p, arc, AE_IFREG, st.st_mode, st.st_mtim.tv_sec,
		       st.st_mtim.tv_nsec, st.st_size, NULL, NULL);
	if (rc)
		goto out;
	p->st.files++;
	for (left = st.st_size; left > 0;) {
		size_t want = left > IO_CHUNK ? IO_CHUNK : (size_t)left;
		ssize_t n = read(fd, p->iobuf, want);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = cfs_error_errno(errno, "reading %s", arc);
			goto out;
		}
		if (n == 0) {
			rc = cfs_error_set(CFS_EIO,
					   "%s shrank while packing; retry the "
					   "commit",
					   arc);
			goto out;
		}
		rc = pk_data(p, p->iobuf, (size_t)n);
		if (rc)
			goto out;
		left -= n;
	}
	if (st.st_nlink > 1)
		rc = links_add(p, st.st_dev, st.st_ino, arc);
out:
	close(fd);
	return rc;
}

static int pk_node(struct packer *p, int dfd, const char *name,
		   unsigned char type, struct cfs_buf *arc, int depth);

/*
 * Writes the directory arc (header from st, or synthesized when st is NULL)
 * and its children. dfd/name locate it on disk; subfd < 0 = virtual.
 */
static int pk_dir(struct packer *p, int subfd, const struct stat *st,
		  struct cfs_buf *arc, int depth)
{
	struct cfs_names kids = {0};
	int rc;

	if (st) {
		rc = pk_header(p, arc->ptr, AE_IFDIR, st->st_mode,
			       st->st_mtim.tv_sec, st->st_mtim.tv_nsec, 0, NULL,
			       NULL);
	} else {
		const struct cfs_bundle_member *m = extra_below(p, arc->ptr);
		rc = pk_header(p, arc->ptr, AE_IFDIR, 0755, m ? m->mtime : 0, 0,
			       0, NULL, NULL);
	}
	if (rc)
		return rc;
	rc = pk_children(p, &kids, subfd, arc->ptr);
	if (rc)
		goto out;
	for (size_t i = 0; i < kids.n; i++) {
		size_t keep = arc->len;
		rc = cfs_buf_puts(arc, "/");
		if (!rc)
			rc = cfs_buf_puts(arc, kids.v[i]);
		if (!rc)
			rc = pk_node(p, subfd, kids.v[i], kids.type[i], arc,
				     depth + 1);
		arc->len = keep;
		arc->ptr[keep] = '\0';
		if (rc)
			goto out;
	}
out:
	cfs_names_free(&kids);
	return rc;
}

/*
 * type: the entry's d_type from its directory (DT_UNKNOWN: not known). A
 * regular file is opened without a stat first (a system call less per
 * file on the packing thread; pk_file checks what it opened), anything
 * else, or a file that became something else, is looked at with lstat.
 */
static int pk_node(struct packer *p, int dfd, const char *name,
		   unsigned char type, struct cfs_buf *arc, int depth)
{
	const struct cfs_bundle_member *m;
	struct stat st;
	bool virt, exists = false, excluded;
	int rc = 0, subfd = -1;

	if (depth > CFS_BUNDLE_MAX_DEPTH)
		return cfs_error_set(CFS_EUNSUPPORTED,
				     "%s nests deeper than %d directories",
				     arc->ptr, CFS_BUNDLE_MAX_DEPTH);
	m = extra_exact(p, arc->ptr);
	if (m)
		return pk_extra(p, m);
	virt = extra_below(p, arc->ptr) != NULL;
	if (type == DT_REG && dfd >= 0 && !virt) {
		int fd;

		if (cfs_policy_excluded(p->policy, arc->ptr))
			return 0;
		fd = openat(dfd, name, PK_OPEN_FLAGS);
		if (fd >= 0) {
			rc = pk_file(p, fd, arc->ptr, NULL);
			if (rc != 1)
				return rc;
		} else if (errno == ENOENT) {
			return 0;
		}
		/* a link, special file or mount point now, or a real error:
		 * see below */
		rc = 0;
	}
	if (dfd >= 0) {
		if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0)
			exists = true;
		else if (errno != ENOENT)
			return cfs_error_errno(errno, "cannot stat %s",
					       arc->ptr);
	}
	if (!exists && !virt)
		return 0;
	excluded = cfs_policy_excluded(p->policy, arc->ptr);
	if (excluded && !virt)
		return 0;
	if (virt && (!exists || excluded || !S_ISDIR(st.st_mode)))
		return pk_dir(p, -1, NULL, arc, depth);

	if (S_ISDIR(st.st_mode)) {
		struct stat sst;
		subfd = openat(dfd, name,
			       O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (subfd < 0)
			return cfs_error_errno(errno, "cannot open %s",
					       arc->ptr);
		if (fstat(subfd, &sst) < 0 || sst.st_ino != st.st_ino ||
		    sst.st_dev != st.st_dev) {
			rc = cfs_error_set(CFS_EIO,
					   "%s was replaced while packing; "
					   "retry the commit",
					   arc->ptr);
			goto out;
		}
		rc = pk_dir(p, subfd, &sst, arc, depth);
	} else if (S_ISREG(st.st_mode)) {
		int fd = openat(dfd, name, PK_OPEN_FLAGS);

		if (fd < 0)
			return cfs_error_errno(
				errno, "cannot open %s for packing", arc->ptr);
		rc = pk_file(p, fd, arc->ptr, &st);
	} else if (S_ISLNK(st.st_mode)) {
		char target[CFS_BUNDLE_MAX_NAME + 1];
		ssize_t n = readlinkat(dfd, name, target, sizeof(target));
		if (n < 0)
			return cfs_error_errno(errno, "cannot read link %s",
					       arc->ptr);
		if ((size_t)n >= sizeof(target) || n == 0 ||
		    cfs_path_unsafe(target, (size_t)n)) {
			cfs_debug("not packing %s: unsafe link target",
				  arc->ptr);
			return 0;
		}
		target[n] = '\0';
		rc = pk_header(p, arc->ptr, AE_IFLNK, st.st_mode,
			       st.st_mtim.tv_sec, st.st_mtim.tv_nsec, 0, target,
			       NULL);
	} else {
		cfs_debug("not packing %s: not a file, directory or link",
			  arc->ptr);
	}
out:
	if (subfd >= 0)
		close(subfd);
	return rc;
}

/* Splits a relative path into components, dropping "" and "." ones. */
static int split_components(char ***out, size_t *n, char *path)
{
	size_t cap = 8, cnt = 0;
	char **v = cfs_calloc(cap, sizeof(*v));
	char *save = NULL, *tok;

	if (!v)
		return CFS_ENOMEM;
	for (tok = strtok_r(path, "/", &save); tok;
	     tok = strtok_r(NULL, "/", &save)) {
		if (strcmp(tok, ".") == 0)
			continue;
		if (cnt == cap) {
			char **nv = realloc(v, cap * 2 * sizeof(*v));
			if (!nv) {
				free(v);
				return cfs_error_set(CFS_ENOMEM,
						     "out of memory");
			}
			v = nv;
			cap *= 2;
		}
		v[cnt++] = tok;
	}
	*out = v;
	*n = cnt;
	return 0;
}

/*
 * Opens the directory holding candidate item comps[0..n-1] (all but the
 * last component), never following links. -1 with errno when missing.
 */
static int open_parent(int rootfd, char **comps, size_t n)
{
	int fd = dup(rootfd);

	for (size_t i = 0; fd >= 0 && i + 1 < n; i++) {
		int next =
			openat(fd, comps[i],
			       O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		int saved = errno;
		close(fd);
		errno = saved;
		fd = next;
	}
	return fd;
}

struct candidate {
	char *arc; /* normalized root-relative name */
	char *copy; /* storage for comps */
	char **comps;
	size_t ncomps;
};

static void candidates_free(struct candidate *c, size_t n)
{
	if (!c)
		return;
	for (size_t i = 0; i < n; i++) {
		free(c[i].arc);
		free(c[i].copy);
		free(c[i].comps);
	}
	free(c);
}

/* .contextsdk, contextsdk.json, then the roots: normalized, deduplicated. */
static int pk_candidates(struct candidate **out, size_t *nout,
			 const struct cfs_policy *policy)
{
	size_t total = policy->nroots + 2, n = 0;
	struct candidate *c = cfs_calloc(total, sizeof(*c));
	int rc = 0;

	if (!c)
		return CFS_ENOMEM;
	for (size_t i = 0; i < total; i++) {
		const char *item = i == 0   ? CFS_META_DIR
				   : i == 1 ? CFS_CONTEXT_JSON
					    : policy->roots[i - 2];
		struct candidate k = {0};
		struct cfs_buf b = CFS_BUF_INIT;
		bool dup = false;

		if (!item || !item[0])
			continue;
		if (cfs_path_unsafe(item, strlen(item))) {
			rc = cfs_error_set(CFS_EUNSAFE,
					   "unsafe persistence policy root: %s",
					   item);
			goto out;
		}
		k.copy = cfs_strdup(item);
		if (!k.copy) {
			rc = CFS_ENOMEM;
			goto out;
		}
		rc = split_components(&k.comps, &k.ncomps, k.copy);
		for (size_t j = 0; rc == 0 && j < k.ncomps; j++) {
			if (j)
				rc = cfs_buf_puts(&b, "/");
			if (!rc)
				rc = cfs_buf_puts(&b, k.comps[j]);
		}
		if (rc == 0 && k.ncomps == 0) {
			cfs_warn("persistence policy root \"%s\" names the "
				 "context root itself; ignored",
				 item);
		} else if (rc == 0) {
			k.arc = cfs_buf_detach(&b);
			for (size_t j = 0; j < n; j++)
				if (strcmp(c[j].arc, k.arc) == 0)
					dup = true;
		}
		cfs_buf_free(&b);
		if (rc || !k.arc || dup) {
			free(k.arc);
			free(k.copy);
			free(k.comps);
			if (rc)
				goto out;
			continue;
		}
		c[n++] = k;
	}
	*out = c;
	*nout = n;
	c = NULL;
out:
	candidates_free(c, n);
	return rc;
}

static int pk_check_extras(const struct cfs_bundle_member *extra, size_t nextra,
			   const struct candidate *c, size_t n)
{
	for (size_t i = 0; i < nextra; i++) {
		const char *path = extra[i].path;
		bool under = false;

		if (!path || !path[0] || cfs_path_unsafe(path, strlen(path)) ||
		    path[strlen(path) - 1] == '/' || strstr(path, "//") ||
		    strcmp(path, ".") == 0 || strncmp(path, "./", 2) == 0 ||
		    strstr(path, "/./") ||
		    (strlen(path) >= 2 &&
		     strcmp(path + strlen(path) - 2, "/.") == 0))
			return cfs_error_set(CFS_EINVAL,
					     "invalid in-memory bundle member "
					     "path: %s",
					     path ? path : "(null)");
		if (!extra[i].data && extra[i].len && extra[i].fd < 0)
			return cfs_error_set(CFS_EINVAL,
					     "bundle member %s has no data",
					     path);
		for (size_t j = 0; j < n && !under; j++) {
			size_t l = strlen(c[j].arc);
			under = strcmp(path, c[j].arc) == 0 ||
				(strncmp(path, c[j].arc, l) == 0 &&
				 path[l] == '/');
		}
		if (!under)
			return cfs_error_set(CFS_EINVAL,
					     "bundle member %s is outside the "
					     "packed items",
					     path);
	}
	return 0;
}

/*
 * One compression worker more than there are cores: libzstd keeps only
 * workers + 2 jobs in flight and writes them out in order, so with as many
 * workers as cores a slow job (text) stalls the queue behind it while the
 * fast ones (incompressible data) are done and their cores idle. 1 GiB
 * commit on 2 cores: 2 workers 5.7-5.9 s, 3 workers 4.7-5.1 s (53 MiB
 * peak RSS), 4 workers 5.2-6.8 s.
 */
static unsigned pk_workers(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	if (n < 1)
		return 1;
	n++;
	return n > ZSTD_MAX_WORKERS ? ZSTD_MAX_WORKERS : (unsigned)n;
}

static bool is_head_item(const char *arc)
{
	return strcmp(arc, CFS_META_DIR) == 0 ||
	       strcmp(arc, CFS_CONTEXT_JSON) == 0;
}

/* head_only: cfs_bundle_pack_head() */
static int pack_impl(int rootfd, const struct cfs_policy *policy,
		     const struct cfs_bundle_member *extra, size_t nextra,
		     cfs_write_fn sink, void *payload,
		     struct cfs_bundle_stats *stats, bool head_only)
{
	struct packer p = {0};
	struct candidate *cands = NULL;
	size_t ncands = 0;
	struct cfs_buf arc = CFS_BUF_INIT;
	bool any = nextra > 0, opened = false;
	struct cfs_policy defpol = {0};
	struct utf8_scope loc;
	int rc, r;

	utf8_enter(&loc);
	if (!policy) {
		rc = cfs_policy_default(&defpol);
		if (rc)
			goto out;
		policy = &defpol;
	}
	p.policy = policy;
	p.extra = extra;
	p.nextra = nextra;
	p.sink = sink;
	p.payload = payload;

	rc = pk_candidates(&cands, &ncands, policy);
	if (rc)
		goto out;
	if (head_only) {
		size_t k = 0;

		for (size_t i = 0; i < ncands; i++) {
			if (is_head_item(cands[i].arc)) {
				cands[k++] = cands[i];
				continue;
			}
			free(cands[i].arc);
			free(cands[i].copy);
			free(cands[i].comps);
		}
		ncands = k;
		any = true; /* an empty head is still a frame */
	}
	rc = pk_check_extras(extra, nextra, cands, ncands);
	if (rc)
		goto out;
	for (size_t i = 0; i < ncands && !any; i++) {
		struct stat st;
		int pfd = open_parent(rootfd, cands[i].comps, cands[i].ncomps);
		if (pfd < 0)
			continue;
		if (fstatat(pfd, cands[i].comps[cands[i].ncomps - 1], &st,
			    AT_SYMLINK_NOFOLLOW) == 0)
			any = true;
		close(pfd);
	}
	if (!any) {
		rc = cfs_error_set(CFS_ENOTFOUND,
				   "no managed context entries found (%s, %s "
				   "or a persistence policy root); refusing to "
				   "pack an empty bundle",
				   CFS_META_DIR, CFS_CONTEXT_JSON);
		goto out;
	}

	p.zc = ZSTD_createCCtx();
	p.zout_cap = ZSTD_CStreamOutSize();
	p.zout = malloc(p.zout_cap);
	p.iobuf = malloc(IO_CHUNK);
	if (!p.zc || !p.zout || !p.iobuf) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	if (ZSTD_isError(ZSTD_CCtx_setParameter(p.zc, ZSTD_c_compressionLevel,
						CFS_BUNDLE_ZSTD_LEVEL)) ||
	    ZSTD_isError(
		    ZSTD_CCtx_setParameter(p.zc, ZSTD_c_checksumFlag, 1))) {
		rc = cfs_error_set(CFS_EIO, "cannot configure zstd");
		goto out;
	}
	/* Threads only when libzstd was built with them (else an error). */
	if (!ZSTD_isError(ZSTD_CCtx_setParameter(p.zc, ZSTD_c_nbWorkers,
						 (int)pk_workers())))
		(void)ZSTD_CCtx_setParameter(p.zc, ZSTD_c_jobSize,
					     ZSTD_JOB_SIZE);

	p.a = archive_write_new();
	if (!p.a) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	/*
	 * Unblocked: libarchive hands headers and our read buffers straight
	 * to pk_write_cb instead of copying every byte into a block buffer
	 * first (the records are padded at the end).
	 */
	if (archive_write_set_format_pax(p.a) != ARCHIVE_OK ||
	    archive_write_set_bytes_per_block(p.a, 0) != ARCHIVE_OK) {
		rc = pk_archive_error(&p, "configuring tar writer");
		goto out;
	}
	if (archive_write_open(p.a, &p, NULL, pk_write_cb, NULL) !=
	    ARCHIVE_OK) {
		rc = pk_archive_error(&p, "opening tar writer");
		goto out;
	}
	opened = true;

	for (size_t i = 0; i < ncands; i++) {
		struct candidate *c = &cands[i];
		int pfd = open_parent(rootfd, c->comps, c->ncomps);

		arc.len = 0;
		rc = cfs_buf_puts(&arc, c->arc);
		if (!rc)
			rc = pk_node(&p, pfd, c->comps[c->ncomps - 1],
				     DT_UNKNOWN, &arc, (int)c->ncomps - 1);
		if (pfd >= 0)
			close(pfd);
		if (rc)
			goto out;
	}
	if (head_only) {
		/*
		 * Whole members and nothing after them: the last member's
		 * padding goes out now, the end-of-archive blocks never
		 * (libarchive's close on free writes into a refusing sink).
		 */
		if (archive_write_finish_entry(p.a) != ARCHIVE_OK) {
			rc = pk_archive_error(&p, "finishing tar member");
			goto out;
		}
		rc = pk_compress(&p, NULL, 0, ZSTD_e_end);
		if (rc)
			goto out;
		if (stats)
			*stats = p.st;
		goto out;
	}
	opened = false;
	r = archive_write_close(p.a);
	if (r != ARCHIVE_OK) {
		rc = pk_archive_error(&p, "finishing tar stream");
		goto out;
	}
	/* whole 10240-byte records, as tar and python's tarfile write them */
	if (p.st.tar_bytes % TAR_RECORD) {
		static const char zeros[TAR_RECORD];
		size_t pad = TAR_RECORD - p.st.tar_bytes % TAR_RECORD;

		rc = pk_compress(&p, zeros, pad, ZSTD_e_continue);
		if (rc)
			goto out;
		p.st.tar_bytes += pad;
	}
	rc = pk_compress(&p, NULL, 0, ZSTD_e_end);
	if (rc)
		goto out;
	if (stats)
		*stats = p.st;
out:
	if (p.a) {
		if (opened) /* error path: keep libarchive from flushing */
			p.err = p.err ? p.err : CFS_ECANCELED;
		archive_write_free(p.a);
	}
	ZSTD_freeCCtx(p.zc);
	free(p.zout);
	free(p.iobuf);
	links_free(&p);
	candidates_free(cands, ncands);
	cfs_buf_free(&arc);
	cfs_policy_free(&defpol);
	utf8_leave(&loc);
	return rc;
}

int cfs_bundle_pack(int rootfd, const struct cfs_policy *policy,
		    const struct cfs_bundle_member *extra, size_t nextra,
		    cfs_write_fn sink, void *payload,
		    struct cfs_bundle_stats *stats)
{
	return pack_impl(rootfd, policy, extra, nextra, sink, payload, stats,
			 false);
}

int cfs_bundle_pack_head(int rootfd, const struct cfs_bundle_member *extra,
			 size_t nextra, cfs_write_fn sink, void *payload,
			 struct cfs_bundle_stats *stats)
{
	return pack_impl(rootfd, NULL, extra, nextra, sink, payload, stats,
			 true);
}

/* ======================================================================
 * Unpack
 * ====================================================================== */

struct frame {
	char *name;
	int fd;
	bool meta; /* apply mode/mtime when leaving the directory */
	mode_t mode;
	struct timespec mtime;
};

struct unpacker {
	struct archive *a;
	cfs_read_fn source;
	void *payload;
	ZSTD_DCtx *zd;
	unsigned char *in;
	size_t in_cap;
	ZSTD_inBuffer zin;
	unsigned char *out;
	size_t out_cap;
	size_t last_ret; /* last ZSTD_decompressStream result */
	bool saw_input;
	bool src_eof;
	bool maybe_more; /* output buffer was full: flush before reading */
	int err; /* first failure inside the read callback */
	uint64_t max_entries, max_bytes;
	bool validate_only;
	uint64_t declared; /* summed member sizes so far */
	struct cfs_bundle_stats st;
	int destfd;
	struct frame stack[CFS_BUNDLE_MAX_DEPTH + 1];
	int depth; /* frames above dest; stack[0] is dest */
	/*
	 * validate_only: what extraction would have made of each path so far
	 * (keyed by a keyed 64-bit hash of the normalised path; 9 bytes a
	 * member, so a million members cost ~20 MiB), so that verify refuses
	 * exactly what export refuses.
	 */
	struct vslot *vt;
	size_t vt_cap, vt_used;
	unsigned char vt_key[crypto_shorthash_KEYBYTES];
	/* the tail check (struct cfs_unpack_tail) */
	struct cfs_unpack_tail *tail;
	enum { TAIL_HEAD, TAIL_IN, TAIL_NO } tail_state;
	bool f1_seen; /* the first frame ended ... */
	uint64_t f1_comp, f1_tar; /* ... at these compressed / tar offsets */
	uint64_t nz_end; /* tar offset just past the last non-zero byte */
	uint64_t eof_at; /* tar offset of the end-of-archive blocks */
	struct candidate *roots; /* the policy roots, normalised */
	size_t nroots;
	char *ok_dir; /* last directory known to be kept, ancestors too */
	/* hashing what is extracted */
	cfs_file_hashed_fn file_hashed;
	void *hash_payload;
	EVP_MD_CTX *md;
};

enum vkind { VK_NONE = 0, VK_FILE, VK_DIR, VK_LINK };

struct vslot {
	uint64_t h;
	unsigned char kind; /* enum vkind; VK_NONE = empty slot */
};

static ssize_t up_produce(struct unpacker *u)
{
	for (;;) {
		ZSTD_outBuffer out = {u->out, u->out_cap, 0};
		size_t r;

		if (u->zin.pos == u->zin.size && !u->src_eof &&
		    !u->maybe_more) {
			ssize_t n;
			cfs_error_clear();
			n = u->source(u->in, u->in_cap, u->payload);
			if (n < 0) {
				if (!cfs_error_last()[0])
					cfs_error_set((int)n,
						      "reading bundle failed");
				return n;
			}
			if ((size_t)n > u->in_cap)
				return cfs_error_set(CFS_EINVAL,
						     "bundle source overran "
						     "its buffer");
			if (n == 0) {
				u->src_eof = true;
			} else {
				u->zin.src = u->in;
				u->zin.size = (size_t)n;
				u->zin.pos = 0;
				u->saw_input = true;
				u->st.compressed_bytes += (uint64_t)n;
			}
		}
		if (u->zin.pos == u->zin.size && u->src_eof && !u->maybe_more) {
			if (!u->saw_input)
				return cfs_error_set(CFS_ECORRUPT,
						     "bundle is empty");
			if (u->last_ret != 0)
				return cfs_error_set(CFS_ECORRUPT,
						     "zstd decompression "
						     "failed: truncated "
						     "stream");
			return 0;
		}
		size_t in_before = u->zin.pos;

		r = ZSTD_decompressStream(u->zd, &out, &u->zin);
		if (ZSTD_isError(r)) {
			if (ZSTD_getErrorCode(r) ==
			    ZSTD_error_frameParameter_windowTooLarge)
				return cfs_error_set(
					CFS_ECORRUPT,
					"zstd decompression failed: the bundle "
					"needs a window above the %d MiB cap",
					1 << (CFS_BUNDLE_WINDOW_LOG_MAX - 20));
			return cfs_error_set(CFS_ECORRUPT,
					     "zstd decompression failed: %s",
					     ZSTD_getErrorName(r));
		}
		/*
		 * A call that neither consumed nor produced anything (the
		 * flush probe after a frame ended exactly at a full output
		 * buffer) returns the next frame's header hint: it must not
		 * overwrite the 0 that said the frame was complete.
		 */
		if (out.pos > 0 || u->zin.pos != in_before) {
			u->last_ret = r;
			if (r == 0 && !u->f1_seen) {
				/* where the first frame ends, both sides */
				u->f1_seen = true;
				u->f1_comp = u->st.compressed_bytes -
					     (u->zin.size - u->zin.pos);
				u->f1_tar = u->st.tar_bytes + out.pos;
			}
		}
		u->maybe_more = out.pos == out.size;
		if (out.pos) {
			/*
			 * Bytes beyond the declared member sizes plus bounded
			 * header overhead mean a bomb hiding in headers.
			 */
			uint64_t allowed = u->declared +
					   (u->st.entries + 2) * HEADER_SLACK +
					   TRAILER_MAX;
			if (u->tail) {
				/* for the tail: is anything hidden after
				 * the end-of-archive blocks? */
				size_t i = out.pos;

				while (i > 0 && u->out[i - 1] == 0)
					i--;
				if (i > 0)
					u->nz_end = u->st.tar_bytes + i;
			}
			u->st.tar_bytes += out.pos;
			if (u->st.tar_bytes > allowed)
				return cfs_error_set(
					CFS_EUNSAFE,
					"archive holds more data than its "
					"headers declare (%llu bytes after %llu "
					"entries)",
					(unsigned long long)u->st.tar_bytes,
					(unsigned long long)u->st.entries);
			return (ssize_t)out.pos;
		}
	}
}

static la_ssize_t up_read_cb(struct archive *a, void *cd, const void **buf)
{
	struct unpacker *u = cd;
	ssize_t n;

	if (u->err)
		return -1;
	n = up_produce(u);
	if (n < 0) {
		u->err = (int)n;
		archive_set_error(a, EIO, "%s", cfs_error_last());
		return -1;
	}
	*buf = u->out;
	return n;
}

static int up_archive_error(struct unpacker *u, const char *what)
{
	if (u->err)
		return u->err;
	return cfs_error_set(CFS_ECORRUPT, "corrupt archive: %s: %s", what,
			     archive_error_string(u->a)
				     ? archive_error_string(u->a)
				     : "unknown tar error");
}

/* Applies a directory's mode and mtime (set when leaving it) and closes. */
static int up_pop(struct unpacker *u, bool apply)
{
	struct frame *f = &u->stack[u->depth];
	int rc = 0;

	if (apply && f->meta) {
		struct timespec ts[2] = {f->mtime, f->mtime};
		if (fchmod(f->fd, f->mode) < 0 || futimens(f->fd, ts) < 0)
			rc = cfs_error_errno(errno, "setting mode/mtime of %s",
					     f->name);
	}
	close(f->fd);
	free(f->name);
	memset(f, 0, sizeof(*f));
	f->fd = -1;
	u->depth--;
	return rc;
}

static int up_push(struct unpacker *u, int fd, const char *name)
{
	struct frame *f;

	if (u->depth >= CFS_BUNDLE_MAX_DEPTH) {
		close(fd);
		return cfs_error_set(CFS_EUNSUPPORTED,
				     "archive nests deeper than %d directories",
				     CFS_BUNDLE_MAX_DEPTH);
	}
	f = &u->stack[++u->depth];
	f->fd = fd;
	f->meta = false;
	f->name = cfs_strdup(name);
	if (!f->name) {
		u->depth--;
		close(fd);
		return CFS_ENOMEM;
	}
	return 0;
}

/*
 * Opens directory comp below parent without following links, creating it
 * (mode) when missing. A symlink in the way -> CFS_EUNSAFE.
 */
static int up_opendir(int *out, int parent, const char *comp, mode_t mode,
		      bool create, const char *entry)
{
	for (int attempt = 0; attempt < 2; attempt++) {
		struct stat st;
		int fd =
			openat(parent, comp,
			       O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			*out = fd;
			return 0;
		}
		if (errno == ENOENT && create) {
			if (mkdirat(parent, comp, mode) < 0 && errno != EEXIST)
				return cfs_error_errno(errno,
						       "creating directory for "
						       "%s",
						       entry);
			continue;
		}
		if ((errno == ELOOP || errno == ENOTDIR) &&
		    fstatat(parent, comp, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			if (S_ISLNK(st.st_mode))
				return cfs_error_set(CFS_EUNSAFE,
						     "archive entry resolves "
						     "outside the mount: %s",
						     entry);
			return cfs_error_set(
				CFS_ECORRUPT,
				"archive entry %s needs %s to be a "
				"directory",
				entry, comp);
		}
		return cfs_error_errno(errno, "opening directory for %s",
				       entry);
	}
	return cfs_error_set(CFS_EIO, "directory for %s keeps vanishing",
			     entry);
}

/* Makes the stack hold exactly comps[0..k-1]; returns the top fd. */
static int up_enter(int *fd_out, struct unpacker *u, char **comps, size_t k,
		    const char *entry)
{
	size_t same = 0;
	int rc;

	while (same < (size_t)u->depth && same < k &&
	       strcmp(u->stack[same + 1].name, comps[same]) == 0)
		same++;
	while ((size_t)u->depth > same) {
		rc = up_pop(u, true);
		if (rc)
			return rc;
	}
	for (size_t i = same; i < k; i++) {
		int fd;
		rc = up_opendir(&fd, u->stack[u->depth].fd, comps[i], 0755,
				true, entry);
		if (rc)
			return rc;
		rc = up_push(u, fd, comps[i]);
		if (rc)
			return rc;
	}
	*fd_out = u->stack[u->depth].fd;
	return 0;
}

/* Removes a non-directory at parent/base so a member can take its place. */
static int up_clear(int parent, const char *base, const char *entry)
{
	struct stat st;

	if (fstatat(parent, base, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno == ENOENT)
			return 0;
		return cfs_error_errno(errno, "checking %s", entry);
	}
	if (S_ISDIR(st.st_mode))
		return cfs_error_set(CFS_ECORRUPT,
				     "archive entry %s would replace a "
				     "directory",
				     entry);
	if (unlinkat(parent, base, 0) < 0)
		return cfs_error_errno(errno, "replacing %s", entry);
	return 0;
}

static struct timespec entry_mtime(struct archive_entry *e)
{
	struct timespec ts = {0, 0};

	if (archive_entry_mtime_is_set(e)) {
		ts.tv_sec = archive_entry_mtime(e);
		ts.tv_nsec = archive_entry_mtime_nsec(e);
		if (ts.tv_nsec < 0 || ts.tv_nsec > 999999999)
			ts.tv_nsec = 0;
	}
	return ts;
}

/* Hashes n zero bytes (the holes of a sparse member). */
static void md_zeros(EVP_MD_CTX *md, uint64_t n)
{
	static const unsigned char zeros[65536];

	while (n > 0) {
		size_t k = n > sizeof(zeros) ? sizeof(zeros) : (size_t)n;

		EVP_DigestUpdate(md, zeros, k);
		n -= k;
	}
}

/* sha256 of a member's data as its blocks arrive (holes as zeros). */
struct up_hash {
	EVP_MD_CTX *md;
	bool on; /* false: no context, or blocks came out of order */
	uint64_t hoff; /* hashed up to here */
};

static void uh_start(struct up_hash *h, EVP_MD_CTX *md)
{
	h->md = md;
	h->on = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;
	h->hoff = 0;
}

static void uh_block(struct up_hash *h, const void *buf, size_t len,
		     uint64_t off)
{
	if (!h->on || off < h->hoff) {
		h->on = false;
		return;
	}
	md_zeros(h->md, off - h->hoff);
	EVP_DigestUpdate(h->md, buf, len);
	h->hoff = off + len;
}

/* The hash of size bytes into hex; false if it could not be taken. */
static bool uh_finish(struct up_hash *h, uint64_t size, char hex[65])
{
	unsigned char md[32];

	if (!h->on)
		return false;
	md_zeros(h->md, size - h->hoff);
	if (EVP_DigestFinal_ex(h->md, md, NULL) != 1)
		return false;
	cfs_hex_encode(hex, md, sizeof(md));
	return true;
}

/*
 * The next data block of the current member (1), its end (0) or an error
 * (negative): a block beyond the member's declared size is corruption.
 */
static int up_block(struct unpacker *u, const char *entry, int64_t size,
		    const void **buf, size_t *len, uint64_t *off)
{
	la_int64_t o;
	int r = archive_read_data_block(u->a, buf, len, &o);

	if (r == ARCHIVE_EOF)
		return 0;
	if (r < ARCHIVE_WARN)
		return up_archive_error(u, entry);
	if (o < 0 || (uint64_t)o + *len > (uint64_t)size)
		return cfs_error_set(CFS_ECORRUPT,
				     "corrupt archive: data of %s beyond its "
				     "size",
				     entry);
	*off = (uint64_t)o;
	return 1;
}

static int up_file(struct unpacker *u, struct archive_entry *e, int parent,
		   const char *base, const char *entry)
{
	struct timespec ts[2];
	struct up_hash h;
	int fd = -1, rc;
	int64_t size = archive_entry_size(e);
	char hex[65];

	rc = up_clear(parent, base, entry);
	if (rc)
		return rc;
	fd = openat(parent, base,
		    O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return cfs_error_errno(errno, "creating %s", entry);
	uh_start(&h, u->md);
	for (;;) {
		const void *buf;
		size_t len, done = 0;
		uint64_t off = 0;
		int r = up_block(u, entry, size, &buf, &len, &off);

		if (r <= 0) {
			rc = r;
			if (r < 0)
				goto out;
			break;
		}
		uh_block(&h, buf, len, off);
		while (done < len) {
			ssize_t w = pwrite(fd, (const char *)buf + done,
					   len - done, (off_t)(off + done));
			if (w < 0 && errno == EINTR)
				continue;
			if (w < 0) {
				rc = cfs_error_errno(errno, "writing %s",
						     entry);
				goto out;
			}
			done += (size_t)w;
		}
	}
	if (ftruncate(fd, size) < 0) {
		rc = cfs_error_errno(errno, "sizing %s", entry);
		goto out;
	}
	ts[0] = ts[1] = entry_mtime(e);
	if (fchmod(fd, archive_entry_perm(e) & 0777) < 0 ||
	    futimens(fd, ts) < 0) {
		rc = cfs_error_errno(errno, "setting mode/mtime of %s", entry);
		goto out;
	}
	u->st.files++;
	if (u->file_hashed && uh_finish(&h, (uint64_t)size, hex))
		u->file_hashed(u->hash_payload, fd, hex);
out:
	if (fd >= 0 && close(fd) < 0 && rc == 0)
		rc = cfs_error_errno(errno, "writing %s", entry);
	return rc;
}

/* Hard link: the target must be a regular file already in dest. */
static int up_hardlink(struct unpacker *u, const char *target, int parent,
		       const char *base, const char *entry)
{
	char *copy = cfs_strdup(target);
	char **comps = NULL;
	size_t n = 0;
	int tfd = -1, rc;
	struct stat tst, cur;

	if (!copy)
		return CFS_ENOMEM;
	rc = split_components(&comps, &n, copy);
	if (rc)
		goto out;
	if (n == 0) {
		rc = cfs_error_set(CFS_EUNSAFE,
				   "unsafe archive link target: %s -> %s",
				   entry, target);
		goto out;
	}
	tfd = dup(u->destfd);
	for (size_t i = 0; tfd >= 0 && i + 1 < n; i++) {
		int next;
		rc = up_opendir(&next, tfd, comps[i], 0, false, entry);
		close(tfd);
		tfd = -1;
		if (rc)
			goto out;
		tfd = next;
	}
	if (tfd < 0) {
		rc = cfs_error_errno(errno, "resolving hard link %s", entry);
		goto out;
	}
	if (fstatat(tfd, comps[n - 1], &tst, AT_SYMLINK_NOFOLLOW) < 0 ||
	    !S_ISREG(tst.st_mode)) {
		rc = cfs_error_set(CFS_EUNSAFE,
				   "archive hard link target is not an "
				   "extracted file: %s -> %s",
				   entry, target);
		goto out;
	}
	if (fstatat(parent, base, &cur, AT_SYMLINK_NOFOLLOW) == 0 &&
	    cur.st_ino == tst.st_ino && cur.st_dev == tst.st_dev)
		goto out; /* already that file */
	rc = up_clear(parent, base, entry);
	if (rc)
		goto out;
	if (linkat(tfd, comps[n - 1], parent, base, 0) < 0)
		rc = cfs_error_errno(errno, "linking %s", entry);
out:
	if (tfd >= 0)
		close(tfd);
	free(comps);
	free(copy);
	return rc;
}

static int up_extract(struct unpacker *u, struct archive_entry *e,
		      const char *name, const char *entry, mode_t type,
		      const char *link)
{
	char *copy = cfs_strdup(name);
	char **comps = NULL;
	size_t n = 0;
	int parent, rc;

	if (!copy)
		return CFS_ENOMEM;
	rc = split_components(&comps, &n, copy);
	if (rc)
		goto out;
	if (n == 0) {
		/* "." or "./": the destination itself; leave it alone. */
		if (type != AE_IFDIR)
			rc = cfs_error_set(CFS_EUNSAFE,
					   "unsafe archive entry: %s", entry);
		goto out;
	}
	if (n > CFS_BUNDLE_MAX_DEPTH) {
		rc = cfs_error_set(CFS_EUNSUPPORTED,
				   "archive entry %s nests deeper than %d "
				   "directories",
				   entry, CFS_BUNDLE_MAX_DEPTH);
		goto out;
	}
	rc = up_enter(&parent, u, comps, n - 1, entry);
	if (rc)
		goto out;
	if (link && archive_entry_hardlink(e)) {
		rc = up_hardlink(u, link, parent, comps[n - 1], entry);
	} else if (type == AE_IFDIR) {
		struct stat st;
		int fd;
		if (fstatat(parent, comps[n - 1], &st, AT_SYMLINK_NOFOLLOW) ==
			    0 &&
		    !S_ISDIR(st.st_mode)) {
			rc = up_clear(parent, comps[n - 1], entry);
			if (rc)
				goto out;
		}
		rc = up_opendir(&fd, parent, comps[n - 1], 0700, true, entry);
		if (rc)
			goto out;
		rc = up_push(u, fd, comps[n - 1]);
		if (rc)
			goto out;
		u->stack[u->depth].meta = true;
		u->stack[u->depth].mode = archive_entry_perm(e) & 0777;
		u->stack[u->depth].mtime = entry_mtime(e);
	} else if (type == AE_IFLNK) {
		struct timespec ts[2];
		rc = up_clear(parent, comps[n - 1], entry);
		if (rc)
			goto out;
		if (symlinkat(link, parent, comps[n - 1]) < 0) {
			rc = cfs_error_errno(errno, "creating symlink %s",
					     entry);
			goto out;
		}
		ts[0] = ts[1] = entry_mtime(e);
		if (utimensat(parent, comps[n - 1], ts, AT_SYMLINK_NOFOLLOW) <
		    0)
			rc = cfs_error_errno(errno, "setting mtime of %s",
					     entry);
	} else {
		rc = up_file(u, e, parent, comps[n - 1], entry);
	}
out:
	free(comps);
	free(copy);
	return rc;
}

/* Reads what follows the end-of-archive marker (must be only padding). */
static int up_drain(struct unpacker *u)
{
	uint64_t extra = 0;

	if (u->err)
		return u->err;
	for (;;) {
		ssize_t n = up_produce(u);
		if (n < 0)
			return (int)n;
		if (n == 0)
			return 0;
		extra += (uint64_t)n;
		if (extra > TRAILER_MAX)
			return cfs_error_set(CFS_ECORRUPT,
					     "corrupt archive: more than %d "
					     "bytes after the end of the tar "
					     "stream",
					     TRAILER_MAX);
	}
}

/* Hash of comps[0..n-1] joined with '/'. */
static uint64_t vt_hash(struct unpacker *u, char **comps, size_t n)
{
	struct cfs_buf b = CFS_BUF_INIT;
	unsigned char out[crypto_shorthash_BYTES];
	uint64_t h = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		if ((i && cfs_buf_put(&b, "/", 1)) ||
		    cfs_buf_puts(&b, comps[i]))
			break;
	}
	crypto_shorthash(out, (const unsigned char *)(b.ptr ? b.ptr : ""),
			 b.len, u->vt_key);
	memcpy(&h, out, sizeof(h));
	cfs_buf_free(&b);
	return h | 1; /* never 0 */
}

static struct vslot *vt_find(struct unpacker *u, uint64_t h)
{
	size_t i;

	if (!u->vt_cap)
		return NULL;
	for (i = h & (u->vt_cap - 1);; i = (i + 1) & (u->vt_cap - 1)) {
		if (u->vt[i].kind == VK_NONE || u->vt[i].h == h)
			return &u->vt[i];
	}
}

static int vt_set(struct unpacker *u, uint64_t h, enum vkind kind)
{
	struct vslot *sl;

	if ((u->vt_used + 1) * 2 > u->vt_cap) {
		size_t cap = u->vt_cap ? u->vt_cap * 2 : 1024, i;
		struct vslot *old = u->vt;
		size_t oldcap = u->vt_cap;

		u->vt = cfs_calloc(cap, sizeof(*u->vt));
		if (!u->vt) {
			u->vt = old;
			return CFS_ENOMEM;
		}
		u->vt_cap = cap;
		for (i = 0; i < oldcap; i++) {
			if (old[i].kind != VK_NONE)
				*vt_find(u, old[i].h) = old[i];
		}
		free(old);
	}
	sl = vt_find(u, h);
	if (sl->kind == VK_NONE)
		u->vt_used++;
	sl->h = h;
	sl->kind = (unsigned char)kind;
	return 0;
}

static enum vkind vt_get(struct unpacker *u, char **comps, size_t n)
{
	struct vslot *sl = vt_find(u, vt_hash(u, comps, n));

	return sl ? (enum vkind)sl->kind : VK_NONE;
}

/*
 * validate_only: the checks extraction makes that depend on earlier
 * members, with extraction's codes and messages: parents that are files
 * or symlinks, hard links to anything but an extracted file, a member
 * naming the destination itself.
 */
static int up_validate(struct unpacker *u, const char *name, const char *entry,
		       mode_t type, const char *link, bool hardlink)
{
	char *copy = cfs_strdup(name), *tcopy = NULL;
	char **comps = NULL, **tcomps = NULL;
	size_t n = 0, tn = 0, k;
	int rc;

	if (!copy)
		return CFS_ENOMEM;
	rc = split_components(&comps, &n, copy);
	if (rc)
		goto out;
	if (n == 0) {
		if (type != AE_IFDIR)
			rc = cfs_error_set(CFS_EUNSAFE,
					   "unsafe archive entry: %s", entry);
		goto out;
	}
	if (n > CFS_BUNDLE_MAX_DEPTH) {
		rc = cfs_error_set(CFS_EUNSUPPORTED,
				   "archive entry %s nests deeper than %d "
				   "directories",
				   entry, CFS_BUNDLE_MAX_DEPTH);
		goto out;
	}
	for (k = 1; k < n; k++) {
		enum vkind vk = vt_get(u, comps, k);

		if (vk == VK_LINK) {
			rc = cfs_error_set(CFS_EUNSAFE,
					   "archive entry resolves outside the "
					   "mount: %s",
					   entry);
			goto out;
		}
		if (vk == VK_FILE) {
			rc = cfs_error_set(CFS_ECORRUPT,
					   "archive entry %s needs %s to be a "
					   "directory",
					   entry, comps[k - 1]);
			goto out;
		}
		if (vk == VK_NONE) {
			rc = vt_set(u, vt_hash(u, comps, k), VK_DIR);
			if (rc)
				goto out;
		}
	}
	if (hardlink) {
		tcopy = cfs_strdup(link);
		if (!tcopy) {
			rc = CFS_ENOMEM;
			goto out;
		}
		rc = split_components(&tcomps, &tn, tcopy);
		if (rc)
			goto out;
		if (tn == 0 || vt_get(u, tcomps, tn) != VK_FILE) {
			rc = cfs_error_set(CFS_EUNSAFE,
					   "archive hard link target is not an "
					   "extracted file: %s -> %s",
					   entry, link);
			goto out;
		}
		rc = vt_set(u, vt_hash(u, comps, n), VK_FILE);
	} else {
		rc = vt_set(u, vt_hash(u, comps, n),
			    type == AE_IFDIR   ? VK_DIR
			    : type == AE_IFLNK ? VK_LINK
					       : VK_FILE);
	}
out:
	free(comps);
	free(tcomps);
	free(copy);
	free(tcopy);
	return rc;
}

/* Writes the current member (size bytes) to fd. */
static int up_capture(struct unpacker *u, int fd, int64_t size,
		      const char *entry, bool *local)
{
	char buf[65536];
	int64_t got = 0;

	while (got < size) {
		la_ssize_t n = archive_read_data(u->a, buf, sizeof(buf));
		int rc;

		if (n < 0)
			return up_archive_error(u, entry);
		if (n == 0)
			break;
		rc = cfs_write_all(fd, buf, (size_t)n);
		if (rc) {
			*local = true; /* ours, not the archive's */
			cfs_error_prefix("keep %s", entry);
			return rc;
		}
		got += n;
	}
	if (got != size)
		return cfs_error_set(CFS_ECORRUPT,
				     "corrupt archive: %s is truncated", entry);
	return 0;
}

/*
 * validate_only with opts->member: hashes a regular file's data (with_data;
 * else its data was consumed already) and reports the member.
 */
static int up_member(struct unpacker *u, const struct cfs_unpack_opts *opts,
		     struct archive_entry *e, const char *entry, mode_t type,
		     const char *link, int64_t size, bool with_data)
{
	struct cfs_member_info m = {0};
	char hex[65];
	bool hashed = false;

	if (type == AE_IFREG && !link && with_data) {
		struct up_hash h;

		if (!u->md && !(u->md = EVP_MD_CTX_new()))
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		uh_start(&h, u->md);
		for (;;) {
			const void *buf;
			size_t len;
			uint64_t off = 0;
			int r = up_block(u, entry, size, &buf, &len, &off);

			if (r < 0)
				return r;
			if (r == 0)
				break;
			uh_block(&h, buf, len, off);
		}
		hashed = uh_finish(&h, (uint64_t)size, hex);
	} else if (with_data && archive_read_data_skip(u->a) < ARCHIVE_WARN) {
		return up_archive_error(u, entry);
	}
	m.path = entry;
	m.type = link && archive_entry_hardlink(e) ? S_IFREG
		 : type == AE_IFDIR		   ? S_IFDIR
		 : type == AE_IFLNK		   ? S_IFLNK
						   : S_IFREG;
	m.perm = archive_entry_perm(e) & 0777;
	m.hardlink = link && archive_entry_hardlink(e);
	m.size = m.hardlink || m.type != S_IFREG ? 0 : size;
	m.mtime = entry_mtime(e);
	m.link = link;
	m.sha256 = hashed ? hex : NULL;
	return opts->member(opts->member_payload, &m);
}

static bool is_head_member(const char *name)
{
	size_t n = strlen(CFS_META_DIR);

	return is_head_item(name) ||
	       (strncmp(name, CFS_META_DIR, n) == 0 && name[n] == '/');
}

/* name is a normalised policy root or lies below one */
static bool under_root(const struct unpacker *u, const char *name)
{
	for (size_t i = 0; i < u->nroots; i++) {
		size_t n = strlen(u->roots[i].arc);

		if (is_head_item(u->roots[i].arc))
			continue;
		if (strncmp(name, u->roots[i].arc, n) == 0 &&
		    (name[n] == '\0' || name[n] == '/'))
			return true;
	}
	return false;
}

/* name or one of its ancestors below the root is excluded */
static bool excluded_path(struct unpacker *u, const char *name)
{
	const char *slash = strrchr(name, '/');
	size_t dlen = slash ? (size_t)(slash - name) : 0;
	char *dir;

	if (cfs_policy_excluded(u->tail->policy, name))
		return true;
	if (!slash || (u->ok_dir && strlen(u->ok_dir) == dlen &&
		       memcmp(u->ok_dir, name, dlen) == 0))
		return false;
	dir = cfs_strndup(name, dlen);
	if (!dir)
		return true; /* no memory: no tail either */
	for (char *p = strchr(dir, '/');; p = strchr(p + 1, '/')) {
		if (p)
			*p = '\0';
		if (cfs_policy_excluded(u->tail->policy, dir)) {
			free(dir);
			return true;
		}
		if (!p)
			break;
		*p = '/';
	}
	free(u->ok_dir);
	u->ok_dir = dir;
	return false;
}

static void tail_refuse(struct unpacker *u, const char *why)
{
	u->tail_state = TAIL_NO;
	u->tail->why = why;
}

/*
 * One member against the tail's rules (struct cfs_unpack_tail): head
 * members first, all in the first zstd frame; the first other member
 * starts the second frame; every one after it is what a pack of the
 * extracted tree would write again.
 */
static void tail_check(struct unpacker *u, struct archive_entry *e,
		       const char *entry, mode_t type, const char *link)
{
	bool head = is_head_member(entry);

	if (u->tail_state == TAIL_NO)
		return;
	if (u->tail_state == TAIL_HEAD) {
		if (head)
			return;
		if (!u->f1_seen ||
		    (uint64_t)archive_read_header_position(u->a) != u->f1_tar)
			return tail_refuse(u, "the roots do not start a zstd "
					      "frame of their own");
		u->tail_state = TAIL_IN;
	}
	if (head)
		return tail_refuse(u, "a .contextsdk member follows the roots");
	if (!under_root(u, entry))
		return tail_refuse(u, "a member lies outside the policy roots");
	if (excluded_path(u, entry))
		return tail_refuse(u, "a member is excluded by the policy");
	if (type != AE_IFLNK && (archive_entry_perm(e) & 07000))
		return tail_refuse(u, "a member has set-id or sticky bits");
	if (link && archive_entry_hardlink(e) &&
	    (is_head_member(link) || !under_root(u, link)))
		return tail_refuse(u, "a hard link leaves the policy roots");
}

int cfs_bundle_unpack(int destfd, cfs_read_fn source, void *payload,
		      const struct cfs_unpack_opts *opts,
		      struct cfs_bundle_stats *stats)
{
	struct unpacker *u = cfs_calloc(1, sizeof(*u));
	struct archive_entry *e;
	char *entry = NULL;
	struct utf8_scope loc;
	int rc = 0;

	if (!u)
		return CFS_ENOMEM;
	utf8_enter(&loc);
	u->source = source;
	u->payload = payload;
	u->destfd = destfd;
	u->max_entries = opts && opts->max_entries ? opts->max_entries
						   : CFS_BUNDLE_MAX_ENTRIES;
	u->max_bytes = opts && opts->max_bytes ? opts->max_bytes
					       : CFS_BUNDLE_MAX_BYTES;
	u->validate_only = opts && opts->validate_only;
	crypto_shorthash_keygen(u->vt_key);
	u->stack[0].fd = destfd;
	if (opts && !u->validate_only && opts->tail) {
		u->tail = opts->tail;
		u->tail->ok = false;
		u->tail->listed = false;
		u->tail->offset = 0;
		u->tail->why = "the stream ended before any policy root";
		rc = pk_candidates(&u->roots, &u->nroots, u->tail->policy);
		if (rc)
			goto out;
	}
	if (opts && !u->validate_only && opts->file_hashed) {
		u->file_hashed = opts->file_hashed;
		u->hash_payload = opts->hash_payload;
		u->md = EVP_MD_CTX_new();
		if (!u->md) {
			rc = cfs_error_set(CFS_ENOMEM, "out of memory");
			goto out;
		}
	}
	u->in_cap = ZSTD_DStreamInSize();
	u->out_cap = ZSTD_DStreamOutSize();
	u->in = malloc(u->in_cap);
	u->out = malloc(u->out_cap);
	u->zd = ZSTD_createDCtx();
	u->a = archive_read_new();
	if (!u->in || !u->out || !u->zd || !u->a) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	if (ZSTD_isError(ZSTD_DCtx_setParameter(u->zd, ZSTD_d_windowLogMax,
						CFS_BUNDLE_WINDOW_LOG_MAX))) {
		rc = cfs_error_set(CFS_EIO, "cannot configure zstd");
		goto out;
	}
	if (archive_read_support_format_tar(u->a) != ARCHIVE_OK ||
	    archive_read_open(u->a, u, NULL, up_read_cb, NULL) != ARCHIVE_OK) {
		rc = up_archive_error(u, "opening");
		goto out;
	}

	for (;;) {
		const char *name, *link = NULL;
		mode_t type;
		int64_t size;
		size_t len;
		int r = archive_read_next_header(u->a, &e);

		if (r == ARCHIVE_EOF) {
			u->eof_at =
				(uint64_t)archive_read_header_position(u->a);
			break;
		}
		if (r < ARCHIVE_WARN) {
			rc = up_archive_error(u, "reading header");
			goto out;
		}
		if (++u->st.entries > u->max_entries) {
			rc = cfs_error_set(CFS_EUNSAFE,
					   "archive exceeds the %llu entry "
					   "limit",
					   (unsigned long long)u->max_entries);
			goto out;
		}
		size = archive_entry_size_is_set(e) ? archive_entry_size(e) : 0;
		if (size < 0) {
			rc = cfs_error_set(CFS_ECORRUPT,
					   "corrupt archive: negative size");
			goto out;
		}
		u->declared += (uint64_t)size;
		if ((uint64_t)size > u->max_bytes ||
		    u->declared > u->max_bytes) {
			rc = cfs_error_set(CFS_EUNSAFE,
					   "archive exceeds the %llu byte "
					   "decompressed limit",
					   (unsigned long long)u->max_bytes);
			goto out;
		}
		u->st.bytes = u->declared;
		name = archive_entry_pathname(e);
		if (!name) {
			rc = cfs_error_set(CFS_ECORRUPT,
					   "corrupt archive: entry %llu has no "
					   "name",
					   (unsigned long long)u->st.entries);
			goto out;
		}
		len = strlen(name);
		free(entry);
		entry = cfs_strdup(name);
		if (!entry) {
			rc = CFS_ENOMEM;
			goto out;
		}
		/* python reports directory names without trailing '/' */
		while (len > 1 && entry[len - 1] == '/')
			entry[--len] = '\0';
		if (len > CFS_BUNDLE_MAX_NAME ||
		    cfs_path_unsafe(name, strlen(name))) {
			rc = cfs_error_set(CFS_EUNSAFE,
					   "unsafe archive entry: %s", entry);
			goto out;
		}
		type = archive_entry_filetype(e);
		if (archive_entry_hardlink(e))
			link = archive_entry_hardlink(e);
		else if (type == AE_IFLNK)
			link = archive_entry_symlink(e);
		if (link || type == AE_IFLNK) {
			if (!link || !link[0] ||
			    strlen(link) > CFS_BUNDLE_MAX_NAME ||
			    cfs_path_unsafe(link, strlen(link))) {
				rc = cfs_error_set(
					CFS_EUNSAFE,
					"unsafe archive link target: "
					"%s -> %s",
					entry, link ? link : "");
				goto out;
			}
		} else if (type != AE_IFREG && type != AE_IFDIR) {
			rc = cfs_error_set(CFS_EUNSAFE,
					   "unsupported archive entry type: %s",
					   entry);
			goto out;
		}
		if (u->validate_only) {
			bool capture, local = false;

			rc = up_validate(u, name, entry, type, link,
					 archive_entry_hardlink(e) != NULL);
			if (rc)
				goto out;
			if (type == AE_IFREG && !link)
				u->st.files++;
			capture = type == AE_IFREG && !link && opts &&
				  opts->capture_path &&
				  strcmp(entry, opts->capture_path) == 0;
			if (capture && !(opts->captured && *opts->captured)) {
				rc = up_capture(u, opts->capture_fd, size,
						entry, &local);
				if (rc && local && opts->capture_failed)
					*opts->capture_failed = rc;
				if (!rc && opts->captured)
					*opts->captured = true;
				if (!rc && opts->member)
					rc = up_member(u, opts, e, entry, type,
						       link, size, false);
				if (rc)
					goto out;
				continue;
			}
			if (opts && opts->member) {
				rc = up_member(u, opts, e, entry, type, link,
					       size, true);
				if (rc)
					goto out;
				continue;
			}
			if (archive_read_data_skip(u->a) < ARCHIVE_WARN) {
				rc = up_archive_error(u, entry);
				goto out;
			}
			continue;
		}
		if (u->tail)
			tail_check(u, e, entry, type, link);
		if (u->tail && opts->list_tail && opts->member &&
		    (u->tail->listed || u->tail_state == TAIL_IN)) {
			/* the roots, listed instead of extracted */
			u->tail->listed = true;
			if (u->tail_state != TAIL_IN) {
				/* refused: the caller unpacks again */
				if (archive_read_data_skip(u->a) <
				    ARCHIVE_WARN) {
					rc = up_archive_error(u, entry);
					goto out;
				}
				continue;
			}
			rc = up_validate(u, name, entry, type, link,
					 archive_entry_hardlink(e) != NULL);
			if (!rc && type == AE_IFREG && !link)
				u->st.files++;
			if (!rc)
				rc = up_member(u, opts, e, entry, type, link,
					       size, true);
			if (rc)
				goto out;
			continue;
		}
		rc = up_extract(u, e, name, entry, type, link);
		if (rc)
			goto out;
	}
	rc = up_drain(u);
	if (rc)
		goto out;
	if (u->tail && u->tail_state == TAIL_IN && u->nz_end > u->eof_at)
		tail_refuse(u, "data follows the end-of-archive blocks");
	if (u->tail && u->tail_state == TAIL_IN) {
		u->tail->ok = true;
		u->tail->offset = u->f1_comp;
		u->tail->why = NULL;
	}
	while (u->depth > 0) {
		rc = up_pop(u, true);
		if (rc)
			goto out;
	}
	if (stats)
		*stats = u->st;
out:
	if (rc && entry && u->err == 0 && rc != CFS_EUNSAFE &&
	    rc != CFS_ECORRUPT && rc != CFS_ENOMEM)
		cfs_debug("unpack failed at %s", entry);
	while (u->depth > 0)
		up_pop(u, false);
	if (u->a)
		archive_read_free(u->a);
	ZSTD_freeDCtx(u->zd);
	free(u->in);
	free(u->out);
	free(u->vt);
	candidates_free(u->roots, u->nroots);
	free(u->ok_dir);
	EVP_MD_CTX_free(u->md);
	free(u);
	free(entry);
	utf8_leave(&loc);
	return rc;
}
