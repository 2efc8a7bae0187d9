"""Metadata about what was scanned: the sample (``start["sample"]``) and the series a scan
belongs to (``start["series"]``). See ``docs/explanations/conventions.md``."""
