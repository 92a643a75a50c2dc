/*
 * Shared HTTP plumbing of the HTTP runtime adapters (e2b, vercel): one
 * libcurl request driven through a multi handle so a caller's cancel flag
 * is seen within 200 ms, bounded response buffers, streaming bodies to a
 * callback or a file, and the providers' JSON error messages. Folder
 * private: adapters/ only.
 */
#ifndef CFS_ADAPTERS_HTTP_H
#define CFS_ADAPTERS_HTTP_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <curl/curl.h>

#include "core/runtime.h"
#include "core/util.h"

/* Cap on a buffered (non-streamed) response body. */
#define CFS_HTTP_BODY_MAX (8u << 20)

struct cfs_http_req {
	const char *method; /* "GET", "POST", "DELETE", ... */
	const char *url;
	struct curl_slist *headers; /* borrowed */
	const void *body; /* request body (POST), may be NULL */
	size_t body_len;
	curl_mime *mime; /* multipart body instead (borrowed) */
	/*
	 * Streaming: each chunk of a 2xx response body goes here instead of
	 * the buffer; a non-zero return aborts (the code is returned).
	 */
	int (*on_data)(const char *p, size_t n, void *payload);
	void *payload;
	int out_fd; /* >= 0: a 2xx body is written to this fd */
	volatile sig_atomic_t *cancel; /* optional; CFS_ECANCELED */
	int64_t deadline_ms; /* monotonic; 0 = none */
	/* No bytes for this long = failure (0 = no idle limit). */
	int64_t idle_ms;
};

struct cfs_http_resp {
	long status; /* 0 when no response arrived */
	struct cfs_buf body; /* buffered body (error bodies always) */
	char content_type[96];
	bool timed_out; /* deadline_ms passed (CFS_ETIMEDOUT returned) */
};

/* curl_global_init once (thread-safe). */
int cfs_http_init(void);

/*
 * Performs the request. Returns 0 when an HTTP response arrived (any
 * status: check resp->status), CFS_EAGAIN for a transport failure
 * (connect refused, reset; message names what), CFS_ETIMEDOUT,
 * CFS_ECANCELED, or the on_data callback's code. what names the call in
 * messages ("e2b create sandbox").
 */
int cfs_http_do(struct cfs_http_resp *resp, const struct cfs_http_req *req,
		const char *what);
void cfs_http_resp_clear(struct cfs_http_resp *resp);

/*
 * The provider's error text of a response: "message" of an E2B
 * {code, message} or a Vercel {"error": {code, message}} body, else the
 * body's first line; capped, never NULL (static "" at worst). Valid until
 * the response is cleared or reused; copied into out (size outlen).
 */
void cfs_http_error_text(char *out, size_t outlen,
			 const struct cfs_http_resp *resp);

/* Appends "Name: value" to *list; CFS_ENOMEM on failure. */
int cfs_http_header(struct curl_slist **list, const char *name,
		    const char *value);

/* Appends s percent-encoded (RFC 3986 unreserved kept) to b. */
int cfs_http_urlencode(struct cfs_buf *b, const char *s);

/*
 * Reads a required environment variable holding a secret into
 * sodium-protected memory (cfs_secret_free()); NULL when unset or empty.
 */
char *cfs_http_env_secret(const char *name);

/* Base URL from env var `name` (trailing '/' dropped) or dflt; heap. */
char *cfs_http_env_url(const char *name, const char *dflt);

/*
 * A provisioner for adapters whose every sandbox is created per session:
 * create calls fn(out, opts, context_id), destroy disposes (kills the
 * sandbox) and frees. opts is borrowed and must outlive the provisioner.
 */
struct cfs_provisioner;
typedef int (*cfs_http_create_fn)(struct cfs_runtime **out, const void *opts,
				  const char *context_id);
int cfs_http_provisioner_new(struct cfs_provisioner **out,
			     cfs_http_create_fn fn, const void *opts);

#endif
