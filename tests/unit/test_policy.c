/*
 * Unit tests for core/policy.c: defaults, JSON resolution, python fnmatch
 * semantics and the reference's exclusion rules (REFERENCE.md §5.3, §16).
 */
#include "core/error.h"
#include "core/policy.h"
#include "core/util.h"
#include "tests/unit/tap.h"

#include <stdlib.h>
#include <string.h>

struct match_case {
	const char *pattern;
	const char *name;
	bool expect;
};

static void test_fnmatch(void)
{
	static const struct match_case cases[] = {
		{"*", "a/b/c", true}, /* python: '*' also matches '/' */
		{"a*b", "a/x/b", true},
		{"a*b", "a/x/bc", false},
		{"", "", true},
		{"", "a", false},
		{"a", "", false},
		{"**", "", true},
		{"?", "/", true},
		{"file?.txt", "file1.txt", true},
		{"file?.txt", "file12.txt", false},
		{"file?.txt", "file\xc3\xa9.txt", true}, /* one character */
		{"[a-c]x", "bx", true},
		{"[a-c]x", "dx", false},
		{"[!a]*.md", "b.md", true},
		{"[!a]*.md", "a.md", false},
		{"[]]", "]", true},
		{"[!]]", "a", true},
		{"[!]]", "]", false},
		{"[abc", "[abc", true}, /* unclosed class is literal */
		{"[!]", "[!]", true},
		{"[z-a]", "m", false}, /* empty range never matches */
		{"[a-]", "-", true},
		{"*.log", "logs/a.log", true},
		{"*.log", "logs/a.txt", false},
		{"**/dist/**", "workspace/app/dist/y", true},
		{"**/dist/**", "dist/x", false},
		{"a*a*a*a*b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac",
		 false},
		{"\\*", "\\x", true}, /* backslash is not an escape */
	};

	for (size_t i = 0; i < CFS_ARRAY_SIZE(cases); i++) {
		bool got = cfs_fnmatch(cases[i].pattern, cases[i].name);
		TAP_OK(got == cases[i].expect, "fnmatch(\"%s\", \"%s\") = %s",
		       cases[i].name, cases[i].pattern,
		       cases[i].expect ? "true" : "false");
	}
}

static void test_defaults(void)
{
	struct cfs_policy p = {0};
	static const char *const roots[] = {"workspace", "memory", "artifacts",
					    "logs", "config"};
	static const char *const excl[] = {
		"**/node_modules/**", "**/.pnpm-store/**", "**/.npm/**",
		"**/.yarn/cache/**",  "**/.next/**",	   "**/dist/**",
		"**/build/**",	      "**/.venv/**",	   "**/__pycache__/**"};
	bool same = true;

	TAP_EQ_INT(cfs_policy_default(&p), 0, "default policy");
	TAP_EQ_INT(p.nroots, 5, "five default roots");
	TAP_EQ_INT(p.nexclude, 9, "nine default excludes");
	for (size_t i = 0; i < 5 && i < p.nroots; i++)
		same = same && strcmp(p.roots[i], roots[i]) == 0;
	for (size_t i = 0; i < 9 && i < p.nexclude; i++)
		same = same && strcmp(p.exclude[i], excl[i]) == 0;
	TAP_OK(same, "default roots and excludes exactly as the reference");
	for (size_t i = 0; i < p.nroots; i++)
		TAP_OK(strcmp(p.roots[i], "cache") != 0,
		       "cache is not a default root (%s)", p.roots[i]);
	cfs_policy_free(&p);
	cfs_policy_free(&p); /* idempotent */

	TAP_EQ_INT(CFS_LAYOUT_COUNT, 6, "six layout names");
	TAP_EQ_STR(cfs_layout[4], "cache", "layout has cache at index 4");
	TAP_OK(cfs_layout_has("config") && !cfs_layout_has(".contextsdk"),
	       "cfs_layout_has");
}

struct excl_case {
	const char *path;
	bool expect;
};

static void test_default_exclusions(void)
{
	struct cfs_policy p = {0};
	static const struct excl_case cases[] = {
		{"workspace/node_modules/x/index.js", true},
		{"workspace/node_modules", true},
		{"workspace/app/node_modules/left-pad/index.js", true},
		{"workspace/.next/server.js", true},
		{"workspace/app/dist", true},
		{"workspace/app/dist/y", true},
		{"artifacts/build/node_modules", true},
		{"artifacts/build", true},
		{"memory/.venv", true},
		{"memory/.venv/bin/python", true},
		{"workspace/pkg/__pycache__/m.pyc", true},
		{"workspace/.yarn/cache/x.zip", true},
		{"workspace/.pnpm-store/v3", true},
		{"workspace/.npm/_cacache", true},
		{"workspace\\node_modules\\x", true}, /* backslashes -> '/' */
		{"workspace/app.txt", false},
		{"workspace/task.txt", false},
		{"workspace/distance.txt", false},
		{"workspace/.yarn/x", false},
		{"workspace/builder/x", false},
		{"dist/x", false}, /* no root prefix: not matched */
		{"workspace", false},
		{"contextsdk.json", false},
		{".contextsdk/index.json", false},
	};

	cfs_policy_default(&p);
	for (size_t i = 0; i < CFS_ARRAY_SIZE(cases); i++)
		TAP_OK(cfs_policy_excluded(&p, cases[i].path) ==
			       cases[i].expect,
		       "default policy: %s %s", cases[i].path,
		       cases[i].expect ? "excluded" : "kept");
	TAP_OK(cfs_policy_prunes(&p, "workspace/node_modules"),
	       "node_modules dir can be pruned");
	TAP_OK(!cfs_policy_prunes(&p, "workspace/app"),
	       "ordinary dir is not pruned");
	cfs_policy_free(&p);
}

static void test_custom_exclusions(void)
{
	char *roots[] = {"workspace"};
	char *excl[] = {"workspace/tmp/**", "logs", "*/secret", "*.log"};
	struct cfs_policy p = {roots, 1, excl, 4};
	static const struct excl_case cases[] = {
		{"workspace/tmp", true}, /* trimmed form */
		{"workspace/tmp/a/b", true}, /* fnmatch and prefix */
		{"workspace/tmpx", false},
		{"logs", true}, /* exact */
		{"logs/session.txt", true}, /* prefix rule */
		{"logsx/a", false},
		{"workspace/secret", true},
		{"workspace/secret/key", false}, /* wildcard without globstar */
		{"workspace/a/b.log", true},
		{"workspace/a/b.txt", false},
	};

	for (size_t i = 0; i < CFS_ARRAY_SIZE(cases); i++)
		TAP_OK(cfs_policy_excluded(&p, cases[i].path) ==
			       cases[i].expect,
		       "custom policy: %s %s", cases[i].path,
		       cases[i].expect ? "excluded" : "kept");
	TAP_OK(cfs_policy_prunes(&p, "workspace/tmp"), "prune by /** pattern");
	TAP_OK(cfs_policy_prunes(&p, "logs"), "prune by literal pattern");
	TAP_OK(!cfs_policy_prunes(&p, "workspace/secret"),
	       "no prune by wildcard pattern without /**");
}

/*
 * Patterns whose literal characters sit inside classes or across
 * wildcards: the quick rejection (a path without the pattern's longest
 * literal run cannot match) must never reject what fnmatch accepts.
 */
static void test_literal_run_rejection(void)
{
	char *roots[] = {"workspace"};
	char *excl[] = {"*.[ch]",     "**/[!x]uild/**", "a?cd/**",
			"**/[]]x/**", "**/q[rs/**",	"deep//"};
	struct cfs_policy p = {roots, 1, excl, 6};
	static const struct excl_case cases[] = {
		{"src/x.c", true}, /* "ch" is a class, not a run */
		{"src/x.h", true},
		{"src/x.o", false},
		{"w/build/o", true}, /* "uild" after a class */
		{"w/xuild/o", false},
		{"abcd/e", true}, /* run "cd" after '?' */
		{"abd/e", false},
		{"w/]x/y", true}, /* "]" first in a class */
		{"w/q[rs/t", true}, /* unclosed '[' is literal */
		{"w/qr/t", false},
		{"deep/x", true}, /* prefix rule, trailing '/'s */
		{"deeper/x", false},
	};

	for (size_t i = 0; i < CFS_ARRAY_SIZE(cases); i++)
		TAP_OK(cfs_policy_excluded(&p, cases[i].path) ==
			       cases[i].expect,
		       "literal runs: %s %s", cases[i].path,
		       cases[i].expect ? "excluded" : "kept");
}

static cJSON *parse(const char *s)
{
	return cJSON_Parse(s);
}

static void test_json(void)
{
	struct cfs_policy p = {0};
	cJSON *j;
	char *s;

	TAP_EQ_INT(cfs_policy_from_json(&p, NULL), 0, "NULL -> defaults");
	TAP_EQ_INT(p.nroots, 5, "defaults from NULL");
	cfs_policy_free(&p);

	j = parse("{\"roots\": [], \"exclude\": []}");
	TAP_EQ_INT(cfs_policy_from_json(&p, j), 0, "empty arrays");
	TAP_OK(p.nroots == 5 && p.nexclude == 9,
	       "empty arrays mean defaults (excludes cannot be disabled)");
	cfs_policy_free(&p);
	cJSON_Delete(j);

	j = parse("{\"roots\": [\"workspace\", \"cache\"]}");
	TAP_EQ_INT(cfs_policy_from_json(&p, j), 0, "roots only");
	TAP_OK(p.nroots == 2 && strcmp(p.roots[1], "cache") == 0 &&
		       p.nexclude == 9,
	       "non-empty roots replace the defaults, excludes default");
	s = cJSON_PrintUnformatted(
		j = (cJSON_Delete(j), cfs_policy_to_json(&p)));
	TAP_EQ_STR(s,
		   "{\"roots\":[\"workspace\",\"cache\"],\"exclude\":[\"**/"
		   "node_modules/**\",\"**/.pnpm-store/**\",\"**/.npm/**\","
		   "\"**/.yarn/cache/**\",\"**/.next/**\",\"**/dist/**\","
		   "\"**/build/**\",\"**/.venv/**\",\"**/__pycache__/**\"]}",
		   "compact policy JSON as the reference passes it");
	free(s);
	cJSON_Delete(j);
	cfs_policy_free(&p);

	j = parse("{\"roots\": [\"../etc\"]}");
	TAP_EQ_INT(cfs_policy_from_json(&p, j), CFS_EUNSAFE, "../etc root");
	TAP_OK(strstr(cfs_error_last(), "../etc") != NULL,
	       "message names the root: %s", cfs_error_last());
	cJSON_Delete(j);
	j = parse("{\"roots\": [\"/abs\"]}");
	TAP_EQ_INT(cfs_policy_from_json(&p, j), CFS_EUNSAFE, "absolute root");
	cJSON_Delete(j);
	j = parse("{\"roots\": [1]}");
	TAP_EQ_INT(cfs_policy_from_json(&p, j), CFS_ECORRUPT,
		   "non-string root");
	cJSON_Delete(j);
	j = parse("{\"exclude\": \"*.log\"}");
	TAP_EQ_INT(cfs_policy_from_json(&p, j), CFS_ECORRUPT,
		   "exclude not an array");
	cJSON_Delete(j);
	j = parse("[1]");
	TAP_EQ_INT(cfs_policy_from_json(&p, j), CFS_ECORRUPT,
		   "policy not an object");
	cJSON_Delete(j);
}

static void test_unsafe(void)
{
	static const struct excl_case cases[] = {
		{"../x", true},
		{"/etc/x", true},
		{"workspace/..", true},
		{"workspace/../x", true},
		{"a\\..\\b", true},
		{"\\abs", true},
		{"..", true},
		{"workspace/a -> b.txt", false},
		{"workspace/..x", false},
		{"workspace/x..", false},
		{"./workspace", false},
		{"", false},
	};

	for (size_t i = 0; i < CFS_ARRAY_SIZE(cases); i++)
		TAP_OK(cfs_path_unsafe(cases[i].path, strlen(cases[i].path)) ==
			       cases[i].expect,
		       "unsafe(\"%s\") = %d", cases[i].path, cases[i].expect);
	TAP_OK(cfs_path_unsafe("a\0b", 3), "NUL inside a name is unsafe");
}

int main(void);
int main(void)
{
	cfs_init();
	test_fnmatch();
	test_defaults();
	test_default_exclusions();
	test_custom_exclusions();
	test_literal_run_rejection();
	test_json();
	test_unsafe();
	return tap_done();
}
