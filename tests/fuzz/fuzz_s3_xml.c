/*
 * Fuzz harness for the S3 XML parsers (storage/s3_xml.c): ListObjectsV2
 * pages, <Error> documents, multipart initiate and complete responses, all
 * untrusted network input.
 *
 * Invariants checked on every input: no crash or leak; a parsed list page
 * respects its caps (keys, key length, token length), a truncated page has
 * a continuation token, and no key carries the content of an external or
 * expanded entity (the corpus has an XXE and a billion-laughs document);
 * parsed strings are NUL-terminated within their caps.
 *
 * Replay: linked with tests/fuzz/replay_main.c and run over
 * corpus/s3_xml.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "core/util.h"
#include "storage/s3_i.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *xml = (const char *)data;
	struct cfs_s3_list_page page;
	char code[64], msg[256], etag[CFS_ETAG_MAX];
	char *id = NULL;

	if (cfs_s3_xml_parse_list(&page, xml, size) == 0) {
		if (page.nkeys > CFS_S3_PAGE_KEYS_MAX)
			abort();
		if (page.truncated && (!page.next_token || !page.next_token[0]))
			abort();
		if (page.next_token &&
		    strlen(page.next_token) > CFS_S3_TOKEN_MAX)
			abort();
		for (size_t i = 0; i < page.nkeys; i++) {
			if (!page.keys[i] ||
			    strlen(page.keys[i]) > CFS_S3_KEY_MAX)
				abort();
			if (strstr(page.keys[i], "root:") ||
			    strstr(page.keys[i], "aaaaaaaaaaaaaaaaaaaa"))
				abort(); /* an entity was expanded */
		}
		cfs_s3_list_page_clear(&page);
	}
	if (cfs_s3_xml_parse_error(code, sizeof(code), msg, sizeof(msg), xml,
				   size) == 0) {
		if (strlen(code) >= sizeof(code) || strlen(msg) >= sizeof(msg))
			abort();
	}
	if (cfs_s3_xml_parse_upload_id(&id, xml, size) == 0) {
		if (!id || !id[0] || strlen(id) > CFS_S3_TOKEN_MAX)
			abort();
	}
	free(id);
	cfs_s3_xml_parse_complete(etag, code, sizeof(code), xml, size);
	if (strlen(etag) >= CFS_ETAG_MAX)
		abort();
	cfs_error_clear();
	return 0;
}
