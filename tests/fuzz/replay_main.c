/*
 * Replay driver shared by the fuzz harnesses in the normal build: runs
 * LLVMFuzzerTestOneInput over every file named on the command line (a
 * seed corpus), as libFuzzer would. Files that cannot be read, or are
 * larger than REPLAY_INPUT_MAX, are skipped.
 *
 * Replay by hand: build the harness with this file and pass files.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/util.h"

#define REPLAY_INPUT_MAX (1 << 26)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		char *buf = NULL;
		size_t len = 0;

		if (cfs_read_file_at(&buf, &len, AT_FDCWD, argv[i],
				     REPLAY_INPUT_MAX) == 0)
			LLVMFuzzerTestOneInput((const uint8_t *)buf, len);
		free(buf);
	}
	return 0;
}
