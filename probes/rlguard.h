/* rlguard event layouts: the one definition shared by the kernel programs
 * (rlguard.bpf.c) and user space, which gets the ctypes layout from bcc
 * (the layout_* maps), never by restating it.
 *
 * Sizes may be overridden with -D by the loader (monitor/probes.py); the
 * defaults here are what a build without the loader gets.  Every size that
 * is used as a mask must stay a power of two.
 */
#ifndef RLGUARD_H
#define RLGUARD_H

#ifndef RLG_TASK_COMM_LEN
#define RLG_TASK_COMM_LEN 16
#endif
#ifndef RLG_MAX_ARGS
#define RLG_MAX_ARGS 32          /* argv entries captured */
#endif
#ifndef RLG_ARG_SIZE
#define RLG_ARG_SIZE 256         /* bytes per argv entry, power of two */
#endif
#define RLG_ARGS_BUF (RLG_MAX_ARGS * RLG_ARG_SIZE)
#ifndef RLG_FILENAME_LEN
#define RLG_FILENAME_LEN 256
#endif
#ifndef RLG_MAX_TAGS
#define RLG_MAX_TAGS 24          /* configured environment keys */
#endif
#ifndef RLG_TAG_KEY_LEN
#define RLG_TAG_KEY_LEN 32       /* longest key name we hash */
#endif
#ifndef RLG_TAG_VALUE_LEN
#define RLG_TAG_VALUE_LEN 64     /* bytes kept of each tag value */
#endif
#ifndef RLG_ENV_SCAN
#define RLG_ENV_SCAN 256         /* envp entries scanned per exec */
#endif
#ifndef RLG_FIRST_BYTES
#define RLG_FIRST_BYTES 256      /* payload bytes kept per new connection, power of two */
#endif
#ifndef RLG_DNS_BYTES
#define RLG_DNS_BYTES 512        /* UDP DNS payload kept, power of two */
#endif
#ifndef RLG_GPU_PATH_LEN
#define RLG_GPU_PATH_LEN 128     /* bytes of an opened path read and matched, power of two */
#endif
#ifndef RLG_GPU_PATTERN_LEN
#define RLG_GPU_PATTERN_LEN 64   /* longest configured device pattern + NUL */
#endif
#ifndef RLG_GPU_MAX_PATTERNS
#define RLG_GPU_MAX_PATTERNS 16  /* configured device patterns */
#endif
#ifndef RLG_CONNECT_FOLD_NS
#define RLG_CONNECT_FOLD_NS 1000000000ULL  /* window for folding identical connects */
#endif
#ifndef RLG_CONNECT_FOLDS
#define RLG_CONNECT_FOLDS 8192   /* distinct folds tracked at once; full: no folding */
#endif
#define RLG_UNIX_PATH_LEN 128    /* bytes of sun_path kept (it holds 108), power of two */
/* streams (issue 14): the opening of each outbound TCP stream, its reply, TLS plaintext */
#ifndef RLG_STREAM_BYTES
#define RLG_STREAM_BYTES 4096    /* opening bytes captured per stream and per TLS object, power of two */
#endif
#ifndef RLG_REPLY_BYTES
#define RLG_REPLY_BYTES 1024     /* reply bytes captured per stream; 0: no ingress program */
#endif
#ifndef RLG_STREAM_WINDOW_NS
#define RLG_STREAM_WINDOW_NS 60000000000ULL  /* capture ends this long after the first payload */
#endif
#ifndef RLG_STREAM_TICK_NS
#define RLG_STREAM_TICK_NS 30000000000ULL    /* activity counters of a live stream, at most this often */
#endif
#ifndef RLG_TLS_BIND_NS
#define RLG_TLS_BIND_NS 5000000ULL           /* an SSL_write and the segment it sends: this close */
#endif
#ifndef RLG_SELF_TGID
#define RLG_SELF_TGID 0          /* the monitor itself: its own TLS writes are not captured */
#endif

enum rlg_event_type {
    RLG_EV_EXEC = 1,
    RLG_EV_FORK = 2,
    RLG_EV_EXIT = 3,
    RLG_EV_CONNECT = 4,
    RLG_EV_TCP_STATE = 5,
    RLG_EV_SEND = 6,
    RLG_EV_DNS = 7,
    RLG_EV_TAGSET = 8,
    RLG_EV_DUP = 9,
    RLG_EV_GPU_OPEN = 10,
    RLG_EV_GPU_CLOSE = 11,
    /* 12-19: streams and TLS (issue 14) */
    RLG_EV_STREAM = 12,
    RLG_EV_TLS_DATA = 13,
    RLG_EV_TLS_BIND = 14,
    RLG_EV_STREAM_TICK = 15,
    /* 20-27: attribution (ipc.bpf.h) */
    RLG_EV_UNIX_LISTEN = 20,
    RLG_EV_UNIX_CONNECT = 21,
    /* the counters' size: room for every range handed out (12-35) */
    RLG_EV_TYPE_MAX = 36,
};

/* exec flags */
#define RLG_EXEC_ARGS_TRUNCATED 1      /* more argv entries than RLG_MAX_ARGS */
#define RLG_EXEC_ARG_TRUNCATED 2       /* at least one entry cut at RLG_ARG_SIZE */
#define RLG_EXEC_ENV_SCAN_TRUNCATED 8  /* envp longer than RLG_ENV_SCAN */
#define RLG_EXEC_TAG_TRUNCATED 16      /* a tag value longer than RLG_TAG_VALUE_LEN */
#define RLG_EXEC_ARGV_UNREADABLE 64    /* an argv entry could not be read from user memory */

/* connect flags */
#define RLG_CONNECT_SYSCALL 1    /* seen at sys_enter_connect: fd and result are real */
#define RLG_CONNECT_SOCKINFO 2   /* type/protocol/cookie filled by the cgroup hook */
#define RLG_CONNECT_KERNEL 4     /* cgroup hook without a connect syscall (io_uring...) */

/* send flags */
#define RLG_SEND_OWNER_DIFFERS 1 /* sending task is not the connecting process */
#define RLG_SEND_SENDER_KNOWN 2  /* the header is the task whose send call sent the bytes */
#define RLG_SEND_SENDER_QUEUED 4 /* ...recorded when its call queued them (they left later) */

/* stream flags (also in struct rlg_fresh.flags, kernel-only bits above 0xff) */
#define RLG_STREAM_REPLY 1       /* bytes the peer sent (ingress), not the local process */
#define RLG_STREAM_TRUNCATED 2   /* the byte bound ended the capture with bytes beyond it */
#define RLG_STREAM_LATE 4        /* bytes came after the time window: not captured */
#define RLG_STREAM_GAP 8         /* bytes between the last capture and this one were never seen */
#define RLG_STREAM_OWNER_DIFFERS 16  /* current task is not the connecting process */

/* tls_data / tls_bind flags */
#define RLG_TLS_OPENSSL 1        /* SSL_write / SSL_write_ex (libssl) */
#define RLG_TLS_GNUTLS 2         /* gnutls_record_send */
#define RLG_TLS_BIND_COOKIE 4    /* bound to a socket cookie (the segment that followed a write) */
#define RLG_TLS_BIND_FD 8        /* bound to an fd (SSL_set_fd, gnutls_transport_set_int2) */

/* tcp_state flags */
#define RLG_TCP_OWNER_KNOWN 1
/* in sock_owner only: the socket's connect was folded, so are its later states */
#define RLG_TCP_OWNER_FOLDED 2

/* gpu_open flags: which syscall */
#define RLG_GPU_VIA_OPENAT 1
#define RLG_GPU_VIA_OPENAT2 2
#define RLG_GPU_VIA_OPEN 4
/* gpu_close flags */
#define RLG_GPU_CLOSE_RANGE 1    /* close_range(fd, last_fd): user space ends every fd in it */

/* Common header: every record starts with it. */
struct rlg_header {
    unsigned int type;
    unsigned int pid;           /* tgid */
    unsigned int tid;
    unsigned int ppid;          /* creator's tgid as recorded at fork; 0 = unknown */
    unsigned long long ts_ns;   /* CLOCK_BOOTTIME */
    unsigned long long cgroup_id;
    unsigned long long tagset_id; /* 0 = no tags */
    unsigned int tag_origin;    /* pid whose environment defined the tagset */
    unsigned int uid;
    unsigned int gid;
    unsigned int flags;
    char comm[RLG_TASK_COMM_LEN];
};

struct rlg_exec_event {
    struct rlg_header hdr;
    unsigned int args_count;    /* argv entries captured */
    unsigned int args_size;     /* bytes used in args[] (NUL-separated) */
    unsigned int own_tag_mask;  /* tag keys found in this exec's own envp */
    unsigned int pad;
    char filename[RLG_FILENAME_LEN];
    char args[RLG_ARGS_BUF];    /* variable length: only args_size bytes sent */
};

struct rlg_fork_event {
    struct rlg_header hdr;      /* the parent */
    unsigned int child_pid;
    unsigned int pad;
};

struct rlg_exit_event {
    struct rlg_header hdr;
    int exit_code;              /* exit_group() status, -1 when unknown */
    int exit_signal;            /* fatal signal, 0 when none */
};

struct rlg_connect_event {
    struct rlg_header hdr;
    int fd;                     /* -1 when not from a syscall */
    int ret;                    /* 0, -errno; 1 = unknown (not a syscall) */
    unsigned long long cookie;  /* socket cookie, 0 = unknown */
    unsigned short family;
    unsigned short dport;       /* host order */
    unsigned int sock_type;     /* SOCK_STREAM / SOCK_DGRAM, 0 = unknown */
    unsigned int protocol;
    unsigned char daddr[16];
    /* connect folding (see rlguard.bpf.c, fold_connect): identical connects
     * of one process within RLG_CONNECT_FOLD_NS are counted in the kernel and
     * reported by the next record of the same fold (or user space's flush) */
    unsigned long long fold_id;     /* 0 = not folded: this record stands for itself */
    unsigned long long fold_count;  /* connects of this fold so far, this one included */
};

struct rlg_tcp_state_event {
    struct rlg_header hdr;      /* the socket's owner when known */
    unsigned long long skaddr;  /* kernel socket address: an opaque id */
    int oldstate;
    int newstate;
    unsigned short family;
    unsigned short sport;
    unsigned short dport;
    unsigned short pad;
    unsigned char saddr[16];
    unsigned char daddr[16];
    /* accepted ESTABLISHED: connections accepted from this peer address on
     * this local address and port since the kernel started counting, this one
     * included (the ones in between were folded); 0 on other transitions */
    unsigned long long accept_count;
};

struct rlg_send_event {
    struct rlg_header hdr;      /* the sending task */
    unsigned long long cookie;
    unsigned int owner_pid;     /* the process that connected */
    unsigned int payload_len;   /* bytes in this segment */
    unsigned int captured;      /* bytes in data[] */
    unsigned short family;
    unsigned short sport;
    unsigned short dport;
    unsigned short pad;
    unsigned char saddr[16];
    unsigned char daddr[16];
    unsigned char data[RLG_FIRST_BYTES];  /* variable length */
};

struct rlg_dns_event {
    struct rlg_header hdr;
    unsigned long long cookie;
    unsigned int payload_len;
    unsigned int captured;
    unsigned short family;
    unsigned short sport;
    unsigned short dport;
    unsigned short transport;   /* IPPROTO_UDP */
    unsigned char saddr[16];
    unsigned char daddr[16];
    unsigned char data[RLG_DNS_BYTES];    /* variable length */
};

/* A chunk of a stream's opening (after what the send record carried), or of
 * its reply, placed by TCP sequence number: offset is the stream offset of
 * data[0].  A record with flag LATE and no data marks the end of the window. */
struct rlg_stream_event {
    struct rlg_header hdr;      /* the current task (softirq: unrelated; see flags) */
    unsigned long long cookie;
    unsigned int owner_pid;     /* the process that connected */
    unsigned int offset;        /* stream offset of data[0] in this direction */
    unsigned int seg_len;       /* payload bytes in this segment */
    unsigned int captured;      /* bytes in data[] */
    unsigned short family;
    unsigned short sport;       /* as on the packet: the peer's port for a reply */
    unsigned short dport;
    unsigned short pad;
    unsigned char saddr[16];
    unsigned char daddr[16];
    unsigned char data[RLG_STREAM_BYTES];  /* variable length */
};

/* TLS plaintext a process handed its TLS library (uprobe at SSL_write,
 * SSL_write_ex, gnutls_record_send): the first RLG_STREAM_BYTES of each TLS
 * object (SSL * / gnutls_session_t). */
struct rlg_tls_data_event {
    struct rlg_header hdr;      /* the writing task (exact: the uprobe runs in it) */
    unsigned long long ssl;     /* the library's object: an opaque id within hdr.pid */
    unsigned long long cookie;  /* socket cookie once bound (0 = not yet) */
    int fd;                     /* fd once bound by SSL_set_fd (-1 = not known) */
    unsigned int offset;        /* plaintext offset of data[0] within this object */
    unsigned int call_len;      /* bytes the call was asked to write */
    unsigned int captured;      /* bytes in data[] */
    unsigned char data[RLG_STREAM_BYTES];  /* variable length */
};

/* A TLS object tied to its socket: by cookie (the segment its write sent)
 * or by fd (the library was told the fd). */
struct rlg_tls_bind_event {
    struct rlg_header hdr;
    unsigned long long ssl;
    unsigned long long cookie;  /* 0 with RLG_TLS_BIND_FD */
    int fd;                     /* -1 with RLG_TLS_BIND_COOKIE */
    unsigned int pad;
};

/* Activity of a live outbound stream after its opening: cumulative counts,
 * sent at most every RLG_STREAM_TICK_NS while it sends (the behaviour rule
 * for what stays encrypted reads them). */
struct rlg_stream_tick_event {
    struct rlg_header hdr;
    unsigned long long cookie;
    unsigned int owner_pid;
    unsigned short family;
    unsigned short dport;
    unsigned long long first_ns;    /* first payload */
    unsigned long long segs;        /* payload segments sent so far */
    unsigned long long bytes;       /* payload bytes sent so far */
    unsigned long long rsegs;       /* payload segments received so far */
    unsigned long long rbytes;
    unsigned char daddr[16];
};

/* dup2/dup3 onto stdin, stdout or stderr (how reverse shells are wired). */
struct rlg_dup_event {
    struct rlg_header hdr;
    int oldfd;
    int newfd;
};

/* An open of a configured GPU device path (matched at sys_enter, emitted at
 * sys_exit with the result); path is the string the process passed. */
struct rlg_gpu_open_event {
    struct rlg_header hdr;
    int fd;                     /* the new fd; -1 when the open failed */
    int ret;                    /* 0 or -errno */
    unsigned int open_flags;    /* O_* flags as passed (O_CLOEXEC: ends at exec) */
    unsigned int pattern;       /* index of the configured pattern that matched */
    char path[RLG_GPU_PATH_LEN];
};

/* close() of an fd that a gpu_open returned (or close_range over such fds) */
struct rlg_gpu_close_event {
    struct rlg_header hdr;
    int fd;                     /* first fd */
    int last_fd;                /* last fd (close_range), else == fd */
};

/* One configured device pattern: an exact path, or a prefix (glob ending in '*').
 * head/head_mask: its first (up to) 8 bytes as a little-endian word and the mask
 * of the bytes that count, so that most opens are ruled out by one 8-byte read. */
struct rlg_gpu_pattern {
    unsigned long long head;
    unsigned long long head_mask;
    unsigned int len;           /* bytes compared; 0 = unused slot (end of list) */
    unsigned int prefix;        /* 1: the path only has to start with s */
    char s[RLG_GPU_PATTERN_LEN];
};

/* An AF_UNIX socket that listens (RLG_EV_UNIX_LISTEN: the listener, the path it bound)
 * or that connected (RLG_EV_UNIX_CONNECT: the requester, the path it asked for).  The
 * path is as the process gave it (relative to its cwd, or in its mount namespace);
 * path[0] == 0 is an abstract name of path_len bytes (the NUL included). */
struct rlg_unix_event {
    struct rlg_header hdr;
    int fd;
    int ret;                    /* the syscall's result (0) */
    unsigned int path_len;      /* bytes of sun_path given (addrlen - 2), at most 108 */
    unsigned int pad;
    char path[RLG_UNIX_PATH_LEN];
};

/* Tag values of one process, keyed by tagset id; sent once when created. */
struct rlg_tagset {
    unsigned int present_mask;
    unsigned int own_mask;
    unsigned int truncated_mask;
    unsigned int pad;
    char values[RLG_MAX_TAGS * RLG_TAG_VALUE_LEN];
};

struct rlg_tagset_event {
    struct rlg_header hdr;
    unsigned long long id;
    struct rlg_tagset tags;
};

/* What identifies "the same connect" for folding: same process image
 * (tgid, exec generation, comm, uid, tags, cgroup), same fd, same
 * destination and type, same result. */
struct rlg_connect_key {
    unsigned int tgid;
    int ret;
    int fd;
    unsigned int uid;
    unsigned long long exec_gen;    /* boot ns of the tgid's last exec, 0 = none seen */
    unsigned long long tagset_id;
    unsigned long long cgroup_id;
    unsigned short family;
    unsigned short dport;
    unsigned int sock_type;
    unsigned char daddr[16];
    char comm[RLG_TASK_COMM_LEN];
};

/* accepted connections per (local address and port, peer address) */
struct rlg_accept_key {
    unsigned char laddr[16];
    unsigned char raddr[16];
    unsigned short family;
    unsigned short lport;
    unsigned int pad;
};

struct rlg_accept_fold {
    unsigned long long count;       /* accepted under this key, ever */
    unsigned long long last_emit_ns;
};

struct rlg_connect_fold {
    unsigned long long id;
    unsigned long long count;       /* connects folded under this key, ever */
    unsigned long long last_emit_ns;
    unsigned long long last_seen_ns;
};

/* Records the kernel chose not to send (counted, never silent). */
enum rlg_quiet {
    RLG_QUIET_TCP_DUP = 0,      /* tcp_state repeating what the connect record says */
    RLG_QUIET_TCP_MINOR = 1,    /* teardown steps, passive handshake and close */
    RLG_QUIET_CONNECT_FOLDED = 2, /* connect counted in a fold instead of a record */
    RLG_QUIET_TCP_FOLDED = 3,   /* state of a socket whose connect was folded */
    RLG_QUIET_ACCEPT_FOLDED = 4, /* accepted ESTABLISHED counted in an accept fold */
    RLG_QUIET_UNIX_FOLDED = 5,  /* AF_UNIX connect repeating one of the last second */
    RLG_QUIET_MAX = 6,
};

/* Kernel-side per-process state, keyed by tgid. */
struct rlg_proc_state {
    unsigned int ppid;
    unsigned int tag_origin;
    unsigned long long tagset_id;
};

#endif
