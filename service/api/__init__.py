"""The HTTP layer: the FastAPI app, its routes, authentication, the polling fast path, event streams, the
response schemas and the dashboard. Built on `service.core`; the workers never import it."""
