/* Stands in for libbpf's <bpf/bpf_helpers.h> when ebpf/bpf/client_hello.h is compiled for the
 * host (walk.c): the two helpers the walk calls, over a flat byte array, with the kernel's
 * contract (bpf_skb_load_bytes fails past the end; bpf_loop stops when the callback returns 1). */
#ifndef REPLINK_FUZZ_BPF_HELPERS_H
#define REPLINK_FUZZ_BPF_HELPERS_H

#include <string.h>
#include <linux/types.h>

#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

/* What the fuzz target passes as the struct __sk_buff pointer: the message's bytes. */
struct flat_skb {
	const __u8 *data;
	__u32 len;
};

static inline long bpf_skb_load_bytes(const void *skb, __u32 off, void *to, __u32 len)
{
	const struct flat_skb *s = skb;

	if (off > s->len || len > s->len - off)
		return -14; /* -EFAULT */
	memcpy(to, s->data + off, len);
	return 0;
}

static inline long bpf_loop(__u32 nr, long (*callback)(__u64 index, void *ctx), void *ctx,
			    __u64 flags)
{
	__u32 i;

	(void)flags;
	for (i = 0; i < nr; i++) {
		if (callback(i, ctx))
			return i + 1;
	}
	return i;
}

#endif
