# The GPU worker: cifarq with the `worker` extra (torch and torchvision, pinned in
# pyproject.toml; the x86_64 wheel of torch is a CUDA build that brings its own CUDA libraries,
# so only the host's NVIDIA driver and the NVIDIA container toolkit are needed). Built by
# docker-compose.yml as `worker`. The same image runs CPU workers (docker-compose.cpu.yml).
#
# Build arguments and the build secret: as in docker/cli.Dockerfile.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA container runtime mounts in (CUDA, nvidia-smi).
# No C++ compiler in the image: GPU jobs do not need one, and a CPU worker run from it trains the
# tutorial step eagerly (CIFARQ_CPU_COMPILE=auto says so in the job's log). Add `g++` to compile
# the step there (README, Configuration).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_COMPILE=1 \
    PATH=/opt/cifarq/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Fixed uid/gid, so that volumes and `--user` agree across hosts. /data and /artifacts belong
# to that user, so that the named volumes mounted there start out writable by it.
RUN groupadd --system --gid 10001 cifarq \
 && useradd --system --uid 10001 --gid cifarq --home-dir /home/cifarq --create-home \
        --shell /usr/sbin/nologin cifarq \
 && mkdir -p /data /artifacts \
 && chown cifarq:cifarq /data /artifacts \
 && python3 -m venv /opt/cifarq \
 && pip uninstall --quiet --yes setuptools  # what a venv brings beside pip; torch names its own

WORKDIR /src

# Dependencies first, read from pyproject.toml alone: this multi-GB layer is rebuilt only when
# pyproject.toml changes, not when the source or the README does.
COPY pyproject.toml docker/pip-install.sh ./
RUN --mount=type=bind,source=docker/wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    ./pip-install.sh --deps worker

COPY README.md ./
COPY shared ./shared
COPY worker ./worker
COPY api_cli ./api_cli
# Every dependency is already there: this only installs cifarq itself (and pip check fails the
# build if the layer above missed a requirement).
RUN --mount=type=bind,source=docker/wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    ./pip-install.sh --project worker \
 && rm -rf /src/build

USER 10001:10001
WORKDIR /home/cifarq

ENTRYPOINT ["cifarq"]
CMD ["worker", "--gpu", "auto"]
