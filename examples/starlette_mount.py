"""Mount Axione under /ai/v1 in a plain Starlette app, beside the host's own routes.

Run: uvicorn examples.starlette_mount:app
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from axione_asgi import AxioneConfig, create_app

# In memory, so the example leaves no file behind; use a TOML file in production.
config = AxioneConfig.from_mapping({"storage": {"keys": "memory://", "ledger": "memory://"}})
api = create_app(config)


async def health(request: Request) -> JSONResponse:
    """The host's own route, untouched by the gateway's key auth."""
    return JSONResponse({"status": "ok"})


# Starlette does not pass lifespan events to mounted apps: hand the gateway's
# lifespan to the host so provider clients open at start-up and close at shutdown.
app = Starlette(
    routes=[Route("/health", health), Mount("/ai/v1", app=api)],
    lifespan=api.lifespan,
)
