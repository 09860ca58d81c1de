/* Local servers: which process listens on an AF_UNIX path (bind + listen) and which
 * process connects to one (connect), so user space can link work a server does on
 * request to the requester (monitor/state/requests.py).  Paths come from user memory
 * at syscall entry, like the connect() sockaddr; they are only reported when the
 * syscall succeeded.  TCP listeners are named by tcp_state (LISTEN runs in the
 * listening task).  connect.bpf.h hands AF_UNIX connects to the functions here. */

#define RLG_AF_UNIX 1
#define RLG_SUN_PATH_MAX 108

BPF_ARRAY(layout_unix_listen, struct rlg_unix_event, 1);
BPF_ARRAY(layout_unix_connect, struct rlg_unix_event, 1);

/* a bind() or connect() of an AF_UNIX socket in progress, per thread */
struct rlg_unix_pending {
    int fd;
    u32 path_len;
    char path[RLG_UNIX_PATH_LEN];
};
BPF_TABLE("lru_hash", u32, struct rlg_unix_pending, unix_binding, 1024);
BPF_TABLE("lru_hash", u32, struct rlg_unix_pending, unix_connecting, 4096);
BPF_PERCPU_ARRAY(unix_scratch, struct rlg_unix_pending, 1);
BPF_PERCPU_ARRAY(unix_event_scratch, struct rlg_unix_event, 1);

/* (tgid << 32 | fd) of an AF_UNIX socket bound to a path -> the path, until it listens */
BPF_TABLE("lru_hash", u64, struct rlg_unix_pending, unix_bound, 8192);
/* listen() in progress on a bound AF_UNIX socket: tid -> fd */
BPF_TABLE("lru_hash", u32, int, unix_listening, 1024);

/* An identical AF_UNIX connect (same thread, same path) within RLG_CONNECT_FOLD_NS of
 * the last one sent is only counted (quiet unix_connect_folded): the link it would make
 * is already made.  Per thread: threads of one worker may run different episodes.
 * Key: tid << 32 | a hash of the path. */
BPF_TABLE("lru_hash", u64, u64, unix_connect_last, 8192);

/* sun_path from user memory: addrlen - 2 bytes (abstract names are not NUL-terminated) */
static __always_inline int read_sun_path(struct rlg_unix_pending *u, const unsigned char *sa,
                                         u64 addrlen) {
    u32 n = addrlen > 2 ? (u32)(addrlen - 2) : 0;
    if (n > RLG_SUN_PATH_MAX)
        n = RLG_SUN_PATH_MAX;
    u->path_len = n;
    if (n == 0)
        return -1;  /* autobind: no name to report */
    /* same value, but a bound the verifier can see: [1, RLG_UNIX_PATH_LEN] */
    n = ((n - 1) & (RLG_UNIX_PATH_LEN - 1)) + 1;
    return bpf_probe_read_user(u->path, n, sa + 2);
}

static __always_inline struct rlg_unix_pending *unix_pending_scratch(void) {
    u32 zero = 0;
    struct rlg_unix_pending *u = unix_scratch.lookup(&zero);
    if (u)
        __builtin_memset(u->path, 0, sizeof(u->path));
    return u;
}

static __always_inline void emit_unix(u32 type, int fd, int ret, struct rlg_unix_pending *u) {
    u32 zero = 0;
    struct rlg_unix_event *e = unix_event_scratch.lookup(&zero);
    if (!e)
        return;
    fill_header(&e->hdr, type);
    e->fd = fd;
    e->ret = ret;
    e->path_len = u->path_len;
    e->pad = 0;
    bpf_probe_read_kernel(e->path, sizeof(e->path), u->path);
    emit(e, sizeof(*e), type);
}

TRACEPOINT_PROBE(syscalls, sys_enter_bind) {
    const unsigned char *sa = (const unsigned char *)args->umyaddr;
    u16 family = 0;
    bpf_probe_read_user(&family, sizeof(family), sa);
    if (family != RLG_AF_UNIX)
        return 0;
    struct rlg_unix_pending *u = unix_pending_scratch();
    if (!u)
        return 0;
    u->fd = (int)args->fd;
    if (read_sun_path(u, sa, args->addrlen) < 0)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    unix_binding.update(&tid, u);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_bind) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tid = (u32)pt;
    struct rlg_unix_pending *u = unix_binding.lookup(&tid);
    if (!u)
        return 0;
    if (args->ret == 0) {
        u64 key = (pt & 0xFFFFFFFF00000000ULL) | (u32)u->fd;
        unix_bound.update(&key, u);
    }
    unix_binding.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_listen) {
    u64 pt = bpf_get_current_pid_tgid();
    int fd = (int)args->fd;
    u64 key = (pt & 0xFFFFFFFF00000000ULL) | (u32)fd;
    if (!unix_bound.lookup(&key))
        return 0;   /* not an AF_UNIX socket this process bound (TCP: tcp_state LISTEN) */
    u32 tid = (u32)pt;
    unix_listening.update(&tid, &fd);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_listen) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tid = (u32)pt;
    int *fdp = unix_listening.lookup(&tid);
    if (!fdp)
        return 0;
    int fd = *fdp;
    unix_listening.delete(&tid);
    if (args->ret != 0)
        return 0;
    u64 key = (pt & 0xFFFFFFFF00000000ULL) | (u32)fd;
    struct rlg_unix_pending *u = unix_bound.lookup(&key);
    if (u)
        emit_unix(RLG_EV_UNIX_LISTEN, fd, 0, u);
    return 0;
}

/* called by sys_enter_connect for an AF_UNIX address */
static __always_inline int unix_connect_enter(int fd, const unsigned char *sa, u64 addrlen) {
    struct rlg_unix_pending *u = unix_pending_scratch();
    if (!u)
        return 0;
    u->fd = fd;
    if (read_sun_path(u, sa, addrlen) < 0)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    unix_connecting.update(&tid, u);
    return 0;
}

/* called by sys_exit_connect when no inet connect of this thread is pending */
static __always_inline int unix_connect_exit(u32 tid, int ret) {
    struct rlg_unix_pending *u = unix_connecting.lookup(&tid);
    if (!u)
        return 0;
    if (ret == 0) {
        u64 h = FNV_OFFSET;
        int i;
        for (i = 0; i < RLG_SUN_PATH_MAX; i++) {
            if ((u32)i >= u->path_len)
                break;
            h ^= (u8)u->path[i];
            h *= FNV_PRIME;
        }
        u64 key = ((u64)tid << 32) | (h & 0xFFFFFFFFULL);
        u64 now = bpf_ktime_get_boot_ns();
        u64 *last = unix_connect_last.lookup(&key);
        if (last && now - *last < RLG_CONNECT_FOLD_NS) {
            bump_quiet(RLG_QUIET_UNIX_FOLDED);
        } else {
            unix_connect_last.update(&key, &now);
            emit_unix(RLG_EV_UNIX_CONNECT, u->fd, ret, u);
        }
    }
    unix_connecting.delete(&tid);
    return 0;
}
