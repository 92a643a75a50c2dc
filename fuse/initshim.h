/*
 * A shim under libfuse's reads and writes of /dev/fuse that asks the kernel
 * for FUSE_HANDLE_KILLPRIV_V2, which libfuse 3.14 cannot negotiate.
 *
 * Why: without it the kernel does not mark the superblock SB_NOSEC, so
 * every write(2) first asks the daemon for the security.capability xattr
 * (a full round trip: fio 4K random writes pay two requests each). With
 * it, the kernel leaves clearing setuid/setgid on write, truncate and chown
 * to the filesystem, which fuse/ops.c does (cfs_kill_suidgid).
 *
 * Only the INIT exchange is touched: the request's flags say whether the
 * kernel offers the feature, and the reply with the same unique id gets
 * the bit. Every other message passes through unchanged.
 */
#ifndef CFS_FUSE_INITSHIM_H
#define CFS_FUSE_INITSHIM_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

struct cfs_initshim {
	uint64_t init_unique; /* 0 = no INIT seen that offers the feature */
	bool offered; /* the kernel offered HANDLE_KILLPRIV_V2 */
	bool granted; /* and our INIT reply asked for it */
};

/* The bodies of struct fuse_custom_io's read and writev. */
ssize_t cfs_initshim_read(struct cfs_initshim *s, int fd, void *buf,
			  size_t len);
ssize_t cfs_initshim_writev(struct cfs_initshim *s, int fd, struct iovec *iov,
			    int count);

#endif
