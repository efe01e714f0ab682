"""What a command or a log said last: its last non-blank lines, the one way the lab quotes them."""

from __future__ import annotations

from pathlib import Path


def last_lines(text: str, count: int = 1) -> list[str]:
    """The last `count` non-blank lines of `text`, stripped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-count:]


def last_file_lines(path: Path, count: int = 1) -> list[str]:
    """The last `count` non-blank lines of the file at `path`; none when it cannot be read."""
    try:
        return last_lines(path.read_text(errors="replace"), count)
    except OSError:
        return []
