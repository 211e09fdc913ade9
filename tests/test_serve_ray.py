"""`crab-rt serve --ray` (crab_rt.serve.ray): settings, the Serve config, the KubeRay manifest, the engine, and
the app itself on a local Ray cluster.

The tests marked `ray` share one local Ray cluster (2 CPUs, a small object store) for the module. It runs the
app from the Serve config that `crab-rt serve --ray --write-config` writes, deployed as `serve run CONFIG` deploys
it, with 2 model replicas, and streams real speech (samples/jfk.flac) through Serve's HTTP proxy. Deselect them
with `-m "not ray"`; without ray installed they skip. The engine tests run without Ray, on stand-in deployments.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("websockets")
pytest.importorskip("prometheus_client")
jsonschema = pytest.importorskip("jsonschema")
yaml = pytest.importorskip("yaml")

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402
from ws_helpers import STOP, http_get, jfk_chunks, metric, of_type, received, start, talk  # noqa: E402

from crab_rt.errors import BackendError, ConfigError  # noqa: E402
from crab_rt.runtime.asr import AsrConfig  # noqa: E402
from crab_rt.runtime.pipeline import PipelineConfig  # noqa: E402
from crab_rt.serve import ray as ray_app  # noqa: E402
from crab_rt.serve.server import ServerConfig, serve_in_background  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ray.md"
ASR = AsrConfig(model="tiny.en", device="cpu")
MAX_STREAMS = 6

# 2 CPUs in all: Serve's controller and proxy take none; 0.25 + 2 x 0.25 + 0.5 for the replicas. The model's
# batches wait up to 0.5 s for more utterances, so that the killed replica surely holds calls in flight.
TEST_RAY_CONFIG = """
app_name: crab-rt-test
request_timeout_s: 60
retries: 3
ingress: {replicas: 1, num_cpus: 0.25}
model: {replicas: 2, num_cpus: 0.25, batch_wait_timeout_s: 0.5, health_check_period_s: 1, health_check_timeout_s: 5}
asr: {replicas: 1, num_cpus: 0.5}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def assert_matches(events: list[dict], reference: list[dict]) -> None:
    """The same utterances, text and labels as the single-process server; probabilities within 1e-5."""
    assert [e["utterance_id"] for e in events] == [r["utterance_id"] for r in reference[: len(events)]]
    for got, want in zip(events, reference):
        assert (got["start_s"], got["end_s"], got["text"], got["label"]) == \
               (want["start_s"], want["end_s"], want["text"], want["label"])
        assert got["probabilities"].keys() == want["probabilities"].keys()
        for label, p in want["probabilities"].items():
            assert got["probabilities"][label] == pytest.approx(p, abs=1e-5)


# ---- settings and the Serve config (no cluster) -----------------------------------------------------------------
def test_ray_config_file_defaults_sections_and_refusals(tmp_path):
    path = tmp_path / "ray.yaml"
    path.write_text(TEST_RAY_CONFIG + "model: {autoscaling: {min_replicas: 1, max_replicas: 3}, num_gpus: 0.5}\n")
    config = ray_app.load_ray_config(path)
    assert config.app_name == "crab-rt-test" and config.retries == 3 and config.ingress.num_cpus == 0.25
    assert config.model.autoscaling == ray_app.Autoscaling(min_replicas=1, max_replicas=3)
    assert config.model.num_gpus == 0.5 and config.asr.num_cpus == 0.5
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert ray_app.load_ray_config(empty) == ray_app.RayConfig()  # every default
    for text, words in [("model: {replica: 2}\n", "unknown setting(s) replica"),
                        ("asr: {num_cpus: -1}\n", "asr.num_cpus = -1"),
                        ("ingres: {}\n", "unknown setting(s) ingres"),
                        ("model: {autoscaling: {min_replicas: 3, max_replicas: 2}}\n", "max_replicas = 2"),
                        ("retries: [1]\n", "retries = [1]"),
                        ("model: [1, 2]\n", "model must be a mapping")]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=re.escape(words)):
            ray_app.load_ray_config(path)


def test_write_config_makes_a_serve_config_that_ray_accepts(tiny_bundle, tmp_path, capsys):
    pytest.importorskip("ray")
    from crab_rt.cli import main

    cfg, out, token = tmp_path / "ray.yaml", tmp_path / "serve.yaml", tmp_path / "token"
    cfg.write_text(TEST_RAY_CONFIG)
    token.write_text("s3cret\n")
    assert main(["serve", "--bundle", str(tiny_bundle), "--asr", "tiny.en", "--backend", "onnxruntime", "--ray",
                 "--ray-config", str(cfg), "--write-config", str(out), "--port", "8123", "--token-file", str(token),
                 "--max-streams", "5"]) == 0
    assert "serve deploy" in capsys.readouterr().err
    text = out.read_text()
    assert "s3cret" not in text  # the token stays in its file
    config = yaml.safe_load(text)
    ray_app.validate_serve_config(config)  # Ray's own ServeDeploySchema
    assert config["http_options"] == {"host": "127.0.0.1", "port": 8123}
    (app,) = config["applications"]
    assert app["import_path"] == ray_app.BUILDER == "crab_rt.serve.ray.app:build_app"
    assert app["route_prefix"] == "/" and app["args"]["token_file"] == str(token.resolve())
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == {"CrabIngress", "CrabModel", "CrabAsr"}
    assert deployments["CrabModel"]["num_replicas"] == 2
    assert deployments["CrabModel"]["ray_actor_options"] == {"num_cpus": 0.25}
    # batch size: min(--max-batch 8, the bundle's shape_ranges batch max 8); ASR on a CPU: 1
    assert deployments["CrabModel"]["user_config"] == {"max_batch_size": 8, "batch_wait_timeout_s": 0.5}
    assert deployments["CrabAsr"]["user_config"]["max_batch_size"] == 1
    assert deployments["CrabIngress"]["max_ongoing_requests"] == 5 + 8
    assert deployments["CrabIngress"]["graceful_shutdown_timeout_s"] == 3600  # open streams end by themselves
    assert ray_app.pipeline_from_dict(app["args"]["pipeline"]) == PipelineConfig(asr=ASR, backend="onnxruntime")
    built = ray_app.build_app(app["args"])  # what `serve deploy` imports and calls
    assert type(built).__name__ == "Application"

    # Without ASR there is no ASR deployment; the flags go with --ray only.
    assert main(["serve", "--bundle", str(tiny_bundle), "--no-asr", "--ray", "--write-config", str(out), "-q"]) == 0
    names = [d["name"] for d in yaml.safe_load(out.read_text())["applications"][0]["deployments"]]
    assert names == ["CrabIngress", "CrabModel"]
    assert main(["serve", "--bundle", str(tiny_bundle), "--no-asr", "--write-config", str(out)]) == 2
    assert "--ray-config and --write-config go with --ray" in capsys.readouterr().err


def _kuberay_manifest() -> dict:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    manifests = [yaml.safe_load(b) for b in blocks if "kind: RayService" in b]
    assert len(manifests) == 1, "docs/ray.md must hold one RayService manifest"
    return manifests[0]


def test_kuberay_rayservice_manifest_in_the_docs_is_valid(tiny_bundle):
    manifest = _kuberay_manifest()
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    spec = manifest["spec"]
    serve_config = yaml.safe_load(spec["serveConfigV2"])  # a YAML string inside the manifest
    (app,) = serve_config["applications"]
    assert app["import_path"] == ray_app.BUILDER and app["route_prefix"] == "/"
    assert {d["name"] for d in app["deployments"]} == {"CrabIngress", "CrabModel", "CrabAsr"}
    pipeline = ray_app.pipeline_from_dict(app["args"]["pipeline"])  # the args build
    assert pipeline.asr is not None and ray_app.server_from_args(app["args"]).max_streams >= 1
    cluster = spec["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert any(p.get("containerPort") == 8000 for p in head["ports"])  # Serve's HTTP proxy
    groups = cluster["workerGroupSpecs"]
    assert groups and all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in groups)
    gpu = [g for g in groups if "nvidia.com/gpu" in str(g["template"]["spec"]["containers"][0].get("resources"))]
    assert gpu, "the example has a GPU worker group"
    try:
        import ray.serve.schema  # noqa: F401
    except ImportError:
        return
    ray_app.validate_serve_config(serve_config)


def test_the_core_never_imports_ray():
    code = ("import sys; import crab_rt.runtime.pipeline, crab_rt.serve.server, crab_rt.serve.ray, crab_rt.cli; "
            "bad = sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_without_ray_serve_ray_says_which_extra_to_install(tiny_bundle):
    code = ("import sys; sys.modules['ray'] = None; from crab_rt.cli import main; "
            f"sys.exit(main(['serve', '--bundle', {str(tiny_bundle)!r}, '--no-asr', '--ray']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("this feature needs 'ray', which is not installed: pip install 'crab-rt[ray]'")


# ---- the engine, on stand-in deployments (no Ray) ---------------------------------------------------------------
class ActorDiedError(Exception):
    """Named as Ray's: a replica that died."""


class _Response:
    def __init__(self, coro) -> None:
        self.task = asyncio.ensure_future(coro)

    def __await__(self):
        return self.task.__await__()

    def cancel(self) -> None:
        self.task.cancel()


class _Method:
    def __init__(self, fn) -> None:
        self.fn, self.calls = fn, 0

    def remote(self, *args):
        self.calls += 1
        return _Response(self.fn(self.calls, *args))


class FakeModel:
    """Stand-in `CrabModel`: probabilities from the audio length; `speech` of the first utterance is slow."""

    def __init__(self, fuse_fail=None) -> None:
        async def speech(n, audio):
            await asyncio.sleep(0.4 if n == 1 else 0.01)  # utterance 0 finishes last
            voice = np.array([0.7, 0.1, 0.1, 0.1], np.float32)  # the voice-only classifier's probabilities
            return np.zeros((3, 4), np.float32) + audio.size, 1.0, voice, 0.1

        async def fuse(n, hidden, text):
            if fuse_fail is not None:
                fuse_fail(n)
            p = np.array([1.0, 2.0, 3.0, float(hidden[0, 0] % 7)])
            return p / p.sum(), 0.5, 0.25

        self.speech, self.fuse = _Method(speech), _Method(fuse)


INFO = {"labels": ["a", "b", "c", "d"], "uses_speech": True, "uses_text": True, "backend": "stand-in",
        "max_audio_s": 12.0, "bundle": "(none)"}


@pytest.fixture
def loop_thread():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop

    async def cancel_the_rest():
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(cancel_the_rest(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def _engine(loop, model, timeout_s=30.0, retries=2):
    from prometheus_client import CollectorRegistry

    engine = ray_app.RayEngine(model, None, PipelineConfig(asr=None), INFO, None, retries, timeout_s,
                               CollectorRegistry())
    engine.loop = loop
    return engine


def _stream_jfk(engine, jfk, provisional=False):
    events = []
    stream = engine.create_stream("s", on_event=events.append, provisional=provisional)
    for i in range(0, jfk.size, 16000):
        stream.accept(jfk[i:i + 16000])
    stream.flush()
    return stream, events


def test_engine_delivers_in_utterance_order_whichever_call_finished_first(loop_thread, jfk):
    engine = _engine(loop_thread, FakeModel())
    stream, events = _stream_jfk(engine, jfk)
    assert stream.wait(30)
    assert [e.utterance_id for e in events] == [0, 1, 2, 3]
    assert all(e.latency_ms["speech_encoder"] == 1.0 and e.latency_ms["queue_wait"] >= 0 for e in events)
    assert engine.queue_depths() == {"speech": 0, "asr": 0, "fusion": 0, "in_flight": 0}


def test_engine_sends_provisional_events_before_the_final_ones(loop_thread, jfk):
    engine = _engine(loop_thread, FakeModel())
    stream, events = _stream_jfk(engine, jfk, provisional=True)
    assert stream.wait(30)
    final = [e for e in events if e.stage == "final"]
    provisional = [e for e in events if e.stage == "provisional"]
    assert [e.utterance_id for e in final] == [0, 1, 2, 3] and sorted(e.utterance_id for e in provisional) == [0, 1, 2, 3]
    for p in provisional:
        assert events.index(p) < events.index(final[p.utterance_id]) and p.text == ""
        assert p.label == "a" and p.latency_ms["speech_classifier"] == 0.1 and "asr" not in p.latency_ms
    assert stream.emitted == 4  # final events


def test_engine_retries_a_dead_replica_and_fails_the_stream_on_other_errors(loop_thread, jfk):
    def die_once(n):
        if n == 2:
            raise ActorDiedError("the replica died")

    engine = _engine(loop_thread, FakeModel(fuse_fail=die_once))
    stream, events = _stream_jfk(engine, jfk)
    assert stream.wait(30) and len(events) == 4  # sent again, delivered
    assert engine.retried.labels("CrabModel")._value.get() == 1

    def broken(n):
        if n == 3:
            raise ValueError("bad input")

    engine = _engine(loop_thread, FakeModel(fuse_fail=broken))
    stream, events = _stream_jfk(engine, jfk)
    with pytest.raises(BackendError, match="text encoder \\+ head failed: ValueError: bad input"):
        stream.wait(30)
    assert engine.failed.labels("CrabModel")._value.get() == 1

    def always_dead(n):
        raise ActorDiedError("gone")

    engine = _engine(loop_thread, FakeModel(fuse_fail=always_dead), retries=1)
    stream, events = _stream_jfk(engine, jfk)
    with pytest.raises(BackendError, match="the CrabModel replica died and 1 retry did not help"):
        stream.wait(30)
    assert events == []


def test_engine_call_without_answer_times_out(loop_thread, jfk):
    model = FakeModel()

    async def never(n, audio):
        await asyncio.sleep(3600)

    model.speech = _Method(never)
    engine = _engine(loop_thread, model, timeout_s=1.0)
    t0 = time.perf_counter()
    stream, events = _stream_jfk(engine, jfk)
    with pytest.raises(BackendError, match="no answer from the CrabModel deployment within 1 s"):
        stream.wait(30)
    assert time.perf_counter() - t0 < 10 and events == []


def test_ingress_connection_buffers_what_the_stream_has_not_read_up_to_its_limit():
    """The ingress's connection empties Serve's queues as messages arrive: nothing is dropped before the session
    has read `start` and set the limit; beyond the limit, audio is dropped and counted and `overflowed` is set;
    a cancelled recv loses nothing; the client's close arrives after the messages before it."""
    from websockets.exceptions import ConnectionClosed

    from crab_rt.serve.ray.ingress import _AsgiConnection

    class FakeWebSocket:  # Starlette's WebSocket.receive, fed by the test
        def __init__(self):
            self.queue: asyncio.Queue = asyncio.Queue()
            self.client = None

        async def receive(self):
            return await self.queue.get()

    async def scenario():
        ws = FakeWebSocket()
        connection = _AsgiConnection(ws, max_size=1000)
        for message in ([{"type": "websocket.receive", "text": "start"}]
                        + [{"type": "websocket.receive", "bytes": b"\0" * 1000}] * 5):
            ws.queue.put_nowait(message)
        assert await connection.recv() == "start"
        await asyncio.sleep(0.01)  # the pump took all five before any limit: none dropped
        assert (connection.buffered_bytes, connection.dropped_bytes, connection.overflowed) == (5000, 0, False)
        connection.limit_buffer(6000)
        for _ in range(5):
            assert await connection.recv() == b"\0" * 1000
        assert connection.buffered_bytes == 0
        waiting = asyncio.ensure_future(connection.recv())  # nothing there yet: cancelled, it loses nothing
        await asyncio.sleep(0.01)
        waiting.cancel()
        for message in [{"type": "websocket.receive", "bytes": b"\1" * 1000}] * 8:
            ws.queue.put_nowait(message)
        ws.queue.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.sleep(0.01)
        assert (connection.buffered_bytes, connection.dropped_bytes, connection.overflowed) == (6000, 2000, True)
        received_ = [await connection.recv() for _ in range(6)]
        assert received_ == [b"\1" * 1000] * 6
        with pytest.raises(ConnectionClosed):
            await connection.recv()

    asyncio.run(scenario())


# ---- the app on a local Ray cluster -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tiny_bundle):
    """samples/jfk.flac through the single-process `crab-rt serve` (the events every Ray client must match)."""
    with serve_in_background(tiny_bundle, PipelineConfig(asr=ASR, backend="onnxruntime"),
                             ServerConfig(port=0)) as server:
        messages, code, _ = asyncio.run(talk(server.url, start(stream_id="reference"), jfk_chunks()))
    assert code == 1000
    events = of_type(messages, "event")
    assert len(events) == 4
    return events


def _model_replicas(ray) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("SERVE_REPLICA::") and "#CrabModel#" in a["name"]}


def _wait_running(serve, app: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        if status is not None and str(status.status).endswith("RUNNING"):
            return
        if status is not None and str(status.status).endswith("DEPLOY_FAILED"):
            pytest.fail(f"the app failed to deploy: {status.message}")
        time.sleep(0.5)
    pytest.fail(f"the app was not running after {timeout:g} s: {serve.status()}")


@pytest.fixture(scope="module")
def ray_cluster(tiny_bundle, tmp_path_factory):
    """One local Ray cluster; the app deployed from `crab-rt serve --ray --write-config`, as `serve run` does."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from ray.serve._private import api as serve_api
    from ray.serve.schema import ServeDeploySchema

    from crab_rt.cli import main

    folder = tmp_path_factory.mktemp("ray")
    cfg, out, port = folder / "ray.yaml", folder / "serve.yaml", free_port()
    cfg.write_text(TEST_RAY_CONFIG)
    assert main(["serve", "--bundle", str(tiny_bundle), "--asr", "tiny.en", "--backend", "onnxruntime", "--ray",
                 "--ray-config", str(cfg), "--write-config", str(out), "--port", str(port),
                 "--max-streams", str(MAX_STREAMS), "--max-message-bytes", str(64 * 1024), "-q"]) == 0
    config = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    ray.init(num_cpus=2, object_store_memory=100 << 20, include_dashboard=False, log_to_driver=False)
    try:
        client = serve_api.serve_start(http_options=config.http_options.model_dump(),
                                       proxy_location=config.proxy_location)
        client.deploy_apps(config, _blocking=False)
        _wait_running(serve, "crab-rt-test")
        yield SimpleNamespace(url=f"ws://127.0.0.1:{port}/", port=port, app="crab-rt-test", ray=ray, serve=serve,
                              client=client, config=config)
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.ray
def test_four_clients_on_two_model_replicas_match_the_single_process_server(ray_cluster, reference):
    chunks = jfk_chunks()

    def first(k: int) -> str:  # client 3 speaks protocol 1.1 and asks for provisional events
        return start(stream_id=f"ray-{k}", **({"protocol": 1.1, "provisional": True} if k == 3 else {}))

    async def everyone():
        return await asyncio.gather(*(talk(ray_cluster.url, first(k), chunks) for k in range(4)))

    for k, (messages, code, _) in enumerate(asyncio.run(everyone())):
        assert code == 1000
        assert messages[0]["type"] == "ready" and messages[0]["labels"] == ["a", "b", "c", "d"]
        assert messages[-1] == {"type": "done", "stream_id": f"ray-{k}", "reason": "stop", "audio_s": 11.0,
                                "utterances": 4, "events": 4, "dropped_utterances": 0, "dropped_messages": 0}
        assert {m["stream_id"] for m in messages if "stream_id" in m} == {f"ray-{k}"}
        assert [m["type"] for m in messages if m["type"].startswith("speech_")] == ["speech_start", "speech_end"] * 4
        final = [e for e in of_type(messages, "event") if e["stage"] == "final"]
        assert_matches(final, reference)
        provisional = [e for e in of_type(messages, "event") if e["stage"] == "provisional"]
        assert len(provisional) == (4 if k == 3 else 0)
        for p in provisional:  # each before its utterance's final event, without text
            assert p["text"] == "" and messages.index(p) < messages.index(final[p["utterance_id"]])
    status, body = http_get(ray_cluster.port, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    assert metric(ray_cluster.port, "crab_rt_events_total") >= 16
    # The browser page and its admission check, as `crab-rt serve` serves them (tests/test_browser.py drives it).
    from crab_rt.serve import page

    for path in page.ASSETS:
        assert http_get(ray_cluster.port, path) == (200, page.asset(path)[0].decode())
    status, body = http_get(ray_cluster.port, "/admit")
    assert status == 200
    assert json.loads(body) | {"backend": "?"} == {
        "status": "ok", "server": "crab-rt 0.1.0", "protocol": 1.1, "labels": ["a", "b", "c", "d"],
        "provisional": True, "asr": True, "backend": "?"}


@pytest.mark.ray
def test_same_errors_close_codes_and_refusals_as_crab_rt_serve(ray_cluster):
    url = ray_cluster.url
    cases = [(b"\0\0\0\0", [], "protocol", 1008),
             ("{start", [], "bad_start", 1008),
             (json.dumps({"type": "start", "sample_rate": 16000, "format": "s16le", "language": "de"}), [],
              "unsupported_language", 1008),
             (start(format="s16le"), [b"\0" * 3], "bad_audio", 1007)]

    async def scenario():
        return await asyncio.gather(*(talk(url, first, then, stop=False) for first, then, _, _ in cases))

    for (messages, code, _), (_, _, error, close) in zip(asyncio.run(scenario()), cases):
        assert [e["code"] for e in of_type(messages, "error")] == [error] and code == close
        if messages[0]["type"] == "ready":
            assert messages[-1]["type"] == "done" and messages[-1]["reason"] == "error"
    messages, code, reason = asyncio.run(talk(url, start(), [b"\0" * (64 * 1024 + 4)], stop=False))
    assert code == 1009 and reason == "frame exceeds limit of 65536 bytes"

    async def full():
        open_ = [await connect(url) for _ in range(MAX_STREAMS)]
        for ws in open_:
            await ws.send(start())
            assert received(await ws.recv())["type"] == "ready"
        try:
            with pytest.raises(InvalidStatus) as refused:
                await connect(url, open_timeout=30)
            return refused.value.response
        finally:
            for ws in open_:
                await ws.close()

    response = asyncio.run(full())
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert response.body.decode().strip() == f"server full: {MAX_STREAMS} of {MAX_STREAMS} streams active; retry later"


@pytest.mark.ray
def test_audio_faster_than_the_stream_takes_it_is_bounded_at_the_ingress(ray_cluster, jfk):
    """Serve's proxy reads every message at once, so TCP cannot pace a client: 30 minutes of speech sent as fast
    as possible, by a `realtime: false` client and by a `realtime: true` one that ignores the clock, would pile
    up in the ingress (57.6 MB each as s16le). The ingress holds at most --max-buffered-audio-s (30 s, about
    1 MB) per stream, drops the rest and ends each stream with a `protocol` error after the events of what it
    took; its resident memory stays flat, and a stream within the bound still gets all its events."""
    from websockets.exceptions import ConnectionClosed

    pcm = (np.tile(jfk, 164) * 32767).astype("<i2").tobytes()  # 30 min of speech
    chunks = [pcm[i:i + 60_000] for i in range(0, len(pcm), 60_000)]
    assert len(pcm) >= 1800 * 16000 * 2

    async def flood(realtime: bool):
        messages: list[dict] = []
        async with connect(ray_cluster.url, max_size=None, open_timeout=30) as ws:
            await ws.send(start(format="s16le", realtime=realtime, stream_id=f"flood-{realtime}"))

            async def read():
                async for text in ws:
                    messages.append(received(text))

            reader = asyncio.ensure_future(read())
            try:
                for chunk in chunks:
                    await ws.send(chunk)
                await ws.send(STOP)
            except ConnectionClosed:
                pass
            try:
                await reader
            except ConnectionClosed:
                pass
        return messages, ws.close_code

    async def both():
        return await asyncio.gather(flood(False), flood(True), talk(ray_cluster.url, start(), jfk_chunks()))

    rss = [metric(ray_cluster.port, "process_resident_memory_bytes")]
    peaks = []
    for _ in range(2):  # the first round also warms the allocator: Ray hands the replica the proxy's backlog at once
        sampled, done = [], threading.Event()

        def sample(sampled=sampled, done=done):  # the ingress's RSS while the round runs
            while not done.wait(0.1):
                sampled.append(metric(ray_cluster.port, "process_resident_memory_bytes"))

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            (fast, fast_code), (paced, paced_code), (within, within_code, _) = asyncio.run(both())
        finally:
            done.set()
            sampler.join()
        rss.append(metric(ray_cluster.port, "process_resident_memory_bytes"))
        peaks.append(max(sampled, default=rss[-1]))
        for messages, code in ((fast, fast_code), (paced, paced_code)):
            errors = of_type(messages, "error")
            assert [e["code"] for e in errors] == ["protocol"] and code == 1008, messages[-3:]
            assert "more than 30 s of audio waited to be read" in errors[0]["message"]
            assert messages[-1]["type"] == "done" and messages[-1]["reason"] == "error"
            assert messages[-1]["audio_s"] < 300  # it ended long before the 30 minutes were read
        assert within_code == 1000 and within[-1]["events"] == 4  # an 11 s file within the bound: all its events
    print(f"ingress RSS: {[round(r / 1e6, 1) for r in rss]} MB; peaks {[round(r / 1e6, 1) for r in peaks]} MB")
    # Bounded: without the bound, the two floods' 115 MB would sit in the ingress at once (a stream reads at most
    # real time, or as fast as the pipeline takes it); with it, the rounds peaked 35-55 MB above the start (Ray
    # hands the replica the proxy's backlog in pickled batches, larger when the machine is loaded, and the
    # allocator keeps some). Flat: a second 2 x 30 minutes keeps nothing of the first (seen: -2 to +18 MB, noise
    # of those batches; a leak of what the floods sent would be 115 MB).
    assert max(peaks) - rss[0] < 90e6 and peaks[1] - peaks[0] < 32e6, (rss, peaks)


@pytest.mark.ray
def test_killed_model_replica_no_stream_hangs_every_utterance_delivered_or_reported_and_replaced(ray_cluster, reference):
    """Four clients stream jfk while a model replica is killed with calls in flight: no stream hangs, every
    utterance is delivered (sent again to the other replica) or reported as an `error`, and Serve replaces the
    replica. Whether the kill lands while a call is in flight is a race (a batch runs for milliseconds); a round
    whose kill hit nothing proves nothing, so then the round runs again, on the replaced replicas (at most 3)."""
    chunks = jfk_chunks()
    for _ in range(3):
        hit = _kill_a_model_replica_under_four_streams(ray_cluster, reference, chunks)
        if hit:
            break
    assert hit  # the kill hit calls in flight: they were sent again or reported
    messages, code, _ = asyncio.run(talk(ray_cluster.url, start(stream_id="after"), chunks))
    assert code == 1000 and messages[-1]["events"] == 4
    assert_matches(of_type(messages, "event"), reference)


def _kill_a_model_replica_under_four_streams(ray_cluster, reference, chunks) -> bool:
    """One round of the test above; True when the kill hit calls in flight. Waits for the replacement."""
    ray = ray_cluster.ray
    before = _model_replicas(ray)
    assert len(before) == 2
    retries_before = metric(ray_cluster.port, 'crab_rt_ray_call_retries_total{deployment="CrabModel"}')
    first_end, streams_done = threading.Event(), threading.Event()
    killed: list[str] = []

    def kill_one() -> None:
        # Once the first utterance has ended, kill a model replica while it has calls in flight (Serve's own
        # count of its ongoing requests, seen twice in a row: a call waiting in the replica's batch, not one
        # finishing): the kill must hit work, or the test proves nothing (a fixed victim and delay missed every
        # call in runs on a loaded machine).
        first_end.wait(60)
        actors = {name: ray.get_actor(name, namespace="serve") for name in sorted(before)}
        deadline = time.monotonic() + 60
        victim, seen = sorted(before)[0], set()
        while time.monotonic() < deadline and not streams_done.is_set():  # after the streams: a blind kill
            busy = {name for name, actor in actors.items() if ray.get(actor.get_num_ongoing_requests.remote()) > 0}
            if busy & seen:
                victim = sorted(busy & seen)[0]
                break
            seen = busy
            time.sleep(0.005)
        ray.kill(actors[victim], no_restart=True)
        killed.append(victim)

    async def everyone():
        loop = asyncio.get_running_loop()
        killer = loop.run_in_executor(None, kill_one)

        def seen(msg):
            if msg["type"] == "speech_end":
                first_end.set()

        clients = asyncio.gather(*(talk(ray_cluster.url, start(stream_id=f"kill-{k}"), chunks, on_message=seen)
                                   for k in range(4)))
        try:
            results = await asyncio.wait_for(clients, 150)  # no stream hangs
        finally:
            streams_done.set()
        await killer
        return results

    t0 = time.perf_counter()
    results = asyncio.run(everyone())
    assert killed and time.perf_counter() - t0 < 150
    delivered = reported = 0
    for messages, code, _ in results:
        done = messages[-1]
        assert done["type"] == "done" and done["utterances"] == 4
        events = of_type(messages, "event")
        assert done["events"] == len(events)
        assert_matches(events, reference)  # whatever was delivered is right, in order
        if done["reason"] == "stop":
            assert len(events) == 4 and code == 1000
        else:  # the rest reported: error internal, done reason error, 1011
            assert done["reason"] == "error" and code == 1011
            assert [e["code"] for e in of_type(messages, "error")] == ["internal"]
            reported += done["utterances"] - len(events)
        delivered += len(events)
    assert delivered + reported == 16
    retries = metric(ray_cluster.port, 'crab_rt_ray_call_retries_total{deployment="CrabModel"}') - retries_before
    print(f"killed {killed[0]}: {delivered} utterances delivered, {reported} reported as errors; retries: {retries}")

    # Serve replaces the replica; the app serves on.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        now = _model_replicas(ray)
        if len(now) == 2 and killed[0] not in now:
            break
        time.sleep(0.5)
    assert len(now) == 2 and killed[0] not in now and now - before
    _wait_running(ray_cluster.serve, ray_cluster.app, 60)
    return retries + reported > 0


@pytest.mark.ray
def test_a_new_deploy_of_the_ingress_lets_an_open_stream_finish(ray_cluster, reference):
    """A `serve deploy` that changes the ingress under a live stream: Serve starts a new ingress replica and stops
    the old one, which gets no new stream and waits for its open one: that stream runs to its stop with every
    event and done (reason stop), then the old replica goes. (How long Serve waits, the ingress's
    graceful_shutdown_timeout_s, is an hour by default: the write-config test checks it.)"""
    ray = ray_cluster.ray

    def ingress_replicas() -> set[str]:
        return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::") and "#CrabIngress#" in a["name"]}

    before = ingress_replicas()
    changed = ray_cluster.config.model_copy(deep=True)
    ingress = next(d for d in changed.applications[0].deployments if d.name == "CrabIngress")
    ingress.ray_actor_options.num_cpus = 0.2  # a change that needs a new replica (0.25 before)
    redeployed = threading.Event()

    def on_message(message):  # the first speech mark: the stream is open and under way
        if message["type"] == "speech_start" and not redeployed.is_set():
            redeployed.set()
            ray_cluster.client.deploy_apps(changed, _blocking=False)

    async def live_stream():  # jfk at real time: the new deploy comes at its first word, 10 s before its end
        return await talk(ray_cluster.url, start(stream_id="through-deploy", realtime=True), jfk_chunks(),
                          on_message=on_message, pause_s=0.032)

    messages, code, _ = asyncio.run(live_stream())
    assert redeployed.is_set()
    assert code == 1000 and messages[-1]["reason"] == "stop" and messages[-1]["events"] == 4
    assert_matches(of_type(messages, "event"), reference)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (ingress_replicas() & before or not ingress_replicas()):
        time.sleep(0.5)
    assert not ingress_replicas() & before and len(ingress_replicas()) == 1  # the old replica went, a new one serves
    _wait_running(ray_cluster.serve, ray_cluster.app, 60)
