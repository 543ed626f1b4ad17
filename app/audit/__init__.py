"""The audit trail: records of the control plane's actions and of its desktops', kept, paged
through (GET /v1/audit) and delivered to an outgoing webhook at least once, in order."""
