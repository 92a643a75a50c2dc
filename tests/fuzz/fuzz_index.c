/*
 * Fuzz harness for the previous index readers (untrusted: a bundle's
 * .contextsdk/index.json, the commit cache, a committed directory's own).
 *
 * Differential: the version record core/record.c streams (the document
 * read entry by entry, both lists through the external sort, with a
 * budget so small that every few entries spill a run) must be the same
 * bytes as the one of the in-memory reader, diff and writer
 * (cfs_index_from_json, cfs_version_diff, cfs_version_record_write), for
 * any document, against a fixed current list whose paths stress byte vs
 * component order.
 *
 * Replay: link with tests/fuzz/replay_main.c and pass files.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/record.h"
#include "core/util.h"
#include "core/version.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* the document's entries must be found whole: none longer than this */
#define FUZZ_INPUT_MAX (512u << 10)

static char spill_dir[] = "/tmp/fuzz-index-XXXXXX";

static void spill_dir_remove(void)
{
	rmdir(spill_dir); /* the spills were unnamed files */
}

static char *slurp(int fd, size_t len)
{
	char *b = malloc(len + 1);
	size_t got = 0;

	if (!b || lseek(fd, 0, SEEK_SET) != 0 ||
	    cfs_read_all(fd, b, len, &got) || got != len)
		abort();
	b[len] = '\0';
	return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const paths[] = {"workspace/a",     "workspace/a b",
					    "workspace/a.b",   "workspace/a/b",
					    "workspace/a-b/c", "memory/x",
					    "logs/\xc3\xa9",   "workspace/a~"};
	enum { N = sizeof(paths) / sizeof(paths[0]) };
	static int dirfd = -1;
	struct cfs_file_entry cur[N];
	struct cfs_file_entry *prev = NULL;
	struct cfs_version_change *ch = NULL;
	struct cfs_record_build *rb = NULL;
	size_t np = 0, nch = 0, alen = 0, blen = 0;
	cJSON *bare;
	char *a, *b;
	int fa, fb;

	if (size > FUZZ_INPUT_MAX)
		return 0;
	if (dirfd < 0) {
		if (!mkdtemp(spill_dir))
			abort();
		atexit(spill_dir_remove);
		dirfd = open(spill_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dirfd < 0)
			abort();
	}
	for (int i = 0; i < N; i++) {
		memset(&cur[i], 0, sizeof(cur[i]));
		cur[i].path = (char *)paths[i];
		snprintf(cur[i].sha256, sizeof(cur[i].sha256), "%064x", i % 3);
	}
	bare = cfs_version_record_new(2, 1, "t", "a", "m", NULL, 0, NULL, 0);
	fa = memfd_create("oracle", 0);
	fb = memfd_create("stream", 0);
	if (!bare || fa < 0 || fb < 0)
		abort();
	if (cfs_index_from_json(&prev, &np, (const char *)data, size) ||
	    cfs_version_diff(&ch, &nch, prev, np, cur, N) ||
	    cfs_version_record_write(&alen, fa, bare, ch, nch, cur, N))
		abort();
	if (cfs_record_build_new(&rb, dirfd, 160, 4))
		abort();
	for (int i = 0; i < N; i++)
		if (cfs_record_build_file(rb, &cur[i]))
			abort();
	if (cfs_record_build_prev_buf(rb, (const char *)data, size) ||
	    cfs_record_build_finish(&blen, rb, fb, bare))
		abort();
	a = slurp(fa, alen);
	b = slurp(fb, blen);
	if (alen != blen || memcmp(a, b, alen) != 0)
		abort(); /* the streamed record differs from the in-memory one */
	free(a);
	free(b);
	cfs_record_build_free(rb);
	cfs_index_free(prev, np);
	free(ch);
	cJSON_Delete(bare);
	close(fa);
	close(fb);
	return 0;
}
