/* Copied from the team's shared harness (../shared/bench/smallfiles.c),
 * unchanged, as the helper of tests/bench/fsbench.sh. */
/* smallfiles.c - small-file metadata/data workload helper for fsbench.sh
 *
 * usage: smallfiles MODE DIR NDIRS NFILES SIZE
 *   MODE   create | stat | read | delete
 *   DIR    directory under which d0000..d(NDIRS-1) are made
 *   NFILES total number of files, spread evenly over the directories
 *   SIZE   bytes per file (written with one write(), read with one read loop)
 * Prints the elapsed wall time in seconds (CLOCK_MONOTONIC) on stdout.
 * Build: cc -O2 -Wall -o smallfiles smallfiles.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *path)
{
	fprintf(stderr, "smallfiles: %s %s: %s\n", what, path, strerror(errno));
	exit(1);
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: %s create|stat|read|delete DIR NDIRS NFILES SIZE\n", argv[0]);
		return 2;
	}
	const char *mode = argv[1], *dir = argv[2];
	long ndirs = atol(argv[3]), nfiles = atol(argv[4]);
	size_t size = (size_t)atol(argv[5]);
	long per = nfiles / ndirs;
	char path[4096];
	char *buf = malloc(size + 1);
	if (!buf)
		return 1;
	for (size_t i = 0; i < size; i++)	/* non-zero, mildly varied content */
		buf[i] = (char)('a' + (i * 7 + i / 13) % 26);

	double t0 = now();
	for (long d = 0; d < ndirs; d++) {
		snprintf(path, sizeof path, "%s/d%04ld", dir, d);
		if (!strcmp(mode, "create") && mkdir(path, 0755) && errno != EEXIST)
			die("mkdir", path);
		for (long f = 0; f < per; f++) {
			snprintf(path, sizeof path, "%s/d%04ld/f%06ld", dir, d, d * per + f);
			if (!strcmp(mode, "create")) {
				int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
				if (fd < 0)
					die("open", path);
				buf[0] = (char)('A' + f % 26);
				if (write(fd, buf, size) != (ssize_t)size)
					die("write", path);
				if (close(fd))
					die("close", path);
			} else if (!strcmp(mode, "stat")) {
				struct stat st;
				if (lstat(path, &st))
					die("lstat", path);
				if ((size_t)st.st_size != size) {
					fprintf(stderr, "smallfiles: %s: size %lld != %zu\n",
						path, (long long)st.st_size, size);
					return 1;
				}
			} else if (!strcmp(mode, "read")) {
				int fd = open(path, O_RDONLY);
				if (fd < 0)
					die("open", path);
				size_t got = 0;
				ssize_t r;
				while ((r = read(fd, buf, size - got + 1)) > 0)
					got += (size_t)r;
				if (r < 0)
					die("read", path);
				if (got != size) {
					fprintf(stderr, "smallfiles: %s: read %zu != %zu\n", path, got, size);
					return 1;
				}
				close(fd);
			} else if (!strcmp(mode, "delete")) {
				if (unlink(path))
					die("unlink", path);
			} else {
				fprintf(stderr, "smallfiles: unknown mode %s\n", mode);
				return 2;
			}
		}
		if (!strcmp(mode, "delete")) {
			snprintf(path, sizeof path, "%s/d%04ld", dir, d);
			if (rmdir(path))
				die("rmdir", path);
		}
	}
	printf("%.6f\n", now() - t0);
	free(buf);
	return 0;
}
