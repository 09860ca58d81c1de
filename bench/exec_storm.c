/* fork()+execve("/bin/true")+waitpid(), N times, one child at a time.
 * usage: exec_storm N */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 100000;
    char *const args[] = {"true", NULL};
    char *const env[] = {NULL};
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            execve("/bin/true", args, env);
            _exit(127);
        }
        if (pid < 0 || waitpid(pid, NULL, 0) < 0)
            return 1;
    }
    return 0;
}
