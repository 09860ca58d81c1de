/* cgroup_skb/egress: the first payload bytes of a new outbound TCP
 * connection (the rest of its opening: streams.bpf.h) and the UDP DNS queries. */

BPF_PERCPU_ARRAY(send_scratch, struct rlg_send_event, 1);
BPF_PERCPU_ARRAY(dns_scratch, struct rlg_dns_event, 1);

/* cgroup_skb/egress sees every packet a local socket sends, whatever the
 * syscall (write, send*, writev, sendfile, io_uring) and whichever process
 * holds the socket; it runs in the sending task for the first segment of a
 * connection and for UDP. */
int rlg_egress(struct __sk_buff *skb) {
    u8 proto = 0;
    u16 family = 0;
    u8 th[RLG_TH] = {};     /* the transport header's first bytes */
    u32 l4 = l4_head(skb, &family, &proto, th);  /* IPv6 extension headers followed */
    if (!l4)
        return 1;

    if (proto == RLG_IPPROTO_TCP) {
        /* payload first: SYN, RST and bare ACKs (most packets of a connect
         * storm) leave before the hash lookup */
        u32 off = l4 + (th[12] >> 4) * 4;
        int ends = th[13] & (RLG_TCP_FIN | RLG_TCP_RST);
        if (skb->len <= off) {
            if (ends)
                stream_end(skb);    /* our FIN or RST: the stream is over */
            return 1;       /* SYN or bare ACK: no payload yet */
        }
        u64 cookie = bpf_get_socket_cookie(skb);
        struct rlg_fresh *f = fresh_tcp.lookup(&cookie);
        if (!f)
            return 1;
        u32 plen = skb->len - off;
        u32 seq = ((u32)th[4] << 24) | ((u32)th[5] << 16) | ((u32)th[6] << 8) | th[7];
        if (f->flags & RLG_FRESH_OUT) {
            /* a later segment: the rest of the opening, activity (streams.bpf.h) */
            stream_out(skb, f, cookie, off, plen, seq, family, l4);
            if (ends)
                stream_end(skb);
            return 1;
        }
        u32 zero = 0;
        struct rlg_send_event *e = send_scratch.lookup(&zero);
        if (!e)
            return 1;
        u32 owner = f->owner_pid;
        u32 watched = f->flags & RLG_FRESH_SENDER_WATCHED;
        /* the sender (sender.bpf.h): the task whose call queued the bytes, else this task,
         * inside the first send call on the socket.  The fresh_tcp entry stays: the rest
         * of the opening follows it (streams.bpf.h), until FIN/RST or the window */
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
        e->sport = ((u16)th[0] << 8) | th[1];
        e->dport = ((u16)th[2] << 8) | th[3];
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
        /* the rest of this segment, if the send record could not hold it */
        stream_first(skb, f, cookie, off, plen, seq, n, family, l4);
        if (ends)
            stream_end(skb);
        return 1;
    }

    if (proto == RLG_IPPROTO_UDP) {
        if (th[2] != 0 || th[3] != 53)
            return 1;       /* not to port 53 */
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
        e->sport = ((u16)th[0] << 8) | th[1];
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
