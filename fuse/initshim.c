/* See initshim.h: FUSE_HANDLE_KILLPRIV_V2 under libfuse 3.14. */
#include "fuse/initshim.h"

#include <linux/fuse.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

ssize_t cfs_initshim_read(struct cfs_initshim *s, int fd, void *buf, size_t len)
{
	ssize_t n = read(fd, buf, len);
	struct fuse_in_header ih;
	struct fuse_init_in ii;

	/* INIT is the first request and arrives before any thread starts */
	if (s->init_unique == 0 &&
	    n >= (ssize_t)(sizeof(ih) + offsetof(struct fuse_init_in, flags) +
			   sizeof(ii.flags))) {
		memcpy(&ih, buf, sizeof(ih));
		if (ih.opcode == FUSE_INIT) {
			memcpy(&ii.flags,
			       (const char *)buf + sizeof(ih) +
				       offsetof(struct fuse_init_in, flags),
			       sizeof(ii.flags));
			if (ii.flags & FUSE_HANDLE_KILLPRIV_V2) {
				s->offered = true;
				s->init_unique = ih.unique;
			}
		}
	}
	return n;
}

ssize_t cfs_initshim_writev(struct cfs_initshim *s, int fd, struct iovec *iov,
			    int count)
{

	if (s->init_unique && !s->granted && count >= 2 &&
	    iov[0].iov_len >= sizeof(struct fuse_out_header) &&
	    iov[1].iov_len >=
		    offsetof(struct fuse_init_out, flags) + sizeof(uint32_t)) {
		struct fuse_out_header oh;

		memcpy(&oh, iov[0].iov_base, sizeof(oh));
		if (oh.unique == s->init_unique && oh.error == 0) {
			char *p = (char *)iov[1].iov_base +
				  offsetof(struct fuse_init_out, flags);
			uint32_t flags;

			memcpy(&flags, p, sizeof(flags));
			flags |= FUSE_HANDLE_KILLPRIV_V2;
			memcpy(p, &flags, sizeof(flags));
			s->granted = true;
		}
	}
	return writev(fd, iov, count);
}
