"""The analyst notebooks in ``notebooks/`` run top to bottom on the bundled sample.

Each notebook is executed in a fresh ``python3`` kernel with nbclient, working
directory ``notebooks/``, so a change to the library that breaks a notebook fails
the suite. A run fails on any cell error or timeout, on a warning printed by a cell,
and when a notebook shows no figure. Notebooks must be stored without outputs.
Runtimes are printed at the end of the module (they are reported, never asserted).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: The studies the project ships; each must exist (a rename must update this list).
REQUIRED = ("01_quickstart", "02_model_study", "03_what_if_study", "04_backtest_study")
#: Seconds one cell may run before the kernel is interrupted and the test fails.
CELL_TIMEOUT_S = 240


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(scope="module")
def runtimes(request: pytest.FixtureRequest) -> Iterator[dict[str, float]]:
    """Collects each notebook's wall-clock runtime and prints them after the module."""
    seen: dict[str, float] = {}
    yield seen
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not seen:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_line("notebook runtimes (wall clock, this machine):")
        for name, seconds in seen.items():
            reporter.write_line(f"  {name:28s} {seconds:6.1f} s")
        reporter.write_line(f"  {'total':28s} {sum(seen.values()):6.1f} s")


def test_every_required_study_is_present() -> None:
    present = {p.stem for p in NOTEBOOKS}
    missing = [name for name in REQUIRED if name not in present]
    assert not missing, f"notebooks missing from {NOTEBOOK_DIR}: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} hold outputs or execution counts; clear them before "
        "committing (notebooks/README.md has the command)."
    )
    assert any(c.cell_type == "markdown" for c in nb.cells), f"{path.name} explains nothing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, runtimes: dict[str, float]) -> None:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError (with the cell and traceback) on any error
    runtimes[path.stem] = time.perf_counter() - start

    outputs = [o for c in _code_cells(nb) for o in c.outputs]
    stderr = [
        o.text for o in outputs if o.output_type == "stream" and o.name == "stderr" and o.text
    ]
    warned = [t for t in stderr if "Warning" in t or "warning" in t]
    assert not warned, f"{path.name} printed warnings:\n" + "\n".join(warned)
    figures = sum("image/png" in o.get("data", {}) for o in outputs)
    assert figures >= 1, f"{path.name} showed no figure"
