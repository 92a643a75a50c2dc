/*
 * AWS Signature Version 4 signing (see sigv4.h). Pure functions: no clock,
 * no network. The secret only ever sits in the caller's memory and in a
 * short-lived "AWS4<secret>" scratch buffer that is wiped after use.
 */
#include "storage/sigv4.h"
#include "core/error.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SIGV4_ALGO "AWS4-HMAC-SHA256"
#define SECRET_MAX 1024

static bool unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' ||
	       c == '~';
}

int cfs_sigv4_uri_encode(struct cfs_buf *out, const char *s, bool keep_slash)
{
	static const char hex[] = "0123456789ABCDEF";
	int rc = 0;

	for (; *s && !rc; s++) {
		unsigned char c = (unsigned char)*s;
		char enc[3];

		if (unreserved(c) || (keep_slash && c == '/')) {
			rc = cfs_buf_put(out, s, 1);
			continue;
		}
		enc[0] = '%';
		enc[1] = hex[c >> 4];
		enc[2] = hex[c & 15];
		rc = cfs_buf_put(out, enc, 3);
	}
	return rc;
}

struct enc_pair {
	char *name;
	char *value;
	size_t index; /* original position: keeps the sort stable */
};

static int cmp_pair(const void *a, const void *b)
{
	const struct enc_pair *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c)
		return c;
	c = strcmp(x->value, y->value);
	if (c)
		return c;
	return x->index < y->index ? -1 : x->index > y->index;
}

static void free_pairs(struct enc_pair *p, size_t n)
{
	if (!p)
		return;
	for (size_t i = 0; i < n; i++) {
		free(p[i].name);
		free(p[i].value);
	}
	free(p);
}

static char *encode_dup(const char *s)
{
	struct cfs_buf b = CFS_BUF_INIT;

	if (cfs_buf_puts(&b, "") ||
	    cfs_sigv4_uri_encode(&b, s ? s : "", false)) {
		cfs_buf_free(&b);
		return NULL;
	}
	return cfs_buf_detach(&b);
}

int cfs_sigv4_canonical_query(char **out, const struct cfs_sigv4_kv *query,
			      size_t n)
{
	struct cfs_buf b = CFS_BUF_INIT;
	struct enc_pair *p = NULL;
	size_t made = 0;
	int rc = 0;

	*out = NULL;
	if (n > CFS_SIGV4_ITEMS_MAX)
		return cfs_error_set(CFS_EINVAL, "too many query parameters");
	if (n) {
		p = cfs_calloc(n, sizeof(*p));
		if (!p)
			return CFS_ENOMEM;
	}
	for (; made < n; made++) {
		const char *v = query[made].value ? query[made].value : "";

		if (strlen(v) > CFS_SIGV4_VALUE_MAX) {
			rc = cfs_error_set(CFS_EINVAL,
					   "query value of %s is too long",
					   query[made].name);
			goto out;
		}
		p[made].name = encode_dup(query[made].name);
		p[made].value = encode_dup(v);
		p[made].index = made;
		if (!p[made].name || !p[made].value) {
			made++;
			rc = CFS_ENOMEM;
			goto out;
		}
	}
	if (n)
		qsort(p, n, sizeof(*p), cmp_pair);
	rc = cfs_buf_puts(&b, "");
	for (size_t i = 0; i < n && !rc; i++)
		rc = cfs_buf_printf(&b, "%s%s=%s", i ? "&" : "", p[i].name,
				    p[i].value);
	if (!rc)
		*out = cfs_buf_detach(&b);
out:
	cfs_buf_free(&b);
	free_pairs(p, made);
	return rc;
}

/* Lower-cased name; value trimmed, inner whitespace runs collapsed. */
static int canon_header(struct enc_pair *p, const struct cfs_sigv4_kv *h,
			size_t index)
{
	const char *v = h->value ? h->value : "";
	size_t nlen = strlen(h->name), vlen = strlen(v), o = 0;
	bool space = false;

	if (!nlen || vlen > CFS_SIGV4_VALUE_MAX)
		return cfs_error_set(CFS_EINVAL, "invalid header to sign: %s",
				     h->name);
	p->index = index;
	p->name = cfs_strdup(h->name);
	p->value = cfs_malloc(vlen + 1);
	if (!p->name || !p->value)
		return CFS_ENOMEM;
	for (size_t i = 0; i < nlen; i++)
		p->name[i] = (char)tolower((unsigned char)p->name[i]);
	while (*v == ' ' || *v == '\t')
		v++;
	for (; *v; v++) {
		if (*v == ' ' || *v == '\t') {
			space = true;
			continue;
		}
		if (space && o)
			p->value[o++] = ' ';
		space = false;
		p->value[o++] = *v;
	}
	p->value[o] = '\0';
	return 0;
}

static int cmp_header(const void *a, const void *b)
{
	const struct enc_pair *x = a, *y = b;
	int c = strcmp(x->name, y->name);

	if (c)
		return c;
	return x->index < y->index ? -1 : x->index > y->index;
}

int cfs_sigv4_canonical_request(char **out, char **signed_headers,
				const struct cfs_sigv4_request *req)
{
	struct cfs_buf b = CFS_BUF_INIT, sh = CFS_BUF_INIT;
	struct enc_pair *h = NULL;
	char *query = NULL;
	size_t made = 0, n = req->nheaders;
	int rc;

	*out = NULL;
	if (signed_headers)
		*signed_headers = NULL;
	if (!req->method || !req->path || req->path[0] != '/' ||
	    !req->payload_hash)
		return cfs_error_set(CFS_EINVAL, "incomplete request to sign");
	if (n == 0 || n > CFS_SIGV4_ITEMS_MAX)
		return cfs_error_set(CFS_EINVAL,
				     "bad number of headers to sign");
	rc = cfs_sigv4_canonical_query(&query, req->query, req->nquery);
	if (rc)
		goto out;
	h = cfs_calloc(n, sizeof(*h));
	if (!h) {
		rc = CFS_ENOMEM;
		goto out;
	}
	for (; made < n; made++) {
		rc = canon_header(&h[made], &req->headers[made], made);
		if (rc) {
			made++;
			goto out;
		}
	}
	qsort(h, n, sizeof(*h), cmp_header);

	rc = cfs_buf_printf(&b, "%s\n", req->method);
	rc = rc ? rc : cfs_sigv4_uri_encode(&b, req->path, true);
	rc = rc ? rc : cfs_buf_printf(&b, "\n%s\n", query);
	rc = rc ? rc : cfs_buf_puts(&sh, "");
	for (size_t i = 0; i < n && !rc; i++) {
		bool repeat = i > 0 && strcmp(h[i].name, h[i - 1].name) == 0;
		bool last = i + 1 == n || strcmp(h[i].name, h[i + 1].name);

		if (repeat)
			rc = cfs_buf_printf(&b, ",%s", h[i].value);
		else
			rc = cfs_buf_printf(&b, "%s:%s", h[i].name, h[i].value);
		if (!rc && last)
			rc = cfs_buf_puts(&b, "\n");
		if (!rc && !repeat)
			rc = cfs_buf_printf(&sh, "%s%s", i ? ";" : "",
					    h[i].name);
	}
	rc = rc ? rc
		: cfs_buf_printf(&b, "\n%s\n%s", sh.ptr, req->payload_hash);
	if (rc)
		goto out;
	*out = cfs_buf_detach(&b);
	if (signed_headers)
		*signed_headers = cfs_buf_detach(&sh);
out:
	cfs_buf_free(&b);
	cfs_buf_free(&sh);
	free_pairs(h, made);
	free(query);
	return rc;
}

void cfs_sigv4_amz_date(char out[17], int64_t unix_seconds)
{
	time_t t = (time_t)unix_seconds;
	struct tm tm;

	gmtime_r(&t, &tm);
	strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm);
}

static int hmac(uint8_t out[32], const void *key, size_t klen, const char *msg)
{
	unsigned int olen = 0;

	if (!HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg,
		  strlen(msg), out, &olen) ||
	    olen != 32)
		return cfs_error_set(CFS_ERROR, "HMAC-SHA256 failed");
	return 0;
}

static bool valid_date(const char *d)
{
	if (!d || strlen(d) != 16 || d[8] != 'T' || d[15] != 'Z')
		return false;
	for (int i = 0; i < 15; i++)
		if (i != 8 && !isdigit((unsigned char)d[i]))
			return false;
	return true;
}

int cfs_sigv4_authorization(char **out, char *signature_hex,
			    const struct cfs_sigv4_credentials *cred,
			    const char *amz_date,
			    const struct cfs_sigv4_request *req)
{
	char *creq = NULL, *signed_headers = NULL, *sts = NULL;
	char day[9], creq_hash[65], sig[65];
	uint8_t k[32], mac[32];
	uint8_t *kscratch = NULL;
	size_t slen;
	int rc;

	*out = NULL;
	if (!cred || !cred->access_key || !cred->secret_key || !cred->region ||
	    !cred->service || !valid_date(amz_date))
		return cfs_error_set(CFS_EINVAL,
				     "incomplete signing credentials");
	slen = strlen(cred->secret_key);
	if (slen > SECRET_MAX)
		return cfs_error_set(CFS_EINVAL, "secret key is too long");
	rc = cfs_sigv4_canonical_request(&creq, &signed_headers, req);
	if (rc)
		goto out;
	cfs_sha256_hex(creq_hash, creq, strlen(creq));
	memcpy(day, amz_date, 8);
	day[8] = '\0';
	sts = cfs_asprintf(SIGV4_ALGO "\n%s\n%s/%s/%s/aws4_request\n%s",
			   amz_date, day, cred->region, cred->service,
			   creq_hash);
	if (!sts) {
		rc = CFS_ENOMEM;
		goto out;
	}
	/* kSecret = "AWS4" + secret, in guarded memory, wiped below. */
	kscratch = sodium_malloc(slen + 4);
	if (!kscratch) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	memcpy(kscratch, "AWS4", 4);
	memcpy(kscratch + 4, cred->secret_key, slen);
	rc = hmac(k, kscratch, slen + 4, day);
	rc = rc ? rc : hmac(k, k, 32, cred->region);
	rc = rc ? rc : hmac(k, k, 32, cred->service);
	rc = rc ? rc : hmac(k, k, 32, "aws4_request");
	rc = rc ? rc : hmac(mac, k, 32, sts);
	if (rc)
		goto out;
	cfs_hex_encode(sig, mac, 32);
	*out = cfs_asprintf(SIGV4_ALGO " Credential=%s/%s/%s/%s/aws4_request, "
				       "SignedHeaders=%s, Signature=%s",
			    cred->access_key, day, cred->region, cred->service,
			    signed_headers, sig);
	if (!*out) {
		rc = CFS_ENOMEM;
		goto out;
	}
	if (signature_hex)
		memcpy(signature_hex, sig, sizeof(sig));
out:
	sodium_memzero(k, sizeof(k));
	if (kscratch)
		sodium_free(kscratch); /* wipes */
	free(creq);
	free(signed_headers);
	free(sts);
	return rc;
}
