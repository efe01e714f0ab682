"""`lab qemu build` on Debian's real source: the cache key, and each way a build fails.

A failing step is one line on stderr naming the step and its log, exit status 2, and nothing is
left in the build cache. The failures are real: an unserved version asked of Debian's archive, a
patch that does not apply to the unpacked source, a configure that stops.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import cli
from lab.qemu import recipe
from lab.qemu.builds import builds_root

pytestmark = pytest.mark.guest


def _series(directory: Path, patches: dict[str, str]) -> Path:
    directory.mkdir()
    for name, text in patches.items():
        (directory / name).write_text(text)
    (directory / "series").write_text("".join(f"{name}\n" for name in patches))
    return directory


def _cache_entries() -> set[str]:
    return {p.name for p in builds_root().iterdir()} if builds_root().is_dir() else set()


def _fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    before = _cache_entries()
    assert cli.main(["qemu", "build", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert _cache_entries() == before, "a failed build left something in the cache"
    return err


def test_the_key_follows_the_source_the_series_and_the_target(tmp_path: Path) -> None:
    series = recipe.Series.read()
    assert [p.name for p in series.patches] == (recipe.PATCHES_DIR / "series").read_text().split()
    changed = _series(tmp_path / "changed", {p.name: p.read_text() + "\n" for p in series.patches})
    keys = {recipe.build_key(recipe.SOURCE_VERSION, series, recipe.NATIVE),
            recipe.build_key(recipe.SOURCE_VERSION, recipe.Series.read(changed), recipe.NATIVE),
            recipe.build_key(recipe.SOURCE_VERSION, series, recipe.ARM64_CROSS),
            recipe.build_key("1:10.2.1+ds-1", series, recipe.NATIVE)}
    assert len(keys) == 4


def test_a_version_debian_does_not_serve(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, "--source-version", "1:0.0.1+ds-1")
    assert err.startswith("lab: error: lab qemu build: fetch failed (Debian serves no qemu source 1:0.0.1+ds-1")
    assert "fetch.log" in err and Path(err.rsplit("log: ", 1)[1]).is_file()


def test_a_patch_that_does_not_apply(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    stale = ("--- a/VERSION\n+++ b/VERSION\n@@ -1 +1 @@\n-9.9.9\n+9.9.10\n")
    monkeypatch.setattr(recipe, "PATCHES_DIR", _series(tmp_path / "patches", {"0001-stale.patch": stale}))
    err = _fails(capsys)
    assert "patch failed (0001-stale.patch does not apply)" in err
    assert Path(err.rsplit("log: ", 1)[1]).name == "patch.log"


def test_a_configure_that_stops(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    broken = ("--- a/configure\n+++ b/configure\n@@ -1,2 +1,3 @@\n #!/bin/sh\n+echo 'lab test: stop here' >&2; exit 3\n"
              " #\n")
    monkeypatch.setattr(recipe, "PATCHES_DIR", _series(tmp_path / "patches", {"0001-stop.patch": broken}))
    err = _fails(capsys)
    assert "configure failed (" in err and "exited 3" in err and "lab test: stop here" in err
