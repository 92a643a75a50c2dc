/*
 * SigV4 signing against AWS's published examples: the Signature Version 4
 * test suite (get-vanilla, post-vanilla, get-vanilla-query-order-key-case;
 * AKIDEXAMPLE, service "service", 20150830T123600Z) and the S3 examples of
 * "Examples of the complete Version 4 signing process" (GET Object with a
 * Range, PUT Object, GET Bucket lifecycle, GET Bucket with max-keys and
 * prefix; AKIAIOSFODNN7EXAMPLE, 20130524T000000Z). Exact signatures, and
 * the canonical requests whose hashes AWS publishes. Pure, no network.
 */
#include "core/error.h"
#include "core/util.h"
#include "storage/sigv4.h"
#include "tests/unit/tap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(void);

static const struct cfs_sigv4_credentials suite_cred = {
	"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1",
	"service"};
static const struct cfs_sigv4_credentials s3_cred = {
	"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
	"us-east-1", "s3"};

static char *sign(const struct cfs_sigv4_credentials *cred, const char *date,
		  const struct cfs_sigv4_request *req, char sig[65])
{
	char *auth = NULL;
	int rc = cfs_sigv4_authorization(&auth, sig, cred, date, req);

	if (rc) {
		tap_diag("sign: %s", cfs_error_last());
		sig[0] = '\0';
	}
	return auth;
}

static void creq_hash(char out[65], const struct cfs_sigv4_request *req)
{
	char *c = NULL;

	out[0] = '\0';
	if (cfs_sigv4_canonical_request(&c, NULL, req) == 0)
		cfs_sha256_hex(out, c, strlen(c));
	free(c);
}

static void test_suite(void)
{
	const char *date = "20150830T123600Z";
	struct cfs_sigv4_kv h[] = {{"Host", "example.amazonaws.com"},
				   {"X-Amz-Date", date}};
	struct cfs_sigv4_kv q[] = {{"Param2", "value2"}, {"Param1", "value1"}};
	struct cfs_sigv4_request req = {
		"GET", "/", NULL, 0, h, 2, CFS_SIGV4_EMPTY_SHA256};
	char sig[65], *auth, *creq = NULL, *sh = NULL;

	TAP_EQ_INT(cfs_sigv4_canonical_request(&creq, &sh, &req), 0,
		   "get-vanilla canonical request");
	TAP_EQ_STR(creq,
		   "GET\n/\n\nhost:example.amazonaws.com\n"
		   "x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
		   "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b"
		   "7852b855",
		   "get-vanilla.creq");
	TAP_EQ_STR(sh, "host;x-amz-date", "signed headers");
	free(creq);
	free(sh);

	auth = sign(&suite_cred, date, &req, sig);
	TAP_EQ_STR(auth,
		   "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/"
		   "service/aws4_request, SignedHeaders=host;x-amz-date, "
		   "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9"
		   "b8aae1d763fbf31",
		   "get-vanilla.authz (exact)");
	free(auth);

	req.method = "POST";
	free(sign(&suite_cred, date, &req, sig));
	TAP_EQ_STR(sig,
		   "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efb"
		   "e5d6b",
		   "post-vanilla signature");

	req.method = "GET";
	req.query = q;
	req.nquery = 2;
	free(sign(&suite_cred, date, &req, sig));
	TAP_EQ_STR(sig,
		   "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cd"
		   "f2500",
		   "get-vanilla-query-order-key-case signature");
}

static void test_s3_examples(void)
{
	const char *date = "20130524T000000Z";
	const char *host = "examplebucket.s3.amazonaws.com";
	char sig[65], hash[65], *auth;

	/* GET Object with Range. */
	{
		struct cfs_sigv4_kv h[] = {
			{"Host", host},
			{"Range", "bytes=0-9"},
			{"x-amz-content-sha256", CFS_SIGV4_EMPTY_SHA256},
			{"x-amz-date", date}};
		struct cfs_sigv4_request req = {
			"GET", "/test.txt",	      NULL, 0, h,
			4,     CFS_SIGV4_EMPTY_SHA256};

		creq_hash(hash, &req);
		TAP_EQ_STR(
			hash,
			"7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2d"
			"c43964946972",
			"GET Object canonical request hash");
		auth = sign(&s3_cred, date, &req, sig);
		TAP_EQ_STR(
			auth,
			"AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/"
			"20130524/us-east-1/s3/aws4_request, SignedHeaders="
			"host;range;x-amz-content-sha256;x-amz-date, "
			"Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170"
			"aba48dd91039c6036bdb41",
			"GET Object authorization (exact)");
		free(auth);
	}
	/* PUT Object: a '$' in the key, a Date header, a storage class. */
	{
		const char *body = "Welcome to Amazon S3.";
		char bh[65];
		struct cfs_sigv4_kv h[] = {
			{"Date", "Fri, 24 May 2013 00:00:00 GMT"},
			{"Host", host},
			{"x-amz-content-sha256", bh},
			{"x-amz-date", date},
			{"x-amz-storage-class", "REDUCED_REDUNDANCY"}};
		struct cfs_sigv4_request req = {
			"PUT", "/test$file.text", NULL, 0, h, 5, bh};

		cfs_sha256_hex(bh, body, strlen(body));
		TAP_EQ_STR(
			bh,
			"44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034"
			"a8b803f8b072",
			"PUT Object payload hash");
		creq_hash(hash, &req);
		TAP_EQ_STR(
			hash,
			"9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76"
			"b4158342019d",
			"PUT Object canonical request hash");
		free(sign(&s3_cred, date, &req, sig));
		TAP_EQ_STR(
			sig,
			"98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b597"
			"1af0ece108bd",
			"PUT Object signature");
	}
	/* GET Bucket lifecycle: a sub-resource without a value. */
	{
		struct cfs_sigv4_kv h[] = {
			{"Host", host},
			{"x-amz-content-sha256", CFS_SIGV4_EMPTY_SHA256},
			{"x-amz-date", date}};
		struct cfs_sigv4_kv q[] = {{"lifecycle", NULL}};
		struct cfs_sigv4_request req = {
			"GET", "/", q, 1, h, 3, CFS_SIGV4_EMPTY_SHA256};

		free(sign(&s3_cred, date, &req, sig));
		TAP_EQ_STR(
			sig,
			"fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a20"
			"0a0136783543",
			"GET Bucket lifecycle signature");
	}
	/* GET Bucket (list) with max-keys and prefix, given unsorted. */
	{
		struct cfs_sigv4_kv h[] = {
			{"x-amz-date", date},
			{"x-amz-content-sha256", CFS_SIGV4_EMPTY_SHA256},
			{"Host", host}};
		struct cfs_sigv4_kv q[] = {{"prefix", "J"}, {"max-keys", "2"}};
		struct cfs_sigv4_request req = {
			"GET", "/", q, 2, h, 3, CFS_SIGV4_EMPTY_SHA256};

		creq_hash(hash, &req);
		TAP_EQ_STR(
			hash,
			"df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e"
			"0f1e7df1b9b7",
			"GET Bucket canonical request hash");
		free(sign(&s3_cred, date, &req, sig));
		TAP_EQ_STR(
			sig,
			"34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5"
			"711ef69dc6f7",
			"GET Bucket (list) signature");
	}
}

static void test_encoding(void)
{
	struct cfs_buf b = CFS_BUF_INIT;
	struct cfs_sigv4_kv q[] = {{"prefix", "contexts/a b/"},
				   {"continuation-token", "k+1=2&x"},
				   {"list-type", "2"},
				   {"uploads", ""},
				   {"a", "2"},
				   {"a", "1"}};
	struct cfs_sigv4_kv h[] = {{"Host", "h"},
				   {"X-Amz-Meta-A", "  a   b \t c  "},
				   {"x-amz-meta-a", "second"},
				   {"x-amz-date", "20130524T000000Z"}};
	struct cfs_sigv4_request req = {
		"PUT", "/b/k é/x", NULL, 0, h, 4, CFS_SIGV4_UNSIGNED_PAYLOAD};
	char *s = NULL, *sh = NULL;

	cfs_buf_puts(&b, "");
	cfs_sigv4_uri_encode(&b, "a b/c~d_e.f-g$%\xc3\xa9", true);
	TAP_EQ_STR(b.ptr, "a%20b/c~d_e.f-g%24%25%C3%A9",
		   "path encoding keeps '/' and unreserved, upper-case hex");
	b.len = 0;
	cfs_sigv4_uri_encode(&b, "a/b=c", false);
	b.ptr[b.len] = '\0';
	TAP_EQ_STR(b.ptr, "a%2Fb%3Dc", "query encoding encodes '/' and '='");
	cfs_buf_free(&b);

	TAP_EQ_INT(cfs_sigv4_canonical_query(&s, q, 6), 0, "canonical query");
	TAP_EQ_STR(s,
		   "a=1&a=2&continuation-token=k%2B1%3D2%26x&list-type=2&"
		   "prefix=contexts%2Fa%20b%2F&uploads=",
		   "query sorted by name then value, bare keys get '='");
	free(s);
	TAP_EQ_INT(cfs_sigv4_canonical_query(&s, NULL, 0), 0, "empty query");
	TAP_EQ_STR(s, "", "empty query is the empty string");
	free(s);

	TAP_EQ_INT(cfs_sigv4_canonical_request(&s, &sh, &req), 0,
		   "canonical request with repeated headers");
	TAP_EQ_STR(s,
		   "PUT\n/b/k%20%C3%A9/x\n\nhost:h\nx-amz-date:20130524T000000Z"
		   "\nx-amz-meta-a:a b c,second\n\nhost;x-amz-date;x-amz-meta-a"
		   "\nUNSIGNED-PAYLOAD",
		   "values trimmed and collapsed, repeated names joined");
	TAP_EQ_STR(sh, "host;x-amz-date;x-amz-meta-a", "names listed once");
	free(s);
	free(sh);

	{
		char d[17];

		cfs_sigv4_amz_date(d, 1369353600);
		TAP_EQ_STR(d, "20130524T000000Z", "amz date");
	}
	{
		char sig[65];
		struct cfs_sigv4_request r2 = req;

		TAP_EQ_INT(cfs_sigv4_authorization(&s, sig, &s3_cred,
						   "2013-05-24", &req),
			   CFS_EINVAL, "a malformed date is refused");
		r2.path = "nope";
		TAP_EQ_INT(cfs_sigv4_authorization(&s, sig, &s3_cred,
						   "20130524T000000Z", &r2),
			   CFS_EINVAL, "a relative path is refused");
	}
}

int main(void)
{
	cfs_init();
	test_suite();
	test_s3_examples();
	test_encoding();
	return tap_done();
}
