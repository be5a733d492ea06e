"""The benchmarks run: every script in ``benchmarks/`` is in ``run_all.py``, and its quick
mode completes and reports its same-run ratios (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def run_all():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


def test_every_benchmark_script_is_run(run_all):
    scripts = {p.name for p in BENCH.glob("*.py")} - set(run_all.NOT_BENCHMARKS)
    assert scripts == set(run_all.BENCHMARKS.values())


def test_readme_block_is_replaced_and_nothing_else(run_all):
    text = f"intro\n{run_all.BEGIN}\nold table\n{run_all.END}\noutro\n"
    out = run_all.replace_block(text, "new table\n")
    assert out == f"intro\n{run_all.BEGIN}\nnew table\n{run_all.END}\noutro\n"
    with pytest.raises(SystemExit, match="no"):
        run_all.replace_block("no markers", "x")


def test_the_project_readme_has_the_block(run_all):
    text = (BENCH.parent / "README.md").read_text()
    assert text.count(run_all.BEGIN) == 1 and text.count(run_all.END) == 1
    assert text.index(run_all.BEGIN) < text.index(run_all.END)


@pytest.mark.slow
def test_quick_run_of_every_benchmark(tmp_path, run_all):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{run_all.BEGIN}\nstale\n{run_all.END}\ntail\n")
    output = tmp_path / "results.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "run_all.py"),
            "--quick",
            "--output",
            str(output),
            "--readme",
            str(readme),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = output.read_text()
    for name in run_all.BENCHMARKS:
        assert f"| {name} |" in table, name  # every benchmark reported at least one row
    assert "raw generator" in table and "NumPy oracle" in table
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| benchmark"):
            assert float(line.rstrip(" |").rsplit("| ", 1)[1].replace(",", "")) >= 0, line
    assert "SIMD: " in table and "CPU: " in table
    updated = readme.read_text()
    assert "stale" not in updated and updated.endswith(f"{run_all.END}\ntail\n")
    assert table in updated
