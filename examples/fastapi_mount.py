"""Mount Axione under /ai/v1 in a FastAPI app, beside the host's own routes.

Run: uvicorn examples.fastapi_mount:app
"""

from __future__ import annotations

from fastapi import FastAPI

from axione_asgi import AxioneConfig, create_app

# In memory, so the example leaves no file behind; use a TOML file in production.
config = AxioneConfig.from_mapping({"storage": {"keys": "memory://", "ledger": "memory://"}})
api = create_app(config)

# Starlette does not pass lifespan events to mounted apps: hand the gateway's
# lifespan to the host so provider clients open at start-up and close at shutdown.
app = FastAPI(title="Host app", lifespan=api.lifespan)


@app.get("/health")
async def health() -> dict[str, str]:
    """The host's own route, untouched by the gateway's key auth."""
    return {"status": "ok"}


app.mount("/ai/v1", api)
