/* Run in a container by agent/tests/host.rs: what the container's seccomp profile
 * lets through. Prints "vsock=E keyctl=E" (0 when the call worked, else its errno). */
#include <errno.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void) {
    int s = socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
    int vs = s >= 0 ? 0 : errno;
    long k = syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0);
    int ke = k >= 0 ? 0 : errno;
    printf("vsock=%d keyctl=%d\n", vs, ke);
    return 0;
}
