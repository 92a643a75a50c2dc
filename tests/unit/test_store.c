/*
 * Storage backends: one contract suite run against both the fs and the mem
 * store, then fs-only tests (key escapes, the reference's on-disk layout,
 * key locks, a multi-process compare-and-swap race, body/ETag consistency
 * under a concurrent writer, 64 MiB streaming in bounded memory, reading a
 * store written by the reference) and mem-only fault injection.
 *
 * Lock timings are lowered with cfs_store_fs_set_lock_timing() (declared in
 * storage/storage.h as a test hook) so lock tests take well under a second.
 */
#include "core/error.h"
#include "core/store.h"
#include "core/util.h"
#include "storage/storage.h"
#include "tests/unit/tap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(void);

static char *tmproot;

/* ---- helpers ----------------------------------------------------------- */

static bool is_etag_token(const char *s)
{
	size_t i;

	if (strlen(s) != 36)
		return false;
	for (i = 0; i < 36; i++) {
		char c = s[i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
		      c == '-'))
			return false;
	}
	return true;
}

static void msleep(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

struct keyset {
	char *keys[64];
	size_t n;
	int stop_after; /* return 7 after this many keys (0 = never) */
};

static int collect(const char *key, void *payload)
{
	struct keyset *ks = payload;

	if (ks->n < CFS_ARRAY_SIZE(ks->keys))
		ks->keys[ks->n++] = strdup(key);
	if (ks->stop_after && (int)ks->n >= ks->stop_after)
		return 7;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists prefix and returns the sorted keys joined by ',' (static). */
static const char *list_joined(struct cfs_store *st, const char *prefix)
{
	static char out[4096];
	struct keyset ks;
	size_t i;
	int rc;

	memset(&ks, 0, sizeof(ks));
	out[0] = '\0';
	rc = cfs_store_list(st, prefix, collect, &ks);
	if (rc)
		snprintf(out, sizeof(out), "error %d: %s", rc,
			 cfs_error_last());
	qsort(ks.keys, ks.n, sizeof(ks.keys[0]), cmp_str);
	for (i = 0; i < ks.n; i++) {
		if (!rc)
			snprintf(out + strlen(out), sizeof(out) - strlen(out),
				 "%s%s", i ? "," : "", ks.keys[i]);
		free(ks.keys[i]);
	}
	return out;
}

static int put_str(struct cfs_store *st, const char *key, const char *s,
		   const struct cfs_cond *cond, char etag[CFS_ETAG_MAX])
{
	return cfs_store_put_buf(st, key, s, strlen(s), cond, etag);
}

/* Body of key as a heap string, NULL if missing. */
static char *get_str(struct cfs_store *st, const char *key,
		     struct cfs_objinfo *info)
{
	char *body = NULL;

	if (cfs_store_get_buf(st, key, &body, NULL, info))
		return NULL;
	return body;
}

static char *path_in(const char *dir, const char *rel)
{
	return cfs_asprintf("%s/%s", dir, rel);
}

static char *read_text(const char *path)
{
	char *data = NULL;
	size_t len;

	if (cfs_read_file_at(&data, &len, AT_FDCWD, path, 1 << 20))
		return NULL;
	return data;
}

static bool exists(const char *path)
{
	struct stat sb;

	return lstat(path, &sb) == 0;
}

/* Names in dir (sorted, joined by ','; static). */
static const char *dir_joined(const char *dir)
{
	static char out[4096];
	char *names[64];
	size_t n = 0, i;
	struct dirent *de;
	DIR *d = opendir(dir);

	out[0] = '\0';
	if (!d)
		return "(missing)";
	while ((de = readdir(d)) && n < CFS_ARRAY_SIZE(names)) {
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			names[n++] = strdup(de->d_name);
	}
	closedir(d);
	qsort(names, n, sizeof(names[0]), cmp_str);
	for (i = 0; i < n; i++) {
		snprintf(out + strlen(out), sizeof(out) - strlen(out), "%s%s",
			 i ? "," : "", names[i]);
		free(names[i]);
	}
	return out;
}

/* Writes a lock dir <path>.lock/heartbeat holding token, aged age_ms. */
static void make_lock(const char *objpath, const char *token, int64_t age_ms)
{
	char *dir = cfs_asprintf("%s.lock", objpath);
	char *hb = cfs_asprintf("%s.lock/heartbeat", objpath);
	char *parent = cfs_strdup(objpath);
	struct timespec ts[2];
	int64_t t = cfs_now_ms() - age_ms;

	*strrchr(parent, '/') = '\0';
	cfs_mkdir_p_at(AT_FDCWD, parent, 0700);
	mkdir(dir, 0700);
	cfs_write_file_at(AT_FDCWD, hb, token, strlen(token), 0600, false);
	ts[0].tv_sec = ts[1].tv_sec = (time_t)(t / 1000);
	ts[0].tv_nsec = ts[1].tv_nsec = (long)(t % 1000) * 1000000L;
	utimensat(AT_FDCWD, hb, ts, 0);
	free(dir);
	free(hb);
	free(parent);
}

struct progress_rec {
	uint64_t calls, last_done, last_total;
};

static void on_progress(uint64_t done, uint64_t total, void *payload)
{
	struct progress_rec *p = payload;

	p->calls++;
	p->last_done = done;
	p->last_total = total;
}

/* ---- the contract suite (both backends) -------------------------------- */

static void contract(struct cfs_store *st, const char *name)
{
	const char *key = "contexts/demo/manifest.json";
	char e1[CFS_ETAG_MAX], e2[CFS_ETAG_MAX], e3[CFS_ETAG_MAX];
	struct cfs_cond none_match = {NULL, true};
	struct cfs_cond match = {NULL, false};
	struct cfs_objinfo info;
	struct cfs_buf b = CFS_BUF_INIT;
	struct progress_rec pr;
	char *body;
	int rc;

	tap_diag("contract suite: %s (%s)", name, cfs_store_describe(st));

	rc = put_str(st, key, "{\"generation\":1}", NULL, e1);
	TAP_EQ_INT(rc, 0, "put");
	TAP_OK(is_etag_token(e1), "%s: put returns a 36-char [0-9a-f-] ETag",
	       name);
	memset(&info, 0, sizeof(info));
	body = get_str(st, key, &info);
	TAP_EQ_STR(body, "{\"generation\":1}", "get returns the body");
	TAP_EQ_STR(info.etag, e1, "get returns the put's ETag");
	TAP_EQ_INT(info.size, 16, "get reports the size");
	TAP_OK(info.mtime_ms > 0, "%s: get reports an mtime", name);
	free(body);
	memset(&info, 0, sizeof(info));
	rc = cfs_store_head(st, key, &info);
	TAP_EQ_INT(rc, 0, "head");
	TAP_EQ_STR(info.etag, e1, "head returns the same ETag");
	TAP_EQ_INT(info.size, 16, "head reports the size");

	/* Identical bytes, new ETag (ABA-safe). */
	rc = put_str(st, key, "{\"generation\":1}", NULL, e2);
	TAP_EQ_INT(rc, 0, "put identical bytes");
	TAP_OK(is_etag_token(e2) && strcmp(e1, e2) != 0,
	       "%s: ETag changes on every put even with identical bytes", name);

	/* Create-only. */
	rc = put_str(st, key, "clobber", &none_match, e3);
	TAP_EQ_INT(rc, CFS_EEXISTS, "if_none_match on an existing object");
	TAP_EQ_STR(cfs_error_last(),
		   "object already exists: contexts/demo/manifest.json",
		   "create-only conflict message");
	body = get_str(st, key, NULL);
	TAP_EQ_STR(body, "{\"generation\":1}", "failed create left the body");
	free(body);
	rc = put_str(st, "contexts/demo/lock.json", "{}", &none_match, e3);
	TAP_EQ_INT(rc, 0, "if_none_match creates a missing object");

	/* Compare-and-swap. */
	match.if_match = e1; /* stale */
	rc = put_str(st, key, "{\"generation\":2}", &match, e3);
	TAP_EQ_INT(rc, CFS_ECONFLICT, "if_match with a stale ETag fails");
	TAP_EQ_STR(cfs_error_last(),
		   "precondition failed for object: "
		   "contexts/demo/manifest.json",
		   "CAS failure message");
	body = get_str(st, key, &info);
	TAP_EQ_STR(body, "{\"generation\":1}", "lost CAS left the body");
	TAP_EQ_STR(info.etag, e2, "lost CAS left the ETag");
	free(body);
	match.if_match = e2;
	rc = put_str(st, key, "{\"generation\":2}", &match, e3);
	TAP_EQ_INT(rc, 0, "if_match with the current ETag succeeds");
	TAP_OK(is_etag_token(e3) && strcmp(e3, e2) != 0,
	       "%s: CAS returns a new ETag", name);
	body = get_str(st, key, &info);
	TAP_EQ_STR(body, "{\"generation\":2}", "CAS wrote the body");
	TAP_EQ_STR(info.etag, e3, "CAS ETag is what get returns");
	free(body);
	rc = put_str(st, key, "{\"generation\":3}", &match, NULL);
	TAP_EQ_INT(rc, CFS_ECONFLICT, "reusing a consumed ETag fails");
	match.if_match = e3;
	rc = put_str(st, "contexts/demo/missing.json", "x", &match, NULL);
	TAP_EQ_INT(rc, CFS_ECONFLICT, "if_match against a missing object");
	TAP_EQ_STR(cfs_error_last(),
		   "precondition failed for object: contexts/demo/missing.json",
		   "missing CAS message");

	/* Missing objects. */
	body = (char *)1;
	rc = cfs_store_get_buf(st, "contexts/nope/manifest.json", &body, NULL,
			       NULL);
	TAP_EQ_INT(rc, CFS_ENOTFOUND, "get of a missing key");
	TAP_EQ_STR(cfs_error_last(),
		   "object not found: contexts/nope/manifest.json",
		   "not-found message");
	TAP_OK(body == NULL, "%s: failed get leaves *out NULL", name);
	rc = cfs_store_head(st, "contexts/nope/manifest.json", &info);
	TAP_EQ_INT(rc, CFS_ENOTFOUND, "head of a missing key");

	/* Delete. */
	rc = cfs_store_delete(st, "contexts/demo/lock.json");
	TAP_EQ_INT(rc, 0, "delete");
	rc = cfs_store_head(st, "contexts/demo/lock.json", &info);
	TAP_EQ_INT(rc, CFS_ENOTFOUND, "deleted object is gone");
	rc = cfs_store_delete(st, "contexts/demo/lock.json");
	TAP_EQ_INT(rc, 0, "deleting a missing object is fine");
	rc = cfs_store_delete(st, "contexts/never/was.json");
	TAP_EQ_INT(rc, 0, "deleting under a missing directory is fine");
	rc = put_str(st, "contexts/demo/lock.json", "{}", &none_match, NULL);
	TAP_EQ_INT(rc, 0, "create-only works again after delete");

	/* List. */
	put_str(st, "contexts/x/tree/00000001-aa.tree.tar.zst.enc", "a", NULL,
		NULL);
	put_str(st, "contexts/x/tree/00000002-bb.tree.tar.zst.enc", "b", NULL,
		NULL);
	put_str(st, "contexts/x/manifest.json", "{}", NULL, NULL);
	put_str(st, "contexts/x/checkpoints/00000001.tree.tar.zst.enc", "c",
		NULL, NULL);
	TAP_EQ_STR(list_joined(st, "contexts/x/tree/"),
		   "contexts/x/tree/00000001-aa.tree.tar.zst.enc,"
		   "contexts/x/tree/00000002-bb.tree.tar.zst.enc",
		   "list a nested prefix");
	TAP_EQ_STR(list_joined(st, "contexts/x/"),
		   "contexts/x/checkpoints/00000001.tree.tar.zst.enc,"
		   "contexts/x/manifest.json,"
		   "contexts/x/tree/00000001-aa.tree.tar.zst.enc,"
		   "contexts/x/tree/00000002-bb.tree.tar.zst.enc",
		   "list walks nested keys");
	TAP_EQ_STR(list_joined(st, "contexts/"),
		   "contexts/demo/lock.json,contexts/demo/manifest.json,"
		   "contexts/x/checkpoints/00000001.tree.tar.zst.enc,"
		   "contexts/x/manifest.json,"
		   "contexts/x/tree/00000001-aa.tree.tar.zst.enc,"
		   "contexts/x/tree/00000002-bb.tree.tar.zst.enc",
		   "list the whole contexts/ prefix");
	TAP_EQ_STR(list_joined(st, "contexts/none/"), "",
		   "list of a missing prefix is empty");
	{
		struct keyset ks;

		memset(&ks, 0, sizeof(ks));
		ks.stop_after = 1;
		rc = cfs_store_list(st, "contexts/x/", collect, &ks);
		TAP_EQ_INT(rc, 7, "a callback's non-zero return stops list");
		TAP_EQ_INT(ks.n, 1, "list stopped after one key");
		free(ks.keys[0]);
	}
	cfs_store_delete(st, "contexts/x/tree/00000001-aa.tree.tar.zst.enc");
	TAP_EQ_STR(list_joined(st, "contexts/x/tree/"),
		   "contexts/x/tree/00000002-bb.tree.tar.zst.enc",
		   "list after delete");

	/* Streams and caps. */
	{
		char tmpl[] = "/tmp/cfs-store-src-XXXXXX";
		char tmpl2[] = "/tmp/cfs-store-dst-XXXXXX";
		int src = mkstemp(tmpl), dst = mkstemp(tmpl2);
		char etag[CFS_ETAG_MAX], got[64];
		ssize_t n;

		unlink(tmpl);
		unlink(tmpl2);
		cfs_write_all(src, "streamed body", 13);
		/* put_fd reads the whole fd from offset 0. */
		memset(&pr, 0, sizeof(pr));
		st->progress = on_progress;
		st->progress_payload = &pr;
		rc = cfs_store_put_fd(st, "contexts/s/obj", src, NULL, etag);
		st->progress = NULL;
		TAP_EQ_INT(rc, 0, "put_fd");
		TAP_OK(pr.calls > 0 && pr.last_done == 13,
		       "%s: progress reported for put_fd", name);
		cfs_write_all(dst, "HDR:", 4);
		rc = cfs_store_get_fd(st, "contexts/s/obj", dst, &info);
		TAP_EQ_INT(rc, 0, "get_fd");
		n = pread(dst, got, sizeof(got) - 1, 0);
		got[n < 0 ? 0 : n] = '\0';
		TAP_EQ_STR(got, "HDR:streamed body",
			   "get_fd appends at the fd's offset");
		TAP_EQ_STR(info.etag, etag, "get_fd reports the ETag");
		close(src);
		close(dst);
	}
	rc = st->ops->get(st, "contexts/s/obj", -1, &b, 4, NULL);
	TAP_EQ_INT(rc, CFS_ECORRUPT, "get into a buffer respects the cap");
	cfs_buf_free(&b);
	{
		char *bin = NULL;
		size_t len = 0;

		rc = cfs_store_put_buf(st, "contexts/s/bin", "a\0b", 3, NULL,
				       NULL);
		rc = rc ? rc
			: cfs_store_get_buf(st, "contexts/s/bin", &bin, &len,
					    NULL);
		TAP_OK(rc == 0 && len == 3 && memcmp(bin, "a\0b", 4) == 0,
		       "%s: binary bodies round-trip with their length, "
		       "NUL-terminated",
		       name);
		free(bin);
	}
	rc = cfs_store_put_buf(st, "contexts/s/empty", "", 0, NULL, NULL);
	body = get_str(st, "contexts/s/empty", &info);
	TAP_OK(rc == 0 && body && body[0] == '\0' && info.size == 0,
	       "%s: empty objects round-trip", name);
	free(body);
}

/* ---- fs-only ----------------------------------------------------------- */

static void fs_keys(struct cfs_store *st, const char *dir)
{
	static const char *escaping[] = {"../escape.json", "a/../../x",
					 "/etc/passwd", ".."};
	static const char *invalid[] = {"a//b",	    "a/./b",	  "./a",
					"a/",	    "a/..",	  "a/m.etagid",
					"a/m.lock", "a/m.tmp-1-x"};
	char expect[256];
	size_t i;
	char *outside;
	int rc;

	for (i = 0; i < CFS_ARRAY_SIZE(escaping); i++) {
		rc = put_str(st, escaping[i], "x", NULL, NULL);
		TAP_EQ_INT(rc, CFS_EUNSAFE, escaping[i]);
		snprintf(expect, sizeof(expect),
			 "storage key escapes the storage directory: %s",
			 escaping[i]);
		TAP_EQ_STR(cfs_error_last(), expect, "escape message");
		rc = cfs_store_get_buf(st, escaping[i], &outside, NULL, NULL);
		TAP_EQ_INT(rc, CFS_EUNSAFE, "get refuses an escaping key");
	}
	for (i = 0; i < CFS_ARRAY_SIZE(invalid); i++) {
		rc = put_str(st, invalid[i], "x", NULL, NULL);
		TAP_EQ_INT(rc, CFS_EUNSAFE, invalid[i]);
	}
	rc = cfs_store_list(st, "../", collect, NULL);
	TAP_EQ_INT(rc, CFS_EUNSAFE, "list refuses an escaping prefix");
	outside = path_in(dir, "../escape.json");
	TAP_OK(!exists(outside), "nothing was written outside the store");
	free(outside);
}

static void fs_layout(struct cfs_store *st, const char *dir)
{
	char etag[CFS_ETAG_MAX], sha[65];
	struct cfs_cond match = {NULL, false};
	struct cfs_objinfo info;
	struct stat sb;
	char *p, *side, *text, *body;
	int rc;

	rc = put_str(st, "contexts/demo/manifest.json", "{\"v\":1}", NULL,
		     etag);
	TAP_EQ_INT(rc, 0, "put for layout");
	p = path_in(dir, "contexts/demo");
	TAP_EQ_STR(dir_joined(p),
		   "lock.json,lock.json.etagid,"
		   "manifest.json,manifest.json.etagid",
		   "exact layout: objects and .etagid sidecars, no "
		   "leftover locks or temp files");
	free(p);
	side = path_in(dir, "contexts/demo/manifest.json.etagid");
	text = read_text(side);
	TAP_EQ_STR(text, etag, "sidecar holds the ETag, no newline");
	free(text);
	TAP_OK(stat(side, &sb) == 0 && (sb.st_mode & 07777) == 0600,
	       "sidecar mode is 0600 (%o)", (unsigned)(sb.st_mode & 07777));
	p = path_in(dir, "contexts/demo/manifest.json");
	TAP_OK(stat(p, &sb) == 0 && (sb.st_mode & 07777) == 0600,
	       "object mode is 0600");
	text = read_text(p);
	TAP_EQ_STR(text, "{\"v\":1}", "object file holds the raw body");
	free(text);
	free(p);
	free(side);

	/* A file written by another tool: ETag = sha256 of the body. */
	p = path_in(dir, "contexts/other");
	cfs_mkdir_p_at(AT_FDCWD, p, 0700);
	free(p);
	p = path_in(dir, "contexts/other/plain.txt");
	cfs_write_file_at(AT_FDCWD, p, "hello", 5, 0644, false);
	cfs_sha256_hex(sha, "hello", 5);
	body = get_str(st, "contexts/other/plain.txt", &info);
	TAP_EQ_STR(body, "hello", "reads a file written by another tool");
	TAP_EQ_STR(info.etag, sha, "its ETag is the lowercase sha256");
	TAP_EQ_STR(
		info.etag,
		"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
		"sha256(\"hello\")");
	free(body);
	rc = cfs_store_head(st, "contexts/other/plain.txt", &info);
	TAP_EQ_STR(info.etag, sha, "head agrees");
	match.if_match = sha;
	rc = put_str(st, "contexts/other/plain.txt", "world", &match, etag);
	TAP_EQ_INT(rc, 0, "CAS against a sha256 ETag");
	side = cfs_asprintf("%s.etagid", p);
	text = read_text(side);
	TAP_EQ_STR(text, etag, "the CAS wrote a sidecar");
	free(text);
	free(side);
	free(p);

	/* An empty sidecar counts as none. */
	p = path_in(dir, "contexts/other/plain.txt.etagid");
	cfs_write_file_at(AT_FDCWD, p, "\n", 1, 0600, false);
	cfs_sha256_hex(sha, "world", 5);
	rc = cfs_store_head(st, "contexts/other/plain.txt", &info);
	TAP_EQ_STR(info.etag, sha, "an empty sidecar falls back to sha256");
	cfs_write_file_at(AT_FDCWD, p, " abc\n", 5, 0600, false);
	rc = cfs_store_head(st, "contexts/other/plain.txt", &info);
	TAP_EQ_STR(info.etag, "abc", "the sidecar is trimmed");
	free(p);

	/* list skips locks, sidecars and temp files. */
	p = path_in(dir, "contexts/other/plain.txt.tmp-1-abc");
	cfs_write_file_at(AT_FDCWD, p, "t", 1, 0600, false);
	free(p);
	p = path_in(dir, "contexts/other/gone.txt.lock");
	mkdir(p, 0700);
	free(p);
	p = path_in(dir, "contexts/other/gone.txt.lock/heartbeat");
	cfs_write_file_at(AT_FDCWD, p, "tok", 3, 0600, false);
	free(p);
	TAP_EQ_STR(list_joined(st, "contexts/other/"),
		   "contexts/other/plain.txt",
		   "list skips .lock dirs, .etagid and .tmp- files");
	TAP_EQ_STR(list_joined(st, "contexts/other/plain.txt"),
		   "contexts/other/plain.txt",
		   "list of a prefix naming a file returns it");
	p = path_in(dir, "contexts/other/gone.txt.lock");
	cfs_rmtree_at(AT_FDCWD, p);
	free(p);
}

static void fs_locks(struct cfs_store *st, const char *dir)
{
	const char *key = "contexts/lk/manifest.json";
	char *obj = path_in(dir, key);
	char *lockdir = cfs_asprintf("%s.lock", obj);
	char *hb = cfs_asprintf("%s.lock/heartbeat", obj);
	char expect[1024], *text, *body;
	int64_t t0, dt;
	pid_t pid;
	int rc, status;

	/* A stale lock (heartbeat mtime a minute old) is broken. */
	make_lock(obj, "dead-holder-token", 60000);
	t0 = cfs_monotonic_ms();
	rc = put_str(st, key, "after-stale", NULL, NULL);
	dt = cfs_monotonic_ms() - t0;
	TAP_EQ_INT(rc, 0, "put breaks a stale lock");
	TAP_OK(dt < 2000, "without waiting for it (%lld ms)", (long long)dt);
	TAP_OK(!exists(lockdir), "and releases its own lock");

	/* A fresh foreign lock makes a put wait, then time out. */
	cfs_store_fs_set_lock_timing(st, 0, 400, 20, 0);
	make_lock(obj, "live-holder-token", 0);
	t0 = cfs_monotonic_ms();
	rc = put_str(st, key, "must-not-land", NULL, NULL);
	dt = cfs_monotonic_ms() - t0;
	TAP_EQ_INT(rc, CFS_ETIMEDOUT, "put times out on a held lock");
	snprintf(expect, sizeof(expect),
		 "timed out waiting for storage key lock: %s", lockdir);
	TAP_EQ_STR(cfs_error_last(), expect, "timeout message names the lock");
	TAP_OK(dt >= 380 && dt < 3000, "waited for the timeout (%lld ms)",
	       (long long)dt);
	text = read_text(hb);
	TAP_EQ_STR(text, "live-holder-token", "the live lock was not touched");
	free(text);
	body = get_str(st, key, NULL);
	TAP_OK(body == NULL && cfs_error_last_code() == CFS_ETIMEDOUT,
	       "a get waits for the writer too, and times out");
	free(body);

	/* ... and proceeds once the lock is released. */
	cfs_store_fs_set_lock_timing(st, 0, 10000, 20, 0);
	pid = fork();
	if (pid == 0) {
		msleep(300);
		cfs_rmtree_at(AT_FDCWD, lockdir);
		_exit(0);
	}
	t0 = cfs_monotonic_ms();
	rc = put_str(st, key, "after-release", NULL, NULL);
	dt = cfs_monotonic_ms() - t0;
	waitpid(pid, &status, 0);
	TAP_EQ_INT(rc, 0, "put succeeds once the holder releases");
	TAP_OK(dt >= 250, "after waiting for it (%lld ms)", (long long)dt);
	body = get_str(st, key, NULL);
	TAP_EQ_STR(body, "after-release", "the waiting put landed");
	free(body);

	/* A held lock whose heartbeat stops ages out and is broken. */
	cfs_store_fs_set_lock_timing(st, 500, 10000, 20, 0);
	make_lock(obj, "hung-holder-token", 0);
	t0 = cfs_monotonic_ms();
	rc = put_str(st, key, "after-hung", NULL, NULL);
	dt = cfs_monotonic_ms() - t0;
	TAP_EQ_INT(rc, 0, "put breaks a lock once its heartbeat is stale");
	TAP_OK(dt >= 400, "but only after the stale age (%lld ms)",
	       (long long)dt);

	/* A lock dir without heartbeat ages by the dir's mtime. */
	mkdir(lockdir, 0700);
	cfs_store_fs_set_lock_timing(st, 100000, 300, 20, 0);
	rc = put_str(st, key, "x", NULL, NULL);
	TAP_EQ_INT(rc, CFS_ETIMEDOUT,
		   "a fresh lock dir without heartbeat is not broken");
	rmdir(lockdir);
	cfs_store_fs_set_lock_timing(st, 10000, 60000, 50, 3333);
	free(obj);
	free(lockdir);
	free(hb);
}

/*
 * A slow put (source: a pipe fed over ~900 ms) races a second process's put
 * with a 300 ms stale age. With heartbeat refresh the second waits and
 * lands last; with refresh off it breaks the lock and the slow put must
 * fail with CFS_ELOCKED rather than publish.
 */
static void fs_heartbeat(struct cfs_store *st, bool refresh)
{
	const char *key = "contexts/hb/bundle";
	int p[2], status = 0, rc;
	pid_t feeder, rival;
	char *body;

	cfs_store_fs_set_lock_timing(st, 300, 10000, 20, refresh ? 50 : 100000);
	if (pipe(p) < 0)
		return;
	feeder = fork();
	if (feeder == 0) {
		int i;

		close(p[0]);
		for (i = 0; i < 9; i++) {
			if (write(p[1], "slow-", 5) != 5)
				_exit(1);
			msleep(100);
		}
		_exit(0);
	}
	close(p[1]);
	rival = fork();
	if (rival == 0) {
		close(p[0]);
		msleep(200);
		_exit(put_str(st, key, "rival", NULL, NULL) ? 1 : 0);
	}
	rc = cfs_store_put_fd(st, key, p[0], NULL, NULL);
	close(p[0]);
	waitpid(feeder, NULL, 0);
	waitpid(rival, &status, 0);
	TAP_OK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	       "heartbeat(refresh=%d): the rival put succeeded", refresh);
	body = get_str(st, key, NULL);
	if (refresh) {
		TAP_EQ_INT(rc, 0, "the slow put kept its lock alive");
		TAP_EQ_STR(body, "rival",
			   "the rival waited for the slow put and landed last");
	} else {
		TAP_EQ_INT(rc, CFS_ELOCKED,
			   "a put whose lock was broken fails");
		TAP_EQ_STR(body, "rival",
			   "and did not overwrite the new holder's object");
	}
	free(body);
	cfs_store_fs_set_lock_timing(st, 10000, 60000, 50, 3333);
}

/* 8 processes x 50 read-ETag + conditional put of counter+1 on one key. */
static void fs_cas_race(struct cfs_store *st, const char *dir)
{
	enum { PROCS = 8, ROUNDS = 50 };
	const char *key = "contexts/race/manifest.json";
	static unsigned char seen[PROCS * ROUNDS + 2];
	unsigned wins = 0, dup = 0, bad = 0, finalv, v, i;
	int p[2], status, failed = 0;
	pid_t pids[PROCS];
	char *body, *d;

	put_str(st, key, "0", NULL, NULL);
	if (pipe(p) < 0)
		return;
	for (i = 0; i < PROCS; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			int r;

			close(p[0]);
			for (r = 0; r < ROUNDS; r++) {
				struct cfs_objinfo info;
				struct cfs_cond c = {NULL, false};
				char *cur = NULL, next[32];
				unsigned n;
				int rc;

				if (cfs_store_get_buf(st, key, &cur, NULL,
						      &info))
					_exit(2);
				n = (unsigned)strtoul(cur, NULL, 10) + 1;
				free(cur);
				snprintf(next, sizeof(next), "%u", n);
				c.if_match = info.etag;
				rc = put_str(st, key, next, &c, NULL);
				if (rc == 0) {
					if (write(p[1], &n, sizeof(n)) !=
					    sizeof(n))
						_exit(3);
				} else if (rc != CFS_ECONFLICT) {
					fprintf(stderr, "put: %s\n",
						cfs_error_last());
					_exit(4);
				}
			}
			_exit(0);
		}
	}
	close(p[1]);
	while (read(p[0], &v, sizeof(v)) == sizeof(v)) {
		wins++;
		if (v == 0 || v >= sizeof(seen))
			bad++;
		else if (seen[v]++)
			dup++;
	}
	close(p[0]);
	for (i = 0; i < PROCS; i++) {
		waitpid(pids[i], &status, 0);
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			failed++;
	}
	TAP_EQ_INT(failed, 0, "CAS race: every process ran cleanly");
	body = get_str(st, key, NULL);
	finalv = body ? (unsigned)strtoul(body, NULL, 10) : 0;
	free(body);
	TAP_EQ_INT(dup + bad, 0,
		   "CAS race: exactly one winner per round (no value "
		   "written twice)");
	TAP_EQ_INT(wins, finalv,
		   "CAS race: successes == rounds (no lost "
		   "update)");
	TAP_OK(wins >= ROUNDS, "CAS race: progress was made (%u wins)", wins);
	d = path_in(dir, "contexts/race");
	TAP_EQ_STR(dir_joined(d), "manifest.json,manifest.json.etagid",
		   "CAS race: no leftover locks or temp files");
	free(d);
}

/*
 * A put done the way the reference's FsStorage does it: key lock, temp
 * body, sidecar rewritten in place BEFORE the body is renamed (a window
 * widened here with a short sleep), release.
 */
static int reference_style_put(const char *dir, const char *key,
			       const char *body, char etag[37])
{
	char *obj = path_in(dir, key);
	char *lockdir = cfs_asprintf("%s.lock", obj);
	char *hb = cfs_asprintf("%s.lock/heartbeat", obj);
	char *side = cfs_asprintf("%s.etagid", obj);
	char *tmp = cfs_asprintf("%s.tmp-%d-ref", obj, (int)getpid());
	char token[37];
	int fd, rc = 0;

	cfs_uuid4(token);
	while (mkdir(lockdir, 0755) < 0)
		msleep(1);
	cfs_write_file_at(AT_FDCWD, hb, token, 36, 0644, false);
	cfs_write_file_at(AT_FDCWD, tmp, body, strlen(body), 0600, false);
	cfs_uuid4(etag);
	fd = open(side, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || cfs_write_all(fd, etag, 36))
		rc = -1;
	if (fd >= 0)
		close(fd);
	usleep(300);
	if (rename(tmp, obj) < 0)
		rc = -1;
	cfs_rmtree_at(AT_FDCWD, lockdir);
	free(obj);
	free(lockdir);
	free(hb);
	free(side);
	free(tmp);
	return rc;
}

/*
 * A writer process puts "i" 150 times and reports (i, ETag); the reader
 * meanwhile collects (body, ETag) pairs. Every pair must be one revision,
 * whether the writer is us (body first) or the reference (sidecar first).
 */
static void fs_read_consistency(struct cfs_store *st, const char *dir,
				bool reference_writer)
{
	enum { PUTS = 150, MAXPAIRS = 4000 };
	const char *key = "contexts/rc/manifest.json";
	static char etags[PUTS + 1][CFS_ETAG_MAX];
	static struct {
		unsigned v;
		char etag[CFS_ETAG_MAX];
	} pairs[MAXPAIRS];
	struct {
		unsigned v;
		char etag[37];
	} rec;
	unsigned npairs = 0, mismatched = 0, i;
	int p[2], status;
	pid_t pid;

	put_str(st, key, "0", NULL, etags[0]);
	if (pipe(p) < 0)
		return;
	pid = fork();
	if (pid == 0) {
		close(p[0]);
		for (i = 1; i <= PUTS; i++) {
			char b[16], e[CFS_ETAG_MAX];

			snprintf(b, sizeof(b), "%u", i);
			if (reference_writer
				    ? reference_style_put(dir, key, b, e)
				    : put_str(st, key, b, NULL, e))
				_exit(2);
			rec.v = i;
			memcpy(rec.etag, e, 37);
			if (write(p[1], &rec, sizeof(rec)) != sizeof(rec))
				_exit(3);
		}
		_exit(0);
	}
	close(p[1]);
	for (;;) {
		struct cfs_objinfo info;
		char *body = NULL;

		if (cfs_store_get_buf(st, key, &body, NULL, &info) == 0 &&
		    npairs < MAXPAIRS) {
			pairs[npairs].v = (unsigned)strtoul(body, NULL, 10);
			memcpy(pairs[npairs].etag, info.etag,
			       sizeof(info.etag));
			npairs++;
		}
		free(body);
		if (waitpid(pid, &status, WNOHANG) == pid)
			break;
	}
	while (read(p[0], &rec, sizeof(rec)) == sizeof(rec))
		if (rec.v <= PUTS)
			memcpy(etags[rec.v], rec.etag, 37);
	close(p[0]);
	TAP_OK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	       "consistency (%s writer): writer ran cleanly",
	       reference_writer ? "reference-style" : "our");
	for (i = 0; i < npairs; i++)
		if (pairs[i].v > PUTS ||
		    strcmp(pairs[i].etag, etags[pairs[i].v]) != 0)
			mismatched++;
	TAP_EQ_INT(mismatched, 0,
		   reference_writer
			   ? "consistency: against a reference-style writer, "
			     "every get returned body and ETag of one revision"
			   : "consistency: every get returned body and ETag of "
			     "one revision");
	tap_diag("  %u reads during %d puts", npairs, PUTS);
}

/* Disk full and permission errors keep their meaning and name the path. */
static void fs_errors(struct cfs_store *st, const char *dir)
{
	char *sub = path_in(dir, "ro"), *obj;
	int full, rc, status;
	pid_t pid;

	put_str(st, "contexts/err/obj", "body", NULL, NULL);
	full = open("/dev/full", O_WRONLY);
	if (full >= 0) {
		rc = cfs_store_get_fd(st, "contexts/err/obj", full, NULL);
		TAP_EQ_INT(rc, CFS_ENOSPC, "get_fd onto a full device");
		TAP_OK(strstr(cfs_error_last(), "No space left") != NULL,
		       "ENOSPC message: %s", cfs_error_last());
		close(full);
	} else {
		tap_skip("/dev/full not available");
	}

	/* An unprivileged writer in a directory it may not write. */
	mkdir(sub, 0555);
	obj = path_in(sub, "x");
	pid = fork();
	if (pid == 0) {
		if (getuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0))
			_exit(9);
		rc = put_str(st, "ro/x", "y", NULL, NULL);
		if (rc != CFS_EPERM)
			_exit(1);
		if (!strstr(cfs_error_last(), dir))
			_exit(2);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	TAP_OK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
	       "a put without write permission fails with CFS_EPERM naming "
	       "the path (exit %d)",
	       WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	chmod(sub, 0755);
	TAP_OK(!exists(obj), "and wrote nothing");
	free(obj);
	free(sub);
}

static long maxrss_kib(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

static void fs_stream_big(struct cfs_store *st, const char *dir)
{
	const size_t total = 64u << 20, chunk = 1u << 20;
	char *src = path_in(dir, "big-src"), *dst = path_in(dir, "big-dst");
	char sha_in[65], sha_out[65], etag[CFS_ETAG_MAX];
	struct progress_rec pr;
	struct cfs_objinfo info;
	unsigned char *buf = malloc(chunk);
	long before, after;
	size_t off;
	int in, out, rc;

	in = open(src, O_RDWR | O_CREAT | O_TRUNC, 0600);
	for (off = 0; off < total; off += chunk) {
		size_t i;

		for (i = 0; i < chunk; i++)
			buf[i] = (unsigned char)((off / chunk) * 31 + i * 7);
		cfs_write_all(in, buf, chunk);
	}
	free(buf);
	cfs_sha256_fd(sha_in, in);
	before = maxrss_kib();
	memset(&pr, 0, sizeof(pr));
	st->progress = on_progress;
	st->progress_payload = &pr;
	rc = cfs_store_put_fd(st, "contexts/big/tree/00000001-00.enc", in, NULL,
			      etag);
	TAP_EQ_INT(rc, 0, "64 MiB put_fd");
	TAP_OK(pr.last_done == total && pr.last_total == total,
	       "progress reached %llu of %llu",
	       (unsigned long long)pr.last_done,
	       (unsigned long long)pr.last_total);
	out = open(dst, O_RDWR | O_CREAT | O_TRUNC, 0600);
	rc = cfs_store_get_fd(st, "contexts/big/tree/00000001-00.enc", out,
			      &info);
	st->progress = NULL;
	after = maxrss_kib();
	TAP_EQ_INT(rc, 0, "64 MiB get_fd");
	cfs_sha256_fd(sha_out, out);
	TAP_EQ_STR(sha_out, sha_in, "64 MiB round trip is byte-identical");
	TAP_EQ_STR(info.etag, etag, "and carries the put's ETag");
	TAP_OK(after - before < 16 * 1024,
	       "streaming 64 MiB grew max RSS by %ld KiB (< 16 MiB)",
	       after - before);
	close(in);
	close(out);
	unlink(src);
	unlink(dst);
	cfs_store_delete(st, "contexts/big/tree/00000001-00.enc");
	free(src);
	free(dst);
}

/* cp -r without following symlinks (fixtures are read-only to us). */
static int copy_tree(const char *from, const char *to)
{
	DIR *d = opendir(from);
	struct dirent *de;
	int rc = 0;

	if (!d)
		return -1;
	mkdir(to, 0700);
	while ((de = readdir(d)) && !rc) {
		char *a, *b, *data = NULL;
		struct stat sb;
		size_t len;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		a = path_in(from, de->d_name);
		b = path_in(to, de->d_name);
		if (lstat(a, &sb) == 0 && S_ISDIR(sb.st_mode)) {
			rc = copy_tree(a, b);
		} else if (S_ISREG(sb.st_mode)) {
			rc = cfs_read_file_at(&data, &len, AT_FDCWD, a,
					      256u << 20);
			if (!rc)
				rc = cfs_write_file_at(AT_FDCWD, b, data, len,
						       0600, false);
			free(data);
		}
		free(a);
		free(b);
	}
	closedir(d);
	return rc;
}

static void fs_fixture(void)
{
	const char *fx = getenv("CFS_FIXTURES");
	char *from, *to, *side, *want, *body, *mpath;
	char etag[CFS_ETAG_MAX];
	struct cfs_cond match = {NULL, false};
	struct cfs_store *st = NULL;
	struct cfs_objinfo info;
	const char *tree = "contexts/interop-fresh/tree/"
			   "00000001-ba128037.tree.tar.zst.enc";
	struct stat sb;
	int rc;

	from = cfs_asprintf("%s/contextsdk-0.4/fresh/store",
			    fx ? fx : "/work/shared/fixtures");
	if (!exists(from)) {
		tap_skip("reference fixture store not present");
		free(from);
		return;
	}
	to = path_in(tmproot, "fixture-store");
	rc = copy_tree(from, to);
	TAP_EQ_INT(rc, 0, "copied the reference store to a temp dir");
	cfs_store_fs_open(&st, to);

	mpath = path_in(from, "contexts/interop-fresh/manifest.json");
	side = cfs_asprintf("%s.etagid", mpath);
	want = read_text(side);
	body = get_str(st, "contexts/interop-fresh/manifest.json", &info);
	{
		char *raw = read_text(mpath);

		TAP_OK(body && raw && strcmp(body, raw) == 0,
		       "reads the reference's manifest byte for byte");
		free(raw);
	}
	TAP_EQ_STR(info.etag, want, "with the reference's .etagid ETag");
	free(body);
	free(want);
	free(side);
	free(mpath);

	mpath = path_in(from, tree);
	side = cfs_asprintf("%s.etagid", mpath);
	want = read_text(side);
	rc = cfs_store_head(st, tree, &info);
	TAP_EQ_INT(rc, 0, "head of the reference's tree object");
	TAP_EQ_STR(info.etag, want, "tree ETag from its sidecar");
	TAP_OK(stat(mpath, &sb) == 0 && info.size == (uint64_t)sb.st_size,
	       "tree size matches (%llu)", (unsigned long long)info.size);
	free(want);
	free(side);
	free(mpath);
	TAP_EQ_STR(list_joined(st, "contexts/interop-fresh/"),
		   "contexts/interop-fresh/manifest.json,"
		   "contexts/interop-fresh/tree/"
		   "00000001-ba128037.tree.tar.zst.enc",
		   "lists the reference's store");

	/* CAS on the copy with the reference's ETag. */
	rc = cfs_store_head(st, "contexts/interop-fresh/manifest.json", &info);
	match.if_match = info.etag;
	rc = put_str(st, "contexts/interop-fresh/manifest.json", "{}", &match,
		     etag);
	TAP_EQ_INT(rc, 0, "CAS with the reference's ETag on the copy");
	cfs_store_free(st);
	free(from);
	free(to);
}

/* ---- mem-only ---------------------------------------------------------- */

static void mem_faults(void)
{
	struct cfs_store *st = NULL;
	struct cfs_cond match = {NULL, false};
	struct cfs_objinfo info;
	char etag[CFS_ETAG_MAX];
	char *body = NULL;
	int rc;

	cfs_store_mem_new(&st);
	TAP_EQ_INT(cfs_store_mem_count(st), 0, "mem: empty store");

	/* PUT_FAIL: the 3rd put whose key contains "tree/". */
	cfs_store_mem_fault(st, CFS_MEM_FAULT_PUT_FAIL, 3, "tree/");
	TAP_EQ_INT(put_str(st, "c/tree/1", "1", NULL, NULL), 0, "put 1");
	TAP_EQ_INT(put_str(st, "c/manifest.json", "m", NULL, NULL), 0,
		   "non-matching put does not count");
	TAP_EQ_INT(put_str(st, "c/tree/2", "2", NULL, NULL), 0, "put 2");
	rc = put_str(st, "c/tree/3", "3", NULL, NULL);
	TAP_EQ_INT(rc, CFS_EIO, "the 3rd matching put fails");
	TAP_EQ_INT(cfs_store_head(st, "c/tree/3", &info), CFS_ENOTFOUND,
		   "the failed put stored nothing");
	TAP_EQ_INT(put_str(st, "c/tree/4", "4", NULL, NULL), 0,
		   "the 4th succeeds (fault fired once)");
	TAP_EQ_INT(cfs_store_mem_count(st), 4, "mem_count");

	/* LOSE_CAS: the 2nd conditional put. */
	cfs_store_mem_fault(st, CFS_MEM_FAULT_LOSE_CAS, 2, NULL);
	put_str(st, "c/manifest.json", "m1", NULL, etag); /* not counted */
	match.if_match = etag;
	TAP_EQ_INT(put_str(st, "c/manifest.json", "m2", &match, etag), 0,
		   "1st conditional put wins");
	match.if_match = etag;
	rc = put_str(st, "c/manifest.json", "m3", &match, NULL);
	TAP_EQ_INT(rc, CFS_ECONFLICT, "2nd conditional put loses the CAS");
	TAP_EQ_STR(cfs_error_last(),
		   "precondition failed for object: "
		   "c/manifest.json",
		   "with the CAS message");
	body = get_str(st, "c/manifest.json", &info);
	TAP_EQ_STR(body, "m2", "the lost CAS wrote nothing");
	free(body);
	TAP_EQ_INT(put_str(st, "c/manifest.json", "m3", &match, NULL), 0,
		   "3rd conditional put wins");

	/* GET_FAIL: the 2nd get. */
	cfs_store_mem_fault(st, CFS_MEM_FAULT_GET_FAIL, 2, NULL);
	body = get_str(st, "c/tree/1", NULL);
	TAP_EQ_STR(body, "1", "1st get ok");
	free(body);
	rc = cfs_store_get_buf(st, "c/tree/1", &body, NULL, NULL);
	TAP_EQ_INT(rc, CFS_EIO, "2nd get fails");
	body = get_str(st, "c/tree/1", NULL);
	TAP_EQ_STR(body, "1", "3rd get ok");
	free(body);

	/* DELETE_FAIL: the 1st delete. */
	cfs_store_mem_fault(st, CFS_MEM_FAULT_DELETE_FAIL, 1, NULL);
	TAP_EQ_INT(cfs_store_delete(st, "c/tree/1"), CFS_EIO,
		   "1st delete fails");
	TAP_EQ_INT(cfs_store_head(st, "c/tree/1", &info), 0,
		   "and kept the object");
	TAP_EQ_INT(cfs_store_delete(st, "c/tree/1"), 0, "2nd delete works");
	TAP_EQ_INT(cfs_store_mem_count(st), 3, "mem_count after delete");

	/* NO_ETAG: the 2nd get/head only; then always; then disarmed. */
	cfs_store_mem_fault(st, CFS_MEM_FAULT_NO_ETAG, 2, NULL);
	cfs_store_head(st, "c/tree/2", &info);
	TAP_OK(info.etag[0] != '\0', "1st head has an ETag");
	body = get_str(st, "c/tree/2", &info);
	TAP_OK(body && info.etag[0] == '\0', "2nd get has no ETag");
	free(body);
	cfs_store_head(st, "c/tree/2", &info);
	TAP_OK(info.etag[0] != '\0', "3rd head has an ETag again");
	cfs_store_mem_fault(st, CFS_MEM_FAULT_NO_ETAG, 0, NULL);
	cfs_store_head(st, "c/tree/2", &info);
	TAP_OK(info.etag[0] == '\0', "nth=0: no ETags at all");
	cfs_store_mem_fault(st, CFS_MEM_FAULT_NONE, 0, NULL);
	cfs_store_head(st, "c/tree/2", &info);
	TAP_OK(info.etag[0] != '\0', "FAULT_NONE disarms");

	/* get_buf caps small objects at CFS_SMALL_OBJECT_MAX. */
	{
		size_t big = CFS_SMALL_OBJECT_MAX + 1;
		char *data = calloc(1, big);

		put_str(st, "c/huge", "", NULL, NULL);
		cfs_store_put_buf(st, "c/huge", data, big, NULL, NULL);
		free(data);
		body = (char *)1;
		rc = cfs_store_get_buf(st, "c/huge", &body, NULL, NULL);
		TAP_EQ_INT(rc, CFS_ECORRUPT,
			   "get_buf refuses objects over CFS_SMALL_OBJECT_MAX");
		TAP_OK(body == NULL, "and leaves *out NULL");
		cfs_store_delete(st, "c/huge");
	}

	/* Bodies are copies. */
	{
		char src[] = "mutable";

		put_str(st, "c/copy", src, NULL, NULL);
		src[0] = 'X';
		body = get_str(st, "c/copy", NULL);
		TAP_EQ_STR(body, "mutable", "mem stores a copy of the body");
		free(body);
	}
	cfs_store_free(st);
}

struct mem_race {
	struct cfs_store *st;
	unsigned wins;
};

static void *mem_racer(void *arg)
{
	struct mem_race *r = arg;
	int i;

	for (i = 0; i < 200; i++) {
		struct cfs_objinfo info;
		struct cfs_cond c = {NULL, false};
		char *cur = NULL, next[32];

		if (cfs_store_get_buf(r->st, "k", &cur, NULL, &info))
			break;
		snprintf(next, sizeof(next), "%lu", strtoul(cur, NULL, 10) + 1);
		free(cur);
		c.if_match = info.etag;
		if (put_str(r->st, "k", next, &c, NULL) == 0)
			r->wins++;
	}
	return NULL;
}

static void mem_threads(void)
{
	struct cfs_store *st = NULL;
	struct mem_race r[4];
	pthread_t t[4];
	unsigned wins = 0, i;
	char *body;

	cfs_store_mem_new(&st);
	put_str(st, "k", "0", NULL, NULL);
	for (i = 0; i < 4; i++) {
		r[i].st = st;
		r[i].wins = 0;
		pthread_create(&t[i], NULL, mem_racer, &r[i]);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(t[i], NULL);
		wins += r[i].wins;
	}
	body = get_str(st, "k", NULL);
	TAP_EQ_INT(body ? strtoul(body, NULL, 10) : 0, wins,
		   "mem: threaded CAS race loses no update");
	free(body);
	cfs_store_free(st);
}

/* ---- main -------------------------------------------------------------- */

/*
 * A private temporary on the store's filesystem is linked into place
 * (same inode, no copy); one on another filesystem, or with other names,
 * is copied. Either way the object holds the bytes, mode 0600.
 */
static void fs_put_tmpfile(struct cfs_store *st, const char *dir)
{
	char *src = path_in(tmproot, "bundle.tmp");
	char *obj = path_in(dir, "contexts/t/tree/x.enc");
	char buf[64] = {0};
	struct stat a, b;
	size_t got = 0;
	int fd, rfd;

	fd = open(src, O_RDWR | O_CREAT | O_EXCL, 0600);
	TAP_OK(fd >= 0 && write(fd, "ciphertext", 10) == 10, "temp bundle");
	fstat(fd, &a);
	TAP_EQ_INT(cfs_store_put_tmpfile(st, "contexts/t/tree/x.enc", fd, NULL,
					 NULL),
		   0, "put_tmpfile");
	TAP_OK(stat(obj, &b) == 0 && b.st_ino == a.st_ino,
	       "same filesystem: the temp file is linked, not copied");
	TAP_EQ_INT(b.st_mode & 0777, 0600, "linked object is 0600");
	close(fd);
	unlink(src);
	rfd = open(obj, O_RDONLY);
	cfs_read_all(rfd, buf, sizeof(buf) - 1, &got);
	close(rfd);
	TAP_EQ_STR(buf, "ciphertext",
		   "object keeps the bytes after the "
		   "caller removed its temp file");

	/* a file with a second name is not private: copy */
	fd = open(src, O_RDWR | O_CREAT | O_EXCL, 0600);
	TAP_OK(fd >= 0 && write(fd, "other", 5) == 5, "second temp");
	{
		char *alias = path_in(tmproot, "alias");

		TAP_OK(link(src, alias) == 0, "give it a second name");
		fstat(fd, &a);
		TAP_EQ_INT(cfs_store_put_tmpfile(st, "contexts/t/tree/y.enc",
						 fd, NULL, NULL),
			   0, "put_tmpfile of a shared file");
		free(obj);
		obj = path_in(dir, "contexts/t/tree/y.enc");
		TAP_OK(stat(obj, &b) == 0 && b.st_ino != a.st_ino,
		       "a file with other names is copied");
		unlink(alias);
		free(alias);
	}
	close(fd);
	unlink(src);
	free(src);
	free(obj);
}

int main(void)
{
	struct cfs_store *st = NULL;
	char *dir, *def;
	int rc;

	if (cfs_init())
		return 1;
	signal(SIGPIPE, SIG_IGN);
	tmproot = tap_tmpdir("test_store");

	rc = cfs_store_mem_new(&st);
	TAP_EQ_INT(rc, 0, "mem store");
	contract(st, "mem");
	cfs_store_free(st);

	dir = path_in(tmproot, "store/nested");
	rc = cfs_store_fs_open(&st, dir);
	TAP_EQ_INT(rc, 0, "fs store");
	TAP_OK(!exists(dir), "the fs store directory is created lazily");
	TAP_EQ_STR(cfs_store_describe(st), dir, "describe names the dir");
	contract(st, "fs");
	fs_keys(st, dir);
	fs_layout(st, dir);
	fs_locks(st, dir);
	fs_heartbeat(st, true);
	fs_heartbeat(st, false);
	fs_cas_race(st, dir);
	fs_read_consistency(st, dir, false);
	fs_read_consistency(st, dir, true);
	fs_errors(st, dir);
	fs_stream_big(st, dir);
	fs_put_tmpfile(st, dir);
	cfs_store_free(st);
	free(dir);

	fs_fixture();
	mem_faults();
	mem_threads();

	setenv("HOME", "/home/someone", 1);
	def = cfs_store_fs_default_dir();
	TAP_EQ_STR(def, "/home/someone/.contextsdk/storage",
		   "default directory");
	free(def);
	cfs_store_free(NULL);

	cfs_rmtree_at(AT_FDCWD, tmproot);
	free(tmproot);
	return tap_done();
}
