/* The BPF classifier's ClientHello walk and name check (ebpf/bpf/client_hello.h, unchanged)
 * compiled for the host, for the client_hello_vs_bpf fuzz target. shim/ stands in for libbpf's
 * helpers. bpf_walk() repeats the name steps of classify() in stream_verdict.c (that file also
 * needs the maps), up to the route lookup. */
#include <linux/bpf.h>
#include "client_hello.h"

/* 0 with the normalized name in name[0..*name_len), or the verdict_reason. */
int replink_bpf_walk(const __u8 *data, __u32 len, __u8 *name, __u32 *name_len)
{
	struct flat_skb skb = { .data = data, .len = len };
	struct sni_location loc = { 0 };
	struct sni_key key;
	__u32 n;
	int reason, dot;

	reason = walk_client_hello((struct __sk_buff *)&skb, &loc);
	if (reason)
		return reason;
	/* classify(): one trailing dot stripped, then 1..=253 bytes, then the name rules. */
	n = loc.len;
	if (n == 0 || n > 254)
		return REASON_MALFORMED;
	memset(&key, 0, sizeof(key));
	if (bpf_skb_load_bytes(&skb, loc.off, key.name, n))
		return REASON_MALFORMED;
	if (key.name[n - 1] == '.')
		key.name[--n] = 0;
	if (n == 0 || n > 253)
		return REASON_MALFORMED;
	dot = normalize_name(&key, n);
	if (dot == -2)
		return REASON_MALFORMED;
	memcpy(name, key.name, n);
	*name_len = n;
	return 0;
}
