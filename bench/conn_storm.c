/* Connection storms against a loopback server this program runs itself.
 *
 *   conn_storm listen N    socket()+connect()+close() to a listening port
 *   conn_storm payload N   the same, sending a first message on each
 *                          connection ("rlguard-bench <i>\n") before close()
 *
 * The server is a thread that accepts, reads until EOF and closes, so each
 * connection completes its handshake and (payload) delivers its bytes.  The
 * port is printed on stderr ("port P").  Exits 0 when all N connects
 * succeeded. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int lfd;

static void *serve(void *arg) {
    (void)arg;
    char buf[256];
    for (;;) {
        int c = accept(lfd, NULL, NULL);
        if (c < 0)
            continue;
        while (read(c, buf, sizeof(buf)) > 0)
            ;
        close(c);
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: conn_storm listen|payload N\n");
        return 2;
    }
    int payload = strcmp(argv[1], "payload") == 0;
    long n = atol(argv[2]);
    struct sockaddr_in sa = {.sin_family = AF_INET};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lfd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    socklen_t len = sizeof(sa);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 4096) < 0 ||
        getsockname(lfd, (struct sockaddr *)&sa, &len) < 0) {
        perror("listen");
        return 1;
    }
    fprintf(stderr, "port %d\n", ntohs(sa.sin_port));
    pthread_t t;
    pthread_create(&t, NULL, serve, NULL);
    long failed = 0;
    char msg[64];
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
            failed++;
        } else if (payload) {
            int m = snprintf(msg, sizeof(msg), "rlguard-bench %ld\n", i);
            if (write(fd, msg, m) != m)
                failed++;
        }
        close(fd);
    }
    if (failed)
        fprintf(stderr, "%ld of %ld connections failed\n", failed, n);
    return failed ? 1 : 0;
}
