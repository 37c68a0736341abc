/* Raw token cycle in C: read(2) one byte from a pipe and write(2) it back.
 * usage: cycle ITERATIONS BATCHES  -> prints one ns-per-cycle figure per batch. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    int batches = argc > 2 ? atoi(argv[2]) : 5;
    int p[2];
    unsigned char c = '+';
    if (pipe(p) != 0 || write(p[1], &c, 1) != 1) { perror("pipe"); return 1; }
    for (int b = 0; b < batches; b++) {
        long long t0 = now_ns();
        for (long i = 0; i < n; i++) {
            if (read(p[0], &c, 1) != 1) { perror("read"); return 1; }
            if (write(p[1], &c, 1) != 1) { perror("write"); return 1; }
        }
        printf("%.2f\n", (double)(now_ns() - t0) / (double)n);
    }
    return 0;
}
