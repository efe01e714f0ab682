"""Fixtures for the Slurm engine's tests: one real local cluster shared by a module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.slurm_cluster import SlurmNodeSpec, slurm_cluster_fixture

# Two CPUs per node (slurmd accepts that on a 2-core host even without config_overrides): a cell asks for its
# guest's vCPUs (2), so each node runs one cell at a time. 4 GiB per node: a cell asks for its guest's memory
# plus QEMU's overhead, and Slurm refuses a job that asks for more than any node has.
slurm_cluster = slurm_cluster_fixture(
    nodes=(
        SlurmNodeSpec("tcg1", ("tcg",), "tcg", cpus=2, real_memory_mb=4096),
        SlurmNodeSpec("kvm1", ("kvm_arm64",), "kvm_arm64", cpus=2, real_memory_mb=4096),
    )
)


@pytest.fixture(autouse=True)
def _no_job_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that stops its `lab` (even with SIGKILL) can leave jobs queued or running in the shared
    cluster, such as a `sleep 600` cell; they are cancelled here, not left to hold the nodes."""
    yield
    if "slurm_cluster" in request.fixturenames:
        request.getfixturevalue("slurm_cluster").cancel_jobs_left()
