// The slice viewer: three orthogonal views of a reconstruction drawn on canvases from float
// values (so the value under the cursor, one window shared by every view and colour maps are
// exact), linked by a click, sliced by the wheel, panned by a drag and zoomed at the cursor.
// Slices are read through the server at the multiscale level that gives about one voxel per
// screen pixel; a view only ever shows the newest slice asked for (an older request still on its
// way is cancelled, and an older answer is dropped).
"use strict";

const PLANES = ["xy", "xz", "yz"];
const AXIS = { xy: 0, xz: 1, yz: 2 }; // the volume axis (z, y, x) a plane's index runs along

const V = {
  key: null, keyB: null, mode: "side", shape: null, levels: 1, level: 0, zoom: 1, fit: 1,
  index: { xy: 0, xz: 0, yz: 0 }, pan: { xy: [0, 0], xz: [0, 0], yz: [0, 0] },
  win: [0, 1], auto: [0, 1], diffWin: null, hist: null, cmap: "gray", voxelUm: null, unit: "",
  seq: {}, inflight: {}, cache: new Map(), shown: {}, onchange: null,
};
window.viewerLog = []; // {side, plane, index, level, asked, shown}: read by the tests and the benchmark

// ---------------------------------------------------------------------------------- geometry
// a plane's (rows, cols) at full resolution
function planeDims(p) { const [nz, ny, nx] = V.shape; return { xy: [ny, nx], xz: [nz, nx], yz: [nz, ny] }[p]; }
// (plane, col, row) at full resolution -> voxel [z, y, x]
function toVoxel(p, col, row) {
  const i = V.index[p];
  return { xy: [i, row, col], xz: [row, i, col], yz: [row, col, i] }[p];
}
function scale() { return V.fit * V.zoom; } // screen px per full-resolution voxel
function levelFor(s) { return Math.max(0, Math.min(V.levels - 1, Math.floor(Math.log2(1 / s)))); }
function canvasOf(side, p) { return $(side === "b" ? `#view-b-${p}` : `#view-${p}`); }
function screenToPlane(p, canvas, ev) {
  const r = canvas.getBoundingClientRect();
  const s = scale();
  const [cx, cy] = V.pan[p];
  return [cx + (ev.clientX - r.left - r.width / 2) / s, cy + (ev.clientY - r.top - r.height / 2) / s];
}

// ------------------------------------------------------------------------------------ loading
function cacheKey(key, p, index, level) { return `${key}|${p}|${index}|${level}`; }

async function fetchSlice(key, p, index, level, signal) {
  const ck = cacheKey(key, p, index, level);
  if (V.cache.has(ck)) { const hit = V.cache.get(ck); V.cache.delete(ck); V.cache.set(ck, hit); return hit; }
  const url = `api/recon/${encodeURIComponent(key)}/slice/${p}.f32?index=${index}&level=${level}`;
  const response = await fetch(url, { credentials: "same-origin", signal });
  if (!response.ok) {
    let msg = `HTTP ${response.status}`;
    try { msg = (await response.json()).error || msg; } catch (err) { /* not JSON */ }
    throw new Error(msg);
  }
  const where = JSON.parse(response.headers.get("X-Slice"));
  const slice = { values: new Float32Array(await response.arrayBuffer()), rows: where.rows, cols: where.cols, level, index };
  V.cache.set(ck, slice);
  while (V.cache.size > 60) V.cache.delete(V.cache.keys().next().value);
  return slice;
}

// the newest request of a (side, plane) wins: an older answer arriving late is not drawn
async function loadPlane(side, p, asked = performance.now()) {
  const key = side === "b" ? V.keyB : V.key;
  if (!key || !V.shape) return;
  const id = `${side}${p}`;
  const mine = (V.seq[id] = (V.seq[id] || 0) + 1);
  const index = V.index[p], level = V.level;
  if (V.inflight[id]) V.inflight[id].abort(); // the slider moved on: that slice is not wanted
  const ctl = (V.inflight[id] = new AbortController());
  try {
    const slice = await fetchSlice(key, p, index, level, ctl.signal);
    if (V.seq[id] !== mine) return;
    V.shown[id] = slice;
    if (side === "a" && V.mode === "diff" && V.keyB) {
      const other = await fetchSlice(V.keyB, p, index, level, ctl.signal);
      if (V.seq[id] !== mine) return;
      V.shown[`diff${p}`] = other;
    }
    draw(side, p);
    window.viewerLog.push({ side, plane: p, index, level, asked, shown: performance.now() });
  } catch (err) { if (V.seq[id] === mine) showError(err.message); } finally { if (V.inflight[id] === ctl) delete V.inflight[id]; }
}

function loadAll() {
  const sides = V.keyB && V.mode === "side" ? ["a", "b"] : ["a"];
  return Promise.all(sides.flatMap((s) => PLANES.map((p) => loadPlane(s, p))));
}

// ------------------------------------------------------------------------------------ drawing
function sliceValues(side, p) {
  const a = V.shown[`${side}${p}`];
  if (!a) return null;
  if (side === "a" && V.mode === "diff" && V.keyB) {
    const b = V.shown[`diff${p}`];
    if (!b || b.values.length !== a.values.length) return null;
    const d = new Float32Array(a.values.length);
    for (let i = 0; i < d.length; i++) d[i] = a.values[i] - b.values[i];
    return { ...a, values: d };
  }
  return a;
}

function currentWindow() { return V.mode === "diff" && V.keyB ? V.diffWin || [-1, 1] : V.win; }
function currentLut() { return COLORMAPS[V.mode === "diff" && V.keyB ? "difference" : V.cmap]; }

function draw(side, p) {
  const canvas = canvasOf(side, p);
  const s = sliceValues(side, p);
  const ctx = canvas.getContext("2d");
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
  if (!s) return;
  if (side === "a" && V.mode === "diff" && !V.diffWin) {
    let m = 0;
    for (const v of s.values) if (Math.abs(v) > m && Number.isFinite(v)) m = Math.abs(v);
    V.diffWin = [-(m || 1), m || 1];
    updateWindowPanel();
  }
  const [lo, hi] = currentWindow();
  const off = new OffscreenCanvas(s.cols, s.rows);
  const octx = off.getContext("2d");
  const img = octx.createImageData(s.cols, s.rows);
  colorize(s.values, lo, hi, currentLut(), img.data);
  octx.putImageData(img, 0, 0);
  const sc = scale(), step = 2 ** s.level;
  const [cx, cy] = V.pan[p];
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(off, w / 2 - cx * sc, h / 2 - cy * sc, s.cols * step * sc, s.rows * step * sc);
  // where the other two views cut this one
  const [vz, vy, vx] = [V.index.xy, V.index.xz, V.index.yz];
  const [col, row] = { xy: [vx, vy], xz: [vx, vz], yz: [vy, vz] }[p];
  ctx.strokeStyle = "rgba(255, 200, 0, 0.55)"; ctx.lineWidth = 1;
  const X = Math.round(w / 2 + (col + 0.5 - cx) * sc) + 0.5, Y = Math.round(h / 2 + (row + 0.5 - cy) * sc) + 0.5;
  ctx.beginPath(); ctx.moveTo(X, 0); ctx.lineTo(X, h); ctx.moveTo(0, Y); ctx.lineTo(w, Y); ctx.stroke();
  canvas.dataset.index = s.index; canvas.dataset.level = s.level;
  canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
}

function redrawAll() {
  for (const side of ["a", "b"]) for (const p of PLANES) if (V.shown[`${side}${p}`]) draw(side, p);
}

// ------------------------------------------------------------------------------- interaction
function notify() { if (V.onchange) V.onchange(); }

function setIndex(p, value, asked) {
  const n = planeDims(p) && V.shape[AXIS[p]];
  const i = Math.max(0, Math.min(n - 1, Math.round(value)));
  if (i === V.index[p]) return;
  V.index[p] = i;
  $(`#index-${p}`).value = i;
  $(`#index-${p}-value`).textContent = i;
  for (const side of V.keyB && V.mode === "side" ? ["a", "b"] : ["a"]) {
    loadPlane(side, p, asked);
    for (const q of PLANES) if (q !== p && V.shown[`${side}${q}`]) draw(side, q); // crosshair
  }
  notify();
}

function setZoom(z, anchor) {
  const before = scale();
  V.zoom = Math.min(64, Math.max(1 / 64, z));
  if (anchor) { // keep the voxel under the cursor where it is
    const { p, x, y } = anchor;
    const after = scale();
    V.pan[p] = [x - (x - V.pan[p][0]) * (before / after), y - (y - V.pan[p][1]) * (before / after)];
  }
  const level = levelFor(scale());
  $("#level").textContent = level;
  $("#level-note").textContent = level ? `1 voxel in ${2 ** level} per axis` : "full resolution";
  if (level !== V.level) { V.level = level; loadAll(); } else redrawAll();
  notify();
}

function fitViews() {
  const vp = $("#view-xy").parentElement;
  const w = vp.clientWidth || 360, h = vp.clientHeight || 360;
  V.fit = Math.min(...PLANES.map((p) => { const [r, c] = planeDims(p); return Math.min(w / c, h / r); }));
  for (const p of PLANES) { const [r, c] = planeDims(p); V.pan[p] = [c / 2, r / 2]; }
  setZoom(1);
}

function readout(side, p, canvas, ev) {
  const [col, row] = screenToPlane(p, canvas, ev);
  const [R, C] = planeDims(p);
  if (col < 0 || row < 0 || col >= C || row >= R) { $("#cursor-value").textContent = "-"; return; }
  const vox = toVoxel(p, Math.floor(col), Math.floor(row));
  const s = sliceValues(side, p);
  let value = "-";
  if (s) {
    const st = 2 ** s.level;
    const v = s.values[Math.floor(row / st) * s.cols + Math.floor(col / st)];
    value = `${Number.isFinite(v) ? v.toPrecision(5) : v} ${V.unit}` + (s.level ? ` (level ${s.level})` : "") + (side === "a" && V.mode === "diff" && V.keyB ? " (A - B)" : "");
  }
  $("#cursor-value").textContent = value;
  $("#cursor-voxel").textContent = vox.join(", ");
  $("#cursor-physical").textContent = V.voxelUm ? `${vox.map((v) => (v * V.voxelUm).toFixed(1)).join(", ")} µm` : "voxel size not recorded";
}

function bindView(side, p) {
  const canvas = canvasOf(side, p);
  const vp = canvas.parentElement;
  let down = null;
  canvas.addEventListener("wheel", (ev) => {
    ev.preventDefault();
    if (ev.ctrlKey) {
      const [x, y] = screenToPlane(p, canvas, ev);
      setZoom(V.zoom * (ev.deltaY < 0 ? 1.25 : 0.8), { p, x, y });
    } else {
      setIndex(p, V.index[p] + Math.sign(ev.deltaY) * (ev.shiftKey ? 10 : 1), performance.now());
    }
  }, { passive: false });
  canvas.addEventListener("pointerdown", (ev) => {
    down = { x: ev.clientX, y: ev.clientY, pan: [...V.pan[p]], moved: false };
    canvas.setPointerCapture(ev.pointerId);
    vp.focus({ preventScroll: true });
  });
  canvas.addEventListener("pointermove", (ev) => {
    readout(side, p, canvas, ev);
    if (!down) return;
    const dx = ev.clientX - down.x, dy = ev.clientY - down.y;
    if (!down.moved && Math.hypot(dx, dy) < 3) return;
    down.moved = true;
    V.pan[p] = [down.pan[0] - dx / scale(), down.pan[1] - dy / scale()];
    for (const s of ["a", "b"]) if (V.shown[`${s}${p}`]) draw(s, p);
    notify();
  });
  canvas.addEventListener("pointerup", (ev) => {
    const click = down && !down.moved;
    down = null;
    if (!click) return;
    const [col, row] = screenToPlane(p, canvas, ev);
    const [z, y, x] = toVoxel(p, Math.floor(col), Math.floor(row));
    const t = performance.now();
    for (const [q, v] of [["xy", z], ["xz", y], ["yz", x]]) if (q !== p) setIndex(q, v, t);
  });
  vp.addEventListener("keydown", (ev) => {
    const step = ev.shiftKey ? 10 : 1;
    const t = performance.now();
    const acts = {
      ArrowUp: () => setIndex(p, V.index[p] + step, t), PageUp: () => setIndex(p, V.index[p] + step, t),
      ArrowDown: () => setIndex(p, V.index[p] - step, t), PageDown: () => setIndex(p, V.index[p] - step, t),
      "+": () => setZoom(V.zoom * 2), "=": () => setZoom(V.zoom * 2), "-": () => setZoom(V.zoom / 2), 0: () => fitViews(),
    };
    if (acts[ev.key]) { ev.preventDefault(); acts[ev.key](); }
  });
}

// ------------------------------------------------------------------- window, histogram, colours
function setWindow(lo, hi) {
  if (!(hi > lo)) return;
  if (V.mode === "diff" && V.keyB) V.diffWin = [lo, hi]; else V.win = [lo, hi];
  updateWindowPanel();
  redrawAll();
  notify();
}

function updateWindowPanel() {
  const [lo, hi] = currentWindow();
  $("#win-lo").value = Number(lo.toPrecision(5));
  $("#win-hi").value = Number(hi.toPrecision(5));
  $("#colorbar-unit").textContent = V.mode === "diff" && V.keyB ? `A - B (${V.unit})` : V.unit;
  drawColorbar($("#colorbar"), currentLut());
  drawHistogram();
}

function drawHistogram() {
  const canvas = $("#histogram");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, w, h);
  if (!V.hist) return;
  const { counts, range: [a, b] } = V.hist;
  const peak = Math.max(...counts.map((c) => Math.log1p(c))) || 1;
  ctx.fillStyle = "#7d8799";
  counts.forEach((c, i) => { const bh = (Math.log1p(c) / peak) * (h - 4); ctx.fillRect((i / counts.length) * w, h - bh, Math.ceil(w / counts.length), bh); });
  const [lo, hi] = V.win;
  const X = (v) => ((v - a) / (b - a)) * w;
  ctx.fillStyle = "rgba(31, 95, 191, 0.15)"; ctx.fillRect(X(lo), 0, X(hi) - X(lo), h);
  ctx.fillStyle = "#1f5fbf"; ctx.fillRect(X(lo) - 1, 0, 3, h); ctx.fillRect(X(hi) - 1, 0, 3, h);
}

function bindWindowPanel() {
  const canvas = $("#histogram");
  let drag = null;
  const valueAt = (ev) => { const r = canvas.getBoundingClientRect(); const [a, b] = V.hist.range; return a + ((ev.clientX - r.left) / r.width) * (b - a); };
  canvas.addEventListener("pointerdown", (ev) => {
    if (!V.hist) return;
    const v = valueAt(ev);
    drag = Math.abs(v - V.win[0]) < Math.abs(v - V.win[1]) ? 0 : 1;
    canvas.setPointerCapture(ev.pointerId);
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (drag === null) return;
    const w = [...V.win];
    w[drag] = valueAt(ev);
    if (w[1] > w[0]) { V.win = w; updateWindowPanel(); redrawAll(); }
  });
  canvas.addEventListener("pointerup", () => { drag = null; notify(); });
  canvas.addEventListener("dblclick", () => setWindow(...V.auto));
  $("#window-auto").addEventListener("click", () => { if (V.mode === "diff") V.diffWin = null; setWindow(...V.auto); loadAll(); });
  for (const id of ["#win-lo", "#win-hi"]) $(id).addEventListener("change", () => setWindow(Number($("#win-lo").value), Number($("#win-hi").value)));
  const sel = $("#cmap");
  for (const name of Object.keys(COLORMAPS).filter((n) => n !== "difference")) sel.add(new Option(name, name));
  sel.addEventListener("change", () => { V.cmap = sel.value; updateWindowPanel(); redrawAll(); notify(); });
}

function bindViewer() {
  for (const side of ["a", "b"]) for (const p of PLANES) bindView(side, p);
  for (const p of PLANES) $(`#index-${p}`).addEventListener("input", (e) => setIndex(p, Number(e.target.value), performance.now()));
  $("#zoom-in").addEventListener("click", () => setZoom(V.zoom * 2));
  $("#zoom-out").addEventListener("click", () => setZoom(V.zoom / 2));
  $("#zoom-reset").addEventListener("click", fitViews);
  bindWindowPanel();
}
bindViewer();
