/*
 * HTTP plumbing for the e2b and vercel adapters (adapters/http.h).
 *
 * Every request runs on its own easy handle inside a multi handle, polled
 * in slices of at most 200 ms: that is what lets a run() notice the
 * caller's cancel flag (core/runtime.h) and an idle or total deadline
 * while a long command's response stream is open. Secrets only ever travel
 * in headers built by the adapters; nothing here logs a header or a query.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <sodium.h>

#include "adapters/http.h"
#include "core/error.h"
#include "core/log.h"

static pthread_once_t http_once = PTHREAD_ONCE_INIT;
static CURLcode http_init_rc = CURLE_FAILED_INIT;

static void http_global_init(void)
{
	http_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int cfs_http_init(void)
{
	pthread_once(&http_once, http_global_init);
	if (http_init_rc != CURLE_OK)
		return cfs_error_set(CFS_EIO, "libcurl initialisation failed");
	return 0;
}

struct xfer {
	struct cfs_http_resp *resp;
	const struct cfs_http_req *req;
	CURL *h;
	int rc; /* error raised inside the write callback */
	int64_t last_io_ms;
};

static size_t on_write(char *p, size_t size, size_t nmemb, void *ud)
{
	struct xfer *x = ud;
	size_t n = size * nmemb;
	long status = 0;

	x->last_io_ms = cfs_monotonic_ms();
	curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &status);
	if (status >= 200 && status < 300) {
		if (x->req->on_data) {
			x->rc = x->req->on_data(p, n, x->req->payload);
			return x->rc ? 0 : n;
		}
		if (x->req->out_fd >= 0) {
			if (cfs_write_all(x->req->out_fd, p, n) != 0) {
				x->rc = cfs_error_errno(errno,
							"writing a download");
				return 0;
			}
			return n;
		}
	}
	if (x->resp->body.len + n > CFS_HTTP_BODY_MAX) {
		x->rc = cfs_error_set(CFS_EIO,
				      "response body larger than %u bytes",
				      CFS_HTTP_BODY_MAX);
		return 0;
	}
	if (cfs_buf_put(&x->resp->body, p, n) != 0) {
		x->rc = CFS_ENOMEM;
		return 0;
	}
	return n;
}

/* The URL without its query, for messages. */
static int url_shown(const char *url)
{
	const char *q = strchr(url, '?');

	return q ? (int)(q - url) : (int)strlen(url);
}

int cfs_http_do(struct cfs_http_resp *resp, const struct cfs_http_req *req,
		const char *what)
{
	struct xfer x = {resp, req, NULL, 0, 0};
	CURLM *m = NULL;
	CURLcode cc = CURLE_OK;
	bool done = false, added = false;
	char *ct = NULL;
	int rc;

	cfs_http_resp_clear(resp);
	rc = cfs_http_init();
	if (rc)
		return rc;
	x.h = curl_easy_init();
	m = curl_multi_init();
	if (!x.h || !m) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory (curl)");
		goto out;
	}
	curl_easy_setopt(x.h, CURLOPT_URL, req->url);
	curl_easy_setopt(x.h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(x.h, CURLOPT_CONNECTTIMEOUT, 30L);
	curl_easy_setopt(x.h, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(x.h, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(x.h, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(x.h, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(x.h, CURLOPT_WRITEDATA, &x);
	curl_easy_setopt(x.h, CURLOPT_HTTPHEADER, req->headers);
	curl_easy_setopt(x.h, CURLOPT_ACCEPT_ENCODING, "");
	if (req->mime) {
		curl_easy_setopt(x.h, CURLOPT_MIMEPOST, req->mime);
	} else if (strcmp(req->method, "POST") == 0 ||
		   strcmp(req->method, "PUT") == 0 ||
		   strcmp(req->method, "PATCH") == 0) {
		curl_easy_setopt(x.h, CURLOPT_POSTFIELDSIZE_LARGE,
				 (curl_off_t)req->body_len);
		curl_easy_setopt(x.h, CURLOPT_POSTFIELDS,
				 req->body ? req->body : "");
	}
	if (strcmp(req->method, "GET") != 0 && strcmp(req->method, "POST") != 0)
		curl_easy_setopt(x.h, CURLOPT_CUSTOMREQUEST, req->method);
	if (curl_multi_add_handle(m, x.h) != CURLM_OK) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory (curl)");
		goto out;
	}
	added = true;
	x.last_io_ms = cfs_monotonic_ms();

	while (!done) {
		int running = 0, wait_ms = 200, msgs;
		CURLMsg *msg;
		int64_t now;

		if (curl_multi_perform(m, &running) != CURLM_OK) {
			rc = cfs_error_set(CFS_EIO, "%s: curl multi failure",
					   what);
			goto out;
		}
		while ((msg = curl_multi_info_read(m, &msgs))) {
			if (msg->msg == CURLMSG_DONE) {
				cc = msg->data.result;
				done = true;
			}
		}
		if (done)
			break;
		if (req->cancel && *req->cancel) {
			rc = cfs_error_set(CFS_ECANCELED, "%s: interrupted",
					   what);
			goto out;
		}
		now = cfs_monotonic_ms();
		if (req->deadline_ms && now >= req->deadline_ms) {
			resp->timed_out = true;
			rc = cfs_error_set(CFS_ETIMEDOUT, "%s: timed out",
					   what);
			goto out;
		}
		if (req->idle_ms && now - x.last_io_ms > req->idle_ms) {
			rc = cfs_error_set(CFS_EAGAIN,
					   "%s: no data from %.*s for %lld s "
					   "(connection stalled; retry)",
					   what, url_shown(req->url), req->url,
					   (long long)(req->idle_ms / 1000));
			goto out;
		}
		if (req->deadline_ms && req->deadline_ms - now < wait_ms)
			wait_ms = (int)(req->deadline_ms - now) + 1;
		curl_multi_poll(m, NULL, 0, wait_ms, NULL);
	}
	if (x.rc) {
		rc = x.rc;
		goto out;
	}
	curl_easy_getinfo(x.h, CURLINFO_RESPONSE_CODE, &resp->status);
	if (cc != CURLE_OK && resp->status) {
		/* a response had started: the peer went away mid-body */
		rc = cfs_error_set(CFS_EIO,
				   "%s: the connection to %.*s dropped "
				   "mid-response: %s",
				   what, url_shown(req->url), req->url,
				   curl_easy_strerror(cc));
		goto out;
	}
	if (cc != CURLE_OK) {
		rc = cfs_error_set(CFS_EAGAIN,
				   "%s: cannot reach %.*s: %s (check the "
				   "network and the endpoint, then retry)",
				   what, url_shown(req->url), req->url,
				   curl_easy_strerror(cc));
		goto out;
	}
	if (curl_easy_getinfo(x.h, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK &&
	    ct)
		snprintf(resp->content_type, sizeof(resp->content_type), "%s",
			 ct);
	/* The buffer is always NUL-terminated for the JSON parsers. */
	if (cfs_buf_put(&resp->body, "", 1) != 0) {
		rc = CFS_ENOMEM;
		goto out;
	}
	resp->body.len--;
	rc = 0;
out:
	if (added)
		curl_multi_remove_handle(m, x.h);
	if (x.h)
		curl_easy_cleanup(x.h);
	if (m)
		curl_multi_cleanup(m);
	return rc;
}

void cfs_http_resp_clear(struct cfs_http_resp *resp)
{
	cfs_buf_free(&resp->body);
	resp->status = 0;
	resp->content_type[0] = '\0';
	resp->timed_out = false;
}

void cfs_http_error_text(char *out, size_t outlen,
			 const struct cfs_http_resp *resp)
{
	const char *p = resp->body.ptr ? resp->body.ptr : "";
	size_t n = 0;
	cJSON *doc = NULL;
	const cJSON *msg = NULL;

	if (outlen == 0)
		return;
	out[0] = '\0';
	if (resp->body.len)
		doc = cJSON_ParseWithLength(p, resp->body.len);
	if (doc) {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(doc, "error");

		msg = cJSON_GetObjectItemCaseSensitive(doc, "message");
		if (!cJSON_IsString(msg) && cJSON_IsObject(e))
			msg = cJSON_GetObjectItemCaseSensitive(e, "message");
		if (!cJSON_IsString(msg) && cJSON_IsString(e))
			msg = e;
	}
	if (cJSON_IsString(msg)) {
		p = msg->valuestring;
		n = strlen(p);
	} else {
		while (n < resp->body.len && p[n] != '\n' && p[n] != '\r')
			n++;
	}
	if (n > 300)
		n = 300;
	snprintf(out, outlen, "%.*s", (int)n, p);
	/* one line, printable */
	for (char *c = out; *c; c++)
		if ((unsigned char)*c < 0x20)
			*c = ' ';
	cJSON_Delete(doc);
}

int cfs_http_header(struct curl_slist **list, const char *name,
		    const char *value)
{
	struct curl_slist *n;
	char *line = cfs_asprintf("%s: %s", name, value);

	if (!line)
		return CFS_ENOMEM;
	n = curl_slist_append(*list, line);
	sodium_memzero(line, strlen(line));
	free(line);
	if (!n)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	*list = n;
	return 0;
}

int cfs_http_urlencode(struct cfs_buf *b, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	int rc = 0;

	for (; *s && !rc; s++) {
		unsigned char c = (unsigned char)*s;

		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		    (c >= '0' && c <= '9') || c == '-' || c == '_' ||
		    c == '.' || c == '~') {
			rc = cfs_buf_put(b, s, 1);
		} else {
			char e[3] = {'%', hex[c >> 4], hex[c & 15]};

			rc = cfs_buf_put(b, e, 3);
		}
	}
	return rc;
}

char *cfs_http_env_secret(const char *name)
{
	const char *v = getenv(name);

	return v && *v ? cfs_secret_strdup(v) : NULL;
}

char *cfs_http_env_url(const char *name, const char *dflt)
{
	const char *v = getenv(name);
	size_t n;

	if (!v || !*v)
		v = dflt;
	n = strlen(v);
	while (n && v[n - 1] == '/')
		n--;
	return cfs_strndup(v, n);
}

struct http_prov {
	struct cfs_provisioner base;
	cfs_http_create_fn fn;
	const void *opts;
};

static int prov_create(struct cfs_runtime **out, struct cfs_provisioner *p,
		       const char *context_id)
{
	struct http_prov *hp = (struct http_prov *)p;

	return hp->fn(out, hp->opts, context_id);
}

static void prov_destroy(struct cfs_provisioner *p, struct cfs_runtime *rt)
{
	(void)p;
	if (!rt)
		return;
	if (cfs_runtime_dispose(rt) != 0)
		cfs_warn("disposing of %s: %s (it ends with its lifetime)",
			 rt->id, cfs_error_last());
	cfs_runtime_free(rt);
}

static void prov_free(struct cfs_provisioner *p)
{
	free(p);
}

int cfs_http_provisioner_new(struct cfs_provisioner **out,
			     cfs_http_create_fn fn, const void *opts)
{
	struct http_prov *hp = cfs_calloc(1, sizeof(*hp));

	*out = NULL;
	if (!hp)
		return CFS_ENOMEM;
	hp->base.version = CFS_RUNTIME_VERSION;
	hp->base.create = prov_create;
	hp->base.destroy = prov_destroy;
	hp->base.free = prov_free;
	hp->fn = fn;
	hp->opts = opts;
	*out = &hp->base;
	return 0;
}
