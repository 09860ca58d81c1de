/* exec: sched_process_exec reads argv and the configured env tags from the
 * new program's stack and makes a tagset when the exec brings its own tags. */

/* FNV-1a hash of a configured env key -> its index (filled by user space). */
BPF_HASH(tag_keys, u64, u32, 64);

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
