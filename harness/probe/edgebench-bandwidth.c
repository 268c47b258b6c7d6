/*
 * edgebench-bandwidth: how many bytes per second the CPU cores can move to and from memory.
 *
 * Why: a decode step of a local LLM reads every weight once per token, so memory bandwidth,
 * not arithmetic, bounds tokens/s. This is the STREAM "triad" (a[i] = b[i] + s * c[i]) over
 * three arrays far larger than the last-level cache, run by the same number of threads the
 * benchmark uses (optionally pinned to the same cores), so the figure is the ceiling the
 * benchmark itself could reach. One portable C file, no dependencies, static like the probe.
 *
 * Usage:
 *   edgebench-bandwidth [--threads N] [--cpus 0,1,...] [--array-mb M] [--reps R]
 *   edgebench-bandwidth --version
 *
 * --threads 0 (the default) means one thread per physical core, as llama.cpp's own default
 * counts them (one per set of SMT siblings). --cpus pins thread i to the i-th listed core.
 * --array-mb 0 (the default) sizes each array to max(4 x the largest cache, 64 MiB), STREAM's
 * rule, shrunk to a sixth of MemAvailable where that is smaller (then "capped" is printed).
 *
 * Output, format version 1 (one record per line, space separated, '-' = unknown):
 *   edgebench-bandwidth 1
 *   kernel triad
 *   threads <n>
 *   cpus <list or ->
 *   cache_bytes <largest cache found in sysfs or ->
 *   array_bytes <bytes per array>
 *   capped <0|1>
 *   bytes_per_rep <bytes counted per repetition: 3 arrays, STREAM's convention>
 *   rep <index> <ns>            (one per timed repetition, after one untimed warm-up)
 *   check <ok|bad>              (the arrays hold what the triad must have computed)
 * Exit status: 0, or 2 on bad arguments, 1 when memory or threads cannot be had.
 *
 * Portability: POSIX threads and a barrier of our own (pthread barriers are optional in POSIX
 * and macOS has none). Pinning and the sysfs/procfs figures are Linux's: elsewhere --cpus
 * still sets the thread count but pins nothing ("cpus -"), and the cache size and
 * MemAvailable read as unknown.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FORMAT_VERSION 1
#define MAX_THREADS 1024
#define MIN_ARRAY_BYTES (64UL << 20)
#define SCALAR 3.0
#ifdef __linux__
#define MAX_CPU CPU_SETSIZE
#else
#define MAX_CPU MAX_THREADS
#endif

struct barrier {
    pthread_mutex_t lock;
    pthread_cond_t turn;
    int count, waiting;
    unsigned long generation;
};

static void barrier_init(struct barrier *b, int count) {
    pthread_mutex_init(&b->lock, NULL);
    pthread_cond_init(&b->turn, NULL);
    b->count = count;
    b->waiting = 0;
    b->generation = 0;
}

/* Returns once `count` threads have called it; the generation tells a wake-up from a spurious one. */
static void barrier_wait(struct barrier *b) {
    pthread_mutex_lock(&b->lock);
    unsigned long generation = b->generation;
    if (++b->waiting == b->count) {
        b->waiting = 0;
        b->generation++;
        pthread_cond_broadcast(&b->turn);
    } else {
        while (generation == b->generation)
            pthread_cond_wait(&b->turn, &b->lock);
    }
    pthread_mutex_unlock(&b->lock);
}

struct shared {
    double *a, *b, *c;
    size_t n;
    int threads, reps;
    int cpus[MAX_THREADS];
    int n_cpus;
    struct barrier start, done;
    int64_t *rep_ns; /* reps + 1 entries: index 0 is the warm-up */
};

struct worker {
    struct shared *sh;
    int index;
};

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long read_long_file(const char *path, int kib_suffix) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    char buf[64] = {0};
    long value = -1;
    if (fgets(buf, sizeof buf, f)) {
        char *end;
        value = strtol(buf, &end, 10);
        if (end == buf) value = -1;
        else if (kib_suffix && (*end == 'K' || *end == 'k')) value *= 1024;
        else if (kib_suffix && (*end == 'M' || *end == 'm')) value *= 1024 * 1024;
    }
    fclose(f);
    return value;
}

/* The largest cache cpu0 reports (the last level, shared or not), or -1. */
static long largest_cache(void) {
    long best = -1;
    for (int i = 0; i < 16; i++) {
        char path[128];
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        long size = read_long_file(path, 1);
        if (size > best) best = size;
    }
    return best;
}

/* MemAvailable in bytes, or -1. */
static long long mem_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    long long kb = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &kb) == 1) break;
    fclose(f);
    return kb < 0 ? -1 : kb * 1024;
}

/* One thread per set of SMT siblings among the online cores: llama.cpp's default count. */
static int physical_cores(void) {
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    char seen[MAX_THREADS][64];
    int n_seen = 0;
    for (long cpu = 0; cpu < MAX_THREADS && n_seen < MAX_THREADS; cpu++) {
        char path[128], sib[64] = {0};
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%ld/topology/thread_siblings", cpu);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        if (!fgets(sib, sizeof sib, f)) sib[0] = 0;
        fclose(f);
        int dup = 0;
        for (int i = 0; i < n_seen && !dup; i++) dup = strcmp(seen[i], sib) == 0;
        if (!dup) memcpy(seen[n_seen++], sib, sizeof sib);
    }
    if (n_seen > 0) return n_seen;
    return online > 0 ? (int)online : 1;
}

static void chunk(const struct shared *sh, int index, size_t *lo, size_t *hi) {
    size_t per = sh->n / (size_t)sh->threads;
    *lo = per * (size_t)index;
    *hi = index == sh->threads - 1 ? sh->n : *lo + per;
}

static void triad(double *restrict a, const double *restrict b, const double *restrict c, size_t lo, size_t hi) {
    for (size_t i = lo; i < hi; i++) a[i] = b[i] + SCALAR * c[i];
}

static void *work(void *arg) {
    struct worker *w = arg;
    struct shared *sh = w->sh;
#ifdef __linux__
    if (sh->n_cpus > 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(sh->cpus[w->index], &set);
        sched_setaffinity(0, sizeof set, &set); /* best effort: a refused pin still measures */
    }
#endif
    size_t lo, hi;
    chunk(sh, w->index, &lo, &hi);
    /* First touch by the thread that will use the pages: they land on its memory node. */
    for (size_t i = lo; i < hi; i++) {
        sh->a[i] = 0.0;
        sh->b[i] = 1.0;
        sh->c[i] = 2.0;
    }
    for (int rep = 0; rep <= sh->reps; rep++) {
        barrier_wait(&sh->start);
        int64_t t0 = w->index == 0 ? now_ns() : 0;
        triad(sh->a, sh->b, sh->c, lo, hi);
        barrier_wait(&sh->done);
        if (w->index == 0) sh->rep_ns[rep] = now_ns() - t0;
    }
    return NULL;
}

static int parse_cpus(const char *text, struct shared *sh) {
    char *copy = strdup(text), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *end;
        long cpu = strtol(tok, &end, 10);
        if (*end || cpu < 0 || cpu >= MAX_CPU || sh->n_cpus >= MAX_THREADS) {
            free(copy);
            return -1;
        }
        sh->cpus[sh->n_cpus++] = (int)cpu;
    }
    free(copy);
    return sh->n_cpus > 0 ? 0 : -1;
}

static int usage(const char *why) {
    fprintf(stderr, "edgebench-bandwidth: %s\nusage: edgebench-bandwidth [--threads N] [--cpus LIST] [--array-mb M] [--reps R]\n", why);
    return 2;
}

int main(int argc, char **argv) {
    static struct shared sh;
    long threads = 0, array_mb = 0, reps = 5;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--version") == 0) {
            printf("edgebench-bandwidth %d\n", FORMAT_VERSION);
            return 0;
        }
        if (!value) return usage("missing value after an option");
        char *end = NULL;
        if (strcmp(arg, "--threads") == 0) threads = strtol(value, &end, 10);
        else if (strcmp(arg, "--array-mb") == 0) array_mb = strtol(value, &end, 10);
        else if (strcmp(arg, "--reps") == 0) reps = strtol(value, &end, 10);
        else if (strcmp(arg, "--cpus") == 0) {
            if (parse_cpus(value, &sh) != 0) return usage("--cpus wants a comma-separated list of core numbers");
        } else return usage("unknown option");
        if (end && *end) return usage("option values must be integers");
        i++;
    }
    if (threads < 0 || threads > MAX_THREADS || array_mb < 0 || reps < 1 || reps > 1000)
        return usage("--threads 0..1024, --array-mb >= 0, --reps 1..1000");
    if (threads == 0) threads = sh.n_cpus > 0 ? sh.n_cpus : physical_cores();
    if (sh.n_cpus > 0 && sh.n_cpus != threads) return usage("--cpus must list exactly one core per thread");

    long cache = largest_cache();
    size_t bytes = array_mb > 0 ? (size_t)array_mb << 20 : MIN_ARRAY_BYTES;
    if (array_mb == 0 && cache > 0 && (size_t)cache * 4 > bytes) bytes = (size_t)cache * 4;
    long long avail = mem_available();
    int capped = 0;
    if (array_mb == 0 && avail > 0 && bytes * 6 > (size_t)avail) {
        bytes = (size_t)(avail / 6);
        capped = 1;
    }
    sh.n = bytes / sizeof(double);
    sh.threads = (int)threads;
    sh.reps = (int)reps;
    if (sh.n < (size_t)sh.threads) return usage("arrays too small for that many threads");
    bytes = sh.n * sizeof(double);
    void *a = NULL, *b = NULL, *c = NULL;
    if (posix_memalign(&a, 64, bytes) || posix_memalign(&b, 64, bytes) || posix_memalign(&c, 64, bytes)) {
        fprintf(stderr, "edgebench-bandwidth: cannot allocate 3 x %zu bytes\n", bytes);
        return 1;
    }
    sh.a = a, sh.b = b, sh.c = c;
    sh.rep_ns = calloc((size_t)reps + 1, sizeof *sh.rep_ns);
    barrier_init(&sh.start, (int)threads);
    barrier_init(&sh.done, (int)threads);
    pthread_t tids[MAX_THREADS];
    struct worker workers[MAX_THREADS];
    for (int t = 0; t < threads; t++) {
        workers[t] = (struct worker){&sh, t};
        if (t > 0 && pthread_create(&tids[t], NULL, work, &workers[t]) != 0) {
            fprintf(stderr, "edgebench-bandwidth: cannot start thread %d: %s\n", t, strerror(errno));
            return 1;
        }
    }
    work(&workers[0]);
    for (int t = 1; t < threads; t++) pthread_join(tids[t], NULL);

    /* After reps + 1 triads over b = 1, c = 2 every element of a is 1 + 3 * 2 = 7. */
    int ok = 1;
    for (size_t i = 0; i < sh.n; i += 4093) ok &= sh.a[i] == 1.0 + SCALAR * 2.0;

    printf("edgebench-bandwidth %d\nkernel triad\nthreads %ld\ncpus ", FORMAT_VERSION, threads);
#ifdef __linux__
    if (sh.n_cpus == 0) printf("-");
    for (int i = 0; i < sh.n_cpus; i++) printf("%s%d", i ? "," : "", sh.cpus[i]);
#else
    printf("-"); /* nothing was pinned */
#endif
    printf("\n");
    if (cache > 0) printf("cache_bytes %ld\n", cache);
    else printf("cache_bytes -\n");
    printf("array_bytes %zu\ncapped %d\nbytes_per_rep %zu\n", bytes, capped, 3 * bytes);
    for (int rep = 1; rep <= reps; rep++) printf("rep %d %lld\n", rep - 1, (long long)sh.rep_ns[rep]);
    printf("check %s\n", ok ? "ok" : "bad");
    return 0;
}
