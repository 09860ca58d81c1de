/* Maps more than one hook family uses: the ring buffer and its counters, the
 * layout carriers, per-process state (lineage, tags, exit status, exec
 * generation) and per-connection state (the pending connect, fresh sockets,
 * socket owners).  Maps one family alone uses live in its file. */

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

/* tgid -> lineage and tags, inherited at fork, replaced by an exec with own tags. */
BPF_HASH(proc_state, u32, struct rlg_proc_state, 131072);
BPF_TABLE("lru_hash", u64, struct rlg_tagset, tagsets, 16384);

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

/* tgid -> boot ns of its last exec (part of the connect fold key) */
BPF_TABLE("lru_hash", u32, u64, exec_gen, 65536);

/* socket cookie of an outbound TCP connection: its first payload is still to come, or its
 * opening (and reply) is being captured and its activity counted (streams.bpf.h) */
struct rlg_fresh {
    u32 owner_pid;
    u32 flags;      /* RLG_FRESH_* below: sender watched, stream progress */
    u32 seq0;       /* TCP sequence number of the opening's byte 0 */
    u32 next;       /* opening bytes captured so far */
    u32 rseq0;      /* the same for the reply */
    u32 rnext;
    u64 start_ns;   /* first payload, either way */
    u64 tick_ns;    /* last activity record */
    u64 segs;       /* payload segments and bytes sent, received */
    u64 bytes;
    u64 rsegs;
    u64 rbytes;
};
/* struct rlg_fresh.flags */
#define RLG_FRESH_SENDER_WATCHED 1   /* sender.bpf.h watches its send calls */
#define RLG_FRESH_OUT 0x100          /* first outbound payload seen: seq0 is set */
#define RLG_FRESH_REPLY 0x200        /* first reply payload seen: rseq0 is set */
#define RLG_FRESH_OUT_DONE 0x400     /* opening captured (bound reached or window over) */
#define RLG_FRESH_REPLY_DONE 0x800
#define RLG_FRESH_SOCK 0x1000        /* the socket's address is in stream_socks (streams.bpf.h) */
BPF_TABLE("lru_hash", u64, struct rlg_fresh, fresh_tcp, 65536);

/* kernel socket address -> the header of the task that started the connection */
BPF_TABLE("lru_hash", u64, struct rlg_header, sock_owner, 65536);
