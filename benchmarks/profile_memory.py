"""Where the memory of the nightly run goes: resident memory per phase.

Runs what ``forecast run`` runs (read, fit, simulate, write) on a history file, in
this process, with an RSS-sampling thread (:mod:`_memory`) and the steps of the
reader and the fit marked as phases, and prints one row per phase: seconds, RSS
at entry and exit, peak, the peak in event frames and the peak above the
import baseline in event frames. Use it on any history; ``bench_large.py`` runs
the same phases on a 10-million-event one.

Run: ``.venv/bin/python benchmarks/profile_memory.py HISTORY.parquet
[--open-stages A,B,C] [--segment segment] [--draws 32] [--half-life auto]
[--paths 10000] [--no-simulate]``
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

from _memory import PhaseMemory, anon_mb, max_rss_mb, rss_mb


def instrument(mem: PhaseMemory) -> None:
    """Mark the steps of ``read_deal_log`` and ``fit`` as phases of ``mem``.

    Wraps module-level names (what the calling module looks up at call time), so
    the phases nest: e.g. ``cut`` runs inside ``fit: FitData``.
    """
    from forecast.data import deal_log, readers, validation
    from forecast.fit import data as fit_data
    from forecast.fit import fitting

    for name, label in (
        ("_load_needed_columns", "read: load columns"),
        ("_typed", "read: parse cells"),
        ("check_stages", "read: check stages"),
        ("deduplicate_and_sort", "read: dedup + sort"),
        ("check_terminal_transitions", "read: terminal rows"),
        ("check_creation_dates", "read: creation dates"),
    ):
        setattr(readers, name, mem.wrap(label, getattr(readers, name)))
    counts = validation.RepairCounts
    counts.report = mem.wrap("read: report", counts.report)  # type: ignore[method-assign]
    for name, label in (
        ("choose_half_life", "fit: choose half-life"),
        ("fit_components", "fit: point fit"),
        ("parameter_draws", "fit: parameter draws"),
        ("covariate_draws", "fit: covariate draws"),
        ("assemble_model", "fit: assemble"),
    ):
        setattr(fitting, name, mem.wrap(label, getattr(fitting, name)))
    # steps inside the point fit and the draws (the half-life backtest calls some of them
    # too: their rows cover every call); a name the fit no longer uses is skipped
    for name, label in (
        ("fit_exits", "  fit_exits"),
        ("fit_covariates", "  fit_covariates"),
        ("fit_amounts", "  fit_amounts"),
        ("build_design", "  covariate design"),
        ("bootstrap_weight_block", "  draws: weight block"),
    ):
        if hasattr(fitting, name):
            setattr(fitting, name, mem.wrap(label, getattr(fitting, name)))
    layout = getattr(fitting, "ExitDrawLayout", None)
    if layout is not None and hasattr(layout, "from_fit"):
        from_fit = layout.from_fit.__func__
        layout.from_fit = classmethod(mem.wrap("  draws: exit layout", from_fit))
    from_log = fit_data.FitData.from_log.__func__  # type: ignore[attr-defined]
    fit_data.FitData.from_log = classmethod(mem.wrap("fit: FitData", from_log))  # type: ignore[method-assign]
    deal_log.DealLog.as_of = mem.wrap("cut (DealLog.as_of)", deal_log.DealLog.as_of)  # type: ignore[method-assign]
    deal_log.DealLog._visits = mem.wrap("visits (DealLog)", deal_log.DealLog._visits)  # type: ignore[method-assign]


def run_phases(
    path: str,
    *,
    open_stages: list[str] | None = None,
    stages: Any = None,
    segment: list[str] = (),  # type: ignore[assignment]
    draws: int = 32,
    half_life: Any = "auto",
    paths: int = 10_000,
    fit: bool = True,
    simulate: bool = True,
    write: bool = True,
) -> dict[str, Any]:
    """Read, fit, simulate and write ``path`` with every phase's memory sampled.

    Returns
    -------
    dict
        ``import_mb`` (RSS after importing the package), ``frame_mb`` (event frame,
        ``estimated_size``), ``peak_mb`` (``ru_maxrss``), ``peak_after_read_mb``,
        ``import_anon_mb`` and ``peak_anon_mb`` (anonymous memory after the imports and
        its sampled peak, :func:`_memory.anon_mb`),
        ``events``, ``deals``, ``table`` (text) and ``phases`` (rows).
    """
    import forecast
    from forecast.io import write_forecast

    import_mb = rss_mb()
    import_anon_mb = anon_mb()
    mem = PhaseMemory()
    mem.baseline_mb = import_mb
    instrument(mem)
    t_start = time.perf_counter()
    with mem:
        with mem.phase("read_deal_log"):
            log = forecast.read_deal_log(
                path, stages=stages, open_stages=open_stages, segment_columns=list(segment)
            )
        peak_after_read = max_rss_mb()
        frame_mb = log.events.estimated_size("mb")
        if fit:
            with mem.phase("fit"):
                model = forecast.fit(
                    log, segment_by=list(segment), n_draws=draws, half_life=half_life
                )
        if fit and simulate:
            with mem.phase("simulate"):
                fc = model.simulate(log, n_paths=paths, progress=False)
            if write:
                with tempfile.TemporaryDirectory() as out, mem.phase("write_forecast"):
                    write_forecast(fc, out)
    seconds = time.perf_counter() - t_start
    return {
        "events": log.events.height,
        "deals": log.n_deals,
        "import_mb": import_mb,
        "frame_mb": frame_mb,
        "peak_after_read_mb": peak_after_read,
        "peak_mb": max_rss_mb(),
        "import_anon_mb": import_anon_mb,
        "peak_anon_mb": mem.anon_peak_mb,
        "seconds": seconds,
        "phases": mem.rows(),
        "table": mem.table(frame_mb, import_mb),
    }


def report(r: dict[str, Any]) -> str:
    """The phase table and the headline ratios, as text."""
    frame = r["frame_mb"]
    return "\n".join(
        [
            f"{r['events']:,} events, {r['deals']:,} deals; event frame {frame:.0f} MB; "
            f"RSS after imports {r['import_mb']:.0f} MB; {r['seconds']:.1f} s",
            r["table"],
            f"peak RSS (ru_maxrss) after read: {r['peak_after_read_mb']:,.0f} MB = "
            f"{r['peak_after_read_mb'] / frame:.2f}× the frame, "
            f"{(r['peak_after_read_mb'] - r['import_mb']) / frame:.2f}× above imports",
            f"peak RSS (ru_maxrss) overall: {r['peak_mb']:,.0f} MB = "
            f"{r['peak_mb'] / frame:.2f}× the frame, "
            f"{(r['peak_mb'] - r['import_mb']) / frame:.2f}× above imports",
            f"peak anonymous memory (sampled; RSS without the libraries' file pages): "
            f"{r['peak_anon_mb']:,.0f} MB = {r['peak_anon_mb'] / frame:.2f}× the frame, "
            f"{(r['peak_anon_mb'] - r['import_anon_mb']) / frame:.2f}× above imports "
            f"({r['import_anon_mb']:,.0f} MB)",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history")
    parser.add_argument("--open-stages", default=None)
    parser.add_argument("--segment", action="append", default=[])
    parser.add_argument("--draws", type=int, default=32)
    parser.add_argument("--half-life", default="auto")
    parser.add_argument("--paths", type=int, default=10_000)
    parser.add_argument("--no-simulate", action="store_true")
    parser.add_argument("--read-only", action="store_true", help="read, do not fit")
    parser.add_argument("--json", help="write the result to this JSON file")
    args = parser.parse_args(argv)
    half_life: Any = args.half_life
    if half_life == "none":
        half_life = None
    elif half_life != "auto":
        half_life = float(half_life)
    r = run_phases(
        args.history,
        open_stages=args.open_stages.split(",") if args.open_stages else None,
        segment=args.segment,
        draws=args.draws,
        half_life=half_life,
        paths=args.paths,
        fit=not args.read_only,
        simulate=not args.no_simulate,
    )
    print(report(r))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({k: v for k, v in r.items() if k != "table"}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
