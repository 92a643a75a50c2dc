/*
 * mount.contextfs / mount.fuse.contextfs: the mount(8) helper, the same
 * binary as contextfs under another name (meson installs the two symlinks
 * into -Dmount_helper_dir, default /sbin). mount(8) runs
 *
 *   /sbin/mount.fuse.contextfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]
 *
 * for `mount -t fuse.contextfs ID /mnt -o ...` and for an /etc/fstab line
 * `ID /mnt fuse.contextfs store=/srv/ctx,passphrase_file=/etc/k 0 0`.
 * The helper turns that into `contextfs mount SOURCE MOUNTPOINT -o ...`:
 *
 *   store=DIR           the store (else CONTEXTSDK_STORAGE_DIR, config, ...)
 *   passphrase_file=F   passphrase from F (0600, as --passphrase-file)
 *   keyfile=F           raw 32-byte hex key from F (0600)
 *   config=F            JSON config (as CONTEXTSDK_CONFIG)
 *
 * Key material never travels in argv: a keyfile is read here and handed
 * to the CLI's key resolution through this process's environment (which
 * it captures into sodium memory and wipes; nothing is exec'd with it).
 * Options only mount(8) or the VFS care about (defaults, noauto, user,
 * _netdev, nofail, x-*, comment=, atime and suid/dev/exec flags) are
 * dropped; everything else is a contextfs mount option.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "core/error.h"
#include "core/util.h"
#include "tools/cli.h"
#include "tools/mount_cli.h"

#define HELPER_OPTS_MAX 8192
#define HELPER_KEY_MAX 1024
#define HELPER_RAW_KEY_ENV "CONTEXTSDK_KEY_HEX"

static const char *const dropped[] = {
	"defaults", "auto",	  "noauto",	 "user",    "users",
	"nouser",   "owner",	  "group",	 "_netdev", "nofail",
	"relatime", "norelatime", "noatime",	 "atime",   "strictatime",
	"lazytime", "nodiratime", "diratime",	 "nosuid",  "suid",
	"nodev",    "dev",	  "noexec",	 "exec",    "async",
	"sync",	    "dirsync",	  "silent",	 "loud",    "nomand",
	"iversion", "noiversion", "nosymfollow",
};

bool cli_mount_helper_name(const char *argv0)
{
	const char *base = argv0 ? strrchr(argv0, '/') : NULL;

	base = base ? base + 1 : argv0;
	return base && (strcmp(base, "mount.contextfs") == 0 ||
			strcmp(base, "mount.fuse.contextfs") == 0 ||
			strcmp(base, "mount.fuse3.contextfs") == 0);
}

static bool is_dropped(const char *opt)
{
	if (strncmp(opt, "x-", 2) == 0 || strncmp(opt, "comment=", 8) == 0)
		return true;
	for (size_t i = 0; i < CFS_ARRAY_SIZE(dropped); i++)
		if (strcmp(opt, dropped[i]) == 0)
			return true;
	return false;
}

/*
 * Reads a raw hex key file into sodium memory: a regular file (or fifo)
 * nobody but the owner can read or write, at most HELPER_KEY_MAX bytes,
 * surrounding whitespace ignored by the key parser.
 */
static int read_keyfile(const char *path, char **out)
{
	struct stat st;
	char *buf = NULL;
	size_t len = 0;
	int fd, rc = 0;

	*out = NULL;
	rc = cli_secret_file_open(&fd, &st, "keyfile", path);
	if (rc)
		return rc;
	if (st.st_mode & (S_IRWXG | S_IRWXO)) {
		rc = cfs_error_set(CFS_EKEY,
				   "keyfile %s is accessible by others; chmod "
				   "600 it",
				   path);
		goto out;
	}
	buf = sodium_malloc(HELPER_KEY_MAX + 1);
	if (!buf) {
		rc = cfs_error_set(CFS_ENOMEM, "out of secure memory");
		goto out;
	}
	for (;;) {
		ssize_t k = read(fd, buf + len, HELPER_KEY_MAX + 1 - len);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			rc = cfs_error_errno(errno, "cannot read %s", path);
			goto out;
		}
		if (k == 0)
			break;
		len += (size_t)k;
		if (len > HELPER_KEY_MAX) {
			rc = cfs_error_set(CFS_EKEY,
					   "keyfile %s is longer than %d bytes",
					   path, HELPER_KEY_MAX);
			goto out;
		}
	}
	buf[len] = '\0';
	if (len == 0 || memchr(buf, '\0', len)) {
		rc = cfs_error_set(
			CFS_EKEY, "keyfile %s is empty or not a hex key", path);
		goto out;
	}
	*out = buf;
	buf = NULL;
out:
	if (buf)
		sodium_free(buf);
	close(fd);
	return rc;
}

static int usage(void)
{
	fprintf(stderr,
		"usage: mount.contextfs ID[@GEN] MOUNTPOINT [-o OPTIONS]\n"
		"  (run by mount -t fuse.contextfs and /etc/fstab)\n"
		"  helper options: store=DIR, passphrase_file=FILE, "
		"keyfile=FILE, config=FILE;\n"
		"  the rest are contextfs mount options (see contextfs mount "
		"--help).\n");
	return CLI_EXIT_USAGE;
}

static int fail(int rc)
{
	fprintf(stderr, "mount.contextfs: %s\n", cfs_error_last());
	return cli_exit_code(rc);
}

/* Replaces *dst with a copy of v. */
static int take(char **dst, const char *v)
{
	char *d = strdup(v);
	if (!d)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	free(*dst);
	*dst = d;
	return 0;
}

/* Sorts one -o argument into helper options and contextfs options. */
static int parse_opts(const char *arg, struct cfs_buf *opts, char **store,
		      char **passfile, char **keyfile, char **config)
{
	char *copy, *save = NULL;
	int rc = 0;

	if (strlen(arg) > HELPER_OPTS_MAX)
		return cfs_error_set(CFS_EINVAL,
				     "mount options longer than %d bytes",
				     HELPER_OPTS_MAX);
	copy = strdup(arg);
	if (!copy)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	for (char *t = strtok_r(copy, ",", &save); t && rc == 0;
	     t = strtok_r(NULL, ",", &save)) {
		if (is_dropped(t))
			continue;
		if (strncmp(t, "store=", 6) == 0)
			rc = take(store, t + 6);
		else if (strncmp(t, "passphrase_file=", 16) == 0)
			rc = take(passfile, t + 16);
		else if (strncmp(t, "keyfile=", 8) == 0)
			rc = take(keyfile, t + 8);
		else if (strncmp(t, "config=", 7) == 0)
			rc = take(config, t + 7);
		else if ((rc = opts->len ? cfs_buf_puts(opts, ",") : 0) == 0)
			rc = cfs_buf_puts(opts, t);
	}
	free(copy);
	return rc;
}

int cli_mount_helper_main(int argc, char **argv)
{
	const char *pos[2] = {NULL, NULL};
	char *store = NULL, *passfile = NULL, *keyfile = NULL, *config = NULL;
	struct cfs_buf opts = CFS_BUF_INIT;
	char *raw = NULL;
	char *nargv[16];
	int npos = 0, nargc = 0, rc = 0, code;
	bool fake = false;

	if (cfs_init() != 0)
		return fail(cfs_error_last_code());
	for (int i = 1; i < argc && rc == 0; i++) {
		const char *a = argv[i];
		if (strcmp(a, "-o") == 0 && i + 1 < argc) {
			rc = parse_opts(argv[++i], &opts, &store, &passfile,
					&keyfile, &config);
		} else if (strncmp(a, "-o", 2) == 0 && a[2]) {
			rc = parse_opts(a + 2, &opts, &store, &passfile,
					&keyfile, &config);
		} else if (strcmp(a, "-f") == 0) {
			fake = true;
		} else if (strcmp(a, "-n") == 0 || strcmp(a, "-s") == 0 ||
			   strcmp(a, "-v") == 0) {
			/* no mtab; sloppy; verbose: nothing to do */
		} else if (strcmp(a, "-t") == 0 && i + 1 < argc) {
			i++; /* the type: we know it */
		} else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			code = usage();
			goto done;
		} else if (a[0] == '-') {
			rc = cfs_error_set(CFS_EINVAL,
					   "unsupported option %s (see "
					   "mount.contextfs --help)",
					   a);
		} else if (npos < 2) {
			pos[npos++] = a;
		} else {
			rc = cfs_error_set(CFS_EINVAL, "too many arguments");
		}
	}
	if (rc)
		goto out;
	if (npos != 2) {
		code = usage();
		goto done;
	}
	if (config && setenv("CONTEXTSDK_CONFIG", config, 1) != 0) {
		rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		goto out;
	}
	if (keyfile) {
		rc = read_keyfile(keyfile, &raw);
		if (rc)
			goto out;
		/* The CLI captures it into sodium memory and wipes environ. */
		if (setenv(HELPER_RAW_KEY_ENV, raw, 1) != 0)
			rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		sodium_free(raw);
		if (rc)
			goto out;
	}
	if (fake) {
		code = 0; /* mount -f: check the options, mount nothing */
		goto done;
	}
	nargv[nargc++] = argv[0];
	nargv[nargc++] =
		"--quiet"; /* mount(8) helpers say nothing on success */
	nargv[nargc++] = "mount";
	nargv[nargc++] = (char *)pos[0];
	nargv[nargc++] = (char *)pos[1];
	if (opts.len) {
		nargv[nargc++] = "-o";
		nargv[nargc++] = opts.ptr;
	}
	if (store) {
		nargv[nargc++] = "--store";
		nargv[nargc++] = store;
	}
	if (passfile) {
		nargv[nargc++] = "--passphrase-file";
		nargv[nargc++] = passfile;
	}
	nargv[nargc] = NULL;
	code = cli_main(nargc, nargv);
	goto done;
out:
	code = fail(rc);
done:
	if (getenv(HELPER_RAW_KEY_ENV))
		unsetenv(HELPER_RAW_KEY_ENV);
	cfs_buf_free(&opts);
	free(store);
	free(passfile);
	free(keyfile);
	free(config);
	return code;
}
