"""Write (or check) docs/openapi.json and docs/asyncapi.json, generated from the contract's models.

python -m contract.docs            write both files
python -m contract.docs --check    exit 1, naming the file, when a committed one is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from contract.asyncapi import asyncapi_document
from contract.openapi import openapi_document

__all__ = ["documents", "main", "render"]

DOCS = Path(__file__).resolve().parent.parent / "docs"


def render(document: dict[str, Any]) -> str:
    """The document as committed: sorted keys, two-space indent, UTF-8 text, a final newline."""
    return json.dumps(document, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def documents(docs: Path = DOCS) -> dict[Path, str]:
    """Each generated document's path under `docs` and its text, for the installed hallhub version."""
    current = version("hallhub")
    return {
        docs / "openapi.json": render(openapi_document(current)),
        docs / "asyncapi.json": render(asyncapi_document(current)),
    }


def main(argv: list[str] | None = None) -> int:
    """Write the documents, or with --check report those that differ from the generated ones."""
    parser = argparse.ArgumentParser(prog="python -m contract.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the docs folder (default: this checkout's)")
    args = parser.parse_args(argv)
    stale = []
    for path, text in documents(args.docs).items():
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} is out of date: run python -m contract.docs", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
