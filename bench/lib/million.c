/* bench/run's scale target: waits for SIGUSR1, then makes N (default 1,000,000) 64-byte
 * mallocs from one call site, keeps them all, prints "allocated", and waits to be killed. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t go;
static void on_usr1(int sig) { (void)sig; go = 1; }
void **volatile kept;

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    kept = calloc(n, sizeof(void *));
    if (!kept) return 1;
    signal(SIGUSR1, on_usr1);
    printf("ready\n");
    fflush(stdout);
    while (!go) usleep(1000);
    for (long i = 0; i < n; i++) kept[i] = malloc(64);
    printf("allocated %ld\n", n);
    fflush(stdout);
    for (;;) pause();
}
