"""`python benchmarks/serve.py --ray`: single-process `crab-rt serve` vs `crab-rt serve --ray` under the same load.

What scale-out costs on one machine. Each repeat runs, for each client count, one run of each engine, in turn
(serve, ray, serve, ray, ... so that a drifting shared machine hits both alike), each in a fresh server process
started with the same flags (the Ray Serve app adds `--ray --ray-config FILE`) and measured as the `serve` kind
measures a run (`crab_bench.serve_load._run_level`: real-time clients of real speech on loopback, client-side
and server-side end-of-speech-to-event latency, lost events, refusals). Then, per repeat and engine, a
throughput run: the largest client count sending as fast as the server reads (`realtime: false`), whose audio
seconds per wall second is the throughput.

Differences from the `serve` kind:
- CPU and memory are those of the server's whole process tree (for the Ray app: the `crab-rt serve --ray`
  driver, Ray's GCS and raylet, and the workers of the Serve controller, the HTTP proxy and the replicas),
  read from /proc, so that Ray's own overhead is counted. Memory is the sum of the processes' RSS (shared
  pages counted once per process: an upper bound).
- Both engines get `--asr-threads` = `--threads`, so that the ASR thread count is the same in both; the Ray
  app's replicas otherwise default to their `num_cpus`.
- The Ray config defaults to one machine's (`DEFAULT_RAY_CONFIG`): one ingress, one model and one ASR replica.

Writes serve_ray_<preset>[_tag].json and .md.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path

from crab_bench import serve_load
from crab_bench.common import finish_run, resolve_threads
from crab_bench.machine import machine_busy_s
from crab_bench.stats import spread
from crab_rt.audio import SAMPLE_RATE
from crab_rt.errors import ConfigError

__all__ = ["DEFAULT_RAY_CONFIG", "TreeServerProcess", "run", "markdown"]

ENGINES = ("serve", "ray")
CLEAN_CORES = 0.15  # a run counts when other processes kept at most this many cores busy meanwhile
ATTEMPTS = 4  # a pair of runs (one per engine) is run again until both are clean, at most this often
STAGES = ("asr", "speech_encoder", "text_encoder", "head", "queue_wait")

# One machine: the replicas' num_cpus only reserve Ray's logical CPUs (the threads are set by the flags);
# 0.5 + 0.5 + 1 fits a 2-core box.
DEFAULT_RAY_CONFIG = """\
# crab_bench.serve_ray's default: one replica of each deployment on this machine.
ingress: {replicas: 1, num_cpus: 0.5}
model: {replicas: 1, num_cpus: 0.5}
asr: {replicas: 1, num_cpus: 1.0}
"""


def _process_tree(root: int) -> list[int]:
    """`root` and its live descendants (from /proc/*/stat parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _tree_cpu_s(root: int) -> float:
    return sum(v for v in (serve_load._proc_cpu_seconds(pid) for pid in _process_tree(root)) if v is not None)


class TreeServerProcess(serve_load.ServerProcess):
    """A server process whose CPU seconds and memory are those of its whole process tree.

    It also measures how many cores other processes of the machine (not this benchmark's process tree, which
    holds the clients and the server) kept busy from the server's start to its stop: `last_foreign_cores`.
    """

    last_foreign_cores: float | None = None

    def _sample(self) -> tuple[float, float | None, float]:
        return time.perf_counter(), machine_busy_s(), _tree_cpu_s(os.getpid())

    def start(self, timeout: float) -> str:
        url = super().start(timeout)
        self._mark = self._sample()
        return url

    def stop(self, timeout: float = 60.0) -> int | None:
        mark = getattr(self, "_mark", None)
        if mark is not None and mark[1] is not None and self.proc is not None and self.proc.poll() is None:
            now = self._sample()
            wall = now[0] - mark[0]
            foreign = ((now[1] - mark[1]) - (now[2] - mark[2])) / wall if wall > 0 else None
            TreeServerProcess.last_foreign_cores = None if foreign is None else round(max(0.0, foreign), 3)
        else:
            TreeServerProcess.last_foreign_cores = None
        return super().stop(timeout)

    def cpu_seconds(self) -> float | None:
        values = [serve_load._proc_cpu_seconds(pid) for pid in _process_tree(self.proc.pid)]
        values = [v for v in values if v is not None]
        return round(sum(values), 2) if values else None

    def memory_mb(self) -> dict:
        pids = _process_tree(self.proc.pid)
        parts = [serve_load._proc_memory_mb(pid) for pid in pids]
        return {"rss_mb": round(sum(p.get("rss_mb", 0.0) for p in parts), 1),
                "peak_rss_mb": round(sum(p.get("peak_rss_mb", 0.0) for p in parts), 1), "processes": len(pids)}


def _median(values: list) -> float | None:
    return spread(values)["median"]


def _throughput(level: dict) -> dict:
    wall = level["wall_s"] or None
    return {"audio_s_per_wall_s": round(level["audio_s"] / wall, 3) if wall else None,
            "events_per_s": round(level["events_received"] / wall, 3) if wall else None,
            "wall_s": level["wall_s"], "events": level["events_received"], "expected": level["utterances_expected"],
            "events_lost": level["events_lost"], "server_cpu_s_per_audio_s": level["server_cpu_s_per_audio_s"],
            "client_ms": level["client_ms"], "server_ms": level["server_ms"]}


def run(config: serve_load.ServeBenchConfig) -> int:
    """Both engines at every level, `repeats` times, then the throughput runs; writes serve_ray_<preset>."""
    config.validate()
    say = print if not config.quiet else (lambda *a, **k: None)
    threads = resolve_threads(config.threads)
    if config.ray_config is not None and not Path(config.ray_config).is_file():
        raise ConfigError(f"--ray-config {config.ray_config}: no such file")
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("--ray needs ray: pip install 'crab-rt[ray]'") from None
    ctx, inputs = serve_load.prepare(config, threads, say)
    source, speech, bundle, info, asr_model, asr_note = inputs
    with tempfile.TemporaryDirectory(prefix="crab-bench-ray-") as tmp:
        ray_config = Path(config.ray_config) if config.ray_config else Path(tmp) / "ray.yaml"
        if config.ray_config is None:
            ray_config.write_text(DEFAULT_RAY_CONFIG, encoding="utf-8")
        base = serve_load._server_argv(config, bundle, asr_model, threads)
        if asr_model is not None:
            base += ["--asr-threads", str(threads)]
        argvs = {"serve": base, "ray": [*base, "--ray", "--ray-config", str(ray_config)]}
        counts = list(config.clients)
        top = max(counts)
        say(f"serve vs serve --ray: {source.name} looped to {config.duration_s:g} s per client at real time; clients "
            f"{','.join(map(str, counts))} x {config.repeats} repeat(s), then {top} clients as fast as possible; "
            f"ASR: {asr_note}")
        runs: dict[str, list[dict]] = {e: [] for e in ENGINES}
        fast: dict[str, list[dict]] = {e: [] for e in ENGINES}
        fast_config = dataclasses.replace(config, realtime=False, probe=False)

        def pair(cfg, n: int, r: int, into: dict, label: str) -> None:
            """One run of each engine, again while another process disturbed either (ATTEMPTS at most)."""
            for attempt in range(ATTEMPTS):
                done = []
                for engine in ENGINES:
                    say(f"[{engine}{label}]")
                    level = serve_load._run_level(cfg, argvs[engine], n, speech, r, say, TreeServerProcess)
                    foreign = TreeServerProcess.last_foreign_cores
                    done.append({"engine": engine, "attempt": attempt, "foreign_cores": foreign,
                                 "clean": foreign is not None and foreign <= CLEAN_CORES, **level})
                for run_ in done:
                    into[run_["engine"]].append(run_)
                if all(run_["clean"] for run_ in done):
                    return
                say(f"  other processes kept {max(d['foreign_cores'] or 0 for d in done):.2f} cores busy: "
                    "this pair does not count; running it again")

        for r in range(config.repeats):
            for n in counts:
                pair(config, n, r, runs, "")
            pair(fast_config, top, r, fast, ", as fast as possible")
        ray_config_text = ray_config.read_text(encoding="utf-8")

    def counted(rows: list[dict], n: int | None = None) -> list[dict]:
        """The clean runs (of level n), or every run of it when none was clean."""
        rows = [x for x in rows if n is None or x["clients"] == n]
        return [x for x in rows if x["clean"]] or rows

    levels = {e: serve_load._summarize([x for n in counts for x in counted(runs[e], n)], counts) for e in ENGINES}
    comparison = []
    for k, n in enumerate(counts):
        s, y = levels["serve"][k], levels["ray"][k]
        row = {"clients": n}
        for key in ("client_ms", "server_ms"):
            for stat in ("p50", "p95"):
                a, b = s[key][stat]["median"], y[key][stat]["median"]
                row[f"{key}_{stat}"] = {"serve": a, "ray": b,
                                        "added": None if a is None or b is None else round(b - a, 1)}
        a, b = s["server_cpu_s_per_audio_s"]["median"], y["server_cpu_s_per_audio_s"]["median"]
        row["server_cpu_s_per_audio_s"] = {"serve": a, "ray": b, "ratio": round(b / a, 2) if a and b else None}
        for key in ("events_lost", "streams_cut", "client_errors", "fatal_errors", "refused"):
            row[key] = {"serve": s[key], "ray": y[key]}
        comparison.append(row)
    throughput = {}
    for e in ENGINES:
        rows = [_throughput(level) for level in counted(fast[e])]
        throughput[e] = {"clients": top, "runs": rows,
                         "audio_s_per_wall_s": _median([t["audio_s_per_wall_s"] for t in rows]),
                         "events_per_s": _median([t["events_per_s"] for t in rows]),
                         "server_cpu_s_per_audio_s": _median([t["server_cpu_s_per_audio_s"] for t in rows]),
                         "events_lost": sum(t["events_lost"] for t in rows)}
    startup = {e: _median([r["server_startup_s"] for r in runs[e]]) for e in ENGINES}
    memory = {e: _median([(r["server_memory_mb"] or {}).get("rss_mb") for r in runs[e]]) for e in ENGINES}
    clean = {e: {"runs": len(runs[e]) + len(fast[e]), "clean": sum(x["clean"] for x in runs[e] + fast[e])}
             for e in ENGINES}
    payload = {
        "kind": "serve_ray", "preset": info.get("preset") or ("custom" if config.bundle else config.preset),
        "bundle": {"path": str(bundle), **info}, "backend": config.backend, "asr": asr_note, "threads": threads,
        "server_commands": {e: " ".join(argvs[e][1:]) for e in ENGINES}, "ray_config": ray_config_text,
        "server_max_streams": config.server_max_streams,
        "input": f"{source.name}, {speech.size / SAMPLE_RATE:.1f} s, looped with {config.gap_s:g} s of silence after "
                 f"each loop to {config.duration_s:g} s per client",
        "chunk_ms": config.chunk_ms, "stagger": config.stagger, "min_silence_ms": config.min_silence_ms,
        "clean_cores": CLEAN_CORES, "clean_runs": clean,
        "comparison": comparison, "throughput": throughput, "startup_s": startup, "server_rss_mb": memory,
        "levels": levels, "runs": runs, "throughput_runs": fast,
    }
    finish_run(ctx, f"serve_ray_{payload['preset']}", payload, markdown(payload), None, say)
    return 0


def _counted(rows: list[dict], n: int) -> list[dict]:
    rows = [x for x in rows if x["clients"] == n]
    return [x for x in rows if x.get("clean", True)] or rows


def _v(x, fmt: str = "{:.0f}") -> str:
    return "-" if x is None else fmt.format(x)


def markdown(p: dict) -> tuple[str, list, list]:
    from crab_bench.report import markdown_table

    rows = []
    for c in p["comparison"]:
        lat = [_v(c[key][side], "{:+.0f}" if side == "added" else "{:.0f}")
               for key in ("client_ms_p50", "client_ms_p95") for side in ("serve", "ray", "added")]
        cpu = c["server_cpu_s_per_audio_s"]
        errors = {e: c["client_errors"][e] + c["fatal_errors"][e] for e in ENGINES}
        rows.append([c["clients"], *lat, _v(c["server_ms_p50"]["added"], "{:+.0f}"), _v(cpu["serve"], "{:.3f}"),
                     _v(cpu["ray"], "{:.3f}"), f"{c['events_lost']['serve']} / {c['events_lost']['ray']}",
                     f"{errors['serve']} / {errors['ray']}"])
    latency = markdown_table(
        ["clients", "serve p50 ms", "ray p50 ms", "added p50 ms", "serve p95 ms", "ray p95 ms", "added p95 ms",
         "added server-side p50 ms", "serve CPU s / audio s", "ray CPU s / audio s", "lost (serve / ray)",
         "errors (serve / ray)"], rows)
    t = p["throughput"]
    tp_rows = [[e, t[e]["clients"], _v(t[e]["audio_s_per_wall_s"], "{:.2f}"), _v(t[e]["events_per_s"], "{:.2f}"),
                _v(t[e]["server_cpu_s_per_audio_s"], "{:.3f}"), t[e]["events_lost"],
                _v(p["startup_s"][e], "{:.1f}"), _v(p["server_rss_mb"][e])] for e in ENGINES]
    through = markdown_table(["engine", "clients", "audio s per wall s", "events per s", "CPU s / audio s",
                              "lost", "start-up s", "server RSS MB (sum)"], tp_rows)
    stage_rows = []
    for n in [c["clients"] for c in p["comparison"]]:
        for e in ENGINES:
            utts = [u for r in _counted(p["runs"][e], n) for c in r["per_client"] for u in c["utterances"]]
            stage_rows.append([n, e, _v(_median([u["server_ms"] for u in utts]))]
                              + [_v(_median([u["stages_ms"].get(k) for u in utts])) for k in STAGES])
    stages = markdown_table(["clients", "engine", "end_to_event", *STAGES], stage_rows)
    every = [(r, "") for k in range(len(p["runs"]["serve"])) for r in (p["runs"]["serve"][k], p["runs"]["ray"][k])]
    every += [(r, " (fast)") for k in range(len(p["throughput_runs"]["serve"]))
              for r in (p["throughput_runs"]["serve"][k], p["throughput_runs"]["ray"][k])]
    run_rows = [[r["engine"] + label, r["clients"], r["repeat"] + 1, r.get("attempt", 0) + 1,
                 r["client_ms"].get("p50"), r["client_ms"].get("p95"), r["server_ms"].get("p50"),
                 r["server_ms"].get("p95"), f"{r['events_received']}/{r['utterances_expected']}",
                 r["server_cpu_s_per_audio_s"], r.get("foreign_cores"), "yes" if r.get("clean", True) else "no",
                 r["yardstick_gflops"], r["server_log_problem_count"]] for r, label in every]
    runs = markdown_table(["engine", "clients", "repeat", "attempt", "client p50", "client p95", "server p50",
                           "server p95", "events / utterances", "CPU s / audio s", "other processes, cores",
                           "counted", "yardstick GFLOP/s", "server log problems"], run_rows)
    notes = [
        "stages: the events' latency_ms; for Ray, queue_wait is the round trip to the replicas minus their compute "
        "time (batch wait, Serve's queues, transport), for the single process the wait for a free worker",
        "added = Ray app minus single process (medians over runs of each run's p50 / p95); client-side latency: "
        "from the moment the client had sent the audio up to the end-of-speech decision to the arrival of the "
        "event, as in the serve kind; server-side: the event's latency_ms.end_to_event (in the ingress for Ray)",
        f"single process: `{p['server_commands']['serve']}`; Ray: `{p['server_commands']['ray']}` with the Ray "
        "config:\n\n```yaml\n" + p["ray_config"].strip() + "\n```",
        f"bundle: {p['preset']}; ASR: {p['asr']}; threads {p['threads']} (ONNX Runtime and CTranslate2, both engines)",
        f"clients: {p['input']}, {p['chunk_ms']:g} ms f32le messages, one asyncio process on the same machine",
        "CPU: user + system seconds of the server's whole process tree (Ray: driver, GCS, raylet, Serve controller, "
        "proxy, replicas) per second of audio sent; RSS: sum over that tree",
        "throughput: the largest client count, each sending its audio as fast as the server reads "
        "(realtime false); audio s per wall s from the first message to the last done",
        f"the machine is shared: a run counts only when the machine's other processes kept at most "
        f"{p.get('clean_cores', CLEAN_CORES):g} cores busy from its server's start to its stop (/proc/stat minus "
        "this benchmark's process tree); a pair of runs with one that does not count is run again (attempt); "
        "medians and stages use the counted runs",
    ]
    return (f"crab-rt serve vs crab-rt serve --ray (Ray Serve) on one machine, preset {p['preset']}",
            [("Latency per utterance, real-time clients", latency), ("Throughput and cost", through),
             ("Server-side stages, median ms over every utterance of the level's runs", stages),
             ("Every run", runs)], notes)
