"""`lab qemu build`: Debian's QEMU source with the lab's SYSTEM_OFF2 series, one `qemu-system-aarch64`.

No upstream QEMU reports SYSTEM_OFF2, so the lab builds the one its users run: Debian's `qemu`
source package, fetched through the lab's private apt configuration (deb-src, sid) and checked
against the sha256 sums its `.dsc` lists, unpacked with Debian's own patches (three of them are what
lets the `+ds` tarball, stripped of firmware, dtbs and Python wheels, build at all), then the series
in `qemu/patches/`. Only what the lab needs is configured: aarch64-softmmu, TCG, user networking,
the system libfdt, and KVM for an arm64 host. Debian 12's meson is too old for QEMU 10.2, so meson and
ninja come from PyPI in a private venv.

Two targets: `native` runs here (TCG), `arm64` is cross-built for an arm64 KVM host, against
bookworm's arm64 libraries unpacked into a sysroot (no foreign dpkg architecture is added), and
ships with the shared libraries it loads. A build is cached under the lab's cache, keyed by the
source version, a hash of the series and the target; a second call does nothing. Each step logs
to its own file; a failed step is named with its log, and nothing half-built is left in the cache.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from lab.digest import sha256_file
from lab.errors import LabError, SetupError
from lab.image.closure import program_closure
from lab.image.debian import PrivateApt, binary_sources, extract
from lab.lines import last_file_lines
from lab.locks import held_lock
from lab.paths import qemu_cache
from lab.qemu.builds import builds_root, tree_in_place
from lab.qemu.recipe import (
    PATCHES_DIR,
    STEP_TIMEOUT,
    SYSROOT_PACKAGES,
    SYSROOT_SUITE,
    TARGETS,
    TOOLS,
    BuildTarget,
    Series,
    build_key,
)
from lab.qemu.sources import BACKPORTS_DIR, SOURCE_PACKAGE, KnownSource, SourceStore, known_sources
from lab.vocabulary import ARM64, host_arch


class BuildStepFailed(SetupError):
    """One step of a build failed: says which, and where its log is."""

    def __init__(self, step: str, log: Path, detail: str) -> None:
        self.step = step
        self.log = log
        super().__init__(f"lab qemu build: {step} failed ({detail}); log: {log}")


def _tail(path: Path) -> str:
    return " | ".join(last_file_lines(path)) or "no output"

class QemuBuilder:
    """One build of the series for one target; `run()` returns the installed binary."""

    def __init__(self, target: BuildTarget, version: str | None = None, jobs: int | None = None,
                 say: Callable[[str], None] = print, progress: Callable[[int, int], None] | None = None,
                 sources: SourceStore | None = None) -> None:
        self.target = target
        self.jobs = jobs or os.cpu_count() or 1
        self.say = say
        self.progress = progress
        self.series = Series.read()
        self.sources = sources or SourceStore()
        self.known = known_sources()
        self.source = self._pick(version)
        self.root = qemu_cache()
        self.key = self._key(self.source)
        self.output = builds_root() / self.key
        self.logs = self.root / "logs" / self.key
        self.seconds: dict[str, float] = {}

    def _key(self, source: KnownSource) -> str:
        return build_key(source.version, self.series, self.target, (*source.backports, *source.replacements.values()))

    def _pick(self, version: str | None) -> KnownSource:
        """The named version; else the newest known one already built, or already fetched, or that Debian
        serves (only this last case asks the archive)."""
        if version is not None:
            return next((s for s in self.known if s.version == version), None) or KnownSource.unknown(version)
        for source in self.known:
            if (builds_root() / self._key(source) / "build.json").is_file():
                return source
        return self.sources.choose(None, self.known)

    @property
    def binary(self) -> Path:
        return self.output / "bin" / "qemu-system-aarch64"

    @property
    def done(self) -> bool:
        return ((self.output / "build.json").is_file() and self.binary.is_file()
                and (not self.target.keeps_tree or tree_in_place(self.output)))

    def run(self) -> Path:
        """Build in place (QEMU's test runners need the source and build trees where configure saw them);
        build.json, written last, is what makes a build finished. Anything else there is removed first."""
        if self.done:
            return self.binary
        with self._lock():
            if self.done:
                return self.binary
            self._check_prerequisites()
            self.logs.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.output, ignore_errors=True)
            self.output.mkdir(parents=True)
            try:
                self._build(self.output)
            except BaseException:
                shutil.rmtree(self.output, ignore_errors=True)
                raise
        return self.binary

    def _lock(self) -> AbstractContextManager[None]:
        """Two builders (two `lab` commands, test workers) take turns; the second finds the first's build."""
        return held_lock(self.root / "build.lock")

    def _check_prerequisites(self) -> None:
        """Install what the build needs and the host lacks, saying so; never skip it silently."""
        missing = [p for p in self.target.prerequisites if not p.present()]
        if not missing:
            return
        packages = sorted({p.package for p in missing})
        command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        wanted = ", ".join(p.what for p in missing)
        if os.geteuid() != 0:
            raise SetupError(f"lab qemu build needs {wanted}: run `sudo {' '.join(command)}`")
        self.say(f"installing build prerequisites ({wanted}): {' '.join(packages)}")
        log = self.root / "logs" / "prerequisites.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        self._run("prerequisites", command, log, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        still = [p.what for p in missing if not p.present()]
        if still:
            raise BuildStepFailed("prerequisites", log, f"still missing after install: {', '.join(still)}")

    def _run(self, step: str, command: list[str], log: Path, cwd: Path | None = None,
             env: dict[str, str] | None = None) -> None:
        with log.open("a") as stream:
            stream.write(f"$ {' '.join(command)}\n")
            stream.flush()
            try:
                done = subprocess.run(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=stream,
                                      stderr=subprocess.STDOUT, timeout=STEP_TIMEOUT)
            except subprocess.TimeoutExpired as error:
                raise BuildStepFailed(step, log, f"took longer than {STEP_TIMEOUT:.0f}s") from error
            except OSError as error:
                raise BuildStepFailed(step, log, f"cannot run {command[0]}: {error.strerror}") from error
        if done.returncode != 0:
            raise BuildStepFailed(step, log, f"{command[0]} exited {done.returncode}: {_tail(log)}")

    @contextmanager
    def _step(self, name: str, what: str) -> Iterator[Path]:
        self.say(f"{name}: {what}")
        started = time.monotonic()
        log = self.logs / f"{name}.log"
        log.unlink(missing_ok=True)
        yield log
        self.seconds[name] = round(time.monotonic() - started, 1)

    def _build(self, output: Path) -> None:
        dsc = self._fetch()
        source = output / "src"
        with self._step("unpack", f"{dsc.name} with Debian's patches") as log:
            self._run("unpack", ["dpkg-source", "--no-check", "-x", str(dsc), str(source)], log)
        patches = self.source.patches(self.series.patches)
        with self._step("patch", f"{len(self.source.backports)} backports from {BACKPORTS_DIR}, then "
                                 f"{len(self.series.patches)} patches from {PATCHES_DIR} "
                                 f"({len(self.source.replacements)} replaced for this source)") as log:
            for patch in patches:
                try:
                    self._run("patch", ["patch", "-p1", "--forward", "--batch", "-i", str(patch)], log, cwd=source)
                except BuildStepFailed as failure:
                    raise BuildStepFailed("patch", log, f"{patch.name} does not apply to {SOURCE_PACKAGE} "
                                                        f"{self.source.version}") from failure
        tools = self._tools()
        build = output / "build"
        build.mkdir()
        env = self._configure(source, build, tools, output)
        self._compile(build, tools, env)
        self._install(build, output)
        if not self.target.keeps_tree:
            for tree in (source, build, output / "sysroot"):
                shutil.rmtree(tree, ignore_errors=True)

    def _fetch(self) -> Path:
        """The source package's files, downloaded once, each checked by sha256 (the .dsc's and the known list's)."""
        with self._step("fetch", f"{SOURCE_PACKAGE} {self.source.version} from Debian (deb-src)") as log:
            if self.sources.cached_dsc(self.source) is None:
                try:
                    self.sources.choose(self.source.version, self.known)
                except LabError as error:
                    log.write_text(f"{error}\n")
                    raise BuildStepFailed("fetch", log, str(error)) from error
        with self._step("verify", "sha256 of every file the .dsc lists") as log:
            try:
                dsc, lines = self.sources.verify(self.source)
            except SetupError as error:
                log.write_text(f"{error}\n")
                raise BuildStepFailed("verify", log, str(error)) from error
            log.write_text("\n".join(lines) + "\n")
        return dsc

    def _tools(self) -> Path:
        """A venv with meson and ninja from PyPI, made from Debian's Python (QEMU's configure builds
        its own venv from it)."""
        venv = self.root / "tools"
        stamp = venv / ".lab-tools"
        with self._step("tools", f"{', '.join(TOOLS)} in {venv}") as log:
            if not (venv / "bin" / "pip").exists():
                shutil.rmtree(venv, ignore_errors=True)
                self._run("tools", ["/usr/bin/python3", "-m", "venv", str(venv)], log)
            if not stamp.is_file() or stamp.read_text().split() != list(TOOLS):
                self._run("tools", [str(venv / "bin" / "pip"), "install", "-q", *TOOLS], log)
                stamp.write_text("\n".join(TOOLS) + "\n")
        return venv

    def _sysroot(self, staging: Path) -> Path:
        """bookworm's arm64 libraries the cross build links against, unpacked (no foreign dpkg arch)."""
        sysroot = staging / "sysroot"
        with self._step("sysroot", f"arm64 libraries from {SYSROOT_SUITE}") as log:
            apt = PrivateApt(self.root / f"apt-arm64-{SYSROOT_SUITE}", SYSROOT_SUITE, "arm64",
                             sources=binary_sources("arm64", (SYSROOT_SUITE, f"{SYSROOT_SUITE}-updates")))
            try:
                apt.update()
                for candidate in apt.show([(name, None) for name in SYSROOT_PACKAGES], "arm64"):
                    extract(apt.download(candidate.package), sysroot)
            except SetupError as error:
                log.write_text(f"{error}\n")
                raise BuildStepFailed("sysroot", log, str(error)) from error
            for link in sysroot.rglob("*"):
                if link.is_symlink() and os.readlink(link).startswith("/"):
                    target = sysroot / os.readlink(link).lstrip("/")
                    link.unlink()
                    link.symlink_to(os.path.relpath(target, link.parent))
        return sysroot

    def _configure(self, source: Path, build: Path, tools: Path, staging: Path) -> dict[str, str]:
        env = dict(os.environ)
        command = [str(source / "configure"), f"--python={tools / 'bin' / 'python3'}",
                   f"--ninja={tools / 'bin' / 'ninja'}", *self.target.flags]
        if self.target.cross_prefix is not None:
            sysroot = self._sysroot(staging)
            libs = sysroot / "usr" / "lib" / ARM64.multiarch
            wrapper = staging / f"{self.target.cross_prefix}pkg-config"
            wrapper.write_text(
                "#!/bin/sh\n"
                f"PKG_CONFIG_LIBDIR={libs / 'pkgconfig'}:{sysroot / 'usr' / 'share' / 'pkgconfig'} "
                f"PKG_CONFIG_SYSROOT_DIR={sysroot} PKG_CONFIG_PATH= exec pkg-config \"$@\"\n")
            wrapper.chmod(0o755)
            env["PKG_CONFIG"] = str(wrapper)
            command += [f"--cross-prefix={self.target.cross_prefix}",
                        f"--extra-cflags=-I{sysroot / 'usr' / 'include'}",
                        f"--extra-ldflags=-L{libs} -Wl,-rpath-link,{libs} "
                        f"-Wl,-rpath-link,{sysroot / 'lib' / ARM64.multiarch}"]
        with self._step("configure", f"aarch64-softmmu for a{'n' if self.target.host[0] in 'aeiou' else ''} "
                                     f"{self.target.host} host") as log:
            self._run("configure", command, log, cwd=build, env=env)
        return env

    def _compile(self, build: Path, tools: Path, env: dict[str, str]) -> None:
        """ninja, with its `[done/total]` status turned into progress as it goes."""
        with self._step("build", f"qemu-system-aarch64 with {self.jobs} jobs") as log, log.open("a") as stream:
            command = [str(tools / "bin" / "ninja"), "-j", str(self.jobs), "qemu-system-aarch64"]
            stream.write(f"$ {' '.join(command)}\n")
            process = subprocess.Popen(command, cwd=build, env={**env, "NINJA_STATUS": "[%f/%t] "},
                                       stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
            if process.stdout is None:
                raise SetupError("ninja started without its output pipe")
            deadline = time.monotonic() + STEP_TIMEOUT
            try:
                for line in process.stdout:
                    stream.write(line)
                    status = re.match(r"\[(\d+)/(\d+)\] ", line)
                    if status and self.progress is not None:
                        self.progress(int(status.group(1)), int(status.group(2)))
                    if time.monotonic() > deadline:
                        raise BuildStepFailed("build", log, f"took longer than {STEP_TIMEOUT:.0f}s")
                code = process.wait()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if code != 0:
            raise BuildStepFailed("build", log, f"ninja exited {code}: {_tail(log)}")

    def _install(self, build: Path, out: Path) -> None:
        """The stripped binary, its shared libraries when it is for another host, and build.json."""
        with self._step("install", f"into {self.output}") as log:
            (out / "bin").mkdir(parents=True)
            strip = f"{self.target.cross_prefix or ''}strip"
            self._run("install", [strip, "-o", str(self.binary_in(out)), str(build / "qemu-system-aarch64")], log)
            if self.target.cross_prefix is not None:
                self._run("install", ["chrpath", "-d", str(self.binary_in(out))], log)
                self._ship_libraries(out, build.parent / "sysroot")
            (out / "build.json").write_text(json.dumps({
                "source": f"{SOURCE_PACKAGE} {self.source.version}", "source_version": self.source.version,
                "backports": [p.name for p in self.source.backports], "series": [p.name for p in self.series.patches],
                "replaced": {name: str(path.relative_to(BACKPORTS_DIR))
                             for name, path in self.source.replacements.items()},
                "series_sha256": self.series.sha256, "target": self.target.name, "host": self.target.host,
                "configure": list(self.target.flags), "built": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": self.seconds, "binary_sha256": sha256_file(self.binary_in(out)),
                "tree": str(out) if self.target.keeps_tree else None,
            }, indent=2) + "\n")

    @staticmethod
    def binary_in(out: Path) -> Path:
        return out / "bin" / "qemu-system-aarch64"

    def _ship_libraries(self, out: Path, sysroot: Path) -> None:
        """Every shared library the cross-built binary loads, under out/lib, so a host can run it as
        `lib/ld-linux-aarch64.so.1 --library-path lib bin/qemu-system-aarch64`."""
        root = out / "closure"
        shutil.copytree(sysroot, root, symlinks=True)
        for name in ("lib", "usr/lib"):
            (root / name / ARM64.multiarch).mkdir(parents=True, exist_ok=True)
        for library in Path("/usr/aarch64-linux-gnu/lib").iterdir():
            target = root / "lib" / ARM64.multiarch / library.name
            if not target.exists():
                shutil.copy2(library, target, follow_symlinks=True)
        shutil.copy2("/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1", root / "lib" / "ld-linux-aarch64.so.1")
        (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.binary_in(out), root / "usr" / "bin" / "qemu-system-aarch64")
        files = program_closure(root, "usr/bin/qemu-system-aarch64", ARM64.debian)
        (out / "lib").mkdir()
        for guest_path, data in files.items():
            if guest_path != "usr/bin/qemu-system-aarch64":
                (out / "lib" / Path(guest_path).name).write_bytes(data)
        shutil.rmtree(root)


def host_arch_debian() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(host_arch(), host_arch())


def build_qemu(target: str, version: str | None = None, jobs: int | None = None,
               say: Callable[[str], None] = print, progress: Callable[[int, int], None] | None = None) -> Path:
    """Build (or find built) the patched QEMU for `target` (native or arm64); the binary's path."""
    chosen = TARGETS.get(target)
    if chosen is None:
        raise SetupError(f"unknown build target {target!r} (known: {', '.join(TARGETS)})")
    return QemuBuilder(chosen, version, jobs, say, progress).run()
