"""The web page attacked as a stranger on the network would: forged Host headers, stolen cookies,
guessed keys, hostile query parameters. A real Tiled (embedded, with one small reconstruction)
and the real web app on uvicorn, spoken to over HTTP on 127.0.0.1."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

KEY = "webattackkey0123456789"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Tiled with one raw run and one reconstruction (40 voxels a side); the web page beside it."""
    from bluesky_tomo_hpc.engine.params import ReconParams
    from bluesky_tomo_hpc.results.tiled_results import processed_container, recon_key, write_reconstruction
    from bluesky_tomo_hpc.results.tiled_server import BackgroundServer, EmbeddedTiledServer, raw_catalog
    from bluesky_tomo_hpc.settings import Settings
    from bluesky_tomo_hpc.web.app import build_web_app, standalone_app
    from bluesky_tomo_hpc.web.auth import Gate
    from bluesky_tomo_hpc.web.server import MOUNT, make_context

    root = tmp_path_factory.mktemp("web-attacks")
    tiled = EmbeddedTiledServer(root / "tiled", api_key=KEY)
    raw_catalog(tiled.client())
    write_reconstruction(processed_container(tiled.client()), raw_uid="run-1", params=ReconParams(),
                         volume=np.random.default_rng(0).random((40, 40, 40), dtype=np.float32))
    settings = Settings.model_validate({"data_dir": str(root / "data"), "jobs": {"executor": "none"}})
    ctx = make_context(settings, api_key=KEY, tiled_uri=tiled.uri, preview_address="")
    gate = Gate(KEY)
    server = BackgroundServer(standalone_app(build_web_app(ctx, gate), MOUNT), name="web-attacks")
    yield {"base": server.base, "web": f"{server.base}{MOUNT}/", "gate": gate, "ctx": ctx,
           "key": recon_key("run-1", ReconParams().params_hash, "full")}
    server.close()
    ctx.close()
    tiled.close()


@pytest.fixture
def web(site):
    """The site with a fresh login throttle (1 s first wait), and an HTTP client without cookies."""
    from bluesky_tomo_hpc.web.auth import LoginThrottle

    site["gate"].throttle = LoginThrottle(first_wait_s=1.0)
    with httpx.Client(trust_env=False, timeout=60, follow_redirects=False) as http:
        yield site, http


AUTH = {"Authorization": f"Apikey {KEY}"}


# -- redirects ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path, headers", [
    ("web/", {}),                                     # the login redirect
    (f"web/?api_key={KEY}", {}),                      # a bookmarked link with the key
    ("web", {}),                                      # the mount without its slash
    ("web/api/jobs/", AUTH),                          # a trailing slash (the router's own redirect)
    ("", {}),                                         # the server's root
])
def test_forged_host_header_never_becomes_a_redirect(world, web, path, headers):
    """A forged Host header: every redirect is relative (or 404), never to the forged site."""
    site, http = web
    r = http.get(site["base"] + "/" + path, headers={**headers, "Host": "evil.example"})
    assert r.status_code in (303, 307, 404), r.text
    location = r.headers.get("location", "")
    assert "evil" not in location and "//" not in location, location


def test_bookmarked_link_with_the_key_starts_a_session(world, web):
    """A bookmarked link with ?api_key=: a session, and a relative redirect without the key."""
    site, http = web
    r = http.get(site["web"] + f"?api_key={KEY}")
    assert r.status_code == 303 and r.headers["location"] == "./"
    assert "btomo_session" in r.cookies and KEY not in r.cookies["btomo_session"]


# -- sessions -----------------------------------------------------------------------------------
def test_logout_ends_the_session_on_the_server(world, web):
    """The session cookie replayed after logout (a copied cookie): refused, 401."""
    site, http = web
    r = http.post(site["web"] + "login", data={"api_key": KEY})
    assert r.status_code == 303 and r.headers["location"] == "./"
    cookie = {"btomo_session": r.cookies["btomo_session"]}
    with httpx.Client(trust_env=False, timeout=60, cookies=cookie) as thief:
        assert thief.get(site["web"] + "api/jobs").status_code == 200
        r = http.post(site["web"] + "logout", cookies=cookie)
        assert r.status_code == 303 and r.headers["location"] == "login"
        assert thief.get(site["web"] + "api/jobs").status_code == 401


def test_session_cookie_is_random_not_derived_from_the_key(world, web):
    """Two logins give two unrelated session tokens, neither holding nor hashing the key alone."""
    site, http = web
    tokens = [http.post(site["web"] + "login", data={"api_key": KEY}).cookies["btomo_session"]
              for _ in range(2)]
    assert tokens[0] != tokens[1] and all(KEY not in t and len(t) >= 32 for t in tokens)


# -- throttling ---------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["header", "form", "query"])
def test_guessing_the_key_is_throttled(world, web, how):
    """200 wrong keys: after 5, each is answered 429 with Retry-After, unchecked, even the right one."""
    site, http = web

    def attempt(key: str) -> httpx.Response:
        if how == "header":
            return http.get(site["web"] + "api/jobs", headers={"Authorization": f"Apikey {key}"})
        if how == "form":
            return http.post(site["web"] + "login", data={"api_key": key})
        return http.get(site["web"] + f"?api_key={key}")

    t0 = time.monotonic()
    codes = [attempt(f"wrong{i}").status_code for i in range(200)]
    # 5 free tries, then one per doubling wait (1, 2, 4... s) however long the 200 took
    assert len(codes) - codes.count(429) <= 6 + np.log2(1 + time.monotonic() - t0), codes
    assert all(c != 200 for c in codes)
    r = attempt(KEY)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert "too many wrong keys" in r.json()["error"]


def test_throttle_wait_ends_and_the_right_key_gets_in(world, web):
    """After the wait (1 s after the 6th wrong key here), the right key is accepted again."""
    site, http = web
    for i in range(6):
        http.get(site["web"] + "api/jobs", headers={"Authorization": f"Apikey wrong{i}"})
    assert http.get(site["web"] + "api/jobs", headers=AUTH).status_code == 429
    time.sleep(1.2)
    assert http.get(site["web"] + "api/jobs", headers=AUTH).status_code == 200


def test_guessing_tiled_own_api_key_is_throttled(world):
    """Wrong keys sent to Tiled's own API: after 5, 429 with Retry-After, even the right one."""
    from bluesky_tomo_hpc.results.tiled_server import EmbeddedTiledServer

    # a Tiled of its own: the site's Tiled must keep serving the web app's right key from 127.0.0.1
    with EmbeddedTiledServer(world.data / "tiled", api_key=KEY) as tiled, \
            httpx.Client(trust_env=False, timeout=60) as http:
        url = tiled.uri + "/metadata/"
        assert http.get(url, headers=AUTH).status_code == 200
        # no key at all is not a guess: never counted
        assert {http.get(url).status_code for _ in range(10)} == {401}
        t0 = time.monotonic()
        codes = [http.get(url, params={"api_key": f"wrong{i}"}).status_code for i in range(40)]
        assert set(codes) <= {401, 429} and codes[:5] == [401] * 5
        assert len(codes) - codes.count(429) <= 6 + np.log2(1 + time.monotonic() - t0), codes
        r = http.get(url, headers=AUTH)
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1, r.text


def test_live_followers_are_bounded(world, web):
    """More browsers than allowed follow the live preview: the next gets 503 with Retry-After."""
    site, http = web
    live = site["ctx"].live
    live.max_listeners = 2
    url = site["web"] + "api/live/stream"
    try:
        with http.stream("GET", url, headers=AUTH) as a, http.stream("GET", url, headers=AUTH) as b:
            assert a.status_code == b.status_code == 200
            lines = [a.iter_lines(), b.iter_lines()]  # kept: a dropped iterator closes its stream
            for each in lines:  # each has registered once its first line came
                assert next(each).startswith("retry:")
            r = http.get(url, headers=AUTH)
            assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0, r.text
            assert "already follow" in r.json()["error"]
        deadline = time.monotonic() + 60  # a closed stream gives its place back
        while live.full and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not live.full
        with http.stream("GET", url, headers=AUTH) as c:
            assert c.status_code == 200
    finally:
        live.max_listeners = 64


def test_oversized_login_form_is_refused(world, web):
    """A 1 MB login form: 413 before it is read whole."""
    site, http = web
    r = http.post(site["web"] + "login", content=b"api_key=" + b"a" * 2**20,
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413


# -- query parameters ---------------------------------------------------------------------------
@pytest.mark.parametrize("path, words", [
    ("api/recon?limit=-5", "limit must be from 1 to 500"),
    ("api/recon?limit=0", "limit must be from 1 to 500"),
    ("api/recon?limit=100000000", "limit must be from 1 to 500"),
    ("api/recon?limit=1&limit=2", "more than once"),
    ("api/runs?limit=abc", "whole number"),
    ("api/runs?since=nan", "since must be a number"),
    ("api/runs?until=inf", "until must be a number"),
    ("api/runs?scan_id=99999999999999999999999", "scan_id must be from 0"),
    ("api/runs?scan_id=-1", "scan_id must be from 0"),
    ("api/runs?sample=" + "a" * 500, "at most 128"),
    ("api/runs?sample=" + "a" * 5000, "longer than 2048"),
    ("api/runs?plan=%1b%5b31m", "control characters"),
    ("api/runs?colour=red", "unknown query parameter 'colour'"),
    ("api/jobs?active=yes", "active must be one of 0, 1"),
    ("api/recon/{key}/volume.nii?max_side=-1", "max_side must be from 16 to 256"),
    ("api/recon/{key}/volume.nii?max_side=0", "max_side must be from 16 to 256"),
    ("api/recon/{key}/volume.nii?max_side=100000", "max_side must be from 16 to 256"),
    ("api/recon/{key}/slice/xy.png?index=-1", "index must be from 0"),
    ("api/recon/{key}/slice/xy.png?index=40", "index 40 out of range"),
    ("api/recon/{key}/slice/xy.png?level=-2", "level must be from 0"),
    ("api/recon/{key}/slice/xy.png?lo=nan&hi=50", "lo must be a number"),
    ("api/recon/{key}/slice/xy.png?lo=60&hi=50", "0 <= lo < hi <= 100"),
    ("api/recon/{key}/preview/xy.png?hi=1e309", "hi must be a number"),
    ("api/health?verbose=1", "unknown query parameter"),
    ("api/jobs/" + "j" * 300, "not a valid job id"),
    ("api/live/final/" + "u" * 300, "not a valid uid"),
])
def test_every_query_parameter_is_validated_and_bounded(world, web, path, words):
    """A query parameter out of range, not finite, repeated, unknown or too long: 400, one line."""
    site, http = web
    r = http.get(site["web"] + path.format(key=site["key"]), headers=AUTH)
    assert r.status_code == 400, (r.status_code, r.text[:300])
    error = r.json()["error"]
    assert words in error and "\n" not in error and len(error) < 300, error


def test_bounded_parameters_still_answer(world, web):
    """In range, the same routes answer: a list of 1, a 16-voxel volume, a slice with its contrast."""
    site, http = web
    key = site["key"]
    assert len(http.get(site["web"] + "api/recon?limit=1", headers=AUTH).json()["reconstructions"]) == 1
    r = http.get(site["web"] + f"api/recon/{key}/volume.nii?max_side=16", headers=AUTH)
    assert r.status_code == 200 and 0 < len(r.content) < 40**3
    r = http.get(site["web"] + f"api/recon/{key}/slice/xz.png?index=3&level=0&lo=1&hi=99", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


@pytest.mark.parametrize("stats", [
    "not a record", {"counts": [1] * 5000, "shape": [2, 2, 2], "range": [0, 1], "window": [0, 1],
                     "sampled": 8, "step": 1},
    {"counts": [-1, 2], "shape": [2, 2, 2], "range": [0, 1], "window": [0, 1], "sampled": 8, "step": 1},
    {"counts": [1, 2], "shape": [2, 2], "range": [0, 1], "window": [0, 1], "sampled": 8, "step": 1},
    {"counts": [1, 2], "shape": [2, 2, 2], "range": [float("nan"), 1], "window": [0, 1], "sampled": 8,
     "step": 1},
    {"counts": [1, 2], "shape": [2, 2, 2], "range": [1, 0], "window": [0, 1], "sampled": 8, "step": 1},
    {"counts": ["__import__('os')", 2], "shape": [2, 2, 2], "range": [0, 1], "window": [0, 1],
     "sampled": 8, "step": 1},
    {"counts": [1, 2], "shape": [2, 2, 10**30], "range": [0, 1], "window": [0, 1], "sampled": 8, "step": 1},
])
def test_forged_stored_histogram_is_not_trusted(stats):
    """A forged histogram in a result's Tiled metadata: ignored (recomputed), never served or run.

    A node's stored ``volume_stats`` (written by another client, or edited) that is not exactly the
    form the writer stores — too many bins, negative or non-numeric counts, a 2-axis shape, NaN or
    reversed edges, absurd sizes — is treated as missing, so the page computes the histogram itself.
    """
    from bluesky_tomo_hpc.results.volume_stats import STATS_KEY, stored_stats

    assert stored_stats({STATS_KEY: stats}) is None
    good = {"counts": [1, 2], "shape": [2, 2, 2], "range": [0.0, 1.0], "window": [0.0, 1.0], "sampled": 8,
            "step": 1}
    assert stored_stats({STATS_KEY: good}) is not None
