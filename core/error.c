/*
 * Thread-local error records and the code tables that map CFS_E* codes to
 * names and errnos.
 */
#include "core/error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#define CFS_ERROR_MAX 1024

static __thread char err_msg[CFS_ERROR_MAX];
static __thread int err_code;

int cfs_error_vset(int code, const char *fmt, va_list ap)
{
	vsnprintf(err_msg, sizeof(err_msg), fmt, ap);
	err_code = code;
	return code;
}

int cfs_error_set(int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	cfs_error_vset(code, fmt, ap);
	va_end(ap);
	return code;
}

static int code_from_errno(int errnum)
{
	switch (errnum) {
	case ENOSPC:
	case EDQUOT:
		return CFS_ENOSPC;
	case ENOENT:
		return CFS_ENOTFOUND;
	case EEXIST:
		return CFS_EEXISTS;
	case EACCES:
	case EPERM:
	case EROFS:
		return CFS_EPERM;
	case ENOMEM:
		return CFS_ENOMEM;
	case ETIMEDOUT:
		return CFS_ETIMEDOUT;
	default:
		return CFS_EIO;
	}
}

int cfs_error_errno(int errnum, const char *fmt, ...)
{
	char what[CFS_ERROR_MAX / 2];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(what, sizeof(what), fmt, ap);
	va_end(ap);
	return cfs_error_set(code_from_errno(errnum), "%s: %s", what,
			     strerror(errnum));
}

void cfs_error_prefix(const char *fmt, ...)
{
	char prefix[CFS_ERROR_MAX / 2];
	char old[CFS_ERROR_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, err_msg, sizeof(old));
	snprintf(err_msg, sizeof(err_msg), "%.500s: %.500s", prefix, old);
}

const char *cfs_error_last(void)
{
	return err_msg;
}

int cfs_error_last_code(void)
{
	return err_code;
}

void cfs_error_clear(void)
{
	err_msg[0] = '\0';
	err_code = 0;
}

const char *cfs_error_name(int code)
{
	switch (code) {
	case CFS_OK:
		return "ok";
	case CFS_ENOTFOUND:
		return "not-found";
	case CFS_EEXISTS:
		return "exists";
	case CFS_ECONFLICT:
		return "conflict";
	case CFS_ELOCKED:
		return "locked";
	case CFS_EAUTH:
		return "authentication";
	case CFS_ECORRUPT:
		return "corrupt";
	case CFS_EUNSAFE:
		return "unsafe";
	case CFS_EIO:
		return "io";
	case CFS_EAGAIN:
		return "again";
	case CFS_ETIMEDOUT:
		return "timeout";
	case CFS_EINVAL:
		return "invalid";
	case CFS_ENOMEM:
		return "nomem";
	case CFS_ENOSPC:
		return "nospace";
	case CFS_EUNSUPPORTED:
		return "unsupported";
	case CFS_EKEY:
		return "key";
	case CFS_EPERM:
		return "permission";
	case CFS_ECANCELED:
		return "canceled";
	default:
		return "error";
	}
}

int cfs_error_to_errno(int code)
{
	switch (code) {
	case CFS_OK:
		return 0;
	case CFS_ENOTFOUND:
		return ENOENT;
	case CFS_EEXISTS:
		return EEXIST;
	case CFS_ECONFLICT:
	case CFS_ELOCKED:
		return EROFS;
	case CFS_EAUTH:
	case CFS_ECORRUPT:
	case CFS_EIO:
		return EIO;
	case CFS_EUNSAFE:
	case CFS_EPERM:
		return EACCES;
	case CFS_EAGAIN:
		return EAGAIN;
	case CFS_ETIMEDOUT:
		return ETIMEDOUT;
	case CFS_EINVAL:
	case CFS_EKEY:
		return EINVAL;
	case CFS_ENOMEM:
		return ENOMEM;
	case CFS_ENOSPC:
		return ENOSPC;
	case CFS_EUNSUPPORTED:
		return EOPNOTSUPP;
	case CFS_ECANCELED:
		return ECANCELED;
	default:
		return EIO;
	}
}
