/*
 * The ceiling of `jwt-agent bench --direct`'s ratio on this machine: the rate a server that does
 * nothing but the token's work reaches behind Unix sockets, against the same work done directly.
 *
 * THREADS threads each do WORK_US microseconds of work per request (a compute loop calibrated to
 * WORK_US; scripts/bench_report.py passes the time of a raw C_Sign, from `bench --direct`):
 *   direct  in a loop, as `bench --direct` signs;
 *   served  behind CONNECTIONS Unix-socket connections driven by one client thread, in the shape
 *           of `bench` against the agent: each server thread owns its share of the connections
 *           and waits on them with epoll, reads a request, does the work and writes the answer;
 *           the client writes the next request as each answer comes back.
 * No parsing, no allocation, no token: what is lost between the two is only what this machine
 * charges for waking a thread that waits on a socket. Slices of a second alternate, as in bench.
 * It also times a bare round trip: one request and its answer between two threads, no work.
 *
 * Usage: ceiling SECONDS WORK_US [CONNECTIONS] [THREADS]   (Linux; built by scripts/bench.sh)
 * Prints {"work_us": ..., "direct": RATE, "served": RATE, "ratio": SERVED/DIRECT,
 *         "round_trip_us": MEDIAN}.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNECTIONS 256
#define REQUEST_BYTES 135 /* a sign_input request of bench */
#define ANSWER_BYTES 203  /* and its answer */

static long iterations;
static atomic_int stop;
static atomic_long done;
static int connections = 16, threads = 2;
static int pairs[MAX_CONNECTIONS][2]; /* [client end, server end] */

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void work(void) {
    volatile double x = 1.0;
    for (long i = 0; i < iterations; i++) x = x * 1.0000001 + 0.5;
}

/* Iterations of the loop that take `us` microseconds: the fastest of a few timed runs. */
static long calibrate(double us) {
    iterations = 1000000;
    double best = 1e9;
    for (int i = 0; i < 5; i++) {
        double t = now();
        work();
        double took = now() - t;
        if (took < best) best = took;
    }
    return (long)(1000000 * us * 1e-6 / best);
}

static void *direct(void *unused) {
    (void)unused;
    long n = 0;
    while (!atomic_load(&stop)) {
        work();
        n++;
    }
    atomic_fetch_add(&done, n);
    return NULL;
}

static void *server(void *arg) {
    long me = (long)arg;
    int ep = epoll_create1(0);
    for (int i = (int)me; i < connections; i += threads) {
        struct epoll_event e = {.events = EPOLLIN, .data.fd = pairs[i][1]};
        epoll_ctl(ep, EPOLL_CTL_ADD, pairs[i][1], &e);
    }
    struct epoll_event ready[MAX_CONNECTIONS];
    char request[4096], answer[ANSWER_BYTES] = {'{'};
    while (!atomic_load(&stop)) {
        int n = epoll_wait(ep, ready, MAX_CONNECTIONS, 10);
        for (int k = 0; k < n; k++) {
            if (read(ready[k].data.fd, request, sizeof request) <= 0) continue;
            work();
            if (write(ready[k].data.fd, answer, sizeof answer) < 0) continue;
        }
    }
    close(ep);
    return NULL;
}

static double direct_slice(double seconds) {
    pthread_t t[64];
    atomic_store(&stop, 0);
    atomic_store(&done, 0);
    double started = now();
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, direct, NULL);
    usleep((useconds_t)(seconds * 1e6));
    atomic_store(&stop, 1);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    return atomic_load(&done) / (now() - started);
}

static double served_slice(double seconds) {
    pthread_t t[64];
    atomic_store(&stop, 0);
    for (long i = 0; i < threads; i++) pthread_create(&t[i], NULL, server, (void *)i);
    int ep = epoll_create1(0);
    char request[REQUEST_BYTES] = {'{'}, answer[4096];
    for (int i = 0; i < connections; i++) {
        struct epoll_event e = {.events = EPOLLIN, .data.fd = pairs[i][0]};
        epoll_ctl(ep, EPOLL_CTL_ADD, pairs[i][0], &e);
    }
    double started = now(), deadline = started + seconds;
    for (int i = 0; i < connections; i++)
        if (write(pairs[i][0], request, sizeof request) < 0) return 0;
    long answered = 0;
    struct epoll_event ready[MAX_CONNECTIONS];
    while (now() < deadline) {
        int n = epoll_wait(ep, ready, MAX_CONNECTIONS, 10);
        for (int k = 0; k < n; k++) {
            if (read(ready[k].data.fd, answer, sizeof answer) <= 0) continue;
            answered++;
            if (write(ready[k].data.fd, request, sizeof request) < 0) continue;
        }
    }
    double rate = answered / (now() - started);
    atomic_store(&stop, 1);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    /* Drain what is still in flight, so the next slice starts with empty sockets. */
    for (int i = 0; i < connections; i++) {
        struct epoll_event e;
        epoll_ctl(ep, EPOLL_CTL_DEL, pairs[i][0], &e);
        while (recv(pairs[i][0], answer, sizeof answer, MSG_DONTWAIT) > 0) {}
        while (recv(pairs[i][1], answer, sizeof answer, MSG_DONTWAIT) > 0) {}
    }
    close(ep);
    return rate;
}

static void *echo(void *fd) {
    char buf[4096];
    for (;;) {
        ssize_t n = read(*(int *)fd, buf, sizeof buf);
        if (n <= 0 || write(*(int *)fd, buf, (size_t)n) < 0) return NULL;
    }
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median of a few batches of round trips, in microseconds. */
static double round_trip_us(void) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, pair) != 0) return 0;
    pthread_t t;
    pthread_create(&t, NULL, echo, &pair[1]);
    enum { BATCHES = 9, TRIPS = 2000 };
    double each[BATCHES];
    char buf[4096] = {'{'};
    for (int b = 0; b < BATCHES; b++) {
        double started = now();
        for (int i = 0; i < TRIPS; i++)
            if (write(pair[0], buf, REQUEST_BYTES) < 0 || read(pair[0], buf, sizeof buf) <= 0) break;
        each[b] = (now() - started) / TRIPS * 1e6;
    }
    close(pair[0]);
    pthread_join(t, NULL);
    close(pair[1]);
    qsort(each, BATCHES, sizeof each[0], by_value);
    return each[BATCHES / 2];
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s SECONDS WORK_US [CONNECTIONS] [THREADS]\n", argv[0]);
        return 2;
    }
    double seconds = atof(argv[1]), work_us = atof(argv[2]);
    if (argc > 3) connections = atoi(argv[3]);
    if (argc > 4) threads = atoi(argv[4]);
    if (seconds <= 0 || work_us <= 0 || connections < 1 || connections > MAX_CONNECTIONS || threads < 1 ||
        threads > 64) {
        fprintf(stderr, "%s: bad arguments\n", argv[0]);
        return 2;
    }
    iterations = calibrate(work_us);
    for (int i = 0; i < connections; i++)
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, pairs[i]) != 0) return 1;
    double direct_sum = 0, served_sum = 0, done_seconds = 0;
    while (done_seconds < seconds) {
        double slice = seconds - done_seconds < 1 ? seconds - done_seconds : 1;
        served_sum += served_slice(slice) * slice;
        direct_sum += direct_slice(slice) * slice;
        done_seconds += slice;
    }
    double direct_rate = direct_sum / seconds, served_rate = served_sum / seconds;
    printf("{\"work_us\": %.1f, \"direct\": %.1f, \"served\": %.1f, \"ratio\": %.4f, \"round_trip_us\": %.1f}\n",
           work_us, direct_rate, served_rate, served_rate / direct_rate, round_trip_us());
    return 0;
}
