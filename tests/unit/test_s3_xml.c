/*
 * The S3 XML parsers (storage/s3_xml.c) on captured RGW responses and on
 * hostile documents: list pages with entities and continuation tokens,
 * errors, multipart initiate/complete (including S3's error-inside-200),
 * and refusals (not XML, wrong root, truncated without a token, a DTD with
 * an external entity or an entity bomb, oversized input). Pure, no network.
 */
#include "core/error.h"
#include "core/util.h"
#include "storage/s3_i.h"
#include "tests/unit/tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void);

#define X(s) s, strlen(s)

static void test_list(void)
{
	struct cfs_s3_list_page p;
	int rc;

	rc = cfs_s3_xml_parse_list(
		&p, X("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"
		      "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/"
		      "2006-03-01/\"><Name>b</Name><Prefix>x/</Prefix>"
		      "<IsTruncated>true</IsTruncated><Contents><Key>x/a b"
		      "</Key><ETag>&quot;5d41&quot;</ETag></Contents><Contents>"
		      "<Key>x/&amp;&lt;&#233;</Key></Contents>"
		      "<NextContinuationToken>x/&amp;b</NextContinuationToken>"
		      "</ListBucketResult>"));
	TAP_EQ_INT(rc, 0, "list page parses");
	TAP_EQ_INT(p.nkeys, 2, "two keys");
	TAP_EQ_STR(p.nkeys > 0 ? p.keys[0] : NULL, "x/a b", "first key");
	TAP_EQ_STR(p.nkeys > 1 ? p.keys[1] : NULL, "x/&<\xc3\xa9",
		   "entities and character references decoded");
	TAP_OK(p.truncated, "IsTruncated");
	TAP_EQ_STR(p.next_token, "x/&b", "NextContinuationToken");
	cfs_s3_list_page_clear(&p);

	rc = cfs_s3_xml_parse_list(
		&p, X("<ListBucketResult><IsTruncated>false</IsTruncated>"
		      "<KeyCount>0</KeyCount></ListBucketResult>"));
	TAP_OK(rc == 0 && p.nkeys == 0 && !p.truncated, "an empty page");
	cfs_s3_list_page_clear(&p);

	rc = cfs_s3_xml_parse_list(
		&p, X("<ListBucketResult><IsTruncated>true</IsTruncated>"
		      "</ListBucketResult>"));
	TAP_EQ_INT(rc, CFS_ECORRUPT, "truncated without a token is refused");
	rc = cfs_s3_xml_parse_list(&p, X("<Error><Code>x</Code></Error>"));
	TAP_EQ_INT(rc, CFS_ECORRUPT, "another root is refused");
	rc = cfs_s3_xml_parse_list(&p, X("<ListBucketResult><Contents>"));
	TAP_EQ_INT(rc, CFS_ECORRUPT, "malformed XML is refused");
	rc = cfs_s3_xml_parse_list(&p, X("HTTP/1.1 200 OK"));
	TAP_EQ_INT(rc, CFS_ECORRUPT, "not XML is refused");
	rc = cfs_s3_xml_parse_list(
		&p, X("<?xml version=\"1.0\"?><!DOCTYPE r [<!ENTITY x SYSTEM "
		      "\"file:///etc/passwd\">]><ListBucketResult><Contents>"
		      "<Key>&x;</Key></Contents></ListBucketResult>"));
	TAP_EQ_INT(rc, CFS_ECORRUPT,
		   "a DTD with an external entity (XXE) is "
		   "refused");
	rc = cfs_s3_xml_parse_list(
		&p,
		X("<!DOCTYPE l [<!ENTITY a \"aaaaaaaaaa\"><!ENTITY b "
		  "\"&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;\">]><ListBucketResult>"
		  "<Contents><Key>&b;</Key></Contents></ListBucketResult>"));
	TAP_EQ_INT(rc, CFS_ECORRUPT, "an entity bomb is refused");
	{
		struct cfs_buf b = CFS_BUF_INIT;

		cfs_buf_puts(&b, "<ListBucketResult><Contents><Key>");
		for (int i = 0; i < CFS_S3_KEY_MAX + 1; i++)
			cfs_buf_puts(&b, "k");
		cfs_buf_puts(&b, "</Key></Contents></ListBucketResult>");
		rc = cfs_s3_xml_parse_list(&p, b.ptr, b.len);
		TAP_EQ_INT(rc, CFS_ECORRUPT,
			   "a key above 1024 bytes is refused");
		cfs_buf_free(&b);
	}
	rc = cfs_s3_xml_parse_list(&p, "<a/>", CFS_S3_XML_MAX + 1);
	TAP_EQ_INT(rc, CFS_ECORRUPT, "oversized responses are refused unread");
}

static void test_others(void)
{
	char code[64], msg[256], etag[CFS_ETAG_MAX];
	char *id = NULL;
	int rc;

	rc = cfs_s3_xml_parse_error(
		code, sizeof(code), msg, sizeof(msg),
		X("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>"
		  "SignatureDoesNotMatch</Code><Message>The request signature"
		  "</Message><RequestId>tx1</RequestId></Error>"));
	TAP_EQ_INT(rc, 0, "error document");
	TAP_EQ_STR(code, "SignatureDoesNotMatch", "error code");
	TAP_EQ_STR(msg, "The request signature", "error message");
	rc = cfs_s3_xml_parse_error(code, sizeof(code), msg, sizeof(msg),
				    X("<html>502 Bad Gateway</html>"));
	TAP_OK(rc == CFS_ENOTFOUND && !code[0],
	       "a proxy's HTML page is not an S3 error");
	rc = cfs_s3_xml_parse_error(code, 8, msg, sizeof(msg),
				    X("<Error><Code>VeryLongErrorCode</Code>"
				      "</Error>"));
	TAP_EQ_STR(code, "VeryLon", "codes are truncated to fit");

	rc = cfs_s3_xml_parse_upload_id(
		&id, X("<InitiateMultipartUploadResult><Bucket>b</Bucket>"
		       "<UploadId>2~abc</UploadId>"
		       "</InitiateMultipartUploadResult>"));
	TAP_EQ_INT(rc, 0, "initiate response");
	TAP_EQ_STR(id, "2~abc", "upload id");
	free(id);
	rc = cfs_s3_xml_parse_upload_id(
		&id, X("<InitiateMultipartUploadResult><UploadId></UploadId>"
		       "</InitiateMultipartUploadResult>"));
	TAP_OK(rc == CFS_ECORRUPT && !id, "an empty upload id is refused");

	rc = cfs_s3_xml_parse_complete(
		etag, code, sizeof(code),
		X("<CompleteMultipartUploadResult><ETag>&quot;abc-3&quot;"
		  "</ETag></CompleteMultipartUploadResult>"));
	TAP_OK(rc == 0 && !strcmp(etag, "\"abc-3\""), "complete: ETag");
	rc = cfs_s3_xml_parse_complete(
		etag, code, sizeof(code),
		X("<CompleteMultipartUploadResult><Key>k</Key>"
		  "</CompleteMultipartUploadResult>"));
	TAP_OK(rc == 0 && !etag[0], "complete without an ETag (RGW)");
	rc = cfs_s3_xml_parse_complete(
		etag, code, sizeof(code),
		X("<Error><Code>InternalError</Code><Message>retry</Message>"
		  "</Error>"));
	TAP_EQ_INT(rc, CFS_EAGAIN,
		   "an InternalError inside a 200 is "
		   "retryable");
	rc = cfs_s3_xml_parse_complete(
		etag, code, sizeof(code),
		X("<Error><Code>InvalidPart</Code></Error>"));
	TAP_EQ_INT(rc, CFS_EIO, "an InvalidPart inside a 200 is an error");
	TAP_EQ_STR(code, "InvalidPart", "with its code");
}

int main(void)
{
	cfs_init();
	test_list();
	test_others();
	return tap_done();
}
