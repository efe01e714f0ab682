"""Which Debian source of QEMU a build starts from, fetched and checked: one that the archive still serves.

Debian's archive serves a source version only for a while (sid moves on, and a version can stay listed
in Sources after its files are gone), so the lab does not depend on one. `qemu/sources.yaml` lists the
versions the series is known to apply to, newest first, with the sha256 of each file and the upstream
changes (`qemu/backports/`) each one needs before the series. A build takes the newest one that the
archive serves; `--source-version` names any version it serves, known or not. Nothing is fetched for a
version whose files are already in the cache.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from debian.deb822 import Dsc
from debian.debian_support import Version

from lab.digest import sha256_file
from lab.errors import SetupError, UsageError
from lab.image.debian import KEYRING, MIRROR, PrivateApt
from lab.locks import held_lock
from lab.paths import QEMU_DIR, qemu_cache

SOURCE_PACKAGE = "qemu"
SOURCES_FILE = QEMU_DIR / "sources.yaml"
BACKPORTS_DIR = QEMU_DIR / "backports"
SOURCE_SUITES = ("sid", "trixie")
"""Where Debian serves QEMU's source: unstable moves fastest, the stable release keeps one for years."""


@dataclass(frozen=True)
class KnownSource:
    """A source version the series applies to: its files' sha256 and the backports it needs first."""

    version: str
    suite: str
    files: dict[str, str]
    backports: tuple[Path, ...]
    replacements: dict[str, Path]
    """Series patches that cannot apply to this source, each with the variant from backports/ applied instead."""

    @classmethod
    def unknown(cls, version: str) -> KnownSource:
        """A version the user named that the list does not know: checked against its .dsc only, no backports."""
        return cls(version, "", {}, (), {})

    def patches(self, series: tuple[Path, ...]) -> tuple[Path, ...]:
        """What a build applies, in order: the backports, then the series with its replacements."""
        return (*self.backports, *(self.replacements.get(patch.name, patch) for patch in series))

    @property
    def directory_name(self) -> str:
        return self.version.replace(":", "_")


def _entry(entry: Any, where: Path) -> KnownSource:
    if not (isinstance(entry, dict) and isinstance(entry.get("version"), str) and isinstance(entry.get("files"), dict)):
        raise SetupError(f"{where}: every entry needs a version and its files' sha256")
    backports = tuple(BACKPORTS_DIR / str(name) for name in entry.get("backports") or [])
    replacements = {str(name): BACKPORTS_DIR / str(variant) for name, variant in (entry.get("replaces") or {}).items()}
    for patch in (*backports, *replacements.values()):
        if not patch.is_file():
            raise SetupError(f"{where}: {entry['version']} names backport {patch.name}, "
                             f"which is not in {BACKPORTS_DIR}")
    files = {str(name): str(sha256) for name, sha256 in entry["files"].items()}
    return KnownSource(entry["version"], str(entry.get("suite", "")), files, backports, replacements)


def known_sources(path: Path | None = None) -> list[KnownSource]:
    """The list (qemu/sources.yaml unless `path`), newest version first by Debian's ordering."""
    path = path or SOURCES_FILE
    try:
        entries = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SetupError(f"cannot read the list of known QEMU sources {path}: {error}") from error
    if not isinstance(entries, list) or not entries:
        raise SetupError(f"{path}: expected a list of source versions")
    return sorted((_entry(entry, path) for entry in entries), key=lambda s: Version(s.version), reverse=True)


def source_apt() -> PrivateApt:
    sources = tuple(f"deb-src [signed-by={KEYRING}] {MIRROR} {suite} main" for suite in SOURCE_SUITES)
    return PrivateApt(qemu_cache() / "apt-src", "unstable", "amd64", sources=sources, trust_expired=True)


def listed_versions(apt: PrivateApt) -> list[str]:
    """Every version of QEMU's source the lab's suites list, newest first (listed is not yet served)."""
    return sorted(apt.source_versions(SOURCE_PACKAGE), key=Version, reverse=True)


class SourceStore:
    """Source packages under the lab's cache, one directory per version, each file checked by sha256."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or qemu_cache() / "source"
        self._apt: PrivateApt | None = None

    @property
    def apt(self) -> PrivateApt:
        if self._apt is None:
            self._apt = source_apt()
        return self._apt

    def cached_dsc(self, source: KnownSource) -> Path | None:
        found = sorted((self.root / source.directory_name).glob("*.dsc"))
        return found[0] if found else None

    def choose(self, requested: str | None, known: list[KnownSource]) -> KnownSource:
        """The named version, else the newest known one that is cached or that the archive serves."""
        if requested is not None:
            chosen = next((s for s in known if s.version == requested), None) or KnownSource.unknown(requested)
            if self.cached_dsc(chosen) is None:
                self._download(chosen, known)
            return chosen
        for source in known:
            if self.cached_dsc(source) is not None:
                return source
        listed = listed_versions(self.apt)
        for source in known:
            if source.version in listed and self._try_download(source):
                return source
        served = self._served_hint()
        raise SetupError(f"Debian serves none of the QEMU sources the series is known to apply to "
                         f"({', '.join(s.version for s in known)}); listed now: {served}; try one with "
                         f"`lab qemu build --source-version VERSION`")

    def _served_hint(self) -> str:
        try:
            return ", ".join(listed_versions(self.apt)) or "none"
        except SetupError as error:
            return f"unknown ({error})"

    def _try_download(self, source: KnownSource) -> bool:
        try:
            self._download(source, [])
        except UsageError:
            return False
        return True

    def _download(self, source: KnownSource, known: list[KnownSource]) -> None:
        """Fetch the version's files into the cache; a version the archive does not serve is a usage error.

        Builders of two targets start from the same source: the first fetches it, the second waits and finds it."""
        directory = self.root / source.directory_name
        staging = directory.with_name(f".{directory.name}.{os.getpid()}")
        with held_lock(directory.with_name(f".{directory.name}.lock")):
            if self.cached_dsc(source) is not None:
                return
            shutil.rmtree(staging, ignore_errors=True)
            try:
                self.apt.update()
                self.apt.download_source(SOURCE_PACKAGE, source.version, staging)
            except SetupError as error:
                shutil.rmtree(staging, ignore_errors=True)
                hint = f"; known to take the series: {', '.join(s.version for s in known)}" if known else ""
                raise UsageError(f"Debian does not serve QEMU source {source.version} "
                                 f"({str(error).rsplit(': ', 1)[-1]}); "
                                 f"listed now: {self._served_hint()}{hint}") from error
            shutil.rmtree(directory, ignore_errors=True)  # a fetch that a verify found wrong, or one cut short
            staging.replace(directory)

    def verify(self, source: KnownSource) -> tuple[Path, list[str]]:
        """The .dsc, once every file it lists matches its sha256 there and in the known list; the lines that say
        so. A mismatch removes the download (the next build fetches it again) and raises."""
        dsc = self.cached_dsc(source)
        if dsc is None:
            raise SetupError(f"QEMU source {source.version} is not in the cache")
        directory = dsc.parent
        with dsc.open() as stream:
            listed = {entry["name"]: entry["sha256"] for entry in Dsc(stream).get("Checksums-Sha256", [])}
        wanted = {**listed, **source.files}
        lines, wrong = [], []
        for name, sha256 in sorted(wanted.items()):
            path = directory / name
            actual = sha256_file(path) if path.is_file() else "missing"
            agrees = actual == sha256 and listed.get(name, sha256) == sha256
            lines.append(f"{sha256}  {actual}  {name}")
            if not agrees:
                wrong.append(name)
        if wrong:
            shutil.rmtree(directory, ignore_errors=True)
            raise SetupError(f"{', '.join(wrong)}: not the file{'s' if len(wrong) > 1 else ''} that "
                             f"{'sources.yaml and ' if source.files else ''}{dsc.name} list")
        return dsc, lines
