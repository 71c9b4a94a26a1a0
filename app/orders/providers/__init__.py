"""The boundary: the external services outside the order system (order intake, the
payment gateway, the carrier).

`api` holds what the activities see of the gateway and the carrier (typed interfaces,
requests, results, refusals and the idempotency keys we choose). Their simulators
(`gateway`, `carrier`) behave like real providers and keep their own ledgers in their own
databases; `open_simulators` wires them for a worker. `intake` stubs the order intake and
validation services, which have no effect of their own.
"""
