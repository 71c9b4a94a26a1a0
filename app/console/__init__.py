"""Operator web console at /console: review queue, orders, order page, dashboard.

The server renders a small HTML shell per page; `static/console.js` fills it from the REST
API (with the operator's API key, entered in the page and kept in sessionStorage) and
`static/chart.js` draws the dashboard's charts on <canvas>. No build step, no third-party
code, nothing fetched from outside this server. The pages carry no secrets: the only
injected values are the URL prefix, the Temporal UI base URL and namespace, and the page
name, so the pages themselves need no authentication; the data behind them does.
"""

from __future__ import annotations

from app.console.pages import router

__all__ = ["router"]
