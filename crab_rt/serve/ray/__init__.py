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
- `ray` is imported inside functions only: this package imports without it (config files, `--write-config`),
  and the core runtime never imports it.

Modules: `settings` (RayConfig), `serve_config` (the app's args and deployment options, the Serve config),
`replicas` (CrabModel, CrabAsr), `engine` (RayEngine), `ingress` (CrabIngress), `app` (build_app, run).
"""

from crab_rt.serve.ray.app import build_app, run
from crab_rt.serve.ray.engine import RayEngine
from crab_rt.serve.ray.serve_config import (
    app_args,
    deployment_options,
    pipeline_from_dict,
    serve_config,
    server_from_args,
    validate_serve_config,
    write_serve_config,
)
from crab_rt.serve.ray.settings import (
    APP_NAME,
    ASR,
    BUILDER,
    INGRESS,
    MODEL,
    Autoscaling,
    DeploymentSettings,
    RayConfig,
    load_ray_config,
)

__all__ = [
    "APP_NAME", "INGRESS", "MODEL", "ASR", "BUILDER", "Autoscaling", "DeploymentSettings", "RayConfig",
    "load_ray_config", "app_args", "deployment_options", "pipeline_from_dict", "server_from_args", "serve_config",
    "write_serve_config", "validate_serve_config", "build_app", "run", "RayEngine",
]
