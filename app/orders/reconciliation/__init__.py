"""The scheduled reconciliation: our orders and payments compared with what the gateway
and the carrier report, the safe differences healed through the order's own idempotent
keys, the rest reported (audit.py decides, activities.py gathers and heals, workflow.py
runs it; app/service/reconciliation.py schedules it and reads its reports)."""
