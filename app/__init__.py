"""vdi-control: the control plane for GPU remote-desktop sessions on Kubernetes."""

__version__ = "0.1.0"
