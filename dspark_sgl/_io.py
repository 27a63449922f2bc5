"""Small file-format helpers shared by the command-line tools."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["iter_jsonl"]


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """(line number, record) for every non-blank line of a JSON-lines file.

    Lines split on newlines only (file iteration; not ``str.splitlines``, which also splits
    on U+2028 and friends inside strings). A line that is not JSON raises ValueError
    ``"{path}:{number}: not JSON (...)"``.
    """
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from exc
