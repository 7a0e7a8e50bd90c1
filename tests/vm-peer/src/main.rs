//! The plaintext ends of the kernel-TLS VM test (`tests/tests/it/ktls.rs`), which runs where
//! only busybox is installed, so it is a static binary with no dependencies. busybox `nc`
//! cannot half-close, so it cannot carry a transfer whose end is an end of stream.
//!
//! ```text
//! replink-vm-peer echo ADDR          echo every connection's bytes back, then half-close
//! replink-vm-peer send ADDR IN OUT   send file IN, half-close, write what comes back to OUT
//! ```

#![forbid(unsafe_code)]

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::ExitCode;

fn echo(addr: &str) -> io::Result<()> {
    let listener = TcpListener::bind(addr)?;
    println!("vm-peer: echo on {}", listener.local_addr()?);
    for conn in listener.incoming() {
        let mut conn = conn?;
        std::thread::spawn(move || {
            let result = conn.try_clone().and_then(|mut w| {
                io::copy(&mut conn, &mut w)?;
                w.shutdown(Shutdown::Write)
            });
            if let Err(e) = result {
                eprintln!("vm-peer: echo connection: {e}");
            }
        });
    }
    Ok(())
}

fn send(addr: &str, input: &str, output: &str) -> io::Result<()> {
    let stream = TcpStream::connect(addr)?;
    let mut writer = stream.try_clone()?;
    let mut file = File::open(input)?;
    let sender = std::thread::spawn(move || -> io::Result<u64> {
        let n = io::copy(&mut file, &mut writer)?;
        writer.shutdown(Shutdown::Write)?;
        Ok(n)
    });
    let mut out = BufWriter::new(File::create(output)?);
    let mut reader = stream;
    let mut buf = vec![0u8; 64 * 1024];
    let mut received = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])?;
        received += n as u64;
    }
    out.flush()?;
    let sent = sender
        .join()
        .map_err(|_| io::Error::other("the sending thread panicked"))??;
    println!("vm-peer: sent {sent} received {received}");
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["echo", addr] => echo(addr),
        ["send", addr, input, output] => send(addr, input, output),
        _ => {
            eprintln!("usage: replink-vm-peer echo ADDR | send ADDR IN OUT");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vm-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
