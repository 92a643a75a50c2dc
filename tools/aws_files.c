/* See aws_files.h. */
#include "tools/aws_files.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "core/util.h"

#define AWS_FILE_MAX (1u << 20)

/* Reads path into *text (NUL-terminated, sodium memory); 0 and NULL when
 * it does not exist. */
static int read_file(char **text, const char *path)
{
	struct stat sb;
	size_t got = 0;
	int fd, rc;

	*text = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		if (errno == ENOENT || errno == ENOTDIR)
			return 0;
		return cfs_error_errno(errno, "cannot read %s", path);
	}
	if (fstat(fd, &sb) < 0 || !S_ISREG(sb.st_mode) ||
	    (uint64_t)sb.st_size > AWS_FILE_MAX) {
		close(fd);
		return cfs_error_set(CFS_EINVAL,
				     "%s is not a regular file of at most "
				     "1 MiB",
				     path);
	}
	*text = sodium_malloc((size_t)sb.st_size + 1);
	if (!*text) {
		close(fd);
		return cfs_error_set(CFS_ENOMEM, "out of secure memory");
	}
	rc = cfs_read_all(fd, *text, (size_t)sb.st_size, &got);
	close(fd);
	if (rc) {
		sodium_free(*text);
		*text = NULL;
		return rc;
	}
	(*text)[got] = '\0';
	return 0;
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/* Copies a secret, replacing what *dst held. */
static int set_secret(char **dst, const char *v)
{
	char *n = cfs_secret_strdup(v);

	if (!n)
		return CFS_ENOMEM;
	cfs_secret_free(*dst);
	*dst = n;
	return 0;
}

/*
 * Applies the keys of section `want` in text (modified in place). Indented
 * lines belong to a nested block (`s3 =` ...) and are skipped.
 */
static int parse(struct aws_profile *p, char *text, const char *want,
		 const char *path, bool config)
{
	char *save = NULL, *line;
	bool in = false;
	int rc = 0;

	for (line = strtok_r(text, "\n", &save); line && !rc;
	     line = strtok_r(NULL, "\n", &save)) {
		bool indented = line[0] == ' ' || line[0] == '\t';
		char *l = trim(line), *eq, *k, *v;

		if (!*l || *l == '#' || *l == ';')
			continue;
		if (*l == '[') {
			char *end = strchr(l, ']');

			if (!end)
				continue;
			*end = '\0';
			in = strcmp(trim(l + 1), want) == 0;
			if (in)
				p->found = true;
			continue;
		}
		if (!in || indented || !(eq = strchr(l, '=')))
			continue;
		*eq = '\0';
		k = trim(l);
		v = trim(eq + 1);
		if (!*v)
			continue;
		if (strcmp(k, "aws_access_key_id") == 0) {
			rc = set_secret(&p->access_key, v);
			snprintf(p->source, sizeof(p->source), "%s", path);
		} else if (strcmp(k, "aws_secret_access_key") == 0) {
			rc = set_secret(&p->secret_key, v);
		} else if (strcmp(k, "aws_session_token") == 0) {
			rc = set_secret(&p->session_token, v);
		} else if (config && strcmp(k, "region") == 0) {
			free(p->region);
			p->region = strdup(v);
			if (!p->region)
				rc = cfs_error_set(CFS_ENOMEM, "out of memory");
		}
	}
	return rc;
}

/* $var, else ~/.aws/<name> (heap). */
static char *file_path(const char *var, const char *name)
{
	const char *v = getenv(var), *home;

	if (v && *v)
		return strdup(v);
	home = getenv("HOME");
	if (!home || !*home)
		return NULL;
	return cfs_asprintf("%s/.aws/%s", home, name);
}

static int load_one(struct aws_profile *p, const char *var, const char *name,
		    bool config)
{
	char *path = file_path(var, name), *text = NULL, *section = NULL;
	int rc;

	if (!path)
		return 0;
	rc = read_file(&text, path);
	if (!rc && text) {
		section = config && strcmp(p->name, "default") != 0
				  ? cfs_asprintf("profile %s", p->name)
				  : strdup(p->name);
		rc = section ? parse(p, text, section, path, config)
			     : cfs_error_set(CFS_ENOMEM, "out of memory");
	}
	if (text)
		sodium_free(text); /* zeroes */
	free(section);
	free(path);
	return rc;
}

int aws_profile_load(struct aws_profile *p)
{
	const char *name = getenv("AWS_PROFILE");
	int rc;

	memset(p, 0, sizeof(*p));
	p->named = name && *name;
	p->name = p->named ? name : "default";
	/* the credentials file wins over keys in the config file */
	rc = load_one(p, "AWS_CONFIG_FILE", "config", true);
	if (!rc)
		rc = load_one(p, "AWS_SHARED_CREDENTIALS_FILE", "credentials",
			      false);
	if (rc)
		aws_profile_clear(p);
	return rc;
}

void aws_profile_clear(struct aws_profile *p)
{
	cfs_secret_free(p->access_key);
	cfs_secret_free(p->secret_key);
	cfs_secret_free(p->session_token);
	free(p->region);
	memset(p, 0, sizeof(*p));
}
