"""Issue #6's benchmark: what a check costs, against the ideal and a curl loop.

Not part of the product and not a test: `make bench` runs it and writes
`bench/RESULTS.md`. Reuses the test fixtures in `tests/real` and `tests/fakes`.
"""
