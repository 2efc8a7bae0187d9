"""Plans that build on the tomography scan: time series (4D) and adaptive (steered) plans."""
