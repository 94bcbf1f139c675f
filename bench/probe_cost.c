/* Cost of leaktrace's probes on the hottest path: N malloc+free pairs timed in-process.
 * Prints "ready", waits for SIGUSR1 (or starts at once with argv[2] == "now"), runs, prints
 * "ns_per_pair X", exits. Built with -O2; the pointer escapes so the pair is not optimised out.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
void *volatile sink;

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    signal(SIGUSR1, on_usr1);
    if (argc > 2 && strcmp(argv[2], "now") == 0) go = 1;
    printf("ready %d\n", getpid());
    fflush(stdout);
    while (!go) pause();
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        void *p = malloc(64);
        sink = p;
        free(p);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("ns_per_pair %.1f\n", ns / n);
    return 0;
}
