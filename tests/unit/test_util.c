/*
 * Unit tests for core/util.c and core/error.c.
 */
#include "core/error.h"
#include "core/util.h"
#include "tests/unit/tap.h"

#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_buf(void)
{
	struct cfs_buf b = CFS_BUF_INIT;
	char *s;
	int i;

	for (i = 0; i < 1000; i++)
		cfs_buf_printf(&b, "%d,", i);
	TAP_OK(b.len == 3890, "buf grows across many appends (%zu)", b.len);
	TAP_OK(strncmp(b.ptr, "0,1,2,", 6) == 0, "buf keeps content");
	s = cfs_buf_detach(&b);
	TAP_OK(s && b.ptr == NULL && b.len == 0, "detach hands over");
	free(s);
	s = cfs_buf_detach(&b);
	TAP_EQ_STR(s, "", "detach of an empty buffer is \"\"");
	free(s);
}

static void test_time(void)
{
	char ts[40];

	cfs_iso8601_ms(ts, sizeof(ts), 1780660800123LL);
	TAP_EQ_STR(ts, "2026-06-05T12:00:00.123Z", "iso8601 with ms");
	TAP_EQ_INT(cfs_iso8601_parse_ms("2026-06-05T12:00:00.123Z"),
		   1780660800123LL, "parse with ms");
	TAP_EQ_INT(cfs_iso8601_parse_ms("2026-06-05T12:00:00Z"),
		   1780660800000LL, "parse seconds (python style)");
	TAP_EQ_INT(cfs_iso8601_parse_ms("2026-06-05T12:00:00.5Z"),
		   1780660800500LL, "parse one fraction digit");
	TAP_EQ_INT(cfs_iso8601_parse_ms("yesterday"), -1, "garbage is -1");
	TAP_EQ_INT(cfs_iso8601_parse_ms("2026-06-05T12:00:00Zjunk"), -1,
		   "trailing junk is -1");
}

static void test_hex_uuid(void)
{
	uint8_t out[4];
	size_t n = 0;
	char u[37], h[17];
	int i, ok = 1;

	TAP_EQ_INT(cfs_hex_decode(out, sizeof(out), "deadBEEF", &n), 0,
		   "hex decode");
	TAP_OK(n == 4 && out[0] == 0xde && out[3] == 0xef, "hex bytes");
	TAP_EQ_INT(cfs_hex_decode(out, sizeof(out), "abc", &n), CFS_EINVAL,
		   "odd hex rejected");
	TAP_EQ_INT(cfs_hex_decode(out, sizeof(out), "zz", &n), CFS_EINVAL,
		   "bad hex rejected");
	TAP_EQ_INT(cfs_hex_decode(out, sizeof(out), "0011223344", &n),
		   CFS_EINVAL, "too long hex rejected");
	cfs_uuid4(u);
	TAP_OK(strlen(u) == 36 && u[14] == '4' && u[8] == '-', "uuid v4 %s", u);
	for (i = 0; i < 36; i++)
		if (!strchr("0123456789abcdef-", u[i]))
			ok = 0;
	TAP_OK(ok, "uuid is lowercase hex");
	cfs_random_hex(h, 8);
	TAP_OK(strlen(h) == 16, "random hex length");
}

static void test_sha(void)
{
	char hex[65];

	cfs_sha256_hex(hex, "abc", 3);
	TAP_EQ_STR(
		hex,
		"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
		"sha256(abc)");
}

/* cfs_sha256_fd_stat: sizes around its 64 KiB reads, and non-files. */
static void test_sha_fd_stat(void)
{
	static const size_t sizes[] = {0, 1, 65535, 65536, 65537, 200000};
	char *dir = tap_tmpdir("shafd");
	char *path = cfs_asprintf("%s/f", dir);
	char hex[65], want[65];
	struct stat st;
	int fd, p[2];

	for (size_t i = 0; i < CFS_ARRAY_SIZE(sizes); i++) {
		unsigned char *data = cfs_malloc(sizes[i] + 1);

		for (size_t k = 0; k < sizes[i]; k++)
			data[k] = (unsigned char)(k * 131 + i);
		fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
		TAP_OK(cfs_write_all(fd, data, sizes[i]) == 0, "write %zu",
		       sizes[i]);
		cfs_sha256_hex(want, data, sizes[i]);
		TAP_OK(cfs_sha256_fd_stat(hex, fd, &st) == 0, "hash %zu",
		       sizes[i]);
		TAP_EQ_STR(hex, want, "sha256 of a file");
		TAP_OK(S_ISREG(st.st_mode) && st.st_size == (off_t)sizes[i],
		       "stat after reading: %zu bytes", sizes[i]);
		close(fd);
		free(data);
	}
	/* not files: said so by st, nothing hashed, /dev/zero not read on */
	fd = open("/dev/zero", O_RDONLY);
	TAP_EQ_INT(cfs_sha256_fd_stat(hex, fd, &st), 0, "/dev/zero");
	TAP_OK(S_ISCHR(st.st_mode) && hex[0] == '\0', "/dev/zero: a device");
	close(fd);
	fd = open("/dev/null", O_RDONLY);
	TAP_EQ_INT(cfs_sha256_fd_stat(hex, fd, &st), 0, "/dev/null");
	TAP_OK(S_ISCHR(st.st_mode) && hex[0] == '\0', "/dev/null: a device");
	close(fd);
	TAP_OK(pipe(p) == 0, "pipe");
	TAP_EQ_INT(cfs_sha256_fd_stat(hex, p[0], &st), 0, "a pipe");
	TAP_OK(S_ISFIFO(st.st_mode) && hex[0] == '\0', "a pipe: a FIFO");
	close(p[0]);
	close(p[1]);
	unlink(path);
	rmdir(dir);
	free(path);
	free(dir);
}

/* cfs_names_read_dir: every name once, with readdir's type. */
static void test_names_types(void)
{
	char *dir = tap_tmpdir("names");
	struct cfs_names l = {0};
	char *p;
	int dfd;

	p = cfs_asprintf("%s/file", dir);
	close(open(p, O_WRONLY | O_CREAT, 0600));
	free(p);
	p = cfs_asprintf("%s/sub", dir);
	TAP_OK(mkdir(p, 0700) == 0, "mkdir");
	free(p);
	p = cfs_asprintf("%s/link", dir);
	TAP_OK(symlink("file", p) == 0, "symlink");
	free(p);
	dfd = open(dir, O_RDONLY | O_DIRECTORY);
	for (int round = 0; round < 2; round++) { /* twice on one fd */
		l = (struct cfs_names){0};
		TAP_EQ_INT(cfs_names_read_dir(&l, dfd, "dir"), 0, "list");
		TAP_OK(cfs_names_add(&l, "file", 4) == 0, "add a duplicate");
		cfs_names_sort_unique(&l);
		TAP_OK(l.n == 3, "three names, round %d", round);
		if (l.n == 3) {
			TAP_EQ_STR(l.v[0], "file", "sorted");
			TAP_EQ_STR(l.v[1], "link", "sorted");
			TAP_EQ_STR(l.v[2], "sub", "sorted");
			/* ext4 and tmpfs give types; a duplicate added by
			 * name loses its type */
			TAP_OK(l.type[0] == DT_UNKNOWN, "duplicate: unknown");
			TAP_OK(l.type[1] == DT_LNK || l.type[1] == DT_UNKNOWN,
			       "link type");
			TAP_OK(l.type[2] == DT_DIR || l.type[2] == DT_UNKNOWN,
			       "dir type");
		}
		cfs_names_free(&l);
	}
	close(dfd);
	/* an O_PATH descriptor falls back to opendir */
	dfd = open(dir, O_PATH | O_DIRECTORY);
	TAP_EQ_INT(cfs_names_read_dir(&l, dfd, "dir"), 0, "list via O_PATH");
	TAP_EQ_INT(l.n, 3, "three names via O_PATH");
	cfs_names_free(&l);
	close(dfd);
	cfs_rmtree_at(AT_FDCWD, dir);
	free(dir);
}

static void test_files(void)
{
	char *dir = tap_tmpdir("util");
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	char *data = NULL;
	size_t len = 0;
	struct stat st;
	int fd;

	TAP_EQ_INT(cfs_mkdir_p_at(dfd, "a/b/c", 0700), 0, "mkdir -p");
	TAP_EQ_INT(cfs_mkdir_p_at(dfd, "a/b/c", 0700), 0, "mkdir -p again");
	TAP_EQ_INT(cfs_write_file_at(dfd, "a/b/c/f", "hello", 5, 0600, true), 0,
		   "write file");
	TAP_EQ_INT(fstatat(dfd, "a/b/c/f", &st, 0), 0, "file exists");
	TAP_EQ_INT(st.st_mode & 0777, 0600, "file mode");
	TAP_EQ_INT(cfs_read_file_at(&data, &len, dfd, "a/b/c/f", 100), 0,
		   "read file");
	TAP_OK(len == 5 && strcmp(data, "hello") == 0, "content");
	free(data);
	TAP_EQ_INT(cfs_read_file_at(&data, &len, dfd, "a/b/c/f", 4),
		   CFS_ECORRUPT, "read cap enforced");
	TAP_EQ_INT(cfs_read_file_at(&data, &len, dfd, "nope", 4), CFS_ENOTFOUND,
		   "missing file");
	fd = openat(dfd, "a/b/c/f", O_RDONLY);
	{
		char hex[65];

		cfs_sha256_fd(hex, fd);
		TAP_EQ_STR(
			hex,
			"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
			"sha256 of an fd");
	}
	close(fd);
	symlinkat("/etc", dfd, "a/link");
	TAP_EQ_INT(cfs_rmtree_at(dfd, "a"), 0, "rmtree");
	TAP_OK(fstatat(dfd, "a", &st, AT_SYMLINK_NOFOLLOW) < 0 &&
		       errno == ENOENT,
	       "tree gone");
	TAP_OK(access("/etc/passwd", F_OK) == 0, "rmtree never follows links");
	close(dfd);
	cfs_rmtree_at(AT_FDCWD, dir);
	free(dir);
}

static void test_errors(void)
{
	TAP_EQ_INT(cfs_error_set(CFS_ELOCKED, "locked by %s", "x"), CFS_ELOCKED,
		   "set returns code");
	TAP_EQ_STR(cfs_error_last(), "locked by x", "message kept");
	cfs_error_prefix("commit");
	TAP_EQ_STR(cfs_error_last(), "commit: locked by x", "prefix");
	TAP_EQ_INT(cfs_error_errno(ENOSPC, "write %s", "f"), CFS_ENOSPC,
		   "ENOSPC maps to CFS_ENOSPC");
	TAP_EQ_STR(cfs_error_name(CFS_EAUTH), "authentication", "names");
	TAP_EQ_INT(cfs_error_to_errno(CFS_ENOSPC), ENOSPC, "to errno");
}

int main(void)
{
	cfs_init();
	test_buf();
	test_time();
	test_hex_uuid();
	test_sha();
	test_sha_fd_stat();
	test_names_types();
	test_files();
	test_errors();
	return tap_done();
}
