"""Platform: settings, database, logging, metrics, tracing, payload codec, Temporal client.

Depends on nothing above it (no order rules, no front end)."""
