// The scan's health under the live slices: a timeline over the projections (intensity against
// the flats, saturated pixels, sideways and vertical shifts) with each finding as a coloured band,
// and the findings in words. Self-contained: it inserts its own block after the slices of the Live
// tab and listens to the same server-sent events as app.js (api/live/stream), reading
// `scan_health` of each message (bluesky_tomo_hpc.engine.scan_health.ScanHealth.summary).
(() => {
  "use strict";
  const SVG = "http://www.w3.org/2000/svg";
  const W = 900, TRACK = 46, GAP = 8, LEFT = 92;
  const COLOURS = { error: "#d62728", warning: "#ff9f1a", info: "#9aa0a6" };
  const TRACKS = [
    { key: "intensity", label: "intensity", min: 0, max: 1.2, colour: "#1f77b4", fmt: (v) => v.toFixed(2) },
    { key: "saturated", label: "saturated", min: 0, max: null, colour: "#9467bd", fmt: (v) => (100 * v).toFixed(2) + " %" },
    { key: "shift_x", label: "shift x (px)", min: null, max: null, colour: "#2ca02c", fmt: (v) => v.toFixed(1) },
    { key: "shift_z", label: "shift z (px)", min: null, max: null, colour: "#8c564b", fmt: (v) => v.toFixed(1) },
  ];

  function el(tag, attrs, parent) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (parent) parent.appendChild(node);
    return node;
  }

  function block() {
    let box = document.getElementById("health-timeline");
    if (box) return box;
    const slices = document.querySelector("#tab-live .slices");
    if (!slices) return null;
    box = document.createElement("div");
    box.id = "health-timeline";
    box.innerHTML = '<h2>Scan health <span id="health-status" class="status"></span></h2>' +
      '<svg id="health-svg" role="img" aria-label="scan health timeline"></svg>' +
      '<ul id="health-findings" class="warnings"></ul>';
    slices.insertAdjacentElement("afterend", box);
    return box;
  }

  function range(values, track) {
    const finite = values.filter((v) => v !== null && Number.isFinite(v));
    let lo = track.min, hi = track.max;
    if (lo === null) lo = Math.min(-1, ...finite);
    if (hi === null) hi = Math.max(track.key === "saturated" ? 1e-4 : 1, ...finite);
    return [lo, hi > lo ? hi : lo + 1];
  }

  function draw(health) {
    const box = block();
    if (!box || !health || !health.timeline) return;
    const t = health.timeline, n = t.index.length;
    const last = Math.max(health.n_expected || 0, health.n_projections || 0, 1);
    const x = (i) => LEFT + (W - LEFT - 10) * (i / last);
    const svg = document.getElementById("health-svg");
    const height = TRACKS.length * (TRACK + GAP) + 24;
    svg.setAttribute("viewBox", `0 0 ${W} ${height}`);
    svg.setAttribute("width", W);
    svg.setAttribute("height", height);
    svg.replaceChildren();
    for (const f of health.findings || []) {  // bands first, under the curves
      if (f.role && f.role !== "projection") continue;
      const band = el("rect", { x: x(f.first), y: 0, width: Math.max(2, x(f.last + 1) - x(f.first)),
        height: TRACKS.length * (TRACK + GAP), fill: COLOURS[f.severity] || "#ccc", opacity: 0.28,
        class: `finding ${f.kind} ${f.severity}` }, svg);
      el("title", {}, band).textContent = `${f.severity}: ${f.message}`;
    }
    TRACKS.forEach((track, k) => {
      const top = k * (TRACK + GAP), values = t[track.key] || [];
      const [lo, hi] = range(values, track);
      const y = (v) => top + TRACK - (TRACK * (v - lo)) / (hi - lo);
      el("rect", { x: LEFT, y: top, width: W - LEFT - 10, height: TRACK, fill: "none", stroke: "#ddd" }, svg);
      const label = el("text", { x: 4, y: top + TRACK / 2 + 4, "font-size": 11, fill: "#444" }, svg);
      label.textContent = track.label;
      const pts = [];
      for (let i = 0; i < n; i++) {
        const v = values[i];
        if (v === null || !Number.isFinite(v)) continue;
        pts.push(`${x(t.index[i]).toFixed(1)},${y(Math.min(hi, Math.max(lo, v))).toFixed(1)}`);
      }
      if (pts.length) el("polyline", { points: pts.join(" "), fill: "none", stroke: track.colour, "stroke-width": 1.4,
        class: `track ${track.key}` }, svg);
      const scale = el("text", { x: W - 8, y: top + 10, "font-size": 9, fill: "#888", "text-anchor": "end" }, svg);
      scale.textContent = `${track.fmt(lo)} .. ${track.fmt(hi)}`;
    });
    const axis = el("text", { x: LEFT, y: height - 6, "font-size": 11, fill: "#444" }, svg);
    axis.textContent = `projections 0 .. ${last - 1}`;
    const status = document.getElementById("health-status");
    status.textContent = `${health.status}${health.final ? " (final)" : ""}`;
    status.dataset.status = health.status;
    const list = document.getElementById("health-findings");
    list.replaceChildren();
    for (const f of health.findings || []) {
      const item = document.createElement("li");
      item.className = `finding ${f.severity}`;
      item.textContent = `${f.severity.toUpperCase()} ${f.kind}: ${f.message}`;
      list.appendChild(item);
    }
    window.healthLog = window.healthLog || [];
    window.healthLog.push({ status: health.status, findings: (health.findings || []).length, final: !!health.final });
  }

  function listen() {
    if (!window.EventSource || !document.querySelector("#tab-live")) return;
    const source = new EventSource("api/live/stream");
    source.onmessage = (event) => {
      try { draw(JSON.parse(event.data).scan_health); } catch (err) { console.error("scan health:", err); }
    };
  }
  window.drawScanHealth = draw;  // app.js may call it when it shows a previous scan's final
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", listen); else listen();
})();
