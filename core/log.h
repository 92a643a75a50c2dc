/*
 * Log sink: stderr by default; syslog or a file for a daemonized mount.
 * Never log key material or passphrases.
 */
#ifndef CFS_CORE_LOG_H
#define CFS_CORE_LOG_H

#include <stdint.h>

enum cfs_log_level {
	CFS_LOG_ERROR = 0,
	CFS_LOG_WARN = 1,
	CFS_LOG_INFO = 2,
	CFS_LOG_DEBUG = 3,
};

void cfs_log(enum cfs_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void cfs_log_set_level(enum cfs_log_level level);
/* Sends logs to syslog (ident) instead of stderr. */
void cfs_log_to_syslog(const char *ident);
/* Appends logs to path; returns 0 or a CFS_E* code. */
int cfs_log_to_file(const char *path);
/* Silences everything (tests, --quiet). */
void cfs_log_quiet(void);
/*
 * Logs how long a phase took ("timing: WHAT PHASE SECONDS", since *t0, a
 * cfs_monotonic_ms() value) and restarts the clock: at debug level, or as
 * a warning with CONTEXTFS_TIMING=1 in the environment (the benchmarks in
 * tests/bench use it).
 */
void cfs_log_timing(const char *what, const char *phase, int64_t *t0);

#define cfs_error_log(...) cfs_log(CFS_LOG_ERROR, __VA_ARGS__)
#define cfs_warn(...) cfs_log(CFS_LOG_WARN, __VA_ARGS__)
#define cfs_info(...) cfs_log(CFS_LOG_INFO, __VA_ARGS__)
#define cfs_debug(...) cfs_log(CFS_LOG_DEBUG, __VA_ARGS__)

#endif
