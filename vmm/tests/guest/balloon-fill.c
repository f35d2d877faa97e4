/* The free page reporting guest's load (vmm/tests/balloon.rs): maps SIZE MiB of
 * anonymous memory, touches every page (printing progress), says BALLOON-PEAK, holds
 * it for HOLD seconds, unmaps it and says BALLOON-FREED.
 *
 *     balloon-fill SIZE_MIB HOLD_S
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: balloon-fill SIZE_MIB HOLD_S\n");
        return 2;
    }
    size_t mib = strtoul(argv[1], NULL, 10);
    unsigned hold = strtoul(argv[2], NULL, 10);
    size_t len = mib << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    /* Whole 2 MiB guest pages: fewer faults, and freed as blocks page reporting takes. */
    madvise(p, len, MADV_HUGEPAGE);
    double t0 = now();
    for (size_t off = 0; off < len; off += 4096) {
        p[off] = 1;
        if ((off + 4096) % (128u << 20) == 0) {
            printf("BALLOON-FILL %zu MiB %.1f s\n", (off + 4096) >> 20, now() - t0);
            fflush(stdout);
        }
    }
    printf("BALLOON-PEAK %zu MiB in %.1f s\n", mib, now() - t0);
    fflush(stdout);
    sleep(hold);
    munmap(p, len);
    printf("BALLOON-FREED\n");
    fflush(stdout);
    return 0;
}
