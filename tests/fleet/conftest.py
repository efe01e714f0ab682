"""Fixtures for the Slurm engine's tests: one real local cluster shared by a module."""

from __future__ import annotations

from tests.support.slurm_cluster import SlurmNodeSpec, slurm_cluster_fixture

# Two CPUs per node: slurmd accepts that on a 2-core host even without config_overrides, and it lets two
# jobs of one host class run at once (the time-limit test runs three jobs side by side).
slurm_cluster = slurm_cluster_fixture(
    nodes=(
        SlurmNodeSpec("tcg1", ("tcg",), "tcg", cpus=2),
        SlurmNodeSpec("kvm1", ("kvm_arm64",), "kvm_arm64", cpus=2),
    )
)
