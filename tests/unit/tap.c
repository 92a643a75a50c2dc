/*
 * TAP output helpers shared by the unit tests.
 */
#include "tests/unit/tap.h"
#include "core/util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int tap_count;
static int tap_failed;

void tap_ok(bool cond, const char *fmt, ...)
{
	va_list ap;

	tap_count++;
	if (!cond)
		tap_failed++;
	printf("%sok %d - ", cond ? "" : "not ", tap_count);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

void tap_diag(const char *fmt, ...)
{
	va_list ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

void tap_skip(const char *why)
{
	tap_count++;
	printf("ok %d # SKIP %s\n", tap_count, why);
}

int tap_done(void)
{
	printf("1..%d\n", tap_count);
	if (tap_failed)
		printf("# %d of %d failed\n", tap_failed, tap_count);
	return tap_failed ? 1 : 0;
}

char *tap_tmpdir(const char *name)
{
	const char *base = getenv("CFS_TEST_TMP");
	char *dir = NULL;
	char prefix[128];

	snprintf(prefix, sizeof(prefix), "%s-", name);
	if (cfs_mkdtemp(&dir, base, prefix) != 0) {
		printf("Bail out! cannot create a temporary directory\n");
		exit(1);
	}
	return dir;
}
