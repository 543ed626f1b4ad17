"""A fake Kubernetes API server (on kmock's emulator) and a simulated node, for tests and for
the simulated cluster. It speaks the real REST protocol to the real `kubernetes` client,
Traefik's client-go and kubectl.

By job: `server` (the API server and its request path), `admission`, `scheduler`, `kubelet`,
`controllers` (EndpointSlices, DaemonSets, garbage collection), `events`, `faults`, `selectors`,
`tables`, `openapi` and `resources` (what it serves), `store` (the indexes), `tls`,
`kubeconfig`."""

from kubefake.faults import FaultPlan
from kubefake.kubeconfig import write_kubeconfig
from kubefake.server import FakeKubernetes, start_fake_cluster

__all__ = ["FakeKubernetes", "FaultPlan", "start_fake_cluster", "write_kubeconfig"]
