/*
 * The lock protocol (REFERENCE.md §7, §16 lock.test.ts) against the
 * in-memory store with an injected clock and injected CAS losses / missing
 * ETags.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "core/ids.h"
#include "core/json.h"
#include "core/lock.h"
#include "core/util.h"
#include "storage/storage.h"
#include "tests/unit/tap.h"

int main(void);

#define T0 1780660800000LL /* 2026-06-05T12:00:00.000Z */
#define TTL 60000

static int64_t fake_now = T0;

static int64_t fake_clock(void)
{
	return fake_now;
}

static struct cfs_store *new_store(void)
{
	struct cfs_store *st = NULL;

	if (cfs_store_mem_new(&st) != 0) {
		printf("Bail out! cannot create the in-memory store: %s\n",
		       cfs_error_last());
		exit(1);
	}
	return st;
}

/* The stored lock.json bytes (NULL if none). */
static char *raw_lock(struct cfs_store *st, const char *id)
{
	char key[CFS_KEY_MAX], *buf = NULL;
	size_t len;

	cfs_key_lock(key, id);
	if (cfs_store_get_buf(st, key, &buf, &len, NULL) != 0)
		return NULL;
	return buf;
}

static void put_raw(struct cfs_store *st, const char *id, const char *body)
{
	char key[CFS_KEY_MAX];

	cfs_key_lock(key, id);
	cfs_store_put_buf(st, key, body, strlen(body), NULL, NULL);
}

/* The owner stored right now ("" if no lock, "?" if unreadable). */
static char stored_owner_buf[256];
static const char *stored_owner(struct cfs_store *st, const char *id)
{
	struct cfs_lock *l = NULL;

	if (cfs_lock_read(&l, st, id) != 0)
		return "?";
	snprintf(stored_owner_buf, sizeof(stored_owner_buf), "%s",
		 l ? cfs_lock_owner(l) : "");
	cfs_lock_free(l);
	return stored_owner_buf;
}

static void test_owner_new(void)
{
	char *o = NULL, *p;
	char pid[32];

	TAP_EQ_INT(cfs_lock_owner_new(&o), 0, "owner_new");
	snprintf(pid, sizeof(pid), ":%ld:", (long)getpid());
	p = o ? strstr(o, pid) : NULL;
	TAP_OK(o && strncmp(o, cfs_hostname(), strlen(cfs_hostname())) == 0 &&
		       p && strlen(p + strlen(pid)) == 36,
	       "owner is <hostname>:<pid>:<uuid4>: %s", o ? o : "");
	free(o);
}

static void test_acquire_adopt_takeover(void)
{
	struct cfs_store *st = new_store();
	struct cfs_lock *l = NULL;
	bool adopted = true;
	char *raw, want[512];
	int rc;

	fake_now = T0;
	TAP_EQ_INT(cfs_lock_read(&l, st, "c1"), 0, "read without lock");
	TAP_OK(l == NULL, "no lock -> NULL");

	rc = cfs_lock_acquire(&l, &adopted, st, "c1", "r1", "owner-a", TTL,
			      false);
	TAP_EQ_INT(rc, 0, "owner-a acquires");
	TAP_OK(!adopted, "fresh lock is not adopted");
	TAP_OK(l && cfs_lock_etag(l)[0], "written lock carries its ETag");
	raw = raw_lock(st, "c1");
	TAP_EQ_STR(
		raw,
		"{\n  \"version\": 1,\n  \"contextId\": \"c1\",\n  \"owner\": "
		"\"owner-a\",\n  \"runtimeId\": \"r1\",\n  \"createdAt\": "
		"\"2026-06-05T12:00:00.000Z\",\n  \"heartbeatAt\": "
		"\"2026-06-05T12:00:00.000Z\",\n  \"expiresAt\": "
		"\"2026-06-05T12:01:00.000Z\"\n}",
		"lock.json bytes and member order");
	free(raw);
	cfs_lock_free(l);
	l = NULL;

	fake_now = T0 + 1000;
	rc = cfs_lock_acquire(&l, &adopted, st, "c1", "r9", "owner-b", TTL,
			      false);
	TAP_EQ_INT(rc, CFS_ELOCKED, "second owner refused");
	TAP_EQ_STR(cfs_error_last(),
		   "context c1 is locked by owner-a until "
		   "2026-06-05T12:01:00.000Z (use unlock --force if that "
		   "writer is dead)",
		   "held-lock message");
	TAP_OK(l == NULL, "no lock returned on refusal");

	fake_now = T0 + 2000;
	rc = cfs_lock_acquire(&l, &adopted, st, "c1", "r2", "owner-a", TTL,
			      false);
	TAP_EQ_INT(rc, 0, "same owner re-acquires");
	TAP_OK(adopted, "same owner adopts");
	TAP_EQ_STR(l ? cfs_lock_runtime_id(l) : NULL, "r2",
		   "adopt updates runtimeId");
	TAP_EQ_STR(l ? cfs_lock_created_at(l) : NULL,
		   "2026-06-05T12:00:00.000Z", "adopt keeps createdAt");
	TAP_EQ_STR(l ? cfs_lock_expires_at(l) : NULL,
		   "2026-06-05T12:01:02.000Z", "adopt extends expiry");
	cfs_lock_free(l);
	l = NULL;
	rc = cfs_lock_acquire(NULL, NULL, st, "c1", "r9", "owner-b", TTL,
			      false);
	TAP_EQ_INT(rc, CFS_ELOCKED, "other owners still refused after adopt");

	/* Expired iff expiresAt <= now: exactly at expiry it is expired. */
	fake_now = T0 + 62000;
	rc = cfs_lock_acquire(&l, &adopted, st, "c1", "r3", "owner-b", TTL,
			      false);
	TAP_EQ_INT(rc, 0, "expired lock taken over (at expiresAt == now)");
	TAP_OK(!adopted, "takeover is not an adoption");
	TAP_EQ_STR(stored_owner(st, "c1"), "owner-b", "stored owner is b");
	TAP_EQ_STR(l ? cfs_lock_created_at(l) : NULL,
		   "2026-06-05T12:01:02.000Z", "takeover writes a fresh lock");
	cfs_lock_free(l);
	l = NULL;

	/* The old owner's renewal is refused after the takeover. */
	rc = cfs_lock_renew(NULL, st, "c1", "owner-a", TTL);
	TAP_EQ_INT(rc, CFS_ELOCKED, "renew after takeover refused");
	TAP_EQ_STR(cfs_error_last(), "context c1 lock is now held by owner-b",
		   "renew refusal message");
	rc = cfs_lock_assert_owner(st, "c1", "owner-a");
	TAP_EQ_INT(rc, CFS_ELOCKED, "assert_owner fails for the old owner");
	TAP_EQ_STR(cfs_error_last(),
		   "context c1 is now locked by owner-b; refusing to write",
		   "assert_owner message");
	TAP_EQ_INT(cfs_lock_assert_owner(st, "c1", "owner-b"), 0,
		   "assert_owner passes for the holder");

	/* Default TTL. */
	fake_now = T0 + 200000;
	rc = cfs_lock_acquire(&l, &adopted, st, "c2", NULL, "owner-a", 0,
			      false);
	TAP_EQ_INT(rc, 0, "acquire with default ttl");
	snprintf(want, sizeof(want), "%s", "2026-06-05T12:33:20.000Z");
	TAP_EQ_STR(l ? cfs_lock_expires_at(l) : NULL, want,
		   "default TTL is 30 minutes");
	TAP_OK(l && cfs_lock_runtime_id(l) == NULL,
	       "NULL runtime id omits the member");
	TAP_OK(l && cfs_lock_expires_ms(l) == T0 + 200000 + 1800000,
	       "expires_ms parses expiresAt");
	TAP_OK(l && !cfs_lock_expired(l, T0 + 200000 + 1799999) &&
		       cfs_lock_expired(l, T0 + 200000 + 1800000),
	       "expired iff expiresAt <= now");
	cfs_lock_free(l);
	l = NULL;

	TAP_EQ_INT(cfs_lock_acquire(NULL, NULL, st, "../evil", NULL, "o", 0,
				    false),
		   CFS_EINVAL, "invalid id refused");
	TAP_EQ_INT(cfs_lock_acquire(NULL, NULL, st, "c3", NULL, "", 0, false),
		   CFS_EINVAL, "empty owner refused");
	cfs_store_free(st);
}

static void test_cas_and_etag(void)
{
	struct cfs_store *st = new_store();
	bool adopted;
	int rc;

	fake_now = T0;
	cfs_lock_acquire(NULL, NULL, st, "c1", "r1", "owner-a", TTL, false);
	fake_now = T0 + TTL + 1;

	/* Another writer wins the CAS between our read and our write. */
	cfs_store_mem_fault(st, CFS_MEM_FAULT_LOSE_CAS, 1, "lock.json");
	rc = cfs_lock_acquire(NULL, &adopted, st, "c1", "r2", "owner-b", TTL,
			      false);
	TAP_EQ_INT(rc, CFS_ELOCKED, "lost takeover CAS -> CFS_ELOCKED");
	TAP_EQ_STR(cfs_error_last(),
		   "context c1 lock was acquired by another writer",
		   "lost takeover message");
	TAP_EQ_STR(stored_owner(st, "c1"), "owner-a",
		   "loser did not overwrite the lock");

	/* Create-only acquire losing to a concurrent create. */
	cfs_store_mem_fault(st, CFS_MEM_FAULT_LOSE_CAS, 1, "lock.json");
	rc = cfs_lock_acquire(NULL, &adopted, st, "fresh", "r", "owner-b", TTL,
			      false);
	TAP_EQ_INT(rc, CFS_ELOCKED, "lost create-only acquire");
	TAP_EQ_STR(cfs_error_last(),
		   "context fresh lock was acquired by another writer",
		   "lost create message");

	/* Same-owner adopt losing its CAS. */
	fake_now = T0 + 1000;
	cfs_store_mem_fault(st, CFS_MEM_FAULT_LOSE_CAS, 1, "lock.json");
	rc = cfs_lock_acquire(NULL, &adopted, st, "c1", "r2", "owner-a", TTL,
			      false);
	TAP_EQ_INT(rc, CFS_ELOCKED, "lost adopt CAS");
	TAP_EQ_STR(cfs_error_last(),
		   "context c1 lock changed during same-owner re-acquire",
		   "lost adopt message");

	/* Renewal losing its CAS. */
	cfs_store_mem_fault(st, CFS_MEM_FAULT_LOSE_CAS, 1, "lock.json");
	rc = cfs_lock_renew(NULL, st, "c1", "owner-a", TTL);
	TAP_EQ_INT(rc, CFS_ELOCKED, "lost renewal CAS");
	TAP_EQ_STR(cfs_error_last(), "context c1 lock changed during renewal",
		   "lost renewal message");

	/* A store without ETags cannot take over atomically. */
	fake_now = T0 + TTL + 1;
	cfs_store_mem_fault(st, CFS_MEM_FAULT_NO_ETAG, 0, NULL);
	rc = cfs_lock_acquire(NULL, &adopted, st, "c1", "r2", "owner-b", TTL,
			      false);
	TAP_EQ_INT(rc, CFS_ELOCKED, "no-ETag takeover refused");
	TAP_EQ_STR(cfs_error_last(),
		   "context c1 has an expired lock, but the storage adapter "
		   "did not return an etag for atomic takeover; release the "
		   "lock or retry with force",
		   "no-ETag message");
	TAP_EQ_STR(stored_owner(st, "c1"), "owner-a", "stale lock left alone");
	rc = cfs_lock_acquire(NULL, &adopted, st, "c1", "r2", "owner-b", TTL,
			      true);
	TAP_EQ_INT(rc, 0, "force still succeeds without ETags");
	TAP_EQ_STR(stored_owner(st, "c1"), "owner-b", "forced owner stored");
	/* Without ETags, renewal and adopt write unconditionally. */
	fake_now += 1000;
	TAP_EQ_INT(cfs_lock_renew(NULL, st, "c1", "owner-b", TTL), 0,
		   "renew without ETag");
	TAP_EQ_INT(cfs_lock_acquire(NULL, &adopted, st, "c1", "r5", "owner-b",
				    TTL, false),
		   0, "adopt without ETag");
	TAP_OK(adopted, "adopted without ETag");
	cfs_store_mem_fault(st, CFS_MEM_FAULT_NONE, 0, NULL);
	cfs_store_free(st);
}

static void test_renew(void)
{
	struct cfs_store *st = new_store();
	struct cfs_lock *l = NULL;
	char *raw;
	int rc;

	fake_now = T0;
	TAP_EQ_INT(cfs_lock_renew(NULL, st, "c1", "owner-a", TTL), CFS_ELOCKED,
		   "renew without a lock");
	TAP_EQ_STR(cfs_error_last(),
		   "context c1 lock no longer exists; cannot renew",
		   "missing-lock renewal message");

	/* Unknown members survive a renewal in place. */
	put_raw(st, "c1",
		"{\n  \"version\": 1,\n  \"contextId\": \"c1\",\n  \"owner\": "
		"\"owner-a\",\n  \"x-tenant\": \"acme\",\n  \"runtimeId\": "
		"\"r1\",\n  \"createdAt\": \"2026-06-05T11:00:00.000Z\",\n  "
		"\"heartbeatAt\": \"2026-06-05T11:00:00.000Z\",\n  "
		"\"expiresAt\": \"2026-06-05T11:01:00.000Z\"\n}");
	fake_now = T0 + 5000;
	rc = cfs_lock_renew(&l, st, "c1", "owner-a", TTL);
	TAP_EQ_INT(rc, 0, "expired-but-not-taken-over lock can be renewed");
	cfs_lock_free(l);
	raw = raw_lock(st, "c1");
	TAP_EQ_STR(
		raw,
		"{\n  \"version\": 1,\n  \"contextId\": \"c1\",\n  \"owner\": "
		"\"owner-a\",\n  \"x-tenant\": \"acme\",\n  \"runtimeId\": "
		"\"r1\",\n  \"createdAt\": \"2026-06-05T11:00:00.000Z\",\n  "
		"\"heartbeatAt\": \"2026-06-05T12:00:05.000Z\",\n  "
		"\"expiresAt\": \"2026-06-05T12:01:05.000Z\"\n}",
		"renewal persisted, unknown member kept in place");
	free(raw);
	TAP_EQ_INT(cfs_lock_renew(NULL, st, "c1", NULL, TTL), CFS_ELOCKED,
		   "renew without owner refused");
	cfs_store_free(st);
}

static void test_release(void)
{
	struct cfs_store *st = new_store();
	int rc;

	fake_now = T0;
	TAP_EQ_INT(cfs_lock_release(st, "c1", "owner-a", false), 0,
		   "release without a lock is a no-op");
	TAP_EQ_INT(cfs_lock_assert_owner(st, "c1", "anyone"), 0,
		   "assert_owner passes with no lock");
	cfs_lock_acquire(NULL, NULL, st, "c1", "r1", "owner-a", TTL, false);
	rc = cfs_lock_release(st, "c1", "owner-b", false);
	TAP_EQ_INT(rc, CFS_ELOCKED, "release by another owner refused");
	TAP_EQ_STR(cfs_error_last(), "cannot release lock owned by owner-a",
		   "release refusal message");
	TAP_EQ_INT(cfs_lock_release(st, "c1", NULL, false), CFS_ELOCKED,
		   "release without owner refused");
	TAP_EQ_STR(stored_owner(st, "c1"), "owner-a", "lock still there");
	TAP_EQ_INT(cfs_lock_release(st, "c1", "owner-a", false), 0,
		   "owner releases");
	TAP_EQ_STR(stored_owner(st, "c1"), "", "lock gone");
	TAP_EQ_INT(cfs_lock_assert_owner(st, "c1", "anyone"), 0,
		   "assert_owner passes for anyone after release");

	cfs_lock_acquire(NULL, NULL, st, "c1", "r1", "owner-a", TTL, false);
	TAP_EQ_INT(cfs_lock_release(st, "c1", "owner-b", true), 0,
		   "forced release by another owner");
	TAP_EQ_INT(cfs_lock_acquire(NULL, NULL, st, "c1", "r2", "owner-b", TTL,
				    false),
		   0, "another owner acquires after forced release");
	cfs_store_free(st);
}

static void check_corrupt_body(const char *body, const char *name)
{
	struct cfs_store *st = new_store();
	struct cfs_lock *l = NULL;
	const char *msg = "context c1 lock data is corrupt; release it with "
			  "force to recover";
	int rc;

	put_raw(st, "c1", body);
	rc = cfs_lock_read(&l, st, "c1");
	TAP_OK(rc == CFS_ECORRUPT && !l && strcmp(cfs_error_last(), msg) == 0,
	       "%s: read -> corrupt (%s)", name, cfs_error_last());
	TAP_EQ_INT(cfs_lock_acquire(NULL, NULL, st, "c1", "r", "o", TTL, false),
		   CFS_ECORRUPT, "acquire over corrupt lock refused");
	TAP_EQ_INT(cfs_lock_assert_owner(st, "c1", "o"), CFS_ECORRUPT,
		   "assert_owner over corrupt lock fails");
	TAP_EQ_INT(cfs_lock_release(st, "c1", "o", false), CFS_ECORRUPT,
		   "unforced release over corrupt lock fails");
	TAP_EQ_INT(cfs_lock_release(st, "c1", NULL, true), 0,
		   "forced release clears corrupt data");
	TAP_EQ_INT(cfs_lock_acquire(NULL, NULL, st, "c1", "r", "o", TTL, false),
		   0, "acquire after forced release");
	cfs_store_free(st);
}

static void test_corrupt(void)
{
	struct cfs_store *st;

	check_corrupt_body("{not json", "garbage");
	check_corrupt_body("null", "JSON null");
	check_corrupt_body("{\"version\":1,\"contextId\":\"c1\"}", "no owner");
	check_corrupt_body("{\"owner\":7}", "numeric owner");

	/* force acquires over corrupt data too. */
	st = new_store();
	put_raw(st, "c1", "]]");
	TAP_EQ_INT(cfs_lock_acquire(NULL, NULL, st, "c1", "r", "o", TTL, true),
		   0, "forced acquire over corrupt data");
	TAP_EQ_STR(stored_owner(st, "c1"), "o", "forced owner stored");
	cfs_store_free(st);

	/* An unparseable expiresAt never expires (JS NaN). */
	st = new_store();
	put_raw(st, "c1", "{\"owner\":\"a\",\"expiresAt\":\"soon\"}");
	fake_now = T0 + 100000000;
	TAP_EQ_INT(cfs_lock_acquire(NULL, NULL, st, "c1", "r", "b", TTL, false),
		   CFS_ELOCKED, "unparseable expiresAt does not expire");
	cfs_store_free(st);
}

int main(void)
{
	cfs_init();
	cfs_lock_set_clock(fake_clock);
	test_owner_new();
	test_acquire_adopt_takeover();
	test_cas_and_etag();
	test_renew();
	test_release();
	test_corrupt();
	cfs_lock_set_clock(NULL);
	return tap_done();
}
