"""Debian packages by name, through a private apt configuration.

The host's apt setup is never touched: sources list, state, lists and the package cache
all live under the lab's cache directory, and apt is pointed at them with `-o` options.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lab.errors import SetupError, UsageError

MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")


@dataclass(frozen=True)
class PackageVersion:
    """A resolved binary package: what a manifest records and a cache key is made of."""

    name: str
    arch: str
    version: str
    sha256: str
    filename: str

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.arch}={self.version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


SUITES = ("unstable", "testing", "trixie", "bookworm")
"""Suites the lab can fetch from: a bug report's kernel may come from any of them."""


@dataclass(frozen=True)
class Candidate:
    """A resolved package and its direct `Depends:` as (name, exact version if pinned with `=`)."""

    package: PackageVersion
    depends: list[tuple[str, str | None]]


class PrivateApt:
    """apt-get and apt-cache against the lab's own sources list and state under `root`.

    Candidates come from `default_release` (the recipe's suite) unless a version is pinned.
    """

    def __init__(self, root: Path, default_release: str, architecture: str) -> None:
        self.root = root
        self.default_release = default_release
        self.architecture = architecture
        self.debs = root / "debs"

    def _options(self) -> list[str]:
        etc, state, cache = self.root / "etc", self.root / "state", self.root / "cache"
        options = {
            "Dir::Etc::SourceList": etc / "sources.list",
            "Dir::Etc::SourceParts": etc / "sources.list.d",
            "Dir::Etc::Preferences": etc / "preferences",
            "Dir::Etc::PreferencesParts": etc / "preferences.d",
            "Dir::State": state,
            "Dir::State::status": state / "status",
            "Dir::Cache": cache,
            "Dir::Cache::pkgcache": cache / "pkgcache.bin",
            "Dir::Cache::srcpkgcache": cache / "srcpkgcache.bin",
            "APT::Architecture": self.architecture,
            "APT::Architectures::": self.architecture,
            "APT::Default-Release": self.default_release,
            "Debug::NoLocking": "1",
            "APT::Sandbox::User": "root",
        }
        return [f"-o{key}={value}" for key, value in options.items()]

    def _prepare(self) -> None:
        if not KEYRING.exists():
            raise SetupError(f"Debian archive keyring missing ({KEYRING}): install debian-archive-keyring")
        for sub in ("etc/sources.list.d", "etc/preferences.d", "state/lists/partial",
                    "cache/archives/partial", "debs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "etc/sources.list").write_text("".join(
            f"deb [arch={self.architecture} signed-by={KEYRING}] {MIRROR} {suite} main\n" for suite in SUITES
        ))
        (self.root / "state/status").touch()

    def _run(self, tool: str, *args: str, cwd: Path | None = None, timeout: float = 600) -> str:
        if shutil.which(tool) is None:
            raise SetupError(f"{tool} not found: the lab fetches guest packages with Debian's apt")
        try:
            done = subprocess.run(
                [tool, *self._options(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired as error:
            raise SetupError(f"{tool} {' '.join(args)} took longer than {timeout:.0f}s") from error
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise SetupError(f"{tool} {' '.join(args)} failed: {last}")
        return done.stdout

    def update(self, force: bool = False) -> bool:
        """Fetch the package lists when there are none yet, or when forced; True if it fetched.

        Lists are not refreshed by age: builds stay reproducible and offline until the user asks
        for newer packages (`lab images build --refresh`).
        """
        self._prepare()
        stamp = self.root / "state/lists/.lab-updated"
        if stamp.exists() and not force:
            return False
        self._run("apt-get", "update", "-q")
        stamp.touch()
        return True

    def _field(self, stanza: str, name: str) -> str:
        for line in stanza.splitlines():
            if line.startswith(f"{name}:"):
                return line.split(":", 1)[1].strip()
        raise SetupError(f"apt-cache show gave no {name} field")

    def _stanza(self, name: str, arch: str, version: str | None) -> str:
        spec = f"{name}:{arch}" + (f"={version}" if version else "")
        try:
            return self._run("apt-cache", "show", "--no-all-versions", spec).split("\n\n")[0]
        except SetupError:
            known = self._run("apt-cache", "madison", f"{name}:{arch}").strip()
            versions = ", ".join(line.split("|")[1].strip() for line in known.splitlines()) or "none"
            raise SetupError(f"no {spec} in Debian {'/'.join(SUITES)} (versions there: {versions})") from None

    def show(self, wanted: list[tuple[str, str | None]], arch: str) -> list[Candidate]:
        """Several packages (candidate or pinned version) in one apt-cache call: each call loads
        the whole package cache, so resolving an image level by level stays fast."""
        specs = [f"{name}:{arch}" + (f"={version}" if version else "") for name, version in wanted]
        try:
            output = self._run("apt-cache", "show", "--no-all-versions", *specs)
        except SetupError:
            stanzas = [self._stanza(name, arch, version) for name, version in wanted]
        else:
            stanzas = [stanza for stanza in output.split("\n\n") if stanza.strip()]
        return [self._candidate(stanza, arch) for stanza in stanzas]

    def _candidate(self, stanza: str, arch: str) -> Candidate:
        package = PackageVersion(
            name=self._field(stanza, "Package"),
            arch=arch,
            version=self._field(stanza, "Version"),
            sha256=self._field(stanza, "SHA256"),
            filename=Path(self._field(stanza, "Filename")).name,
        )
        try:
            field = self._field(stanza, "Depends")
        except SetupError:
            return Candidate(package, [])
        depends = []
        for alternative in field.split(","):
            first = alternative.split("|")[0].strip()
            name, _, constraint = first.partition("(")
            pinned = constraint.rstrip(")").strip()
            depends.append((name.strip().split(":")[0], pinned[1:].strip() if pinned.startswith("=") else None))
        return Candidate(package, depends)

    def download(self, package: PackageVersion) -> Path:
        """The package's .deb, fetched once and verified against the archive's sha256."""
        target = self.debs / package.filename
        if target.exists() and sha256_file(target) == package.sha256:
            return target
        with tempfile.TemporaryDirectory(dir=self.debs) as staging:
            self._run("apt-get", "download", "-q", package.spec, cwd=Path(staging))
            fetched = list(Path(staging).glob("*.deb"))
            if len(fetched) != 1:
                raise SetupError(f"apt-get download {package.spec} left {len(fetched)} .deb files")
            fetched[0].rename(target)
        if sha256_file(target) != package.sha256:
            target.unlink()
            raise SetupError(f"{package.filename}: sha256 does not match the archive's")
        return target


def local_package(deb: Path, arch: str) -> PackageVersion:
    """A user's .deb file described like an archive package (name and version from its control file)."""
    if not deb.is_file():
        raise UsageError(f"no such kernel package: {deb}")
    done = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Version", "Architecture"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise UsageError(f"{deb} is not a Debian package: {done.stderr.strip()}")
    fields = dict(line.split(": ", 1) for line in done.stdout.splitlines() if ": " in line)
    if fields.get("Architecture") != arch:
        raise UsageError(f"{deb} is for {fields.get('Architecture')}, the image is {arch}")
    return PackageVersion(fields["Package"], arch, fields["Version"], sha256_file(deb), deb.name)


def extract(deb: Path, into: Path) -> None:
    """The files a .deb installs, unpacked under `into` (as `dpkg-deb -x` does: no maintainer scripts)."""
    done = subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SetupError(f"dpkg-deb -x {deb.name} failed: {done.stderr.strip()}")
