"""`lab qemu build` on Debian's real source: the cache key, and each way a build fails.

A failing step is one line on stderr naming the step and its log, exit status 2, and nothing is
left in the build cache. The failures are real: an unserved version asked of Debian's archive, a list of
known sources none of which Debian serves, a patch that does not apply to the unpacked source, a
configure that stops.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from debian.debian_support import Version

from lab import cli
from lab.qemu import recipe, sources
from lab.qemu.builds import builds_root


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


def test_the_key_follows_the_source_the_backports_the_series_and_the_target(tmp_path: Path) -> None:
    series = recipe.Series.read()
    assert [p.name for p in series.patches] == (recipe.PATCHES_DIR / "series").read_text().split()
    changed = _series(tmp_path / "changed", {p.name: p.read_text() + "\n" for p in series.patches})
    newest = sources.known_sources()[0]
    keys = {recipe.build_key(newest.version, series, recipe.NATIVE, newest.backports),
            recipe.build_key(newest.version, recipe.Series.read(changed), recipe.NATIVE, newest.backports),
            recipe.build_key(newest.version, series, recipe.NATIVE),
            recipe.build_key(newest.version, series, recipe.ARM64_CROSS, newest.backports),
            recipe.build_key("1:10.2.1+ds-1", series, recipe.NATIVE, newest.backports)}
    assert len(keys) == 5


def test_the_known_sources_are_newest_first_and_name_their_files() -> None:
    known = sources.known_sources()
    assert [s.version for s in known] == sorted((s.version for s in known), key=Version, reverse=True)
    series = recipe.Series.read().patches
    for source in known:
        assert any(name.endswith(".dsc") for name in source.files), source.version
        assert all(len(sha256) == 64 for sha256 in source.files.values()), source.version
        assert set(source.replacements) <= {patch.name for patch in series}, source.version
        assert len(source.patches(series)) == len(source.backports) + len(series)


@pytest.mark.network
def test_a_version_debian_does_not_serve(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(capsys, "--source-version", "1:0.0.1+ds-1")
    assert err.startswith("lab: error: lab qemu build: fetch failed (Debian does not serve QEMU source 1:0.0.1+ds-1")
    assert "listed now: " in err and "known to take the series: " in err
    assert "fetch.log" in err and Path(err.rsplit("log: ", 1)[1]).is_file()


@pytest.mark.network
def test_none_of_the_known_sources_served(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The day the archive drops every version the list knows: one line with what it serves instead."""
    gone = tmp_path / "sources.yaml"
    gone.write_text('- version: "1:0.0.2+ds-1"\n  files: {qemu_0.0.2+ds-1.dsc: ' + "0" * 64 + "}\n")
    monkeypatch.setattr(sources, "SOURCES_FILE", gone)
    err = _fails(capsys)
    assert err.startswith("lab: error: Debian serves none of the QEMU sources the series is known to apply to "
                          "(1:0.0.2+ds-1); listed now: "), err
    assert err.endswith("try one with `lab qemu build --source-version VERSION`")


@pytest.mark.network
def test_a_patch_that_does_not_apply(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    stale = ("--- a/VERSION\n+++ b/VERSION\n@@ -1 +1 @@\n-9.9.9\n+9.9.10\n")
    monkeypatch.setattr(recipe, "PATCHES_DIR", _series(tmp_path / "patches", {"0001-stale.patch": stale}))
    err = _fails(capsys)
    assert f"patch failed (0001-stale.patch does not apply to qemu {sources.known_sources()[0].version})" in err
    assert Path(err.rsplit("log: ", 1)[1]).name == "patch.log"


@pytest.mark.network
def test_a_configure_that_stops(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    broken = ("--- a/configure\n+++ b/configure\n@@ -1,2 +1,3 @@\n #!/bin/sh\n+echo 'lab test: stop here' >&2; exit 3\n"
              " #\n")
    monkeypatch.setattr(recipe, "PATCHES_DIR", _series(tmp_path / "patches", {"0001-stop.patch": broken}))
    err = _fails(capsys)
    assert "configure failed (" in err and "exited 3" in err and "lab test: stop here" in err
