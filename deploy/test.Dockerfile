# The test image (deploy/docker-compose.test.yml): the dev requirements, Debian's rabbitmq-server for
# the tests' private stream broker, and the repository installed in editable mode.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends rabbitmq-server systemd libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 --shell /bin/bash tester

WORKDIR /repo
COPY requirements.txt requirements-dev.txt requirements-queue.txt ./
RUN pip install -r requirements-dev.txt

COPY --chown=1000:1000 . .
RUN pip install --no-deps -e . && chown 1000:1000 /repo

USER 1000
CMD ["python", "-m", "pytest", "-q"]
