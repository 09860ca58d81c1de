/* TCP state changes (sock:inet_sock_set_state): which transitions leave the
 * kernel, their owner, and folding of repeated accepts. */

/* Accept folding: the first accepted ESTABLISHED from a peer address on a local
 * address and port is sent; more within RLG_CONNECT_FOLD_NS of the last one
 * sent are only counted, and the next record carries the running count.  An
 * evicted key only restarts its count. */
BPF_TABLE("lru_hash", struct rlg_accept_key, struct rlg_accept_fold, accept_folds, 16384);

/* Which transitions leave the kernel (docs/coverage.md): SYN_SENT (only
 * when no connect() syscall reports it: io_uring, kernel paths), ESTABLISHED
 * (active and accepted), LISTEN, and CLOSE of a socket that listened or
 * that a local task connected.  Teardown steps (FIN_WAIT1/2, CLOSING,
 * LAST_ACK, CLOSE_WAIT, TIME_WAIT), the passive SYN_RECV and the close of an
 * accepted socket say nothing the detectors or the records need. */
static __always_inline int tcp_state_wanted(int oldstate, int newstate, int owned) {
#ifdef RLG_NO_TCP_FILTER
    return 1;
#else
    if (newstate == RLG_TCP_ESTABLISHED || newstate == RLG_TCP_LISTEN)
        return 1;
    if (newstate == RLG_TCP_CLOSE)
        return owned || oldstate == RLG_TCP_LISTEN;
    return 0;
#endif
}

#ifndef RLG_NO_TCP_FOLD
/* 1: send the accepted ESTABLISHED e (accept_count filled); 0: folded */
static __always_inline int accept_fold(struct rlg_tcp_state_event *e) {
    struct rlg_accept_key k = {};
    k.family = e->family;
    k.lport = e->sport;         /* the accepted socket's local side */
    __builtin_memcpy(k.laddr, e->saddr, 16);
    __builtin_memcpy(k.raddr, e->daddr, 16);
    u64 now = bpf_ktime_get_boot_ns();
    struct rlg_accept_fold *f = accept_folds.lookup(&k);
    if (!f) {
        struct rlg_accept_fold nf = {};
        nf.count = 1;
        nf.last_emit_ns = now;
        accept_folds.update(&k, &nf);
        e->accept_count = 1;
        return 1;
    }
    __sync_fetch_and_add(&f->count, 1);
    if (now - f->last_emit_ns < RLG_CONNECT_FOLD_NS) {
        bump_quiet(RLG_QUIET_ACCEPT_FOLDED);
        return 0;
    }
    f->last_emit_ns = now;
    e->accept_count = f->count;
    return 1;
}
#endif

TRACEPOINT_PROBE(sock, inet_sock_set_state) {
    if (args->protocol != RLG_IPPROTO_TCP)
        return 0;
    struct rlg_tcp_state_event e = {};
    u64 sk = (u64)args->skaddr;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    int oldstate = args->oldstate;
    int newstate = args->newstate;
    struct rlg_pending_connect *pc = NULL;
    int accepted = 0;
    if (newstate == RLG_TCP_SYN_SENT) {
        /* connect() runs in the connecting task: remember it as the owner */
        pc = pending_connect.lookup(&tid);
        if (pc && !pc->active)
            pc = NULL;
        if (pc) {
            e.hdr = pc->ev.hdr;     /* the same task, already described */
            e.hdr.type = RLG_EV_TCP_STATE;
            e.hdr.ts_ns = bpf_ktime_get_boot_ns();
        } else {
            fill_header(&e.hdr, RLG_EV_TCP_STATE);
        }
        e.hdr.flags = RLG_TCP_OWNER_KNOWN;
#ifndef RLG_NO_TCP_FILTER
        if (pc) {
            /* the connect record says it; remember the socket.  Its owner is
             * recorded when connect() returns, unless it failed there (a
             * refused connect: no map update and delete for nothing) */
            pc->sk = sk;
            bump_quiet(RLG_QUIET_TCP_DUP);
            return 0;
        }
#endif
        sock_owner.update(&sk, &e.hdr);
    } else {
        /* later transitions often run in softirq: the current task is
         * unrelated, so use the recorded owner or none */
        struct rlg_header *o = sock_owner.lookup(&sk);
        int owned = o != NULL;
        u32 owner_flags = 0;
        if (!o && newstate == RLG_TCP_LISTEN) {
            /* listen() runs in the listening task: record it as the owner (local servers,
             * monitor/state/requests.py), and for the listener's close */
            fill_header(&e.hdr, RLG_EV_TCP_STATE);
            e.hdr.flags = RLG_TCP_OWNER_KNOWN;
            sock_owner.update(&sk, &e.hdr);
            owned = 1;
        } else if (o) {
            e.hdr = *o;
            owner_flags = e.hdr.flags;
            e.hdr.flags = RLG_TCP_OWNER_KNOWN;
            if (newstate == RLG_TCP_CLOSE)
                sock_owner.delete(&sk);
        }
#ifndef RLG_NO_TCP_FILTER
        else if (oldstate == RLG_TCP_SYN_SENT) {
            /* inside the connect() that started it (its owner is recorded
             * when connect() returns): the connecting task is current */
            pc = pending_connect.lookup(&tid);
            if (pc && pc->active && pc->sk == sk) {
                e.hdr = pc->ev.hdr;
                e.hdr.flags = RLG_TCP_OWNER_KNOWN;
                owned = 1;
            } else {
                pc = NULL;
            }
        }
#endif
        if (!tcp_state_wanted(oldstate, newstate, owned)) {
            bump_quiet(RLG_QUIET_TCP_MINOR);
            return 0;
        }
#ifndef RLG_NO_TCP_FOLD
        if (owner_flags & RLG_TCP_OWNER_FOLDED) {
            bump_quiet(RLG_QUIET_TCP_FOLDED);
            return 0;
        }
        accepted = !owned && oldstate == RLG_TCP_SYN_RECV && newstate == RLG_TCP_ESTABLISHED;
#endif
        e.hdr.type = RLG_EV_TCP_STATE;
        e.hdr.ts_ns = bpf_ktime_get_boot_ns();
    }
    struct rlg_tcp_state_event *out = &e;
    if (pc) {
        out = &pc->held;    /* held until the connect's result is known */
        out->hdr = e.hdr;
        pc->has_held = 1;
    }
    out->skaddr = sk;
    out->oldstate = oldstate;
    out->newstate = newstate;
    out->family = args->family;
    out->sport = args->sport;
    out->dport = args->dport;
    out->pad = 0;
    out->accept_count = 0;
    if (args->family == RLG_AF_INET) {
        __builtin_memset(out->saddr, 0, 16);
        __builtin_memset(out->daddr, 0, 16);
        __builtin_memcpy(out->saddr, args->saddr, 4);
        __builtin_memcpy(out->daddr, args->daddr, 4);
    } else {
        __builtin_memcpy(out->saddr, args->saddr_v6, 16);
        __builtin_memcpy(out->daddr, args->daddr_v6, 16);
    }
#ifndef RLG_NO_TCP_FOLD
    if (accepted && !accept_fold(&e))
        return 0;
#endif
    if (!pc)
        emit(&e, sizeof(e), RLG_EV_TCP_STATE);
    return 0;
}
