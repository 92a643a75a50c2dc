/*
 * Unit tests for core/version.c: file index of a tree (order, exclusions,
 * symlink handling, field formats), the reference's diff order, reading a
 * previous index.json, and the record's byte layout (python json.dumps
 * with indent=2, sort_keys=True, plus "\n"); core/record.c's streamed
 * build against the in-memory one.
 */
#include "core/error.h"
#include "core/json.h"
#include "core/policy.h"
#include "core/record.h"
#include "core/util.h"
#include "core/version.h"
#include "tests/unit/tap.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct cfs_file_entry fe(const char *path, const char *sha)
{
	struct cfs_file_entry e = {0};
	e.path = (char *)path;
	snprintf(e.sha256, sizeof(e.sha256), "%s", sha);
	return e;
}

static void test_diff(void)
{
	/* REFERENCE §13.1 example */
	struct cfs_file_entry prev[] = {fe("workspace/a.txt", "aaaa"),
					fe("memory/old.md", "bbbb"),
					fe("workspace/same.txt", "cccc")};
	struct cfs_file_entry cur[] = {fe("workspace/same.txt", "cccc"),
				       fe("workspace/a.txt", "dddd"),
				       fe("artifacts/new.txt", "eeee")};
	struct cfs_version_change *ch = NULL;
	size_t n = 0;
	cJSON *j;
	char *s;

	TAP_EQ_INT(cfs_version_diff(&ch, &n, prev, 3, cur, 3), 0, "diff");
	TAP_EQ_INT(n, 3, "three changes");
	if (n == 3) {
		TAP_EQ_STR(ch[0].path, "artifacts/new.txt", "1st path");
		TAP_EQ_STR(cfs_change_type_name(ch[0].type), "added",
			   "1st added");
		TAP_EQ_STR(ch[1].path, "workspace/a.txt", "2nd path");
		TAP_EQ_STR(cfs_change_type_name(ch[1].type), "modified",
			   "2nd modified");
		TAP_EQ_STR(ch[2].path, "memory/old.md", "3rd path");
		TAP_EQ_STR(cfs_change_type_name(ch[2].type), "removed",
			   "3rd removed");
	}
	j = cfs_version_changes_to_json(ch, n);
	s = cJSON_PrintUnformatted(j);
	TAP_EQ_STR(s,
		   "[{\"path\":\"artifacts/new.txt\",\"type\":\"added\"},"
		   "{\"path\":\"workspace/a.txt\",\"type\":\"modified\"},"
		   "{\"path\":\"memory/old.md\",\"type\":\"removed\"}]",
		   "changes JSON");
	free(s);
	cJSON_Delete(j);
	free(ch);

	TAP_EQ_INT(cfs_version_diff(&ch, &n, cur, 3, cur, 3), 0,
		   "diff of equal lists");
	TAP_OK(n == 0 && ch == NULL, "no changes");

	{
		/* previous entry without sha256 counts as modified */
		struct cfs_file_entry p1[] = {fe("workspace/x", "")};
		struct cfs_file_entry c1[] = {fe("workspace/x", "ffff")};
		cfs_version_diff(&ch, &n, p1, 1, c1, 1);
		TAP_OK(n == 1 && ch[0].type == CFS_CHANGE_MODIFIED,
		       "missing previous sha256 -> modified");
		free(ch);
	}
}

static void put_file(int dfd, const char *path, const char *content,
		     mode_t mode, time_t mtime)
{
	struct timespec ts[2] = {{mtime, 0}, {mtime, 0}};
	int fd = openat(dfd, path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	cfs_write_all(fd, content, strlen(content));
	fchmod(fd, mode);
	futimens(fd, ts);
	close(fd);
}

static void test_index(void)
{
	char *base = tap_tmpdir("index");
	int r = open(base, O_RDONLY | O_DIRECTORY);
	struct cfs_policy pol = {0};
	struct cfs_file_entry *files = NULL;
	size_t n = 0;
	struct cfs_buf got = CFS_BUF_INIT;
	int rc;

	mkdirat(r, "workspace", 0755);
	mkdirat(r, "workspace/a", 0755);
	put_file(r, "workspace/a/x", "ax", 0644, 1767323045);
	put_file(r, "workspace/a-b", "hello", 0640, 1767323045);
	put_file(r, "workspace/b", "b", 04755, 0);
	symlinkat("a-b", r, "workspace/link-to-file");
	symlinkat("a", r, "workspace/link-to-dir");
	symlinkat("/etc/passwd", r, "workspace/link-abs");
	symlinkat("../../../etc/passwd", r, "workspace/link-up");
	symlinkat("missing", r, "workspace/link-dangling");
	mkdirat(r, "workspace/node_modules", 0755);
	put_file(r, "workspace/node_modules/m.js", "m", 0644, 0);
	mkfifoat(r, "workspace/fifo", 0644);
	mkdirat(r, "memory", 0755);
	put_file(r, "memory/session.md", "s", 0644, 0);
	mkdirat(r, "cache", 0755);
	put_file(r, "cache/c.bin", "c", 0644, 0);
	mkdirat(r, ".contextsdk", 0755);
	put_file(r, ".contextsdk/index.json", "{}", 0644, 0);
	put_file(r, "contextsdk.json", "{}", 0644, 0);
	symlinkat("workspace", r, "config"); /* a root that is a symlink */

	cfs_policy_default(&pol);
	rc = cfs_index_build(&files, &n, r, &pol);
	TAP_EQ_INT(rc, 0, "index build");
	for (size_t i = 0; i < n; i++)
		cfs_buf_printf(&got, "%s\n", files[i].path);
	TAP_EQ_STR(got.ptr,
		   "workspace/a/x\n"
		   "workspace/a-b\n"
		   "workspace/b\n"
		   "workspace/link-to-file\n"
		   "memory/session.md\n",
		   "roots in policy order, component-wise sorted, links to "
		   "files followed, excluded/unsafe/special left out");
	if (n == 5) {
		cJSON *j = cfs_version_files_to_json(files + 1, 1);
		char *s = cJSON_PrintUnformatted(j);
		TAP_EQ_STR(s,
			   "[{\"mode\":\"0o640\",\"mtime\":\"2026-01-02T03:04:"
			   "05Z\",\"path\":\"workspace/a-b\",\"sha256\":"
			   "\"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e7"
			   "3043362938b9824\",\"size\":5}]",
			   "file entry fields");
		free(s);
		cJSON_Delete(j);
		TAP_EQ_INT(files[2].mode, 04755, "set-id bits kept in mode");
		TAP_EQ_STR(files[3].sha256, files[1].sha256,
			   "symlink hashed as its target");
		j = cfs_version_files_to_json(files + 2, 1);
		s = cJSON_PrintUnformatted(j);
		TAP_OK(s && strstr(s, "\"mode\":\"0o4755\"") &&
			       strstr(s, "\"mtime\":\"1970-01-01T00:00:00Z\""),
		       "python oct() mode and epoch mtime: %s", s);
		free(s);
		cJSON_Delete(j);
	}
	cfs_index_free(files, n);
	cfs_buf_free(&got);
	cfs_policy_free(&pol);
	close(r);
	cfs_rmtree_at(AT_FDCWD, base);
	free(base);
}

/*
 * Thousands of files through the hashing threads, whose results the walk
 * takes as it goes: every entry ends with its own file's hash, in sorted
 * order, none lost or swapped.
 */
static void test_index_many(void)
{
	enum { N = 3000 };
	char *base = tap_tmpdir("index-many");
	int r = open(base, O_RDONLY | O_DIRECTORY);
	struct cfs_policy pol = {0};
	struct cfs_file_entry *files = NULL;
	size_t n = 0, right = 0, sorted = 1;
	char path[64], data[64], want[65];

	mkdirat(r, "workspace", 0755);
	for (int d = 0; d < 10; d++) {
		snprintf(path, sizeof(path), "workspace/d%d", d);
		mkdirat(r, path, 0755);
	}
	for (int i = 0; i < N; i++) {
		snprintf(path, sizeof(path), "workspace/d%d/f%05d", i % 10, i);
		snprintf(data, sizeof(data), "contents of file %d\n", i);
		put_file(r, path, data, 0644, 1767323045);
	}
	cfs_policy_default(&pol);
	TAP_EQ_INT(cfs_index_build(&files, &n, r, &pol), 0, "index build");
	TAP_EQ_INT(n, N, "every file listed");
	for (size_t k = 0; k < n; k++) {
		int i = -1, d = -1;

		if (k && strcmp(files[k - 1].path, files[k].path) >= 0)
			sorted = 0;
		if (sscanf(files[k].path, "workspace/d%d/f%d", &d, &i) != 2)
			continue;
		snprintf(data, sizeof(data), "contents of file %d\n", i);
		cfs_sha256_hex(want, data, strlen(data));
		right += strcmp(files[k].sha256, want) == 0 &&
			 files[k].size == strlen(data);
	}
	TAP_OK(sorted, "sorted by path");
	TAP_EQ_INT(right, N, "each entry has its own file's hash and size");
	cfs_index_free(files, n);
	cfs_policy_free(&pol);
	cfs_rmtree_at(AT_FDCWD, base);
	close(r);
	free(base);
}

/*
 * The walk emits entries while it goes on, also when hints know every
 * file but one and that one's hash waits in a batch the walk has not
 * queued yet (a save with a few changed files): the window must not hold
 * the whole tree until the walk ends.
 */
struct window_probe {
	ino_t cold;
	size_t lookups, emitted, first_at;
};

static bool probe_lookup(void *payload, const struct stat *st, char sha[65])
{
	struct window_probe *w = payload;

	w->lookups++;
	if (st->st_ino == w->cold)
		return false; /* hashed by the pool */
	snprintf(sha, 65, "%064x", 7);
	return true;
}

static int probe_emit(void *payload, struct cfs_file_entry *e)
{
	struct window_probe *w = payload;

	if (w->emitted++ == 0)
		w->first_at = w->lookups;
	return 0;
}

static void test_index_window(void)
{
	enum { N = 5000 };
	char *base = tap_tmpdir("index-window");
	int r = open(base, O_RDONLY | O_DIRECTORY);
	struct cfs_policy pol = {0};
	struct window_probe w = {0};
	struct cfs_hash_hints h = {probe_lookup, NULL, NULL, &w};
	struct stat st;
	char path[64];

	mkdirat(r, "workspace", 0755);
	put_file(r, "workspace/000-cold", "cold\n", 0644, 1767323045);
	fstatat(r, "workspace/000-cold", &st, 0);
	w.cold = st.st_ino;
	for (int i = 0; i < N; i++) {
		snprintf(path, sizeof(path), "workspace/f%05d", i);
		put_file(r, path, "x", 0644, 1767323045);
	}
	cfs_policy_default(&pol);
	TAP_EQ_INT(cfs_index_walk(r, &pol, &h, probe_emit, &w), 0,
		   "walk with all files hinted but one");
	TAP_EQ_INT(w.emitted, N + 1, "every file emitted");
	TAP_OK(w.first_at <= 1024,
	       "the first entry left the window after %zu of %d lookups",
	       w.first_at, N + 1);
	cfs_policy_free(&pol);
	cfs_rmtree_at(AT_FDCWD, base);
	close(r);
	free(base);
}

static void test_from_json(void)
{
	static const char doc[] =
		"{\"version\": 1, \"files\": [{\"path\": \"workspace/a\", "
		"\"size\": 3, \"mode\": \"0o600\", \"mtime\": "
		"\"2026-01-02T03:04:05Z\", \"sha256\": \"abcd\"}, {\"size\": "
		"1}, {\"path\": \"memory/b\"}]}";
	struct cfs_file_entry *f = NULL;
	size_t n = 9;

	TAP_EQ_INT(cfs_index_from_json(&f, &n, doc, strlen(doc)), 0,
		   "read previous index");
	TAP_EQ_INT(n, 2, "entries without a path are skipped");
	if (n == 2) {
		TAP_EQ_STR(f[0].path, "workspace/a", "path");
		TAP_EQ_STR(f[0].sha256, "abcd", "sha256");
		TAP_OK(f[0].size == 3 && f[0].mode == 0600 &&
			       f[0].mtime == 1767323045,
		       "size, mode, mtime");
		TAP_EQ_STR(f[1].sha256, "", "missing sha256 is empty");
	}
	cfs_index_free(f, n);
	TAP_EQ_INT(cfs_index_from_json(&f, &n, "{not json", 9), 0,
		   "corrupt index.json -> empty list");
	TAP_OK(n == 0 && f == NULL, "  empty");
	TAP_EQ_INT(cfs_index_from_json(&f, &n, "[1,2]", 5), 0,
		   "non-object -> empty list");
	TAP_EQ_INT(cfs_index_from_json(&f, &n, "{\"files\": 3}", 12), 0,
		   "files not an array -> empty list");
	TAP_EQ_INT(n, 0, "  empty");
	TAP_EQ_INT(cfs_index_from_json(&f, &n, NULL, 0), 0, "no index");
}

static void test_record(void)
{
	struct cfs_file_entry files[] = {fe(
		"workspace/a.txt",
		"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")};
	struct cfs_version_change ch[] = {
		{"workspace/a.txt", CFS_CHANGE_ADDED}};
	char ts[32];
	cJSON *rec;
	char *s;

	files[0].size = 5;
	files[0].mode = 0644;
	files[0].mtime = 1767323045;
	cfs_version_timestamp(ts, 1767323045);
	TAP_EQ_STR(ts, "2026-01-02T03:04:05Z", "timestamp format");

	rec = cfs_version_record_new(3, -1, ts, "ag\xc3\xa9nt",
				     "line1\nline2 \"q\"", ch, 1, files, 1);
	s = cfs_version_record_print(rec);
	TAP_EQ_STR(
		s,
		"{\n  \"author\": \"ag\\u00e9nt\",\n  \"changedPaths\": [\n    "
		"{\n      \"path\": \"workspace/a.txt\",\n      \"type\": "
		"\"added\"\n    }\n  ],\n  \"files\": [\n    {\n      \"mode\": "
		"\"0o644\",\n      \"mtime\": \"2026-01-02T03:04:05Z\",\n      "
		"\"path\": \"workspace/a.txt\",\n      \"sha256\": "
		"\"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b98"
		"24\",\n      \"size\": 5\n    }\n  ],\n  \"generation\": 3,\n  "
		"\"message\": \"line1\\nline2 \\\"q\\\"\",\n  "
		"\"parentGeneration\": null,\n  \"timestamp\": "
		"\"2026-01-02T03:04:05Z\",\n  \"version\": 1\n}\n",
		"record bytes as python json.dumps(indent=2, sort_keys=True)");
	free(s);
	cJSON_Delete(rec);

	rec = cfs_version_record_new(1, -1, "t", "", "", NULL, 0, NULL, 0);
	s = cfs_version_record_print(rec);
	TAP_EQ_STR(s,
		   "{\n  \"author\": \"\",\n  \"changedPaths\": [],\n  "
		   "\"files\": [],\n  \"generation\": 1,\n  \"message\": "
		   "\"\",\n  \"parentGeneration\": null,\n  \"timestamp\": "
		   "\"t\",\n  \"version\": 1\n}\n",
		   "empty arrays printed as []");
	free(s);
	cJSON_Delete(rec);

	rec = cfs_version_record_new(5, 4, NULL, "a", "m", NULL, 0, NULL, 0);
	{
		int64_t parent = 0;
		const char *t = cfs_json_str(rec, "timestamp");
		TAP_OK(cfs_json_int(rec, "parentGeneration", &parent) &&
			       parent == 4,
		       "parentGeneration is an int");
		TAP_OK(t && strlen(t) == 20 && t[19] == 'Z',
		       "default timestamp is now (%s)", t ? t : "(null)");
	}
	cJSON_Delete(rec);
}

/* The len bytes a record writer wrote to fd, NUL-terminated (*got read). */
static char *read_back(int fd, size_t len, size_t *got)
{
	char *buf = cfs_malloc(len + 1);

	*got = 0;
	lseek(fd, 0, SEEK_SET);
	cfs_read_all(fd, buf, len, got);
	buf[*got] = '\0';
	return buf;
}

/* The streamed record is byte-identical to the one printed whole. */
static void test_record_write(void)
{
	static const char *const paths[] = {
		"workspace/\xc3\xa9t\xc3\xa9",
		"workspace/b",
		"memory/c",
		"workspace/q\"uote\\back\tslash",
		"workspace/ctl\x01\x1f\x7f",
		"workspace/\xf0\x9f\x98\x80 4-byte",
		"workspace/bad \xff\xc3 utf8",
	};
	enum { N = sizeof(paths) / sizeof(paths[0]) };
	struct cfs_file_entry files[N];
	char *dir = tap_tmpdir("version");
	char *path = cfs_asprintf("%s/rec.json", dir);
	char *whole, *streamed = NULL;
	size_t len = 0, got = 0;
	cJSON *full, *bare;
	int fd;

	for (int i = 0; i < N; i++) {
		files[i] =
			fe(paths[i],
			   "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e7"
			   "3043362938b9824");
		files[i].size =
			i == N - 1 ? (1ull << 52) + 7 : (uint64_t)i * 1000;
		files[i].mode = i == 2 ? 0 : 04755 - (unsigned)i;
		files[i].mtime = 1767323045 + i * 86399;
	}
	full = cfs_version_record_new(2, 1, "t", "a", "m\n", NULL, 0, files, N);
	bare = cfs_version_record_new(2, 1, "t", "a", "m\n", NULL, 0, NULL, 0);
	whole = cfs_version_record_print(full);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	TAP_EQ_INT(cfs_version_record_write(&len, fd, bare, NULL, 0, files, N),
		   0, "record written entry by entry");
	streamed = read_back(fd, len, &got);
	TAP_EQ_INT(got, strlen(whole), "streamed length");
	TAP_EQ_STR(streamed, whole, "streamed bytes equal the whole print");
	lseek(fd, 0, SEEK_SET);
	TAP_OK(ftruncate(fd, 0) == 0, "truncate");
	TAP_EQ_INT(cfs_version_record_write(&len, fd, bare, NULL, 0, NULL, 0),
		   0, "empty file list");
	free(whole);
	whole = cfs_version_record_print(bare);
	TAP_EQ_INT(len, strlen(whole), "empty list streams as []");
	close(fd);
	free(whole);
	free(streamed);
	cJSON_Delete(full);
	cJSON_Delete(bare);
	unlink(path);
	rmdir(dir);
	free(path);
	free(dir);
}

/*
 * A first commit's changedPaths run to megabytes: they are streamed entry
 * by entry like the file list, and the bytes are still those of the whole
 * print (paths with quotes, controls and non-ASCII included).
 */
static void test_record_write_long(void)
{
	enum { NCH = 5000, NF = 3 };
	struct cfs_version_change *ch = cfs_calloc(NCH, sizeof(*ch));
	char **names = cfs_calloc(NCH, sizeof(*names));
	struct cfs_file_entry files[NF];
	char *dir = tap_tmpdir("version");
	char *path = cfs_asprintf("%s/rec.json", dir);
	char *whole, *streamed;
	size_t len = 0, got = 0;
	cJSON *full, *bare;
	int fd;

	for (int i = 0; i < NCH; i++) {
		names[i] = cfs_asprintf(
			i % 7 ? "workspace/dir%04d/file-%05d.txt"
			      : "workspace/d\"%04d\\\x01\xc3\xa9-%05d",
			i / 100, i);
		ch[i].path = names[i];
		ch[i].type =
			i % 3 == 0 ? CFS_CHANGE_MODIFIED : CFS_CHANGE_ADDED;
	}
	for (int i = 0; i < NF; i++) {
		files[i] = fe(names[i], "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161"
					"e5c1fa7425e73043362938b9824");
		files[i].size = (uint64_t)i * 4096;
		files[i].mode = 0644;
		files[i].mtime = 1767323045 + i;
	}
	full = cfs_version_record_new(7, 6, "t", "a", "m", ch, NCH, files, NF);
	bare = cfs_version_record_new(7, 6, "t", "a", "m", NULL, 0, NULL, 0);
	whole = cfs_version_record_print(full);
	TAP_OK(whole && strlen(whole) > 4 * 65536,
	       "the record is longer than four write buffers");
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	TAP_EQ_INT(cfs_version_record_write(&len, fd, bare, ch, NCH, files, NF),
		   0, "long record written, both lists streamed");
	streamed = read_back(fd, len, &got);
	TAP_EQ_INT(len, strlen(whole), "reported length");
	TAP_EQ_INT(got, strlen(whole), "streamed length");
	TAP_OK(strcmp(streamed, whole) == 0,
	       "streamed bytes equal the whole print");
	close(fd);
	unlink(path);
	rmdir(dir);
	free(streamed);
	free(whole);
	cJSON_Delete(full);
	cJSON_Delete(bare);
	for (int i = 0; i < NCH; i++)
		free(names[i]);
	free(names);
	free(ch);
	free(path);
	free(dir);
}

/* A random path whose components stress byte vs component order. */
static char *rand_path(unsigned *seed)
{
	static const char *const roots[] = {"workspace", "memory", "logs"};
	static const char *const parts[] = {"a",  "a.b",   "a-b",      "a b",
					    "ab", "b",	   "\xc3\xa9", "Z",
					    "a~", "q\"\\", "x\x01"};
	struct cfs_buf b = CFS_BUF_INIT;
	int depth = 1 + rand_r(seed) % 4;

	cfs_buf_puts(&b, roots[rand_r(seed) % 3]);
	for (int i = 0; i < depth; i++) {
		cfs_buf_puts(&b, "/");
		cfs_buf_puts(&b, parts[rand_r(seed) % 11]);
	}
	return cfs_buf_detach(&b);
}

static const char *rand_sha(unsigned *seed)
{
	static const char *const shas[] = {
		"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
		"486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7",
		"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"};
	return shas[rand_r(seed) % 3];
}

/*
 * The previous index as the reference or contextfs wrote it, with what a
 * reader must survive: a long changedPaths before the files, duplicate
 * paths (the last one counts), entries without a path or a usable hash,
 * entries that are not objects.
 */
static char *prev_doc(unsigned *seed, size_t n, bool pretty)
{
	cJSON *doc = cJSON_CreateObject(), *ch = cJSON_CreateArray();
	cJSON *files = cJSON_CreateArray();
	char *out;

	for (size_t i = 0; i < n; i++) {
		cJSON *o = cJSON_CreateObject();
		char *p = rand_path(seed);
		int kind = rand_r(seed) % 40;

		cJSON_AddStringToObject(o, "path", p);
		cJSON_AddStringToObject(o, "type", "added");
		cJSON_AddItemToArray(ch, o);
		o = cJSON_CreateObject();
		if (kind == 0)
			cJSON_AddNumberToObject(o, "path", 3);
		else
			cJSON_AddStringToObject(o, "path", p);
		if (kind == 1)
			cJSON_AddStringToObject(o, "sha256", "");
		else if (kind == 2)
			cJSON_AddStringToObject(
				o, "sha256",
				"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e7"
				"3043362938b9824ff");
		else if (kind != 3)
			cJSON_AddStringToObject(o, "sha256", rand_sha(seed));
		cJSON_AddNumberToObject(o, "size", 12);
		cJSON_AddStringToObject(o, "mode", "0o644");
		cJSON_AddItemToArray(files, o);
		if (kind == 4)
			cJSON_AddItemToArray(files, cJSON_CreateNumber(7));
		free(p);
	}
	cJSON_AddStringToObject(doc, "author", "a [b] {c}");
	cJSON_AddItemToObject(doc, "changedPaths", ch);
	cJSON_AddItemToObject(doc, "files", files);
	cJSON_AddNumberToObject(doc, "version", 1);
	out = pretty ? cfs_version_record_print(doc)
		     : cJSON_PrintUnformatted(doc);
	cJSON_Delete(doc);
	return out;
}

/* One random case: the streamed record equals the in-memory one. */
static void record_build_case(unsigned seed, size_t ncur, size_t nprev,
			      size_t budget, bool from_fd, const char *dir)
{
	const unsigned seed0 = seed;
	struct cfs_file_entry *cur = cfs_calloc(ncur ? ncur : 1, sizeof(*cur));
	struct cfs_file_entry *prev = NULL;
	struct cfs_version_change *ch = NULL;
	const struct cfs_version_change *first;
	struct cfs_record_build *rb = NULL;
	char *doc = prev_doc(&seed, nprev, seed % 2);
	char *path = cfs_asprintf("%s/case.json", dir), *want, *got;
	size_t np = 0, nch = 0, wlen = 0, glen = 0, n1 = 0, ntot = 0, k;
	cJSON *bare =
		cfs_version_record_new(3, 2, "t", "a", "m", NULL, 0, NULL, 0);
	int fd, dfd = open(dir, O_RDONLY | O_DIRECTORY);
	bool same = true;
	int rc = 0;

	for (size_t i = 0; i < ncur; i++) {
		cur[i] = fe(NULL, rand_sha(&seed));
		cur[i].path = rand_path(&seed);
		cur[i].size = i;
		cur[i].mode = 0644;
		cur[i].mtime = 1767323045;
	}
	/* expected: the in-memory reader, diff and writer */
	cfs_index_from_json(&prev, &np, doc, strlen(doc));
	cfs_version_diff(&ch, &nch, prev, np, cur, ncur);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	cfs_version_record_write(&wlen, fd, bare, ch, nch, cur, ncur);
	want = read_back(fd, wlen, &k);
	close(fd);

	rc = cfs_record_build_new(&rb, dfd, budget, 10);
	for (size_t i = 0; i < ncur && !rc; i++)
		rc = cfs_record_build_file(rb, &cur[i]);
	if (!rc && from_fd) {
		fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		cfs_write_all(fd, doc, strlen(doc));
		lseek(fd, 0, SEEK_SET);
		rc = cfs_record_build_prev_fd(rb, fd);
		close(fd);
	} else if (!rc) {
		rc = cfs_record_build_prev_buf(rb, doc, strlen(doc));
	}
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (!rc)
		rc = cfs_record_build_finish(&glen, rb, fd, bare);
	got = read_back(fd, glen, &k);
	close(fd);
	first = cfs_record_build_changes(rb, &n1, &ntot);
	for (size_t i = 0; i < n1 && i < nch; i++)
		same = same && strcmp(first[i].path, ch[i].path) == 0 &&
		       first[i].type == ch[i].type;
	TAP_OK(rc == 0 && glen == wlen && strcmp(got, want) == 0,
	       "seed %u, %zu files, %zu before, budget %zu, %s: record "
	       "equals the in-memory one (%zu changes)",
	       seed0, ncur, nprev, budget, from_fd ? "fd" : "buffer", nch);
	TAP_OK(ntot == nch && n1 == (nch < 10 ? nch : 10) && same,
	       "seed %u: the first changes and their number", seed0);
	cfs_record_build_free(rb);
	for (size_t i = 0; i < ncur; i++)
		free(cur[i].path);
	free(cur);
	cfs_index_free(prev, np);
	free(ch);
	free(doc);
	free(want);
	free(got);
	cJSON_Delete(bare);
	unlink(path);
	free(path);
	close(dfd);
}

/*
 * core/record.c builds the record in bounded memory (external sort,
 * previous index read entry by entry): the bytes must be those of the
 * in-memory reader, diff and writer, with sorts that stay in memory and
 * with budgets small enough to spill many runs.
 */
static void test_record_build(void)
{
	char *dir = tap_tmpdir("record");
	const char *bad[] = {"{not json", "{\"files\": [{\"path\": \"x\"",
			     "[1,2]", "{\"files\": 3}", ""};

	record_build_case(1, 0, 0, 0, false, dir);
	record_build_case(2, 40, 0, 0, false, dir);
	record_build_case(3, 0, 40, 0, true, dir);
	record_build_case(4, 300, 300, 0, false, dir);
	record_build_case(5, 300, 300, 512, true, dir);
	record_build_case(6, 2000, 1500, 4096, false, dir);
	record_build_case(7, 2000, 2500, 100, true, dir);
	record_build_case(8, 5000, 5000, 64 << 10, true, dir);
	/* a document that does not parse is no previous index at all */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct cfs_record_build *rb = NULL;
		struct cfs_file_entry e = fe("workspace/x", "aa");
		int dfd = open(dir, O_RDONLY | O_DIRECTORY);
		size_t n1 = 0, nt = 0, len = 0;
		cJSON *bare = cfs_version_record_new(1, 0, "t", "a", "m", NULL,
						     0, NULL, 0);
		char *p = cfs_asprintf("%s/bad.json", dir);
		int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600);
		const struct cfs_version_change *c;
		int rc;

		cfs_record_build_new(&rb, dfd, 0, 10);
		cfs_record_build_file(rb, &e);
		rc = cfs_record_build_prev_buf(rb, bad[i], strlen(bad[i]));
		if (!rc)
			rc = cfs_record_build_finish(&len, rb, fd, bare);
		c = cfs_record_build_changes(rb, &n1, &nt);
		TAP_OK(rc == 0 && nt == 1 && c[0].type == CFS_CHANGE_ADDED,
		       "malformed previous index %zu: every file added", i);
		cfs_record_build_free(rb);
		cJSON_Delete(bare);
		close(fd);
		unlink(p);
		free(p);
		close(dfd);
	}
	rmdir(dir);
	free(dir);
}

/*
 * The inode table (the stat cache, the mount's known hashes) keeps what it
 * was given while it grows to 3/4 of its slots, finds an entry only while
 * size and mtime match, and refuses entries beyond its max.
 */
static void test_inode_hashes(void)
{
	enum { N = 50000 };
	struct cfs_inode_hashes h = {0}, small = {.max = 100};
	uint8_t sha[32];
	size_t found = 0, wrong = 0;
	bool all_put = true;
	struct stat st;

	memset(&st, 0, sizeof(st));
	for (uint32_t i = 0; i < N; i++) {
		st.st_dev = 1 + i % 3;
		st.st_ino = 1000 + i * 7919u;
		st.st_size = i;
		st.st_mtim.tv_sec = 1767323045 + i;
		memset(sha, 0, sizeof(sha));
		memcpy(sha, &i, sizeof(i));
		all_put = all_put && cfs_inode_hashes_put(&h, &st, sha);
	}
	TAP_OK(all_put && h.used == N && !h.full, "%d entries put", N);
	TAP_OK(h.used * 4 <= h.cap * 3 && h.cap < 4 * (size_t)N,
	       "at most 3/4 of %zu slots used", h.cap);
	for (uint32_t i = 0; i < N; i++) {
		const uint8_t *got;
		uint32_t v;

		st.st_dev = 1 + i % 3;
		st.st_ino = 1000 + i * 7919u;
		st.st_size = i;
		st.st_mtim.tv_sec = 1767323045 + i;
		got = cfs_inode_hashes_find(&h, &st);
		if (got) {
			memcpy(&v, got, sizeof(v));
			found += v == i;
		}
		st.st_mtim.tv_sec++;
		wrong += cfs_inode_hashes_find(&h, &st) != NULL;
	}
	TAP_EQ_INT(found, N, "every entry found with its hash");
	TAP_EQ_INT(wrong, 0, "none found once its mtime changed");
	st.st_dev = 9;
	TAP_OK(!cfs_inode_hashes_has(&h, 9, st.st_ino), "another device");
	for (uint32_t i = 0; i < 101; i++) {
		st.st_ino = i + 1;
		(void)cfs_inode_hashes_put(&small, &st, NULL);
	}
	TAP_OK(small.full && small.used == 100, "max 100: the 101st refused");
	cfs_inode_hashes_free(&h);
	cfs_inode_hashes_free(&small);
}

int main(void);
int main(void)
{
	cfs_init();
	test_diff();
	test_index();
	test_index_many();
	test_index_window();
	test_from_json();
	test_record();
	test_record_write();
	test_record_write_long();
	test_record_build();
	test_inode_hashes();
	return tap_done();
}
