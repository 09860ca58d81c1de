/* Which task sent a new connection's first bytes (the send record's header).
 *
 * The egress hook runs in the sending task when the bytes leave inside its send call.
 * Bytes queued by one call and pushed out later (TCP_CORK, MSG_MORE, a full window) leave
 * from a timer or softirq, on whatever task was interrupted: naming that task would name
 * a stranger.  sock:sock_send_length fires when a send call returns, in its task; for a
 * watched socket whose first bytes have not left yet it records that task, and the egress
 * hook names it (RLG_SEND_SENDER_QUEUED).  With no such record the bytes are leaving inside
 * the first send call on the socket, in its task.  Either way the header is the sender
 * (RLG_SEND_SENDER_KNOWN), whichever process that is: the one that connected, or another
 * that got the socket (SCM_RIGHTS, pidfd_getfd, fork).  Without the tracepoint (kernels
 * before 6.3) or the socket's address (a connect not made by the syscall) the flag is left
 * out and user space falls back to trusting only descendants of the connecting process. */

#ifdef RLG_HAVE_SOCK_SEND_LENGTH
/* socket address -> cookie of a watched socket, until a send call on it returns; as large
 * as fresh_tcp, so that a flood of connects evicts both together */
BPF_TABLE("lru_hash", u64, u64, fresh_sk, 65536);
/* cookie -> the task whose send call queued the first bytes, until they leave */
BPF_TABLE("lru_hash", u64, struct rlg_header, first_sender, 4096);

/* from the one sock_send_length program (send_length.bpf.h), for a TCP send call that
 * returned > 0 */
static __always_inline void sender_on_send(u64 sk) {
    u64 *c = fresh_sk.lookup(&sk);
    if (!c)
        return;
    u64 cookie = *c;
    fresh_sk.delete(&sk);
    struct rlg_fresh *f = fresh_tcp.lookup(&cookie);
    if (!f || (f->flags & RLG_FRESH_OUT))
        return;     /* the first bytes already left, inside this very call */
    struct rlg_header h = {};
    fill_header(&h, RLG_EV_SEND);
    first_sender.update(&cookie, &h);
}
#endif

/* fresh_tcp flags for this socket: its send calls are watched (sk known) */
static __always_inline u32 watch_sender(u64 sk, u64 cookie) {
#ifdef RLG_HAVE_SOCK_SEND_LENGTH
    if (sk && fresh_sk.update(&sk, &cookie) == 0)
        return RLG_FRESH_SENDER_WATCHED;
#endif
    return 0;
}

/* the sender of the first bytes now leaving a watched socket: 1 when h was filled */
static __always_inline int queued_sender(u64 cookie, struct rlg_header *h) {
#ifdef RLG_HAVE_SOCK_SEND_LENGTH
    struct rlg_header *q = first_sender.lookup(&cookie);
    if (!q)
        return 0;
    bpf_probe_read_kernel(h, sizeof(*h), q);
    first_sender.delete(&cookie);
    return 1;
#else
    return 0;
#endif
}
