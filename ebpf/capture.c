// SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0)
//
// weft capture: the BPF programs that steer enrolled pods' TCP through weftd.
//
// Outbound: connect4/6 rewrite a pod's connect() to weftd's outbound listener and remember the
// original destination; sockops moves that memory from the socket cookie to the pod's
// (ip, port); getsockopt(SO_ORIGINAL_DST) answers it to weftd; getpeername shows the pod the
// original peer.
// Inbound: a TCX classifier on pod veths and the uplink marks SYNs to enrolled pods and packets
// of flows weftd owns, so that an `ip rule fwmark` makes them local; sk_lookup then hands new
// connections to weftd's transparent listeners.
//
// Maps are pinned by name (the loader picks the directory) and links are pinned by weftd, so
// capture outlives a weftd crash and fails closed: connects go to a listener that is not there
// and SYNs to enrolled pods find no socket. A restarted weftd reuses the maps.
//
// Only UAPI headers and libbpf's helper headers: no CO-RE relocations, loads on any kernel
// with these helpers. Settings arrive as `const volatile` globals set by the loader.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// Settings (the loader overrides these).
const volatile __u32 weftd_mark = 0x539;     // SO_MARK on weftd's own sockets
const volatile __u32 capture_mark = 0x100;   // skb mark that routes a packet to weftd
const volatile __u16 outbound_port = 15001;  // weftd's outbound listener, host order
const volatile __u16 hbone_port = 15008;
const volatile __u16 plaintext_port = 15006;

#define ENROLLED 1u
#define DRAINING 2u

// Per pod network namespace (key: netns cookie).
struct pod {
	__u32 flags;
	__u32 ip4;          // the pod's IPv4, network order
	__u32 redirect_ip4; // node-side address the pod reaches weftd at, network order
	__u32 pad;
};

struct orig_dst {
	__u32 ip4;  // network order
	__u16 port; // network order
	__u16 pad;
};

struct addr_key {
	__u32 ip4;  // network order
	__u16 port; // host order
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct pod);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pods_by_netns SEC(".maps");

// Pod IPs, for the classifier and sk_lookup (value: ENROLLED | DRAINING flags). An unenrolled
// pod stays here as DRAINING: its new connections are left alone, but packets of flows weftd
// already owns keep being marked, or they would be forwarded to the pod, which would reset them.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pod_ips SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_by_cookie SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct addr_key);
	__type(value, struct orig_dst);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} orig_by_addr SEC(".maps");

// weftd's transparent listeners: 0 plaintext (15006), 1 HBONE (15008).
struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} listeners SEC(".maps");

enum stat {
	STAT_REDIRECTED,   // outbound connects rewritten to weftd
	STAT_ORIG_ANSWERS, // SO_ORIGINAL_DST answered
	STAT_MARKED_SYN,   // inbound SYNs marked for weftd
	STAT_MARKED_FLOW,  // packets of weftd-owned flows marked
	STAT_ASSIGNED,     // new inbound connections assigned to a listener
	STAT_MAX,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &which);
	if (v)
		*v += 1;
}

// The outbound decision, shared by connect4 and connect6 (v4-mapped).
static __always_inline int redirect4(void *ctx, struct bpf_sock *sk, __u32 *ip, __u32 *port)
{
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct pod *p = bpf_map_lookup_elem(&pods_by_netns, &netns);
	if (!p || !(p->flags & ENROLLED) || (p->flags & DRAINING))
		return 0;
	if (sk && sk->mark == weftd_mark)
		return 0;
	__u32 dst = *ip;
	__u16 dport = (__u16)*port;
	if ((bpf_ntohl(dst) >> 24) == 127 || dst == p->ip4 || dst == 0)
		return 0;
	if (dst == p->redirect_ip4 && dport == bpf_htons(outbound_port))
		return 0;
	struct orig_dst o = {.ip4 = dst, .port = dport};
	__u64 cookie = bpf_get_socket_cookie(ctx);
	if (bpf_map_update_elem(&orig_by_cookie, &cookie, &o, BPF_ANY))
		return 0;
	*ip = p->redirect_ip4;
	*port = bpf_htons(outbound_port);
	count(STAT_REDIRECTED);
	return 1;
}

SEC("cgroup/connect4")
int weft_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	__u32 ip = ctx->user_ip4;
	__u32 port = ctx->user_port;
	if (redirect4(ctx, ctx->sk, &ip, &port)) {
		ctx->user_ip4 = ip;
		ctx->user_port = port;
	}
	return 1;
}

SEC("cgroup/connect6")
int weft_connect6(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return 1;
	// Only v4-mapped destinations (::ffff:a.b.c.d): the mesh is IPv4 for now.
	if (ctx->user_ip6[0] != 0 || ctx->user_ip6[1] != 0 || ctx->user_ip6[2] != bpf_htonl(0xffff))
		return 1;
	__u32 ip = ctx->user_ip6[3];
	__u32 port = ctx->user_port;
	if (redirect4(ctx, ctx->sk, &ip, &port)) {
		ctx->user_ip6[3] = ip;
		ctx->user_port = port;
	}
	return 1;
}

// Inside the pod, getpeername() shows the original peer, not weftd.
static __always_inline int restore_peer(void *ctx, __u32 *ip, __u32 *port)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct orig_dst *o = bpf_map_lookup_elem(&orig_by_cookie, &cookie);
	if (!o)
		return 0;
	*ip = o->ip4;
	*port = o->port;
	return 1;
}

SEC("cgroup/getpeername4")
int weft_getpeername4(struct bpf_sock_addr *ctx)
{
	__u32 ip, port;
	if (restore_peer(ctx, &ip, &port)) {
		ctx->user_ip4 = ip;
		ctx->user_port = port;
	}
	return 1;
}

SEC("cgroup/getpeername6")
int weft_getpeername6(struct bpf_sock_addr *ctx)
{
	__u32 ip, port;
	if (restore_peer(ctx, &ip, &port)) {
		ctx->user_ip6[3] = ip;
		ctx->user_port = port;
	}
	return 1;
}

// Once the source port is chosen, key the original destination by the pod's (ip, port): that
// is the peer address weftd sees on accept.
SEC("sockops")
int weft_sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;
	__u32 family = skops->family;
	// Read both address forms, then choose: a conditional load would make clang compute a
	// context offset, which the verifier refuses.
	__u32 v4 = skops->local_ip4;
	__u32 v6 = skops->local_ip6[3];
	asm volatile("" : "+r"(v4), "+r"(v6));
	__u32 local_ip = family == 2 /* AF_INET */ ? v4 : v6;
	struct addr_key key = {.ip4 = local_ip, .port = (__u16)skops->local_port};
	__u64 cookie = bpf_get_socket_cookie(skops);

	if (op == BPF_SOCK_OPS_TCP_CONNECT_CB) {
		struct orig_dst *o = bpf_map_lookup_elem(&orig_by_cookie, &cookie);
		if (!o)
			return 1;
		struct orig_dst copy = *o;
		bpf_map_update_elem(&orig_by_addr, &key, &copy, BPF_ANY);
		bpf_sock_ops_cb_flags_set(skops, BPF_SOCK_OPS_STATE_CB_FLAG);
	} else if (op == BPF_SOCK_OPS_STATE_CB && skops->args[1] == 7 /* BPF_TCP_CLOSE */) {
		bpf_map_delete_elem(&orig_by_addr, &key);
		bpf_map_delete_elem(&orig_by_cookie, &cookie);
	}
	return 1;
}

// getsockopt(SOL_IP, SO_ORIGINAL_DST) on weftd's accepted socket: the pod's original
// destination, as iptables REDIRECT would answer it.
#define SOL_IP_ 0
#define SO_ORIGINAL_DST_ 80

struct sockaddr_in_ {
	__u16 family;
	__u16 port;
	__u32 addr;
	__u8 zero[8];
};

SEC("cgroup/getsockopt")
int weft_getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->level != SOL_IP_ || ctx->optname != SO_ORIGINAL_DST_)
		return 1;
	struct bpf_sock *sk = ctx->sk;
	if (!sk)
		return 1;
	struct addr_key key = {.ip4 = sk->dst_ip4, .port = bpf_ntohs((__u16)sk->dst_port)};
	struct orig_dst *o = bpf_map_lookup_elem(&orig_by_addr, &key);
	if (!o)
		return 1;
	struct sockaddr_in_ *sa = ctx->optval;
	if ((void *)(sa + 1) > ctx->optval_end)
		return 1;
	sa->family = 2; // AF_INET
	sa->port = o->port;
	sa->addr = o->ip4;
	__builtin_memset(sa->zero, 0, sizeof(sa->zero));
	ctx->optlen = sizeof(*sa);
	// Keep the two context stores apart: merged, they become one 8-byte store the
	// verifier refuses.
	asm volatile("" ::: "memory");
	ctx->retval = 0;
	count(STAT_ORIG_ANSWERS);
	return 1;
}

// Marks what weftd must receive: SYNs to enrolled pods, and packets of flows it already owns
// (so they keep reaching it after the pod is unenrolled, while draining).
SEC("classifier")
int weft_ingress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_TCP || ip->ihl != 5)
		return TC_ACT_OK;
	struct tcphdr *tcp = (void *)(ip + 1);
	if ((void *)(tcp + 1) > end)
		return TC_ACT_OK;
	__u32 dst = ip->daddr;
	__u32 *flags = bpf_map_lookup_elem(&pod_ips, &dst);
	if (!flags)
		return TC_ACT_OK;
	if (tcp->syn && !tcp->ack) {
		if ((*flags & ENROLLED) && !(*flags & DRAINING)) {
			skb->mark = capture_mark;
			count(STAT_MARKED_SYN);
		}
		return TC_ACT_OK;
	}
	struct bpf_sock_tuple tuple = {};
	tuple.ipv4.saddr = ip->saddr;
	tuple.ipv4.daddr = ip->daddr;
	tuple.ipv4.sport = tcp->source;
	tuple.ipv4.dport = tcp->dest;
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tuple, sizeof(tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != 10 /* TCP_LISTEN */) {
			skb->mark = capture_mark;
			count(STAT_MARKED_FLOW);
		}
		bpf_sk_release(sk);
	}
	return TC_ACT_OK;
}

// New connections to enrolled pods, made local by the mark: HBONE to the HBONE listener,
// anything else to the plaintext listener.
SEC("sk_lookup")
int weft_sk_lookup(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP || ctx->family != 2 /* AF_INET */)
		return SK_PASS;
	__u32 dst = ctx->local_ip4;
	__u32 *flags = bpf_map_lookup_elem(&pod_ips, &dst);
	if (!flags || !(*flags & ENROLLED) || (*flags & DRAINING))
		return SK_PASS;
	__u32 idx = ctx->local_port == hbone_port ? 1 : 0;
	struct bpf_sock *sk = bpf_map_lookup_elem(&listeners, &idx);
	if (!sk)
		return SK_PASS;
	long err = bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	if (err == 0)
		count(STAT_ASSIGNED);
	return SK_PASS;
}
