"""The REST API (FastAPI): app factory, errors, middleware, auth, routes per resource."""
