/*
 * The daemon's live heap, for the soak run (scripts/soak.sh --heap), loaded with LD_PRELOAD.
 *
 * RSS alone cannot tell a leak from glibc keeping freed memory in its arenas. This shim starts
 * one thread that every HEAPSTATS_EVERY seconds (default 10) appends a line to the file
 * HEAPSTATS_FILE: unix seconds, bytes in use (mallinfo2: uordblks + hblkhd), bytes free in the
 * arenas (fordblks), bytes from the system (arena + hblkhd) and the number of arenas (counted
 * in malloc_info's XML). It is an ordinary thread, so it takes the arena locks as any caller of
 * malloc does: attaching a debugger and calling malloc_stats could stop a thread holding one and
 * deadlock.
 *
 * HEAPSTATS_TRIM_EVERY=N also calls malloc_trim(0) every N seconds (just before that sample),
 * to see what a daemon that trimmed its heap would gain (docs/RELIABILITY.md, "Soak": nothing
 * measurable; the memory a storm leaves free lies in pieces smaller than a page).
 *
 * Build: gcc -shared -fPIC -O2 -o heapstats.so heapstats.c -lpthread
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char *out_path;
static unsigned every = 10;
static unsigned trim_every;

static unsigned count_arenas(void) {
  char *xml = NULL;
  size_t len = 0;
  FILE *mem = open_memstream(&xml, &len);
  if (mem == NULL) return 0;
  malloc_info(0, mem);
  fclose(mem);
  unsigned n = 0;
  for (const char *p = xml; p != NULL && (p = strstr(p, "<heap nr=")) != NULL; p++) n++;
  free(xml);
  return n;
}

static void *sampler(void *unused) {
  (void)unused;
  time_t last_trim = time(NULL);
  for (;;) {
    if (trim_every > 0 && time(NULL) - last_trim >= (time_t)trim_every) {
      malloc_trim(0);
      last_trim = time(NULL);
    }
    struct mallinfo2 mi = mallinfo2();
    unsigned arenas = count_arenas();
    FILE *f = fopen(out_path, "a");
    if (f != NULL) {
      fprintf(f, "%lld,%zu,%zu,%zu,%u\n", (long long)time(NULL), mi.uordblks + mi.hblkhd,
              mi.fordblks, mi.arena + mi.hblkhd, arenas);
      fclose(f);
    }
    sleep(every);
  }
  return NULL;
}

__attribute__((constructor)) static void start(void) {
  const char *path = getenv("HEAPSTATS_FILE");
  if (path == NULL || *path == '\0') return;
  out_path = strdup(path);
  const char *e = getenv("HEAPSTATS_EVERY");
  if (e != NULL && atoi(e) > 0) every = (unsigned)atoi(e);
  const char *te = getenv("HEAPSTATS_TRIM_EVERY");
  if (te != NULL && atoi(te) > 0) trim_every = (unsigned)atoi(te);
  /* Only the daemon is measured: processes it starts do not inherit the shim. */
  unsetenv("LD_PRELOAD");
  unsetenv("HEAPSTATS_FILE");
  FILE *f = fopen(out_path, "w");
  if (f != NULL) {
    fputs("unix_s,in_use_bytes,free_bytes,system_bytes,arenas\n", f);
    fclose(f);
  }
  pthread_t t;
  if (pthread_create(&t, NULL, sampler, NULL) == 0) pthread_detach(t);
}
