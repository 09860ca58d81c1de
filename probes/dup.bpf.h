/* Only dups onto fds 0-2 leave the kernel: that is how a socket becomes a
 * shell's stdin/stdout (bash /dev/tcp, nc -e, socat exec:, pty.spawn). */
static __always_inline int on_dup(u64 oldfd, u64 newfd) {
    if (newfd > 2 || oldfd == newfd)
        return 0;
    struct rlg_dup_event e = {};
    fill_header(&e.hdr, RLG_EV_DUP);
    e.oldfd = (int)oldfd;
    e.newfd = (int)newfd;
    emit(&e, sizeof(e), RLG_EV_DUP);
    return 0;
}

#ifdef RLG_HAVE_DUP2
TRACEPOINT_PROBE(syscalls, sys_enter_dup2) {
    return on_dup(args->oldfd, args->newfd);
}
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_dup3) {
    return on_dup(args->oldfd, args->newfd);
}
