/* Test child for edgebench-probe (built for the host and for aarch64 by tests/test_probe.py).
 *
 *   child alloc MIB MS   touch MIB MiB of anonymous memory, hold it MS ms, exit 0
 *   child sleep MS       sleep MS ms, exit 0
 *   child spin MS        keep one core busy for MS ms (wall clock), exit 0
 *   child kill SIG       kill itself with signal SIG
 *   child marks          write two "phase" lines to stderr around a pause, exit 3
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void pause_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

int main(int argc, char **argv) {
    if (argc == 4 && strcmp(argv[1], "alloc") == 0) {
        size_t bytes = (size_t)atol(argv[2]) << 20;
        char *p = malloc(bytes);
        if (!p)
            return 2;
        memset(p, 1, bytes);
        pause_ms(atol(argv[3]));
        return p[bytes - 1] == 1 ? 0 : 2;
    }
    if (argc == 3 && strcmp(argv[1], "sleep") == 0) {
        pause_ms(atol(argv[2]));
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "spin") == 0) {
        int64_t end = now_ns() + (int64_t)atol(argv[2]) * 1000000;
        volatile unsigned long spins = 0;
        while (now_ns() < end)
            for (int i = 0; i < 100000; i++)
                spins++;
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "kill") == 0) {
        kill(getpid(), atoi(argv[2]));
        pause_ms(10000);
        return 2;
    }
    if (argc == 2 && strcmp(argv[1], "marks") == 0) {
        printf("stdout line\n");
        fflush(stdout);
        fprintf(stderr, "phase: one\nnot a mark\n");
        pause_ms(200);
        fprintf(stderr, "phase: two\n");
        return 3;
    }
    fprintf(stderr, "usage: child alloc MIB MS | sleep MS | spin MS | kill SIG | marks\n");
    return 64;
}
