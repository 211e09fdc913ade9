"""Latency benchmarks (`python benchmarks/<kind>.py`): models, end to end, concurrency, ASR, VAD.

Each kind module has `add_arguments(parser)` and `run(args) -> int`; results go
to `benchmarks/results/<machine>/` as JSON, a Markdown table and PNG plots.
"""
