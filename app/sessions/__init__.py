"""Desktop sessions: the API, the state machine and the event log."""
