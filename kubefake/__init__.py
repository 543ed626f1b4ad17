"""A fake Kubernetes API server (on kmock's emulator) and a simulated kubelet, for tests and for
the simulated cluster. It speaks the real REST protocol to the real `kubernetes` client."""

from kubefake.server import (
    FakeKubernetes,
    FaultPlan,
    start_fake_cluster,
    write_kubeconfig,
)

__all__ = ["FakeKubernetes", "FaultPlan", "start_fake_cluster", "write_kubeconfig"]
