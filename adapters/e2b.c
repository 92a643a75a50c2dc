/*
 * The E2B runtime adapter (../shared/notes/sandbox-apis.md §1): a Firecracker
 * sandbox created through E2B's REST control plane, driven through the
 * in-sandbox daemon "envd".
 *
 *   create     POST {api}/v2/sandboxes (X-API-Key; the path the e2b SDK
 *              2.51 uses, the notes' v1 POST /sandboxes takes the same
 *              body), secure, so envd wants the returned access token
 *              (X-Access-Token) on every call;
 *   run        Connect server stream process.Process/Start (JSON codec):
 *              envelopes of {"event":{start|data|end|keepalive}} and an
 *              end-stream envelope; output bytes are base64 (binary safe).
 *              A timeout goes to envd as Connect-Timeout-Ms, so the command
 *              itself is killed there; a local deadline 10 s later (or a
 *              cancel) sends SIGKILL through process.Process/SendSignal;
 *   upload     POST {envd}/files (multipart field "file"), download GET
 *              {envd}/files, both retried after 1, 3, 6 s on transport
 *              errors, 408, 429 and 5xx (fresh sandboxes may not answer);
 *   keep-alive POST {api}/sandboxes/{id}/timeout with the full lifetime;
 *   kill       DELETE {api}/sandboxes/{id} (404 = already gone).
 *
 * Commands run as root (envd's Basic-auth user). Paths live under
 * $HOME/.contextsdk in the sandbox (tmp/ 0700 and mnt/), resolved once.
 * Environment: E2B_API_KEY (required), E2B_DOMAIN, E2B_API_URL and
 * E2B_SANDBOX_URL (endpoint overrides; tests point them at a local fake).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <sodium.h>

#include "adapters/adapters.h"
#include "adapters/http.h"
#include "adapters/stream_i.h"
#include "core/error.h"
#include "core/util.h"

#define ENVD_PORT "49983"
#define GRACE_MS 10000
#define IDLE_MS 180000 /* keepalive events come every 50 s */
#define ENVELOPE_MAX (16u << 20)
#define DEFAULT_LIFETIME_MS (30 * 60 * 1000)

struct e2b_rt {
	struct cfs_runtime base;
	char *id;
	char *api; /* control plane base URL */
	char *envd; /* envd base URL */
	char *api_key; /* secret */
	char *token; /* envd access token, secret; NULL if not secure */
	char *sandbox_id;
	char *tmp_dir;
	char *mount_base;
	int64_t lifetime_ms;
	bool gone; /* killed: nothing left to dispose */
};

/* ------------------------------------------------------------------ */
/* Requests */

enum plane { API, ENVD };

static int headers(struct curl_slist **h, struct e2b_rt *s, enum plane p)
{
	int rc = 0;

	if (p == API) {
		rc = cfs_http_header(h, "X-API-Key", s->api_key);
		rc = rc ? rc
			: cfs_http_header(h, "Content-Type",
					  "application/json");
		return rc;
	}
	if (s->token)
		rc = cfs_http_header(h, "X-Access-Token", s->token);
	rc = rc ? rc : cfs_http_header(h, "E2b-Sandbox-Id", s->sandbox_id);
	rc = rc ? rc : cfs_http_header(h, "E2b-Sandbox-Port", ENVD_PORT);
	return rc;
}

/* Maps a non-success status to an error with the provider's message. */
static int http_fail(struct e2b_rt *s, const struct cfs_http_resp *r,
		     enum plane p, const char *what)
{
	char msg[320];

	cfs_http_error_text(msg, sizeof(msg), r);
	if (r->status == 401 || r->status == 403)
		return cfs_error_set(
			CFS_EAUTH,
			p == API ? "e2b %s: the API key was rejected (HTTP "
				   "%ld: %s); set E2B_API_KEY to a valid key"
				 : "e2b %s: the sandbox refused its access "
				   "token (HTTP %ld: %s); rerun to create a "
				   "fresh sandbox",
			what, r->status, msg);
	if (s->sandbox_id &&
	    (r->status == 404 || r->status == 410 || r->status == 502))
		return cfs_error_set(CFS_EIO,
				     "e2b %s: sandbox %s is gone (HTTP %ld: "
				     "%s); it was killed or its lifetime "
				     "ran out, rerun to get a new one",
				     what, s->sandbox_id, r->status, msg);
	if (r->status == 429)
		return cfs_error_set(CFS_EAGAIN,
				     "e2b %s: rate limited (HTTP 429: %s); "
				     "retry later",
				     what, msg);
	return cfs_error_set(r->status >= 500 ? CFS_EAGAIN : CFS_EIO,
			     "e2b %s failed (HTTP %ld: %s)", what, r->status,
			     msg);
}

/* One unary JSON call to the control plane; *doc_out optional. */
static int api_call(cJSON **doc_out, struct e2b_rt *s, const char *method,
		    const char *path, const cJSON *body, const char *what,
		    bool not_found_ok)
{
	struct cfs_http_req req = {0};
	struct cfs_http_resp resp = {0};
	struct curl_slist *h = NULL;
	char *url = NULL, *text = NULL, label[128];
	int rc;

	if (doc_out)
		*doc_out = NULL;
	url = cfs_asprintf("%s%s", s->api, path);
	text = body ? cJSON_PrintUnformatted(body) : NULL;
	if (!url || (body && !text)) {
		rc = CFS_ENOMEM;
		goto out;
	}
	rc = headers(&h, s, API);
	if (rc)
		goto out;
	req.method = method;
	req.url = url;
	req.headers = h;
	req.body = text;
	req.body_len = text ? strlen(text) : 0;
	req.out_fd = -1;
	req.deadline_ms = cfs_monotonic_ms() + 120000;
	snprintf(label, sizeof(label), "e2b %s", what);
	rc = cfs_http_do(&resp, &req, label);
	if (rc)
		goto out;
	if (resp.status == 404 && not_found_ok)
		goto out;
	if (resp.status < 200 || resp.status >= 300) {
		rc = http_fail(s, &resp, API, what);
		goto out;
	}
	if (doc_out) {
		*doc_out = cJSON_ParseWithLength(
			resp.body.ptr ? resp.body.ptr : "", resp.body.len);
		if (!*doc_out)
			rc = cfs_error_set(CFS_ECORRUPT,
					   "e2b %s: the answer is not JSON",
					   what);
	}
out:
	curl_slist_free_all(h);
	cfs_http_resp_clear(&resp);
	free(url);
	free(text);
	return rc;
}

/* ------------------------------------------------------------------ */
/* process.Process/Start: a Connect server stream */

static int append_b64(struct cfs_e2b_stream *st, struct cfs_buf *b,
		      const char *b64)
{
	size_t n = strlen(b64), got = 0;
	unsigned char *bin;
	int rc = 0;

	if (!n)
		return 0;
	bin = cfs_malloc(n);
	if (!bin)
		return CFS_ENOMEM;
	if (sodium_base642bin(bin, n, b64, n, NULL, &got, NULL,
			      sodium_base64_VARIANT_ORIGINAL) != 0 &&
	    sodium_base642bin(bin, n, b64, n, NULL, &got, NULL,
			      sodium_base64_VARIANT_ORIGINAL_NO_PADDING) != 0) {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "e2b: command output is not base64");
		goto out;
	}
	if (b->len + got > CFS_RUNTIME_OUTPUT_MAX) {
		st->truncated = true;
		got = CFS_RUNTIME_OUTPUT_MAX - b->len;
	}
	if (got)
		rc = cfs_buf_put(b, bin, got);
out:
	free(bin);
	return rc;
}

static void copy_str(char *dst, size_t n, const cJSON *v)
{
	if (cJSON_IsString(v))
		snprintf(dst, n, "%s", v->valuestring);
	else if (cJSON_IsNumber(v))
		snprintf(dst, n, "%d", v->valueint);
}

static int on_message(struct cfs_e2b_stream *st, unsigned char flags,
		      const char *p, size_t n)
{
	cJSON *doc = cJSON_ParseWithLength(p, n);
	const cJSON *ev, *x;
	int rc = 0;

	if (!doc)
		return cfs_error_set(CFS_ECORRUPT,
				     "e2b: malformed message in the command "
				     "stream");
	if (flags & 0x02) {
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(doc, "error");

		st->got_eos = true;
		if (cJSON_IsObject(e)) {
			copy_str(st->eos_code, sizeof(st->eos_code),
				 cJSON_GetObjectItemCaseSensitive(e, "code"));
			copy_str(
				st->eos_msg, sizeof(st->eos_msg),
				cJSON_GetObjectItemCaseSensitive(e, "message"));
			if (!st->eos_code[0])
				snprintf(st->eos_code, sizeof(st->eos_code),
					 "unknown");
		}
		goto out;
	}
	ev = cJSON_GetObjectItemCaseSensitive(doc, "event");
	if ((x = cJSON_GetObjectItemCaseSensitive(ev, "start"))) {
		const cJSON *pid = cJSON_GetObjectItemCaseSensitive(x, "pid");

		if (cJSON_IsNumber(pid))
			st->pid = (long)pid->valuedouble;
	} else if ((x = cJSON_GetObjectItemCaseSensitive(ev, "data"))) {
		const cJSON *o = cJSON_GetObjectItemCaseSensitive(x, "stdout");
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(x, "stderr");

		if (cJSON_IsString(o))
			rc = append_b64(st, &st->out, o->valuestring);
		if (!rc && cJSON_IsString(e))
			rc = append_b64(st, &st->err, e->valuestring);
	} else if ((x = cJSON_GetObjectItemCaseSensitive(ev, "end"))) {
		/* proto3 JSON omits defaults: no exitCode means 0. */
		const cJSON *c =
			cJSON_GetObjectItemCaseSensitive(x, "exitCode");

		st->got_end = true;
		st->exit_code = cJSON_IsNumber(c) ? c->valueint : 0;
		copy_str(st->status, sizeof(st->status),
			 cJSON_GetObjectItemCaseSensitive(x, "status"));
		copy_str(st->end_error, sizeof(st->end_error),
			 cJSON_GetObjectItemCaseSensitive(x, "error"));
	}
	/* keepalive and unknown events are ignored */
out:
	cJSON_Delete(doc);
	return rc;
}

/* Envelopes may be split across and merged within callbacks. */
int cfs_e2b_stream_feed(const char *p, size_t n, void *payload)
{
	struct cfs_e2b_stream *st = payload;
	size_t off = 0;
	int rc;

	rc = cfs_buf_put(&st->pending, p, n);
	while (!rc && st->pending.len - off >= 5) {
		const unsigned char *e =
			(const unsigned char *)st->pending.ptr + off;
		uint32_t len = (uint32_t)e[1] << 24 | (uint32_t)e[2] << 16 |
			       (uint32_t)e[3] << 8 | e[4];

		if (e[0] & 0x01)
			return cfs_error_set(CFS_EUNSUPPORTED,
					     "e2b: compressed stream message "
					     "(not requested)");
		if (len > ENVELOPE_MAX)
			return cfs_error_set(CFS_ECORRUPT,
					     "e2b: stream message of %u bytes "
					     "exceeds the cap",
					     len);
		if (st->pending.len - off - 5 < len)
			break;
		rc = on_message(st, e[0], (const char *)e + 5, len);
		off += 5 + (size_t)len;
	}
	if (off) {
		memmove(st->pending.ptr, st->pending.ptr + off,
			st->pending.len - off);
		st->pending.len -= off;
	}
	return rc;
}

void cfs_e2b_stream_clear(struct cfs_e2b_stream *st)
{
	cfs_buf_free(&st->pending);
	cfs_buf_free(&st->out);
	cfs_buf_free(&st->err);
}

static void send_kill(struct e2b_rt *s, long pid)
{
	struct cfs_http_req req = {0};
	struct cfs_http_resp resp = {0};
	struct curl_slist *h = NULL;
	char *url = cfs_asprintf("%s/process.Process/SendSignal", s->envd);
	char *body = cfs_asprintf(
		"{\"process\":{\"pid\":%ld},\"signal\":\"SIGNAL_SIGKILL\"}",
		pid);

	if (url && body && pid > 0 && !headers(&h, s, ENVD) &&
	    !cfs_http_header(&h, "Content-Type", "application/json") &&
	    !cfs_http_header(&h, "Authorization", "Basic cm9vdDo=")) {
		req.method = "POST";
		req.url = url;
		req.headers = h;
		req.body = body;
		req.body_len = strlen(body);
		req.out_fd = -1;
		req.deadline_ms = cfs_monotonic_ms() + 15000;
		cfs_http_do(&resp, &req, "e2b kill command");
	}
	curl_slist_free_all(h);
	cfs_http_resp_clear(&resp);
	free(url);
	free(body);
}

/* "signal: killed" style statuses of a command that had no exit code */
static int signal_exit(const char *status)
{
	static const struct {
		const char *name;
		int sig;
	} sigs[] = {{"hangup", 1},  {"interrupt", 2},  {"quit", 3},
		    {"aborted", 6}, {"killed", 9},     {"segmentation", 11},
		    {"broken", 13}, {"terminated", 15}};

	if (strncmp(status, "signal: ", 8) != 0)
		return -1;
	for (size_t i = 0; i < CFS_ARRAY_SIZE(sigs); i++)
		if (strncmp(status + 8, sigs[i].name, strlen(sigs[i].name)) ==
		    0)
			return 128 + sigs[i].sig;
	return 128 + 9;
}

static int e2b_run(struct cfs_run_result *res, struct cfs_runtime *rt,
		   const char *command, const char *user, int64_t timeout_ms)
{
	struct e2b_rt *s = (struct e2b_rt *)rt;
	struct cfs_e2b_stream st = {0};
	struct cfs_http_req req = {0};
	struct cfs_http_resp resp = {0};
	struct curl_slist *h = NULL;
	cJSON *msg = NULL, *proc, *args;
	struct cfs_buf body = CFS_BUF_INIT;
	char *url = NULL, *json = NULL, tmo[32], auth[64];
	unsigned char hdr[5];
	size_t jlen;
	int rc;

	memset(res, 0, sizeof(*res));
	if (!user || !*user)
		user = "root";
	if (strcmp(user, "root") != 0 && strcmp(user, "user") != 0)
		return cfs_error_set(CFS_EUNSUPPORTED,
				     "the e2b runtime runs commands as root "
				     "or user only (asked for %s)",
				     user);
	msg = cJSON_CreateObject();
	proc = cJSON_AddObjectToObject(msg, "process");
	cJSON_AddStringToObject(proc, "cmd", "/bin/bash");
	args = cJSON_AddArrayToObject(proc, "args");
	cJSON_AddItemToArray(args, cJSON_CreateString("-l"));
	cJSON_AddItemToArray(args, cJSON_CreateString("-c"));
	cJSON_AddItemToArray(args, cJSON_CreateString(command));
	cJSON_AddBoolToObject(msg, "stdin", false);
	json = cJSON_PrintUnformatted(msg);
	url = cfs_asprintf("%s/process.Process/Start", s->envd);
	if (!json || !url || cJSON_GetArraySize(args) != 3) {
		rc = CFS_ENOMEM;
		goto out;
	}
	jlen = strlen(json);
	hdr[0] = 0;
	hdr[1] = (unsigned char)(jlen >> 24);
	hdr[2] = (unsigned char)(jlen >> 16);
	hdr[3] = (unsigned char)(jlen >> 8);
	hdr[4] = (unsigned char)jlen;
	rc = cfs_buf_put(&body, hdr, 5);
	rc = rc ? rc : cfs_buf_put(&body, json, jlen);
	{
		char cred[40], b64[sodium_base64_ENCODED_LEN(
				       40, sodium_base64_VARIANT_ORIGINAL)];

		snprintf(cred, sizeof(cred), "%s:", user);
		sodium_bin2base64(b64, sizeof(b64), (unsigned char *)cred,
				  strlen(cred), sodium_base64_VARIANT_ORIGINAL);
		snprintf(auth, sizeof(auth), "Basic %s", b64);
	}
	rc = rc ? rc : headers(&h, s, ENVD);
	rc = rc ? rc
		: cfs_http_header(&h, "Content-Type",
				  "application/connect+json");
	rc = rc ? rc : cfs_http_header(&h, "Connect-Protocol-Version", "1");
	rc = rc ? rc : cfs_http_header(&h, "Keepalive-Ping-Interval", "50");
	rc = rc ? rc : cfs_http_header(&h, "Authorization", auth);
	if (!rc && timeout_ms > 0) {
		snprintf(tmo, sizeof(tmo), "%lld", (long long)timeout_ms);
		rc = cfs_http_header(&h, "Connect-Timeout-Ms", tmo);
	}
	if (rc)
		goto out;
	req.method = "POST";
	req.url = url;
	req.headers = h;
	req.body = body.ptr;
	req.body_len = body.len;
	req.on_data = cfs_e2b_stream_feed;
	req.payload = &st;
	req.out_fd = -1;
	req.cancel = rt->cancel;
	req.idle_ms = IDLE_MS;
	if (timeout_ms > 0)
		req.deadline_ms = cfs_monotonic_ms() + timeout_ms + GRACE_MS;
	rc = cfs_http_do(&resp, &req, "e2b run");
	if (rc == CFS_ECANCELED || rc == CFS_ETIMEDOUT) {
		send_kill(s, st.pid);
		if (rc == CFS_ETIMEDOUT)
			rc = cfs_error_set(CFS_ETIMEDOUT,
					   "command timed out after %lld ms "
					   "in e2b sandbox %s (killed)",
					   (long long)timeout_ms,
					   s->sandbox_id);
		else
			rc = cfs_error_set(CFS_ECANCELED,
					   "command interrupted (killed in e2b "
					   "sandbox %s)",
					   s->sandbox_id);
		goto out;
	}
	if (rc == CFS_EIO && resp.status == 200) {
		rc = cfs_error_set(
			CFS_EIO,
			"e2b run: the command stream of sandbox %s was cut "
			"before the command ended (the sandbox "
			"was killed or the connection dropped)",
			s->sandbox_id);
		goto out;
	}
	if (rc)
		goto out;
	if (resp.status != 200) {
		rc = http_fail(s, &resp, ENVD, "run");
		goto out;
	}
	if (strcmp(st.eos_code, "deadline_exceeded") == 0 ||
	    strcmp(st.eos_code, "504") == 0) {
		rc = cfs_error_set(CFS_ETIMEDOUT,
				   "command timed out after %lld ms in e2b "
				   "sandbox %s (killed)",
				   (long long)timeout_ms, s->sandbox_id);
		goto out;
	}
	if (st.eos_code[0]) {
		rc = cfs_error_set(strcmp(st.eos_code, "unauthenticated") == 0
					   ? CFS_EAUTH
					   : CFS_EIO,
				   "e2b run failed in sandbox %s: %s: %s",
				   s->sandbox_id, st.eos_code, st.eos_msg);
		goto out;
	}
	if (!st.got_end || !st.got_eos) {
		rc = cfs_error_set(CFS_EIO,
				   "e2b run: the command stream of sandbox %s "
				   "ended without an exit status (the "
				   "sandbox was killed or the connection "
				   "dropped)",
				   s->sandbox_id);
		goto out;
	}
	if (st.end_error[0] && !st.status[0]) {
		rc = cfs_error_set(CFS_EIO,
				   "e2b run: the command could not start in "
				   "sandbox %s: %s",
				   s->sandbox_id, st.end_error);
		goto out;
	}
	res->exit_code = st.exit_code;
	if (st.exit_code < 0 || st.exit_code > 255) {
		int se = signal_exit(st.status);

		res->exit_code = se > 0 ? se : 1;
	}
	res->truncated = st.truncated;
	if (cfs_buf_put(&st.out, "", 1) || cfs_buf_put(&st.err, "", 1)) {
		rc = CFS_ENOMEM;
		goto out;
	}
	res->out_len = st.out.len - 1;
	res->err_len = st.err.len - 1;
	res->out = cfs_buf_detach(&st.out);
	res->err = cfs_buf_detach(&st.err);
out:
	cJSON_Delete(msg);
	curl_slist_free_all(h);
	cfs_http_resp_clear(&resp);
	cfs_buf_free(&body);
	cfs_e2b_stream_clear(&st);
	free(url);
	free(json);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Files */

static bool retryable(int rc, long status)
{
	return rc == CFS_EAGAIN ||
	       (!rc && (status == 408 || status == 429 || status >= 500));
}

static int files_url(char **out, struct e2b_rt *s, const char *path)
{
	struct cfs_buf b = CFS_BUF_INIT;
	int rc = cfs_buf_printf(&b, "%s/files?path=", s->envd);

	rc = rc ? rc : cfs_http_urlencode(&b, path);
	rc = rc ? rc : cfs_buf_puts(&b, "&username=root");
	if (rc) {
		cfs_buf_free(&b);
		return rc;
	}
	*out = cfs_buf_detach(&b);
	return 0;
}

static int transfer(struct e2b_rt *s, bool up, const char *local_path,
		    const char *remote_path, int fd)
{
	static const unsigned int backoff_s[] = {1, 3, 6};
	const char *what = up ? "upload" : "download";
	struct cfs_http_req req = {0};
	struct cfs_http_resp resp = {0};
	struct curl_slist *h = NULL;
	curl_mime *mime = NULL;
	char *url = NULL;
	int rc;

	if (remote_path[0] != '/')
		return cfs_error_set(CFS_EINVAL,
				     "e2b %s: %s is not an absolute path", what,
				     remote_path);
	rc = files_url(&url, s, remote_path);
	rc = rc ? rc : headers(&h, s, ENVD);
	if (rc)
		goto out;
	req.method = up ? "POST" : "GET";
	req.url = url;
	req.headers = h;
	req.out_fd = up ? -1 : fd;
	for (size_t attempt = 0;; attempt++) {
		if (up) {
			curl_mimepart *part;

			curl_mime_free(mime);
			mime = curl_mime_init(NULL);
			part = mime ? curl_mime_addpart(mime) : NULL;
			if (!part || curl_mime_name(part, "file") != CURLE_OK ||
			    curl_mime_filedata(part, local_path) != CURLE_OK ||
			    curl_mime_filename(part, remote_path) != CURLE_OK ||
			    curl_mime_type(part, "application/octet-stream") !=
				    CURLE_OK) {
				rc = CFS_ENOMEM;
				goto out;
			}
			req.mime = mime;
		} else if (ftruncate(fd, 0) != 0 ||
			   lseek(fd, 0, SEEK_SET) != 0) {
			rc = cfs_error_errno(errno, "truncating %s",
					     local_path);
			goto out;
		}
		req.deadline_ms =
			cfs_monotonic_ms() + CFS_RUNTIME_DEFAULT_TIMEOUT_MS;
		rc = cfs_http_do(&resp, &req,
				 up ? "e2b upload" : "e2b download");
		if (attempt >= CFS_ARRAY_SIZE(backoff_s) ||
		    !retryable(rc, resp.status))
			break;
		sleep(backoff_s[attempt]);
	}
	if (rc)
		goto out;
	if (resp.status == 404 && !up) {
		rc = cfs_error_set(CFS_ENOTFOUND,
				   "e2b download: %s does not exist in "
				   "sandbox %s",
				   remote_path, s->sandbox_id);
		goto out;
	}
	if (resp.status < 200 || resp.status >= 300) {
		char w[300];

		snprintf(w, sizeof(w), "%s of %s", what, remote_path);
		rc = http_fail(s, &resp, ENVD, w);
	}
out:
	curl_mime_free(mime);
	curl_slist_free_all(h);
	cfs_http_resp_clear(&resp);
	free(url);
	return rc;
}

static int e2b_upload(struct cfs_runtime *rt, const char *local_path,
		      const char *remote_path)
{
	struct stat sb;

	if (stat(local_path, &sb) != 0)
		return cfs_error_errno(errno, "opening %s", local_path);
	return transfer((struct e2b_rt *)rt, true, local_path, remote_path, -1);
}

static int e2b_download(struct cfs_runtime *rt, const char *remote_path,
			const char *local_path)
{
	int fd, rc;

	fd = open(local_path,
		  O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || fchmod(fd, 0600) != 0) {
		rc = cfs_error_errno(errno, "creating %s", local_path);
		if (fd >= 0)
			close(fd);
		return rc;
	}
	rc = transfer((struct e2b_rt *)rt, false, local_path, remote_path, fd);
	if (close(fd) != 0 && !rc)
		rc = cfs_error_errno(errno, "writing %s", local_path);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Lifecycle */

static int e2b_keep_alive(struct cfs_runtime *rt)
{
	struct e2b_rt *s = (struct e2b_rt *)rt;
	cJSON *body = cJSON_CreateObject();
	char *path = cfs_asprintf("/sandboxes/%s/timeout", s->sandbox_id);
	int rc = CFS_ENOMEM;

	if (body && path &&
	    cJSON_AddNumberToObject(body, "timeout",
				    (double)(s->lifetime_ms / 1000)))
		rc = api_call(NULL, s, "POST", path, body, "keep-alive", false);
	cJSON_Delete(body);
	free(path);
	return rc;
}

static int e2b_kill(struct cfs_runtime *rt)
{
	struct e2b_rt *s = (struct e2b_rt *)rt;
	char *path;
	int rc;

	if (s->gone || !s->sandbox_id)
		return 0;
	path = cfs_asprintf("/sandboxes/%s", s->sandbox_id);
	if (!path)
		return CFS_ENOMEM;
	rc = api_call(NULL, s, "DELETE", path, NULL, "kill sandbox", true);
	free(path);
	if (!rc)
		s->gone = true;
	return rc;
}

static void e2b_free(struct cfs_runtime *rt)
{
	struct e2b_rt *s = (struct e2b_rt *)rt;

	if (!s)
		return;
	free(s->id);
	free(s->api);
	free(s->envd);
	cfs_secret_free(s->api_key);
	cfs_secret_free(s->token);
	free(s->sandbox_id);
	free(s->tmp_dir);
	free(s->mount_base);
	free(s);
}

static const struct cfs_runtime_ops e2b_ops = {
	.version = CFS_RUNTIME_VERSION,
	.run = e2b_run,
	.upload = e2b_upload,
	.download = e2b_download,
	.keep_alive = e2b_keep_alive,
	.kill = e2b_kill,
	.dispose = e2b_kill, /* every sandbox here is one it created */
	.free = e2b_free,
};

static int create_sandbox(struct e2b_rt *s, const struct cfs_e2b_opts *o,
			  const char *context_id)
{
	cJSON *body = cJSON_CreateObject(), *doc = NULL, *meta;
	const cJSON *v;
	const char *domain = getenv("E2B_DOMAIN");
	int rc = CFS_ENOMEM;

	if (!body)
		return CFS_ENOMEM;
	cJSON_AddStringToObject(body, "templateID",
				o && o->template_id ? o->template_id : "base");
	cJSON_AddNumberToObject(body, "timeout",
				(double)(s->lifetime_ms / 1000));
	cJSON_AddBoolToObject(body, "secure", true);
	cJSON_AddBoolToObject(body, "allow_internet_access", true);
	meta = cJSON_AddObjectToObject(body, "metadata");
	cJSON_AddStringToObject(meta, "contextsdk", "true");
	if (context_id)
		cJSON_AddStringToObject(meta, "contextId", context_id);
	rc = api_call(&doc, s, "POST", "/v2/sandboxes", body, "create sandbox",
		      false);
	if (rc)
		goto out;
	v = cJSON_GetObjectItemCaseSensitive(doc, "sandboxID");
	if (!cJSON_IsString(v) || !*v->valuestring ||
	    strpbrk(v->valuestring, "/?#% \t\r\n")) {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "e2b create sandbox: the answer has no "
				   "valid sandboxID");
		goto out;
	}
	s->sandbox_id = cfs_strdup(v->valuestring);
	v = cJSON_GetObjectItemCaseSensitive(doc, "envdAccessToken");
	if (cJSON_IsString(v) && *v->valuestring)
		s->token = cfs_secret_strdup(v->valuestring);
	v = cJSON_GetObjectItemCaseSensitive(doc, "domain");
	if (cJSON_IsString(v) && *v->valuestring)
		domain = v->valuestring;
	if (!domain || !*domain)
		domain = "e2b.app";
	if (getenv("E2B_SANDBOX_URL") && *getenv("E2B_SANDBOX_URL"))
		s->envd = cfs_http_env_url("E2B_SANDBOX_URL", "");
	else
		s->envd = cfs_asprintf("https://" ENVD_PORT "-%s.%s",
				       s->sandbox_id, domain);
	s->id = cfs_asprintf("e2b:%s", s->sandbox_id);
	rc = s->sandbox_id && s->envd && s->id ? 0 : CFS_ENOMEM;
out:
	cJSON_Delete(body);
	cJSON_Delete(doc);
	return rc;
}

int cfs_e2b_runtime_new(struct cfs_runtime **out, const struct cfs_e2b_opts *o,
			const char *context_id)
{
	struct e2b_rt *s;
	const char *dom = getenv("E2B_DOMAIN");
	int rc;

	*out = NULL;
	rc = cfs_http_init();
	if (rc)
		return rc;
	s = cfs_calloc(1, sizeof(*s));
	if (!s)
		return CFS_ENOMEM;
	s->lifetime_ms =
		o && o->lifetime_ms > 0 ? o->lifetime_ms : DEFAULT_LIFETIME_MS;
	s->api_key = cfs_http_env_secret("E2B_API_KEY");
	if (!s->api_key) {
		rc = cfs_error_set(CFS_EKEY,
				   "E2B_API_KEY is not set (export your E2B "
				   "API key to use --runtime e2b)");
		goto fail;
	}
	if (getenv("E2B_API_URL") && *getenv("E2B_API_URL"))
		s->api = cfs_http_env_url("E2B_API_URL", "");
	else
		s->api = cfs_asprintf("https://api.%s",
				      dom && *dom ? dom : "e2b.app");
	if (!s->api) {
		rc = CFS_ENOMEM;
		goto fail;
	}
	s->base.ops = &e2b_ops;
	s->base.provider = "e2b";
	s->base.caps.directory_bundle = true;
	s->base.sandbox_timeout_ms = s->lifetime_ms;
	rc = create_sandbox(s, o, context_id);
	if (rc)
		goto fail;
	s->base.id = s->id;

	/* Resolve and prepare the base directory (proves envd answers). */
	{
		char *what = cfs_asprintf("e2b sandbox %s", s->sandbox_id);

		rc = what ? cfs_runtime_prepare_dirs(&s->base, NULL, 120000,
						     what, &s->tmp_dir,
						     &s->mount_base)
			  : CFS_ENOMEM;
		free(what);
	}
	if (rc)
		goto fail;
	*out = &s->base;
	return 0;
fail:
	if (s->sandbox_id) {
		/* keep the first error; the sandbox must not leak */
		int keep = cfs_error_last_code();
		char *msg = cfs_strdup(cfs_error_last());

		e2b_kill(&s->base);
		cfs_error_set(keep ? keep : rc, "%s", msg ? msg : "");
		free(msg);
	}
	e2b_free(&s->base);
	return rc;
}

static int e2b_create(struct cfs_runtime **out, const void *opts,
		      const char *context_id)
{
	return cfs_e2b_runtime_new(out, opts, context_id);
}

int cfs_e2b_provisioner_new(struct cfs_provisioner **out,
			    const struct cfs_e2b_opts *opts)
{
	return cfs_http_provisioner_new(out, e2b_create, opts);
}
