//! Differential: the in-kernel classifier's ClientHello walk (ebpf/bpf/client_hello.h,
//! compiled for the host by build.rs) against `parse_client_hello`, its oracle. The corpus
//! test checks them on fixed hellos; this checks them on what a fuzzer makes. Disagreements
//! are judged as the proxy judges them (`agree` in proxy/src/bpf.rs, which logs
//! `bpf_classifier_mismatch`): the kernel may defer (`fragmented`, `limit`), and otherwise must
//! reach the same verdict, with the same name.
//!
//! One known gap is let through: the kernel does not read the contents of ALPN and
//! supported_versions (client_hello.h says so), so a hello whose only fault is there is
//! malformed to userspace but has a name (or none) to the kernel. The proxy logs such a
//! connection as a mismatch; it is refused either way (userspace routes).
//!
//! The input is what the verdict program sees: the stream parser hands it everything received
//! once the first record is whole (or at once when the first bytes are not a TLS record).
#![no_main]

use libfuzzer_sys::fuzz_target;
use replink_ebpf::{parse_client_hello, HelloError, Parse};

// enum verdict_reason in ebpf/bpf/classifier.h (0: the walk found a valid name).
const NAME: i32 = 0;
const NO_SNI: i32 = 3;
const MALFORMED: i32 = 4;
const FRAGMENTED: i32 = 5;
const LIMIT: i32 = 6;

/// `HelloError::Malformed` reasons from the extensions the kernel skips.
const UNREAD_BY_KERNEL: [&str; 5] = [
    "ALPN list",
    "bytes after ALPN list",
    "ALPN protocol",
    "empty ALPN protocol",
    "supported_versions",
];

extern "C" {
    /// bpf_walk/walk.c: 0 with the normalized name in `name[..*name_len]`, or the reason.
    fn replink_bpf_walk(data: *const u8, len: u32, name: *mut u8, name_len: *mut u32) -> i32;
}

fuzz_target!(|data: &[u8]| {
    let Ok(len) = u32::try_from(data.len()) else {
        return;
    };
    if data.len() < 5 {
        return; // the stream parser waits for a record header
    }
    let tls = (0x14..=0x18).contains(&data[0]) && data[1] == 3;
    if tls && data.len() < 5 + usize::from(u16::from_be_bytes([data[3], data[4]])) {
        return; // and for the whole first record
    }
    let mut name = [0u8; 256];
    let mut name_len = 0u32;
    // SAFETY: `data` is valid for `len` bytes; walk.c writes at most 253 bytes to `name` (256)
    // and one u32 to `name_len`, and keeps no pointer.
    let kernel = unsafe { replink_bpf_walk(data.as_ptr(), len, name.as_mut_ptr(), &mut name_len) };
    let user = parse_client_hello(data);
    match (kernel, &user) {
        (FRAGMENTED | LIMIT, _) => {}
        (_, Ok(Parse::Incomplete { .. })) => {
            panic!("userspace waits for more records, the kernel decided {kernel}")
        }
        (NAME, Ok(Parse::Complete(hello))) => assert_eq!(
            hello.server_name.as_deref().map(str::as_bytes),
            Some(&name[..name_len as usize]),
            "the kernel's name differs"
        ),
        (NO_SNI, Ok(Parse::Complete(hello))) => assert_eq!(hello.server_name, None),
        (MALFORMED, Err(_)) => {}
        (NAME | NO_SNI, Err(HelloError::Malformed(what))) if UNREAD_BY_KERNEL.contains(what) => {}
        _ => panic!("kernel {kernel}, userspace {user:?}"),
    }
});
