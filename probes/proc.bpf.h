/* Process lifecycle: clone flags (threads are not processes), fork (the
 * child inherits lineage and tags), exit_group and fatal signals (how the
 * process ended), exit (the record, and the per-process state goes). */

BPF_TABLE("lru_hash", u32, u64, clone_flags, 4096);

TRACEPOINT_PROBE(syscalls, sys_enter_clone) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 f = args->clone_flags;
    clone_flags.update(&tid, &f);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_clone3) {
    u32 tid = (u32)bpf_get_current_pid_tgid();
    u64 f = 0;
    /* struct clone_args starts with the u64 flags (UAPI) */
    bpf_probe_read_user(&f, sizeof(f), (void *)args->uargs);
    clone_flags.update(&tid, &f);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tid = (u32)pt;
    u32 tgid = pt >> 32;
    u64 *fl = clone_flags.lookup(&tid);
    if (fl) {
        u64 f = *fl;
        clone_flags.delete(&tid);
        if (f & RLG_CLONE_THREAD)
            return 0;       /* a thread, not a process */
    }
    u32 child = args->child_pid;
    struct rlg_proc_state cs = {};
    cs.ppid = tgid;
    struct rlg_proc_state *ps = proc_state.lookup(&tgid);
    if (ps) {
        cs.tagset_id = ps->tagset_id;
        cs.tag_origin = ps->tag_origin;
    }
    if (proc_state.update(&child, &cs) != 0)
        bump_miss(RLG_MISS_PROC_STATE_FULL);

    struct rlg_fork_event e = {};
    fill_header(&e.hdr, RLG_EV_FORK);
    e.child_pid = child;
    emit(&e, sizeof(e), RLG_EV_FORK);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct rlg_exit_info x = {};
    x.code = (int)(args->error_code & 0xff);
    exit_info.update(&tgid, &x);
    return 0;
}

/* default action is not termination for these */
static __always_inline int fatal_by_default(int sig) {
    return !(sig == 17 || sig == 18 || sig == 19 || sig == 20 || sig == 21 ||
             sig == 22 || sig == 23 || sig == 28 || sig <= 0 || sig >= 32);
}

struct rlg_sent_signal {
    int sig;
    int pad;
    u64 ts;
};
/* the last fatal-by-default signal queued to a task: the kernel turns a fatal
 * signal into a group SIGKILL when it is sent, so delivery alone shows 9 */
BPF_TABLE("lru_hash", u32, struct rlg_sent_signal, sent_signal, 16384);

TRACEPOINT_PROBE(signal, signal_generate) {
    if (args->result != 0 || args->sig == 9 || !fatal_by_default(args->sig))
        return 0;   /* 0: TRACE_SIGNAL_DELIVERED (queued) */
    u32 target = args->pid;
    struct rlg_sent_signal s = {};
    s.sig = args->sig;
    s.ts = bpf_ktime_get_boot_ns();
    sent_signal.update(&target, &s);
    return 0;
}

TRACEPOINT_PROBE(signal, signal_deliver) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tgid = pt >> 32;
    u32 tid = (u32)pt;
    int sig = args->sig;
    if (args->sa_handler != 0) {
        /* handled or ignored: not fatal, and not the cause of a later death */
        sent_signal.delete(&tgid);
        sent_signal.delete(&tid);
        return 0;
    }
    if (!fatal_by_default(sig))
        return 0;
    if (sig == 9) {
        struct rlg_sent_signal *s = sent_signal.lookup(&tgid);
        if (!s)
            s = sent_signal.lookup(&tid);
        if (s && bpf_ktime_get_boot_ns() - s->ts < 5000000000ULL)
            sig = s->sig;   /* the signal that was sent, before the group kill */
    }
    struct rlg_exit_info x = {};
    x.code = -1;
    x.sig = sig;
    /* insert, not update: after exit_group() the kernel SIGKILLs the other
     * threads, and that must not overwrite the real exit status */
    exit_info.insert(&tgid, &x);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tgid = pt >> 32;
#ifdef RLG_HAVE_GROUP_DEAD
    if (!args->group_dead)
        return 0;
#else
    if (tgid != (u32)pt)
        return 0;
#endif
    struct rlg_exit_event e = {};
    fill_header(&e.hdr, RLG_EV_EXIT);
    e.exit_code = -1;
    struct rlg_exit_info *x = exit_info.lookup(&tgid);
    if (x) {
        e.exit_code = x->code;
        e.exit_signal = x->sig;
        exit_info.delete(&tgid);
    }
    sent_signal.delete(&tgid);
    exec_gen.delete(&tgid);
    emit(&e, sizeof(e), RLG_EV_EXIT);
    proc_state.delete(&tgid);
    return 0;
}
