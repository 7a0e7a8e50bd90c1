/* sk_skb stream parser: the socket's first TLS record arrives in one message, so the verdict
 * program sees the whole ClientHello record however the client split its writes.
 *
 * Kernel finding (6.18): when one skb carries several messages, this program sees the skb from
 * its start, not from the strparser's offset, so it cannot delimit the second message of an
 * skb (returning record lengths then cuts the stream at wrong places and holds bytes back).
 * So no message ever ends inside an skb: until the socket is classified, "need more" (0) until
 * the first record is all there, then everything received so far; after that (or on a
 * passthrough socket), whole skbs. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"

#define TLS_RECORD_HEADER 5

static __always_inline int try_stream_parser(struct __sk_buff *skb)
{
	__u8 hdr[TLS_RECORD_HEADER];
	__u64 cookie;
	__u32 record;

	cookie = bpf_get_socket_cookie(skb);
	if (bpf_map_lookup_elem(&pairs, &cookie) || bpf_map_lookup_elem(&classifications, &cookie))
		return skb->len;
	if (skb->len < TLS_RECORD_HEADER)
		return 0; /* wait for the header */
	if (bpf_skb_load_bytes(skb, 0, hdr, sizeof(hdr)))
		return 0;
	/* Not a TLS record: hand over what is there, the verdict calls it malformed. */
	if (hdr[0] < 0x14 || hdr[0] > 0x18 || hdr[1] != 3)
		return skb->len;
	record = TLS_RECORD_HEADER + ((hdr[3] << 8) | hdr[4]);
	return skb->len >= record ? skb->len : 0;
}

SEC("sk_skb/stream_parser")
int stream_parser(struct __sk_buff *skb)
{
	return try_stream_parser(skb);
}
