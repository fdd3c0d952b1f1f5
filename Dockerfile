# The prediction API image. It bakes no model: it serves MODEL_ALIAS (default
# production) or a pinned MODEL_VERSION of MODEL_NAME from the registry at
# MLFLOW_TRACKING_URI. Build with `python -m pipeline image` (or `make image`),
# which first fills build/wheels so the build itself needs no network.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_ALIAS=production

COPY requirements/serve.txt /tmp/serve.txt
COPY build/wheels /tmp/wheels
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels -r /tmp/serve.txt \
    && rm -rf /tmp/wheels /tmp/serve.txt \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin api

WORKDIR /srv
COPY --chown=10001:10001 api ./api
USER 10001
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/health\", timeout=2)"]

# Last, so a new commit reuses every layer above.
ARG GIT_SHA=unknown
LABEL org.opencontainers.image.title="churn prediction API" \
      org.opencontainers.image.revision="${GIT_SHA}"
ENV GIT_SHA=${GIT_SHA}

CMD ["python", "-m", "api"]
