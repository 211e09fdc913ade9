"""Latency benchmarks (`crab-rt bench ...`, `benchmarks/*.py`): models, end to end, concurrency, VAD.

Each kind module has `add_arguments(parser)` and `run(args) -> int`; results go
to `benchmarks/results/<machine>/` as JSON, a Markdown table and PNG plots.
"""
