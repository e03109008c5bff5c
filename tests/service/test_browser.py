"""The browser pages in a real Chromium (Debian's `chromium` package, driven by Playwright): the API docs at
/docs and /redoc, and the dashboard at / following a real job and a real study on the real worker.

Every page runs with a guard that aborts and records any request leaving the service's origin, so a test
fails if a page would need the network beyond the service (the pages must work on offline clusters).
Screenshots go to `test-output/browser/` under the repository root (git-ignored), for people to look at.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from client_helpers import LiveServer
from playwright.sync_api import Browser, ConsoleMessage, Page, Route, sync_playwright
from svc_helpers import FINISHED, ROOT, Service, long_spec, make_key, small_spec

from alignahead.enums import JobStatus

CHROMIUM = shutil.which("chromium")
SCREENSHOTS = ROOT / "test-output" / "browser"
TIMEOUT_MS = 90_000  # two shared cores: a page waits on a worker that trains

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("service", ["embedded"], indirect=True),
    pytest.mark.skipif(CHROMIUM is None, reason="no `chromium` on PATH (Debian: apt-get install chromium)"),
]


class OffsiteGuard:
    """Records what a page asks of origins other than the service's: requests that reached the network
    layer (aborted here, so nothing leaves), requests that completed, and the console's errors."""

    def __init__(self, page: Page, origin: str) -> None:
        self.origin = origin
        self.routed: list[str] = []
        self.finished: list[str] = []
        self.errors: list[str] = []
        page.route("**/*", self._route)
        page.on("requestfinished", lambda r: None if self._own(r.url) else self.finished.append(r.url))
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def _console(self, message: ConsoleMessage) -> None:
        # an HTTP error answer is logged as "Failed to load resource"; the pages handle those themselves
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def _own(self, url: str) -> bool:
        return url == self.origin or url.startswith(self.origin + "/") or url.startswith(("data:", "blob:"))

    def _route(self, route: Route) -> None:
        if self._own(route.request.url):
            route.continue_()
        else:
            self.routed.append(route.request.url)
            route.abort()

    def assert_offline(self) -> None:
        assert self.routed == [] and self.finished == [], (self.routed, self.finished)


@pytest.fixture(scope="module")
def live(service: Service) -> Iterator[str]:
    with LiveServer(service.settings) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser, live: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


@pytest.fixture
def guard(page: Page, live: str) -> OffsiteGuard:
    return OffsiteGuard(page, live)


def _csp(service: Service, path: str) -> str:
    r = service.client.get(path)
    assert r.status_code == 200, r.text
    policy = r.headers["content-security-policy"]
    assert "default-src 'self'" in policy and not re.search(r"https?:|\*", policy), policy
    return policy


def test_swagger_ui_renders_offline(page: Page, guard: OffsiteGuard, live: str, service: Service) -> None:
    policy = _csp(service, "/docs")
    bundle = service.client.get("/static/vendor/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.headers["cache-control"] == "no-cache"  # revalidated, never stale
    again = service.client.get(bundle.url, headers={"If-None-Match": bundle.headers["etag"]})
    assert again.status_code == 304  # a check costs no bytes
    assert "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]  # its inline script by hash
    page.goto(f"{live}/docs")
    page.get_by_text("/v1/jobs/{job_id}/cancel").wait_for()
    assert page.locator(".opblock").count() >= 10  # every operation, datasets and health included
    assert page.get_by_role("button", name="Authorize").is_visible()  # the bearer scheme is in the spec
    guard.assert_offline()
    assert guard.errors == []  # nothing refused by the policy: the inline script's hash matches


def test_redoc_renders_offline(page: Page, guard: OffsiteGuard, live: str, service: Service) -> None:
    _csp(service, "/redoc")
    page.goto(f"{live}/redoc")
    page.get_by_role("heading", name="Submit Job").first.wait_for()
    assert page.get_by_text("/v1/jobs/{job_id}/metrics").count() >= 1
    guard.assert_offline()
    # ReDoc's sidebar logo is a hard-coded CDN image: the policy blocks it before any network use (so the
    # guard never sees it); that refusal is the only error allowed
    assert all("img-src" in e and "cdn.redoc.ly" in e for e in guard.errors), guard.errors


def _sign_in(page: Page, live: str, key: str, wrong_first: bool = False) -> None:
    """Open the dashboard with an empty session: it asks for the key once (no error before it asked, and
    it says where `make run` keeps one) and keeps it in sessionStorage."""
    page.goto(f"{live}/")
    page.locator("#key-dialog[open]").wait_for()
    assert page.locator("#key-error").is_hidden()  # a first visit is asked for a key, not told off
    assert "var/local-api-key" in page.locator("#key-where").inner_text()
    if wrong_first:  # the service's refusal is shown and the dialog stays until a key works
        page.fill("#key-input", "alh_000000000000_" + "x" * 43)
        page.click("#key-save")
        page.locator("#key-error").get_by_text("the API key is unknown, revoked or malformed").wait_for()
        assert page.locator("#key-dialog[open]").count() == 1
    page.fill("#key-input", key)
    page.click("#key-save")
    page.locator("#key-dialog[open]").wait_for(state="detached")
    assert page.evaluate("sessionStorage.getItem('alignahead.apiKey')") == key


POINTS = "+(document.querySelector(\".chart[data-metric='val_score']\")?.dataset.points ?? 0)"  # epochs drawn


def _points(page: Page, metric: str) -> int:
    return int(page.get_attribute(f".chart[data-metric='{metric}']", "data-points") or 0)


def _legend(page: Page, metric: str) -> list[str]:
    """The values a chart's legend shows, line by line (the epoch left out)."""
    return page.locator(f".chart[data-metric='{metric}'] .u-legend .u-series td.u-value").all_inner_texts()[1:]


def test_dashboard_follows_a_running_job_and_cancels_it(
    page: Page, guard: OffsiteGuard, live: str, service: Service
) -> None:
    """Jobs table -> job page whose four charts grow while the job trains, fed by the events stream ->
    cancel from the page (polling, the fallback, is followed in the two tests below).

    Saves `test-output/browser/jobs.png`, `job-running.png` (the job page mid-run) and `job-cancelled.png`."""
    assert "'unsafe-inline'" not in _csp(service, "/")  # the dashboard has no inline script or style
    names = service.client.get("/names.js")  # the statuses it filters by, from alignahead.enums
    assert names.headers["content-type"].startswith("text/javascript")
    assert json.loads(names.text.split(" = ", 1)[1].rstrip(";\n"))["statuses"] == list(JobStatus)
    job = service.submit(long_spec(epochs=10_000, num_nodes=1500))  # minutes of epochs; cancelled below
    try:
        service.wait(job["id"], until=lambda j: j["status"] == "running", timeout=120)
        _sign_in(page, live, make_key(service.settings, "tests"), wrong_first=True)

        row = page.locator(f"tr[data-job='{job['id']}']")
        row.locator(".status.running").wait_for()
        cells = row.locator("td").all_inner_texts()  # the first: the box that picks it for a comparison
        assert cells[3] == "synthetic" and cells[4] == "gcn, gcn" and re.search(r"\d+/10000", cells[5]), cells
        # the table keeps itself up to date: the job's progress moves on without a reload
        done_then = int(re.search(r"(\d+)/10000", cells[5]).group(1))
        progress = f"document.querySelector(\"tr[data-job='{job['id']}'] td:nth-child(6) .muted\").textContent"
        page.wait_for_function(f"() => parseInt({progress}) > {done_then}")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "jobs.png")
        # what the job page asks for from here on: its events stream and its metrics reads
        job_url = f"{live}/v1/jobs/{job['id']}"
        streams, polls = [], []
        page.on("response", lambda r: streams.append(r) if r.url == f"{job_url}/events" else None)
        page.on("request", lambda r: polls.append(r.url) if r.url.startswith(f"{job_url}/metrics") else None)
        row.locator("a").click()
        assert page.url.endswith(f"#/jobs/{job['id']}")

        # the curves: a line per student in each of the four charts, growing as epochs arrive
        # wait_for_function takes functions, not expressions: the page's policy forbids eval
        page.wait_for_function("() => document.querySelectorAll('.chart[data-points]').length === 4")
        seen = _points(page, "val_score")
        page.wait_for_function(f"() => {POINTS} >= {seen + 3}")
        for metric in ("task_loss", "distill_loss", "val_score", "test_score"):
            assert _points(page, metric) > seen, metric
        assert page.locator(".chart[data-metric='val_score'] .u-legend .u-series").count() == 3  # epoch + 2
        # y-axis labels; the task loss on a log scale by default, the distillation loss linear until asked
        axes = {m: page.get_attribute(f".chart[data-metric='{m}']", "data-axis") for m in ("task_loss", "val_score")}
        assert axes == {"task_loss": "loss, log scale", "val_score": "score (%)"}, axes
        assert page.get_attribute(".chart[data-metric='task_loss']", "data-log") == "true"
        assert page.get_attribute(".chart[data-metric='distill_loss']", "data-log") == "false"
        page.locator("#job-status .status.running").wait_for()
        page.locator("#logs").get_by_text(f"job {job['id']}: attempt 1 on worker").wait_for()  # its worker's log
        # the rows came by the stream: one metrics read when the page opened, no polling since
        assert streams and all(r.status == 200 for r in streams), [r.status for r in streams]
        assert all(r.headers["content-type"].startswith("text/event-stream") for r in streams)
        assert len(polls) == 1, polls
        page.screenshot(path=SCREENSHOTS / "job-running.png", full_page=True)

        page.click("#cancel")
        # the page's answer first: the cancel recorded (the button goes) or the error it shows
        answered = "() => document.getElementById('page-error') || document.getElementById('cancel').hidden"
        page.wait_for_function(answered)
        error = page.locator("#page-error")
        assert not error.count(), error.inner_text()
        done = service.wait(job["id"], timeout=120)
        assert done["status"] == "cancelled", done
        page.locator("#job-status .status.cancelled").wait_for()
        assert page.locator("#cancel").is_hidden()
        # every epoch the job stored is drawn, and nothing more
        epochs = {r["epoch"] for r in service.metrics(job["id"], limit=10_000)["rows"]}
        assert len(epochs) == done["progress"]["epoch"]
        page.wait_for_function(f"() => {POINTS} === {len(epochs)}")
        # not hovered, each legend shows its line's latest value (here: the last epoch's validation score)
        rows = service.metrics(job["id"], limit=10_000)["rows"]
        last = [max((r for r in rows if r["student"] == s), key=lambda r: r["epoch"]) for s in (0, 1)]
        assert _legend(page, "val_score") == [f"{_js_fixed(100 * r['val_score'], 1)} %" for r in last]
        page.screenshot(path=SCREENSHOTS / "job-cancelled.png", full_page=True)
        guard.assert_offline()
        assert guard.errors == [], guard.errors  # the policy refused nothing, no script failed
    finally:
        if service.job(job["id"])["status"] not in FINISHED:
            service.client.post(f"/v1/jobs/{job['id']}/cancel")
            service.wait(job["id"], timeout=120)


def test_job_page_polls_through_an_outage(page: Page, guard: OffsiteGuard, live: str, service: Service) -> None:
    """Where the service has no events stream (answered 404 here) the job page polls; when the network
    goes, it says so and keeps trying, and once it is back the curves grow again and the notice goes."""
    page.route("**/v1/jobs/*/events", lambda route: route.fulfill(status=404, json={"detail": "no such endpoint"}))
    job = service.submit(long_spec(epochs=10_000, num_nodes=1500))
    try:
        service.wait(job["id"], until=lambda j: j["status"] == "running", timeout=120)
        _sign_in(page, live, make_key(service.settings, "tests"))
        page.goto(f"{live}/#/jobs/{job['id']}")
        page.wait_for_function(f"() => {POINTS} > 0")

        page.context.set_offline(True)
        page.locator("#page-error").wait_for()  # "Failed to fetch": the page says it lost the service
        before = _points(page, "val_score")
        page.context.set_offline(False)
        page.locator("#page-error").wait_for(state="detached")
        page.wait_for_function(f"() => {POINTS} > {before + 3}")
        page.locator("#job-status .status.running").wait_for()
        guard.assert_offline()
    finally:
        service.client.post(f"/v1/jobs/{job['id']}/cancel")
        assert service.wait(job["id"], timeout=120)["status"] == "cancelled"


def test_dashboard_form_shows_field_errors_and_submits(
    page: Page, guard: OffsiteGuard, live: str, service: Service, tmp_path: Path
) -> None:
    """A bad spec: the server's message next to the field; a good one: its job page, then its checkpoints
    download through the page, verified. The job page polls here (no events stream).
    Saves `test-output/browser/submit-field-error.png`."""
    # this page follows its job by polling: the events stream answers 404 here, as a service without it does
    page.route("**/v1/jobs/*/events", lambda route: route.fulfill(status=404, json={"detail": "no such endpoint"}))
    # the key dialog put away unanswered: the page says what it needs, and the key can be given later
    page.goto(f"{live}/")
    page.locator("#key-dialog[open]").wait_for()
    assert page.locator("#key-error").is_hidden() and page.locator("#page-error").count() == 0  # not yet asked
    page.keyboard.press("Escape")
    page.locator("#page-error").get_by_text("this page needs an API key").wait_for()
    page.click("#key-button")
    page.fill("#key-input", make_key(service.settings, "tests"))
    page.click("#key-save")
    page.locator("#jobs tbody").get_by_text("Loading…").wait_for(state="detached")  # loaded with the key
    assert page.locator("#page-error").count() == 0
    page.click("a[data-nav='new']")

    bad = small_spec(epochs=3)
    bad["training"]["epochs"] = 0
    expected = service.client.post("/v1/jobs", json=bad).json()["errors"]
    assert [e["loc"] for e in expected] == [["body", "training", "epochs"]]
    page.fill("#spec", "# YAML\n" + json.dumps(bad))
    page.click("#submit-button")
    field = page.locator("#submit-errors li[data-loc='training.epochs']")
    field.wait_for()
    assert expected[0]["msg"] in field.inner_text()
    assert page.locator("#spec.invalid").count() == 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "submit-field-error.png")

    misspelt = small_spec(epochs=3)  # a misspelt field: the form passes on the API's suggestion
    misspelt["students"][0]["hiden_size"] = misspelt["students"][0].pop("hidden_size", 8)
    page.fill("#spec", json.dumps(misspelt))
    page.click("#submit-button")
    page.locator("#submit-errors li[data-loc='students.0.hiden_size']").get_by_text(
        "did you mean 'hidden_size'?"
    ).wait_for()

    page.fill("#spec", "dataset: [unclosed")  # not even YAML: said before anything is sent
    page.click("#submit-button")
    page.get_by_text("Not valid YAML or JSON").wait_for()

    page.fill("#spec", json.dumps(small_spec(epochs=3), indent=2))
    page.click("#submit-button")
    page.wait_for_url(re.compile(r"#/jobs/[A-Za-z0-9_-]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    page.locator("#job-status .status.succeeded").wait_for()
    assert service.job(job_id)["status"] == "succeeded"
    page.wait_for_function(f"() => {POINTS} === 3")  # every epoch drawn

    listing = service.client.get(f"/v1/jobs/{job_id}/checkpoints").json()
    buttons = page.locator("#checkpoints button[data-url]")
    buttons.first.wait_for()
    assert buttons.count() == 4  # best and final of both students
    with page.expect_download() as info:
        buttons.first.click()
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == listing["students"][0]["best"]["sha256"]
    guard.assert_offline()
    assert guard.errors == [], guard.errors


STRATEGY = "distillation.strategy"
# As in test_service_studies: distillation at alpha 1e6 hurts every seed, so the paired differences vary
# and the p-value is a number; seconds per job.
STUDY_SPEC: dict[str, Any] = {
    "dataset": {"name": "synthetic", "synthetic": {"num_nodes": 200, "num_features": 16, "feature_signal": 2.0}},
    "students": [{"arch": "gcn", "count": 2, "hidden_layers": 2, "hidden_size": 16}],
    "distillation": {"alpha": 1e6, "tau": "auto"},
    "training": {"epochs": 15, "device": "cpu"},
}
STUDY_PAGE_DONE = """() => {
  const rows = [...document.querySelectorAll('#study-table tr[data-cell]')];
  const chart = document.querySelector('#study-chart');
  return rows.length === %(rows)d && rows.every((r) => r.dataset.n === '%(n)d')
    && chart?.dataset.cells === '%(cells)d' && chart?.dataset.points === '%(rows)d';
}"""


def _js_fixed(value: float, digits: int) -> str:
    """`value.toFixed(digits)` as JavaScript writes it: the double's exact value, ties away from zero."""
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _submit_study(service: Service, body: dict[str, Any]) -> dict[str, Any]:
    r = service.client.post("/v1/studies", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def test_study_page_shows_the_table_and_chart_of_a_study(
    page: Page, guard: OffsiteGuard, live: str, service: Service, tmp_path: Path
) -> None:
    """Studies list -> a study of 3 seeds x strategy [none, alignahead] followed while its jobs run, until
    its table has every cell at n=3 and its chart a point per cell and student; the page's numbers are the
    API's, formatted; its CSV downloads through the page and its job links open the job page.
    Saves `test-output/browser/studies.png` and `study.png`."""
    seeds = 3
    body = {
        "name": "browser-study",
        "spec": STUDY_SPEC,
        "seeds": seeds,
        "axes": {STRATEGY: ["none", "alignahead"]},
    }
    study = _submit_study(service, body)
    try:
        _sign_in(page, live, make_key(service.settings, "tests"))
        page.click("a[data-nav='studies']")
        row = page.locator(f"tr[data-study='{study['id']}']")
        assert row.locator("a").inner_text() == "browser-study"
        assert re.search(r"\d/6$", row.locator("td:nth-child(3)").inner_text()), row.inner_text()  # finished jobs
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "studies.png")
        row.locator("a").click()
        assert page.url.endswith(f"#/studies/{study['id']}")

        # the page refreshes itself until every cell has all its seeds: 2 cells x 2 students
        page.wait_for_function(STUDY_PAGE_DONE % {"rows": 4, "n": seeds, "cells": 2})
        page.locator("#study-cancel").wait_for(state="hidden")  # nothing left to cancel
        done = service.client.get(f"/v1/studies/{study['id']}").json()
        assert done["done"] and done["counts"]["succeeded"] == 2 * seeds, done["counts"]
        assert page.locator("#study-facts [data-count='succeeded']").inner_text() == f"succeeded {2 * seeds}"

        # the alignahead cell against none, student 0: mean in percent, paired difference in points, p-value
        cells = list(dict.fromkeys(json.dumps(r["cell"], sort_keys=True) for r in done["table"]))
        api_row = next(r for r in done["table"] if r["cell"][STRATEGY] == "alignahead" and r["student"] == 0)
        cell = cells.index(json.dumps(api_row["cell"], sort_keys=True))
        shown = page.locator(f"#study-table tr[data-cell='{cell}'][data-student='0']")
        stats = api_row["test_at_best"]
        mean = shown.locator("td[data-metric='test_at_best'] .mean")
        assert mean.inner_text() == _js_fixed(100 * stats["mean"], 1)
        assert float(mean.get_attribute("data-value")) == stats["mean"]  # the API's number, unrounded
        assert f"± {_js_fixed(100 * stats['std'], 1)}" in shown.locator("td[data-metric='test_at_best']").inner_text()
        vs = stats["vs_baseline"]
        assert vs is not None and vs["n"] == seeds and vs["p_value"] is not None, vs
        diff = shown.locator("td[data-metric='test_at_best-diff']").inner_text()
        sign = "−" if vs["mean_diff"] < 0 else "+"
        assert diff.startswith(f"{sign}{_js_fixed(abs(100 * vs['mean_diff']), 1)}"), diff
        p = shown.locator("td[data-metric='test_at_best-p']").inner_text()
        assert p == ("< 0.001" if vs["p_value"] < 0.001 else _js_fixed(vs["p_value"], 3)), p
        baseline = next(r for r in done["table"] if r["cell"][STRATEGY] == "none" and r["student"] == 0)
        base_cell = cells.index(json.dumps(baseline["cell"], sort_keys=True))
        base_diff = page.locator(
            f"#study-table tr[data-cell='{base_cell}'][data-student='0'] td[data-metric='test_at_best-diff']"
        )
        assert base_diff.inner_text() == "baseline"

        # the chart's legend, not hovered: each student's best cell mean, as the table has it
        best = max((r for r in done["table"] if r["student"] == 0), key=lambda r: r["test_at_best"]["mean"])
        legend = page.locator("#study-chart .u-legend .u-series").nth(1).locator(".u-value").inner_text()
        assert legend.startswith(_js_fixed(100 * best["test_at_best"]["mean"], 1) + " ("), legend

        # a link per job, in the study's order, each to the job page
        links = page.locator("#study-jobs a[href^='#/jobs/']")
        assert [a.get_attribute("href") for a in links.all()] == [f"#/jobs/{j}" for j in done["job_ids"]]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "study.png", full_page=True)

        # the CSV comes through the page (the key in a header), as the API serves it
        with page.expect_download() as info:
            page.click("#study-csv")
        saved = tmp_path / info.value.suggested_filename
        info.value.save_as(saved)
        assert info.value.suggested_filename == f"study-{study['id']}.csv"
        assert saved.read_bytes() == service.client.get(f"/v1/studies/{study['id']}/table.csv").content

        links.first.click()
        page.locator("#job-status .status.succeeded").wait_for()
        assert page.url.endswith(f"#/jobs/{done['job_ids'][0]}")
        guard.assert_offline()
        assert guard.errors == [], guard.errors
    finally:
        service.client.post(f"/v1/studies/{study['id']}/cancel")
        for job_id in study["job_ids"]:
            service.wait(job_id, timeout=120)
        service.client.delete(f"/v1/studies/{study['id']}")


def test_study_page_cancels_a_running_study(page: Page, guard: OffsiteGuard, live: str, service: Service) -> None:
    """A long study (one job running, one queued): Cancel on its page cancels both, and the page follows
    them to cancelled. Saves `test-output/browser/study-cancelled.png`."""
    study = _submit_study(service, {"spec": long_spec(epochs=10_000, num_nodes=1500), "seeds": 2})
    try:
        service.wait(study["job_ids"][0], until=lambda j: j["status"] == "running", timeout=120)
        _sign_in(page, live, make_key(service.settings, "tests"))
        page.goto(f"{live}/#/studies/{study['id']}")
        page.locator("#study-jobs .status.running").wait_for()
        page.locator("#study-live .live").wait_for()
        page.click("#study-cancel")

        jobs = [service.wait(job_id, timeout=120) for job_id in study["job_ids"]]
        assert [j["status"] for j in jobs] == ["cancelled", "cancelled"], jobs
        after = service.client.get(f"/v1/studies/{study['id']}").json()
        assert after["done"] and after["counts"]["cancelled"] == 2, after["counts"]
        page.wait_for_function("() => document.querySelectorAll('#study-jobs .status.cancelled').length === 2")
        page.locator("#study-live .live").wait_for(state="detached")
        assert page.locator("#study-cancel").is_hidden()
        assert page.locator("#study-facts [data-count='cancelled']").inner_text() == "cancelled 2"
        assert page.locator("#study-table tr[data-cell]").first.get_attribute("data-n") == "0"  # none succeeded
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SCREENSHOTS / "study-cancelled.png", full_page=True)
        guard.assert_offline()
        assert guard.errors == [], guard.errors
    finally:
        service.client.post(f"/v1/studies/{study['id']}/cancel")
        for job_id in study["job_ids"]:
            service.wait(job_id, timeout=120)
        service.client.delete(f"/v1/studies/{study['id']}")


# --- compare runs, and every page in a narrow window --------------------------------------------------


@pytest.fixture(scope="module")
def runs(service: Service) -> Iterator[dict[str, Any]]:
    """Finished work to look at: a study of two seeds without a name of its own (its spec has one) and a
    job on its own that trains fewer epochs."""
    spec = small_spec(epochs=4) | {"name": "compare-spec"}
    study = _submit_study(service, {"spec": spec, "seeds": 2})
    job = service.submit(small_spec(epochs=3, seed=7) | {"name": "compare-alone"})  # curves of its own
    done = {j: service.wait(j) for j in [*study["job_ids"], job["id"]]}
    assert all(j["status"] == "succeeded" for j in done.values()), done
    yield {"study": study, "job": done[job["id"]], "study_jobs": [done[j] for j in study["job_ids"]]}
    service.client.delete(f"/v1/studies/{study['id']}")
    service.client.delete(f"/v1/jobs/{job['id']}")


# the four charts have `lines` lines each and `epochs` epochs drawn
CHARTS_SHOW = """([lines, epochs]) => {
  const charts = [...document.querySelectorAll('.chart[data-metric]')];
  return charts.length === 4
    && charts.every((c) => c.dataset.series === String(lines) && c.dataset.points === String(epochs));
}"""


def _wait_for_hash(page: Page, hash_: str) -> None:
    page.wait_for_url(re.compile(re.escape(hash_) + "$"))


def _last_rows(service: Service, job_id: str) -> list[dict[str, Any]]:
    """Each student's row of the job's last epoch, by student."""
    rows = service.metrics(job_id, limit=10_000)["rows"]
    students = sorted({r["student"] for r in rows})
    return [max((r for r in rows if r["student"] == s), key=lambda r: r["epoch"]) for s in students]


def _pairs(job: dict[str, Any]) -> str:
    return " · ".join(f"s{s['student']} {_js_fixed(100 * s['best_val'], 1)} %" for s in job["students"])


def test_compare_view_overlays_picked_jobs(
    page: Page, guard: OffsiteGuard, live: str, service: Service, runs: dict[str, Any], tmp_path: Path
) -> None:
    """Jobs table: tick two jobs, Compare -> their curves overlaid per metric (a line per job and student,
    a colour per job, a dash per student), legends at their latest values, their rows as CSV; the address
    keeps the choice (a reload shows the same); a job removed from the view; a study's Compare all.
    Saves `test-output/browser/compare.png`."""
    alone, first = runs["job"], runs["study_jobs"][0]
    _sign_in(page, live, make_key(service.settings, "tests"))
    for job in (alone, first):
        row = page.locator(f"#jobs tr[data-job='{job['id']}']")
        assert row.locator("td[data-scores]").inner_text() == _pairs(job)  # labelled: which student is which
    assert page.locator("#compare-button").is_disabled()  # nothing picked yet
    page.check(f"#jobs tr[data-job='{alone['id']}'] input[data-pick]")
    page.check(f"#jobs tr[data-job='{first['id']}'] input[data-pick]")
    assert page.locator("#compare-button").inner_text() == "Compare 2 jobs"
    page.click("#compare-button")
    _wait_for_hash(page, f"#/compare?jobs={alone['id']},{first['id']}")  # in the order picked

    def shows(jobs: list[dict[str, Any]]) -> None:
        page.wait_for_function(CHARTS_SHOW, arg=[2 * len(jobs), max(j["progress"]["epoch"] for j in jobs)])
        assert [r.get_attribute("data-job") for r in page.locator("#compare-jobs tr[data-job]").all()] == [
            j["id"] for j in jobs
        ]
        for job in jobs:
            row = page.locator(f"#compare-jobs tr[data-job='{job['id']}']")
            assert row.locator("td[data-scores]").inner_text() == _pairs(job)
        # a legend entry per job and student, each at that line's latest value while nothing is hovered
        labels = page.locator(".chart[data-metric='val_score'] .u-legend .u-series .u-label").all_inner_texts()[1:]
        assert labels == [f"{' '.join(j['name'].split())} · s{s}" for j in jobs for s in (0, 1)], labels
        latest = [f"{_js_fixed(100 * r['val_score'], 1)} %" for j in jobs for r in _last_rows(service, j["id"])]
        assert _legend(page, "val_score") == latest

    shows([alone, first])
    # a dash per student: the legend's markers show student 0 solid and student 1 dashed, in the job's colour
    markers = page.locator(".chart[data-metric='val_score'] .u-legend .u-series .u-marker").all()[1:]
    styles = [m.evaluate("(el) => [getComputedStyle(el).borderTopStyle, getComputedStyle(el).borderTopColor]")
              for m in markers]  # fmt: skip
    assert [s[0] for s in styles] == ["solid", "dashed", "solid", "dashed"], styles
    assert styles[0][1] == styles[1][1] != styles[2][1] == styles[3][1], styles  # one colour per job
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "compare.png", full_page=True)

    # the distillation loss goes to a log scale when asked
    page.check(".chart[data-metric='distill_loss'] input[data-log]")
    page.locator(".chart[data-metric='distill_loss'][data-log='true']").wait_for()

    # the CSV of their rows comes through the page (the key in a header), as the API serves it
    expected = service.client.get("/v1/metrics.csv", params={"job": [alone["id"], first["id"]]})
    assert expected.status_code == 200
    with page.expect_download() as info:
        page.click("#compare-csv")
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    assert saved.read_bytes() == expected.content
    assert page.get_attribute("#compare-csv", "href") == f"v1/metrics.csv?job={alone['id']}&job={first['id']}"

    # the address is the selection: opened again (as a shared link is), it shows the same
    page.reload()
    shows([alone, first])
    page.click(f"#compare-jobs tr[data-job='{alone['id']}'] button[data-remove]")
    _wait_for_hash(page, f"#/compare?jobs={first['id']}")
    shows([first])

    # a study's page compares all its jobs at once; it goes by its spec's name, having none of its own
    study = runs["study"]
    page.goto(f"{live}/#/studies/{study['id']}")
    page.locator("#study-title").get_by_text("compare-spec").wait_for()
    page.locator("#compare-all:enabled").wait_for()
    page.click("#compare-all")
    _wait_for_hash(page, f"#/compare?jobs={','.join(study['job_ids'])}")
    shows(runs["study_jobs"])
    guard.assert_offline()
    assert guard.errors == [], guard.errors


def _fits(page: Page, width: int, name: str) -> None:
    """The page does not scroll sideways at this width (wide tables scroll in their own box); saved as
    `test-output/browser/narrow<width>-<name>.png`."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"narrow{width}-{name}.png", full_page=True)
    widths = page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] <= width, (name, widths)
    key = page.locator("#key-button").bounding_box()
    assert key is not None and key["x"] + key["width"] <= widths[1], (name, key)  # the header wrapped, not cut


@pytest.mark.parametrize("width", [400, 360])  # px: a phone, or a window split in two
def test_every_page_fits_a_narrow_window(
    browser: Browser, live: str, service: Service, runs: dict[str, Any], width: int
) -> None:
    """At 400 and 360 px: jobs, a job, the submit form (at least 300 px wide), studies, a study and a
    comparison each fit the window's width. Saves `test-output/browser/narrow<width>-*.png`."""
    context = browser.new_context(viewport={"width": width, "height": 800})
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        guard = OffsiteGuard(page, live)
        _sign_in(page, live, make_key(service.settings, "tests"))
        alone, study = runs["job"], runs["study"]
        page.locator(f"#jobs tr[data-job='{alone['id']}']").wait_for()
        _fits(page, width, "jobs")

        page.goto(f"{live}/#/jobs/{alone['id']}")
        page.wait_for_function(f"() => {POINTS} === {alone['progress']['epoch']}")
        page.locator("#checkpoints button[data-url]").first.wait_for()
        _fits(page, width, "job")

        page.click("a[data-nav='new']")
        box = page.locator("#spec").bounding_box()
        assert box is not None and box["width"] >= 300, box  # the YAML is readable, not wrapped mid-word
        _fits(page, width, "submit")

        page.click("a[data-nav='studies']")
        page.locator(f"tr[data-study='{study['id']}']").wait_for()
        _fits(page, width, "studies")

        page.goto(f"{live}/#/studies/{study['id']}")
        page.wait_for_function(STUDY_PAGE_DONE % {"rows": 2, "n": 2, "cells": 1})
        _fits(page, width, "study")

        page.goto(f"{live}/#/compare?jobs={alone['id']},{study['job_ids'][0]}")
        page.wait_for_function(CHARTS_SHOW, arg=[4, 4])
        _fits(page, width, "compare")
        guard.assert_offline()
        assert guard.errors == [], guard.errors
    finally:
        context.close()
