/* The maps both programs share (one object: classifier.c includes both program files). */
#ifndef REPLINK_MAPS_H
#define REPLINK_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "classifier.h"

/* The sockets to classify; both programs are attached to it. Key: the socket cookie. */
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

#endif
