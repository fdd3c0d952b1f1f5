# The prediction API image. It bakes no model: it serves MODEL_ALIAS (default
# production) or a pinned MODEL_VERSION of MODEL_NAME from the registry at
# MLFLOW_TRACKING_URI.
#
#   docker build .            the builder installs requirements/serve.txt from the package index
#   python -m pipeline image  fills build/wheels first, so the build needs no network
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# build/wheels is optional: the glob matches nothing in a fresh clone.
COPY requirements/serve.txt build/wheel[s] /tmp/in/
SHELL ["/bin/sh", "-eu", "-c"]
RUN python3 -m venv /opt/venv; \
    if ls /tmp/in/*.whl >/dev/null 2>&1; then \
        /opt/venv/bin/pip install --no-index --find-links /tmp/in -r /tmp/in/serve.txt; \
    else \
        /opt/venv/bin/pip install -r /tmp/in/serve.txt; \
    fi; \
    /opt/venv/bin/pip uninstall --yes pip; \
    # Serving never runs the packages' own test suites or compiles their sources.
    find /opt/venv -depth -type d -name tests -exec rm -rf {} +; \
    find /opt/venv -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pyi' -o -name '*.c' -o -name '*.cpp' -o -name '*.h' \) -delete

FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8000 \
    MODEL_ALIAS=production
# LightGBM loads the system's OpenMP runtime (XGBoost's wheel bundles its own). The offline base built with
# debootstrap has it; a slim base gets it from apt, at the version its Debian release ships (a pinned version
# would stop the build at the release's next security update).
# hadolint ignore=DL3008
RUN python3 -c "import ctypes.util, sys; sys.exit(ctypes.util.find_library('gomp') is None)" \
        || { apt-get update && apt-get install -y --no-install-recommends libgomp1 && rm -rf /var/lib/apt/lists/*; }; \
    useradd --create-home --uid 10001 --shell /usr/sbin/nologin api
COPY --from=builder /opt/venv /opt/venv

WORKDIR /srv
# The code is root's: the API (uid 10001) reads it and cannot change it. families/ and features/ are the
# model families and the team's feature code a version's pipeline names (docs/DESIGN.md, the trust rule).
COPY api ./api
COPY families ./families
COPY features ./features
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
