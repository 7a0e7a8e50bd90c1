/* The ClientHello walk, in the order and with the checks of parse_client_hello() in
 * src/client_hello.rs (the oracle). Works on one TLS record (the stream parser's message):
 * a ClientHello spanning records is REASON_FRAGMENTED and left to userspace.
 *
 * Not checked here (userspace still is): the contents of extensions other than server_name
 * (ALPN, supported_versions). */
#ifndef REPLINK_CLIENT_HELLO_H
#define REPLINK_CLIENT_HELLO_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "classifier.h"

#define TLS_RECORD_HEADER 5
#define HANDSHAKE_HEADER 4
#define MAX_RECORD 16384
#define MAX_CLIENT_HELLO (64 * 1024)
#define MAX_EXTENSIONS 32
#define MAX_SNI_ENTRIES 4
#define EXT_SERVER_NAME 0

/* Where the host_name is in the message; valid when the walk returns 0. */
struct sni_location {
	__u32 off;
	__u32 len;
};

static __always_inline int load_u8(struct __sk_buff *skb, __u32 off, __u32 *out)
{
	__u8 b;

	if (bpf_skb_load_bytes(skb, off, &b, 1))
		return -1;
	*out = b;
	return 0;
}

static __always_inline int load_u16(struct __sk_buff *skb, __u32 off, __u32 *out)
{
	__u8 b[2];

	if (bpf_skb_load_bytes(skb, off, b, 2))
		return -1;
	*out = ((__u32)b[0] << 8) | b[1];
	return 0;
}

/* Finds the server_name extension's host_name. Returns 0 with *loc set, or a verdict_reason. */
static __always_inline int walk_client_hello(struct __sk_buff *skb, struct sni_location *loc)
{
	__u8 hdr[TLS_RECORD_HEADER + HANDSHAKE_HEADER];
	__u32 rec_len, msg_len, end, off, n, ext_type, ext_len, i;
	__u32 sni_off = 0, sni_len = 0, found_sni = 0;
	__u16 seen[MAX_EXTENSIONS];

	if (bpf_skb_load_bytes(skb, 0, hdr, TLS_RECORD_HEADER))
		return REASON_MALFORMED;
	if (hdr[0] != 0x16 || hdr[1] != 3)
		return REASON_MALFORMED;
	rec_len = ((__u32)hdr[3] << 8) | hdr[4];
	if (rec_len == 0 || rec_len > MAX_RECORD)
		return REASON_MALFORMED;
	if (rec_len < HANDSHAKE_HEADER)
		return REASON_FRAGMENTED;
	if (bpf_skb_load_bytes(skb, 0, hdr, sizeof(hdr)))
		return REASON_MALFORMED;
	if (hdr[5] != 1)
		return REASON_MALFORMED;
	msg_len = ((__u32)hdr[6] << 16) | ((__u32)hdr[7] << 8) | hdr[8];
	if (msg_len > MAX_CLIENT_HELLO)
		return REASON_MALFORMED;
	if (HANDSHAKE_HEADER + msg_len > rec_len)
		return REASON_FRAGMENTED;
	end = TLS_RECORD_HEADER + HANDSHAKE_HEADER + msg_len;

	/* legacy_version, random */
	off = TLS_RECORD_HEADER + HANDSHAKE_HEADER + 2 + 32;
	if (off + 1 > end || load_u8(skb, off, &n) || n > 32)
		return REASON_MALFORMED;
	off += 1 + n; /* session_id */
	if (off + 2 > end || load_u16(skb, off, &n) || n == 0 || n % 2)
		return REASON_MALFORMED;
	off += 2 + n; /* cipher_suites */
	if (off + 1 > end || load_u8(skb, off, &n) || n == 0)
		return REASON_MALFORMED;
	off += 1 + n; /* compression_methods */
	if (off > end)
		return REASON_MALFORMED;
	if (off == end)
		return REASON_NO_SNI; /* no extensions at all */
	if (off + 2 > end || load_u16(skb, off, &n))
		return REASON_MALFORMED;
	off += 2;
	if (off + n != end)
		return REASON_MALFORMED; /* extensions longer than the message, or bytes after */

	for (i = 0; i < MAX_EXTENSIONS; i++) {
		__u32 j;

		if (off == end)
			break;
		if (off + 4 > end || load_u16(skb, off, &ext_type) || load_u16(skb, off + 2, &ext_len))
			return REASON_MALFORMED;
		off += 4;
		if (off + ext_len > end)
			return REASON_MALFORMED;
		for (j = 0; j < MAX_EXTENSIONS; j++) {
			if (j >= i)
				break;
			if (seen[j] == ext_type)
				return REASON_MALFORMED; /* duplicate extension */
		}
		seen[i] = ext_type;
		if (ext_type == EXT_SERVER_NAME) {
			found_sni = 1;
			sni_off = off;
			sni_len = ext_len;
		}
		off += ext_len;
	}
	if (off != end)
		return REASON_LIMIT;
	if (!found_sni)
		return REASON_NO_SNI;

	/* server_name: a vec16 list of (type u8, vec16 name); host_name is type 0. */
	if (sni_len < 2 || load_u16(skb, sni_off, &n) || n != sni_len - 2)
		return REASON_MALFORMED;
	end = sni_off + sni_len;
	off = sni_off + 2;
	found_sni = 0;
	for (i = 0; i < MAX_SNI_ENTRIES; i++) {
		__u32 kind;

		if (off == end)
			break;
		if (off + 3 > end || load_u8(skb, off, &kind) || load_u16(skb, off + 1, &n))
			return REASON_MALFORMED;
		off += 3;
		if (off + n > end)
			return REASON_MALFORMED;
		if (kind == 0) {
			if (found_sni)
				return REASON_MALFORMED; /* two host_name entries */
			found_sni = 1;
			loc->off = off;
			loc->len = n;
		}
		off += n;
	}
	if (off != end)
		return REASON_LIMIT;
	if (!found_sni)
		return REASON_NO_SNI;
	return 0;
}

static __always_inline int is_name_byte(__u8 c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* State of the name walk (a bpf_loop callback: a plain 256-step loop that tracks label
 * lengths is too many states for the verifier). */
struct name_walk {
	struct sni_key *key;
	__u32 label;
	int first_dot;
	int bad;
};

static long normalize_byte(__u64 index, void *ctx)
{
	struct name_walk *w = ctx;
	__u8 c;

	c = w->key->name[index & (SNI_NAME_BUF - 1)];
	if (c == '.') {
		if (w->label == 0 || w->label > 63)
			goto bad;
		if (w->first_dot < 0)
			w->first_dot = index;
		w->label = 0;
		return 0;
	}
	if (c >= 'A' && c <= 'Z') {
		c += 'a' - 'A';
		w->key->name[index & (SNI_NAME_BUF - 1)] = c;
	}
	if (!is_name_byte(c))
		goto bad;
	w->label++;
	return 0;
bad:
	w->bad = 1;
	return 1;
}

/* Lower-cases key->name[0..len) in place and checks validate_host()'s rules. Returns the
 * index of the first '.', -1 without one, or -2 for a bad name. */
static __always_inline int normalize_name(struct sni_key *key, __u32 len)
{
	struct name_walk w = { .key = key, .first_dot = -1 };

	bpf_loop(len, normalize_byte, &w, 0);
	if (w.bad || w.label == 0 || w.label > 63)
		return -2;
	return w.first_dot;
}

#endif
