/* execve() whose path, argv and envp strings sit in a file mapping that was
 * never touched, so their pages are not present when the syscall starts (a
 * BPF probe cannot fault them in).  usage: unfaulted_exec MARKER */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv) {
    const char *marker = argc > 1 ? argv[1] : "marker";
    char path[] = "/tmp/rlg-unfaulted-XXXXXX";
    int fd = mkstemp(path);
    char buf[4096] = {0};
    int n = snprintf(buf, sizeof(buf), "/bin/true%c%s%cRL_EPISODE_ID=ep-hidden%c", 0, marker, 0, 0);
    if (write(fd, buf, sizeof(buf)) != sizeof(buf))
        return 1;
    /* drop the page cache copy so the mapping must fault from disk */
    fsync(fd);
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    char *m = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    unlink(path);
    if (m == MAP_FAILED)
        return 1;
    char *args[] = {m, m + 10, NULL};
    char *env[] = {m + 10 + strlen(marker) + 1, NULL};
    (void)n;
    execve(m, args, env);
    perror("execve");
    return 1;
}
