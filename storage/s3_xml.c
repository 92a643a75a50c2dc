/*
 * Parsers of the S3 XML responses (ListObjectsV2, errors, multipart
 * initiate/complete) over libxml2's tree API. The input is untrusted: it is
 * parsed with XML_PARSE_NONET and without XML_PARSE_NOENT / DTDLOAD (no
 * external entities, no network), a document with a DTD is refused (S3
 * never sends one), text is gathered from text nodes only (entity
 * references are never expanded), and sizes and counts are capped.
 * Elements are matched by local name, so the S3 namespace is optional.
 */
#include "storage/s3_i.h"
#include "core/error.h"

#include <libxml/parser.h>
#include <libxml/tree.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

static pthread_once_t xml_once = PTHREAD_ONCE_INIT;

static void xml_init(void)
{
	xmlInitParser();
}

static int parse(xmlDocPtr *out, const char *xml, size_t len)
{
	pthread_once(&xml_once, xml_init);
	*out = NULL;
	if (!xml || len == 0)
		return cfs_error_set(CFS_ECORRUPT, "empty S3 response");
	if (len > CFS_S3_XML_MAX)
		return cfs_error_set(CFS_ECORRUPT,
				     "S3 response is larger than %u bytes",
				     CFS_S3_XML_MAX);
	*out = xmlReadMemory(xml, (int)len, "s3-response.xml", NULL,
			     XML_PARSE_NONET | XML_PARSE_NOERROR |
				     XML_PARSE_NOWARNING);
	if (!*out || !xmlDocGetRootElement(*out)) {
		xmlFreeDoc(*out);
		*out = NULL;
		return cfs_error_set(CFS_ECORRUPT,
				     "S3 response is not well-formed XML");
	}
	if ((*out)->intSubset || (*out)->extSubset) {
		/* S3 never sends a DTD; entities are an attack surface. */
		xmlFreeDoc(*out);
		*out = NULL;
		return cfs_error_set(CFS_ECORRUPT,
				     "S3 response carries a DTD; refused");
	}
	return 0;
}

/*
 * The text of an element: its text and CDATA children only (character
 * and predefined entity references are already text), capped at max bytes
 * (0 on overflow). Never expands entity references.
 */
static int gather(struct cfs_buf *b, xmlNodePtr n, size_t max)
{
	for (xmlNodePtr c = n->children; c; c = c->next) {
		if (c->type != XML_TEXT_NODE &&
		    c->type != XML_CDATA_SECTION_NODE)
			continue;
		if (!c->content)
			continue;
		if (b->len + strlen((const char *)c->content) > max)
			return CFS_ECORRUPT;
		if (cfs_buf_puts(b, (const char *)c->content))
			return CFS_ENOMEM;
	}
	return 0;
}

static bool named(xmlNodePtr n, const char *name)
{
	return n && n->type == XML_ELEMENT_NODE &&
	       strcmp((const char *)n->name, name) == 0;
}

static xmlNodePtr child(xmlNodePtr parent, const char *name)
{
	for (xmlNodePtr c = parent ? parent->children : NULL; c; c = c->next)
		if (named(c, name))
			return c;
	return NULL;
}

/* The element's text as a heap string capped at max bytes (NULL = error). */
static char *text_of(xmlNodePtr n, size_t max, const char *what)
{
	struct cfs_buf b = CFS_BUF_INIT;
	int rc = cfs_buf_puts(&b, "");

	rc = rc ? rc : gather(&b, n, max);
	if (rc) {
		cfs_buf_free(&b);
		if (rc == CFS_ECORRUPT)
			cfs_error_set(CFS_ECORRUPT,
				      "S3 response: %s is too long", what);
		return NULL;
	}
	return cfs_buf_detach(&b);
}

/* Copies the text of parent/<name> into out (truncated), "" if absent. */
static void copy_text(char *out, size_t outlen, xmlNodePtr parent,
		      const char *name)
{
	xmlNodePtr c = child(parent, name);
	char *t;

	if (!outlen)
		return;
	out[0] = '\0';
	if (!c)
		return;
	t = text_of(c, 1u << 16, name);
	if (!t) {
		cfs_error_clear();
		return;
	}
	snprintf(out, outlen, "%s", t);
	free(t);
}

void cfs_s3_list_page_clear(struct cfs_s3_list_page *page)
{
	if (!page)
		return;
	for (size_t i = 0; i < page->nkeys; i++)
		free(page->keys[i]);
	free(page->keys);
	free(page->next_token);
	memset(page, 0, sizeof(*page));
}

int cfs_s3_xml_parse_list(struct cfs_s3_list_page *out, const char *xml,
			  size_t len)
{
	xmlDocPtr doc = NULL;
	xmlNodePtr root, c;
	size_t cap = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = parse(&doc, xml, len);
	if (rc)
		return rc;
	root = xmlDocGetRootElement(doc);
	if (!named(root, "ListBucketResult")) {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "S3 list response is a <%s>, not a "
				   "<ListBucketResult>",
				   (const char *)root->name);
		goto out;
	}
	for (c = root->children; c; c = c->next) {
		if (named(c, "IsTruncated")) {
			char tf[8];

			copy_text(tf, sizeof(tf), root, "IsTruncated");
			out->truncated = strcmp(tf, "true") == 0;
		} else if (named(c, "NextContinuationToken")) {
			free(out->next_token);
			out->next_token = text_of(c, CFS_S3_TOKEN_MAX,
						  "NextContinuationToken");
			if (!out->next_token) {
				rc = cfs_error_last_code();
				goto out;
			}
		} else if (named(c, "Contents")) {
			xmlNodePtr k = child(c, "Key");
			char *key;

			if (!k) {
				rc = cfs_error_set(CFS_ECORRUPT,
						   "S3 list entry without a "
						   "<Key>");
				goto out;
			}
			if (out->nkeys == CFS_S3_PAGE_KEYS_MAX) {
				rc = cfs_error_set(CFS_ECORRUPT,
						   "S3 list page has more than "
						   "%u keys",
						   CFS_S3_PAGE_KEYS_MAX);
				goto out;
			}
			if (out->nkeys == cap) {
				size_t ncap = cap ? cap * 2 : 64;
				char **nk =
					realloc(out->keys, ncap * sizeof(*nk));

				if (!nk) {
					rc = cfs_error_set(CFS_ENOMEM,
							   "out of memory");
					goto out;
				}
				out->keys = nk;
				cap = ncap;
			}
			key = text_of(k, CFS_S3_KEY_MAX, "object key");
			if (!key) {
				rc = cfs_error_last_code();
				goto out;
			}
			out->keys[out->nkeys++] = key;
		}
	}
	if (out->truncated && (!out->next_token || !out->next_token[0])) {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "S3 list is truncated but has no "
				   "NextContinuationToken");
		goto out;
	}
out:
	xmlFreeDoc(doc);
	if (rc)
		cfs_s3_list_page_clear(out);
	return rc;
}

int cfs_s3_xml_parse_error(char *code, size_t code_len, char *msg,
			   size_t msg_len, const char *xml, size_t len)
{
	xmlDocPtr doc = NULL;
	xmlNodePtr root;
	int rc = 0;

	if (code_len)
		code[0] = '\0';
	if (msg_len)
		msg[0] = '\0';
	if (!xml || len == 0 || len > CFS_S3_XML_MAX)
		return CFS_ENOTFOUND;
	if (parse(&doc, xml, len)) {
		cfs_error_clear();
		return CFS_ENOTFOUND;
	}
	root = xmlDocGetRootElement(doc);
	if (named(root, "Error")) {
		copy_text(code, code_len, root, "Code");
		copy_text(msg, msg_len, root, "Message");
	} else {
		rc = CFS_ENOTFOUND;
	}
	xmlFreeDoc(doc);
	return rc;
}

int cfs_s3_xml_parse_upload_id(char **out, const char *xml, size_t len)
{
	xmlDocPtr doc = NULL;
	xmlNodePtr root, id;
	int rc;

	*out = NULL;
	rc = parse(&doc, xml, len);
	if (rc)
		return rc;
	root = xmlDocGetRootElement(doc);
	id = named(root, "InitiateMultipartUploadResult")
		     ? child(root, "UploadId")
		     : NULL;
	if (!id) {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "S3 multipart initiate response has no "
				   "<UploadId>");
		goto out;
	}
	*out = text_of(id, CFS_S3_TOKEN_MAX, "UploadId");
	if (!*out) {
		rc = cfs_error_last_code();
		goto out;
	}
	if (!(*out)[0]) {
		free(*out);
		*out = NULL;
		rc = cfs_error_set(CFS_ECORRUPT,
				   "S3 multipart initiate response has an "
				   "empty <UploadId>");
	}
out:
	xmlFreeDoc(doc);
	return rc;
}

int cfs_s3_xml_parse_complete(char etag[CFS_ETAG_MAX], char *code,
			      size_t code_len, const char *xml, size_t len)
{
	xmlDocPtr doc = NULL;
	xmlNodePtr root;
	int rc;

	etag[0] = '\0';
	if (code_len)
		code[0] = '\0';
	rc = parse(&doc, xml, len);
	if (rc)
		return rc;
	root = xmlDocGetRootElement(doc);
	if (named(root, "CompleteMultipartUploadResult")) {
		copy_text(etag, CFS_ETAG_MAX, root, "ETag");
	} else if (named(root, "Error")) {
		char msg[256];

		copy_text(code, code_len, root, "Code");
		copy_text(msg, sizeof(msg), root, "Message");
		rc = cfs_error_set(
			strcmp(code, "InternalError") == 0 ||
					strcmp(code, "SlowDown") == 0
				? CFS_EAGAIN
				: CFS_EIO,
			"S3 could not complete the multipart upload: %s %s",
			code, msg);
	} else {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "S3 multipart complete response is a <%s>",
				   (const char *)root->name);
	}
	xmlFreeDoc(doc);
	return rc;
}
