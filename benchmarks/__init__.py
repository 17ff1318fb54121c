"""Benchmarks of the videogen service on the embedded stack (`make bench`, `python -m
benchmarks`): pickup latency, admission throughput, orchestration overhead, checkpoint
overhead, recovery after SIGTERM/SIGKILL and cancel latency, written to benchmarks/results/.
"""
