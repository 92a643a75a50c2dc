/*
 * The response-stream parsers of the HTTP adapters, folder private so the
 * fuzz harness (tests/fuzz/fuzz_provider_stream.c) can drive them: E2B's
 * Connect envelopes (adapters/e2b.c) and Vercel's NDJSON command lines
 * (adapters/vercel.c). Both take bytes split anywhere, as libcurl hands
 * them over, and keep every buffer under a cap.
 */
#ifndef CFS_ADAPTERS_STREAM_I_H
#define CFS_ADAPTERS_STREAM_I_H

#include <stdbool.h>
#include <stddef.h>

#include "core/util.h"

struct cfs_e2b_stream {
	struct cfs_buf pending; /* bytes of an incomplete envelope */
	struct cfs_buf out, err; /* decoded output, capped */
	bool truncated;
	long pid;
	bool got_end, got_eos;
	int exit_code;
	char status[64];
	char end_error[200]; /* error of the end event (spawn failure) */
	char eos_code[48]; /* end-stream error code, "" = none */
	char eos_msg[200];
};

/* Feeds response bytes (payload = the stream); 0 or a CFS_E* code. */
int cfs_e2b_stream_feed(const char *p, size_t n, void *payload);
void cfs_e2b_stream_clear(struct cfs_e2b_stream *st);

struct cfs_vercel_stream {
	struct cfs_buf line; /* an incomplete line */
	struct cfs_buf out, err; /* capped */
	bool truncated;
	char cmd_id[128];
	bool done;
	int exit_code;
	char error[300]; /* a {"stream":"error"} line */
};

int cfs_vercel_stream_feed(const char *p, size_t n, void *payload);
/* Parses a last line without its newline. */
int cfs_vercel_stream_finish(struct cfs_vercel_stream *st);
void cfs_vercel_stream_clear(struct cfs_vercel_stream *st);

#endif
