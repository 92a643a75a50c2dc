/*
 * Context ids (§2.1), object keys (§2.2), GC eligibility, context paths
 * (§5.4) and refs.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/ids.h"
#include "core/util.h"
#include "tests/unit/tap.h"

int main(void);

static void test_valid(void)
{
	static const char *const good[] = {
		"a",  "0",  "agent-123", "A.b_c-d",	 "a..",
		"a.", "x-", "9..",	 "interop-pass",
	};
	static const char *const bad[] = {
		"",    "../evil", "a/b", "..",	      ".",   "-a",  "_a",  ".a",
		"a b", "a\\b",	  "é",	 "a\xc3\xa9", "a\n", "a:b", "a@1",
	};
	char id200[201], id201[202];
	size_t i;

	for (i = 0; i < CFS_ARRAY_SIZE(good); i++)
		TAP_OK(cfs_id_valid(good[i]), "valid id \"%s\"", good[i]);
	for (i = 0; i < CFS_ARRAY_SIZE(bad); i++)
		TAP_OK(!cfs_id_valid(bad[i]), "invalid id #%zu", i);
	TAP_OK(!cfs_id_valid(NULL), "NULL id invalid");
	memset(id200, 'a', 200);
	id200[200] = '\0';
	memset(id201, 'b', 201);
	id201[201] = '\0';
	TAP_OK(cfs_id_valid(id200), "200 chars valid");
	TAP_OK(!cfs_id_valid(id201), "201 chars invalid");

	TAP_EQ_INT(cfs_id_check("ok-id"), 0, "check passes a valid id");
	TAP_EQ_INT(cfs_id_check("../evil"), CFS_EINVAL, "check ../evil");
	TAP_EQ_STR(
		cfs_error_last(),
		"invalid context id: \"../evil\" \xe2\x80\x94 ids must start "
		"with a letter or digit and use only letters, digits, "
		"\".\", \"_\", \"-\" (max 200 chars)",
		"reference message");
	cfs_id_check("a\"b\n");
	TAP_OK(strstr(cfs_error_last(), "\"a\\\"b\\n\"") != NULL,
	       "id echoed JSON-escaped: %s", cfs_error_last());
	cfs_id_check(id201);
	TAP_OK(strlen(cfs_error_last()) < 450, "long id echo is capped");
}

static void test_sanitize(void)
{
	char *s = NULL;

	TAP_EQ_INT(cfs_id_sanitize(&s, "user/context"), 0, "sanitize ok");
	TAP_EQ_STR(s, "user-context", "slash replaced");
	free(s);
	TAP_EQ_INT(cfs_id_sanitize(&s, "a b\xc3\xa9z"), 0, "sanitize utf-8");
	TAP_EQ_STR(s, "a-b-z", "one dash per character");
	free(s);
	TAP_EQ_INT(cfs_id_sanitize(&s, ""), CFS_EINVAL, "empty refused");
	TAP_EQ_STR(cfs_error_last(),
		   "context id must contain at least one portable character",
		   "sanitize message");
	TAP_OK(s == NULL, "no output on failure");
}

static void test_keys(void)
{
	char k[CFS_KEY_MAX], big[CFS_ID_MAX + 1];
	char attempt[CFS_ATTEMPT_LEN + 1];
	uint64_t g = 0;

	cfs_key_manifest(k, "agent-123");
	TAP_EQ_STR(k, "contexts/agent-123/manifest.json", "manifest key");
	cfs_key_lock(k, "agent-123");
	TAP_EQ_STR(k, "contexts/agent-123/lock.json", "lock key");
	cfs_key_tree_prefix(k, "agent-123");
	TAP_EQ_STR(k, "contexts/agent-123/tree/", "tree prefix");
	cfs_key_image_prefix(k, "agent-123");
	TAP_EQ_STR(k, "contexts/agent-123/image/", "image prefix");
	cfs_key_checkpoints(k, "agent-123");
	TAP_EQ_STR(k, "contexts/agent-123/checkpoints", "checkpoints (no /)");
	cfs_key_checkpoint_prefix(k, "agent-123");
	TAP_EQ_STR(k, "contexts/agent-123/checkpoints/", "checkpoint prefix");
	cfs_key_context_prefix(k, "agent-123");
	TAP_EQ_STR(k, "contexts/agent-123/", "context prefix");
	cfs_key_tree(k, "a", 1, "9f3a61c2");
	TAP_EQ_STR(k, "contexts/a/tree/00000001-9f3a61c2.tree.tar.zst.enc",
		   "tree key gen 1");
	cfs_key_tree(k, "a", 123456789, "00ff00ff");
	TAP_EQ_STR(k, "contexts/a/tree/123456789-00ff00ff.tree.tar.zst.enc",
		   "tree key gen 123456789 (no truncation)");
	cfs_key_image(k, "a", 1, "9f3a61c2");
	TAP_EQ_STR(k, "contexts/a/image/00000001-9f3a61c2.img.enc",
		   "image key");
	cfs_key_checkpoint(k, "a", 7);
	TAP_EQ_STR(k, "contexts/a/checkpoints/00000007.tree.tar.zst.enc",
		   "checkpoint key");
	cfs_key_legacy_tree(k, "a");
	TAP_EQ_STR(k, "contexts/a/current.tree.tar.zst.enc", "legacy tree");
	cfs_key_legacy_image(k, "a");
	TAP_EQ_STR(k, "contexts/a/current.img.enc", "legacy image");

	TAP_EQ_INT(cfs_key_manifest(k, "../evil"), CFS_EINVAL,
		   "key of invalid id refused");
	TAP_EQ_STR(k, "", "no key left behind");
	TAP_EQ_INT(cfs_key_tree(k, "a", 1, "XYZ"), CFS_EINVAL,
		   "bad attempt refused");
	TAP_EQ_INT(cfs_key_tree(k, "a", 1, "9F3A61C2"), CFS_EINVAL,
		   "uppercase attempt refused");
	TAP_EQ_INT(cfs_key_tree(k, "a", 1, "9f3a61c2a"), CFS_EINVAL,
		   "9-char attempt refused");
	memset(big, 'z', CFS_ID_MAX);
	big[CFS_ID_MAX] = '\0';
	TAP_EQ_INT(cfs_key_tree(k, big, UINT64_MAX, "01234567"), 0,
		   "longest id and generation fit CFS_KEY_MAX");

	cfs_attempt_new(attempt);
	TAP_OK(strlen(attempt) == 8 && strspn(attempt, "0123456789abcdef") == 8,
	       "attempt is 8 lowercase hex: %s", attempt);
	TAP_EQ_INT(cfs_key_tree(k, "a", 2, attempt), 0, "fresh attempt usable");

	TAP_OK(cfs_key_parse_generation(
		       "a",
		       "contexts/a/tree/00000012-ab12cd34.tree.tar.zst.enc",
		       &g) &&
		       g == 12,
	       "parse generation from tree key");
	TAP_OK(cfs_key_parse_generation(
		       "a", "contexts/a/image/123456789-ab12cd34.img.enc",
		       &g) &&
		       g == 123456789,
	       "parse generation from image key");
	TAP_OK(!cfs_key_parse_generation(
		       "a",
		       "contexts/b/tree/00000012-ab12cd34.tree.tar.zst.enc",
		       &g),
	       "other context's key");
	TAP_OK(!cfs_key_parse_generation(
		       "a", "contexts/a/tree/00000012-ab12cd34.img.enc", &g),
	       "wrong suffix");
	TAP_OK(!cfs_key_parse_generation(
		       "a", "contexts/a/tree/12-ab12cd34.tree.tar.zst.enc", &g),
	       "short generation");
	TAP_OK(!cfs_key_parse_generation(
		       "a", "contexts/a/checkpoints/00000001.tree.tar.zst.enc",
		       &g),
	       "checkpoint key has no generation");
}

static void test_replaceable(void)
{
	TAP_OK(cfs_key_replaceable(
		       "a",
		       "contexts/a/tree/00000001-9f3a61c2.tree.tar.zst.enc"),
	       "tree object replaceable");
	TAP_OK(cfs_key_replaceable("a", "contexts/a/image/x"),
	       "image object replaceable");
	TAP_OK(cfs_key_replaceable("a", "contexts/a/current.tree.tar.zst.enc"),
	       "legacy tree replaceable");
	TAP_OK(cfs_key_replaceable("a", "contexts/a/current.img.enc"),
	       "legacy image replaceable");
	TAP_OK(!cfs_key_replaceable(
		       "a", "contexts/a/checkpoints/00000001.tree.tar.zst.enc"),
	       "checkpoint not replaceable");
	TAP_OK(!cfs_key_replaceable("a", "contexts/a/manifest.json"),
	       "manifest not replaceable");
	TAP_OK(!cfs_key_replaceable("a", "contexts/a/lock.json"),
	       "lock not replaceable");
	TAP_OK(!cfs_key_replaceable("a", "contexts/ab/tree/x"),
	       "prefix of another id not replaceable");
	TAP_OK(!cfs_key_replaceable("a", "contexts/b/tree/x"),
	       "other context not replaceable");
	TAP_OK(!cfs_key_replaceable("a", "contexts/a/current.img.enc.bak"),
	       "legacy name must match exactly");
	TAP_OK(!cfs_key_replaceable("..", "contexts/../tree/x"),
	       "invalid id never replaceable");
	TAP_OK(!cfs_key_replaceable("a", NULL), "NULL key");
}

static void check_path(const char *in, const char *want)
{
	char *out = NULL;
	int rc = cfs_context_path_normalize(&out, in);

	TAP_OK(rc == 0 && out && strcmp(out, want) == 0,
	       "path \"%s\" -> \"%s\" (got \"%s\")", in ? in : "(null)", want,
	       out ? out : "(error)");
	free(out);
}

static void check_path_err(const char *in, const char *msg)
{
	char *out = NULL;
	int rc = cfs_context_path_normalize(&out, in);

	TAP_OK(rc == CFS_EINVAL && !out && strcmp(cfs_error_last(), msg) == 0,
	       "path \"%s\" rejected: %s", in, cfs_error_last());
	free(out);
}

static void test_paths(void)
{
	const char *roots = "path must be under one of: workspace, memory, "
			    "artifacts, logs, cache, config, .contextsdk";

	check_path(NULL, "workspace");
	check_path("", "workspace");
	check_path("///", "workspace");
	check_path("workspace", "workspace");
	check_path("/workspace//a.txt", "workspace/a.txt");
	check_path("memory/x/", "memory/x");
	check_path(".contextsdk/index.json", ".contextsdk/index.json");
	check_path("cache/a..b", "cache/a..b");
	check_path_err("workspace/../etc",
		       "invalid context path: workspace/../etc");
	check_path_err("./workspace", "invalid context path: ./workspace");
	check_path_err("etc/passwd", roots);
	check_path_err("workspacex/a", roots);
	check_path_err("contextsdk.json", roots);
}

static void test_refs(void)
{
	struct cfs_ref r;

	TAP_EQ_INT(cfs_ref_parse(&r, "agent-1"), 0, "plain ref");
	TAP_OK(r.kind == CFS_REF_LATEST && strcmp(r.id, "agent-1") == 0 &&
		       r.number == 0,
	       "plain ref is latest");
	TAP_EQ_INT(cfs_ref_parse(&r, "agent-1@12"), 0, "generation ref");
	TAP_OK(r.kind == CFS_REF_GENERATION && r.number == 12 &&
		       strcmp(r.id, "agent-1") == 0,
	       "generation 12");
	TAP_EQ_INT(cfs_ref_parse(&r, "a@checkpoint:3"), 0, "checkpoint ref");
	TAP_OK(r.kind == CFS_REF_CHECKPOINT && r.number == 3 &&
		       strcmp(r.id, "a") == 0,
	       "checkpoint 3");
	TAP_EQ_INT(cfs_ref_parse(&r, "a@0"), CFS_EINVAL, "generation 0");
	TAP_EQ_INT(cfs_ref_parse(&r, "a@"), CFS_EINVAL, "empty generation");
	TAP_EQ_INT(cfs_ref_parse(&r, "a@-1"), CFS_EINVAL, "negative");
	TAP_EQ_INT(cfs_ref_parse(&r, "a@1x"), CFS_EINVAL, "trailing junk");
	TAP_EQ_INT(cfs_ref_parse(&r, "a@checkpoint:"), CFS_EINVAL,
		   "empty checkpoint");
	TAP_EQ_INT(cfs_ref_parse(&r, "a@99999999999999999999999"), CFS_EINVAL,
		   "overflowing generation");
	TAP_EQ_INT(cfs_ref_parse(&r, "../evil@1"), CFS_EINVAL, "bad id in ref");
	TAP_OK(strstr(cfs_error_last(), "invalid context id") != NULL,
	       "bad id message: %s", cfs_error_last());
	TAP_EQ_INT(cfs_ref_parse(&r, "@1"), CFS_EINVAL, "empty id in ref");
	{
		char longref[260];

		memset(longref, 'a', 250);
		memcpy(longref + 250, "@1", 3);
		TAP_EQ_INT(cfs_ref_parse(&r, longref), CFS_EINVAL,
			   "overlong id in ref");
		TAP_OK(strstr(cfs_error_last(), "invalid context id") != NULL,
		       "overlong id message");
	}
}

int main(void)
{
	cfs_init();
	test_valid();
	test_sanitize();
	test_keys();
	test_replaceable();
	test_paths();
	test_refs();
	return tap_done();
}
