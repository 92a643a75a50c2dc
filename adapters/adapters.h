/*
 * The runtime adapters (core/runtime.h contract): constructors and
 * provisioners. Each adapter owns its process or network code; the session
 * engine only sees struct cfs_runtime.
 */
#ifndef CFS_ADAPTERS_ADAPTERS_H
#define CFS_ADAPTERS_ADAPTERS_H

#include <stdbool.h>

#include "core/runtime.h"

enum cfs_local_mode {
	CFS_LOCAL_AUTO = 0, /* bubblewrap when it works, else plain */
	CFS_LOCAL_BWRAP, /* bubblewrap or fail */
	CFS_LOCAL_PLAIN, /* a plain private directory, no isolation */
};

struct cfs_local_opts {
	enum cfs_local_mode mode;
	const char *base_dir; /* parent of the sandbox root; NULL = $TMPDIR */
	bool share_net; /* bubblewrap: keep the host network (default off) */
};

/*
 * A disposable sandbox on this machine: a private (0700) root directory
 * created under base_dir. With bubblewrap it becomes the sandbox's "/"
 * (host /usr read-only, own /tmp, /proc, /dev, no network, own pid
 * namespace, contexts under /mnt/contextsdk); without it, commands run
 * with bash in that directory (paths are host paths inside it). A timeout
 * kills the whole process group (and the pid namespace). dispose() and
 * kill() remove the root directory. opts may be NULL.
 */
int cfs_local_runtime_new(struct cfs_runtime **out,
			  const struct cfs_local_opts *opts);

/* The local provisioner: a fresh sandbox per create, removed by destroy. */
int cfs_local_provisioner_new(struct cfs_provisioner **out,
			      const struct cfs_local_opts *opts);

/* True when bubblewrap is installed and can create a sandbox here. */
bool cfs_local_bwrap_usable(void);

#endif
