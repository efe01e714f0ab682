"""The hosts the lab started and how to reach them: `<cache>/hosts/hosts.json`.

An entry is written when a host is ready and removed when it stops, so a runner given `--host URL`
pins the host key the image was built with instead of trusting whatever answers on that port.
A host whose lab process died without cleaning up (SIGKILL) leaves a stale entry; it is dropped
when another host is recorded, and `lab host list` shows it as stale until then.
Writers take a lock and replace the file whole, so readers never see half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab.errors import SetupError
from lab.locks import held_lock
from lab.paths import cache_root

HOSTS_FORMAT = 1


def hosts_dir() -> Path:
    return cache_root() / "hosts"


def hosts_file() -> Path:
    return hosts_dir() / "hosts.json"


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class KnownHost:
    """One running host as the hosts file records it."""

    url: str
    user: str
    host_key: str
    """The server's public key, an OpenSSH line: the only key a client may accept from `url`."""
    client_key: str
    """Path of the private key the host's root accepts."""
    image: str
    image_dir: str
    kernel_release: str
    kvm: bool
    kvm_detail: str
    pid: int
    """The lab process that started the host and stops it."""
    qemu_pid: int | None
    started: str
    log_dir: str

    @property
    def alive(self) -> bool:
        return process_alive(self.pid)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        del data["url"]
        return data

    @classmethod
    def from_json(cls, url: str, data: dict[str, Any]) -> KnownHost:
        return cls(url=url, **data)


def _locked() -> AbstractContextManager[None]:
    return held_lock(hosts_dir() / "hosts.lock")


def _read() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(hosts_file().read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise SetupError(f"cannot read the lab's hosts file {hosts_file()}: {error}") from error
    if data.get("format") != HOSTS_FORMAT:
        raise SetupError(f"{hosts_file()} has format {data.get('format')!r}; this lab reads {HOSTS_FORMAT}")
    hosts: dict[str, dict[str, Any]] = data["hosts"]
    return hosts


def _write(hosts: dict[str, dict[str, Any]]) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=".hosts-", dir=hosts_dir())
    with os.fdopen(descriptor, "w") as stream:
        json.dump({"format": HOSTS_FORMAT, "hosts": hosts}, stream, indent=2, sort_keys=True)
        stream.write("\n")
    os.replace(temporary, hosts_file())


def record_host(host: KnownHost) -> None:
    """Add (or replace) the entry for `host.url`, dropping entries whose lab process is gone."""
    with _locked():
        hosts = {url: data for url, data in _read().items() if process_alive(data["pid"])}
        hosts[host.url] = host.to_json()
        _write(hosts)


def forget_host(url: str, pid: int) -> None:
    """Remove the entry for `url` if the process `pid` recorded it (a newer host may reuse the port)."""
    with _locked():
        hosts = _read()
        if hosts.get(url, {}).get("pid") == pid:
            del hosts[url]
            _write(hosts)


def known_hosts() -> list[KnownHost]:
    return [KnownHost.from_json(url, data) for url, data in sorted(_read().items())]


def known_host(url: str) -> KnownHost | None:
    """The lab's record of the host at `url` (an `ssh://user@host:port` URL), if the lab started it."""
    data = _read().get(url)
    return None if data is None else KnownHost.from_json(url, data)
