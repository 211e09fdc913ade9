"""The house: which wing may import which, and the ONNX Runtime path without torch.

The rules are in `tests/import_rules.py` and ARCHITECTURE.md. Each check is run
on the real tree and on a planted forbidden import, so a check that can no
longer fail shows up here.
"""

from __future__ import annotations

import pytest
from import_rules import (
    HEAVY,
    SourceModule,
    imports_of,
    module_level_closure,
    source_modules,
    wing_of,
    wing_violations,
)

# The modules `crab-rt listen --backend onnxruntime` imports before it picks a backend.
ONNXRUNTIME_PATH = (
    "crab_rt",
    "crab_rt.cli",
    "crab_rt.cli.listen",
    "crab_rt.runtime.pipeline",
    "crab_rt.runtime.emotion_model",
    "crab_rt.runtime.sources",
    "crab_rt.runtime.summary",
    "crab_rt.backends.select",
    "crab_rt.backends.onnxruntime",
    "crab_rt.bundle",
    "crab_rt.audio",
    "crab_rt.text",
    "crab_rt.features",
)


@pytest.fixture(scope="module")
def modules() -> list[SourceModule]:
    return source_modules()


def test_tree_has_every_wing(modules):
    wings = {wing_of(m.name) for m in modules}
    assert wings == {"runtime", "data", "train", "export", "cli", "bench"}
    names = {m.name for m in modules}
    for name in ONNXRUNTIME_PATH:
        assert name in names, f"{name} moved: update ONNXRUNTIME_PATH"


def test_no_forbidden_imports(modules):
    assert wing_violations(modules) == []


@pytest.mark.parametrize(
    ("name", "source", "expected"),
    [
        ("crab_rt.runtime.planted", "from crab_rt.train.trainer import Trainer\n", "runtime imports crab_rt.train"),
        ("crab_rt.runtime.planted", "def f():\n    import crab_rt.export.parity\n", "runtime imports crab_rt.export"),
        ("crab_rt.runtime.planted", "from crab_rt.cli import main\n", "runtime imports crab_rt.cli"),
        ("crab_rt.backends.planted", "from crab_rt.data import manifest\n", "runtime imports crab_rt.data"),
        ("crab_rt.backends.planted", "import crab_bench.stats\n", "runtime imports crab_bench"),
        ("crab_rt.train.planted", "from crab_rt.export.bundle_writer import export_bundle\n", "train imports"),
        ("crab_rt.export.planted", "from crab_rt.train.checkpoint import save_checkpoint\n", "export imports"),
        ("crab_rt.export.planted", "from ..data import synth\n", "export imports crab_rt.data (data)"),
        ("crab_rt.data.planted", "from crab_rt.train.metrics import war\n", "data imports crab_rt.train"),
        ("crab_rt.cli.planted", "from crab_bench.cli import main\n", "cli imports crab_bench"),
    ],
)
def test_planted_forbidden_import_is_caught(modules, name, source, expected):
    package = name.rsplit(".", 1)[0]
    planted = SourceModule(name, f"{package.replace('.', '/')}/planted.py", source)
    problems = wing_violations([*modules, planted])
    assert len(problems) == 1 and expected in problems[0], problems


def test_allowed_imports_are_not_flagged():
    allowed = [
        SourceModule("crab_rt.train.ok", "train/ok.py", "from crab_rt.data.manifest import read_manifest\n"),
        SourceModule("crab_rt.export.ok", "export/ok.py", "from crab_rt.model.checkpoint import load_model\n"),
        SourceModule("crab_rt.cli.ok", "cli/ok.py", "from crab_rt.train.trainer import Trainer\n"),
        SourceModule("crab_bench.ok", "benchmarks/crab_bench/ok.py", "from crab_rt.export import bundle_writer\n"),
    ]
    assert wing_violations(allowed) == []


def test_relative_and_lazy_imports_are_resolved():
    module = SourceModule("crab_rt.backends.x", "crab_rt/backends/x.py",
                          "from . import base\nfrom ..bundle import Bundle\ndef f():\n    import torch\n")
    found = {(i.target, i.module_level) for i in imports_of(module)}
    assert ("crab_rt.backends.base", True) in found
    assert ("crab_rt.bundle.Bundle", True) in found
    assert ("torch", False) in found


def test_onnxruntime_path_imports_no_torch(modules):
    reached = module_level_closure(modules, ONNXRUNTIME_PATH)
    heavy = {name: " -> ".join(chain) for name, chain in reached.items() if name in HEAVY}
    assert heavy == {}
    assert "numpy" in reached  # the walk does follow third-party imports


def test_planted_torch_import_on_the_onnxruntime_path_is_caught(modules):
    planted = [m if m.name != "crab_rt.features" else SourceModule(m.name, m.path, "import torch\n" + m.source)
               for m in modules]
    reached = module_level_closure(planted, ONNXRUNTIME_PATH)
    assert "torch" in reached
    assert reached["torch"][-2:] == ["crab_rt.features", "torch"]
