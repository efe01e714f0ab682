"""Who a lab host is: the host key to pin and the client key to log in with, for `--host ssh://…`.

A host started by the lab (`lab host start`) is written into `<cache>/hosts/hosts.json` with the key
its image was made with and the client key that image accepts. Any other host is looked up in the
user's `~/.ssh/known_hosts`, and logged in to with `$LAB_SSH_IDENTITY` or `~/.ssh/id_ed25519`. A host
whose key is known nowhere is refused: the lab never trusts a key on first use.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import paramiko

from lab.errors import SetupError
from lab.hosts.known import known_host
from lab.hosts.ssh import HostLogin, SshHost, parse_host_url

IDENTITY_VARIABLE = "LAB_SSH_IDENTITY"
EMULATED_PATIENCE = 4.0
"""A host the lab started is emulated under TCG here: its guests' consoles and boots run about 3x slower
than on an idle real host when this machine is busy, so every wait on it is this many times longer."""


def public_key(line: str) -> paramiko.PKey:
    """A key from an OpenSSH public key line (`ssh-ed25519 AAAA… comment`)."""
    kind, blob, *_ = line.split()
    return paramiko.PKey.from_type_string(kind, base64.b64decode(blob))


def _load(path: Path, what: str) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except (OSError, ValueError, paramiko.SSHException) as error:
        raise SetupError(f"cannot load {what} {path}: {error}") from error


def login_for(url: str) -> HostLogin:
    """The pinned host key and the client key for `url` (see the module docstring)."""
    user, host, port = parse_host_url(url)
    known = known_host(f"ssh://{user}@{host}:{port}")
    if known is not None:
        return HostLogin(host, port, user, public_key(known.host_key),
                         _load(Path(known.client_key), "the host's client key"), EMULATED_PATIENCE)
    keys = paramiko.HostKeys()
    known_hosts = Path.home() / ".ssh" / "known_hosts"
    if known_hosts.is_file():
        keys.load(str(known_hosts))
    entry = keys.lookup(host if port == 22 else f"[{host}]:{port}")
    if not entry:
        raise SetupError(f"no host key known for {url}: add it to {known_hosts} (the lab never trusts on first use)")
    identity = Path(os.environ.get(IDENTITY_VARIABLE) or Path.home() / ".ssh" / "id_ed25519")
    return HostLogin(host, port, user, next(iter(entry.values())), _load(identity, "the client key"))


def open_host(url: str) -> SshHost:
    """A connection to the lab host at `url`, its key pinned; a set-up error when that cannot be."""
    return SshHost(login_for(url))
