"""Latency benchmarks (`python benchmarks/<kind>.py`): models, end to end, concurrency, ASR, VAD.

Each kind module has a frozen config dataclass (`CONFIG`, e.g. `VadBenchConfig`,
extending `common.CommonBenchConfig`), `add_arguments(parser)` whose flags take
their defaults from its fields, and `run(config) -> int`; only `cli.py` sees
argparse. Results go to `benchmarks/results/<machine>/` as JSON, a Markdown
table and PNG plots.
"""
