/* A hostile guest program for the vsock abuse test (vmm/tests/vsock_abuse.rs), run
 * inside the test VM:
 *   vsock-abuse flood PORT SECONDS  connect to host port PORT (whose listener's backlog
 *                                   is full) over and over for SECONDS; prints how many
 *                                   attempts were made and how they ended
 *   vsock-abuse hold PORT N         open N connections to host port PORT (the host
 *                                   accepts and closes each) and never close them;
 *                                   prints how many opened, then sleeps forever
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int vsock_connect(unsigned port) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) return -errno;
    struct sockaddr_vm a;
    memset(&a, 0, sizeof a);
    a.svm_family = AF_VSOCK;
    a.svm_cid = VMADDR_CID_HOST;
    a.svm_port = port;
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    return fd;
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: vsock-abuse flood|hold PORT N\n");
        return 2;
    }
    unsigned port = (unsigned)atoi(argv[2]);
    long n = atol(argv[3]);
    if (strcmp(argv[1], "flood") == 0) {
        long tries = 0, refused = 0, reset = 0, other = 0, connected = 0;
        double end = now() + (double)n;
        while (now() < end) {
            int fd = vsock_connect(port);
            tries++;
            if (fd >= 0) { connected++; close(fd); }
            else if (fd == -ECONNRESET) reset++;
            else if (fd == -ECONNREFUSED) refused++;
            else other++;
        }
        printf("FLOOD tries=%ld reset=%ld refused=%ld other=%ld connected=%ld\n", tries,
               reset, refused, other, connected);
        return 0;
    }
    if (strcmp(argv[1], "hold") == 0) {
        struct rlimit r;
        if (getrlimit(RLIMIT_NOFILE, &r) == 0) {
            r.rlim_cur = r.rlim_max;
            setrlimit(RLIMIT_NOFILE, &r);
        }
        long opened = 0, failed = 0;
        for (long i = 0; i < n; i++) {
            int fd = vsock_connect(port);
            if (fd >= 0) opened++; else failed++;
        }
        printf("HOLD opened=%ld failed=%ld\n", opened, failed);
        fflush(stdout);
        for (;;) pause();
    }
    fprintf(stderr, "unknown mode %s\n", argv[1]);
    return 2;
}
