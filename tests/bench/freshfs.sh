# freshfs.sh: a freshly made ext4 for the benchmarks (sourced, not run).
#
# The root ext4 of these machines has no journal: creating files within
# ~30 s of mass deletions crawls through recently_deleted(), which would
# measure the disk's history instead of the tools. The benchmarks put their
# trees on a filesystem made for the run: ext4 with a journal, inode tables
# and journal initialised by mkfs (no lazy-init thread writing during the
# runs), on a loop device in direct-I/O mode (its pages are not cached
# twice). Needs root and mkfs.ext4 (e2fsprogs).

FRESH_LOOPDEV=

# fresh_fs_up IMG MNT SIZE_MIB: makes the sparse image IMG, mounts it on
# MNT (created if missing). Returns non-zero, with the reason on stderr,
# when it cannot (not root, no mkfs.ext4, no loop device).
fresh_fs_up() {
	local img=$1 mnt=$2 mib=$3
	if [ "$(id -u)" != 0 ]; then
		echo "a fresh filesystem needs root" >&2
		return 1
	fi
	if ! command -v mkfs.ext4 >/dev/null; then
		echo "mkfs.ext4 (e2fsprogs) is required for a fresh filesystem" >&2
		return 1
	fi
	rm -f "$img"
	truncate -s "${mib}M" "$img" &&
		mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$img" || return 1
	FRESH_LOOPDEV=$(losetup -f --show --direct-io=on "$img" 2>/dev/null ||
		losetup -f --show "$img") || { FRESH_LOOPDEV=; return 1; }
	mkdir -p "$mnt"
	if ! mount "$FRESH_LOOPDEV" "$mnt"; then
		losetup -d "$FRESH_LOOPDEV"
		FRESH_LOOPDEV=
		return 1
	fi
}

# fresh_fs_down IMG MNT: unmounts, detaches and removes the image; nothing
# when fresh_fs_up did not succeed.
fresh_fs_down() {
	[ -n "$FRESH_LOOPDEV" ] || return 0
	umount "$2" 2>/dev/null || umount -l "$2" 2>/dev/null || true
	losetup -d "$FRESH_LOOPDEV" 2>/dev/null || true
	FRESH_LOOPDEV=
	rm -f "$1"
}
