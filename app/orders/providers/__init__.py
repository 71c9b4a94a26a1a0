"""The boundary: the payment gateway and the carrier, outside the order system.

`api` holds what the activities see (typed interfaces, requests, results, refusals and the
idempotency keys we choose). The simulators (`gateway`, `carrier`) behave like real
providers and keep their own ledgers in their own databases; `open_simulators` wires them
for a worker.
"""
