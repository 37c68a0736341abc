"""The snippets in docs/interop.md, run as written (only the tools' paths
are supplied: PYTHON= for make, $PYTHON for build.rs, PATH for ninja)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import pytest

from .conftest import (
    PY,
    OverlapLog,
    assert_no_token_complaint,
    cargo_bin,
    clean_env,
    job_cmd,
    make43,
    make44,
    ninja_bin,
    run,
)

pytestmark = pytest.mark.interop

DOC = Path(__file__).resolve().parents[2] / "docs" / "interop.md"


def snippets() -> dict[str, str]:
    """``<!-- snippet: NAME -->`` followed by a fenced block, by NAME."""
    if not DOC.exists():
        pytest.fail(f"{DOC} is missing")
    found = re.findall(r"<!-- snippet: (\S+) -->\n```\w*\n(.*?)```\n", DOC.read_text(), re.S)
    return dict(found)


def test_doc_has_every_snippet() -> None:
    assert set(snippets()) == {"Makefile", "run_all.py", "build.rs", "gen.py", "ninja_builds.py"}


@pytest.mark.parametrize("locate", [make43, make44], ids=["make4.3", "make4.4.1"])
def test_makefile_snippet(tmp_path: Path, locate: Callable[[], str]) -> None:
    make = locate()
    doc = snippets()
    (tmp_path / "Makefile").write_text(doc["Makefile"])
    (tmp_path / "run_all.py").write_text(doc["run_all.py"])
    done = run([make, "-j4", f"PYTHON={PY}"], cwd=tmp_path, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert_no_token_complaint(out)
    assert "lint ok" in out
    assert all(f"test {i} ok" in out for i in range(8)), out
    assert "within -j4" in out, out  # run_all.py joined make's pool, not a private one


def test_cargo_build_script_snippet(tmp_path: Path) -> None:
    cargo = cargo_bin()
    doc = snippets()
    crate = tmp_path / "gencrate"
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text(
        '[package]\nname = "gencrate"\nversion = "0.1.0"\nedition = "2021"\n\n[workspace]\n'
    )
    (crate / "build.rs").write_text(doc["build.rs"])
    (crate / "gen.py").write_text(doc["gen.py"])
    files = " + ".join(
        f'include_str!(concat!(env!("OUT_DIR"), "/gen{i}.txt")).len()' for i in range(4)
    )
    (crate / "src" / "main.rs").write_text(f'fn main() {{ println!("{{}}", {files}); }}\n')
    env = clean_env({"PYTHON": PY, "CARGO_TARGET_DIR": str(tmp_path / "target")})
    done = run([cargo, "run", "--offline", "-q", "-j2"], env=env, cwd=crate, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4"  # the four generated files were there to include
    assert "failed to connect to jobserver" not in done.stderr


def test_ninja_snippet(tmp_path: Path, overlap_log: OverlapLog) -> None:
    nj = ninja_bin()
    doc = snippets()
    for tree in ("build-debug", "build-release"):
        lines = ["rule job", "  command = $cmd"]
        for i in range(6):
            lines += [f"build o{i}: job", f"  cmd = {job_cmd(overlap_log.path, f'{tree}-{i}', 0.2)}"]
        (tmp_path / tree).mkdir()
        (tmp_path / tree / "build.ninja").write_text("\n".join(lines) + "\n")
    (tmp_path / "ninja_builds.py").write_text(doc["ninja_builds.py"])
    env = clean_env({"PATH": f"{os.path.dirname(nj)}{os.pathsep}{os.environ.get('PATH', '')}"})
    done = run([PY, "ninja_builds.py"], env=env, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert overlap_log.starts() == 12
    # Alone, each ninja would run cpu_count + 2 commands at once.
    peak = overlap_log.max_overlap()
    assert 2 <= peak <= 4, overlap_log.summary()
