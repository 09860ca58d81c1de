/* socket()+connect()+close() to 127.0.0.1:PORT, N times (a closed port:
 * each attempt is refused at once).  usage: connect_flood PORT N */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 9;
    long n = argc > 2 ? atol(argv[2]) : 100000;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        connect(fd, (struct sockaddr *)&sa, sizeof(sa));
        close(fd);
    }
    return 0;
}
