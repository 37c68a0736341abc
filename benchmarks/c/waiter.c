/* Hand-off worker: a blocking reader of a jobserver pipe (the floor for
 * "released in process A, acquired in process B").
 * usage: waiter POOL_READ_FD POOL_WRITE_FD CTL_IN_FD CTL_OUT_FD
 * Per round: read 1 byte from CTL_IN ('q' ends), write 'r' to CTL_OUT, block
 * in read(POOL_READ_FD), note the time, write the token back, then send
 * (monotonic ns when the read returned, CPU ns spent waiting) to CTL_OUT. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long clk(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 5) { fprintf(stderr, "usage: waiter R W CTL_IN CTL_OUT\n"); return 2; }
    int r = atoi(argv[1]), w = atoi(argv[2]), in = atoi(argv[3]), out = atoi(argv[4]);
    for (;;) {
        unsigned char cmd, tok;
        if (read(in, &cmd, 1) != 1 || cmd == 'q') return 0;
        long long cpu0 = clk(CLOCK_PROCESS_CPUTIME_ID);
        if (write(out, "r", 1) != 1) return 1;
        if (read(r, &tok, 1) != 1) { perror("read token"); return 1; }
        long long msg[2];
        msg[0] = clk(CLOCK_MONOTONIC);
        msg[1] = clk(CLOCK_PROCESS_CPUTIME_ID) - cpu0;
        if (write(w, &tok, 1) != 1) { perror("write token"); return 1; }
        if (write(out, msg, sizeof msg) != (ssize_t)sizeof msg) return 1;
    }
}
