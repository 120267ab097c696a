# The GPU worker: cifarq with the `worker` extra (torch and torchvision from PyPI; the x86_64
# wheel of torch is a CUDA build that brings its own CUDA libraries, so only the host's NVIDIA
# driver and the NVIDIA container toolkit are needed). Built by docker-compose.yml as `worker`.
FROM python:3.11-slim

# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA container runtime mounts in (CUDA, nvidia-smi).
# No C++ compiler in the image: GPU jobs do not need one, and a CPU worker run from it trains the
# tutorial step eagerly (CIFARQ_CPU_COMPILE=auto says so in the job's log). Add `g++` to compile
# the step there (README, Configuration).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Fixed uid/gid, so that volumes and `--user` agree across hosts.
RUN groupadd --system --gid 10001 cifarq \
 && useradd --system --uid 10001 --gid cifarq --home-dir /home/cifarq --create-home \
        --shell /usr/sbin/nologin cifarq \
 && mkdir -p /data /artifacts \
 && chown cifarq:cifarq /data /artifacts

WORKDIR /src

# Dependencies first, read from pyproject.toml alone: this multi-GB layer is rebuilt only when
# pyproject.toml changes, not when the source or the README does.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["worker"]))' > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

COPY README.md ./
COPY shared ./shared
COPY worker ./worker
COPY api_cli ./api_cli
# Every dependency is already there: this only installs cifarq itself (and fails the build if
# the layer above missed a requirement that pip check can see).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install '.[worker]' \
 && pip check

USER 10001:10001
WORKDIR /home/cifarq

ENTRYPOINT ["cifarq"]
CMD ["worker", "--gpu", "auto"]
