/* A loop of small sends on sockets this program makes itself, for the per-send cost of
 * the kernel programs that see every send (sock:sock_send_length, cgroup_skb/egress).
 *
 *   send_storm udp N    N 16-byte sendto()s on a UDP socket to a loopback receiver
 *   send_storm unix N   N 16-byte send()s on an AF_UNIX datagram socketpair
 *   send_storm tcp N    N 16-byte send()s on an established loopback TCP connection
 *
 * Prints "ns_per_send X" on stdout.  Receivers drain in a thread (unix, tcp) or not at all
 * (udp: a full receive buffer drops datagrams, the send still succeeds). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int drain_fd;

static void *drain(void *arg) {
    (void)arg;
    char buf[65536];
    while (read(drain_fd, buf, sizeof(buf)) > 0)
        ;
    return NULL;
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: send_storm udp|unix|tcp N\n");
        return 2;
    }
    long n = atol(argv[2]);
    int fd = -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
    socklen_t alen = sizeof(a);
    pthread_t t;
    if (!strcmp(argv[1], "udp")) {
        int r = socket(AF_INET, SOCK_DGRAM, 0);
        bind(r, (struct sockaddr *)&a, sizeof(a));
        getsockname(r, (struct sockaddr *)&a, &alen);
        fd = socket(AF_INET, SOCK_DGRAM, 0);
        connect(fd, (struct sockaddr *)&a, sizeof(a));
    } else if (!strcmp(argv[1], "unix")) {
        int sv[2];
        socketpair(AF_UNIX, SOCK_DGRAM, 0, sv);
        fd = sv[0];
        drain_fd = sv[1];
        pthread_create(&t, NULL, drain, NULL);
    } else {
        int l = socket(AF_INET, SOCK_STREAM, 0);
        bind(l, (struct sockaddr *)&a, sizeof(a));
        getsockname(l, (struct sockaddr *)&a, &alen);
        listen(l, 1);
        fd = socket(AF_INET, SOCK_STREAM, 0);
        connect(fd, (struct sockaddr *)&a, sizeof(a));
        drain_fd = accept(l, NULL, NULL);
        pthread_create(&t, NULL, drain, NULL);
    }
    char msg[16] = "rlguard-bench-0";
    double t0 = now_ns();
    for (long i = 0; i < n; i++) {
        if (send(fd, msg, sizeof(msg), 0) < 0 && !strcmp(argv[1], "tcp"))
            return 1;
    }
    printf("ns_per_send %.1f\n", (now_ns() - t0) / n);
    return 0;
}
