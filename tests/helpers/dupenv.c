/* execve with the same key twice in envp: getenv() sees the first.
 * usage: dupenv MARKER */
#include <unistd.h>

int main(int argc, char **argv) {
    char *args[] = {"/bin/true", argc > 1 ? argv[1] : "marker", NULL};
    char *env[] = {"RL_EPISODE_ID=ep-first", "RL_EPISODE_ID=ep-second", NULL};
    execve("/bin/true", args, env);
    return 1;
}
