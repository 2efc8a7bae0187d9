// The 3D view: niivue (shipped in the package, static/vendor) renders the volume, or a region of
// it at full resolution, sent as 8-bit NIfTI whose scale factors keep the volume's own units, so
// the threshold reads in the same units as the slice viewer's window.
"use strict";

const V3 = { nv: null, lo: 0, hi: 1, key: null, roi: null, meshSeq: 0 };

function otsu(counts) { // the threshold that best splits the histogram in two (air | sample)
  const total = counts.reduce((a, b) => a + b, 0);
  let sumAll = 0; counts.forEach((c, i) => { sumAll += c * i; });
  let wB = 0, sumB = 0, best = 0, at = counts.length >> 1;
  counts.forEach((c, i) => {
    wB += c; if (!wB || wB === total) return;
    sumB += c * i;
    const mB = sumB / wB, mF = (sumAll - sumB) / (total - wB);
    const between = wB * (total - wB) * (mB - mF) ** 2;
    if (between > best) { best = between; at = i; }
  });
  return (at + 0.5) / counts.length;
}

async function loadViewerScript() {
  if (window.niivue) return;
  await new Promise((resolve, reject) => {
    const s = document.createElement("script");
    s.src = "viewer.js";
    s.onload = resolve;
    s.onerror = () => reject(new Error("the 3D viewer (niivue) could not be loaded from this server"));
    document.head.append(s);
  });
}

function regionInView() {
  // the part of the volume the xy view shows (x, y), and as deep (z) as it is wide, around z
  const canvas = $("#view-xy");
  const s = scale(), [cx, cy] = V.pan.xy;
  const [nz, ny, nx] = V.shape;
  const hw = canvas.clientWidth / 2 / s, hh = canvas.clientHeight / 2 / s;
  const clip = (a, b, n) => [Math.max(0, Math.floor(a)), Math.min(n, Math.ceil(b))];
  const [x0, x1] = clip(cx - hw, cx + hw, nx), [y0, y1] = clip(cy - hh, cy + hh, ny);
  const half = Math.max(x1 - x0, y1 - y0) / 2;
  const [z0, z1] = clip(V.index.xy - half, V.index.xy + half, nz);
  return [z0, z1, y0, y1, x0, x1];
}

async function show3d(roi) {
  const box = $("#view-3d");
  const status = $("#view-3d-status");
  box.classList.remove("hidden");
  box.dataset.loaded = "0";
  if (!V.key || !V.shape) { status.textContent = "No volume to show in 3D."; return; }
  const t0 = performance.now();
  status.textContent = "Loading the 3D view ...";
  try {
    await loadViewerScript();
    const canvas = $("#canvas-3d");
    if (!canvas.getContext("webgl2")) { status.textContent = "The 3D view needs WebGL2, which this browser does not offer."; return; }
    [V3.lo, V3.hi] = V.win;
    const q = new URLSearchParams({ lo: V3.lo, hi: V3.hi, max_side: roi ? 256 : 128 });
    if (roi) q.set("roi", roi.join(","));
    if (!V3.nv) {
      V3.nv = new window.niivue.Niivue({ backColor: [0.07, 0.08, 0.11, 1], show3Dcrosshair: false, isColorbar: true, loadingText: "loading ..." });
      await V3.nv.attachToCanvas(canvas);
      const sel = $("#v3-cmap");
      const have = new Set(V3.nv.colormaps());
      for (const name of ["gray", "viridis", "inferno", "plasma", "hot", "warm", "winter", "bone"]) if (have.has(name)) sel.add(new Option(name, name));
    }
    const nv = V3.nv;
    const response = await fetch(`api/recon/${encodeURIComponent(V.key)}/volume.nii?${q}`, { credentials: "same-origin" });
    if (!response.ok) { let m = `HTTP ${response.status}`; try { m = (await response.json()).error || m; } catch (e) { /* not JSON */ } throw new Error(m); }
    const region = JSON.parse(response.headers.get("X-Region"));
    const url = URL.createObjectURL(await response.blob());
    while (nv.volumes.length) nv.removeVolume(nv.volumes[0]);
    await nv.loadVolumes([{ url, name: "volume.nii", colormap: $("#v3-cmap").value || "gray" }]);
    URL.revokeObjectURL(url);
    nv.setSliceType(nv.sliceTypeRender);
    nv.setRenderAzimuthElevation(120, 20);
    V3.key = V.key;
    V3.roi = roi;
    const t = V.hist ? V.hist.range[0] + otsu(V.hist.counts) * (V.hist.range[1] - V.hist.range[0]) : (V3.lo + V3.hi) / 2;
    $("#v3-threshold").value = Math.round(Math.max(0, Math.min(1, (t - V3.lo) / (V3.hi - V3.lo))) * 1000);
    apply3d();
    const [z0, z1, y0, y1, x0, x1] = region.box;
    status.textContent = `${roi ? "Region" : "Volume"} z ${z0}-${z1}, y ${y0}-${y1}, x ${x0}-${x1}: ${region.shape.join(" x ")} voxels, ` +
      (region.step === 1 ? "full resolution" : `every ${region.step}th voxel per axis`) + `. Drag to rotate, scroll to zoom. Loaded in ${((performance.now() - t0) / 1000).toFixed(2)} s.`;
    box.dataset.loaded = "1";
    box.dataset.step = region.step;
    window.view3dOpened = { key: V.key, roi: Boolean(roi), ms: performance.now() - t0 };
    await updateMesh();
  } catch (err) { status.textContent = `3D view unavailable: ${err.message}`; }
}

function thresholdValue() { return V3.lo + (Number($("#v3-threshold").value) / 1000) * (V3.hi - V3.lo); }

// the isosurface at the threshold as a triangle mesh (server: marching cubes on the same region,
// vertices in the same world units as the volume), redone when the threshold is let go
async function updateMesh() {
  const nv = V3.nv, box = $("#view-3d"), status = $("#v3-mesh-status");
  if (!nv) return;
  const mine = ++V3.meshSeq;
  while (nv.meshes.length) nv.removeMesh(nv.meshes[0]);
  box.dataset.meshFaces = "0";
  if (!$("#v3-mesh").checked || !V3.key) { status.textContent = ""; nv.drawScene(); return; }
  const t0 = performance.now(), level = thresholdValue();
  status.textContent = "making the mesh ...";
  try {
    const q = new URLSearchParams({ level, max_side: 128 });
    if (V3.roi) q.set("roi", V3.roi.join(","));
    const response = await fetch(`api/recon/${encodeURIComponent(V3.key)}/surface.mz3?${q}`, { credentials: "same-origin" });
    if (!response.ok) { let m = `HTTP ${response.status}`; try { m = (await response.json()).error || m; } catch (e) { /* not JSON */ } throw new Error(m); }
    const mesh = JSON.parse(response.headers.get("X-Mesh"));
    const buffer = await response.arrayBuffer();
    if (mine !== V3.meshSeq) return; // a newer threshold asked meanwhile
    while (nv.meshes.length) nv.removeMesh(nv.meshes[0]);
    await nv.loadFromArrayBuffer(buffer, "surface.mz3");
    nv.setMeshProperty(nv.meshes[0].id, "rgba255", [235, 180, 70, 255]);
    // niivue draws any visible volume rendering over the mesh: hide the volume (its opacity slider
    // brings it back)
    if ($("#v3-opacity").value === "100") { $("#v3-opacity").value = "0"; apply3d(); }
    status.textContent = `${mesh.faces.toLocaleString()} triangles at ${Number(mesh.level).toPrecision(4)} ${V.unit}`;
    box.dataset.meshFaces = String(mesh.faces);
    window.meshShown = { key: V3.key, faces: mesh.faces, level: mesh.level, ms: performance.now() - t0 };
  } catch (err) { if (mine === V3.meshSeq) status.textContent = `no mesh: ${err.message}`; }
}

function apply3d() {
  const nv = V3.nv;
  if (!nv || !nv.volumes.length) return;
  const vol = nv.volumes[0];
  const thr = thresholdValue();
  $("#v3-threshold-value").textContent = `${thr.toPrecision(4)} ${V.unit}`;
  vol.cal_min = thr;
  vol.cal_max = V3.hi;
  vol.colormap = $("#v3-cmap").value || "gray";
  vol.opacity = Number($("#v3-opacity").value) / 100;
  nv.updateGLVolume();
  nv.setVolumeRenderIllumination($("#v3-surface").checked ? 0.8 : 0);
  const depth = Number($("#v3-clip").value);
  nv.setClipPlane(depth > 100 ? [2, 0, 0] : [depth / 100, Number($("#v3-clip-az").value), Number($("#v3-clip-el").value)]);
  $("#view-3d").dataset.threshold = thr;
}

for (const id of ["#v3-threshold", "#v3-opacity", "#v3-cmap", "#v3-surface", "#v3-clip", "#v3-clip-az", "#v3-clip-el"]) {
  $(id).addEventListener("input", apply3d);
}
$("#v3-mesh").addEventListener("change", () => updateMesh());
$("#v3-threshold").addEventListener("change", () => { if ($("#v3-mesh").checked) updateMesh(); });
$("#open-3d").addEventListener("click", () => show3d(null));
$("#v3-whole").addEventListener("click", () => show3d(null));
$("#v3-roi").addEventListener("click", () => show3d(regionInView()));
