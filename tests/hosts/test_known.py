"""The lab's hosts file: entries appear when a host is ready, go when it stops, and stale ones are dropped."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess

import pytest

from lab.errors import SetupError
from lab.hosts.known import KnownHost, forget_host, hosts_file, known_host, known_hosts, record_host


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE_DIR", str(tmp_path / "cache"))


def _host(port: int, pid: int | None = None) -> KnownHost:
    return KnownHost(url=f"ssh://root@127.0.0.1:{port}", user="root", host_key="ssh-ed25519 AAAAkey",
                     client_key="/cache/images/kvm-host-1/ssh-client-key", image="kvm-host",
                     image_dir="/cache/images/kvm-host-1", kernel_release="7.2.13+deb14-cloud-arm64", kvm=True,
                     kvm_detail="/dev/kvm ready (VHE mode initialized successfully)", pid=pid or os.getpid(),
                     qemu_pid=None, started="2026-11-29T21:00:00+00:00", log_dir="/cache/hosts/logs/kvm-host")


def _dead_pid() -> int:
    done = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    return int(done.stdout)


def test_a_recorded_host_is_found_by_url_with_its_key_and_forgotten_by_its_owner():
    record_host(_host(40001))
    found = known_host("ssh://root@127.0.0.1:40001")
    assert found == _host(40001) and found.alive
    data = json.loads(hosts_file().read_text())
    assert data["format"] == 1 and data["hosts"]["ssh://root@127.0.0.1:40001"]["host_key"] == "ssh-ed25519 AAAAkey"
    forget_host(found.url, os.getpid() + 1)
    assert known_host(found.url) is not None, "only the process that recorded a host forgets it"
    forget_host(found.url, os.getpid())
    assert known_host(found.url) is None and known_hosts() == []


def test_entries_of_dead_lab_processes_are_dropped_when_a_host_is_recorded():
    stale = _host(40002, pid=_dead_pid())
    record_host(stale)
    assert not known_host(stale.url).alive
    record_host(_host(40003))
    assert [host.url for host in known_hosts()] == ["ssh://root@127.0.0.1:40003"]


def test_a_new_host_on_the_same_port_replaces_the_entry():
    record_host(_host(40004))
    record_host(dataclasses.replace(_host(40004), host_key="ssh-ed25519 AAAAother"))
    assert [host.host_key for host in known_hosts()] == ["ssh-ed25519 AAAAother"]


def test_a_hosts_file_of_another_format_is_an_error_not_a_guess():
    hosts_file().parent.mkdir(parents=True)
    hosts_file().write_text(json.dumps({"format": 99, "hosts": {}}))
    with pytest.raises(SetupError, match="format 99"):
        known_hosts()
