//! The Rust `jobserver` crate in the fastjob benchmarks.
//! `cycle N BATCHES`: acquire+release on a pool of its own, ns per cycle per batch.
//! `wait CTL_IN CTL_OUT`: the hand-off worker protocol of benchmarks/c/waiter.c,
//! with the pool taken from the environment (MAKEFLAGS) and the implicit token
//! kept by this process (the crate never reads for it).
use std::io::{Read, Write};
use std::os::unix::io::FromRawFd;

fn clk(id: libc::clockid_t) -> i64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i64 * 1_000_000_000 + ts.tv_nsec as i64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(|s| s.as_str()) {
        Some("cycle") => {
            let n: u64 = args[2].parse().unwrap();
            let batches: u32 = args[3].parse().unwrap();
            let client = jobserver::Client::new(1).expect("pool");
            for _ in 0..batches {
                let t0 = clk(libc::CLOCK_MONOTONIC);
                for _ in 0..n {
                    let tok = client.acquire().expect("acquire");
                    drop(tok);
                }
                let dt = clk(libc::CLOCK_MONOTONIC) - t0;
                println!("{:.2}", dt as f64 / n as f64);
            }
        }
        Some("wait") => {
            let client = unsafe { jobserver::Client::from_env() }.expect("no jobserver in MAKEFLAGS");
            let mut ctl_in = unsafe { std::fs::File::from_raw_fd(args[2].parse().unwrap()) };
            let mut ctl_out = unsafe { std::fs::File::from_raw_fd(args[3].parse().unwrap()) };
            loop {
                let mut cmd = [0u8];
                if ctl_in.read_exact(&mut cmd).is_err() || cmd[0] == b'q' {
                    return;
                }
                let cpu0 = clk(libc::CLOCK_PROCESS_CPUTIME_ID);
                ctl_out.write_all(b"r").unwrap();
                let tok = client.acquire().expect("acquire");
                let t1 = clk(libc::CLOCK_MONOTONIC);
                let cpu = clk(libc::CLOCK_PROCESS_CPUTIME_ID) - cpu0;
                drop(tok);
                let mut msg = Vec::with_capacity(16);
                msg.extend_from_slice(&t1.to_ne_bytes());
                msg.extend_from_slice(&cpu.to_ne_bytes());
                ctl_out.write_all(&msg).unwrap();
            }
        }
        _ => {
            eprintln!("usage: bench cycle N BATCHES | wait CTL_IN CTL_OUT");
            std::process::exit(2);
        }
    }
}
