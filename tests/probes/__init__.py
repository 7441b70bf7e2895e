"""Misuse probes of `companion`: measurements, not tests.

Each probe runs a sample of misuse (wrong shapes, ranges, damaged checkpoints, kills, ranks
that disagree) against the public functions and counts the outcomes (clear error, correct
result, cryptic error, silent wrong result, lost work, hang); the tests that keep the fixes
are beside them in tests/. Run one from the repository root:

    python -m tests.probes.probe_faults      # issue 24's kinds of misuse
    python -m tests.probes.probe_inputs      # the argument checks (tests/test_checks.py)
    python -m tests.probes.probe_pass3       # issue 45: nothing lost, nothing hangs
"""
