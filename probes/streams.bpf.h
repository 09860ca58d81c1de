/* Streams (issue 14): the opening of every outbound TCP stream across segments
 * and writes, the reply where the peer answers, and the activity of a live
 * stream afterwards.  The egress program (egress.bpf.h) and the ingress
 * program below call in here for the sockets fresh_tcp holds: those a local
 * connect() opened (connect.bpf.h).
 *
 * Bytes are placed by TCP sequence number, so a retransmission adds nothing
 * and a write split over many segments (or many writes in one segment) comes
 * out as one byte stream; user space (monitor/streams/) reassembles and reads
 * it.  Bounds per stream: RLG_STREAM_BYTES of the opening, RLG_REPLY_BYTES of
 * the reply, RLG_STREAM_WINDOW_NS after the first payload.  A capture cut by
 * the byte bound is flagged TRUNCATED; bytes that come after the window end
 * the capture with one LATE record (no data). */

BPF_PERCPU_ARRAY(stream_scratch, struct rlg_stream_event, 1);
BPF_PERCPU_ARRAY(tick_scratch, struct rlg_stream_tick_event, 1);
BPF_ARRAY(layout_stream, struct rlg_stream_event, 1);
BPF_ARRAY(layout_stream_tick, struct rlg_stream_tick_event, 1);

/* struct rlg_fresh.flags: RLG_FRESH_* in lib/maps.bpf.h */

#ifndef RLG_IPV6_EXT_MAX
#define RLG_IPV6_EXT_MAX 8           /* IPv6 extension headers followed to the transport */
#endif

/* Offset of the transport header and its protocol, from the IP header at
 * offset 0 (both cgroup_skb directions see the packet from there).  IPv6
 * extension headers (hop-by-hop, routing, destination options, mobility,
 * HIP, shim6, fragment, AH) are followed, at most RLG_IPV6_EXT_MAX of them:
 * an agent can put a Destination Options header on every segment.  0: not
 * IP, a later fragment, or a chain longer than that. */
static __always_inline u32 l4_offset(struct __sk_buff *skb, u16 *family, u8 *proto) {
    if (skb->protocol == bpf_htons(RLG_ETH_P_IP)) {
        u8 vihl = 0;
        u16 frag = 0;
        if (bpf_skb_load_bytes(skb, 0, &vihl, 1) < 0)
            return 0;
        bpf_skb_load_bytes(skb, 6, &frag, 2);
        if (bpf_ntohs(frag) & 0x1FFF)
            return 0;       /* not the first fragment */
        bpf_skb_load_bytes(skb, 9, proto, 1);
        *family = RLG_AF_INET;
        return (vihl & 0x0F) * 4;
    }
    if (skb->protocol != bpf_htons(RLG_ETH_P_IPV6))
        return 0;
    *family = RLG_AF_INET6;
    u8 nh = 0;
    if (bpf_skb_load_bytes(skb, 6, &nh, 1) < 0)
        return 0;
    u32 off = 40;
#pragma clang loop unroll(disable)
    for (int i = 0; i < RLG_IPV6_EXT_MAX; i++) {
        u8 h[4] = {};
        if (nh == 0 || nh == 43 || nh == 60 || nh == 135 || nh == 139 || nh == 140) {
            if (bpf_skb_load_bytes(skb, off, h, 2) < 0)
                return 0;
            nh = h[0];
            off += ((u32)h[1] + 1) * 8;
        } else if (nh == 44) {      /* fragment: 8 bytes; only the first carries the header */
            if (bpf_skb_load_bytes(skb, off, h, 4) < 0)
                return 0;
            if ((((u32)h[2] << 8) | h[3]) & 0xFFF8)
                return 0;
            nh = h[0];
            off += 8;
        } else if (nh == 51) {      /* AH: length in 4-byte units, minus 2 */
            if (bpf_skb_load_bytes(skb, off, h, 2) < 0)
                return 0;
            nh = h[0];
            off += ((u32)h[1] + 2) * 4;
        } else {
            *proto = nh;
            return off;
        }
    }
    return 0;               /* more extension headers than we follow */
}

/* The transport header's offset and protocol, and its first RLG_TH bytes in th (TCP:
 * ports, sequence number, ack, data offset, flags; UDP: ports, length).  Read straight
 * from the packet's linear data when it holds them (no helper call: this runs for every
 * packet both ways), else with the helpers (l4_offset above: IPv6 extension headers, a
 * head split across fragments).  0: not IP, or nothing to read. */
#define RLG_TH 14
static __always_inline u32 l4_head(struct __sk_buff *skb, u16 *family, u8 *proto, u8 *th) {
    unsigned char *d = (unsigned char *)(long)skb->data;
    unsigned char *end = (unsigned char *)(long)skb->data_end;
    if (skb->protocol == bpf_htons(RLG_ETH_P_IP)) {
        if (d + 20 <= end) {
            if ((d[6] & 0x1F) || d[7])
                return 0;       /* not the first fragment */
            u32 ihl = (d[0] & 0x0F) * 4;
            *family = RLG_AF_INET;
            *proto = d[9];
            if (ihl >= 20 && d + ihl + RLG_TH <= end) {
                __builtin_memcpy(th, d + ihl, RLG_TH);
                return ihl;
            }
        }
    } else if (skb->protocol == bpf_htons(RLG_ETH_P_IPV6)) {
        if (d + 40 + RLG_TH <= end && (d[6] == RLG_IPPROTO_TCP || d[6] == RLG_IPPROTO_UDP)) {
            *family = RLG_AF_INET6;
            *proto = d[6];
            __builtin_memcpy(th, d + 40, RLG_TH);
            return 40;
        }
    }
    u32 l4 = l4_offset(skb, family, proto);
    if (!l4)
        return 0;
    if (bpf_skb_load_bytes(skb, l4, th, RLG_TH) < 0) {
        __builtin_memset(th, 0, RLG_TH);
        if (bpf_skb_load_bytes(skb, l4, th, 4) < 0)
            return 0;
    }
    return l4;
}

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

/* One record for the bytes of this segment that the stream has not captured
 * yet: [next, limit) of the direction, placed by sequence number. */
static __always_inline void stream_chunk(struct __sk_buff *skb, struct rlg_fresh *f, u64 cookie,
                                         u32 pkt_off, u32 plen, u32 seq, int reply, u16 family,
                                         u32 l4, u64 now) {
    u32 base = reply ? f->rseq0 : f->seq0;
    u32 next = reply ? f->rnext : f->next;
    u32 limit = reply ? RLG_REPLY_BYTES : RLG_STREAM_BYTES;
    u32 done = reply ? RLG_FRESH_REPLY_DONE : RLG_FRESH_OUT_DONE;
    u32 flags = reply ? RLG_STREAM_REPLY : 0;
    u32 off = seq - base;
    if (off >= 0x80000000)
        return;             /* before byte 0 (data on a SYN): nothing of the opening */
    if (now - f->start_ns > RLG_STREAM_WINDOW_NS) {
        f->flags |= done;
        if (next >= limit)
            return;
        flags |= RLG_STREAM_LATE;   /* one marker: the opening was cut short by time */
        plen = 0;
    } else {
        if (next >= limit) {
            f->flags |= done;
            return;
        }
        u32 end = off + plen;
        if (end <= next)
            return;         /* a retransmission of captured bytes */
        u32 skip = 0;
        if (off < next)
            skip = next - off;
        else if (off > next)
            flags |= RLG_STREAM_GAP;
        off += skip;
        pkt_off += skip;
        plen = end - off;
        if (off >= limit) {
            f->flags |= done;
            return;
        }
        if (plen > limit - off) {
            plen = limit - off;
            flags |= RLG_STREAM_TRUNCATED;
        }
    }
    u32 zero = 0;
    struct rlg_stream_event *e = stream_scratch.lookup(&zero);
    if (!e)
        return;
    fill_task(&e->hdr, RLG_EV_STREAM);
    e->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
    if (e->hdr.pid != f->owner_pid)
        flags |= RLG_STREAM_OWNER_DIFFERS;
    e->hdr.flags = flags;
    e->cookie = cookie;
    e->owner_pid = f->owner_pid;
    e->offset = off;
    e->seg_len = plen;
    e->family = family;
    e->pad = 0;
    u16 ports[2] = {};
    bpf_skb_load_bytes(skb, l4, ports, 4);
    e->sport = bpf_ntohs(ports[0]);
    e->dport = bpf_ntohs(ports[1]);
    load_addrs(skb, family, e->saddr, e->daddr);
    u32 n = 0;
    if (plen > 0) {
        /* same value, with a bound the verifier can see: [1, RLG_STREAM_BYTES] */
        n = ((plen - 1) & (RLG_STREAM_BYTES - 1)) + 1;
        if (bpf_skb_load_bytes(skb, pkt_off, e->data, n) < 0)
            n = 0;
    }
    e->captured = n;
    if (flags & RLG_STREAM_LATE) {
        e->seg_len = 0;
    } else if (reply) {
        f->rnext = off + n;
    } else {
        f->next = off + n;
    }
    if (off + n >= limit)
        f->flags |= done;
    u64 size = offsetof(struct rlg_stream_event, data) + n;
    if (size > sizeof(*e))
        size = sizeof(*e);
    emit(e, size, RLG_EV_STREAM);
}

/* Cumulative activity of a live stream, at most every RLG_STREAM_TICK_NS. */
static __always_inline void stream_tick(struct __sk_buff *skb, struct rlg_fresh *f, u64 cookie,
                                        u16 family, u32 l4, u64 now) {
    if (now - f->tick_ns < RLG_STREAM_TICK_NS)
        return;
    f->tick_ns = now;
    u32 zero = 0;
    struct rlg_stream_tick_event *e = tick_scratch.lookup(&zero);
    if (!e)
        return;
    fill_task(&e->hdr, RLG_EV_STREAM_TICK);
    e->hdr.cgroup_id = bpf_skb_cgroup_id(skb);
    e->cookie = cookie;
    e->owner_pid = f->owner_pid;
    e->family = family;
    u16 dport = 0;
    bpf_skb_load_bytes(skb, l4 + 2, &dport, 2);
    e->dport = bpf_ntohs(dport);
    unsigned char saddr[16] = {};
    __builtin_memset(e->daddr, 0, 16);
    load_addrs(skb, family, saddr, e->daddr);
    e->first_ns = f->start_ns;
    e->segs = f->segs;
    e->bytes = f->bytes;
    e->rsegs = f->rsegs;
    e->rbytes = f->rbytes;
    emit(e, sizeof(*e), RLG_EV_STREAM_TICK);
}

/* An outbound segment with payload of a stream fresh_tcp holds, after the
 * first (which the send record carries): count it, capture what the opening
 * still lacks, tie a TLS object to the socket, report activity. */
static __always_inline void stream_out(struct __sk_buff *skb, struct rlg_fresh *f, u64 cookie,
                                       u32 pkt_off, u32 plen, u32 seq, u16 family, u32 l4) {
    u64 now = bpf_ktime_get_boot_ns();
    f->segs += 1;
    f->bytes += plen;
    if (!(f->flags & RLG_FRESH_OUT_DONE))
        stream_chunk(skb, f, cookie, pkt_off, plen, seq, 0, family, l4, now);
    tls_bind_segment(f, cookie, now);
    stream_tick(skb, f, cookie, family, l4, now);
}

/* The first outbound payload: the send record took its first `sent` bytes. */
static __always_inline void stream_first(struct __sk_buff *skb, struct rlg_fresh *f, u64 cookie,
                                         u32 pkt_off, u32 plen, u32 seq, u32 sent, u16 family,
                                         u32 l4) {
    u64 now = bpf_ktime_get_boot_ns();
    f->flags |= RLG_FRESH_OUT;
    f->seq0 = seq;
    f->next = sent;
    if (!f->start_ns)
        f->start_ns = now;
    f->tick_ns = now;
    f->segs = 1;
    f->bytes = plen;
    /* the socket's kernel address, an id for sock_send_length: only for an opening that
     * can carry TLS (a ClientHello, or a SOCKS or CONNECT proxy before one) */
    u8 first = 0;
    bpf_skb_load_bytes(skb, pkt_off, &first, 1);
    u64 sk = (u64)skb->sk;
    if (sk && (first == 0x16 || first == 0x05 || first == 0x04 || first == 'C')) {
        stream_socks.update(&sk, &cookie);
        f->flags |= RLG_FRESH_SOCK;
    }
    if (sent < plen)
        stream_chunk(skb, f, cookie, pkt_off, plen, seq, 0, family, l4, now);
    tls_bind_segment(f, cookie, now);
}

/* The connection ends (our FIN or RST leaves): forget its stream, so that the map
 * holds live connections and a storm of short ones does not evict long ones. */
static __always_inline void stream_end(struct __sk_buff *skb) {
    u64 cookie = bpf_get_socket_cookie(skb);
    struct rlg_fresh *f = fresh_tcp.lookup(&cookie);
    if (!f)
        return;
    if (f->flags & RLG_FRESH_SOCK) {
        u64 sk = (u64)skb->sk;
        stream_socks.delete(&sk);
    }
    fresh_tcp.delete(&cookie);
}

#if RLG_REPLY_BYTES > 0
/* cgroup_skb/ingress: the reply of a stream fresh_tcp holds (a proxy's grant,
 * a server's banner).  Runs for every received packet: a packet without
 * payload, or of a socket no local connect() opened, leaves after one lookup
 * at most. */
int rlg_ingress(struct __sk_buff *skb) {
    u16 family = 0;
    u8 proto = 0;
    u8 th[RLG_TH] = {};
    u32 l4 = l4_head(skb, &family, &proto, th);
    if (!l4 || proto != RLG_IPPROTO_TCP)
        return 1;
    u32 off = l4 + (th[12] >> 4) * 4;
    if (skb->len <= off)
        return 1;
    u64 cookie = bpf_get_socket_cookie(skb);
    struct rlg_fresh *f = fresh_tcp.lookup(&cookie);
    if (!f)
        return 1;
    u32 plen = skb->len - off;
    f->rsegs += 1;
    f->rbytes += plen;
    if (f->flags & RLG_FRESH_REPLY_DONE)
        return 1;
    u32 seq = ((u32)th[4] << 24) | ((u32)th[5] << 16) | ((u32)th[6] << 8) | th[7];
    u64 now = bpf_ktime_get_boot_ns();
    if (!(f->flags & RLG_FRESH_REPLY)) {
        f->flags |= RLG_FRESH_REPLY;
        f->rseq0 = seq;
        f->rnext = 0;
        if (!f->start_ns)
            f->start_ns = now;  /* the server spoke first (an SSH or SMTP banner) */
    }
    stream_chunk(skb, f, cookie, off, plen, seq, 1, family, l4, now);
    return 1;
}
#endif
