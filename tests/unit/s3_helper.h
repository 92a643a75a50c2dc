/*
 * The S3 server of the unit tests (tests/s3/rgw), taken from the
 * environment: S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY, S3_SECRET_KEY and
 * optionally S3_REGION. Every run works under a fresh random prefix of the
 * bucket and wipes it afterwards, so runs never see each other's objects.
 */
#ifndef CFS_TESTS_S3_HELPER_H
#define CFS_TESTS_S3_HELPER_H

#include <stdbool.h>
#include <stddef.h>

#include "core/store.h"
#include "storage/storage.h"

/* The TAP skip reason when the variables are not set. */
#define S3H_UNSET                                                              \
	"S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY and S3_SECRET_KEY are not set " \
	"(start a server with tests/s3/rgw start DIR)"

/*
 * Fills cfg (path-style, region S3_REGION) from the environment with the
 * prefix "<tag>-<8 random hex>", written to prefix (cfg->prefix points at
 * it, so it must outlive cfg). False when a variable is missing.
 */
bool s3h_config(struct cfs_s3_config *cfg, char *prefix, size_t cap,
		const char *tag);

/* Opens a store on cfg; NULL with a TAP diag line on failure. */
struct cfs_store *s3h_open(const struct cfs_s3_config *cfg);

/*
 * Deletes every object of the store (its whole prefix). Returns 0 when the
 * prefix is empty afterwards, else -1 (with a TAP diag line); the number of
 * objects deleted goes to *deleted (may be NULL).
 */
int s3h_wipe(struct cfs_store *st, size_t *deleted);

#endif
