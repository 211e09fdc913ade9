"""User-facing error types.

Anything a user can cause (a bad config, a missing or corrupt file, an unknown
label, a broken bundle, an absent device) raises a subclass of `CrabError`.
The CLI turns it into one line on stderr and exit code 2; programming errors
keep their traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "CrabError",
    "ConfigError",
    "AudioError",
    "ManifestError",
    "BundleError",
    "BackendError",
    "DependencyError",
    "missing_dependency",
    "requires_extra",
]


class CrabError(Exception):
    """Base class of every error caused by input, configuration or environment."""


class ConfigError(CrabError, ValueError):
    """A configuration value is missing, unknown or out of range."""


class AudioError(CrabError):
    """An audio file or stream cannot be read, is empty, or has the wrong format."""


class ManifestError(CrabError):
    """A manifest row is malformed or names an unknown label."""


class BundleError(CrabError):
    """A model bundle is missing, incomplete, tampered with, or stale."""


class BackendError(CrabError):
    """An inference backend or device is unavailable."""


class DependencyError(CrabError, ImportError):
    """An optional dependency is not installed; the message names the extra."""


def missing_dependency(module: str, extra: str) -> DependencyError:
    """Build the error raised when `module` cannot be imported.

    Args:
        module: the import name that failed (e.g. "torch").
        extra: the crab-rt extra that provides it (e.g. "train").
    """
    return DependencyError(
        f"this feature needs '{module}', which is not installed: pip install 'crab-rt[{extra}]'"
    )


@contextmanager
def requires_extra(extra: str, module: str = "torch") -> Iterator[None]:
    """Turn an ImportError raised inside the block into the DependencyError naming `extra`.

    Example:
        with requires_extra("train"):
            from crab_rt.train.trainer import Trainer
    """
    try:
        yield
    except ImportError as e:
        if isinstance(e, DependencyError):
            raise
        raise missing_dependency(e.name or module, extra) from e
