"""Settings of `crab-rt serve --ray` (`RayConfig`, read from a YAML `--ray-config` file) and the app's names."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crab_rt.checks import is_int, is_number
from crab_rt.errors import ConfigError

APP_NAME = "crab-rt"
INGRESS, MODEL, ASR = "CrabIngress", "CrabModel", "CrabAsr"
BUILDER = "crab_rt.serve.ray.app:build_app"  # the Serve config's import_path


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
        if not is_int(self.min_replicas) or not 0 <= self.min_replicas <= 1000:
            raise ConfigError(f"{where}.autoscaling.min_replicas = {self.min_replicas!r}: must be in [0, 1000]")
        if not is_int(self.max_replicas) or not max(1, self.min_replicas) <= self.max_replicas <= 1000:
            raise ConfigError(f"{where}.autoscaling.max_replicas = {self.max_replicas!r}: must be in "
                              f"[max(1, min_replicas), 1000]")
        for name in ("target_ongoing_requests", "upscale_delay_s", "downscale_delay_s"):
            value = getattr(self, name)
            if not is_number(value) or value <= 0:
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
        graceful_shutdown_timeout_s: how long a stopping replica may finish its work; 0 = auto (ingress: 3600 s,
            so that its open streams end by themselves; model and ASR: 20 s).
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

        if not is_int(self.replicas) or not 1 <= self.replicas <= 1000:
            raise bad("replicas", "an integer in [1, 1000]")
        if self.autoscaling is not None:
            self.autoscaling.validate(where)
        if not is_number(self.num_cpus) or not 0 <= self.num_cpus <= 1024:
            raise bad("num_cpus", "a number in [0, 1024] (fractions allowed)")
        if not is_number(self.num_gpus) or not 0 <= self.num_gpus <= 64:
            raise bad("num_gpus", "a number in [0, 64] (fractions allowed)")
        if not is_int(self.max_ongoing_requests) or not 0 <= self.max_ongoing_requests <= 100_000:
            raise bad("max_ongoing_requests", "an integer in [0, 100000] (0: auto)")
        if not is_int(self.max_batch_size) or not 0 <= self.max_batch_size <= 64:
            raise bad("max_batch_size", "an integer in [0, 64] (0: auto)")
        if not is_number(self.batch_wait_timeout_s) or not 0 <= self.batch_wait_timeout_s <= 10:
            raise bad("batch_wait_timeout_s", "a number of seconds in [0, 10]")
        for name in ("health_check_period_s", "health_check_timeout_s"):
            if not is_number(getattr(self, name)) or not 0.1 <= getattr(self, name) <= 3600:
                raise bad(name, "a number of seconds in [0.1, 3600]")
        if not is_number(self.graceful_shutdown_timeout_s) or not 0 <= self.graceful_shutdown_timeout_s <= 3600:
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
        if self.num_cpus is not None and (not is_number(self.num_cpus) or not 0 < self.num_cpus <= 4096):
            raise ConfigError(f"num_cpus = {self.num_cpus!r}: must be null or a number in (0, 4096]")
        if self.object_store_memory_mb is not None and (not is_int(self.object_store_memory_mb)
                                                        or not 75 <= self.object_store_memory_mb <= 1 << 24):
            raise ConfigError(f"object_store_memory_mb = {self.object_store_memory_mb!r}: must be null or an "
                              "integer >= 75 (Ray's minimum)")
        if not is_number(self.request_timeout_s) or not 1 <= self.request_timeout_s <= 3600:
            raise ConfigError(f"request_timeout_s = {self.request_timeout_s!r}: must be in [1, 3600]")
        if not is_int(self.retries) or not 0 <= self.retries <= 10:
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


