// The alignahead dashboard: plain JavaScript, no build step. Talks only to the service that serves it
// (relative URLs), with the API key from this tab's session storage in an Authorization header, never
// in a URL. Pages, by hash route: #/ (jobs), #/jobs/ID (one job, live), #/new (submit a spec),
// #/studies (studies), #/studies/ID (one study: its results table and chart, refreshed while it runs),
// #/compare?jobs=A,B (several jobs' curves overlaid, with their rows as CSV; the address keeps the choice).
"use strict";

(() => {
  const KEY_STORAGE = "alignahead.apiKey";
  const NAMES = window.ALIGNAHEAD_NAMES; // names.js, written by the service from its own definitions
  const FINISHED = new Set(NAMES.finished);
  const STATUSES = NAMES.statuses;
  const COLORS = ["#2459a8", "#d1495b", "#2e9c5a", "#e59400", "#7d4e9e", "#00a6a6", "#8c564b", "#d62ca1",
    "#5b6b00", "#1f9fd1", "#b85c00", "#4b4bd6", "#2f7f7f", "#a3336b", "#6b7a8f", "#9c7c00"];
  // One chart per quantity. Losses may be drawn on a log scale (the task loss by default: on a linear one
  // it lies flat near 0 after the first epochs); scores are fractions, drawn in percent.
  const CHARTS = [
    { key: "task_loss", title: "Task loss", axis: "loss", loss: true, log: true },
    { key: "distill_loss", title: "Distillation loss", axis: "loss", loss: true, log: false },
    { key: "val_score", title: "Validation score", axis: "score (%)" },
    { key: "test_score", title: "Test score", axis: "score (%)" },
  ];
  // one dash pattern per student (solid, dashed, dotted, ...), so that overlapping curves stay visible
  const DASHES = [[], [8, 4], [2, 3], [10, 3, 2, 3], [4, 4], [1, 5]];
  const MAX_COMPARE = NAMES.maxCompareJobs; // jobs per comparison, as GET v1/metrics.csv takes them
  const EXAMPLE = `# A GAT and a GCN of the same depth distil each other on a generated graph (runs in seconds).
name: synthetic-mixed
dataset:
  name: synthetic
  synthetic: {num_nodes: 600, num_classes: 4, num_features: 32, avg_degree: 8, homophily: 0.8}
students:
  - {arch: gat, hidden_layers: 2, hidden_size: 16, heads: 2, out_heads: 1}
  - {arch: gcn, hidden_layers: 2, hidden_size: 32}
distillation: {strategy: alignahead, alpha: 1.0, tau: 30.0}
training: {epochs: 30, lr: 0.01, seed: 0, device: cpu}
`;

  const view = document.getElementById("view");
  let pageStops = []; // stop timers and streams of the page being left

  // --- small helpers -------------------------------------------------------------------------

  const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
  const fmt = (v, digits = 4) => (v === null || v === undefined ? "–" : typeof v === "number" ? v.toFixed(digits) : esc(v));
  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
  const where = (e) => (e.loc || []).filter((p) => p !== "body").join(".") || "(request)";
  const badge = (s) => `<span class="status ${esc(s)}">${esc(s)}</span>`;
  const sleep = (ms, signal) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => { clearTimeout(t); resolve(); }, { once: true });
  });
  const backoff = (failures) => Math.min(15000, 500 * 2 ** Math.min(failures, 5));
  // an axis tick with `p` significant digits (one less in exponent form, for small or large values such
  // as distillation losses of ~1e-4); none where uPlot leaves a tick unlabelled (a log scale labels a few)
  const tickAt = (v, p) => (v === null || v === undefined ? "" : v === 0 ? "0"
    : Math.abs(v) < 0.01 || Math.abs(v) >= 1e5 ? v.toExponential(p - 2) : String(+v.toPrecision(p)));
  // an axis's ticks: 3 significant digits, more where that would label two ticks alike (a narrow range)
  const ticks = (u, splits) => {
    for (let p = 3; p < 10; p++) {
      const labels = splits.map((v) => tickAt(v, p)).filter(Boolean);
      if (new Set(labels).size === labels.length) return splits.map((v) => tickAt(v, p));
    }
    return splits.map((v) => tickAt(v, 10));
  };
  // epochs are whole numbers: x-axis steps that are too
  const EPOCH_STEPS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 2500, 5000, 10000, 20000, 50000, 100000];
  const rel = (url) => url.replace(/^\//, ""); // server paths are absolute; keep a prefix working
  // scores (accuracy, micro-F1) are fractions: shown in percent, their differences in percentage points
  const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1));
  // each student's best validation score, labelled: "s0 66.7 % · s1 80.0 %"; "–" before the first evaluation
  const known = (v) => v !== null && v !== undefined;
  const scorePairs = (students) => ((students || []).some((s) => known(s.best_val))
    ? students.map((s) => `s${s.student} ${known(s.best_val) ? `${pct(s.best_val)} %` : "–"}`).join(" · ") : "–");

  // The page's Content-Security-Policy (style-src 'self') ignores style attributes in HTML, so widths and
  // colours are data attributes that this sets through the DOM after each render.
  function paint(root) {
    root.querySelectorAll("[data-pct]").forEach((el) => { el.style.width = `${el.dataset.pct}%`; });
    root.querySelectorAll("[data-color]").forEach((el) => { el.style.color = el.dataset.color; });
  }

  function progressBar(job, wide = false) {
    const p = job.progress || { epoch: 0, total: 0 };
    const pct = p.total ? Math.round((100 * p.epoch) / p.total) : 0;
    return `<span class="bar${wide ? " wide" : ""}" title="${pct} %"><span data-pct="${pct}"></span></span>
      <span class="muted">${p.epoch}/${p.total}</span>`;
  }

  // --- the API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, message, errors) {
      super(message);
      this.status = status;
      this.errors = errors;
    }
  }

  const apiKey = () => sessionStorage.getItem(KEY_STORAGE) || "";

  function withKey(extra = {}) {
    const h = { ...extra };
    const key = apiKey();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  // Every 4xx shape the service has used: {detail: str, errors: [...]}, {detail: [...], message}, {detail}.
  async function errorOf(resp) {
    let body = null;
    try { body = await resp.json(); } catch { /* not JSON */ }
    let message = "";
    let errors = [];
    if (body && typeof body === "object") {
      if (Array.isArray(body.errors)) errors = body.errors;
      else if (Array.isArray(body.detail)) errors = body.detail;
      if (typeof body.detail === "string" && body.detail) message = body.detail;
      else if (typeof body.message === "string" && body.message) message = body.message;
      else if (errors.length) message = errors.map((e) => `${where(e)}: ${e.msg}`).join("; ");
    }
    return new ApiError(resp.status, message || `${resp.status} ${resp.statusText}`, errors);
  }

  // Why the service refused the key, for the key dialog; nothing when no key was sent yet (a first visit
  // is asked for a key, not shown an error).
  async function refusal(resp, sent) {
    const message = (await errorOf(resp)).message;
    return sent ? message : "";
  }

  async function request(path, options = {}) {
    for (;;) {
      const sent = apiKey();
      const resp = await fetch(path, { ...options, headers: withKey(options.headers) });
      if (resp.status === 401 || resp.status === 403) {
        await askForKey(await refusal(resp, sent));
        continue; // again, with the new key
      }
      if (!resp.ok) throw await errorOf(resp);
      return resp;
    }
  }

  async function api(path, options) {
    const resp = await request(path, options);
    return resp.status === 204 ? null : resp.json();
  }

  async function allMetrics(id, since) {
    const rows = [];
    for (;;) {
      const page = await api(`v1/jobs/${encodeURIComponent(id)}/metrics?since=${since}&limit=1000`);
      rows.push(...page.rows);
      if (page.rows.length < 1000) return rows;
      since = page.next_since;
    }
  }

  // --- the API key: asked once, kept in sessionStorage ------------------------------------------

  const keyDialog = document.getElementById("key-dialog");
  const keyInput = document.getElementById("key-input");
  const keyError = document.getElementById("key-error");
  let keyWaiters = [];

  function openKeyDialog(message) {
    keyError.hidden = !message;
    keyError.textContent = message ? `The service said: ${message}` : "";
    keyInput.value = "";
    if (!keyDialog.open) keyDialog.showModal();
  }

  // For a request the service refused for its key: resolves once a key is given, to try again.
  function askForKey(message) {
    openKeyDialog(message);
    return new Promise((resolve, reject) => keyWaiters.push({ resolve, reject }));
  }

  document.getElementById("key-form").addEventListener("submit", () => {
    sessionStorage.setItem(KEY_STORAGE, keyInput.value.trim());
    const waiting = keyWaiters;
    keyWaiters = [];
    waiting.forEach((w) => w.resolve());
    if (!waiting.length) route(); // opened by hand: reload the page with the new key
  });
  // closed without a key (Escape): the requests that wait for one fail, saying how to give it later
  keyDialog.addEventListener("close", () => {
    const waiting = keyWaiters;
    keyWaiters = [];
    const err = new ApiError(401, "this page needs an API key: give it with \u201cAPI key\u201d at the top right", []);
    waiting.forEach((w) => w.reject(err));
  });
  document.getElementById("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    keyInput.value = "";
    keyError.hidden = false;
    keyError.textContent = "Key forgotten.";
  });
  // opened by hand, no request waits: the page reloads with the new key
  document.getElementById("key-button").addEventListener("click", () => openKeyDialog(""));

  // --- routing -----------------------------------------------------------------------------------

  let visit = 0; // counts page changes: a page whose first answer comes after the user left draws nothing

  function route() {
    visit++;
    pageStops.splice(0).forEach((stop) => stop());
    const hash = location.hash || "#/";
    const job = hash.match(/^#\/jobs\/([A-Za-z0-9_-]+)$/);
    const study = hash.match(/^#\/studies\/([A-Za-z0-9_-]+)$/);
    const compare = hash.match(/^#\/compare(?:\?(.*))?$/);
    const page = job ? "job" : study || hash === "#/studies" ? "studies" : hash === "#/new" ? "new"
      : compare ? "compare" : "jobs";
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page));
    const run = job ? jobPage(job[1]) : study ? studyPage(study[1]) : page === "studies" ? studiesPage()
      : page === "new" ? submitPage() : compare ? comparePage(compareIds(compare[1] || "")) : jobsPage();
    run.catch(showError);
  }

  // One notice at a time, at the top of the page; a newer problem replaces the older one.
  function showError(err) {
    if (err && err.name === "AbortError") return;
    clearError();
    view.insertAdjacentHTML("afterbegin", `<div class="notice error" id="page-error">${esc(err.message || err)}</div>`);
  }

  function clearError() {
    document.getElementById("page-error")?.remove();
  }

  // A refresh that fails (the service restarting, a network blip) says so and tries again, less often,
  // until it works. Returns a function that stops it (leaving the page stops it too).
  function everyWhileVisible(ms, fn) {
    let stopped = false;
    let failures = 0;
    const tick = async () => {
      if (stopped) return;
      if (!document.hidden) {
        try {
          await fn();
          if (failures) clearError();
          failures = 0;
        } catch (e) {
          if (stopped) return;
          showError(e);
          failures++;
        }
      }
      if (!stopped) timer = setTimeout(tick, failures ? Math.max(ms, backoff(failures)) : ms);
    };
    let timer = setTimeout(tick, ms);
    const stop = () => { stopped = true; clearTimeout(timer); };
    pageStops.push(stop);
    return stop;
  }

  // --- jobs table ---------------------------------------------------------------------------------

  async function jobsPage() {
    view.innerHTML = `
      <h1>Jobs</h1>
      <div class="toolbar">
        <label>Status <select id="status-filter"><option value="">all</option>
          ${STATUSES.map((s) => `<option>${s}</option>`).join("")}</select></label>
        <button type="button" id="compare-button" class="secondary">Compare</button>
        <span class="muted" id="jobs-note"></span>
      </div>
      <div class="scroll"><table id="jobs">
        <thead><tr><th title="Tick jobs to compare their curves">Pick</th><th>Status</th><th>Name</th><th>Dataset</th>
          <th>Students</th><th>Progress</th><th>Best validation score</th><th>Created</th><th></th></tr></thead>
        <tbody><tr><td colspan="9" class="muted">Loading…</td></tr></tbody>
      </table></div>`;
    const filter = document.getElementById("status-filter");
    const picker = new JobPicker(document.getElementById("jobs"), document.getElementById("compare-button"));
    const details = new Map(); // finished jobs' details never change
    const detailOf = async (summary) => {
      if (summary.spec && summary.students) return summary;
      const known = details.get(summary.id);
      if (known && FINISHED.has(known.status) && known.status === summary.status) return known;
      try {
        const full = await api(`v1/jobs/${encodeURIComponent(summary.id)}`);
        details.set(summary.id, full);
        return full;
      } catch (e) {
        return summary; // deleted meanwhile: show what the listing said
      }
    };
    const mine = visit;
    const refresh = async () => {
      const status = filter.value ? `&status=${filter.value}` : "";
      const page = await api(`v1/jobs?limit=50${status}`);
      const jobs = await Promise.all(page.jobs.map(detailOf));
      const body = document.querySelector("#jobs tbody");
      if (!body || mine !== visit) return;
      body.innerHTML = jobs.length ? jobs.map((job) => jobRow(job, picker)).join("")
        : `<tr><td colspan="9" class="muted">No jobs${filter.value ? ` ${filter.value}` : ""}. <a href="#/new">Submit one.</a></td></tr>`;
      paint(body);
      document.getElementById("jobs-note").textContent = page.next_cursor ? "the 50 newest" : "";
    };
    filter.addEventListener("change", () => refresh().catch(showError));
    await refresh();
    if (mine === visit) everyWhileVisible(3000, refresh);
  }

  function jobRow(job, picker) {
    const spec = job.spec || {};
    const students = job.students
      ? job.students.map((s) => esc(s.arch)).join(", ")
      : (spec.students || []).map((s) => `${esc(s.arch)}${s.count > 1 ? ` ×${s.count}` : ""}`).join(", ");
    const live = job.status === "running" ? `<span class="live">live</span>` : "";
    const link = `#/jobs/${encodeURIComponent(job.id)}`;
    return `<tr data-job="${esc(job.id)}">${picker.cell(job.id)}
      <td>${badge(job.status)}</td>
      <td><a href="${link}">${job.name ? esc(job.name) : "unnamed"}</a><div class="muted mono">${esc(job.id.slice(0, 8))}</div></td>
      <td>${esc(spec.dataset ? spec.dataset.name : "–")}</td>
      <td>${students || "–"}</td>
      <td class="nowrap">${progressBar(job)}</td>
      <td class="num" data-scores>${scorePairs(job.students)}</td>
      <td>${when(job.created_at)}</td>
      <td>${live}</td></tr>`;
  }

  // --- picking jobs to compare: a box per row, kept while the table refreshes -------------------------

  const compareHash = (ids) => `#/compare?jobs=${ids.map(encodeURIComponent).join(",")}`;
  const compareIds = (query) => [...new Set((new URLSearchParams(query).get("jobs") || "").split(",")
    .filter((id) => /^[A-Za-z0-9_-]{1,64}$/.test(id)))];

  // The ids ticked in `table`, in the order they were ticked; `button` opens the compare view with them.
  class JobPicker {
    constructor(table, button) {
      this.ids = [];
      this.button = button;
      table.addEventListener("change", (e) => {
        const box = e.target.closest("input[data-pick]");
        if (!box) return;
        this.ids = this.ids.filter((id) => id !== box.dataset.pick);
        if (box.checked) this.ids.push(box.dataset.pick);
        this.update();
      });
      button.addEventListener("click", () => { location.hash = compareHash(this.ids); });
      this.update();
    }

    cell(id) {
      return `<td class="pick"><input type="checkbox" data-pick="${esc(id)}" aria-label="pick job ${esc(id.slice(0, 8))} to compare"${
        this.ids.includes(id) ? " checked" : ""}></td>`;
    }

    update() {
      const n = this.ids.length;
      this.button.disabled = n < 2 || n > MAX_COMPARE;
      this.button.textContent = n ? `Compare ${n} job${n === 1 ? "" : "s"}` : "Compare";
      this.button.title = n > MAX_COMPARE ? `at most ${MAX_COMPARE} jobs at once`
        : n < 2 ? "tick two or more jobs to compare their curves" : "";
    }
  }

  // --- one job, live -------------------------------------------------------------------------------

  async function jobPage(id) {
    const path = `v1/jobs/${encodeURIComponent(id)}`;
    view.innerHTML = `<p class="muted">Loading job ${esc(id)}…</p>`;
    const mine = visit;
    let job = await api(path);
    if (mine !== visit) return;
    view.innerHTML = `
      <h1><span id="job-title"></span> <span id="job-status"></span> <span id="job-live"></span>
        <button type="button" id="cancel" class="danger" hidden>Cancel job</button></h1>
      <div class="panel"><dl class="facts" id="job-facts"></dl></div>
      <h2>Students</h2><div class="scroll"><table id="students"></table></div>
      <h2>Curves</h2><div class="charts" id="charts"></div>
      <h2>Checkpoints</h2><div class="scroll"><table id="checkpoints"><tbody><tr><td class="muted">Loading…</td></tr></tbody></table></div>
      <h2>Logs</h2><pre class="logs" id="logs">Loading…</pre>`;

    const charts = new Curves(document.getElementById("charts"), job.students.map((s) => ({
      label: `student ${s.student} (${s.arch})`, color: COLORS[s.student % COLORS.length], dash: dashOf(s.student),
    })));
    const state = { lastSeq: 0, finished: FINISHED.has(job.status) };
    const stop = new AbortController();
    pageStops.push(() => { stop.abort(); charts.destroy(); });

    const cancel = document.getElementById("cancel");
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      cancel.textContent = "Cancelling…";
      try { showJob(await api(`${path}/cancel`, { method: "POST" })); } catch (e) { showError(e); cancel.disabled = false; }
    });

    const showJob = (next) => {
      const changed = next.status !== job.status;
      job = next;
      document.getElementById("job-title").textContent = job.name || `Job ${job.id.slice(0, 8)}`;
      document.getElementById("job-status").innerHTML = badge(job.status);
      document.getElementById("job-live").innerHTML = job.status === "running" ? `<span class="live">live</span>` : "";
      cancel.hidden = FINISHED.has(job.status) || job.cancel_requested;
      renderFacts(job);
      renderStudents(job);
      if (changed) { loadCheckpoints(); loadLogs(); }
    };

    const loadCheckpoints = () => api(`${path}/checkpoints`).then(renderCheckpoints).catch(showError);
    // new lines only (since=), page after page until one comes back empty; one load at a time
    const logs = { since: 0, lines: [], omitted: 0, busy: null };
    const readLogs = async () => {
      for (let pages = 0; pages < 100; pages++) {
        const page = await api(`${path}/logs?since=${logs.since}`);
        const lines = page.lines || [];
        logs.lines.push(...lines);
        logs.omitted = page.omitted || 0;
        if (!lines.length || page.next_since === undefined) break;
        logs.since = page.next_since;
      }
      renderLogs(logs);
    };
    const loadLogs = () => {
      logs.busy ??= readLogs().catch((e) => {
        const pre = document.getElementById("logs");
        if (pre) pre.textContent = e.status === 404 ? "This service does not keep job logs." : `Could not load logs: ${e.message}`;
      }).finally(() => { logs.busy = null; });
      return logs.busy;
    };

    showJob(job);
    loadCheckpoints();
    loadLogs();
    const onMetric = (row) => charts.add(row.student, row);
    for (const row of await allMetrics(id, 0)) { state.lastSeq = row.seq; onMetric(row); }
    if (stop.signal.aborted) return; // left meanwhile
    if (!state.finished) {
      everyWhileVisible(5000, async () => { if (!state.finished) { await loadCheckpoints(); await loadLogs(); } });
      follow(id, state, { onMetric, onStatus: showJob }, stop.signal).catch(showError);
    }
  }

  function renderFacts(job) {
    const spec = job.spec || {};
    const d = spec.distillation || {};
    const t = spec.training || {};
    const facts = [
      ["Id", `<span class="mono">${esc(job.id)}</span>`],
      ["Progress", progressBar(job, true)],
      ["Dataset", esc(spec.dataset ? spec.dataset.name : "–")],
      ["Distillation", `${esc(d.strategy)} (alpha ${esc(d.alpha)}, tau ${esc(d.tau)}, ${esc(d.schedule)})`],
      ["Training", `${esc(t.epochs)} epochs, ${esc(t.optimizer)} lr ${esc(t.lr)}, seed ${esc(t.seed)}, ${esc(t.device)}`],
      ["Created", when(job.created_at)],
      ["Started", when(job.started_at)],
      ["Finished", when(job.finished_at)],
      ["Attempts", esc(job.attempts)],
    ];
    if (job.cancel_requested && !FINISHED.has(job.status)) facts.push(["Cancel", "requested; stops within this epoch"]);
    if (job.stop_reason) facts.push(["Stopped", esc(job.stop_reason)]);
    if (job.error) facts.push(["Error", `<span class="error">${esc(job.error)}</span>`]);
    const dl = document.getElementById("job-facts");
    dl.innerHTML = facts.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
    paint(dl);
  }

  function renderStudents(job) {
    const table = document.getElementById("students");
    table.innerHTML = `
      <thead><tr><th>Student</th><th>Architecture</th><th class="num">Best validation (%)</th>
        <th class="num">at epoch</th><th class="num">Test there (%)</th></tr></thead>
      <tbody>${job.students.map((s) => `<tr>
        <td><span data-color="${COLORS[s.student % COLORS.length]}">■</span> ${s.student}</td><td>${esc(s.arch)}</td>
        <td class="num">${pct(s.best_val)}</td><td class="num">${fmt(s.best_epoch, 0)}</td>
        <td class="num">${pct(s.test_at_best)}</td></tr>`).join("")}</tbody>`;
    paint(table);
  }

  function renderCheckpoints(listing) {
    const rows = [];
    for (const s of listing.students) {
      for (const kind of ["best", "final"]) {
        const c = s[kind];
        if (!c) continue;
        rows.push(`<tr><td>${s.student}</td><td>${kind}</td><td class="num">${c.epoch}</td>
          <td class="num">${pct(c.score)}</td><td class="num">${(c.size / 1024).toFixed(1)} KiB</td>
          <td class="mono muted" title="${esc(c.sha256)}">${esc(c.sha256.slice(0, 12))}…</td>
          <td><button type="button" class="secondary" data-url="${esc(c.url)}" data-sha="${esc(c.sha256)}"
            data-name="${esc(`${listing.job_id}-student${s.student}-${kind}.safetensors`)}">Download</button></td></tr>`);
      }
    }
    const table = document.getElementById("checkpoints");
    if (!table) return;
    table.innerHTML = `<thead><tr><th>Student</th><th>Kind</th><th class="num">Epoch</th><th class="num">Validation (%)</th>
      <th class="num">Size</th><th>sha256</th><th></th></tr></thead>
      <tbody>${rows.join("") || `<tr><td colspan="7" class="muted">None yet: a best checkpoint appears after the first evaluation.</td></tr>`}</tbody>`;
    table.querySelectorAll("button[data-url]").forEach((b) => b.addEventListener("click", () => download(b)));
  }

  // The key travels in a header, so a plain link cannot download: fetch, verify, then save the blob.
  async function download(button) {
    button.disabled = true;
    try {
      const blob = await (await request(rel(button.dataset.url))).blob();
      if (window.crypto?.subtle) {
        const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
        const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
        if (hex !== button.dataset.sha) throw new Error(`download corrupted: sha256 ${hex} is not the listed ${button.dataset.sha}`);
      }
      saveBlob(blob, button.dataset.name);
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
  }

  function saveBlob(blob, name) {
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    document.body.appendChild(a);
    a.click();
    setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  function renderLogs({ lines, omitted }) {
    const pre = document.getElementById("logs");
    if (!pre) return;
    const gap = omitted ? `<span class="muted">(${omitted} lines left out in the middle: the service keeps the first and the latest)</span>\n` : "";
    pre.innerHTML = lines.length
      ? gap + lines.map((l) => `<span class="${esc(l.level)}">${esc(when(l.created_at))} ${esc(l.level)} ${esc(l.message)}</span>`).join("\n")
      : "No log lines yet.";
    pre.scrollTop = pre.scrollHeight;
  }

  // --- live events: the SSE stream read through fetch (so the key stays in a header), else polling ---

  async function follow(id, state, handlers, signal) {
    const how = await streamEvents(id, state, handlers, signal);
    if (how === "no-stream" && !signal.aborted) await pollEvents(id, state, handlers, signal);
    // rows stored after the last one the stream sent (a stream may say "finished" first): read them too
    if (how === "done" && !signal.aborted) {
      for (const row of await allMetrics(id, state.lastSeq)) { state.lastSeq = row.seq; handlers.onMetric(row); }
    }
  }

  function dispatch(event, state, handlers) {
    if (!event.data.length) return;
    const data = JSON.parse(event.data.join("\n"));
    if (event.type === "metric") {
      const seq = Number(data.seq ?? event.id); // the event's id is the metric row's seq
      if (seq > state.lastSeq) { state.lastSeq = seq; handlers.onMetric(data); }
    } else if (event.type === "status") {
      handlers.onStatus(data);
      if (FINISHED.has(data.status)) state.finished = true;
    } else if (event.type === "end") { // the last event: the job finished, or was deleted (status null)
      state.finished = true;
      if (!data.status) showError(new Error(data.reason || "the job is gone"));
    }
  }

  async function streamEvents(id, state, handlers, signal) {
    for (let failures = 0; !signal.aborted && !state.finished;) {
      const headers = { Accept: "text/event-stream" };
      if (state.lastSeq) headers["Last-Event-ID"] = String(state.lastSeq);
      let resp;
      const sent = apiKey();
      try {
        resp = await fetch(`v1/jobs/${encodeURIComponent(id)}/events`, { headers: withKey(headers), signal, cache: "no-store" });
      } catch (e) {
        if (signal.aborted) return "aborted";
        await sleep(backoff(++failures), signal);
        continue;
      }
      if (resp.status === 404 || resp.status === 405) return "no-stream";
      if (resp.status === 401 || resp.status === 403) { await askForKey(await refusal(resp, sent)); continue; }
      if (resp.status === 429 || resp.status >= 500) { await sleep(backoff(++failures), signal); continue; }
      if (!resp.ok) throw await errorOf(resp);
      if (!(resp.headers.get("content-type") || "").includes("text/event-stream")) return "no-stream";
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      let event = { type: "message", data: [], id: "" };
      try {
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          for (;;) {
            const end = buffer.search(/\r\n|\r|\n/);
            if (end < 0 || (buffer[end] === "\r" && end === buffer.length - 1)) break; // "\r" may precede "\n"
            const line = buffer.slice(0, end);
            buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
            if (line === "") {
              dispatch(event, state, handlers);
              event = { type: "message", data: [], id: "" };
              if (state.finished) { reader.cancel().catch(() => {}); return "done"; }
              continue;
            }
            if (line.startsWith(":")) continue; // keep-alive comment
            const colon = line.indexOf(":");
            const field = colon < 0 ? line : line.slice(0, colon);
            let value2 = colon < 0 ? "" : line.slice(colon + 1);
            if (value2.startsWith(" ")) value2 = value2.slice(1);
            if (field === "event") event.type = value2;
            else if (field === "data") event.data.push(value2);
            else if (field === "id") event.id = value2;
          }
          failures = 0;
        }
      } catch (e) {
        if (signal.aborted) return "aborted";
      }
      if (!state.finished) await sleep(backoff(++failures), signal); // closed early: reconnect from lastSeq
    }
    return "done";
  }

  // The job first, then its rows: when it reads finished, every row it stored is in the second read.
  async function pollEvents(id, state, handlers, signal) {
    for (let failures = 0; !signal.aborted;) {
      try {
        const job = await api(`v1/jobs/${encodeURIComponent(id)}`, { signal });
        for (const row of await allMetrics(id, state.lastSeq)) { state.lastSeq = row.seq; handlers.onMetric(row); }
        handlers.onStatus(job);
        if (failures) clearError();
        failures = 0;
        if (FINISHED.has(job.status)) { state.finished = true; return; }
      } catch (e) {
        if (signal.aborted || (e instanceof ApiError && e.status === 404)) throw e; // left, or the job is gone
        showError(e); // a blip: keep following
        failures++;
      }
      await sleep(failures ? backoff(failures) : 2000, signal);
    }
  }

  // --- curves: one chart per quantity, one line per student (or per job and student), growing as rows arrive

  const dashOf = (student) => DASHES[student % DASHES.length];
  const cssDash = (dash) => (!dash || !dash.length ? "solid" : dash[0] <= 2 ? "dotted" : "dashed");
  const lossText = (v) => (Math.abs(v) >= 1e-3 && Math.abs(v) < 1e5 ? String(+v.toPrecision(4)) : v.toExponential(3));

  // `lines`: [{label, color, dash}]; add(line, row) puts a metric row on line `line`. Each chart has a
  // y-axis label and a legend that shows each line's latest value unless the cursor points at an epoch;
  // a loss chart has a log-scale switch (drawn again on a change: uPlot fixes a scale's kind when built).
  class Curves {
    constructor(container, lines) {
      this.lines = lines;
      this.byLine = lines.map(() => new Map()); // epoch -> row
      this.pending = false;
      this.charts = CHARTS.map((chart) => this.make(container, chart));
      this.onResize = () => this.charts.forEach((c) => c.plot.setSize(this.size(c)));
      window.addEventListener("resize", this.onResize);
    }

    make(container, chart) {
      const box = document.createElement("div");
      box.className = "chart";
      box.dataset.metric = chart.key;
      box.dataset.series = String(this.lines.length);
      box.innerHTML = `<div class="chart-head"><span class="chart-title">${esc(chart.title)}</span>${chart.loss
        ? `<label class="muted"><input type="checkbox" data-log${chart.log ? " checked" : ""}> log scale</label>` : ""}</div>
        <div class="plot"></div>`;
      container.appendChild(box);
      const c = { ...chart, box, holder: box.querySelector(".plot"), plot: null };
      box.querySelector("[data-log]")?.addEventListener("change", (e) => { c.log = e.target.checked; this.build(c); });
      this.build(c);
      return c;
    }

    size(c) {
      return { width: Math.max(240, c.holder.clientWidth), height: 240 };
    }

    // a row's value as drawn: scores in percent; on a log scale, nothing where it is not positive
    drawn(c, row) {
      const v = row ? row[c.key] : null;
      if (v === null || v === undefined) return null;
      if (c.log && !(v > 0)) return null;
      return c.key.endsWith("_score") ? 100 * v : v;
    }

    shown(c, row) {
      const v = row ? row[c.key] : null;
      if (v === null || v === undefined) return "–";
      return c.key.endsWith("_score") ? `${pct(v)} %` : lossText(v);
    }

    latest(line) {
      const epochs = [...this.byLine[line].keys()];
      return epochs.length ? this.byLine[line].get(Math.max(...epochs)) : null;
    }

    build(c) {
      c.plot?.destroy();
      c.holder.textContent = "";
      const opts = {
        ...this.size(c),
        scales: { x: { time: false }, y: c.log ? { distr: 3, log: 10 } : {} },
        legend: { markers: { dash: (u, i) => cssDash(u.series[i].dash) } }, // the marker's border: the line's dash
        axes: [
          { label: "epoch", incrs: EPOCH_STEPS },
          { label: c.log ? `${c.axis}, log scale` : c.axis, size: 64, values: ticks },
        ],
        series: [
          { label: "epoch", value: (u, v, si, i) => (i == null ? "latest" : v) }, // == null: null or not yet set
          ...this.lines.map((line, n) => ({
            label: line.label, stroke: line.color, dash: line.dash, width: 2, spanGaps: true, points: { show: false },
            // hovered: the value at that epoch; else the latest
            value: (u, v, si, i) => this.shown(c, i == null ? this.latest(n) : this.byLine[n].get(u.data[0][i])),
          })),
        ],
      };
      c.plot = new uPlot(opts, this.data(c), c.holder);
      c.box.dataset.log = String(Boolean(c.log));
      c.box.dataset.axis = opts.axes[1].label; // for people and tests: the y-axis label drawn
      this.update(c);
    }

    data(c) {
      const epochs = [...new Set(this.byLine.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
      return [epochs, ...this.byLine.map((m) => epochs.map((e) => this.drawn(c, m.get(e))))];
    }

    update(c) {
      const data = this.data(c);
      c.plot.setData(data);
      if (c.plot.cursor.idx == null) c.plot.setLegend({ idx: null }); // not hovered: the latest values
      c.box.dataset.points = String(data[0].length); // for people and tests: epochs drawn
    }

    add(line, row) {
      if (!this.byLine[line]) return;
      this.byLine[line].set(row.epoch, row);
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.charts.forEach((c) => this.update(c));
      });
    }

    destroy() {
      window.removeEventListener("resize", this.onResize);
      this.charts.forEach((c) => c.plot.destroy());
    }
  }

  // --- studies: one spec over seeds and a grid of values, and the table that compares the cells ------

  const STRATEGY = "distillation.strategy";
  const METRICS = [["test_at_best", "Test score at best validation"], ["best_val", "Best validation score"]];
  const signedPp = (v) => (v === null || v === undefined ? "–" : `${v < 0 ? "−" : "+"}${Math.abs(100 * v).toFixed(1)}`);
  const pValue = (p) => (p === null || p === undefined ? "–" : p < 0.001 ? "< 0.001" : p.toFixed(3));
  const showValue = (v) => (typeof v === "string" ? v : JSON.stringify(v));
  // `strategy=none alpha=0.5`, as the service names the study's jobs
  const cellLabel = (cell) => Object.entries(cell).map(([p, v]) => `${p.split(".").pop()}=${showValue(v)}`).join(" ") || "all runs";
  const finishedCount = (counts) => [...FINISHED].reduce((n, s) => n + (counts[s] || 0), 0);

  function countBadges(counts) {
    const shown = STATUSES.filter((s) => counts[s]);
    return shown.length ? `<span class="counts">${shown.map((s) =>
      `<span class="status ${s}" data-count="${s}">${s} ${counts[s]}</span>`).join(" ")}</span>` : `<span class="muted">no jobs</span>`;
  }

  async function studiesPage() {
    view.innerHTML = `
      <h1>Studies</h1>
      <p class="muted">A study runs one spec for several seeds and every combination of a few spec values, one job
        each, and compares the cells (<code>POST v1/studies</code> or <code>alignahead study</code>; see the API docs).
        <span id="studies-note"></span></p>
      <div class="scroll"><table id="studies">
        <thead><tr><th>Name</th><th>Jobs</th><th>Finished</th><th>Created</th><th></th></tr></thead>
        <tbody><tr><td colspan="5" class="muted">Loading…</td></tr></tbody>
      </table></div>`;
    const mine = visit;
    const refresh = async () => {
      const page = await api("v1/studies?limit=50");
      const body = document.querySelector("#studies tbody");
      if (!body || mine !== visit) return;
      body.innerHTML = page.studies.length ? page.studies.map(studyRow).join("")
        : `<tr><td colspan="5" class="muted">No studies yet.</td></tr>`;
      paint(body);
      document.getElementById("studies-note").textContent = page.next_cursor ? "The 50 newest." : "";
    };
    await refresh();
    if (mine === visit) everyWhileVisible(3000, refresh);
  }

  // a study without a name of its own goes by its spec's name, else by its id
  const studyName = (study) => study.name || study.spec?.name || `Study ${study.id.slice(0, 8)}`;

  function studyRow(study) {
    const link = `#/studies/${encodeURIComponent(study.id)}`;
    return `<tr data-study="${esc(study.id)}">
      <td><a href="${link}">${study.name ? esc(study.name) : "unnamed"}</a><div class="muted mono">${esc(study.id.slice(0, 8))}</div></td>
      <td>${countBadges(study.counts)}</td>
      <td>${progressBar({ progress: { epoch: finishedCount(study.counts), total: study.jobs } })}</td>
      <td>${when(study.created_at)}</td>
      <td>${study.done ? "" : `<span class="live">live</span>`}</td></tr>`;
  }

  // every job of a study (the listing pages by 1000), in the study's order: cell by cell, seeds within
  async function studyJobs(study) {
    const found = new Map();
    let cursor = "";
    for (let pages = 0; pages < 100; pages++) {
      const page = await api(`v1/jobs?study=${encodeURIComponent(study.id)}&limit=1000${cursor}`);
      page.jobs.forEach((j) => found.set(j.id, j));
      if (!page.next_cursor) break;
      cursor = `&cursor=${encodeURIComponent(page.next_cursor)}`;
    }
    return study.job_ids.map((id) => found.get(id)).filter(Boolean);
  }

  async function studyPage(id) {
    const path = `v1/studies/${encodeURIComponent(id)}`;
    view.innerHTML = `<p class="muted">Loading study ${esc(id)}…</p>`;
    const mine = visit;
    const state = { study: await api(path), jobs: [] };
    if (mine !== visit) return;
    view.innerHTML = `
      <h1><span id="study-title"></span> <span id="study-live"></span>
        <button type="button" id="study-csv" class="secondary">Download CSV</button>
        <button type="button" id="study-cancel" class="danger" hidden>Cancel study</button></h1>
      <div class="panel"><dl class="facts" id="study-facts"></dl></div>
      <h2>Results</h2>
      <p class="muted" id="study-method"></p>
      <div class="scroll"><table id="study-table" class="results"></table></div>
      <h2>Mean ± std per cell</h2>
      <div class="toolbar"><label>Metric <select id="study-metric">
        ${METRICS.map(([key, title]) => `<option value="${key}">${title}</option>`).join("")}</select></label>
        <span class="muted">in percent; the bars are ± one standard deviation over seeds</span></div>
      <div class="chart" id="study-chart"></div>
      <h2>Jobs</h2>
      <div class="toolbar"><button type="button" id="compare-button" class="secondary">Compare</button>
        <button type="button" id="compare-all" class="secondary" disabled>Compare all</button>
        <span class="muted">their curves overlaid</span></div>
      <div class="scroll"><table id="study-jobs"><tbody><tr><td class="muted">Loading…</td></tr></tbody></table></div>`;
    const picker = new JobPicker(document.getElementById("study-jobs"), document.getElementById("compare-button"));
    const compareAll = document.getElementById("compare-all");
    compareAll.addEventListener("click", () => { location.hash = compareHash(state.jobs.slice(0, MAX_COMPARE).map((j) => j.id)); });

    const chart = new StudyChart(document.getElementById("study-chart"));
    pageStops.push(() => chart.destroy());
    const metric = document.getElementById("study-metric");
    metric.addEventListener("change", () => chart.show(state.study, metric.value));

    const show = (study, jobs) => {
      state.study = study;
      state.jobs = jobs;
      document.getElementById("study-title").textContent = studyName(study);
      document.getElementById("study-live").innerHTML = study.done ? "" : `<span class="live">live</span>`;
      const unfinished = jobs.filter((j) => !FINISHED.has(j.status));
      const cancel = document.getElementById("study-cancel");
      cancel.hidden = study.done || (unfinished.length > 0 && unfinished.every((j) => j.cancel_requested));
      renderStudyFacts(study, jobs);
      renderResults(study);
      chart.show(study, metric.value);
      renderStudyJobs(jobs, picker);
      compareAll.disabled = jobs.length < 2;
      compareAll.title = jobs.length > MAX_COMPARE ? `the first ${MAX_COMPARE} of its ${jobs.length} jobs` : "";
    };

    let stopPolling = () => {};
    const refresh = async () => {
      let study;
      try {
        study = await api(path);
      } catch (e) {
        if (!(e instanceof ApiError && e.status === 404)) throw e;
        stopPolling(); // deleted: nothing more to follow
        showError(e);
        return;
      }
      const jobs = await studyJobs(study);
      if (mine !== visit) return;
      show(study, jobs);
      if (study.done) stopPolling();
    };

    const cancel = document.getElementById("study-cancel");
    cancel.addEventListener("click", async () => {
      cancel.disabled = true;
      cancel.textContent = "Cancelling…";
      try {
        await api(`${path}/cancel`, { method: "POST" });
        await refresh();
      } catch (e) {
        showError(e);
      } finally {
        cancel.disabled = false;
        cancel.textContent = "Cancel study";
      }
    });
    const csv = document.getElementById("study-csv");
    csv.addEventListener("click", async () => {
      csv.disabled = true;
      try {
        const resp = await request(`${path}/table.csv`);
        const name = (resp.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
        saveBlob(await resp.blob(), name ? name[1] : `study-${id}.csv`);
      } catch (e) {
        showError(e);
      } finally {
        csv.disabled = false;
      }
    });

    const jobs = await studyJobs(state.study);
    if (mine !== visit) return; // left meanwhile
    show(state.study, jobs);
    if (!state.study.done) stopPolling = everyWhileVisible(3000, refresh);
  }

  function renderStudyFacts(study, jobs) {
    const spec = study.spec || {};
    const students = (spec.students || []).map((s) => `${esc(s.arch)}${s.count > 1 ? ` ×${s.count}` : ""}`).join(", ");
    const axes = Object.entries(study.axes).map(([p, values]) =>
      `<span class="mono">${esc(p)}</span>: ${values.map((v) => esc(showValue(v))).join(", ")}`).join("<br>");
    const epochs = jobs.reduce((n, j) => n + (j.progress?.epoch || 0), 0);
    const total = jobs.reduce((n, j) => n + (j.progress?.total || 0), 0);
    const facts = [
      ["Id", `<span class="mono">${esc(study.id)}</span>`],
      ["Jobs", countBadges(study.counts)],
      ["Finished", progressBar({ progress: { epoch: finishedCount(study.counts), total: study.jobs } }, true)],
      ["Epochs", progressBar({ progress: { epoch: epochs, total } }, true)],
      ["Seeds", esc(study.seeds.join(", "))],
      ["Axes", axes || `<span class="muted">none: the seeds only</span>`],
      ["Base spec", `${esc(spec.dataset ? spec.dataset.name : "–")}; ${students || "–"}; ${esc(spec.training?.epochs ?? "default")} epochs`],
      ["Created", when(study.created_at)],
    ];
    const dl = document.getElementById("study-facts");
    dl.innerHTML = facts.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
    paint(dl);
  }

  // the table's cells in its own order, each with its index (rows of one cell are consecutive)
  function cellsOf(table) {
    const index = new Map();
    table.forEach((r) => { const k = JSON.stringify(r.cell); if (!index.has(k)) index.set(k, index.size); });
    return index;
  }

  function renderResults(study) {
    const table = document.getElementById("study-table");
    if (!table) return;
    const hasBaseline = STRATEGY in study.axes && study.axes[STRATEGY].includes("none");
    const compare = hasBaseline || study.table.some((r) => r.test_at_best.vs_baseline); // else no Δ, p columns
    document.getElementById("study-method").textContent = `Only succeeded jobs count. Scores in percent; mean ± sample std over seeds.${
      hasBaseline ? ` Δ: the mean difference to the cell with strategy none and the other axes equal, paired by seed, in percentage points, with its ${Math.round(100 * study.confidence)}% confidence interval and the ${study.test}'s p-value.` : ""}`;
    const cells = cellsOf(study.table);
    const span = new Map(); // cell -> its rows
    study.table.forEach((r) => { const k = JSON.stringify(r.cell); span.set(k, (span.get(k) || 0) + 1); });
    const stats = (r, key) => {
      const m = r[key];
      const vs = m.vs_baseline;
      const baseline = hasBaseline && r.cell[STRATEGY] === "none";
      const diff = vs && vs.mean_diff !== null
        ? `${signedPp(vs.mean_diff)}${vs.ci_low !== null ? ` <span class="muted">[${signedPp(vs.ci_low)}, ${signedPp(vs.ci_high)}]</span>` : ""}`
        : baseline ? `<span class="muted">baseline</span>` : "–";
      return `<td class="num" data-metric="${key}-n">${m.n}</td>
        <td class="num" data-metric="${key}"><span class="mean" data-value="${m.mean ?? ""}">${pct(m.mean)}</span>${
          m.std !== null ? ` <span class="muted">± ${pct(m.std)}</span>` : ""}</td>${compare ? `
        <td class="num" data-metric="${key}-diff">${diff}</td>
        <td class="num" data-metric="${key}-p">${vs ? pValue(vs.p_value) : "–"}</td>` : ""}`;
    };
    let previous = null;
    const rows = study.table.map((r) => {
      const k = JSON.stringify(r.cell);
      const head = k !== previous ? `<td rowspan="${span.get(k)}">${esc(cellLabel(r.cell))}</td>` : "";
      previous = k;
      return `<tr data-cell="${cells.get(k)}" data-student="${r.student}" data-n="${r.test_at_best.n}">${head}
        <td><span data-color="${COLORS[r.student % COLORS.length]}">■</span> ${r.student}</td>
        <td class="num">${r.succeeded}/${r.jobs}</td>${stats(r, "test_at_best")}${stats(r, "best_val")}</tr>`;
    });
    const sub = `<th class="num">n</th><th class="num">mean ± std</th>${
      compare ? `<th class="num">Δ vs none [${Math.round(100 * study.confidence)}% CI]</th><th class="num">p-value</th>` : ""}`;
    const width = compare ? 4 : 2;
    table.innerHTML = `<thead>
        <tr><th rowspan="2">Cell</th><th rowspan="2">Student</th><th rowspan="2" class="num">Succeeded</th>
          ${METRICS.map(([, title]) => `<th colspan="${width}" class="group">${title} (%)</th>`).join("")}</tr>
        <tr>${sub}${sub}</tr></thead>
      <tbody>${rows.join("") || `<tr><td colspan="${3 + 2 * width}" class="muted">No cells.</td></tr>`}</tbody>`;
    table.dataset.cells = String(cells.size);
    paint(table);
  }

  function renderStudyJobs(jobs, picker) {
    const table = document.getElementById("study-jobs");
    if (!table) return;
    table.innerHTML = `<thead><tr><th title="Tick jobs to compare their curves">Pick</th><th>Status</th><th>Job</th>
        <th>Progress</th><th>Started</th><th>Finished</th></tr></thead>
      <tbody>${jobs.map((j) => `<tr data-job="${esc(j.id)}">${picker.cell(j.id)}<td>${badge(j.status)}</td>
        <td><a href="#/jobs/${encodeURIComponent(j.id)}">${esc(j.name || j.id)}</a><div class="muted mono">${esc(j.id.slice(0, 8))}</div></td>
        <td>${progressBar(j)}</td><td>${when(j.started_at)}</td><td>${when(j.finished_at)}</td></tr>`).join("")
        || `<tr><td colspan="6" class="muted">No jobs.</td></tr>`}</tbody>`;
    paint(table);
  }

  // One point per cell and student (students side by side within a cell) with a bar of ± one std,
  // drawn by a uPlot draw hook; rebuilt only when what it shows changes.
  class StudyChart {
    constructor(box) {
      this.box = box;
      this.plot = null;
      this.shown = "";
      this.onResize = () => this.plot?.setSize(this.size());
      window.addEventListener("resize", this.onResize);
    }

    size() {
      return { width: Math.max(240, this.box.clientWidth - 16), height: 300 };
    }

    show(study, key) {
      const signature = JSON.stringify([key, study.table.map((r) => [r.cell, r.student, r[key].mean, r[key].std])]);
      if (signature === this.shown) return;
      this.shown = signature;
      const cells = [...cellsOf(study.table).keys()].map((k) => cellLabel(JSON.parse(k)));
      const students = [...new Set(study.table.map((r) => r.student))].sort((a, b) => a - b);
      const n = students.length;
      const offset = (s) => (n > 1 ? (s - (n - 1) / 2) * (0.5 / n) : 0); // within ±0.25 of the cell
      const xs = [];
      const means = students.map(() => []);
      const stds = students.map(() => []);
      const byKey = new Map(study.table.map((r) => [`${JSON.stringify(r.cell)}|${r.student}`, r]));
      const drawn = new Set(); // cells with at least one point
      [...cellsOf(study.table).keys()].forEach((k, c) => students.forEach((student, s) => {
        xs.push(c + offset(s)); // x ascends: cell by cell, students within
        const r = byKey.get(`${k}|${student}`);
        const has = Boolean(r) && r[key].mean !== null;
        if (has) drawn.add(c);
        students.forEach((_, t) => { // each student's series has a value at its own x only
          means[t].push(t === s && has ? 100 * r[key].mean : null);
          stds[t].push(t === s && has && r[key].std !== null ? 100 * r[key].std : null);
        });
      }));
      let lo = Infinity;
      let hi = -Infinity;
      means.forEach((m, t) => m.forEach((v, i) => {
        if (v === null) return;
        const sd = stds[t][i] || 0;
        lo = Math.min(lo, v - sd);
        hi = Math.max(hi, v + sd);
      }));
      if (lo === Infinity) { lo = 0; hi = 100; }
      const pad = Math.max(0.5, 0.08 * (hi - lo));
      const title = METRICS.find(([k]) => k === key)[1];
      const opts = {
        ...this.size(),
        title: `${title}: mean ± std over seeds (%)`,
        scales: { x: { time: false, range: () => [-0.5, cells.length - 0.5] }, y: { range: () => [lo - pad, hi + pad] } },
        axes: [
          { label: "cell", grid: { show: false }, splits: () => cells.map((_, i) => i), values: (u, splits) => splits.map((i) => cells[i] ?? "") },
          { size: 60, values: ticks },
        ],
        cursor: { drag: { x: false, y: false } },
        // not hovered (i == null), a student's legend shows its best cell; hovered, the cell pointed at
        series: [
          { label: "cell", value: (u, v, si, i) => (i == null ? "best" : v === null || v === undefined ? "–" : cells[Math.round(v)] ?? "") },
          ...students.map((student, t) => ({
            label: `student ${student}`,
            stroke: COLORS[student % COLORS.length],
            paths: () => null, // points only
            points: { show: true, size: 9, fill: COLORS[student % COLORS.length] },
            value: (u, v, si, i) => {
              if (i == null) {
                const best = means[t].reduce((b, m, j) => (m !== null && (b < 0 || m > means[t][b]) ? j : b), -1);
                return best < 0 ? "–" : `${means[t][best].toFixed(1)} (${cells[Math.round(xs[best])] ?? ""})`;
              }
              return v === null || v === undefined ? "–"
                : `${v.toFixed(1)}${stds[t][i] !== null ? ` ± ${stds[t][i].toFixed(1)}` : ""}`;
            },
          })),
        ],
        hooks: { draw: [(u) => this.drawBars(u, stds, students)] },
      };
      this.plot?.destroy();
      this.box.textContent = "";
      this.plot = new uPlot(opts, [xs, ...means], this.box);
      this.plot.setLegend({ idx: null }); // not hovered: each student's best cell
      // for people and tests: what is drawn
      this.box.dataset.metric = key;
      this.box.dataset.cells = String(drawn.size);
      this.box.dataset.points = String(means.reduce((total, m) => total + m.filter((v) => v !== null).length, 0));
    }

    drawBars(u, stds, students) {
      const { ctx } = u;
      const cap = 5 * uPlot.pxRatio;
      ctx.save();
      ctx.beginPath();
      ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
      ctx.clip();
      ctx.lineWidth = 1.5 * uPlot.pxRatio;
      students.forEach((student, t) => {
        if (!u.series[t + 1].show) return;
        ctx.strokeStyle = COLORS[student % COLORS.length];
        ctx.beginPath();
        u.data[t + 1].forEach((mean, i) => {
          const sd = stds[t][i];
          if (mean === null || sd === null) return;
          const x = u.valToPos(u.data[0][i], "x", true);
          const low = u.valToPos(mean - sd, "y", true);
          const high = u.valToPos(mean + sd, "y", true);
          ctx.moveTo(x, low); ctx.lineTo(x, high);
          ctx.moveTo(x - cap, low); ctx.lineTo(x + cap, low);
          ctx.moveTo(x - cap, high); ctx.lineTo(x + cap, high);
        });
        ctx.stroke();
      });
      ctx.restore();
    }

    destroy() {
      window.removeEventListener("resize", this.onResize);
      this.plot?.destroy();
    }
  }

  // --- compare runs: several jobs' curves overlaid, a colour per job and a dash per student ----------

  // what a job is called here: its name (with its short id where names repeat), else its short id
  function jobLabels(jobs) {
    const uses = new Map();
    jobs.forEach((j) => uses.set(j.name, (uses.get(j.name) || 0) + 1));
    return jobs.map((j) => (!j.name ? j.id.slice(0, 8) : uses.get(j.name) > 1 ? `${j.name} (${j.id.slice(0, 8)})` : j.name));
  }

  async function comparePage(ids) {
    if (!ids.length) {
      view.innerHTML = `<h1>Compare runs</h1>
        <p class="muted" id="compare-empty">Tick two or more jobs in the <a href="#/">jobs table</a> (or a study's jobs)
          and press Compare: their curves are overlaid here, one colour per job and one dash per student, with their
          rows as CSV. The page's address keeps the selection, to share or bookmark it.</p>`;
      return;
    }
    const asked = ids.slice(0, MAX_COMPARE);
    view.innerHTML = `<p class="muted">Loading ${asked.length} jobs…</p>`;
    const mine = visit;
    const found = await Promise.all(asked.map((id) => api(`v1/jobs/${encodeURIComponent(id)}`).catch((e) => e)));
    if (mine !== visit) return;
    const failed = found.find((j) => j instanceof Error && !(j instanceof ApiError && j.status === 404));
    if (failed) throw failed;
    let jobs = found.filter((j) => !(j instanceof Error));
    const gone = found.filter((j) => j instanceof Error).map((e) => e.message);
    if (ids.length > asked.length) gone.push(`only the first ${MAX_COMPARE} of the ${ids.length} jobs asked are shown`);
    const csvUrl = `v1/metrics.csv?${jobs.map((j) => `job=${encodeURIComponent(j.id)}`).join("&")}`;
    view.innerHTML = `
      <h1>Compare runs</h1>
      <p class="muted">One colour per job, one dash per student (student 0 solid, 1 dashed, 2 dotted, …).
        ${jobs.length ? `<a id="compare-csv" href="${esc(csvUrl)}">Download their metric rows as CSV</a>` : ""}</p>
      ${gone.length ? `<div class="notice" id="compare-missing">${gone.map(esc).join("<br>")}</div>` : ""}
      <div class="scroll"><table id="compare-jobs"></table></div>
      <h2>Curves</h2><div class="charts" id="compare-charts"></div>`;

    const labels = jobLabels(jobs);
    const lines = [];
    const lineOf = new Map(); // "job|student" -> line
    jobs.forEach((job, k) => job.students.forEach((s) => {
      lineOf.set(`${job.id}|${s.student}`, lines.length);
      lines.push({ label: `${labels[k]} · s${s.student}`, color: COLORS[k % COLORS.length], dash: dashOf(s.student) });
    }));
    const charts = new Curves(document.getElementById("compare-charts"), lines);
    pageStops.push(() => charts.destroy());

    const renderTable = () => {
      const table = document.getElementById("compare-jobs");
      if (!table) return;
      table.innerHTML = `<thead><tr><th>Job</th><th>Status</th><th>Dataset</th><th>Students</th><th>Progress</th>
          <th>Best validation score</th><th></th></tr></thead>
        <tbody>${jobs.map((j, k) => `<tr data-job="${esc(j.id)}">
          <td><span data-color="${COLORS[k % COLORS.length]}">■</span> <a href="#/jobs/${encodeURIComponent(j.id)}">${esc(labels[k])}</a>
            <div class="muted mono">${esc(j.id.slice(0, 8))}</div></td>
          <td>${badge(j.status)}</td><td>${esc(j.spec?.dataset?.name ?? "–")}</td>
          <td>${j.students.map((s) => `s${s.student} ${esc(s.arch)}`).join(", ")}</td>
          <td class="nowrap">${progressBar(j)}</td>
          <td class="num" data-scores>${scorePairs(j.students)}</td>
          <td><button type="button" class="link" data-remove="${esc(j.id)}">remove</button></td></tr>`).join("")
          || `<tr><td colspan="7" class="muted">None of these jobs was found.</td></tr>`}</tbody>`;
      paint(table);
    };
    document.getElementById("compare-jobs").addEventListener("click", (e) => {
      const button = e.target.closest("button[data-remove]");
      if (button) location.hash = compareHash(ids.filter((id) => id !== button.dataset.remove));
    });
    const csv = document.getElementById("compare-csv");
    csv?.addEventListener("click", async (e) => {
      e.preventDefault(); // the key travels in a header: fetch, then save
      try {
        const resp = await request(csvUrl);
        const name = (resp.headers.get("Content-Disposition") || "").match(/filename="([^"]+)"/);
        saveBlob(await resp.blob(), name ? name[1] : "metrics.csv");
      } catch (err) {
        showError(err);
      }
    });

    const lastSeq = new Map(jobs.map((j) => [j.id, 0]));
    const readRows = async (job) => {
      for (const row of await allMetrics(job.id, lastSeq.get(job.id))) {
        lastSeq.set(job.id, row.seq);
        const line = lineOf.get(`${job.id}|${row.student}`);
        if (line !== undefined) charts.add(line, row);
      }
    };
    renderTable();
    await Promise.all(jobs.map(readRows));
    if (mine !== visit || jobs.every((j) => FINISHED.has(j.status))) return;
    // some still train: follow them (the job first, then its rows, so a finished one has all its rows)
    const stop = everyWhileVisible(3000, async () => {
      jobs = await Promise.all(jobs.map(async (j) => {
        if (FINISHED.has(j.status)) return j;
        const next = await api(`v1/jobs/${encodeURIComponent(j.id)}`);
        await readRows(next);
        return next;
      }));
      if (mine !== visit) return;
      renderTable();
      if (jobs.every((j) => FINISHED.has(j.status))) stop();
    });
  }

  // --- submit a spec --------------------------------------------------------------------------------

  async function submitPage() {
    view.innerHTML = `
      <h1>Submit a job</h1>
      <form class="submit" id="submit-form" novalidate>
        <div>
          <textarea id="spec" name="spec" spellcheck="false" aria-label="Job spec (YAML or JSON)"></textarea>
          <div class="toolbar">
            <button type="submit" id="submit-button">Submit</button>
            <label class="muted">or load a file <input type="file" id="spec-file" accept=".yaml,.yml,.json"></label>
          </div>
        </div>
        <aside class="panel">
          <h2>Problems</h2>
          <p id="submit-message" class="muted">The job spec in YAML or JSON; the service checks it before anything is stored.</p>
          <ul class="field-errors" id="submit-errors"></ul>
        </aside>
      </form>`;
    const text = document.getElementById("spec");
    text.value = sessionStorage.getItem("alignahead.draft") || EXAMPLE;
    text.addEventListener("input", () => sessionStorage.setItem("alignahead.draft", text.value));
    document.getElementById("spec-file").addEventListener("change", async (e) => {
      const file = e.target.files[0];
      if (file) { text.value = await file.text(); sessionStorage.setItem("alignahead.draft", text.value); }
    });
    document.getElementById("submit-form").addEventListener("submit", async (e) => {
      e.preventDefault();
      const button = document.getElementById("submit-button");
      const show = (message, errors = []) => {
        text.classList.toggle("invalid", Boolean(message));
        const p = document.getElementById("submit-message");
        p.className = message ? "error" : "muted";
        p.textContent = message || "";
        document.getElementById("submit-errors").innerHTML = errors.map((err) =>
          `<li data-loc="${esc(where(err))}"><span class="loc">${esc(where(err))}</span>${esc(err.msg)}</li>`).join("");
      };
      let spec;
      try {
        spec = jsyaml.load(text.value); // JSON is YAML
      } catch (err) {
        show(`Not valid YAML or JSON: ${err.message}`);
        return;
      }
      if (!spec || typeof spec !== "object" || Array.isArray(spec)) {
        show("The spec must be a mapping with sections such as dataset, students, distillation and training.");
        return;
      }
      button.disabled = true;
      try {
        const headers = { "Content-Type": "application/json" };
        if (window.crypto?.randomUUID) headers["Idempotency-Key"] = crypto.randomUUID();
        const job = await api("v1/jobs", { method: "POST", headers, body: JSON.stringify(spec) });
        sessionStorage.removeItem("alignahead.draft");
        location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
      } catch (err) {
        show(err.message, err instanceof ApiError ? err.errors : []);
      } finally {
        button.disabled = false;
      }
    });
  }

  window.addEventListener("hashchange", route);
  route();
})();
