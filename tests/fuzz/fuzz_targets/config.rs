//! The configuration's own parsers on arbitrary strings (what an operator or a config
//! management tool may pass on the command line): `parse_duration` and `SniPattern`. Never a
//! panic; a pattern prints back to itself; a duration is finite and non-negative.
//!
//! `Route` and `Target` are left out: they resolve host names, which is I/O.
#![no_main]

use libfuzzer_sys::fuzz_target;
use replink::config::parse_duration;
use replink_ebpf::SniPattern;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_duration(s);
    if let Ok(p) = s.parse::<SniPattern>() {
        let shown = p.to_string();
        assert_eq!(
            shown.parse::<SniPattern>().as_ref(),
            Ok(&p),
            "{s:?} shown as {shown:?}"
        );
    }
});
