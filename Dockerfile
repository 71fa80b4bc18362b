# syntax=docker/dockerfile:1
# One image for every role; compose.yaml (or your orchestrator) picks the command:
#   bridge start ...                 the poller (one active per worker group, standbys allowed)
#   celery -A workers worker ...     the workers (scale freely)
#   celery -A workers flower ...     Flower (give it FLOWER_BASIC_AUTH)
#   bridge emulator ...              the local Data Pipeline service
# No credentials are baked in: they come from the environment, a mounted profile or an instance role.

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY workers ./workers
COPY emulator ./emulator
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    BRIDGE_WORK_DIR=/var/lib/dp-bridge/work
# A fixed numeric uid so volume ownership and runAsNonRoot checks are predictable.
RUN groupadd --gid 10001 bridge \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin bridge \
    && mkdir -p /var/lib/dp-bridge/work \
    && chown -R 10001:10001 /var/lib/dp-bridge
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir /wheels/*.whl
USER 10001:10001
WORKDIR /var/lib/dp-bridge
# Local service, Flower, the poller's and the workers' metrics (all opt-in; see compose.yaml).
EXPOSE 8999 5555 9464 9465
# `bridge` here is the project's console script (slim images have no iproute2 `bridge` to shadow it).
CMD ["bridge", "--help"]
