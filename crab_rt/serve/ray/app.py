"""Building the Serve application (`build_app`, the Serve config's import_path) and running it
(`crab-rt serve --ray`: start or join Ray, deploy, serve until SIGTERM, drain)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

from crab_rt.bundle import load_bundle
from crab_rt.errors import ConfigError, CrabError, missing_dependency
from crab_rt.runtime.pipeline import PipelineConfig, _fit_to_bundle
from crab_rt.serve.ray.ingress import IngressReplica
from crab_rt.serve.ray.replicas import AsrReplica, ModelReplica
from crab_rt.serve.ray.serve_config import (
    app_args,
    batch_sizes,
    bundle_batch_max,
    deployment_options,
    pipeline_from_dict,
    server_from_args,
)
from crab_rt.serve.ray.settings import ASR, INGRESS, MODEL, RayConfig
from crab_rt.serve.server import ServerConfig

log = logging.getLogger(__name__)


def _import_serve():
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise missing_dependency("ray", "ray") from e
    return ray, serve


def _build(args: dict[str, Any], options: dict[str, dict[str, Any]] | None = None):
    """The bound application; `options` (name -> `deployment_options`) are applied when given."""
    _, serve = _import_serve()
    options = options or {}
    pipeline = pipeline_from_dict(args["pipeline"])
    model = serve.deployment(ModelReplica, name=MODEL)
    if MODEL in options:
        model = model.options(**options[MODEL])
    model_app = model.bind(args["bundle"], args["pipeline"])
    asr_app = None
    if pipeline.asr is not None:
        asr = serve.deployment(AsrReplica, name=ASR)
        if ASR in options:
            asr = asr.options(**options[ASR])
        asr_app = asr.bind(dataclasses.asdict(pipeline.asr))
    ingress = serve.deployment(serve.ingress()(IngressReplica), name=INGRESS)
    if INGRESS in options:
        ingress = ingress.options(**options[INGRESS])
    return ingress.bind(model_app, asr_app, args)


def build_app(args: dict[str, Any]):
    """The Serve config's `import_path` target: the application for `args` (see `app_args`).

    Without a `deployments` section in the config, each deployment gets `RayConfig()`'s defaults.
    """
    pipeline = pipeline_from_dict(args["pipeline"])
    server = server_from_args({k: v for k, v in args.items() if k != "token_file"})
    defaults = RayConfig()
    model_batch, asr_batch = batch_sizes(pipeline, bundle_batch_max(args["bundle"]), defaults, False)
    return _build(args, deployment_options(defaults, server, model_batch, asr_batch, pipeline.asr is not None))


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def run(bundle: str | Path, pipeline: PipelineConfig, server: ServerConfig, ray_config: RayConfig,
        stop: threading.Event | None = None, handle_signals: bool = False) -> None:
    """`crab-rt serve --ray`: start (or join) Ray, deploy the app, serve until `stop` is set, drain, shut down.

    With `handle_signals` (the CLI, on the main thread), SIGTERM and SIGINT set `stop` (installed after
    `ray.init`, which has handlers of its own). The drain then runs as `crab-rt serve`'s: every ingress replica
    refuses new streams, flushes its streams, sends their events and `done` (reason drain), closes with 1001.

    Raises:
        DependencyError: ray is not installed.
        BundleError: `bundle` is not a readable bundle.
        ConfigError: a setting is out of range, or Ray cannot start or deploy the app.
    """
    ray, serve = _import_serve()
    ray_config = ray_config.validate()
    server = server.validate()
    stop = stop or threading.Event()
    _fit_to_bundle(pipeline, load_bundle(bundle, verify=False))
    port = server.port or _free_port(server.host)
    asr_on_gpu = pipeline.asr is not None and ray_config.asr.num_gpus > 0
    model_batch, asr_batch = batch_sizes(pipeline, bundle_batch_max(bundle), ray_config, asr_on_gpu)
    options = deployment_options(ray_config, server, model_batch, asr_batch, pipeline.asr is not None)
    args = app_args(bundle, pipeline, server, ray_config, include_token=True)
    init: dict[str, Any] = {"address": ray_config.address, "include_dashboard": False,
                            "logging_level": logging.WARNING, "configure_logging": True}
    if ray_config.address is None:
        if ray_config.num_cpus is not None:
            init["num_cpus"] = ray_config.num_cpus
        if ray_config.object_store_memory_mb is not None:
            init["object_store_memory"] = ray_config.object_store_memory_mb << 20
    http: dict[str, Any] = {"host": server.host, "port": port}
    if server.tls_cert is not None:
        http.update(ssl_certfile=str(Path(server.tls_cert).resolve()), ssl_keyfile=str(Path(server.tls_key).resolve()))
    scheme = "wss" if server.tls_cert else "ws"
    host = server.host if ":" not in server.host else f"[{server.host}]"
    url = f"{scheme}://{host}:{port}/"
    log.info("crab-rt serve --ray: %s: starting Ray Serve (%s) for %s", url,
             "a local Ray instance" if ray_config.address is None else f"Ray at {ray_config.address}", bundle)
    try:
        ray.init(**init)
    except Exception as e:  # noqa: BLE001 - Ray's start-up errors: one line
        raise ConfigError(f"cannot start or reach Ray ({ray_config.address or 'local'}): {e}") from None
    if handle_signals and threading.current_thread() is threading.main_thread():
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        # Serve's access log has a line per model and ASR call; crab-rt's -q quiets Serve's INFO lines too.
        quiet = not log.isEnabledFor(logging.INFO)  # the level comes from the "crab_rt" logger
        serve.start(http_options=http, logging_config={"enable_access_log": False,
                                                       "log_level": "WARNING" if quiet else "INFO"})
        try:
            handle = serve.run(_build(args, options), name=ray_config.app_name, route_prefix="/", blocking=False)
        except CrabError:
            raise
        except Exception as e:  # noqa: BLE001 - a replica that failed to start: Ray's message on one line
            raise ConfigError(f"Ray Serve could not deploy the app: {' '.join(str(e).split())[:2000]}") from None
        replicas = {name: o.get("num_replicas", o.get("autoscaling_config")) for name, o in options.items()}
        log.info("crab-rt serve: ready on %s (Ray Serve app %r, replicas %s); /healthz and /metrics on the same "
                 "port", url, ray_config.app_name, json.dumps(replicas))
        while not stop.wait(0.5):
            pass
        log.info("crab-rt serve --ray: draining")
        _drain_all(handle, ray_config, server)
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()
        with contextlib.suppress(Exception):
            ray.shutdown()


def _drain_all(handle, ray_config: RayConfig, server: ServerConfig) -> None:
    """Call `drain` until every running ingress replica has drained (Serve routes each call to one replica)."""
    from ray import serve

    try:
        status = serve.status().applications[ray_config.app_name].deployments[INGRESS]
        running = int(status.replica_states.get("RUNNING", 1))
    except Exception:  # noqa: BLE001 - status is best effort
        running = 1
    seen: set[str] = set()
    deadline = time.monotonic() + server.drain_timeout_s + 10
    while len(seen) < running and time.monotonic() < deadline:
        responses = [handle.drain.remote() for _ in range(max(1, running - len(seen)))]
        for response in responses:
            with contextlib.suppress(Exception):
                seen.add(response.result(timeout_s=max(1.0, deadline - time.monotonic()))["replica"])
    log.info("drained %d ingress replica(s)", len(seen))
