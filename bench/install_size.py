"""Install size: the venv of a core install (`pip install hallhub`) and of a full one (`hallhub[all]`).

Each venv is built fresh in a temporary folder from a wheel of this checkout, with pip's cache (so
the figure is the installed size, not the download), and measured as the bytes of its regular files.
Also listed: the largest installed distributions of each, which is what an extra costs.

Run from the repository root:  .venv/bin/python bench/install_size.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Figure, print_figures, write_result

REPO = Path(__file__).resolve().parent.parent
TARGET_CORE_MB = 100.0
PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable

SIZES = """
import json, importlib.metadata as m, pathlib
sizes = {}
for dist in m.distributions():
    total = 0
    for file in dist.files or []:
        path = pathlib.Path(dist.locate_file(file))
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    sizes[dist.metadata["Name"]] = total
print(json.dumps(sizes))
"""


def tree_mb(path: Path) -> float:
    """Bytes of the regular files under `path`, in MB (2**20)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


def build_wheel(folder: Path) -> Path:
    """A wheel of this checkout (built from a copy, so the checkout gets no build/ folder)."""
    source = folder / "src"
    for part in ("contract", "hub", "drivers", "sync"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--wheel-dir",
            str(folder / "wheel"),
            str(source),
        ],
        check=True,
    )
    return next((folder / "wheel").glob("hallhub-*.whl"))


def install(folder: Path, name: str, requirement: str) -> dict[str, Any]:
    """A fresh venv with `requirement`: its size, the time pip took, and its largest distributions."""
    venv = folder / name
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    started = time.monotonic()
    subprocess.run([str(venv / "bin/python"), "-m", "pip", "install", "-q", requirement], check=True)
    seconds = time.monotonic() - started
    sizes = json.loads(
        subprocess.run(
            [str(venv / "bin/python"), "-c", SIZES], check=True, capture_output=True, text=True
        ).stdout
    )
    largest = dict(sorted(sizes.items(), key=lambda item: -item[1])[:8])
    return {
        "venv_mb": round(tree_mb(venv), 1),
        "pip_install_s": round(seconds, 1),
        "largest_mb": {k: round(v / 2**20, 1) for k, v in largest.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hallhub-install-size-") as tmp:
        folder = Path(tmp)
        wheel = build_wheel(folder)
        core = install(folder, "core", str(wheel))
        full = install(folder, "all", f"{wheel}[all]")
    figures = {
        "core_venv_mb": Figure(
            float(core["venv_mb"]), "MB", "lower", "core venv (pip install hallhub)", TARGET_CORE_MB
        ),
        "all_venv_mb": Figure(float(full["venv_mb"]), "MB", "lower", "full venv (hallhub[all])"),
    }
    print_figures("Install size", figures)
    for name, details in (("core", core), ("all", full)):
        print(f"\n{name}: largest distributions (MB): {details['largest_mb']}")
    path = write_result(
        "install_size", ".venv/bin/python bench/install_size.py", figures, {"core": core, "all": full}
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
