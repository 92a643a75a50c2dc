/*
 * The runtime adapters (core/runtime.h contract): constructors and
 * provisioners. Each adapter owns its process or network code; the session
 * engine only sees struct cfs_runtime.
 */
#ifndef CFS_ADAPTERS_ADAPTERS_H
#define CFS_ADAPTERS_ADAPTERS_H

#include <stdbool.h>
#include <stdint.h>

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

/*
 * Reopens the sandbox root a cfs_local_runtime_new() of an earlier process
 * created and kept (not disposed): contextfs-push --keep. The root must be
 * a private directory of this user; it runs in the mode it was made in
 * (opts->mode only refuses a mismatch). dispose() removes it.
 */
int cfs_local_runtime_open(struct cfs_runtime **out,
			   const struct cfs_local_opts *opts, const char *root);

/* The local provisioner: a fresh sandbox per create, removed by destroy. */
int cfs_local_provisioner_new(struct cfs_provisioner **out,
			      const struct cfs_local_opts *opts);

struct cfs_ssh_opts {
	const char *host; /* required */
	const char *user; /* NULL = ssh's default */
	int port; /* 0 = 22 / ssh's default */
	const char *identity_file; /* NULL = ssh's defaults */
	/* NULL = ~/.ssh/known_hosts; host keys are always verified */
	const char *known_hosts_file;
	bool accept_new_host_key; /* StrictHostKeyChecking=accept-new */
	int connect_timeout_s; /* 0 = 10 */
	/* Remote base for tmp/ and mnt/; NULL = $HOME/.contextsdk */
	const char *remote_dir;
};

/*
 * A host reached with the OpenSSH client (see adapters/ssh.c). Connects
 * once to prepare the remote directory, so a bad host, key or host key
 * fails here (CFS_EIO with ssh's message).
 */
int cfs_ssh_runtime_new(struct cfs_runtime **out,
			const struct cfs_ssh_opts *opts);

struct cfs_e2b_opts {
	const char *template_id; /* NULL = "base" */
	int64_t lifetime_ms; /* sandbox lifetime; 0 = 30 min */
};

/*
 * An E2B sandbox (adapters/e2b.c), created now and killed by dispose.
 * Reads E2B_API_KEY (required; CFS_EKEY when unset), E2B_DOMAIN,
 * E2B_API_URL and E2B_SANDBOX_URL (endpoint overrides). A rejected key is
 * CFS_EAUTH. opts may be NULL.
 */
int cfs_e2b_runtime_new(struct cfs_runtime **out,
			const struct cfs_e2b_opts *opts,
			const char *context_id);
/* A fresh sandbox per create, killed by destroy; opts is borrowed. */
int cfs_e2b_provisioner_new(struct cfs_provisioner **out,
			    const struct cfs_e2b_opts *opts);

struct cfs_vercel_opts {
	const char *runtime; /* image: NULL = "python3.13" */
	int64_t lifetime_ms; /* session lifetime; 0 = 45 min */
};

/*
 * A Vercel Sandbox session (adapters/vercel.c), created now and stopped
 * by dispose. Reads VERCEL_TOKEN, VERCEL_TEAM_ID, VERCEL_PROJECT_ID (all
 * three, or VERCEL_OIDC_TOKEN alone) and VERCEL_SANDBOX_API_URL (endpoint
 * override). opts may be NULL.
 */
int cfs_vercel_runtime_new(struct cfs_runtime **out,
			   const struct cfs_vercel_opts *opts,
			   const char *context_id);
/* A fresh sandbox per create, stopped by destroy; opts is borrowed. */
int cfs_vercel_provisioner_new(struct cfs_provisioner **out,
			       const struct cfs_vercel_opts *opts);

/* True when bubblewrap is installed and can create a sandbox here. */
bool cfs_local_bwrap_usable(void);

#endif
