/*
 * Persistence policy: defaults, JSON form, and the reference's exclusion
 * test (python fnmatch semantics; see policy.h and REFERENCE.md §5.3).
 */
#include "core/policy.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"

const char *const cfs_layout[CFS_LAYOUT_COUNT] = {
	"workspace", "memory", "artifacts", "logs", "cache", "config",
};

static const char *const default_roots[] = {
	"workspace", "memory", "artifacts", "logs", "config",
};

static const char *const default_exclude[] = {
	"**/node_modules/**", "**/.pnpm-store/**", "**/.npm/**",
	"**/.yarn/cache/**",  "**/.next/**",	   "**/dist/**",
	"**/build/**",	      "**/.venv/**",	   "**/__pycache__/**",
};

bool cfs_layout_has(const char *name)
{
	for (size_t i = 0; i < CFS_LAYOUT_COUNT; i++)
		if (strcmp(name, cfs_layout[i]) == 0)
			return true;
	return false;
}

bool cfs_path_unsafe(const char *value, size_t len)
{
	size_t seg = 0;

	if (len > 0 && (value[0] == '/' || value[0] == '\\'))
		return true;
	for (size_t i = 0; i <= len; i++) {
		char c = i < len ? value[i] : '/';
		if (i < len && c == '\0')
			return true;
		if (c == '/' || c == '\\') {
			if (i - seg == 2 && value[seg] == '.' &&
			    value[seg + 1] == '.')
				return true;
			seg = i + 1;
		}
	}
	return false;
}

/* ---- python fnmatch ---------------------------------------------------- */

/*
 * Decodes one UTF-8 code point (python matches str, so `?` and classes see
 * characters, not bytes). An invalid byte decodes to itself + 0xDC00, like
 * python's surrogateescape, and is one "character".
 */
static size_t u8_next(const unsigned char *s, uint32_t *cp)
{
	unsigned char c = s[0];
	size_t n;
	uint32_t v;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2;
		v = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3;
		v = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4;
		v = c & 0x07;
	} else {
		*cp = 0xdc00 + c;
		return 1;
	}
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xc0) != 0x80) {
			*cp = 0xdc00 + c;
			return 1;
		}
		v = (v << 6) | (s[i] & 0x3f);
	}
	if ((n == 3 && v < 0x800) ||
	    (n == 4 && (v < 0x10000 || v > 0x10ffff)) ||
	    (v >= 0xd800 && v <= 0xdfff)) {
		*cp = 0xdc00 + c;
		return 1;
	}
	*cp = v;
	return n;
}

/*
 * Finds the end of a class starting after `[` at p, as python's translate
 * does: an optional `!`, then a `]` taken literally, then up to the next
 * `]`. Returns a pointer to the closing `]`, or NULL (then `[` is literal).
 */
static const char *class_end(const char *p, const char *pe)
{
	if (p < pe && *p == '!')
		p++;
	if (p < pe && *p == ']')
		p++;
	while (p < pe && *p != ']')
		p++;
	return p < pe ? p : NULL;
}

/* Does code point c match the class body [start, end)? */
static bool class_match(const char *start, const char *end, uint32_t c)
{
	bool negate = false, hit = false, any = false;
	const char *p = start;

	if (p < end && *p == '!') {
		negate = true;
		p++;
	}
	while (p < end) {
		uint32_t lo, hi;
		p += u8_next((const unsigned char *)p, &lo);
		hi = lo;
		if (p + 1 < end && *p == '-') {
			p++;
			p += u8_next((const unsigned char *)p, &hi);
			if (lo > hi)
				continue; /* python drops empty ranges */
		}
		any = true;
		if (c >= lo && c <= hi)
			hit = true;
	}
	if (!any)
		return negate; /* empty: never; negated empty: any char */
	return negate ? !hit : hit;
}

/* fnmatchcase(name, pattern[0:plen]). */
static bool fnmatch_n(const char *pattern, size_t plen, const char *name)
{
	const char *p = pattern, *pe = pattern + plen, *n = name;
	const char *star_p = NULL, *star_n = NULL;

	while (*n) {
		uint32_t c;
		size_t clen = u8_next((const unsigned char *)n, &c);

		if (p < pe && *p == '*') {
			while (p < pe && *p == '*')
				p++;
			star_p = p;
			star_n = n;
			continue;
		}
		if (p < pe && *p == '?') {
			p++;
			n += clen;
			continue;
		}
		if (p < pe && *p == '[') {
			const char *end = class_end(p + 1, pe);
			if (end) {
				if (class_match(p + 1, end, c)) {
					p = end + 1;
					n += clen;
					continue;
				}
				goto backtrack;
			}
			/* unclosed: a literal '[' */
		}
		if (p < pe && *p == *n) {
			p++;
			n++;
			continue;
		}
	backtrack:
		if (!star_p)
			return false;
		star_n += u8_next((const unsigned char *)star_n, &c);
		p = star_p;
		n = star_n;
	}
	while (p < pe && *p == '*')
		p++;
	return p == pe;
}

bool cfs_fnmatch(const char *pattern, const char *name)
{
	return fnmatch_n(pattern, strlen(pattern), name);
}

/*
 * The longest run of pat[0:len] without a wildcard or class character:
 * every string pat matches (and every path the prefix rule below takes)
 * contains it, so a path without it is rejected before any matching.
 */
static void literal_run(const char *pat, size_t len, const char **run,
			size_t *rlen)
{
	const char *pe = pat + len, *start = pat, *p = pat;

	*run = pat;
	*rlen = 0;
	for (;;) {
		const char *end = p;

		if (p < pe && *p != '*' && *p != '?' && *p != '[') {
			p++;
			continue;
		}
		if ((size_t)(p - start) > *rlen) {
			*rlen = (size_t)(p - start);
			*run = start;
		}
		if (p == pe)
			return;
		/* a closed class is one wildcard character; an unclosed '['
		 * (a literal) just ends the run */
		if (*p == '[' && (end = class_end(p + 1, pe)))
			p = end;
		start = ++p;
	}
}

static bool pattern_excludes(const char *pat, const char *rel)
{
	size_t plen = strlen(pat), tlen = plen, plen_trim, rlen;
	const char *run;

	if (plen >= 3 && memcmp(pat + plen - 3, "/**", 3) == 0)
		tlen = plen - 3;
	plen_trim = tlen;
	while (plen_trim > 0 && pat[plen_trim - 1] == '/')
		plen_trim--;
	literal_run(pat, plen_trim, &run, &rlen);
	if (rlen > 1 && !memmem(rel, strlen(rel), run, rlen))
		return false;
	if (fnmatch_n(pat, plen, rel) || fnmatch_n(pat, tlen, rel))
		return true;
	if (tlen == 0)
		return false;
	return strncmp(rel, pat, plen_trim) == 0 && rel[plen_trim] == '/';
}

bool cfs_policy_excluded(const struct cfs_policy *policy, const char *relpath)
{
	char stackbuf[512];
	char *rel = stackbuf, *heap = NULL;
	size_t len = strlen(relpath);
	bool excluded = false;

	if (!strchr(relpath, '\\')) {
		rel = (char *)relpath;
	} else {
		if (len >= sizeof(stackbuf)) {
			heap = malloc(len + 1);
			if (!heap)
				return false; /* keep it: never drop data */
			rel = heap;
		}
		for (size_t i = 0; i <= len; i++)
			rel[i] = relpath[i] == '\\' ? '/' : relpath[i];
	}
	for (size_t i = 0; i < policy->nexclude && !excluded; i++)
		excluded = pattern_excludes(policy->exclude[i], rel);
	free(heap);
	return excluded;
}

bool cfs_policy_prunes(const struct cfs_policy *policy, const char *reldir)
{
	for (size_t i = 0; i < policy->nexclude; i++) {
		const char *pat = policy->exclude[i];
		size_t plen = strlen(pat), t = plen;

		if (plen >= 3 && memcmp(pat + plen - 3, "/**", 3) == 0) {
			if (pattern_excludes(pat, reldir))
				return true;
			continue;
		}
		/* fnmatch(reldir, pat) implies nothing for reldir/x unless
		 * pat is literal (the prefix rule then covers reldir/x). */
		if (!strpbrk(pat, "*?[") && pattern_excludes(pat, reldir))
			return true;
		while (t > 0 && pat[t - 1] == '/')
			t--;
		if (plen > 0 && strncmp(reldir, pat, t) == 0 &&
		    reldir[t] == '/')
			return true;
	}
	return false;
}

/* ---- construction ------------------------------------------------------ */

static void strv_free(char **v, size_t n)
{
	if (!v)
		return;
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

static int strv_dup(char ***out, const char *const *in, size_t n)
{
	char **v = cfs_calloc(n ? n : 1, sizeof(*v));
	if (!v)
		return CFS_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		v[i] = cfs_strdup(in[i]);
		if (!v[i]) {
			strv_free(v, i);
			return CFS_ENOMEM;
		}
	}
	*out = v;
	return 0;
}

void cfs_policy_free(struct cfs_policy *policy)
{
	if (!policy)
		return;
	strv_free(policy->roots, policy->nroots);
	strv_free(policy->exclude, policy->nexclude);
	memset(policy, 0, sizeof(*policy));
}

int cfs_policy_default(struct cfs_policy *out)
{
	struct cfs_policy p = {0};
	int rc;

	rc = strv_dup(&p.roots, default_roots, CFS_ARRAY_SIZE(default_roots));
	if (rc)
		goto out;
	p.nroots = CFS_ARRAY_SIZE(default_roots);
	rc = strv_dup(&p.exclude, default_exclude,
		      CFS_ARRAY_SIZE(default_exclude));
	if (rc)
		goto out;
	p.nexclude = CFS_ARRAY_SIZE(default_exclude);
	*out = p;
	memset(&p, 0, sizeof(p));
out:
	cfs_policy_free(&p);
	return rc;
}

int cfs_policy_copy(struct cfs_policy *out, const struct cfs_policy *in)
{
	struct cfs_policy p = {0};
	int rc;

	rc = strv_dup(&p.roots, (const char *const *)in->roots, in->nroots);
	if (rc)
		goto out;
	p.nroots = in->nroots;
	rc = strv_dup(&p.exclude, (const char *const *)in->exclude,
		      in->nexclude);
	if (rc)
		goto out;
	p.nexclude = in->nexclude;
	*out = p;
	memset(&p, 0, sizeof(p));
out:
	cfs_policy_free(&p);
	return rc;
}

/*
 * Reads one array member of a policy object. *v stays NULL when the array
 * is missing or empty (the caller substitutes the default).
 */
static int policy_array(char ***v, size_t *n, const cJSON *obj, const char *key,
			bool roots)
{
	const cJSON *arr =
		obj ? cJSON_GetObjectItemCaseSensitive(obj, key) : NULL;
	const cJSON *it;
	size_t count, i = 0;
	char **out;

	*v = NULL;
	*n = 0;
	if (!arr || cJSON_IsNull(arr))
		return 0;
	if (!cJSON_IsArray(arr))
		return cfs_error_set(CFS_ECORRUPT,
				     "persistence policy %s must be an array",
				     key);
	count = (size_t)cJSON_GetArraySize(arr);
	if (count == 0)
		return 0;
	if (count > CFS_POLICY_MAX_ITEMS)
		return cfs_error_set(CFS_ECORRUPT,
				     "persistence policy %s has %zu items "
				     "(limit %d)",
				     key, count, CFS_POLICY_MAX_ITEMS);
	out = cfs_calloc(count, sizeof(*out));
	if (!out)
		return CFS_ENOMEM;
	cJSON_ArrayForEach(it, arr)
	{
		const char *s = cJSON_GetStringValue(it);
		int rc = 0;

		if (!s)
			rc = cfs_error_set(CFS_ECORRUPT,
					   "persistence policy %s must hold "
					   "strings",
					   key);
		else if (strlen(s) > CFS_POLICY_MAX_ITEM_LEN)
			rc = cfs_error_set(CFS_ECORRUPT,
					   "persistence policy %s item longer "
					   "than %d bytes",
					   key, CFS_POLICY_MAX_ITEM_LEN);
		else if (roots &&
			 (s[0] == '\0' || cfs_path_unsafe(s, strlen(s))))
			rc = cfs_error_set(CFS_EUNSAFE,
					   "unsafe persistence policy root: "
					   "\"%s\" (roots are relative paths "
					   "without '..')",
					   s);
		if (rc == 0 && !(out[i] = cfs_strdup(s)))
			rc = CFS_ENOMEM;
		if (rc) {
			strv_free(out, i);
			return rc;
		}
		i++;
	}
	*v = out;
	*n = i;
	return 0;
}

int cfs_policy_from_json(struct cfs_policy *out, const cJSON *obj)
{
	struct cfs_policy p = {0}, def = {0};
	int rc;

	if (obj && !cJSON_IsNull(obj) && !cJSON_IsObject(obj))
		return cfs_error_set(CFS_ECORRUPT,
				     "persistence policy must be an object");
	rc = policy_array(&p.roots, &p.nroots, obj, "roots", true);
	if (rc)
		goto out;
	rc = policy_array(&p.exclude, &p.nexclude, obj, "exclude", false);
	if (rc)
		goto out;
	if (!p.roots || !p.exclude) {
		rc = cfs_policy_default(&def);
		if (rc)
			goto out;
		if (!p.roots) {
			p.roots = def.roots;
			p.nroots = def.nroots;
			def.roots = NULL;
			def.nroots = 0;
		}
		if (!p.exclude) {
			p.exclude = def.exclude;
			p.nexclude = def.nexclude;
			def.exclude = NULL;
			def.nexclude = 0;
		}
	}
	*out = p;
	memset(&p, 0, sizeof(p));
out:
	cfs_policy_free(&def);
	cfs_policy_free(&p);
	return rc;
}

cJSON *cfs_policy_to_json(const struct cfs_policy *policy)
{
	cJSON *obj = cJSON_CreateObject();
	cJSON *roots = cJSON_CreateArray();
	cJSON *exclude = cJSON_CreateArray();

	if (!obj || !roots || !exclude)
		goto fail;
	for (size_t i = 0; i < policy->nroots; i++) {
		cJSON *s = cJSON_CreateString(policy->roots[i]);
		if (!s || !cJSON_AddItemToArray(roots, s)) {
			cJSON_Delete(s);
			goto fail;
		}
	}
	for (size_t i = 0; i < policy->nexclude; i++) {
		cJSON *s = cJSON_CreateString(policy->exclude[i]);
		if (!s || !cJSON_AddItemToArray(exclude, s)) {
			cJSON_Delete(s);
			goto fail;
		}
	}
	if (!cJSON_AddItemToObject(obj, "roots", roots))
		goto fail;
	roots = NULL;
	if (!cJSON_AddItemToObject(obj, "exclude", exclude))
		goto fail;
	return obj;
fail:
	cJSON_Delete(roots);
	cJSON_Delete(exclude);
	cJSON_Delete(obj);
	cfs_error_set(CFS_ENOMEM, "out of memory building policy JSON");
	return NULL;
}
