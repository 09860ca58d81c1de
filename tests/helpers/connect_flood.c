/* socket()+connect()+close() to 127.0.0.1:PORT, N times (a closed port:
 * each attempt is refused at once).  usage: connect_flood PORT N [FDS]
 *
 * With FDS > 0 the connecting fd number cycles over FDS distinct values
 * (dup2 onto 100, 101, ...), so no two connects within FDS of each other
 * are "the same connect" to the kernel's folding: each one is sent as its
 * own record. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 9;
    long n = argc > 2 ? atol(argv[2]) : 100000;
    long fds = argc > 3 ? atol(argv[3]) : 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fds > 0) {
        struct rlimit rl = {.rlim_cur = 100 + fds + 16, .rlim_max = 100 + fds + 16};
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
            return 1;
    }
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fds > 0) {
            int to = 100 + (int)(i % fds);
            if (dup2(fd, to) < 0)
                return 1;
            close(fd);
            fd = to;
        }
        connect(fd, (struct sockaddr *)&sa, sizeof(sa));
        close(fd);
    }
    return 0;
}
