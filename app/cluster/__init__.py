"""The cluster adapter: manifests (pure: what each object is) and the Kubernetes client's
wrapper (`kube`), the only module that imports `kubernetes`."""
