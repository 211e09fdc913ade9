"""`python benchmarks/fuzz_serve.py`: protocol fuzzing of `crab-rt serve` at scale, beside one healthy client.

One server process (`crab-rt serve`, the preset's random-weight benchmark bundle, `--no-asr`, loopback only,
`--max-message-bytes` 64 KiB and short start / idle timeouts so that oversized and idle cases are cheap) takes
`--cases` (20,000) generated connections, `--concurrency` (16) at a time. The cases come from the strategies of
tests/test_serve_fuzz.py (crab_bench.fuzz), drawn by hypothesis in runs of `--chunk` cases, each run with its own
seed derived from `--seed` (a single run would grow hypothesis' bookkeeping with every case). Each case is judged
against what docs/protocol.md promises (crab_bench.fuzz_oracle, crab_bench.fuzz_client.judge): no traceback, the
documented `error` code and close code, `ready` / `done` in place, schema-valid messages, no hang.

Beside the fuzzing a healthy client streams samples/jfk.flac at real time and must keep getting its events; after
every chunk `/healthz` must answer 200 and the server's RSS is sampled (/proc). At the end: the server's counters
from /metrics, its exit code after SIGTERM (a drain: 0), and the exceptions in its log, by type.

Reported: cases run, cases per documented outcome (error code, stop, 1009, 1007, idle timeout, client close) and how
many of each failed, the known server bugs (crab_bench.fuzz_oracle.KNOWN_BUGS) with how often each was hit, every
other failure with its reproducer (`Case.from_json`), the server's RSS before and after (and its growth over the
second half, as in `soak`), wall time. Writes fuzz_serve[_tag].json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from crab_bench.common import CommonBenchConfig, add_common_arguments, check_choice, check_range, finish_run
from crab_rt.cli._options import add_config_option

__all__ = ["CONFIG", "FuzzBenchConfig", "add_arguments", "run", "generate", "GROWTH_LIMIT_MB"]

GROWTH_LIMIT_MB = 20.0  # the server's RSS over the second half of the run (as in `soak`)
JFK = Path(__file__).resolve().parents[2] / "samples" / "jfk.flac"
KEEP_FAILURES = 50  # reproducers kept for failures outside the known bugs


@dataclasses.dataclass(frozen=True)
class FuzzBenchConfig(CommonBenchConfig):
    """Options of `fuzz_serve` (and of CommonBenchConfig; `seed` seeds the case generator).

    Attributes:
        cases: generated connections in all.
        concurrency: connections open at once.
        chunk: cases per hypothesis run (each with its own seed); the server is checked after each.
        preset: model sizes of the benchmark bundle (crab_bench.bundles.PRESETS).
        bundle: serve this bundle folder instead of the preset's random-weight benchmark bundle.
        max_message_bytes: the server's --max-message-bytes.
        idle_timeout_s: the server's --idle-timeout-s and --start-timeout-s (the idle cases wait this long).
    """

    cases: int = 20_000
    concurrency: int = 16
    chunk: int = 250
    preset: str = "tiny"
    bundle: str | None = None
    max_message_bytes: int = 64 * 1024
    idle_timeout_s: float = 1.5

    def validate(self) -> None:
        from crab_bench.bundles import PRESETS

        super().validate()
        check_range("--cases", self.cases, 1, 10_000_000)
        check_range("--concurrency", self.concurrency, 1, 200)
        check_range("--chunk", self.chunk, 1, 10_000)
        check_choice("--preset", self.preset, PRESETS)
        check_range("--max-message-bytes", self.max_message_bytes, 1024, 64 << 20)
        check_range("--idle-timeout-s", self.idle_timeout_s, 0.1, 60)


CONFIG = FuzzBenchConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    cls = FuzzBenchConfig
    add_common_arguments(p)
    add_config_option(p, "--cases", cls, "cases", "generated connections in all")
    add_config_option(p, "--concurrency", cls, "concurrency", "connections open at once")
    add_config_option(p, "--chunk", cls, "chunk", "cases per hypothesis run; the server is checked after each")
    add_config_option(p, "--preset", cls, "preset", "model preset of the benchmark bundle: tiny, base or large")
    add_config_option(p, "--bundle", cls, "bundle", "serve this bundle folder instead", type=str,
                      default_text="the preset's random-weight benchmark bundle")
    add_config_option(p, "--max-message-bytes", cls, "max_message_bytes", "the server's --max-message-bytes")
    add_config_option(p, "--idle-timeout-s", cls, "idle_timeout_s",
                      "the server's --idle-timeout-s and --start-timeout-s")


def generate(seed: int, n: int, max_message_bytes: int) -> list:
    """`n` cases from one hypothesis run seeded with `seed` (the strategies of crab_bench.fuzz)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as seeded
    from hypothesis.configuration import set_hypothesis_home_dir

    from crab_bench.fuzz import cases

    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "crab-rt-hypothesis")  # its caches: not in the checkout
    out: list = []

    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @seeded(seed)
    @given(cases(max_message_bytes=max_message_bytes, idle=True))
    def collect(case) -> None:
        out.append(case)

    collect()
    return out


class _Tally:
    """Counts per outcome, tag and known bug; the failures and their reproducers; per-case times."""

    def __init__(self, max_message_bytes: int) -> None:
        self.max_message_bytes = max_message_bytes
        self.outcomes: collections.Counter = collections.Counter()
        self.failed: collections.Counter = collections.Counter()
        self.tags: collections.Counter = collections.Counter()
        self.bug_cases: collections.Counter = collections.Counter()
        self.bug_failed: collections.Counter = collections.Counter()
        self.bug_example: dict[str, dict] = {}
        self.failures: list[dict] = []
        self.new_failures = 0
        self.times: list[float] = []
        self.messages = 0
        self.bytes = 0

    def add(self, case, expected, seen, problems: list[str]) -> None:
        from crab_bench.fuzz_oracle import known_bug

        self.outcomes[expected.outcome] += 1
        self.tags.update(case.tags)
        self.messages += expected.sent
        self.bytes += sum(f.size for f in case.wire()[:expected.sent])
        if expected.outcome != "idle_timeout":
            self.times.append(seen.elapsed_s)
        bug = known_bug(case, self.max_message_bytes)
        if bug is not None:
            self.bug_cases[bug] += 1
        if not problems:
            return
        self.failed[expected.outcome] += 1
        record = {"outcome": expected.outcome, "problems": problems[:6], "reproducer": case.to_json()}
        if bug is not None:
            self.bug_failed[bug] += 1
            self.bug_example.setdefault(bug, record)
            return
        self.new_failures += 1
        if len(self.failures) < KEEP_FAILURES:
            self.failures.append(record)


def _server_log(lines: list[str]) -> dict:
    """What the server's stderr says went wrong: tracebacks, and the exception types that ended them."""
    import re

    types = collections.Counter()
    for line in lines:
        m = re.match(r"^([A-Za-z_.]*(?:Error|Exception|Exit|Interrupt))(?::|$)", line)
        if m:
            types[m.group(1)] += 1
    warnings = sum(1 for line in lines if "warning" in line.lower()[:40])
    return {"lines": len(lines), "warning_lines": warnings, "tracebacks": sum("Traceback" in line for line in lines),
            "exception_types": dict(types.most_common()),
            "handler_failures": sum("connection handler failed" in line for line in lines),
            "internal_errors": sum("unexpected internal error" in line for line in lines)}


def run(config: FuzzBenchConfig) -> int:
    """Fuzz one server process with `config.cases` connections; writes fuzz_serve[_tag].json and .md."""
    from crab_bench.bundles import ensure_bundle
    from crab_bench.common import resolve_threads, start_run
    from crab_bench.fuzz_client import FuzzTarget, HealthyStream, http_get
    from crab_bench.fuzz_oracle import KNOWN_BUGS
    from crab_bench.serve_load import ServerProcess, _proc_memory_mb, _read_metrics
    from crab_rt.audio import load_audio

    config.validate()
    say = print if not config.quiet else (lambda *a, **k: None)
    threads = resolve_threads(config.threads)
    ctx = start_run(config, threads)
    bundle = Path(config.bundle) if config.bundle else ensure_bundle(config.preset, ctx["cache_dir"], say)
    idle = f"{config.idle_timeout_s:g}"
    argv = [sys.executable, "-m", "crab_rt.cli", "serve", "--bundle", str(bundle), "--host", "127.0.0.1",
            "--port", "0", "--backend", "onnxruntime", "--threads", str(threads), "--no-asr",
            "--max-streams", str(config.concurrency + 8), "--max-message-bytes", str(config.max_message_bytes),
            "--start-timeout-s", idle, "--idle-timeout-s", idle]
    server = ServerProcess(argv)
    url = server.start(timeout=300)
    port = urlparse(url).port
    say(f"fuzz_serve: {config.cases} cases, {config.concurrency} at a time, against {url} (pid {server.pid})")
    healthy = HealthyStream(url, load_audio(JFK)).start()
    target = FuzzTarget(url, port, config.max_message_bytes, config.idle_timeout_s)
    tally = _Tally(config.max_message_bytes)
    rss: list[dict] = []
    health_failures: list[str] = []
    healthy_problems: list[str] = []
    t0 = time.perf_counter()

    def checkpoint(done: int) -> None:
        status, body = http_get(port, "/healthz")
        if status != 200:
            health_failures.append(f"after {done} cases: /healthz {status} {body.strip()[:200]}")
        healthy_problems[:] = healthy.progress(every_s=10.0, timeout_s=60.0)
        rss.append({"cases": done, "wall_s": round(time.perf_counter() - t0, 1),
                    "rss_mb": _proc_memory_mb(server.pid).get("rss_mb"), "healthy_events": healthy.events})

    async def fuzz() -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(config.concurrency)

        async def one(case) -> None:
            async with gate:
                expected, seen, problems = await target.judge_async(case)
            tally.add(case, expected, seen, problems)

        done, chunk_no = 0, 0
        pending = loop.run_in_executor(None, generate, config.seed * 1_000_003, config.chunk, config.max_message_bytes)
        await loop.run_in_executor(None, checkpoint, 0)
        while done < config.cases:
            batch = (await pending)[: config.cases - done]
            chunk_no += 1
            if done + len(batch) < config.cases:
                pending = loop.run_in_executor(None, generate, config.seed * 1_000_003 + chunk_no, config.chunk,
                                               config.max_message_bytes)
            await asyncio.gather(*(one(case) for case in batch))
            done += len(batch)
            await loop.run_in_executor(None, checkpoint, done)
            last = rss[-1]
            say(f"  {done:6d} cases  {last['wall_s']:7.1f} s  failed {sum(tally.failed.values())} "
                f"(outside known bugs {tally.new_failures})  server RSS {last['rss_mb']} MB  "
                f"healthy events {last['healthy_events']}")

    try:
        asyncio.run(fuzz())
        wall = time.perf_counter() - t0
        healthy.stop()
        metrics = _read_metrics(url)
    finally:
        healthy.stop()
        exit_code = server.stop()
    log = _server_log(server.lines)
    half = [s["rss_mb"] for s in rss if s["cases"] >= config.cases / 2 and s["rss_mb"] is not None]
    growth = round(half[-1] - half[0], 1) if len(half) >= 2 else None
    times = np.array(tally.times) * 1000 if tally.times else np.zeros(1)
    cases_run = sum(tally.outcomes.values())
    ok = (tally.new_failures == 0 and not health_failures and not healthy.problems and exit_code == 0
          and growth is not None and growth < GROWTH_LIMIT_MB)
    payload = {
        "kind": "fuzz_serve", "server_command": " ".join(argv[1:]), "bundle": str(bundle),
        "cases": cases_run, "wall_s": round(wall, 1), "cases_per_s": round(cases_run / wall, 1),
        "messages_sent": tally.messages, "bytes_sent": tally.bytes,
        "case_ms": {"p50": round(float(np.percentile(times, 50)), 1), "p99": round(float(np.percentile(times, 99)), 1),
                    "max": round(float(times.max()), 1)},
        "outcomes": {k: {"cases": n, "failed": tally.failed[k]} for k, n in tally.outcomes.most_common()},
        "tags": dict(tally.tags.most_common()),
        "known_bugs": {bug: {"description": KNOWN_BUGS[bug], "cases": tally.bug_cases[bug],
                             "failed": tally.bug_failed[bug], "example": tally.bug_example.get(bug)}
                       for bug in KNOWN_BUGS},
        "failed": sum(tally.failed.values()), "new_failures": tally.new_failures, "failures": tally.failures,
        "healthz_failures": health_failures,
        "healthy_stream": {"rounds": healthy.rounds, "events": healthy.events, "problems": healthy.problems},
        "server": {"exit_code": exit_code, "log": log, "rss_samples": rss,
                   "rss_mb": {"before": rss[0]["rss_mb"], "after": rss[-1]["rss_mb"],
                              "max": max((s["rss_mb"] or 0) for s in rss), "growth_second_half": growth},
                   "metrics": {k: v for k, v in metrics.items() if k.startswith(("crab_rt_stream_errors_total",
                               "crab_rt_streams_total", "crab_rt_connections_refused", "crab_rt_streams_active"))}},
        "target": {"what": "no failure outside the known bugs, /healthz 200 after every chunk, the healthy stream "
                           f"undisturbed, exit code 0 after SIGTERM, server RSS growth over the second half < "
                           f"{GROWTH_LIMIT_MB:g} MB", "met": ok},
    }
    say(f"  {cases_run} cases in {wall:.0f} s; failed {payload['failed']} (outside known bugs "
        f"{tally.new_failures}); server RSS {payload['server']['rss_mb']['before']} -> "
        f"{payload['server']['rss_mb']['after']} MB; exit code {exit_code}")
    finish_run(ctx, "fuzz_serve", payload, _markdown(config, payload), None, say)
    return 0 if ok else 1


def _markdown(config: FuzzBenchConfig, p: dict) -> tuple[str, list, list]:
    import json

    from crab_bench.report import markdown_table

    outcomes = markdown_table(["documented outcome", "cases", "failed"],
                              [[k, v["cases"], v["failed"]] for k, v in p["outcomes"].items()])
    bugs = markdown_table(["known bug", "cases that may hit it", "failed", "what"],
                          [[k, v["cases"], v["failed"], v["description"]] for k, v in p["known_bugs"].items()])
    samples = p["server"]["rss_samples"]
    every = max(1, len(samples) // 12)  # about a dozen rows, the first and the last included
    rss = markdown_table(["cases", "wall s", "server RSS MB", "healthy events"],
                         [[s["cases"], s["wall_s"], s["rss_mb"], s["healthy_events"]]
                          for i, s in enumerate(samples) if i % every == 0 or i == len(samples) - 1])
    log = p["server"]["log"]
    if p["failures"]:
        shown = [f"- `{f['outcome']}`: {'; '.join(f['problems'])}\n\n  ```json\n  {json.dumps(f['reproducer'])}\n  ```"
                 for f in p["failures"][:5]]
        failures = "\n".join(shown) + (f"\n\n({len(p['failures'])} kept in the JSON)" if len(p["failures"]) > 5 else "")
    else:
        failures = "None: every case outside the known bugs got the documented answer."
    met = "met" if p["target"]["met"] else "**missed**"
    rss_mb = p["server"]["rss_mb"]
    notes = [
        f"server: `{p['server_command']}` (one process, loopback only)",
        f"{p['cases']} generated connections ({p['messages_sent']} messages, {p['bytes_sent'] / 2**20:.1f} MiB), "
        f"{config.concurrency} at a time, in hypothesis runs of {config.chunk} seeded from --seed {config.seed}; "
        f"wall {p['wall_s']} s ({p['cases_per_s']} cases/s); per case (idle ones aside) p50 {p['case_ms']['p50']} ms, "
        f"p99 {p['case_ms']['p99']} ms, max {p['case_ms']['max']} ms",
        f"failed: {p['failed']} cases, {p['new_failures']} of them outside the known bugs",
        f"healthy stream (jfk.flac at real time beside the fuzzing): {p['healthy_stream']['rounds']} rounds, "
        f"{p['healthy_stream']['events']} events, problems: {len(p['healthy_stream']['problems'])}; /healthz not 200: "
        f"{len(p['healthz_failures'])} times",
        f"server RSS {rss_mb['before']} MB before, {rss_mb['after']} MB after, max {rss_mb['max']} MB; growth over the "
        f"second half {rss_mb['growth_second_half']} MB; exit code after SIGTERM {p['server']['exit_code']}",
        f"server log: {log['warning_lines']} warning lines (one per refused input, as documented), "
        f"{log['tracebacks']} tracebacks ({log['handler_failures']} 'connection handler failed', "
        f"{log['internal_errors']} 'unexpected internal error'), exceptions: {log['exception_types'] or 'none'}",
        f"target: {p['target']['what']}: {met}",
    ]
    sections = [("Cases per documented outcome", outcomes), ("Known server bugs hit", bugs),
                ("Failures outside the known bugs", failures), ("Server resident memory", rss)]
    return "Protocol fuzzing of crab-rt serve", sections, notes
