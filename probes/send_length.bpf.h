/* sock:sock_send_length, every socket send call as it returns, in its task (Linux 6.3+):
 * one program for the two uses, as a tracepoint takes one program per name here:
 * the thread's TLS write finds its socket (tls.bpf.h), and the task that queued a new
 * connection's first bytes is recorded as their sender (sender.bpf.h). */

#ifdef RLG_HAVE_SOCK_SEND_LENGTH
TRACEPOINT_PROBE(sock, sock_send_length) {
    u64 sk = (u64)args->sk;
    tls_on_send(sk);
    if (args->ret > 0 && args->protocol == RLG_IPPROTO_TCP)
        sender_on_send(sk);     /* only TCP sockets are watched */
    return 0;
}
#endif
