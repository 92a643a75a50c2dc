/*
 * The Vercel Sandbox runtime adapter (../shared/notes/sandbox-apis.md §2):
 * an ephemeral sandbox session over Vercel's REST API (v2: sandboxes and
 * sessions; commands and files are addressed by session id).
 *
 *   create     POST /v2/sandboxes {projectId, runtime, timeout ms,
 *              persistent:false, tags}; keeps session.id;
 *   run        POST .../sessions/{sid}/cmd {command:"bash", args:["-lc",
 *              CMD], wait:true, logs:true, timeout?}: an NDJSON stream, the
 *              command line first, then {"stream":"stdout"|"stderr",data}
 *              lines, last the command with its exitCode. A timeout is
 *              enforced by the service (SIGKILL, exit 137) and reported
 *              as CFS_ETIMEDOUT; a local deadline 10 s later (or a cancel)
 *              kills the command through .../cmd/{id}/kill;
 *   upload     POST .../fs/write, a gzip'd tar (libarchive) with one entry
 *              named by the path relative to x-cwd "/", mode 0600;
 *   download   POST .../fs/read {path}, octet-stream (404 = missing);
 *   keep-alive POST .../extend-timeout {duration}: only the delta between
 *              now + lifetime and the deadline already set (extend adds);
 *   kill       POST .../sessions/{sid}/stop (404 / 410 = already gone).
 *
 * Command output travels as JSON strings (not binary safe), so the session
 * engine's bundles always move through fs/read and fs/write. Commands run
 * as the default user (vercel-sandbox) unless root is asked for (sudo).
 * Environment: VERCEL_TOKEN + VERCEL_TEAM_ID + VERCEL_PROJECT_ID, or
 * VERCEL_OIDC_TOKEN (team and project from its claims);
 * VERCEL_SANDBOX_API_URL overrides https://vercel.com/api.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <cjson/cJSON.h>
#include <sodium.h>

#include "adapters/adapters.h"
#include "adapters/http.h"
#include "adapters/stream_i.h"
#include "core/error.h"
#include "core/util.h"

#define GRACE_MS 10000
#define LINE_MAX_BYTES (16u << 20)
#define DEFAULT_LIFETIME_MS (45 * 60 * 1000)
#define UPLOAD_MAX ((size_t)2 << 30)

struct vercel_rt {
	struct cfs_runtime base;
	char *id;
	char *api; /* base URL */
	char *token; /* secret */
	char *team;
	char *project;
	char *session_id;
	char *tmp_dir;
	char *mount_base;
	int64_t lifetime_ms;
	int64_t deadline_ms; /* wall clock deadline last set */
	bool gone;
};

/* ------------------------------------------------------------------ */
/* Requests */

static int build_url(char **out, struct vercel_rt *s, const char *path)
{
	struct cfs_buf b = CFS_BUF_INIT;
	int rc = cfs_buf_printf(&b, "%s%s%cteamId=", s->api, path,
				strchr(path, '?') ? '&' : '?');

	rc = rc ? rc : cfs_http_urlencode(&b, s->team);
	if (rc) {
		cfs_buf_free(&b);
		return rc;
	}
	*out = cfs_buf_detach(&b);
	return 0;
}

static int headers(struct curl_slist **h, struct vercel_rt *s,
		   const char *content_type)
{
	char *auth = cfs_asprintf("Bearer %s", s->token);
	int rc;

	if (!auth)
		return CFS_ENOMEM;
	rc = cfs_http_header(h, "Authorization", auth);
	sodium_memzero(auth, strlen(auth));
	free(auth);
	rc = rc ? rc : cfs_http_header(h, "Content-Type", content_type);
	return rc;
}

static int http_fail(struct vercel_rt *s, const struct cfs_http_resp *r,
		     const char *what)
{
	char msg[320];

	cfs_http_error_text(msg, sizeof(msg), r);
	if (r->status == 401 || r->status == 403)
		return cfs_error_set(CFS_EAUTH,
				     "vercel %s: the token was rejected (HTTP "
				     "%ld: %s); check VERCEL_TOKEN, "
				     "VERCEL_TEAM_ID and VERCEL_PROJECT_ID",
				     what, r->status, msg);
	if (s->session_id &&
	    (r->status == 404 || r->status == 410 || r->status == 422))
		return cfs_error_set(CFS_EIO,
				     "vercel %s: sandbox session %s is gone "
				     "(HTTP %ld: %s); it was stopped or its "
				     "lifetime ran out, rerun to get a new one",
				     what, s->session_id, r->status, msg);
	if (r->status == 429)
		return cfs_error_set(CFS_EAGAIN,
				     "vercel %s: rate limited (HTTP 429: %s); "
				     "retry later",
				     what, msg);
	return cfs_error_set(r->status >= 500 ? CFS_EAGAIN : CFS_EIO,
			     "vercel %s failed (HTTP %ld: %s)", what, r->status,
			     msg);
}

/* One unary JSON call; *doc_out optional. */
static int api_call(cJSON **doc_out, struct vercel_rt *s, const char *path,
		    const cJSON *body, const char *what, bool gone_ok)
{
	struct cfs_http_req req = {0};
	struct cfs_http_resp resp = {0};
	struct curl_slist *h = NULL;
	char *url = NULL, *text = NULL, label[128];
	int rc;

	if (doc_out)
		*doc_out = NULL;
	text = cJSON_PrintUnformatted(body);
	rc = text ? build_url(&url, s, path) : CFS_ENOMEM;
	rc = rc ? rc : headers(&h, s, "application/json");
	if (rc)
		goto out;
	req.method = "POST";
	req.url = url;
	req.headers = h;
	req.body = text;
	req.body_len = strlen(text);
	req.out_fd = -1;
	req.deadline_ms = cfs_monotonic_ms() + 120000;
	snprintf(label, sizeof(label), "vercel %s", what);
	rc = cfs_http_do(&resp, &req, label);
	if (rc)
		goto out;
	if (gone_ok && (resp.status == 404 || resp.status == 410))
		goto out;
	if (resp.status < 200 || resp.status >= 300) {
		rc = http_fail(s, &resp, what);
		goto out;
	}
	if (doc_out) {
		*doc_out = cJSON_ParseWithLength(
			resp.body.ptr ? resp.body.ptr : "", resp.body.len);
		if (!*doc_out)
			rc = cfs_error_set(CFS_ECORRUPT,
					   "vercel %s: the answer is not JSON",
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
/* Commands: the NDJSON stream */

static int put_capped(struct cfs_vercel_stream *st, struct cfs_buf *b,
		      const char *s)
{
	size_t n = strlen(s);

	if (b->len + n > CFS_RUNTIME_OUTPUT_MAX) {
		st->truncated = true;
		n = CFS_RUNTIME_OUTPUT_MAX - b->len;
	}
	return n ? cfs_buf_put(b, s, n) : 0;
}

static int on_line(struct cfs_vercel_stream *st, const char *p, size_t n)
{
	cJSON *doc;
	const cJSON *cmd, *stream, *data;
	int rc = 0;

	while (n && (p[n - 1] == '\r' || p[n - 1] == ' '))
		n--;
	if (!n)
		return 0;
	doc = cJSON_ParseWithLength(p, n);
	if (!doc)
		return cfs_error_set(CFS_ECORRUPT,
				     "vercel: malformed line in the command "
				     "stream");
	cmd = cJSON_GetObjectItemCaseSensitive(doc, "command");
	stream = cJSON_GetObjectItemCaseSensitive(doc, "stream");
	data = cJSON_GetObjectItemCaseSensitive(doc, "data");
	if (cJSON_IsObject(cmd)) {
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(cmd, "id");
		const cJSON *ec =
			cJSON_GetObjectItemCaseSensitive(cmd, "exitCode");

		if (cJSON_IsString(id))
			snprintf(st->cmd_id, sizeof(st->cmd_id), "%s",
				 id->valuestring);
		if (cJSON_IsNumber(ec)) {
			st->done = true;
			st->exit_code = ec->valueint;
		}
	} else if (cJSON_IsString(stream) &&
		   strcmp(stream->valuestring, "error") == 0) {
		const cJSON *c = cJSON_GetObjectItemCaseSensitive(data, "code");
		const cJSON *m =
			cJSON_GetObjectItemCaseSensitive(data, "message");

		snprintf(st->error, sizeof(st->error), "%s: %s",
			 cJSON_IsString(c) ? c->valuestring : "error",
			 cJSON_IsString(m) ? m->valuestring : "");
	} else if (cJSON_IsString(stream) && cJSON_IsString(data)) {
		if (strcmp(stream->valuestring, "stdout") == 0)
			rc = put_capped(st, &st->out, data->valuestring);
		else if (strcmp(stream->valuestring, "stderr") == 0)
			rc = put_capped(st, &st->err, data->valuestring);
	}
	cJSON_Delete(doc);
	return rc;
}

int cfs_vercel_stream_feed(const char *p, size_t n, void *payload)
{
	struct cfs_vercel_stream *st = payload;
	size_t start = 0;
	int rc = 0;

	for (size_t i = 0; i < n && !rc; i++) {
		if (p[i] != '\n')
			continue;
		if (st->line.len) {
			rc = cfs_buf_put(&st->line, p + start, i - start);
			rc = rc ? rc : on_line(st, st->line.ptr, st->line.len);
			st->line.len = 0;
		} else {
			rc = on_line(st, p + start, i - start);
		}
		start = i + 1;
	}
	if (!rc && start < n) {
		if (st->line.len + (n - start) > LINE_MAX_BYTES)
			return cfs_error_set(CFS_ECORRUPT,
					     "vercel: command stream line "
					     "exceeds the cap");
		rc = cfs_buf_put(&st->line, p + start, n - start);
	}
	return rc;
}

int cfs_vercel_stream_finish(struct cfs_vercel_stream *st)
{
	int rc = st->line.len ? on_line(st, st->line.ptr, st->line.len) : 0;

	st->line.len = 0;
	return rc;
}

void cfs_vercel_stream_clear(struct cfs_vercel_stream *st)
{
	cfs_buf_free(&st->line);
	cfs_buf_free(&st->out);
	cfs_buf_free(&st->err);
}

static void kill_command(struct vercel_rt *s, const char *cmd_id)
{
	cJSON *body = cJSON_CreateObject();
	char *path = cfs_asprintf("/v2/sandboxes/sessions/%s/cmd/%s/kill",
				  s->session_id, cmd_id);

	if (body && path && *cmd_id &&
	    cJSON_AddNumberToObject(body, "signal", 9))
		api_call(NULL, s, path, body, "kill command", true);
	cJSON_Delete(body);
	free(path);
}

static int vercel_run(struct cfs_run_result *res, struct cfs_runtime *rt,
		      const char *command, const char *user, int64_t timeout_ms)
{
	struct vercel_rt *s = (struct vercel_rt *)rt;
	struct cfs_vercel_stream st = {0};
	struct cfs_http_req req = {0};
	struct cfs_http_resp resp = {0};
	struct curl_slist *h = NULL;
	cJSON *body = NULL, *args;
	char *url = NULL, *path = NULL, *text = NULL;
	bool sudo = false;
	int64_t started;
	int rc;

	memset(res, 0, sizeof(*res));
	if (user && *user && strcmp(user, "root") == 0)
		sudo = true;
	else if (user && *user && strcmp(user, "vercel-sandbox") != 0)
		return cfs_error_set(CFS_EUNSUPPORTED,
				     "the vercel runtime runs commands as "
				     "root or vercel-sandbox only (asked for "
				     "%s)",
				     user);
	body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "command", "bash");
	args = cJSON_AddArrayToObject(body, "args");
	cJSON_AddItemToArray(args, cJSON_CreateString("-lc"));
	cJSON_AddItemToArray(args, cJSON_CreateString(command));
	cJSON_AddObjectToObject(body, "env");
	cJSON_AddBoolToObject(body, "sudo", sudo);
	cJSON_AddBoolToObject(body, "wait", true);
	cJSON_AddBoolToObject(body, "logs", true);
	if (timeout_ms > 0)
		cJSON_AddNumberToObject(body, "timeout", (double)timeout_ms);
	text = cJSON_PrintUnformatted(body);
	path = cfs_asprintf("/v2/sandboxes/sessions/%s/cmd", s->session_id);
	if (!text || !path || cJSON_GetArraySize(args) != 2) {
		rc = CFS_ENOMEM;
		goto out;
	}
	rc = build_url(&url, s, path);
	rc = rc ? rc : headers(&h, s, "application/json");
	if (rc)
		goto out;
	req.method = "POST";
	req.url = url;
	req.headers = h;
	req.body = text;
	req.body_len = strlen(text);
	req.on_data = cfs_vercel_stream_feed;
	req.payload = &st;
	req.out_fd = -1;
	req.cancel = rt->cancel;
	started = cfs_monotonic_ms();
	if (timeout_ms > 0)
		req.deadline_ms = started + timeout_ms + GRACE_MS;
	rc = cfs_http_do(&resp, &req, "vercel run");
	if (rc == CFS_ECANCELED || rc == CFS_ETIMEDOUT) {
		kill_command(s, st.cmd_id);
		if (rc == CFS_ETIMEDOUT)
			rc = cfs_error_set(CFS_ETIMEDOUT,
					   "command timed out after %lld ms "
					   "in vercel session %s (killed)",
					   (long long)timeout_ms,
					   s->session_id);
		else
			rc = cfs_error_set(CFS_ECANCELED,
					   "command interrupted (killed in "
					   "vercel session %s)",
					   s->session_id);
		goto out;
	}
	if (rc == CFS_EIO && resp.status == 200) {
		rc = cfs_error_set(
			CFS_EIO,
			"vercel run: the command stream of session %s was cut "
			"before the command ended (the sandbox "
			"was killed or the connection dropped)",
			s->session_id);
		goto out;
	}
	if (rc)
		goto out;
	if (resp.status < 200 || resp.status >= 300) {
		rc = http_fail(s, &resp, "run");
		goto out;
	}
	rc = cfs_vercel_stream_finish(&st);
	if (rc)
		goto out;
	if (st.error[0]) {
		rc = cfs_error_set(CFS_EIO,
				   "vercel run failed in session %s: %s",
				   s->session_id, st.error);
		goto out;
	}
	if (!st.done) {
		rc = cfs_error_set(CFS_EIO,
				   "vercel run: the command stream of session "
				   "%s ended without an exit code (the "
				   "sandbox was stopped or the connection "
				   "dropped)",
				   s->session_id);
		goto out;
	}
	/* The service kills a command at its timeout with SIGKILL. */
	if (timeout_ms > 0 && st.exit_code == 137 &&
	    cfs_monotonic_ms() - started >= timeout_ms) {
		rc = cfs_error_set(CFS_ETIMEDOUT,
				   "command timed out after %lld ms in vercel "
				   "session %s (killed)",
				   (long long)timeout_ms, s->session_id);
		goto out;
	}
	res->exit_code =
		st.exit_code < 0 || st.exit_code > 255 ? 1 : st.exit_code;
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
	cJSON_Delete(body);
	curl_slist_free_all(h);
	cfs_http_resp_clear(&resp);
	cfs_vercel_stream_clear(&st);
	free(url);
	free(path);
	free(text);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Files */

static la_ssize_t tar_write(struct archive *a, void *ud, const void *p,
			    size_t n)
{
	struct cfs_buf *b = ud;

	(void)a;
	if (b->len + n > UPLOAD_MAX || cfs_buf_put(b, p, n) != 0)
		return -1;
	return (la_ssize_t)n;
}

/* gzip'd tar holding local_path as remote_path (relative to "/"). */
static int make_tgz(struct cfs_buf *out, const char *local_path,
		    const char *remote_path)
{
	struct archive *a = archive_write_new();
	struct archive_entry *e = archive_entry_new();
	char chunk[65536];
	struct stat sb;
	int fd = -1, rc = 0;
	ssize_t n;

	if (!a || !e) {
		rc = CFS_ENOMEM;
		goto out;
	}
	fd = open(local_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &sb) != 0) {
		rc = cfs_error_errno(errno, "opening %s", local_path);
		goto out;
	}
	if (archive_write_set_format_pax_restricted(a) != ARCHIVE_OK ||
	    archive_write_add_filter_gzip(a) != ARCHIVE_OK ||
	    archive_write_open(a, out, NULL, tar_write, NULL) != ARCHIVE_OK) {
		rc = cfs_error_set(CFS_EIO, "vercel upload: tar.gz: %s",
				   archive_error_string(a));
		goto out;
	}
	archive_entry_set_pathname(e, remote_path + 1);
	archive_entry_set_filetype(e, AE_IFREG);
	archive_entry_set_perm(e, 0600);
	archive_entry_set_size(e, sb.st_size);
	archive_entry_set_mtime(e, sb.st_mtime, 0);
	if (archive_write_header(a, e) != ARCHIVE_OK) {
		rc = cfs_error_set(CFS_EIO, "vercel upload: tar.gz: %s",
				   archive_error_string(a));
		goto out;
	}
	while ((n = read(fd, chunk, sizeof(chunk))) > 0) {
		if (archive_write_data(a, chunk, (size_t)n) != n) {
			rc = cfs_error_set(CFS_EIO,
					   "vercel upload: tar.gz: %s (file "
					   "too large?)",
					   archive_error_string(a));
			goto out;
		}
	}
	if (n < 0) {
		rc = cfs_error_errno(errno, "reading %s", local_path);
		goto out;
	}
	if (archive_write_close(a) != ARCHIVE_OK)
		rc = cfs_error_set(CFS_EIO, "vercel upload: tar.gz: %s",
				   archive_error_string(a));
out:
	if (fd >= 0)
		close(fd);
	archive_entry_free(e);
	archive_write_free(a);
	return rc;
}

static int vercel_upload(struct cfs_runtime *rt, const char *local_path,
			 const char *remote_path)
{
	struct vercel_rt *s = (struct vercel_rt *)rt;
	struct cfs_http_req req = {0};
	struct cfs_http_resp resp = {0};
	struct curl_slist *h = NULL;
	struct cfs_buf tgz = CFS_BUF_INIT;
	char *url = NULL, *path = NULL;
	int rc;

	if (remote_path[0] != '/' || !remote_path[1])
		return cfs_error_set(CFS_EINVAL,
				     "vercel upload: %s is not an absolute "
				     "file path",
				     remote_path);
	rc = make_tgz(&tgz, local_path, remote_path);
	if (rc)
		goto out;
	path = cfs_asprintf("/v2/sandboxes/sessions/%s/fs/write",
			    s->session_id);
	rc = path ? build_url(&url, s, path) : CFS_ENOMEM;
	rc = rc ? rc : headers(&h, s, "application/gzip");
	rc = rc ? rc : cfs_http_header(&h, "x-cwd", "/");
	if (rc)
		goto out;
	req.method = "POST";
	req.url = url;
	req.headers = h;
	req.body = tgz.ptr;
	req.body_len = tgz.len;
	req.out_fd = -1;
	req.deadline_ms = cfs_monotonic_ms() + CFS_RUNTIME_DEFAULT_TIMEOUT_MS;
	rc = cfs_http_do(&resp, &req, "vercel upload");
	if (!rc && (resp.status < 200 || resp.status >= 300)) {
		char w[300];

		snprintf(w, sizeof(w), "upload of %s", remote_path);
		rc = http_fail(s, &resp, w);
	}
out:
	curl_slist_free_all(h);
	cfs_http_resp_clear(&resp);
	cfs_buf_free(&tgz);
	free(url);
	free(path);
	return rc;
}

static int vercel_download(struct cfs_runtime *rt, const char *remote_path,
			   const char *local_path)
{
	struct vercel_rt *s = (struct vercel_rt *)rt;
	struct cfs_http_req req = {0};
	struct cfs_http_resp resp = {0};
	struct curl_slist *h = NULL;
	cJSON *body = cJSON_CreateObject();
	char *url = NULL, *path = NULL, *text = NULL;
	int fd = -1, rc;

	fd = open(local_path,
		  O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 || fchmod(fd, 0600) != 0) {
		rc = cfs_error_errno(errno, "creating %s", local_path);
		goto out;
	}
	cJSON_AddStringToObject(body, "path", remote_path);
	text = cJSON_PrintUnformatted(body);
	path = cfs_asprintf("/v2/sandboxes/sessions/%s/fs/read", s->session_id);
	rc = text && path ? build_url(&url, s, path) : CFS_ENOMEM;
	rc = rc ? rc : headers(&h, s, "application/json");
	if (rc)
		goto out;
	req.method = "POST";
	req.url = url;
	req.headers = h;
	req.body = text;
	req.body_len = strlen(text);
	req.out_fd = fd;
	req.deadline_ms = cfs_monotonic_ms() + CFS_RUNTIME_DEFAULT_TIMEOUT_MS;
	rc = cfs_http_do(&resp, &req, "vercel download");
	if (rc)
		goto out;
	if (resp.status == 404) {
		rc = cfs_error_set(CFS_ENOTFOUND,
				   "vercel download: %s does not exist in "
				   "session %s",
				   remote_path, s->session_id);
	} else if (resp.status < 200 || resp.status >= 300) {
		char w[300];

		snprintf(w, sizeof(w), "download of %s", remote_path);
		rc = http_fail(s, &resp, w);
	} else if (!strstr(resp.content_type, "application/octet-stream")) {
		rc = cfs_error_set(CFS_EIO,
				   "vercel download of %s: unexpected "
				   "content type %s",
				   remote_path,
				   resp.content_type[0] ? resp.content_type
							: "(none)");
	}
out:
	if (fd >= 0 && close(fd) != 0 && !rc)
		rc = cfs_error_errno(errno, "writing %s", local_path);
	cJSON_Delete(body);
	curl_slist_free_all(h);
	cfs_http_resp_clear(&resp);
	free(url);
	free(path);
	free(text);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Lifecycle */

static int vercel_keep_alive(struct cfs_runtime *rt)
{
	struct vercel_rt *s = (struct vercel_rt *)rt;
	int64_t want = cfs_now_ms() + s->lifetime_ms;
	int64_t delta = want - s->deadline_ms;
	cJSON *body;
	char *path;
	int rc = CFS_ENOMEM;

	/* extend-timeout adds to the deadline: only ask for what is missing */
	if (delta < 1000)
		return 0;
	body = cJSON_CreateObject();
	path = cfs_asprintf("/v2/sandboxes/sessions/%s/extend-timeout",
			    s->session_id);
	if (body && path &&
	    cJSON_AddNumberToObject(body, "duration", (double)delta))
		rc = api_call(NULL, s, path, body, "keep-alive", false);
	if (!rc)
		s->deadline_ms += delta;
	cJSON_Delete(body);
	free(path);
	return rc;
}

static int vercel_kill(struct cfs_runtime *rt)
{
	struct vercel_rt *s = (struct vercel_rt *)rt;
	cJSON *body;
	char *path;
	int rc = CFS_ENOMEM;

	if (s->gone || !s->session_id)
		return 0;
	body = cJSON_CreateObject();
	path = cfs_asprintf("/v2/sandboxes/sessions/%s/stop", s->session_id);
	if (body && path)
		rc = api_call(NULL, s, path, body, "stop sandbox", true);
	if (!rc)
		s->gone = true;
	cJSON_Delete(body);
	free(path);
	return rc;
}

static void vercel_free(struct cfs_runtime *rt)
{
	struct vercel_rt *s = (struct vercel_rt *)rt;

	if (!s)
		return;
	free(s->id);
	free(s->api);
	cfs_secret_free(s->token);
	free(s->team);
	free(s->project);
	free(s->session_id);
	free(s->tmp_dir);
	free(s->mount_base);
	free(s);
}

static const struct cfs_runtime_ops vercel_ops = {
	.version = CFS_RUNTIME_VERSION,
	.run = vercel_run,
	.upload = vercel_upload,
	.download = vercel_download,
	.keep_alive = vercel_keep_alive,
	.kill = vercel_kill,
	.dispose = vercel_kill, /* every session here is one it created */
	.free = vercel_free,
};

/* An OIDC token's unverified claims owner_id (team) and project_id. */
static int oidc_claims(struct vercel_rt *s, const char *jwt)
{
	const char *a = strchr(jwt, '.'), *b = a ? strchr(a + 1, '.') : NULL;
	unsigned char *bin = NULL;
	size_t got = 0, n;
	cJSON *doc = NULL;
	const cJSON *o, *p;
	int rc = 0;

	if (!a || !b || b - a - 1 > 16384)
		goto bad;
	n = (size_t)(b - a - 1);
	bin = cfs_malloc(n + 1);
	if (!bin)
		return CFS_ENOMEM;
	if (sodium_base642bin(bin, n, a + 1, n, NULL, &got, NULL,
			      sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
		goto bad;
	doc = cJSON_ParseWithLength((const char *)bin, got);
	o = cJSON_GetObjectItemCaseSensitive(doc, "owner_id");
	p = cJSON_GetObjectItemCaseSensitive(doc, "project_id");
	if (!cJSON_IsString(o) || !cJSON_IsString(p))
		goto bad;
	s->team = cfs_strdup(o->valuestring);
	s->project = cfs_strdup(p->valuestring);
	rc = s->team && s->project ? 0 : CFS_ENOMEM;
	goto out;
bad:
	rc = cfs_error_set(CFS_EKEY,
			   "VERCEL_OIDC_TOKEN is not a Vercel OIDC token "
			   "(no owner_id / project_id claims); run `vercel "
			   "env pull` again or set VERCEL_TOKEN, "
			   "VERCEL_TEAM_ID and VERCEL_PROJECT_ID");
out:
	cJSON_Delete(doc);
	free(bin);
	return rc;
}

static int credentials(struct vercel_rt *s)
{
	const char *team = getenv("VERCEL_TEAM_ID");
	const char *project = getenv("VERCEL_PROJECT_ID");
	int set;

	s->token = cfs_http_env_secret("VERCEL_TOKEN");
	set = !!s->token + !!(team && *team) + !!(project && *project);
	if (set == 3) {
		s->team = cfs_strdup(team);
		s->project = cfs_strdup(project);
		return s->team && s->project ? 0 : CFS_ENOMEM;
	}
	if (set != 0)
		return cfs_error_set(CFS_EKEY,
				     "VERCEL_TOKEN, VERCEL_TEAM_ID and "
				     "VERCEL_PROJECT_ID must be set together "
				     "(or none of them, with "
				     "VERCEL_OIDC_TOKEN)");
	s->token = cfs_http_env_secret("VERCEL_OIDC_TOKEN");
	if (!s->token)
		return cfs_error_set(CFS_EKEY,
				     "no Vercel credentials: set "
				     "VERCEL_TOKEN, VERCEL_TEAM_ID and "
				     "VERCEL_PROJECT_ID (or VERCEL_OIDC_TOKEN) "
				     "to use --runtime vercel");
	return oidc_claims(s, s->token);
}

static int create_sandbox(struct vercel_rt *s, const struct cfs_vercel_opts *o)
{
	cJSON *body = cJSON_CreateObject(), *doc = NULL, *tags;
	const cJSON *sess, *v;
	int rc;

	if (!body)
		return CFS_ENOMEM;
	cJSON_AddStringToObject(body, "projectId", s->project);
	cJSON_AddStringToObject(body, "runtime",
				o && o->runtime ? o->runtime : "python3.13");
	cJSON_AddNumberToObject(body, "timeout", (double)s->lifetime_ms);
	cJSON_AddBoolToObject(body, "persistent", false);
	tags = cJSON_AddObjectToObject(body, "tags");
	cJSON_AddStringToObject(tags, "contextsdk", "true");
	s->deadline_ms = cfs_now_ms() + s->lifetime_ms;
	rc = api_call(&doc, s, "/v2/sandboxes", body, "create sandbox", false);
	if (rc)
		goto out;
	sess = cJSON_GetObjectItemCaseSensitive(doc, "session");
	v = cJSON_GetObjectItemCaseSensitive(sess, "id");
	if (!cJSON_IsString(v) || !*v->valuestring ||
	    strpbrk(v->valuestring, "/?#% \t\r\n")) {
		rc = cfs_error_set(CFS_ECORRUPT,
				   "vercel create sandbox: the answer has no "
				   "valid session id");
		goto out;
	}
	s->session_id = cfs_strdup(v->valuestring);
	s->id = cfs_asprintf("vercel:%s", v->valuestring);
	rc = s->session_id && s->id ? 0 : CFS_ENOMEM;
out:
	cJSON_Delete(body);
	cJSON_Delete(doc);
	return rc;
}

int cfs_vercel_runtime_new(struct cfs_runtime **out,
			   const struct cfs_vercel_opts *o,
			   const char *context_id)
{
	struct vercel_rt *s;
	int rc;

	(void)context_id;
	*out = NULL;
	rc = cfs_http_init();
	if (rc)
		return rc;
	s = cfs_calloc(1, sizeof(*s));
	if (!s)
		return CFS_ENOMEM;
	s->lifetime_ms =
		o && o->lifetime_ms > 0 ? o->lifetime_ms : DEFAULT_LIFETIME_MS;
	rc = credentials(s);
	if (rc)
		goto fail;
	s->api = cfs_http_env_url("VERCEL_SANDBOX_API_URL",
				  "https://vercel.com/api");
	if (!s->api) {
		rc = CFS_ENOMEM;
		goto fail;
	}
	s->base.ops = &vercel_ops;
	s->base.provider = "vercel";
	s->base.caps.directory_bundle = true;
	s->base.sandbox_timeout_ms = s->lifetime_ms;
	rc = create_sandbox(s, o);
	if (rc)
		goto fail;
	s->base.id = s->id;

	{
		char *what = cfs_asprintf("vercel session %s", s->session_id);

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
	if (s->session_id) {
		int keep = cfs_error_last_code();
		char *msg = cfs_strdup(cfs_error_last());

		vercel_kill(&s->base);
		cfs_error_set(keep ? keep : rc, "%s", msg ? msg : "");
		free(msg);
	}
	vercel_free(&s->base);
	return rc;
}

static int vercel_create(struct cfs_runtime **out, const void *opts,
			 const char *context_id)
{
	return cfs_vercel_runtime_new(out, opts, context_id);
}

int cfs_vercel_provisioner_new(struct cfs_provisioner **out,
			       const struct cfs_vercel_opts *opts)
{
	return cfs_http_provisioner_new(out, vercel_create, opts);
}
