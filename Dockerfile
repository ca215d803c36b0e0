# syntax=docker/dockerfile:1
# watcher as a container: `docker build -t watcher .`, or `docker compose up`
# with docker-compose.yml beside this file. The base image is a build argument;
# both stages must use the same one, since the virtual environment's python is
# a link to the base image's interpreter.
ARG PYTHON_IMAGE=python:3.12-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# Only what building the package reads (pyproject.toml takes its long
# description from README.md), so a change to the tests rebuilds nothing.
COPY pyproject.toml README.md ./
COPY watcher/ watcher/
RUN python -m venv /opt/watcher \
    && /opt/watcher/bin/pip install --no-cache-dir . \
    && /opt/watcher/bin/pip uninstall --yes pip

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=""
ARG CREATED=""
LABEL org.opencontainers.image.title="watcher" \
      org.opencontainers.image.description="Watch container image tags and record every digest change." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed UID (USER below names it by number, which Kubernetes' runAsNonRoot can
# verify), so a bind-mounted /data can be chowned to it from the host.
RUN useradd --system --no-log-init --uid 10001 --user-group \
        --home-dir /data --shell /usr/sbin/nologin watcher \
    && mkdir -p /data /etc/watcher \
    && chown watcher:watcher /data

COPY --from=builder /opt/watcher /opt/watcher
# The default configuration; docker-compose.yml mounts its own over it.
COPY deploy/watcher.toml /etc/watcher/watcher.toml

ENV PATH="/opt/watcher/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    WATCHER_CONFIG=/etc/watcher/watcher.toml

USER 10001:10001
WORKDIR /data
VOLUME /data
EXPOSE 9877

# The slim images have no curl: python's urllib asks /healthz, which answers
# 503 (an HTTPError, so exit 1) while watcher is stopping.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9877/healthz', timeout=4)"]

ENTRYPOINT ["watcher"]
CMD ["run", "--config", "/etc/watcher/watcher.toml"]
