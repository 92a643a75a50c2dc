/*
 * Log sink implementation: one mutex-protected destination.
 */
#include "core/log.h"
#include "core/error.h"
#include "core/util.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static enum cfs_log_level log_level = CFS_LOG_WARN;
static int log_syslog;          /* protected by log_lock */
static int log_off;             /* protected by log_lock */
static FILE *log_file;          /* protected by log_lock */

static const char *level_name(enum cfs_log_level l)
{
	switch (l) {
	case CFS_LOG_ERROR:
		return "error";
	case CFS_LOG_WARN:
		return "warning";
	case CFS_LOG_INFO:
		return "info";
	default:
		return "debug";
	}
}

void cfs_log(enum cfs_log_level level, const char *fmt, ...)
{
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	char msg[2048];
	va_list ap;

	if (level > log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&log_lock);
	if (log_off) {
		/* nothing */
	} else if (log_syslog) {
		syslog(prio[level], "%s", msg);
	} else if (log_file) {
		char ts[40];

		cfs_iso8601_ms(ts, sizeof(ts), cfs_now_ms());
		fprintf(log_file, "%s contextfs %s: %s\n", ts,
			level_name(level), msg);
		fflush(log_file);
	} else {
		fprintf(stderr, "contextfs: %s: %s\n", level_name(level), msg);
	}
	pthread_mutex_unlock(&log_lock);
}

void cfs_log_set_level(enum cfs_log_level level)
{
	log_level = level;
}

void cfs_log_to_syslog(const char *ident)
{
	pthread_mutex_lock(&log_lock);
	openlog(ident, LOG_PID, LOG_DAEMON);
	log_syslog = 1;
	pthread_mutex_unlock(&log_lock);
}

int cfs_log_to_file(const char *path)
{
	FILE *f = fopen(path, "ae");

	if (!f)
		return cfs_error_errno(errno, "open log file %s", path);
	pthread_mutex_lock(&log_lock);
	if (log_file)
		fclose(log_file);
	log_file = f;
	pthread_mutex_unlock(&log_lock);
	return 0;
}

void cfs_log_quiet(void)
{
	pthread_mutex_lock(&log_lock);
	log_off = 1;
	pthread_mutex_unlock(&log_lock);
}

void cfs_log_timing(const char *what, const char *phase, int64_t *t0)
{
	static atomic_int on = -1;
	int64_t now = cfs_monotonic_ms();

	if (on < 0) {
		const char *e = getenv("CONTEXTFS_TIMING");

		on = e && strcmp(e, "1") == 0;
	}
	cfs_log(on ? CFS_LOG_WARN : CFS_LOG_DEBUG, "timing: %s %s %.3f s",
		what, phase, (double)(now - *t0) / 1000.0);
	*t0 = now;
}
