/*
 * echo_service: serves NAME (default "demo.echo"), answering each call with
 * its payload in upper case, until COUNT calls were answered (0: for ever)
 * or no call came for 30 s. Large answers are written in place in a loan.
 *
 *   cc echo_service.c -I capi/include -L target/release -lhybus_c \
 *      -Wl,-rpath,$PWD/target/release -o echo_service
 *   ./echo_service [NAME [COUNT [SOCKET]]]
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hybus.h"

static int fail(const char *what, hybus_status s) {
    fprintf(stderr, "echo_service: %s: %s (%s)\n", what, hybus_last_error(), hybus_status_name(s));
    return 1;
}

int main(int argc, char **argv) {
    const char *name = argc > 1 ? argv[1] : "demo.echo";
    long count = argc > 2 ? atol(argv[2]) : 0;
    const char *socket = argc > 3 ? argv[3] : NULL;

    hybus_bus *bus;
    hybus_status s = hybus_connect(socket, &bus);
    if (s != HYBUS_OK) return fail("connect", s);
    hybus_service *svc;
    if ((s = hybus_register(bus, name, &svc)) != HYBUS_OK) return fail("register", s);
    printf("ready %s\n", name);
    fflush(stdout);

    for (long served = 0; count == 0 || served < count;) {
        hybus_request *req;
        if ((s = hybus_service_next(svc, 30000, &req)) != HYBUS_OK) return fail("next", s);
        if (req == NULL) break; /* nothing for 30 s */
        int fire;
        hybus_request_is_fire(req, &fire);
        const uint8_t *in;
        size_t len;
        hybus_request_payload(req, &in, &len);
        if (fire) {
            hybus_request_free(req);
            continue;
        }
        /* A caller that stopped waiting gets no work done for it. */
        int64_t left_ms;
        if (hybus_request_deadline(req, &left_ms) == HYBUS_OK && left_ms == 0) {
            hybus_request_fail(req, "the caller's deadline passed");
            continue;
        }
        if (len <= 40) {
            uint8_t out[40];
            for (size_t i = 0; i < len; i++) out[i] = (uint8_t)toupper(in[i]);
            s = hybus_request_reply(req, out, len);
        } else {
            /* Written in place in a chunk of our pool: no copy on the way out. */
            hybus_loan *loan;
            if ((s = hybus_loan_new(bus, len, 1000, &loan)) != HYBUS_OK) {
                hybus_request_fail(req, "out of pool memory");
                continue;
            }
            uint8_t *out;
            size_t room;
            hybus_loan_data(loan, &out, &room);
            for (size_t i = 0; i < len; i++) out[i] = (uint8_t)toupper(in[i]);
            s = hybus_request_reply_loan(req, loan);
        }
        if (s != HYBUS_OK) return fail("reply", s);
        served++;
    }
    hybus_service_free(svc);
    hybus_close(bus);
    return 0;
}
