"""`python -m api`: run `api.app:app` under uvicorn on $HOST:$PORT (the image's entry point)."""

import os

import uvicorn

uvicorn.run(
    "api.app:app",
    host=os.environ.get("HOST", "0.0.0.0"),  # a container listens on all its interfaces
    port=int(os.environ.get("PORT", "8000")),
    access_log=False,
)
