/*
 * AWS Signature Version 4 (header-based, AWS4-HMAC-SHA256) with OpenSSL.
 * libcurl's CURLOPT_AWS_SIGV4 (7.88) neither sorts nor encodes the query
 * and does not sign x-amz-content-sha256, so the S3 backend signs every
 * request itself with this module; the URL it sends carries exactly the
 * canonical query built here, so what is signed is what is sent.
 *
 * Canonicalisation follows the S3 rules: the path is URI-encoded once per
 * segment (no dot-segment normalisation, S3 keys are opaque), query names
 * and values are encoded (upper-case %XX, '/' as %2F) and sorted by name
 * then value, header names are lower-cased, values trimmed with inner runs
 * of spaces collapsed, headers sorted, and repeated names joined with ','.
 * Every header given to the signer is signed.
 */
#ifndef CFS_STORAGE_SIGV4_H
#define CFS_STORAGE_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/util.h"

#define CFS_SIGV4_UNSIGNED_PAYLOAD "UNSIGNED-PAYLOAD"
/* Hex SHA-256 of the empty string. */
#define CFS_SIGV4_EMPTY_SHA256 \
	"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
/* Caps: a header or query value, and the number of each. */
#define CFS_SIGV4_VALUE_MAX 8192
#define CFS_SIGV4_ITEMS_MAX 64

struct cfs_sigv4_kv {
	const char *name;
	const char *value; /* NULL counts as "" */
};

struct cfs_sigv4_request {
	const char *method; /* "GET", "PUT", ... */
	const char *path; /* raw, unencoded absolute path: "/bucket/a b" */
	const struct cfs_sigv4_kv *query; /* raw names and values */
	size_t nquery;
	/* Every header to sign; must include host and x-amz-date. */
	const struct cfs_sigv4_kv *headers;
	size_t nheaders;
	/* Hex SHA-256 of the body, or CFS_SIGV4_UNSIGNED_PAYLOAD. */
	const char *payload_hash;
};

struct cfs_sigv4_credentials {
	const char *access_key;
	const char *secret_key;
	const char *region; /* "us-east-1" */
	const char *service; /* "s3" */
};

/* Appends s URI-encoded the AWS way; '/' is kept when keep_slash. */
int cfs_sigv4_uri_encode(struct cfs_buf *out, const char *s, bool keep_slash);

/* The canonical query string ("a=1&b=x%2Fy", "" when n == 0). */
int cfs_sigv4_canonical_query(char **out, const struct cfs_sigv4_kv *query,
			      size_t n);

/*
 * The canonical request, and (signed_headers may be NULL) the
 * ';'-separated list of signed header names.
 */
int cfs_sigv4_canonical_request(char **out, char **signed_headers,
				const struct cfs_sigv4_request *req);

/* "20130524T000000Z" for a Unix time, into out (at least 17 bytes). */
void cfs_sigv4_amz_date(char out[17], int64_t unix_seconds);

/*
 * The Authorization header value for req signed at amz_date
 * ("YYYYMMDDTHHMMSSZ", which must equal the request's x-amz-date):
 * "AWS4-HMAC-SHA256 Credential=<ak>/<date>/<region>/<service>/aws4_request,
 * SignedHeaders=<names>, Signature=<64 hex>". signature_hex (may be NULL;
 * 65 bytes) also receives the bare signature.
 */
int cfs_sigv4_authorization(char **out, char *signature_hex,
			    const struct cfs_sigv4_credentials *cred,
			    const char *amz_date,
			    const struct cfs_sigv4_request *req);

#endif
