/* dino DIR NAME...: for each NAME listed in DIR, whether readdir's d_ino equals
 * lstat's st_ino (as CPython's os.scandir test checks): prints NAME:same or
 * NAME:differ on stdout (the numbers on stderr), NAME:missing when not listed.
 * Built statically by shim/tests/husk_run.rs and put into the test's --rootfs. */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: dino DIR NAME...\n");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        DIR *d = opendir(argv[1]);
        if (!d) {
            perror(argv[1]);
            return 2;
        }
        struct dirent *e;
        const char *verdict = "missing";
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, argv[i]) != 0)
                continue;
            char p[4096];
            struct stat st;
            snprintf(p, sizeof p, "%s/%s", argv[1], e->d_name);
            if (lstat(p, &st) != 0) {
                perror(p);
                return 2;
            }
            fprintf(stderr, "%s: d_ino %llu st_ino %llu\n", p,
                    (unsigned long long)e->d_ino, (unsigned long long)st.st_ino);
            verdict = (unsigned long long)e->d_ino == (unsigned long long)st.st_ino ? "same" : "differ";
            break;
        }
        closedir(d);
        printf("%s:%s\n", argv[i], verdict);
    }
    return 0;
}
