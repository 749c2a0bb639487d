"""The HTTP layer: ASGI middleware, data routes, admin API, metrics, dashboard."""
