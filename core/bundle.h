/*
 * Bundles (REFERENCE.md §5.1, §5.5): a context tree as a zstd-compressed
 * PAX tar, streamed in both directions (nothing holds a whole bundle in
 * memory), with the reference's member order, persistence policy and
 * archive safety rules. Unpacking creates every member relative to a
 * directory fd, one path component at a time with O_NOFOLLOW, so no member
 * can land outside the destination.
 */
#ifndef CFS_CORE_BUNDLE_H
#define CFS_CORE_BUNDLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/policy.h"

/* Sink: 0 or a negative CFS code (which aborts the pack). */
typedef int (*cfs_write_fn)(const void *buf, size_t len, void *payload);
/* Source: bytes read, 0 at EOF, or a negative CFS code. */
typedef ssize_t (*cfs_read_fn)(void *buf, size_t len, void *payload);

/* Reference caps (§5.5). */
#define CFS_BUNDLE_MAX_ENTRIES 1000000ULL
#define CFS_BUNDLE_MAX_BYTES 68719476736ULL /* 64 GiB of member data */
/* Directory nesting limit for pack and unpack (one fd per level). */
#define CFS_BUNDLE_MAX_DEPTH 256
/* Longest member name / link target accepted. */
#define CFS_BUNDLE_MAX_NAME 4096
/* zstd window cap on decompression: 2^24 = 16 MiB. */
#define CFS_BUNDLE_WINDOW_LOG_MAX 24
#define CFS_BUNDLE_ZSTD_LEVEL 3

/*
 * A member given in memory, packed in place of a same-named file on disk
 * (e.g. .contextsdk/index.json). path must lie under one of the packed
 * items (.contextsdk, contextsdk.json or a policy root); directories it
 * needs that are missing on disk are added (mode 0755, the member's mtime).
 */
struct cfs_bundle_member {
	const char *path;
	const void *data; /* NULL with len > 0: read len bytes of fd */
	size_t len;
	mode_t mode; /* permission bits */
	int64_t mtime; /* seconds since the epoch */
	int fd; /* with data NULL: the contents, read from offset 0 */
};

struct cfs_bundle_stats {
	uint64_t entries; /* tar members */
	uint64_t files; /* regular files (hard links excluded) */
	uint64_t bytes; /* member data bytes (header sizes) */
	uint64_t tar_bytes; /* uncompressed tar stream bytes */
	uint64_t compressed_bytes; /* zstd bytes written / read */
};

/*
 * Packs the context tree under rootfd into sink as tar.zst (PAX, level 3,
 * multi-threaded when libzstd supports it). Members, root-relative: the
 * directory tree of ".contextsdk", "contextsdk.json", then each policy root
 * in policy order (duplicates, missing and excluded items skipped), each
 * directory before its children, children in byte order of their names.
 * Excluded paths drop their subtree; symlinks are stored as symlinks (those
 * whose target is absolute or has a ".." segment are dropped); a regular
 * file seen again through another hard link is stored as a hard link;
 * sockets, FIFOs and devices are dropped. Permission bits and mtimes (ns)
 * are kept; owners are written as uid/gid 0 without names (the reference's
 * unpack ignores ownership). Nothing is followed: every open is relative to
 * the parent's fd with O_NOFOLLOW.
 *
 * If none of the candidate items exists (and extra is empty) ->
 * CFS_ENOTFOUND before anything is written. A regular file that shrinks
 * while it is read -> CFS_EIO (the bundle would be inconsistent). stats may
 * be NULL; policy NULL means the default policy.
 */
int cfs_bundle_pack(int rootfd, const struct cfs_policy *policy,
		    const struct cfs_bundle_member *extra, size_t nextra,
		    cfs_write_fn sink, void *payload,
		    struct cfs_bundle_stats *stats);

/*
 * cfs_bundle_pack() of the head items only (".contextsdk" and
 * "contextsdk.json", with extra members below them) as one complete zstd
 * frame holding whole tar members and no end-of-archive blocks: the start
 * of a bundle whose policy roots follow as an already compressed tail
 * (struct cfs_unpack_tail). Writes a frame even when nothing exists.
 */
int cfs_bundle_pack_head(int rootfd, const struct cfs_bundle_member *extra,
			 size_t nextra, cfs_write_fn sink, void *payload,
			 struct cfs_bundle_stats *stats);

/*
 * A stream that may carry its policy roots as a separately compressed
 * tail (cfs_unpack_opts.tail): the head members (".contextsdk",
 * "contextsdk.json" and what lies below them) in the first zstd frame,
 * every other member in the frames after it. A sandbox packs a save that
 * way, so a commit can store the tail's compressed bytes as they came
 * (cfs_bundle_pack_head) instead of packing and compressing the roots
 * again.
 */
struct cfs_unpack_tail {
	const struct cfs_policy *policy; /* in: roots and excludes */
	/*
	 * out, after a successful unpack: ok when the first zstd frame ends
	 * exactly where the first member outside the head begins, at least
	 * one such member follows, and every one of them is what packing the
	 * extracted tree would write again: under a policy root, neither
	 * excluded nor below an excluded directory, no set-id or sticky
	 * bits, hard links only to files under the roots. offset is where
	 * the tail begins in the compressed stream; why says what failed.
	 */
	bool ok;
	uint64_t offset;
	const char *why;
	/*
	 * out, with cfs_unpack_opts.list_tail: the roots were listed (to
	 * member) instead of extracted. With ok false the caller must unpack
	 * the stream again to have them.
	 */
	bool listed;
};

/*
 * Called for each regular file extracted, with its descriptor still open
 * (mode and mtime set) and the sha256 of the data written.
 */
typedef void (*cfs_file_hashed_fn)(void *payload, int fd,
				   const char sha256[65]);

/*
 * One member as a validate_only pass sees it (cfs_unpack_opts.member), in
 * archive order, after it passed every check: what extraction would have
 * made of it, without writing anything.
 */
struct cfs_member_info {
	const char *path; /* normalised: no trailing '/' */
	mode_t type; /* S_IFREG, S_IFDIR or S_IFLNK */
	mode_t perm; /* permission bits extraction keeps (set-id dropped) */
	int64_t size; /* a regular file's data bytes; 0 for a hard link */
	struct timespec mtime;
	const char *link; /* symlink target; hard link: the linked member */
	bool hardlink;
	const char
		*sha256; /* regular file with its data: the hash; else NULL */
};

/* 0 or a negative CFS code, which stops the unpack with that error. */
typedef int (*cfs_member_fn)(void *payload, const struct cfs_member_info *m);

struct cfs_unpack_opts {
	uint64_t max_entries; /* 0 = CFS_BUNDLE_MAX_ENTRIES */
	uint64_t max_bytes; /* 0 = CFS_BUNDLE_MAX_BYTES */
	bool validate_only; /* read and check everything, write nothing */
	/*
	 * validate_only: the data of the regular-file member named
	 * capture_path (e.g. ".contextsdk/index.json"), whatever its size,
	 * is written to capture_fd and *captured (optional) set true, so a
	 * caller can keep one member while it checks; a second member of
	 * that name is not captured when captured is given.
	 */
	const char *capture_path;
	int capture_fd;
	bool *captured;
	/* optional out: the error of a failed write to capture_fd (a local
	 * failure, e.g. a full disk, not a damaged archive); left alone
	 * otherwise */
	int *capture_failed;
	/* validate_only: each member, its data hashed (optional) */
	cfs_member_fn member;
	void *member_payload;
	struct cfs_unpack_tail *tail; /* optional (not with validate_only) */
	/*
	 * With tail and member: from the first member of the roots' frame on,
	 * members are checked as validate_only checks them and reported to
	 * member (data hashed) instead of being extracted; once the tail is
	 * refused, the rest is only read (tail->listed says this happened).
	 */
	bool list_tail;
	cfs_file_hashed_fn file_hashed; /* optional (not with validate_only) */
	void *hash_payload;
};

/*
 * Reads a tar.zst bundle from source and extracts it into destfd (which
 * should be empty: existing non-directories at member paths are replaced,
 * existing directories reused). Rules, in the reference's order per
 * member:
 *   - more than max_entries members -> CFS_EUNSAFE "archive exceeds the N
 *     entry limit"; summed member sizes above max_bytes -> CFS_EUNSAFE
 *     "archive exceeds the N byte decompressed limit" (checked on the
 *     header, before any data is read);
 *   - a name starting with '/', holding NUL or a ".." segment ->
 *     CFS_EUNSAFE "unsafe archive entry: <name>";
 *   - a symlink / hard link whose target is unsafe -> CFS_EUNSAFE "unsafe
 *     archive link target: <name> -> <target>";
 *   - anything but a file, directory, symlink or hard link -> CFS_EUNSAFE
 *     "unsupported archive entry type: <name>";
 *   - a member whose parent path crosses a symlink (e.g. one created
 *     earlier in the archive) -> CFS_EUNSAFE "archive entry resolves outside
 *     the mount: <name>";
 *   - a hard link whose target is not an already extracted regular file in
 *     dest -> CFS_EUNSAFE;
 *   - zstd errors, truncated streams, tar format errors -> CFS_ECORRUPT.
 * Modes are kept without set-id and sticky bits, mtimes are restored
 * (directories after their content, symlinks without following), owners
 * are ignored. Memory stays bounded whatever the input: decompression
 * uses a capped window, and bytes beyond what the headers declare are
 * refused. opts and stats may be NULL. On error, what was extracted so far
 * stays in dest (the caller owns and removes it).
 */
int cfs_bundle_unpack(int destfd, cfs_read_fn source, void *payload,
		      const struct cfs_unpack_opts *opts,
		      struct cfs_bundle_stats *stats);

/* Ready-made fd adapters: payload points to an int fd. */
int cfs_bundle_fd_sink(const void *buf, size_t len, void *payload);
ssize_t cfs_bundle_fd_source(void *buf, size_t len, void *payload);

#endif
