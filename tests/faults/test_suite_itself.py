"""The fault suite documents itself: every case says what it expects, and the table exists."""

from __future__ import annotations

from pathlib import Path

FAULTS = Path(__file__).resolve().parent
TABLE = FAULTS.parents[1] / "docs" / "reference" / "faults.md"


def test_every_case_states_what_it_expects(request):
    """Each case in tests/faults has a first docstring line, which the docs table shows as 'expected'."""
    cases = [i for i in request.session.items if Path(str(i.path)).parent == FAULTS]
    missing = [i.nodeid for i in cases
               if not (getattr(i, "function", None) and (i.function.__doc__ or "").strip())]
    assert cases and missing == [], f"cases without a docstring: {missing}"
    assert TABLE.is_file() and "python tests/faults/faults_table.py" in TABLE.read_text(), (
        "run: python tests/faults/faults_table.py")


def test_the_table_lists_every_case_as_declared():
    """docs/reference/faults.md lists exactly today's cases with their expectations (read, not run)."""
    from faults_table import declared_cases, table_cases

    declared, table = declared_cases(FAULTS), table_cases(TABLE.read_text())
    assert declared, "no case found in tests/faults"
    assert sorted(set(declared) - set(table)) == [], "cases missing from the table: run faults_table.py"
    assert sorted(set(table) - set(declared)) == [], "cases gone from the code: run faults_table.py"
    changed = sorted(c for c in declared if declared[c] != table[c])
    assert changed == [], f"expectations changed since the table was written: {changed}"
