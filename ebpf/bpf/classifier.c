/* The classifier's one BPF object: both programs share its maps (maps.h). */
#include "stream_parser.c"
#include "stream_verdict.c"

char _license[] SEC("license") = "GPL";
