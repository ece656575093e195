# Smart-DataOps-Copilot: the daemon (Spark driver, local[*] by default) with Python and Java 17.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 dataops
WORKDIR /app
COPY pyproject.toml README.md ./
COPY streaming ./streaming
COPY connectors ./connectors
RUN pip install --no-cache-dir .

USER dataops
WORKDIR /data
ENV PYSPARK_PYTHON=/usr/local/bin/python \
    DATAOPS_LANDING__PATH=/data/landing \
    DATAOPS_SPARK__CHECKPOINT_DIR=/data/checkpoints \
    DATAOPS_METRICS__HOST=0.0.0.0
VOLUME ["/data"]
EXPOSE 9108
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=3)"
ENTRYPOINT ["dataops"]
CMD ["run"]
