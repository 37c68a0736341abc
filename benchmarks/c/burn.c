/* A compile-like job: burn MS milliseconds of CPU time (default 10), doing
 * integer work over a small buffer, then exit. usage: burn [MS] */
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
    double ms = argc > 1 ? atof(argv[1]) : 10.0;
    struct timespec ts;
    unsigned char buf[4096];
    unsigned h = 2166136261u;
    long long goal = (long long)(ms * 1e6), used = 0;
    for (int i = 0; i < 4096; i++) buf[i] = (unsigned char)i;
    while (used < goal) {
        for (int k = 0; k < 64; k++)
            for (int i = 0; i < 4096; i++) { h = (h ^ buf[i]) * 16777619u; buf[i] = (unsigned char)h; }
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
        used = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    return (int)(h & 1) * 0;
}
