/*
 * edgebench-probe: run a benchmark as this process's child and sample the device beside it.
 *
 * Why a native probe: a shell loop reading sysfs forks per read and wakes the cores it
 * measures; Python may not exist on the device; peak memory read from /proc after the child is
 * gone is a race. This program forks the benchmark (so the child's wait4 rusage is its own),
 * optionally pins itself to a core the benchmark does not use, reads each source with one
 * pread() per tick on CLOCK_MONOTONIC, and ends with the child's wait4 rusage and its own CPU.
 *
 * Usage:
 *   edgebench-probe --out FILE [--interval-ms 50] [--root PREFIX] [--source NAME=PATH]...
 *                   [--cpu N] [--idle-ms N] [--mark PREFIX] -- COMMAND [ARG...]
 *   edgebench-probe --version
 *
 * The child's stdout is inherited untouched. With --mark, the child's stderr goes through a
 * pipe: every byte is forwarded unchanged to our stderr, and each line starting with PREFIX is
 * also written to FILE with the time it arrived (phase marks, e.g. llama-bench --progress).
 * With --idle-ms, the sources are sampled for that long before the child starts (idle baseline).
 * Each tick also copies the CPU counters that tell how much of the device others used beside
 * the benchmark (harness/telemetry/contention.py computes that): the aggregate `cpu` line of
 * /proc/stat, the child's own CPU from /proc/<pid>/stat, and the probe's own (getrusage).
 *
 * FILE, format version 3 (one record per line, space separated; '-' = could not read):
 *   edgebench-probe 3
 *   clock CLOCK_MONOTONIC                    (every <t_ns> below is on this clock)
 *   clocks <monotonic_ns> <boottime_ns>      (both read back to back, once: moves samples
 *                                             stamped on CLOCK_BOOTTIME, e.g. /proc/uptime,
 *                                             onto CLOCK_MONOTONIC; '-' where it is missing)
 *   interval_ms <ms>
 *   cpu <n or -1>
 *   clk_tck <n>                              (sysconf(_SC_CLK_TCK): /proc's jiffies per second)
 *   source <index> <name> <path>             (path as given, before --root)
 *   source_error <index> <errno> <message>   (could not open: its column is always '-')
 *   proc VmRSS VmHWM RssAnon RssFile         (the child's /proc/<pid>/status columns, kB)
 *   cputime stat child self_us               (the names of the last three columns of `s`)
 *   idle <t_ns>                              (idle sampling begins)
 *   start <t_ns> <pid>                       (the child exists)
 *   s <t_ns> <cost_ns> <source values...> <proc values...> <stat> <child> <self_us>
 *        stat: the numbers of /proc/stat's aggregate `cpu` line, comma-joined, as read (jiffies);
 *        child: utime,stime,cutime,cstime of /proc/<pid>/stat (jiffies; '-' before the child
 *        exists and after it is reaped); self_us: the probe's own user+system CPU so far (us)
 *   m <t_ns> <stderr line>
 *   exit <t_ns> status=exited|signaled code=<n> signal=<n> maxrss_kb=<n> utime_us=<n>
 *        stime_us=<n> probe_utime_us=<n> probe_stime_us=<n> samples=<n>     (one line)
 *
 * Exit status: the child's; a child killed by a signal kills the probe with the same signal
 * (no core dump), so callers see exactly what they would without the probe.
 *
 * Portability: POSIX, plus two Linux-only calls under `#ifdef __linux__`: pinning (--cpu;
 * elsewhere a mark says it was not done) and the parent-death signal that takes the benchmark
 * down with a killed probe. Only Linux has /proc/<pid>/status, /proc/<pid>/stat and /proc/stat:
 * elsewhere their columns read '-' and peak memory comes from wait4's rusage alone (macOS gives
 * it in bytes: converted to kB). CLOCK_BOOTTIME is read where the C library names it (Linux,
 * Android); elsewhere `clocks` ends in '-'.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PROBE_FORMAT 3
#if defined(__linux__) && !defined(CLOCK_BOOTTIME)
#define CLOCK_BOOTTIME 7 /* Linux >= 2.6.39; older C libraries lack the name */
#endif
#define MAX_SOURCES 256
#define MAX_VALUE 32
#define LINE_MAX_MARK 4096

static const char *const PROC_KEYS[] = {"VmRSS", "VmHWM", "RssAnon", "RssFile"};
#define N_PROC_KEYS (sizeof PROC_KEYS / sizeof PROC_KEYS[0])

struct source {
    const char *name;
    const char *path;
    int fd;
    int err; /* errno of the failed open, when fd < 0 */
};

static struct source sources[MAX_SOURCES];
static int n_sources;
static FILE *out;
static long samples_written;
static int signal_pipe[2] = {-1, -1};
static volatile sig_atomic_t child_pid;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "edgebench-probe: %s: %s\n", what, strerror(errno));
    exit(125);
}

static void usage(void) {
    fputs("usage: edgebench-probe --out FILE [--interval-ms 50] [--root PREFIX] "
          "[--source NAME=PATH]... [--cpu N] [--idle-ms N] [--mark PREFIX] -- COMMAND [ARG...]\n",
          stderr);
    exit(125);
}

/* Wake the main loop on SIGCHLD (self-pipe: poll() cannot race the signal). */
static void on_sigchld(int sig) {
    int saved = errno;
    char c = (char)sig;
    (void)!write(signal_pipe[1], &c, 1);
    errno = saved;
}

/* A stop request for the probe is meant for the benchmark: pass it on. */
static void on_forward(int sig) {
    if (child_pid > 0)
        kill((pid_t)child_pid, sig);
}

static void install(int sig, void (*handler)(int)) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* The first whitespace-delimited token of fd's content (sysfs regenerates it on each pread). */
static int read_token(int fd, char *value, size_t size) {
    char buf[256];
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = buf;
    while (*p == ' ' || *p == '\t' || *p == '\n')
        p++;
    size_t len = strcspn(p, " \t\n");
    if (len == 0 || len >= size)
        return -1;
    memcpy(value, p, len);
    value[len] = '\0';
    return 0;
}

/* VmRSS... values (kB) from one /proc/<pid>/status read; '-' for keys that are absent. */
static void read_proc(int fd, char values[N_PROC_KEYS][MAX_VALUE]) {
    static char buf[8192];
    for (size_t k = 0; k < N_PROC_KEYS; k++)
        strcpy(values[k], "-");
    if (fd < 0)
        return;
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    if (n <= 0)
        return;
    buf[n] = '\0';
    for (char *line = buf; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        for (size_t k = 0; k < N_PROC_KEYS; k++) {
            size_t klen = strlen(PROC_KEYS[k]);
            if (strncmp(line, PROC_KEYS[k], klen) == 0 && line[klen] == ':') {
                char *p = line + klen + 1;
                while (*p == ' ' || *p == '\t')
                    p++;
                size_t len = strspn(p, "0123456789");
                if (len > 0 && len < MAX_VALUE) {
                    memcpy(values[k], p, len);
                    values[k][len] = '\0';
                }
            }
        }
    }
}

/* The numbers of /proc/stat's first (aggregate `cpu`) line, comma-joined, or '-' (also when
 * the line does not fit: a cut line would lose counters silently). */
static void read_cpu_stat(int fd, char *value, size_t size) {
    char buf[512];
    strcpy(value, "-");
    ssize_t n = fd >= 0 ? pread(fd, buf, sizeof buf - 1, 0) : -1;
    if (n <= 0)
        return;
    buf[n] = '\0';
    char *end = strchr(buf, '\n');
    if (strncmp(buf, "cpu ", 4) != 0 || !end)
        return;
    size_t used = 0;
    for (char *p = buf + 4; p < end;) {
        while (*p == ' ')
            p++;
        size_t len = strspn(p, "0123456789");
        if (len == 0)
            break;
        if (used + len + 2 > size) {
            strcpy(value, "-");
            return;
        }
        if (used)
            value[used++] = ',';
        memcpy(value + used, p, len);
        used += len;
        value[used] = '\0';
        p += len;
    }
}

/* utime,stime,cutime,cstime (fields 14-17) of one /proc/<pid>/stat read, or '-'. The command
 * name (field 2) may hold spaces and parentheses: fields are counted from its last ')'. */
static void read_child_cpu(int fd, char *value, size_t size) {
    char buf[1024];
    strcpy(value, "-");
    ssize_t n = fd >= 0 ? pread(fd, buf, sizeof buf - 1, 0) : -1;
    if (n <= 0)
        return;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p)
        return;
    unsigned long long f[4];
    if (sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu", &f[0], &f[1], &f[2], &f[3]) == 4)
        snprintf(value, size, "%llu,%llu,%llu,%llu", f[0], f[1], f[2], f[3]);
}

static int stat_fd = -1; /* /proc/stat, open for the whole run */

/* One tick; proc_fd and child_fd are the child's /proc/<pid>/status and stat, -1 when there is none. */
static void sample(int proc_fd, int child_fd) {
    int64_t t = now_ns();
    char line[MAX_SOURCES * (MAX_VALUE + 1) + N_PROC_KEYS * (MAX_VALUE + 1) + 512];
    char value[MAX_VALUE];
    char proc[N_PROC_KEYS][MAX_VALUE];
    size_t used = 0;
    line[0] = '\0';
    for (int i = 0; i < n_sources; i++) {
        const char *v = (sources[i].fd >= 0 && read_token(sources[i].fd, value, sizeof value) == 0) ? value : "-";
        used += (size_t)snprintf(line + used, sizeof line - used, " %s", v);
    }
    read_proc(proc_fd, proc);
    for (size_t k = 0; k < N_PROC_KEYS; k++)
        used += (size_t)snprintf(line + used, sizeof line - used, " %s", proc[k]);
    char stat[256], child[128];
    read_cpu_stat(stat_fd, stat, sizeof stat);
    read_child_cpu(child_fd, child, sizeof child);
    struct rusage self;
    getrusage(RUSAGE_SELF, &self);
    long long self_us = (long long)(self.ru_utime.tv_sec + self.ru_stime.tv_sec) * 1000000 + self.ru_utime.tv_usec + self.ru_stime.tv_usec;
    used += (size_t)snprintf(line + used, sizeof line - used, " %s %s %lld", stat, child, self_us);
    fprintf(out, "s %lld %lld%s\n", (long long)t, (long long)(now_ns() - t), line);
    samples_written++;
}

/* Forward what the child wrote to stderr and record the lines that start with `prefix`. */
struct marks {
    int fd;
    const char *prefix;
    char buf[LINE_MAX_MARK];
    size_t len;
};

static void mark_line(struct marks *m, int64_t t, const char *line, size_t len) {
    size_t plen = strlen(m->prefix);
    if (len >= plen && strncmp(line, m->prefix, plen) == 0)
        fprintf(out, "m %lld %.*s\n", (long long)t, (int)len, line);
}

static int pump_marks(struct marks *m) {
    char chunk[4096];
    ssize_t n = read(m->fd, chunk, sizeof chunk);
    if (n < 0)
        return errno == EAGAIN || errno == EINTR ? 0 : -1;
    if (n == 0)
        return -1;
    int64_t t = now_ns();
    for (ssize_t done = 0; done < n;) {
        ssize_t w = write(STDERR_FILENO, chunk + done, (size_t)(n - done));
        if (w <= 0)
            break; /* our stderr is gone: keep the benchmark running regardless */
        done += w;
    }
    for (ssize_t i = 0; i < n; i++) {
        if (chunk[i] == '\n' || m->len == sizeof m->buf) {
            mark_line(m, t, m->buf, m->len);
            m->len = 0;
            if (chunk[i] == '\n')
                continue;
        }
        m->buf[m->len++] = chunk[i] == '\r' ? ' ' : chunk[i];
    }
    return 0;
}

static void add_source(const char *spec, const char *root) {
    if (n_sources == MAX_SOURCES) {
        fprintf(stderr, "edgebench-probe: more than %d sources\n", MAX_SOURCES);
        exit(125);
    }
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1] || strpbrk(spec, " \t\n")) {
        fprintf(stderr, "edgebench-probe: --source wants NAME=PATH without spaces, got '%s'\n", spec);
        exit(125);
    }
    struct source *s = &sources[n_sources++];
    s->name = strndup(spec, (size_t)(eq - spec));
    s->path = eq + 1;
    char full[4096];
    snprintf(full, sizeof full, "%s%s", root ? root : "", s->path);
    s->fd = open(full, O_RDONLY | O_CLOEXEC);
    s->err = s->fd < 0 ? errno : 0;
}

static int64_t parse_ms(const char *text, const char *flag, long min) {
    char *end;
    long v = strtol(text, &end, 10);
    if (*end || v < min) {
        fprintf(stderr, "edgebench-probe: %s wants an integer >= %ld, got '%s'\n", flag, min, text);
        exit(125);
    }
    return v;
}

int main(int argc, char **argv) {
    const char *out_path = NULL, *root = NULL, *mark_prefix = NULL;
    const char *specs[MAX_SOURCES + 1];
    int n_specs = 0;
    int64_t interval_ms = 50, idle_ms = 0;
    long cpu = -1;
    int i;
    for (i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) {
            i++;
            break;
        } else if (strcmp(a, "--version") == 0) {
            printf("edgebench-probe %d\n", PROBE_FORMAT);
            return 0;
        } else if (i + 1 >= argc) {
            usage();
        } else if (strcmp(a, "--out") == 0) {
            out_path = argv[++i];
        } else if (strcmp(a, "--interval-ms") == 0) {
            interval_ms = parse_ms(argv[++i], a, 1);
        } else if (strcmp(a, "--idle-ms") == 0) {
            idle_ms = parse_ms(argv[++i], a, 0);
        } else if (strcmp(a, "--cpu") == 0) {
            cpu = (long)parse_ms(argv[++i], a, 0);
        } else if (strcmp(a, "--root") == 0) {
            root = argv[++i];
        } else if (strcmp(a, "--mark") == 0) {
            mark_prefix = argv[++i];
        } else if (strcmp(a, "--source") == 0 && n_specs <= MAX_SOURCES) {
            specs[n_specs++] = argv[++i]; /* opened once --root is known, below */
        } else {
            usage();
        }
    }
    if (!out_path || i >= argc)
        usage();
    char **command = argv + i;
    for (int j = 0; j < n_specs; j++)
        add_source(specs[j], root);

    out = fopen(out_path, "w");
    if (!out)
        die(out_path);
    fcntl(fileno(out), F_SETFD, FD_CLOEXEC); /* not the benchmark's to inherit */
    static char outbuf[1 << 16];
    setvbuf(out, outbuf, _IOFBF, sizeof outbuf);
    fprintf(out, "edgebench-probe %d\nclock CLOCK_MONOTONIC\n", PROBE_FORMAT);
    int64_t mono = now_ns();
#ifdef CLOCK_BOOTTIME
    struct timespec boot;
    if (clock_gettime(CLOCK_BOOTTIME, &boot) == 0)
        fprintf(out, "clocks %lld %lld\n", (long long)mono, (long long)boot.tv_sec * 1000000000 + boot.tv_nsec);
    else
#endif
        fprintf(out, "clocks %lld -\n", (long long)mono); /* no boot clock: board tools cannot be aligned */
    fprintf(out, "interval_ms %lld\ncpu %ld\nclk_tck %ld\n", (long long)interval_ms, cpu, sysconf(_SC_CLK_TCK));
    for (int s = 0; s < n_sources; s++) {
        fprintf(out, "source %d %s %s\n", s, sources[s].name, sources[s].path);
        if (sources[s].fd < 0)
            fprintf(out, "source_error %d %d %s\n", s, sources[s].err, strerror(sources[s].err));
    }
    fputs("proc", out);
    for (size_t k = 0; k < N_PROC_KEYS; k++)
        fprintf(out, " %s", PROC_KEYS[k]);
    fputs("\ncputime stat child self_us\n", out);
    stat_fd = open("/proc/stat", O_RDONLY | O_CLOEXEC);

    if (pipe(signal_pipe) != 0)
        die("pipe");
    for (int k = 0; k < 2; k++) {
        fcntl(signal_pipe[k], F_SETFD, FD_CLOEXEC);
        fcntl(signal_pipe[k], F_SETFL, O_NONBLOCK);
    }
    install(SIGCHLD, on_sigchld);
    install(SIGTERM, on_forward);
    install(SIGINT, on_forward);
    install(SIGHUP, on_forward);
    install(SIGQUIT, on_forward);

    const int64_t interval_ns = interval_ms * 1000000;
    const long flush_every = 1000 / interval_ms + 1; /* about once a second: a killed probe loses little */
    if (idle_ms > 0) {
        int64_t t0 = now_ns();
        fprintf(out, "idle %lld\n", (long long)t0);
        for (int64_t next = t0; next <= t0 + idle_ms * 1000000; next += interval_ns) {
            int64_t wait = next - now_ns();
            if (wait > 0) {
                struct timespec ts = {(time_t)(wait / 1000000000), (long)(wait % 1000000000)};
                while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
                }
            }
            sample(-1, -1);
        }
    }

    struct marks marks = {.fd = -1, .prefix = mark_prefix};
    int err_pipe[2] = {-1, -1};
    if (mark_prefix) {
        if (pipe(err_pipe) != 0)
            die("pipe");
        fcntl(err_pipe[0], F_SETFD, FD_CLOEXEC);
        fcntl(err_pipe[0], F_SETFL, O_NONBLOCK);
    }
    fflush(out);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid == 0) {
        if (mark_prefix) {
            dup2(err_pipe[1], STDERR_FILENO);
            close(err_pipe[1]);
        }
#ifdef __linux__
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a killed probe takes the benchmark with it */
        if (getppid() != parent)
            _exit(125);
#else
        (void)parent;
#endif
        signal(SIGCHLD, SIG_DFL);
        execvp(command[0], command);
        fprintf(stderr, "edgebench-probe: cannot start %s: %s\n", command[0], strerror(errno));
        _exit(127);
    }
    child_pid = pid;
    int64_t started = now_ns();
    fprintf(out, "start %lld %d\n", (long long)started, (int)pid);
    if (mark_prefix) {
        close(err_pipe[1]);
        marks.fd = err_pipe[0];
    }
    if (cpu >= 0) { /* after fork: the child keeps the affinity it was given */
#ifdef __linux__
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET((int)cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) != 0)
            fprintf(out, "m %lld edgebench-probe: cannot pin to cpu %ld: %s\n", (long long)now_ns(), cpu, strerror(errno));
#else
        fprintf(out, "m %lld edgebench-probe: cannot pin to cpu %ld: no CPU affinity call on this OS\n", (long long)now_ns(), cpu);
#endif
    }
    char proc_path[64];
    snprintf(proc_path, sizeof proc_path, "/proc/%d/status", (int)pid);
    int proc_fd = open(proc_path, O_RDONLY | O_CLOEXEC);
    snprintf(proc_path, sizeof proc_path, "/proc/%d/stat", (int)pid);
    int child_fd = open(proc_path, O_RDONLY | O_CLOEXEC);

    int status = 0;
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    int exited = 0;
    int64_t next = started;
    while (!exited) {
        int64_t now = now_ns();
        if (now >= next) {
            sample(proc_fd, child_fd);
            if (samples_written % flush_every == 0)
                fflush(out);
            next += interval_ns;
            if (next <= now) /* a stall (suspend, overload): skip the missed slots */
                next = now + interval_ns - (now - next) % interval_ns;
        }
        struct pollfd fds[2] = {{signal_pipe[0], POLLIN, 0}, {marks.fd, POLLIN, 0}};
        int64_t wait_ms = (next - now_ns() + 999999) / 1000000;
        int ready = poll(fds, marks.fd >= 0 ? 2 : 1, wait_ms > 0 ? (int)wait_ms : 0);
        if (ready > 0 && marks.fd >= 0 && (fds[1].revents & (POLLIN | POLLHUP))) {
            if (pump_marks(&marks) != 0) {
                close(marks.fd);
                marks.fd = -1;
            }
        }
        if (ready > 0 && (fds[0].revents & POLLIN)) {
            char drain[64];
            while (read(signal_pipe[0], drain, sizeof drain) > 0) {
            }
        }
        pid_t r = wait4(pid, &status, WNOHANG, &ru);
        if (r == pid)
            exited = 1;
        else if (r < 0 && errno != EINTR)
            die("wait4");
    }
    int64_t ended = now_ns();
    if (proc_fd >= 0)
        close(proc_fd);
    if (child_fd >= 0)
        close(child_fd);
    while (marks.fd >= 0 && pump_marks(&marks) == 0) { /* what the child wrote just before exiting */
        struct pollfd pfd = {marks.fd, POLLIN, 0};
        if (poll(&pfd, 1, 0) <= 0)
            break;
    }
    if (marks.len)
        mark_line(&marks, ended, marks.buf, marks.len);
    sample(-1, -1); /* the closing reading: the window ends at the child's exit, not the last tick */

    struct rusage self;
    getrusage(RUSAGE_SELF, &self);
#ifdef __APPLE__
    ru.ru_maxrss /= 1024; /* bytes there, kB on Linux and the BSDs */
#endif
    int signaled = WIFSIGNALED(status);
    fprintf(out,
            "exit %lld status=%s code=%d signal=%d maxrss_kb=%ld utime_us=%lld stime_us=%lld "
            "probe_utime_us=%lld probe_stime_us=%lld samples=%ld\n",
            (long long)ended, signaled ? "signaled" : "exited", signaled ? -1 : WEXITSTATUS(status),
            signaled ? WTERMSIG(status) : 0, (long)ru.ru_maxrss,
            (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec,
            (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec,
            (long long)self.ru_utime.tv_sec * 1000000 + self.ru_utime.tv_usec,
            (long long)self.ru_stime.tv_sec * 1000000 + self.ru_stime.tv_usec, samples_written);
    if (fclose(out) != 0)
        die(out_path);
    if (signaled) { /* die the same way, without a core file, so callers see the child's fate */
        struct rlimit none = {0, 0};
        setrlimit(RLIMIT_CORE, &none);
        signal(WTERMSIG(status), SIG_DFL);
        kill(getpid(), WTERMSIG(status));
        return 128 + WTERMSIG(status);
    }
    return WEXITSTATUS(status);
}
