#!/usr/bin/env python3
"""Record a real cargo build under a fastjob pool and screenshot its report.

Makes a small offline cargo workspace (one base crate, four crates that
depend on it, one binary on top), builds it with ``cargo build --offline
-j4`` inside ``fastjob.Server(4)`` while ``fastjob.trace.Recorder`` samples,
writes the trace and the HTML report, and renders the report to a PNG with
headless Chromium (``docs/report.png`` by default).

    python scripts/trace_screenshot.py [--png docs/report.png] [--keep DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import fastjob
from fastjob.trace.report import screenshot
from fastjob.trace import Recorder

LEAVES = ["parse", "check", "lower", "emit"]


def lib_source(name: str, n: int, deps: list[str]) -> str:
    """A crate with ``n`` generated functions, enough to keep rustc busy."""
    out = [f"//! generated crate {name}"]
    for i in range(n):
        out.append(
            f"pub fn f{i}(x: u64) -> u64 {{\n"
            f"    let v: Vec<u64> = (0..x).map(|k| k.wrapping_mul({i + 3}) ^ (k >> {i % 7 + 1})).collect();\n"
            f"    let s: std::collections::BTreeMap<u64, String> = v.iter().map(|k| (*k, format!(\"{name}{{k}}\"))).collect();\n"
            f"    s.values().fold({i}u64, |a, b| a.rotate_left(5) ^ b.len() as u64)\n}}"
        )
    body = " ^ ".join(f"f{i}(x)" for i in range(0, n, max(1, n // 8)))
    calls = "".join(f" ^ {d}::run(x)" for d in deps)
    out.append(f"pub fn run(x: u64) -> u64 {{ {body}{calls} }}")
    return "\n".join(out) + "\n"


def make_workspace(root: Path, size: int) -> None:
    crates = {"base": ([], size * 3), **{leaf: (["base"], size) for leaf in LEAVES}}
    members = [*crates, "app"]
    (root / "Cargo.toml").write_text(
        "[workspace]\nresolver = \"2\"\nmembers = [" + ", ".join(f'"{m}"' for m in members) + "]\n"
        "[profile.dev]\nincremental = false\ncodegen-units = 1\n"
    )
    for name, (deps, n) in crates.items():
        d = root / name
        (d / "src").mkdir(parents=True, exist_ok=True)
        dep_lines = "".join(f'{x} = {{ path = "../{x}" }}\n' for x in deps)
        (d / "Cargo.toml").write_text(
            f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n'
            f"[dependencies]\n{dep_lines}")
        (d / "src" / "lib.rs").write_text(lib_source(name, n, deps))
    app = root / "app"
    (app / "src").mkdir(parents=True, exist_ok=True)
    (app / "Cargo.toml").write_text(
        '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n[dependencies]\n'
        + "".join(f'{x} = {{ path = "../{x}" }}\n' for x in LEAVES))
    (app / "src" / "main.rs").write_text(
        "fn main() { let x = std::env::args().count() as u64; println!(\"{}\", "
        + " ^ ".join(f"{x}::run(x)" for x in LEAVES) + "); }\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--png", default="docs/report.png")
    ap.add_argument("--html", help="keep the HTML report here")
    ap.add_argument("--trace", help="keep the Chrome trace JSON here")
    ap.add_argument("--keep", help="build in this directory (kept) instead of a temporary one")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--size", type=int, default=80, help="functions per leaf crate")
    ap.add_argument("--height", type=int, default=760)
    args = ap.parse_args()
    cargo = shutil.which("cargo") or str(Path.home() / ".cargo/bin/cargo")
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fastjob-cargo-"))
    try:
        work.mkdir(parents=True, exist_ok=True)
        make_workspace(work, args.size)
        shutil.rmtree(work / "target", ignore_errors=True)
        cmd = [cargo, "build", "--offline"]  # cargo takes -j from the jobserver
        with fastjob.Server(args.jobs) as server:
            # cargo runs in the implicit slot, as under `fastjob run`.
            with Recorder(server, implicit=True, command="cargo build --offline") as rec:
                subprocess.run(cmd, cwd=work, env=server.env(), pass_fds=server.pass_fds, check=True)
        print(rec.format_summary(), file=sys.stderr)
        html = Path(args.html) if args.html else work / "report.html"
        rec.write_report(html, title=f"fastjob trace: cargo build of a 6-crate workspace, pool of {args.jobs}")
        if args.trace:
            rec.write_trace(args.trace)
        screenshot(html, args.png, width=1200, height=args.height)
        print(f"wrote {args.png} ({Path(args.png).stat().st_size} bytes) from {html}", file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
