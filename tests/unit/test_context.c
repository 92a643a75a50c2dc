/*
 * Unit tests of the commit engine (core/context.c): create, save,
 * checkpoint, export by ref, retention, rollback on a failed or lost
 * manifest write, lock refusal, create races, forced re-create, restore,
 * verify of a tampered object, derive-once, and the reference's fixtures.
 *
 * Every test runs on every backend: the in-memory store, the fs store, and
 * an S3 store when S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY and S3_SECRET_KEY
 * are set (tests/s3/rgw; each store there lives under a fresh random
 * prefix, wiped afterwards). The mem store injects its own faults; on fs
 * and S3 a wrapper store does (struct faulty): a failed put never reaches
 * the store, and a lost compare-and-swap is a real one - another writer
 * changes the object just before the engine's conditional put, so the
 * store itself refuses it.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <regex.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/context.h"
#include "core/crypto.h"
#include "core/error.h"
#include "core/ids.h"
#include "core/json.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/manifest.h"
#include "core/util.h"
#include "storage/storage.h"
#include "tests/unit/s3_helper.h"
#include "tests/unit/tap.h"

#define RAW_HEX \
	"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define OWNER "test-host:1:owner-a"

static struct cfs_keys *raw_keys;

/* ---- small file helpers ------------------------------------------------ */

static int open_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0) {
		printf("Bail out! open %s: %s\n", path, strerror(errno));
		exit(1);
	}
	return fd;
}

static void put_file(int dirfd, const char *path, const char *data)
{
	char *dup = cfs_strdup(path), *slash = strrchr(dup, '/');

	if (slash) {
		*slash = '\0';
		cfs_mkdir_p_at(dirfd, dup, 0755);
	}
	free(dup);
	if (cfs_write_file_at(dirfd, path, data, strlen(data), 0644, false))
		tap_diag("write %s: %s", path, cfs_error_last());
}

static char *get_file(int dirfd, const char *path)
{
	char *buf = NULL;
	size_t len;

	if (cfs_read_file_at(&buf, &len, dirfd, path, 1 << 20))
		return NULL;
	return buf;
}

static bool exists_at(int dirfd, const char *path)
{
	struct stat sb;

	return fstatat(dirfd, path, &sb, AT_SYMLINK_NOFOLLOW) == 0;
}

/* Sorted "path type mode size sha|link" lines of a tree (skipping
 * .contextsdk, whose records differ by design). */
static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

struct lines {
	char **v;
	size_t n, cap;
};

static void lines_add(struct lines *l, char *s)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 64;
		l->v = realloc(l->v, l->cap * sizeof(*l->v));
	}
	l->v[l->n++] = s;
}

static void walk(struct lines *l, int dirfd, const char *prefix)
{
	DIR *d = fdopendir(dup(dirfd));
	struct dirent *de;

	if (d)
		rewinddir(d); /* the dup shares the offset of earlier walks */
	while (d && (de = readdir(d))) {
		char path[4096], sha[65] = "-", link[512] = "";
		struct stat sb;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (!prefix[0] && !strcmp(de->d_name, ".contextsdk"))
			continue;
		snprintf(path, sizeof(path), "%s%s%s", prefix,
			 prefix[0] ? "/" : "", de->d_name);
		if (fstatat(dirfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW))
			continue;
		if (S_ISREG(sb.st_mode)) {
			int fd = openat(dirfd, de->d_name, O_RDONLY);

			cfs_sha256_fd(sha, fd);
			close(fd);
		} else if (S_ISLNK(sb.st_mode)) {
			ssize_t n = readlinkat(dirfd, de->d_name, link,
					       sizeof(link) - 1);

			link[n > 0 ? n : 0] = '\0';
		}
		lines_add(l, cfs_asprintf("%s %c %o %lld %s%s", path,
					  S_ISDIR(sb.st_mode)	? 'd'
					  : S_ISLNK(sb.st_mode) ? 'l'
								: 'f',
					  (unsigned)(sb.st_mode & 07777),
					  S_ISDIR(sb.st_mode)
						  ? 0LL
						  : (long long)sb.st_size,
					  sha, link));
		if (S_ISDIR(sb.st_mode)) {
			int sub = openat(dirfd, de->d_name,
					 O_RDONLY | O_DIRECTORY | O_NOFOLLOW);

			walk(l, sub, path);
			close(sub);
		}
	}
	if (d)
		closedir(d);
}

/* Digest of the managed part of a tree: roots + contextsdk.json. */
static char *digest(int dirfd)
{
	struct lines l = {NULL, 0, 0};
	struct cfs_buf b = CFS_BUF_INIT;

	walk(&l, dirfd, "");
	qsort(l.v, l.n, sizeof(*l.v), cmp_str);
	for (size_t i = 0; i < l.n; i++) {
		/* cache/ is never packed */
		if (strncmp(l.v[i], "cache", 5) != 0)
			cfs_buf_printf(&b, "%s\n", l.v[i]);
		free(l.v[i]);
	}
	free(l.v);
	return cfs_buf_detach(&b);
}

/* ---- store / manifest helpers ------------------------------------------ */

static struct cfs_manifest *read_m(struct cfs_store *st, const char *id)
{
	struct cfs_manifest *m = NULL;

	if (cfs_context_read_manifest(&m, NULL, st, id))
		tap_diag("read manifest: %s", cfs_error_last());
	return m;
}

static uint64_t gen_of(struct cfs_store *st, const char *id)
{
	struct cfs_manifest *m = read_m(st, id);
	uint64_t g = m ? cfs_manifest_generation(m) : 0;

	cfs_manifest_free(m);
	return g;
}

static bool obj_exists(struct cfs_store *st, const char *key)
{
	struct cfs_objinfo info;

	return cfs_store_head(st, key, &info) == 0;
}

struct counter {
	const char *needle;
	size_t n;
};

static int count_keys(const char *key, void *payload)
{
	struct counter *c = payload;

	if (!c->needle || strstr(key, c->needle))
		c->n++;
	return 0;
}

static size_t nkeys(struct cfs_store *st, const char *prefix)
{
	struct counter c = {NULL, 0};

	cfs_store_list(st, prefix, count_keys, &c);
	return c.n;
}

/* Exports ref into a fresh dir; returns its fd (or -1, rc in *rcp). */
static int export_to(struct cfs_store *st, struct cfs_keys *keys,
		     const char *ref, int *rcp)
{
	char *dir = tap_tmpdir("export");
	int fd = open_dir(dir), rc;

	rc = cfs_context_export(NULL, st, keys, ref, fd, NULL, NULL);
	if (rcp)
		*rcp = rc;
	free(dir);
	if (rc) {
		close(fd);
		return -1;
	}
	return fd;
}

static int commit_dir(struct cfs_commit_result *res, struct cfs_store *st,
		      struct cfs_keys *keys, const char *id, int fd,
		      const char *msg, int retention)
{
	struct cfs_commit_opts o;

	cfs_commit_opts_init(&o);
	o.owner = OWNER;
	o.message = msg;
	o.retention = retention;
	return cfs_context_commit(res, st, keys, id, fd, &o);
}

static bool key_matches(const char *key, const char *re)
{
	regex_t r;
	bool ok;

	if (!key || regcomp(&r, re, REG_EXTENDED | REG_NOSUB))
		return false;
	ok = regexec(&r, key, 0, NULL, 0) == 0;
	regfree(&r);
	return ok;
}

/* ---- backends ----------------------------------------------------------- */

enum bk { BK_MEM, BK_FS, BK_S3 };

/* Fault injection over any store, with the mem store's semantics for the
 * faults these tests use (CFS_MEM_FAULT_PUT_FAIL, CFS_MEM_FAULT_LOSE_CAS). */
struct faulty {
	struct cfs_store base;
	struct cfs_store *inner;
	enum cfs_mem_fault fault;
	unsigned nth; /* fires on this matching call (1-based) */
	char needle[64]; /* "" = every key */
};

static struct cfs_store *f_inner(struct cfs_store *st)
{
	struct faulty *f = (struct faulty *)st;

	/* the engine sets its progress callback on the store it drives */
	f->inner->progress = st->progress;
	f->inner->progress_payload = st->progress_payload;
	return f->inner;
}

static bool f_fires(struct faulty *f, enum cfs_mem_fault kind, const char *key)
{
	if (f->fault != kind || (f->needle[0] && !strstr(key, f->needle)))
		return false;
	if (f->nth > 1) {
		f->nth--;
		return false;
	}
	f->fault = CFS_MEM_FAULT_NONE;
	return true;
}

/*
 * Another writer changes the object: its bytes plus a newline (the same
 * JSON). New bytes matter on S3: ETags there are MD5s, so rewriting the
 * identical bytes would keep the ETag, and the stale If-Match would still
 * match (fs and mem give every write a fresh ETag).
 */
static int concurrent_write(struct cfs_store *in, const char *key)
{
	char *body = NULL, *grown;
	size_t len = 0;
	int rc;

	rc = cfs_store_get_buf(in, key, &body, &len, NULL);
	if (rc)
		return rc;
	grown = cfs_asprintf("%.*s\n", (int)len, body);
	rc = cfs_store_put_buf(in, key, grown, len + 1, NULL, NULL);
	free(grown);
	free(body);
	return rc;
}

static int f_get(struct cfs_store *st, const char *key, int fd,
		 struct cfs_buf *buf, size_t max, struct cfs_objinfo *info)
{
	struct cfs_store *in = f_inner(st);

	return in->ops->get(in, key, fd, buf, max, info);
}

static int f_put(struct cfs_store *st, const char *key,
		 const struct cfs_source *src, const struct cfs_cond *cond,
		 char etag[CFS_ETAG_MAX])
{
	struct faulty *f = (struct faulty *)st;
	struct cfs_store *in = f_inner(st);
	bool conditional = cond && (cond->if_match || cond->if_none_match);

	if (f_fires(f, CFS_MEM_FAULT_PUT_FAIL, key))
		return cfs_error_set(CFS_EIO, "injected put failure: %s", key);
	if (conditional && f_fires(f, CFS_MEM_FAULT_LOSE_CAS, key)) {
		if (!cond->if_match)
			return cfs_error_set(CFS_EEXISTS,
					     "object already exists: %s", key);
		if (concurrent_write(in, key))
			tap_diag("concurrent write of %s: %s", key,
				 cfs_error_last());
	}
	return in->ops->put(in, key, src, cond, etag);
}

static int f_head(struct cfs_store *st, const char *key,
		  struct cfs_objinfo *info)
{
	struct cfs_store *in = f_inner(st);

	return in->ops->head(in, key, info);
}

static int f_del(struct cfs_store *st, const char *key)
{
	struct cfs_store *in = f_inner(st);

	return in->ops->del(in, key);
}

static int f_list(struct cfs_store *st, const char *prefix, cfs_list_fn fn,
		  void *payload)
{
	struct cfs_store *in = f_inner(st);

	return in->ops->list(in, prefix, fn, payload);
}

static const char *f_describe(struct cfs_store *st)
{
	return cfs_store_describe(((struct faulty *)st)->inner);
}

static void f_free(struct cfs_store *st)
{
	(void)st; /* the backend frees the inner store */
}

static const struct cfs_store_ops faulty_ops = {CFS_STORE_OPS_VERSION,
						"faulty",
						f_get,
						f_put,
						f_head,
						f_del,
						f_list,
						f_describe,
						f_free,
						0,
						NULL};

/* One store of a kind, fresh and empty: what a test runs on. */
struct backend {
	enum bk kind;
	const char *name;
	struct cfs_store *st; /* what the tests drive */
	struct cfs_store *inner; /* the real store */
	struct faulty fw;
	char *dir; /* fs */
	struct cfs_s3_config s3;
	char prefix[64];
};

static const char *const bk_names[] = {"mem", "fs", "s3"};

static bool be_open(struct backend *b, enum bk kind)
{
	int rc = 0;

	memset(b, 0, sizeof(*b));
	b->kind = kind;
	b->name = bk_names[kind];
	switch (kind) {
	case BK_MEM:
		rc = cfs_store_mem_new(&b->inner);
		break;
	case BK_FS:
		b->dir = tap_tmpdir("fsstore");
		rc = cfs_store_fs_open(&b->inner, b->dir);
		break;
	case BK_S3:
		if (!s3h_config(&b->s3, b->prefix, sizeof(b->prefix),
				"cfs-context"))
			return false;
		b->inner = s3h_open(&b->s3);
		break;
	}
	if (rc || !b->inner) {
		tap_ok(false, "open a %s store: %s", b->name,
		       rc ? cfs_error_last() : "see above");
		free(b->dir);
		return false;
	}
	if (kind == BK_MEM) {
		b->st = b->inner;
	} else {
		b->fw.base.ops = &faulty_ops;
		b->fw.inner = b->inner;
		b->st = &b->fw.base;
	}
	return true;
}

static void be_close(struct backend *b)
{
	if (b->kind == BK_S3) {
		size_t n = 0;
		int rc = s3h_wipe(b->inner, &n);

		tap_ok(rc == 0, "s3: the %zu objects under %s deleted", n,
		       b->prefix);
	}
	cfs_store_free(b->inner);
	if (b->dir) {
		cfs_rmtree_at(AT_FDCWD, b->dir);
		free(b->dir);
	}
	memset(b, 0, sizeof(*b));
}

/* Arms a fault: the mem store's own, or the wrapper's on fs and S3. */
static void be_fault(struct backend *b, enum cfs_mem_fault f, unsigned nth,
		     const char *needle)
{
	if (b->kind == BK_MEM) {
		cfs_store_mem_fault(b->inner, f, nth, needle);
		return;
	}
	b->fw.fault = f;
	b->fw.nth = nth;
	snprintf(b->fw.needle, sizeof(b->fw.needle), "%s",
		 needle ? needle : "");
}

static size_t be_count(struct backend *b)
{
	return nkeys(b->st, "");
}

/* Flips one bit of an object's byte 10 through the store (any backend). */
static int tamper(struct cfs_store *st, const char *key)
{
	char *dir = tap_tmpdir("tamper"), path[4096];
	unsigned char c;
	int fd, rc = -1;

	snprintf(path, sizeof(path), "%s/obj", dir);
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd >= 0 && cfs_store_get_fd(st, key, fd, NULL) == 0 &&
	    pread(fd, &c, 1, 10) == 1) {
		c ^= 0x01;
		if (pwrite(fd, &c, 1, 10) == 1)
			rc = cfs_store_put_fd(st, key, fd, NULL, NULL);
	}
	if (rc)
		tap_diag("tamper %s: %s", key, cfs_error_last());
	if (fd >= 0)
		close(fd);
	cfs_rmtree_at(AT_FDCWD, dir);
	free(dir);
	return rc;
}

/* ---- tests -------------------------------------------------------------- */

static void test_create(struct cfs_store *st, const char *what)
{
	struct cfs_manifest *m = NULL;
	struct cfs_objinfo info;
	const cJSON *v;
	int rc, fd;
	char *s;

	rc = cfs_context_create(&m, st, raw_keys, "gen-keys", NULL);
	TAP_EQ_INT(rc, 0, "create succeeds");
	if (rc) {
		tap_diag("%s", cfs_error_last());
		return;
	}
	tap_ok(key_matches(cfs_manifest_tree_key(m),
			   "^contexts/gen-keys/tree/00000001-[0-9a-f]{8}"
			   "\\.tree\\.tar\\.zst\\.enc$"),
	       "%s: treeKey is generation-scoped: %s", what,
	       cfs_manifest_tree_key(m));
	TAP_EQ_INT(cfs_manifest_generation(m), 1, "generation 1");
	TAP_EQ_INT(cfs_manifest_checkpoint_generation(m), 0,
		   "checkpointGeneration 0");
	TAP_EQ_STR(cfs_manifest_format(m), "tree", "format tree");
	tap_ok(key_matches(cfs_manifest_image_key(m),
			   "^contexts/gen-keys/image/00000001-"),
	       "imageKey recorded (never written)");
	tap_ok(!obj_exists(st, cfs_manifest_image_key(m)), "no image object");
	tap_ok(cfs_store_head(st, cfs_manifest_tree_key(m), &info) == 0 &&
		       info.size == cfs_manifest_size_bytes(m),
	       "sizeBytes is the object size");
	tap_ok(cJSON_Compare(cfs_manifest_encryption(m),
			     cfs_manifest_tree_encryption(m), true),
	       "encryption == treeEncryption");
	TAP_EQ_STR(cfs_json_str(cfs_manifest_encryption(m), "keyDerivation"),
		   "raw", "raw key derivation recorded");
	v = cfs_manifest_version_find(m, 1);
	tap_ok(v && cfs_json_str(v, "treeKey") &&
		       !strcmp(cfs_json_str(v, "treeKey"),
			       cfs_manifest_tree_key(m)),
	       "generation 1 summary carries its data");
	cfs_manifest_free(m);

	rc = cfs_context_create(NULL, st, raw_keys, "gen-keys", NULL);
	TAP_EQ_INT(rc, CFS_EEXISTS, "second create refused");
	TAP_EQ_STR(cfs_error_last(), "context already exists: gen-keys",
		   "already-exists message");

	fd = export_to(st, raw_keys, "gen-keys", &rc);
	TAP_EQ_INT(rc, 0, "export of the seed tree");
	if (fd < 0)
		return;
	s = get_file(fd, "memory/session.md");
	TAP_EQ_STR(s, "context=gen-keys\nstatus=initialized\n",
		   "seed memory/session.md");
	free(s);
	s = get_file(fd, "workspace/README.md");
	TAP_EQ_STR(s, "Portable agent workspace mounted by contextSDK.\n",
		   "seed workspace/README.md");
	free(s);
	s = get_file(fd, "contextsdk.json");
	TAP_EQ_STR(s,
		   "{\n  \"contextId\": \"gen-keys\",\n  \"createdBy\": "
		   "\"contextSDK\",\n  \"layout\": [\n    \"workspace\",\n    "
		   "\"memory\",\n    \"artifacts\",\n    \"logs\",\n    "
		   "\"cache\",\n    \"config\"\n  ],\n  \"format\": "
		   "\"tree\"\n}\n",
		   "seed contextsdk.json bytes");
	free(s);
	s = get_file(fd, ".contextsdk/index.json");
	tap_ok(s && strstr(s, "\"path\": \"memory/session.md\"") &&
		       strstr(s, "\"mode\": \"0o"),
	       "seed index.json lists the seed files");
	free(s);
	tap_ok(exists_at(fd, "artifacts") && exists_at(fd, "logs") &&
		       exists_at(fd, "config") && !exists_at(fd, "cache"),
	       "roots packed, cache not");
	close(fd);
}

static void test_save_and_retention(struct cfs_store *st)
{
	struct cfs_commit_result res;
	struct cfs_manifest *m;
	char gen1[CFS_KEY_MAX], keys_at[8][CFS_KEY_MAX];
	char *d_src, *d_exp;
	int rc, src, exp;

	m = read_m(st, "gen-keys");
	snprintf(gen1, sizeof(gen1), "%s", cfs_manifest_tree_key(m));
	cfs_manifest_free(m);
	cfs_lock_acquire(NULL, NULL, st, "gen-keys", NULL, OWNER, 0, false);

	src = export_to(st, raw_keys, "gen-keys", &rc);
	if (src < 0)
		return;
	put_file(src, "workspace/task.txt", "write the report\n");
	put_file(src, "workspace/node_modules/x/index.js", "excluded\n");
	unlinkat(src, "memory/session.md", 0);
	rc = commit_dir(&res, st, raw_keys, "gen-keys", src, "first save", 0);
	TAP_EQ_INT(rc, 0, "save succeeds");
	if (rc)
		tap_diag("%s", cfs_error_last());
	TAP_EQ_INT(res.generation, 2, "generation 2");
	tap_ok(key_matches(res.tree_key,
			   "^contexts/gen-keys/tree/00000002-"
			   "[0-9a-f]{8}\\.tree\\.tar\\.zst\\.enc$"),
	       "treeKey of generation 2: %s", res.tree_key);
	{
		char *cp = cJSON_PrintUnformatted(res.changed_paths);

		TAP_EQ_STR(cp,
			   "[{\"path\":\"workspace/task.txt\",\"type\":"
			   "\"added\"},{\"path\":\"memory/session.md\","
			   "\"type\":\"removed\"}]",
			   "changedPaths against the srcdir's index");
		free(cp);
	}
	tap_ok(!exists_at(src, ".contextsdk/versions"),
	       "srcdir not written by the save");
	tap_ok(obj_exists(st, gen1), "generation 1 data retained (default 5)");
	cfs_commit_result_clear(&res);

	exp = export_to(st, raw_keys, "gen-keys", &rc);
	TAP_EQ_INT(rc, 0, "export of generation 2");
	if (exp >= 0) {
		d_src = digest(src);
		d_exp = digest(exp);
		/* node_modules is excluded from the bundle by policy */
		tap_ok(strstr(d_src, "node_modules") &&
			       !strstr(d_exp, "node_modules"),
		       "excluded paths are not saved");
		unlinkat(src, "workspace/node_modules/x/index.js", 0);
		unlinkat(src, "workspace/node_modules/x", AT_REMOVEDIR);
		unlinkat(src, "workspace/node_modules", AT_REMOVEDIR);
		free(d_src);
		d_src = digest(src);
		TAP_EQ_STR(d_exp, d_src,
			   "exported tree equals the committed one (sha256 "
			   "of every file, modes, types)");
		free(d_src);
		free(d_exp);
		{
			char *idx =
				get_file(exp, ".contextsdk/versions/2.json");
			char *cur = get_file(exp, ".contextsdk/index.json");

			tap_ok(idx && cur && !strcmp(idx, cur) &&
				       strstr(idx, "\"generation\": 2"),
			       "version record in the bundle");
			free(idx);
			free(cur);
		}
		close(exp);
	}

	/* retention 2: generations 3..5 */
	snprintf(keys_at[1], CFS_KEY_MAX, "%s", gen1);
	m = read_m(st, "gen-keys");
	snprintf(keys_at[2], CFS_KEY_MAX, "%s", cfs_manifest_tree_key(m));
	cfs_manifest_free(m);
	for (int g = 3; g <= 5; g++) {
		char msg[32];

		snprintf(msg, sizeof(msg), "save %d", g);
		put_file(src, "workspace/counter.txt", msg);
		rc = commit_dir(&res, st, raw_keys, "gen-keys", src, msg, 2);
		TAP_EQ_INT(rc, 0, "save with retention 2");
		snprintf(keys_at[g], CFS_KEY_MAX, "%s", res.tree_key);
		cfs_commit_result_clear(&res);
	}
	tap_ok(!obj_exists(st, keys_at[1]) && !obj_exists(st, keys_at[2]) &&
		       !obj_exists(st, keys_at[3]),
	       "generations beyond retention deleted");
	tap_ok(obj_exists(st, keys_at[4]) && obj_exists(st, keys_at[5]),
	       "last 2 generations kept");
	m = read_m(st, "gen-keys");
	tap_ok(m && !cfs_json_str(cfs_manifest_version_find(m, 3), "treeKey") &&
		       cfs_json_str(cfs_manifest_version_find(m, 4), "treeKey"),
	       "summaries lose their data members with their data");
	cfs_manifest_free(m);
	exp = export_to(st, raw_keys, "gen-keys@4", &rc);
	TAP_EQ_INT(rc, 0, "export of a retained generation");
	if (exp >= 0) {
		char *s = get_file(exp, "workspace/counter.txt");

		TAP_EQ_STR(s, "save 4", "generation 4 content");
		free(s);
		close(exp);
	}
	exp = export_to(st, raw_keys, "gen-keys@2", &rc);
	TAP_EQ_INT(rc, CFS_ENOTFOUND, "export of a GC'd generation");
	TAP_EQ_STR(cfs_error_last(),
		   "generation 2 of gen-keys is no longer retained (kept: 4, "
		   "5)",
		   "no-longer-retained message");
	exp = export_to(st, raw_keys, "gen-keys@9", &rc);
	TAP_EQ_INT(rc, CFS_ENOTFOUND, "export of a future generation");

	/* restore @4 as generation 6 */
	{
		struct cfs_commit_opts o;

		cfs_commit_opts_init(&o);
		o.owner = OWNER;
		rc = cfs_context_restore(&res, st, raw_keys, "gen-keys@4", &o);
		TAP_EQ_INT(rc, 0, "restore succeeds");
		TAP_EQ_INT(res.generation, 6, "restore is generation 6");
		cfs_commit_result_clear(&res);
		m = read_m(st, "gen-keys");
		TAP_EQ_STR(m ? cfs_json_str(cfs_manifest_latest_version(m),
					    "message")
			     : NULL,
			   "restore gen-keys@4", "restore message");
		cfs_manifest_free(m);
		exp = export_to(st, raw_keys, "gen-keys", &rc);
		if (exp >= 0) {
			char *s = get_file(exp, "workspace/counter.txt");

			TAP_EQ_STR(s, "save 4", "restored content");
			free(s);
			close(exp);
		}
	}

	/* expect_generation */
	{
		struct cfs_commit_opts o;

		cfs_commit_opts_init(&o);
		o.owner = OWNER;
		o.expect_generation = 3;
		rc = cfs_context_commit(NULL, st, raw_keys, "gen-keys", src,
					&o);
		TAP_EQ_INT(rc, CFS_ECONFLICT, "expect_generation mismatch");
		o.expect_generation = 6;
		rc = cfs_context_commit(NULL, st, raw_keys, "gen-keys", src,
					&o);
		TAP_EQ_INT(rc, 0, "expect_generation match");
	}
	cfs_lock_release(st, "gen-keys", OWNER, false);
	close(src);
}

struct takeover {
	struct cfs_store *st;
	int calls;
};

/*
 * A bundle of several MiB of incompressible data: the bundle writer's
 * whole buffers (O_DIRECT where the filesystem takes it), its short last
 * buffer and the switch between them must give the same bytes back.
 */
static void test_large_bundle(struct cfs_store *st)
{
	static const size_t sizes[] = {(5u << 20) + 1, (1u << 20) + 4095,
				       3u << 20};
	struct cfs_commit_result res;
	char *d_src, *d_exp;
	int rc, src, exp;

	rc = cfs_context_create(NULL, st, raw_keys, "big-one", NULL);
	TAP_EQ_INT(rc, 0, "create big-one");
	src = export_to(st, raw_keys, "big-one", &rc);
	if (src < 0)
		return;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		char name[64];
		uint8_t *data = malloc(sizes[i]);
		int fd;

		randombytes_buf(data, sizes[i]);
		snprintf(name, sizeof(name), "workspace/random-%zu.bin", i);
		fd = openat(src, name, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		tap_ok(fd >= 0 &&
			       write(fd, data, sizes[i]) == (ssize_t)sizes[i],
		       "write %s", name);
		if (fd >= 0)
			close(fd);
		free(data);
	}
	rc = commit_dir(&res, st, raw_keys, "big-one", src, "big", 0);
	TAP_EQ_INT(rc, 0, "commit of 9 MiB of random data");
	if (rc)
		tap_diag("%s", cfs_error_last());
	tap_ok(res.size_bytes > (9u << 20), "bundle of %" PRIu64 " bytes",
	       res.size_bytes);
	cfs_commit_result_clear(&res);
	exp = export_to(st, raw_keys, "big-one", &rc);
	TAP_EQ_INT(rc, 0, "export of the large bundle authenticates");
	if (rc)
		tap_diag("%s", cfs_error_last());
	if (exp >= 0) {
		d_src = digest(src);
		d_exp = digest(exp);
		TAP_EQ_STR(d_exp, d_src, "large files come back byte for byte");
		free(d_src);
		free(d_exp);
		close(exp);
	}
	close(src);
}

static void take_lock(uint64_t done, uint64_t total, void *payload)
{
	struct takeover *tk = payload;

	if (tk->calls++ == 0)
		cfs_lock_acquire(NULL, NULL, tk->st, "fail-ctx", NULL,
				 "owner-c", 0, true);
}

static void test_failures(struct backend *b)
{
	struct cfs_store *st = b->st;
	struct cfs_manifest *m;
	char key1[CFS_KEY_MAX];
	size_t before;
	int rc, src, fd;

	rc = cfs_context_create(&m, st, raw_keys, "fail-ctx", NULL);
	TAP_EQ_INT(rc, 0, "create for failure tests");
	if (rc)
		return;
	snprintf(key1, sizeof(key1), "%s", cfs_manifest_tree_key(m));
	cfs_manifest_free(m);
	src = export_to(st, raw_keys, "fail-ctx", NULL);
	if (src < 0)
		return;
	put_file(src, "workspace/new.txt", "new\n");

	/* manifest write failure */
	before = be_count(b);
	be_fault(b, CFS_MEM_FAULT_PUT_FAIL, 1, "manifest.json");
	rc = commit_dir(NULL, st, raw_keys, "fail-ctx", src, "x", 0);
	TAP_EQ_INT(rc, CFS_EIO, "manifest write failure fails the save");
	be_fault(b, CFS_MEM_FAULT_NONE, 0, NULL);
	TAP_EQ_INT(gen_of(st, "fail-ctx"), 1, "generation unchanged");
	TAP_EQ_INT(be_count(b), before, "the failed save's object rolled back");
	m = read_m(st, "fail-ctx");
	TAP_EQ_STR(m ? cfs_manifest_tree_key(m) : NULL, key1,
		   "treeKey unchanged");
	cfs_manifest_free(m);
	fd = export_to(st, raw_keys, "fail-ctx", &rc);
	TAP_EQ_INT(rc, 0, "old data still decrypts");
	if (fd >= 0)
		close(fd);

	/* lost compare-and-swap */
	be_fault(b, CFS_MEM_FAULT_LOSE_CAS, 1, "manifest.json");
	rc = commit_dir(NULL, st, raw_keys, "fail-ctx", src, "x", 0);
	TAP_EQ_INT(rc, CFS_ECONFLICT, "lost CAS -> conflict");
	tap_ok(strstr(cfs_error_last(),
		      "context manifest for fail-ctx changed during save "
		      "(concurrent writer or lock takeover); save aborted") !=
		       NULL,
	       "lost-CAS message: %s", cfs_error_last());
	be_fault(b, CFS_MEM_FAULT_NONE, 0, NULL);
	TAP_EQ_INT(be_count(b), before, "nothing left behind");
	TAP_EQ_INT(gen_of(st, "fail-ctx"), 1, "generation still 1");
	fd = export_to(st, raw_keys, "fail-ctx", &rc);
	TAP_EQ_INT(rc, 0, "data intact after lost CAS");
	if (fd >= 0)
		close(fd);

	/* tree upload failure */
	be_fault(b, CFS_MEM_FAULT_PUT_FAIL, 1, "/tree/");
	rc = commit_dir(NULL, st, raw_keys, "fail-ctx", src, "x", 0);
	be_fault(b, CFS_MEM_FAULT_NONE, 0, NULL);
	TAP_EQ_INT(rc, CFS_EIO, "tree upload failure fails the save");
	TAP_EQ_INT(be_count(b), before, "nothing written");

	/* another owner holds the lock */
	rc = cfs_lock_acquire(NULL, NULL, st, "fail-ctx", NULL, "owner-b", 0,
			      false);
	TAP_EQ_INT(rc, 0, "owner-b takes the lock");
	before = be_count(b);
	rc = commit_dir(NULL, st, raw_keys, "fail-ctx", src, "x", 0);
	TAP_EQ_INT(rc, CFS_ELOCKED, "other owner -> locked");
	TAP_EQ_INT(be_count(b), before, "nothing written");
	TAP_EQ_INT(gen_of(st, "fail-ctx"), 1, "generation unchanged");
	cfs_lock_release(st, "fail-ctx", NULL, true);

	/* the lock is taken over while the bundle uploads: the commit point
	 * notices, nothing is committed and the upload is rolled back */
	{
		struct takeover tk = {st, 0};
		struct cfs_commit_opts o;

		cfs_commit_opts_init(&o);
		o.owner = OWNER;
		o.progress = take_lock;
		o.progress_payload = &tk;
		rc = cfs_lock_acquire(NULL, NULL, st, "fail-ctx", NULL, OWNER,
				      0, false);
		TAP_EQ_INT(rc, 0, "owner-a holds the lock");
		before = be_count(b);
		rc = cfs_context_commit(NULL, st, raw_keys, "fail-ctx", src,
					&o);
		TAP_EQ_INT(rc, CFS_ELOCKED,
			   "lock lost before the commit point");
		tap_ok(tk.calls > 0, "takeover happened during the upload");
		TAP_EQ_INT(be_count(b), before, "upload rolled back");
		TAP_EQ_INT(gen_of(st, "fail-ctx"), 1, "generation unchanged");
		cfs_lock_release(st, "fail-ctx", NULL, true);
	}

	/* invalid ids */
	{
		static const char *const bad[] = {"../evil", "a/b", "..", ""};

		for (size_t i = 0; i < CFS_ARRAY_SIZE(bad); i++) {
			rc = cfs_context_create(NULL, st, raw_keys, bad[i],
						NULL);
			tap_ok(rc == CFS_EINVAL && strstr(cfs_error_last(),
							  "invalid context id"),
			       "invalid id \"%s\" rejected", bad[i]);
		}
		rc = cfs_context_commit(NULL, st, raw_keys, "a/b", src, NULL);
		TAP_EQ_INT(rc, CFS_EINVAL, "commit with invalid id");
		fd = export_to(st, raw_keys, "../evil", &rc);
		TAP_EQ_INT(rc, CFS_EINVAL, "export with invalid id");
	}
	rc = commit_dir(NULL, st, raw_keys, "missing", src, "x", 0);
	TAP_EQ_INT(rc, CFS_ENOTFOUND, "commit to a missing context");
	close(src);
}

/* A store whose head never sees anything: loses the create race. */
struct blind {
	struct cfs_store base;
	struct cfs_store *inner;
};

static int b_get(struct cfs_store *st, const char *key, int fd,
		 struct cfs_buf *buf, size_t max, struct cfs_objinfo *info)
{
	struct cfs_store *in = ((struct blind *)st)->inner;

	return in->ops->get(in, key, fd, buf, max, info);
}
static int b_put(struct cfs_store *st, const char *key,
		 const struct cfs_source *src, const struct cfs_cond *cond,
		 char etag[CFS_ETAG_MAX])
{
	struct cfs_store *in = ((struct blind *)st)->inner;

	return in->ops->put(in, key, src, cond, etag);
}
static int b_head(struct cfs_store *st, const char *key,
		  struct cfs_objinfo *info)
{
	return cfs_error_set(CFS_ENOTFOUND, "object not found: %s", key);
}
static int b_del(struct cfs_store *st, const char *key)
{
	struct cfs_store *in = ((struct blind *)st)->inner;

	return in->ops->del(in, key);
}
static int b_list(struct cfs_store *st, const char *prefix, cfs_list_fn fn,
		  void *payload)
{
	struct cfs_store *in = ((struct blind *)st)->inner;

	return in->ops->list(in, prefix, fn, payload);
}
static const char *b_describe(struct cfs_store *st)
{
	return "blind";
}
static void b_free(struct cfs_store *st)
{
}
static const struct cfs_store_ops blind_ops = {CFS_STORE_OPS_VERSION,
					       "blind",
					       b_get,
					       b_put,
					       b_head,
					       b_del,
					       b_list,
					       b_describe,
					       b_free,
					       0,
					       NULL};

static void test_create_race_and_force(struct backend *b)
{
	struct cfs_store *st = b->st;
	struct blind bl;
	struct cfs_commit_result res;
	struct cfs_create_opts co;
	struct cfs_manifest *m = NULL;
	size_t before;
	int rc, src, fd;

	rc = cfs_context_create(NULL, st, raw_keys, "race", NULL);
	TAP_EQ_INT(rc, 0, "create for the race");
	before = be_count(b);
	memset(&bl, 0, sizeof(bl));
	bl.base.ops = &blind_ops;
	bl.inner = st;
	rc = cfs_context_create(NULL, &bl.base, raw_keys, "race", NULL);
	TAP_EQ_INT(rc, CFS_EEXISTS, "losing the create race (HEAD blind)");
	TAP_EQ_STR(cfs_error_last(), "context already exists: race",
		   "already-exists message from the CAS");
	TAP_EQ_INT(be_count(b), before, "the loser's object rolled back");

	/* checkpoint, then save, then export @checkpoint:1 */
	src = export_to(st, raw_keys, "race", NULL);
	if (src < 0)
		return;
	put_file(src, "workspace/cp.txt", "at checkpoint\n");
	{
		struct cfs_commit_opts o;

		cfs_commit_opts_init(&o);
		o.kind = CFS_COMMIT_CHECKPOINT;
		o.reason = "periodic";
		rc = cfs_context_commit(&res, st, raw_keys, "race", src, &o);
		TAP_EQ_INT(rc, 0, "checkpoint succeeds");
		if (rc)
			tap_diag("%s", cfs_error_last());
		TAP_EQ_INT(res.checkpoint_generation, 1, "checkpoint 1");
		TAP_EQ_INT(res.generation, 1, "generation unchanged");
		TAP_EQ_STR(
			res.tree_key,
			"contexts/race/checkpoints/00000001.tree.tar.zst.enc",
			"checkpoint key");
		cfs_commit_result_clear(&res);
	}
	m = read_m(st, "race");
	TAP_EQ_STR(m ? cfs_manifest_tree_key(m) : NULL,
		   "contexts/race/checkpoints/00000001.tree.tar.zst.enc",
		   "treeKey flipped to the checkpoint");
	tap_ok(m && cJSON_GetObjectItem(cfs_manifest_latest_checkpoint(m),
					"encryption"),
	       "checkpoint record keeps its encryption metadata");
	TAP_EQ_STR(m ? cfs_json_str(cfs_manifest_latest_checkpoint(m), "reason")
		     : NULL,
		   "periodic", "checkpoint reason");
	cfs_manifest_free(m);
	put_file(src, "workspace/cp.txt", "after checkpoint\n");
	rc = commit_dir(&res, st, raw_keys, "race", src, "after", 0);
	TAP_EQ_INT(rc, 0, "save after checkpoint");
	cfs_commit_result_clear(&res);
	fd = export_to(st, raw_keys, "race@checkpoint:1", &rc);
	TAP_EQ_INT(rc, 0, "export @checkpoint:1 after a later save");
	if (fd >= 0) {
		char *s = get_file(fd, "workspace/cp.txt");

		TAP_EQ_STR(s, "at checkpoint\n", "checkpoint content");
		free(s);
		close(fd);
	}
	fd = export_to(st, raw_keys, "race@1", &rc);
	TAP_EQ_INT(rc, 0, "generation 1 still retained across the flip");
	if (fd >= 0)
		close(fd);
	fd = export_to(st, raw_keys, "race@checkpoint:2", &rc);
	TAP_EQ_INT(rc, CFS_ENOTFOUND, "missing checkpoint");

	/* force re-create prunes everything old */
	memset(&co, 0, sizeof(co));
	co.force = true;
	rc = cfs_context_create(&m, st, raw_keys, "race", &co);
	TAP_EQ_INT(rc, 0, "force re-create");
	TAP_EQ_INT(nkeys(st, "contexts/race/tree/"), 1,
		   "only the new tree object left");
	TAP_EQ_INT(nkeys(st, "contexts/race/checkpoints/"), 0,
		   "checkpoint objects pruned");
	tap_ok(m && obj_exists(st, cfs_manifest_tree_key(m)) &&
		       cfs_manifest_generation(m) == 1,
	       "new generation 1 in place");
	cfs_manifest_free(m);
	close(src);
}

struct vlog {
	int n, bad, first;
	char role[64];
};

static int on_verify(const struct cfs_verify_item *it, void *payload)
{
	struct vlog *v = payload;

	v->n++;
	if (!it->ok) {
		v->bad++;
		if (!v->first) {
			v->first = it->error;
			snprintf(v->role, sizeof(v->role), "%s", it->role);
		}
	}
	return 0;
}

static void test_verify_and_gc(struct cfs_store *st)
{
	struct vlog v;
	struct cfs_manifest *m;
	size_t deleted = 0;
	struct cfs_gc_opts go;
	int rc, fd;

	memset(&v, 0, sizeof(v));
	rc = cfs_context_verify(st, raw_keys, "gen-keys", on_verify, &v);
	TAP_EQ_INT(rc, 0, "verify of an intact context");
	tap_ok(v.n >= 3 && v.bad == 0, "verify checked %d objects", v.n);

	/* gc --keep 1: only the current generation keeps its data */
	memset(&go, 0, sizeof(go));
	go.keep = 1;
	go.dry_run = true;
	rc = cfs_context_gc(&deleted, st, "gen-keys", &go);
	TAP_EQ_INT(rc, 0, "gc dry run");
	TAP_EQ_INT(nkeys(st, "contexts/gen-keys/tree/"), 4,
		   "dry run deletes nothing (generations 4-7 kept)");
	TAP_EQ_INT(deleted, 3, "dry run would delete generations 4-6");
	go.dry_run = false;
	rc = cfs_context_gc(&deleted, st, "gen-keys", &go);
	TAP_EQ_INT(rc, 0, "gc --keep 1");
	TAP_EQ_INT(nkeys(st, "contexts/gen-keys/tree/"), 1,
		   "one tree object left");

	/* flip a bit of the current object */
	m = read_m(st, "gen-keys");
	if (!m)
		return;
	rc = tamper(st, cfs_manifest_tree_key(m));
	cfs_manifest_free(m);
	TAP_EQ_INT(rc, 0, "current tree object tampered with");
	memset(&v, 0, sizeof(v));
	rc = cfs_context_verify(st, raw_keys, "gen-keys", on_verify, &v);
	TAP_EQ_INT(rc, CFS_EAUTH, "verify reports the tampered object");
	TAP_EQ_INT(v.first, CFS_EAUTH, "callback saw an auth failure");
	TAP_EQ_STR(v.role, "current", "the current tree failed");
	fd = export_to(st, raw_keys, "gen-keys", &rc);
	TAP_EQ_INT(rc, CFS_EAUTH, "export of a tampered object fails");
	if (fd >= 0)
		close(fd);
}

static void test_derive_once(struct cfs_store *st)
{
	struct cfs_keys *keys = NULL;
	struct cfs_create_opts co;
	int rc, src;

	if (cfs_keys_new(&keys, "pass-1", NULL))
		return;
	memset(&co, 0, sizeof(co));
	co.scrypt.cost = 1024;
	rc = cfs_context_create(NULL, st, keys, "kdf", &co);
	TAP_EQ_INT(rc, 0, "passphrase create (cost 1024)");
	src = export_to(st, keys, "kdf", NULL);
	for (int i = 0; src >= 0 && i < 5; i++) {
		char msg[16];

		snprintf(msg, sizeof(msg), "%d", i);
		put_file(src, "workspace/n.txt", msg);
		rc = commit_dir(NULL, st, keys, "kdf", src, msg, 0);
		if (rc)
			tap_diag("commit %d: %s", i, cfs_error_last());
	}
	TAP_EQ_INT(gen_of(st, "kdf"), 6, "5 commits");
	TAP_EQ_INT(cfs_keys_derivations(keys), 1,
		   "one scrypt derivation for create + 5 commits + exports");
	{
		struct cfs_manifest *m = read_m(st, "kdf");
		int64_t cost = 0;

		cfs_json_int(cJSON_GetObjectItem(cfs_manifest_encryption(m),
						 "scrypt"),
			     "cost", &cost);
		TAP_EQ_INT(cost, 1024, "commits keep the recorded cost");
		cfs_manifest_free(m);
	}
	if (src >= 0)
		close(src);
	cfs_keys_free(keys);
}

/* ---- fixtures ----------------------------------------------------------- */

/* Puts every file under dirfd into the store, keyed by its relative path
 * (the fs store's .etagid side files are the fs store's own business). */
static int upload_tree(struct cfs_store *st, int dirfd, const char *prefix)
{
	DIR *d = fdopendir(dup(dirfd));
	struct dirent *de;
	int rc = 0;

	if (d)
		rewinddir(d);
	while (d && (de = readdir(d))) {
		char key[4096];
		size_t n = strlen(de->d_name);
		struct stat sb;
		int fd;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
		    (n > 7 && !strcmp(de->d_name + n - 7, ".etagid")))
			continue;
		if (fstatat(dirfd, de->d_name, &sb, AT_SYMLINK_NOFOLLOW))
			continue;
		snprintf(key, sizeof(key), "%s%s%s", prefix,
			 prefix[0] ? "/" : "", de->d_name);
		fd = openat(dirfd, de->d_name, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			rc = -1;
		} else if (S_ISDIR(sb.st_mode)) {
			rc |= upload_tree(st, fd, key);
		} else if (S_ISREG(sb.st_mode) &&
			   cfs_store_put_fd(st, key, fd, NULL, NULL)) {
			tap_diag("put %s: %s", key, cfs_error_last());
			rc = -1;
		}
		if (fd >= 0)
			close(fd);
	}
	if (d)
		closedir(d);
	return d ? rc : -1;
}

/* Compares an export with expected.json's entriesInTarOrder. */
static void check_entries(int fd, const cJSON *entries, const char *what)
{
	const cJSON *e;
	int n = 0, bad = 0;
	struct lines l = {NULL, 0, 0};

	cJSON_ArrayForEach(e, entries)
	{
		const char *path = cfs_json_str(e, "path");
		const char *type = cfs_json_str(e, "type");
		const char *mode = cfs_json_str(e, "mode");
		const char *sha = cfs_json_str(e, "sha256");
		int64_t size = 0;
		struct stat sb;
		bool ok;

		n++;
		cfs_json_int(e, "size", &size);
		if (fstatat(fd, path, &sb, AT_SYMLINK_NOFOLLOW)) {
			tap_diag("%s: missing %s", what, path);
			bad++;
			continue;
		}
		if (!strcmp(type, "dir"))
			ok = S_ISDIR(sb.st_mode);
		else if (!strcmp(type, "symlink")) {
			char link[512];
			ssize_t k =
				readlinkat(fd, path, link, sizeof(link) - 1);

			link[k > 0 ? k : 0] = '\0';
			ok = S_ISLNK(sb.st_mode) &&
			     !strcmp(link, cfs_json_str(e, "linkname"));
		} else {
			ok = S_ISREG(sb.st_mode);
			if (ok && !strcmp(type, "file")) {
				char got[65] = "";
				int f = openat(fd, path, O_RDONLY);

				cfs_sha256_fd(got, f);
				close(f);
				ok = sb.st_size == size && sha &&
				     !strcmp(got, sha);
			}
		}
		if (ok && mode && !S_ISLNK(sb.st_mode)) {
			char m[16];

			snprintf(m, sizeof(m), "0o%o",
				 (unsigned)(sb.st_mode & 07777));
			ok = !strcmp(m, mode);
			if (!ok)
				tap_diag("%s: %s mode %s, expected %s", what,
					 path, m, mode);
		}
		if (!ok) {
			tap_diag("%s: %s differs", what, path);
			bad++;
		}
	}
	walk(&l, fd, "");
	/* walk skips .contextsdk; count those expected entries */
	{
		int meta = 0;

		cJSON_ArrayForEach(e, entries)
		{
			if (!strncmp(cfs_json_str(e, "path"), ".contextsdk",
				     11))
				meta++;
		}
		tap_ok(bad == 0 && (size_t)(n - meta) == l.n,
		       "%s: %d entries match expected.json (type, mode, size, "
		       "sha256)",
		       what, n);
	}
	for (size_t i = 0; i < l.n; i++)
		free(l.v[i]);
	free(l.v);
}

static cJSON *load_expected(const char *fixdir, const char *name)
{
	char path[4096], *buf = NULL;
	size_t len;
	cJSON *j;

	snprintf(path, sizeof(path), "%s/%s/expected.json", fixdir, name);
	if (cfs_read_file_at(&buf, &len, AT_FDCWD, path, 64 << 20))
		return NULL;
	j = cJSON_ParseWithLength(buf, len);
	free(buf);
	return j;
}

/* A fresh store of the backend's kind holding the fixture's objects. */
static bool fixture_store(struct backend *b, enum bk kind, const char *fixdir,
			  const char *name)
{
	char from[4096];
	int a, rc;

	if (!be_open(b, kind))
		return false;
	snprintf(from, sizeof(from), "%s/%s/store", fixdir, name);
	a = open_dir(from);
	rc = upload_tree(b->st, a, "");
	close(a);
	tap_ok(rc == 0, "%s: fixture %s stored", b->name, name);
	return true;
}

/* Replaces an object with a file's bytes. */
static void put_object_from(struct cfs_store *st, const char *key,
			    const char *path)
{
	char *buf = NULL;
	size_t len;

	if (cfs_read_file_at(&buf, &len, AT_FDCWD, path, 1 << 20) ||
	    cfs_store_put_buf(st, key, buf, len, NULL, NULL))
		tap_diag("put %s from %s: %s", key, path, cfs_error_last());
	free(buf);
}

static void test_fixtures(enum bk kind)
{
	const char *root = getenv("CFS_FIXTURES");
	char fixdir[4096];
	struct backend be;
	struct cfs_store *st;
	struct cfs_keys *keys = NULL;
	cJSON *exp;
	int rc, fd;

	if (!root) {
		tap_skip("CFS_FIXTURES not set");
		return;
	}
	snprintf(fixdir, sizeof(fixdir), "%s/contextsdk-0.4", root);
	if (access(fixdir, R_OK)) {
		tap_skip("fixtures not present");
		return;
	}
	cfs_keys_new(&keys, "interop-passphrase-1", NULL);

	/* fresh: generation 1, GNU tar bundle */
	if (!fixture_store(&be, kind, fixdir, "fresh")) {
		cfs_keys_free(keys);
		return;
	}
	st = be.st;
	exp = load_expected(fixdir, "fresh");
	fd = export_to(st, keys, "interop-fresh", &rc);
	TAP_EQ_INT(rc, 0, "export of the reference's fresh context");
	if (rc)
		tap_diag("%s", cfs_error_last());
	if (fd >= 0 && exp) {
		check_entries(fd,
			      cJSON_GetObjectItem(
				      cJSON_GetObjectItem(
					      cJSON_GetObjectItem(exp, "trees"),
					      "latest"),
				      "entriesInTarOrder"),
			      "fresh latest");
		close(fd);
	}
	cJSON_Delete(exp);
	be_close(&be);

	/* passphrase: generation 4 + checkpoint 1 */
	if (!fixture_store(&be, kind, fixdir, "passphrase")) {
		cfs_keys_free(keys);
		return;
	}
	st = be.st;
	exp = load_expected(fixdir, "passphrase");
	fd = export_to(st, keys, "interop-pass", &rc);
	TAP_EQ_INT(rc, 0, "export of the reference's generation 4");
	if (fd >= 0 && exp) {
		const cJSON *trees = cJSON_GetObjectItem(exp, "trees");

		check_entries(fd,
			      cJSON_GetObjectItem(
				      cJSON_GetObjectItem(trees, "latest"),
				      "entriesInTarOrder"),
			      "passphrase latest");
	}
	fd >= 0 ? (void)0 : (void)0;
	{
		int cfd = export_to(st, keys, "interop-pass@checkpoint:1", &rc);

		TAP_EQ_INT(rc, CFS_ENOTFOUND,
			   "reference checkpoint without metadata");
		tap_ok(strstr(cfs_error_last(), "no longer records its nonce"),
		       "clear message: %s", cfs_error_last());
		if (cfd >= 0)
			close(cfd);
	}

	/* commit on top: unknown fields survive, generation 4 retained */
	if (fd >= 0) {
		const char *mkey = "contexts/interop-pass/manifest.json";
		char *buf = NULL;
		cJSON *doc;
		struct cfs_commit_opts o;
		struct cfs_commit_result res;
		struct cfs_manifest *m;

		cfs_store_get_buf(st, mkey, &buf, NULL, NULL);
		doc = cJSON_Parse(buf ? buf : "");
		free(buf);
		cJSON_AddItemToObject(doc, "x-future",
				      cJSON_CreateString("keep me"));
		buf = cfs_json_print(doc, CFS_JSON_PRETTY);
		if (cfs_store_put_buf(st, mkey, buf, strlen(buf), NULL, NULL))
			tap_diag("put %s: %s", mkey, cfs_error_last());
		free(buf);
		cJSON_Delete(doc);

		put_file(fd, "workspace/contextfs.txt", "written by C\n");
		cfs_commit_opts_init(&o);
		o.message = "contextfs on top";
		o.scrypt.cost = 1024;
		rc = cfs_context_commit(&res, st, keys, "interop-pass", fd, &o);
		TAP_EQ_INT(rc, 0, "commit on top of the reference's context");
		if (rc)
			tap_diag("%s", cfs_error_last());
		TAP_EQ_INT(res.generation, 5, "generation 5");
		cfs_commit_result_clear(&res);
		m = read_m(st, "interop-pass");
		TAP_EQ_STR(m ? cfs_json_str(cfs_manifest_json(m), "x-future")
			     : NULL,
			   "keep me", "unknown manifest field kept");
		tap_ok(m && cfs_manifest_latest_checkpoint(m) &&
			       cfs_manifest_checkpoint_generation(m) == 1,
		       "latestCheckpoint kept");
		cfs_manifest_free(m);
		close(fd);
		fd = export_to(st, keys, "interop-pass@4", &rc);
		TAP_EQ_INT(rc, 0, "the reference's generation 4 is retained");
		if (fd >= 0)
			close(fd);
		fd = export_to(st, keys, "interop-pass", &rc);
		if (fd >= 0) {
			char *s = get_file(fd, "workspace/contextfs.txt");
			char *r = get_file(fd, "workspace/données/"
					       "résumé-日本語.txt");

			tap_ok(s && !strcmp(s, "written by C\n") && r,
			       "generation 5 content");
			free(s);
			free(r);
			close(fd);
		}
	}
	be_close(&be);

	/* the checkpoint, while the manifest still points at it */
	if (!fixture_store(&be, kind, fixdir, "passphrase")) {
		cJSON_Delete(exp);
		cfs_keys_free(keys);
		return;
	}
	st = be.st;
	{
		char mfrom[8192];

		snprintf(mfrom, sizeof(mfrom),
			 "%s/passphrase/manifest-at-checkpoint.json", fixdir);
		put_object_from(st, "contexts/interop-pass/manifest.json",
				mfrom);
	}
	fd = export_to(st, keys, "interop-pass@checkpoint:1", &rc);
	TAP_EQ_INT(rc, 0, "export of the reference's current checkpoint");
	if (fd >= 0 && exp) {
		check_entries(fd,
			      cJSON_GetObjectItem(
				      cJSON_GetObjectItem(
					      cJSON_GetObjectItem(exp, "trees"),
					      "checkpoint"),
				      "entriesInTarOrder"),
			      "passphrase checkpoint");
	}
	if (fd >= 0) {
		struct cfs_commit_opts o;

		cfs_commit_opts_init(&o);
		o.scrypt.cost = 1024;
		rc = cfs_context_commit(NULL, st, keys, "interop-pass", fd, &o);
		TAP_EQ_INT(rc, 0, "save over the reference's checkpoint");
		close(fd);
		fd = export_to(st, keys, "interop-pass@checkpoint:1", &rc);
		TAP_EQ_INT(rc, 0,
			   "the checkpoint stays decryptable after the save");
		if (fd >= 0)
			close(fd);
	}
	cJSON_Delete(exp);
	be_close(&be);
	cfs_keys_free(keys);
}

/* Every engine test on a fresh store of one kind. */
static void engine_suite(enum bk kind)
{
	struct backend b;

	tap_diag("---- the engine on the %s store", bk_names[kind]);
	if (kind == BK_S3)
		tap_diag("s3: nothing skipped; failed puts and lost "
			 "compare-and-swaps come from a wrapper store (a "
			 "failed put never reaches RGW; a lost CAS is real: "
			 "manifest.json is rewritten with new bytes just "
			 "before the engine's If-Match put)");
	if (be_open(&b, kind)) {
		tap_diag("%s: %s", b.name, cfs_store_describe(b.st));
		test_create(b.st, b.name);
		test_save_and_retention(b.st);
		test_large_bundle(b.st);
		test_verify_and_gc(b.st);
		be_close(&b);
	}
	if (be_open(&b, kind)) {
		test_failures(&b);
		be_close(&b);
	}
	if (be_open(&b, kind)) {
		test_create_race_and_force(&b);
		be_close(&b);
	}
	if (be_open(&b, kind)) {
		test_derive_once(b.st);
		be_close(&b);
	}
	test_fixtures(kind);
}

int main(void);
int main(void)
{
	struct cfs_s3_config probe;
	char prefix[64];

	cfs_init();
	cfs_log_quiet();
	if (cfs_keys_new(&raw_keys, NULL, RAW_HEX)) {
		printf("Bail out! keys: %s\n", cfs_error_last());
		return 1;
	}
	engine_suite(BK_MEM);
	engine_suite(BK_FS);
	if (s3h_config(&probe, prefix, sizeof(prefix), "probe"))
		engine_suite(BK_S3);
	else
		tap_skip("the engine on S3: " S3H_UNSET);
	cfs_keys_free(raw_keys);
	return tap_done();
}
