"""The automatic centre on every real dataset with a reference (issue 19), from a clean clone:
the small permissively licensed ones ship in ``tests/data``, the rest come from ``../shared/data``
when it is there. And the fallback rule: an uncertain centre never moves away from the data's
evidence.

Convention: pixel-index centres. References and their own tolerance: ``../shared/data`` READMEs.
"""

from __future__ import annotations

import numpy as np
import pytest

from bluesky_tomo_hpc.engine.center import CONFIDENCE_THRESHOLD, CenterEstimate, resolve_uncertain_center
from bluesky_tomo_hpc.engine.params import ReconParams
from bluesky_tomo_hpc.engine.reconstruct import find_center, preprocess_projections
from bluesky_tomo_hpc.sources.raw_files import load_scan

#: path inside ../shared/data -> (reference, its own tolerance, must be confident)
REAL = {
    "tomopy_tooth/tooth.h5": (296.0, 1.0, True),
    "cil_imat180/cil_imat180.h5": (281.5, 2.5, True),
    "muhrec_wood360/muhrec_wood360.h5": (284.0, 1.0, True),
    "muhrec_wood360_halfacq/muhrec_wood360_halfacq.h5": (284.0, 1.0, True),
    "muhrec_wood180_interior/muhrec_wood180_interior.h5": (100.0, 1.0, True),
    "cil_imat180_interior/cil_imat180_interior.h5": (100.5, 2.5, False),
    "cil_imat180_sparse/cil_imat180_sparse.h5": (281.5, 2.5, False),
}


@pytest.mark.parametrize("rel", list(REAL))
def test_real_scan_centre_is_right_or_says_how_unsure(reference_file, rel):
    ref, tol, must_be_confident = REAL[rel]
    params = ReconParams()
    proj_log, theta, _ = preprocess_projections(load_scan(reference_file(rel)), params)
    est = find_center(proj_log, theta, params)
    err, u = abs(est.center - ref), est.details["uncertainty_px"]
    if est.confidence >= CONFIDENCE_THRESHOLD:
        assert err <= 0.5, (rel, est.center, est.confidence)
    else:
        assert not must_be_confident, (rel, est.center, est.confidence, u)
    # the stated uncertainty covers the error, up to the reference's own tolerance
    assert err <= u + tol, (rel, est.center, u)
    # and the fallback keeps the estimate: the data hold evidence here
    used = resolve_uncertain_center(est, proj_log.shape[2])
    assert used.center == est.center


def _uncertain(center: float, u: float, **details) -> CenterEstimate:
    return CenterEstimate(center, 0.2, "auto:negative-mass", {"uncertainty_px": u, **details})


def test_uncertain_centre_keeps_the_estimate_not_the_detector_middle():
    # the case: 244.70 found with a low confidence; the middle of 490 columns is 6 px away
    used = resolve_uncertain_center(_uncertain(244.70, 0.7), nx=490)
    assert used.center == 244.70 and used.method == "fallback" and used.details["uncertain"]
    assert "centre uncertain" in used.details["warning"] and used.details["fallback"].startswith("estimate")


def test_last_confident_centre_is_used_only_where_it_fits_the_data_as_well():
    fits = resolve_uncertain_center(_uncertain(244.70, 0.7), nx=490, fallback=245.1)
    assert fits.center == 245.1 and "last confident centre" in fits.details["fallback"]
    far = resolve_uncertain_center(_uncertain(244.70, 0.7), nx=490, fallback=250.0)
    assert far.center == 244.70 and far.details["estimate"] == 244.70


def test_a_guess_only_where_the_data_show_no_axis():
    assert resolve_uncertain_center(_uncertain(30.0, 2.0, no_evidence=True), nx=96).center == 47.5
    assert resolve_uncertain_center(_uncertain(30.0, 40.0), nx=96, fallback=50.25).center == 50.25
    half = resolve_uncertain_center(_uncertain(280.0, 30.0, half_acquisition=True), nx=332)
    assert half.center == 280.0  # the middle cannot be a half acquisition's axis


def test_confident_and_given_centres_pass_unchanged():
    sure = CenterEstimate(100.2, 0.9, "auto:negative-mass", {"uncertainty_px": 0.2})
    assert resolve_uncertain_center(sure, 200, fallback=90.0) is sure
    assert np.isclose(resolve_uncertain_center(CenterEstimate(3.0, 0.0, "given"), 10).center, 3.0)
