/*
 * S3 storage backend over libcurl (see storage/storage.h for the contract
 * summary and REFERENCE.md §3.4 for the reference's S3Storage).
 *
 * Requests: every request is signed here with SigV4 (storage/sigv4.h); the
 * URL carries exactly the canonical path and query that were signed, and
 * the Host header is set explicitly to the signed value. curl's path
 * squashing is off (S3 keys are opaque) and "Expect: 100-continue" is not
 * sent. Easy handles are pooled per store (protected by pool_mu) so
 * connections are reused; any thread may run any request.
 *
 * Retries: transport errors, 429, 500/502/503/504 and S3's RequestTimeout /
 * SlowDown are retried up to max_retries times with full-jitter backoff.
 * A conditional PUT may have landed although we never saw the answer (its
 * connection broke; curl itself silently resends a request whose reused
 * connection died; RGW answers a lost If-Match race with 500). So every
 * refusal (412/409, or 5xx once retries are spent) is checked with a HEAD
 * that compares the current ETag with the MD5 of our body: when they
 * match, our write is the current object and the put succeeds instead of
 * reporting "my own write" as a conflict. (Identical bytes written by
 * another writer count as ours; lock and manifest bodies are unique.)
 *
 * If-Match: RGW 16 compares If-Match against the ETag without its quotes
 * (a quoted value always fails), AWS documents the quoted form. The store
 * sends the configured form; in AUTO mode it starts unquoted and switches
 * to quoted when a 412 arrives while a HEAD shows the expected ETag is the
 * current one (the server refused the form, not the value).
 *
 * Downloads stream into the caller's fd; when a transfer breaks, the rest
 * is fetched with "Range: bytes=<done>-" and If-Match on the first
 * response's ETag, so the body is never a splice of two revisions. If the
 * object changed, the download restarts from scratch (the fd is truncated
 * back; a non-seekable fd fails with CFS_EAGAIN).
 *
 * Uploads stream from the caller's fd (pread; never more than one curl
 * buffer in memory); Content-MD5 is computed in a first pass so the server
 * verifies every body. Objects >= multipart_threshold go up in parts of
 * part_size, parallel_parts at a time, each from its own handle; a failed
 * upload is aborted. Multipart completion cannot carry a condition on all
 * servers (RGW ignores it), so create-only and compare-and-swap are checked
 * by a HEAD first (not atomic; the engine never writes big objects
 * conditionally).
 */
#include "storage/storage.h"
#include "core/error.h"
#include "core/log.h"
#include "storage/s3_i.h"
#include "storage/sigv4.h"

#include <ctype.h>
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <sodium.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MIB ((uint64_t)1 << 20)
#define DEF_RETRIES 6
#define DEF_RETRY_BASE_MS 100
#define DEF_RETRY_MAX_MS 5000
#define DEF_MULTIPART_THRESHOLD (64 * MIB)
#define DEF_PART_SIZE (16 * MIB)
#define MIN_PART_SIZE (5 * MIB)
#define MAX_PARTS 10000
#define DEF_PARALLEL 4
#define MAX_PARALLEL 16
#define DEF_CONNECT_MS 10000
#define DEF_STALL_S 60
#define SMALL_REQUEST_TIMEOUT_MS 120000L
#define ERR_BODY_MAX (64u << 10)
#define POOL_IDLE_MAX 16
#define PROGRESS_STEP MIB
#define MAX_HEADERS 16

struct pool_ent {
	struct pool_ent *next;
	CURL *curl;
};

struct s3_store {
	struct cfs_store base; /* first member */
	char *base_url; /* "http://127.0.0.1:7480" or "https://b.s3..." */
	char *host_header; /* the signed Host value */
	char *bucket_path; /* "/bucket" (path style) or "" + endpoint path */
	char *bucket;
	char *prefix; /* "" or "p" (no trailing '/') */
	char *region;
	char *access_key;
	char *secret; /* sodium memory */
	char *session_token; /* sodium memory, may be NULL */
	char *ca_file;
	char *description;
	unsigned max_retries, retry_base_ms, retry_max_ms;
	uint64_t multipart_threshold, part_size;
	unsigned parallel_parts, connect_timeout_ms, stall_timeout_s;
	bool insecure_tls, content_md5, if_match_auto;
	atomic_bool if_match_quoted;
	atomic_bool if_match_confirmed; /* a conditional put succeeded */
	pthread_mutex_t pool_mu;
	struct pool_ent *pool; /* protected by pool_mu */
	unsigned npool; /* protected by pool_mu */
	pthread_mutex_t progress_mu; /* recursive; serializes progress calls */
};

/* ---- small helpers ------------------------------------------------------ */

static struct s3_store *s3_of(struct cfs_store *st)
{
	return (struct s3_store *)st;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
	curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void msleep(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Full jitter: uniform in [0, min(cap, base * 2^attempt)]. */
static void backoff(const struct s3_store *s, unsigned attempt)
{
	uint64_t ceil = s->retry_base_ms;

	for (unsigned i = 0; i < attempt && ceil < s->retry_max_ms; i++)
		ceil *= 2;
	if (ceil > s->retry_max_ms)
		ceil = s->retry_max_ms;
	msleep(randombytes_uniform((uint32_t)ceil + 1));
}

/* The bare entity tag: quotes and a weak "W/" prefix stripped. */
static void etag_bare(char out[CFS_ETAG_MAX], const char *etag)
{
	size_t n;

	if (!strncmp(etag, "W/", 2))
		etag += 2;
	n = strlen(etag);
	if (n >= 2 && etag[0] == '"' && etag[n - 1] == '"') {
		etag++;
		n -= 2;
	}
	if (n >= CFS_ETAG_MAX)
		n = CFS_ETAG_MAX - 1;
	memcpy(out, etag, n);
	out[n] = '\0';
}

static bool etag_equal(const char *a, const char *b)
{
	char x[CFS_ETAG_MAX], y[CFS_ETAG_MAX];

	etag_bare(x, a);
	etag_bare(y, b);
	return x[0] && strcmp(x, y) == 0;
}

/* The ETag as S3 returns it: always quoted. */
static void etag_quoted(char out[CFS_ETAG_MAX], const char *etag)
{
	char bare[CFS_ETAG_MAX];

	etag_bare(bare, etag);
	if (strlen(bare) + 3 > CFS_ETAG_MAX)
		bare[CFS_ETAG_MAX - 3] = '\0';
	snprintf(out, CFS_ETAG_MAX, "\"%s\"", bare);
}

static void if_match_value(const struct s3_store *s, char out[CFS_ETAG_MAX],
			   const char *etag)
{
	if (atomic_load(&s->if_match_quoted))
		etag_quoted(out, etag);
	else
		etag_bare(out, etag);
}

static void trim_copy(char *out, size_t outlen, const char *v, size_t n)
{
	while (n && (*v == ' ' || *v == '\t')) {
		v++;
		n--;
	}
	while (n && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r' ||
		     v[n - 1] == '\n'))
		n--;
	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, v, n);
	out[n] = '\0';
}

/* ---- MD5 (Content-MD5 and the ambiguity check) -------------------------- */

struct md5 {
	EVP_MD_CTX *ctx;
};

static int md5_begin(struct md5 *m)
{
	m->ctx = EVP_MD_CTX_new();
	if (!m->ctx || EVP_DigestInit_ex(m->ctx, EVP_md5(), NULL) != 1) {
		EVP_MD_CTX_free(m->ctx);
		m->ctx = NULL;
		return cfs_error_set(CFS_ERROR, "MD5 is not available");
	}
	return 0;
}

static int md5_end(struct md5 *m, uint8_t out[16], const void *data, size_t len)
{
	unsigned int n = 0;
	int ok = (!len || EVP_DigestUpdate(m->ctx, data, len) == 1) &&
		 EVP_DigestFinal_ex(m->ctx, out, &n) == 1 && n == 16;

	EVP_MD_CTX_free(m->ctx);
	m->ctx = NULL;
	return ok ? 0 : cfs_error_set(CFS_ERROR, "MD5 failed");
}

static int md5_buf(uint8_t out[16], const void *data, size_t len)
{
	struct md5 m;
	int rc = md5_begin(&m);

	return rc ? rc : md5_end(&m, out, data, len);
}

/* MD5 of len bytes of fd from off, read with pread. */
static int md5_fd(uint8_t out[16], int fd, uint64_t off, uint64_t len,
		  const char *key)
{
	const size_t chunk = 1u << 20;
	char *b = cfs_malloc(chunk);
	struct md5 m;
	int rc;

	if (!b)
		return CFS_ENOMEM;
	rc = md5_begin(&m);
	while (!rc && len) {
		size_t want = len < chunk ? (size_t)len : chunk;
		ssize_t n = pread(fd, b, want, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = n < 0 ? cfs_error_errno(errno, "read body of %s",
						     key)
				   : cfs_error_set(CFS_EIO,
						   "body of %s shrank while "
						   "uploading",
						   key);
			break;
		}
		if (EVP_DigestUpdate(m.ctx, b, (size_t)n) != 1)
			rc = cfs_error_set(CFS_ERROR, "MD5 failed");
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	if (!rc)
		rc = md5_end(&m, out, NULL, 0);
	else
		EVP_MD_CTX_free(m.ctx);
	free(b);
	return rc;
}

static void md5_base64(char out[25], const uint8_t md5[16])
{
	sodium_bin2base64(out, 25, md5, 16, sodium_base64_VARIANT_ORIGINAL);
}

/* ---- curl handle pool ----------------------------------------------------- */

static CURL *handle_get(struct s3_store *s)
{
	struct pool_ent *e;
	CURL *c = NULL;

	pthread_mutex_lock(&s->pool_mu);
	e = s->pool;
	if (e) {
		s->pool = e->next;
		s->npool--;
	}
	pthread_mutex_unlock(&s->pool_mu);
	if (e) {
		c = e->curl;
		free(e);
		curl_easy_reset(c);
		return c;
	}
	c = curl_easy_init();
	if (!c)
		cfs_error_set(CFS_ENOMEM, "cannot create a curl handle");
	return c;
}

static void handle_put(struct s3_store *s, CURL *c)
{
	struct pool_ent *e;

	if (!c)
		return;
	e = malloc(sizeof(*e));
	pthread_mutex_lock(&s->pool_mu);
	if (e && s->npool < POOL_IDLE_MAX) {
		e->curl = c;
		e->next = s->pool;
		s->pool = e;
		s->npool++;
		c = NULL;
		e = NULL;
	}
	pthread_mutex_unlock(&s->pool_mu);
	free(e);
	if (c)
		curl_easy_cleanup(c);
}

/* ---- one HTTP exchange ---------------------------------------------------- */

/* A request body: buf/len, or size bytes of fd from off. */
struct body {
	const char *buf;
	int fd;
	uint64_t off;
	uint64_t size;
	uint64_t pos; /* bytes handed to curl in this attempt */
	int read_err; /* CFS_E* of a failed read */
	/* Progress of the whole put (multipart parts add up). */
	struct s3_store *s;
	_Atomic uint64_t *progress_done;
	uint64_t progress_total;
	uint64_t progress_last;
};

/* Where a 2xx response body goes: fd, a capped buffer, or nowhere. */
struct sink {
	int fd;
	struct cfs_buf *buf;
	size_t max; /* cap on buf's total length */
	uint64_t written; /* bytes of the body delivered in this attempt */
	int write_err;
	bool overflow;
	struct s3_store *s; /* for progress (fd sinks) */
	uint64_t progress_base, progress_total, progress_last;
};

struct req {
	const char *method; /* GET HEAD PUT POST DELETE */
	const char *key; /* full object key, NULL for the bucket */
	const char *what; /* the caller's key, for messages */
	struct cfs_sigv4_kv query[4];
	size_t nquery;
	struct cfs_sigv4_kv hdr[8]; /* extra headers, all signed */
	size_t nhdr;
	const char *payload_hash; /* NULL = UNSIGNED-PAYLOAD */
	struct body *body;
	struct sink *sink; /* NULL: a 2xx body is kept in resp.body (capped) */
	bool long_transfer; /* no total timeout, only the stall guard */
};

struct resp {
	long status;
	CURLcode cc;
	char curl_err[CURL_ERROR_SIZE];
	char etag[CFS_ETAG_MAX];
	bool have_length;
	uint64_t length;
	int64_t mtime_ms;
	bool have_range;
	uint64_t range_start, range_total;
	struct cfs_buf body; /* error body, or a small 2xx body */
	char code[64]; /* S3 error code */
	char msg[256]; /* S3 error message */
	CURL *curl; /* the handle during the exchange */
};

static void resp_reset(struct resp *r)
{
	cfs_buf_free(&r->body);
	memset(r, 0, sizeof(*r));
}

static size_t on_header(char *data, size_t size, size_t n, void *payload)
{
	struct resp *r = payload;
	size_t len = size * n, nl;
	const char *colon;
	char v[CFS_ETAG_MAX];

	if (len >= 5 && !strncmp(data, "HTTP/", 5)) {
		/* A new status line (e.g. after a 100): forget what we had. */
		r->etag[0] = '\0';
		r->have_length = r->have_range = false;
		r->mtime_ms = 0;
		return len;
	}
	colon = memchr(data, ':', len);
	if (!colon)
		return len;
	nl = (size_t)(colon - data);
	trim_copy(v, sizeof(v), colon + 1, len - nl - 1);
	if (nl == 4 && !strncasecmp(data, "etag", 4)) {
		snprintf(r->etag, sizeof(r->etag), "%s", v);
	} else if (nl == 14 && !strncasecmp(data, "content-length", 14)) {
		char *end;
		unsigned long long x = strtoull(v, &end, 10);

		r->have_length = end != v && !*end;
		r->length = x;
	} else if (nl == 13 && !strncasecmp(data, "last-modified", 13)) {
		time_t t = curl_getdate(v, NULL);

		r->mtime_ms = t > 0 ? (int64_t)t * 1000 : 0;
	} else if (nl == 13 && !strncasecmp(data, "content-range", 13)) {
		unsigned long long a, b, total;

		if (sscanf(v, "bytes %llu-%llu/%llu", &a, &b, &total) == 3) {
			r->have_range = true;
			r->range_start = a;
			r->range_total = total;
		}
	}
	return len;
}

static void sink_progress(struct sink *k)
{
	uint64_t done = k->progress_base + k->written;

	if (!k->s || !k->s->base.progress)
		return;
	if (done - k->progress_last < PROGRESS_STEP &&
	    done != k->progress_total)
		return;
	k->progress_last = done;
	pthread_mutex_lock(&k->s->progress_mu);
	k->s->base.progress(done, k->progress_total,
			    k->s->base.progress_payload);
	pthread_mutex_unlock(&k->s->progress_mu);
}

struct write_ctx {
	struct resp *r;
	struct sink *k;
};

static size_t on_write(char *data, size_t size, size_t n, void *payload)
{
	struct write_ctx *w = payload;
	size_t len = size * n;
	long status = 0;

	curl_easy_getinfo(w->r->curl, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || status > 299 || !w->k) {
		/* Error bodies and small replies: keep a capped copy. */
		size_t room = ERR_BODY_MAX > w->r->body.len
				      ? ERR_BODY_MAX - w->r->body.len
				      : 0;

		if (status >= 200 && status <= 299 && !w->k)
			room = CFS_S3_XML_MAX > w->r->body.len
				       ? CFS_S3_XML_MAX - w->r->body.len
				       : 0;
		if (len > room) {
			if (status >= 200 && status <= 299) {
				w->r->body.len = 0;
				cfs_error_set(CFS_ECORRUPT,
					      "S3 response is larger than "
					      "%u bytes",
					      CFS_S3_XML_MAX);
				return 0;
			}
			len = room; /* truncate error bodies silently */
		}
		if (len && cfs_buf_put(&w->r->body, data, len))
			return 0;
		return size * n;
	}
	if (!w->k->progress_total && w->r->have_length)
		w->k->progress_total = w->k->progress_base + w->r->length;
	if (w->k->fd >= 0) {
		int rc = cfs_write_all(w->k->fd, data, len);

		if (rc) {
			w->k->write_err = rc;
			return 0;
		}
	} else {
		if (w->k->buf->len + len > w->k->max) {
			w->k->overflow = true;
			return 0;
		}
		if (cfs_buf_put(w->k->buf, data, len)) {
			w->k->write_err = CFS_ENOMEM;
			return 0;
		}
	}
	w->k->written += len;
	sink_progress(w->k);
	return len;
}

static size_t on_read(char *out, size_t size, size_t n, void *payload)
{
	struct body *b = payload;
	size_t want = size * n;
	uint64_t left = b->size - b->pos;

	if (want > left)
		want = (size_t)left;
	if (!want)
		return 0;
	if (b->buf) {
		memcpy(out, b->buf + b->off + b->pos, want);
	} else {
		ssize_t got;

		do {
			got = pread(b->fd, out, want, (off_t)(b->off + b->pos));
		} while (got < 0 && errno == EINTR);
		if (got <= 0) {
			b->read_err =
				got < 0 ? cfs_error_errno(errno,
							  "read upload body")
					: cfs_error_set(CFS_EIO,
							"upload body shrank "
							"while uploading");
			return CURL_READFUNC_ABORT;
		}
		want = (size_t)got;
	}
	b->pos += want;
	if (b->progress_done && b->s->base.progress) {
		uint64_t done = atomic_fetch_add(b->progress_done, want) + want;

		if (done - b->progress_last >= PROGRESS_STEP ||
		    done == b->progress_total) {
			b->progress_last = done;
			pthread_mutex_lock(&b->s->progress_mu);
			b->s->base.progress(done, b->progress_total,
					    b->s->base.progress_payload);
			pthread_mutex_unlock(&b->s->progress_mu);
		}
	}
	return want;
}

/* curl rewinds a body when it resends a request on a new connection. */
static int on_seek(void *payload, curl_off_t offset, int origin)
{
	struct body *b = payload;

	if (origin != SEEK_SET || offset < 0 || (uint64_t)offset > b->size)
		return CURL_SEEKFUNC_CANTSEEK;
	if (b->progress_done && b->pos > (uint64_t)offset)
		atomic_fetch_sub(b->progress_done, b->pos - (uint64_t)offset);
	b->pos = (uint64_t)offset;
	return CURL_SEEKFUNC_OK;
}

/* Rewinds a body for a retry, taking back its progress. */
static void body_rewind(struct body *b)
{
	if (b->progress_done && b->pos)
		atomic_fetch_sub(b->progress_done, b->pos);
	b->pos = 0;
	b->read_err = 0;
}

static int build_target(struct s3_store *s, const struct req *q, char **url,
			char **path, char **query)
{
	struct cfs_buf p = CFS_BUF_INIT, u = CFS_BUF_INIT;
	int rc;

	*url = *path = *query = NULL;
	rc = cfs_buf_puts(&p, s->bucket_path);
	if (!rc && q->key)
		rc = cfs_buf_printf(&p, "/%s", q->key);
	else if (!rc && !s->bucket_path[0])
		rc = cfs_buf_puts(&p, "/");
	rc = rc ? rc : cfs_sigv4_canonical_query(query, q->query, q->nquery);
	rc = rc ? rc : cfs_buf_puts(&u, s->base_url);
	rc = rc ? rc : cfs_sigv4_uri_encode(&u, p.ptr, true);
	if (!rc && (*query)[0])
		rc = cfs_buf_printf(&u, "?%s", *query);
	if (!rc) {
		*url = cfs_buf_detach(&u);
		*path = cfs_buf_detach(&p);
	}
	cfs_buf_free(&p);
	cfs_buf_free(&u);
	return rc;
}

/* CURLcodes worth another attempt. */
static bool transient_cc(CURLcode cc)
{
	switch (cc) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_HTTP3:
	case CURLE_WEIRD_SERVER_REPLY:
	case CURLE_SEND_FAIL_REWIND:
		return true;
	default:
		return false;
	}
}

/*
 * Runs one attempt of q. Returns 0 when an HTTP response arrived (any
 * status, in r->status; an error body is parsed into r->code/r->msg), a
 * transient transport failure as CFS_EAGAIN / CFS_ETIMEDOUT, and local
 * failures (sink, body, setup) with their own codes.
 */
static int perform(struct s3_store *s, struct req *q, struct resp *r)
{
	struct curl_slist *hl = NULL;
	struct cfs_sigv4_kv h[MAX_HEADERS];
	struct cfs_sigv4_request sreq;
	struct cfs_sigv4_credentials cred;
	struct write_ctx w = {r, q->sink};
	char *url = NULL, *path = NULL, *query = NULL, *auth = NULL;
	char date[17], line[CFS_SIGV4_VALUE_MAX + 64];
	const char *phash =
		q->payload_hash ? q->payload_hash : CFS_SIGV4_UNSIGNED_PAYLOAD;
	size_t nh = 0;
	CURL *c = NULL;
	int rc;

	resp_reset(r);
	if (q->body)
		body_rewind(q->body);
	rc = build_target(s, q, &url, &path, &query);
	if (rc)
		goto out;
	cfs_sigv4_amz_date(date, time(NULL));
	h[nh++] = (struct cfs_sigv4_kv){"host", s->host_header};
	h[nh++] = (struct cfs_sigv4_kv){"x-amz-content-sha256", phash};
	h[nh++] = (struct cfs_sigv4_kv){"x-amz-date", date};
	if (s->session_token)
		h[nh++] = (struct cfs_sigv4_kv){"x-amz-security-token",
						s->session_token};
	for (size_t i = 0; i < q->nhdr && nh < MAX_HEADERS; i++)
		h[nh++] = q->hdr[i];
	sreq = (struct cfs_sigv4_request){q->method, path, q->query, q->nquery,
					  h,	     nh,   phash};
	cred = (struct cfs_sigv4_credentials){s->access_key, s->secret,
					      s->region, "s3"};
	rc = cfs_sigv4_authorization(&auth, NULL, &cred, date, &sreq);
	if (rc)
		goto out;
	for (size_t i = 0; i < nh; i++) {
		snprintf(line, sizeof(line), "%s: %s", h[i].name,
			 h[i].value ? h[i].value : "");
		hl = curl_slist_append(hl, line);
	}
	snprintf(line, sizeof(line), "Authorization: %s", auth);
	hl = curl_slist_append(hl, line);
	hl = curl_slist_append(hl, "Expect:");
	hl = curl_slist_append(hl, "Accept:");
	if (!hl) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}

	c = handle_get(s);
	if (!c) {
		rc = CFS_ENOMEM;
		goto out;
	}
	r->curl = c;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "contextfs/" CFS_VERSION);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, r->curl_err);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &w);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
			 (long)s->connect_timeout_ms);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)s->stall_timeout_s);
	if (!q->long_transfer)
		curl_easy_setopt(c, CURLOPT_TIMEOUT_MS,
				 SMALL_REQUEST_TIMEOUT_MS);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	if (s->ca_file)
		curl_easy_setopt(c, CURLOPT_CAINFO, s->ca_file);
	if (s->insecure_tls) {
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	if (!strcmp(q->method, "HEAD")) {
		curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
	} else if (!strcmp(q->method, "PUT") || !strcmp(q->method, "POST")) {
		uint64_t size = q->body->size; /* callers always give one */

		curl_easy_setopt(c, CURLOPT_UPLOAD, 1L);
		curl_easy_setopt(c, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
		curl_easy_setopt(c, CURLOPT_READFUNCTION, on_read);
		curl_easy_setopt(c, CURLOPT_READDATA, q->body);
		curl_easy_setopt(c, CURLOPT_SEEKFUNCTION, on_seek);
		curl_easy_setopt(c, CURLOPT_SEEKDATA, q->body);
		if (!strcmp(q->method, "POST"))
			curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "POST");
	} else if (strcmp(q->method, "GET")) {
		curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, q->method);
	}

	r->cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
	if (q->sink && q->sink->overflow) {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "object %s is larger than %zu bytes",
				   q->what, q->sink->max);
		goto out;
	}
	if (q->sink && q->sink->write_err) {
		rc = q->sink->write_err;
		goto out;
	}
	if (q->body && q->body->read_err) {
		rc = q->body->read_err;
		goto out;
	}
	if (r->cc != CURLE_OK) {
		const char *detail = r->curl_err[0] ? r->curl_err
						    : curl_easy_strerror(r->cc);

		if (transient_cc(r->cc)) {
			rc = cfs_error_set(r->cc == CURLE_OPERATION_TIMEDOUT
						   ? CFS_ETIMEDOUT
						   : CFS_EAGAIN,
					   "S3 %s %s: %s", q->method, q->what,
					   detail);
		} else if (r->cc == CURLE_WRITE_ERROR &&
			   cfs_error_last_code()) {
			rc = cfs_error_last_code();
		} else {
			rc = cfs_error_set(CFS_EIO, "S3 %s %s (%s): %s",
					   q->method, q->what, s->base_url,
					   detail);
		}
		r->status = 0;
		goto out;
	}
	if (r->status < 200 || r->status > 299)
		cfs_s3_xml_parse_error(r->code, sizeof(r->code), r->msg,
				       sizeof(r->msg), r->body.ptr,
				       r->body.len);
out:
	r->curl = NULL;
	handle_put(s, c);
	curl_slist_free_all(hl);
	if (auth) {
		sodium_memzero(auth, strlen(auth));
		free(auth);
	}
	free(url);
	free(path);
	free(query);
	return rc;
}

/* HTTP outcomes worth another attempt. */
static bool transient_status(const struct resp *r)
{
	switch (r->status) {
	case 429:
	case 500:
	case 502:
	case 503:
	case 504:
		return true;
	default:
		return !strcmp(r->code, "RequestTimeout") ||
		       !strcmp(r->code, "SlowDown") ||
		       !strcmp(r->code, "InternalError");
	}
}

/*
 * Runs q with retries. *ambiguous (may be NULL) is set when an earlier
 * attempt may have been executed by the server (transport failure or 5xx
 * after the request went out). Returns as perform(); after the last
 * attempt a transient HTTP status is returned as a response (r->status).
 */
static int call(struct s3_store *s, struct req *q, struct resp *r,
		bool *ambiguous)
{
	int rc;

	if (ambiguous)
		*ambiguous = false;
	for (unsigned attempt = 0;; attempt++) {
		rc = perform(s, q, r);
		if (rc != CFS_EAGAIN && rc != CFS_ETIMEDOUT &&
		    (rc || !transient_status(r)))
			return rc;
		if (attempt >= s->max_retries) {
			if (rc)
				cfs_error_prefix("after %u attempts",
						 attempt + 1);
			return rc;
		}
		if (ambiguous && (rc || r->status >= 500))
			*ambiguous = true;
		cfs_debug("S3 %s %s: attempt %u failed (%s); retrying",
			  q->method, q->what, attempt + 1,
			  rc ? cfs_error_last() : r->code);
		backoff(s, attempt);
	}
}

/* Maps a final non-2xx response to an error with a useful message. */
static int http_error(struct s3_store *s, const struct req *q,
		      const struct resp *r)
{
	const char *code = r->code[0] ? r->code : "";
	const char *sep = r->msg[0] ? ": " : "";

	if (r->status == 404 && !strcmp(code, "NoSuchBucket"))
		return cfs_error_set(CFS_EIO,
				     "S3 bucket %s does not exist at %s "
				     "(create it, or check the bucket name "
				     "and endpoint)",
				     s->bucket, s->base_url);
	if (r->status == 404)
		return cfs_error_set(CFS_ENOTFOUND, "object not found: %s",
				     q->what);
	if (r->status == 403 && !strcmp(code, "QuotaExceeded"))
		return cfs_error_set(CFS_ENOSPC, "S3 %s %s: quota exceeded%s%s",
				     q->method, q->what, sep, r->msg);
	if (r->status == 403 || r->status == 401)
		return cfs_error_set(
			CFS_EPERM,
			"S3 denied %s %s (HTTP %ld %s%s%s): check the access "
			"key and secret (CONTEXTSDK_S3_ACCESS_KEY_ID / "
			"CONTEXTSDK_S3_SECRET_ACCESS_KEY or AWS_ACCESS_KEY_ID "
			"/ AWS_SECRET_ACCESS_KEY), the session token, the "
			"region, the system clock and the bucket policy",
			q->method, q->what, r->status, code, sep, r->msg);
	if (r->status == 507 || !strcmp(code, "EntityTooLarge"))
		return cfs_error_set(CFS_ENOSPC, "S3 %s %s: HTTP %ld %s%s%s",
				     q->method, q->what, r->status, code, sep,
				     r->msg);
	return cfs_error_set(transient_status(r) ? CFS_EAGAIN : CFS_EIO,
			     "S3 %s %s failed: HTTP %ld %s%s%s (endpoint %s)",
			     q->method, q->what, r->status, code, sep, r->msg,
			     s->base_url);
}

/* ---- keys ----------------------------------------------------------------- */

static int full_key(char **out, struct s3_store *s, const char *key)
{
	size_t n = strlen(key);

	*out = NULL;
	if (!n)
		return cfs_error_set(CFS_EINVAL, "empty storage key");
	if (n + strlen(s->prefix) + 1 > CFS_S3_KEY_MAX)
		return cfs_error_set(CFS_EINVAL, "storage key is too long: %s",
				     key);
	for (const char *p = key; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return cfs_error_set(CFS_EUNSAFE,
					     "storage key has a control "
					     "character: %s",
					     key);
	*out = s->prefix[0] ? cfs_asprintf("%s/%s", s->prefix, key)
			    : cfs_strdup(key);
	return *out ? 0 : CFS_ENOMEM;
}

/* ---- head ----------------------------------------------------------------- */

static int head_full(struct s3_store *s, const char *fkey, const char *key,
		     struct cfs_objinfo *info)
{
	struct req q = {.method = "HEAD", .key = fkey, .what = key};
	struct resp r = {0};
	int rc = call(s, &q, &r, NULL);

	if (!rc && r.status >= 200 && r.status <= 299) {
		if (info) {
			memset(info, 0, sizeof(*info));
			info->size = r.have_length ? r.length : 0;
			info->mtime_ms = r.mtime_ms;
			etag_quoted(info->etag, r.etag);
			if (!r.etag[0])
				info->etag[0] = '\0';
		}
	} else if (!rc) {
		rc = http_error(s, &q, &r);
	}
	resp_reset(&r);
	return rc;
}

static int s3_head(struct cfs_store *st, const char *key,
		   struct cfs_objinfo *info)
{
	struct s3_store *s = s3_of(st);
	char *fkey = NULL;
	int rc = full_key(&fkey, s, key);

	if (!rc)
		rc = head_full(s, fkey, key, info);
	free(fkey);
	return rc;
}

/* ---- get ------------------------------------------------------------------ */

static int s3_get(struct cfs_store *st, const char *key, int fd,
		  struct cfs_buf *buf, size_t max, struct cfs_objinfo *info)
{
	struct s3_store *s = s3_of(st);
	struct sink k = {.fd = fd, .buf = buf, .max = max, .s = s};
	struct req q = {.method = "GET",
			.what = key,
			.sink = &k,
			.long_transfer = true};
	struct resp r = {0};
	char *fkey = NULL, range[48], pin[CFS_ETAG_MAX] = "";
	char cond[CFS_ETAG_MAX];
	off_t start = -1;
	size_t buf_start = buf ? buf->len : 0;
	uint64_t done = 0, total = 0;
	int64_t mtime = 0;
	unsigned attempt = 0, restarts = 0;
	int rc;

	rc = full_key(&fkey, s, key);
	if (rc)
		return rc;
	q.key = fkey;
	if (fd >= 0) {
		start = lseek(fd, 0, SEEK_CUR);
		if (start < 0)
			start = -1; /* a pipe: no restart possible */
	}
	for (;;) {
		q.nhdr = 0;
		if (done) {
			snprintf(range, sizeof(range), "bytes=%llu-",
				 (unsigned long long)done);
			q.hdr[q.nhdr++] = (struct cfs_sigv4_kv){"range", range};
			if_match_value(s, cond, pin);
			q.hdr[q.nhdr++] =
				(struct cfs_sigv4_kv){"if-match", cond};
		}
		k.written = 0;
		k.progress_base = done;
		k.progress_total = total;
		if (buf)
			k.max = max;
		rc = perform(s, &q, &r);
		if (rc == CFS_EAGAIN || rc == CFS_ETIMEDOUT) {
			/* Keep what arrived; resume from there. */
			if (k.written && !done) {
				if (!r.etag[0] && !pin[0]) {
					/* No ETag to pin: cannot resume. */
					k.written = 0;
					goto restart;
				}
				if (!pin[0])
					snprintf(pin, sizeof(pin), "%s",
						 r.etag);
			}
			done += k.written;
			goto retry;
		}
		if (rc)
			goto out;
		if (r.status == 200 && !done) {
			total = r.have_length ? r.length : k.written;
			done = k.written;
			mtime = r.mtime_ms;
			snprintf(pin, sizeof(pin), "%s", r.etag);
			if (done != total) {
				rc = cfs_error_set(
					CFS_EAGAIN,
					"S3 GET %s: got %llu of %llu "
					"bytes",
					key, (unsigned long long)done,
					(unsigned long long)total);
				goto retry;
			}
			break;
		}
		if (r.status == 206 && done) {
			if (!r.have_range || r.range_start != done) {
				rc = cfs_error_set(CFS_EIO,
						   "S3 GET %s: resumed at the "
						   "wrong offset",
						   key);
				goto out;
			}
			total = r.range_total;
			done += k.written;
			if (r.mtime_ms)
				mtime = r.mtime_ms;
			if (done != total)
				goto retry;
			break;
		}
		if (r.status == 200 || r.status == 412 || r.status == 416) {
			/* The object changed under a resumed download (or the
			 * server ignored the Range): start over. */
			goto restart;
		}
		if (transient_status(&r))
			goto retry;
		rc = http_error(s, &q, &r);
		goto out;
	restart:
		if (++restarts > s->max_retries) {
			rc = cfs_error_set(
				CFS_EAGAIN,
				"S3 GET %s: the object kept changing "
				"during the download",
				key);
			goto out;
		}
		if (fd >= 0) {
			if (start < 0) {
				rc = cfs_error_set(CFS_EAGAIN,
						   "S3 GET %s broke off and "
						   "cannot be resumed into a "
						   "pipe; retry",
						   key);
				goto out;
			}
			if (ftruncate(fd, start) < 0 ||
			    lseek(fd, start, SEEK_SET) < 0) {
				rc = cfs_error_errno(
					errno, "rewind download of %s", key);
				goto out;
			}
		} else {
			buf->len = buf_start;
		}
		done = 0;
		pin[0] = '\0';
		continue;
	retry:
		if (++attempt > s->max_retries) {
			if (!rc)
				rc = http_error(s, &q, &r);
			cfs_error_prefix("after %u attempts", attempt);
			goto out;
		}
		backoff(s, attempt - 1);
	}
	rc = 0;
	if (buf && buf->ptr)
		buf->ptr[buf->len] = '\0';
	if (info) {
		memset(info, 0, sizeof(*info));
		info->size = total;
		info->mtime_ms = mtime;
		if (pin[0])
			etag_quoted(info->etag, pin);
	}
out:
	resp_reset(&r);
	free(fkey);
	return rc;
}

/* ---- put ------------------------------------------------------------------ */

static int cond_error(const char *key, const struct cfs_cond *cond)
{
	if (cond->if_none_match)
		return cfs_error_set(CFS_EEXISTS, "object already exists: %s",
				     key);
	return cfs_error_set(CFS_ECONFLICT,
			     "precondition failed for object: %s", key);
}

/* What a HEAD says after a conditional put was refused or failed. */
enum verdict {
	V_OURS, /* the object holds our body: an earlier attempt landed */
	V_UNCHANGED, /* as the condition expected (target, or still absent) */
	V_OTHER, /* another writer's object */
	V_ERROR, /* the HEAD failed: outcome unknown */
};

static enum verdict inspect(struct s3_store *s, const char *fkey,
			    const char *key, const struct cfs_cond *cond,
			    const char *mine, char etag_out[CFS_ETAG_MAX])
{
	struct cfs_objinfo cur;
	int rc = head_full(s, fkey, key, &cur);

	if (rc == CFS_ENOTFOUND) {
		cfs_error_clear();
		return cond->if_none_match ? V_UNCHANGED : V_OTHER;
	}
	if (rc) {
		cfs_error_prefix("outcome of the conditional put of %s is "
				 "unknown",
				 key);
		return V_ERROR;
	}
	if (mine[0] && etag_equal(cur.etag, mine)) {
		snprintf(etag_out, CFS_ETAG_MAX, "%s", cur.etag);
		return V_OURS;
	}
	if (cond->if_match && etag_equal(cur.etag, cond->if_match))
		return V_UNCHANGED;
	return V_OTHER;
}

static int put_single(struct s3_store *s, const char *fkey, const char *key,
		      struct body *b, const struct cfs_cond *cond,
		      char etag_out[CFS_ETAG_MAX])
{
	struct req q = {.method = "PUT",
			.key = fkey,
			.what = key,
			.body = b,
			.long_transfer = b->size > MIB};
	struct resp r = {0};
	uint8_t md5[16];
	char md5b64[25], mine[CFS_ETAG_MAX] = "", cond_val[CFS_ETAG_MAX];
	char sha[65];
	bool flipped = false;
	int rc;

	if (b->buf)
		rc = md5_buf(md5, b->buf, (size_t)b->size);
	else
		rc = md5_fd(md5, b->fd, 0, b->size, key);
	if (rc)
		return rc;
	cfs_hex_encode(mine, md5, 16);
	md5_base64(md5b64, md5);
	if (b->buf && b->size <= MIB) {
		/* Small bodies: sign the payload too. */
		cfs_sha256_hex(sha, b->buf, (size_t)b->size);
		q.payload_hash = sha;
	}
again:
	q.nhdr = 0;
	q.hdr[q.nhdr++] = (struct cfs_sigv4_kv){"content-type",
						"application/octet-stream"};
	if (s->content_md5)
		q.hdr[q.nhdr++] = (struct cfs_sigv4_kv){"content-md5", md5b64};
	if (cond->if_none_match)
		q.hdr[q.nhdr++] = (struct cfs_sigv4_kv){"if-none-match", "*"};
	if (cond->if_match) {
		if_match_value(s, cond_val, cond->if_match);
		q.hdr[q.nhdr++] = (struct cfs_sigv4_kv){"if-match", cond_val};
	}
	rc = call(s, &q, &r, NULL);
	if (rc)
		goto out;
	if (r.status >= 200 && r.status <= 299) {
		if (cond->if_match)
			atomic_store(&s->if_match_confirmed, true);
		if (r.etag[0]) {
			etag_quoted(etag_out, r.etag);
		} else {
			struct cfs_objinfo cur;

			rc = head_full(s, fkey, key, &cur);
			if (!rc)
				snprintf(etag_out, CFS_ETAG_MAX, "%s",
					 cur.etag);
		}
		goto out;
	}
	if ((r.status == 412 || r.status == 409 ||
	     (r.status == 404 && cond->if_match &&
	      strcmp(r.code, "NoSuchBucket"))) &&
	    (cond->if_match || cond->if_none_match)) {
		bool probe_form = cond->if_match && s->if_match_auto &&
				  !atomic_load(&s->if_match_confirmed) &&
				  !flipped;
		enum verdict v;

		/* Always look: curl itself resends a request whose reused
		 * connection died before the answer, so a refusal can follow
		 * our own landed write even on our "first" attempt. */
		v = inspect(s, fkey, key, cond, mine, etag_out);
		if (v == V_OURS)
			goto out; /* rc == 0: our write is the current one */
		if (v == V_ERROR) {
			rc = cfs_error_last_code();
			goto out;
		}
		if (v == V_UNCHANGED && probe_form) {
			/* The server refused the ETag's form, not its value. */
			flipped = true;
			atomic_store(&s->if_match_quoted,
				     !atomic_load(&s->if_match_quoted));
			cfs_info("S3 %s refused If-Match in this form; "
				 "sending ETags %s from now on",
				 s->base_url,
				 atomic_load(&s->if_match_quoted) ? "quoted"
								  : "unquoted");
			goto again;
		}
		rc = cond_error(key, cond);
		goto out;
	}
	if (r.status >= 500 && (cond->if_match || cond->if_none_match)) {
		/* Retries exhausted on 5xx (RGW answers a lost race 500). */
		enum verdict v = inspect(s, fkey, key, cond, mine, etag_out);

		if (v == V_OURS)
			goto out;
		if (v == V_OTHER) {
			rc = cond_error(key, cond);
			goto out;
		}
		if (v == V_ERROR) {
			rc = cfs_error_last_code();
			goto out;
		}
	}
	rc = http_error(s, &q, &r);
out:
	resp_reset(&r);
	return rc;
}

/* ---- multipart ---------------------------------------------------------- */

struct mp {
	struct s3_store *s;
	const char *fkey, *key, *upload_id;
	int fd;
	uint64_t size, part_size; /* size: 0 while growing */
	unsigned nparts; /* while growing: the arrays' capacity */
	struct cfs_growing *growing; /* NULL: fd is complete */
	uint8_t (*md5)[16];
	char (*etags)[CFS_ETAG_MAX];
	_Atomic uint64_t done;
	pthread_mutex_t mu;
	unsigned next; /* protected by mu */
	int rc; /* first failure, protected by mu */
	char msg[512]; /* its message, protected by mu */
};

static int upload_part(struct mp *m, unsigned n, uint64_t len)
{
	uint64_t off = (uint64_t)(n - 1) * m->part_size;
	struct body b = {.fd = m->fd,
			 .off = off,
			 .size = len,
			 .s = m->s,
			 .progress_done = &m->done,
			 .progress_total = m->size};
	struct req q = {.method = "PUT",
			.key = m->fkey,
			.what = m->key,
			.body = &b,
			.long_transfer = true};
	struct resp r = {0};
	char num[16], md5b64[25];
	int rc;

	rc = md5_fd(m->md5[n - 1], m->fd, off, len, m->key);
	if (rc)
		return rc;
	md5_base64(md5b64, m->md5[n - 1]);
	snprintf(num, sizeof(num), "%u", n);
	q.query[q.nquery++] = (struct cfs_sigv4_kv){"partNumber", num};
	q.query[q.nquery++] = (struct cfs_sigv4_kv){"uploadId", m->upload_id};
	if (m->s->content_md5)
		q.hdr[q.nhdr++] = (struct cfs_sigv4_kv){"content-md5", md5b64};
	rc = call(m->s, &q, &r, NULL);
	if (!rc && (r.status < 200 || r.status > 299))
		rc = http_error(m->s, &q, &r);
	if (!rc)
		etag_quoted(m->etags[n - 1], r.etag[0] ? r.etag : "");
	if (!rc && !r.etag[0]) {
		char hex[33];

		cfs_hex_encode(hex, m->md5[n - 1], 16);
		etag_quoted(m->etags[n - 1], hex);
	}
	if (rc)
		cfs_error_prefix("part %u", n);
	resp_reset(&r);
	return rc;
}

/*
 * The length of part n, 0 when it does not exist. A growing file is waited
 * for until the part is complete or the writer ended.
 */
static int part_len(uint64_t *len, struct mp *m, unsigned n)
{
	uint64_t off = (uint64_t)(n - 1) * m->part_size, size = m->size;
	bool ended = true;

	if (m->growing) {
		int rc = cfs_growing_wait(m->growing, off + m->part_size, &size,
					  &ended);

		if (rc)
			return rc;
		if (!ended && size < off + m->part_size)
			return cfs_error_set(CFS_EIO, "growing upload stalled");
	}
	if (off >= size)
		*len = 0;
	else
		*len = off + m->part_size > size ? size - off : m->part_size;
	if (*len && n > m->nparts)
		return cfs_error_set(CFS_EINVAL,
				     "%s is too large for a multipart upload "
				     "(%u parts of %llu bytes)",
				     m->key, m->nparts,
				     (unsigned long long)m->part_size);
	return 0;
}

static void *part_worker(void *arg)
{
	struct mp *m = arg;

	for (;;) {
		uint64_t len = 0;
		unsigned n;
		int rc;

		pthread_mutex_lock(&m->mu);
		if (m->rc || (!m->growing && m->next > m->nparts) ||
		    m->next > MAX_PARTS) {
			pthread_mutex_unlock(&m->mu);
			return NULL;
		}
		n = m->next++;
		pthread_mutex_unlock(&m->mu);
		rc = part_len(&len, m, n);
		if (!rc && len == 0)
			return NULL; /* past the end of a grown file */
		if (!rc)
			rc = upload_part(m, n, len);
		if (rc) {
			pthread_mutex_lock(&m->mu);
			if (!m->rc) {
				m->rc = rc;
				snprintf(m->msg, sizeof(m->msg), "%s",
					 cfs_error_last());
			}
			pthread_mutex_unlock(&m->mu);
			return NULL;
		}
	}
}

static void mp_abort(struct s3_store *s, const char *fkey, const char *key,
		     const char *upload_id)
{
	struct req q = {.method = "DELETE", .key = fkey, .what = key};
	struct resp r = {0};
	int rc;

	q.query[q.nquery++] = (struct cfs_sigv4_kv){"uploadId", upload_id};
	rc = call(s, &q, &r, NULL);
	if (rc || (r.status >= 300 && r.status != 404))
		cfs_warn("S3: could not abort the multipart upload of %s "
			 "(upload id %s); a lifecycle rule for incomplete "
			 "uploads will clean it up",
			 key, upload_id);
	resp_reset(&r);
}

/* The ETag S3 gives a multipart object: md5(md5(p1)..md5(pn))-n. */
static int mp_etag(char out[CFS_ETAG_MAX], const struct mp *m)
{
	uint8_t d[16];
	char hex[33];
	int rc = md5_buf(d, m->md5, (size_t)m->nparts * 16);

	if (rc)
		return rc;
	cfs_hex_encode(hex, d, 16);
	snprintf(out, CFS_ETAG_MAX, "%s-%u", hex, m->nparts);
	return 0;
}

static int mp_complete(struct mp *m, char etag_out[CFS_ETAG_MAX])
{
	struct s3_store *s = m->s;
	struct cfs_buf x = CFS_BUF_INIT;
	struct body b = {.fd = -1};
	struct req q = {
		.method = "POST", .key = m->fkey, .what = m->key, .body = &b};
	struct resp r = {0};
	char sha[65], code[64], expect[CFS_ETAG_MAX];
	bool ambiguous = false;
	int rc;

	rc = mp_etag(expect, m);
	rc = rc ? rc
		: cfs_buf_puts(&x, "<CompleteMultipartUpload xmlns=\"http://s3."
				   "amazonaws.com/doc/2006-03-01/\">");
	for (unsigned i = 0; !rc && i < m->nparts; i++)
		rc = cfs_buf_printf(&x,
				    "<Part><PartNumber>%u</PartNumber><ETag>"
				    "&quot;%.*s&quot;</ETag></Part>",
				    i + 1, (int)strlen(m->etags[i]) - 2,
				    m->etags[i] + 1);
	rc = rc ? rc : cfs_buf_puts(&x, "</CompleteMultipartUpload>");
	if (rc)
		goto out;
	b.buf = x.ptr;
	b.size = x.len;
	cfs_sha256_hex(sha, x.ptr, x.len);
	q.payload_hash = sha;
	q.query[q.nquery++] = (struct cfs_sigv4_kv){"uploadId", m->upload_id};
	q.hdr[q.nhdr++] =
		(struct cfs_sigv4_kv){"content-type", "application/xml"};
	for (unsigned attempt = 0;; attempt++) {
		bool amb = false;

		rc = call(s, &q, &r, &amb);
		ambiguous = ambiguous || amb;
		if (rc)
			goto out;
		if (r.status >= 200 && r.status <= 299) {
			/* S3 may report an error inside a 200. */
			rc = cfs_s3_xml_parse_complete(etag_out, code,
						       sizeof(code), r.body.ptr,
						       r.body.len);
			if (rc == CFS_EAGAIN && attempt < s->max_retries) {
				ambiguous = true;
				backoff(s, attempt);
				continue;
			}
			break;
		}
		if (r.status == 404 && ambiguous &&
		    !strcmp(r.code, "NoSuchUpload")) {
			/* An earlier attempt completed it. */
			etag_out[0] = '\0';
			break;
		}
		rc = http_error(s, &q, &r);
		goto out;
	}
	if (rc)
		goto out;
	if (!etag_out[0]) {
		struct cfs_objinfo cur;

		rc = head_full(s, m->fkey, m->key, &cur);
		if (rc)
			goto out;
		if (!etag_equal(cur.etag, expect) && strchr(cur.etag, '-')) {
			rc = cfs_error_set(CFS_ECONFLICT,
					   "S3 multipart upload of %s: another "
					   "writer replaced the object",
					   m->key);
			goto out;
		}
		snprintf(etag_out, CFS_ETAG_MAX, "%s", cur.etag);
	} else {
		char q2[CFS_ETAG_MAX];

		etag_quoted(q2, etag_out);
		snprintf(etag_out, CFS_ETAG_MAX, "%s", q2);
	}
out:
	resp_reset(&r);
	cfs_buf_free(&x);
	return rc;
}

static int put_multipart(struct s3_store *s, const char *fkey, const char *key,
			 int fd, uint64_t size, struct cfs_growing *growing,
			 const struct cfs_cond *cond,
			 char etag_out[CFS_ETAG_MAX])
{
	struct mp m = {.s = s,
		       .fkey = fkey,
		       .key = key,
		       .fd = fd,
		       .size = growing ? 0 : size,
		       .growing = growing,
		       .next = 1};
	struct req q = {.method = "POST", .key = fkey, .what = key};
	struct resp r = {0};
	struct body empty = {.fd = -1};
	pthread_t tids[MAX_PARALLEL];
	unsigned nthreads, started = 0;
	char *upload_id = NULL;
	int rc;

	/* Conditions first: multipart completion may ignore them. */
	if (cond->if_none_match || cond->if_match) {
		struct cfs_objinfo cur;

		rc = head_full(s, fkey, key, &cur);
		if (rc && rc != CFS_ENOTFOUND)
			return rc;
		if (cond->if_none_match && rc == 0)
			return cond_error(key, cond);
		if (cond->if_match && (rc == CFS_ENOTFOUND ||
				       !etag_equal(cur.etag, cond->if_match)))
			return cond_error(key, cond);
		cfs_error_clear();
	}
	m.part_size = s->part_size;
	if (growing) {
		/* size unknown: room for the largest bundle (AES-GCM's 64 GiB) */
		while (m.part_size * MAX_PARTS < ((uint64_t)64 << 30))
			m.part_size *= 2;
		m.nparts = MAX_PARTS;
	} else {
		while ((size + m.part_size - 1) / m.part_size > MAX_PARTS)
			m.part_size *= 2;
		m.nparts = (unsigned)((size + m.part_size - 1) / m.part_size);
	}
	m.md5 = cfs_calloc(m.nparts, sizeof(*m.md5));
	m.etags = cfs_calloc(m.nparts, sizeof(*m.etags));
	if (!m.md5 || !m.etags) {
		rc = CFS_ENOMEM;
		goto out;
	}
	pthread_mutex_init(&m.mu, NULL);

	q.body = &empty;
	q.query[q.nquery++] = (struct cfs_sigv4_kv){"uploads", ""};
	q.payload_hash = CFS_SIGV4_EMPTY_SHA256;
	q.hdr[q.nhdr++] = (struct cfs_sigv4_kv){"content-type",
						"application/octet-stream"};
	rc = call(s, &q, &r, NULL);
	if (!rc && (r.status < 200 || r.status > 299))
		rc = http_error(s, &q, &r);
	if (!rc)
		rc = cfs_s3_xml_parse_upload_id(&upload_id, r.body.ptr,
						r.body.len);
	resp_reset(&r);
	if (rc)
		goto out_mu;
	m.upload_id = upload_id;

	nthreads = s->parallel_parts < m.nparts ? s->parallel_parts : m.nparts;
	if (growing) /* parts come at the packer's pace: fewer connections */
		nthreads = nthreads > 2 ? 2 : nthreads;
	for (; started < nthreads; started++)
		if (pthread_create(&tids[started], NULL, part_worker, &m))
			break;
	if (!started)
		part_worker(&m);
	for (unsigned i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	rc = m.rc;
	if (!rc && growing) {
		uint64_t total;
		bool ended;

		rc = cfs_growing_wait(growing, UINT64_MAX, &total, &ended);
		if (!rc) {
			m.size = total;
			m.nparts = (unsigned)((total + m.part_size - 1) /
					      m.part_size);
		}
		if (!rc && (m.nparts == 0 || m.next <= m.nparts))
			rc = cfs_error_set(CFS_EIO,
					   "S3 multipart upload of %s: parts "
					   "missing",
					   key);
	} else if (rc) {
		cfs_error_set(rc, "S3 multipart upload of %s: %s", key, m.msg);
	}
	if (!rc)
		rc = mp_complete(&m, etag_out);
	if (rc) {
		char saved[512];

		snprintf(saved, sizeof(saved), "%s", cfs_error_last());
		mp_abort(s, fkey, key, upload_id);
		cfs_error_set(rc, "%s", saved);
	}
out_mu:
	pthread_mutex_destroy(&m.mu);
out:
	free(upload_id);
	free(m.md5);
	free(m.etags);
	return rc;
}

static int s3_put(struct cfs_store *st, const char *key,
		  const struct cfs_source *src, const struct cfs_cond *cond,
		  char etag_out[CFS_ETAG_MAX])
{
	struct s3_store *s = s3_of(st);
	_Atomic uint64_t done = 0;
	struct body b = {.fd = -1, .s = s};
	struct cfs_cond c = *cond;
	char want[CFS_ETAG_MAX];
	char *fkey = NULL;
	int rc;

	/* etag_out may alias cond->if_match. */
	if (cond->if_match) {
		char bare[CFS_ETAG_MAX];

		etag_bare(bare, cond->if_match);
		if (!bare[0] || strchr(bare, '\n') || strchr(bare, '\r'))
			return cfs_error_set(CFS_EINVAL,
					     "put %s: invalid If-Match ETag",
					     key);
		snprintf(want, sizeof(want), "%s", cond->if_match);
		c.if_match = want;
	}
	cond = &c;
	etag_out[0] = '\0';
	if (cond->if_match && cond->if_none_match)
		return cfs_error_set(CFS_EINVAL,
				     "put %s: If-Match and If-None-Match "
				     "together",
				     key);
	rc = full_key(&fkey, s, key);
	if (rc)
		return rc;
	if (src->fd >= 0) {
		struct stat sb;

		if (fstat(src->fd, &sb) < 0) {
			rc = cfs_error_errno(errno, "stat body of %s", key);
			goto out;
		}
		if (!S_ISREG(sb.st_mode)) {
			rc = cfs_error_set(CFS_EINVAL,
					   "put %s: the S3 store uploads from "
					   "regular files only",
					   key);
			goto out;
		}
		b.fd = src->fd;
		b.size = (uint64_t)sb.st_size;
	} else {
		b.buf = src->buf ? src->buf : "";
		b.size = src->len;
	}
	if (st->progress) {
		b.progress_done = &done;
		b.progress_total = b.size;
	}
	if (src->growing) {
		/* start once it is clear the file will be multipart */
		uint64_t have;
		bool ended;

		rc = cfs_growing_wait(src->growing, s->multipart_threshold,
				      &have, &ended);
		if (rc)
			goto out;
		if (ended) {
			b.size = have;
			b.progress_total = st->progress ? have : 0;
		} else {
			b.progress_total = 0;
			rc = put_multipart(s, fkey, key, b.fd, 0, src->growing,
					   cond, etag_out);
			goto out;
		}
	}
	if (b.fd >= 0 && b.size >= s->multipart_threshold)
		rc = put_multipart(s, fkey, key, b.fd, b.size, NULL, cond,
				   etag_out);
	else
		rc = put_single(s, fkey, key, &b, cond, etag_out);
	if (!rc && st->progress && b.size == 0)
		st->progress(0, 0, st->progress_payload);
out:
	free(fkey);
	return rc;
}

/* ---- delete and list ------------------------------------------------------ */

static int s3_del(struct cfs_store *st, const char *key)
{
	struct s3_store *s = s3_of(st);
	struct req q = {.method = "DELETE", .what = key};
	struct resp r = {0};
	char *fkey = NULL;
	int rc = full_key(&fkey, s, key);

	if (rc)
		return rc;
	q.key = fkey;
	rc = call(s, &q, &r, NULL);
	if (!rc && (r.status < 200 || r.status > 299) &&
	    !(r.status == 404 && strcmp(r.code, "NoSuchBucket")))
		rc = http_error(s, &q, &r);
	resp_reset(&r);
	free(fkey);
	return rc;
}

static int s3_list(struct cfs_store *st, const char *prefix, cfs_list_fn fn,
		   void *payload)
{
	struct s3_store *s = s3_of(st);
	struct req q = {.method = "GET", .what = prefix};
	struct resp r = {0};
	struct cfs_s3_list_page page = {0};
	char *fprefix = NULL, *token = NULL;
	size_t plen = s->prefix[0] ? strlen(s->prefix) + 1 : 0;
	unsigned pages = 0;
	int rc = 0;

	fprefix = s->prefix[0] ? cfs_asprintf("%s/%s", s->prefix, prefix)
			       : cfs_strdup(prefix);
	if (!fprefix)
		return CFS_ENOMEM;
	q.what = prefix[0] ? prefix : "(bucket)";
	do {
		q.nquery = 0;
		q.query[q.nquery++] = (struct cfs_sigv4_kv){"list-type", "2"};
		q.query[q.nquery++] = (struct cfs_sigv4_kv){"max-keys", "1000"};
		q.query[q.nquery++] = (struct cfs_sigv4_kv){"prefix", fprefix};
		if (token)
			q.query[q.nquery++] = (struct cfs_sigv4_kv){
				"continuation-token", token};
		rc = call(s, &q, &r, NULL);
		if (!rc && (r.status < 200 || r.status > 299)) {
			if (r.status == 404 && strcmp(r.code, "NoSuchBucket"))
				r.status = 500; /* not "object not found" */
			rc = http_error(s, &q, &r);
		}
		if (!rc)
			rc = cfs_s3_xml_parse_list(&page, r.body.ptr,
						   r.body.len);
		resp_reset(&r);
		if (rc)
			break;
		for (size_t i = 0; i < page.nkeys && !rc; i++) {
			const char *k = page.keys[i];

			if (strncmp(k, fprefix, strlen(fprefix)))
				continue; /* not ours */
			rc = fn(k + plen, payload);
		}
		free(token);
		token = page.truncated ? page.next_token : NULL;
		page.next_token = NULL;
		cfs_s3_list_page_clear(&page);
		if (++pages > 1000000) {
			rc = cfs_error_set(CFS_ECORRUPT,
					   "S3 list of %s does not end",
					   prefix);
			break;
		}
	} while (!rc && token);
	free(token);
	free(fprefix);
	return rc;
}

/* ---- conditional-write probe ------------------------------------------- */

int cfs_store_check_conditional(struct cfs_store *st)
{
	struct cfs_cond create = {NULL, true}, stale = {NULL, false};
	char key[64], hex[17], e1[CFS_ETAG_MAX];
	const char *where = cfs_store_describe(st);
	int rc, rc2;

	cfs_random_hex(hex, 8);
	snprintf(key, sizeof(key), ".contextfs-probe/%s", hex);
	rc = cfs_store_put_buf(st, key, "probe-1", 7, &create, e1);
	if (rc) {
		cfs_error_prefix("conditional write check on %s", where);
		return rc;
	}
	rc = cfs_store_put_buf(st, key, "probe-2", 7, &create, NULL);
	if (rc == 0) {
		rc = cfs_error_set(CFS_EUNSUPPORTED,
				   "storage %s ignores If-None-Match (it "
				   "overwrote an existing object): it cannot "
				   "hold the single-writer lock, so writing "
				   "there is refused; fake S3 servers such as "
				   "s3rver do this, use a real one (AWS, Ceph "
				   "RGW, MinIO, R2)",
				   where);
		goto out;
	}
	if (rc != CFS_EEXISTS)
		goto out;
	stale.if_match = "\"00000000000000000000000000000000\"";
	rc = cfs_store_put_buf(st, key, "probe-3", 7, &stale, NULL);
	if (rc == 0) {
		rc = cfs_error_set(CFS_EUNSUPPORTED,
				   "storage %s ignores If-Match (a stale "
				   "compare-and-swap succeeded): commits would "
				   "overwrite each other, so writing there is "
				   "refused",
				   where);
		goto out;
	}
	if (rc != CFS_ECONFLICT)
		goto out;
	stale.if_match = e1;
	rc = cfs_store_put_buf(st, key, "probe-4", 7, &stale, NULL);
	if (rc == CFS_ECONFLICT)
		rc = cfs_error_set(CFS_EUNSUPPORTED,
				   "storage %s refuses If-Match with the "
				   "current ETag (quoted and unquoted): "
				   "compare-and-swap cannot work there",
				   where);
out:
	rc2 = cfs_store_delete(st, key);
	if (!rc && rc2)
		rc = rc2;
	if (!rc)
		cfs_error_clear();
	return rc;
}

/* ---- open / free ---------------------------------------------------------- */

static const char *s3_describe(struct cfs_store *st)
{
	return s3_of(st)->description;
}

static void s3_free(struct cfs_store *st)
{
	struct s3_store *s = s3_of(st);
	struct pool_ent *e;

	if (!s)
		return;
	while ((e = s->pool)) {
		s->pool = e->next;
		curl_easy_cleanup(e->curl);
		free(e);
	}
	pthread_mutex_destroy(&s->pool_mu);
	pthread_mutex_destroy(&s->progress_mu);
	free(s->base_url);
	free(s->host_header);
	free(s->bucket_path);
	free(s->bucket);
	free(s->prefix);
	free(s->region);
	free(s->access_key);
	cfs_secret_free(s->secret);
	cfs_secret_free(s->session_token);
	free(s->ca_file);
	free(s->description);
	free(s);
}

static const struct cfs_store_ops s3_ops = {
	.version = CFS_STORE_OPS_VERSION,
	.name = "s3",
	.get = s3_get,
	.put = s3_put,
	.head = s3_head,
	.del = s3_del,
	.list = s3_list,
	.describe = s3_describe,
	.free = s3_free,
	.flags = CFS_STORE_STREAMS_PUT,
};

static bool valid_bucket(const char *b, bool dns)
{
	size_t n = strlen(b);

	if (n < 3 || n > 63)
		return false;
	for (const char *p = b; *p; p++) {
		bool ok = islower((unsigned char)*p) ||
			  isdigit((unsigned char)*p) || *p == '-' || *p == '.';

		if (!dns)
			ok = ok || isupper((unsigned char)*p) || *p == '_';
		if (!ok)
			return false;
	}
	return true;
}

/* Splits the endpoint into base URL, host[:port] and path (no '/' end). */
static int parse_endpoint(struct s3_store *s, const struct cfs_s3_config *cfg,
			  const char *ep)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL, *port = NULL, *path = NULL;
	bool default_port;
	int rc = 0;

	if (!u)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	if (curl_url_set(u, CURLUPART_URL, ep, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK) {
		rc = cfs_error_set(CFS_EINVAL,
				   "invalid S3 endpoint URL: %s (expected "
				   "http(s)://host[:port])",
				   ep);
		goto out;
	}
	if (strcmp(scheme, "http") && strcmp(scheme, "https")) {
		rc = cfs_error_set(CFS_EINVAL,
				   "S3 endpoint must be http:// or https://: "
				   "%s",
				   ep);
		goto out;
	}
	if (curl_url_get(u, CURLUPART_PORT, &port, 0) != CURLUE_OK)
		port = NULL;
	default_port = !port ||
		       (!strcmp(scheme, "http") && !strcmp(port, "80")) ||
		       (!strcmp(scheme, "https") && !strcmp(port, "443"));
	if (curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
		path = NULL;
	if (path) {
		size_t n = strlen(path);

		while (n && path[n - 1] == '/')
			path[--n] = '\0';
	}
	if (!cfg->path_style && !valid_bucket(cfg->bucket, true)) {
		rc = cfs_error_set(CFS_EINVAL,
				   "S3 bucket %s cannot be addressed "
				   "virtual-host style; enable path style "
				   "(CONTEXTSDK_S3_FORCE_PATH_STYLE=1)",
				   cfg->bucket);
		goto out;
	}
	s->host_header =
		cfs_asprintf("%s%s%s%s%s", cfg->path_style ? "" : cfg->bucket,
			     cfg->path_style ? "" : ".", host,
			     default_port ? "" : ":", default_port ? "" : port);
	s->base_url = cfs_asprintf("%s://%s", scheme, s->host_header);
	s->bucket_path = cfs_asprintf("%s%s%s", path ? path : "",
				      cfg->path_style ? "/" : "",
				      cfg->path_style ? cfg->bucket : "");
	if (!s->host_header || !s->base_url || !s->bucket_path)
		rc = CFS_ENOMEM;
out:
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_free(path);
	curl_url_cleanup(u);
	return rc;
}

int cfs_store_s3_open(struct cfs_store **out, const struct cfs_s3_config *cfg)
{
	struct s3_store *s = NULL;
	char *ep = NULL;
	const char *region;
	size_t n;
	int rc = 0;

	*out = NULL;
	pthread_once(&curl_once, curl_init);
	if (curl_init_rc != CURLE_OK)
		return cfs_error_set(CFS_ERROR,
				     "libcurl initialisation failed");
	if (!cfg || !cfg->bucket || !cfg->bucket[0])
		return cfs_error_set(CFS_EINVAL, "S3 bucket is required");
	if (!valid_bucket(cfg->bucket, false))
		return cfs_error_set(CFS_EINVAL, "invalid S3 bucket name: %s",
				     cfg->bucket);
	if (!cfg->access_key || !cfg->access_key[0] || !cfg->secret_key ||
	    !cfg->secret_key[0])
		return cfs_error_set(CFS_EKEY,
				     "S3 credentials are required: set "
				     "CONTEXTSDK_S3_ACCESS_KEY_ID and "
				     "CONTEXTSDK_S3_SECRET_ACCESS_KEY (or "
				     "AWS_ACCESS_KEY_ID and "
				     "AWS_SECRET_ACCESS_KEY)");
	region = cfg->region && cfg->region[0] ? cfg->region : "us-east-1";
	s = cfs_calloc(1, sizeof(*s));
	if (!s)
		return CFS_ENOMEM;
	s->base.ops = &s3_ops;
	pthread_mutex_init(&s->pool_mu, NULL);
	{
		/* Recursive: a progress callback may itself use the store,
		 * and that request reports progress from the same thread
		 * (a plain mutex deadlocked there). */
		pthread_mutexattr_t ma;

		pthread_mutexattr_init(&ma);
		pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
		pthread_mutex_init(&s->progress_mu, &ma);
		pthread_mutexattr_destroy(&ma);
	}
	if (!cfg->endpoint || !cfg->endpoint[0]) {
		const char *r = strcmp(region, "auto") ? region : "us-east-1";

		if (!strcmp(region, "auto"))
			region = "us-east-1";
		ep = cfs_asprintf("https://s3.%s.amazonaws.com", r);
	} else {
		ep = cfs_strdup(cfg->endpoint);
	}
	s->region = cfs_strdup(region);
	s->bucket = cfs_strdup(cfg->bucket);
	s->access_key = cfs_strdup(cfg->access_key);
	s->secret = cfs_secret_strdup(cfg->secret_key);
	s->prefix = cfs_strdup(cfg->prefix ? cfg->prefix : "");
	if (!ep || !s->region || !s->bucket || !s->access_key || !s->secret ||
	    !s->prefix) {
		rc = CFS_ENOMEM;
		goto out;
	}
	n = strlen(s->prefix);
	while (n && s->prefix[n - 1] == '/')
		s->prefix[--n] = '\0';
	if (cfg->session_token && cfg->session_token[0]) {
		s->session_token = cfs_secret_strdup(cfg->session_token);
		if (!s->session_token) {
			rc = CFS_ENOMEM;
			goto out;
		}
	}
	if (cfg->ca_file) {
		s->ca_file = cfs_strdup(cfg->ca_file);
		if (!s->ca_file) {
			rc = CFS_ENOMEM;
			goto out;
		}
	}
	rc = parse_endpoint(s, cfg, ep);
	if (rc)
		goto out;
	s->max_retries = cfg->max_retries ? cfg->max_retries : DEF_RETRIES;
	if (s->max_retries > 100)
		s->max_retries = 100;
	s->retry_base_ms =
		cfg->retry_base_ms ? cfg->retry_base_ms : DEF_RETRY_BASE_MS;
	s->retry_max_ms =
		cfg->retry_max_ms ? cfg->retry_max_ms : DEF_RETRY_MAX_MS;
	if (s->retry_max_ms < s->retry_base_ms)
		s->retry_max_ms = s->retry_base_ms;
	s->multipart_threshold = cfg->multipart_threshold
					 ? cfg->multipart_threshold
					 : DEF_MULTIPART_THRESHOLD;
	s->part_size = cfg->part_size ? cfg->part_size : DEF_PART_SIZE;
	if (s->part_size < MIN_PART_SIZE)
		s->part_size = MIN_PART_SIZE;
	if (s->multipart_threshold < s->part_size)
		s->multipart_threshold = s->part_size;
	s->parallel_parts =
		cfg->parallel_parts ? cfg->parallel_parts : DEF_PARALLEL;
	if (s->parallel_parts > MAX_PARALLEL)
		s->parallel_parts = MAX_PARALLEL;
	s->connect_timeout_ms = cfg->connect_timeout_ms
					? cfg->connect_timeout_ms
					: DEF_CONNECT_MS;
	s->stall_timeout_s =
		cfg->stall_timeout_s ? cfg->stall_timeout_s : DEF_STALL_S;
	s->insecure_tls = cfg->insecure_tls;
	s->content_md5 = !cfg->no_content_md5;
	s->if_match_auto = cfg->if_match == CFS_S3_IF_MATCH_AUTO;
	atomic_init(&s->if_match_quoted,
		    cfg->if_match == CFS_S3_IF_MATCH_QUOTED);
	s->description = cfs_asprintf("s3://%s%s%s (%s)", s->bucket,
				      s->prefix[0] ? "/" : "", s->prefix, ep);
	if (!s->description) {
		rc = CFS_ENOMEM;
		goto out;
	}
	*out = &s->base;
	s = NULL;
out:
	free(ep);
	if (s)
		s3_free(&s->base);
	return rc;
}
