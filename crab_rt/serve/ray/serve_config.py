"""The Serve application's arguments and deployment options, and the Serve config that `serve deploy` and a
KubeRay RayService accept (`crab-rt serve --ray --write-config`)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any

from crab_rt import __version__
from crab_rt.bundle import load_bundle
from crab_rt.checks import is_int
from crab_rt.errors import ConfigError, missing_dependency
from crab_rt.runtime.asr import AsrConfig
from crab_rt.runtime.pipeline import PipelineConfig
from crab_rt.runtime.segmenter import SegmenterConfig
from crab_rt.serve.ray.settings import ASR, BUILDER, INGRESS, MODEL, RayConfig
from crab_rt.serve.server import ServerConfig


def _pipeline_to_dict(config: PipelineConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def pipeline_from_dict(data: dict[str, Any]) -> PipelineConfig:
    data = dict(data)
    try:
        segmenter = SegmenterConfig(**data.pop("segmenter", {}))
        asr = data.pop("asr", None)
        return PipelineConfig(segmenter=segmenter, asr=None if asr is None else AsrConfig(**asr), **data).validate()
    except TypeError as e:
        raise ConfigError(f"args.pipeline: {e}") from None


# max_connections and handshake_timeout_s are the standalone listener's: under Ray, Serve's HTTP proxy owns the TCP
# connections and their handshake (docs/ray.md).
_SERVER_FIELDS = ("max_streams", "max_message_bytes", "start_timeout_s", "idle_timeout_s", "realtime_slack_s",
                  "max_pending_messages", "drain_timeout_s", "ui", "max_buffered_audio_s")


# A stopping ingress replica (a scale-down, a new `serve deploy`, `serve delete`) gets no new streams, and Serve
# waits this long for its open ones to end by themselves before it kills it: an hour, the most Serve's config
# here allows, so that live streams are not cut. `crab-rt serve --ray` drains its replicas itself on SIGTERM
# first, so its own shutdown does not wait.
INGRESS_GRACE_S = 3600.0


def server_from_args(args: dict[str, Any]) -> ServerConfig:
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


def batch_sizes(pipeline: PipelineConfig, bundle_batch_max: int | None, ray_config: RayConfig,
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
            grace = s.graceful_shutdown_timeout_s or INGRESS_GRACE_S
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


def bundle_batch_max(bundle: str | Path) -> int | None:
    """The largest batch of the bundle's shape ranges (None when it records none).

    Raises:
        BundleError: not a readable bundle (its manifest is read; the files are not hashed).
    """
    value = (load_bundle(bundle, verify=False).shape_ranges.get("batch") or {}).get("max")
    return int(value) if is_int(value) and value >= 1 else None


def serve_config(bundle: str | Path, pipeline: PipelineConfig, server: ServerConfig, ray_config: RayConfig,
                 token_file: str | Path | None = None) -> dict[str, Any]:
    """A Serve config (the schema of `serve deploy` / `serve run` / KubeRay's `serveConfigV2`) for this app.

    `http_options` take the server's `--host`, `--port` (0: Serve's 8000) and TLS files; Serve's HTTP proxy
    listens there on every node.
    """
    ray_config = ray_config.validate()
    server = server.validate()
    asr_on_gpu = pipeline.asr is not None and ray_config.asr.num_gpus > 0
    model_batch, asr_batch = batch_sizes(pipeline, bundle_batch_max(bundle), ray_config, asr_on_gpu)
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


