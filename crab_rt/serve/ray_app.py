"""`crab-rt serve --ray`: the `crab-rt serve` protocol on Ray Serve; model and ASR replicas batch across streams.

Contract
--------
- One Serve application (`RayConfig.app_name`, route prefix "/") of three deployments:
  - `CrabIngress` (an ASGI ingress; WebSockets go through Serve's HTTP proxy) holds the connections and each
    stream's front end (VAD + segmenter). It runs the session code of `crab-rt serve` unchanged
    (`crab_rt.serve.server._Session`, admission `Server._admit`, `/healthz`, `/metrics`), so messages, schemas,
    close codes and limits are the same (docs/protocol.md; docs/ray.md lists what the proxy changes). In place
    of a `Pipeline`, its sessions talk to a `RayEngine`, which sends each finished utterance to
  - `CrabModel` (`speech`: speech encoder; `fuse`: text encoder + head) and `CrabAsr` (`transcribe`:
    faster-whisper). Their replicas batch utterances from every stream and every ingress replica with
    `@serve.batch`; the batch size defaults to min(`--max-batch`, the bundle's `shape_ranges.batch.max`)
    for the model, and to `--asr-max-batch` (auto: `--max-batch` on a GPU, 1 on a CPU) for ASR. As in the
    pipeline, the speech encoder runs while ASR runs; text encoder and head follow both.
- Settings (`RayConfig`, a YAML file given with `--ray-config`): per deployment the replicas or autoscaling
  bounds, CPUs and GPUs per replica (fractional), `max_ongoing_requests`, batch size and wait, health checks;
  the ingress's call timeout and retries. A replica uses a GPU if and only if its deployment asks for
  `num_gpus` > 0; ONNX Runtime and CTranslate2 CPU threads default to the replica's CPUs (at least 1).
- `serve_config(...)` builds, and `crab-rt serve --ray --write-config FILE` writes, a Serve config that
  `serve deploy` / `serve run` accept; its `import_path` is `build_app`, its `args` carry the bundle, the
  pipeline and stream settings, and its `deployments` section carries the `RayConfig` settings.
  `run(...)` (`crab-rt serve --ray`) starts or joins Ray and serves until SIGTERM / Ctrl-C, then drains.
- Failures: a call whose replica died (Ray's `RayActorError` family) is sent again, to another replica once
  Serve has noticed, up to `retries` times. A call that still fails, that raised in the replica, or that got
  no answer within `request_timeout_s` fails its stream as a pipeline worker error does: the client gets
  `error` `internal` (fatal), then `done` with reason `error`, then close code 1011. No stream waits for
  ever. Events of a stream go out in utterance order whichever replica finished first.
- `ray` is imported inside functions only: this module imports without it (config files, `--write-config`),
  and the core runtime never imports this module.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import socket
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from crab_rt import __version__
from crab_rt.errors import BackendError, ConfigError, CrabError, missing_dependency
from crab_rt.runtime.asr import AsrConfig
from crab_rt.runtime.events import EmotionEvent
from crab_rt.runtime.pipeline import PipelineConfig, Stream, _closed_error, _fit_to_bundle, _Outbox, _stage_error
from crab_rt.runtime.segmenter import SegmenterConfig, StreamFrontEnd, Utterance
from crab_rt.serve.server import Server, ServerConfig, refusal_headers

__all__ = [
    "APP_NAME", "INGRESS", "MODEL", "ASR", "BUILDER", "Autoscaling", "DeploymentSettings", "RayConfig",
    "load_ray_config", "app_args", "deployment_options", "serve_config", "write_serve_config",
    "validate_serve_config", "build_app", "run", "RayEngine",
]

log = logging.getLogger(__name__)

APP_NAME = "crab-rt"
INGRESS, MODEL, ASR = "CrabIngress", "CrabModel", "CrabAsr"
BUILDER = "crab_rt.serve.ray_app:build_app"  # the Serve config's import_path
_RETRYABLE = ("RayActorError", "ActorDiedError", "ActorUnavailableError", "WorkerCrashedError", "NodeDiedError",
              "DeploymentUnavailableError")


# ---- settings ------------------------------------------------------------------------------------------------
def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Autoscaling:
    """Ray Serve autoscaling of one deployment: replicas between the bounds, sized by requests in flight.

    Attributes:
        min_replicas, max_replicas: the bounds (min 0 lets a deployment scale to zero; not for the ingress).
        target_ongoing_requests: requests in flight per replica that Serve aims at (ingress: open streams).
        upscale_delay_s, downscale_delay_s: how long a need must last before Serve acts.
    """

    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0

    def validate(self, where: str) -> Autoscaling:
        if not _integer(self.min_replicas) or not 0 <= self.min_replicas <= 1000:
            raise ConfigError(f"{where}.autoscaling.min_replicas = {self.min_replicas!r}: must be in [0, 1000]")
        if not _integer(self.max_replicas) or not max(1, self.min_replicas) <= self.max_replicas <= 1000:
            raise ConfigError(f"{where}.autoscaling.max_replicas = {self.max_replicas!r}: must be in "
                              f"[max(1, min_replicas), 1000]")
        for name in ("target_ongoing_requests", "upscale_delay_s", "downscale_delay_s"):
            value = getattr(self, name)
            if not _number(value) or value <= 0:
                raise ConfigError(f"{where}.autoscaling.{name} = {value!r}: must be a number > 0")
        return self


@dataclass(frozen=True)
class DeploymentSettings:
    """Replicas and resources of one deployment (the `ingress`, `model` and `asr` sections of a `RayConfig`).

    Attributes:
        replicas: fixed replica count (ignored with `autoscaling`).
        autoscaling: replica bounds for Serve's autoscaler, or None for `replicas`.
        num_cpus: CPUs Ray reserves per replica; fractional is fine (0.5: two replicas per core). Also the
            replica's ONNX Runtime / CTranslate2 threads when `--threads` / `--asr-threads` are 0.
        num_gpus: GPUs per replica; fractional shares one GPU (0.25: four replicas per GPU). > 0 puts the
            model or ASR of the replica on that GPU; 0 keeps it on the CPU.
        max_ongoing_requests: requests Serve sends a replica at once; 0 = auto (ingress: max_streams + 8;
            model and ASR: twice the batch size, so that the next batch fills while one runs).
        max_batch_size: most utterances per batched call; 0 = auto (see the module docstring). Ignored
            for the ingress.
        batch_wait_timeout_s: how long a batch waits for more utterances once it has one.
        health_check_period_s, health_check_timeout_s: Serve's health checks of the replicas; a replica that
            died is replaced after its next failed check.
        graceful_shutdown_timeout_s: how long a stopping replica may finish its work; 0 = auto (ingress: the
            server's drain_timeout_s + 5 s; model and ASR: 20 s).
    """

    replicas: int = 1
    autoscaling: Autoscaling | None = None
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    max_ongoing_requests: int = 0
    max_batch_size: int = 0
    batch_wait_timeout_s: float = 0.01
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 0.0

    def validate(self, where: str) -> DeploymentSettings:
        def bad(name: str, allowed: str) -> ConfigError:
            return ConfigError(f"{where}.{name} = {getattr(self, name)!r}: must be {allowed}")

        if not _integer(self.replicas) or not 1 <= self.replicas <= 1000:
            raise bad("replicas", "an integer in [1, 1000]")
        if self.autoscaling is not None:
            self.autoscaling.validate(where)
        if not _number(self.num_cpus) or not 0 <= self.num_cpus <= 1024:
            raise bad("num_cpus", "a number in [0, 1024] (fractions allowed)")
        if not _number(self.num_gpus) or not 0 <= self.num_gpus <= 64:
            raise bad("num_gpus", "a number in [0, 64] (fractions allowed)")
        if not _integer(self.max_ongoing_requests) or not 0 <= self.max_ongoing_requests <= 100_000:
            raise bad("max_ongoing_requests", "an integer in [0, 100000] (0: auto)")
        if not _integer(self.max_batch_size) or not 0 <= self.max_batch_size <= 64:
            raise bad("max_batch_size", "an integer in [0, 64] (0: auto)")
        if not _number(self.batch_wait_timeout_s) or not 0 <= self.batch_wait_timeout_s <= 10:
            raise bad("batch_wait_timeout_s", "a number of seconds in [0, 10]")
        for name in ("health_check_period_s", "health_check_timeout_s"):
            if not _number(getattr(self, name)) or not 0.1 <= getattr(self, name) <= 3600:
                raise bad(name, "a number of seconds in [0.1, 3600]")
        if not _number(self.graceful_shutdown_timeout_s) or not 0 <= self.graceful_shutdown_timeout_s <= 3600:
            raise bad("graceful_shutdown_timeout_s", "a number of seconds in [0, 3600] (0: auto)")
        return self


@dataclass(frozen=True)
class RayConfig:
    """What `crab-rt serve --ray` adds to `crab-rt serve`'s settings (a YAML file: docs/ray.md).

    Attributes:
        app_name: the Serve application's name.
        address: where `crab-rt serve --ray` runs the app: None starts a local Ray instance; "auto" joins the
            one running on this machine (`ray start --head`); "ray://host:10001" a remote one (Ray Client).
        num_cpus: CPUs a local instance offers (None: all of the machine's).
        object_store_memory_mb: object store of a local instance (None: Ray's default).
        request_timeout_s: longest wait of the ingress for one model or ASR call; then the stream fails.
        retries: how often a call whose replica died is sent again.
        ingress, model, asr: the three deployments' settings.
    """

    app_name: str = APP_NAME
    address: str | None = None
    num_cpus: float | None = None
    object_store_memory_mb: int | None = None
    request_timeout_s: float = 60.0
    retries: int = 2
    ingress: DeploymentSettings = field(default_factory=DeploymentSettings)
    model: DeploymentSettings = field(default_factory=DeploymentSettings)
    asr: DeploymentSettings = field(default_factory=DeploymentSettings)

    def validate(self) -> RayConfig:
        if not isinstance(self.app_name, str) or not self.app_name.strip() or "#" in self.app_name:
            raise ConfigError(f"app_name = {self.app_name!r}: must be a non-empty name without '#'")
        if self.address is not None and (not isinstance(self.address, str) or not self.address.strip()):
            raise ConfigError(f"address = {self.address!r}: must be null (a local Ray), 'auto' or an address")
        if self.num_cpus is not None and (not _number(self.num_cpus) or not 0 < self.num_cpus <= 4096):
            raise ConfigError(f"num_cpus = {self.num_cpus!r}: must be null or a number in (0, 4096]")
        if self.object_store_memory_mb is not None and (not _integer(self.object_store_memory_mb)
                                                        or not 75 <= self.object_store_memory_mb <= 1 << 24):
            raise ConfigError(f"object_store_memory_mb = {self.object_store_memory_mb!r}: must be null or an "
                              "integer >= 75 (Ray's minimum)")
        if not _number(self.request_timeout_s) or not 1 <= self.request_timeout_s <= 3600:
            raise ConfigError(f"request_timeout_s = {self.request_timeout_s!r}: must be in [1, 3600]")
        if not _integer(self.retries) or not 0 <= self.retries <= 10:
            raise ConfigError(f"retries = {self.retries!r}: must be an integer in [0, 10]")
        for name in ("ingress", "model", "asr"):
            getattr(self, name).validate(name)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "ray config") -> RayConfig:
        """Build from the parsed YAML/JSON; unknown keys are refused (a typo must not pass silently)."""
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
        values = _known(cls, data, where)
        for name in ("ingress", "model", "asr"):
            if name in values:
                section = values[name] or {}
                if not isinstance(section, dict):
                    raise ConfigError(f"{where}: {name} must be a mapping, got {type(section).__name__}")
                inner = _known(DeploymentSettings, section, f"{where}: {name}")
                if inner.get("autoscaling") is not None:
                    if not isinstance(inner["autoscaling"], dict):
                        raise ConfigError(f"{where}: {name}.autoscaling must be a mapping or null")
                    inner["autoscaling"] = Autoscaling(**_known(Autoscaling, inner["autoscaling"],
                                                                f"{where}: {name}.autoscaling"))
                values[name] = DeploymentSettings(**inner)
        return cls(**values).validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _known(cls: type, data: dict, where: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(map(str, unknown))}; known: "
                          f"{', '.join(sorted(names))}")
    return dict(data)


def load_ray_config(path: str | Path) -> RayConfig:
    """Read a `RayConfig` from a YAML (or JSON) file.

    Raises:
        ConfigError: the file cannot be read or parsed, or a setting is unknown or out of range.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--ray-config {path}: {e.strerror or e}") from None
    try:
        import yaml

        data = yaml.safe_load(text)
    except ImportError:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"--ray-config {path}: not JSON, and PyYAML is not installed to read YAML: {e}") from None
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError and its kin: one line for the user
        raise ConfigError(f"--ray-config {path}: not valid YAML: {' '.join(str(e).split())}") from None
    return RayConfig.from_dict(data or {}, f"--ray-config {path}")


# ---- the application's arguments and options --------------------------------------------------------------------
def _pipeline_to_dict(config: PipelineConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _pipeline_from_dict(data: dict[str, Any]) -> PipelineConfig:
    data = dict(data)
    try:
        segmenter = SegmenterConfig(**data.pop("segmenter", {}))
        asr = data.pop("asr", None)
        return PipelineConfig(segmenter=segmenter, asr=None if asr is None else AsrConfig(**asr), **data).validate()
    except TypeError as e:
        raise ConfigError(f"args.pipeline: {e}") from None


_SERVER_FIELDS = ("max_streams", "max_message_bytes", "idle_timeout_s", "realtime_slack_s", "max_pending_messages",
                  "drain_timeout_s")


def _server_from_args(args: dict[str, Any]) -> ServerConfig:
    """The ingress's limits (host, port and TLS belong to Serve's HTTP proxy); the token from args or its file."""
    server = dict(args.get("server") or {})
    unknown = sorted(set(server) - set(_SERVER_FIELDS))
    if unknown:
        raise ConfigError(f"args.server: unknown setting(s) {', '.join(unknown)}")
    return ServerConfig(token=args.get("token"), **server).validate()


def app_args(bundle: str | Path, pipeline: PipelineConfig, server: ServerConfig, ray_config: RayConfig,
             token_file: str | Path | None = None, include_token: bool = False) -> dict[str, Any]:
    """The `args` of the Serve application (JSON-able): what `build_app` needs besides the deployment options.

    The token itself is included only with `include_token` (a local run, never a written file); a written
    config names `token_file`, which every ingress node reads.
    """
    args: dict[str, Any] = {
        "bundle": str(Path(bundle).resolve()),
        "pipeline": _pipeline_to_dict(pipeline),
        "server": {name: getattr(server, name) for name in _SERVER_FIELDS},
        "request_timeout_s": ray_config.request_timeout_s,
        "retries": ray_config.retries,
    }
    if token_file is not None:
        args["token_file"] = str(Path(token_file).resolve())
    elif include_token and server.token is not None:
        args["token"] = server.token
    return args


def _batch_sizes(pipeline: PipelineConfig, bundle_batch_max: int | None, ray_config: RayConfig,
                 asr_on_gpu: bool) -> tuple[int, int]:
    """(model, ASR) batch sizes: the configured ones, else the module docstring's defaults."""
    model = ray_config.model.max_batch_size or min(pipeline.max_batch, bundle_batch_max or pipeline.max_batch)
    asr = ray_config.asr.max_batch_size or pipeline.asr_max_batch or (pipeline.max_batch if asr_on_gpu else 1)
    return model, asr


def deployment_options(ray_config: RayConfig, server: ServerConfig, model_batch: int, asr_batch: int,
                       with_asr: bool) -> dict[str, dict[str, Any]]:
    """Deployment name -> options, valid both for `Deployment.options(...)` and a Serve config's `deployments`."""
    out = {}
    plan = [(INGRESS, ray_config.ingress, 0), (MODEL, ray_config.model, model_batch)]
    if with_asr:
        plan.append((ASR, ray_config.asr, asr_batch))
    for name, s, batch in plan:
        actor: dict[str, Any] = {"num_cpus": s.num_cpus}
        if s.num_gpus:
            actor["num_gpus"] = s.num_gpus
        if name == INGRESS:
            ongoing = s.max_ongoing_requests or server.max_streams + 8
            grace = s.graceful_shutdown_timeout_s or server.drain_timeout_s + 5
        else:
            ongoing = s.max_ongoing_requests or 2 * batch
            grace = s.graceful_shutdown_timeout_s or 20.0
        opts: dict[str, Any] = {"max_ongoing_requests": max(ongoing, batch), "ray_actor_options": actor,
                                "health_check_period_s": s.health_check_period_s,
                                "health_check_timeout_s": s.health_check_timeout_s,
                                "graceful_shutdown_timeout_s": grace}
        if s.autoscaling is not None:
            opts["autoscaling_config"] = dataclasses.asdict(s.autoscaling)
        else:
            opts["num_replicas"] = s.replicas
        if name != INGRESS:
            opts["user_config"] = {"max_batch_size": batch, "batch_wait_timeout_s": s.batch_wait_timeout_s}
        out[name] = opts
    return out


def _bundle_batch_max(bundle: str | Path) -> int | None:
    try:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
        value = manifest.get("shape_ranges", {}).get("batch", {}).get("max")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if _integer(value) and value >= 1 else None


def serve_config(bundle: str | Path, pipeline: PipelineConfig, server: ServerConfig, ray_config: RayConfig,
                 token_file: str | Path | None = None) -> dict[str, Any]:
    """A Serve config (the schema of `serve deploy` / `serve run` / KubeRay's `serveConfigV2`) for this app.

    `http_options` take the server's `--host`, `--port` (0: Serve's 8000) and TLS files; Serve's HTTP proxy
    listens there on every node.
    """
    ray_config = ray_config.validate()
    server = server.validate()
    asr_on_gpu = pipeline.asr is not None and ray_config.asr.num_gpus > 0
    model_batch, asr_batch = _batch_sizes(pipeline, _bundle_batch_max(bundle), ray_config, asr_on_gpu)
    options = deployment_options(ray_config, server, model_batch, asr_batch, pipeline.asr is not None)
    http: dict[str, Any] = {"host": server.host, "port": server.port or 8000}
    if server.tls_cert is not None:
        http.update(ssl_certfile=str(Path(server.tls_cert).resolve()), ssl_keyfile=str(Path(server.tls_key).resolve()))
    return {
        "proxy_location": "EveryNode",
        "http_options": http,
        "applications": [{
            "name": ray_config.app_name,
            "route_prefix": "/",
            "import_path": BUILDER,
            "args": app_args(bundle, pipeline, server, ray_config, token_file),
            "logging_config": {"enable_access_log": False},  # a line per model and ASR call otherwise
            "deployments": [{"name": name, **opts} for name, opts in options.items()],
        }],
    }


def validate_serve_config(config: dict[str, Any]) -> None:
    """Check a Serve config with Ray's own schema (`ray.serve.schema.ServeDeploySchema`).

    Raises:
        DependencyError: ray is not installed.
        ConfigError: Ray refuses the config (its message, on one line).
    """
    try:
        from ray.serve.schema import ServeDeploySchema
    except ImportError as e:
        raise missing_dependency("ray", "ray") from e
    try:
        ServeDeploySchema.model_validate(config)
    except Exception as e:  # noqa: BLE001 - pydantic's ValidationError: one line for the user
        raise ConfigError(f"Ray refuses the Serve config: {' '.join(str(e).split())}") from None


def write_serve_config(path: str | Path, bundle: str | Path, pipeline: PipelineConfig, server: ServerConfig,
                       ray_config: RayConfig, token_file: str | Path | None = None) -> dict[str, Any]:
    """Write `serve_config(...)` as YAML (checked with Ray's schema when ray is installed); returns it."""
    config = serve_config(bundle, pipeline, server, ray_config, token_file)
    with contextlib.suppress(ImportError):
        import ray.serve.schema  # noqa: F401

        validate_serve_config(config)
    header = (f"# Ray Serve config of crab-rt {__version__} (`crab-rt serve --ray --write-config`).\n"
              "# Deploy: `ray start --head` (or a KubeRay RayService), then `serve deploy THIS_FILE`; or `serve run "
              "THIS_FILE`.\n# The bundle path must exist on every node. docs/ray.md explains each setting.\n")
    try:
        import yaml

        body = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
    except ImportError:
        body = json.dumps(config, indent=2) + "\n"  # JSON is YAML too
    try:
        Path(path).write_text(header + body, encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"--write-config {path}: {e.strerror or e}") from None
    return config


# ---- replicas ---------------------------------------------------------------------------------------------------
def _assigned(kind: str) -> float:
    """The CPUs or GPUs Ray assigned to this replica (0 outside Ray)."""
    try:
        import ray

        return float(ray.get_runtime_context().get_assigned_resources().get(kind, 0.0))
    except Exception:  # noqa: BLE001 - not in a Ray worker
        return 0.0


def _threads(configured: int) -> int:
    return configured or max(1, int(round(_assigned("CPU"))))


def _make_batched(fn, max_batch_size: int, wait_s: float):
    """`fn(list) -> list` as a `@serve.batch` function of one item."""
    from ray import serve

    async def batched(items: list) -> list:
        return await fn(items)

    return serve.batch(max_batch_size=max_batch_size, batch_wait_timeout_s=wait_s)(batched)


class _Batched:
    """The replicas' shared part: a one-thread executor for the blocking calls and `@serve.batch` setters."""

    def _setup_batching(self, name: str, handlers: dict[str, Any], default_batch: int, cap: int | None) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=name)
        self._cap = cap
        self._batchers = {key: _make_batched(fn, default_batch, 0.01) for key, fn in handlers.items()}
        self.max_batch_size = default_batch

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve's `user_config`: {"max_batch_size": n (0: keep), "batch_wait_timeout_s": s}; no restart."""
        n = int(user_config.get("max_batch_size") or self.max_batch_size)
        if self._cap is not None and n > self._cap:
            log.warning("max_batch_size %d is more than the bundle's shape_ranges batch max %d: using %d",
                        n, self._cap, self._cap)
            n = self._cap
        self.max_batch_size = n
        for batcher in self._batchers.values():
            batcher.set_max_batch_size(n)
            if "batch_wait_timeout_s" in user_config:
                batcher.set_batch_wait_timeout_s(float(user_config["batch_wait_timeout_s"]))

    async def _in_pool(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


class ModelReplica(_Batched):
    """The `CrabModel` deployment: the bundle's encoders and head on one backend, batching across streams.

    Args:
        bundle: the bundle folder (the same path on every node).
        pipeline: `PipelineConfig` as a dict (backend, precision, threads, max_batch, ...).
    """

    def __init__(self, bundle: str, pipeline: dict[str, Any]) -> None:
        from crab_rt.runtime.emotion_model import EmotionModel

        config = _pipeline_from_dict(pipeline)
        on_gpu = _assigned("GPU") > 0
        backend = config.backend if on_gpu or config.backend != "auto" else "onnxruntime"
        self.model = EmotionModel.load(bundle, backend, 0 if on_gpu else None, config.precision,
                                       _threads(config.threads), config.ort_spinning)
        cap = _bundle_batch_max(bundle)
        self._setup_batching("crab-model", {"speech": self._speech_batch, "fuse": self._fuse_batch},
                             min(config.max_batch, cap or config.max_batch), cap)
        self._info = {"labels": list(self.model.labels), "uses_speech": self.model.uses_speech,
                      "uses_text": self.model.uses_text, "backend": self.model.choice.describe(),
                      "max_audio_s": float(self.model.bundle.max_audio_s), "bundle": str(bundle)}

    async def info(self) -> dict[str, Any]:
        return {**self._info, "max_batch_size": self.max_batch_size}

    async def speech(self, audio: np.ndarray) -> tuple[np.ndarray, float]:
        """Speech encoder on one utterance (batched with others): (hidden states [T, D], batch ms)."""
        return await self._batchers["speech"](audio)

    async def fuse(self, speech: np.ndarray | None, text: str) -> tuple[np.ndarray, float, float]:
        """Text encoder + head on one utterance (batched): (probabilities [C], text encoder ms, head ms)."""
        return await self._batchers["fuse"]((speech, text))

    async def _speech_batch(self, audios: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        def work() -> list[tuple[np.ndarray, float]]:
            start = time.perf_counter()
            features = self.model.encode_speech(audios)
            ms = (time.perf_counter() - start) * 1000
            return [(f.hidden, ms) for f in features]

        return await self._in_pool(work)

    async def _fuse_batch(self, items: list[tuple[np.ndarray | None, str]]) -> list[tuple[np.ndarray, float, float]]:
        from crab_rt.runtime.emotion_model import Features

        def work() -> list[tuple[np.ndarray, float, float]]:
            start = time.perf_counter()
            text = self.model.encode_text([t for _, t in items]) if self.model.uses_text else None
            mid = time.perf_counter()
            speech = [Features(h) for h, _ in items] if self.model.uses_speech else None
            probs = self.model.classify(speech, text)
            end = time.perf_counter()
            return [(p, (mid - start) * 1000, (end - mid) * 1000) for p in probs]

        return await self._in_pool(work)


class AsrReplica(_Batched):
    """The `CrabAsr` deployment: faster-whisper, batching utterances across streams.

    Args:
        asr: `AsrConfig` as a dict; the device follows the replica's GPUs (see the module docstring).
    """

    def __init__(self, asr: dict[str, Any]) -> None:
        from crab_rt.runtime.asr import Transcriber

        on_gpu = _assigned("GPU") > 0
        config = dataclasses.replace(AsrConfig(**asr), device="cuda" if on_gpu else "cpu", device_index=0)
        config = dataclasses.replace(config, cpu_threads=_threads(config.cpu_threads))
        self.transcriber = Transcriber(config)
        self._setup_batching("crab-asr", {"transcribe": self._transcribe_batch}, 1, None)
        self._info = {"model": str(self.transcriber.model_path), "device": self.transcriber.device,
                      "language": config.language}

    async def info(self) -> dict[str, Any]:
        return {**self._info, "max_batch_size": self.max_batch_size}

    async def transcribe(self, audio: np.ndarray) -> tuple[str, bool, float]:
        """One utterance (batched with others): (text, flagged by the guard, batch ms)."""
        return await self._batchers["transcribe"](audio)

    async def _transcribe_batch(self, audios: list[np.ndarray]) -> list[tuple[str, bool, float]]:
        def work() -> list[tuple[str, bool, float]]:
            start = time.perf_counter()
            results = self.transcriber.transcribe_batch(audios)
            ms = (time.perf_counter() - start) * 1000
            return [(r.text, r.flagged, ms) for r in results]

        return await self._in_pool(work)


# ---- the ingress's engine: a Pipeline whose model and ASR stages are Ray Serve deployments ----------------------
class _Described:
    def __init__(self, text: str) -> None:
        self._text = text

    def describe(self) -> str:
        return self._text


class _Order:
    """One stream's completed utterances, delivered in submission order."""

    def __init__(self) -> None:
        self.next_seq = itertools.count()  # taken by the submitting thread
        self.deliver_seq = 0  # read and written on the event loop only
        self.ready: dict[int, tuple] = {}


class RayEngine:
    """What a `_Session` uses of a `Pipeline`, with the model and ASR stages in Ray Serve deployments.

    Streams are real `Stream`s (front end in the ingress); `_submit` hands each utterance to the event loop,
    which calls the deployments (speech encoder and ASR at once, then text encoder + head) and delivers the
    events in order. Admission (`max_in_flight`, `overflow`) is the pipeline's, per ingress replica.
    """

    def __init__(self, model_handle, asr_handle, config: PipelineConfig, info: dict[str, Any],
                 asr_info: dict[str, Any] | None, retries: int, timeout_s: float, registry=None) -> None:
        from crab_rt.runtime.vad import SileroVad

        self.config = config
        self._model_handle, self._asr_handle = model_handle, asr_handle
        described = f"Ray Serve: {MODEL} ({info['backend']})" + (
            f" + {ASR} ({asr_info['device']})" if asr_info is not None else "")
        self.model = SimpleNamespace(labels=list(info["labels"]), uses_speech=bool(info["uses_speech"]),
                                     uses_text=bool(info["uses_text"]), choice=_Described(described))
        self.vad = SileroVad(num_threads=1)
        self.retries, self.timeout_s = retries, timeout_s
        self.loop: asyncio.AbstractEventLoop | None = None
        self._admission = threading.BoundedSemaphore(config.max_in_flight)
        self._closed = False
        self._outboxes: weakref.WeakKeyDictionary[_Outbox, _Order] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self.calls = {"speech": 0, "asr": 0, "fusion": 0}  # calls waiting for a replica's answer
        self.retried = self.failed = None
        if registry is not None:
            from prometheus_client import Counter

            self.retried = Counter("crab_rt_ray_call_retries", "Model/ASR calls sent again after their replica "
                                   "died", ["deployment"], registry=registry)
            self.failed = Counter("crab_rt_ray_call_failures", "Model/ASR calls that failed their stream",
                                  ["deployment"], registry=registry)
            for name in (MODEL, ASR):
                self.retried.labels(name)
                self.failed.labels(name)

    def create_stream(self, stream_id: str, on_event=None, on_speech=None) -> Stream:
        outbox = _Outbox(stream_id, on_event, self.config.event_queue_size)
        with self._lock:
            if self._closed:
                raise RuntimeError("create_stream() on a closed engine")
            self._outboxes[outbox] = _Order()
        return Stream(stream_id, StreamFrontEnd(self.vad, self.config.segmenter, on_speech), outbox, self._submit)

    def queue_depths(self) -> dict[str, int]:
        with self._lock:
            in_flight = sum(outbox.pending for outbox in list(self._outboxes))
        return {**self.calls, "in_flight": in_flight}

    def close(self) -> None:
        self._closed = True

    # ---- scheduling (the submitting thread) ----------------------------------------------------------------------
    def _submit(self, outbox: _Outbox, utt: Utterance) -> bool:
        if self._closed or self.loop is None:
            raise _closed_error(outbox)
        if self.config.overflow == "block":
            while not self._admission.acquire(timeout=0.1):
                if self._closed:
                    raise _closed_error(outbox)
        elif not self._admission.acquire(blocking=False):
            log.warning("stream %s: dropped utterance at %.1f-%.1f s (%d in flight, overflow=drop)",
                        outbox.stream_id, utt.start_s, utt.end_s, self.config.max_in_flight)
            return False
        seq = next(self._outboxes[outbox].next_seq)
        outbox.add()
        try:
            asyncio.run_coroutine_threadsafe(self._process(outbox, seq, utt), self.loop)
        except RuntimeError:  # the loop is closed: the replica is going away
            self._admission.release()
            outbox.done()
            raise _closed_error(outbox) from None
        return True

    # ---- processing (the event loop) -----------------------------------------------------------------------------
    async def _process(self, outbox: _Outbox, seq: int, utt: Utterance) -> None:
        try:
            result: tuple = ("ok", await self._run(utt))
        except Exception as e:  # noqa: BLE001 - becomes the stream's error, in utterance order
            result = ("error", e)
        self._complete(outbox, seq, utt, result)

    def _complete(self, outbox: _Outbox, seq: int, utt: Utterance, result: tuple) -> None:
        order = self._outboxes.get(outbox)
        if order is None:  # not expected: the running job holds its outbox, which holds the order
            self._admission.release()
            outbox.done()
            return
        order.ready[seq] = (utt, result)
        while order.deliver_seq in order.ready:
            utt, (kind, value) = order.ready.pop(order.deliver_seq)
            order.deliver_seq += 1
            try:
                if kind == "ok":
                    outbox.deliver(self._event(outbox.stream_id, utt, *value))
                else:
                    log.debug("stream %s: utterance %d failed", outbox.stream_id, utt.utterance_index, exc_info=value)
                    outbox.fail(value)
            finally:
                self._admission.release()
                outbox.done()

    def _event(self, stream_id: str, utt: Utterance, probs: np.ndarray, text: str, flagged: bool,
               ms: dict[str, float]) -> EmotionEvent:
        """As `Pipeline._finish` builds it; end_to_event runs to this delivery."""
        labels = self.model.labels
        best = int(np.argmax(probs))
        latency = {"end_to_event": (time.perf_counter() - utt.end_of_speech_time) * 1000, **ms}
        return EmotionEvent(
            stream_id=stream_id, utterance_id=utt.utterance_index, start_s=utt.start_s, end_s=utt.end_s,
            text=text, text_flagged=flagged, label=labels[best], confidence=float(probs[best]),
            probabilities={k: float(v) for k, v in zip(labels, probs)}, latency_ms=latency,
            forced_split=utt.forced_split)

    async def _run(self, utt: Utterance) -> tuple[np.ndarray, str, bool, dict[str, float]]:
        ms = {"asr": 0.0, "speech_encoder": 0.0, "text_encoder": 0.0, "head": 0.0, "queue_wait": 0.0}
        model, asr = self._model_handle, self._asr_handle
        speech = (asyncio.ensure_future(self._call("speech", "speech encoder", model.speech, utt.audio))
                  if self.model.uses_speech else None)
        heard = (asyncio.ensure_future(self._call("asr", "ASR", asr.transcribe, utt.audio))
                 if asr is not None else None)
        wait = 0.0
        try:
            hidden = None
            if speech is not None:
                (hidden, ms["speech_encoder"]), rtt = await speech
                wait += rtt - ms["speech_encoder"]
            text, flagged = "", False
            if heard is not None:
                (text, flagged, ms["asr"]), rtt = await heard
                if speech is None:
                    wait += rtt - ms["asr"]
        except BaseException:
            for task in (speech, heard):
                if task is not None and not task.done():
                    task.cancel()
            raise
        (probs, ms["text_encoder"], ms["head"]), rtt = await self._call("fusion", "text encoder + head",
                                                                         model.fuse, hidden, text)
        ms["queue_wait"] = max(0.0, wait + rtt - ms["text_encoder"] - ms["head"])
        return np.asarray(probs), text, flagged, ms

    async def _call(self, key: str, stage: str, method, *args) -> tuple[Any, float]:
        """One deployment call with retries on replica death and a timeout: (result, round trip ms)."""
        deployment = ASR if key == "asr" else MODEL
        for attempt in itertools.count():
            start = time.perf_counter()
            self.calls[key] += 1
            response = method.remote(*args)
            try:
                result = await asyncio.wait_for(_resolved(response), self.timeout_s)
                return result, (time.perf_counter() - start) * 1000
            except asyncio.TimeoutError:
                with contextlib.suppress(Exception):
                    response.cancel()
                self._count(self.failed, deployment)
                raise BackendError(f"{stage} failed: no answer from the {deployment} deployment within "
                                   f"{self.timeout_s:g} s (request_timeout_s)") from None
            except Exception as e:
                cause = getattr(e, "cause", None) or e  # RayTaskError carries the replica's exception
                if not _retryable(e) or attempt >= self.retries:
                    self._count(self.failed, deployment)
                    if _retryable(e):
                        raise BackendError(f"{stage} failed: the {deployment} replica died and {attempt} "
                                           f"retr{'y' if attempt == 1 else 'ies'} did not help: "
                                           f"{type(e).__name__}") from e
                    raise _stage_error(stage, cause) from e
                self._count(self.retried, deployment)
                log.warning("%s: a %s replica died (%s); sending the utterance again (retry %d of %d)",
                            stage, deployment, type(e).__name__, attempt + 1, self.retries)
                await asyncio.sleep(0.1 * 2 ** attempt)
            finally:
                self.calls[key] -= 1
        raise AssertionError("unreachable")

    @staticmethod
    def _count(counter, deployment: str) -> None:
        if counter is not None:
            counter.labels(deployment).inc()


async def _resolved(response):
    return await response


def _retryable(error: BaseException) -> bool:
    """A call that failed because its replica died or was unreachable (sent again), not because of its input."""
    return any(t.__name__ in _RETRYABLE for t in type(error).__mro__)


# ---- the ingress ------------------------------------------------------------------------------------------------
class _AsgiConnection:
    """A Starlette WebSocket with the part of the `websockets` connection API that `_Session` uses.

    A message over `max_size` closes the connection with 1009 (as the `websockets` server's limit does); the
    client's close arrives as `ConnectionClosed` with the code it sent.
    """

    def __init__(self, websocket, max_size: int) -> None:
        self.ws = websocket
        self.max_size = max_size
        self.crab_slot = False
        self._closed: BaseException | None = None

    @property
    def remote_address(self):
        client = self.ws.client
        return (client.host, client.port) if client is not None else None

    def _closed_error(self, rcvd=None, sent=None) -> BaseException:
        from websockets.exceptions import ConnectionClosed

        if self._closed is None:
            self._closed = ConnectionClosed(rcvd, sent)
        return self._closed

    async def recv(self):
        from websockets.frames import Close

        if self._closed is not None:
            raise self._closed
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise self._closed_error(rcvd=Close(int(message.get("code") or 1005), message.get("reason") or ""))
        data = message.get("bytes")
        if data is None:
            data = message.get("text") or ""
        size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8"))
        if size > self.max_size:
            reason = f"frame exceeds limit of {self.max_size} bytes"  # the websockets server's words
            with contextlib.suppress(Exception):
                await self.ws.close(1009, reason)
            raise self._closed_error(sent=Close(1009, reason))
        return data

    async def send(self, text: str) -> None:
        if self._closed is not None:
            raise self._closed
        try:
            await self.ws.send_text(text)
        except Exception as e:  # noqa: BLE001 - the client is gone: as websockets reports it
            raise self._closed_error() from e

    async def close(self, code: int = 1000, reason: str = "") -> None:
        from websockets.frames import Close

        if self._closed is not None:
            return
        self._closed_error(sent=Close(code, reason))
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)


class _IngressHost(Server):
    """The part of `Server` a `_Session` relies on (config, metrics, admission, drain), without its listener."""

    def __init__(self, pipeline_config: PipelineConfig, config: ServerConfig, engine: RayEngine) -> None:
        super().__init__("(ray)", pipeline_config, config)
        self._executor = concurrent.futures.ThreadPoolExecutor(config.max_streams + 1,
                                                               thread_name_prefix="crab-ingress")
        self._drain_requested = asyncio.Event()
        self._force_close = asyncio.Event()
        self.pipeline = engine
        self.language = None if pipeline_config.asr is None else pipeline_config.asr.language
        self.state = "ready"


class IngressReplica:
    """The `CrabIngress` deployment: WebSocket streams, their front ends, /healthz and /metrics.

    Args:
        model: handle of the `CrabModel` deployment.
        asr: handle of the `CrabAsr` deployment, or None (no ASR).
        args: `app_args(...)`.
    """

    async def __init__(self, model, asr, args: dict[str, Any]) -> None:
        pipeline = _pipeline_from_dict(args["pipeline"])
        server = _server_from_args(_with_token(args))
        info = await model.info.remote()
        asr_info = await asr.info.remote() if asr is not None else None
        pipeline = _fit_to_bundle(pipeline, SimpleNamespace(max_audio_s=info["max_audio_s"], root=info["bundle"]))
        host = _IngressHost(pipeline, server, None)
        self.engine = RayEngine(model, asr, pipeline, info, asr_info, int(args.get("retries", 2)),
                                float(args.get("request_timeout_s", 60.0)), host.metrics.registry)
        host.pipeline = self.engine
        self.host = host
        self.replica = _replica_id()
        self._drain_task: asyncio.Task | None = None
        log.info("crab-rt ingress %s ready: %s", self.replica, self.engine.model.choice.describe())

    def __serve_build_asgi_app__(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route, WebSocketRoute

        host, engine = self.host, self.engine

        async def healthz(request):
            status, body = host._health_body()
            body["ingress_replica"] = self.replica
            return JSONResponse(body, status_code=status)

        async def metrics(request):
            body, content_type = host.metrics.render()
            return Response(body, headers={"Content-Type": content_type})

        async def stream(websocket):
            loop = asyncio.get_running_loop()
            host._loop = engine.loop = loop
            refusal = host._admit(websocket.headers.get("authorization"), _peer_of(websocket))
            if refusal is not None:
                await _deny(websocket, *refusal)
                return
            connection = _AsgiConnection(websocket, host.config.max_message_bytes)
            connection.crab_slot = True
            try:
                await websocket.accept()
            except BaseException:
                host._release(connection)
                raise
            await host._handle(connection)

        return Starlette(routes=[Route("/healthz", healthz), Route("/metrics", metrics),
                                 WebSocketRoute("/{path:path}", stream)])

    async def drain(self) -> dict[str, Any]:
        """Drain this replica as SIGTERM drains `crab-rt serve` (done with reason drain, close 1001); returns
        {"replica", "streams_left"} when it is done. Idempotent: a second call waits for the first."""
        if self._drain_task is None:
            self.host._loop = self.engine.loop = self.engine.loop or asyncio.get_running_loop()
            self._drain_task = asyncio.ensure_future(self.host._drain())
        await asyncio.shield(self._drain_task)
        return {"replica": self.replica, "streams_left": len(self.host._sessions)}

    async def __del__(self) -> None:
        """Serve stops the replica once its streams ended (or kills it after its grace period): drain any left."""
        host = getattr(self, "host", None)
        if host is None:  # the constructor failed
            return
        with contextlib.suppress(Exception):
            if host.state == "ready" and host._sessions:
                await self.drain()
        self.engine.close()
        host._executor.shutdown(wait=False, cancel_futures=True)


def _with_token(args: dict[str, Any]) -> dict[str, Any]:
    """args with the token read from `token_file` (on the ingress's node)."""
    if args.get("token") is not None or not args.get("token_file"):
        return args
    path = Path(args["token_file"])
    try:
        token = path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"token_file {path}: {e.strerror or e}") from None
    if not token:
        raise ConfigError(f"token_file {path} is empty")
    return {**args, "token": token}


def _peer_of(websocket) -> str:
    client = websocket.client
    return f"{client.host}:{client.port}" if client is not None else "?"


async def _deny(websocket, status: int, reason: str, message: str) -> None:
    """Refuse a handshake with an HTTP status and a one-line body, as `crab-rt serve` does, where the ASGI server
    supports it (the "websocket.http.response" extension); else close it before accepting (HTTP 403)."""
    if "websocket.http.response" in (websocket.scope.get("extensions") or {}):
        from starlette.responses import PlainTextResponse

        await websocket.send_denial_response(PlainTextResponse(message + "\n", status, headers=refusal_headers(status)))
    else:
        await websocket.close(code=1013 if status == 503 else 1008, reason=message[:120])


def _replica_id() -> str:
    try:
        from ray import serve

        context = serve.get_replica_context()
        return str(getattr(context.replica_id, "unique_id", None) or context.replica_tag)
    except Exception:  # noqa: BLE001 - outside a replica (tests)
        return "local"


# ---- building and running ---------------------------------------------------------------------------------------
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
    pipeline = _pipeline_from_dict(args["pipeline"])
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
    pipeline = _pipeline_from_dict(args["pipeline"])
    server = _server_from_args({k: v for k, v in args.items() if k != "token_file"})
    defaults = RayConfig()
    model_batch, asr_batch = _batch_sizes(pipeline, _bundle_batch_max(args["bundle"]), defaults, False)
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
        ConfigError: a setting is out of range, or Ray cannot start or deploy the app.
    """
    ray, serve = _import_serve()
    ray_config = ray_config.validate()
    server = server.validate()
    stop = stop or threading.Event()
    _fit_to_bundle(pipeline, SimpleNamespace(max_audio_s=_bundle_max_audio_s(bundle), root=bundle))
    port = server.port or _free_port(server.host)
    asr_on_gpu = pipeline.asr is not None and ray_config.asr.num_gpus > 0
    model_batch, asr_batch = _batch_sizes(pipeline, _bundle_batch_max(bundle), ray_config, asr_on_gpu)
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
        quiet = logging.getLogger("crab_rt").getEffectiveLevel() > logging.INFO
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


def _bundle_max_audio_s(bundle: str | Path) -> float:
    try:
        manifest = json.loads((Path(bundle) / "manifest.json").read_text(encoding="utf-8"))
        return float(manifest["max_audio_s"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{bundle}: not a bundle folder (manifest.json: {e})") from None
