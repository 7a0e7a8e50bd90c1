/* sk_skb stream verdict: classifies a socket by the SNI of its first TLS record (a whole
 * record, thanks to stream_parser.c) and records the result under the socket's cookie. The
 * bytes go on to the socket's own receive queue (SK_PASS): userspace reads the classification
 * by cookie, then the ClientHello.
 *
 * A socket in `pairs` (one side of a passthrough connection, set up by userspace after it has
 * read the ClientHello and connected the upstream) has its bytes moved to the other socket's
 * send queue instead (bpf_sk_redirect_hash): they never reach userspace. FIN and RST do not
 * travel that way; userspace watches both sockets for them. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"
#include "client_hello.h"

/* Two route keys per CPU (exact, wildcard): too big for the stack. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct sni_key);
} scratch SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *n = bpf_map_lookup_elem(&counters, &index);

	if (n)
		*n += 1;
}

struct suffix_copy {
	struct sni_key *from;
	struct sni_key *to;
	__u32 start;
};

static long copy_byte(__u64 index, void *ctx)
{
	struct suffix_copy *c = ctx;

	c->to->name[index & (SNI_NAME_BUF - 1)] =
		c->from->name[(c->start + index) & (SNI_NAME_BUF - 1)];
	return 0;
}

/* Fills *out; returns nothing, every outcome is a classification. */
static __always_inline void classify(struct __sk_buff *skb, struct classification *out)
{
	struct sni_location loc = {};
	struct suffix_copy copy;
	struct sni_key *exact, *wild;
	__u32 zero = 0, one = 1, len;
	__u32 *route;
	__u64 size;
	int reason, dot;

	out->route = ROUTE_UNKNOWN;
	out->sni_len = 0;
	reason = walk_client_hello(skb, &loc);
	if (reason) {
		out->reason = reason;
		return;
	}
	out->reason = REASON_MALFORMED;
	/* validate_host(): one trailing dot stripped, then 1..=253 bytes. */
	len = loc.len;
	if (len == 0 || len > 254)
		return;
	exact = bpf_map_lookup_elem(&scratch, &zero);
	wild = bpf_map_lookup_elem(&scratch, &one);
	if (!exact || !wild)
		return;
	__builtin_memset(exact, 0, sizeof(*exact));
	/* The verifier must see 0 < size <= sizeof(name) on the register passed to the helper;
	 * clang would drop a plain re-check of what it already knows. */
	size = len;
	asm volatile("%0 &= 0xff" : "+r"(size));
	if (size == 0 || bpf_skb_load_bytes(skb, loc.off, exact->name, size))
		return;
	len = size;
	if (exact->name[(len - 1) & (SNI_NAME_BUF - 1)] == '.')
		exact->name[--len & (SNI_NAME_BUF - 1)] = 0;
	if (len == 0 || len > 253)
		return;
	dot = normalize_name(exact, len);
	if (dot == -2)
		return;
	exact->len = len;
	out->sni_len = len;
	out->reason = REASON_NO_ROUTE;

	route = bpf_map_lookup_elem(&routes, exact);
	if (!route && dot >= 0) {
		__builtin_memset(wild, 0, sizeof(*wild));
		wild->wildcard = 1;
		wild->len = len - dot - 1;
		copy.from = exact;
		copy.to = wild;
		copy.start = dot + 1;
		bpf_loop(wild->len, copy_byte, &copy, 0);
		route = bpf_map_lookup_elem(&routes, wild);
	}
	if (route && *route < MAX_ROUTES) {
		out->route = *route;
		out->reason = REASON_ROUTED;
	}
}

static __always_inline void count_bytes(__u32 route, __u32 len)
{
	__u64 *n = bpf_map_lookup_elem(&route_bytes, &route);

	if (n)
		*n += len;
}

/* SK_PASS, or the redirect's verdict for a passthrough socket. */
static __always_inline int try_stream_verdict(struct __sk_buff *skb)
{
	struct classification c = {};
	struct passthrough_pair *pair;
	__u64 cookie = bpf_get_socket_cookie(skb);

	pair = bpf_map_lookup_elem(&pairs, &cookie);
	if (pair) {
		__sync_fetch_and_add(&pair->bytes, skb->len);
		count_bytes(pair->route, skb->len);
		return bpf_sk_redirect_hash(skb, &sockets, &pair->peer, 0);
	}

	/* Classified already: later records pass untouched. */
	if (bpf_map_lookup_elem(&classifications, &cookie))
		return SK_PASS;
	classify(skb, &c);
	bpf_map_update_elem(&classifications, &cookie, &c, BPF_NOEXIST);
	count(c.reason == REASON_ROUTED ? c.route : MAX_ROUTES + c.reason);
	return SK_PASS;
}

SEC("sk_skb/stream_verdict")
int stream_verdict(struct __sk_buff *skb)
{
	return try_stream_verdict(skb);
}
