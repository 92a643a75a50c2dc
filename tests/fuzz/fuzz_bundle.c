/*
 * Fuzz harness for bundle unpacking (untrusted tar entries and zstd).
 *
 * The input is treated two ways: as a raw tar (compressed here with zstd
 * level 1, so the fuzzer explores tar headers) and, when it starts with the
 * zstd magic, as a bundle as-is (exploring the decompressor path).
 *
 * Invariants checked on every input:
 *   - unpack returns 0 or a CFS_E* code, never crashes or leaks;
 *   - nothing is ever created outside the destination: the destination
 *     lives in base/jail/dest and base/ and base/jail/ must hold only it.
 *
 * libFuzzer:  clang -g -O1 -fsanitize=fuzzer,address,undefined -I. \
 *               -I/usr/include/cjson tests/fuzz/fuzz_bundle.c \
 *               core/{error,util,log,json,policy,bundle}.c \
 *               -larchive -lzstd -lcjson -lsodium -lcrypto -lm
 * Replay:     link with tests/fuzz/replay_main.c (any compiler) and pass
 *             files.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "core/bundle.h"
#include "core/error.h"
#include "core/log.h"
#include "core/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct src {
	const uint8_t *p;
	size_t len, pos;
};

static ssize_t src_read(void *buf, size_t len, void *payload)
{
	struct src *s = payload;
	size_t n = s->len - s->pos;

	if (n > len)
		n = len;
	if (n > 4096) /* small reads exercise buffer boundaries */
		n = 4096;
	memcpy(buf, s->p + s->pos, n);
	s->pos += n;
	return (ssize_t)n;
}

static size_t entries_in(int dfd)
{
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	struct dirent *de;
	size_t n = 0;

	if (!d)
		abort();
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

static void run(const uint8_t *z, size_t zlen)
{
	static char *base;
	struct cfs_unpack_opts o = {.max_entries = 1000,
				    .max_bytes = 64u << 20};
	struct src s = {z, zlen, 0};
	int bfd, jfd, dfd, rc;

	if (!base) {
		cfs_init();
		cfs_log_quiet();
		if (cfs_mkdtemp(&base, NULL, "fuzz-bundle-") != 0)
			abort();
	}
	bfd = open(base, O_RDONLY | O_DIRECTORY);
	cfs_rmtree_at(bfd, "jail");
	mkdirat(bfd, "jail", 0700);
	jfd = openat(bfd, "jail", O_RDONLY | O_DIRECTORY);
	mkdirat(jfd, "dest", 0700);
	dfd = openat(jfd, "dest", O_RDONLY | O_DIRECTORY);

	o.validate_only = true;
	rc = cfs_bundle_unpack(-1, src_read, &s, &o, NULL);
	if (rc > 0)
		abort();
	s.pos = 0;
	o.validate_only = false;
	rc = cfs_bundle_unpack(dfd, src_read, &s, &o, NULL);
	if (rc > 0)
		abort();
	if (entries_in(bfd) != 1 || entries_in(jfd) != 1)
		abort(); /* something escaped the destination */
	close(dfd);
	close(jfd);
	cfs_rmtree_at(bfd, "jail");
	close(bfd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t cap = ZSTD_compressBound(size);
	uint8_t *z = malloc(cap);
	size_t zlen;

	if (size >= 4 && data[0] == 0x28 && data[1] == 0xb5 &&
	    data[2] == 0x2f && data[3] == 0xfd)
		run(data, size);
	if (!z)
		return 0;
	zlen = ZSTD_compress(z, cap, data, size, 1);
	if (!ZSTD_isError(zlen))
		run(z, zlen);
	free(z);
	return 0;
}
