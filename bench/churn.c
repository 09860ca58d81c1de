/* Process churn: vfork() a child that exits at once (no page tables to copy: fast), N times, one at a time.
 * Each child is a new process to the monitor (fork + exit records, a process
 * table entry): this is the memory workload.  usage: churn N */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    for (long i = 0; i < n; i++) {
        pid_t pid = vfork();
        if (pid == 0)
            _exit(0);
        if (pid < 0 || waitpid(pid, NULL, 0) < 0)
            return 1;
    }
    return 0;
}
