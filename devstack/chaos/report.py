"""A chaos run's verdict: the summary (what was started, how the orders ended, the money
and the ledgers, every violation; with the adversarial mix, how it came out), the evidence
for the first violating orders, and the summary's lines for a terminal."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

from app.orders.messages import TERMINAL_STATES, OrderState, order_workflow_id
from app.service.inspection import Inspector
from devstack.chaos.adversarial import KINDS, PlannedOrder
from devstack.chaos.checks import (
    VIOLATIONS,
    OrderFacts,
    check_across,
    check_order,
    deferred_checks,
)
from devstack.chaos.facts import Tracked, one_line
from devstack.chaos.faults import ChaosOptions, PlannedFault

# Evidence (events, history) is attached for at most this many violating orders.
MAX_EVIDENCE = 20
# The summary's terminal counts, in the states' own order.
_TERMINAL_ORDER = tuple(state.value for state in OrderState if state in TERMINAL_STATES)
_LEDGER_COUNTS = ("gateway_charges", "gateway_refunds", "carrier_dispatches", "carrier_cancelled")


@dataclass
class RunRecord:
    """What a run did, for its verdict."""

    opts: ChaosOptions
    deadline_s: float
    planned: dict[str, PlannedOrder]
    tracked: dict[str, Tracked]
    plan: list[PlannedFault]
    # Per planned order: started (or why not), when, attempts, approval.
    started: list[dict[str, Any]]
    faults: list[dict[str, Any]]
    healed: list[str]

    @property
    def live(self) -> set[str]:
        return {s["order_id"] for s in self.started if s["started"]}


def count(value: Any) -> int:
    """A report's count, whether it gives a number or the list of what it counts."""
    if isinstance(value, bool) or value is None:
        return int(bool(value))
    if isinstance(value, int):
        return value
    try:
        return len(value)
    except TypeError:
        return 0


def summarize(
    record: RunRecord, facts: dict[str, OrderFacts], open_ids: list[str]
) -> dict[str, Any]:
    """The run's summary; `ok` when no invariant is broken (the reconciliation, under
    `adversarial`, is judged by the caller)."""
    violations: dict[str, list[dict[str, Any]]] = {kind: [] for kind in VIOLATIONS}
    refused = _unstarted(record, violations)
    tally = _tally(sorted(record.live), facts, violations)
    not_terminal = sorted({v["order_id"] for v in violations["not_terminal"]})
    violation_count = sum(len(v) for v in violations.values())
    opts, started, faults = record.opts, record.started, record.faults
    summary: dict[str, Any] = {
        "ok": violation_count == 0,
        "seed": opts.seed,
        "orders_requested": opts.orders,
        "orders_started": len(record.live),
        "orders_approved": sum(1 for s in started if s.get("approved")),
        "fault_profile": opts.fault_profile,
        "order_deadline_s": record.deadline_s,
        "grace_s": opts.grace_s,
        "settle_wait_s": opts.settle_wait_s,
        "terminal": {s: tally.states.get(s, 0) for s in _TERMINAL_ORDER},
        "reasons": dict(tally.reasons.most_common()),
        "not_terminal_after_deadline": not_terminal,
        "still_open_when_settling_stopped": open_ids,
        # Closed, compensation still in flight after the wait: not judged here (what
        # it has yet to set right is under until_then); the reconciliation's to judge.
        "settling": tally.settling,
        "payments": tally.payment_counts(),
        # What the providers' own ledgers hold for these orders.
        "ledger": {k: tally.ledger.get(k, 0) for k in _LEDGER_COUNTS},
        "start_retries": sum(s.get("start_attempts", 1) - 1 for s in started),
        "plan": [asdict(f) for f in record.plan],
        "faults": faults,
        "fault_counts": dict(Counter(f["kind"] for f in faults if f["ok"])),
        "healed": record.healed,
        "violations": violations,
        "violation_count": violation_count,
    }
    if opts.adversarial:
        summary["adversarial"], summary["adversarial_outcomes"] = adversarial_mix(record, refused)
    return summary


def _unstarted(record: RunRecord, violations: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Orders that did not start: refused for a payment id another started order holds
    (expected; returned), or violations."""
    held = {record.planned[oid].payment_id for oid in record.live}
    refused = []
    for s in record.started:
        if s["started"]:
            continue
        planned = record.planned[s["order_id"]]
        if s.get("refused") == "payment_id" and planned.payment_id in held:
            refused.append(s["order_id"])  # the payment id is another order's: expected
            continue
        violations["not_started"].append(
            {"order_id": s["order_id"], "detail": s.get("start_error")}
        )
    return refused


@dataclass
class _Tally:
    states: Counter[str]
    reasons: Counter[str]
    payments: Counter[str]
    ledger: Counter[str]
    settling: list[dict[str, Any]]

    def payment_counts(self) -> dict[str, int]:
        payments = self.payments
        return {
            # every payment row but a free order's is one charge
            "charged": sum(payments[s] for s in ("charged", "refunded")),
            "refunded": payments.get("refunded", 0),
            "kept": payments.get("charged", 0),
            "not_due": payments.get("not_due", 0),
            "free_completed": payments.get("free_completed", 0),
        }


def _tally(
    live: list[str],
    facts: dict[str, OrderFacts],
    violations: dict[str, list[dict[str, Any]]],
) -> _Tally:
    """How the started orders ended, their payments and ledgers; their violations added
    to `violations`."""
    tally = _Tally(Counter(), Counter(), Counter(), Counter(), [])
    for oid in live:
        f = facts[oid]
        tally.ledger["gateway_charges"] += len(f.gateway)
        tally.ledger["gateway_refunds"] += sum(len(c["refunds"]) for c in f.gateway)
        tally.ledger["carrier_dispatches"] += len(f.carrier)
        tally.ledger["carrier_cancelled"] += sum(1 for b in f.carrier if b["cancelled"])
        state = f.state or "NO_ROW"
        if state in TERMINAL_STATES:
            tally.states[state] += 1
            if state != "COMPLETED":
                tally.reasons[f"{state}:{(f.db or {}).get('reason')}"] += 1
            elif f.free:
                tally.payments["free_completed"] += 1
        for p in f.payments:
            if p["order_id"] == oid:
                tally.payments[p["status"]] += 1
        for kind, details in check_order(f).items():
            violations[kind].append({"order_id": oid, "detail": "; ".join(details)})
        if f.settling:
            tally.settling.append(
                {
                    "order_id": oid,
                    "state": f.state,
                    "pending": f.workflow.get("pending", []),
                    "until_then": {k: "; ".join(v) for k, v in deferred_checks(f).items()},
                }
            )
    for oid, details in check_across(facts[oid] for oid in live).items():
        violations["shared_keys"].append({"order_id": oid, "detail": "; ".join(details)})
    return tally


def adversarial_mix(record: RunRecord, refused: list[str]) -> tuple[dict[str, int], dict[str, Any]]:
    """The mix as it happened: a count per kind, and how each kind came out."""
    planned = list(record.planned.values())
    tracked = record.tracked
    cancels = [c for t in tracked.values() for c in t.cancels]
    random_cancels = [c for c in cancels if c["kind"] == "random"]
    close_cancels = [c for c in cancels if c["kind"] == "during_close"]
    retried = {oid: t for oid, t in tracked.items() if t.retries}
    counts = {
        "reused_payment_ids": sum(1 for o in planned if "reused_payment_ids" in o.tags),
        "dotted_ids": sum(1 for o in planned if "dotted_ids" in o.tags),
        "retry_like_pairs": sum(1 for o in planned if "retry_like_pairs" in o.tags),
        "zero_totals": sum(1 for o in planned if "zero_totals" in o.tags),
        "cancels": len(random_cancels),
        "cancels_during_close": len(close_cancels),
        "retries": sum(len(t.retries) for t in retried.values()),
    }
    assert set(counts) == set(KINDS)
    reusers = [o.order_id for o in planned if "reused_payment_ids" in o.tags]
    outcomes = {
        # A refusal may hit either order of a pair racing for one payment id.
        "payment_id_refused": refused,
        "payment_id_reusers_started": sorted(oid for oid in reusers if oid in record.live),
        "cancels": dict(Counter(c["outcome"] for c in random_cancels)),
        "cancels_during_close": dict(Counter(c["outcome"] for c in close_cancels)),
        "retried": {oid: t.state or "open" for oid, t in sorted(retried.items())},
        "retry_refusals": sum(len(t.retry_refusals) for t in tracked.values()),
        "free_orders": sorted(o.order_id for o in planned if o.free),
        "failing_by_design": sorted(o.order_id for o in planned if "fails_by_design" in o.tags),
        "pairs": sorted(f"{o.of} / {o.order_id}" for o in planned if "retry_like_pairs" in o.tags),
    }
    return counts, outcomes


async def evidence(
    inspector: Inspector,
    summary: dict[str, Any],
    facts: dict[str, OrderFacts],
    tracked: dict[str, Tracked],
) -> dict[str, Any]:
    """Events and a payload-free history for the first violating orders."""
    violating = dict.fromkeys(v["order_id"] for vs in summary["violations"].values() for v in vs)
    ids = [oid for oid in violating if oid in facts][:MAX_EVIDENCE]
    out: dict[str, Any] = {}
    for oid in ids:
        f = facts[oid]
        try:
            history = await inspector.history(order_workflow_id(oid))
        except Exception as err:
            history = [{"error": one_line(err)}]
        out[oid] = {
            "db": f.db,
            "payments": f.payments,
            "gateway": f.gateway,
            "carrier": f.carrier,
            "keys": f.keys,
            "cancels": f.cancels,
            "retries": tracked[oid].retries if oid in tracked else [],
            "events": [
                {"type": e["type"], "ts": e["ts"], "payload": e["payload"]} for e in f.events
            ],
            "workflow": f.workflow,
            "history": [
                f"{h.get('event_id')} {h.get('type')} {h.get('detail') or ''}".rstrip()
                if "type" in h
                else str(h)
                for h in history
            ],
        }
    return out


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary for a terminal (the JSON has everything, evidence included)."""
    t = summary["terminal"]
    p = summary["payments"]
    faults = ", ".join(f"{kind} x{n}" for kind, n in summary["fault_counts"].items()) or "none"
    lines = [
        f"orders: {summary['orders_started']}/{summary['orders_requested']} started; "
        f"COMPLETED {t['COMPLETED']}, CANCELLED {t['CANCELLED']}, FAILED {t['FAILED']}, "
        f"not terminal {len(summary['not_terminal_after_deadline'])}",
        f"payments: {p['charged']} charged, {p['refunded']} refunded, {p['kept']} kept",
        "ledgers: {gateway_charges} gateway charges, {gateway_refunds} refunds; "
        "{carrier_dispatches} carrier bookings ({carrier_cancelled} cancelled)".format(
            **summary["ledger"]
        ),
        f"faults: {faults}; took {summary['timings']['total_s']:.0f}s",
    ]
    if summary.get("settling"):
        shown = ", ".join(
            f"{s['order_id']} ({'; '.join(s['pending']) or s['state']})"
            for s in summary["settling"][:5]
        )
        lines.append(f"still settling (compensation in flight, not judged): {shown}")
    if "adversarial" in summary:
        mix = ", ".join(f"{kind} {n}" for kind, n in summary["adversarial"].items())
        lines.append(f"adversarial: {mix}")
    if "reconciliation" in summary:
        rec = summary["reconciliation"]
        lines.append(
            f"reconciliation: {rec['error']}"
            if "error" in rec
            else f"reconciliation: {count(rec.get('findings'))} findings, "
            f"{count(rec.get('healed'))} healed, {count(rec.get('unresolved'))} unresolved"
        )
    for kind, items in summary["violations"].items():
        if items:
            shown = "; ".join(f"{i['order_id']}: {i['detail']}" for i in items[:5])
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            lines.append(f"VIOLATION {kind} x{len(items)}: {shown}{more}")
    lines.append(
        "all invariants hold"
        if summary["ok"]
        else f"{summary['violation_count']} violations"
        + (
            ", the reconciliation did not resolve everything"
            if summary["violation_count"] == 0
            else ""
        )
        + "; --json shows events and histories"
    )
    return lines
