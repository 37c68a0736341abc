"""Per-crate rustc threads: -Zthreads=1 for all, -Zthreads=0 for all, and
fastjob-rustc-wrapper deciding per crate from the free slots.

A generated offline workspace: one large front-end-bound crate (generic
functions and trait impls), several small crates that depend on it, and
independent crates.  Each variant builds from clean under
``fastjob run -jN -- cargo build``; makespan and total CPU time (children's
user+sys) are the medians of alternated rounds; the wrapper's decision log
is summarised; ``--report DIR`` also writes a ``fastjob run --report`` page
per variant.

    python benchmarks/bench_rustc_threads.py [--rounds 3] [--jobs 2] [--report DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIG_FUNCTIONS = 1500
SMALL_DEPENDENTS = 3
INDEPENDENT = 4


def _big_crate_source(n: int) -> str:
    """Many generic functions and trait impls: rustc's front end (type
    checking, trait resolution, monomorphisation) dominates."""
    out = [
        "pub trait Shape { fn area(&self) -> f64; fn scale(&self, k: f64) -> Self where Self: Sized; }",
        "pub trait Visit<T> { fn visit(&self, x: T) -> T; }",
    ]
    for i in range(n):
        out.append(
            f"#[derive(Clone, Debug, PartialEq)] pub struct S{i} {{ pub a: f64, pub b: Vec<u{8 << (i % 4)}> }}\n"
            f"impl Shape for S{i} {{ fn area(&self) -> f64 {{ self.a * {i + 1}.0 + self.b.len() as f64 }}\n"
            f"  fn scale(&self, k: f64) -> Self {{ S{i} {{ a: self.a * k, b: self.b.clone() }} }} }}\n"
            f"impl<T: Clone + std::fmt::Debug> Visit<T> for S{i} {{ fn visit(&self, x: T) -> T {{ let _ = format!(\"{{:?}}\", x); x.clone() }} }}\n"
            f"pub fn g{i}<T: Shape + Clone, U: Into<f64> + Copy>(s: &T, u: U) -> f64 {{\n"
            f"  let v: Vec<f64> = (0..{i % 7 + 2}).map(|j| s.scale(u.into() + j as f64).area()).collect();\n"
            f"  v.iter().copied().fold(0.0, f64::max) }}"
        )
    calls = " + ".join(f"g{i}(&S{i} {{ a: 1.0, b: vec![] }}, 2.0f32)" for i in range(0, n, 50))
    out.append(f"pub fn total() -> f64 {{ {calls} }}")
    return "\n".join(out) + "\n"


def make_workspace(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    members = ["big", *(f"dep{i}" for i in range(SMALL_DEPENDENTS)), *(f"ind{i}" for i in range(INDEPENDENT)), "app"]
    (root / "Cargo.toml").write_text(
        "[workspace]\nresolver = \"2\"\nmembers = [" + ", ".join(f'"{m}"' for m in members) + "]\n"
        "[profile.dev]\ndebug = 0\nincremental = false\n"
    )

    def crate(name: str, deps: list[str], body: str, kind: str = "lib") -> None:
        (root / name / "src").mkdir(parents=True)
        toml = f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n'
        if deps:
            toml += "[dependencies]\n" + "".join(f'{d} = {{ path = "../{d}" }}\n' for d in deps)
        (root / name / "Cargo.toml").write_text(toml)
        (root / name / "src" / ("main.rs" if kind == "bin" else "lib.rs")).write_text(body)

    crate("big", [], _big_crate_source(BIG_FUNCTIONS))
    for i in range(SMALL_DEPENDENTS):
        crate(f"dep{i}", ["big"], f"pub fn f() -> f64 {{ big::total() * {i + 1}.0 }}\n")
    for i in range(INDEPENDENT):
        # medium, self-contained: a few hundred small generic items each
        items = "\n".join(
            f"pub fn h{j}<T: Copy + Into<u64>>(x: T) -> u64 {{ x.into().wrapping_mul({j + 3}) }}"
            for j in range(300)
        )
        crate(f"ind{i}", [], items + "\npub fn f() -> u64 { h1(3u8) }\n")
    deps = [f"dep{i}" for i in range(SMALL_DEPENDENTS)] + [f"ind{i}" for i in range(INDEPENDENT)]
    body = "fn main() { let mut t = 0.0;" + "".join(f" t += {d}::f() as f64;" for d in deps) + ' println!("{t}"); }\n'
    crate("app", deps, body, "bin")


def _fastjob() -> list[str]:
    script = Path(sys.executable).with_name("fastjob")
    return [str(script)] if script.exists() else [sys.executable, "-m", "fastjob"]


def build(ws: Path, variant: str, jobs: int, target: Path, log: Path, report: Path | None) -> tuple[float, float]:
    """One clean build; (makespan s, CPU s of all children)."""
    shutil.rmtree(target, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "CARGO_MAKEFLAGS")}
    env.update(RUSTC_BOOTSTRAP="1", CARGO_TARGET_DIR=str(target), CARGO_INCREMENTAL="0")
    env.pop("RUSTFLAGS", None)
    if variant == "threads=1":
        env["RUSTFLAGS"] = "-Zthreads=1"
    elif variant == "threads=0":
        env["RUSTFLAGS"] = "-Zthreads=0"  # rustc: 0 means one thread per CPU
    else:
        wrapper = Path(sys.executable).with_name("fastjob-rustc-wrapper")
        env["RUSTC_WRAPPER"] = str(wrapper) if wrapper.exists() else "fastjob-rustc-wrapper"
        env["FASTJOB_RUSTC_LOG"] = str(log)
    cmd = [*_fastjob(), "run", "-j", str(jobs)]
    if report is not None:
        cmd += ["--report", str(report)]
    cmd += ["--", "cargo", "build", "--offline", "-q"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ws, env=env, check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--report", type=Path, help="write one fastjob run --report page per variant here")
    ap.add_argument("--json", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    if shutil.which("cargo") is None:
        print("cargo not found", file=sys.stderr)
        return 2
    variants = ["threads=1", "threads=0", "wrapper"]
    with tempfile.TemporaryDirectory(prefix="fj-rustc-bench-") as tmp:
        ws = Path(tmp) / "ws"
        make_workspace(ws)
        log = Path(tmp) / "decisions.log"
        figures: dict[str, dict[str, list[float]]] = {v: {"wall": [], "cpu": []} for v in variants}
        for r in range(args.rounds):
            order = variants if r % 2 == 0 else variants[::-1]  # alternate
            for v in order:
                report = None
                if args.report is not None and r == args.rounds - 1:
                    args.report.mkdir(parents=True, exist_ok=True)
                    report = args.report / f"rustc-{v.replace('=', '')}.html"
                wall, cpu = build(ws, v, args.jobs, Path(tmp) / f"target-{v}", log, report)
                figures[v]["wall"].append(wall)
                figures[v]["cpu"].append(cpu)
                print(f"round {r + 1} {v:10s} makespan {wall:6.2f} s  cpu {cpu:6.2f} s", flush=True)
        decisions = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    base = statistics.median(figures["threads=1"]["wall"])
    base_cpu = statistics.median(figures["threads=1"]["cpu"])
    print(f"\n-j{args.jobs}, {args.rounds} alternated rounds, medians (ratio to -Zthreads=1):")
    print("| variant | makespan | CPU time |\n| --- | --- | --- |")
    summary: dict[str, object] = {"jobs": args.jobs, "rounds": args.rounds, "cpus": os.cpu_count()}
    for v in variants:
        w = statistics.median(figures[v]["wall"])
        c = statistics.median(figures[v]["cpu"])
        print(f"| {v} | {w:.2f} s ({w / base:.2f}x) | {c:.2f} s ({c / base_cpu:.2f}x) |")
        summary[v] = {"makespan": w, "cpu": c, "makespan_ratio": w / base, "cpu_ratio": c / base_cpu}
    compiles = [d for d in decisions if d.get("crate")]
    per_crate: dict[str, list[object]] = {}
    for d in compiles:
        per_crate.setdefault(str(d["crate"]), []).append(d.get("threads") or 1)
    print("\nwrapper decisions (crate: threads chosen per build):")
    for crate, counts in sorted(per_crate.items()):
        print(f"  {crate}: {counts}")
    summary["decisions"] = per_crate
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
