"""QEMU's source in the lab's cache: fetched once however many builders ask for it at the same moment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lab.qemu.sources import SourceStore, known_sources

CHOOSE = ("import sys; from pathlib import Path; from lab.qemu.sources import SourceStore, known_sources; "
          "print(SourceStore(Path(sys.argv[1])).choose(None, known_sources()).version)")


@pytest.mark.network
def test_builders_that_fetch_the_same_source_at_once_all_get_it(tmp_path: Path) -> None:
    """The native and the arm64 build start together on a fresh machine: each finds the one fetch."""
    store = tmp_path / "source"
    racers = [subprocess.Popen([sys.executable, "-c", CHOOSE, str(store)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(3)]
    answers = [racer.communicate(timeout=600) for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 3, [err[-500:] for _, err in answers]
    chosen = {out.strip() for out, _ in answers}
    assert len(chosen) == 1
    source = next(s for s in known_sources() if s.version in chosen)
    assert SourceStore(store).verify(source)[0].is_file()
    assert sorted(p.name for p in store.iterdir() if not p.name.endswith(".lock")) == [source.directory_name]
