/* connect: the syscall (enter: the address from user memory; exit: the
 * result, folding) and cgroup/connect4/6 below it (socket type, cookie, the
 * kernel's copy of the address; io_uring and kernel paths). */

BPF_PERCPU_ARRAY(connect_scratch, struct rlg_pending_connect, 1);

/* Connect folding (like Tetragon's aggregated events): the first connect of a
 * key is always sent in full; identical ones within RLG_CONNECT_FOLD_NS of the
 * last record sent for that key are only counted here, and the next record of
 * the key carries the running count.  User space reports the tail of an idle
 * fold (fold_count not yet seen) and retires idle keys.  A full map means no
 * folding (every connect sent), never a lost count. */
BPF_HASH(connect_folds, struct rlg_connect_key, struct rlg_connect_fold, RLG_CONNECT_FOLDS);
BPF_PERCPU_ARRAY(fold_seq, u64, 1);

/* the egress hook sends the next payload of this socket as its first bytes */
static __always_inline void watch_first_payload(u64 cookie, u32 owner_pid, u64 sk) {
    struct rlg_fresh f = {};
    f.owner_pid = owner_pid;
    f.flags = watch_sender(sk, cookie);  /* sender.bpf.h */
    fresh_tcp.update(&cookie, &f);
}

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    const unsigned char *sa = (const unsigned char *)args->uservaddr;
    u16 family = 0;
    bpf_probe_read_user(&family, sizeof(family), sa);
    if (family == RLG_AF_UNIX)
        return unix_connect_enter((int)args->fd, sa, args->addrlen);  /* ipc.bpf.h */
    if (family != RLG_AF_INET && family != RLG_AF_INET6)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct rlg_pending_connect *pc = pending_connect.lookup(&tid);
    if (!pc) {
        u32 zero = 0;
        struct rlg_pending_connect *z = connect_scratch.lookup(&zero);
        if (!z)
            return 0;
        z->active = 0;
        pending_connect.update(&tid, z);
        pc = pending_connect.lookup(&tid);
        if (!pc)
            return 0;
    }
    struct rlg_connect_event *e = &pc->ev;
    fill_header(&e->hdr, RLG_EV_CONNECT);
    e->hdr.flags = RLG_CONNECT_SYSCALL;
    e->fd = (int)args->fd;
    e->ret = 1;
    e->cookie = 0;
    e->family = family;
    e->sock_type = 0;
    e->protocol = 0;
    e->fold_id = 0;
    e->fold_count = 0;
    __builtin_memset(e->daddr, 0, 16);
    u16 port = 0;
    bpf_probe_read_user(&port, sizeof(port), sa + 2);   /* sin_port / sin6_port */
    e->dport = bpf_ntohs(port);
    if (family == RLG_AF_INET)
        bpf_probe_read_user(e->daddr, 4, sa + 4);
    else
        bpf_probe_read_user(e->daddr, 16, sa + 8);
    pc->sk = 0;
    pc->has_held = 0;
    pc->active = 1;
    return 0;
}

/* 1: send e (fold_id/fold_count filled when it belongs to a fold); 0: folded */
static __always_inline int fold_connect(struct rlg_connect_event *e) {
#ifdef RLG_NO_CONNECT_FOLD
    return 1;
#else
    struct rlg_connect_key k = {};
    k.tgid = e->hdr.pid;
    k.ret = e->ret;
    k.fd = e->fd;
    k.uid = e->hdr.uid;
    u64 *gen = exec_gen.lookup(&k.tgid);
    k.exec_gen = gen ? *gen : 0;
    k.tagset_id = e->hdr.tagset_id;
    k.cgroup_id = e->hdr.cgroup_id;
    k.family = e->family;
    k.dport = e->dport;
    k.sock_type = e->sock_type;
    __builtin_memcpy(k.daddr, e->daddr, 16);
    __builtin_memcpy(k.comm, e->hdr.comm, RLG_TASK_COMM_LEN);
    u64 now = bpf_ktime_get_boot_ns();
    struct rlg_connect_fold *f = connect_folds.lookup(&k);
    if (!f) {
        u32 zero = 0;
        u64 *seq = fold_seq.lookup(&zero);
        if (!seq)
            return 1;
        *seq += 1;
        struct rlg_connect_fold nf = {};
        /* unique without atomics: the cpu in the top bits, a per-cpu sequence below */
        nf.id = ((u64)(bpf_get_smp_processor_id() + 1) << 48) | *seq;
        nf.count = 1;
        nf.last_emit_ns = now;
        nf.last_seen_ns = now;
        if (connect_folds.insert(&k, &nf) == 0) {
            e->fold_id = nf.id;
            e->fold_count = 1;
            return 1;
        }
        f = connect_folds.lookup(&k);   /* another cpu inserted it first */
        if (!f) {
            bump_miss(RLG_MISS_FOLD_FULL);
            return 1;
        }
    }
    /* last_seen first: user space flushes a fold only once it looks idle */
    f->last_seen_ns = now;
    __sync_fetch_and_add(&f->count, 1);
    if (now - f->last_emit_ns < RLG_CONNECT_FOLD_NS) {
        bump_quiet(RLG_QUIET_CONNECT_FOLDED);
        return 0;
    }
    f->last_emit_ns = now;
    e->fold_id = f->id;
    e->fold_count = f->count;   /* read after our increment: includes this connect */
    return 1;
#endif
}

TRACEPOINT_PROBE(syscalls, sys_exit_connect) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct rlg_pending_connect *pc = pending_connect.lookup(&tid);
    if (!pc || !pc->active)
        return unix_connect_exit(tid, (int)args->ret);  /* ipc.bpf.h */
    pc->active = 0;
    struct rlg_connect_event *e = &pc->ev;
    int ret = (int)args->ret;
    e->ret = ret;
    int folded = !fold_connect(e);
    if (!folded)
        emit(e, sizeof(*e), RLG_EV_CONNECT);
    /* the connection goes on (or may, after EINTR): record its owner for its
     * later states and watch for its first payload; a failed one needs neither */
    int lives = ret == 0 || ret == -RLG_EINPROGRESS || ret == -RLG_EINTR;
    if (lives && e->cookie && e->sock_type == RLG_SOCK_STREAM)
        watch_first_payload(e->cookie, e->hdr.pid, pc->sk);
#ifndef RLG_NO_TCP_FILTER
    if (lives && pc->sk) {
        struct rlg_header h = e->hdr;
        h.type = RLG_EV_TCP_STATE;
        h.flags = RLG_TCP_OWNER_KNOWN;
#ifndef RLG_NO_TCP_FOLD
        if (folded)
            h.flags |= RLG_TCP_OWNER_FOLDED;  /* no line names this socket */
#endif
        sock_owner.update(&pc->sk, &h);
    }
#endif
    if (pc->has_held) {
        int ns = pc->held.newstate;
        /* blocking connect: 0 already says ESTABLISHED, an error says CLOSE;
         * EINPROGRESS (non-blocking) says neither, so the state is sent */
        if ((ret == 0 && ns == RLG_TCP_ESTABLISHED) ||
            (ret < 0 && ret != -RLG_EINPROGRESS && ns == RLG_TCP_CLOSE))
            bump_quiet(RLG_QUIET_TCP_DUP);
#ifndef RLG_NO_TCP_FOLD
        else if (folded)
            bump_quiet(RLG_QUIET_TCP_FOLDED);
#endif
        else
            emit(&pc->held, sizeof(pc->held), RLG_EV_TCP_STATE);
    }
    return 0;
}

/* cgroup/connect4 and connect6: below the syscall layer, so io_uring and
 * any other path into inet connect pass here too. */
static __always_inline void on_sock_connect(struct bpf_sock_addr *ctx, u16 family) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tid = (u32)pt;
    u64 cookie = bpf_get_socket_cookie(ctx);
    u32 type = ctx->type;
    u32 protocol = ctx->protocol;
    /* the kernel's copy of the address: a racing thread cannot fake it */
    unsigned char daddr[16] = {};
    u16 dport = bpf_ntohs((u16)ctx->user_port);
    if (family == RLG_AF_INET) {
        u32 a = ctx->user_ip4;
        __builtin_memcpy(daddr, &a, 4);
    } else {
        u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1];
        u32 a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
        __builtin_memcpy(daddr, &a0, 4);
        __builtin_memcpy(daddr + 4, &a1, 4);
        __builtin_memcpy(daddr + 8, &a2, 4);
        __builtin_memcpy(daddr + 12, &a3, 4);
    }
    struct rlg_pending_connect *pc = pending_connect.lookup(&tid);
    struct rlg_connect_event *p = pc && pc->active ? &pc->ev : NULL;
    if (p) {
        p->cookie = cookie;
        p->sock_type = type;
        p->protocol = protocol;
        p->hdr.flags |= RLG_CONNECT_SOCKINFO;
        p->family = family;
        p->dport = dport;
        __builtin_memcpy(p->daddr, daddr, 16);
    } else {
        struct rlg_connect_event e = {};
        fill_header(&e.hdr, RLG_EV_CONNECT);
        e.hdr.flags = RLG_CONNECT_KERNEL | RLG_CONNECT_SOCKINFO;
        e.fd = -1;
        e.ret = 1;
        e.cookie = cookie;
        e.sock_type = type;
        e.protocol = protocol;
        e.family = family;
        e.dport = dport;
        __builtin_memcpy(e.daddr, daddr, 16);
        emit(&e, sizeof(e), RLG_EV_CONNECT);
    }
    if (!p && type == RLG_SOCK_STREAM)
        watch_first_payload(cookie, pt >> 32, 0);  /* a connect() syscall: when it returns */
}

int rlg_connect4(struct bpf_sock_addr *ctx) {
    on_sock_connect(ctx, RLG_AF_INET);
    return 1;
}

int rlg_connect6(struct bpf_sock_addr *ctx) {
    on_sock_connect(ctx, RLG_AF_INET6);
    return 1;
}
