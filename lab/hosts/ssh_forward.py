"""A local listener whose connections are carried over an SSH connection to an address on the far side
(direct-tcpip), which plain dropbear serves as well as OpenSSH: how the lab reaches a QEMU channel or a
guest's SSH port on a lab host's loopback."""

from __future__ import annotations

import contextlib
import select
import socket
import threading

import paramiko


class Forward:
    """One local listener whose connections are carried to an address on the host over SSH."""

    def __init__(self, transport: paramiko.Transport, listener: socket.socket, target: tuple[str, int]) -> None:
        self.transport = transport
        self.listener = listener
        self.target = target
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"forward-{target[1]}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                remote = self.transport.open_channel("direct-tcpip", self.target, ("127.0.0.1", 0), timeout=10)
            except (paramiko.SSHException, OSError, EOFError):
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, remote), daemon=True).start()

    def _pump(self, client: socket.socket, remote: paramiko.Channel) -> None:
        """Bytes both ways until either side closes (or the forward is stopped)."""
        with contextlib.closing(client), contextlib.closing(remote):
            ends: list[socket.socket | paramiko.Channel] = [client, remote]
            while not self._stop.is_set():
                ready, _, _ = select.select(ends, [], [], 0.2)
                try:
                    if client in ready:
                        data = client.recv(65536)
                        if not data:
                            return
                        remote.sendall(data)
                    if remote in ready:
                        data = remote.recv(65536)
                        if not data:
                            return
                        client.sendall(data)
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self.listener.close()
        self._thread.join(2)
