/* Constants of the kernel half that user space does not mirror: UAPI and
 * protocol numbers (no kernel header is trusted for them), the ring size
 * default and the internal miss counters. */

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
#define RLG_TCP_FIN 0x01
#define RLG_TCP_RST 0x04
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
