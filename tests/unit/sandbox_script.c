/*
 * sandbox_script: prints the script a session runs in the sandbox
 * (cfs_session_script), so that tests/integration/test_sandbox_scripts.py
 * can run it against hand-made bundles without a runtime.
 *
 *   sandbox_script unpack|unpack-stdin|pack|pack-split BUNDLE MOUNT POLICY_JSON [--keep-excluded]
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/session.h"

int main(int argc, char **argv)
{
	char *script;

	if (argc < 5 || argc > 6 ||
	    (argc == 6 && strcmp(argv[5], "--keep-excluded") != 0)) {
		fprintf(stderr,
			"usage: sandbox_script unpack|unpack-stdin|pack|pack-split BUNDLE MOUNT "
			"POLICY_JSON [--keep-excluded]\n");
		return 2;
	}
	script = cfs_session_script(argv[1], argv[2], argv[3], argv[4],
				    argc == 6);
	if (!script) {
		fprintf(stderr, "sandbox_script: unknown script %s\n", argv[1]);
		return 2;
	}
	fputs(script, stdout);
	free(script);
	return 0;
}
