# The GPU worker: cifarq with the `worker` extra (torch and torchvision, pinned in
# pyproject.toml; the x86_64 wheel of torch is a CUDA build that brings its own CUDA libraries,
# so only the host's NVIDIA driver and the NVIDIA container toolkit are needed). Built by
# docker-compose.yml as `worker`. The same image runs CPU workers (docker-compose.cpu.yml).
#
# Build arguments and the build secret: as in docker/cli.Dockerfile.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# NVIDIA_DRIVER_CAPABILITIES: what the NVIDIA container runtime mounts in (CUDA, nvidia-smi).
# CIFARQ_HOME: the worker's state, where the build below leaves the compiled CPU step.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_COMPILE=1 \
    PATH=/opt/cifarq/bin:$PATH \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CIFARQ_HOME=/home/cifarq/.cifarq

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

# g++: a CPU worker's tutorial step runs compiled by AOTInductor, which builds it with g++
# (worker/aot_step.py): at the end of this build, for this host's CPU, and at a worker's start on
# a host whose CPU differs. Its own layer after the dependencies: it does not rebuild them.
# CPU_STEP (compose: CIFARQ_WORKER_CPU_STEP): `compiled`, or `eager` for an image without g++ and
# without the step (~320 MB less; for GPU-only deployments, or a build host with no Debian
# mirror), whose CPU jobs run the step eagerly.
ARG CPU_STEP=compiled
RUN case "$CPU_STEP" in \
      compiled) command -v g++ >/dev/null || { apt-get update -qq \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends g++ >/dev/null \
        && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb; } ;; \
      eager) ;; \
      *) echo "CPU_STEP must be compiled or eager, not '$CPU_STEP'" >&2; exit 1 ;; \
    esac

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

# CPU_STEP=compiled: the worker's warm-up, run once here: the default CPU step compiled ahead of
# time and timed (worker/warm_up.py), kept in the image's CIFARQ_HOME. A new container on a host
# of the same CPU (model and instruction set extensions; the usual case: images are built where
# they run, or on the same hardware) loads it for its first job, instead of running that job
# eagerly beside a 15-30 s build. On another CPU the key differs and the worker builds its own at
# start. A build that cannot compile the step fails here rather than ship a worker that would
# run every CPU job eagerly.
# Inductor's default cache in /tmp (precompiled headers there, before worker/aot_step.py turned
# them off: ~290 MB) only speeds up later builds: not kept.
RUN if [ "$CPU_STEP" = compiled ]; then \
      TORCHINDUCTOR_CACHE_DIR="$CIFARQ_HOME/cache/inductor" python3 -m worker.warm_up && rm -rf /tmp/torchinductor_*; \
    fi

ENTRYPOINT ["cifarq"]
CMD ["worker", "--gpu", "auto"]
