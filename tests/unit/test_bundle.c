/*
 * Unit tests for core/bundle.c: pack/unpack round trip (files, dirs, modes,
 * mtimes, symlinks, hard links, in-memory members), the reference's member
 * order and exclusions, GNU and PAX input, and a hostile corpus built here
 * with libarchive (traversal, absolute names, escaping links, writes through
 * a symlink, special files, caps, zstd bombs, corrupt streams). Every
 * hostile case checks the code, the message, and that nothing appeared
 * outside the destination.
 */
#include "core/bundle.h"
#include "core/error.h"
#include "core/policy.h"
#include "core/util.h"
#include "tests/unit/tap.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/sysmacros.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

/* ---- helpers ----------------------------------------------------------- */

static int buf_sink(const void *data, size_t len, void *payload)
{
	return cfs_buf_put(payload, data, len);
}

struct memsrc {
	const char *p;
	size_t len, pos, chunk;
};

static ssize_t mem_source(void *buf, size_t len, void *payload)
{
	struct memsrc *m = payload;
	size_t n = m->len - m->pos;

	if (n > len)
		n = len;
	if (m->chunk && n > m->chunk)
		n = m->chunk;
	memcpy(buf, m->p + m->pos, n);
	m->pos += n;
	return (ssize_t)n;
}

static int discard_sink(const void *data, size_t len, void *payload)
{
	(void)data;
	*(uint64_t *)payload += len;
	return 0;
}

static void put_file(int dfd, const char *path, const char *content,
		     mode_t mode)
{
	int fd = openat(dfd, path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0) {
		tap_diag("cannot create %s: %s", path, strerror(errno));
		return;
	}
	cfs_write_all(fd, content, strlen(content));
	fchmod(fd, mode);
	close(fd);
}

static void set_mtime(int dfd, const char *path, time_t sec, long nsec)
{
	struct timespec ts[2] = {{sec, nsec}, {sec, nsec}};
	utimensat(dfd, path, ts, AT_SYMLINK_NOFOLLOW);
}

static bool exists_at(int dfd, const char *path)
{
	struct stat st;
	return fstatat(dfd, path, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

static char *read_at(int dfd, const char *path)
{
	char *data = NULL;
	size_t len;
	if (cfs_read_file_at(&data, &len, dfd, path, 1 << 20) != 0)
		return NULL;
	return data;
}

static size_t count_entries(int dfd)
{
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	size_t n = 0;

	if (!d)
		return (size_t)-1;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

/* Lists member names (and types) of a plaintext tar. */
static char *list_tar(const void *tar, size_t len)
{
	struct archive *a = archive_read_new();
	struct archive_entry *e;
	struct cfs_buf out = CFS_BUF_INIT;

	archive_read_support_format_tar(a);
	if (archive_read_open_memory(a, tar, len) != ARCHIVE_OK)
		return NULL;
	for (;;) {
		int r = archive_read_next_header(a, &e);
		if (r != ARCHIVE_OK && r != ARCHIVE_WARN)
			break;
		mode_t t = archive_entry_filetype(e);
		const char *k = archive_entry_hardlink(e) ? "h"
				: t == AE_IFDIR		  ? "d"
				: t == AE_IFLNK		  ? "l"
							  : "f";
		cfs_buf_printf(&out, "%s %s\n", k, archive_entry_pathname(e));
	}
	archive_read_free(a);
	return cfs_buf_detach(&out);
}

static void *zstd_decompress_all(const void *src, size_t len, size_t *outlen)
{
	unsigned long long n = ZSTD_getFrameContentSize(src, len);
	struct cfs_buf out = CFS_BUF_INIT;
	ZSTD_DCtx *d = ZSTD_createDCtx();
	ZSTD_inBuffer in = {src, len, 0};
	char tmp[65536];

	(void)n;
	while (in.pos < in.size) {
		ZSTD_outBuffer o = {tmp, sizeof(tmp), 0};
		size_t r = ZSTD_decompressStream(d, &o, &in);
		if (ZSTD_isError(r))
			break;
		cfs_buf_put(&out, tmp, o.pos);
	}
	ZSTD_freeDCtx(d);
	*outlen = out.len;
	return cfs_buf_detach(&out);
}

static void zstd_compress_into(struct cfs_buf *out, const void *src, size_t len)
{
	size_t cap = ZSTD_compressBound(len);
	cfs_buf_grow(out, cap);
	out->len = ZSTD_compress(out->ptr, cap, src, len, 3);
}

/* ---- building hostile archives ----------------------------------------- */

struct spec {
	const char *name;
	mode_t type; /* AE_IFREG, AE_IFDIR, AE_IFLNK, AE_IFIFO, AE_IFCHR */
	const char *link; /* symlink target */
	const char *hardlink; /* hard link target */
	const char *data;
};

static la_ssize_t tar_write_cb(struct archive *a, void *cd, const void *buf,
			       size_t len)
{
	(void)a;
	cfs_buf_put(cd, buf, len);
	return (la_ssize_t)len;
}

/* One member of spec sp (perm 0: 0755 for a directory, else 0644). */
static void add_member(struct archive *a, const struct spec *sp, mode_t perm,
		       long nsec)
{
	struct archive_entry *e = archive_entry_new();
	size_t len = sp->data ? strlen(sp->data) : 0;
	mode_t type = sp->type ? sp->type : AE_IFREG;

	archive_entry_set_pathname(e, sp->name);
	archive_entry_set_filetype(e, type);
	archive_entry_set_perm(e, perm ? perm : type == AE_IFDIR ? 0755 : 0644);
	archive_entry_set_mtime(e, 1700000000, nsec);
	if (type == AE_IFCHR)
		archive_entry_set_rdev(e, makedev(1, 3));
	if (sp->link)
		archive_entry_set_symlink(e, sp->link);
	if (sp->hardlink)
		archive_entry_set_hardlink(e, sp->hardlink);
	archive_entry_set_size(
		e, type == AE_IFREG && !sp->hardlink ? (la_int64_t)len : 0);
	archive_write_header(a, e);
	if (len && !sp->hardlink)
		archive_write_data(a, sp->data, len);
	archive_entry_free(e);
}

/* A tar (format: ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE or _GNUTAR). */
static void build_tar(struct cfs_buf *tar, int format, const struct spec *s,
		      size_t n)
{
	struct archive *a = archive_write_new();

	archive_write_set_format(a, format);
	archive_write_open(a, tar, NULL, tar_write_cb, NULL);
	for (size_t i = 0; i < n; i++)
		add_member(a, &s[i], 0, 0);
	archive_write_close(a);
	archive_write_free(a);
}

static void build_bundle(struct cfs_buf *out, int format, const struct spec *s,
			 size_t n)
{
	struct cfs_buf tar = CFS_BUF_INIT;
	build_tar(&tar, format, s, n);
	zstd_compress_into(out, tar.ptr, tar.len);
	cfs_buf_free(&tar);
}

static int unpack_mem(int destfd, const struct cfs_buf *b,
		      const struct cfs_unpack_opts *opts,
		      struct cfs_bundle_stats *st)
{
	struct memsrc m = {b->ptr, b->len, 0, 7777};
	return cfs_bundle_unpack(destfd, mem_source, &m, opts, st);
}

/* A fresh base/{dest,sibling} layout for one hostile case. */
struct arena {
	char *base;
	int basefd, destfd, sibfd;
};

static void arena_open(struct arena *ar, const char *name)
{
	ar->base = tap_tmpdir(name);
	ar->basefd = open(ar->base, O_RDONLY | O_DIRECTORY);
	mkdirat(ar->basefd, "dest", 0700);
	mkdirat(ar->basefd, "sibling", 0700);
	mkdirat(ar->basefd, "dest/workspace", 0700);
	ar->destfd =
		openat(ar->basefd, "dest/workspace", O_RDONLY | O_DIRECTORY);
	/* dest is base/dest/workspace so "../x" and "../../x" stay in base */
	ar->sibfd = openat(ar->basefd, "sibling", O_RDONLY | O_DIRECTORY);
}

static void arena_close(struct arena *ar)
{
	close(ar->destfd);
	close(ar->sibfd);
	close(ar->basefd);
	cfs_rmtree_at(AT_FDCWD, ar->base);
	free(ar->base);
}

/* Nothing outside dest: sibling empty, base and base/dest hold only ours. */
static bool arena_clean(struct arena *ar)
{
	int dfd = openat(ar->basefd, "dest", O_RDONLY | O_DIRECTORY);
	bool ok = count_entries(ar->sibfd) == 0 &&
		  count_entries(ar->basefd) == 2 && count_entries(dfd) == 1;
	close(dfd);
	return ok;
}

struct hostile {
	const char *what;
	struct spec s[4];
	size_t n;
	int code;
	const char *msg;
	int format;
};

static void test_hostile(void)
{
	static const struct hostile cases[] = {
		{"traversal ../x",
		 {{"../escaped.txt", 0, NULL, NULL, "x"}},
		 1,
		 CFS_EUNSAFE,
		 "unsafe archive entry: ../escaped.txt",
		 0},
		{"traversal into sibling",
		 {{"../../sibling/x", 0, NULL, NULL, "x"}},
		 1,
		 CFS_EUNSAFE,
		 "unsafe archive entry: ../../sibling/x",
		 0},
		{"absolute name",
		 {{"/etc/x", 0, NULL, NULL, "x"}},
		 1,
		 CFS_EUNSAFE,
		 "unsafe archive entry: /etc/x",
		 0},
		{"workspace/..",
		 {{"workspace/..", AE_IFDIR, NULL, NULL, NULL}},
		 1,
		 CFS_EUNSAFE,
		 "unsafe archive entry: workspace/..",
		 0},
		{"escaping symlink ../../outside",
		 {{"workspace/out", AE_IFLNK, "../../outside", NULL, NULL}},
		 1,
		 CFS_EUNSAFE,
		 "unsafe archive link target: workspace/out -> ../../outside",
		 0},
		{"absolute symlink /etc/passwd",
		 {{"workspace/pw", AE_IFLNK, "/etc/passwd", NULL, NULL}},
		 1,
		 CFS_EUNSAFE,
		 "unsafe archive link target: workspace/pw -> /etc/passwd",
		 0},
		{"symlink -> /tmp then write through it",
		 {{"workspace/ln", AE_IFLNK, "/tmp", NULL, NULL},
		  {"workspace/ln/x", 0, NULL, NULL, "x"}},
		 2,
		 CFS_EUNSAFE,
		 "unsafe archive link target: workspace/ln -> /tmp",
		 0},
		{"symlink -> . then write through it",
		 {{"ln", AE_IFLNK, ".", NULL, NULL},
		  {"ln/ln2", AE_IFLNK, "sub", NULL, NULL},
		  {"ln/x", 0, NULL, NULL, "x"}},
		 3,
		 CFS_EUNSAFE,
		 "archive entry resolves outside the mount: ln/ln2",
		 0},
		{"symlink to a dir then write through it",
		 {{"d", AE_IFDIR, NULL, NULL, NULL},
		  {"ln", AE_IFLNK, "d", NULL, NULL},
		  {"ln/x", 0, NULL, NULL, "x"}},
		 3,
		 CFS_EUNSAFE,
		 "archive entry resolves outside the mount: ln/x",
		 0},
		{"escaping hard link",
		 {{"workspace/h", 0, NULL, "../../sibling/secret", NULL}},
		 1,
		 CFS_EUNSAFE,
		 "unsafe archive link target: workspace/h -> ../../sibling/secret",
		 0},
		{"absolute hard link",
		 {{"h", 0, NULL, "/etc/passwd", NULL}},
		 1,
		 CFS_EUNSAFE,
		 "unsafe archive link target: h -> /etc/passwd",
		 0},
		{"hard link to a missing file",
		 {{"h", 0, NULL, "nothere.txt", NULL}},
		 1,
		 CFS_EUNSAFE,
		 "archive hard link target is not an extracted file: h -> "
		 "nothere.txt",
		 0},
		{"hard link to a directory",
		 {{"d", AE_IFDIR, NULL, NULL, NULL}, {"h", 0, NULL, "d", NULL}},
		 2,
		 CFS_EUNSAFE,
		 "archive hard link target is not an extracted file: h -> d",
		 0},
		{"FIFO",
		 {{"workspace/fifo", AE_IFIFO, NULL, NULL, NULL}},
		 1,
		 CFS_EUNSAFE,
		 "unsupported archive entry type: workspace/fifo",
		 0},
		{"char device",
		 {{"workspace/null", AE_IFCHR, NULL, NULL, NULL}},
		 1,
		 CFS_EUNSAFE,
		 "unsupported archive entry type: workspace/null",
		 0},
		{"GNU traversal",
		 {{"../escape.md", 0, NULL, NULL, "x"}},
		 1,
		 CFS_EUNSAFE,
		 "unsafe archive entry: ../escape.md",
		 ARCHIVE_FORMAT_TAR_GNUTAR},
	};

	for (size_t i = 0; i < CFS_ARRAY_SIZE(cases); i++) {
		const struct hostile *h = &cases[i];
		struct cfs_buf b = CFS_BUF_INIT;
		struct arena ar;
		int rc;

		arena_open(&ar, "hostile");
		build_bundle(&b,
			     h->format ? h->format
				       : ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE,
			     h->s, h->n);
		rc = unpack_mem(ar.destfd, &b, NULL, NULL);
		TAP_EQ_INT(rc, h->code, h->what);
		TAP_EQ_STR(cfs_error_last(), h->msg, "  message");
		TAP_OK(arena_clean(&ar), "  nothing written outside dest");
		{
			struct cfs_unpack_opts vo = {.validate_only = true};
			/* validate_only models what extraction would have
			 * made of earlier members: it refuses the same */
			rc = unpack_mem(ar.destfd, &b, &vo, NULL);
			TAP_EQ_INT(rc, h->code, "  validate_only rejects too");
			TAP_EQ_STR(cfs_error_last(), h->msg,
				   "  validate_only message");
		}
		cfs_buf_free(&b);
		arena_close(&ar);
	}
}

static void test_benign_names(void)
{
	static const struct spec s[] = {
		{"workspace", AE_IFDIR, NULL, NULL, NULL},
		{"workspace/b.txt", 0, NULL, NULL, "budget"},
		{"workspace/a -> b.txt", 0, NULL, NULL, "marker"},
		{"workspace/notes link to budget.txt", 0, NULL, NULL, "n"},
		{"workspace/alias", AE_IFLNK, "b.txt", NULL, NULL},
		{"workspace/hard", 0, NULL, "workspace/b.txt", NULL},
		{"./workspace/dot.txt", 0, NULL, NULL, "dot"},
		{"workspace/..x", 0, NULL, NULL, "dots"},
	};
	int formats[] = {ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE,
			 ARCHIVE_FORMAT_TAR_GNUTAR, ARCHIVE_FORMAT_TAR_USTAR};

	for (size_t f = 0; f < CFS_ARRAY_SIZE(formats); f++) {
		struct cfs_buf b = CFS_BUF_INIT;
		struct arena ar;
		struct cfs_bundle_stats st = {0};
		struct stat s1, s2;
		char *data, lnk[64] = {0};
		int rc;

		arena_open(&ar, "benign");
		build_bundle(&b, formats[f], s, CFS_ARRAY_SIZE(s));
		rc = unpack_mem(ar.destfd, &b, NULL, &st);
		TAP_EQ_INT(rc, 0, "benign archive extracts");
		if (rc)
			tap_diag("%s", cfs_error_last());
		data = read_at(ar.destfd, "workspace/a -> b.txt");
		TAP_EQ_STR(data, "marker", "name 'a -> b.txt' accepted");
		free(data);
		TAP_OK(exists_at(ar.destfd,
				 "workspace/notes link to budget.txt"),
		       "name 'notes link to budget.txt' accepted");
		readlinkat(ar.destfd, "workspace/alias", lnk, sizeof(lnk) - 1);
		TAP_EQ_STR(lnk, "b.txt", "internal symlink kept");
		TAP_OK(fstatat(ar.destfd, "workspace/hard", &s1, 0) == 0 &&
			       fstatat(ar.destfd, "workspace/b.txt", &s2, 0) ==
				       0 &&
			       s1.st_ino == s2.st_ino,
		       "hard link shares the inode");
		data = read_at(ar.destfd, "workspace/dot.txt");
		TAP_EQ_STR(data, "dot", "./ prefix normalized");
		free(data);
		TAP_EQ_INT(st.entries, CFS_ARRAY_SIZE(s), "entries counted");
		TAP_OK(arena_clean(&ar), "nothing outside dest");
		cfs_buf_free(&b);
		arena_close(&ar);
	}
}

static void test_caps(void)
{
	struct spec s[6];
	struct cfs_buf b = CFS_BUF_INIT;
	struct cfs_unpack_opts o = {.max_entries = 5};
	struct arena ar;
	char names[6][16];
	int rc;

	for (int i = 0; i < 6; i++) {
		snprintf(names[i], sizeof(names[i]), "f%d", i);
		s[i] = (struct spec){names[i], 0, NULL, NULL, "1234"};
	}
	arena_open(&ar, "caps");
	build_bundle(&b, ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE, s, 6);
	rc = unpack_mem(ar.destfd, &b, &o, NULL);
	TAP_EQ_INT(rc, CFS_EUNSAFE, "6 entries with the cap at 5");
	TAP_EQ_STR(cfs_error_last(), "archive exceeds the 5 entry limit",
		   "  entry-limit message");
	TAP_OK(!exists_at(ar.destfd, "f5"), "  sixth entry not written");
	o = (struct cfs_unpack_opts){.max_bytes = 22};
	rc = unpack_mem(ar.destfd, &b, &o, NULL);
	TAP_EQ_INT(rc, CFS_EUNSAFE, "24 bytes with the cap at 22");
	TAP_EQ_STR(cfs_error_last(),
		   "archive exceeds the 22 byte decompressed limit",
		   "  size-limit message");
	o = (struct cfs_unpack_opts){.max_entries = 6, .max_bytes = 24};
	rc = unpack_mem(ar.destfd, &b, &o, NULL);
	TAP_EQ_INT(rc, 0, "exactly at both caps is accepted");
	cfs_buf_free(&b);
	arena_close(&ar);
}

/* Captures tar output until stopped, then fails further writes. */
struct capture {
	struct cfs_buf *b;
	bool stopped;
};

static la_ssize_t capture_cb(struct archive *a, void *cd, const void *buf,
			     size_t len)
{
	struct capture *c = cd;
	(void)a;
	if (c->stopped)
		return -1;
	cfs_buf_put(c->b, buf, len);
	return (la_ssize_t)len;
}

/* A header declaring size bytes followed by nothing (truncated stream). */
static void build_truncated(struct cfs_buf *out, int64_t size)
{
	struct cfs_buf tar = CFS_BUF_INIT;
	struct capture c = {&tar, false};
	struct archive *a = archive_write_new();
	struct archive_entry *e = archive_entry_new();

	archive_write_set_format_pax(a);
	archive_write_set_bytes_per_block(a, 0);
	archive_write_open(a, &c, NULL, capture_cb, NULL);
	archive_entry_set_pathname(e, "workspace/huge.bin");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, size);
	archive_write_header(a, e);
	archive_write_data(a, "some data", 9);
	c.stopped = true;
	archive_entry_free(e);
	archive_write_free(a);
	zstd_compress_into(out, tar.ptr, tar.len);
	cfs_buf_free(&tar);
}

/* zstd frame of: a tar member header for size bytes, then size zeros. */
static void build_bomb(struct cfs_buf *out, uint64_t size, bool after_eof)
{
	struct cfs_buf head = CFS_BUF_INIT;
	struct capture c = {&head, false};
	struct archive *a = archive_write_new();
	struct archive_entry *e = archive_entry_new();
	ZSTD_CCtx *z = ZSTD_createCCtx();
	static char zeros[1 << 20];
	char outbuf[1 << 16];
	uint64_t left = size;

	archive_write_set_format_pax(a);
	archive_write_set_bytes_per_block(a, 0);
	archive_write_open(a, &c, NULL, capture_cb, NULL);
	archive_entry_set_pathname(e, "workspace/zeros.bin");
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0644);
	archive_entry_set_size(e, after_eof ? 0 : (int64_t)size);
	archive_write_header(a, e);
	if (after_eof) {
		archive_write_close(a); /* a complete, tiny archive... */
	}
	c.stopped = true;
	archive_entry_free(e);
	archive_write_free(a);

	ZSTD_CCtx_setParameter(z, ZSTD_c_compressionLevel, 1);
	{
		ZSTD_inBuffer in = {head.ptr, head.len, 0};
		while (in.pos < in.size) {
			ZSTD_outBuffer o = {outbuf, sizeof(outbuf), 0};
			ZSTD_compressStream2(z, &o, &in, ZSTD_e_continue);
			cfs_buf_put(out, outbuf, o.pos);
		}
	}
	/* ...followed by (or holding) a gigabyte of zeros */
	for (;;) {
		size_t n = left > sizeof(zeros) ? sizeof(zeros) : (size_t)left;
		ZSTD_inBuffer in = {zeros, n, 0};
		ZSTD_EndDirective m = left == n ? ZSTD_e_end : ZSTD_e_continue;
		size_t r;
		do {
			ZSTD_outBuffer o = {outbuf, sizeof(outbuf), 0};
			r = ZSTD_compressStream2(z, &o, &in, m);
			cfs_buf_put(out, outbuf, o.pos);
		} while (m == ZSTD_e_end ? r != 0 : in.pos < in.size);
		left -= n;
		if (left == 0)
			break;
	}
	ZSTD_freeCCtx(z);
	cfs_buf_free(&head);
}

static long max_rss_kib(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

static void test_bombs(void)
{
	struct cfs_buf b = CFS_BUF_INIT;
	struct cfs_unpack_opts o = {0};
	struct arena ar;
	int rc;

	arena_open(&ar, "bombs");

	build_truncated(&b, 100LL << 30);
	rc = unpack_mem(ar.destfd, &b, NULL, NULL);
	TAP_EQ_INT(rc, CFS_EUNSAFE, "100 GiB member header (default caps)");
	TAP_EQ_STR(cfs_error_last(),
		   "archive exceeds the 68719476736 byte decompressed limit",
		   "  size-limit message");
	TAP_OK(!exists_at(ar.destfd, "workspace/huge.bin"),
	       "  nothing extracted");
	o.max_bytes = 200ULL << 30;
	rc = unpack_mem(ar.destfd, &b, &o, NULL);
	TAP_EQ_INT(rc, CFS_ECORRUPT,
		   "100 GiB member with a raised cap: truncated -> corrupt");
	tap_diag("  %s", cfs_error_last());
	cfs_buf_free(&b);

	build_bomb(&b, 1ULL << 30, false);
	tap_diag("1 GiB zero bomb compresses to %zu bytes", b.len);
	o = (struct cfs_unpack_opts){.max_bytes = 16 << 20};
	rc = unpack_mem(ar.destfd, &b, &o, NULL);
	TAP_EQ_INT(rc, CFS_EUNSAFE, "zstd bomb stopped by the lowered cap");
	TAP_EQ_STR(cfs_error_last(),
		   "archive exceeds the 16777216 byte decompressed limit",
		   "  message");
	cfs_buf_free(&b);

	build_bomb(&b, 1ULL << 30, true);
	rc = unpack_mem(ar.destfd, &b, NULL, NULL);
	TAP_EQ_INT(rc, CFS_ECORRUPT, "1 GiB of zeros after the end of the tar");
	tap_diag("  %s", cfs_error_last());
	cfs_buf_free(&b);
	TAP_OK(arena_clean(&ar), "bombs wrote nothing outside dest");
	TAP_OK(max_rss_kib() < 48 * 1024, "peak RSS stays low (%ld KiB)",
	       max_rss_kib());

	/* corrupt and truncated zstd */
	{
		static const struct spec s[] = {
			{"workspace/a.txt", 0, NULL, NULL,
			 "hello hello hello hello hello hello hello"}};
		struct cfs_buf ok = CFS_BUF_INIT, bad = CFS_BUF_INIT;
		build_bundle(&ok, ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE, s, 1);
		cfs_buf_put(&bad, ok.ptr, ok.len / 2);
		rc = unpack_mem(
			ar.destfd, &bad,
			&(struct cfs_unpack_opts){.validate_only = true}, NULL);
		TAP_EQ_INT(rc, CFS_ECORRUPT, "truncated zstd -> corrupt");
		tap_diag("  %s", cfs_error_last());
		bad.len = 0;
		cfs_buf_put(&bad, ok.ptr, ok.len);
		bad.ptr[ok.len / 2] ^= 0x55;
		bad.ptr[ok.len / 2 + 1] ^= 0x55;
		rc = unpack_mem(
			ar.destfd, &bad,
			&(struct cfs_unpack_opts){.validate_only = true}, NULL);
		TAP_EQ_INT(rc, CFS_ECORRUPT, "flipped zstd bytes -> corrupt");
		tap_diag("  %s", cfs_error_last());
		bad.len = 0;
		cfs_buf_put(&bad, "not zstd at all", 15);
		rc = unpack_mem(ar.destfd, &bad, NULL, NULL);
		TAP_EQ_INT(rc, CFS_ECORRUPT, "garbage -> corrupt");
		bad.len = 0;
		rc = unpack_mem(ar.destfd, &bad, NULL, NULL);
		TAP_EQ_INT(rc, CFS_ECORRUPT, "empty input -> corrupt");
		/* a valid zstd frame around something that is not a tar */
		bad.len = 0;
		zstd_compress_into(&bad, "garbage garbage garbage", 23);
		rc = unpack_mem(ar.destfd, &bad, NULL, NULL);
		TAP_EQ_INT(rc, CFS_ECORRUPT, "zstd of a non-tar -> corrupt");
		tap_diag("  %s", cfs_error_last());
		cfs_buf_free(&ok);
		cfs_buf_free(&bad);
	}
	arena_close(&ar);
}

/* ---- round trip -------------------------------------------------------- */

static void make_tree(int r)
{
	mkdirat(r, ".contextsdk", 0777);
	put_file(r, ".contextsdk/index.json", "{\"stale\": true}\n", 0644);
	put_file(r, "contextsdk.json", "{\"contextId\": \"rt-ctx\"}\n", 0644);
	mkdirat(r, "workspace", 0777);
	put_file(r, "workspace/task.txt", "task body\n", 0640);
	put_file(r, "workspace/app.txt", "app\n", 0600);
	mkdirat(r, "workspace/bin", 0755);
	put_file(r, "workspace/bin/run.sh", "#!/bin/sh\necho hi\n", 0755);
	mkdirat(r, "workspace/sub", 0750);
	mkdirat(r, "workspace/sub/deep", 0700);
	put_file(r, "workspace/sub/deep/file.txt", "deep\n", 0604);
	mkdirat(r, "workspace/empty-dir", 0705);
	mkdirat(r,
		"workspace/d\xc3\xb6nn\xc3\xa9"
		"es",
		0755);
	put_file(r,
		 "workspace/d\xc3\xb6nn\xc3\xa9"
		 "es/r\xc3\xa9sum\xc3\xa9.txt",
		 "utf8\n", 0644);
	put_file(r, "workspace/setuid.sh", "x\n", 04755);
	symlinkat("task.txt", r, "workspace/link");
	symlinkat("sub/deep", r, "workspace/link-dir");
	symlinkat("../../outside", r, "workspace/bad-link");
	symlinkat("/etc/passwd", r, "workspace/abs-link");
	linkat(r, "workspace/task.txt", r, "workspace/zz-hard", 0);
	mkfifoat(r, "workspace/fifo", 0644);
	mkdirat(r, "workspace/node_modules", 0755);
	mkdirat(r, "workspace/node_modules/x", 0755);
	put_file(r, "workspace/node_modules/x/index.js", "nm\n", 0644);
	mkdirat(r, "workspace/.next", 0755);
	put_file(r, "workspace/.next/page.js", "next\n", 0644);
	mkdirat(r, "workspace/app", 0755);
	mkdirat(r, "workspace/app/dist", 0755);
	put_file(r, "workspace/app/dist/y.js", "dist\n", 0644);
	put_file(r, "workspace/a-b", "ab\n", 0644);
	mkdirat(r, "workspace/a", 0755);
	put_file(r, "workspace/a/x", "ax\n", 0644);
	mkdirat(r, "memory", 0777);
	put_file(r, "memory/session.md", "context=rt-ctx\n", 0644);
	mkdirat(r, "memory/.venv", 0755);
	put_file(r, "memory/.venv/py", "venv\n", 0644);
	mkdirat(r, "artifacts", 0777);
	mkdirat(r, "artifacts/build", 0755);
	mkdirat(r, "artifacts/build/node_modules", 0755);
	put_file(r, "artifacts/build/node_modules/z", "z\n", 0644);
	mkdirat(r, "cache", 0777);
	put_file(r, "cache/build.bin", "cache\n", 0644);
	mkdirat(r, "logs", 0777);
	/* config missing on purpose; exact modes despite the umask */
	fchmodat(r, "workspace", 0777, 0);
	fchmodat(r, "memory", 0777, 0);
	fchmodat(r, "artifacts", 0777, 0);
	fchmodat(r, "logs", 0777, 0);
	fchmodat(r, ".contextsdk", 0777, 0);
	fchmodat(r, "workspace/sub", 0750, 0);
	fchmodat(r, "workspace/empty-dir", 0705, 0);
	put_file(r, "unmanaged.txt", "not packed\n", 0644);

	set_mtime(r, "workspace/task.txt", 1700000001, 123456789);
	set_mtime(r, "workspace/bin/run.sh", 1700000002, 0);
	set_mtime(r, "workspace/link", 1700000003, 500000000);
	set_mtime(r, "workspace/sub/deep/file.txt", 1600000000, 1);
	set_mtime(r, "workspace/sub/deep", 1600000100, 0);
	set_mtime(r, "workspace/sub", 1600000200, 0);
	set_mtime(r, "workspace/empty-dir", 1500000000, 250000000);
	set_mtime(r, "logs", 1400000000, 0);
}

static const char expected_order[] = "d .contextsdk/\n"
				     "f .contextsdk/index.json\n"
				     "d .contextsdk/versions/\n"
				     "f .contextsdk/versions/2.json\n"
				     "f contextsdk.json\n"
				     "d workspace/\n"
				     "d workspace/a/\n"
				     "f workspace/a/x\n"
				     "f workspace/a-b\n"
				     "d workspace/app/\n"
				     "f workspace/app.txt\n"
				     "d workspace/bin/\n"
				     "f workspace/bin/run.sh\n"
				     "d workspace/d\xc3\xb6nn\xc3\xa9"
				     "es/\n"
				     "f workspace/d\xc3\xb6nn\xc3\xa9"
				     "es/r\xc3\xa9sum\xc3\xa9.txt\n"
				     "d workspace/empty-dir/\n"
				     "l workspace/link\n"
				     "l workspace/link-dir\n"
				     "f workspace/setuid.sh\n"
				     "d workspace/sub/\n"
				     "d workspace/sub/deep/\n"
				     "f workspace/sub/deep/file.txt\n"
				     "f workspace/task.txt\n"
				     "h workspace/zz-hard\n"
				     "d memory/\n"
				     "f memory/session.md\n"
				     "d artifacts/\n"
				     "d logs/\n";

static bool same_mtime(int a, int b, const char *path)
{
	struct stat x, y;
	if (fstatat(a, path, &x, AT_SYMLINK_NOFOLLOW) ||
	    fstatat(b, path, &y, AT_SYMLINK_NOFOLLOW))
		return false;
	return x.st_mtim.tv_sec == y.st_mtim.tv_sec &&
	       x.st_mtim.tv_nsec == y.st_mtim.tv_nsec;
}

static unsigned mode_of(int dfd, const char *path)
{
	struct stat st;
	if (fstatat(dfd, path, &st, AT_SYMLINK_NOFOLLOW))
		return 0;
	return st.st_mode & 07777;
}

static void test_round_trip(void)
{
	char *base = tap_tmpdir("roundtrip");
	int bfd = open(base, O_RDONLY | O_DIRECTORY), src, dst;
	struct cfs_policy pol = {0};
	struct cfs_buf out = CFS_BUF_INIT;
	struct cfs_bundle_stats ps = {0}, us = {0};
	static const char idx[] = "{\"version\": 1}\n";
	static const char v2[] = "{\"generation\": 2}\n";
	const struct cfs_bundle_member extra[] = {
		{".contextsdk/index.json", idx, sizeof(idx) - 1, 0644,
		 1700000100, -1},
		{".contextsdk/versions/2.json", v2, sizeof(v2) - 1, 0644,
		 1700000200, -1},
	};
	char *tar, *listing, *data;
	size_t tarlen;
	char lnk[64] = {0};
	struct stat s1, s2;
	int rc;

	umask(022);
	mkdirat(bfd, "src", 0700);
	mkdirat(bfd, "dst", 0700);
	src = openat(bfd, "src", O_RDONLY | O_DIRECTORY);
	dst = openat(bfd, "dst", O_RDONLY | O_DIRECTORY);
	make_tree(src);
	cfs_policy_default(&pol);

	rc = cfs_bundle_pack(src, &pol, extra, 2, buf_sink, &out, &ps);
	TAP_EQ_INT(rc, 0, "pack");
	if (rc)
		tap_diag("%s", cfs_error_last());
	TAP_OK(ps.compressed_bytes == out.len && out.len > 0,
	       "stats count the compressed bytes (%llu)",
	       (unsigned long long)ps.compressed_bytes);
	tar = zstd_decompress_all(out.ptr, out.len, &tarlen);
	TAP_OK(tarlen == ps.tar_bytes && tarlen % 10240 == 0,
	       "tar padded to 10240-byte records (%zu)", tarlen);
	listing = list_tar(tar, tarlen);
	TAP_EQ_STR(listing, expected_order,
		   "member order, exclusions and filters as the reference");
	TAP_EQ_INT(ps.entries, 28, "pack stats: entries");
	free(listing);
	free(tar);
	{
		/* keep a copy for manual checks with python's tarfile */
		const char *dump = getenv("CFS_BUNDLE_DUMP");
		if (dump) {
			int fd = open(dump, O_WRONLY | O_CREAT | O_TRUNC, 0600);
			cfs_write_all(fd, out.ptr, out.len);
			close(fd);
		}
	}

	rc = unpack_mem(dst, &out, NULL, &us);
	TAP_EQ_INT(rc, 0, "unpack");
	if (rc)
		tap_diag("%s", cfs_error_last());
	TAP_EQ_INT(us.entries, ps.entries, "unpack sees every entry");
	TAP_EQ_INT(us.bytes, ps.bytes, "same member bytes");
	data = read_at(dst, "workspace/task.txt");
	TAP_EQ_STR(data, "task body\n", "file content kept");
	free(data);
	data = read_at(dst, "contextsdk.json");
	TAP_OK(data && strstr(data, "rt-ctx"), "contextsdk.json kept");
	free(data);
	data = read_at(dst, ".contextsdk/index.json");
	TAP_EQ_STR(data, idx, "in-memory member replaces the disk file");
	free(data);
	data = read_at(dst, ".contextsdk/versions/2.json");
	TAP_EQ_STR(data, v2, "in-memory member in a synthesized directory");
	free(data);
	data = read_at(dst, "workspace/d\xc3\xb6nn\xc3\xa9"
			    "es/r\xc3\xa9sum\xc3\xa9.txt");
	TAP_EQ_STR(data, "utf8\n", "UTF-8 names round-trip");
	free(data);
	TAP_EQ_INT(mode_of(dst, "workspace/task.txt"), 0640, "mode 0640");
	TAP_EQ_INT(mode_of(dst, "workspace/bin/run.sh"), 0755, "mode 0755");
	TAP_EQ_INT(mode_of(dst, "workspace/sub/deep/file.txt"), 0604,
		   "mode 0604");
	TAP_EQ_INT(mode_of(dst, "workspace/sub"), 0750, "dir mode 0750");
	TAP_EQ_INT(mode_of(dst, "workspace"), 0777, "dir mode 0777 exact");
	TAP_EQ_INT(mode_of(dst, "workspace/empty-dir"), 0705, "empty dir mode");
	TAP_EQ_INT(mode_of(dst, "workspace/setuid.sh"), 0755,
		   "setuid bit stripped on unpack");
	TAP_EQ_INT(mode_of(dst, ".contextsdk/versions"), 0755,
		   "synthesized dir 0755");
	TAP_OK(same_mtime(src, dst, "workspace/task.txt"),
	       "file mtime with nanoseconds");
	TAP_OK(same_mtime(src, dst, "workspace/bin/run.sh"),
	       "file mtime whole seconds");
	TAP_OK(same_mtime(src, dst, "workspace/link"), "symlink mtime");
	TAP_OK(same_mtime(src, dst, "workspace/sub/deep"),
	       "dir mtime kept after its content");
	TAP_OK(same_mtime(src, dst, "workspace/sub"), "parent dir mtime");
	TAP_OK(same_mtime(src, dst, "workspace/empty-dir"), "empty dir mtime");
	TAP_OK(same_mtime(src, dst, "logs"), "top-level dir mtime");
	readlinkat(dst, "workspace/link", lnk, sizeof(lnk) - 1);
	TAP_EQ_STR(lnk, "task.txt", "symlink stored as symlink");
	TAP_OK(fstatat(dst, "workspace/zz-hard", &s1, AT_SYMLINK_NOFOLLOW) ==
			       0 &&
		       fstatat(dst, "workspace/task.txt", &s2,
			       AT_SYMLINK_NOFOLLOW) == 0 &&
		       s1.st_ino == s2.st_ino && s1.st_nlink == 2,
	       "hard link restored as a hard link");
	TAP_OK(!exists_at(dst, "workspace/bad-link") &&
		       !exists_at(dst, "workspace/abs-link"),
	       "escaping symlinks dropped by the packer");
	TAP_OK(!exists_at(dst, "workspace/fifo"), "FIFO dropped");
	TAP_OK(!exists_at(dst, "workspace/node_modules") &&
		       !exists_at(dst, "workspace/.next") &&
		       !exists_at(dst, "workspace/app/dist") &&
		       !exists_at(dst, "artifacts/build") &&
		       !exists_at(dst, "memory/.venv"),
	       "node_modules/.next/dist/build/.venv excluded");
	TAP_OK(exists_at(dst, "workspace/app"), "workspace/app kept");
	TAP_OK(!exists_at(dst, "cache") && !exists_at(dst, "unmanaged.txt"),
	       "cache/ and unmanaged files not packed");
	TAP_OK(!exists_at(dst, "config"), "missing root skipped");

	/* same bundle, validate only: nothing written */
	{
		int vfd;
		mkdirat(bfd, "validate", 0700);
		vfd = openat(bfd, "validate", O_RDONLY | O_DIRECTORY);
		rc = unpack_mem(
			vfd, &out,
			&(struct cfs_unpack_opts){.validate_only = true}, &us);
		TAP_EQ_INT(rc, 0, "validate_only accepts our bundle");
		TAP_EQ_INT(count_entries(vfd), 0,
			   "validate_only writes nothing");
		close(vfd);
	}

	/* unpack again over the existing tree: files replaced, dirs reused */
	rc = unpack_mem(dst, &out, NULL, NULL);
	TAP_EQ_INT(rc, 0, "unpack over an existing tree");

	/* empty trees are refused before anything is written */
	{
		int efd;
		uint64_t n = 0;
		mkdirat(bfd, "empty", 0700);
		efd = openat(bfd, "empty", O_RDONLY | O_DIRECTORY);
		rc = cfs_bundle_pack(efd, &pol, NULL, 0, discard_sink, &n,
				     NULL);
		TAP_EQ_INT(rc, CFS_ENOTFOUND, "nothing to pack -> not found");
		TAP_EQ_INT(n, 0, "  and nothing written");
		close(efd);
	}
	/* extra member outside the packed items is refused */
	{
		const struct cfs_bundle_member bad[] = {
			{"cache/x", "x", 1, 0644, 0, -1}};
		uint64_t n = 0;
		rc = cfs_bundle_pack(src, &pol, bad, 1, discard_sink, &n, NULL);
		TAP_EQ_INT(rc, CFS_EINVAL, "extra member outside the roots");
	}

	cfs_buf_free(&out);
	cfs_policy_free(&pol);
	close(src);
	close(dst);
	close(bfd);
	cfs_rmtree_at(AT_FDCWD, base);
	free(base);
}

/* A big sparse file packs with bounded memory. */
static void test_pack_memory(void)
{
	char *base = tap_tmpdir("packmem");
	int bfd = open(base, O_RDONLY | O_DIRECTORY), fd;
	struct cfs_policy pol = {0};
	struct cfs_bundle_stats st = {0};
	uint64_t n = 0;
	int rc;

	mkdirat(bfd, "workspace", 0755);
	fd = openat(bfd, "workspace/big.bin", O_WRONLY | O_CREAT, 0644);
	ftruncate(fd, 192 << 20);
	close(fd);
	cfs_policy_default(&pol);
	rc = cfs_bundle_pack(bfd, &pol, NULL, 0, discard_sink, &n, &st);
	TAP_EQ_INT(rc, 0, "pack a 192 MiB file");
	TAP_OK(st.bytes == 192u << 20 && n == st.compressed_bytes,
	       "  stats: %llu bytes -> %llu compressed",
	       (unsigned long long)st.bytes, (unsigned long long)n);
	/* the product's cap is 64 MiB of peak RSS whatever the tree size
	 * (ASan's redzones included: 54 MiB with 2 MiB zstd jobs) */
	TAP_OK(max_rss_kib() < 64 * 1024, "  peak RSS stays low (%ld KiB)",
	       max_rss_kib());
	cfs_policy_free(&pol);
	close(bfd);
	cfs_rmtree_at(AT_FDCWD, base);
	free(base);
}

int main(void);
/*
 * A tar whose length is a multiple of zstd's output buffer (5 x 128 KiB =
 * 64 x 10240-byte records): the frame ends exactly at a full buffer, and
 * the flush probe after it must not turn into "truncated stream" (1 commit
 * in ~64 was unreadable this way).
 */
static void test_frame_end_at_full_buffer(void)
{
	size_t out_size = ZSTD_DStreamOutSize();
	size_t data_len = 5 * out_size - 512 - 1024; /* header + end blocks */
	char *data = malloc(data_len + 1);
	struct spec sp[] = {{"f.bin", AE_IFREG, NULL, NULL, NULL}};
	struct cfs_buf tar = CFS_BUF_INIT, b = CFS_BUF_INIT;
	struct arena ar;
	int rc;

	for (size_t i = 0; i < data_len; i++)
		data[i] = (char)('a' + i % 23);
	data[data_len] = '\0';
	sp[0].data = data;
	build_tar(&tar, ARCHIVE_FORMAT_TAR_USTAR, sp, 1);
	TAP_EQ_INT(tar.len % out_size, 0,
		   "tar length is a multiple of zstd's output buffer");
	zstd_compress_into(&b, tar.ptr, tar.len);
	arena_open(&ar, "fullbuf");
	rc = unpack_mem(ar.destfd, &b, NULL, NULL);
	TAP_EQ_INT(rc, 0, "a frame ending at a full output buffer unpacks");
	if (rc)
		tap_diag("  %s", cfs_error_last());
	{
		struct cfs_unpack_opts vo = {.validate_only = true};

		TAP_EQ_INT(unpack_mem(-1, &b, &vo, NULL), 0, "  and validates");
	}
	arena_close(&ar);
	cfs_buf_free(&tar);
	cfs_buf_free(&b);
	free(data);
}

/* ---- a save's roots stored as the sandbox compressed them -------------- */

/*
 * The members of s as one tar whose bytes before member `cut` form the
 * first zstd frame and the rest (members, end-of-archive) the frames
 * after it; mode_of[i] overrides member i's permission bits when set.
 */
static void build_split_after(struct cfs_buf *out, size_t *frame1,
			      const struct spec *s, size_t n, size_t cut,
			      const mode_t *mode_of, const char *after)
{
	struct cfs_buf tar = CFS_BUF_INIT;
	struct archive *a = archive_write_new();
	size_t at = 0;

	archive_write_set_format_pax(a);
	archive_write_set_bytes_per_block(a, 0);
	archive_write_open(a, &tar, NULL, tar_write_cb, NULL);
	for (size_t i = 0; i < n; i++) {
		archive_write_finish_entry(a);
		if (i == cut)
			at = tar.len;
		add_member(a, &s[i], mode_of ? mode_of[i] : 0, 5);
	}
	archive_write_finish_entry(a);
	if (cut >= n)
		at = tar.len;
	archive_write_close(a);
	archive_write_free(a);
	if (after)
		cfs_buf_puts(&tar, after);
	{
		struct cfs_buf f = CFS_BUF_INIT;

		out->len = 0;
		zstd_compress_into(&f, tar.ptr, at);
		cfs_buf_put(out, f.ptr, f.len);
		*frame1 = f.len;
		if (at < tar.len) {
			f.len = 0;
			zstd_compress_into(&f, tar.ptr + at, tar.len - at);
			cfs_buf_put(out, f.ptr, f.len);
		}
		cfs_buf_free(&f);
	}
	cfs_buf_free(&tar);
}

static void build_split(struct cfs_buf *out, size_t *frame1,
			const struct spec *s, size_t n, size_t cut,
			const mode_t *mode_of)
{
	build_split_after(out, frame1, s, n, cut, mode_of, NULL);
}

struct hashed {
	int n;
	char a_sha[65]; /* workspace/a's, by size */
};

static void note_hash(void *payload, int fd, const char sha256[65])
{
	struct hashed *h = payload;
	struct stat st;

	h->n++;
	if (fstat(fd, &st) == 0 && st.st_size == 6)
		memcpy(h->a_sha, sha256, 65);
}

/* Unpacks b with the tail check; returns tail.ok (why in *why). */
static bool tail_ok(const struct cfs_buf *b, const struct cfs_policy *pol,
		    uint64_t *offset, const char **why, struct hashed *h)
{
	struct cfs_unpack_tail t = {.policy = pol};
	struct cfs_unpack_opts o = {.tail = &t};
	char *dir = tap_tmpdir("tail");
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	int rc;

	if (h) {
		o.file_hashed = note_hash;
		o.hash_payload = h;
	}
	rc = unpack_mem(dfd, b, &o, NULL);
	if (rc)
		tap_diag("  unpack: %s", cfs_error_last());
	close(dfd);
	cfs_rmtree_at(AT_FDCWD, dir);
	free(dir);
	if (offset)
		*offset = t.offset;
	*why = t.why ? t.why : "";
	return rc == 0 && t.ok;
}

/* b must unpack, with no tail, for the reason that contains reason. */
static void no_tail(const struct cfs_buf *b, const struct cfs_policy *pol,
		    const char *reason, const char *what)
{
	const char *why = "";
	bool ok = tail_ok(b, pol, NULL, &why, NULL);

	TAP_OK(!ok && strstr(why, reason) != NULL, "%s: no tail (%s)", what,
	       why);
}

static void test_tail(void)
{
	struct cfs_policy pol;
	struct cfs_buf b = CFS_BUF_INIT;
	struct spec sp[] = {
		{".contextsdk", AE_IFDIR, NULL, NULL, NULL},
		{".contextsdk/index.json", AE_IFREG, NULL, NULL, "{}\n"},
		{"contextsdk.json", AE_IFREG, NULL, NULL,
		 "{\"contextId\": \"x\"}\n"},
		{"workspace", AE_IFDIR, NULL, NULL, NULL},
		{"workspace/a", AE_IFREG, NULL, NULL, "hello\n"},
		{"workspace/l", AE_IFLNK, "a", NULL, NULL},
		{"memory", AE_IFDIR, NULL, NULL, NULL},
		{"memory/h", AE_IFREG, NULL, "workspace/a", NULL},
	};
	size_t n = sizeof(sp) / sizeof(sp[0]), f1 = 0;
	uint64_t off = 0;
	const char *why;
	struct hashed h = {0};
	char want[65];

	cfs_policy_default(&pol);

	build_split(&b, &f1, sp, n, 3, NULL);
	TAP_OK(tail_ok(&b, &pol, &off, &why, &h),
	       "head frame + roots frame: the roots can be stored as they are");
	TAP_EQ_INT((long)off, (long)f1, "  the tail starts where frame 1 ends");
	cfs_sha256_hex(want, "hello\n", 6);
	TAP_EQ_INT(h.n, 3, "  every extracted regular file was hashed once");
	TAP_EQ_STR(h.a_sha, want, "  with the sha256 of its data");

	/* the stored form: a head packed from the tree + the tail's bytes */
	{
		char *dir = tap_tmpdir("tailstore");
		int basefd = open(dir, O_RDONLY | O_DIRECTORY), t1, t2;
		struct cfs_buf head = CFS_BUF_INIT;
		struct cfs_bundle_member m = {".contextsdk/index.json",
					      "[1]\n",
					      4,
					      0644,
					      1700000001,
					      -1};
		struct cfs_bundle_stats st;
		struct stat sa, sh;
		char link[8] = {0};
		int rc;

		mkdirat(basefd, "t1", 0700);
		mkdirat(basefd, "t2", 0700);
		t1 = openat(basefd, "t1", O_RDONLY | O_DIRECTORY);
		t2 = openat(basefd, "t2", O_RDONLY | O_DIRECTORY);
		rc = unpack_mem(t1, &b, NULL, NULL);
		rc = rc ? rc
			: cfs_bundle_pack_head(t1, &m, 1, buf_sink, &head,
					       NULL);
		TAP_EQ_INT(rc, 0, "  a head packs from the extracted tree");
		cfs_buf_put(&head, b.ptr + off, b.len - off);
		rc = unpack_mem(t2, &head, NULL, &st);
		TAP_EQ_INT(rc, 0, "  head + tail unpack as one bundle");
		if (rc)
			tap_diag("  %s", cfs_error_last());
		TAP_EQ_INT((long)st.entries, 8, "  with every member once");
		TAP_OK(fstatat(t2, "workspace/a", &sa, 0) == 0 &&
			       fstatat(t2, "memory/h", &sh, 0) == 0 &&
			       sa.st_ino == sh.st_ino && sa.st_size == 6,
		       "  the hard link and its file");
		TAP_OK(readlinkat(t2, "workspace/l", link, sizeof(link) - 1) ==
				       1 &&
			       link[0] == 'a',
		       "  the symlink");
		TAP_OK(fstatat(t2, ".contextsdk/index.json", &sa, 0) == 0 &&
			       sa.st_size == 4,
		       "  the head's own index.json");
		close(t1);
		close(t2);
		close(basefd);
		cfs_rmtree_at(AT_FDCWD, dir);
		free(dir);
		cfs_buf_free(&head);
	}

	build_split(&b, &f1, sp, n, n, NULL);
	no_tail(&b, &pol, "do not start a zstd frame", "one frame");
	build_split(&b, &f1, sp, n, 4, NULL);
	no_tail(&b, &pol, "do not start a zstd frame",
		"frame 1 ends inside the roots");
	build_split(&b, &f1, sp, n, 2, NULL);
	no_tail(&b, &pol, "do not start a zstd frame",
		"frame 1 ends inside the head");
	{
		struct spec late[] = {
			sp[0],
			sp[3],
			sp[4],
			{".contextsdk/versions", AE_IFDIR, NULL, NULL, NULL},
		};
		build_split(&b, &f1, late, 4, 1, NULL);
		no_tail(&b, &pol, "a .contextsdk member follows",
			"a head member after the roots");
	}
	{
		struct spec out[] = {sp[0],
				     sp[3],
				     sp[4],
				     {"other", AE_IFREG, NULL, NULL, "x"}};
		build_split(&b, &f1, out, 4, 1, NULL);
		no_tail(&b, &pol, "outside the policy roots",
			"a member outside the roots");
	}
	{
		struct spec ex[] = {
			sp[0],
			sp[3],
			{"workspace/node_modules", AE_IFDIR, NULL, NULL, NULL},
			{"workspace/node_modules/m.js", AE_IFREG, NULL, NULL,
			 "x"}};
		build_split(&b, &f1, ex, 4, 1, NULL);
		no_tail(&b, &pol, "excluded by the policy",
			"an excluded member");
	}
	{
		mode_t modes[] = {0, 0, 04755, 0, 0};

		build_split(&b, &f1, sp, 5, 3, modes);
		TAP_OK(tail_ok(&b, &pol, NULL, &why, NULL),
		       "set-id bits on a head member do not matter");
		TAP_EQ_STR(why, "", "  no reason given");
		mode_t modes2[] = {0, 0, 0, 0, 04755};

		build_split(&b, &f1, sp, 5, 3, modes2);
		no_tail(&b, &pol, "set-id or sticky", "a set-id root member");
	}
	{
		struct spec hl[] = {sp[0],
				    sp[1],
				    sp[3],
				    {"workspace/i", AE_IFREG, NULL,
				     ".contextsdk/index.json", NULL}};
		build_split(&b, &f1, hl, 4, 2, NULL);
		no_tail(&b, &pol, "hard link leaves",
			"a hard link into the head");
	}
	build_split_after(&b, &f1, sp, n, 3, NULL, "hidden member");
	no_tail(&b, &pol, "data follows the end-of-archive",
		"bytes after the end-of-archive blocks");
	{
		struct spec none[] = {sp[0], sp[1]};
		build_split(&b, &f1, none, 2, 2, NULL);
		no_tail(&b, &pol, "ended before any policy root",
			"no roots at all");
	}
	cfs_buf_free(&b);
	cfs_policy_free(&pol);
}

int main(void)
{
	cfs_init();
	test_hostile();
	test_benign_names();
	test_caps();
	test_bombs();
	test_round_trip();
	test_pack_memory();
	test_frame_end_at_full_buffer();
	test_tail(); /* after test_pack_memory: it measures peak RSS */
	return tap_done();
}
