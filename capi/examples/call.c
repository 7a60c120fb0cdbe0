/*
 * call: calls NAME with TEXT and prints the answer; with N > 1, makes N
 * calls of an 8-byte payload and prints the round trip's p50 in ns
 * ("p50_ns=..."), for the C-against-Rust comparison.
 *
 *   cc call.c -I capi/include -L target/release -lhybus_c \
 *      -Wl,-rpath,$PWD/target/release -o call
 *   ./call NAME TEXT [N [SOCKET [IDLE]]]     (IDLE: default, spin, busy, park)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hybus.h"

static int fail(const char *what, hybus_status s) {
    fprintf(stderr, "call: %s: %s (%s)\n", what, hybus_last_error(), hybus_status_name(s));
    return 1;
}

static int cmp(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: call NAME TEXT [N [SOCKET [IDLE]]]\n");
        return 2;
    }
    long n = argc > 3 ? atol(argv[3]) : 1;
    const char *socket = argc > 4 ? argv[4] : NULL;
    const char *idle = argc > 5 ? argv[5] : NULL;

    hybus_bus *bus;
    hybus_status s = hybus_connect_idle(socket, idle, &bus);
    if (s != HYBUS_OK) return fail("connect", s);
    hybus_route *route;
    if ((s = hybus_resolve(bus, argv[1], &route)) != HYBUS_OK) return fail("resolve", s);

    if (n <= 1) {
        hybus_sample *answer;
        if ((s = hybus_call(bus, route, (const uint8_t *)argv[2], strlen(argv[2]), 1000, &answer)) != HYBUS_OK)
            return fail("call", s);
        const uint8_t *data;
        size_t len;
        hybus_sample_data(answer, &data, &len);
        printf("%.*s\n", (int)len, (const char *)data);
        hybus_sample_free(answer);
    } else {
        uint64_t *rtt = malloc(sizeof(uint64_t) * (size_t)n);
        const uint8_t payload[8] = "pingpong";
        for (long i = 0; i < n; i++) {
            hybus_sample *answer;
            uint64_t t0 = now_ns();
            if ((s = hybus_call(bus, route, payload, sizeof payload, 1000, &answer)) != HYBUS_OK) return fail("call", s);
            hybus_sample_free(answer);
            rtt[i] = now_ns() - t0;
        }
        qsort(rtt, (size_t)n, sizeof *rtt, cmp);
        printf("p50_ns=%llu p99_ns=%llu\n", (unsigned long long)rtt[n / 2], (unsigned long long)rtt[n * 99 / 100]);
        free(rtt);
    }
    hybus_route_free(route);
    hybus_close(bus);
    return 0;
}
