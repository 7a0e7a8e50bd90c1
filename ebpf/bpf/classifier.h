/* Map layouts and constants shared by the BPF programs and mirrored once, #[repr(C)], in
 * src/layout.rs. Change both together. */
#ifndef REPLINK_CLASSIFIER_H
#define REPLINK_CLASSIFIER_H

#include <linux/types.h>

/* Route ids are 0..MAX_ROUTES-1; they index the counters directly. */
#define MAX_ROUTES 1024
#define ROUTE_UNKNOWN 0xffffffffu
/* Name buffer of a route key: a host name is at most 253 bytes. */
#define SNI_NAME_BUF 256
#define MAX_SOCKETS 65536

/* Why a socket got its classification. Counters for reasons other than ROUTED sit at
 * MAX_ROUTES + reason. */
enum verdict_reason {
	REASON_ROUTED = 1,     /* SNI matched a route (exact, else wildcard) */
	REASON_NO_ROUTE = 2,   /* well-formed SNI, no route */
	REASON_NO_SNI = 3,     /* ClientHello without a host_name */
	REASON_MALFORMED = 4,  /* not TLS, not a ClientHello, bad framing or bad server name */
	REASON_FRAGMENTED = 5, /* the ClientHello spans TLS records: left to userspace */
	REASON_LIMIT = 6,      /* over MAX_EXTENSIONS extensions or MAX_SNI_ENTRIES names */
	REASON_COUNT = 7,
};

#define COUNTERS (MAX_ROUTES + REASON_COUNT)

/* Key of the route map: an exact name (wildcard = 0) or the suffix after `*.` (wildcard = 1),
 * lower-case, no trailing dot, zero-padded. */
struct sni_key {
	__u8 wildcard;
	__u8 len;
	__u8 pad[2];
	__u8 name[SNI_NAME_BUF];
};

/* Value of the classification map, keyed by socket cookie. */
struct classification {
	__u32 route;  /* route id, or ROUTE_UNKNOWN */
	__u16 sni_len; /* length of the server name as looked up, 0 without one */
	__u8 reason;  /* enum verdict_reason */
	__u8 pad;
};

/* Key of the listen_ports map: a reverse listener's local address. The sock_ops program looks
 * up the accepted socket's exact local address, then the wildcard (addr all zero) of its
 * family. */
struct listen_key {
	__u16 port;    /* host byte order */
	__u16 family;  /* AF_INET (2) or AF_INET6 (10) */
	__u32 addr[4]; /* network byte order, IPv4 in addr[0]; all zero: any address */
};

/* Value of the pairs map, keyed by socket cookie: the other socket of a passthrough
 * connection. Bytes read on this socket go to `peer`'s send queue in the kernel. */
struct passthrough_pair {
	__u64 peer;  /* cookie of the other socket */
	__u64 bytes; /* bytes redirected from this socket to peer */
	__u32 route; /* route id: the per-route byte counters */
	__u32 pad;
};

#endif
