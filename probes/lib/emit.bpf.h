/* Counting and sending: every record leaves through emit(), with a header
 * filled by fill_header() (or fill_task() where the cgroup id is not ours to
 * ask). */

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
