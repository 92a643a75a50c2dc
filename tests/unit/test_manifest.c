/*
 * The manifest document: byte-exact round trip of the reference's
 * manifests, a create that reproduces the reference's bytes, unknown
 * members surviving a rewrite in order, legacy normalization, corrupt
 * input, the 50-entry version cap, and the contextfs checkpoint/generation
 * extensions.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/ids.h"
#include "core/json.h"
#include "core/manifest.h"
#include "core/util.h"
#include "tests/unit/tap.h"

int main(void);

static char *read_fixture(const char *rel, size_t *len)
{
	const char *fx = getenv("CFS_FIXTURES");
	char path[1024];
	char *buf = NULL;

	if (!fx)
		return NULL;
	snprintf(path, sizeof(path), "%s/contextsdk-0.4/%s", fx, rel);
	if (cfs_read_file_at(&buf, len, AT_FDCWD, path, 1 << 20) != 0)
		return NULL;
	return buf;
}

static struct cfs_manifest *parse_str(const char *s, const char *id)
{
	struct cfs_manifest *m = NULL;

	if (cfs_manifest_parse(&m, s, strlen(s), id) != 0)
		tap_diag("parse failed: %s", cfs_error_last());
	return m;
}

static const char *const fixtures[][2] = {
	{"fresh/store/contexts/interop-fresh/manifest.json", "interop-fresh"},
	{"passphrase/store/contexts/interop-pass/manifest.json",
	 "interop-pass"},
	{"passphrase/manifest-at-checkpoint.json", "interop-pass"},
};

static void test_fixture_roundtrip(void)
{
	size_t i, len;

	for (i = 0; i < CFS_ARRAY_SIZE(fixtures); i++) {
		struct cfs_manifest *m = NULL, *d = NULL;
		char *buf = read_fixture(fixtures[i][0], &len), *out = NULL;

		if (!buf) {
			tap_skip("fixture missing (CFS_FIXTURES)");
			continue;
		}
		TAP_EQ_INT(cfs_manifest_parse(&m, buf, len, fixtures[i][1]), 0,
			   fixtures[i][0]);
		if (m && cfs_manifest_dup(&d, m) == 0) {
			out = cfs_manifest_print(d);
			TAP_OK(out && strlen(out) == len &&
				       memcmp(out, buf, len) == 0,
			       "print(dup(parse)) reproduces %s",
			       fixtures[i][0]);
		}
		free(out);
		free(buf);
		cfs_manifest_free(m);
		cfs_manifest_free(d);
	}
}

static void test_fixture_accessors(void)
{
	struct cfs_manifest *m = NULL;
	const char *key = NULL;
	const cJSON *enc = NULL;
	uint64_t size = 0;
	size_t len;
	char *buf = read_fixture(fixtures[1][0], &len);

	if (!buf || cfs_manifest_parse(&m, buf, len, "interop-pass") != 0) {
		tap_skip("passphrase fixture");
		free(buf);
		return;
	}
	TAP_EQ_STR(cfs_manifest_id(m), "interop-pass", "id");
	TAP_EQ_STR(cfs_manifest_format(m), "tree", "format");
	TAP_OK(cfs_manifest_is_tree(m), "is tree");
	TAP_EQ_INT(cfs_manifest_generation(m), 4, "generation");
	TAP_EQ_INT(cfs_manifest_checkpoint_generation(m), 1,
		   "checkpointGeneration");
	TAP_OK(cfs_manifest_size_bytes(m) > 0, "sizeBytes");
	TAP_OK(strncmp(cfs_manifest_tree_key(m),
		       "contexts/interop-pass/tree/00000004-", 36) == 0,
	       "treeKey is gen 4");
	TAP_OK(cfs_json_str(cfs_manifest_tree_encryption(m), "nonce") != NULL,
	       "treeEncryption object");
	TAP_OK(cfs_manifest_image_encryption(m) == NULL,
	       "no imageEncryption for tree (omitted, as the reference)");
	TAP_OK(cJSON_GetArraySize(cfs_manifest_versions(m)) == 3,
	       "three version summaries");
	TAP_OK(cfs_manifest_latest_version(m) != NULL, "latestVersion");
	TAP_OK(cfs_manifest_latest_checkpoint(m) != NULL, "latestCheckpoint");
	TAP_OK(cfs_manifest_policy(m) != NULL, "persistencePolicy");

	TAP_EQ_INT(cfs_manifest_generation_lookup(m, 4, &key, &enc, &size), 0,
		   "current generation resolvable");
	TAP_OK(key == cfs_manifest_tree_key(m) &&
		       enc == cfs_manifest_tree_encryption(m) &&
		       size == cfs_manifest_size_bytes(m),
	       "current generation -> treeKey/treeEncryption/sizeBytes");
	TAP_EQ_INT(cfs_manifest_generation_lookup(m, 4, NULL, NULL, NULL), 0,
		   "lookup with every out parameter NULL");
	TAP_EQ_INT(cfs_manifest_checkpoint_lookup(m, 1, NULL, NULL, NULL),
		   CFS_ENOTFOUND, "checkpoint existence check with NULL outs");
	TAP_EQ_INT(cfs_manifest_generation_lookup(m, 2, &key, &enc, &size),
		   CFS_ENOTFOUND,
		   "superseded reference generation not retained");
	TAP_EQ_INT(cfs_manifest_generation_lookup(m, 5, &key, &enc, &size),
		   CFS_ENOTFOUND, "future generation");
	TAP_EQ_INT(cfs_manifest_checkpoint_lookup(m, 1, &key, &enc, &size),
		   CFS_ENOTFOUND,
		   "reference checkpoint undecryptable after the next save");
	TAP_OK(strstr(cfs_error_last(), "encryption metadata") != NULL,
	       "message explains why: %s", cfs_error_last());
	cfs_manifest_free(m);
	free(buf);

	buf = read_fixture(fixtures[2][0], &len);
	m = NULL;
	if (!buf || cfs_manifest_parse(&m, buf, len, "interop-pass") != 0) {
		tap_skip("checkpoint fixture");
		free(buf);
		return;
	}
	TAP_EQ_INT(cfs_manifest_checkpoint_lookup(m, 1, &key, &enc, &size), 0,
		   "checkpoint resolvable while current");
	TAP_OK(strcmp(key, "contexts/interop-pass/checkpoints/"
			   "00000001.tree.tar.zst.enc") == 0 &&
		       enc == cfs_manifest_tree_encryption(m) &&
		       size == 3150047,
	       "checkpoint -> its key, treeEncryption, sizeBytes");
	TAP_EQ_INT(cfs_manifest_generation_lookup(m, 3, &key, &enc, &size),
		   CFS_ENOTFOUND,
		   "generation replaced by a checkpoint is not current");
	cfs_manifest_free(m);
	free(buf);
}

static cJSON *enc_obj(const char *nonce)
{
	cJSON *e = cJSON_CreateObject();

	cJSON_AddNumberToObject(e, "version", 1);
	cJSON_AddStringToObject(e, "algorithm", "aes-256-gcm");
	cJSON_AddStringToObject(e, "keyDerivation", "raw");
	cJSON_AddStringToObject(e, "nonce", nonce);
	cJSON_AddStringToObject(e, "authTag", "AAAAAAAAAAAAAAAAAAAAAA==");
	return e;
}

/* Rebuilds the fresh fixture with new_for_create: same bytes. */
static void test_create_matches_reference(void)
{
	struct cfs_manifest *ref = NULL, *m = NULL;
	struct cfs_manifest_init init;
	const cJSON *doc;
	char *buf, *out = NULL;
	size_t len;

	buf = read_fixture(fixtures[0][0], &len);
	if (!buf || cfs_manifest_parse(&ref, buf, len, NULL) != 0) {
		tap_skip("fresh fixture");
		free(buf);
		return;
	}
	doc = cfs_manifest_json(ref);
	memset(&init, 0, sizeof(init));
	init.id = cfs_manifest_id(ref);
	init.format = "tree";
	init.size_bytes = cfs_manifest_size_bytes(ref);
	init.tree_key = cfs_manifest_tree_key(ref);
	init.image_key = cfs_manifest_image_key(ref);
	init.encryption = cfs_manifest_encryption(ref);
	init.policy = cfs_manifest_policy(ref);
	init.now_ms = cfs_iso8601_parse_ms(cfs_json_str(doc, "createdAt"));
	TAP_EQ_INT(cfs_manifest_new_for_create(&m, &init), 0, "create");
	out = m ? cfs_manifest_print(m) : NULL;
	TAP_OK(out && strlen(out) == len && memcmp(out, buf, len) == 0,
	       "new_for_create reproduces the reference's create bytes");
	if (out && strcmp(out, buf) != 0)
		tap_diag("got:\n%s", out);
	free(out);
	cfs_manifest_free(m);
	m = NULL;

	init.id = "../evil";
	TAP_EQ_INT(cfs_manifest_new_for_create(&m, &init), CFS_EINVAL,
		   "create refuses an invalid id");
	init.id = "x";
	init.encryption = NULL;
	TAP_EQ_INT(cfs_manifest_new_for_create(&m, &init), CFS_EINVAL,
		   "create needs encryption metadata");
	TAP_OK(m == NULL, "no manifest on failure");
	cfs_manifest_free(ref);
	free(buf);
}

static void test_unknown_fields_preserved(void)
{
	const char *src =
		"{\"version\":1,\"id\":\"u\",\"x-enterprise\":{\"tenant\":"
		"\"acme\",\"n\":[1,2.5]},\"format\":\"tree\",\"filesystem\":"
		"\"tree\",\"sizeBytes\":10,\"generation\":2,\"imageKey\":"
		"\"contexts/u/image/00000001-aaaaaaaa.img.enc\",\"treeKey\":"
		"\"contexts/u/tree/00000002-bbbbbbbb.tree.tar.zst.enc\","
		"\"encryption\":{\"nonce\":\"n1\",\"future\":true},"
		"\"treeEncryption\":{\"nonce\":\"n1\",\"future\":true},"
		"\"runtimeState\":{\"provider\":\"vercel\",\"mode\":"
		"\"provider-persistence\"},\"createdAt\":\"c\",\"updatedAt\":"
		"\"u\",\"zzz\":null}";
	const char *want =
		"{\"version\":1,\"id\":\"u\",\"x-enterprise\":{\"tenant\":"
		"\"acme\",\"n\":[1,2.5]},\"format\":\"tree\",\"filesystem\":"
		"\"tree\",\"sizeBytes\":99,\"generation\":3,\"imageKey\":"
		"\"contexts/u/image/00000001-aaaaaaaa.img.enc\",\"treeKey\":"
		"\"contexts/u/tree/00000003-cccccccc.tree.tar.zst.enc\","
		"\"encryption\":{\"nonce\":\"n2\"},\"treeEncryption\":"
		"{\"nonce\":\"n2\"},\"runtimeState\":{\"provider\":\"vercel\","
		"\"mode\":\"provider-persistence\"},\"createdAt\":\"c\","
		"\"updatedAt\":\"2026-06-05T12:00:00.123Z\",\"zzz\":null,"
		"\"checkpointGeneration\":1,\"versions\":[{\"b\":1,\"generation\":"
		"3,\"files\":[]}],\"latestVersion\":{\"b\":1,\"generation\":3,"
		"\"files\":[]}}";
	struct cfs_manifest *m = parse_str(src, "u");
	cJSON *enc = enc_obj("n2"), *rec;
	char *out;

	if (!m) {
		TAP_OK(false, "parse manifest with unknown fields");
		return;
	}
	cJSON_DeleteItemFromObject(enc, "version");
	cJSON_DeleteItemFromObject(enc, "algorithm");
	cJSON_DeleteItemFromObject(enc, "keyDerivation");
	cJSON_DeleteItemFromObject(enc, "authTag");
	rec = cJSON_Parse("{\"b\":1,\"generation\":3}");
	TAP_EQ_INT(cfs_manifest_set_generation(m, 3), 0, "set generation");
	TAP_EQ_INT(cfs_manifest_set_size_bytes(m, 99), 0, "set size");
	TAP_EQ_INT(
		cfs_manifest_set_tree_key(
			m,
			"contexts/u/tree/00000003-cccccccc.tree.tar.zst.enc"),
		0, "set treeKey");
	TAP_EQ_INT(cfs_manifest_set_encryption(m, enc), 0, "set encryption");
	TAP_EQ_INT(cfs_manifest_set_updated_at(m, 1780660800123LL), 0,
		   "set updatedAt");
	TAP_EQ_INT(cfs_manifest_set_checkpoint_generation(m, 1), 0,
		   "set (new) checkpointGeneration");
	TAP_EQ_INT(cfs_manifest_add_version(m, rec, NULL, NULL, 0, NULL), 0,
		   "add version");
	out = cfs_json_print(cfs_manifest_json(m), 0);
	TAP_EQ_STR(out, want,
		   "unknown members kept in place, new members appended");
	free(out);
	TAP_EQ_INT(cfs_manifest_set_generation(m, (1ull << 53) + 2), CFS_EINVAL,
		   "generation beyond 2^53 refused");
	TAP_EQ_INT(cfs_manifest_set_tree_key(m, ""), CFS_EINVAL,
		   "empty treeKey refused");
	cJSON_Delete(rec);
	cJSON_Delete(enc);
	cfs_manifest_free(m);
}

static void test_legacy_normalization(void)
{
	struct cfs_manifest *m;
	char *out;

	m = parse_str("{\"version\":1,\"id\":\"old\",\"sizeBytes\":268435456,"
		      "\"generation\":3,\"encryption\":{\"nonce\":\"n\"},"
		      "\"createdAt\":\"c\",\"updatedAt\":\"u\"}",
		      "old");
	if (!m) {
		TAP_OK(false, "legacy manifest parses");
		return;
	}
	TAP_EQ_STR(cfs_manifest_format(m), "ext4", "missing format -> ext4");
	TAP_OK(!cfs_manifest_is_tree(m), "legacy is not tree");
	TAP_EQ_STR(cfs_manifest_tree_key(m),
		   "contexts/old/current.tree.tar.zst.enc",
		   "missing treeKey -> legacy key");
	TAP_EQ_STR(cfs_manifest_image_key(m), "contexts/old/current.img.enc",
		   "missing imageKey -> legacy key");
	TAP_OK(cfs_manifest_tree_encryption(m) == NULL,
	       "ext4: no treeEncryption default");
	TAP_EQ_STR(cfs_json_str(cfs_manifest_image_encryption(m), "nonce"), "n",
		   "ext4: imageEncryption defaults to encryption");
	TAP_EQ_INT(cfs_manifest_checkpoint_generation(m), 0,
		   "missing checkpointGeneration reads 0");
	out = cfs_json_print(cfs_manifest_json(m), 0);
	TAP_EQ_STR(out,
		   "{\"version\":1,\"id\":\"old\",\"sizeBytes\":268435456,"
		   "\"generation\":3,\"encryption\":{\"nonce\":\"n\"},"
		   "\"createdAt\":\"c\",\"updatedAt\":\"u\",\"format\":"
		   "\"ext4\",\"filesystem\":\"ext4\",\"imageKey\":"
		   "\"contexts/old/current.img.enc\",\"treeKey\":"
		   "\"contexts/old/current.tree.tar.zst.enc\","
		   "\"imageEncryption\":{\"nonce\":\"n\"}}",
		   "defaults appended for the next save");
	free(out);
	cfs_manifest_free(m);

	m = parse_str("{\"version\":1,\"id\":\"t\",\"format\":\"tree\","
		      "\"generation\":1,\"encryption\":{\"nonce\":\"q\"}}",
		      "t");
	TAP_OK(m && strcmp(cfs_json_str(cfs_manifest_tree_encryption(m),
					"nonce"),
			   "q") == 0,
	       "tree: missing treeEncryption -> encryption");
	TAP_OK(m && cfs_manifest_image_encryption(m) == NULL,
	       "tree: imageEncryption stays absent");
	TAP_EQ_STR(m ? cfs_json_str(cfs_manifest_json(m), "filesystem") : NULL,
		   "ext4", "missing filesystem -> ext4 (reference default)");
	cfs_manifest_free(m);
}

static void check_corrupt(const char *src, const char *id, const char *frag)
{
	struct cfs_manifest *m = NULL;
	int rc = cfs_manifest_parse(&m, src, strlen(src), id);

	TAP_OK(rc == CFS_ECORRUPT && !m &&
		       strstr(cfs_error_last(), frag) != NULL,
	       "corrupt (%s): %s", frag, cfs_error_last());
	cfs_manifest_free(m);
}

static void test_corrupt(void)
{
	check_corrupt("{\"id\":\"c\",", "c", "manifest for c is corrupt: ");
	check_corrupt("{\"id\":\"c\",", "c", "(at byte 9)");
	check_corrupt("{\"id\":\"c\",", "c",
		      "restore contexts/c/manifest.json");
	check_corrupt("[1,2]", "c", "not a JSON object");
	check_corrupt("{\"id\":\"d\",\"generation\":1}", "c",
		      "names context \"d\"");
	check_corrupt("{\"id\":\"../x\",\"generation\":1}", NULL,
		      "not a valid context id");
	check_corrupt("{\"id\":\"c\",\"generation\":\"2\"}", "c",
		      "\"generation\" is not a non-negative integer");
	check_corrupt("{\"id\":\"c\",\"generation\":-1}", "c",
		      "\"generation\" is not a non-negative integer");
	check_corrupt("{\"id\":\"c\",\"generation\":1.5}", "c",
		      "\"generation\" is not a non-negative integer");
	check_corrupt("{\"id\":\"c\"}", "c", "\"generation\" is missing");
	check_corrupt("{\"id\":\"c\",\"generation\":1,\"treeKey\":7}", "c",
		      "\"treeKey\" is not a non-empty string");
	check_corrupt("{\"id\":\"c\",\"generation\":1,\"encryption\":\"x\"}",
		      "c", "\"encryption\" is not an object");
	check_corrupt("{\"id\":\"c\",\"generation\":1,\"versions\":{}}", "c",
		      "\"versions\" is not an array");
	{
		struct cfs_manifest *m = NULL;

		TAP_EQ_INT(cfs_manifest_parse(&m, "{}",
					      CFS_MANIFEST_READ_MAX + 1, "c"),
			   CFS_ECORRUPT, "oversized manifest refused");
	}
}

static void test_versions_cap(void)
{
	struct cfs_manifest *m = parse_str(
		"{\"version\":1,\"id\":\"v\",\"format\":\"tree\",\"generation\":"
		"1,\"versions\":[],\"updatedAt\":\"u\"}",
		"v");
	cJSON *enc = enc_obj("nn"), *dropped = NULL, *all_dropped;
	const cJSON *versions, *first, *latest;
	int64_t g = 0;
	int i, rc = 0;
	char key[CFS_KEY_MAX];
	const char *tk = NULL;
	const cJSON *te = NULL;
	uint64_t size = 0;

	all_dropped = cJSON_CreateArray();
	for (i = 2; i <= 61 && !rc && m; i++) {
		char rec[256];
		cJSON *r;

		snprintf(rec, sizeof(rec),
			 "{\"author\":\"a\",\"changedPaths\":[],\"files\":"
			 "[{\"path\":\"workspace/x\"}],\"generation\":%d,"
			 "\"parentGeneration\":%d,\"version\":1}",
			 i, i - 1);
		r = cJSON_Parse(rec);
		cfs_key_tree(key, "v", (uint64_t)i, "0000abcd");
		rc = cfs_manifest_add_version(m, r, key, enc, (uint64_t)i * 10,
					      &dropped);
		while (dropped && cJSON_GetArraySize(dropped) > 0)
			cJSON_AddItemToArray(
				all_dropped,
				cJSON_DetachItemFromArray(dropped, 0));
		cJSON_Delete(dropped);
		dropped = NULL;
		cJSON_Delete(r);
	}
	TAP_EQ_INT(rc, 0, "60 versions added");
	if (!m)
		goto out;
	versions = cfs_manifest_versions(m);
	TAP_EQ_INT(cJSON_GetArraySize(versions), CFS_MANIFEST_VERSIONS_MAX,
		   "versions capped at 50");
	first = cJSON_GetArrayItem(versions, 0);
	TAP_OK(cfs_json_int(first, "generation", &g) && g == 12,
	       "oldest kept is generation 12 (got %lld)", (long long)g);
	TAP_EQ_INT(cJSON_GetArraySize(all_dropped), 10,
		   "ten summaries reported dropped");
	TAP_OK(cfs_json_int(cJSON_GetArrayItem(all_dropped, 0), "generation",
			    &g) &&
		       g == 2,
	       "first dropped is generation 2");
	latest = cfs_manifest_latest_version(m);
	TAP_OK(cfs_json_int(latest, "generation", &g) && g == 61,
	       "latestVersion is generation 61");
	TAP_OK(cJSON_GetArraySize(cJSON_GetObjectItem(latest, "files")) == 0,
	       "summary files emptied");
	TAP_EQ_STR(cJSON_GetArrayItem(latest, 2)->string, "files",
		   "files kept at its position (sorted-key record)");
	TAP_EQ_STR(cfs_json_str(latest, "treeKey"),
		   "contexts/v/tree/00000061-0000abcd.tree.tar.zst.enc",
		   "extension treeKey on the summary");
	TAP_OK(cfs_manifest_version_find(m, 30) != NULL, "find generation 30");
	TAP_OK(cfs_manifest_version_find(m, 5) == NULL,
	       "generation 5 fell off");
	TAP_EQ_INT(cfs_manifest_generation_lookup(m, 30, &tk, &te, &size),
		   CFS_ENOTFOUND, "generation above current is refused");
	cfs_manifest_set_generation(m, 61);
	TAP_EQ_INT(cfs_manifest_generation_lookup(m, 30, &tk, &te, &size), 0,
		   "retained generation resolvable through its summary");
	TAP_OK(tk && strstr(tk, "/00000030-") && te &&
		       strcmp(cfs_json_str(te, "nonce"), "nn") == 0 &&
		       size == 300,
	       "retained generation -> key, metadata, size");
	TAP_EQ_INT(cfs_manifest_generation_lookup(m, 5, &tk, &te, &size),
		   CFS_ENOTFOUND, "dropped generation not retained");
	TAP_EQ_INT(cfs_manifest_add_version(m, enc, NULL, NULL, 0, NULL),
		   CFS_EINVAL, "record without generation refused");
out:
	cJSON_Delete(all_dropped);
	cJSON_Delete(enc);
	cfs_manifest_free(m);
}

static void test_checkpoints(void)
{
	struct cfs_manifest *m = parse_str(
		"{\"version\":1,\"id\":\"k\",\"format\":\"tree\",\"generation\":"
		"2,\"checkpointGeneration\":0,\"treeKey\":"
		"\"contexts/k/tree/00000002-aaaaaaaa.tree.tar.zst.enc\","
		"\"encryption\":{\"nonce\":\"g2\"},\"treeEncryption\":"
		"{\"nonce\":\"g2\"}}",
		"k");
	cJSON *e1 = enc_obj("c1"), *e3 = enc_obj("g3"), *rec, *rec2;
	const char *key = NULL;
	const cJSON *enc = NULL;
	uint64_t size = 0;
	char ck[CFS_KEY_MAX];
	char *out;

	if (!m) {
		TAP_OK(false, "parse checkpoint manifest");
		goto out;
	}
	cfs_key_checkpoint(ck, "k", 1);
	rec = cfs_manifest_checkpoint_record_new(1, "periodic", 1780660800123LL,
						 ck, 555, e1);
	out = cfs_json_print(rec, 0);
	TAP_EQ_STR(
		out,
		"{\"version\":1,\"generation\":1,\"reason\":\"periodic\","
		"\"timestamp\":\"2026-06-05T12:00:00.123Z\",\"treeKey\":"
		"\"contexts/k/checkpoints/00000001.tree.tar.zst.enc\","
		"\"sizeBytes\":555,\"encryption\":{\"version\":1,"
		"\"algorithm\":\"aes-256-gcm\",\"keyDerivation\":\"raw\","
		"\"nonce\":\"c1\",\"authTag\":\"AAAAAAAAAAAAAAAAAAAAAA==\"}}",
		"checkpoint record in the reference's order + encryption");
	free(out);
	/* The engine's checkpoint commit. */
	cfs_manifest_set_tree_key(m, ck);
	cfs_manifest_set_encryption(m, e1);
	cfs_manifest_set_checkpoint_generation(m, 1);
	TAP_EQ_INT(cfs_manifest_add_checkpoint(m, rec), 0, "add checkpoint");
	TAP_EQ_INT(cJSON_GetArraySize(cfs_manifest_checkpoints(m)), 1,
		   "checkpoints array holds it");
	TAP_EQ_INT(cfs_manifest_checkpoint_lookup(m, 1, &key, &enc, &size), 0,
		   "checkpoint resolvable");
	/* Next save replaces treeKey and the metadata. */
	cfs_manifest_set_generation(m, 3);
	cfs_manifest_set_tree_key(
		m, "contexts/k/tree/00000003-bbbbbbbb.tree.tar.zst.enc");
	cfs_manifest_set_encryption(m, e3);
	key = NULL;
	enc = NULL;
	TAP_EQ_INT(cfs_manifest_checkpoint_lookup(m, 1, &key, &enc, &size), 0,
		   "checkpoint still resolvable after the next save");
	TAP_OK(key && strcmp(key, ck) == 0 && enc &&
		       strcmp(cfs_json_str(enc, "nonce"), "c1") == 0 &&
		       size == 555,
	       "checkpoint keeps its own metadata (extension)");
	/* Same generation again replaces, does not duplicate. */
	rec2 = cfs_manifest_checkpoint_record_new(1, "again", 0, ck, 7, e1);
	cfs_manifest_add_checkpoint(m, rec2);
	TAP_EQ_INT(cJSON_GetArraySize(cfs_manifest_checkpoints(m)), 1,
		   "re-adding a generation replaces its entry");
	TAP_EQ_INT(cfs_manifest_remove_checkpoint(m, 1), 0, "remove");
	TAP_EQ_INT(cJSON_GetArraySize(cfs_manifest_checkpoints(m)), 0,
		   "checkpoints array emptied");
	/* latestCheckpoint still carries encryption (extension). */
	TAP_EQ_INT(cfs_manifest_checkpoint_lookup(m, 1, &key, &enc, &size), 0,
		   "latestCheckpoint with encryption still resolves");
	TAP_EQ_INT(cfs_manifest_checkpoint_lookup(m, 2, &key, &enc, &size),
		   CFS_ENOTFOUND, "checkpoint 2 does not exist");
	TAP_OK(cfs_manifest_checkpoint_record_new(1, "x", 0, NULL, 0, NULL) ==
		       NULL,
	       "record needs a key");
	cJSON_Delete(rec);
	cJSON_Delete(rec2);
out:
	cJSON_Delete(e1);
	cJSON_Delete(e3);
	cfs_manifest_free(m);
}

static void test_dup_independent(void)
{
	struct cfs_manifest *m = parse_str(
		"{\"id\":\"d\",\"generation\":1,\"format\":\"tree\"}", "d");
	struct cfs_manifest *d = NULL;

	if (!m || cfs_manifest_dup(&d, m) != 0) {
		TAP_OK(false, "dup");
		cfs_manifest_free(m);
		return;
	}
	cfs_manifest_set_generation(d, 9);
	TAP_OK(cfs_manifest_generation(m) == 1 &&
		       cfs_manifest_generation(d) == 9,
	       "dup is a deep copy");
	cfs_manifest_free(m);
	cfs_manifest_free(d);
}

/* Summaries cap their changedPaths; fit trims the oldest until it fits. */
static void test_changed_paths_cap(void)
{
	struct cfs_manifest *m = parse_str(
		"{\"version\":1,\"id\":\"v\",\"format\":\"tree\",\"generation\":"
		"1,\"versions\":[],\"updatedAt\":\"u\"}",
		"v");
	const cJSON *versions, *v0, *v2;
	char *body;
	size_t before;
	int64_t total = 0;

	for (int g = 2; g <= 4 && m; g++) {
		cJSON *r = cJSON_Parse("{\"author\":\"a\",\"files\":[],"
				       "\"version\":1}");
		cJSON *cp = cJSON_AddArrayToObject(r, "changedPaths");

		cJSON_AddNumberToObject(r, "generation", g);
		for (int i = 0; i < 3000; i++) {
			char path[64];
			cJSON *c = cJSON_CreateObject();

			snprintf(path, sizeof(path), "workspace/g%d/f%05d", g,
				 i);
			cJSON_AddStringToObject(c, "path", path);
			cJSON_AddStringToObject(c, "type", "added");
			cJSON_AddItemToArray(cp, c);
		}
		TAP_EQ_INT(cfs_manifest_add_version(m, r, NULL, NULL, 0, NULL),
			   0, "add a version with 3000 changed paths");
		cJSON_Delete(r);
	}
	versions = cfs_manifest_versions(m);
	v0 = cJSON_GetArrayItem(versions, 0);
	TAP_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(v0, "changedPaths")),
		   CFS_MANIFEST_CHANGED_PATHS_MAX,
		   "a summary keeps the first 1000 changed paths");
	TAP_OK(cfs_json_int(v0, "changedPathsTotal", &total) && total == 3000,
	       "and records how many there were");
	body = cfs_manifest_print(m);
	before = strlen(body);
	free(body);
	TAP_EQ_INT(cfs_manifest_fit(m, before), 0, "fits as it is");
	TAP_EQ_INT(cfs_manifest_fit(m, before - 1000), 0,
		   "fit trims to a smaller limit");
	v0 = cJSON_GetArrayItem(versions, 0);
	v2 = cJSON_GetArrayItem(versions, 2);
	TAP_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(v0, "changedPaths")),
		   0, "the oldest summary lost its paths first");
	TAP_EQ_INT(cJSON_GetArraySize(cJSON_GetObjectItem(v2, "changedPaths")),
		   CFS_MANIFEST_CHANGED_PATHS_MAX, "the newest kept them");
	TAP_OK(cfs_json_int(v0, "changedPathsTotal", &total) && total == 3000,
	       "the trimmed summary still says how many there were");
	TAP_EQ_INT(cfs_manifest_fit(m, 100), CFS_EUNSUPPORTED,
		   "a limit nothing fits in is refused");
	cfs_manifest_free(m);
}

int main(void)
{
	cfs_init();
	test_fixture_roundtrip();
	test_fixture_accessors();
	test_create_matches_reference();
	test_unknown_fields_preserved();
	test_legacy_normalization();
	test_corrupt();
	test_versions_cap();
	test_changed_paths_cap();
	test_checkpoints();
	test_dup_independent();
	return tap_done();
}
