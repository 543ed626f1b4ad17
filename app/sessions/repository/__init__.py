"""Queries on sessions, session_events and idempotency_keys, by what they serve: `api` (the
API's requests), `workqueue` (the controllers), `eventlog` (the session event log)."""
