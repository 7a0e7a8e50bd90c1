/* The maps the programs share (one object: classifier.c includes every program file). */
#ifndef REPLINK_MAPS_H
#define REPLINK_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "classifier.h"

/* The sockets to classify, and both sockets of a passthrough connection; both sk_skb programs
 * are attached to it. Key: the socket cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u32);
} sockets SEC(".maps");

/* Route id by name: exact names and `*.suffix` wildcards (struct sni_key). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ROUTES);
	__type(key, struct sni_key);
	__type(value, __u32);
} routes SEC(".maps");

/* Classification by socket cookie. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct classification);
} classifications SEC(".maps");

/* Connections per route id, then per reason at MAX_ROUTES + reason. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* The reverse listeners of this process (struct listen_key); sock_ops.c puts their accepted
 * sockets into `sockets`. Each replink process loads its own maps, so it only ever takes the
 * sockets of its own listeners. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct listen_key);
	__type(value, __u32);
} listen_ports SEC(".maps");

/* Passthrough connections: socket cookie -> the other socket (both ways). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64);
	__type(value, struct passthrough_pair);
} pairs SEC(".maps");

/* Bytes redirected in the kernel per route id (both directions of passthrough routes). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MAX_ROUTES);
	__type(key, __u32);
	__type(value, __u64);
} route_bytes SEC(".maps");

/* Sockets sock_ops.c put into `sockets`, by cookie: userspace waits for a classification only
 * for these (a socket accepted before its listener was registered, or refused by a full map,
 * would never get one). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOCKETS);
	__type(key, __u64);
	__type(value, __u8);
} joined SEC(".maps");

#endif
