"""Shares of a session's desktop (view-only or collaborating links), the pages connected to it,
and what its agent keeps Selkies' secure mode to."""
