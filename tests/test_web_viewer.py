"""The slice viewer in headless Chromium against a known phantom in a real Tiled: the value and
voxel under the cursor, one window for every view, linked views, wheel, keys, zoom at the cursor,
drag-pan, the state in the URL (reload, pasted link), comparing two reconstructions, downloads,
the Python snippet (run for real) and the 3D view's controls."""

from __future__ import annotations

import io
import os
import re

import numpy as np
import pytest
from web_browser import browser
from web_fixtures import KEY, WAIT_MS, Beamline, phantom, write_recon, write_run


@pytest.fixture(scope="module")
def bl(tmp_path_factory):
    b = Beamline(tmp_path_factory.mktemp("viewer"))
    raw, processed = b.containers()
    b.uid = write_run(raw, "viewer phantom")
    b.volume = phantom()
    b.key = write_recon(processed, b.uid, b.volume, center=35.5, voxel_size_um=0.65)
    b.volume_b = phantom(shift=0.05)
    b.key_b = write_recon(processed, b.uid, b.volume_b, filter_name="hann", center=36.0)
    b.key_preview = write_recon(processed, b.uid, None, kind="preview")
    yield b
    b.close()


@pytest.fixture(scope="module")
def chromium():
    with browser() as ctx:
        yield ctx


@pytest.fixture
def page(chromium):
    page = chromium.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    page.close()
    assert not errors, errors


def open_recon(page, bl, key=None, query=""):
    page.goto(f"{bl.web}?api_key={KEY}#recon/{key or bl.key}{query}")
    page.wait_for_function(
        f"window.reconOpened && window.reconOpened.key === {key or bl.key!r}", timeout=WAIT_MS
    )


def hover(page, plane, fx, fy):
    page.locator(f"#view-{plane}").scroll_into_view_if_needed()
    box = page.locator(f"#view-{plane}").bounding_box()
    page.mouse.move(box["x"] + box["width"] * fx, box["y"] + box["height"] * fy)
    return box


def voxel_and_value(page):
    vox = tuple(int(v) for v in page.text_content("#cursor-voxel").split(","))
    value = float(page.text_content("#cursor-value").split()[0])
    return vox, value


def test_value_and_voxel_under_the_cursor_are_the_volumes(page, bl):
    open_recon(page, bl)
    for plane, fx, fy in (("xy", 0.3, 0.6), ("xz", 0.7, 0.4), ("yz", 0.5, 0.5)):
        hover(page, plane, fx, fy)
        vox, value = voxel_and_value(page)
        assert value == pytest.approx(float(bl.volume[vox]), rel=1e-4, abs=1e-6), (plane, vox)
    z, y, x = vox
    assert page.text_content("#cursor-physical") == f"{z * 0.65:.1f}, {y * 0.65:.1f}, {x * 0.65:.1f} µm"


def test_one_window_for_every_view_shown_as_histogram_and_colour_bar(page, bl):
    open_recon(page, bl)
    lo, hi = (float(page.input_value(s)) for s in ("#win-lo", "#win-hi"))
    assert lo < 0.05 and 0.9 < hi < 1.1  # the volume's 0.5-99.5 %, not one slice's
    assert page.text_content("#colorbar-unit") == "1/voxel"
    # an empty slice (air above the sample) stays dark: it is not stretched into noise
    page.fill("#index-xy", "0")
    page.dispatch_event("#index-xy", "input")
    page.wait_for_function("document.querySelector('#view-xy').dataset.index === '0'", timeout=WAIT_MS)
    grey = page.evaluate("""(() => { const c = document.querySelector('#view-xy');
        const d = c.getContext('2d').getImageData(c.width / 2, c.height / 2, 1, 1).data; return d[0]; })()""")
    assert grey < 40
    # dragging the histogram's upper edge sets the window of all three views
    page.locator("#histogram").scroll_into_view_if_needed()
    box = page.locator("#histogram").bounding_box()
    hist = page.evaluate("V.hist.range")
    x_hi = box["x"] + box["width"] * (hi - hist[0]) / (hist[1] - hist[0])
    page.mouse.move(x_hi, box["y"] + 40)
    page.mouse.down()
    page.mouse.move(x_hi - box["width"] * 0.3, box["y"] + 40, steps=4)
    page.mouse.up()
    new_hi = float(page.input_value("#win-hi"))
    assert new_hi < hi - 0.1
    page.wait_for_function(f"location.hash.includes('hi={new_hi:.4g}'.slice(0, 7))", timeout=WAIT_MS)
    page.select_option("#cmap", "viridis")
    rgb = page.evaluate("""(() => { const c = document.querySelector('#colorbar');
        return Array.from(c.getContext('2d').getImageData(0, 5, 1, 1).data.slice(0, 3)); })()""")
    assert rgb == [68, 1, 84]  # viridis starts dark purple


def test_click_links_the_views_and_wheel_and_keys_step_slices(page, bl):
    open_recon(page, bl)
    hover(page, "xy", 0.25, 0.7)
    (z, y, x), _ = voxel_and_value(page)
    page.mouse.down()
    page.mouse.up()
    page.wait_for_function(f"V.index.xz === {y} && V.index.yz === {x}", timeout=WAIT_MS)
    page.wait_for_function(f"document.querySelector('#view-xz').dataset.index === '{y}'", timeout=WAIT_MS)
    # the wheel on the xy view: its next slice
    page.evaluate("""() => { const c = document.querySelector('#view-xy'), r = c.getBoundingClientRect();
        c.dispatchEvent(new WheelEvent('wheel', {clientX: r.x + 20, clientY: r.y + 20, deltaY: 120,
                                                 bubbles: true, cancelable: true})); }""")
    page.wait_for_function(f"V.index.xy === {z + 1}", timeout=WAIT_MS)
    page.keyboard.press("ArrowUp")
    page.wait_for_function(f"V.index.xy === {z + 2}", timeout=WAIT_MS)
    page.keyboard.press("Shift+PageDown")
    page.wait_for_function(f"V.index.xy === {z - 8}", timeout=WAIT_MS)
    page.wait_for_function(f"document.querySelector('#view-xy').dataset.index === '{z - 8}'", timeout=WAIT_MS)
    assert page.input_value("#index-xy") == str(z - 8)


def test_two_sliders_moved_within_60_ms_both_views_follow(page, bl):
    open_recon(page, bl)
    page.evaluate("""() => { for (const [p, v] of [['xy', 5], ['xz', 7]]) {
        const s = document.querySelector('#index-' + p); s.value = v;
        s.dispatchEvent(new Event('input')); } }""")
    page.wait_for_function(
        "document.querySelector('#view-xy').dataset.index === '5' && "
        "document.querySelector('#view-xz').dataset.index === '7'",
        timeout=WAIT_MS,
    )


def test_zoom_keeps_the_voxel_under_the_cursor_and_drag_pans(page, bl):
    open_recon(page, bl)
    box = hover(page, "xy", 0.8, 0.3)
    before, _ = voxel_and_value(page)
    at = [box["x"] + box["width"] * 0.8, box["y"] + box["height"] * 0.3]
    for _ in range(2):  # Ctrl + wheel (a trackpad's pinch) where the cursor is
        page.evaluate(
            """([x, y]) => document.querySelector('#view-xy').dispatchEvent(new WheelEvent('wheel',
            {clientX: x, clientY: y, deltaY: -120, ctrlKey: true, bubbles: true, cancelable: true}))""",
            at,
        )
    page.wait_for_function("V.zoom > 1.5", timeout=WAIT_MS)
    box = hover(page, "xy", 0.8, 0.3)
    after, _ = voxel_and_value(page)
    assert after == before  # zoom at the cursor, not at the top-left
    pan = page.evaluate("V.pan.xy")
    scale = page.evaluate("scale()")
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    moved = page.evaluate("V.pan.xy")
    assert moved[0] == pytest.approx(pan[0] + box["width"] * 0.3 / scale, abs=0.6)
    assert moved[1] == pytest.approx(pan[1] - box["height"] * 0.2 / scale, abs=0.6)


def test_the_view_state_survives_a_reload_and_a_pasted_link(page, bl):
    query = "?z=7&y=30&x=12&zoom=2&lo=0.1&hi=0.6&cmap=magma"
    open_recon(page, bl, query=query)
    assert page.evaluate("[V.index.xy, V.index.xz, V.index.yz, V.zoom, V.cmap, ...V.win]") == [
        7,
        30,
        12,
        2,
        "magma",
        0.1,
        0.6,
    ]
    page.wait_for_selector(f"#runs tr[data-uid='{bl.uid}']", timeout=WAIT_MS)  # the table is filled too
    page.fill("#index-yz", "20")
    page.dispatch_event("#index-yz", "input")
    page.wait_for_function("location.hash.includes('x=20')", timeout=WAIT_MS)
    page.reload()
    page.wait_for_function(f"window.reconOpened && window.reconOpened.key === {bl.key!r}", timeout=WAIT_MS)
    assert page.evaluate("[V.index.xy, V.index.yz, V.cmap]") == [7, 20, "magma"]
    page.wait_for_selector(f"#runs tr[data-uid='{bl.uid}']", timeout=WAIT_MS)


def test_a_preview_link_says_it_has_no_volume_and_the_next_volume_works(page, bl):
    open_recon(page, bl, bl.key_preview)
    assert page.is_disabled("#index-xy")
    assert "no volume to browse" in page.text_content("#index-xy-value")
    page.click(f"#runs tr[data-uid='{bl.uid}'] a.recon[href$='{bl.key}']")
    page.wait_for_function(f"window.reconOpened.key === {bl.key!r}", timeout=WAIT_MS)
    assert not page.is_disabled("#index-xy")
    page.fill("#index-xy", "3")
    page.dispatch_event("#index-xy", "input")
    page.wait_for_function("document.querySelector('#view-xy').dataset.index === '3'", timeout=WAIT_MS)
    assert page.text_content("#index-xy-value") == "3"


def test_compare_two_reconstructions_side_by_side_and_as_a_difference(page, bl):
    open_recon(page, bl)
    page.select_option("#compare-with", bl.key_b)
    page.wait_for_function("document.querySelector('#view-b-xy').dataset.drawn > 0", timeout=WAIT_MS)
    params = page.text_content("#compare-params")
    assert "filter_name" in params and "hann" in params and "shepp" in params
    page.select_option("#compare-mode", "diff")
    page.wait_for_function("location.hash.includes('mode=diff')", timeout=WAIT_MS)
    assert page.is_hidden("#views-b")
    hover(page, "xy", 0.5, 0.5)
    vox, value = voxel_and_value(page)
    assert value == pytest.approx(float(bl.volume[vox] - bl.volume_b[vox]), abs=1e-5)
    assert "A - B" in page.text_content("#colorbar-unit")
    page.reload()  # the comparison is in the URL too
    page.wait_for_function("window.reconOpened", timeout=WAIT_MS)
    assert page.evaluate("[V.keyB, V.mode]") == [bl.key_b, "diff"]


def test_provenance_download_and_a_python_snippet_that_runs(page, bl):
    import tifffile

    open_recon(page, bl, query="?z=11")
    page.click("#provenance summary")
    assert "shepp" in page.text_content("#provenance tr[data-field='params']")
    assert page.text_content("#provenance tr[data-field='raw_uid']").endswith(bl.uid)
    href = page.get_attribute("#download-tiff", "href")
    r = page.request.get(bl.web + href)
    assert r.status == 200
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(r.body())), bl.volume[11])
    with page.expect_download() as dl:
        page.click("#download-png")
    assert re.search(r"_xy_11_gray\.png$", dl.value.suggested_filename)
    snippet = page.text_content("#snippet")
    assert bl.key in snippet and "from_uri" in snippet
    os.environ.setdefault("TILED_API_KEY", KEY)
    scope: dict = {}
    exec(compile(snippet, "snippet", "exec"), scope)  # what a person pastes into Python
    np.testing.assert_array_equal(scope["xy"], bl.volume[bl.volume.shape[0] // 2])


def _mz3(body: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(faces, vertices) of an MZ3 mesh (niivue's format: a 16-byte header, then the arrays)."""
    magic, attr, n_faces, n_verts, skip = np.frombuffer(body[:16], "<u2", 2).tolist() + np.frombuffer(
        body[4:16], "<u4").tolist()
    assert (magic, attr, skip) == (23117, 3, 0)
    faces = np.frombuffer(body, "<u4", n_faces * 3, 16).reshape(-1, 3)
    vertices = np.frombuffer(body, "<f4", n_verts * 3, 16 + n_faces * 12).reshape(-1, 3)
    return faces, vertices


def test_3d_view_from_the_package_with_threshold_clip_and_a_full_resolution_region(page, bl):
    open_recon(page, bl)
    r = page.request.get(bl.web + "viewer.js")
    assert r.status == 200 and len(r.body()) > 1_000_000  # niivue, shipped in the package
    page.click("#open-3d")
    page.wait_for_selector("#view-3d[data-loaded='1']", timeout=WAIT_MS)
    status = page.text_content("#view-3d-status")
    assert "40 x 64 x 72 voxels" in status and "full resolution" in status
    threshold = float(page.get_attribute("#view-3d", "data-threshold"))
    assert 0.02 < threshold < 0.5  # air (noise around 0) is below it: transparent
    page.fill("#v3-threshold", "900")
    page.dispatch_event("#v3-threshold", "input")
    assert page.evaluate("V3.nv.volumes[0].cal_min") > threshold
    page.fill("#v3-clip", "20")
    page.dispatch_event("#v3-clip", "input")
    assert page.evaluate("V3.nv.volumes[0].opacity") == 1
    page.select_option("#v3-cmap", "viridis")
    assert page.evaluate("V3.nv.volumes[0].colormap") == "viridis"
    # the isosurface as a mesh: marching cubes on the server, drawn by niivue at the threshold
    page.check("#v3-mesh")
    page.wait_for_function("window.meshShown && window.meshShown.faces > 0", timeout=WAIT_MS)
    level = page.evaluate("window.meshShown.level")
    assert level == pytest.approx(float(page.get_attribute("#view-3d", "data-threshold")))
    assert page.evaluate("V3.nv.meshes.length") == 1
    assert page.evaluate("V3.nv.volumes[0].opacity") == 0  # the volume rendering would hide it
    faces, vertices = _mz3(page.request.get(bl.web + f"api/recon/{bl.key}/surface.mz3?level=0.25").body())
    from skimage.measure import marching_cubes

    assert len(faces) == len(marching_cubes(bl.volume, level=0.25)[1])
    nz, ny, nx = bl.volume.shape  # the ellipsoid's half-axes: 0.4 x, 0.35 y, 0.45 z of the box
    for axis, (n, half) in enumerate(((nx, 0.4), (ny, 0.35), (nz, 0.45))):  # vertices are x, y, z
        lo, hi = vertices[:, axis].min(), vertices[:, axis].max()
        assert abs(lo - (0.5 - half) * (n - 1)) < 2 and abs(hi - (0.5 + half) * (n - 1)) < 2, (axis, lo, hi)
    bad = page.request.get(bl.web + f"api/recon/{bl.key}/surface.mz3?level=7")
    assert bad.status == 400 and "no surface at 7" in bad.json()["error"]
    page.uncheck("#v3-mesh")
    page.wait_for_function("V3.nv.meshes.length === 0", timeout=WAIT_MS)
    page.evaluate("setZoom(4)")
    page.click("#v3-roi")
    page.wait_for_selector("#view-3d[data-loaded='1'][data-step='1']", timeout=WAIT_MS)
    assert page.text_content("#view-3d-status").startswith("Region")
