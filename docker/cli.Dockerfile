# The light client: cifarq without the `worker` extra, so no torch. docker-compose.yml builds
# the `client` stage for `cli`, `migrate` and `beat`, and the `flower` stage for Flower.
#
# Build arguments:
#   PYTHON_IMAGE  the base image: the official one by default; docker/base-images/build.sh makes a
#                 stand-in from Debian packages for hosts that cannot pull (compose:
#                 CIFARQ_PYTHON_IMAGE).
# Build secret:
#   pip_ca        a CA bundle for pip, behind a TLS-intercepting proxy (docker/pip-install.sh).
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE} AS client

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PIP_NO_COMPILE=1 \
    PATH=/opt/cifarq/bin:$PATH

# Same uid/gid as the worker image. cifarq lives in a virtual environment of its own, the same
# way on the official image and on a Debian base whose Python is "externally managed".
RUN groupadd --system --gid 10001 cifarq \
 && useradd --system --uid 10001 --gid cifarq --home-dir /home/cifarq --create-home \
        --shell /usr/sbin/nologin cifarq \
 && python3 -m venv /opt/cifarq \
 && pip uninstall --quiet --yes setuptools  # what a venv brings beside pip; cifarq's build gets its own

WORKDIR /src

# Dependencies first, read from pyproject.toml alone: a code change does not reinstall them.
COPY pyproject.toml docker/pip-install.sh ./
RUN --mount=type=bind,source=docker/wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    ./pip-install.sh --deps

# shared/ and api_cli/ only: worker/ is what `cifarq worker` runs, and it needs torch.
COPY README.md ./
COPY shared ./shared
COPY api_cli ./api_cli
RUN --mount=type=bind,source=docker/wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    ./pip-install.sh --project \
 && rm -rf /src/build

USER 10001:10001
WORKDIR /home/cifarq

ENTRYPOINT ["cifarq"]
CMD ["--help"]


# Flower, the Celery monitor (compose profile `monitoring`): the `monitoring` extra on top.
FROM client AS flower
USER root
WORKDIR /src
RUN --mount=type=bind,source=docker/wheelhouse,target=/wheelhouse \
    --mount=type=secret,id=pip_ca \
    --mount=type=cache,target=/root/.cache/pip \
    ./pip-install.sh --deps monitoring
COPY docker/flower-entrypoint.sh /usr/local/bin/flower-entrypoint
USER 10001:10001
WORKDIR /home/cifarq
ENTRYPOINT ["flower-entrypoint"]
CMD ["--port=5555"]
