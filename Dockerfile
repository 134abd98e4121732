# syntax=docker/dockerfile:1.7
# ferry serving images (BuildKit). The default target is `cpu`, the last stage:
#   make image       ==  docker build --target cpu -t ferry:cpu .
#   make image-gpu   ==  docker build --target gpu -t ferry:gpu .
# Both run `ferry serve --model-repository /models` under tini, as uid 10001, with HTTP on 8000,
# gRPC on 8001 and Prometheus metrics on 8002. Mount a Triton-layout model repository at /models.
# tests/integration/test_deploy_image.py replays the cpu stages on the host (no Docker there).

# checkov resolves no ARGs, so it cannot see the tags below; test_deploy_image.py checks that
# both defaults carry an explicit, non-latest tag.
#checkov:skip=CKV_DOCKER_7:FROM uses ARG defaults with pinned tags, checked by the deploy tests
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# Prints ferry's runtime requirements (plus those of the extras named as arguments) from
# pyproject.toml, so the dependency layer is rebuilt only when pyproject.toml changes.
ARG REQUIREMENTS_PY="import sys, tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\\n'.join(p['dependencies'] + [r for e in sys.argv[1:] for r in p['optional-dependencies'][e]]))"

# ---------------------------------------------------------------- GPU: CUDA + cuDNN runtime
# onnxruntime-gpu and tensorrt come from the `gpu` extra (pip wheels); the venv is built on the
# same base as the final stage so its interpreter path matches.
FROM ${CUDA_IMAGE} AS gpu-builder
ARG REQUIREMENTS_PY
# Ubuntu's python3 packages are not pinned: the CUDA base image tag pins the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "$REQUIREMENTS_PY" gpu > requirements.txt \
 && pip install -r requirements.txt
COPY ferry/ ferry/
COPY server/ server/
COPY monitoring/ monitoring/
COPY exporters/ exporters/
COPY optimizers/ optimizers/
COPY measure/ measure/
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps .

FROM ${CUDA_IMAGE} AS gpu
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 tini \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ferry \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/ferry \
      --shell /usr/sbin/nologin ferry \
 && mkdir -p /models && chown 10001:10001 /models
COPY --from=gpu-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
LABEL org.opencontainers.image.title="ferry (GPU)" \
      org.opencontainers.image.description="KServe v2 / Triton-compatible model server: ONNX Runtime CUDA/TensorRT" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001
WORKDIR /home/ferry
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["/usr/bin/tini", "--", "ferry", "serve"]
CMD ["--model-repository", "/models"]

# ---------------------------------------------------------------- CPU (default target)
FROM ${PYTHON_IMAGE} AS cpu-builder
ARG REQUIREMENTS_PY
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "$REQUIREMENTS_PY" > requirements.txt \
 && pip install -r requirements.txt
COPY ferry/ ferry/
COPY server/ server/
COPY monitoring/ monitoring/
COPY exporters/ exporters/
COPY optimizers/ optimizers/
COPY measure/ measure/
RUN --mount=type=cache,target=/root/.cache/pip pip install --no-deps .

FROM ${PYTHON_IMAGE} AS cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.0-1+b3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 ferry \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/ferry \
      --shell /usr/sbin/nologin ferry \
 && mkdir -p /models && chown 10001:10001 /models
COPY --from=cpu-builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="KServe v2 / Triton-compatible model server: ONNX Runtime (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001
WORKDIR /home/ferry
EXPOSE 8000 8001 8002
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; sys.exit(0 if u.urlopen('http://127.0.0.1:8000/v2/health/live', timeout=4).status == 200 else 1)"]
ENTRYPOINT ["/usr/bin/tini", "--", "ferry", "serve"]
CMD ["--model-repository", "/models"]
