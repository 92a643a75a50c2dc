/*
 * Error model: fallible functions return 0 or a negative CFS_E* code; the
 * human-readable detail lives in a thread-local record (FUSE serves requests
 * on many threads), set with cfs_error_set() and read with cfs_error_last().
 * Messages say what happened and what to do about it.
 */
#ifndef CFS_CORE_ERROR_H
#define CFS_CORE_ERROR_H

#include <stdarg.h>

enum cfs_error_code {
	CFS_OK = 0,
	CFS_ERROR = -1,       /* generic failure */
	CFS_ENOTFOUND = -2,   /* object, context or generation missing */
	CFS_EEXISTS = -3,     /* create-only write found an object */
	CFS_ECONFLICT = -4,   /* lost a compare-and-swap */
	CFS_ELOCKED = -5,     /* lock held by another owner / lock lost */
	CFS_EAUTH = -6,       /* wrong key, tampered ciphertext or tag */
	CFS_ECORRUPT = -7,    /* unparseable or invalid JSON / metadata / data */
	CFS_EUNSAFE = -8,     /* rejected archive entry or unsafe path */
	CFS_EIO = -9,         /* local or storage I/O failure */
	CFS_EAGAIN = -10,     /* retryable transport failure */
	CFS_ETIMEDOUT = -11,  /* deadline passed */
	CFS_EINVAL = -12,     /* invalid argument from a user */
	CFS_ENOMEM = -13,     /* allocation failure */
	CFS_ENOSPC = -14,     /* local disk or store full */
	CFS_EUNSUPPORTED = -15, /* feature or format not supported */
	CFS_EKEY = -16,       /* key material missing or malformed */
	CFS_EPERM = -17,      /* permission denied */
	CFS_ECANCELED = -18,  /* operation canceled */
};

/* Records the detail for the calling thread and returns code. */
int cfs_error_set(int code, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
int cfs_error_vset(int code, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));

/*
 * Like cfs_error_set(), but the message is "<what>: <strerror(errnum)>" and
 * the code is derived from errnum (ENOSPC -> CFS_ENOSPC, ENOENT ->
 * CFS_ENOTFOUND, EACCES/EPERM -> CFS_EPERM, else CFS_EIO).
 */
int cfs_error_errno(int errnum, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Prefixes the current message with "<prefix>: " keeping the code. */
void cfs_error_prefix(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

/* The calling thread's last message ("" if none) and code. */
const char *cfs_error_last(void);
int cfs_error_last_code(void);
void cfs_error_clear(void);

/* Short stable name of a code ("not-found", "locked", ...) for --json. */
const char *cfs_error_name(int code);

/* Maps a code to a positive errno for the FUSE boundary. */
int cfs_error_to_errno(int code);

#endif
