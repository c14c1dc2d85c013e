/* Syscall fault injection for the I/O fault sweep (issue 22; SQLite's I/O-error tests are the model).
 *
 * Loaded with LD_PRELOAD into the patchflow process a test runs (the `inv` Python process). It
 * counts, per kind, the calls that touch a path under FAULTSHIM_PREFIX (an install's root: its
 * tree, backups/, patches/, .patchflow/) and makes the FAULTSHIM_N-th call of FAULTSHIM_KIND fail
 * with errno FAULTSHIM_ERRNO instead of reaching the kernel, as a full disk, a quota or a dying disk
 * makes the system call fail. With FAULTSHIM_PERSIST=1 every later call of that kind fails too (a
 * disk that stays full). Calls on other paths (Python's imports, stdout, sockets) are neither
 * counted nor failed, so the N-th call is the same call from run to run.
 *
 * Kinds (the libc entry points Python's os, io and shutil use on Linux):
 *   write   write, pwrite64, writev, sendfile64, copy_file_range (to an fd opened under the prefix)
 *   fsync   fsync, fdatasync, syncfs (of such an fd)
 *   openat  open, open64, openat, openat64 (of a path under the prefix, any flags)
 *   rename  rename, renameat, renameat2 (either path under the prefix)
 *   unlink  unlink, unlinkat, rmdir
 *   mkdir   mkdir, mkdirat
 *
 * Only the first Python process that loads it is hurt (a launcher before it, such as a pyenv shim,
 * passes it on untouched): the constructor removes LD_PRELOAD and the FAULTSHIM_*
 * variables from the environment before Python copies it, so pg_dump, the install command and the
 * services run clean. FAULTSHIM_COUNTS names a file that holds the counts (six little-endian int64
 * in the order above, in a shared mapping: a killed run still leaves them) and FAULTSHIM_LOG, when
 * set, a file each counted call is appended to as "<kind> <n> <path>\n" ("!" after <n> for the
 * call that was failed).
 *
 * Build: cc -shared -fPIC -O2 -o faultshim.so faultshim.c -ldl
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { K_WRITE, K_FSYNC, K_OPENAT, K_RENAME, K_UNLINK, K_MKDIR, KINDS };
static const char *KIND_NAMES[KINDS] = {"write", "fsync", "openat", "rename", "unlink", "mkdir"};

#define MAX_FDS 65536
static unsigned char tracked[MAX_FDS];
static char prefix[PATH_MAX];
static size_t prefix_len;
static int armed;
static int fail_kind = -1;
static long fail_at;
static int fail_errno = EIO;
static int persist;
static long private_counts[KINDS];
static long *counts = private_counts;
static int log_fd = -1;
static __thread int inside;

#define REAL(name) static __typeof__(name) *real_##name; if (!real_##name) real_##name = dlsym(RTLD_NEXT, #name)

static ssize_t raw_write(int fd, const void *buf, size_t size) {
    REAL(write);
    return real_write(fd, buf, size);
}

static int under_prefix(const char *path) {
    if (!armed || !path) return 0;
    return strncmp(path, prefix, prefix_len) == 0 && (path[prefix_len] == '/' || path[prefix_len] == '\0');
}

/* The absolute form of `path` relative to `dirfd` (AT_FDCWD: the working folder) in `out`. */
static const char *resolve(int dirfd, const char *path, char *out) {
    if (!path) return NULL;
    if (path[0] == '/') return path;
    char base[PATH_MAX / 2];
    if (dirfd == AT_FDCWD) {
        if (!getcwd(base, sizeof(base))) return path;
    } else {
        char link[64];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
        ssize_t size = readlink(link, base, sizeof(base) - 1);
        if (size <= 0) return path;
        base[size] = '\0';
    }
    snprintf(out, PATH_MAX, "%s/%s", base, path);
    return out;
}

static int fd_under(int fd) { return armed && fd >= 0 && fd < MAX_FDS && tracked[fd]; }

/* Count one call of `kind` on `path`; nonzero when this call must fail. */
static int hit(int kind, const char *path) {
    long n = __atomic_add_fetch(&counts[kind], 1, __ATOMIC_SEQ_CST);
    int fail = kind == fail_kind && fail_at > 0 && (n == fail_at || (persist && n > fail_at));
    if (log_fd >= 0) {
        char line[PATH_MAX + 64];
        int size = snprintf(line, sizeof(line), "%s %ld%s %s\n", KIND_NAMES[kind], n, fail ? "!" : "", path ? path : "-");
        if (size > 0) raw_write(log_fd, line, (size_t)size < sizeof(line) ? (size_t)size : sizeof(line) - 1);
    }
    return fail;
}

static char *fd_name(int fd, char *out) {
    char link[64];
    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    ssize_t size = readlink(link, out, PATH_MAX - 1);
    out[size > 0 ? size : 0] = '\0';
    return out;
}

#define FAIL_FD(kind, fd) \
    do { \
        if (!inside && fd_under(fd)) { \
            char name_[PATH_MAX]; \
            inside = 1; \
            int fail_ = hit(kind, fd_name(fd, name_)); \
            inside = 0; \
            if (fail_) { errno = fail_errno; return -1; } \
        } \
    } while (0)

#define FAIL_PATH(kind, dirfd, path) \
    do { \
        if (!inside && armed) { \
            char full_[PATH_MAX]; \
            inside = 1; \
            const char *abs_ = resolve(dirfd, path, full_); \
            int fail_ = under_prefix(abs_) && hit(kind, abs_); \
            inside = 0; \
            if (fail_) { errno = fail_errno; return -1; } \
        } \
    } while (0)

static void track(int fd, int dirfd, const char *path) {
    if (fd < 0 || fd >= MAX_FDS || !armed) return;
    char full[PATH_MAX];
    tracked[fd] = (unsigned char)under_prefix(resolve(dirfd, path, full));
}

__attribute__((constructor)) static void faultshim_init(void) {
    char exe[PATH_MAX];
    ssize_t exe_size = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[exe_size > 0 ? exe_size : 0] = '\0';
    const char *base = strrchr(exe, '/');
    if (!base || strncmp(base + 1, "python", 6) != 0) return; /* a launcher (pyenv's shim, env): pass it on */
    const char *root = getenv("FAULTSHIM_PREFIX");
    if (root && *root) {
        strncpy(prefix, root, sizeof(prefix) - 1);
        prefix_len = strlen(prefix);
        while (prefix_len > 1 && prefix[prefix_len - 1] == '/') prefix[--prefix_len] = '\0';
    }
    const char *kind = getenv("FAULTSHIM_KIND");
    for (int k = 0; kind && k < KINDS; k++)
        if (strcmp(kind, KIND_NAMES[k]) == 0) fail_kind = k;
    const char *n = getenv("FAULTSHIM_N");
    fail_at = n ? atol(n) : 0;
    const char *err = getenv("FAULTSHIM_ERRNO");
    if (err && *err) fail_errno = atoi(err);
    const char *keep = getenv("FAULTSHIM_PERSIST");
    persist = keep && strcmp(keep, "1") == 0;
    const char *counts_path = getenv("FAULTSHIM_COUNTS");
    if (counts_path && *counts_path) {
        int fd = (int)open(counts_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (fd >= 0 && ftruncate(fd, 4096) == 0) {
            void *map = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            if (map != MAP_FAILED) counts = (long *)map;
        }
        if (fd >= 0) close(fd);
    }
    const char *log_path = getenv("FAULTSHIM_LOG");
    if (log_path && *log_path) log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    armed = prefix_len > 0;
    unsetenv("LD_PRELOAD");
    unsetenv("FAULTSHIM_PREFIX");
    unsetenv("FAULTSHIM_KIND");
    unsetenv("FAULTSHIM_N");
    unsetenv("FAULTSHIM_ERRNO");
    unsetenv("FAULTSHIM_PERSIST");
    unsetenv("FAULTSHIM_COUNTS");
    unsetenv("FAULTSHIM_LOG");
}

static mode_t mode_arg(int flags, va_list args) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(args, int) : 0;
}

int open(const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_arg(flags, args);
    va_end(args);
    REAL(open);
    FAIL_PATH(K_OPENAT, AT_FDCWD, path);
    int fd = real_open(path, flags, mode);
    if (!inside) track(fd, AT_FDCWD, path);
    return fd;
}

int open64(const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_arg(flags, args);
    va_end(args);
    REAL(open64);
    FAIL_PATH(K_OPENAT, AT_FDCWD, path);
    int fd = real_open64(path, flags, mode);
    if (!inside) track(fd, AT_FDCWD, path);
    return fd;
}

int openat(int dirfd, const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_arg(flags, args);
    va_end(args);
    REAL(openat);
    FAIL_PATH(K_OPENAT, dirfd, path);
    int fd = real_openat(dirfd, path, flags, mode);
    if (!inside) track(fd, dirfd, path);
    return fd;
}

int openat64(int dirfd, const char *path, int flags, ...) {
    va_list args;
    va_start(args, flags);
    mode_t mode = mode_arg(flags, args);
    va_end(args);
    REAL(openat64);
    FAIL_PATH(K_OPENAT, dirfd, path);
    int fd = real_openat64(dirfd, path, flags, mode);
    if (!inside) track(fd, dirfd, path);
    return fd;
}

int close(int fd) {
    REAL(close);
    if (fd >= 0 && fd < MAX_FDS) tracked[fd] = 0;
    return real_close(fd);
}

int dup(int fd) {
    REAL(dup);
    int copy = real_dup(fd);
    if (copy >= 0 && copy < MAX_FDS && fd >= 0 && fd < MAX_FDS) tracked[copy] = tracked[fd];
    return copy;
}

ssize_t write(int fd, const void *buf, size_t size) {
    REAL(write);
    FAIL_FD(K_WRITE, fd);
    return real_write(fd, buf, size);
}

ssize_t pwrite64(int fd, const void *buf, size_t size, off64_t offset) {
    REAL(pwrite64);
    FAIL_FD(K_WRITE, fd);
    return real_pwrite64(fd, buf, size, offset);
}

ssize_t writev(int fd, const struct iovec *iov, int count) {
    REAL(writev);
    FAIL_FD(K_WRITE, fd);
    return real_writev(fd, iov, count);
}

ssize_t sendfile64(int out_fd, int in_fd, off64_t *offset, size_t count) {
    REAL(sendfile64);
    FAIL_FD(K_WRITE, out_fd);
    return real_sendfile64(out_fd, in_fd, offset, count);
}

ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t count) {
    REAL(sendfile);
    FAIL_FD(K_WRITE, out_fd);
    return real_sendfile(out_fd, in_fd, offset, count);
}

ssize_t copy_file_range(int in_fd, off64_t *in_off, int out_fd, off64_t *out_off, size_t size, unsigned int flags) {
    REAL(copy_file_range);
    FAIL_FD(K_WRITE, out_fd);
    return real_copy_file_range(in_fd, in_off, out_fd, out_off, size, flags);
}

int fsync(int fd) {
    REAL(fsync);
    FAIL_FD(K_FSYNC, fd);
    return real_fsync(fd);
}

int fdatasync(int fd) {
    REAL(fdatasync);
    FAIL_FD(K_FSYNC, fd);
    return real_fdatasync(fd);
}

int syncfs(int fd) {
    REAL(syncfs);
    FAIL_FD(K_FSYNC, fd);
    return real_syncfs(fd);
}

/* Nonzero when a rename from ``old`` (under ``olddir``) to ``new`` (under ``newdir``) touches the
 * prefix and is the call that must fail (counted once, under the kind "rename"). */
static int rename_fails(int olddir, const char *old, int newdir, const char *new) {
    if (inside || !armed) return 0;
    char a[PATH_MAX], b[PATH_MAX];
    const char *from = resolve(olddir, old, a), *to = resolve(newdir, new, b);
    if (!under_prefix(from) && !under_prefix(to)) return 0;
    inside = 1;
    int fail = hit(K_RENAME, to);
    inside = 0;
    return fail;
}

int rename(const char *old, const char *new) {
    REAL(rename);
    if (rename_fails(AT_FDCWD, old, AT_FDCWD, new)) { errno = fail_errno; return -1; }
    return real_rename(old, new);
}

int renameat(int olddir, const char *old, int newdir, const char *new) {
    REAL(renameat);
    if (rename_fails(olddir, old, newdir, new)) { errno = fail_errno; return -1; }
    return real_renameat(olddir, old, newdir, new);
}

int renameat2(int olddir, const char *old, int newdir, const char *new, unsigned int flags) {
    REAL(renameat2);
    if (rename_fails(olddir, old, newdir, new)) { errno = fail_errno; return -1; }
    return real_renameat2(olddir, old, newdir, new, flags);
}

int unlink(const char *path) {
    REAL(unlink);
    FAIL_PATH(K_UNLINK, AT_FDCWD, path);
    return real_unlink(path);
}

int unlinkat(int dirfd, const char *path, int flags) {
    REAL(unlinkat);
    FAIL_PATH(K_UNLINK, dirfd, path);
    return real_unlinkat(dirfd, path, flags);
}

int rmdir(const char *path) {
    REAL(rmdir);
    FAIL_PATH(K_UNLINK, AT_FDCWD, path);
    return real_rmdir(path);
}

int mkdir(const char *path, mode_t mode) {
    REAL(mkdir);
    FAIL_PATH(K_MKDIR, AT_FDCWD, path);
    return real_mkdir(path, mode);
}

int mkdirat(int dirfd, const char *path, mode_t mode) {
    REAL(mkdirat);
    FAIL_PATH(K_MKDIR, dirfd, path);
    return real_mkdirat(dirfd, path, mode);
}
