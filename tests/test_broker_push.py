"""shared/broker_push.py puts on Redis what Celery's `send_task` puts there, field by field, on the
real Redis here; and where it does not push (a URL or options it does not take, a Redis that
refuses or is away), it says so and pushes nothing anywhere, so that Celery sends instead."""
from __future__ import annotations

import base64
import json
import uuid

import pytest
import redis

from shared.broker_push import job_message, push_job
from shared.states import RUN_JOB_TASK
from tests.conftest import REDIS_URL

# Different in every message, by design: ids, the sender's node name and its reply queue.
PER_MESSAGE = {("headers", "id"), ("headers", "root_id"), ("headers", "origin"), ("properties", "correlation_id"),
               ("properties", "reply_to"), ("properties", "delivery_tag")}


@pytest.fixture
def redis_db():
    """A Redis database of its own (emptied before and after), and its URL."""
    number = 1 + uuid.uuid4().int % 15
    client = redis.Redis.from_url(f"{REDIS_URL}/{number}")
    client.flushdb()
    yield client, f"{REDIS_URL}/{number}"
    client.flushdb()
    client.close()


def celerys_message(broker_url: str, job_id: str, queue: str) -> dict:
    from celery import Celery
    from kombu import Queue

    app = Celery("cifarq-test", broker=broker_url, set_as_current=False)
    app.conf.update(task_queues=[Queue(queue)], task_ignore_result=True, task_serializer="json")
    app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)
    app.close()
    client = redis.Redis.from_url(broker_url)
    message = json.loads(client.rpop(queue))
    client.close()
    return message


def fields(message: dict, prefix: tuple = ()) -> dict:
    """Every leaf of the message by its path, the body decoded."""
    flat = {}
    for key, value in message.items():
        if key == "body":
            value = json.loads(base64.b64decode(value))
        if isinstance(value, dict) and value:
            flat.update(fields(value, prefix + (key,)))
        else:
            flat[prefix + (key,)] = value
    return flat


def test_the_pushed_message_is_celerys(redis_db):
    client, url = redis_db
    queue = f"q-{uuid.uuid4().hex[:8]}"
    assert push_job(url, {}, "0123456789abcdef", queue)
    assert client.llen(queue) == 1
    pushed = json.loads(client.rpop(queue))
    celery = celerys_message(url, "0123456789abcdef", queue)
    pushed_fields, celery_fields = fields(pushed), fields(celery)
    assert pushed_fields.keys() == celery_fields.keys()
    differs = {path for path in celery_fields if pushed_fields[path] != celery_fields[path]}
    assert differs <= PER_MESSAGE, {path: (pushed_fields[path], celery_fields[path]) for path in differs - PER_MESSAGE}
    assert pushed_fields[("body",)] == [["0123456789abcdef"], {}, {"callbacks": None, "errbacks": None,
                                                                   "chain": None, "chord": None}]
    assert pushed["headers"]["id"] == pushed["headers"]["root_id"] == pushed["properties"]["correlation_id"]
    assert job_message(RUN_JOB_TASK, ["a"], queue)["headers"]["id"] != pushed["headers"]["id"]


def test_where_it_does_not_push_it_pushes_nothing(redis_db):
    client, url = redis_db
    queue = f"q-{uuid.uuid4().hex[:8]}"
    host = REDIS_URL.split("://", 1)[1]
    db0 = redis.Redis.from_url(f"{REDIS_URL}/0")
    refused = [
        (f"redis://{host}/{url.rsplit('/', 1)[1]}?socket_timeout=3", {}),  # options of the URL's own
        (url, {"global_keyprefix": "x:"}),  # transport options: Celery applies them
        (f"rediss://{host}/0", {}),  # TLS
        ("filesystem://", {}),  # the embedded broker
        ("amqp://guest:guest@127.0.0.1:5672//", {}),
        ("redis://127.0.0.1:1/0", {}),  # away
        (f"redis://:wrong@{host}/0", {}),  # a password this Redis does not take
        (f"redis://{host}/99", {}),  # a database it does not have: nothing may land in database 0
        (f"redis://{host}/x", {}),
    ]
    for broker_url, options in refused:
        assert push_job(broker_url, options, "0123456789abcdef", queue) is False, broker_url
    assert client.llen(queue) == 0 and db0.llen(queue) == 0
    db0.close()
