/*
 * JSON over cJSON: a printer that reproduces the reference's bytes and a
 * capped parser.
 *
 * The printer has two personalities:
 *   - default (manifest, lock): JavaScript's JSON.stringify. Numbers use
 *     ECMAScript Number::toString (shortest round-trip digits, exponent
 *     outside 1e-7..1e21), strings escape only '"', '\\' and controls,
 *     non-ASCII is written raw. Without CFS_JSON_PRETTY the output is the
 *     compact JSON.stringify(x) form.
 *   - CFS_JSON_ASCII (the in-bundle version records written by python's
 *     json.dumps): non-ASCII and DEL escaped as lowercase \uXXXX (surrogate
 *     pairs above the BMP; a byte that is not UTF-8 as \udcXX, python's
 *     surrogateescape for file names), non-integral numbers in python's float repr,
 *     and without CFS_JSON_PRETTY python's one-line ", " / ": "
 *     separators.
 * Integral numbers below 1e21 print as plain integers in both (python ints,
 * JS integers). Non-finite numbers print as null (JSON.stringify).
 *
 * The parser keeps JSON.parse's duplicate-key semantics (the last value
 * wins, at the position of the first occurrence) so that a rewrite carries
 * the value the reference would have seen.
 */
#include "core/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"

/* Nothing we parse legitimately comes close; bounds memory and time. */
#define CFS_JSON_MAX_BYTES (64u << 20)
#define CFS_JSON_MAX_DEPTH 512

/* ---- numbers ---------------------------------------------------------- */

/*
 * Shortest decimal digits that round-trip x (x finite, > 0): digits into
 * dig (NUL-terminated, no leading zeros), *n such that x = 0.DIGITS * 10^n.
 */
static void shortest_digits(double x, char dig[32], int *n)
{
	char tmp[48];
	int prec;

	for (prec = 1; prec <= 17; prec++) {
		snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, x);
		if (strtod(tmp, NULL) == x)
			break;
	}
	/* tmp = "d.ddde[+-]xx" (or "de[+-]xx" for prec 1) */
	{
		size_t k = 0;
		const char *p = tmp;
		char *e;
		long ex;

		while (*p && *p != 'e') {
			if (*p >= '0' && *p <= '9' && k < 31)
				dig[k++] = *p;
			p++;
		}
		/* %.*e never emits trailing zeros past the shortest form, but
		 * "1.0e+00" style cannot occur; trim defensively anyway. */
		while (k > 1 && dig[k - 1] == '0')
			k--;
		dig[k] = '\0';
		ex = (*p == 'e') ? strtol(p + 1, &e, 10) : 0;
		*n = (int)ex + 1;
	}
}

static int put_zeros(struct cfs_buf *b, int count)
{
	int rc = 0;

	while (count-- > 0 && rc == 0)
		rc = cfs_buf_put(b, "0", 1);
	return rc;
}

/* ECMAScript Number::toString for finite x. */
static int put_number_js(struct cfs_buf *b, double x)
{
	char dig[32];
	int n, k, rc;

	if (x == 0)
		return cfs_buf_put(b, "0", 1); /* also -0 */
	if (x < 0) {
		rc = cfs_buf_put(b, "-", 1);
		if (rc)
			return rc;
		x = -x;
	}
	shortest_digits(x, dig, &n);
	k = (int)strlen(dig);
	if (k <= n && n <= 21) {
		rc = cfs_buf_put(b, dig, (size_t)k);
		return rc ? rc : put_zeros(b, n - k);
	}
	if (0 < n && n <= 21) {
		rc = cfs_buf_put(b, dig, (size_t)n);
		if (!rc)
			rc = cfs_buf_put(b, ".", 1);
		return rc ? rc : cfs_buf_put(b, dig + n, (size_t)(k - n));
	}
	if (-6 < n && n <= 0) {
		rc = cfs_buf_put(b, "0.", 2);
		if (!rc)
			rc = put_zeros(b, -n);
		return rc ? rc : cfs_buf_put(b, dig, (size_t)k);
	}
	rc = cfs_buf_put(b, dig, 1);
	if (!rc && k > 1) {
		rc = cfs_buf_put(b, ".", 1);
		if (!rc)
			rc = cfs_buf_put(b, dig + 1, (size_t)(k - 1));
	}
	return rc ? rc
		  : cfs_buf_printf(b, "e%c%d", n - 1 < 0 ? '-' : '+',
				   abs(n - 1));
}

/* python's repr(float) for finite, non-integral (or huge) x. */
static int put_number_py(struct cfs_buf *b, double x)
{
	char dig[32];
	int n, k, rc;

	if (x == 0)
		return cfs_buf_puts(b, signbit(x) ? "-0.0" : "0.0");
	if (x < 0) {
		rc = cfs_buf_put(b, "-", 1);
		if (rc)
			return rc;
		x = -x;
	}
	shortest_digits(x, dig, &n);
	k = (int)strlen(dig);
	if (-4 < n && n <= 16) {
		if (n <= 0) {
			rc = cfs_buf_put(b, "0.", 2);
			if (!rc)
				rc = put_zeros(b, -n);
			return rc ? rc : cfs_buf_put(b, dig, (size_t)k);
		}
		if (k <= n) {
			rc = cfs_buf_put(b, dig, (size_t)k);
			if (!rc)
				rc = put_zeros(b, n - k);
			return rc ? rc : cfs_buf_put(b, ".0", 2);
		}
		rc = cfs_buf_put(b, dig, (size_t)n);
		if (!rc)
			rc = cfs_buf_put(b, ".", 1);
		return rc ? rc : cfs_buf_put(b, dig + n, (size_t)(k - n));
	}
	rc = cfs_buf_put(b, dig, 1);
	if (!rc && k > 1) {
		rc = cfs_buf_put(b, ".", 1);
		if (!rc)
			rc = cfs_buf_put(b, dig + 1, (size_t)(k - 1));
	}
	return rc ? rc
		  : cfs_buf_printf(b, "e%c%02d", n - 1 < 0 ? '-' : '+',
				   abs(n - 1));
}

static int put_number(struct cfs_buf *b, double x, int flags)
{
	if (!isfinite(x))
		return cfs_buf_put(b, "null", 4);
	if ((flags & CFS_JSON_ASCII) && (x != trunc(x) || fabs(x) >= 1e21))
		return put_number_py(b, x);
	return put_number_js(b, x);
}

/* ---- strings ---------------------------------------------------------- */

/*
 * Decodes one UTF-8 sequence at s (n bytes available). Returns its length
 * and the code point, or 1 and U+DC80..U+DCFF for a malformed byte.
 */
static size_t utf8_decode(const unsigned char *s, size_t n, unsigned *cp)
{
	unsigned c = s[0], v;
	size_t len, i;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		v = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		v = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		v = c & 0x07;
	} else {
		goto bad;
	}
	if (len > n)
		goto bad;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			goto bad;
		v = (v << 6) | (s[i] & 0x3f);
	}
	if ((len == 3 && (v < 0x800 || (v >= 0xd800 && v <= 0xdfff))) ||
	    (len == 4 && (v < 0x10000 || v > 0x10ffff)))
		goto bad;
	*cp = v;
	return len;
bad:
	/* python's surrogateescape (os.fsdecode of a file name): the byte
	 * 0xXY becomes U+DCXY, which keeps distinct inputs distinct. */
	*cp = 0xdc00 | c;
	return 1;
}

static int put_string(struct cfs_buf *b, const char *str, int flags)
{
	const unsigned char *s = (const unsigned char *)(str ? str : "");
	size_t n = strlen((const char *)s), i = 0, run;
	int rc;

	rc = cfs_buf_put(b, "\"", 1);
	while (!rc && i < n) {
		unsigned c = s[i];

		/* Copy the longest run that needs no escaping at once. */
		run = 0;
		while (i + run < n) {
			unsigned d = s[i + run];

			if (d < 0x20 || d == '"' || d == '\\')
				break;
			if ((flags & CFS_JSON_ASCII) && d >= 0x7f)
				break;
			run++;
		}
		if (run) {
			rc = cfs_buf_put(b, s + i, run);
			i += run;
			continue;
		}
		switch (c) {
		case '"':
			rc = cfs_buf_put(b, "\\\"", 2);
			break;
		case '\\':
			rc = cfs_buf_put(b, "\\\\", 2);
			break;
		case '\b':
			rc = cfs_buf_put(b, "\\b", 2);
			break;
		case '\f':
			rc = cfs_buf_put(b, "\\f", 2);
			break;
		case '\n':
			rc = cfs_buf_put(b, "\\n", 2);
			break;
		case '\r':
			rc = cfs_buf_put(b, "\\r", 2);
			break;
		case '\t':
			rc = cfs_buf_put(b, "\\t", 2);
			break;
		default:
			if (c < 0x80) {
				rc = cfs_buf_printf(b, "\\u%04x", c);
			} else {
				unsigned cp;
				size_t len = utf8_decode(s + i, n - i, &cp);

				if (cp >= 0x10000) {
					cp -= 0x10000;
					rc = cfs_buf_printf(
						b, "\\u%04x\\u%04x",
						0xd800 + (cp >> 10),
						0xdc00 + (cp & 0x3ff));
				} else {
					rc = cfs_buf_printf(b, "\\u%04x", cp);
				}
				i += len;
				continue;
			}
			break;
		}
		i++;
	}
	return rc ? rc : cfs_buf_put(b, "\"", 1);
}

/* ---- values ----------------------------------------------------------- */

static int put_indent(struct cfs_buf *b, int flags, int depth)
{
	int rc;

	if (!(flags & CFS_JSON_PRETTY))
		return 0;
	rc = cfs_buf_put(b, "\n", 1);
	while (!rc && depth-- > 0)
		rc = cfs_buf_put(b, "  ", 2);
	return rc;
}

static int cmp_keys(const void *a, const void *b)
{
	const cJSON *x = *(const cJSON *const *)a;
	const cJSON *y = *(const cJSON *const *)b;

	return strcmp(x->string ? x->string : "", y->string ? y->string : "");
}

static int put_value(struct cfs_buf *b, const cJSON *item, int flags,
		     int depth);

static int put_container(struct cfs_buf *b, const cJSON *item, int flags,
			 int depth)
{
	bool obj = cJSON_IsObject(item);
	const cJSON **kids = NULL;
	const cJSON *c;
	size_t count = 0, i;
	const char *sep, *colon;
	int rc;

	if (depth >= CFS_JSON_MAX_DEPTH)
		return cfs_error_set(CFS_EINVAL,
				     "JSON nesting deeper than %d levels",
				     CFS_JSON_MAX_DEPTH);
	for (c = item->child; c; c = c->next)
		count++;
	if (count == 0)
		return cfs_buf_puts(b, obj ? "{}" : "[]");

	kids = cfs_calloc(count, sizeof(*kids));
	if (!kids)
		return CFS_ENOMEM;
	for (i = 0, c = item->child; c; c = c->next)
		kids[i++] = c;
	if (obj && (flags & CFS_JSON_SORT_KEYS))
		qsort(kids, count, sizeof(*kids), cmp_keys);

	if (flags & CFS_JSON_PRETTY) {
		sep = ",";
		colon = ": ";
	} else if (flags & CFS_JSON_ASCII) {
		sep = ", "; /* python's one-line default */
		colon = ": ";
	} else {
		sep = ",";
		colon = ":";
	}

	rc = cfs_buf_put(b, obj ? "{" : "[", 1);
	for (i = 0; !rc && i < count; i++) {
		if (i)
			rc = cfs_buf_puts(b, sep);
		if (!rc)
			rc = put_indent(b, flags, depth + 1);
		if (!rc && obj) {
			rc = put_string(b, kids[i]->string, flags);
			if (!rc)
				rc = cfs_buf_puts(b, colon);
		}
		if (!rc)
			rc = put_value(b, kids[i], flags, depth + 1);
	}
	if (!rc)
		rc = put_indent(b, flags, depth);
	if (!rc)
		rc = cfs_buf_put(b, obj ? "}" : "]", 1);
	free(kids);
	return rc;
}

static int put_value(struct cfs_buf *b, const cJSON *item, int flags, int depth)
{
	switch (item->type & 0xff) {
	case cJSON_False:
		return cfs_buf_puts(b, "false");
	case cJSON_True:
		return cfs_buf_puts(b, "true");
	case cJSON_NULL:
		return cfs_buf_puts(b, "null");
	case cJSON_Number:
		return put_number(b, item->valuedouble, flags);
	case cJSON_String:
		return put_string(b, item->valuestring, flags);
	case cJSON_Raw:
		return cfs_buf_puts(b, item->valuestring ? item->valuestring
							 : "null");
	case cJSON_Array:
	case cJSON_Object:
		return put_container(b, item, flags, depth);
	default:
		return cfs_buf_puts(b, "null");
	}
}

int cfs_json_put_string(struct cfs_buf *b, const char *s, int flags)
{
	return put_string(b, s, flags);
}

int cfs_json_put_number(struct cfs_buf *b, double x, int flags)
{
	return put_number(b, x, flags);
}

char *cfs_json_print(const cJSON *item, int flags)
{
	struct cfs_buf b = CFS_BUF_INIT;
	int rc;

	if (!item) {
		cfs_error_set(CFS_EINVAL, "no JSON value to print");
		return NULL;
	}
	rc = put_value(&b, item, flags, 0);
	if (!rc && (flags & CFS_JSON_NEWLINE))
		rc = cfs_buf_put(&b, "\n", 1);
	if (rc) {
		cfs_buf_free(&b);
		return NULL;
	}
	return cfs_buf_detach(&b);
}

/* ---- parsing ---------------------------------------------------------- */

struct keyed {
	cJSON *item;
	size_t index;
};

static int cmp_keyed(const void *a, const void *b)
{
	const struct keyed *x = a, *y = b;
	int c = strcmp(x->item->string ? x->item->string : "",
		       y->item->string ? y->item->string : "");

	if (c)
		return c;
	return x->index < y->index ? -1 : x->index > y->index;
}

static bool same_key(const cJSON *a, const cJSON *b)
{
	return strcmp(a->string ? a->string : "", b->string ? b->string : "") ==
	       0;
}

/*
 * JSON.parse semantics for duplicate keys: the value of the last
 * occurrence, at the position of the first. O(n log n) per object.
 */
static int dedupe_object(cJSON *obj)
{
	struct keyed *v = NULL;
	size_t count = 0, i, j;
	cJSON *c;

	for (c = obj->child; c; c = c->next)
		count++;
	if (count < 2)
		return 0;
	v = cfs_calloc(count, sizeof(*v));
	if (!v)
		return CFS_ENOMEM;
	for (i = 0, c = obj->child; c; c = c->next, i++) {
		v[i].item = c;
		v[i].index = i;
	}
	qsort(v, count, sizeof(*v), cmp_keyed);
	for (i = 0; i < count; i = j) {
		for (j = i + 1; j < count && same_key(v[i].item, v[j].item);
		     j++)
			;
		if (j - i > 1) {
			/* Move the last value into the first slot. */
			cJSON *first = v[i].item, *last = v[j - 1].item;
			size_t k;

			cJSON_DetachItemViaPointer(obj, last);
			for (k = i + 1; k < j - 1; k++)
				cJSON_Delete(cJSON_DetachItemViaPointer(
					obj, v[k].item));
			cJSON_ReplaceItemViaPointer(obj, first, last);
		}
	}
	free(v);
	return 0;
}

static int fixup(cJSON *item, int depth)
{
	cJSON *c;
	int rc;

	if (depth > CFS_JSON_MAX_DEPTH)
		return cfs_error_set(CFS_ECORRUPT,
				     "JSON nesting deeper than %d levels",
				     CFS_JSON_MAX_DEPTH);
	if (cJSON_IsObject(item)) {
		rc = dedupe_object(item);
		if (rc)
			return rc;
	}
	for (c = item->child; c; c = c->next) {
		if (c->child) {
			rc = fixup(c, depth + 1);
			if (rc)
				return rc;
		}
	}
	return 0;
}

cJSON *cfs_json_parse(const char *buf, size_t len, const char *what)
{
	const char *end = NULL;
	cJSON *root;
	size_t i;

	if (!what)
		what = "input";
	if (!buf) {
		cfs_error_set(CFS_ECORRUPT, "%s is not valid JSON (at byte 0)",
			      what);
		return NULL;
	}
	if (len > CFS_JSON_MAX_BYTES) {
		cfs_error_set(CFS_ECORRUPT,
			      "%s is not valid JSON (at byte %u): larger than "
			      "the %u byte limit",
			      what, CFS_JSON_MAX_BYTES, CFS_JSON_MAX_BYTES);
		return NULL;
	}
	root = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
	if (!root) {
		size_t at = (end && end >= buf && end <= buf + len)
				    ? (size_t)(end - buf)
				    : 0;

		cfs_error_set(CFS_ECORRUPT,
			      "%s is not valid JSON (at byte %zu)", what, at);
		return NULL;
	}
	/* Only whitespace may follow the value (JSON.parse is strict). */
	i = (end && end >= buf) ? (size_t)(end - buf) : len;
	for (; i < len; i++) {
		char ch = buf[i];

		if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') {
			cJSON_Delete(root);
			cfs_error_set(CFS_ECORRUPT,
				      "%s is not valid JSON (at byte %zu)",
				      what, i);
			return NULL;
		}
	}
	if (fixup(root, 0)) {
		int code = cfs_error_last_code();

		cJSON_Delete(root);
		if (code == CFS_ENOMEM)
			return NULL;
		cfs_error_set(CFS_ECORRUPT, "%s is not valid JSON: %s", what,
			      cfs_error_last());
		return NULL;
	}
	return root;
}

/* ---- getters and setters ---------------------------------------------- */

const char *cfs_json_str(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

bool cfs_json_int(const cJSON *obj, const char *key, int64_t *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	double d;

	if (!cJSON_IsNumber(v))
		return false;
	d = v->valuedouble;
	/* Exactly representable integers only: 2^63 itself is out. */
	if (!isfinite(d) || d != trunc(d) || d < -9223372036854775808.0 ||
	    d >= 9223372036854775808.0)
		return false;
	if (out)
		*out = (int64_t)d;
	return true;
}

bool cfs_json_bool(const cJSON *obj, const char *key, bool *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);

	if (!cJSON_IsBool(v))
		return false;
	if (out)
		*out = cJSON_IsTrue(v);
	return true;
}

int cfs_json_set(cJSON *obj, const char *key, cJSON *val)
{
	if (!val)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	if (!cJSON_IsObject(obj)) {
		cJSON_Delete(val);
		return cfs_error_set(CFS_EINVAL,
				     "cannot set \"%s\": not an "
				     "object",
				     key);
	}
	if (cJSON_GetObjectItemCaseSensitive(obj, key)) {
		if (!cJSON_ReplaceItemInObjectCaseSensitive(obj, key, val)) {
			cJSON_Delete(val);
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		}
		return 0;
	}
	if (!cJSON_AddItemToObject(obj, key, val)) {
		cJSON_Delete(val);
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	}
	return 0;
}

int cfs_json_set_str(cJSON *obj, const char *key, const char *val)
{
	if (!val)
		return cfs_json_set(obj, key, cJSON_CreateNull());
	return cfs_json_set(obj, key, cJSON_CreateString(val));
}

int cfs_json_set_int(cJSON *obj, const char *key, int64_t val)
{
	return cfs_json_set(obj, key, cJSON_CreateNumber((double)val));
}
