"""Lab hosts: machines the lab runs its guests' QEMU on, reached over SSH.

`vm` boots a `kvm-host` image (an arm64 KVM host, emulated under TCG with EL2) and hands out
how to reach it; `known` is the lab's own record of the hosts it started (`<cache>/hosts/hosts.json`),
so that `--host URL` can pin a host's key without trusting it on first use.
Sits above lab.qemu (a host image carries the lab's QEMU build) and below lab.scenario.
"""
