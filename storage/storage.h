/*
 * Constructors of the storage backends. Each returns a struct cfs_store
 * that core drives through core/store.h.
 */
#ifndef CFS_STORAGE_STORAGE_H
#define CFS_STORAGE_STORAGE_H

#include "core/store.h"

/*
 * Local directory store, byte-compatible with the reference's FsStorage
 * (REFERENCE.md §3.3): .etagid sidecars, <key>.lock/heartbeat key locks,
 * temp files <path>.tmp-<pid>-<uuid>. The directory is created lazily.
 */
int cfs_store_fs_open(struct cfs_store **out, const char *directory);

/* Default directory: $HOME/.contextsdk/storage (heap string). */
char *cfs_store_fs_default_dir(void);

/*
 * Test hook: overrides the per-key lock timings of an fs store (ms; 0 keeps
 * the default: stale after 10000, give up after 60000, retry every 50,
 * heartbeat refresh every 3333). Not for production use.
 */
void cfs_store_fs_set_lock_timing(struct cfs_store *st, unsigned stale_ms,
				  unsigned timeout_ms, unsigned retry_ms,
				  unsigned refresh_ms);

/* In-memory store with fault injection for tests. */
enum cfs_mem_fault {
	CFS_MEM_FAULT_NONE = 0,
	CFS_MEM_FAULT_PUT_FAIL,   /* the nth put (matching key_substr) fails with CFS_EIO */
	CFS_MEM_FAULT_LOSE_CAS,   /* the nth conditional put fails with CFS_ECONFLICT */
	CFS_MEM_FAULT_GET_FAIL,   /* the nth get fails with CFS_EIO */
	CFS_MEM_FAULT_DELETE_FAIL,/* the nth delete fails with CFS_EIO */
	CFS_MEM_FAULT_NO_ETAG,    /* gets/heads return no ETag */
};
int cfs_store_mem_new(struct cfs_store **out);
/*
 * Arms fault f on the nth (1-based) matching call counted from now;
 * key_substr may be NULL (every key matches). nth == 0 fires on every
 * matching call (for CFS_MEM_FAULT_NO_ETAG: every get/head from now on).
 * One fault per kind is armed at a time; CFS_MEM_FAULT_NONE disarms all.
 */
void cfs_store_mem_fault(struct cfs_store *st, enum cfs_mem_fault f,
			 unsigned nth, const char *key_substr);
/* Number of stored objects (tests). */
size_t cfs_store_mem_count(struct cfs_store *st);

/*
 * S3-compatible object storage over libcurl (AWS S3, Ceph RGW, MinIO, R2),
 * keyed like the reference's S3Storage (REFERENCE.md §3.4): object key =
 * prefix + "/" + key when a prefix is set. Requests are signed with SigV4
 * (storage/sigv4.h). Conditional writes use If-None-Match: * and If-Match;
 * ETags are returned quoted, as S3 sends them. Objects of at least
 * multipart_threshold bytes put from an fd go up as a multipart upload
 * (create-only / compare-and-swap checked by a HEAD first: multipart
 * completion cannot carry the condition on every server). Transport
 * errors, 429, 5xx and RequestTimeout are retried with full-jitter
 * exponential backoff; downloads resume with a Range pinned by If-Match.
 * Errors: 404 CFS_ENOTFOUND, 412/409 CFS_EEXISTS / CFS_ECONFLICT (the
 * reference's messages), 403 CFS_EPERM (with a hint about credentials),
 * transport CFS_EAGAIN / CFS_ETIMEDOUT, other HTTP errors CFS_EIO.
 */
enum cfs_s3_if_match {
	/* Unquoted first (Ceph RGW 16 needs it); switches to quoted for the
	 * store's lifetime if the server refuses an If-Match whose ETag a
	 * HEAD shows to be current. */
	CFS_S3_IF_MATCH_AUTO = 0,
	CFS_S3_IF_MATCH_UNQUOTED,
	CFS_S3_IF_MATCH_QUOTED, /* as AWS documents: "\"<etag>\"" */
};

struct cfs_s3_config {
	/* "http://127.0.0.1:7480"; NULL or "" = AWS (https://s3.<region>.
	 * amazonaws.com). */
	const char *endpoint;
	/* Signing region; NULL, "" = "us-east-1". "auto" is sent as is when
	 * an endpoint is given (R2), and means us-east-1 for AWS. */
	const char *region;
	const char *bucket; /* required */
	const char *prefix; /* NULL or "": none; trailing '/' stripped */
	bool path_style; /* https://host/bucket/key instead of bucket.host */
	const char *access_key; /* required */
	const char *secret_key; /* required; copied into sodium memory */
	const char *session_token; /* optional (x-amz-security-token) */
	enum cfs_s3_if_match if_match;
	/* Tunables; 0 = default. */
	unsigned max_retries; /* 6: attempts = 1 + max_retries */
	unsigned retry_base_ms; /* 100: full jitter in [0, base * 2^n] */
	unsigned retry_max_ms; /* 5000: cap of one backoff */
	uint64_t multipart_threshold; /* 64 MiB */
	uint64_t part_size; /* 16 MiB (at least 5 MiB) */
	unsigned parallel_parts; /* 4 */
	unsigned connect_timeout_ms; /* 10000 */
	unsigned stall_timeout_s; /* 60: abort a transfer below 1 B/s */
	const char *ca_file; /* NULL = system CAs */
	bool insecure_tls; /* skip TLS verification (tests only) */
	bool no_content_md5; /* don't send Content-MD5 on puts */
};

/* Opens an S3 store; checks the configuration only (no request). */
int cfs_store_s3_open(struct cfs_store **out, const struct cfs_s3_config *cfg);

/*
 * Checks that a store really enforces conditional writes (contextfs doctor;
 * run before writing to an unknown S3 server): under a random probe key
 * ".contextfs-probe/<hex>" it creates an object with If-None-Match, tries
 * to create it again (must be refused), to replace it with a stale
 * If-Match (must be refused) and with the current one (must succeed), then
 * deletes it. A server that ignores a condition (fake S3 servers such as
 * s3rver) -> CFS_EUNSUPPORTED with a message saying writes are unsafe
 * there; transport or permission failures propagate. Works on any store.
 */
int cfs_store_check_conditional(struct cfs_store *st);

#endif
