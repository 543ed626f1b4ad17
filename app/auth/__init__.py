"""API tokens and scopes: who may call what."""
