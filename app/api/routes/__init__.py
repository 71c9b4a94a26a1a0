"""HTTP routers, one module per resource, assembled by `app.api.app.create_app`.

- `orders`: order commands and reads under /orders
- `health`: /health (dependency reachability, no auth)
- `stats`: /stats (order statistics for the console's dashboard)
- `metrics`: /metrics (Prometheus; its request histogram is fed through
  `app.state.request_observers`, see app/api/middleware.py)
- `codec`: /codec/decode, /codec/encode (Temporal remote codec for the Web UI and CLI,
  with CORS on /codec only)

The shared `Annotated` dependency aliases (commands, status reads, inspection, settings,
caller, order id) are app/api/deps.py, the one reader of `app.state`.
"""

from app.api.routes import health, metrics, orders, stats

__all__ = ["health", "metrics", "orders", "stats"]
