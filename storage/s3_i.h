/*
 * Internals of the S3 backend shared by s3.c and s3_xml.c: the parsers of
 * the S3 XML responses. They parse untrusted network input with libxml2
 * (no network access, no entity substitution, no DTD loading) and cap
 * every count and length.
 */
#ifndef CFS_STORAGE_S3_I_H
#define CFS_STORAGE_S3_I_H

#include <stdbool.h>
#include <stddef.h>

#include "core/store.h"

/* Caps on what one response may carry. */
#define CFS_S3_XML_MAX (16u << 20) /* bytes of one XML response */
#define CFS_S3_KEY_MAX 1024 /* S3's own limit on a key, in bytes */
#define CFS_S3_PAGE_KEYS_MAX 10000 /* keys in one ListObjectsV2 page */
#define CFS_S3_TOKEN_MAX 4096 /* continuation token, upload id */

/* One ListObjectsV2 page. */
struct cfs_s3_list_page {
	char **keys; /* full object keys, as the server wrote them */
	size_t nkeys;
	bool truncated; /* IsTruncated */
	char *next_token; /* NextContinuationToken, NULL if none */
};

void cfs_s3_list_page_clear(struct cfs_s3_list_page *page);

/* Parses a ListBucketResult. CFS_ECORRUPT on anything else. */
int cfs_s3_xml_parse_list(struct cfs_s3_list_page *out, const char *xml,
			  size_t len);

/*
 * Parses an <Error> document: Code and Message (truncated to fit, "" when
 * absent). Returns 0 when the document is an <Error>, CFS_ENOTFOUND when it
 * is something else or not XML at all.
 */
int cfs_s3_xml_parse_error(char *code, size_t code_len, char *msg,
			   size_t msg_len, const char *xml, size_t len);

/* UploadId of an InitiateMultipartUploadResult (heap string). */
int cfs_s3_xml_parse_upload_id(char **out, const char *xml, size_t len);

/*
 * A CompleteMultipartUploadResult: its ETag (may be "": RGW sends none).
 * An <Error> document (S3 may send one with status 200) -> CFS_EAGAIN when
 * its code is InternalError/SlowDown (retryable), else CFS_EIO; code gets
 * the error code.
 */
int cfs_s3_xml_parse_complete(char etag[CFS_ETAG_MAX], char *code,
			      size_t code_len, const char *xml, size_t len);

#endif
