/*
 * Fuzz harness for the HTTP runtime adapters' response parsers
 * (adapters/stream_i.h, adapters/http.h): E2B's Connect envelope stream,
 * Vercel's NDJSON command stream and the providers' JSON error bodies, all
 * untrusted network input.
 *
 * The first byte picks the parser and the chunk size the body is fed in
 * (libcurl splits a body anywhere); the rest is the body. Invariants: no
 * crash or leak; captured output stays within CFS_RUNTIME_OUTPUT_MAX; the
 * same body fed in one piece and in chunks parses to the same result; an
 * error text is one NUL-terminated printable line.
 *
 * Replay: linked with tests/fuzz/replay_main.c and run over
 * corpus/provider_stream.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapters/http.h"
#include "adapters/stream_i.h"
#include "core/error.h"
#include "core/runtime.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int ok, const char *what)
{
	if (!ok) {
		fprintf(stderr, "invariant broken: %s\n", what);
		abort();
	}
}

static int feed(int (*fn)(const char *, size_t, void *), void *st,
		const char *p, size_t n, size_t chunk)
{
	int rc = 0;

	for (size_t off = 0; off < n && !rc; off += chunk)
		rc = fn(p + off, n - off < chunk ? n - off : chunk, st);
	return rc;
}

static void e2b(const char *p, size_t n, size_t chunk)
{
	struct cfs_e2b_stream a = {0}, b = {0};
	int ra = feed(cfs_e2b_stream_feed, &a, p, n, n ? n : 1);
	int rb = feed(cfs_e2b_stream_feed, &b, p, n, chunk);

	check(ra == rb, "e2b: chunking changed the result code");
	if (!ra) {
		check(a.out.len == b.out.len && a.err.len == b.err.len,
		      "e2b: chunking changed the output");
		check(!a.out.len || !memcmp(a.out.ptr, b.out.ptr, a.out.len),
		      "e2b: chunking changed stdout");
		check(a.got_end == b.got_end && a.exit_code == b.exit_code &&
			      a.got_eos == b.got_eos &&
			      !strcmp(a.eos_code, b.eos_code),
		      "e2b: chunking changed the end");
	}
	check(a.out.len <= CFS_RUNTIME_OUTPUT_MAX &&
		      a.err.len <= CFS_RUNTIME_OUTPUT_MAX,
	      "e2b: output over the cap");
	check(memchr(a.eos_code, 0, sizeof(a.eos_code)) != NULL &&
		      memchr(a.status, 0, sizeof(a.status)) != NULL,
	      "e2b: unterminated string");
	cfs_e2b_stream_clear(&a);
	cfs_e2b_stream_clear(&b);
}

static void vercel(const char *p, size_t n, size_t chunk)
{
	struct cfs_vercel_stream a = {0}, b = {0};
	int ra = feed(cfs_vercel_stream_feed, &a, p, n, n ? n : 1);
	int rb = feed(cfs_vercel_stream_feed, &b, p, n, chunk);

	ra = ra ? ra : cfs_vercel_stream_finish(&a);
	rb = rb ? rb : cfs_vercel_stream_finish(&b);
	check(ra == rb, "vercel: chunking changed the result code");
	if (!ra) {
		check(a.out.len == b.out.len && a.err.len == b.err.len &&
			      a.done == b.done && a.exit_code == b.exit_code &&
			      !strcmp(a.cmd_id, b.cmd_id),
		      "vercel: chunking changed the result");
	}
	check(a.out.len <= CFS_RUNTIME_OUTPUT_MAX &&
		      a.err.len <= CFS_RUNTIME_OUTPUT_MAX,
	      "vercel: output over the cap");
	cfs_vercel_stream_clear(&a);
	cfs_vercel_stream_clear(&b);
}

static void error_text(const char *p, size_t n)
{
	struct cfs_http_resp resp = {0};
	char out[160];

	if (cfs_buf_put(&resp.body, p, n) || cfs_buf_put(&resp.body, "", 1))
		return;
	resp.body.len--;
	resp.status = 400;
	cfs_http_error_text(out, sizeof(out), &resp);
	check(memchr(out, 0, sizeof(out)) != NULL, "error text unterminated");
	for (const char *c = out; *c; c++)
		check((unsigned char)*c >= 0x20, "error text not one line");
	cfs_http_resp_clear(&resp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data + 1;
	size_t n, chunk;

	if (size < 1)
		return 0;
	n = size - 1;
	chunk = (size_t)(data[0] >> 2) + 1; /* 1..64 */
	switch (data[0] & 3) {
	case 0:
		e2b(p, n, chunk);
		break;
	case 1:
		vercel(p, n, chunk);
		break;
	default:
		error_text(p, n);
		break;
	}
	cfs_error_clear();
	return 0;
}
