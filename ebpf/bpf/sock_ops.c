/* sock_ops: puts every socket accepted on one of this process's reverse listeners into the
 * `sockets` SOCKHASH as its TCP handshake completes (BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB),
 * before the client's first data segment is processed and long before userspace accepts it.
 * So the stream parser and verdict see the ClientHello however quickly it follows the
 * handshake: no socket is "late".
 *
 * Attached to a cgroup v2 (the loader picks the replink process's own); it runs for the TCP
 * sockets of every process in that cgroup, so it takes only those whose local address is in
 * `listen_ports`, which the loader fills with this process's listeners. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "maps.h"

#define FAMILY_INET 2
#define FAMILY_INET6 10

static __always_inline int ours(struct bpf_sock_ops *ops)
{
	struct listen_key key = {};

	key.port = ops->local_port;
	key.family = ops->family;
	if (key.family == FAMILY_INET) {
		key.addr[0] = ops->local_ip4;
	} else if (key.family == FAMILY_INET6) {
		key.addr[0] = ops->local_ip6[0];
		key.addr[1] = ops->local_ip6[1];
		key.addr[2] = ops->local_ip6[2];
		key.addr[3] = ops->local_ip6[3];
	} else {
		return 0;
	}
	if (bpf_map_lookup_elem(&listen_ports, &key))
		return 1;
	__builtin_memset(key.addr, 0, sizeof(key.addr));
	return bpf_map_lookup_elem(&listen_ports, &key) != 0;
}

static __always_inline void try_sock_ops(struct bpf_sock_ops *ops)
{
	__u64 cookie;
	__u8 yes = 1;

	if (ops->op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB || !ours(ops))
		return;
	cookie = bpf_get_socket_cookie(ops);
	/* Fails only when the map is full: the socket then goes unclassified (userspace parses). */
	if (bpf_sock_hash_update(ops, &sockets, &cookie, BPF_NOEXIST) == 0)
		bpf_map_update_elem(&joined, &cookie, &yes, BPF_ANY);
}

SEC("sockops")
int sock_ops(struct bpf_sock_ops *ops)
{
	try_sock_ops(ops);
	return 1;
}
