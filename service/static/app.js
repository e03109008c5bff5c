// The alignahead dashboard: plain JavaScript, no build step. Talks only to the service that serves it
// (relative URLs), with the API key from this tab's session storage in an Authorization header, never
// in a URL. Pages, by hash route: #/ (jobs), #/jobs/ID (one job, live), #/new (submit a spec).
"use strict";

(() => {
  const KEY_STORAGE = "alignahead.apiKey";
  const FINISHED = new Set(["succeeded", "failed", "cancelled"]);
  const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
  const COLORS = ["#2459a8", "#d1495b", "#2e9c5a", "#e59400", "#7d4e9e", "#00a6a6", "#8c564b", "#d62ca1",
    "#5b6b00", "#1f9fd1", "#b85c00", "#4b4bd6", "#2f7f7f", "#a3336b", "#6b7a8f", "#9c7c00"];
  const CHARTS = [
    ["task_loss", "Task loss"],
    ["distill_loss", "Distillation loss"],
    ["val_score", "Validation score"],
    ["test_score", "Test score"],
  ];
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
  // axis ticks: 3 significant digits, small or large values in exponent form (distillation losses are ~1e-3)
  const tick = (v) => (v === 0 ? "0" : Math.abs(v) < 0.01 || Math.abs(v) >= 1e5 ? v.toExponential(1) : String(+v.toPrecision(3)));
  const rel = (url) => url.replace(/^\//, ""); // server paths are absolute; keep a prefix working

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

  async function request(path, options = {}) {
    for (;;) {
      const resp = await fetch(path, { ...options, headers: withKey(options.headers) });
      if (resp.status === 401 || resp.status === 403) {
        await askForKey((await errorOf(resp)).message);
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
    const page = job ? "job" : hash === "#/new" ? "new" : "jobs";
    document.querySelectorAll("[data-nav]").forEach((a) => a.classList.toggle("active", a.dataset.nav === page));
    const run = job ? jobPage(job[1]) : page === "new" ? submitPage() : jobsPage();
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
  // until it works.
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
    pageStops.push(() => { stopped = true; clearTimeout(timer); });
  }

  // --- jobs table ---------------------------------------------------------------------------------

  async function jobsPage() {
    view.innerHTML = `
      <h1>Jobs</h1>
      <div class="toolbar">
        <label>Status <select id="status-filter"><option value="">all</option>
          ${STATUSES.map((s) => `<option>${s}</option>`).join("")}</select></label>
        <span class="muted" id="jobs-note"></span>
      </div>
      <table id="jobs">
        <thead><tr><th>Status</th><th>Name</th><th>Dataset</th><th>Students</th><th>Progress</th>
          <th>Best validation score</th><th>Created</th><th></th></tr></thead>
        <tbody><tr><td colspan="8" class="muted">Loading…</td></tr></tbody>
      </table>`;
    const filter = document.getElementById("status-filter");
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
      body.innerHTML = jobs.length ? jobs.map(jobRow).join("")
        : `<tr><td colspan="8" class="muted">No jobs${filter.value ? ` ${filter.value}` : ""}. <a href="#/new">Submit one.</a></td></tr>`;
      paint(body);
      document.getElementById("jobs-note").textContent = page.next_cursor ? "the 50 newest" : "";
    };
    filter.addEventListener("change", () => refresh().catch(showError));
    await refresh();
    if (mine === visit) everyWhileVisible(3000, refresh);
  }

  function jobRow(job) {
    const spec = job.spec || {};
    const students = job.students
      ? job.students.map((s) => esc(s.arch)).join(", ")
      : (spec.students || []).map((s) => `${esc(s.arch)}${s.count > 1 ? ` ×${s.count}` : ""}`).join(", ");
    const best = (job.students || []).map((s) => fmt(s.best_val, 3)).join(" · ") || "–";
    const live = job.status === "running" ? `<span class="live">live</span>` : "";
    const link = `#/jobs/${encodeURIComponent(job.id)}`;
    return `<tr data-job="${esc(job.id)}">
      <td>${badge(job.status)}</td>
      <td><a href="${link}">${job.name ? esc(job.name) : "unnamed"}</a><div class="muted mono">${esc(job.id.slice(0, 8))}</div></td>
      <td>${esc(spec.dataset ? spec.dataset.name : "–")}</td>
      <td>${students || "–"}</td>
      <td>${progressBar(job)}</td>
      <td class="num">${best}</td>
      <td>${when(job.created_at)}</td>
      <td>${live}</td></tr>`;
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
      <h2>Students</h2><table id="students"></table>
      <h2>Curves</h2><div class="charts" id="charts"></div>
      <h2>Checkpoints</h2><table id="checkpoints"><tbody><tr><td class="muted">Loading…</td></tr></tbody></table>
      <h2>Logs</h2><pre class="logs" id="logs">Loading…</pre>`;

    const charts = new Curves(document.getElementById("charts"), job);
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
    const onMetric = (row) => charts.add(row);
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
      <thead><tr><th>Student</th><th>Architecture</th><th class="num">Best validation</th>
        <th class="num">at epoch</th><th class="num">Test there</th></tr></thead>
      <tbody>${job.students.map((s) => `<tr>
        <td><span data-color="${COLORS[s.student % COLORS.length]}">■</span> ${s.student}</td><td>${esc(s.arch)}</td>
        <td class="num">${fmt(s.best_val)}</td><td class="num">${fmt(s.best_epoch, 0)}</td>
        <td class="num">${fmt(s.test_at_best)}</td></tr>`).join("")}</tbody>`;
    paint(table);
  }

  function renderCheckpoints(listing) {
    const rows = [];
    for (const s of listing.students) {
      for (const kind of ["best", "final"]) {
        const c = s[kind];
        if (!c) continue;
        rows.push(`<tr><td>${s.student}</td><td>${kind}</td><td class="num">${c.epoch}</td>
          <td class="num">${fmt(c.score)}</td><td class="num">${(c.size / 1024).toFixed(1)} KiB</td>
          <td class="mono muted" title="${esc(c.sha256)}">${esc(c.sha256.slice(0, 12))}…</td>
          <td><button type="button" class="secondary" data-url="${esc(c.url)}" data-sha="${esc(c.sha256)}"
            data-name="${esc(`${listing.job_id}-student${s.student}-${kind}.safetensors`)}">Download</button></td></tr>`);
      }
    }
    const table = document.getElementById("checkpoints");
    if (!table) return;
    table.innerHTML = `<thead><tr><th>Student</th><th>Kind</th><th class="num">Epoch</th><th class="num">Validation</th>
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
      const a = document.createElement("a");
      a.href = URL.createObjectURL(blob);
      a.download = button.dataset.name;
      document.body.appendChild(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
    } catch (e) {
      showError(e);
    } finally {
      button.disabled = false;
    }
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
      try {
        resp = await fetch(`v1/jobs/${encodeURIComponent(id)}/events`, { headers: withKey(headers), signal, cache: "no-store" });
      } catch (e) {
        if (signal.aborted) return "aborted";
        await sleep(backoff(++failures), signal);
        continue;
      }
      if (resp.status === 404 || resp.status === 405) return "no-stream";
      if (resp.status === 401 || resp.status === 403) { await askForKey((await errorOf(resp)).message); continue; }
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

  // --- curves: one chart per quantity, one line per student, growing as rows arrive -----------------

  class Curves {
    constructor(container, job) {
      this.students = job.students.map((s) => `student ${s.student} (${s.arch})`);
      this.byStudent = this.students.map(() => new Map()); // epoch -> row
      this.pending = false;
      this.plots = CHARTS.map(([key, title]) => {
        const box = document.createElement("div");
        box.className = "chart";
        box.dataset.metric = key;
        container.appendChild(box);
        const opts = {
          title,
          width: Math.max(320, box.clientWidth - 16),
          height: 240,
          scales: { x: { time: false } },
          axes: [{ label: "epoch" }, { size: 60, values: (u, splits) => splits.map(tick) }],
          series: [{ label: "epoch" }, ...this.students.map((label, i) => ({
            label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true, points: { show: false },
          }))],
        };
        return { key, box, plot: new uPlot(opts, this.data(key), box) };
      });
      this.onResize = () => this.plots.forEach(({ box, plot }) => plot.setSize({ width: Math.max(320, box.clientWidth - 16), height: 240 }));
      window.addEventListener("resize", this.onResize);
    }

    data(key) {
      const epochs = [...new Set(this.byStudent.flatMap((m) => [...m.keys()]))].sort((a, b) => a - b);
      return [epochs, ...this.byStudent.map((m) => epochs.map((e) => (m.has(e) ? m.get(e)[key] : null)))];
    }

    add(row) {
      if (!this.byStudent[row.student]) return;
      this.byStudent[row.student].set(row.epoch, row);
      if (this.pending) return;
      this.pending = true;
      requestAnimationFrame(() => {
        this.pending = false;
        this.plots.forEach(({ key, box, plot }) => {
          const data = this.data(key);
          plot.setData(data);
          box.dataset.points = String(data[0].length); // for people and tests: epochs drawn
        });
      });
    }

    destroy() {
      window.removeEventListener("resize", this.onResize);
      this.plots.forEach(({ plot }) => plot.destroy());
    }
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
