"""crab-rt: streaming, real-time bimodal speech emotion recognition.

Importing this package is cheap: it loads neither torch, transformers,
onnxruntime nor tensorrt. Heavy modules are imported by the objects that use
them.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
