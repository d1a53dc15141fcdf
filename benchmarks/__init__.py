"""Reproducible benchmarks: ``python -m benchmarks <name>``.

Each benchmark is a module here with ``main(argv) -> dict``. It prints a readable
table and returns its figures; the harness prints them as one JSON object on the
last line, so scripts can ``tail -n1 | jq``. Benchmarks compare against a peer
in the same run and quote medians; they are not timed tests.
"""
