/* cgroup_skb/egress: the first payload bytes of a new outbound TCP
 * connection and the UDP DNS queries. */

BPF_PERCPU_ARRAY(send_scratch, struct rlg_send_event, 1);
BPF_PERCPU_ARRAY(dns_scratch, struct rlg_dns_event, 1);

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
        u32 watched = f->flags & RLG_FRESH_SENDER_WATCHED;
        fresh_tcp.delete(&cookie);
        /* the sender (sender.bpf.h): the task whose call queued the bytes, else this task,
         * inside the first send call on the socket */
        if (watched && queued_sender(cookie, &e->hdr)) {
            e->hdr.flags = RLG_SEND_SENDER_KNOWN | RLG_SEND_SENDER_QUEUED;
        } else {
            fill_task(&e->hdr, RLG_EV_SEND);
            if (watched)
                e->hdr.flags |= RLG_SEND_SENDER_KNOWN;
        }
        e->hdr.type = RLG_EV_SEND;
        e->hdr.ts_ns = bpf_ktime_get_boot_ns();
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
