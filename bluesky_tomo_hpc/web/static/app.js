// bluesky-tomo-hpc web page: plain JavaScript, no build step. Every request is relative to the
// page, so the app works at any mount point. Faults from the server arrive as {"error": "..."}
// and are shown in #message; nothing here throws into a blank page. This file: the tabs and
// routes, the live scan, the scans table, jobs and health; the slice viewer is slices.js and
// recon.js, the 3D view volume3d.js.
"use strict";

const $ = (sel) => document.querySelector(sel);
const fmtTime = (t) => (t ? new Date(t * 1000).toLocaleString() : "-");
const fmtNum = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? "-" : Number(x).toFixed(d));

function showError(text) {
  const box = $("#message");
  box.textContent = text;
  box.classList.remove("hidden");
}
function clearError() { $("#message").classList.add("hidden"); }

async function api(path, options = {}) {
  let response;
  try {
    response = await fetch(path, { credentials: "same-origin", ...options });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(`the server did not answer (${err.message})`);
  }
  if (response.status === 401) { location.href = "login"; throw new Error("please log in"); }
  let body = null;
  try { body = await response.json(); } catch (err) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `${path}: HTTP ${response.status}`);
  return body;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text === null || text === undefined ? "" : String(text);
  if (cls) td.className = cls;
  return td;
}

function link(href, text, title) {
  const a = document.createElement("a");
  a.href = href;
  a.textContent = text;
  if (title) a.title = title;
  return a;
}

// ---------------------------------------------------------------------------- tabs and routes
// a route is "#name/arg?query": the query holds a view's state (slices, zoom, window, ...)
function parseHash() {
  const raw = location.hash.slice(1) || "live";
  const [path, query = ""] = raw.split("?", 2);
  const [name, arg] = path.split("/", 2).map(decodeURIComponent);
  return { name, arg, query: new URLSearchParams(query) };
}

let timers = [];
function every(ms, fn) { timers.push(setInterval(fn, ms)); }

function route() {
  clearError();
  const { name, arg, query } = parseHash();
  const tab = { live: "live", scans: "scans", run: "scans", recon: "scans", jobs: "jobs", job: "jobs", health: "health" }[name] || "live";
  document.querySelectorAll(".tab").forEach((el) => el.classList.toggle("hidden", el.id !== `tab-${tab}`));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  timers.forEach(clearInterval);
  timers = [];
  if (tab === "live") loadFinals();
  if (tab === "scans") {
    // the table is filled for every scans route (a reloaded or pasted #recon link included) and
    // refreshes itself, so a scan that finishes changes its row without a click
    const uid = name === "run" ? arg : null;
    every(5000, () => searchRuns(uid, { quiet: true }));
    // a reconstruction's slices first: the catalog search would slow their reads
    if (name === "recon") openRecon(arg, query).finally(() => searchRuns(uid));
    else { closeRecon(); searchRuns(uid); }
  }
  if (tab === "jobs") {
    const refresh = () => { loadJobs(); loadStats(); if (name === "job") openJob(arg); };
    refresh();
    if (name !== "job") $("#job").classList.add("hidden");
    every(2000, refresh);
  }
  if (tab === "health") loadHealth();
}
window.addEventListener("hashchange", route);

// ---------------------------------------------------------------------------------------- live
window.liveLog = []; // {run_uid, seq, final, sent, received, shown}: what the tests and the benchmark read

function setLiveFields({ run, state, used, expected, skipped, center, confidence, warnings, indices }) {
  $("#live-run").textContent = run;
  $("#live-state").textContent = state;
  const prog = $("#live-progress");
  prog.max = expected || 1;
  prog.value = used || 0;
  $("#live-count").textContent = used === undefined || used === null ? "" : `${used} / ${expected ?? "?"} projections` + (skipped ? `, ${skipped} skipped` : "");
  $("#live-center").textContent = center;
  $("#live-confidence").textContent = confidence;
  $("#live-warnings").replaceChildren(...(warnings || []).map((w) => { const li = document.createElement("li"); li.textContent = w; return li; }));
  for (const p of ["xy", "xz", "yz"]) $(`#live-${p}-index`).textContent = indices[p] ?? "";
}

async function showLive(msg) {
  const imgs = ["xy", "xz", "yz"].filter((p) => msg.slices[p]).map((p) => {
    const img = $(`#live-${p}`);
    img.src = msg.slices[p].png;
    return img.decode().catch(() => null);
  });
  const p = msg.progress || {};
  setLiveFields({
    run: msg.run_uid,
    state: msg.final ? (msg.refinement_pending ? "final (checking the centre)" : "final") : `running (update ${msg.seq})`,
    used: p.used, expected: p.expected, skipped: p.skipped,
    center: msg.center === null ? "-" : `${fmtNum(msg.center)} px (${msg.center_source || "?"})`,
    confidence: msg.center_confidence === null || msg.center_confidence === undefined ? (msg.final ? "not checked" : "at stop") : fmtNum(msg.center_confidence),
    warnings: msg.warnings,
    indices: Object.fromEntries(["xy", "xz", "yz"].map((q) => [q, msg.slices[q] ? `at ${msg.slices[q].index}` : ""])),
  });
  const state = $("#live-state");
  state.dataset.seq = msg.seq;
  state.dataset.final = msg.final ? "1" : "0";
  state.dataset.run = msg.run_uid;
  setLiveSliders(msg);
  await Promise.all(imgs);
  window.liveLog.push({ run_uid: msg.run_uid, seq: msg.seq, final: msg.final, xy: msg.slices.xy ? `${msg.slices.xy.png.length}:${msg.slices.xy.png.slice(-48)}` : "", sent: msg.time, received: msg.received, shown: Date.now() / 1000 });
  if (msg.final) loadFinals();
}

function connectLive() {
  const source = new EventSource("api/live/stream");
  source.onopen = async () => {
    try {
      const who = await api("api/whoami");
      liveControl = Boolean(who.live.control);
      $("#live-feed").textContent = who.live.address ? `Live preview from ${who.live.address}` : "No live preview stream configured (set preview.zmq_address, or serve --preview ADDRESS).";
    } catch (err) { showError(err.message); }
  };
  source.onmessage = (event) => { showLive(JSON.parse(event.data)).catch((err) => showError(`live preview: ${err.message}`)); };
  source.onerror = () => { $("#live-feed").textContent = "Live preview connection lost; reconnecting ..."; };
}

async function loadFinals() {
  try {
    const [live, stored] = await Promise.all([api("api/live"), api("api/recon?kind=preview&limit=20").catch(() => ({ reconstructions: [] }))]);
    const box = $("#live-finals");
    const seen = new Set();
    const buttons = [];
    for (const f of live.finals) {
      seen.add(f.run_uid);
      buttons.push(finalButton(`${f.run_uid.slice(0, 8)} (${fmtTime(f.time)})`, async () => showLive(await api(`api/live/final/${encodeURIComponent(f.run_uid)}`)), f.run_uid, "live"));
    }
    for (const r of stored.reconstructions) {
      if (seen.has(r.raw_uid)) continue;
      seen.add(r.raw_uid);
      buttons.push(finalButton(`${r.raw_uid.slice(0, 8)} (${fmtTime(r.written_at)})`, () => showStoredPreview(r), r.raw_uid, "stored"));
    }
    box.replaceChildren(...buttons);
    if (!buttons.length) box.textContent = "No finished scan yet.";
  } catch (err) { showError(err.message); }
}

function finalButton(label, onclick, run, source) {
  const b = document.createElement("button");
  b.type = "button";
  b.dataset.run = run;
  b.dataset.source = source;
  b.textContent = label;
  b.addEventListener("click", () => onclick().catch((err) => showError(err.message)));
  return b;
}

// ------------------------------------------------ live slice positions, moved from the page
// While a scan runs, each slider asks the preview to move its slice (POST api/live/slices); the
// slice comes back at its new place in the next update. A slider waiting for its move keeps the
// wanted value; a final or stored preview cannot move (the sliders are off).
let liveControl = false; // the server knows where the preview takes moves (whoami.live.control)
let liveRun = null; // the run whose slices the sliders move (a running scan), else null
const liveWanted = {}; // plane -> index asked for and not seen in an update yet

function setLiveSliders(msg) {
  const shape = (p) => (msg && msg.slices && msg.slices[p] ? msg.slices[p].shape : [0, 0]);
  // xy moves along z (xz's rows), xz along y (xy's rows), yz along x (xy's columns)
  const bounds = { xy: shape("xz")[0], xz: shape("xy")[0], yz: shape("xy")[1] };
  liveRun = msg && !msg.final && liveControl ? msg.run_uid : null;
  if (!liveRun) for (const p in liveWanted) delete liveWanted[p];
  for (const p of ["xy", "xz", "yz"]) {
    const input = $(`#live-${p}-pos`);
    input.disabled = !liveRun || !(bounds[p] > 0);
    input.max = String(Math.max(0, bounds[p] - 1));
    const index = msg && msg.slices && msg.slices[p] ? msg.slices[p].index : null;
    if (liveWanted[p] !== undefined && index === liveWanted[p]) delete liveWanted[p];
    if (index !== null && liveWanted[p] === undefined && !input.matches(":active")) input.value = String(index);
  }
  $("#live-move").textContent = Object.keys(liveWanted).length
    ? `moving ${Object.entries(liveWanted).map(([p, i]) => `${p} to ${i}`).join(", ")} ...` : "";
}

async function moveLiveSlice(input) {
  const plane = input.dataset.plane, index = Number(input.value);
  if (!liveRun || !Number.isInteger(index)) return;
  liveWanted[plane] = index;
  $("#live-move").textContent = `moving ${plane} to ${index} ...`;
  try {
    const q = new URLSearchParams({ run: liveRun, [plane]: String(index) });
    await api(`api/live/slices?${q}`, { method: "POST" });
  } catch (err) {
    delete liveWanted[plane];
    $("#live-move").textContent = "";
    showError(`moving the ${plane} slice: ${err.message}`);
  }
}
for (const input of document.querySelectorAll(".live-pos")) input.addEventListener("change", () => moveLiveSlice(input));

// a preview stored in Tiled: every field is set from it (nothing of the last live run stays)
async function showStoredPreview(r) {
  setLiveSliders(null);
  for (const p of ["xy", "xz", "yz"]) $(`#live-${p}`).src = `api/recon/${encodeURIComponent(r.key)}/preview/${p}.png`;
  const pv = r.preview || {};
  setLiveFields({
    run: r.raw_uid, state: "final (stored in Tiled)", used: pv.used, expected: pv.expected, skipped: pv.skipped,
    center: r.center === null || r.center === undefined ? "-" : `${fmtNum(r.center)} px` + (pv.center_source ? ` (${pv.center_source})` : ""),
    confidence: pv.confidence === null || pv.confidence === undefined ? "not checked" : fmtNum(pv.confidence),
    warnings: pv.warnings || [],
    indices: Object.fromEntries(["xy", "xz", "yz"].map((q) => [q, pv.indices && pv.indices[q] !== undefined ? `at ${pv.indices[q]}` : ""])),
  });
  const state = $("#live-state");
  state.dataset.final = "1"; state.dataset.run = r.raw_uid; state.dataset.seq = "-1";
}

// -------------------------------------------------------------------------- scans and results
function epoch(value) { return value ? String(new Date(value).getTime() / 1000) : ""; }

let runsShown = []; // the runs in the table (recon.js offers the others of the same run to compare)

async function searchRuns(uid, { quiet = false } = {}) {
  const form = new FormData($("#search"));
  const q = new URLSearchParams();
  for (const k of ["scan_id", "sample", "plan"]) if (form.get(k)) q.set(k, form.get(k).trim());
  for (const k of ["since", "until"]) if (form.get(k)) q.set(k, epoch(form.get(k)));
  const tbody = $("#runs tbody");
  try {
    let runs, note = "";
    if (uid) runs = [await api(`api/runs/${encodeURIComponent(uid)}`)];
    else ({ runs, note = "" } = await api(`api/runs?${q}`));
    runsShown = runs;
    tbody.replaceChildren();
    for (const r of runs) {
      const row = tbody.insertRow();
      row.dataset.uid = r.uid;
      row.dataset.state = r.state;
      cell(row, r.scan_id);
      row.insertCell().append(link(`#run/${encodeURIComponent(r.uid)}`, r.uid.slice(0, 8), r.uid));
      cell(row, r.sample); cell(row, r.plan); cell(row, fmtTime(r.time)); cell(row, r.state, `state run-${r.state}`);
      const td = row.insertCell();
      if (!r.reconstructions.length) td.textContent = r.state === "running" ? "(scan running)" : "none yet";
      for (const rec of r.reconstructions) {
        const a = link(`#recon/${encodeURIComponent(rec.key)}`, `${rec.kind} ${rec.params_hash ?? ""} c=${fmtNum(rec.center)} ${rec.state}`, rec.key);
        a.className = `recon kind-${rec.kind}`;
        a.dataset.kind = rec.kind;
        td.append(a, " ");
      }
    }
    if (!runs.length) { const row = tbody.insertRow(); row.className = "empty"; cell(row, note || "No run matches.").colSpan = 7; }
    $("#runs-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (err) { if (!quiet) showError(err.message); else $("#runs-updated").textContent = `not updated: ${err.message}`; }
}
$("#search").addEventListener("submit", (e) => { e.preventDefault(); location.hash = "#scans"; searchRuns(null); });

// ----------------------------------------------------------------------------------------- jobs
const JOB_STEPS = ["NEW", "SUBMITTED", "RUNNING", "DONE", "REGISTERED"];

function nodeLink(node) {
  // "processed/KEY" (or a full URI ending so): a link to the reconstruction in the slice viewer
  const key = String(node).split("/").filter(Boolean).pop();
  return link(`#recon/${encodeURIComponent(key)}`, node, "open in the slice viewer");
}

async function loadJobs() {
  try {
    const data = await api("api/jobs");
    const tbody = $("#jobs tbody");
    tbody.replaceChildren();
    for (const j of data.jobs) {
      const row = tbody.insertRow();
      row.dataset.job = j.job_id;
      row.dataset.state = j.state;
      row.insertCell().append(link(`#job/${encodeURIComponent(j.job_id)}`, j.job_id));
      cell(row, j.state, `state state-${j.state}`); cell(row, j.executor); cell(row, j.attempts);
      cell(row, fmtTime(j.updated)); cell(row, j.run_uid.slice(0, 8));
      const detail = row.insertCell();
      if (j.error) detail.textContent = j.error;
      else if (j.tiled_node) detail.append(nodeLink(j.tiled_node));
    }
    if (!data.jobs.length) { const row = tbody.insertRow(); cell(row, data.note || "No jobs.").colSpan = 7; }
    $("#jobs-updated").textContent = `updated ${new Date().toLocaleTimeString()} (every 2 s)`;
  } catch (err) { showError(err.message); }
}

async function openJob(id) {
  const box = $("#job");
  try {
    const j = await api(`api/jobs/${encodeURIComponent(id)}`);
    box.classList.remove("hidden");
    $("#job-id").textContent = j.job_id;
    $("#job-state").textContent = j.state;
    $("#job-state").dataset.state = j.state;
    const step = JOB_STEPS.indexOf(j.state);
    const prog = $("#job-progress");
    prog.classList.toggle("hidden", step < 0);
    prog.max = JOB_STEPS.length - 1; prog.value = Math.max(0, step);
    $("#job-progress-text").textContent = step < 0 ? "" : `${JOB_STEPS.slice(0, step + 1).join(" > ")}${j.terminal ? "" : " ..."}`;
    const t0 = j.events.length ? j.events[0].time : 0;
    const ev = $("#job-events tbody");
    ev.replaceChildren();
    for (const e of j.events) { const row = ev.insertRow(); cell(row, e.state); cell(row, fmtTime(e.time)); cell(row, fmtNum(e.time - t0, 1)); cell(row, e.detail || ""); }
    const st = $("#job-stages tbody");
    st.replaceChildren();
    for (const [k, v] of Object.entries(j.stages)) { const row = st.insertRow(); cell(row, k); cell(row, fmtNum(v, 2)); }
    const log = $("#job-log");
    const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    log.textContent = j.log_tail;
    if (atEnd) log.scrollTop = log.scrollHeight; // follow the log while it grows
    if (j.tiled_node) { $("#job-log").dataset.node = j.tiled_node; }
    $("#job-retry").disabled = !["FAILED", "CANCELLED"].includes(j.state);
    $("#job-cancel").disabled = j.terminal;
  } catch (err) { box.classList.add("hidden"); showError(err.message); }
}

async function jobAction(action) {
  const id = $("#job-id").textContent;
  if (action === "cancel" && !confirm(`Cancel job ${id}?`)) return;
  try {
    await api(`api/jobs/${encodeURIComponent(id)}/${action}`, { method: "POST" });
    clearError();
  } catch (err) { showError(err.message); }
  openJob(id); loadJobs();
}
$("#job-retry").addEventListener("click", () => jobAction("retry"));
$("#job-cancel").addEventListener("click", () => jobAction("cancel"));

async function loadStats() {
  try {
    const { stages } = await api("api/jobs/stats");
    const tbody = $("#stats tbody");
    tbody.replaceChildren();
    for (const s of stages) {
      const row = tbody.insertRow();
      row.dataset.stage = s.stage; row.dataset.n = s.n;
      cell(row, s.stage); cell(row, s.n); cell(row, `${fmtNum(s.mean)} ± ${fmtNum(s.sd)}`); cell(row, fmtNum(s.median)); cell(row, `${fmtNum(s.min)} - ${fmtNum(s.max)}`);
    }
    if (!stages.length) { const row = tbody.insertRow(); cell(row, "No job has finished a stage yet.").colSpan = 5; }
    plotStats(stages);
  } catch (err) { showError(err.message); }
}

// one row per stage: range as a thin line, mean +/- sd as a bar, median as a tick (log-free, seconds)
function plotStats(stages) {
  const svg = $("#stats-plot");
  const NS = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  if (!stages.length) return;
  const W = 420, left = 90, right = 20, rowH = 28, top = 10;
  svg.setAttribute("height", String(top + rowH * stages.length + 30));
  const max = Math.max(...stages.map((s) => Math.max(s.max, s.mean + s.sd))) || 1;
  const x = (v) => left + (W - left - right) * (v / max);
  const el = (name, attrs, text) => { const e = document.createElementNS(NS, name); for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v); if (text) e.textContent = text; svg.append(e); return e; };
  stages.forEach((s, i) => {
    const y = top + i * rowH + rowH / 2;
    el("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" }, s.stage);
    el("line", { x1: x(s.min), x2: x(s.max), y1: y, y2: y, class: "range" });
    el("rect", { x: x(Math.max(0, s.mean - s.sd)), y: y - 7, width: Math.max(1, x(s.mean + s.sd) - x(Math.max(0, s.mean - s.sd))), height: 14, class: "sd" });
    el("line", { x1: x(s.median), x2: x(s.median), y1: y - 9, y2: y + 9, class: "median" });
  });
  const yAxis = top + rowH * stages.length + 14;
  for (const f of [0, 0.5, 1]) el("text", { x: x(f * max), y: yAxis, "text-anchor": "middle", class: "axis" }, `${fmtNum(f * max, 1)} s`);
}

// --------------------------------------------------------------------------------------- health
async function loadHealth() {
  const tbody = $("#health tbody");
  $("#health-when").textContent = "checking ...";
  try {
    const h = await api("api/health");
    tbody.replaceChildren();
    for (const c of h.checks) { const row = tbody.insertRow(); row.dataset.check = c.name; cell(row, c.status.toUpperCase(), `status-${c.status}`); cell(row, c.name); cell(row, c.message); }
    $("#health-when").textContent = `checked ${fmtTime(h.checked_at)}; exit code ${h.exit_code}`;
    $("#health-when").dataset.exit = h.exit_code;
  } catch (err) { $("#health-when").textContent = ""; showError(err.message); }
}
$("#health-refresh").addEventListener("click", loadHealth);

connectLive();
