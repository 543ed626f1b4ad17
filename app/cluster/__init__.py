"""The cluster side: manifests (pure), the Kubernetes adapter, the reconciler, the fake API."""
