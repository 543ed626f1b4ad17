"""vdi-agent: the in-pod agent (checks, encoder choice, supervision, health callbacks)."""
