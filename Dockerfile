# ems for the compose stack: `ems stream`, `ems ingest`, `ems dashboard` with InfluxDB support.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# the package first (cached layer), then the scenarios and site files it replays
COPY pyproject.toml README.md ./
COPY ems ./ems
RUN pip install ".[influx]"
COPY scenarios ./scenarios
COPY sites ./sites

# an unprivileged user; /data holds the ledger and the dead-letter file
RUN useradd --create-home --uid 10001 ems && mkdir -p /data && chown ems:ems /data
USER ems
VOLUME ["/data"]

EXPOSE 8050 9108
CMD ["ems", "--help"]
