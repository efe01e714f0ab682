"""A warm image build reads the recorded resolution and finds its image without running apt at all."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from lab.errors import UsageError
from lab.image.debian import Candidate, PackageVersion
from lab.image.recipe import ImageRecipe
from lab.image.store import ImageStore, _cache_key, resolution_max_age

ARCH = "arm64"


def package(name: str, version: str = "1") -> PackageVersion:
    return PackageVersion(name, ARCH, version, f"sha-{name}-{version}", f"{name}_{version}_{ARCH}.deb")


class FakeApt:
    """Answers `show` from a table of candidates and counts what the store asked of apt."""

    def __init__(self, root: Path) -> None:
        self.stamp = root / "lists-stamp"
        self.calls: list[str] = []
        self.versions = {"linux-image-cloud-arm64": "1", "linux-image-7.0-cloud-arm64": "1",
                         "busybox-static": "1", "dropbear-bin": "1", "libc6": "1"}

    def depends(self, name: str) -> list[tuple[str, str | None]]:
        return {"linux-image-cloud-arm64": [("linux-image-7.0-cloud-arm64", None)],
                "dropbear-bin": [("libc6", None)]}.get(name, [])

    def lists_updated(self) -> int | None:
        return self.stamp.stat().st_mtime_ns if self.stamp.exists() else None

    def update(self, force: bool = False) -> bool:
        self.calls.append(f"update force={force}")
        if self.stamp.exists() and not force:
            return False
        self.stamp.touch()
        os.utime(self.stamp, ns=(0, self.stamp.stat().st_mtime_ns + 1))
        return True

    def show(self, wanted: list[tuple[str, str | None]], arch: str) -> list[Candidate]:
        self.calls.append("show " + " ".join(name for name, _ in wanted))
        return [Candidate(package(name, self.versions[name]), self.depends(name)) for name, _ in wanted]


class FakeStore(ImageStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.apt = FakeApt(root)

    def apt_for(self, recipe: ImageRecipe) -> FakeApt:  # type: ignore[override]
        return self.apt

    def prebuilt(self, recipe: ImageRecipe, packages: list[PackageVersion]) -> Path:
        """An image directory as a build leaves it, under the key these packages give."""
        target = self.images / f"{recipe.name}-{_cache_key(recipe, packages)}"
        target.mkdir(parents=True)
        (target / "manifest.json").write_text(json.dumps({"name": recipe.name, "arch": ARCH}))
        return target


RESOLVED = [package("linux-image-7.0-cloud-arm64"), package("busybox-static"), package("dropbear-bin"),
            package("libc6")]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeStore:
    monkeypatch.delenv("LAB_RESOLUTION_MAX_AGE", raising=False)
    store = FakeStore(tmp_path)
    store.prebuilt(ImageRecipe.named("debian-arm64"), RESOLVED)
    return store


def build(store: FakeStore, refresh: bool = False) -> bool:
    store.apt.calls.clear()
    _, built = store.build(ImageRecipe.named("debian-arm64"), refresh=refresh, log=lambda line: None)
    return built


def test_the_first_build_resolves_through_apt_and_records_the_resolution(store: FakeStore) -> None:
    assert build(store) is False
    assert "show linux-image-cloud-arm64" in store.apt.calls
    (record,) = store.resolutions.glob("debian-arm64-*.json")
    data = json.loads(record.read_text())
    assert [p["name"] for p in data["packages"]] == [p.name for p in RESOLVED]
    assert data["key"] == _cache_key(ImageRecipe.named("debian-arm64"), RESOLVED)
    assert data["lists"] == store.apt.lists_updated() and data["resolved"]


def test_a_warm_build_runs_no_apt_at_all(store: FakeStore) -> None:
    build(store)
    assert build(store) is False
    assert store.apt.calls == []


def test_refresh_fetches_the_lists_and_resolves_again(store: FakeStore) -> None:
    build(store)
    build(store, refresh=True)
    assert store.apt.calls[0] == "update force=True" and "show linux-image-cloud-arm64" in store.apt.calls


def test_a_resolution_older_than_the_maximum_age_is_made_again_from_the_same_lists(
        store: FakeStore, monkeypatch: pytest.MonkeyPatch) -> None:
    build(store)
    monkeypatch.setenv("LAB_RESOLUTION_MAX_AGE", "0")
    build(store)
    assert store.apt.calls[0] == "update force=False" and "show linux-image-cloud-arm64" in store.apt.calls


def test_new_package_lists_make_the_recorded_resolution_stale(store: FakeStore) -> None:
    build(store)
    store.apt.update(force=True)
    store.apt.versions["busybox-static"] = "2"
    store.apt.calls.clear()
    _, _, packages = store._inputs(ImageRecipe.named("debian-arm64"), False, ())
    assert package("busybox-static", "2") in packages


def test_a_pinned_kernel_has_its_own_resolution(store: FakeStore) -> None:
    build(store)
    pinned = ImageRecipe.named("debian-arm64").pinned("linux-image-cloud-arm64=1")
    store.prebuilt(pinned, RESOLVED)
    store.apt.calls.clear()
    store.build(pinned, log=lambda line: None)
    assert "show linux-image-cloud-arm64" in store.apt.calls
    assert len(list(store.resolutions.glob("debian-arm64-*.json"))) == 2


def test_a_changed_recipe_is_resolved_again(store: FakeStore) -> None:
    build(store)
    recipe = dataclasses.replace(ImageRecipe.named("debian-arm64"), extra_packages=())
    store.apt.calls.clear()
    store._inputs(recipe, False, ())
    assert "show busybox-static" in store.apt.calls


@pytest.mark.parametrize(("given", "seconds"), [("", 7 * 24 * 3600), ("3600", 3600), ("90m", 5400),
                                                ("12h", 43200), ("2d", 172800), ("0", 0)])
def test_the_maximum_age(monkeypatch: pytest.MonkeyPatch, given: str, seconds: float) -> None:
    monkeypatch.setenv("LAB_RESOLUTION_MAX_AGE", given)
    assert resolution_max_age() == seconds


def test_a_maximum_age_that_is_no_duration_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAB_RESOLUTION_MAX_AGE", "a week")
    with pytest.raises(UsageError, match="LAB_RESOLUTION_MAX_AGE"):
        resolution_max_age()
