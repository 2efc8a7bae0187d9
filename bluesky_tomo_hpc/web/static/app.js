// bluesky-tomo-hpc web page: plain JavaScript, no build step. Every request is relative to the
// page, so the app works at any mount point. Faults from the server arrive as {"error": "..."}
// and are shown in #message; nothing here throws into a blank page.
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

// ---------------------------------------------------------------------------- tabs and routes
function route() {
  clearError();
  const [name, arg] = (location.hash.slice(1) || "live").split("/", 2).map(decodeURIComponent);
  const tab = { live: "live", scans: "scans", run: "scans", recon: "scans", jobs: "jobs", job: "jobs", health: "health" }[name] || "live";
  document.querySelectorAll(".tab").forEach((el) => el.classList.toggle("hidden", el.id !== `tab-${tab}`));
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.tab === tab));
  if (tab === "live") loadFinals();
  if (tab === "scans") { if (name === "scans" || name === "run") searchRuns(name === "run" ? arg : null); if (name === "recon") openRecon(arg); }
  clearInterval(jobsTimer);
  if (tab === "jobs") { jobsTimer = setInterval(() => { loadJobs(); if (name === "job") openJob(arg); }, 2000); }
  if (tab === "jobs") { loadJobs(); loadStats(); if (name === "job") openJob(arg); else $("#job").classList.add("hidden"); }
  if (tab === "health") loadHealth();
}
let jobsTimer = null; // the Jobs tab refreshes itself while shown
window.addEventListener("hashchange", route);

// ---------------------------------------------------------------------------------------- live
window.liveLog = []; // {run_uid, seq, final, sent, received, shown}: what the tests and the benchmark read

async function showLive(msg) {
  const imgs = ["xy", "xz", "yz"].filter((p) => msg.slices[p]).map((p) => {
    const img = $(`#live-${p}`);
    img.src = msg.slices[p].png;
    $(`#live-${p}-index`).textContent = `at ${msg.slices[p].index}`;
    return img.decode().catch(() => null);
  });
  $("#live-run").textContent = msg.run_uid;
  const state = $("#live-state");
  state.textContent = msg.final ? (msg.refinement_pending ? "final (checking the centre)" : "final") : `running (update ${msg.seq})`;
  state.dataset.seq = msg.seq;
  state.dataset.final = msg.final ? "1" : "0";
  state.dataset.run = msg.run_uid;
  const p = msg.progress || {};
  const prog = $("#live-progress");
  prog.max = p.expected || 1;
  prog.value = p.used || 0;
  $("#live-count").textContent = `${p.used ?? "?"} / ${p.expected ?? "?"} projections` + (p.skipped ? `, ${p.skipped} skipped` : "");
  $("#live-center").textContent = msg.center === null ? "-" : `${fmtNum(msg.center)} px (${msg.center_source || "?"})`;
  $("#live-confidence").textContent = msg.center_confidence === null || msg.center_confidence === undefined ? (msg.final ? "not checked" : "at stop") : fmtNum(msg.center_confidence);
  const ul = $("#live-warnings");
  ul.replaceChildren(...(msg.warnings || []).map((w) => { const li = document.createElement("li"); li.textContent = w; return li; }));
  await Promise.all(imgs);
  window.liveLog.push({ run_uid: msg.run_uid, seq: msg.seq, final: msg.final, xy: msg.slices.xy ? `${msg.slices.xy.png.length}:${msg.slices.xy.png.slice(-48)}` : "", sent: msg.time, received: msg.received, shown: Date.now() / 1000 });
  if (msg.final) loadFinals();
}

function connectLive() {
  const source = new EventSource("api/live/stream");
  source.onopen = async () => {
    try {
      const who = await api("api/whoami");
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
      buttons.push(finalButton(`${f.run_uid.slice(0, 8)} (${fmtTime(f.time)})`, async () => showLive(await api(`api/live/final/${encodeURIComponent(f.run_uid)}`))));
    }
    for (const r of stored.reconstructions) {
      if (seen.has(r.raw_uid)) continue;
      seen.add(r.raw_uid);
      buttons.push(finalButton(`${r.raw_uid.slice(0, 8)} (${fmtTime(r.written_at)})`, () => showStoredPreview(r)));
    }
    box.replaceChildren(...buttons);
    if (!buttons.length) box.textContent = "No finished scan yet.";
  } catch (err) { showError(err.message); }
}

function finalButton(label, onclick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", () => onclick().catch((err) => showError(err.message)));
  return b;
}

async function showStoredPreview(r) {
  for (const p of ["xy", "xz", "yz"]) $(`#live-${p}`).src = `api/recon/${encodeURIComponent(r.key)}/preview/${p}.png`;
  $("#live-run").textContent = r.raw_uid;
  $("#live-state").textContent = "final (stored in Tiled)";
  $("#live-center").textContent = r.center === null ? "-" : `${fmtNum(r.center)} px`;
}

// -------------------------------------------------------------------------- scans and results
function epoch(value) { return value ? String(new Date(value).getTime() / 1000) : ""; }

async function searchRuns(uid) {
  const form = new FormData($("#search"));
  const q = new URLSearchParams();
  for (const k of ["scan_id", "sample", "plan"]) if (form.get(k)) q.set(k, form.get(k).trim());
  for (const k of ["since", "until"]) if (form.get(k)) q.set(k, epoch(form.get(k)));
  const tbody = $("#runs tbody");
  try {
    const runs = uid ? [await api(`api/runs/${encodeURIComponent(uid)}`)] : (await api(`api/runs?${q}`)).runs;
    tbody.replaceChildren();
    for (const r of runs) {
      const row = tbody.insertRow();
      row.dataset.uid = r.uid;
      cell(row, r.scan_id); cell(row, r.sample); cell(row, r.plan); cell(row, fmtTime(r.time)); cell(row, r.state);
      const td = row.insertCell();
      if (!r.reconstructions.length) td.textContent = "none yet";
      for (const rec of r.reconstructions) {
        const a = document.createElement("a");
        a.href = `#recon/${encodeURIComponent(rec.key)}`;
        a.className = `recon kind-${rec.kind}`;
        a.dataset.kind = rec.kind;
        a.textContent = `${rec.kind} ${rec.params_hash ?? ""} c=${fmtNum(rec.center)} ${rec.state}`;
        td.append(a, " ");
      }
    }
    if (!runs.length) { const row = tbody.insertRow(); cell(row, "No run matches.").colSpan = 6; }
  } catch (err) { showError(err.message); }
}
$("#search").addEventListener("submit", (e) => { e.preventDefault(); location.hash = "#scans"; searchRuns(null); });

const view = { key: null, shape: null, levels: 1, level: 0, zoom: 1, base: 1, index: { xy: 0, xz: 0, yz: 0 } };
const AXIS = { xy: 0, xz: 1, yz: 2 };

async function openRecon(key) {
  const box = $("#browser");
  box.classList.remove("hidden");
  $("#view-3d").classList.add("hidden");
  $("#browser-key").textContent = key;
  try {
    const info = await api(`api/recon/${encodeURIComponent(key)}`);
    view.key = key;
    $("#browser-info").textContent = `run ${info.raw_uid}, kind ${info.kind}, parameters ${info.params_hash}, centre ${fmtNum(info.center)} (confidence ${fmtNum(info.center_confidence)}), state ${info.state}`;
    if (!info.volume) {
      view.shape = null;
      for (const p of ["xy", "xz", "yz"]) $(`#view-${p}`).src = info.previews.includes(p) ? `api/recon/${encodeURIComponent(key)}/preview/${p}.png` : "";
      if (info.state === "writing") showError(`reconstruction ${key} is still being written; its volume is not there yet`);
      return;
    }
    view.shape = info.volume.shape;
    view.levels = info.volume.levels;
    view.level = 0; view.zoom = 1;
    view.base = Math.max(1, 256 / Math.max(...view.shape)); // small volumes are shown at least 256 px wide
    for (const p of ["xy", "xz", "yz"]) {
      const slider = $(`#index-${p}`);
      slider.max = view.shape[AXIS[p]] - 1;
      view.index[p] = Math.floor(view.shape[AXIS[p]] / 2);
      slider.value = view.index[p];
    }
    drawAll();
  } catch (err) { showError(err.message); view.key = null; }
}

function sliceUrl(p) {
  const q = new URLSearchParams({ index: view.index[p], level: view.level, lo: $("#lo").value, hi: $("#hi").value });
  return `api/recon/${encodeURIComponent(view.key)}/slice/${p}.png?${q}`;
}

async function drawSlice(p) {
  if (!view.key || !view.shape) return;
  const url = sliceUrl(p);
  const response = await fetch(url, { credentials: "same-origin" });
  if (!response.ok) {
    let msg = `HTTP ${response.status}`;
    try { msg = (await response.json()).error || msg; } catch (err) { /* not JSON */ }
    showError(msg);
    return;
  }
  const img = $(`#view-${p}`);
  const old = img.src;
  img.src = URL.createObjectURL(await response.blob());
  if (old.startsWith("blob:")) URL.revokeObjectURL(old);
  await img.decode().catch(() => null);
  img.style.width = `${img.naturalWidth * view.base * view.zoom * 2 ** view.level}px`;
  $(`#index-${p}-value`).textContent = view.index[p];
}

function drawAll() {
  $("#level").textContent = view.level;
  $("#level-note").textContent = view.level ? `1 voxel in ${2 ** view.level} per axis` : "full resolution";
  return Promise.all(["xy", "xz", "yz"].map(drawSlice));
}

let drawTimer = null;
function drawSoon(p) { clearTimeout(drawTimer); drawTimer = setTimeout(() => (p ? drawSlice(p) : drawAll()), 60); }
for (const p of ["xy", "xz", "yz"]) $(`#index-${p}`).addEventListener("input", (e) => { view.index[p] = Number(e.target.value); drawSoon(p); });
for (const id of ["#lo", "#hi"]) $(id).addEventListener("input", () => drawSoon(null));
function setZoom(z) {
  view.zoom = Math.min(8, Math.max(1 / 16, z));
  // coarser levels when zoomed out: about one voxel per screen pixel
  view.level = Math.max(0, Math.min(view.levels - 1, Math.floor(Math.log2(1 / view.zoom))));
  drawAll();
}
$("#zoom-in").addEventListener("click", () => setZoom(view.zoom * 2));
$("#zoom-out").addEventListener("click", () => setZoom(view.zoom / 2));

async function open3d() {
  const box = $("#view-3d");
  const status = $("#view-3d-status");
  box.classList.remove("hidden");
  if (!view.key || !view.shape) { status.textContent = "No volume to show in 3D."; return; }
  status.textContent = "Loading the 3D viewer ...";
  try {
    if (!window.niivue) {
      await new Promise((resolve, reject) => {
        const s = document.createElement("script");
        s.src = "viewer.js";
        s.onload = resolve;
        s.onerror = () => reject(new Error("the 3D viewer (niivue) is not installed in this package"));
        document.head.append(s);
      });
    }
    const canvas = $("#canvas-3d");
    if (!canvas.getContext("webgl2")) { status.textContent = "The 3D view needs WebGL2, which this browser does not offer."; return; }
    const nv = new window.niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: false });
    await nv.attachToCanvas(canvas);
    await nv.loadVolumes([{ url: `api/recon/${encodeURIComponent(view.key)}/volume.nii`, name: "volume.nii", colormap: "gray" }]);
    nv.setSliceType(nv.sliceTypeRender);
    status.textContent = "3D view (niivue): drag to rotate; every voxel of a shrunk copy (at most 128 per axis).";
    box.dataset.loaded = "1";
  } catch (err) { status.textContent = `3D view unavailable: ${err.message}`; }
}
$("#open-3d").addEventListener("click", open3d);

// ----------------------------------------------------------------------------------------- jobs
async function loadJobs() {
  try {
    const data = await api("api/jobs");
    const tbody = $("#jobs tbody");
    tbody.replaceChildren();
    for (const j of data.jobs) {
      const row = tbody.insertRow();
      row.dataset.job = j.job_id;
      row.dataset.state = j.state;
      const a = document.createElement("a");
      a.href = `#job/${encodeURIComponent(j.job_id)}`;
      a.textContent = j.job_id;
      row.insertCell().append(a);
      cell(row, j.state, `state state-${j.state}`); cell(row, j.executor); cell(row, j.attempts);
      cell(row, fmtTime(j.updated)); cell(row, j.run_uid.slice(0, 8)); cell(row, j.error || j.tiled_node || "");
    }
    if (!data.jobs.length) { const row = tbody.insertRow(); cell(row, data.note || "No jobs.").colSpan = 7; }
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
    const t0 = j.events.length ? j.events[0].time : 0;
    const ev = $("#job-events tbody");
    ev.replaceChildren();
    for (const e of j.events) { const row = ev.insertRow(); cell(row, e.state); cell(row, fmtTime(e.time)); cell(row, fmtNum(e.time - t0, 1)); cell(row, e.detail || ""); }
    const st = $("#job-stages tbody");
    st.replaceChildren();
    for (const [k, v] of Object.entries(j.stages)) { const row = st.insertRow(); cell(row, k); cell(row, fmtNum(v, 2)); }
    $("#job-log").textContent = j.log_tail;
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
  } catch (err) { $("#health-when").textContent = ""; showError(err.message); }
}
$("#health-refresh").addEventListener("click", loadHealth);

connectLive();
route();
