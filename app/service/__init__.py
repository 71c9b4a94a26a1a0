"""The one service layer the front ends (API, CLI, console) call, a module per job: order
commands (orders.py), the status view (status.py), lists, audit events and Temporal
inspection (inspection.py), statistics (stats.py), the reconciliation's report
(reconciliation.py); layer.py builds the first three on one client. The other modules are
their parts (inputs, listing, visibility, retry, idempotency, views, errors)."""
