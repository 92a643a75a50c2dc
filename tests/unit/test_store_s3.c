/*
 * The S3 store against a real S3 server (Ceph RGW from tests/s3/rgw). Runs
 * only when S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY and S3_SECRET_KEY are
 * set; otherwise it prints a TAP skip with the reason. Every run works
 * under a fresh random prefix of the bucket and deletes it afterwards.
 *
 * Covers: the storage contract with S3's semantics (quoted MD5 ETags, the
 * reference's conflict messages), prefixes and the keys they produce,
 * ListObjectsV2 paging over 1005 keys, create-only and compare-and-swap
 * races of 8 threads (exactly one winner per round), a 70 MiB multipart
 * upload streamed from a file in bounded memory, the errors of a wrong
 * secret / bucket / endpoint, a download resumed after the connection is
 * cut mid-body and a conditional put whose first attempt landed before
 * its connection broke (both through a small in-process TCP proxy), lock
 * acquire/refuse/release, the engine (create, commit, export) on S3, and
 * commits through the proxy failing 10% of requests at random.
 *
 * S3_RACE_ROUNDS (default 20) sets the number of race rounds and
 * S3_FLAKY_COMMITS (default 30) the commits through a proxy failing
 * S3_FLAKY_PCT (default 10) % of requests.
 */
#include "core/context.h"
#include "core/crypto.h"
#include "core/error.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/store.h"
#include "core/util.h"
#include "storage/storage.h"
#include "tests/unit/s3_helper.h"
#include "tests/unit/tap.h"

#include <sodium.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

int main(void);

#define RAW_HEX \
	"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define MIB ((size_t)1 << 20)

static struct cfs_s3_config base_cfg;
static char run_prefix[64];

/* ---- helpers ------------------------------------------------------------ */

static int put_str(struct cfs_store *st, const char *key, const char *s,
		   const struct cfs_cond *cond, char etag[CFS_ETAG_MAX])
{
	return cfs_store_put_buf(st, key, s, strlen(s), cond, etag);
}

static char *get_str(struct cfs_store *st, const char *key,
		     struct cfs_objinfo *info)
{
	char *body = NULL;

	if (cfs_store_get_buf(st, key, &body, NULL, info))
		return NULL;
	return body;
}

static bool is_md5_etag(const char *e)
{
	if (strlen(e) != 34 || e[0] != '"' || e[33] != '"')
		return false;
	for (int i = 1; i < 33; i++)
		if (!strchr("0123456789abcdef", e[i]))
			return false;
	return true;
}

struct keyset {
	char **keys;
	size_t n, cap;
	int stop_after;
};

static int collect(const char *key, void *payload)
{
	struct keyset *ks = payload;

	if (ks->n == ks->cap) {
		ks->cap = ks->cap ? ks->cap * 2 : 64;
		ks->keys = realloc(ks->keys, ks->cap * sizeof(char *));
	}
	ks->keys[ks->n++] = strdup(key);
	if (ks->stop_after && (int)ks->n >= ks->stop_after)
		return 7;
	return 0;
}

static void keyset_free(struct keyset *ks)
{
	for (size_t i = 0; i < ks->n; i++)
		free(ks->keys[i]);
	free(ks->keys);
	memset(ks, 0, sizeof(*ks));
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static const char *list_joined(struct cfs_store *st, const char *prefix)
{
	static char out[4096];
	struct keyset ks = {0};
	int rc;

	out[0] = '\0';
	rc = cfs_store_list(st, prefix, collect, &ks);
	if (rc)
		snprintf(out, sizeof(out), "error %d: %s", rc,
			 cfs_error_last());
	if (ks.n)
		qsort(ks.keys, ks.n, sizeof(char *), cmp_str);
	for (size_t i = 0; i < ks.n && !rc; i++)
		snprintf(out + strlen(out), sizeof(out) - strlen(out), "%s%s",
			 i ? "," : "", ks.keys[i]);
	keyset_free(&ks);
	return out;
}

static long maxrss_kib(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_maxrss;
}

/* ---- a faulty TCP proxy ------------------------------------------------- */

/*
 * Relays 127.0.0.1:<port> to the S3 endpoint. While armed, the next
 * request is cut after cut_after response bytes (a broken download), or,
 * with cut_request, right after the whole request was forwarded and before
 * any response byte (a put that landed but whose answer was lost). With
 * flaky_pct, that share of requests meets a random fault: a reset before
 * forwarding, a 503, a delay, a response cut short, or a lost answer.
 */
enum fault {
	F_NONE,
	F_RESET,
	F_503,
	F_DELAY,
	F_CUT_RESPONSE,
	F_LOSE_ANSWER,
	F_KINDS
};

struct proxy {
	int lfd;
	int port;
	struct sockaddr_in upstream;
	atomic_int armed;
	size_t cut_after;
	bool cut_request;
	atomic_int cuts;
	unsigned flaky_pct;
	atomic_int faults[F_KINDS];
	atomic_int requests;
	pthread_t tid;
	atomic_bool stop;
};

struct conn {
	struct proxy *p;
	int cfd;
};

static void conn_reset(int fd)
{
	struct linger l = {1, 0};

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

static void *conn_main(void *arg)
{
	struct conn *c = arg;
	struct proxy *p = c->p;
	int ufd = socket(AF_INET, SOCK_STREAM, 0);
	size_t down = 0, cut_at = 0;
	bool in_request = false;
	enum fault f = F_NONE;
	char buf[16384];

	if (connect(ufd, (struct sockaddr *)&p->upstream, sizeof(p->upstream)) <
	    0)
		goto out;
	for (;;) {
		struct pollfd pf[2] = {{c->cfd, POLLIN, 0}, {ufd, POLLIN, 0}};
		ssize_t n;

		if (poll(pf, 2, 30000) <= 0)
			break;
		if (pf[0].revents) {
			if (!in_request) {
				/* A new request (requests on a connection
				 * are sequential). */
				in_request = true;
				down = 0;
				f = F_NONE;
				atomic_fetch_add(&p->requests, 1);
				if (atomic_exchange(&p->armed, 0)) {
					f = p->cut_request ? F_LOSE_ANSWER
							   : F_CUT_RESPONSE;
					cut_at = p->cut_after;
					atomic_fetch_add(&p->cuts, 1);
				} else if (p->flaky_pct &&
					   randombytes_uniform(100) <
						   p->flaky_pct) {
					f = (enum fault)(1 +
							 randombytes_uniform(
								 F_KINDS - 1));
					cut_at = 1 + randombytes_uniform(65536);
					atomic_fetch_add(&p->faults[f], 1);
				}
				if (f == F_RESET) {
					conn_reset(c->cfd);
					break;
				}
				if (f == F_503) {
					static const char r503[] =
						"HTTP/1.1 503 Service "
						"Unavailable\r\nContent-Length:"
						" 0\r\nConnection: close\r\n"
						"\r\n";

					if (read(c->cfd, buf, sizeof(buf)) <
						    0 ||
					    write(c->cfd, r503,
						  sizeof(r503) - 1) < 0)
						break;
					break;
				}
				if (f == F_DELAY) {
					usleep(300000);
					f = F_NONE;
				}
			}
			n = read(c->cfd, buf, sizeof(buf));
			if (n <= 0 || write(ufd, buf, (size_t)n) != n)
				break;
		}
		if (pf[1].revents) {
			in_request = false;
			n = read(ufd, buf, sizeof(buf));
			if (n <= 0)
				break;
			if (f == F_LOSE_ANSWER)
				break; /* the server did it; nobody hears */
			if (f == F_CUT_RESPONSE && down + (size_t)n > cut_at) {
				size_t keep = cut_at - down;

				if (keep && write(c->cfd, buf, keep) < 0)
					break;
				break;
			}
			if (write(c->cfd, buf, (size_t)n) != n)
				break;
			down += (size_t)n;
		}
	}
out:
	close(ufd);
	close(c->cfd);
	free(c);
	return NULL;
}

static void *proxy_main(void *arg)
{
	struct proxy *p = arg;

	while (!atomic_load(&p->stop)) {
		struct pollfd pf = {p->lfd, POLLIN, 0};
		struct conn *c;
		pthread_t t;

		if (poll(&pf, 1, 100) <= 0)
			continue;
		c = calloc(1, sizeof(*c));
		c->p = p;
		c->cfd = accept(p->lfd, NULL, NULL);
		if (c->cfd < 0) {
			free(c);
			continue;
		}
		pthread_create(&t, NULL, conn_main, c);
		pthread_detach(t);
	}
	return NULL;
}

static int proxy_start(struct proxy *p, const char *endpoint)
{
	struct sockaddr_in a = {0};
	socklen_t alen = sizeof(a);
	int port = 0;

	memset(p, 0, sizeof(*p));
	if (sscanf(endpoint, "http://127.0.0.1:%d", &port) != 1)
		return -1;
	p->upstream.sin_family = AF_INET;
	p->upstream.sin_port = htons((uint16_t)port);
	p->upstream.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	p->lfd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(p->lfd, (struct sockaddr *)&a, sizeof(a)) < 0 ||
	    listen(p->lfd, 64) < 0 ||
	    getsockname(p->lfd, (struct sockaddr *)&a, &alen) < 0) {
		close(p->lfd);
		return -1;
	}
	p->port = ntohs(a.sin_port);
	pthread_create(&p->tid, NULL, proxy_main, p);
	return 0;
}

static void proxy_stop(struct proxy *p)
{
	atomic_store(&p->stop, true);
	pthread_join(p->tid, NULL);
	close(p->lfd);
}

/* ---- the contract ------------------------------------------------------- */

static void contract(struct cfs_store *st)
{
	const char *key = "contexts/demo/manifest.json";
	char e1[CFS_ETAG_MAX], e2[CFS_ETAG_MAX], e3[CFS_ETAG_MAX];
	struct cfs_cond none_match = {NULL, true};
	struct cfs_cond match = {NULL, false};
	struct cfs_objinfo info;
	struct cfs_buf b = CFS_BUF_INIT;
	char *body;
	int rc;

	tap_diag("contract suite on %s", cfs_store_describe(st));
	rc = put_str(st, key, "{\"generation\":1}", NULL, e1);
	TAP_EQ_INT(rc, 0, "put");
	TAP_OK(is_md5_etag(e1), "put returns the quoted MD5 ETag: %s", e1);
	memset(&info, 0, sizeof(info));
	body = get_str(st, key, &info);
	TAP_EQ_STR(body, "{\"generation\":1}", "get returns the body");
	TAP_EQ_STR(info.etag, e1, "get returns the put's ETag");
	TAP_EQ_INT(info.size, 16, "get reports the size");
	TAP_OK(info.mtime_ms > 0, "get reports an mtime");
	free(body);
	memset(&info, 0, sizeof(info));
	rc = cfs_store_head(st, key, &info);
	TAP_EQ_INT(rc, 0, "head");
	TAP_EQ_STR(info.etag, e1, "head returns the same ETag");
	TAP_EQ_INT(info.size, 16, "head reports the size");

	rc = put_str(st, key, "{\"generation\":1}", NULL, e2);
	TAP_EQ_INT(rc, 0, "put identical bytes");
	TAP_EQ_STR(e2, e1, "S3: identical bytes give the same (MD5) ETag");

	rc = put_str(st, key, "clobber", &none_match, e3);
	TAP_EQ_INT(rc, CFS_EEXISTS, "if_none_match on an existing object");
	TAP_EQ_STR(cfs_error_last(),
		   "object already exists: contexts/demo/manifest.json",
		   "create-only conflict message");
	body = get_str(st, key, NULL);
	TAP_EQ_STR(body, "{\"generation\":1}", "failed create left the body");
	free(body);
	rc = put_str(st, "contexts/demo/lock.json", "{}", &none_match, e3);
	TAP_EQ_INT(rc, 0, "if_none_match creates a missing object");

	match.if_match = "\"0123456789abcdef0123456789abcdef\"";
	rc = put_str(st, key, "{\"generation\":2}", &match, e3);
	TAP_EQ_INT(rc, CFS_ECONFLICT, "if_match with a stale ETag fails");
	TAP_EQ_STR(cfs_error_last(),
		   "precondition failed for object: "
		   "contexts/demo/manifest.json",
		   "CAS failure message");
	body = get_str(st, key, &info);
	TAP_EQ_STR(body, "{\"generation\":1}", "lost CAS left the body");
	free(body);
	match.if_match = e1;
	rc = put_str(st, key, "{\"generation\":2}", &match, e3);
	TAP_EQ_INT(rc, 0, "if_match with the current (quoted) ETag succeeds");
	TAP_OK(is_md5_etag(e3) && strcmp(e3, e1) != 0,
	       "CAS returns the new ETag");
	body = get_str(st, key, &info);
	TAP_EQ_STR(body, "{\"generation\":2}", "CAS wrote the body");
	TAP_EQ_STR(info.etag, e3, "CAS ETag is what get returns");
	free(body);
	rc = put_str(st, key, "{\"generation\":3}", &match, NULL);
	TAP_EQ_INT(rc, CFS_ECONFLICT, "reusing a consumed ETag fails");
	match.if_match = e3;
	rc = put_str(st, "contexts/demo/missing.json", "x", &match, NULL);
	TAP_EQ_INT(rc, CFS_ECONFLICT, "if_match against a missing object");
	TAP_EQ_STR(cfs_error_last(),
		   "precondition failed for object: contexts/demo/missing.json",
		   "missing CAS message");

	body = (char *)1;
	rc = cfs_store_get_buf(st, "contexts/nope/manifest.json", &body, NULL,
			       NULL);
	TAP_EQ_INT(rc, CFS_ENOTFOUND, "get of a missing key");
	TAP_EQ_STR(cfs_error_last(),
		   "object not found: contexts/nope/manifest.json",
		   "not-found message");
	TAP_OK(body == NULL, "failed get leaves *out NULL");
	rc = cfs_store_head(st, "contexts/nope/manifest.json", &info);
	TAP_EQ_INT(rc, CFS_ENOTFOUND, "head of a missing key");

	rc = cfs_store_delete(st, "contexts/demo/lock.json");
	TAP_EQ_INT(rc, 0, "delete");
	rc = cfs_store_head(st, "contexts/demo/lock.json", &info);
	TAP_EQ_INT(rc, CFS_ENOTFOUND, "deleted object is gone");
	rc = cfs_store_delete(st, "contexts/demo/lock.json");
	TAP_EQ_INT(rc, 0, "deleting a missing object is fine");
	rc = put_str(st, "contexts/demo/lock.json", "{}", &none_match, NULL);
	TAP_EQ_INT(rc, 0, "create-only works again after delete");

	put_str(st, "contexts/x/tree/00000001-aa.tree.tar.zst.enc", "a", NULL,
		NULL);
	put_str(st, "contexts/x/tree/00000002-bb.tree.tar.zst.enc", "b", NULL,
		NULL);
	put_str(st, "contexts/x/manifest.json", "{}", NULL, NULL);
	put_str(st, "contexts/x/checkpoints/00000001.tree.tar.zst.enc", "c",
		NULL, NULL);
	TAP_EQ_STR(list_joined(st, "contexts/x/tree/"),
		   "contexts/x/tree/00000001-aa.tree.tar.zst.enc,"
		   "contexts/x/tree/00000002-bb.tree.tar.zst.enc",
		   "list a nested prefix");
	TAP_EQ_STR(list_joined(st, "contexts/"),
		   "contexts/demo/lock.json,contexts/demo/manifest.json,"
		   "contexts/x/checkpoints/00000001.tree.tar.zst.enc,"
		   "contexts/x/manifest.json,"
		   "contexts/x/tree/00000001-aa.tree.tar.zst.enc,"
		   "contexts/x/tree/00000002-bb.tree.tar.zst.enc",
		   "list the whole contexts/ prefix (prefix stripped)");
	TAP_EQ_STR(list_joined(st, "contexts/none/"), "",
		   "list of a missing prefix is empty");
	{
		struct keyset ks = {0};

		ks.stop_after = 1;
		rc = cfs_store_list(st, "contexts/x/", collect, &ks);
		TAP_EQ_INT(rc, 7, "a callback's non-zero return stops list");
		TAP_EQ_INT(ks.n, 1, "list stopped after one key");
		keyset_free(&ks);
	}

	{
		char tmpl[] = "/tmp/cfs-s3-src-XXXXXX";
		char tmpl2[] = "/tmp/cfs-s3-dst-XXXXXX";
		int src = mkstemp(tmpl), dst = mkstemp(tmpl2);
		char etag[CFS_ETAG_MAX], got[64];
		ssize_t n;

		unlink(tmpl);
		unlink(tmpl2);
		cfs_write_all(src, "streamed body", 13);
		rc = cfs_store_put_fd(st, "contexts/s/obj", src, NULL, etag);
		TAP_EQ_INT(rc, 0, "put_fd");
		cfs_write_all(dst, "HDR:", 4);
		rc = cfs_store_get_fd(st, "contexts/s/obj", dst, &info);
		TAP_EQ_INT(rc, 0, "get_fd");
		n = pread(dst, got, sizeof(got) - 1, 0);
		got[n < 0 ? 0 : n] = '\0';
		TAP_EQ_STR(got, "HDR:streamed body",
			   "get_fd appends at the fd's offset");
		TAP_EQ_STR(info.etag, etag, "get_fd reports the ETag");
		close(src);
		close(dst);
	}
	rc = st->ops->get(st, "contexts/s/obj", -1, &b, 4, NULL);
	TAP_EQ_INT(rc, CFS_ECORRUPT, "get into a buffer respects the cap");
	cfs_buf_free(&b);
	{
		char *bin = NULL;
		size_t len = 0;

		rc = cfs_store_put_buf(st, "contexts/s/bin", "a\0b", 3, NULL,
				       NULL);
		rc = rc ? rc
			: cfs_store_get_buf(st, "contexts/s/bin", &bin, &len,
					    NULL);
		TAP_OK(rc == 0 && len == 3 && memcmp(bin, "a\0b", 4) == 0,
		       "binary bodies round-trip");
		free(bin);
	}
	rc = cfs_store_put_buf(st, "contexts/s/empty", "", 0, NULL, NULL);
	body = get_str(st, "contexts/s/empty", &info);
	TAP_OK(rc == 0 && body && body[0] == '\0' && info.size == 0,
	       "empty objects round-trip");
	free(body);
	rc = put_str(st, "contexts/odd/a b+c%d&e=f?g#h~é.json", "odd", NULL,
		     NULL);
	body = get_str(st, "contexts/odd/a b+c%d&e=f?g#h~é.json", NULL);
	TAP_OK(rc == 0 && body && !strcmp(body, "odd"),
	       "keys with spaces and URL metacharacters round-trip");
	free(body);
	TAP_EQ_STR(list_joined(st, "contexts/odd/"),
		   "contexts/odd/a b+c%d&e=f?g#h~é.json",
		   "and list back verbatim");
}

/* ---- prefix, paging ----------------------------------------------------- */

static void test_prefix(void)
{
	struct cfs_s3_config c = base_cfg, raw = base_cfg;
	struct cfs_store *a, *r;
	char *pfx = cfs_asprintf("%s/sub///", run_prefix);
	char *want =
		cfs_asprintf("%s/sub/contexts/p/manifest.json", run_prefix);
	char *body;

	c.prefix = pfx;
	raw.prefix = NULL;
	a = s3h_open(&c);
	r = s3h_open(&raw);
	put_str(a, "contexts/p/manifest.json", "pp", NULL, NULL);
	body = get_str(r, want, NULL);
	TAP_EQ_STR(body, "pp",
		   "object key = prefix (trailing '/' stripped) + '/' + key");
	free(body);
	TAP_EQ_STR(list_joined(a, "contexts/p/"), "contexts/p/manifest.json",
		   "list strips the prefix");
	tap_ok(strstr(cfs_store_describe(a), "s3://") != NULL, "describe: %s",
	       cfs_store_describe(a));
	cfs_store_delete(a, "contexts/p/manifest.json");
	cfs_store_free(a);
	cfs_store_free(r);
	free(pfx);
	free(want);
}

/* Virtual-hosted style: <bucket>.localhost (RGW: rgw dns name = localhost;
 * curl resolves *.localhost to loopback itself). */
static void test_vhost(void)
{
	struct cfs_s3_config c = base_cfg;
	struct cfs_store *v, *pst;
	char *ep = NULL, *body;
	int port = 0, rc;

	if (sscanf(base_cfg.endpoint, "http://127.0.0.1:%d", &port) != 1) {
		tap_skip(
			"endpoint is not http://127.0.0.1:PORT; no vhost test");
		return;
	}
	ep = cfs_asprintf("http://localhost:%d", port);
	c.endpoint = ep;
	c.path_style = false;
	v = s3h_open(&c);
	pst = s3h_open(&base_cfg);
	rc = put_str(v, "contexts/vh/manifest.json", "vh", NULL, NULL);
	TAP_EQ_INT(rc, 0, "virtual-hosted style put");
	if (rc)
		tap_diag("%s", cfs_error_last());
	body = get_str(pst, "contexts/vh/manifest.json", NULL);
	TAP_EQ_STR(body, "vh", "the same object under path style");
	free(body);
	TAP_EQ_STR(list_joined(v, "contexts/vh/"), "contexts/vh/manifest.json",
		   "virtual-hosted style list");
	cfs_store_delete(v, "contexts/vh/manifest.json");
	cfs_store_free(v);
	cfs_store_free(pst);
	c.bucket = "Not_DNS";
	TAP_EQ_INT(cfs_store_s3_open(&v, &c), CFS_EINVAL,
		   "a bucket name that is not a DNS label needs path style");
	free(ep);
}

struct filler {
	struct cfs_store *st;
	int from, to;
	int failures;
};

static void *fill_main(void *arg)
{
	struct filler *f = arg;

	for (int i = f->from; i < f->to; i++) {
		char key[64];

		snprintf(key, sizeof(key), "paging/k%05d", i);
		if (put_str(f->st, key, "x", NULL, NULL))
			f->failures++;
	}
	return NULL;
}

static void test_paging(struct cfs_store *st)
{
	struct filler f[8];
	pthread_t t[8];
	struct keyset ks = {0};
	int failures = 0, rc;
	bool order = true;

	for (int i = 0; i < 8; i++) {
		f[i] = (struct filler){st, i * 1005 / 8, (i + 1) * 1005 / 8, 0};
		pthread_create(&t[i], NULL, fill_main, &f[i]);
	}
	for (int i = 0; i < 8; i++) {
		pthread_join(t[i], NULL);
		failures += f[i].failures;
	}
	TAP_EQ_INT(failures, 0, "1005 puts from 8 threads");
	rc = cfs_store_list(st, "paging/", collect, &ks);
	TAP_EQ_INT(rc, 0, "list over 1005 keys");
	TAP_EQ_INT(ks.n, 1005, "ListObjectsV2 continuation returns every key");
	for (size_t i = 0; i < ks.n; i++) {
		char key[64];

		snprintf(key, sizeof(key), "paging/k%05zu", i);
		if (strcmp(ks.keys[i], key))
			order = false;
	}
	TAP_OK(order, "each key once, in order");
	for (size_t i = 0; i < ks.n; i++)
		cfs_store_delete(st, ks.keys[i]);
	keyset_free(&ks);
}

/* ---- races -------------------------------------------------------------- */

struct racer {
	struct cfs_store *st;
	const char *key;
	const char *if_match; /* NULL: create-only */
	int id;
	pthread_barrier_t *bar;
	int rc;
};

static void *race_main(void *arg)
{
	struct racer *r = arg;
	struct cfs_cond c = {r->if_match, r->if_match == NULL};
	char body[64];

	snprintf(body, sizeof(body), "{\"writer\":%d}", r->id);
	pthread_barrier_wait(r->bar);
	r->rc = cfs_store_put_buf(r->st, r->key, body, strlen(body), &c, NULL);
	return NULL;
}

static void test_races(struct cfs_store *st, int writers, int rounds)
{
	struct racer rs[16];
	pthread_t t[16];
	pthread_barrier_t bar;
	int bad_create = 0, bad_cas = 0, bad_body = 0, other = 0;

	for (int round = 0; round < rounds; round++) {
		char key[64], etag[CFS_ETAG_MAX];
		struct cfs_objinfo info;
		int winners = 0, winner = -1;
		char *body;

		/* create-only race on a fresh key */
		snprintf(key, sizeof(key), "race/%d-%d.json", writers, round);
		pthread_barrier_init(&bar, NULL, (unsigned)writers);
		for (int i = 0; i < writers; i++) {
			rs[i] = (struct racer){st, key, NULL, i, &bar, 0};
			pthread_create(&t[i], NULL, race_main, &rs[i]);
		}
		for (int i = 0; i < writers; i++) {
			pthread_join(t[i], NULL);
			if (rs[i].rc == 0) {
				winners++;
				winner = i;
			} else if (rs[i].rc != CFS_EEXISTS) {
				other++;
				tap_diag("create racer: %d %s", rs[i].rc,
					 cfs_error_last());
			}
		}
		pthread_barrier_destroy(&bar);
		if (winners != 1)
			bad_create++;
		body = get_str(st, key, &info);
		{
			char want[64];

			snprintf(want, sizeof(want), "{\"writer\":%d}", winner);
			if (!body || strcmp(body, want))
				bad_body++;
		}
		free(body);

		/* compare-and-swap race on the same ETag */
		snprintf(etag, sizeof(etag), "%s", info.etag);
		winners = 0;
		pthread_barrier_init(&bar, NULL, (unsigned)writers);
		for (int i = 0; i < writers; i++) {
			rs[i] = (struct racer){st, key, etag, 100 + i, &bar, 0};
			pthread_create(&t[i], NULL, race_main, &rs[i]);
		}
		for (int i = 0; i < writers; i++) {
			pthread_join(t[i], NULL);
			if (rs[i].rc == 0) {
				winners++;
				winner = 100 + i;
			} else if (rs[i].rc != CFS_ECONFLICT) {
				other++;
				tap_diag("CAS racer: %d", rs[i].rc);
			}
		}
		pthread_barrier_destroy(&bar);
		if (winners != 1)
			bad_cas++;
		body = get_str(st, key, NULL);
		{
			char want[64];

			snprintf(want, sizeof(want), "{\"writer\":%d}", winner);
			if (!body || strcmp(body, want))
				bad_body++;
		}
		free(body);
		cfs_store_delete(st, key);
	}
	tap_ok(bad_create == 0,
	       "create-only race, %d writers x %d rounds: exactly one winner "
	       "each (%d bad rounds)",
	       writers, rounds, bad_create);
	tap_ok(bad_cas == 0,
	       "If-Match race, %d writers x %d rounds: exactly one winner "
	       "each (%d bad rounds)",
	       writers, rounds, bad_cas);
	tap_ok(bad_body == 0, "the stored body is always the winner's");
	tap_ok(other == 0,
	       "losers see CFS_EEXISTS / CFS_ECONFLICT only (RGW's 500 on a "
	       "lost race is resolved)");
}

/* ---- multipart ---------------------------------------------------------- */

static void on_progress(uint64_t done, uint64_t total, void *payload)
{
	uint64_t *p = payload;

	p[0]++;
	p[1] = done;
	p[2] = total;
}

static void test_multipart(struct cfs_store *st)
{
	char src_t[] = "/tmp/cfs-s3-mp-XXXXXX",
	     dst_t[] = "/tmp/cfs-s3-mpd-XXXXXX";
	int src = mkstemp(src_t), dst = mkstemp(dst_t);
	size_t size = 70 * MIB + 12345;
	char *chunk = malloc(MIB);
	char h1[65], h2[65], etag[CFS_ETAG_MAX];
	struct cfs_cond none_match = {NULL, true};
	struct cfs_objinfo info;
	uint64_t prog[3] = {0, 0, 0};
	long rss0, rss1;
	int rc;

	unlink(src_t);
	unlink(dst_t);
	for (size_t off = 0; off < size; off += MIB) {
		size_t n = size - off < MIB ? size - off : MIB;

		cfs_random_bytes(chunk, n);
		cfs_write_all(src, chunk, n);
	}
	free(chunk);
	cfs_sha256_fd(h1, src);
	rss0 = maxrss_kib();
	st->progress = on_progress;
	st->progress_payload = prog;
	rc = cfs_store_put_fd(st, "big/70mib", src, NULL, etag);
	st->progress = NULL;
	rss1 = maxrss_kib();
	TAP_EQ_INT(rc, 0, "70 MiB put (multipart)");
	if (rc)
		tap_diag("%s", cfs_error_last());
	tap_ok(strlen(etag) > 4 && !strcmp(etag + strlen(etag) - 3, "-5\""),
	       "multipart ETag names 5 parts of 16 MiB: %s", etag);
	tap_ok(prog[0] > 10 && prog[1] == size && prog[2] == size,
	       "progress reported up to the total (%llu calls)",
	       (unsigned long long)prog[0]);
	tap_ok(rss1 - rss0 < 48 * 1024,
	       "bounded memory: max RSS grew by %ld KiB", rss1 - rss0);
	rc = cfs_store_head(st, "big/70mib", &info);
	TAP_OK(rc == 0 && info.size == size && !strcmp(info.etag, etag),
	       "head reports the size and the same ETag");
	rc = cfs_store_get_fd(st, "big/70mib", dst, &info);
	TAP_EQ_INT(rc, 0, "70 MiB get");
	cfs_sha256_fd(h2, dst);
	TAP_EQ_STR(h2, h1, "70 MiB round-trips byte for byte");
	rc = cfs_store_put_fd(st, "big/70mib", src, &none_match, NULL);
	TAP_EQ_INT(rc, CFS_EEXISTS,
		   "multipart create-only over an existing key is refused");
	{
		struct cfs_cond m = {"\"00000000000000000000000000000000-5\"",
				     false};

		rc = cfs_store_put_fd(st, "big/70mib", src, &m, NULL);
		TAP_EQ_INT(rc, CFS_ECONFLICT,
			   "multipart If-Match with a stale ETag is refused");
		m.if_match = etag;
		rc = cfs_store_put_fd(st, "big/70mib", src, &m, etag);
		TAP_EQ_INT(rc, 0, "multipart If-Match with the current ETag");
	}
	cfs_store_delete(st, "big/70mib");
	close(src);
	close(dst);
}

/*
 * A put that follows a file while another thread still writes it (the
 * commit engine's streamed bundle): parts go out as the file grows, the
 * object equals the finished file; a writer that fails aborts the upload
 * and leaves no object; a file that ends small is one plain PUT.
 */
struct grower {
	int fd;
	size_t size;
	int fail_at; /* MiB after which the writer gives up; -1: never */
	struct cfs_growing *g;
};

static void *grow_thread(void *arg)
{
	struct grower *w = arg;
	char *chunk = malloc(MIB);
	size_t off = 0;

	while (off < w->size) {
		size_t n = w->size - off < MIB ? w->size - off : MIB;

		if (w->fail_at >= 0 && off >= (size_t)w->fail_at * MIB) {
			cfs_growing_end(w->g, CFS_EIO);
			free(chunk);
			return NULL;
		}
		cfs_random_bytes(chunk, n);
		if (pwrite(w->fd, chunk, n, (off_t)off) != (ssize_t)n)
			break;
		off += n;
		cfs_growing_advance(w->g, off);
		usleep(2000); /* slower than the upload: parts must wait */
	}
	free(chunk);
	cfs_growing_end(w->g, off == w->size ? 0 : CFS_EIO);
	return NULL;
}

static int grow_put(struct cfs_store *st, const char *key, size_t size,
		    int fail_at, int *fd_out)
{
	char t[] = "/tmp/cfs-s3-grow-XXXXXX";
	struct cfs_growing g;
	struct grower w;
	pthread_t th;
	int fd = mkstemp(t), rc;

	unlink(t);
	cfs_growing_init(&g);
	w = (struct grower){fd, size, fail_at, &g};
	pthread_create(&th, NULL, grow_thread, &w);
	rc = cfs_store_put_growing(st, key, fd, &g, NULL, NULL);
	pthread_join(th, NULL);
	cfs_growing_destroy(&g);
	*fd_out = fd;
	return rc;
}

static void test_growing_put(const struct cfs_s3_config *base)
{
	struct cfs_s3_config c = *base;
	struct cfs_store *st;
	struct cfs_objinfo info;
	char h1[65], h2[65], dt[] = "/tmp/cfs-s3-growd-XXXXXX";
	int fd = -1, dst, rc;

	c.multipart_threshold = 5 * MIB;
	c.part_size = 5 * MIB;
	st = s3h_open(&c);
	if (!st)
		return;
	tap_ok(cfs_store_streams_put(st), "the S3 store uploads growing files");
	rc = grow_put(st, "grow/23mib", 23 * MIB + 777, -1, &fd);
	TAP_EQ_INT(rc, 0, "23 MiB uploaded while it was written");
	if (rc)
		tap_diag("%s", cfs_error_last());
	dst = mkstemp(dt);
	unlink(dt);
	rc = cfs_store_get_fd(st, "grow/23mib", dst, &info);
	cfs_sha256_fd(h1, fd);
	cfs_sha256_fd(h2, dst);
	TAP_OK(rc == 0 && info.size == 23 * MIB + 777 && !strcmp(h1, h2),
	       "the object is the finished file, byte for byte");
	close(fd);
	close(dst);

	rc = grow_put(st, "grow/failed", 20 * MIB, 12, &fd);
	TAP_EQ_INT(rc, CFS_ECANCELED, "a writer that fails cancels the upload");
	TAP_EQ_INT(cfs_store_head(st, "grow/failed", &info), CFS_ENOTFOUND,
		   "... and leaves no object behind");
	close(fd);

	rc = grow_put(st, "grow/small", 3 * MIB + 1, -1, &fd);
	TAP_EQ_INT(rc, 0, "a file that ends below the threshold");
	rc = cfs_store_head(st, "grow/small", &info);
	TAP_OK(rc == 0 && info.size == 3 * MIB + 1 && !strchr(info.etag, '-'),
	       "... is one plain PUT (ETag %s)", info.etag);
	close(fd);
	cfs_store_delete(st, "grow/23mib");
	cfs_store_delete(st, "grow/small");
	cfs_store_free(st);
}

/* ---- errors ------------------------------------------------------------- */

static void test_errors(void)
{
	struct cfs_s3_config c = base_cfg;
	struct cfs_store *st;
	int64_t t0;
	int rc;

	c.secret_key = "wrong-secret-key-0000000000000000000000";
	st = s3h_open(&c);
	rc = put_str(st, "contexts/e/x", "x", NULL, NULL);
	TAP_EQ_INT(rc, CFS_EPERM, "wrong secret: put -> CFS_EPERM");
	tap_ok(strstr(cfs_error_last(), "SignatureDoesNotMatch") &&
		       strstr(cfs_error_last(), "secret"),
	       "the message names the cause and the credentials: %s",
	       cfs_error_last());
	rc = cfs_store_head(st, "contexts/e/x", NULL);
	TAP_EQ_INT(rc, CFS_EPERM, "wrong secret: head -> CFS_EPERM");
	cfs_store_free(st);

	c = base_cfg;
	c.bucket = "no-such-bucket-cfs";
	st = s3h_open(&c);
	rc = cfs_store_get_buf(st, "contexts/e/x", &(char *){NULL}, NULL, NULL);
	TAP_EQ_INT(rc, CFS_EIO,
		   "missing bucket: not mistaken for a missing "
		   "object");
	tap_ok(strstr(cfs_error_last(), "no-such-bucket-cfs") != NULL,
	       "message: %s", cfs_error_last());
	cfs_store_free(st);

	c = base_cfg;
	c.endpoint = "http://127.0.0.1:9";
	c.max_retries = 2;
	c.retry_base_ms = 10;
	st = s3h_open(&c);
	t0 = cfs_monotonic_ms();
	rc = cfs_store_head(st, "contexts/e/x", NULL);
	TAP_EQ_INT(rc, CFS_EAGAIN, "refused connection -> CFS_EAGAIN");
	tap_ok(strstr(cfs_error_last(), "3 attempts") != NULL &&
		       cfs_monotonic_ms() - t0 < 5000,
	       "after a bounded number of retries: %s", cfs_error_last());
	cfs_store_free(st);

	/* RGW 16 refuses a quoted If-Match even when it is current: the
	 * reason for the AUTO (unquoted first) default. */
	c = base_cfg;
	c.if_match = CFS_S3_IF_MATCH_QUOTED;
	st = s3h_open(&c);
	{
		char e[CFS_ETAG_MAX];
		struct cfs_cond m = {e, false};

		rc = put_str(st, "contexts/e/q", "q1", NULL, e);
		rc = rc ? rc : put_str(st, "contexts/e/q", "q2", &m, NULL);
		tap_diag("quoted If-Match with the current ETag: %s",
			 rc ? cfs_error_name(rc) : "accepted");
		TAP_OK(rc == 0 || rc == CFS_ECONFLICT,
		       "quoted If-Match mode runs (RGW refuses it)");
		cfs_store_delete(st, "contexts/e/q");
	}
	cfs_store_free(st);

	c = base_cfg;
	c.endpoint = "ftp://x";
	TAP_EQ_INT(cfs_store_s3_open(&st, &c), CFS_EINVAL,
		   "a non-HTTP endpoint is refused");
	c = base_cfg;
	c.secret_key = NULL;
	TAP_EQ_INT(cfs_store_s3_open(&st, &c), CFS_EKEY,
		   "missing credentials -> CFS_EKEY");
	c = base_cfg;
	c.bucket = "a/b";
	TAP_EQ_INT(cfs_store_s3_open(&st, &c), CFS_EINVAL,
		   "an invalid bucket name is refused");
}

/* ---- faults through the cutting proxy ----------------------------------- */

static void test_faults(void)
{
	struct proxy p;
	struct cfs_s3_config c = base_cfg;
	struct cfs_store *st;
	char *ep = NULL, h1[65], h2[65], etag[CFS_ETAG_MAX];
	char src_t[] = "/tmp/cfs-s3-f-XXXXXX",
	     dst_t[] = "/tmp/cfs-s3-fd-XXXXXX";
	int src, dst, rc;
	size_t size = 8 * MIB;
	char *data;
	struct cfs_objinfo info;

	if (proxy_start(&p, base_cfg.endpoint)) {
		tap_skip("endpoint is not http://127.0.0.1:PORT; no proxy");
		return;
	}
	ep = cfs_asprintf("http://127.0.0.1:%d", p.port);
	c.endpoint = ep;
	c.retry_base_ms = 10;
	st = s3h_open(&c);

	src = mkstemp(src_t);
	dst = mkstemp(dst_t);
	unlink(src_t);
	unlink(dst_t);
	data = malloc(size);
	cfs_random_bytes(data, size);
	cfs_write_all(src, data, size);
	free(data);
	cfs_sha256_fd(h1, src);
	rc = cfs_store_put_fd(st, "faults/8mib", src, NULL, etag);
	TAP_EQ_INT(rc, 0, "8 MiB put through the proxy");

	p.cut_after = 3 * MIB;
	p.cut_request = false;
	atomic_store(&p.armed, 1);
	rc = cfs_store_get_fd(st, "faults/8mib", dst, &info);
	TAP_EQ_INT(rc, 0, "download cut after 3 MiB completes");
	TAP_EQ_INT(atomic_load(&p.cuts), 1, "the proxy cut one connection");
	cfs_sha256_fd(h2, dst);
	TAP_EQ_STR(h2, h1, "resumed download is byte-identical");
	TAP_EQ_STR(info.etag, etag, "and reports the object's ETag");
	TAP_EQ_INT(lseek(dst, 0, SEEK_END), (long long)size,
		   "nothing duplicated");

	/* A create-only put that lands, but whose answer is lost. */
	p.cut_request = true;
	atomic_store(&p.armed, 1);
	{
		struct cfs_cond nm = {NULL, true};

		rc = put_str(st, "faults/lock.json", "{\"owner\":\"me\"}", &nm,
			     etag);
		TAP_EQ_INT(rc, 0,
			   "ambiguous create-only put: our own write "
			   "is recognised, not reported as a conflict");
		if (rc)
			tap_diag("%s", cfs_error_last());
		TAP_EQ_INT(atomic_load(&p.cuts), 2, "the answer was cut");
		TAP_OK(is_md5_etag(etag), "it returns the ETag: %s", etag);
		rc = put_str(st, "faults/lock.json", "{\"owner\":\"other\"}",
			     &nm, NULL);
		TAP_EQ_INT(rc, CFS_EEXISTS,
			   "a second create-only put still conflicts");
	}
	/* A compare-and-swap that lands, but whose answer is lost. */
	atomic_store(&p.armed, 1);
	{
		struct cfs_cond m = {etag, false};
		char e2[CFS_ETAG_MAX];
		char *body;

		rc = put_str(st, "faults/lock.json", "{\"owner\":\"me2\"}", &m,
			     e2);
		TAP_EQ_INT(rc, 0, "ambiguous If-Match put resolves to success");
		if (rc)
			tap_diag("%s", cfs_error_last());
		body = get_str(st, "faults/lock.json", &info);
		TAP_EQ_STR(body, "{\"owner\":\"me2\"}", "with our body stored");
		TAP_EQ_STR(info.etag, e2, "and its ETag returned");
		free(body);
	}
	cfs_store_delete(st, "faults/8mib");
	cfs_store_delete(st, "faults/lock.json");
	cfs_store_free(st);
	proxy_stop(&p);
	close(src);
	close(dst);
	free(ep);
}

/* ---- lock and engine on S3 ---------------------------------------------- */

static void test_lock(struct cfs_store *st)
{
	struct cfs_lock *l = NULL;
	bool adopted = false;
	int rc;

	rc = cfs_lock_acquire(&l, &adopted, st, "s3lock", NULL, "host:1:a", 0,
			      false);
	TAP_EQ_INT(rc, 0, "lock acquired on S3 (create-only)");
	cfs_lock_free(l);
	l = NULL;
	rc = cfs_lock_acquire(&l, &adopted, st, "s3lock", NULL, "host:2:b", 0,
			      false);
	TAP_EQ_INT(rc, CFS_ELOCKED, "a second owner is refused");
	rc = cfs_lock_renew(&l, st, "s3lock", "host:1:a", 0);
	TAP_EQ_INT(rc, 0, "the owner renews (If-Match)");
	cfs_lock_free(l);
	rc = cfs_lock_release(st, "s3lock", "host:1:a", false);
	TAP_EQ_INT(rc, 0, "the owner releases");
	rc = cfs_lock_acquire(&l, &adopted, st, "s3lock", NULL, "host:2:b", 0,
			      false);
	TAP_EQ_INT(rc, 0, "then the second owner gets it");
	cfs_lock_free(l);
	cfs_lock_release(st, "s3lock", "host:2:b", false);
}

static int open_dir(const char *path)
{
	return open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

static void test_engine(struct cfs_store *st)
{
	struct cfs_keys *keys = NULL;
	struct cfs_commit_opts o;
	struct cfs_commit_result res;
	char *d1 = tap_tmpdir("s3-export"), *d2 = tap_tmpdir("s3-export2");
	int fd1 = open_dir(d1), fd2 = open_dir(d2), rc;
	char *got = NULL;
	size_t len = 0;

	memset(&res, 0, sizeof(res));
	if (cfs_keys_new(&keys, NULL, RAW_HEX)) {
		tap_diag("keys: %s", cfs_error_last());
		return;
	}
	rc = cfs_context_create(NULL, st, keys, "on-s3", NULL);
	TAP_EQ_INT(rc, 0, "engine: create a context on S3");
	if (rc)
		tap_diag("%s", cfs_error_last());
	rc = cfs_context_create(NULL, st, keys, "on-s3", NULL);
	TAP_EQ_INT(rc, CFS_EEXISTS, "engine: a second create is refused");
	rc = cfs_context_export(NULL, st, keys, "on-s3", fd1, NULL, NULL);
	TAP_EQ_INT(rc, 0, "engine: export generation 1");
	rc = cfs_write_file_at(fd1, "workspace/hello.txt", "hello s3\n", 9,
			       0644, false);
	TAP_EQ_INT(rc, 0, "write a file into the exported tree");
	cfs_commit_opts_init(&o);
	o.message = "on s3";
	rc = cfs_context_commit(&res, st, keys, "on-s3", fd1, &o);
	TAP_EQ_INT(rc, 0, "engine: commit through the S3 store");
	if (rc)
		tap_diag("%s", cfs_error_last());
	TAP_EQ_INT(res.generation, 2, "generation 2");
	cfs_commit_result_clear(&res);
	o.expect_generation = 1;
	rc = cfs_context_commit(&res, st, keys, "on-s3", fd1, &o);
	TAP_EQ_INT(rc, CFS_ECONFLICT,
		   "engine: a stale expected generation "
		   "conflicts");
	cfs_commit_result_clear(&res);
	rc = cfs_context_export(NULL, st, keys, "on-s3", fd2, NULL, NULL);
	TAP_EQ_INT(rc, 0, "engine: export generation 2 elsewhere");
	cfs_read_file_at(&got, &len, fd2, "workspace/hello.txt", 1024);
	TAP_OK(got && len == 9 && !memcmp(got, "hello s3\n", 9),
	       "the committed file comes back");
	free(got);
	rc = cfs_context_verify(st, keys, "on-s3", NULL, NULL);
	TAP_EQ_INT(rc, 0, "engine: verify every object on S3");
	close(fd1);
	close(fd2);
	cfs_rmtree_at(AT_FDCWD, d1);
	cfs_rmtree_at(AT_FDCWD, d2);
	free(d1);
	free(d2);
	cfs_keys_free(keys);
}

/*
 * Engine-level race: writers commit the same context at once with the same
 * expected generation; exactly one lands per round, and the context
 * exports (decrypts) after every round.
 */
struct committer {
	struct cfs_store *st;
	int srcfd;
	uint64_t expect;
	pthread_barrier_t *bar;
	int rc;
};

static void *commit_main(void *arg)
{
	struct committer *c = arg;
	struct cfs_keys *keys = NULL;
	struct cfs_commit_opts o;

	cfs_keys_new(&keys, NULL, RAW_HEX);
	cfs_commit_opts_init(&o);
	o.expect_generation = (int64_t)c->expect;
	o.key_verified = true;
	pthread_barrier_wait(c->bar);
	c->rc = cfs_context_commit(NULL, c->st, keys, "racing", c->srcfd, &o);
	cfs_keys_free(keys);
	return NULL;
}

static void test_commit_race(struct cfs_store *st, int writers, int rounds)
{
	struct committer cs[16];
	pthread_t t[16];
	pthread_barrier_t bar;
	struct cfs_keys *keys = NULL;
	char *dir = tap_tmpdir("s3-race");
	int fd = open_dir(dir), bad = 0, bad_export = 0, other = 0, rc;

	cfs_keys_new(&keys, NULL, RAW_HEX);
	rc = cfs_context_create(NULL, st, keys, "racing", NULL);
	rc = rc ? rc
		: cfs_context_export(NULL, st, keys, "racing", fd, NULL, NULL);
	TAP_EQ_INT(rc, 0, "commit race: context ready");
	for (int round = 0; round < rounds && !rc; round++) {
		struct cfs_ref_info ri;
		int wins = 0;
		char *edir = tap_tmpdir("s3-race-x");
		int efd = open_dir(edir);

		pthread_barrier_init(&bar, NULL, (unsigned)writers);
		for (int i = 0; i < writers; i++) {
			cs[i] = (struct committer){st, fd, (uint64_t)round + 1,
						   &bar, 0};
			pthread_create(&t[i], NULL, commit_main, &cs[i]);
		}
		for (int i = 0; i < writers; i++) {
			pthread_join(t[i], NULL);
			if (cs[i].rc == 0)
				wins++;
			else if (cs[i].rc != CFS_ECONFLICT)
				other++;
		}
		pthread_barrier_destroy(&bar);
		if (wins != 1)
			bad++;
		memset(&ri, 0, sizeof(ri));
		if (cfs_context_export(&ri, st, keys, "racing", efd, NULL,
				       NULL) ||
		    ri.generation != (uint64_t)round + 2)
			bad_export++;
		close(efd);
		cfs_rmtree_at(AT_FDCWD, edir);
		free(edir);
	}
	tap_ok(bad == 0,
	       "commit race, %d writers x %d rounds: exactly one commit lands "
	       "per round (%d bad)",
	       writers, rounds, bad);
	TAP_EQ_INT(other, 0, "commit race: losers fail with CFS_ECONFLICT");
	TAP_EQ_INT(bad_export, 0,
		   "commit race: the context decrypts after "
		   "every round, at the right generation");
	cfs_keys_free(keys);
	close(fd);
	cfs_rmtree_at(AT_FDCWD, dir);
	free(dir);
}

/*
 * Commits through a proxy that fails flaky_pct % of requests (resets,
 * 503s, delays, cut responses, lost answers): every commit either lands or
 * fails cleanly, the context exports (decrypts) after every attempt, the
 * generation counts exactly the commits that reported success, and the
 * staging tree is never touched.
 */
static void test_flaky_commits(int commits, unsigned pct)
{
	struct proxy p;
	struct cfs_s3_config c = base_cfg;
	struct cfs_store *flaky = NULL, *clean = NULL;
	struct cfs_keys *keys = NULL;
	char *ep = NULL, *stage = tap_tmpdir("s3-flaky");
	int sfd = open_dir(stage), landed = 0, failed = 0, bad_export = 0;
	int bad_gen = 0, bad_files = 0, rc;
	char *msg = NULL;

	if (proxy_start(&p, base_cfg.endpoint)) {
		tap_skip("endpoint is not http://127.0.0.1:PORT; no proxy");
		free(stage);
		close(sfd);
		return;
	}
	p.flaky_pct = pct;
	ep = cfs_asprintf("http://127.0.0.1:%d", p.port);
	c.endpoint = ep;
	c.retry_base_ms = 20;
	c.retry_max_ms = 400;
	flaky = s3h_open(&c);
	clean = s3h_open(&base_cfg);
	cfs_keys_new(&keys, NULL, RAW_HEX);
	rc = cfs_context_create(NULL, clean, keys, "flaky", NULL);
	rc = rc ? rc
		: cfs_context_export(NULL, clean, keys, "flaky", sfd, NULL,
				     NULL);
	TAP_EQ_INT(rc, 0, "flaky: create and export the context");
	for (int i = 1; i <= commits && !rc; i++) {
		struct cfs_commit_opts o;
		struct cfs_commit_result res;
		struct cfs_ref_info ri;
		char name[64], body[64];
		char *edir = tap_tmpdir("s3-flaky-x");
		int efd = open_dir(edir), r2;

		snprintf(name, sizeof(name), "workspace/f%03d.txt", i);
		snprintf(body, sizeof(body), "commit %d\n", i);
		cfs_write_file_at(sfd, name, body, strlen(body), 0644, false);
		cfs_commit_opts_init(&o);
		memset(&res, 0, sizeof(res));
		r2 = cfs_context_commit(&res, flaky, keys, "flaky", sfd, &o);
		if (r2 == 0) {
			landed++;
		} else {
			failed++;
			if (!msg)
				msg = cfs_strdup(cfs_error_last());
		}
		cfs_commit_result_clear(&res);
		memset(&ri, 0, sizeof(ri));
		if (cfs_context_export(&ri, clean, keys, "flaky", efd, NULL,
				       NULL)) {
			bad_export++;
			tap_diag("export after commit %d: %s", i,
				 cfs_error_last());
		} else if (ri.generation != (uint64_t)(1 + landed)) {
			bad_gen++;
			tap_diag(
				"commit %d (rc %d): generation %llu, %d landed",
				i, r2, (unsigned long long)ri.generation,
				landed);
		}
		if (r2 == 0) {
			char *got = NULL;
			size_t len = 0;

			cfs_read_file_at(&got, &len, efd, name, 1024);
			if (!got || strcmp(got, body))
				bad_files++;
			free(got);
		}
		close(efd);
		cfs_rmtree_at(AT_FDCWD, edir);
		free(edir);
	}
	tap_diag("flaky proxy: %d requests; faults: %d resets, %d 503s, %d "
		 "delays, %d cut responses, %d lost answers",
		 atomic_load(&p.requests), atomic_load(&p.faults[F_RESET]),
		 atomic_load(&p.faults[F_503]), atomic_load(&p.faults[F_DELAY]),
		 atomic_load(&p.faults[F_CUT_RESPONSE]),
		 atomic_load(&p.faults[F_LOSE_ANSWER]));
	tap_ok(landed + failed == commits,
	       "flaky (%u%% faults): %d commits, %d landed, %d failed cleanly%s%s",
	       pct, commits, landed, failed, msg ? ": " : "", msg ? msg : "");
	TAP_EQ_INT(bad_export, 0,
		   "flaky: the context exports after every "
		   "attempt");
	TAP_EQ_INT(bad_gen, 0,
		   "flaky: the generation counts exactly the "
		   "commits reported as landed");
	TAP_EQ_INT(bad_files, 0, "flaky: every landed commit's file is there");
	{
		int present = 0;

		for (int i = 1; i <= commits; i++) {
			char name[64];

			snprintf(name, sizeof(name), "workspace/f%03d.txt", i);
			if (faccessat(sfd, name, F_OK, 0) == 0)
				present++;
		}
		TAP_EQ_INT(present, commits,
			   "flaky: the staging tree is intact");
	}
	rc = cfs_context_verify(clean, keys, "flaky", NULL, NULL);
	TAP_EQ_INT(rc, 0, "flaky: verify passes at the end");
	TAP_OK(landed >= commits * 9 / 10,
	       "flaky: retries carry most commits through (%d/%d)", landed,
	       commits);
	free(msg);
	cfs_keys_free(keys);
	cfs_store_free(flaky);
	cfs_store_free(clean);
	proxy_stop(&p);
	close(sfd);
	cfs_rmtree_at(AT_FDCWD, stage);
	free(stage);
	free(ep);
}

/* ---- the conditional-write probe ----------------------------------------- */

/* A store that forwards to mem but drops the conditions (like s3rver). */
struct lax_store {
	struct cfs_store base;
	struct cfs_store *inner;
	bool drop_if_match;
};

static int lax_get(struct cfs_store *st, const char *key, int fd,
		   struct cfs_buf *buf, size_t max, struct cfs_objinfo *info)
{
	struct lax_store *l = (struct lax_store *)st;

	return l->inner->ops->get(l->inner, key, fd, buf, max, info);
}

static int lax_put(struct cfs_store *st, const char *key,
		   const struct cfs_source *src, const struct cfs_cond *cond,
		   char etag_out[CFS_ETAG_MAX])
{
	struct lax_store *l = (struct lax_store *)st;
	struct cfs_cond c = *cond;

	if (l->drop_if_match)
		c.if_match = NULL;
	else
		c.if_none_match = false;
	return l->inner->ops->put(l->inner, key, src, &c, etag_out);
}

static int lax_head(struct cfs_store *st, const char *key,
		    struct cfs_objinfo *info)
{
	struct lax_store *l = (struct lax_store *)st;

	return l->inner->ops->head(l->inner, key, info);
}

static int lax_del(struct cfs_store *st, const char *key)
{
	struct lax_store *l = (struct lax_store *)st;

	return l->inner->ops->del(l->inner, key);
}

static int lax_list(struct cfs_store *st, const char *prefix, cfs_list_fn fn,
		    void *payload)
{
	struct lax_store *l = (struct lax_store *)st;

	return l->inner->ops->list(l->inner, prefix, fn, payload);
}

static const char *lax_describe(struct cfs_store *st)
{
	return "lax://";
}

static void lax_free(struct cfs_store *st)
{
}

static const struct cfs_store_ops lax_ops = {CFS_STORE_OPS_VERSION,
					     "lax",
					     lax_get,
					     lax_put,
					     lax_head,
					     lax_del,
					     lax_list,
					     lax_describe,
					     lax_free,
					     0,
					     NULL};

static void test_probe_offline(void)
{
	struct lax_store l = {{&lax_ops, NULL, NULL}, NULL, false};
	int rc;

	cfs_store_mem_new(&l.inner);
	rc = cfs_store_check_conditional(l.inner);
	TAP_EQ_INT(rc, 0, "probe: a store that enforces conditions passes");
	TAP_EQ_INT(cfs_store_mem_count(l.inner), 0, "probe: leaves nothing");
	rc = cfs_store_check_conditional(&l.base);
	TAP_EQ_INT(rc, CFS_EUNSUPPORTED,
		   "probe: ignoring If-None-Match is refused");
	tap_ok(strstr(cfs_error_last(), "If-None-Match") &&
		       strstr(cfs_error_last(), "s3rver"),
	       "probe message: %s", cfs_error_last());
	l.drop_if_match = true;
	rc = cfs_store_check_conditional(&l.base);
	TAP_EQ_INT(rc, CFS_EUNSUPPORTED, "probe: ignoring If-Match is refused");
	TAP_EQ_INT(cfs_store_mem_count(l.inner), 0,
		   "probe: cleans up after a refusal");
	cfs_store_free(l.inner);
}

/* ---- cleanup and main --------------------------------------------------- */

static void cleanup(struct cfs_store *st)
{
	size_t n = 0;
	int rc = s3h_wipe(st, &n);

	tap_ok(rc == 0, "cleanup: %zu objects of this run deleted", n);
}

int main(void)
{
	const char *rr = getenv("S3_RACE_ROUNDS");
	const char *fc = getenv("S3_FLAKY_COMMITS");
	int flaky = fc ? (int)strtol(fc, NULL, 10) : 30;
	const char *fpct = getenv("S3_FLAKY_PCT");
	int fp = fpct ? (int)strtol(fpct, NULL, 10) : 10;
	struct cfs_store *st;
	int rounds = rr ? (int)strtol(rr, NULL, 10) : 20;

	cfs_init();
	cfs_log_quiet();
	test_probe_offline();
	if (!s3h_config(&base_cfg, run_prefix, sizeof(run_prefix),
			"cfs-test")) {
		tap_skip(S3H_UNSET);
		return tap_done();
	}
	st = s3h_open(&base_cfg);
	if (!st) {
		printf("Bail out! cannot open the S3 store\n");
		return 1;
	}
	TAP_EQ_INT(cfs_store_check_conditional(st), 0,
		   "probe: RGW enforces conditional writes");
	contract(st);
	test_prefix();
	test_vhost();
	test_paging(st);
	if (rounds <= 0 || rounds > 1000)
		rounds = 20;
	test_races(st, 8, rounds);
	test_races(st, 16, rounds);
	test_multipart(st);
	test_growing_put(&base_cfg);
	test_errors();
	test_faults();
	test_lock(st);
	test_engine(st);
	test_commit_race(st, 8, rounds / 4 ? rounds / 4 : 1);
	test_flaky_commits(flaky > 0 && flaky <= 1000 ? flaky : 30,
			   fp > 0 && fp <= 90 ? (unsigned)fp : 10);
	cleanup(st);
	cfs_store_free(st);
	return tap_done();
}
