"""HTTP routers, one module per resource, assembled by `app.api.create_app`.

- `orders`: order commands and reads under /orders
- `health`: /health (dependency reachability, no auth)

`deps` holds the shared `Annotated` dependency aliases (service, caller, order id).
A Prometheus `/metrics` router belongs beside these when it lands (its own issue); the
request hook for its counters is `app.state.request_observers` (see app/api.py).
"""

from app.routes import health, orders

__all__ = ["health", "orders"]
