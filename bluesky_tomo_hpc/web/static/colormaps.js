// Colour maps as 256-entry RGB tables, made from a few control points of the well-known maps
// (matplotlib's viridis, magma, inferno; "hot"; a blue-white-red map for differences).
"use strict";

const COLORMAP_POINTS = {
  gray: ["#000000", "#ffffff"],
  viridis: ["#440154", "#482878", "#3e4989", "#31688e", "#26828e", "#1f9e89", "#35b779", "#6ece58", "#b5de2b", "#fde725"],
  magma: ["#000004", "#180f3d", "#440f76", "#721f81", "#9e2f7f", "#cd4071", "#f1605d", "#fd9668", "#feca8d", "#fcfdbf"],
  inferno: ["#000004", "#1b0c41", "#4a0c6b", "#781c6d", "#a52c60", "#cf4446", "#ed6925", "#fb9b06", "#f7d13d", "#fcffa4"],
  hot: ["#000000", "#e60000", "#ffd200", "#ffffff"],
  difference: ["#2166ac", "#67a9cf", "#d1e5f0", "#f7f7f7", "#fddbc7", "#ef8a62", "#b2182b"],
};

function hexRgb(h) { return [1, 3, 5].map((i) => parseInt(h.slice(i, i + 2), 16)); }

// name -> Uint8Array(256 * 3)
const COLORMAPS = Object.fromEntries(Object.entries(COLORMAP_POINTS).map(([name, pts]) => {
  const rgb = pts.map(hexRgb);
  const lut = new Uint8Array(256 * 3);
  for (let i = 0; i < 256; i++) {
    const t = (i / 255) * (rgb.length - 1);
    const k = Math.min(rgb.length - 2, Math.floor(t));
    const f = t - k;
    for (let c = 0; c < 3; c++) lut[i * 3 + c] = Math.round(rgb[k][c] * (1 - f) + rgb[k + 1][c] * f);
  }
  return [name, lut];
}));

// float values -> RGBA pixels through a window [lo, hi] and a colour map (NaN: transparent)
function colorize(values, lo, hi, lut, out) {
  const scale = hi > lo ? 255 / (hi - lo) : 0;
  for (let i = 0, j = 0; i < values.length; i++, j += 4) {
    const v = values[i];
    if (Number.isNaN(v)) { out[j + 3] = 0; continue; }
    let k = Math.round((v - lo) * scale);
    k = k < 0 ? 0 : k > 255 ? 255 : k;
    out[j] = lut[k * 3]; out[j + 1] = lut[k * 3 + 1]; out[j + 2] = lut[k * 3 + 2]; out[j + 3] = 255;
  }
  return out;
}

// a horizontal colour bar of the map on a canvas
function drawColorbar(canvas, lut) {
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(canvas.width, canvas.height);
  for (let x = 0; x < canvas.width; x++) {
    const k = Math.round((x / Math.max(1, canvas.width - 1)) * 255);
    for (let y = 0; y < canvas.height; y++) {
      const j = (y * canvas.width + x) * 4;
      img.data[j] = lut[k * 3]; img.data[j + 1] = lut[k * 3 + 1]; img.data[j + 2] = lut[k * 3 + 2]; img.data[j + 3] = 255;
    }
  }
  ctx.putImageData(img, 0, 0);
}
