"""cargo and fastjob, both ways round.

A small offline workspace (five leaf crates, one crate with a build script,
one binary depending on them all) is written once per session.  A
RUSTC_WRAPPER logs each rustc (start, pause, compile, end) so overlap is
measurable; the build script runs a Python fastjob client that joins the
pool through CARGO_MAKEFLAGS and logs its own token holders in the same log.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import anyio
import pytest

import fastjob

from .conftest import PY, SCRIPTS, OverlapLog, cargo_bin, clean_env, q, run

pytestmark = pytest.mark.interop

LEAVES = [f"leaf{i}" for i in range(5)]
BUILD_RS = """\
use std::process::Command;

fn main() {
    // Run the fastjob client; it inherits cargo's jobserver (CARGO_MAKEFLAGS).
    let python = std::env::var("FJ_PYTHON").expect("FJ_PYTHON");
    let script = std::env::var("FJ_BS_SCRIPT").expect("FJ_BS_SCRIPT");
    let status = Command::new(python).arg(script).status().expect("spawn python");
    assert!(status.success(), "fastjob client failed: {status}");
    println!("cargo:rerun-if-changed=build.rs");
}
"""


def _crate(root: Path, name: str, deps: list[str], kind: str = "lib") -> None:
    (root / name / "src").mkdir(parents=True)
    toml = [f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n']
    if deps:
        toml.append("[dependencies]")
        toml += [f'{d} = {{ path = "../{d}" }}' for d in deps]
    (root / name / "Cargo.toml").write_text("\n".join(toml) + "\n")
    if kind == "bin":
        body = " + ".join(f"{d}::f()" for d in deps)
        (root / name / "src" / "main.rs").write_text(f'fn main() {{ println!("{{}}", {body}); }}\n')
    else:
        (root / name / "src" / "lib.rs").write_text("pub fn f() -> u32 { 1 }\n")


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sources only; each build gets its own CARGO_TARGET_DIR."""
    root = tmp_path_factory.mktemp("cargo-ws")
    for leaf in LEAVES:
        _crate(root, leaf, [])
    _crate(root, "withbuild", [])
    (root / "withbuild" / "build.rs").write_text(BUILD_RS)
    _crate(root, "app", [*LEAVES, "withbuild"], kind="bin")
    members = ", ".join(f'"{m}"' for m in [*LEAVES, "withbuild", "app"])
    (root / "Cargo.toml").write_text(f'[workspace]\nmembers = [{members}]\nresolver = "2"\n')
    return root


def _cargo_env(tmp_path: Path, log: OverlapLog) -> dict[str, str]:
    wrapper = tmp_path / "rustc-wrapper.sh"
    wrapper.write_text(f'#!/bin/sh\nexec {q(PY)} -S {q(SCRIPTS / "rustc_wrapper.py")} "$@"\n')
    wrapper.chmod(0o755)
    return clean_env(
        {
            "RUSTC_WRAPPER": str(wrapper),
            "CARGO_TARGET_DIR": str(tmp_path / "target"),
            "CARGO_TERM_COLOR": "never",
            "CARGO_INCREMENTAL": "0",
            "FJ_LOG": str(log),
            "FJ_PYTHON": PY,
            "FJ_BS_SCRIPT": str(SCRIPTS / "build_script_client.py"),
            "FJ_BS_OUT": str(tmp_path / "build-script.json"),
        }
    )


def _rustc_count(log: OverlapLog) -> int:
    return log.starts("rustc-")


def test_cargo_pool_reaches_fastjob_in_build_script(
    workspace: Path, tmp_path: Path, overlap_log: OverlapLog
) -> None:
    """cargo is the server (its own -j4 pool); fastjob, run by a build script,
    finds the pool through CARGO_MAKEFLAGS alone and takes a token from it."""
    cargo = cargo_bin()
    env = _cargo_env(tmp_path, overlap_log)
    done = run([cargo, "build", "--offline", "-j4"], env=env, cwd=workspace, timeout=180)
    assert done.returncode == 0, done.stderr
    assert "failed to connect to jobserver" not in done.stderr
    r = json.loads((tmp_path / "build-script.json").read_text())
    assert r["variable"] == "CARGO_MAKEFLAGS"
    assert r["makeflags"] is None  # cargo sets only CARGO_MAKEFLAGS
    assert "--jobserver-auth=" in r["cargo_makeflags"]
    assert r["pool_tokens"] == 1 and r["held_at_end"] == 0
    assert _rustc_count(overlap_log) >= len(LEAVES) + 3  # leaves, build.rs, lib, app
    assert overlap_log.max_overlap() <= 4, overlap_log.summary()


@pytest.mark.parametrize("style", ["pipe", "fifo"])
def test_cargo_child_stays_in_pool(
    workspace: Path, tmp_path: Path, overlap_log: OverlapLog, style: str
) -> None:
    """fastjob is the server: cargo (started with run_process) joins the pool,
    so rustc processes plus the build script's fastjob tokens never exceed N."""
    cargo = cargo_bin()
    n = 2
    env = _cargo_env(tmp_path, overlap_log)
    with fastjob.Server(n, style=style) as server:

        async def main() -> subprocess.CompletedProcess[bytes]:
            with anyio.fail_after(180):
                return await fastjob.run_process(
                    [cargo, "build", "--offline"],
                    client=server.client,
                    check=False,
                    cwd=workspace,
                    env=env,
                )

        done = anyio.run(main)
        err = done.stderr.decode(errors="replace")
        assert done.returncode == 0, err
        assert "failed to connect to jobserver" not in err
        peak = overlap_log.max_overlap()
        assert peak <= n, overlap_log.summary()
        assert peak == n, overlap_log.summary()  # cargo did use the pool's width
        assert server.available() == n - 1
    r = json.loads((tmp_path / "build-script.json").read_text())
    # cargo handed fastjob's own pool (same style) down to the build script.
    assert r["style"] == style
    assert r["variable"] == "CARGO_MAKEFLAGS"
    assert r["pool_tokens"] == 1 and r["held_at_end"] == 0
    if style == "fifo":
        assert server.path is not None and server.path in r["cargo_makeflags"]
