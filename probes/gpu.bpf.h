/* Who opens the GPU device nodes (/dev/nvidia*, /dev/dri/renderD*,
 * /dev/kfd... the list is configured, see gpu_patterns) and which fds hold
 * them, so that close() ends a holding.  The path is the string the process
 * passed, read from user memory at syscall entry: a relative path, a link or
 * a node made elsewhere does not match here; user space catches those with a
 * periodic scan of /proc/PID/fd by device number (monitor/state/gpu.py). */

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
