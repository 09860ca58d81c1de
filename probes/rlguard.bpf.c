/* rlguard kernel programs (bcc C).
 *
 * Rule for this file: never read a kernel struct through headers.  The
 * headers on a host may belong to another kernel (see docs/install.md), so
 * only tracepoint fields (bcc builds them from tracefs formats), BPF helpers,
 * UAPI contexts (__sk_buff, bpf_sock_addr), packet bytes and user memory are
 * read here.
 *
 * Data flow: every record goes to one ring buffer, `events`, submitted
 * without a wake-up; user space drains it on a short timer.  Reserve/output
 * failures are counted per event type in `drops`, successes in `sent`.
 */
#include <uapi/linux/ptrace.h>  /* struct pt_regs: the ptrace register ABI */
#include "rlguard.h"

#ifndef RLG_RING_PAGES
#define RLG_RING_PAGES 4096
#endif

#define RLG_AF_INET 2
#define RLG_AF_INET6 10
#define RLG_SOCK_STREAM 1
#define RLG_IPPROTO_TCP 6
#define RLG_IPPROTO_UDP 17
#define RLG_TCP_ESTABLISHED 1
#define RLG_TCP_SYN_SENT 2
#define RLG_TCP_SYN_RECV 3
#define RLG_TCP_CLOSE 7
#define RLG_TCP_LISTEN 10
#define RLG_EINPROGRESS 115
#define RLG_EINTR 4
#define RLG_CLONE_THREAD 0x00010000ULL
#define RLG_ETH_P_IP 0x0800
#define RLG_ETH_P_IPV6 0x86DD
#define RLG_RB_NO_WAKEUP 1
#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

/* Internal miss counters (user space reports them next to drops). */
enum rlg_miss {
    RLG_MISS_PROC_STATE_FULL = 0,   /* fork could not record the child */
    RLG_MISS_TAGSET_FULL = 1,
    RLG_MISS_EXEC_NO_STACK = 2,     /* exec whose new user stack could not be found */
    RLG_MISS_FOLD_FULL = 3,         /* connect_folds full: the connect was sent unfolded */
    RLG_MISS_MAX = 4,
};

BPF_RINGBUF_OUTPUT(events, RLG_RING_PAGES);
BPF_PERCPU_ARRAY(sent, u64, RLG_EV_TYPE_MAX);
BPF_PERCPU_ARRAY(drops, u64, RLG_EV_TYPE_MAX);
BPF_PERCPU_ARRAY(misses, u64, RLG_MISS_MAX);
BPF_PERCPU_ARRAY(quiet, u64, RLG_QUIET_MAX);

/* Layout carriers: never written, they only give bcc the C types so that
 * user space decodes records with the layouts defined in rlguard.h. */
BPF_ARRAY(layout_header, struct rlg_header, 1);
BPF_ARRAY(layout_exec, struct rlg_exec_event, 1);
BPF_ARRAY(layout_fork, struct rlg_fork_event, 1);
BPF_ARRAY(layout_exit, struct rlg_exit_event, 1);
BPF_ARRAY(layout_connect, struct rlg_connect_event, 1);
BPF_ARRAY(layout_tcp_state, struct rlg_tcp_state_event, 1);
BPF_ARRAY(layout_send, struct rlg_send_event, 1);
BPF_ARRAY(layout_dns, struct rlg_dns_event, 1);
BPF_ARRAY(layout_tagset, struct rlg_tagset_event, 1);
BPF_ARRAY(layout_dup, struct rlg_dup_event, 1);

/* FNV-1a hash of a configured env key -> its index (filled by user space). */
BPF_HASH(tag_keys, u64, u32, 64);
/* tgid -> lineage and tags, inherited at fork, replaced by an exec with own tags. */
BPF_HASH(proc_state, u32, struct rlg_proc_state, 131072);
BPF_TABLE("lru_hash", u64, struct rlg_tagset, tagsets, 16384);

/* an exec event being built, with the tag values its envp carried */
struct rlg_pending_exec {
    struct rlg_exec_event ev;
    struct rlg_tagset tags;
};
BPF_PERCPU_ARRAY(exec_scratch, struct rlg_pending_exec, 1);
BPF_PERCPU_ARRAY(tagset_scratch, struct rlg_tagset_event, 1);

/* never written: a source of zeros (a 1.5 KiB memset is no BPF instruction) */
BPF_ARRAY(zero_tagset, struct rlg_tagset, 1);

struct rlg_env_key {
    char key[RLG_TAG_KEY_LEN + 2];
};
BPF_PERCPU_ARRAY(env_key_scratch, struct rlg_env_key, 1);

BPF_TABLE("lru_hash", u32, u64, clone_flags, 4096);

struct rlg_exit_info {
    int code;
    int sig;
};
BPF_TABLE("lru_hash", u32, struct rlg_exit_info, exit_info, 16384);

/* a connect() in progress, per thread: the record being built, the socket
 * it made (seen at SYN_SENT) and the SYN_SENT -> ESTABLISHED / CLOSE record
 * seen inside the syscall, held until the result is known (a blocking
 * connect's result already says it).  One entry per thread, written in
 * place and kept (inactive) after the call: no map update per connect. */
struct rlg_pending_connect {
    struct rlg_connect_event ev;
    u64 sk;
    u32 has_held;
    u32 active;     /* between sys_enter and sys_exit; the entry stays for the next call */
    struct rlg_tcp_state_event held;
};
BPF_TABLE("lru_hash", u32, struct rlg_pending_connect, pending_connect, 4096);
BPF_PERCPU_ARRAY(connect_scratch, struct rlg_pending_connect, 1);

/* Connect folding (like Tetragon's aggregated events): the first connect of a
 * key is always sent in full; identical ones within RLG_CONNECT_FOLD_NS of the
 * last record sent for that key are only counted here, and the next record of
 * the key carries the running count.  User space reports the tail of an idle
 * fold (fold_count not yet seen) and retires idle keys.  A full map means no
 * folding (every connect sent), never a lost count. */
BPF_HASH(connect_folds, struct rlg_connect_key, struct rlg_connect_fold, RLG_CONNECT_FOLDS);
BPF_PERCPU_ARRAY(fold_seq, u64, 1);
/* tgid -> boot ns of its last exec (part of the fold key) */
BPF_TABLE("lru_hash", u32, u64, exec_gen, 65536);

/* socket cookie of a new outbound TCP connection whose first payload is still to come */
struct rlg_fresh {
    u32 owner_pid;
    u32 pad;
};
BPF_TABLE("lru_hash", u64, struct rlg_fresh, fresh_tcp, 65536);

/* the egress hook sends the next payload of this socket as its first bytes */
static __always_inline void watch_first_payload(u64 cookie, u32 owner_pid) {
    struct rlg_fresh f = {};
    f.owner_pid = owner_pid;
    fresh_tcp.update(&cookie, &f);
}
/* kernel socket address -> the header of the task that started the connection */
BPF_TABLE("lru_hash", u64, struct rlg_header, sock_owner, 65536);
/* Accept folding: the first accepted ESTABLISHED from a peer address on a local
 * address and port is sent; more within RLG_CONNECT_FOLD_NS of the last one
 * sent are only counted, and the next record carries the running count.  An
 * evicted key only restarts its count. */
BPF_TABLE("lru_hash", struct rlg_accept_key, struct rlg_accept_fold, accept_folds, 16384);

BPF_PERCPU_ARRAY(send_scratch, struct rlg_send_event, 1);
BPF_PERCPU_ARRAY(dns_scratch, struct rlg_dns_event, 1);

static __always_inline void bump_sent(u32 type) {
    u64 *v = sent.lookup(&type);
    if (v)
        (*v)++;
}

static __always_inline void bump_drop(u32 type) {
    u64 *v = drops.lookup(&type);
    if (v)
        (*v)++;
}

static __always_inline void bump_miss(u32 idx) {
    u64 *v = misses.lookup(&idx);
    if (v)
        (*v)++;
}

static __always_inline void bump_quiet(u32 idx) {
    u64 *v = quiet.lookup(&idx);
    if (v)
        (*v)++;
}

static __always_inline void emit(void *data, u64 size, u32 type) {
    if (events.ringbuf_output(data, size, RLG_RB_NO_WAKEUP) == 0)
        bump_sent(type);
    else
        bump_drop(type);
}

/* Task identity without the cgroup id (not every program type may ask). */
static __always_inline void fill_task(struct rlg_header *h, u32 type) {
    u64 pt = bpf_get_current_pid_tgid();
    u64 ug = bpf_get_current_uid_gid();
    h->type = type;
    h->pid = pt >> 32;
    h->tid = (u32)pt;
    h->ts_ns = bpf_ktime_get_boot_ns();
    h->uid = (u32)ug;
    h->gid = ug >> 32;
    h->flags = 0;
    bpf_get_current_comm(h->comm, sizeof(h->comm));
    struct rlg_proc_state *st = proc_state.lookup(&h->pid);
    if (st) {
        h->ppid = st->ppid;
        h->tagset_id = st->tagset_id;
        h->tag_origin = st->tag_origin;
    } else {
        h->ppid = 0;
        h->tagset_id = 0;
        h->tag_origin = 0;
    }
}

static __always_inline void fill_header(struct rlg_header *h, u32 type) {
    fill_task(h, type);
    h->cgroup_id = bpf_get_current_cgroup_id();
}

/* ---------------------------------------------------------------- exec */

/* argv and envp are read at sched_process_exec from the new program's
 * initial stack (SysV ABI: argc, argv[], NULL, envp[], NULL at the user stack
 * pointer the kernel just set up).  The kernel itself wrote those pages, so
 * they are present (a probe cannot fault pages in), and no other thread of
 * the caller can change them any more (no TOCTOU on argv or tags).  The user
 * stack pointer comes from bpf_task_pt_regs(): the ptrace register ABI, not
 * a kernel-internal struct. */
static __always_inline int read_exec(struct rlg_pending_exec *p, u64 sp) {
    struct rlg_exec_event *e = &p->ev;
    u64 argc = 0;
    if (bpf_probe_read_user(&argc, sizeof(argc), (void *)sp) < 0) {
        e->hdr.flags |= RLG_EXEC_ARGV_UNREADABLE;
        return -1;
    }
    const char *const *argv = (const char *const *)(sp + 8);
    int i;
    for (i = 0; i < RLG_MAX_ARGS; i++) {
        if ((u64)i >= argc)
            break;
        const char *argp = NULL;
        bpf_probe_read_user(&argp, sizeof(argp), &argv[i]);
        if (!argp)
            break;
        u32 off = e->args_size;
        if (off > RLG_ARGS_BUF - RLG_ARG_SIZE)
            break;
        long n = bpf_probe_read_user_str(&e->args[off], RLG_ARG_SIZE, argp);
        if (n <= 0) {
            e->args[off] = 0;
            n = 1;
            e->hdr.flags |= RLG_EXEC_ARGV_UNREADABLE;
        }
        if (n >= RLG_ARG_SIZE) {
            /* n counts the NUL: only truncated if the string goes on */
            char next = 0;
            bpf_probe_read_user(&next, 1, argp + RLG_ARG_SIZE - 1);
            if (next)
                e->hdr.flags |= RLG_EXEC_ARG_TRUNCATED;
        }
        e->args_size = off + (u32)n;
        e->args_count++;
    }
    if (argc > RLG_MAX_ARGS)
        e->hdr.flags |= RLG_EXEC_ARGS_TRUNCATED;

    /* Env tags: hash each key, keep only the values of configured keys. */
    u32 zero = 0;
    struct rlg_env_key *k = env_key_scratch.lookup(&zero);
    if (!k)
        return 0;
    const char *const *envp = (const char *const *)(sp + 8 + (argc + 1) * 8);
    int j;
    for (j = 0; j < RLG_ENV_SCAN; j++) {
        const char *ep = NULL;
        bpf_probe_read_user(&ep, sizeof(ep), &envp[j]);
        if (!ep)
            break;
        long n = bpf_probe_read_user_str(k->key, sizeof(k->key), ep);
        if (n <= 1)
            continue;
        u64 h = FNV_OFFSET;
        int eq = -1;
        int c;
        for (c = 0; c < RLG_TAG_KEY_LEN + 1; c++) {
            char ch = k->key[c];
            if (ch == '=') {
                eq = c;
                break;
            }
            if (ch == 0)
                break;
            h ^= (u8)ch;
            h *= FNV_PRIME;
        }
        if (eq <= 0)
            continue;
        u32 *idx = tag_keys.lookup(&h);
        if (!idx)
            continue;
        u32 t = *idx;
        if (t >= RLG_MAX_TAGS)
            continue;
        if (p->tags.own_mask & (1U << t))
            continue;   /* a repeated key: getenv() returns the first, so do we */
        long m = bpf_probe_read_user_str(&p->tags.values[t * RLG_TAG_VALUE_LEN],
                                         RLG_TAG_VALUE_LEN, ep + eq + 1);
        if (m < 0)
            continue;
        if (m >= RLG_TAG_VALUE_LEN) {
            char next = 0;
            bpf_probe_read_user(&next, 1, ep + eq + RLG_TAG_VALUE_LEN);
            if (next)
                p->tags.truncated_mask |= (1U << t);
        }
        p->tags.present_mask |= (1U << t);
        p->tags.own_mask |= (1U << t);
    }
    if (j == RLG_ENV_SCAN) {
        const char *more = NULL;
        bpf_probe_read_user(&more, sizeof(more), &envp[RLG_ENV_SCAN]);
        if (more)
            e->hdr.flags |= RLG_EXEC_ENV_SCAN_TRUNCATED;
    }
    if (p->tags.truncated_mask)
        e->hdr.flags |= RLG_EXEC_TAG_TRUNCATED;
    e->own_tag_mask = p->tags.own_mask;
    return 0;
}

/* Do the exec's own tag values equal the inherited ones?  The common case:
 * every child of a tagged worker carries the worker's environment. */
static __always_inline int same_as_inherited(struct rlg_pending_exec *p, struct rlg_tagset *inh) {
    if ((p->tags.own_mask & inh->present_mask) != p->tags.own_mask)
        return 0;
    int t;
    for (t = 0; t < RLG_MAX_TAGS; t++) {
        if (!(p->tags.own_mask & (1U << t)))
            continue;
        u64 *a = (u64 *)&p->tags.values[t * RLG_TAG_VALUE_LEN];
        u64 *b = (u64 *)&inh->values[t * RLG_TAG_VALUE_LEN];
        int w;
        for (w = 0; w < RLG_TAG_VALUE_LEN / 8; w++) {
            if (a[w] != b[w])
                return 0;
        }
    }
    return 1;
}

/* A new tagset: the exec's own values over the inherited ones.  When they
 * add nothing, the process keeps the inherited tagset and its origin. */
static __always_inline void make_tagset(struct rlg_pending_exec *p, u32 tgid, u64 now) {
    struct rlg_proc_state *st = proc_state.lookup(&tgid);
    if (st && st->tagset_id) {
        struct rlg_tagset *inh = tagsets.lookup(&st->tagset_id);
        if (inh && same_as_inherited(p, inh))
            return;
        if (inh) {
            int t;
            for (t = 0; t < RLG_MAX_TAGS; t++) {
                u32 bit = 1U << t;
                if ((inh->present_mask & bit) && !(p->tags.own_mask & bit)) {
                    bpf_probe_read_kernel(&p->tags.values[t * RLG_TAG_VALUE_LEN],
                                          RLG_TAG_VALUE_LEN,
                                          &inh->values[t * RLG_TAG_VALUE_LEN]);
                    p->tags.present_mask |= bit;
                    p->tags.truncated_mask |= inh->truncated_mask & bit;
                }
            }
        }
    }
    /* unique per CPU: an exec takes far longer than 256 ns */
    u64 id = (now & ~0xFFULL) | (bpf_get_smp_processor_id() & 0xFF);
    if (tagsets.update(&id, &p->tags) != 0) {
        bump_miss(RLG_MISS_TAGSET_FULL);
    }
    struct rlg_proc_state ns = {};
    if (st)
        ns.ppid = st->ppid;
    ns.tagset_id = id;
    ns.tag_origin = tgid;
    if (proc_state.update(&tgid, &ns) != 0)
        bump_miss(RLG_MISS_PROC_STATE_FULL);

    u32 zero = 0;
    struct rlg_tagset_event *te = tagset_scratch.lookup(&zero);
    if (!te)
        return;
    fill_header(&te->hdr, RLG_EV_TAGSET);
    te->id = id;
    bpf_probe_read_kernel(&te->tags, sizeof(te->tags), &p->tags);
    emit(te, sizeof(*te), RLG_EV_TAGSET);
}

TRACEPOINT_PROBE(sched, sched_process_exec) {
    u32 zero = 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    /* a new program image: its connects never fold into the old image's */
    u64 gen = bpf_ktime_get_boot_ns();
    exec_gen.update(&tgid, &gen);
    struct rlg_pending_exec *p = exec_scratch.lookup(&zero);
    if (!p)
        return 0;
    struct rlg_tagset *z = zero_tagset.lookup(&zero);
    if (!z)
        return 0;
    p->ev.hdr.flags = 0;
    p->ev.args_count = 0;
    p->ev.args_size = 0;
    p->ev.own_tag_mask = 0;
    p->tags.present_mask = 0;
    p->tags.own_mask = 0;
    p->tags.truncated_mask = 0;
    /* values are compared whole against the inherited tagset: no stale tails */
    bpf_probe_read_kernel(p->tags.values, sizeof(p->tags.values), z->values);
    /* the path as the kernel resolved it */
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    bpf_probe_read_kernel_str(p->ev.filename, sizeof(p->ev.filename), (void *)args + loc);

    struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
    struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
    u64 sp = 0;
    if (!regs || bpf_probe_read_kernel(&sp, sizeof(sp), &PT_REGS_SP(regs)) < 0 || !sp) {
        bump_miss(RLG_MISS_EXEC_NO_STACK);
        p->ev.hdr.flags |= RLG_EXEC_ARGV_UNREADABLE;
    } else {
        read_exec(p, sp);
    }
    if (p->tags.own_mask)
        make_tagset(p, tgid, bpf_ktime_get_boot_ns());
    /* exec kills the other threads with SIGKILL: that is not how this process ends */
    exit_info.delete(&tgid);
    u32 flags = p->ev.hdr.flags;
    fill_header(&p->ev.hdr, RLG_EV_EXEC);
    p->ev.hdr.flags = flags;
    u64 size = offsetof(struct rlg_exec_event, args) + p->ev.args_size;
    if (size > sizeof(p->ev))
        size = sizeof(p->ev);
    emit(&p->ev, size, RLG_EV_EXEC);
    return 0;
}

/* ------------------------------------------------------- fork and exit */

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

/* ----------------------------------------------------------------- dup */

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

/* ------------------------------------------------------------- connect */

TRACEPOINT_PROBE(syscalls, sys_enter_connect) {
    const unsigned char *sa = (const unsigned char *)args->uservaddr;
    u16 family = 0;
    bpf_probe_read_user(&family, sizeof(family), sa);
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
        return 0;
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
        watch_first_payload(e->cookie, e->hdr.pid);
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
        watch_first_payload(cookie, pt >> 32);  /* a connect() syscall: when it returns */
}

int rlg_connect4(struct bpf_sock_addr *ctx) {
    on_sock_connect(ctx, RLG_AF_INET);
    return 1;
}

int rlg_connect6(struct bpf_sock_addr *ctx) {
    on_sock_connect(ctx, RLG_AF_INET6);
    return 1;
}

/* ----------------------------------------------------------- tcp state */

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
        if (o) {
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

/* ------------------------------------------ first bytes and DNS (egress) */

/* Source and destination from the IPv4 or IPv6 header (packet bytes: ABI). */
static __always_inline void load_addrs(struct __sk_buff *skb, u16 family,
                                       unsigned char *saddr, unsigned char *daddr) {
    if (family == RLG_AF_INET) {
        bpf_skb_load_bytes(skb, 12, saddr, 4);
        bpf_skb_load_bytes(skb, 16, daddr, 4);
    } else {
        bpf_skb_load_bytes(skb, 8, saddr, 16);
        bpf_skb_load_bytes(skb, 24, daddr, 16);
    }
}

/* cgroup_skb/egress sees every packet a local socket sends, whatever the
 * syscall (write, send*, writev, sendfile, io_uring) and whichever process
 * holds the socket; it runs in the sending task for the first segment of a
 * connection and for UDP. */
int rlg_egress(struct __sk_buff *skb) {
    u32 l4 = 0;
    u8 proto = 0;
    u16 family = 0;
    if (skb->protocol == bpf_htons(RLG_ETH_P_IP)) {
        u8 vihl = 0;
        u16 frag = 0;
        if (bpf_skb_load_bytes(skb, 0, &vihl, 1) < 0)
            return 1;
        bpf_skb_load_bytes(skb, 6, &frag, 2);
        if (bpf_ntohs(frag) & 0x1FFF)
            return 1;       /* not the first fragment */
        bpf_skb_load_bytes(skb, 9, &proto, 1);
        l4 = (vihl & 0x0F) * 4;
        family = RLG_AF_INET;
    } else if (skb->protocol == bpf_htons(RLG_ETH_P_IPV6)) {
        bpf_skb_load_bytes(skb, 6, &proto, 1);
        l4 = 40;            /* extension headers are not followed */
        family = RLG_AF_INET6;
    } else {
        return 1;
    }

    if (proto == RLG_IPPROTO_TCP) {
        /* payload first: SYN, RST and bare ACKs (most packets of a connect
         * storm) leave before the hash lookup */
        u8 doff = 0;
        if (bpf_skb_load_bytes(skb, l4 + 12, &doff, 1) < 0)
            return 1;
        u32 off = l4 + (doff >> 4) * 4;
        if (skb->len <= off)
            return 1;       /* SYN or bare ACK: no payload yet */
        u64 cookie = bpf_get_socket_cookie(skb);
        struct rlg_fresh *f = fresh_tcp.lookup(&cookie);
        if (!f)
            return 1;
        u32 plen = skb->len - off;
        u32 zero = 0;
        struct rlg_send_event *e = send_scratch.lookup(&zero);
        if (!e)
            return 1;
        u32 owner = f->owner_pid;
        fresh_tcp.delete(&cookie);
        fill_task(&e->hdr, RLG_EV_SEND);
        e->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
        if (e->hdr.pid != owner)
            e->hdr.flags |= RLG_SEND_OWNER_DIFFERS;
        e->cookie = cookie;
        e->owner_pid = owner;
        e->payload_len = plen;
        e->family = family;
        u16 ports[2] = {};
        bpf_skb_load_bytes(skb, l4, ports, 4);
        e->sport = bpf_ntohs(ports[0]);
        e->dport = bpf_ntohs(ports[1]);
        load_addrs(skb, family, e->saddr, e->daddr);
        u32 n = plen;
        if (n > RLG_FIRST_BYTES)
            n = RLG_FIRST_BYTES;
        if (n == 0)
            return 1;
        /* same value, but a bound the verifier can see: [1, RLG_FIRST_BYTES] */
        n = ((n - 1) & (RLG_FIRST_BYTES - 1)) + 1;
        /* the helper needs a constant-bounded length */
        if (bpf_skb_load_bytes(skb, off, e->data, n) < 0)
            n = 0;
        e->captured = n;
        u64 size = offsetof(struct rlg_send_event, data) + n;
        if (size > sizeof(*e))
            size = sizeof(*e);
        emit(e, size, RLG_EV_SEND);
        return 1;
    }

    if (proto == RLG_IPPROTO_UDP) {
        u16 ports[2] = {};
        if (bpf_skb_load_bytes(skb, l4, ports, 4) < 0)
            return 1;
        if (bpf_ntohs(ports[1]) != 53)
            return 1;
        u32 off = l4 + 8;
        if (skb->len <= off)
            return 1;
        u32 plen = skb->len - off;
        u32 zero = 0;
        struct rlg_dns_event *e = dns_scratch.lookup(&zero);
        if (!e)
            return 1;
        fill_task(&e->hdr, RLG_EV_DNS);
        e->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
        e->cookie = bpf_get_socket_cookie(skb);
        e->payload_len = plen;
        e->family = family;
        e->transport = RLG_IPPROTO_UDP;
        e->sport = bpf_ntohs(ports[0]);
        e->dport = 53;
        load_addrs(skb, family, e->saddr, e->daddr);
        u32 n = plen;
        if (n > RLG_DNS_BYTES)
            n = RLG_DNS_BYTES;
        if (n == 0)
            return 1;
        /* same value, but a bound the verifier can see: [1, RLG_DNS_BYTES] */
        n = ((n - 1) & (RLG_DNS_BYTES - 1)) + 1;
        if (bpf_skb_load_bytes(skb, off, e->data, n) < 0)
            n = 0;
        e->captured = n;
        u64 size = offsetof(struct rlg_dns_event, data) + n;
        if (size > sizeof(*e))
            size = sizeof(*e);
        emit(e, size, RLG_EV_DNS);
    }
    return 1;
}

/* --------------------------------------------------------- GPU devices */

/* Who opens the GPU device nodes (/dev/nvidia*, /dev/dri/renderD*,
 * /dev/kfd... the list is configured, see gpu_patterns) and which fds hold
 * them, so that close() ends a holding.  The path is the string the process
 * passed, read from user memory at syscall entry: a relative path, a link or
 * a node made elsewhere does not match here; user space catches those with a
 * periodic scan of /proc/PID/fd by device number (monitor/gpu.py). */

BPF_ARRAY(layout_gpu_open, struct rlg_gpu_open_event, 1);
BPF_ARRAY(layout_gpu_close, struct rlg_gpu_close_event, 1);

#ifndef RLG_NO_GPU
#define RLG_CLOSE_RANGE_CLOEXEC 4

/* configured patterns, packed from slot 0; a slot with len 0 ends the list */
BPF_ARRAY(gpu_patterns, struct rlg_gpu_pattern, RLG_GPU_MAX_PATTERNS);
BPF_PERCPU_ARRAY(gpu_scratch, struct rlg_gpu_open_event, 1);
/* tid -> an open whose path matched, waiting for its result */
BPF_TABLE("lru_hash", u32, struct rlg_gpu_open_event, pending_gpu_open, 4096);
/* (tgid << 32 | fd) -> 1 for every fd that holds a device (user space adds
 * the fds a fork copies and removes those an exec or exit ends) */
BPF_TABLE("lru_hash", u64, u32, gpu_fds, 65536);
/* tgid -> 1 when the process may hold a device (close_range filter) */
BPF_TABLE("lru_hash", u32, u32, gpu_procs, 16384);

/* index of the first pattern that path matches, or -1 */
static __always_inline int gpu_match(const char *path) {
    int i;
    for (i = 0; i < RLG_GPU_MAX_PATTERNS; i++) {
        u32 k = i;
        struct rlg_gpu_pattern *p = gpu_patterns.lookup(&k);
        if (!p || p->len == 0)
            break;
        u32 len = p->len;
        if (len >= RLG_GPU_PATTERN_LEN)
            continue;
        int ok = 1;
        int c;
        for (c = 0; c < RLG_GPU_PATTERN_LEN; c++) {
            if ((u32)c >= len)
                break;
            if (path[c] != p->s[c]) {
                ok = 0;
                break;
            }
        }
        if (!ok)
            continue;
        /* exact: the path ends where the pattern does */
        if (!p->prefix && path[len & (RLG_GPU_PATH_LEN - 1)] != 0)
            continue;
        return i;
    }
    return -1;
}

/* Cheap filter: can the path start like any pattern?  One fixed 8-byte read
 * and a compare per pattern, instead of a string copy, for every open(). */
static __always_inline int gpu_head_may_match(const char *filename) {
    u64 head = 0;
    if (bpf_probe_read_user(&head, sizeof(head), filename) < 0)
        return 1;       /* a short string at the end of a mapping: take the slow path */
    int i;
    for (i = 0; i < RLG_GPU_MAX_PATTERNS; i++) {
        u32 k = i;
        struct rlg_gpu_pattern *p = gpu_patterns.lookup(&k);
        if (!p || p->len == 0)
            break;
        if ((head & p->head_mask) == p->head)
            return 1;
    }
    return 0;
}

static __always_inline int gpu_open_enter(const char *filename, u32 open_flags, u32 via) {
    if (!gpu_head_may_match(filename))
        return 0;
    u32 zero = 0;
    struct rlg_gpu_open_event *e = gpu_scratch.lookup(&zero);
    if (!e)
        return 0;
    long n = bpf_probe_read_user_str(e->path, sizeof(e->path), filename);
    if (n <= 1 || e->path[0] != '/')
        return 0;       /* every pattern is absolute */
    int idx = gpu_match(e->path);
    if (idx < 0)
        return 0;
    fill_header(&e->hdr, RLG_EV_GPU_OPEN);
    e->hdr.flags = via;
    e->fd = -1;
    e->ret = 0;
    e->open_flags = open_flags;
    e->pattern = (u32)idx;
    u32 tid = e->hdr.tid;
    pending_gpu_open.update(&tid, e);
    return 0;
}

static __always_inline int gpu_open_exit(long ret) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tid = (u32)pt;
    struct rlg_gpu_open_event *e = pending_gpu_open.lookup(&tid);
    if (!e)
        return 0;
    if (e->hdr.pid != (u32)(pt >> 32)) {
        /* left by a task that died inside open(); its tid was reused */
        pending_gpu_open.delete(&tid);
        return 0;
    }
    if (ret >= 0) {
        e->fd = (int)ret;
        e->ret = 0;
        u32 tgid = e->hdr.pid;
        u64 key = ((u64)tgid << 32) | (u32)ret;
        u32 one = 1;
        gpu_fds.update(&key, &one);
        gpu_procs.update(&tgid, &one);
    } else {
        e->fd = -1;
        e->ret = (int)ret;
    }
    emit(e, sizeof(*e), RLG_EV_GPU_OPEN);
    pending_gpu_open.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_openat) {
    return gpu_open_enter((const char *)args->filename, (u32)args->flags, RLG_GPU_VIA_OPENAT);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat) {
    return gpu_open_exit(args->ret);
}

#ifdef RLG_HAVE_OPENAT2
TRACEPOINT_PROBE(syscalls, sys_enter_openat2) {
    u64 flags = 0;
    /* struct open_how starts with the u64 flags (UAPI) */
    bpf_probe_read_user(&flags, sizeof(flags), (void *)args->how);
    return gpu_open_enter((const char *)args->filename, (u32)flags, RLG_GPU_VIA_OPENAT2);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat2) {
    return gpu_open_exit(args->ret);
}
#endif

#ifdef RLG_HAVE_OPEN
TRACEPOINT_PROBE(syscalls, sys_enter_open) {
    return gpu_open_enter((const char *)args->filename, (u32)args->flags, RLG_GPU_VIA_OPEN);
}

TRACEPOINT_PROBE(syscalls, sys_exit_open) {
    return gpu_open_exit(args->ret);
}
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_close) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 fd = (u32)args->fd;
    u64 key = (pt & 0xffffffff00000000ULL) | fd;
    if (!gpu_fds.lookup(&key))
        return 0;       /* one hash lookup for every other close() */
    gpu_fds.delete(&key);
    struct rlg_gpu_close_event e = {};
    fill_header(&e.hdr, RLG_EV_GPU_CLOSE);
    e.fd = (int)fd;
    e.last_fd = (int)fd;
    emit(&e, sizeof(e), RLG_EV_GPU_CLOSE);
    return 0;
}

#ifdef RLG_HAVE_CLOSE_RANGE
TRACEPOINT_PROBE(syscalls, sys_enter_close_range) {
    if (args->flags & RLG_CLOSE_RANGE_CLOEXEC)
        return 0;       /* only marks close-on-exec: the exec ends them */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!gpu_procs.lookup(&tgid))
        return 0;
    /* no map iteration here (bpf_for_each_map_elem needs a callback, which
     * bcc 0.26 cannot relocate): user space ends the fds in the range */
    struct rlg_gpu_close_event e = {};
    fill_header(&e.hdr, RLG_EV_GPU_CLOSE);
    e.hdr.flags = RLG_GPU_CLOSE_RANGE;
    u64 first = args->fd, last = args->max_fd;
    e.fd = first > 0x7fffffff ? 0x7fffffff : (int)first;
    e.last_fd = last > 0x7fffffff ? 0x7fffffff : (int)last;
    emit(&e, sizeof(e), RLG_EV_GPU_CLOSE);
    return 0;
}
#endif
#endif /* RLG_NO_GPU */
