/* TLS plaintext (issue 14): uprobes on the write calls of the shared TLS
 * libraries, attached by library file (inode) so that every process mapping
 * the file is covered (monitor/sensor/tls_libs.py finds the files and
 * attaches these programs):
 *
 *   libssl:    SSL_write, SSL_write_ex          -> rlg_ssl_write, rlg_ssl_write_ex
 *              SSL_set_fd                       -> rlg_ssl_set_fd
 *              SSL_set_accept_state, SSL_accept -> rlg_ssl_server
 *              SSL_free                         -> rlg_ssl_free
 *   libgnutls: gnutls_record_send               -> rlg_gnutls_send
 *              gnutls_transport_set_int2        -> rlg_gnutls_set_int2
 *              gnutls_deinit                    -> rlg_ssl_free
 *
 * Entry probes only (a return probe costs a second trap per call): the
 * plaintext is in the caller's buffer when the write is called.  Each TLS
 * object (SSL *, gnutls_session_t) gets its first RLG_STREAM_BYTES captured,
 * within RLG_STREAM_WINDOW_NS of its first write; server-side objects (accept
 * state) and the monitor's own process are left out.  No libssl struct is
 * read: the object is only an id.
 *
 * Which socket: SSL_set_fd / gnutls_transport_set_int2 name the fd (user
 * space turns (pid, fd) into the connection through the connect records).
 * Besides, and where the library was never told an fd (a socket BIO as in
 * openssl s_client, a memory BIO as in asyncio), a write of an object not
 * yet bound leaves a note for its thread; the socket send that thread makes
 * next, within RLG_TLS_BIND_NS (sock:sock_send_length: in the syscall, before
 * Nagle can delay the segment), ties the object to that socket's stream,
 * found by the socket's kernel address (stream_socks, written at the
 * stream's first payload).  Without that tracepoint (before Linux 6.3?) the
 * egress program does it for segments the thread sends itself. */

struct rlg_tls_key {
    u32 tgid;
    u32 pad;
    u64 ssl;
};

struct rlg_tls_conn {
    u64 cookie;         /* 0 until bound by a segment */
    u64 first_ns;       /* first write (or SSL_set_fd) */
    u32 captured;       /* plaintext bytes captured so far */
    int fd;             /* -1 until SSL_set_fd */
    u32 server;         /* accept state: not captured */
    u32 pad;
};
BPF_TABLE("lru_hash", struct rlg_tls_key, struct rlg_tls_conn, tls_conns, 16384);

/* per thread: the last write of an object not yet bound to a socket */
struct rlg_tls_inflight {
    u64 ssl;
    u64 ts;
    u32 tgid;
    u32 pad;
};
BPF_TABLE("lru_hash", u32, struct rlg_tls_inflight, tls_inflight, 8192);

BPF_PERCPU_ARRAY(tls_scratch, struct rlg_tls_data_event, 1);
BPF_ARRAY(layout_tls_data, struct rlg_tls_data_event, 1);
BPF_ARRAY(layout_tls_bind, struct rlg_tls_bind_event, 1);

static __always_inline struct rlg_tls_conn *tls_conn(u32 tgid, u64 ssl) {
    struct rlg_tls_key k = {};
    k.tgid = tgid;
    k.ssl = ssl;
    struct rlg_tls_conn *c = tls_conns.lookup(&k);
    if (c)
        return c;
    struct rlg_tls_conn nc = {};
    nc.fd = -1;
    nc.first_ns = bpf_ktime_get_boot_ns();
    tls_conns.update(&k, &nc);
    return tls_conns.lookup(&k);
}

static __always_inline int tls_write(u64 ssl, u64 buf, u64 num, u32 lib) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tgid = pt >> 32;
    if (tgid == RLG_SELF_TGID || !ssl || !buf || !num || num > 0x7fffffff)
        return 0;
    struct rlg_tls_conn *c = tls_conn(tgid, ssl);
    if (!c || c->server || c->captured >= RLG_STREAM_BYTES)
        return 0;
    u64 now = bpf_ktime_get_boot_ns();
    if (now - c->first_ns > RLG_STREAM_WINDOW_NS)
        return 0;
    u32 zero = 0;
    struct rlg_tls_data_event *e = tls_scratch.lookup(&zero);
    if (!e)
        return 0;
    fill_header(&e->hdr, RLG_EV_TLS_DATA);
    e->hdr.flags = lib;
    e->ssl = ssl;
    e->cookie = c->cookie;
    e->fd = c->fd;
    e->offset = c->captured;
    e->call_len = (u32)num;
    u32 room = RLG_STREAM_BYTES - c->captured;
    u32 n = num < room ? (u32)num : room;
    /* same value, with a bound the verifier can see: [1, RLG_STREAM_BYTES] */
    n = ((n - 1) & (RLG_STREAM_BYTES - 1)) + 1;
    if (bpf_probe_read_user(e->data, n, (const void *)buf) < 0)
        n = 0;
    e->captured = n;
    c->captured += n;
    u64 size = offsetof(struct rlg_tls_data_event, data) + n;
    if (size > sizeof(*e))
        size = sizeof(*e);
    emit(e, size, RLG_EV_TLS_DATA);
    if (!c->cookie) {
        struct rlg_tls_inflight w = {};
        w.ssl = ssl;
        w.ts = now;
        w.tgid = tgid;
        u32 tid = (u32)pt;
        tls_inflight.update(&tid, &w);
    }
    return 0;
}

/* kernel socket address -> cookie of a tracked stream, written at its first
 * payload (the egress program sees the address as skb->sk) */
BPF_TABLE("lru_hash", u64, u64, stream_socks, 65536);

/* Tie the TLS object whose write this thread just made (not yet bound) to
 * the stream with this cookie; owner: the process that connected it. */
static __always_inline void tls_bind(u64 pt, u64 cookie, u32 owner, u64 now) {
    u32 tid = (u32)pt;
    struct rlg_tls_inflight *w = tls_inflight.lookup(&tid);
    if (!w)
        return;
    struct rlg_tls_inflight got = *w;
    tls_inflight.delete(&tid);
    if (got.tgid != owner || now - got.ts > RLG_TLS_BIND_NS)
        return;
    struct rlg_tls_key k = {};
    k.tgid = got.tgid;
    k.ssl = got.ssl;
    struct rlg_tls_conn *c = tls_conns.lookup(&k);
    if (!c || c->cookie)
        return;
    c->cookie = cookie;
    struct rlg_tls_bind_event e = {};
    fill_task(&e.hdr, RLG_EV_TLS_BIND);
    e.hdr.flags = RLG_TLS_BIND_COOKIE;
    e.ssl = got.ssl;
    e.cookie = cookie;
    e.fd = -1;
    emit(&e, sizeof(e), RLG_EV_TLS_BIND);
}

/* The egress program, for a segment of a tracked stream that its owner's
 * thread sends itself (TCP_NODELAY, an idle connection): the fallback where
 * sock:sock_send_length does not exist. */
static __always_inline void tls_bind_segment(struct rlg_fresh *f, u64 cookie, u64 now) {
    u64 pt = bpf_get_current_pid_tgid();
    if ((u32)(pt >> 32) != f->owner_pid)
        return;             /* softirq on another task's time, or a child: no guess */
    tls_bind(pt, cookie, f->owner_pid, now);
}

#ifdef RLG_HAVE_SOCK_SEND_LENGTH
/* Every socket send, in the sending thread, after the protocol took the data
 * (before Nagle or the congestion window delay the segment): the write right
 * after a TLS write on this thread carries that write's record. */
static __always_inline void tls_on_send(u64 sk) {
    u64 pt = bpf_get_current_pid_tgid();
    u32 tid = (u32)pt;
    if (!tls_inflight.lookup(&tid))
        return;             /* the common case: one lookup */
    u64 *cookie = stream_socks.lookup(&sk);
    if (!cookie)
        return;
    u64 ck = *cookie;
    struct rlg_fresh *f = fresh_tcp.lookup(&ck);
    if (!f)
        return;             /* a stale address: its stream is gone */
    tls_bind(pt, ck, f->owner_pid, bpf_ktime_get_boot_ns());
}
#endif

int rlg_ssl_write(struct pt_regs *ctx) {
    /* int SSL_write(SSL *ssl, const void *buf, int num) */
    return tls_write(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), (u64)(int)PT_REGS_PARM3(ctx),
                     RLG_TLS_OPENSSL);
}

int rlg_ssl_write_ex(struct pt_regs *ctx) {
    /* int SSL_write_ex(SSL *s, const void *buf, size_t num, size_t *written) */
    return tls_write(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), RLG_TLS_OPENSSL);
}

int rlg_gnutls_send(struct pt_regs *ctx) {
    /* ssize_t gnutls_record_send(gnutls_session_t session, const void *data, size_t size) */
    return tls_write(PT_REGS_PARM1(ctx), PT_REGS_PARM2(ctx), PT_REGS_PARM3(ctx), RLG_TLS_GNUTLS);
}

/* a new connection for this object: forget what an earlier one captured */
static __always_inline int tls_set_fd(u64 ssl, int fd) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (tgid == RLG_SELF_TGID || !ssl)
        return 0;
    struct rlg_tls_key k = {};
    k.tgid = tgid;
    k.ssl = ssl;
    struct rlg_tls_conn nc = {};
    nc.fd = fd;
    nc.first_ns = bpf_ktime_get_boot_ns();
    tls_conns.update(&k, &nc);
    return 0;
}

int rlg_ssl_set_fd(struct pt_regs *ctx) {
    /* int SSL_set_fd(SSL *ssl, int fd) */
    return tls_set_fd(PT_REGS_PARM1(ctx), (int)PT_REGS_PARM2(ctx));
}

int rlg_gnutls_set_int2(struct pt_regs *ctx) {
    /* void gnutls_transport_set_int2(gnutls_session_t session, int recv_fd, int send_fd) */
    return tls_set_fd(PT_REGS_PARM1(ctx), (int)PT_REGS_PARM3(ctx));
}

int rlg_ssl_server(struct pt_regs *ctx) {
    /* SSL_set_accept_state(SSL *) / SSL_accept(SSL *): the server side of a connection */
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 ssl = PT_REGS_PARM1(ctx);
    if (tgid == RLG_SELF_TGID || !ssl)
        return 0;
    struct rlg_tls_conn *c = tls_conn(tgid, ssl);
    if (c)
        c->server = 1;
    return 0;
}

int rlg_ssl_free(struct pt_regs *ctx) {
    /* SSL_free(SSL *) / gnutls_deinit(gnutls_session_t): the address may be reused */
    struct rlg_tls_key k = {};
    k.tgid = bpf_get_current_pid_tgid() >> 32;
    k.ssl = PT_REGS_PARM1(ctx);
    tls_conns.delete(&k);
    return 0;
}
