/*
 * JSON printer and parser: byte-exact against manifests the reference
 * wrote (JSON.stringify(m, null, 2)) and against node/python outputs
 * recorded by hand; parser errors, caps and JSON.parse duplicate-key
 * semantics; getters and order-keeping setters.
 */
#include <fcntl.h>
#include <glob.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/json.h"
#include "core/util.h"
#include "tests/unit/tap.h"

int main(void);

static void check_print(const char *json, int flags, const char *want,
			const char *name)
{
	cJSON *doc = cfs_json_parse(json, strlen(json), "test");
	char *got = doc ? cfs_json_print(doc, flags) : NULL;

	TAP_EQ_STR(got, want, name);
	free(got);
	cJSON_Delete(doc);
}

static void check_number(double x, int flags, const char *want)
{
	cJSON *n = cJSON_CreateNumber(x);
	char *got = cfs_json_print(n, flags);
	char name[96];

	snprintf(name, sizeof(name), "%s number %.17g -> %s",
		 (flags & CFS_JSON_ASCII) ? "python" : "js", x, want);
	TAP_EQ_STR(got, want, name);
	free(got);
	cJSON_Delete(n);
}

static void test_fixture_roundtrip(void)
{
	const char *fx = getenv("CFS_FIXTURES");
	char pattern[1024];
	glob_t g;
	size_t i, n = 0;
	int rc;

	if (!fx) {
		tap_skip("CFS_FIXTURES not set");
		return;
	}
	snprintf(pattern, sizeof(pattern),
		 "%s/contextsdk-0.4/*/store/contexts/*/manifest.json", fx);
	memset(&g, 0, sizeof(g));
	rc = glob(pattern, 0, NULL, &g);
	snprintf(pattern, sizeof(pattern),
		 "%s/contextsdk-0.4/*/manifest-at-checkpoint.json", fx);
	if (rc == 0)
		glob(pattern, GLOB_APPEND, NULL, &g);
	TAP_OK(rc == 0 && g.gl_pathc >= 3, "found %zu fixture manifests",
	       (size_t)g.gl_pathc);
	for (i = 0; i < g.gl_pathc; i++) {
		char *buf = NULL, *out = NULL;
		size_t len = 0;
		cJSON *doc;

		if (cfs_read_file_at(&buf, &len, AT_FDCWD, g.gl_pathv[i],
				     1 << 20) != 0) {
			TAP_OK(false, "read %s", g.gl_pathv[i]);
			continue;
		}
		doc = cfs_json_parse(buf, len, "fixture");
		out = doc ? cfs_json_print(doc, CFS_JSON_PRETTY) : NULL;
		TAP_OK(out && strlen(out) == len && memcmp(out, buf, len) == 0,
		       "parse+print reproduces %s byte for byte",
		       g.gl_pathv[i]);
		n++;
		free(out);
		free(buf);
		cJSON_Delete(doc);
	}
	TAP_OK(n >= 3, "round-tripped %zu fixture manifests", n);
	globfree(&g);
}

static void test_numbers(void)
{
	/* node: JSON.stringify([...]) */
	check_number(0, 0, "0");
	check_number(-0.0, 0, "0");
	check_number(1.5, 0, "1.5");
	check_number(1e21, 0, "1e+21");
	check_number(1e-7, 0, "1e-7");
	check_number(123456789012.0, 0, "123456789012");
	check_number(0.1, 0, "0.1");
	check_number(1.0 / 3.0, 0, "0.3333333333333333");
	check_number(5e-324, 0, "5e-324");
	check_number(1.7976931348623157e308, 0, "1.7976931348623157e+308");
	check_number(0.000001, 0, "0.000001");
	check_number(1e20, 0, "100000000000000000000");
	check_number(123e-20, 0, "1.23e-18");
	check_number(-2.5e-8, 0, "-2.5e-8");
	check_number(4294967296.0, 0, "4294967296");
	check_number(9007199254740993.0, 0, "9007199254740992");
	check_number(0.1 + 0.2, 0, "0.30000000000000004");
	check_number(12345.678, 0, "12345.678");
	check_number(-7, 0, "-7");
	check_number(NAN, 0, "null");
	check_number(INFINITY, 0, "null");
	/* python: json.dumps([...]) (integral values are python ints) */
	check_number(1.5, CFS_JSON_ASCII, "1.5");
	check_number(0.0001, CFS_JSON_ASCII, "0.0001");
	check_number(0.00001, CFS_JSON_ASCII, "1e-05");
	check_number(1e22, CFS_JSON_ASCII, "1e+22");
	check_number(0.1 + 0.2, CFS_JSON_ASCII, "0.30000000000000004");
	check_number(1e-7, CFS_JSON_ASCII, "1e-07");
	check_number(123.456, CFS_JSON_ASCII, "123.456");
	check_number(2.5e-8, CFS_JSON_ASCII, "2.5e-08");
	check_number(12345.678, CFS_JSON_ASCII, "12345.678");
	check_number(1234567890123.0, CFS_JSON_ASCII, "1234567890123");
	check_number(1.25e17 + 0.5e17, CFS_JSON_ASCII, "175000000000000000");
}

static void test_strings(void)
{
	/* The same string, as JSON input. */
	const char *in = "{\"s\":\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\\u001f"
			 "\\u007f \xc3\xa9 \xf0\x9f\x98\x80 \xe2\x80\xa8\"}";

	/* node: JSON.stringify (0x7f and non-ASCII raw) */
	check_print(in, 0,
		    "{\"s\":\"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\\u001f"
		    "\x7f \xc3\xa9 \xf0\x9f\x98\x80 \xe2\x80\xa8\"}",
		    "JSON.stringify string escaping");
	/* python: json.dumps (ensure_ascii) */
	check_print(in, CFS_JSON_ASCII,
		    "{\"s\": \"a\\\"b\\\\c\\b\\f\\n\\r\\t\\u0001\\u001f"
		    "\\u007f \\u00e9 \\ud83d\\ude00 \\u2028\"}",
		    "python ensure_ascii escaping with surrogate pairs");
	check_print("[\"\\u0000x\"]", 0, "[\"\"]",
		    "embedded NUL ends the C string");
	/* python: json.dumps(os.fsdecode(b"a\xff\xed\xa0\x80")) */
	check_print("[\"a\xff\xed\xa0\x80\"]", CFS_JSON_ASCII,
		    "[\"a\\udcff\\udced\\udca0\\udc80\"]",
		    "invalid UTF-8 bytes escaped like surrogateescape");
	check_print("[\"a\xff\"]", 0, "[\"a\xff\"]",
		    "JSON.stringify personality passes bytes through");
	check_print("{\"k\\n\\u00e9\":1}", CFS_JSON_ASCII,
		    "{\"k\\n\\u00e9\": 1}", "keys are escaped like strings");
}

static void test_layout(void)
{
	check_print("{\"a\":[],\"b\":{},\"c\":[1,{\"d\":null}],\"e\":true}",
		    CFS_JSON_PRETTY,
		    "{\n  \"a\": [],\n  \"b\": {},\n  \"c\": [\n    1,\n    {\n"
		    "      \"d\": null\n    }\n  ],\n  \"e\": true\n}",
		    "JSON.stringify(x, null, 2) layout");
	check_print(
		"{\"b\":1,\"a\":{\"z\":1,\"y\":[]}}",
		CFS_JSON_PRETTY | CFS_JSON_SORT_KEYS | CFS_JSON_NEWLINE |
			CFS_JSON_ASCII,
		"{\n  \"a\": {\n    \"y\": [],\n    \"z\": 1\n  },\n  \"b\": "
		"1\n}\n",
		"python sort_keys indent=2 + newline");
	check_print("{\"b\":[1,2],\"a\":\"x\",\"c\":false}", 0,
		    "{\"b\":[1,2],\"a\":\"x\",\"c\":false}",
		    "compact JSON.stringify keeps member order");
	check_print("{\"b\":[1,2],\"a\":\"x\"}",
		    CFS_JSON_SORT_KEYS | CFS_JSON_ASCII,
		    "{\"a\": \"x\", \"b\": [1, 2]}",
		    "python one-line separators");
	check_print("{\"\xc3\xa9\":1,\"z\":2,\"Z\":3,\"a\":4}",
		    CFS_JSON_SORT_KEYS,
		    "{\"Z\":3,\"a\":4,\"z\":2,\"\xc3\xa9\":1}",
		    "sort_keys in code point order");
	check_print("[]", CFS_JSON_PRETTY, "[]", "top-level empty array");
	check_print("\"x\"", CFS_JSON_PRETTY | CFS_JSON_NEWLINE, "\"x\"\n",
		    "scalar with newline");
}

static void test_parse_errors(void)
{
	cJSON *doc;
	char *deep;
	size_t i;

	doc = cfs_json_parse("{\"a\": tru}", 10, "manifest");
	TAP_OK(!doc && cfs_error_last_code() == CFS_ECORRUPT,
	       "invalid JSON -> CFS_ECORRUPT");
	TAP_OK(strstr(cfs_error_last(), "manifest is not valid JSON (at byte"),
	       "message names the input and the offset: %s", cfs_error_last());
	doc = cfs_json_parse("{} x", 4, "lock");
	TAP_OK(!doc && strstr(cfs_error_last(), "(at byte 3)"),
	       "trailing garbage rejected at its offset: %s", cfs_error_last());
	doc = cfs_json_parse("{} \n", 4, "lock");
	TAP_OK(doc != NULL, "trailing whitespace accepted");
	cJSON_Delete(doc);
	doc = cfs_json_parse("", 0, "empty");
	TAP_OK(!doc && cfs_error_last_code() == CFS_ECORRUPT,
	       "empty input rejected");
	/* Not NUL-terminated: the parser must respect len. */
	doc = cfs_json_parse("[1]]]]", 3, "slice");
	TAP_OK(doc && cJSON_GetArraySize(doc) == 1, "parses exactly len bytes");
	cJSON_Delete(doc);
	doc = cfs_json_parse("{}", (size_t)1 << 30, "huge");
	TAP_OK(!doc && cfs_error_last_code() == CFS_ECORRUPT &&
		       strstr(cfs_error_last(), "limit"),
	       "size cap enforced before reading: %s", cfs_error_last());

	deep = malloc(4001);
	for (i = 0; i < 2000; i++) {
		deep[i] = '[';
		deep[4000 - 1 - i] = ']';
	}
	deep[4000] = '\0';
	doc = cfs_json_parse(deep, 4000, "deep");
	TAP_OK(!doc && cfs_error_last_code() == CFS_ECORRUPT,
	       "nesting 2000 deep rejected");
	free(deep);

	check_print(
		"{\"a\":1,\"b\":2,\"a\":3}", 0, "{\"a\":3,\"b\":2}",
		"duplicate keys: last value at first position (JSON.parse)");
	check_print("{\"x\":{\"a\":1,\"a\":2,\"a\":[3]}}", 0,
		    "{\"x\":{\"a\":[3]}}", "triplicate nested key");
}

static void test_getters_setters(void)
{
	const char *src = "{\"s\":\"v\",\"i\":42,\"f\":1.5,\"neg\":-3,"
			  "\"big\":1e300,\"b\":true,\"n\":null}";
	cJSON *doc = cfs_json_parse(src, strlen(src), "t");
	int64_t v = 0;
	bool b = false;
	char *out;

	TAP_EQ_STR(cfs_json_str(doc, "s"), "v", "string getter");
	TAP_OK(cfs_json_str(doc, "i") == NULL, "string getter on number");
	TAP_OK(cfs_json_int(doc, "i", &v) && v == 42, "int getter");
	TAP_OK(cfs_json_int(doc, "neg", &v) && v == -3, "negative int");
	TAP_OK(!cfs_json_int(doc, "f", &v), "1.5 is not an int");
	TAP_OK(!cfs_json_int(doc, "big", &v), "1e300 does not fit int64");
	TAP_OK(!cfs_json_int(doc, "s", &v), "string is not an int");
	TAP_OK(!cfs_json_int(doc, "missing", &v), "missing int");
	TAP_OK(cfs_json_bool(doc, "b", &b) && b, "bool getter");
	TAP_OK(!cfs_json_bool(doc, "n", &b), "null is not a bool");

	TAP_EQ_INT(cfs_json_set_int(doc, "i", 7), 0, "replace int");
	TAP_EQ_INT(cfs_json_set_str(doc, "new", "x"), 0, "append string");
	TAP_EQ_INT(cfs_json_set_str(doc, "s", "w"), 0, "replace string");
	out = cfs_json_print(doc, 0);
	TAP_EQ_STR(out,
		   "{\"s\":\"w\",\"i\":7,\"f\":1.5,\"neg\":-3,\"big\":1e+300,"
		   "\"b\":true,\"n\":null,\"new\":\"x\"}",
		   "setters keep member order and append new keys");
	free(out);
	TAP_OK(cfs_json_set(cJSON_GetObjectItem(doc, "s"), "k",
			    cJSON_CreateNull()) == CFS_EINVAL,
	       "set on a non-object refused");
	cJSON_Delete(doc);
}

int main(void)
{
	cfs_init();
	test_fixture_roundtrip();
	test_numbers();
	test_strings();
	test_layout();
	test_parse_errors();
	test_getters_setters();
	return tap_done();
}
