# The light client: cifarq without the `worker` extra, so no torch. docker-compose.yml builds
# the `client` stage for `cli`, `migrate` and `beat`, and the `flower` stage for Flower.
FROM python:3.11-slim AS client

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Same uid/gid as the worker image.
RUN groupadd --system --gid 10001 cifarq \
 && useradd --system --uid 10001 --gid cifarq --home-dir /home/cifarq --create-home \
        --shell /usr/sbin/nologin cifarq

WORKDIR /src

# Dependencies first, read from pyproject.toml alone: the base requirements, no extra.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"]))' > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# worker/ is copied too: `cifarq beat` runs worker.reaper, which needs no torch. torch itself
# is not installed; only `cifarq worker` imports the modules that need it.
COPY README.md ./
COPY shared ./shared
COPY worker ./worker
COPY api_cli ./api_cli
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install . \
 && pip check

USER 10001:10001
WORKDIR /home/cifarq

ENTRYPOINT ["cifarq"]
CMD ["--help"]


# Flower, the Celery monitor (compose profile `monitoring`).
FROM client AS flower
USER root
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install 'flower==2.2.0'
USER 10001:10001
ENTRYPOINT ["celery"]
CMD ["-A", "shared.celery_app:app", "flower", "--port=5555"]
