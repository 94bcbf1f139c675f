/* Cost of growth mode on its hot path: first-touch page faults. Maps 256 pages, writes one
 * byte in each, unmaps them, N times, timed in-process. Prints "ready", waits for SIGUSR1,
 * runs, prints "ns_per_page X" (a fault, the kernel zeroing a page, and a 1/256th share of
 * mmap+munmap; traced: also leaktrace's record and release), exits.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGES 256
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 2000;
    signal(SIGUSR1, on_usr1);
    printf("ready %d\n", getpid());
    fflush(stdout);
    while (!go) pause();
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n; i++) {
        volatile char *p = mmap(NULL, PAGES * 4096L, PROT_READ | PROT_WRITE,
                                MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        for (int j = 0; j < PAGES; j++) p[j * 4096L] = 1;
        munmap((void *)p, PAGES * 4096L);
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
    printf("ns_per_page %.1f\n", ns / n / PAGES);
    return 0;
}
