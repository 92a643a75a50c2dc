/*
 * The session engine (core/session.h): attach, run, save / checkpoint,
 * heartbeat and detach over the runtime contract. The sandbox side uses
 * the reference's tools (bash, python3, zstd, tar): the scripts below
 * keep the reference's behaviour and checks (REFERENCE.md §5.1, §5.5,
 * §10.2), with GNU tar doing the bulk work where the sandbox has it, and
 * every bundle that comes back is validated here again with
 * cfs_bundle_unpack before the engine commits it. What goes up is the
 * stored bundle itself, authenticated and checked as it is decrypted.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "core/bundle.h"
#include "core/error.h"
#include "core/ids.h"
#include "core/lock.h"
#include "core/log.h"
#include "core/manifest.h"
#include "core/policy.h"
#include "core/session.h"
#include "core/version.h"
#include "core/util.h"

#define HEARTBEAT_MIN_MS 1000
#define HEARTBEAT_MAX_MS 300000
/*
 * zstd level of the bundles the sandbox packs only to travel (a push's
 * tree, which is merged, and the head of a save): speed beats ratio. A
 * save's roots are stored as the sandbox compressed them, at the level
 * of every bundle (TAIL_ZSTD_LEVEL).
 */
#define TRANSFER_ZSTD_LEVEL "1"
#define LEVEL_STR_(n) #n
#define LEVEL_STR(n) LEVEL_STR_(n)
#define TAIL_ZSTD_LEVEL LEVEL_STR(CFS_BUNDLE_ZSTD_LEVEL)

struct cfs_session {
	struct cfs_store *st;
	/* cfs_session_fetch's hashes while it runs (save_mu held) */
	struct cfs_inode_hashes *fetch_hashes;
	struct cfs_keys *keys;
	struct cfs_runtime *rt;
	char *id;
	char *owner;
	char *mount_path;
	char *bundle_path; /* remote plaintext bundle */
	char *tmpdir; /* local, 0700 */
	char *policy_json; /* compact resolved policy for the scripts */
	struct cfs_policy policy;
	int64_t ttl_ms;
	int64_t cmd_timeout_ms;
	bool adopted;
	bool detached; /* src_dir: no lock, no save */
	bool keep_excluded;
	unsigned int seq; /* names local save dirs */
	unsigned int fetch_seq; /* names downloaded bundles */

	/* heartbeat */
	pthread_t hb;
	bool hb_running;
	int64_t hb_period_ms;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool hb_stop; /* protected by mu */
	atomic_bool lock_lost;
	atomic_int hb_failures;
	atomic_bool degraded;
	pthread_t em; /* the emergency checkpoint (heartbeat thread's) */
	bool em_started;
	atomic_bool em_busy;
	cfs_session_event_fn on_event;
	void *event_payload;
	int failure_threshold;
	bool emergency_checkpoint;

	/* periodic checkpoints */
	pthread_t ck;
	bool ck_running;
	int64_t ck_interval_ms;
	bool ck_stop; /* protected by mu */
	pthread_cond_t ck_cv;
	atomic_uint ck_count;
	/* serializes saves and checkpoints (and s->seq) */
	pthread_mutex_t save_mu;
};

/* ------------------------------------------------------------------ */
/* Phase timings */

/*
 * Logs how long a phase took (since *t0) and restarts the clock: at debug
 * level, or as warnings with CONTEXTFS_TIMING=1 in the environment (the
 * front ends have no debug switch; tests/bench/bench-run-ssh.sh uses it).
 */
static void timing(const struct cfs_session *s, const char *phase, int64_t *t0)
{
	cfs_log_timing(s->id, phase, t0);
}

/* ------------------------------------------------------------------ */
/* Sandbox scripts */

/* Shared by both scripts: the reference's tool preamble (exit 30-32). */
static const char preamble[] =
	"set -Eeuo pipefail\n"
	"command -v tar >/dev/null 2>&1 || { echo 'missing tar' >&2; exit 30; }\n"
	"command -v zstd >/dev/null 2>&1 || { echo 'missing zstd' >&2; exit 31; }\n"
	"command -v python3 >/dev/null 2>&1 || "
	"{ echo 'missing python3' >&2; exit 32; }\n";

/* Common python helpers: policy, unsafe(), items. */
#define PY_COMMON                                                                          \
	"import fnmatch, json, os, re, shutil, subprocess, sys, tarfile\n"                 \
	"def fail(msg):\n"                                                                 \
	"    sys.stderr.write(msg + '\\n')\n"                                              \
	"    sys.exit(1)\n"                                                                \
	"def unsafe(v):\n"                                                                 \
	"    v = v.replace('\\\\', '/')\n"                                                 \
	"    return v.startswith('/') or '\\0' in v or '..' in v.split('/')\n"             \
	"policy = json.loads(os.environ['CONTEXTSDK_POLICY'])\n"                           \
	"items = []\n"                                                                     \
	"for n in ['.contextsdk', 'contextsdk.json'] + list(policy.get('roots') or []):\n" \
	"    if not n or n in items:\n"                                                    \
	"        continue\n"                                                               \
	"    if unsafe(n) or n == '.':\n"                                                  \
	"        fail('unsafe persistence root: ' + n)\n"                                  \
	"    items.append(n)\n"                                                            \
	"# GNU tar >= 1.29 does the bulk work (CONTEXTSDK_TAR_FAST=0: never)\n"            \
	"def gnu_tar():\n"                                                                 \
	"    if os.environ.get('CONTEXTSDK_TAR_FAST', '1') != '1':\n"                      \
	"        return False\n"                                                           \
	"    try:\n"                                                                       \
	"        v = subprocess.run(['tar', '--version'], stdout=subprocess.PIPE,\n"       \
	"                           stderr=subprocess.DEVNULL).stdout\n"                   \
	"    except OSError:\n"                                                            \
	"        return False\n"                                                           \
	"    m = re.match(rb'tar \\(GNU tar\\) (\\d+)\\.(\\d+)', v)\n"                     \
	"    return bool(m) and (int(m.group(1)), int(m.group(2))) >= (1, 29)\n"

/*
 * Validating extractor (§5.5 runtime rules): clears the managed items,
 * then checks every member of the bundle before anything is extracted.
 *
 * Fast path, where the sandbox has GNU tar >= 1.29: tar itself lists the
 * archive (its own reading of every header, so what is checked is what it
 * will extract; GNU tar 1.34 prints each member as it reaches its header,
 * so a bad one stops the scan before a bomb's data is decompressed, and
 * a bundle contextfs uploads has passed the same caps here). When every
 * member passes the reference's checks and is plain (real parent
 * directories, no member under or replacing a symlink or another member,
 * hard links to earlier files with the same mode, file modes the data
 * filter would keep unchanged, directories without setuid/setgid/sticky
 * bits, no pre-existing symlink in the way), tar extracts the whole
 * archive in one pass. Directories then keep their recorded modes (the
 * layout's 0777 ones too, §5.2), which the data filter leaves at the
 * sandbox's default. Anything else (busybox tar, an odd
 * member, any failed check) goes to the reference's checked extractor,
 * which reads the archive again, checks it and reports exactly what the
 * reference reports; CONTEXTSDK_TAR_FAST=0 forces it.
 *
 * Checked extractor: streams the bundle through zstd into tarfile,
 * checking every member before extracting it alone. A parent directory's
 * realpath is cached (`resolved`) until a member that could change how
 * any path resolves is extracted: a symlink, a hard link (link(2) on a
 * symlink makes another symlink) or a member replacing an existing
 * non-directory. Owners are numeric: our bundles carry uid/gid 0 without
 * names, so the name lookups tarfile does as root found nothing. The
 * stream buffer stays at 64 KiB (tarfile copies its whole buffer on every
 * header read). A rejected archive is not decompressed further.
 */
static const char unpack_py[] = PY_COMMON
	"import codecs, signal\n"
	"MAX_ENTRIES = 1000000\n"
	"BUF = 1 << 20\n"
	"TFKW = {'copybufsize': BUF} if sys.version_info >= (3, 8) else {}\n"
	"MAX_BYTES = 68719476736\n"
	"mount = os.path.realpath(os.environ['CONTEXTSDK_MOUNT'])\n"
	"def inside(p):\n"
	"    return p == mount or p.startswith(mount + os.sep)\n"
	"keep = os.environ.get('CONTEXTSDK_KEEP_EXCLUDED') == '1'\n"
	"excl = list(policy.get('exclude') or [])\n"
	"def excluded(rel):\n"
	"    for p in excl:\n"
	"        t = p[:-3] if p.endswith('/**') else p\n"
	"        if fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, t):\n"
	"            return True\n"
	"        tt = t.rstrip('/')\n"
	"        if tt and rel.startswith(tt + '/'):\n"
	"            return True\n"
	"    return False\n"
	"def clear(p, rel):\n"
	"    if keep and excluded(rel):\n"
	"        return\n"
	"    if os.path.islink(p) or not os.path.isdir(p):\n"
	"        os.unlink(p)\n"
	"    elif not keep:\n"
	"        shutil.rmtree(p)\n"
	"    else:\n"
	"        for c in os.listdir(p):\n"
	"            clear(os.path.join(p, c), rel + '/' + c)\n"
	"        if not os.listdir(p):\n"
	"            os.rmdir(p)\n"
	"for n in items:\n"
	"    p = os.path.join(mount, n)\n"
	"    if os.path.lexists(p):\n"
	"        clear(p, n)\n"
	"def zstd_open(quiet=False):\n"
	"    return subprocess.Popen(['zstd', '-dc', '--', sys.argv[1]],\n"
	"                            stdout=subprocess.PIPE, bufsize=BUF,\n"
	"                            stderr=subprocess.DEVNULL if quiet else None)\n"
	"def zstd_close(z):\n"
	"    while z.stdout.read(BUF):\n"
	"        pass\n"
	"    z.stdout.close()\n"
	"    if z.wait() != 0:\n"
	"        fail('zstd decompression failed')\n"
	"count = total = 0\n"
	"def problem(name, kind, size, link):\n"
	"    # The reference's checks (caps, names, link targets, types).\n"
	"    global count, total\n"
	"    count += 1\n"
	"    if count > MAX_ENTRIES:\n"
	"        return 'archive exceeds the %d entry limit' % MAX_ENTRIES\n"
	"    total += max(size, 0)\n"
	"    if total > MAX_BYTES:\n"
	"        return 'archive exceeds the %d byte decompressed limit' % MAX_BYTES\n"
	"    if unsafe(name):\n"
	"        return 'unsafe archive entry: ' + name\n"
	"    if kind in ('l', 'h'):\n"
	"        if unsafe(link):\n"
	"            return 'unsafe archive link target: %s -> %s' % (name, link)\n"
	"    elif kind not in ('-', 'd'):\n"
	"        return 'unsupported archive entry type: ' + name\n"
	"    return None\n"
	"# Fast path: GNU tar lists the archive (its own reading of every header,\n"
	"# so what is checked is what it extracts); when every member passes the\n"
	"# checks and is plain, it extracts the whole archive. Otherwise (another\n"
	"# tar, an odd member, any failed check) the checked per-member extractor\n"
	"# below reads the archive again, checks it and reports what it finds.\n"
	"QS = r'\"((?:[^\"\\\\]|\\\\.)*)\"'\n"
	"LINE = re.compile(r'([-a-zA-Z])([-rwxsStT]{9}) \\S+ +(\\d+) [^\"]*' + QS +\n"
	"                  r'(?: -> ' + QS + r'| link to ' + QS + r')?$')\n"
	"def unq(s):\n"
	"    return os.fsdecode(codecs.escape_decode(s.encode('ascii'))[0])\n"
	"def perm(s):\n"
	"    v = 0\n"
	"    for i, c in enumerate(s):\n"
	"        if c != '-':\n"
	"            v |= 1 << (8 - i)\n"
	"    for i, hi in ((2, 0o4000), (5, 0o2000), (8, 0o1000)):\n"
	"        if s[i] in 'sStT':\n"
	"            v |= hi\n"
	"            if s[i] in 'ST':\n"
	"                v &= ~(1 << (8 - i))\n"
	"    return v\n"
	"seen, dirs, files, links, ondisk = set(), set(), set(), set(), {}\n"
	"fmode = {}  # file -> mode; a hard link must repeat it (tar does not chmod)\n"
	"def real_dir(d):\n"
	"    ok = ondisk.get(d)\n"
	"    if ok is None:\n"
	"        p = os.path.join(mount, d)\n"
	"        ok = not os.path.lexists(p) or \\\n"
	"            (os.path.isdir(p) and not os.path.islink(p))\n"
	"        ondisk[d] = ok\n"
	"    return ok\n"
	"def plain(name, kind, mode, size, link):\n"
	"    # Extracts with GNU tar as the checked extractor would: real parent\n"
	"    # directories, no entry replaced, no link through a link, file modes\n"
	"    # the data filter keeps unchanged. Directories keep their recorded\n"
	"    # modes (the layout's 0777 ones too), which the data filter ignores.\n"
	"    parts = name.split('/')\n"
	"    if name in seen or any(c in ('', '.') for c in parts):\n"
	"        return False\n"
	"    if kind in '-h' and (mode & ~0o755 or mode & 0o600 != 0o600 or\n"
	"                         mode & 0o011 and not mode & 0o100):\n"
	"        return False\n"
	"    if kind == 'd' and mode & ~0o777 or kind != '-' and size:\n"
	"        return False\n"
	"    if kind == 'h' and fmode.get(link) != mode:\n"
	"        return False\n"
	"    for i in range(1, len(parts)):\n"
	"        d = '/'.join(parts[:i])\n"
	"        if d in links or d in files or d not in dirs and not real_dir(d):\n"
	"            return False\n"
	"    t = os.path.join(mount, name)\n"
	"    return not os.path.lexists(t) or kind == 'd' and real_dir(name)\n"
	"def scan():\n"
	"    # tar prints each member as it reads its header, so a bad one stops\n"
	"    # the scan before tar reads (or decompresses) its data.\n"
	"    z = zstd_open(quiet=True)\n"
	"    t = subprocess.Popen(['tar', '-tv', '--numeric-owner',\n"
	"                          '--quoting-style=c', '-f', '-'], stdin=z.stdout,\n"
	"                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,\n"
	"                         env=dict(os.environ, LC_ALL='C'))\n"
	"    z.stdout.close()\n"
	"    ok = True\n"
	"    for ln in t.stdout:\n"
	"        m = LINE.match(ln.decode('ascii', 'replace').rstrip('\\n'))\n"
	"        if not m:\n"
	"            ok = False\n"
	"            break\n"
	"        kind, mode, size = m.group(1), perm(m.group(2)), int(m.group(3))\n"
	"        name = unq(m.group(4))\n"
	"        if kind == 'd' and name.endswith('/'):\n"
	"            name = name.rstrip('/')\n"
	"        link = unq(m.group(5) or m.group(6) or '')\n"
	"        if problem(name, kind, size, link) or \\\n"
	"                not plain(name, kind, mode, size, link):\n"
	"            ok = False\n"
	"            break\n"
	"        seen.add(name)\n"
	"        (dirs if kind == 'd' else links if kind == 'l' else files).add(name)\n"
	"        if kind in ('-', 'h'):\n"
	"            fmode[name] = mode\n"
	"    if not ok:\n"
	"        t.kill()\n"
	"        z.kill()\n"
	"    t.stdout.close()\n"
	"    # zstd may be cut off by tar leaving after the end-of-archive blocks\n"
	"    return t.wait() == 0 and z.wait() in (0, -signal.SIGPIPE) and ok\n"
	"def receive():\n"
	"    # The bundle arrives on fd 3 (one command instead of an upload and an\n"
	"    # unpack). Checking while it arrives gained nothing measurable on two\n"
	"    # cores (the transfer and the scan compete for them), so the scan\n"
	"    # follows as for an uploaded bundle.\n"
	"    part = sys.argv[1] + '.part'\n"
	"    with open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600),\n"
	"              'wb') as f:\n"
	"        if subprocess.run(['cat'], stdin=3, stdout=f).returncode != 0:\n"
	"            fail('receiving the bundle failed')\n"
	"    os.rename(part, sys.argv[1])\n"
	"if os.environ.get('CONTEXTSDK_BUNDLE_STDIN') == '1':\n"
	"    receive()\n"
	"fast = gnu_tar() and scan()\n"
	"if fast:\n"
	"    z = zstd_open()\n"
	"    t = subprocess.run(['tar', '-x', '-f', '-', '-C', mount, '-p',\n"
	"                        '--no-same-owner'], stdin=z.stdout)\n"
	"    zstd_close(z)\n"
	"    if t.returncode != 0:\n"
	"        fail('extraction failed (tar exit %d)' % t.returncode)\n"
	"    sys.exit(0)\n"
	"count = total = 0\n"
	"z = zstd_open()\n"
	"resolved = {}\n"
	"done = False\n"
	"try:\n"
	"    with tarfile.open(fileobj=z.stdout, mode='r|', bufsize=1 << 16,\n"
	"                      **TFKW) as tf:\n"
	"        for m in tf:\n"
	"            msg = problem(m.name, 'h' if m.islnk() else 'l' if m.issym()\n"
	"                          else '-' if m.isfile() else 'd' if m.isdir()\n"
	"                          else '?', m.size, m.linkname)\n"
	"            if msg:\n"
	"                fail(msg)\n"
	"            d = os.path.dirname(m.name)\n"
	"            parent = resolved.get(d)\n"
	"            if parent is None:\n"
	"                parent = os.path.realpath(os.path.join(mount, d))\n"
	"                resolved[d] = parent\n"
	"            if not inside(parent):\n"
	"                fail('archive entry resolves outside the mount: ' + m.name)\n"
	"            if m.islnk() and not inside(os.path.realpath(\n"
	"                    os.path.join(mount, m.linkname))):\n"
	"                fail('archive entry resolves outside the mount: ' + m.name)\n"
	"            target = os.path.join(mount, m.name)\n"
	"            if not m.isdir() and os.path.lexists(target) and \\\n"
	"                    not os.path.isdir(target):\n"
	"                os.unlink(target)\n"
	"                resolved.clear()\n"
	"            if m.issym() or m.islnk():\n"
	"                resolved.clear()\n"
	"            if hasattr(tarfile, 'data_filter'):\n"
	"                tf.extract(m, mount, filter='data', numeric_owner=True)\n"
	"            else:\n"
	"                tf.extract(m, mount, set_attrs=True, numeric_owner=True)\n"
	"    done = True\n"
	"except tarfile.TarError as e:\n"
	"    fail('unreadable archive: %s' % e)\n"
	"finally:\n"
	"    if done:\n"
	"        zstd_close(z)\n"
	"    else:  # do not decompress the rest of a rejected archive (a bomb)\n"
	"        z.kill()\n"
	"        z.wait()\n";

/*
 * The runtime-side packer (§5.1): with GNU tar, python walks the tree in
 * tarfile.add's order with its filter (excludes, unsafe links, special
 * files) and GNU tar writes the members it names (pax with sub-second
 * mtimes, owners 0 without names, hard links detected), byte for byte the
 * member list tarfile would write; otherwise tarfile writes them.
 */
static const char pack_py[] = PY_COMMON
	"import stat\n"
	"mount = os.environ['CONTEXTSDK_MOUNT']\n"
	"excl = list(policy.get('exclude') or [])\n"
	"def excluded(rel):\n"
	"    rel = rel.replace('\\\\', '/')\n"
	"    for p in excl:\n"
	"        t = p[:-3] if p.endswith('/**') else p\n"
	"        if fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(rel, t):\n"
	"            return True\n"
	"        tt = t.rstrip('/')\n"
	"        if tt and rel.startswith(tt + '/'):\n"
	"            return True\n"
	"    return False\n"
	"def filt(ti):\n"
	"    if excluded(ti.name):\n"
	"        return None\n"
	"    if (ti.issym() or ti.islnk()) and unsafe(ti.linkname):\n"
	"        return None\n"
	"    if not (ti.isfile() or ti.isdir() or ti.issym() or ti.islnk()):\n"
	"        return None\n"
	"    ti.uid = ti.gid = 0\n"
	"    ti.uname = ti.gname = ''\n"
	"    return ti\n"
	"BUF = 1 << 20\n"
	"TFKW = {'copybufsize': BUF} if sys.version_info >= (3, 8) else {}\n"
	"# owner names are cleared by filt(): skip looking them up\n"
	"tarfile.pwd = tarfile.grp = None\n"
	"class Out:\n"
	"    def __init__(self, f):\n"
	"        self.f, self.n = f, 0\n"
	"    def write(self, b):\n"
	"        self.f.write(b)\n"
	"        self.n += len(b)\n"
	"        return len(b)\n"
	"    def tell(self):\n"
	"        return self.n\n"
	"def walk(rel, out):\n"
	"    # The members tarfile.add(filter=filt) would write, in its order.\n"
	"    p = os.path.join(mount, rel)\n"
	"    st = os.lstat(p)\n"
	"    if excluded(rel):\n"
	"        return\n"
	"    if stat.S_ISLNK(st.st_mode):\n"
	"        if unsafe(os.readlink(p)):\n"
	"            return\n"
	"    elif not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):\n"
	"        return\n"
	"    out.write(os.fsencode(rel) + b'\\0')\n"
	"    if stat.S_ISDIR(st.st_mode):\n"
	"        for c in sorted(os.listdir(p)):\n"
	"            walk(rel + '/' + c, out)\n"
	"dest = os.environ['CONTEXTSDK_BUNDLE']  # '-': stdout\n"
	"roots = items\n"
	"if os.environ.get('CONTEXTSDK_SPLIT') == '1':\n"
	"    # The head (.contextsdk, contextsdk.json) in a zstd frame of its\n"
	"    # own and without the end-of-archive blocks, the roots continuing\n"
	"    # the same archive in the next frame, compressed for keeps: the\n"
	"    # commit stores them as they are.\n"
	"    outf = None if dest == '-' else open(dest, 'wb')\n"
	"    def zstd_run(level):\n"
	"        return subprocess.Popen(['zstd', '-T0', '-q', '-f', '-' + level,\n"
	"                                 '-c'], stdin=subprocess.PIPE, stdout=outf,\n"
	"                                bufsize=BUF)\n"
	"    z = zstd_run(os.environ['CONTEXTSDK_ZSTD_LEVEL'])\n"
	"    try:\n"
	"        tf = tarfile.open(fileobj=Out(z.stdin), mode='w', **TFKW)\n"
	"        for n in items[:2]:\n"
	"            p = os.path.join(mount, n)\n"
	"            if os.path.lexists(p) and not excluded(n):\n"
	"                tf.add(p, arcname=n, recursive=True, filter=filt)\n"
	"        tf = None  # not closed: no end-of-archive blocks here\n"
	"    finally:\n"
	"        z.stdin.close()\n"
	"        rc = z.wait()\n"
	"    if rc != 0:\n"
	"        fail('zstd compression failed')\n"
	"    roots = items[2:]\n"
	"    z = zstd_run(os.environ['CONTEXTSDK_TAIL_LEVEL'])\n"
	"else:\n"
	"    z = subprocess.Popen(['zstd', '-T0', '-q', '-f', '-' +\n"
	"                          os.environ['CONTEXTSDK_ZSTD_LEVEL']] +\n"
	"                         (['-c'] if dest == '-' else ['-o', dest]),\n"
	"                         stdin=subprocess.PIPE, bufsize=BUF)\n"
	"try:\n"
	"    if gnu_tar():\n"
	"        # GNU tar writes the members the walk names (pax, with the\n"
	"        # sub-second mtimes tarfile keeps, owners 0 as filt() sets them).\n"
	"        t = subprocess.Popen(['tar', '-c', '-f', '-', '-C', mount,\n"
	"                              '--format=posix', '--pax-option=delete=atime,'\n"
	"                              'delete=ctime', '--numeric-owner', '--owner=0',\n"
	"                              '--group=0', '--no-recursion', '--null',\n"
	"                              '--verbatim-files-from', '-T', '-'],\n"
	"                             stdin=subprocess.PIPE, stdout=z.stdin)\n"
	"        try:\n"
	"            for n in roots:\n"
	"                if os.path.lexists(os.path.join(mount, n)):\n"
	"                    walk(n, t.stdin)\n"
	"        finally:\n"
	"            t.stdin.close()\n"
	"            rc = t.wait()\n"
	"        # 1: a file changed while tar read it; the archive is still whole\n"
	"        if rc not in (0, 1):\n"
	"            fail('tar failed (exit %d)' % rc)\n"
	"    else:\n"
	"        with tarfile.open(fileobj=Out(z.stdin), mode='w', **TFKW) as tf:\n"
	"            for n in roots:\n"
	"                p = os.path.join(mount, n)\n"
	"                if not os.path.lexists(p) or excluded(n):\n"
	"                    continue\n"
	"                tf.add(p, arcname=n, recursive=True, filter=filt)\n"
	"finally:\n"
	"    z.stdin.close()\n"
	"    rc = z.wait()\n"
	"if rc != 0:\n"
	"    fail('zstd compression failed')\n";

static int put_assign(struct cfs_buf *b, const char *name, const char *value)
{
	int rc = cfs_buf_printf(b, "%s=", name);

	if (!rc)
		rc = cfs_shell_quote(b, value);
	return rc ? rc : cfs_buf_puts(b, "\n");
}

/*
 * from_stdin: the bundle arrives on the script's stdin (run_io) and is
 * written to bundle first; else it was uploaded there.
 */
static char *unpack_script_for(const char *bundle, const char *mount,
			       const char *policy_json, bool keep_excluded,
			       bool root_links, bool from_stdin)
{
	struct cfs_buf b = CFS_BUF_INIT;
	int rc = cfs_buf_puts(&b, preamble);

	rc = rc ? rc : put_assign(&b, "bundle", bundle);
	rc = rc ? rc : put_assign(&b, "mount", mount);
	rc = rc ? rc : put_assign(&b, "policy", policy_json);
	/* the plaintext must not linger, whatever happens */
	rc = rc ? rc
		: cfs_buf_puts(&b, "trap 'rm -f -- \"$bundle\" "
				   "\"$bundle.part\"' EXIT\n"
				   "mkdir -p -- \"$mount\"\n");
	if (!rc && from_stdin)
		rc = cfs_buf_puts(&b, "(umask 077; mkdir -p -- "
				      "\"$(dirname -- \"$bundle\")\")\n"
				      "CONTEXTSDK_BUNDLE_STDIN=1 ");
	rc = rc ? rc : cfs_buf_puts(&b, "CONTEXTSDK_POLICY=\"$policy\" ");
	if (!rc && keep_excluded)
		rc = cfs_buf_puts(&b, "CONTEXTSDK_KEEP_EXCLUDED=1 ");
	rc = rc ? rc
		: cfs_buf_puts(&b, "CONTEXTSDK_MOUNT=\"$mount\" "
				   "python3 - \"$bundle\" 3<&0 "
				   "<<'CONTEXTSDK_PY'\n");
	rc = rc ? rc : cfs_buf_puts(&b, unpack_py);
	rc = rc ? rc
		: cfs_buf_puts(&b, "CONTEXTSDK_PY\n"
				   "rm -f -- \"$bundle\"\n"
				   "for n in workspace memory artifacts logs "
				   "cache config; do\n"
				   "  mkdir -p -- \"$mount/$n\"\n");
	if (!rc && root_links)
		rc = cfs_buf_puts(&b,
				  "  if [ -L \"/$n\" ] || [ ! -e \"/$n\" ]; "
				  "then ln -sfn -- \"$mount/$n\" \"/$n\" "
				  "|| true; fi\n");
	rc = rc ? rc : cfs_buf_puts(&b, "done\n");
	if (rc) {
		cfs_buf_free(&b);
		return NULL;
	}
	return cfs_buf_detach(&b);
}

static char *unpack_script(const struct cfs_session *s)
{
	return unpack_script_for(s->bundle_path, s->mount_path, s->policy_json,
				 s->keep_excluded, s->rt->caps.root_links,
				 false);
}

/* bundle "-": the bundle goes to stdout (nothing written in the sandbox). */
static char *pack_script_for(const char *bundle, const char *mount,
			     const char *policy_json, bool split)
{
	struct cfs_buf b = CFS_BUF_INIT;
	bool to_stdout = strcmp(bundle, "-") == 0;
	int rc = cfs_buf_puts(&b, preamble);

	rc = rc ? rc : put_assign(&b, "bundle", bundle);
	rc = rc ? rc : put_assign(&b, "mount", mount);
	rc = rc ? rc : put_assign(&b, "policy", policy_json);
	rc = rc ? rc : cfs_buf_puts(&b, "test -d \"$mount\"\n");
	if (!rc && !to_stdout)
		rc = cfs_buf_puts(&b, "rm -f -- \"$bundle\"\n");
	rc = rc ? rc
		: cfs_buf_puts(&b, "sync \"$mount\" 2>/dev/null || sync\n"
				   "umask 077\n"
				   "CONTEXTSDK_POLICY=\"$policy\" "
				   "CONTEXTSDK_MOUNT=\"$mount\" "
				   "CONTEXTSDK_BUNDLE=\"$bundle\" "
				   "CONTEXTSDK_ZSTD_LEVEL=" TRANSFER_ZSTD_LEVEL
				   " ");
	if (!rc && split)
		rc = cfs_buf_puts(&b,
				  "CONTEXTSDK_SPLIT=1 "
				  "CONTEXTSDK_TAIL_LEVEL=" TAIL_ZSTD_LEVEL " ");
	rc = rc ? rc : cfs_buf_puts(&b, "python3 - <<'CONTEXTSDK_PY'\n");
	rc = rc ? rc : cfs_buf_puts(&b, pack_py);
	rc = rc ? rc : cfs_buf_puts(&b, "CONTEXTSDK_PY\n");
	if (!rc && !to_stdout)
		rc = cfs_buf_puts(&b, "test -s \"$bundle\"\n");
	if (rc) {
		cfs_buf_free(&b);
		return NULL;
	}
	return cfs_buf_detach(&b);
}

static char *pack_script(const struct cfs_session *s, bool split)
{
	return pack_script_for(s->bundle_path, s->mount_path, s->policy_json,
			       split);
}

char *cfs_session_script(const char *which, const char *bundle,
			 const char *mount, const char *policy_json,
			 bool keep_excluded)
{
	if (strcmp(which, "unpack") == 0 || strcmp(which, "unpack-stdin") == 0)
		return unpack_script_for(bundle, mount, policy_json,
					 keep_excluded, false,
					 strcmp(which, "unpack-stdin") == 0);
	if (strcmp(which, "pack") == 0 || strcmp(which, "pack-split") == 0)
		return pack_script_for(bundle, mount, policy_json,
				       strcmp(which, "pack-split") == 0);
	return NULL;
}

static char *detach_script(const struct cfs_session *s)
{
	struct cfs_buf b = CFS_BUF_INIT;
	int rc = put_assign(&b, "bundle", s->bundle_path);

	rc = rc ? rc : put_assign(&b, "mount", s->mount_path);
	if (!rc && s->rt->caps.root_links)
		rc = cfs_buf_puts(&b,
				  "for n in workspace memory artifacts logs "
				  "cache config; do\n"
				  "  if [ -L \"/$n\" ] && [ \"$(readlink "
				  "\"/$n\")\" = \"$mount/$n\" ]; then "
				  "rm -f -- \"/$n\"; fi\n"
				  "done\n");
	rc = rc ? rc : cfs_buf_puts(&b, "rm -f -- \"$bundle\"\n");
	if (rc) {
		cfs_buf_free(&b);
		return NULL;
	}
	return cfs_buf_detach(&b);
}

/*
 * Runs a session script (taking ownership of it) and turns a non-zero exit
 * into a command error.
 */
static int run_script(struct cfs_session *s, char *script, const char *label)
{
	struct cfs_run_result res;
	int rc;

	if (!script)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	rc = cfs_runtime_run(&res, s->rt, script, NULL, s->cmd_timeout_ms);
	if (!rc)
		rc = cfs_runtime_check(&res, label);
	else
		cfs_error_prefix("%s", label);
	cfs_run_result_clear(&res);
	free(script);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Heartbeat */

const char *cfs_session_event_name(enum cfs_session_event_type type)
{
	switch (type) {
	case CFS_SESSION_HEARTBEAT_FAILURE:
		return "heartbeat-failure";
	case CFS_SESSION_DEGRADED:
		return "degraded";
	case CFS_SESSION_EMERGENCY_CHECKPOINT:
		return "emergency-checkpoint";
	case CFS_SESSION_RECOVERY_START:
		return "recovery-start";
	case CFS_SESSION_RECOVERY_SUCCESS:
		return "recovery-success";
	case CFS_SESSION_RECOVERY_FAILURE:
		return "recovery-failure";
	case CFS_SESSION_RECOVERY_ABORTED:
		return "recovery-aborted";
	}
	return "unknown";
}

static void emit(struct cfs_session *s, enum cfs_session_event_type type,
		 int failures, const char *error)
{
	struct cfs_session_event ev = {type, s->id, 0, failures, 0, 0, error};

	if (s->on_event)
		s->on_event(&ev, s->event_payload);
}

/* The one best-effort checkpoint of a degraded session (§9.3). */
static void *emergency_main(void *arg)
{
	struct cfs_session *s = arg;
	struct cfs_session_save_opts o = {0};

	o.kind = CFS_COMMIT_CHECKPOINT;
	o.reason = "emergency";
	if (cfs_session_save(NULL, s, &o) == 0)
		emit(s, CFS_SESSION_EMERGENCY_CHECKPOINT,
		     atomic_load(&s->hb_failures), NULL);
	else
		cfs_log(CFS_LOG_WARN, "emergency checkpoint of %s failed: %s",
			s->id, cfs_error_last());
	atomic_store(&s->em_busy, false);
	return NULL;
}

static void emergency_join(struct cfs_session *s)
{
	if (s->em_started)
		pthread_join(s->em, NULL);
	s->em_started = false;
}

/*
 * A failed beat (§9.3): counted; at the threshold the session turns
 * degraded (once until a healthy beat) and, if asked, takes one
 * best-effort "emergency" checkpoint while the sandbox may still answer.
 * The heartbeat never re-provisions: recovery is the caller's.
 */
static void beat_failed(struct cfs_session *s, const char *why)
{
	int n = atomic_fetch_add(&s->hb_failures, 1) + 1;
	int threshold = s->failure_threshold > 0 ? s->failure_threshold : 3;

	emit(s, CFS_SESSION_HEARTBEAT_FAILURE, n, why);
	if (n < threshold || atomic_exchange(&s->degraded, true))
		return;
	cfs_log(CFS_LOG_WARN,
		"session on %s degraded after %d failed heartbeats: %s", s->id,
		n, why);
	emit(s, CFS_SESSION_DEGRADED, n, why);
	if (s->emergency_checkpoint && !s->detached &&
	    !atomic_load(&s->lock_lost) &&
	    !atomic_exchange(&s->em_busy, true)) {
		/*
		 * On a thread of its own: a checkpoint of a dying sandbox can
		 * take until the command timeout, and the heartbeat must keep
		 * renewing the lock meanwhile.
		 */
		if (s->em_started)
			pthread_join(s->em, NULL); /* an earlier one, done */
		s->em_started =
			pthread_create(&s->em, NULL, emergency_main, s) == 0;
		if (!s->em_started)
			atomic_store(&s->em_busy, false);
	}
}

static void beat_ok(struct cfs_session *s)
{
	atomic_store(&s->hb_failures, 0);
	atomic_store(&s->degraded, false);
}

static void *heartbeat_main(void *arg)
{
	struct cfs_session *s = arg;
	bool warned_lock = false, warned_rt = false;
	char why[512] = "";

	pthread_mutex_lock(&s->mu);
	while (!s->hb_stop) {
		struct timespec ts;
		int rc, krc;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += s->hb_period_ms / 1000;
		ts.tv_nsec += (s->hb_period_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		while (!s->hb_stop &&
		       pthread_cond_timedwait(&s->cv, &s->mu, &ts) != ETIMEDOUT)
			;
		if (s->hb_stop)
			break;
		pthread_mutex_unlock(&s->mu);

		rc = s->detached ? 0
		     : atomic_load(&s->lock_lost)
			     ? CFS_ELOCKED
			     : cfs_lock_renew(NULL, s->st, s->id, s->owner,
					      s->ttl_ms);
		if (rc == CFS_ELOCKED || rc == CFS_ENOTFOUND) {
			if (!atomic_exchange(&s->lock_lost, true))
				cfs_log(CFS_LOG_WARN,
					"lock on %s lost: %s; this session "
					"will not save",
					s->id, cfs_error_last());
		} else if (rc && !warned_lock) {
			warned_lock = true;
			cfs_log(CFS_LOG_WARN, "lock renewal for %s failed: %s",
				s->id, cfs_error_last());
		}
		if (rc)
			snprintf(why, sizeof(why), "%s", cfs_error_last());
		krc = cfs_runtime_keep_alive(s->rt);
		if (krc && !warned_rt) {
			warned_rt = true;
			cfs_log(CFS_LOG_WARN,
				"runtime keep-alive for %s failed: %s", s->id,
				cfs_error_last());
		}
		if (krc && !rc)
			snprintf(why, sizeof(why), "%s", cfs_error_last());
		if (rc || krc)
			beat_failed(s, why);
		else
			beat_ok(s);
		pthread_mutex_lock(&s->mu);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

static void heartbeat_stop(struct cfs_session *s)
{
	cfs_thread_stop(s->hb, &s->mu, &s->cv, &s->hb_stop, &s->hb_running);
}

static int heartbeat_start(struct cfs_session *s, int64_t period)
{
	pthread_condattr_t ca;

	if (period < 0)
		return 0;
	if (period == 0) {
		period = s->ttl_ms / 3;
		if (s->rt->sandbox_timeout_ms > 0 &&
		    s->rt->sandbox_timeout_ms / 3 < period)
			period = s->rt->sandbox_timeout_ms / 3;
		if (period > HEARTBEAT_MAX_MS)
			period = HEARTBEAT_MAX_MS;
	}
	if (period < HEARTBEAT_MIN_MS)
		period = HEARTBEAT_MIN_MS;
	s->hb_period_ms = period;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_destroy(&s->cv);
	pthread_cond_init(&s->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&s->hb, NULL, heartbeat_main, s) != 0)
		return cfs_error_set(CFS_ERROR, "cannot start the heartbeat");
	s->hb_running = true;
	return 0;
}

/* ------------------------------------------------------------------ */
/* Attach */

static void *checkpoint_main(void *arg)
{
	struct cfs_session *s = arg;
	struct cfs_session_save_opts so = {.kind = CFS_COMMIT_CHECKPOINT,
					   .reason = "periodic"};

	pthread_mutex_lock(&s->mu);
	while (!s->ck_stop) {
		struct timespec ts;

		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += s->ck_interval_ms / 1000;
		ts.tv_nsec += (s->ck_interval_ms % 1000) * 1000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		while (!s->ck_stop && pthread_cond_timedwait(&s->ck_cv, &s->mu,
							     &ts) != ETIMEDOUT)
			;
		if (s->ck_stop)
			break;
		pthread_mutex_unlock(&s->mu);
		if (cfs_session_save(NULL, s, &so) == 0)
			atomic_fetch_add(&s->ck_count, 1);
		else
			cfs_log(CFS_LOG_WARN,
				"periodic checkpoint of %s failed: %s", s->id,
				cfs_error_last());
		pthread_mutex_lock(&s->mu);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

int cfs_session_start_checkpoints(struct cfs_session *s, int64_t interval_ms)
{
	if (s->ck_running || interval_ms <= 0)
		return 0;
	s->ck_interval_ms = interval_ms < 100 ? 100 : interval_ms;
	s->ck_stop = false;
	if (pthread_create(&s->ck, NULL, checkpoint_main, s) != 0)
		return cfs_error_set(CFS_ERROR,
				     "cannot start periodic checkpoints");
	s->ck_running = true;
	return 0;
}

void cfs_session_stop_checkpoints(struct cfs_session *s)
{
	if (!s || !s->ck_running)
		return;
	pthread_mutex_lock(&s->mu);
	s->ck_stop = true;
	pthread_cond_signal(&s->ck_cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->ck, NULL);
	s->ck_running = false;
}

unsigned int cfs_session_checkpoints(const struct cfs_session *s)
{
	return atomic_load(&((struct cfs_session *)s)->ck_count);
}

static void session_free(struct cfs_session *s)
{
	if (!s)
		return;
	cfs_session_stop_checkpoints(s);
	heartbeat_stop(s);
	emergency_join(s);
	if (s->tmpdir) {
		cfs_rmtree_at(AT_FDCWD, s->tmpdir);
		free(s->tmpdir);
	}
	pthread_mutex_destroy(&s->mu);
	pthread_mutex_destroy(&s->save_mu);
	pthread_cond_destroy(&s->cv);
	pthread_cond_destroy(&s->ck_cv);
	cfs_policy_free(&s->policy);
	free(s->id);
	free(s->owner);
	free(s->mount_path);
	free(s->bundle_path);
	free(s->policy_json);
	free(s);
}

static int open_subdir(int *fd_out, const char *tmpdir, const char *name)
{
	char *p = cfs_asprintf("%s/%s", tmpdir, name);
	int fd;

	if (!p)
		return CFS_ENOMEM;
	if (mkdir(p, 0700) != 0) {
		int e = errno;

		free(p);
		return cfs_error_errno(e, "creating %s/%s", tmpdir, name);
	}
	fd = open(p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	free(p);
	if (fd < 0)
		return cfs_error_errno(errno, "opening %s/%s", tmpdir, name);
	*fd_out = fd;
	return 0;
}

/*
 * Uploads and unpacks in one command (one round trip less): the bundle
 * is the unpacker's stdin (run_io). Scanning it while it arrived gained
 * nothing measurable on 2 cores, where the transfer and the scan compete.
 */
static int push_streamed(struct cfs_session *s, const char *bundle)
{
	struct cfs_run_result res;
	char *script;
	int fd, rc;

	fd = open(bundle, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return cfs_error_errno(errno, "opening %s", bundle);
	script = unpack_script_for(s->bundle_path, s->mount_path,
				   s->policy_json, s->keep_excluded,
				   s->rt->caps.root_links, true);
	if (!script) {
		close(fd);
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	}
	rc = cfs_runtime_run_io(&res, s->rt, script, fd, -1, s->cmd_timeout_ms);
	close(fd);
	free(script);
	if (!rc)
		rc = cfs_runtime_check(&res, "mount context bundle");
	else
		cfs_error_prefix("uploading the context to %s", s->rt->id);
	cfs_run_result_clear(&res);
	return rc;
}

/*
 * The bundle to upload, <tmpdir>/attach.tar.zst: the current tree's own
 * plaintext bundle, decrypted, authenticated and checked with the archive
 * safety rules as it is written (no export, no repack), or src_dir packed.
 */
static int build_bundle(struct cfs_session *s, const char *src_dir,
			char **path_out)
{
	int treefd = -1, bfd = -1, rc;
	char *path = NULL;
	int64_t t0 = cfs_monotonic_ms();

	path = cfs_asprintf("%s/attach.tar.zst", s->tmpdir);
	if (!path)
		return CFS_ENOMEM;
	bfd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (bfd < 0) {
		rc = cfs_error_errno(errno, "creating %s", path);
		goto out;
	}
	if (!src_dir) {
		/* No fsync: a scratch file, uploaded and removed right away. */
		rc = cfs_context_fetch_bundle(NULL, s->st, s->keys, s->id, bfd,
					      NULL, NULL);
		if (!rc)
			timing(s, "fetch", &t0);
		goto out;
	}
	treefd = open(src_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (treefd < 0) {
		rc = cfs_error_errno(errno, "opening %s", src_dir);
		goto out;
	}
	rc = cfs_bundle_pack(treefd, &s->policy, NULL, 0, cfs_bundle_fd_sink,
			     &bfd, NULL);
	if (!rc)
		timing(s, "pack", &t0);
out:
	if (bfd >= 0)
		close(bfd);
	if (treefd >= 0)
		close(treefd);
	if (rc) {
		unlink(path);
		free(path);
		return rc;
	}
	*path_out = path;
	return 0;
}

/*
 * The caller's prefetched bundle is the tree to upload: the manifest, read
 * again now that the lock is ours, still names the tree it came from.
 */
static bool prefetched_current(struct cfs_session *s,
			       const struct cfs_session_opts *opts)
{
	struct cfs_manifest *m = NULL;
	const char *key;
	bool same;

	if (!opts->prefetched_bundle || !opts->prefetched_key ||
	    !opts->prefetched_key[0])
		return false;
	if (cfs_context_read_manifest(&m, NULL, s->st, s->id) != 0) {
		cfs_error_clear();
		return false;
	}
	key = cfs_manifest_tree_key(m);
	same = key && strcmp(key, opts->prefetched_key) == 0;
	cfs_manifest_free(m);
	if (!same)
		cfs_debug("%s: the tree changed while the runtime opened; "
			  "fetching it again",
			  s->id);
	return same;
}

int cfs_session_attach(struct cfs_session **out, struct cfs_store *st,
		       struct cfs_keys *keys, const char *id,
		       struct cfs_runtime *rt,
		       const struct cfs_session_opts *opts)
{
	struct cfs_session_opts def = {0};
	struct cfs_session *s = NULL;
	struct cfs_manifest *m = NULL;
	cJSON *pj = NULL;
	char *bundle = NULL, sid[9];
	bool locked = false;
	int rc;

	*out = NULL;
	if (!opts)
		opts = &def;
	rc = cfs_id_check(id);
	if (rc)
		return rc;
	if (!rt || !rt->tmp_dir || !rt->mount_base)
		return cfs_error_set(CFS_EINVAL, "runtime is required");
	s = cfs_calloc(1, sizeof(*s));
	if (!s)
		return CFS_ENOMEM;
	pthread_mutex_init(&s->mu, NULL);
	pthread_mutex_init(&s->save_mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&s->ck_cv, &ca);
		pthread_condattr_destroy(&ca);
	}
	s->st = st;
	s->keys = keys;
	s->rt = rt;
	s->ttl_ms = opts->lock_ttl_ms > 0 ? opts->lock_ttl_ms
					  : CFS_LOCK_DEFAULT_TTL_MS;
	s->cmd_timeout_ms = opts->command_timeout_ms > 0
				    ? opts->command_timeout_ms
				    : CFS_RUNTIME_DEFAULT_TIMEOUT_MS;
	s->detached = opts->src_dir || opts->reuse;
	s->keep_excluded = opts->keep_excluded;
	s->on_event = opts->on_event;
	s->event_payload = opts->event_payload;
	s->failure_threshold = opts->failure_threshold;
	s->emergency_checkpoint = opts->emergency_checkpoint;
	s->id = cfs_strdup(id);
	s->owner = opts->owner ? cfs_strdup(opts->owner) : NULL;
	if (!s->id || (opts->owner && !s->owner)) {
		rc = CFS_ENOMEM;
		goto fail;
	}
	if (!s->owner) {
		rc = cfs_lock_owner_new(&s->owner);
		if (rc)
			goto fail;
	}
	cfs_random_hex(sid, 4);
	s->mount_path = opts->mount_path
				? cfs_strdup(opts->mount_path)
				: cfs_asprintf("%s/%s", rt->mount_base, id);
	s->bundle_path = cfs_asprintf("%s/contextsdk-%s-%s.tree.tar.zst",
				      rt->tmp_dir, id, sid);
	if (!s->mount_path || !s->bundle_path) {
		rc = CFS_ENOMEM;
		goto fail;
	}
	if (s->mount_path[0] != '/' || strchr(s->mount_path, '\n')) {
		rc = cfs_error_set(CFS_EINVAL,
				   "mount path must be absolute: %s",
				   s->mount_path);
		goto fail;
	}

	rc = cfs_context_read_manifest(&m, NULL, st, id);
	if (rc)
		goto fail;
	rc = cfs_policy_from_json(&s->policy, cfs_manifest_policy(m));
	if (rc)
		goto fail;
	pj = cfs_policy_to_json(&s->policy);
	s->policy_json = pj ? cJSON_PrintUnformatted(pj) : NULL;
	if (!s->policy_json) {
		rc = CFS_ENOMEM;
		goto fail;
	}

	if (!s->detached) {
		rc = cfs_lock_acquire(NULL, &s->adopted, st, id, rt->id,
				      s->owner, s->ttl_ms, opts->force_unlock);
		if (rc)
			goto fail;
		locked = true;
	}

	cfs_sweep_stale_tmpdirs(NULL, "contextfs-session-");
	{
		char prefix[48];

		snprintf(prefix, sizeof(prefix), "contextfs-session-%ld-",
			 (long)getpid());
		rc = cfs_mkdtemp(&s->tmpdir, NULL, prefix);
	}
	if (rc)
		goto fail;
	if (!opts->reuse) {
		bool scratch = false; /* bundle is ours to remove */
		int64_t t0;

		if (opts->src_dir && opts->src_bundle) {
			bundle = cfs_strdup(opts->src_bundle);
			rc = bundle ? 0 : CFS_ENOMEM;
		} else if (!s->detached && prefetched_current(s, opts)) {
			bundle = cfs_strdup(opts->prefetched_bundle);
			rc = bundle ? 0 : CFS_ENOMEM;
		} else {
			rc = build_bundle(s, opts->src_dir, &bundle);
			scratch = true;
		}
		if (rc)
			goto fail;
		t0 = cfs_monotonic_ms();
		if (cfs_runtime_streams(rt)) {
			rc = push_streamed(s, bundle);
			if (scratch)
				unlink(bundle);
			if (rc)
				goto fail;
			timing(s, "transfer and remote extract", &t0);
		} else {
			rc = cfs_runtime_upload(rt, bundle, s->bundle_path);
			if (scratch)
				unlink(bundle);
			if (rc) {
				cfs_error_prefix("uploading the context to %s",
						 rt->id);
				goto fail;
			}
			timing(s, "upload", &t0);
			rc = run_script(s, unpack_script(s),
					"mount context bundle");
			if (rc)
				goto fail;
			timing(s, "remote extract", &t0);
		}
	}
	rc = heartbeat_start(s, opts->heartbeat_ms);
	if (rc)
		goto fail;
	*out = s;
	s = NULL;
fail:
	if (s) {
		int keep = cfs_error_last_code();
		char *msg = cfs_strdup(cfs_error_last());

		if (locked && !s->adopted)
			cfs_lock_release(st, id, s->owner, true);
		session_free(s);
		if (msg) {
			cfs_error_set(keep ? keep : rc, "%s", msg);
			free(msg);
		}
	}
	free(bundle);
	cJSON_Delete(pj);
	cfs_manifest_free(m);
	return rc;
}

/* ------------------------------------------------------------------ */
/* Run, save, detach */

int cfs_session_run(struct cfs_run_result *res, struct cfs_session *s,
		    const char *command, int64_t timeout_ms)
{
	struct cfs_buf b = CFS_BUF_INIT;
	int rc = cfs_buf_puts(&b, "cd ");
	int64_t t0 = cfs_monotonic_ms();

	memset(res, 0, sizeof(*res));
	rc = rc ? rc : cfs_shell_quote(&b, s->mount_path);
	rc = rc ? rc : cfs_buf_puts(&b, " && ");
	rc = rc ? rc : cfs_buf_puts(&b, command);
	if (!rc)
		rc = cfs_runtime_run(res, s->rt, b.ptr, NULL, timeout_ms);
	timing(s, "run", &t0);
	cfs_buf_free(&b);
	return rc;
}

/*
 * What a save's fetch leaves for its commit: the stream as it arrived
 * (private), whether its roots can be stored as they are, and the
 * hashes of what was extracted.
 */
struct fetched {
	int spool; /* -1: none */
	struct cfs_unpack_tail tail;
	struct cfs_inode_hashes hashes;
	/*
	 * The roots listed instead of extracted (tail.listed): the index the
	 * commit gets, unless need_tree (a symlink to follow, a hard link or
	 * name the listing cannot settle, too many members), in which case
	 * the spool is unpacked again.
	 */
	const struct cfs_policy *policy;
	struct cfs_file_entry *files;
	size_t nfiles, cap;
	struct hard_link {
		char *path, *target;
	} * hl; /* files that are hard links, settled by listing_settle */
	size_t nhl, hlcap;
	/* directory members (a file of that name: need_tree) */
	struct cfs_names dirs;
	size_t members;
	bool need_tree;
};

/* Members listed at most; beyond, the roots are extracted after all. */
#define LIST_MAX 200000

static void fetched_clear(struct fetched *f)
{
	if (f->spool >= 0)
		close(f->spool);
	f->spool = -1;
	cfs_inode_hashes_free(&f->hashes);
	cfs_index_free(f->files, f->nfiles);
	f->files = NULL;
	f->nfiles = f->cap = 0;
	for (size_t i = 0; i < f->nhl; i++) {
		free(f->hl[i].path);
		free(f->hl[i].target);
	}
	free(f->hl);
	f->hl = NULL;
	f->nhl = f->hlcap = 0;
	cfs_names_free(&f->dirs);
}

/* The position of name's root among the policy roots, or -1. */
static int root_of(const struct cfs_policy *pol, const char *name)
{
	size_t top = strcspn(name, "/");

	if (!name[top])
		return -1; /* the root itself: never an indexed file */
	for (size_t i = 0; i < pol->nroots; i++)
		if (strlen(pol->roots[i]) == top &&
		    strncmp(pol->roots[i], name, top) == 0)
			return (int)i;
	return -1;
}

/* Roots the listing can index: plain names, each once. */
static bool roots_listable(const struct cfs_policy *pol)
{
	for (size_t i = 0; i < pol->nroots; i++) {
		const char *r = pol->roots[i];

		if (!r[0] || strchr(r, '/') || !strcmp(r, ".") ||
		    !strcmp(r, ".."))
			return false;
		for (size_t j = 0; j < i; j++)
			if (!strcmp(r, pol->roots[j]))
				return false;
	}
	return true;
}

/* cfs_member_fn: the roots' files, for the commit's index */
static int list_root_member(void *payload, const struct cfs_member_info *m)
{
	struct fetched *f = payload;
	struct cfs_file_entry *e;
	int rc;

	if (f->need_tree)
		return 0;
	if (++f->members > LIST_MAX || m->type == S_IFLNK) {
		f->need_tree = true; /* too many; a link to follow */
		return 0;
	}
	if (root_of(f->policy, m->path) < 0)
		return 0;
	if (m->type == S_IFDIR)
		return cfs_names_add(&f->dirs, m->path, strlen(m->path));
	if (m->type != S_IFREG)
		return 0;
	if (!m->hardlink && !m->sha256) {
		f->need_tree = true;
		return 0;
	}
	if (m->hardlink) {
		/* its entry is its file's, settled once everything is listed */
		struct hard_link *h;

		rc = cfs_array_grow(&f->hl, &f->hlcap, f->nhl, sizeof(*f->hl));
		if (rc)
			return rc;
		h = &f->hl[f->nhl];
		h->path = cfs_strdup(m->path);
		h->target = cfs_strdup(m->link);
		f->nhl++;
		if (!h->path || !h->target)
			return CFS_ENOMEM;
	}
	rc = cfs_array_grow(&f->files, &f->cap, f->nfiles, sizeof(*f->files));
	if (rc)
		return rc;
	e = &f->files[f->nfiles];
	memset(e, 0, sizeof(*e));
	e->path = cfs_strdup(m->path);
	if (!e->path)
		return CFS_ENOMEM;
	f->nfiles++;
	e->size = (uint64_t)m->size;
	e->mode = m->perm;
	e->mtime = m->mtime.tv_sec;
	if (m->sha256)
		memcpy(e->sha256, m->sha256, sizeof(e->sha256));
	return 0;
}

static int ix_path_cmp(const void *a, const void *b)
{
	return strcmp(((const struct cfs_file_entry *)a)->path,
		      ((const struct cfs_file_entry *)b)->path);
}

/*
 * cfs_index_build's order: the roots in policy order, each walked depth
 * first with the names of a directory in byte order (a path's components
 * compared one by one: '/' before any other byte).
 */
static int ix_walk_cmp(const void *a, const void *b, void *policy)
{
	const char *x = ((const struct cfs_file_entry *)a)->path;
	const char *y = ((const struct cfs_file_entry *)b)->path;
	int rx = root_of(policy, x), ry = root_of(policy, y);

	if (rx != ry)
		return rx < ry ? -1 : 1;
	for (;; x++, y++) {
		int cx = *x == '/' ? 0 : *x ? (unsigned char)*x + 1 : -1;
		int cy = *y == '/' ? 0 : *y ? (unsigned char)*y + 1 : -1;

		if (cx != cy)
			return cx < cy ? -1 : 1;
		if (cx < 0)
			return 0;
	}
}

/*
 * Turns the listing into the index: hard links get their file's entry,
 * duplicate names (extraction keeps the last) leave it to the tree.
 */
static void listing_settle(struct fetched *f)
{
	struct cfs_file_entry *v = f->files;
	size_t n = f->nfiles;

	if (f->need_tree || !n)
		return;
	qsort(v, n, sizeof(*v), ix_path_cmp);
	for (size_t i = 0; i + 1 < n; i++)
		if (!strcmp(v[i].path, v[i + 1].path)) {
			f->need_tree = true;
			return;
		}
	/* a name that was a directory and a file: extraction kept one */
	for (size_t i = 0; i < f->dirs.n; i++) {
		struct cfs_file_entry key = {.path = f->dirs.v[i]};

		if (bsearch(&key, v, n, sizeof(*v), ix_path_cmp)) {
			f->need_tree = true;
			return;
		}
	}
	for (size_t i = 0; i < f->nhl; i++) {
		struct cfs_file_entry kl = {.path = f->hl[i].path};
		struct cfs_file_entry kt = {.path = f->hl[i].target};
		struct cfs_file_entry *l =
			bsearch(&kl, v, n, sizeof(*v), ix_path_cmp);
		struct cfs_file_entry *t =
			bsearch(&kt, v, n, sizeof(*v), ix_path_cmp);

		/* the target must be a file with its own data (hashed) */
		if (!l || !t || !t->sha256[0]) {
			f->need_tree = true;
			return;
		}
		l->size = t->size;
		l->mode = t->mode;
		l->mtime = t->mtime;
		memcpy(l->sha256, t->sha256, sizeof(t->sha256));
	}
	qsort_r(v, n, sizeof(*v), ix_walk_cmp, (void *)f->policy);
}

static int session_save_locked(struct cfs_commit_result *res,
			       struct cfs_session *s,
			       const struct cfs_session_save_opts *opts);
static int session_fetch(struct cfs_session *s, int treefd, const char *label,
			 struct fetched *f);

int cfs_session_fetch(struct cfs_session *s, int destdirfd,
		      struct cfs_inode_hashes *hashes)
{
	int rc;

	pthread_mutex_lock(&s->save_mu);
	s->fetch_hashes = hashes;
	rc = session_fetch(s, destdirfd, "pack context tree", NULL);
	s->fetch_hashes = NULL;
	pthread_mutex_unlock(&s->save_mu);
	return rc;
}

int cfs_session_save(struct cfs_commit_result *res, struct cfs_session *s,
		     const struct cfs_session_save_opts *opts)
{
	int rc;

	pthread_mutex_lock(&s->save_mu);
	rc = session_save_locked(res, s, opts);
	pthread_mutex_unlock(&s->save_mu);
	return rc;
}

/*
 * The roots were listed but cannot be committed from the listing (the
 * tail refused, a symlink to follow, ...): the kept stream is unpacked
 * again, whole, into treefd.
 */
static int unpack_again(struct cfs_session *s, int treefd, struct fetched *f)
{
	struct cfs_unpack_opts uo = {.file_hashed = cfs_inode_hashes_note,
				     .hash_payload = &f->hashes};
	int fd = f->spool, rc;
	int64_t t0 = cfs_monotonic_ms();

	if (lseek(fd, 0, SEEK_SET) < 0)
		return cfs_error_errno(errno, "rewinding the packed tree");
	rc = cfs_bundle_unpack(treefd, cfs_bundle_fd_source, &fd, &uo, NULL);
	if (rc)
		cfs_error_prefix("bundle from sandbox %s rejected", s->rt->id);
	else
		timing(s, "extract the roots after all", &t0);
	return rc;
}

static int session_save_locked(struct cfs_commit_result *res,
			       struct cfs_session *s,
			       const struct cfs_session_save_opts *opts)
{
	struct cfs_session_save_opts def = {0};
	struct cfs_commit_opts co;
	struct fetched f = {.spool = -1};
	struct cfs_hash_hints hints = {cfs_inode_hashes_lookup, NULL, NULL,
				       &f.hashes};
	struct cfs_commit_tail tail;
	bool ckpt;
	char name[32];
	int treefd = -1, rc;
	int64_t t0;

	if (!opts)
		opts = &def;
	ckpt = opts->kind == CFS_COMMIT_CHECKPOINT;
	if (s->detached)
		return cfs_error_set(CFS_EINVAL,
				     "a detached session cannot save");
	if (atomic_load(&s->lock_lost))
		return cfs_error_set(CFS_ELOCKED,
				     "lock on %s was lost while the session "
				     "ran; refusing to save over another "
				     "writer",
				     s->id);
	/* Before any sandbox command: another owner means no work at all. */
	rc = cfs_lock_assert_owner(s->st, s->id, s->owner);
	if (rc)
		return rc;
	s->seq++;
	snprintf(name, sizeof(name), "save-%u", s->seq);
	rc = open_subdir(&treefd, s->tmpdir, name);
	if (rc)
		return rc;
	rc = session_fetch(
		s, treefd,
		ckpt ? "checkpoint context tree" : "pack context tree", &f);
	if (rc)
		goto out;
	if (f.tail.listed) {
		listing_settle(&f);
		if (!f.tail.ok || f.need_tree) {
			rc = unpack_again(s, treefd, &f);
			if (rc)
				goto out;
		}
	}
	cfs_commit_opts_init(&co);
	co.kind = opts->kind;
	co.owner = s->owner;
	co.author = opts->author;
	co.message = opts->message;
	co.reason = opts->reason;
	co.key_verified = true; /* attach authenticated the tree */
	co.hash_hints = &hints;
	if (f.spool >= 0 && f.tail.ok) {
		/* the roots as the sandbox compressed them (no repack) */
		tail = (struct cfs_commit_tail){f.spool, f.tail.offset};
		co.tail = &tail;
		if (f.tail.listed && !f.need_tree) {
			/* the roots were never extracted: their listing */
			co.index = f.files;
			co.nindex = f.nfiles;
		}
	} else if (f.spool >= 0) {
		cfs_debug("%s: packing the roots again: %s", s->id,
			  f.tail.why ? f.tail.why : "no tail");
	}
	t0 = cfs_monotonic_ms();
	rc = cfs_context_commit(res, s->st, s->keys, s->id, treefd, &co);
	if (!rc)
		timing(s, "commit", &t0);
out:
	fetched_clear(&f);
	close(treefd);
	{
		char *p = cfs_asprintf("%s/%s", s->tmpdir, name);

		if (p)
			cfs_rmtree_at(AT_FDCWD, p);
		free(p);
	}
	return rc;
}

/* The sandbox's packer writing into a pipe, on a thread of its own. */
struct pull {
	struct cfs_session *s;
	char *script;
	int wfd;
	int rc;
	int code; /* error code of rc, kept across threads */
	char *msg; /* and its message */
	struct cfs_run_result res;
};

static void *pull_main(void *arg)
{
	struct pull *p = arg;
	sigset_t set;

	/* an unpacker that stopped early must give EPIPE, not kill us */
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	p->rc = cfs_runtime_run_io(&p->res, p->s->rt, p->script, -1, p->wfd,
				   p->s->cmd_timeout_ms);
	if (p->rc) {
		p->code = cfs_error_last_code();
		p->msg = cfs_strdup(cfs_error_last());
	}
	close(p->wfd);
	p->wfd = -1;
	return NULL;
}

/*
 * The streamed fetch: the sandbox packs to its stdout, which the runtime
 * streams into the unpacker here, so packing, transfer and validation
 * overlap and no bundle is written in the sandbox or here. The packer's
 * own failure explains a cut stream better than the unpacker's.
 */
/* The stream from the sandbox, also written to the save's spool file. */
struct spooled {
	int rfd;
	int spool;
};

static ssize_t spool_source(void *buf, size_t len, void *payload)
{
	struct spooled *sp = payload;
	ssize_t n = cfs_bundle_fd_source(buf, len, &sp->rfd);

	if (n > 0) {
		int rc = cfs_write_all(sp->spool, buf, (size_t)n);

		if (rc) {
			cfs_error_prefix("keeping the packed tree");
			return rc;
		}
	}
	return n;
}

/* Unpack options for a save's fetch (f) or any other (NULL). */
static void fetch_opts(struct cfs_unpack_opts *o, struct cfs_session *s,
		       struct fetched *f)
{
	memset(o, 0, sizeof(*o));
	if (!f) {
		if (s->fetch_hashes) {
			o->file_hashed = cfs_inode_hashes_note;
			o->hash_payload = s->fetch_hashes;
		}
		return;
	}
	f->tail.policy = &s->policy;
	o->tail = &f->tail;
	o->file_hashed = cfs_inode_hashes_note;
	o->hash_payload = &f->hashes;
	f->policy = &s->policy;
	if (roots_listable(&s->policy)) {
		/* the roots need not be written here to be committed */
		o->list_tail = true;
		o->member = list_root_member;
		o->member_payload = f;
	}
}

static int fetch_streamed(struct cfs_session *s, int treefd, const char *label,
			  struct fetched *f)
{
	struct cfs_bundle_stats stats;
	struct cfs_unpack_opts uo;
	struct pull p = {.s = s, .wfd = -1};
	struct spooled sp = {-1, -1};
	pthread_t th;
	int fds[2], rfd, rc, e;
	bool early = false;
	int64_t t0 = cfs_monotonic_ms();

	if (f) {
		/* the packed roots, kept in case the commit can store them */
		char *path = cfs_asprintf("%s/tail-%u.zst", s->tmpdir,
					  ++s->fetch_seq);

		if (!path)
			return cfs_error_set(CFS_ENOMEM, "out of memory");
		f->spool =
			open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
		if (f->spool < 0) {
			rc = cfs_error_errno(errno, "creating %s", path);
			free(path);
			return rc;
		}
		unlink(path);
		free(path);
		sp.spool = f->spool;
	}
	fetch_opts(&uo, s, f);
	p.script =
		pack_script_for("-", s->mount_path, s->policy_json, f != NULL);
	if (!p.script)
		return cfs_error_set(CFS_ENOMEM, "out of memory");
	if (pipe2(fds, O_CLOEXEC) < 0) {
		free(p.script);
		return cfs_error_errno(errno, "cannot create a pipe");
	}
	(void)fcntl(fds[1], F_SETPIPE_SZ, 1 << 20);
	rfd = fds[0];
	p.wfd = fds[1];
	e = pthread_create(&th, NULL, pull_main, &p);
	if (e) {
		close(fds[0]);
		close(fds[1]);
		free(p.script);
		return cfs_error_errno(e, "cannot start the transfer");
	}
	sp.rfd = rfd;
	rc = f ? cfs_bundle_unpack(treefd, spool_source, &sp, &uo, &stats)
	       : cfs_bundle_unpack(treefd, cfs_bundle_fd_source, &rfd, &uo,
				   &stats);
	if (rc) {
		/* stopped before the stream's end: the unpacker's reason */
		struct pollfd pf = {rfd, POLLIN, 0};

		early = poll(&pf, 1, 0) != 1 || (pf.revents & POLLIN);
	}
	close(rfd); /* a packer still writing stops with EPIPE */
	pthread_join(th, NULL);
	free(p.script);
	if (rc && early) {
		cfs_error_prefix("bundle from sandbox %s rejected", s->rt->id);
	} else if (p.rc) {
		rc = cfs_error_set(p.code ? p.code : p.rc, "%s",
				   p.msg ? p.msg : "transfer failed");
		cfs_error_prefix("%s", label);
	} else if (p.res.exit_code != 0) {
		rc = cfs_runtime_check(&p.res, label);
	} else if (rc) {
		cfs_error_prefix("bundle from sandbox %s rejected", s->rt->id);
	} else {
		timing(s, "pack, transfer and validate", &t0);
	}
	free(p.msg);
	cfs_run_result_clear(&p.res);
	return rc;
}

/*
 * Packs in the sandbox, downloads, removes the sandbox's copy and
 * validates by unpacking into treefd (streamed where the runtime can).
 * Callers hold save_mu.
 */
static int session_fetch(struct cfs_session *s, int treefd, const char *label,
			 struct fetched *f)
{
	struct cfs_bundle_stats stats;
	struct cfs_unpack_opts uo;
	char *local = NULL;
	int bfd = -1, rc;
	int64_t t0 = cfs_monotonic_ms();

	if (cfs_runtime_streams(s->rt))
		return fetch_streamed(s, treefd, label, f);
	rc = run_script(s, pack_script(s, f != NULL), label);
	if (rc)
		return rc;
	timing(s, "remote pack", &t0);
	s->fetch_seq++;
	local = cfs_asprintf("%s/fetch-%u.tar.zst", s->tmpdir, s->fetch_seq);
	if (!local)
		return CFS_ENOMEM;
	rc = cfs_runtime_download(s->rt, s->bundle_path, local);
	if (!rc)
		timing(s, "download", &t0);
	{
		/* The plaintext must not linger in the sandbox either. */
		struct cfs_buf b = CFS_BUF_INIT;
		struct cfs_run_result rr;

		if (!cfs_buf_puts(&b, "rm -f -- ") &&
		    !cfs_shell_quote(&b, s->bundle_path) &&
		    cfs_runtime_run(&rr, s->rt, b.ptr, NULL,
				    s->cmd_timeout_ms) == 0)
			cfs_run_result_clear(&rr);
		cfs_buf_free(&b);
		timing(s, "remote rm", &t0);
	}
	if (rc) {
		cfs_error_prefix("downloading the context from %s", s->rt->id);
		goto out;
	}
	bfd = open(local, O_RDONLY | O_CLOEXEC);
	if (bfd < 0) {
		rc = cfs_error_errno(errno, "opening %s", local);
		goto out;
	}
	fetch_opts(&uo, s, f);
	rc = cfs_bundle_unpack(treefd, cfs_bundle_fd_source, &bfd, &uo, &stats);
	if (rc)
		cfs_error_prefix("bundle from sandbox %s rejected", s->rt->id);
	else
		timing(s, "validate", &t0);
	if (!rc && f) {
		/* the download is the spool (unlinked below, still open) */
		f->spool = bfd;
		bfd = -1;
	}
out:
	if (bfd >= 0)
		close(bfd);
	unlink(local);
	free(local);
	return rc;
}

int cfs_session_detach(struct cfs_session *s)
{
	struct cfs_run_result res;
	char *script;
	int rc;
	int64_t t0 = cfs_monotonic_ms();

	if (!s)
		return 0;
	cfs_session_stop_checkpoints(s);
	heartbeat_stop(s);
	emergency_join(s); /* before the lock goes */
	script = detach_script(s);
	if (script &&
	    cfs_runtime_run(&res, s->rt, script, NULL, s->cmd_timeout_ms) == 0)
		cfs_run_result_clear(&res);
	free(script);
	rc = s->detached ? 0 : cfs_lock_release(s->st, s->id, s->owner, false);
	timing(s, "detach", &t0);
	session_free(s);
	return rc;
}

void cfs_session_abandon(struct cfs_session *s)
{
	session_free(s);
}

const char *cfs_session_owner(const struct cfs_session *s)
{
	return s->owner;
}

const char *cfs_session_mount_path(const struct cfs_session *s)
{
	return s->mount_path;
}

const struct cfs_policy *cfs_session_policy(const struct cfs_session *s)
{
	return &s->policy;
}

bool cfs_session_lock_lost(const struct cfs_session *s)
{
	return atomic_load(&((struct cfs_session *)s)->lock_lost);
}

bool cfs_session_degraded(const struct cfs_session *s)
{
	return s && atomic_load(&s->degraded);
}

int cfs_session_heartbeat_failures(const struct cfs_session *s)
{
	return atomic_load(&((struct cfs_session *)s)->hb_failures);
}
