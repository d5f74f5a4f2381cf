# Training image: azaion/training. CUDA runtime matching the pinned torch 2.14.1 (torch.version.cuda == 13.0),
# non-root, offline (Ultralytics/Albumentations never reach for the network).
# Build from the repository root:  docker build -f deploy/training.Dockerfile -t azaion/training:dev .
FROM nvidia/cuda:13.0.0-runtime-ubuntu24.04

# The uid that owns the bind-mounted /azaion on the host.
ARG APP_UID=1000

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    YOLO_OFFLINE=1 \
    YOLO_AUTOINSTALL=0 \
    YOLO_CONFIG_DIR=/home/azaion/.config/azaion-training \
    NO_ALBUMENTATIONS_UPDATE=1 \
    HF_HUB_OFFLINE=1 \
    AZAION_ROOT_DIR=/azaion \
    AZAION_LOG_FORMAT=json

# libgl1/libglib: opencv-python's runtime libraries. Ubuntu's own pins move with its security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0t64 \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/venv \
    && (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid "${APP_UID}" --shell /usr/sbin/nologin azaion \
    && install -d -o azaion -g azaion /azaion

COPY requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt

COPY pyproject.toml README.md /src/
COPY src /src/src
RUN pip install --no-deps /src && rm -rf /src

USER ${APP_UID}
WORKDIR /home/azaion
# `azaion train` saves a checkpoint and exits on SIGTERM; `docker stop -t 600` gives it the time.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5m --timeout=60s --start-period=2m \
    CMD ["azaion", "health", "--check", "config", "--check", "disk", "--check", "gpu"]
ENTRYPOINT ["azaion"]
CMD ["train"]
