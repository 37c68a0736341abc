// rust_peer.rs - the Rust `jobserver` crate (Debian's librust-jobserver-dev,
// 0.1.24) on both sides of a fastjob pool on Windows, for tests/win/test_win_rust.py.
//
//   rust_peer client JOBS OUTDIR      join the pool named in the environment
//                                     (CARGO_MAKEFLAGS/MAKEFLAGS) and run JOBS
//                                     jobs of 300 ms, one in the implicit slot,
//                                     each writing "start end" to OUTDIR/rust-I.stamp
//   rust_peer server TOKENS CMD ARG.. create a pool of TOKENS (Client::new, as
//                                     cargo does), name it to CMD (configure) and
//                                     exit with CMD's status
//
// Built by scripts/test_windows.sh with Debian's rustc for x86_64-pc-windows-gnu.
use std::env;
use std::fs;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn client(jobs: usize, out: String) {
    let client = unsafe { jobserver::Client::from_env() }.expect("no jobserver in the environment");
    // The process's own slot: one job at a time runs without a token.
    let implicit = Arc::new(Mutex::new(true));
    let mut handles = Vec::new();
    for i in 0..jobs {
        let client = client.clone();
        let implicit = implicit.clone();
        let out = out.clone();
        handles.push(thread::spawn(move || {
            let mine = {
                let mut free = implicit.lock().unwrap();
                let was = *free;
                *free = false;
                was
            };
            let token = if mine { None } else { Some(client.acquire().expect("acquire")) };
            let start = now();
            thread::sleep(Duration::from_millis(300));
            let end = now();
            fs::write(format!("{}/rust-{}.stamp", out, i), format!("{} {}\n", start, end)).unwrap();
            if mine {
                *implicit.lock().unwrap() = true;
            }
            drop(token);
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
}

fn server(tokens: usize, argv: &[String]) {
    let pool = jobserver::Client::new(tokens).expect("create the pool");
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    pool.configure(&mut cmd);
    let status = cmd.status().expect("spawn the child");
    // Every token must be back: take them all without waiting long.
    let mut back = Vec::new();
    for _ in 0..tokens {
        back.push(pool.acquire().expect("a token did not come back"));
    }
    println!("rust server: {} token(s) back", back.len());
    std::process::exit(status.code().unwrap_or(1));
}

fn main() {
    let args: Vec<String> = env::args().collect();
    match args.get(1).map(|s| s.as_str()) {
        Some("client") if args.len() == 4 => client(args[2].parse().unwrap(), args[3].clone()),
        Some("server") if args.len() >= 4 => server(args[2].parse().unwrap(), &args[3..]),
        _ => {
            eprintln!("usage: rust_peer client JOBS OUTDIR | rust_peer server TOKENS CMD [ARG...]");
            std::process::exit(2);
        }
    }
}
