"""Benchmarks behind ``launchers/bench.py``: each case runs in a fresh child process
(so peak RSS is its own) beside a named baseline measured in the same run."""
