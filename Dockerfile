# One image for the poller, the workers, Flower and the local Data Pipeline service.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 bridge
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bridge ./bridge
COPY workers ./workers
COPY emulator ./emulator
RUN pip install --no-cache-dir . && mkdir -p /var/lib/dp-bridge && chown bridge /var/lib/dp-bridge

USER bridge
ENV BRIDGE_WORK_DIR=/var/lib/dp-bridge/work
# iproute2 is not in this image, but call the module anyway: `bridge` is ambiguous on hosts.
ENTRYPOINT ["python", "-m", "bridge"]
CMD ["--help"]
