/* Connects to HOST:PORT through io_uring (IORING_OP_CONNECT), never calling
 * connect(2), then sends a line through io_uring too (IORING_OP_SEND).
 * Used to prove the monitor sees connections made below the syscall layer.
 * usage: uring_connect HOST PORT MESSAGE */
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s HOST PORT MESSAGE\n", argv[0]);
        return 2;
    }
    struct io_uring ring;
    if (io_uring_queue_init(4, &ring, 0) < 0) {
        perror("io_uring_queue_init");
        return 1;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &sa.sin_addr);

    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&sa, sizeof(sa));
    io_uring_submit(&ring);
    struct io_uring_cqe *cqe;
    io_uring_wait_cqe(&ring, &cqe);
    int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    if (res < 0) {
        fprintf(stderr, "connect: %s\n", strerror(-res));
        return 1;
    }
    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_send(sqe, fd, argv[3], strlen(argv[3]), 0);
    io_uring_submit(&ring);
    io_uring_wait_cqe(&ring, &cqe);
    res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    printf("%d\n", res);
    close(fd);
    io_uring_queue_exit(&ring);
    return res < 0;
}
