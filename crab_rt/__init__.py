"""crab-rt: streaming, real-time bimodal speech emotion recognition.

Importing this package is cheap: it loads neither torch, transformers,
onnxruntime nor tensorrt. The public names below are imported on first use.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

# The library logs to "crab_rt.*" and never configures logging; the CLI (or the application) does.
logging.getLogger(__name__).addHandler(logging.NullHandler())

_PUBLIC = {
    "Pipeline": "crab_rt.runtime.pipeline",
    "PipelineConfig": "crab_rt.runtime.pipeline",
    "Stream": "crab_rt.runtime.pipeline",
    "EmotionEvent": "crab_rt.runtime.events",
    "EmotionModel": "crab_rt.runtime.emotion_model",
    "AsrConfig": "crab_rt.runtime.asr",
    "SegmenterConfig": "crab_rt.runtime.segmenter",
    "Bundle": "crab_rt.bundle",
    "load_bundle": "crab_rt.bundle",
    "CrabError": "crab_rt.errors",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'crab_rt' has no attribute {name!r}")
