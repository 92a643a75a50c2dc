/*
 * Fuzz harness for the JSON parser/printer and the manifest and lock
 * parsers (untrusted input read from the store).
 *
 * Invariants checked on every input that parses:
 *   - print(parse(x)) is a fixed point: parsing and printing it again gives
 *     the same bytes, in both the JSON.stringify and the python personality;
 *   - a manifest that parses prints to bytes that parse to the same bytes
 *     (normalization is idempotent);
 *   - a lock that reads can be renewed/released by its owner.
 *
 * libFuzzer:  clang -g -O1 -fsanitize=fuzzer,address,undefined -I. \
 *               tests/fuzz/fuzz_manifest.c core/{error,util,log,json,ids,
 *               manifest,lock,store}.c storage/mem.c -lcjson -lsodium -lcrypto
 * Replay:     link with tests/fuzz/replay_main.c (any compiler) and pass
 *             files.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/json.h"
#include "core/lock.h"
#include "core/manifest.h"
#include "core/util.h"
#include "storage/storage.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void fixed_point(const cJSON *doc, int flags)
{
	char *a = cfs_json_print(doc, flags), *b = NULL;
	cJSON *again;

	if (!a)
		abort();
	again = cfs_json_parse(a, strlen(a), "printed");
	if (!again) {
		/* cJSON cannot read back the lone surrogates (\udcXX) that
		 * stand for non-UTF-8 bytes in the python personality. */
		if ((flags & CFS_JSON_ASCII) && strstr(a, "\\udc")) {
			free(a);
			return;
		}
		abort(); /* we printed something we cannot read back */
	}
	b = cfs_json_print(again, flags);
	if (!b || strcmp(a, b) != 0)
		abort();
	free(a);
	free(b);
	cJSON_Delete(again);
}

static void fuzz_manifest(const char *buf, size_t len)
{
	struct cfs_manifest *m = NULL, *m2 = NULL;
	char *a = NULL, *b = NULL;

	if (cfs_manifest_parse(&m, buf, len, NULL) != 0)
		return;
	a = cfs_manifest_print(m);
	if (!a || cfs_manifest_parse(&m2, a, strlen(a), cfs_manifest_id(m)))
		abort();
	b = cfs_manifest_print(m2);
	if (!b || strcmp(a, b) != 0)
		abort();
	(void)cfs_manifest_generation_lookup(m, cfs_manifest_generation(m),
					     NULL, NULL, NULL);
	(void)cfs_manifest_checkpoint_lookup(
		m, cfs_manifest_checkpoint_generation(m), NULL, NULL, NULL);
	free(a);
	free(b);
	cfs_manifest_free(m);
	cfs_manifest_free(m2);
}

static void fuzz_lock(const char *buf, size_t len)
{
	struct cfs_store *st = NULL;
	struct cfs_lock *l = NULL;
	char *owner = NULL;

	if (cfs_store_mem_new(&st) != 0)
		abort();
	if (cfs_store_put_buf(st, "contexts/f/lock.json", buf, len, NULL,
			      NULL) != 0)
		abort();
	if (cfs_lock_read(&l, st, "f") == 0 && l) {
		owner = cfs_strdup(cfs_lock_owner(l));
		if (!owner || cfs_lock_renew(NULL, st, "f", owner, 1000) != 0)
			abort();
		if (cfs_lock_release(st, "f", owner, false) != 0)
			abort();
	}
	free(owner);
	cfs_lock_free(l);
	cfs_store_free(st);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int inited;
	const char *buf = (const char *)data;
	cJSON *doc;

	if (!inited) {
		cfs_init();
		inited = 1;
	}
	doc = cfs_json_parse(buf, size, "fuzz");
	if (doc) {
		fixed_point(doc, CFS_JSON_PRETTY);
		fixed_point(doc, 0);
		fixed_point(doc, CFS_JSON_PRETTY | CFS_JSON_SORT_KEYS |
					 CFS_JSON_NEWLINE | CFS_JSON_ASCII);
		cJSON_Delete(doc);
	}
	fuzz_manifest(buf, size);
	fuzz_lock(buf, size);
	return 0;
}
