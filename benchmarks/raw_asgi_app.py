"""The stack's ceiling: a raw ASGI app on the same uvicorn that reads the body, parses it and answers a constant.

No framework, no middleware: `make bench` (benchmarks/serve_vs_mlflow.py) runs
it beside the API, so the API's figures read as a share of what uvicorn,
httptools and orjson alone can do on this machine (issue 31's ceiling).
"""

import orjson

ANSWER = orjson.dumps({"model_version": "0", "predictions": [0], "probabilities": [0.5]})
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope, receive, send):
    """Read the whole body, parse it as JSON (a POST), answer a constant."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["method"] == "POST":  # GET: the benchmark's readiness probe
        orjson.loads(b"".join(chunks))
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
