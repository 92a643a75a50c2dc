/*
 * Context ids, object keys, context paths and refs (REFERENCE.md §2.1,
 * §2.2, §5.4). The id check is the guard that keeps every key under its
 * own "contexts/<id>/" prefix: no builder formats a key from an id it has
 * not validated.
 */
#include "core/ids.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "core/error.h"
#include "core/json.h"
#include "core/util.h"

static bool id_char(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

static bool alnum(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9');
}

bool cfs_id_valid(const char *id)
{
	size_t i;

	if (!id || !alnum((unsigned char)id[0]))
		return false;
	for (i = 1; id[i]; i++) {
		if (i >= CFS_ID_MAX || !id_char((unsigned char)id[i]))
			return false;
	}
	/* "." and ".." already fail the first-character rule; kept explicit
	 * because the reference's regex names them. */
	return strcmp(id, ".") != 0 && strcmp(id, "..") != 0;
}

int cfs_id_check(const char *id)
{
	cJSON *s;
	char *quoted;
	int rc;

	if (cfs_id_valid(id))
		return 0;
	/* Print the id as JSON.stringify would (escapes controls/quotes);
	 * cap the echo so a hostile id cannot flood the message. */
	s = cJSON_CreateString(id ? id : "");
	quoted = s ? cfs_json_print(s, 0) : NULL;
	cJSON_Delete(s);
	if (quoted && strlen(quoted) > 300) {
		size_t cut = 296;

		while (cut > 0 && ((unsigned char)quoted[cut] & 0xc0) == 0x80)
			cut--;
		memcpy(quoted + cut, "...", 4);
	}
	rc = cfs_error_set(CFS_EINVAL,
			   "invalid context id: %s \xe2\x80\x94 ids must start "
			   "with a letter or digit and use only letters, "
			   "digits, \".\", \"_\", \"-\" (max 200 chars)",
			   quoted ? quoted : "\"\"");
	free(quoted);
	return rc;
}

int cfs_id_sanitize(char **out, const char *id)
{
	struct cfs_buf b = CFS_BUF_INIT;
	const unsigned char *p;
	int rc = 0;

	*out = NULL;
	if (!id)
		id = "";
	for (p = (const unsigned char *)id; *p && !rc; p++) {
		if (id_char(*p)) {
			rc = cfs_buf_put(&b, p, 1);
		} else {
			/* One '-' per character: skip UTF-8 continuation
			 * bytes of a multi-byte character. */
			rc = cfs_buf_put(&b, "-", 1);
			if (*p >= 0xc0)
				while ((p[1] & 0xc0) == 0x80)
					p++;
		}
	}
	if (rc)
		goto out;
	if (b.len == 0) {
		rc = cfs_error_set(CFS_EINVAL, "context id must contain at "
					       "least one portable character");
		goto out;
	}
	*out = cfs_buf_detach(&b);
out:
	cfs_buf_free(&b);
	return rc;
}

__attribute__((format(printf, 3, 4))) static int
key_fmt(char out[CFS_KEY_MAX], const char *id, const char *fmt, ...)
{
	va_list ap;
	int n, rc;

	out[0] = '\0';
	rc = cfs_id_check(id);
	if (rc)
		return rc;
	va_start(ap, fmt);
	n = vsnprintf(out, CFS_KEY_MAX, fmt, ap);
	va_end(ap);
	if (n < 0 || n >= CFS_KEY_MAX) {
		out[0] = '\0';
		return cfs_error_set(CFS_EINVAL, "storage key too long");
	}
	return 0;
}

int cfs_key_context_prefix(char out[CFS_KEY_MAX], const char *id)
{
	return key_fmt(out, id, "contexts/%s/", id);
}

int cfs_key_manifest(char out[CFS_KEY_MAX], const char *id)
{
	return key_fmt(out, id, "contexts/%s/manifest.json", id);
}

int cfs_key_lock(char out[CFS_KEY_MAX], const char *id)
{
	return key_fmt(out, id, "contexts/%s/lock.json", id);
}

int cfs_key_tree_prefix(char out[CFS_KEY_MAX], const char *id)
{
	return key_fmt(out, id, "contexts/%s/tree/", id);
}

int cfs_key_image_prefix(char out[CFS_KEY_MAX], const char *id)
{
	return key_fmt(out, id, "contexts/%s/image/", id);
}

int cfs_key_checkpoints(char out[CFS_KEY_MAX], const char *id)
{
	return key_fmt(out, id, "contexts/%s/checkpoints", id);
}

int cfs_key_checkpoint_prefix(char out[CFS_KEY_MAX], const char *id)
{
	return key_fmt(out, id, "contexts/%s/checkpoints/", id);
}

static bool attempt_valid(const char *a)
{
	size_t i;

	if (!a)
		return false;
	for (i = 0; i < CFS_ATTEMPT_LEN; i++) {
		if (!((a[i] >= '0' && a[i] <= '9') ||
		      (a[i] >= 'a' && a[i] <= 'f')))
			return false;
	}
	return a[CFS_ATTEMPT_LEN] == '\0';
}

int cfs_key_tree(char out[CFS_KEY_MAX], const char *id, uint64_t generation,
		 const char *attempt)
{
	if (!attempt_valid(attempt)) {
		out[0] = '\0';
		return cfs_error_set(CFS_EINVAL,
				     "invalid save attempt \"%s\" (expected 8 "
				     "lowercase hex characters)",
				     attempt ? attempt : "");
	}
	return key_fmt(out, id,
		       "contexts/%s/tree/%08" PRIu64 "-%s.tree.tar.zst.enc", id,
		       generation, attempt);
}

int cfs_key_image(char out[CFS_KEY_MAX], const char *id, uint64_t generation,
		  const char *attempt)
{
	if (!attempt_valid(attempt)) {
		out[0] = '\0';
		return cfs_error_set(CFS_EINVAL,
				     "invalid save attempt \"%s\" (expected 8 "
				     "lowercase hex characters)",
				     attempt ? attempt : "");
	}
	return key_fmt(out, id, "contexts/%s/image/%08" PRIu64 "-%s.img.enc",
		       id, generation, attempt);
}

int cfs_key_checkpoint(char out[CFS_KEY_MAX], const char *id, uint64_t n)
{
	return key_fmt(out, id,
		       "contexts/%s/checkpoints/%08" PRIu64 ".tree.tar.zst.enc",
		       id, n);
}

int cfs_key_legacy_tree(char out[CFS_KEY_MAX], const char *id)
{
	return key_fmt(out, id, "contexts/%s/current.tree.tar.zst.enc", id);
}

int cfs_key_legacy_image(char out[CFS_KEY_MAX], const char *id)
{
	return key_fmt(out, id, "contexts/%s/current.img.enc", id);
}

void cfs_attempt_new(char out[CFS_ATTEMPT_LEN + 1])
{
	cfs_random_hex(out, CFS_ATTEMPT_LEN / 2);
}

/* key == "contexts/<id>/" + rest-prefix...; returns what follows or NULL. */
static const char *after_context(const char *id, const char *key)
{
	size_t idlen;

	if (!key || strncmp(key, "contexts/", 9) != 0)
		return NULL;
	key += 9;
	idlen = strlen(id);
	if (strncmp(key, id, idlen) != 0 || key[idlen] != '/')
		return NULL;
	return key + idlen + 1;
}

bool cfs_key_replaceable(const char *id, const char *key)
{
	const char *rest;

	if (!cfs_id_valid(id))
		return false;
	rest = after_context(id, key);
	if (!rest)
		return false;
	return strncmp(rest, "tree/", 5) == 0 ||
	       strncmp(rest, "image/", 6) == 0 ||
	       strcmp(rest, "current.tree.tar.zst.enc") == 0 ||
	       strcmp(rest, "current.img.enc") == 0;
}

bool cfs_key_parse_generation(const char *id, const char *key, uint64_t *gen)
{
	const char *rest, *p, *suffix;
	uint64_t v = 0;
	size_t digits = 0, i;

	if (!cfs_id_valid(id))
		return false;
	rest = after_context(id, key);
	if (!rest)
		return false;
	if (strncmp(rest, "tree/", 5) == 0) {
		p = rest + 5;
		suffix = ".tree.tar.zst.enc";
	} else if (strncmp(rest, "image/", 6) == 0) {
		p = rest + 6;
		suffix = ".img.enc";
	} else {
		return false;
	}
	for (; *p >= '0' && *p <= '9'; p++, digits++) {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (digits < 8 || *p != '-')
		return false;
	p++;
	for (i = 0; i < CFS_ATTEMPT_LEN; i++) {
		if (!((p[i] >= '0' && p[i] <= '9') ||
		      (p[i] >= 'a' && p[i] <= 'f')))
			return false;
	}
	if (strcmp(p + CFS_ATTEMPT_LEN, suffix) != 0)
		return false;
	if (gen)
		*gen = v;
	return true;
}

static const char *const managed_roots[] = {
	"workspace", "memory", "artifacts",   "logs",
	"cache",     "config", ".contextsdk",
};

int cfs_context_path_normalize(char **out, const char *input)
{
	struct cfs_buf b = CFS_BUF_INIT;
	const char *p, *seg;
	size_t len, i, nseg = 0;
	bool root_ok = false;
	int rc = 0;

	*out = NULL;
	if (!input)
		input = "workspace";
	/* NUL cannot appear inside a C string; the reference's NUL check is
	 * therefore implied. */
	p = input;
	while (*p == '/')
		p++;
	while (*p) {
		seg = p;
		while (*p && *p != '/')
			p++;
		len = (size_t)(p - seg);
		while (*p == '/')
			p++;
		if (len == 0)
			continue;
		if ((len == 1 && seg[0] == '.') ||
		    (len == 2 && seg[0] == '.' && seg[1] == '.')) {
			rc = cfs_error_set(CFS_EINVAL,
					   "invalid context path: %s", input);
			goto out;
		}
		if (nseg == 0) {
			for (i = 0; i < CFS_ARRAY_SIZE(managed_roots); i++) {
				if (strlen(managed_roots[i]) == len &&
				    memcmp(managed_roots[i], seg, len) == 0)
					root_ok = true;
			}
		} else {
			rc = cfs_buf_put(&b, "/", 1);
			if (rc)
				goto out;
		}
		rc = cfs_buf_put(&b, seg, len);
		if (rc)
			goto out;
		nseg++;
	}
	if (nseg == 0) {
		*out = cfs_strdup("workspace");
		rc = *out ? 0 : CFS_ENOMEM;
		goto out;
	}
	if (!root_ok) {
		rc = cfs_error_set(CFS_EINVAL,
				   "path must be under one of: workspace, "
				   "memory, artifacts, logs, cache, config, "
				   ".contextsdk");
		goto out;
	}
	*out = cfs_buf_detach(&b);
	rc = *out ? 0 : CFS_ENOMEM;
out:
	cfs_buf_free(&b);
	return rc;
}

/* Plain decimal >= 1, no sign, no spaces, fits uint64_t. */
static bool parse_count(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!s || !*s)
		return false;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return false;
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	if (v == 0)
		return false;
	*out = v;
	return true;
}

int cfs_ref_parse(struct cfs_ref *out, const char *s)
{
	const char *at;
	size_t idlen;
	int rc;

	memset(out, 0, sizeof(*out));
	if (!s)
		s = "";
	at = strchr(s, '@');
	idlen = at ? (size_t)(at - s) : strlen(s);
	if (idlen > CFS_ID_MAX) {
		/* Let cfs_id_check produce the standard message. */
		char *tmp = cfs_strndup(s, idlen);

		if (!tmp)
			return CFS_ENOMEM;
		rc = cfs_id_check(tmp);
		free(tmp);
		return rc ? rc : CFS_EINVAL;
	}
	memcpy(out->id, s, idlen);
	out->id[idlen] = '\0';
	rc = cfs_id_check(out->id);
	if (rc)
		return rc;
	if (!at) {
		out->kind = CFS_REF_LATEST;
		return 0;
	}
	at++;
	if (strncmp(at, "checkpoint:", 11) == 0) {
		if (!parse_count(at + 11, &out->number))
			return cfs_error_set(CFS_EINVAL,
					     "invalid checkpoint in \"%s\": "
					     "expected ID@checkpoint:N with N "
					     ">= 1",
					     s);
		out->kind = CFS_REF_CHECKPOINT;
		return 0;
	}
	if (!parse_count(at, &out->number))
		return cfs_error_set(CFS_EINVAL,
				     "invalid generation in \"%s\": expected "
				     "ID@GEN with GEN >= 1 or "
				     "ID@checkpoint:N",
				     s);
	out->kind = CFS_REF_GENERATION;
	return 0;
}
