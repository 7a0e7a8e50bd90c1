/* The classifier's one BPF object: the programs share its maps (maps.h). */
#include "stream_parser.c"
#include "stream_verdict.c"
#include "sock_ops.c"

char _license[] SEC("license") = "GPL";
