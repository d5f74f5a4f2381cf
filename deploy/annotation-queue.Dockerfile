# Annotation queue image: azaion/annotation-queue. Slim: only what `azaion queue consume` imports
# (requirements-queue.txt); the package goes in with --no-deps, so no torch/ultralytics/opencv.
# Build from the repository root:  docker build -f deploy/annotation-queue.Dockerfile -t azaion/annotation-queue:dev .
FROM python:3.11-slim-bookworm

# The uid that owns the bind-mounted /azaion on the host.
ARG APP_UID=1000

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AZAION_ROOT_DIR=/azaion \
    AZAION_LOG_FORMAT=json

RUN useradd --create-home --uid "${APP_UID}" --shell /usr/sbin/nologin azaion \
    && install -d -o azaion -g azaion /azaion

COPY requirements-queue.txt /tmp/requirements-queue.txt
RUN pip install -r /tmp/requirements-queue.txt && rm /tmp/requirements-queue.txt

COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install --no-deps /src && rm -rf /src

USER ${APP_UID}
WORKDIR /home/azaion
# The consumer commits its offset and exits on SIGTERM; `docker stop` allows 30 s (stop_grace_period).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5m --timeout=60s --start-period=1m \
    CMD ["azaion", "health", "--check", "config", "--check", "broker", "--check", "disk", "--check", "progress"]
ENTRYPOINT ["azaion"]
CMD ["queue", "consume"]
