/*
 * A power-cut model for the crash harness (examples/crash.rs --power-loss), loaded into the
 * daemon with LD_PRELOAD.
 *
 * A disk with a volatile write cache keeps, after a power cut, what a file held at its last
 * fsync plus any subset of the writes made since. This shim records exactly that for the
 * registry's files (POWERLOSS_WATCH/latchkey.db and -wal; the -shm index is rebuilt from the
 * WAL, so it is not kept): at every fsync/fdatasync it copies the file to
 * POWERLOSS_STATE/<name>.durable and empties POWERLOSS_STATE/<name>.pending; every write and
 * truncate in between is appended to the .pending log (offset, length, bytes; a truncate has
 * length UINT64_MAX). The harness builds the post-cut file from the two after a SIGKILL.
 *
 * Build: gcc -shared -fPIC -O2 -o powerloss.so powerloss.c -ldl -lpthread
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FD 65536
/* Room for the state dir, a file name and a suffix. */
#define STATE_MAX (PATH_MAX + 64)

static int (*real_open)(const char *, int, ...);
static int (*real_openat)(int, const char *, int, ...);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_close)(int);
static int (*real_unlink)(const char *);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char watch[PATH_MAX];
static char state[PATH_MAX];
/* fd -> index into NAMES + 1 (0: not watched). */
static unsigned char watched[MAX_FD];
static const char *const NAMES[] = {"latchkey.db", "latchkey.db-wal"};

__attribute__((constructor)) static void init(void) {
  real_open = dlsym(RTLD_NEXT, "open");
  real_openat = dlsym(RTLD_NEXT, "openat");
  real_write = dlsym(RTLD_NEXT, "write");
  real_pwrite = dlsym(RTLD_NEXT, "pwrite");
  real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
  real_fsync = dlsym(RTLD_NEXT, "fsync");
  real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
  real_close = dlsym(RTLD_NEXT, "close");
  real_unlink = dlsym(RTLD_NEXT, "unlink");
  const char *w = getenv("POWERLOSS_WATCH"), *s = getenv("POWERLOSS_STATE");
  if (w && s) {
    snprintf(watch, sizeof watch, "%s", w);
    snprintf(state, sizeof state, "%s", s);
  }
}

/* Which registry file `path` is (1-based), or 0. */
static int which(const char *path) {
  if (!watch[0] || !path) return 0;
  size_t n = strlen(watch);
  if (strncmp(path, watch, n) != 0 || path[n] != '/') return 0;
  for (size_t i = 0; i < sizeof NAMES / sizeof *NAMES; i++)
    if (strcmp(path + n + 1, NAMES[i]) == 0) return (int)i + 1;
  return 0;
}

static void state_path(char *out, int w, const char *suffix) {
  snprintf(out, STATE_MAX, "%s/%s.%s", state, NAMES[w - 1], suffix);
}

static void track(int fd, const char *path) {
  int w = which(path);
  if (fd >= 0 && fd < MAX_FD) watched[fd] = (unsigned char)w;
}

static void write_all(int fd, const void *buf, size_t len) {
  const char *p = buf;
  while (len > 0) {
    ssize_t k = real_write(fd, p, len);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) abort(); /* the model would be wrong: stop loudly */
    p += k;
    len -= (size_t)k;
  }
}

/* Appends one record to the file's pending log. */
static void log_op(int fd, uint64_t off, const void *buf, uint64_t len) {
  int w = (fd >= 0 && fd < MAX_FD) ? watched[fd] : 0;
  if (!w) return;
  char p[STATE_MAX];
  state_path(p, w, "pending");
  pthread_mutex_lock(&lock);
  int log = real_open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (log < 0) abort();
  uint64_t head[2] = {off, len};
  write_all(log, head, sizeof head);
  if (len != UINT64_MAX) write_all(log, buf, len);
  real_close(log);
  pthread_mutex_unlock(&lock);
}

/* At a sync: the file as it is now becomes what survives; nothing is pending. */
static void synced(int fd) {
  int w = (fd >= 0 && fd < MAX_FD) ? watched[fd] : 0;
  if (!w) return;
  char tmp[STATE_MAX], durable[STATE_MAX], pending[STATE_MAX];
  state_path(tmp, w, "tmp");
  state_path(durable, w, "durable");
  state_path(pending, w, "pending");
  pthread_mutex_lock(&lock);
  int out = real_open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (out < 0) abort();
  char buf[65536];
  off_t at = 0;
  for (;;) {
    ssize_t k = pread(fd, buf, sizeof buf, at);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) abort();
    if (k == 0) break;
    write_all(out, buf, (size_t)k);
    at += k;
  }
  real_close(out);
  if (rename(tmp, durable) != 0) abort();
  int log = real_open(pending, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (log >= 0) real_close(log);
  pthread_mutex_unlock(&lock);
}

/* The mode argument open(2) and openat(2) take only when they may create the file. */
#define TAKE_MODE(flags, mode)                                          \
  do {                                                                  \
    va_list ap;                                                         \
    va_start(ap, flags);                                                \
    mode = ((flags) & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;  \
    va_end(ap);                                                         \
  } while (0)

int open(const char *path, int flags, ...) {
  mode_t mode;
  TAKE_MODE(flags, mode);
  int fd = real_open(path, flags, mode);
  track(fd, path);
  return fd;
}
int open64(const char *path, int flags, ...) __attribute__((alias("open")));

int openat(int dirfd, const char *path, int flags, ...) {
  mode_t mode;
  TAKE_MODE(flags, mode);
  int fd = real_openat(dirfd, path, flags, mode);
  track(fd, path);
  return fd;
}
int openat64(int dirfd, const char *path, int flags, ...) __attribute__((alias("openat")));

ssize_t write(int fd, const void *buf, size_t len) {
  if (fd >= 0 && fd < MAX_FD && watched[fd]) {
    off_t at = lseek(fd, 0, SEEK_CUR);
    ssize_t k = real_write(fd, buf, len);
    if (k > 0) log_op(fd, (uint64_t)at, buf, (uint64_t)k);
    return k;
  }
  return real_write(fd, buf, len);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t at) {
  ssize_t k = real_pwrite(fd, buf, len, at);
  if (k > 0) log_op(fd, (uint64_t)at, buf, (uint64_t)k);
  return k;
}
ssize_t pwrite64(int fd, const void *buf, size_t len, off_t at) __attribute__((alias("pwrite")));

int ftruncate(int fd, off_t len) {
  int r = real_ftruncate(fd, len);
  if (r == 0) log_op(fd, (uint64_t)len, NULL, UINT64_MAX);
  return r;
}
int ftruncate64(int fd, off_t len) __attribute__((alias("ftruncate")));

int fsync(int fd) {
  int r = real_fsync(fd);
  if (r == 0) synced(fd);
  return r;
}

int fdatasync(int fd) {
  int r = real_fdatasync(fd);
  if (r == 0) synced(fd);
  return r;
}

int close(int fd) {
  if (fd >= 0 && fd < MAX_FD) watched[fd] = 0;
  return real_close(fd);
}

/* Deleting a registry file (the WAL at a clean close) is taken as durable at once. */
int unlink(const char *path) {
  int w = which(path);
  int r = real_unlink(path);
  if (r == 0 && w) {
    char p[STATE_MAX];
    state_path(p, w, "durable");
    real_unlink(p);
    state_path(p, w, "pending");
    real_unlink(p);
  }
  return r;
}
