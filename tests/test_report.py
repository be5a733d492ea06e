"""Tests of the HTML report: its sections and numbers against the `Forecast`, no script or
external resource, the missing-matplotlib error, the `forecast report` command, and the page
rendered in headless Chromium (screenshot not blank, no console error, no request leaving the
file, every section in the DOM, headline numbers equal to the forecast's)."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import os
import queue
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

import forecast
from forecast.datasets import load_sample
from forecast.errors import MissingDependencyError
from forecast.io import write_forecast
from forecast.report import SECTIONS

AS_OF = dt.datetime(2025, 1, 1)
PREVIOUS = dt.datetime(2024, 12, 1)
TARGETS = {"FY2025-Q1": [1.5e6, 2.0e6]}
CHROMIUM = "/usr/bin/chromium"
FIT = {"segment_by": ["segment"], "n_draws": 4, "seed": 11}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[forecast.Report, Path]:
    """The report of the bundled sample with a previous run's Parquet output."""
    log = load_sample()
    out = tmp_path_factory.mktemp("previous")
    m0 = forecast.fit(log, as_of=PREVIOUS, **FIT)
    write_forecast(m0.simulate(log, n_paths=2000, horizon=4, seed=11), out)
    page = tmp_path_factory.mktemp("report") / "report.html"
    rep = forecast.report(
        log,
        page,
        as_of=AS_OF,
        n_paths=2000,
        targets=TARGETS,
        previous=out,
        backtest_origins=3,
        backtest_paths=300,
        backtest_draws=2,
        **FIT,
    )
    return rep, page


def section_ids(html: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', html)


def data_values(html: str) -> dict[str, float]:
    """``data-key`` -> ``data-value`` of the machine-readable numbers in the page."""
    pairs = re.findall(r'data-value="([^"]+)" data-key="([^"]+)"', html)
    return {key: float(value) for value, key in pairs}


def test_every_section_is_there_in_order(built) -> None:
    rep, page = built
    assert section_ids(rep.html) == list(SECTIONS)
    assert rep.sections == SECTIONS
    assert page.read_text(encoding="utf-8") == rep.html


def test_numbers_match_the_forecast(built) -> None:
    rep, _ = built
    fc = rep.forecast
    values = data_values(rep.html)
    q = fc.quarterly().row(0, named=True)
    for key in ("p10", "p50", "p90", "booked_to_date"):
        assert values[key] == q[key], key
    assert values["weighted_pipeline"] == q["weighted_pipeline"] + q["booked_to_date"]
    for r in fc.quarterly().iter_rows(named=True):
        for c in ("p10", "p50", "p90", "mean", "from_new_deals"):
            assert values[f"{r['quarter']}:{c}"] == r[c]
    for _, target, p, _ in fc.prob_at_least(TARGETS).iter_rows():
        assert values[f"prob_at_least:{target!r}"] == p
    # The people's version of a number agrees with it: "1.6M" for 1,623,456.
    p50 = re.search(r'data-value="[^"]+" data-key="p50">([^<]+)<', rep.html).group(1)
    assert p50 == f"{q['p50'] / 1e6:.1f}M"
    seg = fc.by_segment().filter(pl.col("quarter") == fc.quarters[0])
    for r in seg.iter_rows(named=True):
        assert values[f"segment:{r['segment']}:p50"] == r["p50"]
    risk = fc.deal_risk(fc.riskiest_quarter()).head(3)
    for r in risk.iter_rows(named=True):
        assert values[f"deal:{r['deal_id']}:p_win"] == r["p_win"]


def test_what_changed_adds_up(built) -> None:
    rep, _ = built
    mv = rep.movement
    assert mv is not None and mv.previous_as_of == PREVIOUS
    values = data_values(rep.html)
    assert values["current_expected"] == rep.forecast.quarterly()["mean"][0]
    causes = [v for k, v in values.items() if k.startswith("cause:")]
    assert len(causes) == 11
    assert sum(causes) == pytest.approx(values["total_change"], abs=1e-6)
    # Same history and options: the previous model is reproduced and its refit separated.
    assert mv.info["model_change_separated"]
    assert abs(values["cause:other"]) < 1.0


def test_trust_section_says_how_many_origins(built) -> None:
    rep, _ = built
    assert rep.backtest is not None and len(rep.backtest.origins) == 3
    trust = rep.html[rep.html.index('<section id="trust"') :]
    assert "3 past quarter starts" in trust
    assert "coverage80:1" in trust


def test_self_contained_and_no_script(built) -> None:
    rep, _ = built
    html = rep.html
    assert "<script" not in html.lower()
    # Namespaces inside the SVG are names, not requests; nothing else may point outside.
    stripped = re.sub(r'xmlns(:\w+)?="[^"]*"', "", html)
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", stripped, re.I)
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", stripped, re.I)
    assert "@import" not in stripped and "@media print" in html


def test_missing_matplotlib_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'forecast\[plots\]'"):
        forecast.report(load_sample(), n_paths=10)


def test_cli_report(tmp_path) -> None:
    from forecast.cli import main
    from forecast.datasets.sample import sample_events

    history = tmp_path / "history.parquet"
    sample_events().write_parquet(history)
    page = tmp_path / "report.html"
    code = main(
        [
            "report",
            str(history),
            "--segment",
            "segment",
            "--paths",
            "500",
            "--draws",
            "0",
            "--backtest-origins",
            "0",
            "--no-progress",
            "--target",
            "2M",
            "-o",
            str(page),
        ]
    )
    assert code == 0
    html = page.read_text(encoding="utf-8")
    assert section_ids(html) == [s for s in SECTIONS if s != "changes"]
    assert "switched off" in html  # the trust section says why it is empty
    # A --previous directory without an earlier forecast fails before any work, naming it.
    assert main(["report", str(history), "-o", str(page), "--previous", str(tmp_path)]) == 2
    with pytest.raises(FileNotFoundError, match="holds no forecast before"):
        forecast.report(load_sample(), n_paths=10, n_draws=0, previous=tmp_path)


# -- headless Chromium -------------------------------------------------------------------
class DevTools:
    """A minimal Chrome DevTools Protocol client over ``--remote-debugging-pipe`` (fds 3/4)."""

    def __init__(self, user_data_dir: Path) -> None:
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def fds() -> None:  # runs in the child: commands on fd 3, answers on fd 4
            import fcntl

            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child_r, from_child_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
                f"--user-data-dir={user_data_dir}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=fds,
            # The pipes are not inheritable; fds 3 and 4 made in the child are, and
            # close_fds would close them after preexec_fn runs.
            close_fds=False,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._next = 0
        self.events: list[dict[str, Any]] = []
        self._answers: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    self._answers.put(msg)
                else:
                    self.events.append(msg)

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        while True:
            answer = self._answers.get(timeout=60)
            if answer["id"] == self._next:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def wait_for(self, method: str, timeout: float = 60.0) -> None:
        deadline = dt.datetime.now() + dt.timedelta(seconds=timeout)
        while dt.datetime.now() < deadline:
            if any(e.get("method") == method for e in self.events):
                return
            threading.Event().wait(0.05)
        raise TimeoutError(method)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def browser_page(built, tmp_path_factory) -> dict[str, Any]:
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(
            f"headless Chromium not found at {CHROMIUM}; install it with "
            "`apt-get install --no-install-recommends chromium` (.ci/run does this as root)"
        )
    _, page = built
    tools = DevTools(tmp_path_factory.mktemp("chromium-profile"))
    try:
        target = next(
            t for t in tools.send("Target.getTargets")["targetInfos"] if t["type"] == "page"
        )
        session = tools.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable", session)
        tools.send(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=1100,
            height=1400,
            deviceScaleFactor=1,
            mobile=False,
        )
        tools.events.clear()
        tools.send("Page.navigate", session, url=page.as_uri())
        tools.wait_for("Page.loadEventFired")
        dom = tools.send(
            "Runtime.evaluate",
            session,
            expression="document.documentElement.outerHTML",
            returnByValue=True,
        )["result"]["value"]
        shot = base64.b64decode(tools.send("Page.captureScreenshot", session, format="png")["data"])
        events = list(tools.events)
    finally:
        tools.close()
    return {"dom": dom, "screenshot": shot, "events": events, "url": page.as_uri()}


def test_chromium_renders_a_page_that_is_not_blank(browser_page, tmp_path) -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(browser_page["screenshot"])).convert("RGB")
    assert image.size == (1100, 1400)
    pixels = np.asarray(image).reshape(-1, 3)
    _, counts = np.unique(pixels, axis=0, return_counts=True)
    # A blank page is one colour; the headline cards, text and figures are not.
    assert counts.max() / counts.sum() < 0.9
    assert len(counts) > 50


def test_chromium_sees_no_console_error_and_no_external_request(browser_page) -> None:
    events = browser_page["events"]
    errors = [
        e
        for e in events
        if e["method"] == "Runtime.exceptionThrown"
        or (
            e["method"] == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert")
        )
        or (e["method"] == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]
    assert errors == []
    requests = [
        e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"
    ]
    assert requests, "the navigation itself must be seen (or the check is blind)"
    outside = [u for u in requests if not u.startswith((browser_page["url"], "data:"))]
    assert outside == []


def test_chromium_dom_has_every_section_and_the_numbers(browser_page, built) -> None:
    rep, _ = built
    dom = browser_page["dom"]
    assert section_ids(dom) == list(SECTIONS)
    values = data_values(dom)
    q = rep.forecast.quarterly().row(0, named=True)
    assert values["p50"] == q["p50"] and values["p10"] == q["p10"] and values["p90"] == q["p90"]
    assert dom.count("<svg") >= 6  # fan, distribution, waterfall, coverage, PIT, history


def test_devtools_client_would_catch_an_external_request(tmp_path, tmp_path_factory) -> None:
    """The request check is not blind: a page that loads an outside image is caught."""
    if not os.path.exists(CHROMIUM):
        pytest.skip("headless Chromium not found; apt-get install --no-install-recommends chromium")
    page = tmp_path / "bad.html"
    page.write_text(
        # Loopback, a port nothing listens on: the request is refused at once.
        "<html><body><img src='http://127.0.0.1:9/x.png'><script>console.error('boom')</script>"
        "</body></html>"
    )
    tools = DevTools(tmp_path_factory.mktemp("chromium-bad"))
    try:
        target = next(
            t for t in tools.send("Target.getTargets")["targetInfos"] if t["type"] == "page"
        )
        session = tools.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Network"):
            tools.send(f"{domain}.enable", session)
        tools.send("Page.navigate", session, url=page.as_uri())
        tools.wait_for("Page.loadEventFired")
        console = [e for e in tools.events if e["method"] == "Runtime.consoleAPICalled"]
        urls = [
            e["params"]["request"]["url"]
            for e in tools.events
            if e["method"] == "Network.requestWillBeSent"
        ]
    finally:
        tools.close()
    assert any(u.startswith("http://127.0.0.1:9/") for u in urls)
    assert [e["params"]["type"] for e in console] == ["error"]
