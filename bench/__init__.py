"""roomd's load generator and benchmark scenarios (`just bench`, `python -m bench`).

Not a test suite: the scenarios report ratios and percentiles of one run. The
receive-side accounting (`bench.accounting`) is pure and is what the tests check.
"""
