"""The C++ client's build description (clients/cpp, CMakeLists.txt), without building it.

The C++ client is built and tested by CMake and ctest (`make cpp-test cpp-asan-test`, which `make test` runs after
pytest); these checks keep its build files consistent with the Python package and with each other.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _apt_packages(text: str, marker: str) -> list[str]:
    line = next(line for line in text.splitlines() if marker in line)
    return line.split(marker, 1)[1].strip().strip('")').split()


def test_the_apt_line_is_the_same_in_the_makefile_and_cmake():
    makefile = (ROOT / "Makefile").read_text()
    want = re.search(r"^CPP_APT\s*:=\s*(.+)$", makefile, re.M).group(1).split()
    cmake = (ROOT / "clients" / "cpp" / "CMakeLists.txt").read_text()
    assert _apt_packages(cmake, "apt-get install") == want
    top = (ROOT / "CMakeLists.txt").read_text()
    header = " ".join(line.lstrip("# ") for line in top.splitlines() if line.startswith("#"))
    assert "apt-get install " + " ".join(want) in header


def test_cmake_takes_the_version_of_the_python_package():
    import crab_rt

    top = (ROOT / "CMakeLists.txt").read_text()
    assert 'file(STRINGS "${CMAKE_CURRENT_SOURCE_DIR}/crab_rt/__init__.py"' in top
    assert re.fullmatch(r"\d+\.\d+\.\d+", crab_rt.__version__), "CMakeLists.txt reads a plain X.Y.Z version"


def test_no_download_at_configure_time():
    for path in [ROOT / "CMakeLists.txt", *sorted((ROOT / "clients" / "cpp").rglob("CMakeLists.txt")),
                 *sorted((ROOT / "clients" / "cpp").rglob("*.cmake.in"))]:
        text = path.read_text()
        for forbidden in ("FetchContent", "ExternalProject", "file(DOWNLOAD"):
            assert forbidden not in text, f"{path.relative_to(ROOT)} uses {forbidden}"
