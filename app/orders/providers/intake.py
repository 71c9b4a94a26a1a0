"""The order intake and validation services: stubs with no effect of their own, only the
faults the failure profile gives every external call."""

from __future__ import annotations

from app.orders.faults import CallInfo, FaultInjector, Faults


class OrderIntake:
    """The order intake and validation services: no effect of their own."""

    def __init__(self, faults: FaultInjector) -> None:
        self.receive = Faults(faults, "receive")
        self.validate = Faults(faults, "validate")

    async def receive_order(self, call: CallInfo) -> None:
        await self.receive.draw(call).before()

    async def validate_order(self, call: CallInfo) -> None:
        await self.validate.draw(call).before()
