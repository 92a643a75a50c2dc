/*
 * The single-writer lock protocol (REFERENCE.md §7) over the storage
 * contract. Every write that could race another writer is a compare-and-
 * swap: a fresh lock is create-only, a takeover of an expired lock and an
 * adopt or renewal of our own lock are If-Match on the ETag we read. A lost
 * race surfaces as CFS_ELOCKED with the reference's message; the loser
 * never overwrites the winner.
 *
 * Documented gap kept from the reference: release checks the owner, then
 * deletes unconditionally (the store has no conditional delete), so a
 * takeover racing between the two can lose its fresh lock.
 */
#include "core/lock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/ids.h"
#include "core/json.h"
#include "core/util.h"

struct cfs_lock {
	cJSON *doc; /* always an object with a string "owner" */
	char etag[CFS_ETAG_MAX]; /* of the revision doc was read/written as */
};

static cfs_clock_fn lock_clock;

void cfs_lock_set_clock(cfs_clock_fn fn)
{
	__atomic_store_n(&lock_clock, fn, __ATOMIC_RELEASE);
}

int64_t cfs_lock_now_ms(void)
{
	cfs_clock_fn fn = __atomic_load_n(&lock_clock, __ATOMIC_ACQUIRE);

	return fn ? fn() : cfs_now_ms();
}

static int corrupt(const char *id)
{
	return cfs_error_set(CFS_ECORRUPT,
			     "context %s lock data is corrupt; release it with "
			     "force to recover",
			     id);
}

static struct cfs_lock *lock_wrap(cJSON *doc, const char *etag)
{
	struct cfs_lock *l = cfs_calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->doc = doc;
	snprintf(l->etag, sizeof(l->etag), "%s", etag ? etag : "");
	return l;
}

int cfs_lock_read(struct cfs_lock **out, struct cfs_store *st, const char *id)
{
	struct cfs_objinfo info;
	char key[CFS_KEY_MAX];
	char *buf = NULL;
	size_t len = 0;
	cJSON *doc = NULL;
	int rc;

	*out = NULL;
	rc = cfs_key_lock(key, id);
	if (rc)
		return rc;
	memset(&info, 0, sizeof(info));
	rc = cfs_store_get_buf(st, key, &buf, &len, &info);
	if (rc == CFS_ENOTFOUND) {
		cfs_error_clear();
		return 0;
	}
	if (rc == CFS_ECORRUPT) /* larger than the small-object cap */
		return corrupt(id);
	if (rc)
		return rc;
	if (len > CFS_LOCK_MAX_BYTES) {
		rc = corrupt(id);
		goto out;
	}
	doc = cfs_json_parse(buf, len, "lock.json");
	if (!doc) {
		rc = cfs_error_last_code() == CFS_ENOMEM ? CFS_ENOMEM
							 : corrupt(id);
		goto out;
	}
	/* The protocol needs an owner; anything else is carried along. */
	if (!cJSON_IsObject(doc) || !cfs_json_str(doc, "owner")) {
		rc = corrupt(id);
		goto out;
	}
	*out = lock_wrap(doc, info.etag);
	if (!*out) {
		rc = CFS_ENOMEM;
		goto out;
	}
	doc = NULL;
out:
	cJSON_Delete(doc);
	free(buf);
	return rc;
}

/* Writes doc as the lock with cond; on success hands doc to *out. */
static int lock_write(struct cfs_lock **out, struct cfs_store *st,
		      const char *id, cJSON *doc, const struct cfs_cond *cond)
{
	char key[CFS_KEY_MAX], etag[CFS_ETAG_MAX] = "";
	char *body = NULL;
	int rc;

	rc = cfs_key_lock(key, id);
	if (rc)
		goto out;
	body = cfs_json_print(doc, CFS_JSON_PRETTY);
	if (!body) {
		rc = CFS_ENOMEM;
		goto out;
	}
	rc = cfs_store_put_buf(st, key, body, strlen(body), cond, etag);
	if (rc)
		goto out;
	if (out) {
		*out = lock_wrap(doc, etag);
		if (!*out) {
			rc = CFS_ENOMEM;
			goto out;
		}
		doc = NULL;
	}
out:
	cJSON_Delete(doc);
	free(body);
	return rc;
}

static int set_times(cJSON *doc, int64_t now, int64_t ttl_ms)
{
	char ts[40];
	int rc;

	cfs_iso8601_ms(ts, sizeof(ts), now);
	rc = cfs_json_set_str(doc, "heartbeatAt", ts);
	if (rc)
		return rc;
	cfs_iso8601_ms(ts, sizeof(ts), now + ttl_ms);
	return cfs_json_set_str(doc, "expiresAt", ts);
}

static cJSON *fresh_lock(const char *id, const char *owner,
			 const char *runtime_id, int64_t now, int64_t ttl_ms)
{
	cJSON *doc = cJSON_CreateObject();
	char ts[40];
	int rc;

	if (!doc)
		return NULL;
	cfs_iso8601_ms(ts, sizeof(ts), now);
	rc = cfs_json_set_int(doc, "version", 1);
	if (!rc)
		rc = cfs_json_set_str(doc, "contextId", id);
	if (!rc)
		rc = cfs_json_set_str(doc, "owner", owner);
	if (!rc && runtime_id)
		rc = cfs_json_set_str(doc, "runtimeId", runtime_id);
	if (!rc)
		rc = cfs_json_set_str(doc, "createdAt", ts);
	if (!rc)
		rc = set_times(doc, now, ttl_ms);
	if (rc) {
		cJSON_Delete(doc);
		return NULL;
	}
	return doc;
}

static bool lost_cas(int rc)
{
	return rc == CFS_ECONFLICT || rc == CFS_EEXISTS;
}

int cfs_lock_acquire(struct cfs_lock **out, bool *adopted, struct cfs_store *st,
		     const char *id, const char *runtime_id, const char *owner,
		     int64_t ttl_ms, bool force)
{
	struct cfs_lock *cur = NULL;
	struct cfs_cond cond = {NULL, false};
	cJSON *doc = NULL;
	int64_t now;
	int rc;

	if (out)
		*out = NULL;
	if (adopted)
		*adopted = false;
	rc = cfs_id_check(id);
	if (rc)
		return rc;
	if (!owner || !*owner)
		return cfs_error_set(CFS_EINVAL,
				     "lock owner must not be empty");
	if (ttl_ms <= 0)
		ttl_ms = CFS_LOCK_DEFAULT_TTL_MS;
	rc = cfs_lock_read(&cur, st, id);
	/* force takes over whatever is there, even unreadable data. */
	if (rc == CFS_ECORRUPT && force) {
		cfs_error_clear();
		rc = 0;
	}
	if (rc)
		return rc;
	now = cfs_lock_now_ms();

	if (cur && !force && !cfs_lock_expired(cur, now)) {
		if (strcmp(cfs_lock_owner(cur), owner) != 0) {
			rc = cfs_error_set(
				CFS_ELOCKED,
				"context %s is locked by %s until %s (use "
				"unlock --force if that writer is dead)",
				id, cfs_lock_owner(cur),
				cfs_lock_expires_at(cur)
					? cfs_lock_expires_at(cur)
					: "(unknown)");
			goto out;
		}
		/* Same owner: a recovering session re-acquires its lock. */
		doc = cJSON_Duplicate(cur->doc, 1);
		rc = doc ? 0 : cfs_error_set(CFS_ENOMEM, "out of memory");
		if (!rc && runtime_id)
			rc = cfs_json_set_str(doc, "runtimeId", runtime_id);
		if (!rc)
			rc = set_times(doc, now, ttl_ms);
		if (rc)
			goto out;
		cond.if_match = cur->etag[0] ? cur->etag : NULL;
		rc = lock_write(out, st, id, doc, &cond);
		doc = NULL;
		if (lost_cas(rc))
			rc = cfs_error_set(CFS_ELOCKED,
					   "context %s lock changed during "
					   "same-owner re-acquire",
					   id);
		if (!rc && adopted)
			*adopted = true;
		goto out;
	}

	if (force) {
		/* unconditional */
	} else if (cur) {
		if (!cur->etag[0]) {
			rc = cfs_error_set(
				CFS_ELOCKED,
				"context %s has an expired lock, but the "
				"storage adapter did not return an etag for "
				"atomic takeover; release the lock or retry "
				"with force",
				id);
			goto out;
		}
		cond.if_match = cur->etag;
	} else {
		cond.if_none_match = true;
	}
	doc = fresh_lock(id, owner, runtime_id, now, ttl_ms);
	if (!doc) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	rc = lock_write(out, st, id, doc, &cond);
	doc = NULL;
	if (lost_cas(rc))
		rc = cfs_error_set(CFS_ELOCKED,
				   "context %s lock was acquired by another "
				   "writer",
				   id);
out:
	cJSON_Delete(doc);
	cfs_lock_free(cur);
	return rc;
}

int cfs_lock_renew(struct cfs_lock **out, struct cfs_store *st, const char *id,
		   const char *owner, int64_t ttl_ms)
{
	struct cfs_lock *cur = NULL;
	struct cfs_cond cond = {NULL, false};
	cJSON *doc = NULL;
	int rc;

	if (out)
		*out = NULL;
	if (ttl_ms <= 0)
		ttl_ms = CFS_LOCK_DEFAULT_TTL_MS;
	rc = cfs_lock_read(&cur, st, id);
	if (rc)
		return rc;
	if (!cur)
		return cfs_error_set(CFS_ELOCKED,
				     "context %s lock no longer exists; cannot "
				     "renew",
				     id);
	if (!owner || strcmp(cfs_lock_owner(cur), owner) != 0) {
		rc = cfs_error_set(CFS_ELOCKED,
				   "context %s lock is now held by %s", id,
				   cfs_lock_owner(cur));
		goto out;
	}
	/* Expiry is not checked: an expired lock nobody took over is still
	 * ours to extend. */
	doc = cJSON_Duplicate(cur->doc, 1);
	rc = doc ? set_times(doc, cfs_lock_now_ms(), ttl_ms)
		 : cfs_error_set(CFS_ENOMEM, "out of memory");
	if (rc)
		goto out;
	cond.if_match = cur->etag[0] ? cur->etag : NULL;
	rc = lock_write(out, st, id, doc, &cond);
	doc = NULL;
	if (lost_cas(rc))
		rc = cfs_error_set(CFS_ELOCKED,
				   "context %s lock changed during renewal",
				   id);
out:
	cJSON_Delete(doc);
	cfs_lock_free(cur);
	return rc;
}

int cfs_lock_assert_owner(struct cfs_store *st, const char *id,
			  const char *owner)
{
	struct cfs_lock *cur = NULL;
	int rc;

	rc = cfs_lock_read(&cur, st, id);
	if (rc || !cur)
		return rc; /* no lock: released or expired-and-gone is fine */
	if (!owner || strcmp(cfs_lock_owner(cur), owner) != 0)
		rc = cfs_error_set(
			CFS_ELOCKED,
			"context %s is now locked by %s; refusing to "
			"write",
			id, cfs_lock_owner(cur));
	cfs_lock_free(cur);
	return rc;
}

int cfs_lock_release(struct cfs_store *st, const char *id, const char *owner,
		     bool force)
{
	struct cfs_lock *cur = NULL;
	char key[CFS_KEY_MAX];
	int rc;

	rc = cfs_key_lock(key, id);
	if (rc)
		return rc;
	if (!force) {
		rc = cfs_lock_read(&cur, st, id);
		if (rc || !cur)
			return rc;
		if (!owner || strcmp(cfs_lock_owner(cur), owner) != 0) {
			rc = cfs_error_set(CFS_ELOCKED,
					   "cannot release lock owned by %s",
					   cfs_lock_owner(cur));
			goto out;
		}
	}
	/* Forced: delete without reading, so corrupt data can be cleared. */
	rc = cfs_store_delete(st, key);
out:
	cfs_lock_free(cur);
	return rc;
}

int cfs_lock_owner_new(char **out)
{
	char uuid[37];

	cfs_uuid4(uuid);
	*out = cfs_asprintf("%s:%ld:%s", cfs_hostname(), (long)getpid(), uuid);
	return *out ? 0 : CFS_ENOMEM;
}

const char *cfs_lock_owner(const struct cfs_lock *l)
{
	return cfs_json_str(l->doc, "owner");
}

const char *cfs_lock_context_id(const struct cfs_lock *l)
{
	return cfs_json_str(l->doc, "contextId");
}

const char *cfs_lock_runtime_id(const struct cfs_lock *l)
{
	return cfs_json_str(l->doc, "runtimeId");
}

const char *cfs_lock_created_at(const struct cfs_lock *l)
{
	return cfs_json_str(l->doc, "createdAt");
}

const char *cfs_lock_heartbeat_at(const struct cfs_lock *l)
{
	return cfs_json_str(l->doc, "heartbeatAt");
}

const char *cfs_lock_expires_at(const struct cfs_lock *l)
{
	return cfs_json_str(l->doc, "expiresAt");
}

int64_t cfs_lock_expires_ms(const struct cfs_lock *l)
{
	const char *s = cfs_lock_expires_at(l);

	return s ? cfs_iso8601_parse_ms(s) : -1;
}

bool cfs_lock_expired(const struct cfs_lock *l, int64_t now_ms)
{
	const char *s = cfs_lock_expires_at(l);
	int64_t exp;

	if (!s)
		return false;
	exp = cfs_iso8601_parse_ms(s);
	/* -1 is "unparseable" (JS NaN: never <= now, never expires), except
	 * for the one instant it really names. */
	if (exp == -1 && strcmp(s, "1969-12-31T23:59:59.999Z") != 0)
		return false;
	return exp <= now_ms;
}

const char *cfs_lock_etag(const struct cfs_lock *l)
{
	return l->etag;
}

const cJSON *cfs_lock_json(const struct cfs_lock *l)
{
	return l->doc;
}

char *cfs_lock_print(const struct cfs_lock *l)
{
	return cfs_json_print(l->doc, CFS_JSON_PRETTY);
}

void cfs_lock_free(struct cfs_lock *l)
{
	if (!l)
		return;
	cJSON_Delete(l->doc);
	free(l);
}
