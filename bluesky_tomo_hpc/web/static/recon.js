// One reconstruction in the slice viewer: its description and provenance, the view state kept in
// the URL (a link or a reload shows the same slices, zoom, window and colours), comparing it with
// another reconstruction of the same run, downloading a slice and a Python snippet.
"use strict";

let stateTimer = null;
function writeState() {
  if (!V.key || !V.shape) return;
  const q = new URLSearchParams({ z: V.index.xy, y: V.index.xz, x: V.index.yz, zoom: Number(V.zoom.toFixed(4)),
    lo: Number(V.win[0].toPrecision(6)), hi: Number(V.win[1].toPrecision(6)), cmap: V.cmap });
  for (const p of PLANES) q.set(`c${p}`, V.pan[p].map((v) => v.toFixed(1)).join(","));
  if (V.keyB) { q.set("cmp", V.keyB); q.set("mode", V.mode); }
  history.replaceState(null, "", `#recon/${encodeURIComponent(V.key)}?${q}`);
  updateDownloads();
}
V.onchange = () => { clearTimeout(stateTimer); stateTimer = setTimeout(writeState, 120); };

function closeRecon() {
  $("#browser").classList.add("hidden");
  V.key = null; V.keyB = null;
}

function resetViewer() {
  for (const ctl of Object.values(V.inflight)) ctl.abort();
  V.key = null; V.keyB = null; V.shape = null; V.shown = {}; V.seq = {}; V.inflight = {}; V.diffWin = null; V.mode = "side";
  $("#compare-with").replaceChildren(new Option("(nothing)", ""));
  $("#compare-mode").value = "side";
  $("#views-b").classList.add("hidden"); $("#views-b-title").classList.add("hidden");
  $("#compare-params").classList.add("hidden");
  $("#view-3d").classList.add("hidden");
  for (const side of ["a", "b"]) for (const p of PLANES) draw(side, p);
}

function num(q, name, fallback) { const v = Number(q.get(name)); return q.has(name) && Number.isFinite(v) ? v : fallback; }

async function openRecon(key, query = new URLSearchParams()) {
  const t0 = performance.now();
  if (V.key === key && V.shape) return; // already shown (the URL holds its state)
  resetViewer();
  $("#browser").classList.remove("hidden");
  $("#browser-key").textContent = key;
  // the description comes with the volume's histogram: one request before the slices
  let info;
  try { info = await api(`api/recon/${encodeURIComponent(key)}`); } catch (err) { showError(err.message); return; }
  V.key = key;
  V.info = info;
  V.unit = info.unit || "";
  V.voxelUm = info.voxel_size_um || null;
  $("#browser-info").replaceChildren(
    "run ", link(`#run/${encodeURIComponent(info.raw_uid)}`, info.raw_uid.slice(0, 8), info.raw_uid),
    `, kind ${info.kind}, parameters ${info.params_hash}, centre ${fmtNum(info.center)} px (confidence ${fmtNum(info.center_confidence)}), state ${info.state}` +
    (info.volume ? `, volume ${info.volume.shape.join(" x ")} (z, y, x)` : "") + (V.voxelUm ? `, voxel ${V.voxelUm} µm` : ""));
  showProvenance(info);
  showSnippet(info);
  const sliders = PLANES.map((p) => $(`#index-${p}`));
  if (!info.volume) { // a stored preview: three middle slices, nothing to slice through
    sliders.forEach((s) => { s.disabled = true; });
    for (const p of PLANES) $(`#index-${p}-value`).textContent = info.previews.includes(p) ? "(stored preview: the middle slice; no volume to browse)" : "(none)";
    await Promise.all(info.previews.map((p) => drawPreview(key, p)));
    window.reconOpened = { key, ms: performance.now() - t0, volume: false };
    offerComparisons(info).catch((err) => showError(err.message));
    if (info.state === "writing") showError(`reconstruction ${key} is still being written; its volume is not there yet`);
    return;
  }
  sliders.forEach((s) => { s.disabled = false; });
  V.shape = info.volume.shape;
  V.levels = info.volume.levels;
  for (const p of PLANES) {
    const n = V.shape[AXIS[p]];
    V.index[p] = Math.max(0, Math.min(n - 1, Math.round(num(query, AXIS_OF[p], Math.floor(n / 2)))));
    const slider = $(`#index-${p}`);
    slider.max = n - 1; slider.value = V.index[p];
    $(`#index-${p}-value`).textContent = V.index[p];
  }
  V.cmap = COLORMAPS[query.get("cmap")] ? query.get("cmap") : "gray";
  $("#cmap").value = V.cmap;
  fitViews();
  for (const p of PLANES) { const c = (query.get(`c${p}`) || "").split(",").map(Number); if (c.length === 2 && c.every(Number.isFinite)) V.pan[p] = c; }
  // left out of the description when it cannot be read yet: asked alone, to say why
  const statsAsked = info.stats ? Promise.resolve(info.stats) : api(`api/recon/${encodeURIComponent(key)}/stats`);
  const stats = statsAsked.then((st) => {
    V.hist = st; V.auto = st.window;
    V.win = query.has("lo") && query.has("hi") && num(query, "hi", 1) > num(query, "lo", 0) ? [num(query, "lo", 0), num(query, "hi", 1)] : st.window;
    updateWindowPanel();
  });
  if (query.has("zoom")) V.zoom = num(query, "zoom", 1);
  V.level = levelFor(scale());
  try { await stats; } catch (err) { showError(err.message); }
  if (query.get("cmp")) await setComparison(query.get("cmp"), query.get("mode") || "side");
  setZoom(V.zoom);
  await loadAll();
  window.reconOpened = { key, ms: performance.now() - t0 };
  writeState();
  // after the views are drawn: this search of the catalog would slow the slices' reads
  offerComparisons(info).catch((err) => showError(err.message));
}
const AXIS_OF = { xy: "z", xz: "y", yz: "x" };

async function drawPreview(key, p) {
  const img = new Image();
  img.src = `api/recon/${encodeURIComponent(key)}/preview/${p}.png`;
  await img.decode().catch(() => null);
  const canvas = canvasOf("a", p);
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w; canvas.height = h;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000"; ctx.fillRect(0, 0, w, h);
  const s = Math.min(w / img.naturalWidth, h / img.naturalHeight) || 1;
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(img, (w - img.naturalWidth * s) / 2, (h - img.naturalHeight * s) / 2, img.naturalWidth * s, img.naturalHeight * s);
  canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
  canvas.dataset.index = "preview";
}

// ------------------------------------------------------------------------------- provenance
function showProvenance(info) {
  const tbody = $("#provenance tbody");
  tbody.replaceChildren();
  for (const [k, v] of Object.entries(info.provenance || {})) {
    if (v === null || v === undefined || v === "") continue;
    const row = tbody.insertRow();
    row.dataset.field = k;
    cell(row, k);
    const text = k.endsWith("_at") && typeof v === "number" ? fmtTime(v) : typeof v === "object" ? JSON.stringify(v, null, 1) : String(v);
    cell(row, text, typeof v === "object" ? "json" : "");
  }
}

// ---------------------------------------------------------------------------------- compare
async function offerComparisons(info) {
  const { reconstructions } = await api(`api/recon?raw_uid=${encodeURIComponent(info.raw_uid)}&limit=200`);
  const sel = $("#compare-with");
  for (const r of reconstructions) {
    if (r.key === info.key || r.kind === "preview") continue;
    sel.add(new Option(`${r.kind} ${r.params_hash} c=${fmtNum(r.center)} (${fmtTime(r.written_at)})`, r.key));
  }
  if (V.keyB) sel.value = V.keyB;
}

function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, `${prefix}${k}.`, out); else out[`${prefix}${k}`] = JSON.stringify(v);
  }
  return out;
}

async function setComparison(keyB, mode) {
  V.keyB = null; V.diffWin = null; V.mode = mode === "diff" ? "diff" : "side";
  $("#compare-mode").value = V.mode;
  for (const p of PLANES) { delete V.shown[`b${p}`]; delete V.shown[`diff${p}`]; }
  if (keyB) {
    const b = await api(`api/recon/${encodeURIComponent(keyB)}`).catch((err) => { showError(err.message); return null; });
    if (b && (!b.volume || b.volume.shape.join() !== V.shape.join())) {
      showError(`${keyB} cannot be compared with ${V.key}: ` + (b.volume ? `its volume is ${b.volume.shape.join(" x ")}, this one ${V.shape.join(" x ")}` : "it has no volume"));
    } else if (b) {
      V.keyB = keyB;
      const pa = flatten(V.info.provenance.params), pb = flatten(b.provenance.params);
      const tbody = $("#compare-params tbody");
      tbody.replaceChildren();
      for (const k of [...new Set([...Object.keys(pa), ...Object.keys(pb)])].sort()) {
        if (pa[k] === pb[k]) continue;
        const row = tbody.insertRow(); cell(row, k); cell(row, pa[k] ?? "-"); cell(row, pb[k] ?? "-");
      }
      for (const [k, label] of [["center", "centre (px)"], ["kind", "kind"]]) {
        if (V.info[k] !== b[k]) { const row = tbody.insertRow(); cell(row, label); cell(row, V.info[k]); cell(row, b[k]); }
      }
      if (!tbody.rows.length) { const row = tbody.insertRow(); cell(row, "(the same parameters)").colSpan = 3; }
      $("#views-b-title").textContent = `B: ${b.kind} ${b.params_hash}, centre ${fmtNum(b.center)} px (${keyB})`;
    }
  }
  const side = Boolean(V.keyB) && V.mode === "side";
  $("#views-b").classList.toggle("hidden", !side);
  $("#views-b-title").classList.toggle("hidden", !side);
  $("#compare-params").classList.toggle("hidden", !V.keyB);
  $("#compare-with").value = V.keyB || "";
  updateWindowPanel();
}

async function compareChanged() {
  await setComparison($("#compare-with").value, $("#compare-mode").value);
  await loadAll();
  redrawAll();
  writeState();
}
$("#compare-with").addEventListener("change", compareChanged);
$("#compare-mode").addEventListener("change", compareChanged);

// -------------------------------------------------------------------- downloads and Python
function updateDownloads() {
  const p = $("#download-plane").value;
  $("#download-tiff").href = `api/recon/${encodeURIComponent(V.key)}/slice/${p}.tiff?index=${V.index[p]}`;
  $("#download-tiff").download = `${V.key}_${p}_${V.index[p]}.tiff`;
}
$("#download-plane").addEventListener("change", updateDownloads);

$("#download-png").addEventListener("click", async () => {
  const p = $("#download-plane").value;
  try {
    const s = await fetchSlice(V.key, p, V.index[p], 0);
    const off = new OffscreenCanvas(s.cols, s.rows);
    const ctx = off.getContext("2d");
    const img = ctx.createImageData(s.cols, s.rows);
    colorize(s.values, V.win[0], V.win[1], COLORMAPS[V.cmap], img.data);
    ctx.putImageData(img, 0, 0);
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await off.convertToBlob({ type: "image/png" }));
    a.download = `${V.key}_${p}_${V.index[p]}_${V.cmap}.png`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (err) { showError(`PNG: ${err.message}`); }
});

let tiledUri = null;
async function showSnippet(info) {
  if (tiledUri === null) {
    try { tiledUri = (await api("api/whoami")).tiled_uri; } catch (err) { tiledUri = ""; }
  }
  const uri = tiledUri || `${location.origin}/api/v1`;
  const shape = info.volume ? info.volume.shape.join(", ") : "";
  let text = `import os\nfrom tiled.client import from_uri\n\nclient = from_uri("${uri}", api_key=os.environ["TILED_API_KEY"])\nnode = client["${info.container}"]["${info.key}"]\nprint(node.metadata["params"])  # how it was made\n`;
  if (info.volume) text += `volume = node["volume"]  # (z, y, x) = (${shape}) float32, read lazily\nxy = volume[${info.volume.shape[0] >> 1}]  # one xy slice as a numpy array\n`;
  else text += `xy = node["preview_xy"].read()  # the stored middle xy slice\n`;
  if (info.provenance && info.provenance.ome_zarr) text += `\n# the OME-Zarr the batch job wrote, in napari (pip install napari napari-ome-zarr):\nimport napari\nnapari.Viewer().open("${info.provenance.ome_zarr}", plugin="napari-ome-zarr")\nnapari.run()\n`;
  $("#snippet").textContent = text;
}
$("#copy-snippet").addEventListener("click", async () => {
  try { await navigator.clipboard.writeText($("#snippet").textContent); $("#copy-snippet").textContent = "copied"; } catch (err) {
    const range = document.createRange(); range.selectNodeContents($("#snippet"));
    getSelection().removeAllRanges(); getSelection().addRange(range);
    $("#copy-snippet").textContent = "selected: Ctrl+C";
  }
  setTimeout(() => { $("#copy-snippet").textContent = "copy"; }, 2000);
});
