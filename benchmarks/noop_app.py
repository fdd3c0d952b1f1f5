"""The stack's ceiling: a FastAPI app on the same server settings that parses the body and answers a constant.

`make bench` runs it beside the API so the API's figures read as a share of
what FastAPI + uvicorn can do on this machine, not as absolute numbers.
"""

import orjson
from fastapi import FastAPI, Request, Response

app = FastAPI()
ANSWER = orjson.dumps({"model_version": "0", "predictions": [0], "probabilities": [0.5]})


@app.post("/predict")
@app.post("/invocations")
async def parse_and_answer(request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(ANSWER, media_type="application/json")
