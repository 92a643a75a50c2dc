/*
 * The AWS shared credentials and config files, read as the AWS CLI and
 * SDKs read them, for `--store s3://...` when no credential variables are
 * set:
 *   AWS_SHARED_CREDENTIALS_FILE (default ~/.aws/credentials), section
 *     [PROFILE]: aws_access_key_id, aws_secret_access_key,
 *     aws_session_token;
 *   AWS_CONFIG_FILE (default ~/.aws/config), section [profile PROFILE]
 *     ([default] for the default profile): region, and the same three
 *     credential keys, which the CLI also accepts there;
 *   PROFILE = AWS_PROFILE, else "default".
 * Secrets are copied into sodium memory; the file text is wiped after
 * parsing.
 */
#ifndef CFS_TOOLS_AWS_FILES_H
#define CFS_TOOLS_AWS_FILES_H

#include <limits.h>
#include <stdbool.h>

struct aws_profile {
	const char *
		name; /* the profile looked up (points into environ or a literal) */
	bool named; /* AWS_PROFILE chose it (a missing one is then an error) */
	bool found; /* a section of that name exists in either file */
	char *access_key, *secret_key, *session_token; /* sodium memory */
	char *region; /* heap */
	char source[PATH_MAX]; /* the file the keys came from */
};

/*
 * Loads the profile. Missing files are not an error (found stays false);
 * an unreadable one, or one over 1 MiB, is.
 */
int aws_profile_load(struct aws_profile *p);
void aws_profile_clear(struct aws_profile *p);

#endif
