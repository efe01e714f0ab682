"""Logging in over SSH with paramiko, the one way the lab does it: a pinned host key, one client key, no agent.

Used for lab hosts (lab.hosts.ssh) and for guests (lab.machine.channels.ssh). A server that presents
another host key, or refuses the client key, has answered, and asking again will not change its answer
(LoginRefused); any other failure is the server not answering (yet), said in words for the caller to
retry or report.
"""

from __future__ import annotations

import paramiko


class LoginRefused(Exception):
    """The SSH server answered, and its answer is final: the wrong host key, or the client key refused."""


def log_in(client: paramiko.SSHClient, address: tuple[str, int], user: str, client_key: paramiko.PKey,
           timeout: float, host_key_from: str, client_key_from: str) -> str | None:
    """Connect `client` and log in: None once logged in, else why the server could not be reached (the
    client is then closed). `host_key_from` and `client_key_from` say whose keys they are, for messages."""
    host, port = address
    try:
        client.connect(host, port, username=user, pkey=client_key, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout, allow_agent=False, look_for_keys=False)
    except paramiko.BadHostKeyException as error:
        client.close()
        raise LoginRefused(f"presented a host key other than {host_key_from}: "
                           f"{error.key.get_name()} {error.key.get_base64()}") from error
    except paramiko.AuthenticationException as error:
        client.close()
        raise LoginRefused(f"refused {client_key_from} client key: {error}") from error
    except (paramiko.SSHException, OSError, EOFError) as error:
        # paramiko stops waiting for the handshake at `timeout` and then reports "No existing
        # session"; a peer that took the connection but sent no banner is what actually happened.
        transport = client.get_transport()
        silent = transport is not None and not transport.remote_version
        client.close()
        return f"connected, but no SSH banner within {timeout:.1f}s" if silent else f"{type(error).__name__}: {error}"
    return None
