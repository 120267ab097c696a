"""shared/broker_push.py puts on Redis what cifarq's Celery app (`send_task`) puts there, field by
field, on the real Redis here; it speaks to a Redis that wants a password as redis-py does; and
where it does not push (a URL or options it does not take, a Redis that refuses or is away), it
says so and pushes nothing anywhere, so that Celery sends instead."""
from __future__ import annotations

import base64
import json
import socket
import threading
import uuid

import pytest
import redis

from shared.broker_push import job_message, push_job
from shared.states import RUN_JOB_TASK
from tests.conftest import REDIS_URL

# Different in every message, by design: ids, the sender's node name and its reply queue.
PER_MESSAGE = {("headers", "id"), ("headers", "root_id"), ("headers", "origin"), ("properties", "correlation_id"),
               ("properties", "reply_to"), ("properties", "delivery_tag")}
DATABASE = 0  # queues of this test's own naming, deleted afterwards: no other test's keys are touched


@pytest.fixture
def queue():
    """A queue name of its own on DATABASE, and a client there; its keys are deleted afterwards."""
    client = redis.Redis.from_url(f"{REDIS_URL}/{DATABASE}")
    name = f"cifarq-test-{uuid.uuid4().hex[:8]}"
    yield name, client
    client.delete(name, f"_kombu.binding.{name}", f"_kombu.binding_permanent.{name}")
    client.close()


def celerys_message(monkeypatch, tmp_path, broker_url: str, job_id: str, queue: str) -> dict:
    """What cifarq's own Celery app (shared/celery_app.py, with its settings) sends for the job."""
    from shared import settings
    from shared.celery_app import make_app

    monkeypatch.setenv("CIFARQ_HOME", str(tmp_path))
    monkeypatch.setenv("CIFARQ_BROKER_URL", broker_url)
    monkeypatch.delenv("CIFARQ_BROKER_TRANSPORT_OPTIONS", raising=False)
    settings.get_settings.cache_clear()
    try:
        app = make_app()
        app.send_task(RUN_JOB_TASK, args=[job_id], queue=queue)
        app.close()
    finally:
        settings.get_settings.cache_clear()
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


def test_the_pushed_message_is_celerys(queue, monkeypatch, tmp_path):
    name, client = queue
    url = f"{REDIS_URL}/{DATABASE}"
    assert push_job(url, {}, "0123456789abcdef", name)
    assert client.llen(name) == 1
    pushed = json.loads(client.rpop(name))
    celery = celerys_message(monkeypatch, tmp_path, url, "0123456789abcdef", name)
    pushed_fields, celery_fields = fields(pushed), fields(celery)
    assert pushed_fields.keys() == celery_fields.keys()
    differs = {path for path in celery_fields if pushed_fields[path] != celery_fields[path]}
    assert differs <= PER_MESSAGE, {path: (pushed_fields[path], celery_fields[path]) for path in differs - PER_MESSAGE}
    assert pushed_fields[("body",)] == [["0123456789abcdef"], {}, {"callbacks": None, "errbacks": None,
                                                                   "chain": None, "chord": None}]
    assert pushed["headers"]["id"] == pushed["headers"]["root_id"] == pushed["properties"]["correlation_id"]
    assert job_message(RUN_JOB_TASK, ["a"], name)["headers"]["id"] != pushed["headers"]["id"]


class FakeRedis:
    """A Redis that wants a password, on a local port: it records the commands it is sent and
    answers each with the next of `answers` (RESP lines)."""

    def __init__(self, answers: list[bytes]):
        self.answers, self.commands = answers, []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        connection, _ = self.server.accept()
        with connection, connection.makefile("rb") as requests:
            for answer in self.answers:
                count = int(requests.readline()[1:])
                command = []
                for _ in range(count):
                    size = int(requests.readline()[1:])
                    command.append(requests.read(size + 2)[:-2].decode())
                self.commands.append(command)
                connection.sendall(answer)

    def close(self):
        self.thread.join(timeout=10)
        self.server.close()


def test_a_password_and_a_database_are_given_as_redis_py_gives_them():
    fake = FakeRedis([b"+OK\r\n", b"+OK\r\n", b":1\r\n"])
    assert push_job(f"redis://us%40er:p%3Aw%2Fd%25@127.0.0.1:{fake.port}/5", {}, "0123456789abcdef", "q")
    fake.close()
    assert fake.commands[:2] == [["AUTH", "us@er", "p:w/d%"], ["SELECT", "5"]] and fake.commands[2][:2] == ["LPUSH", "q"]
    assert json.loads(fake.commands[2][2])["headers"]["argsrepr"] == "['0123456789abcdef']"

    fake = FakeRedis([b"+OK\r\n", b":1\r\n"])  # a password alone; database 0 is not selected
    assert push_job(f"redis://:secret@127.0.0.1:{fake.port}", {}, "0123456789abcdef", "q")
    fake.close()
    assert [command[:2] for command in fake.commands] == [["AUTH", "secret"], ["LPUSH", "q"]]

    for answers in ([b"-WRONGPASS invalid username-password pair\r\n"], [b"+OK\r\n", b":1"]):  # refused; cut off
        fake = FakeRedis(answers)
        assert push_job(f"redis://:secret@127.0.0.1:{fake.port}/0", {}, "0123456789abcdef", "q") is False
        fake.close()
        assert fake.commands[-1][0] == ("AUTH" if len(answers) == 1 else "LPUSH")


def test_where_it_does_not_push_it_pushes_nothing(queue):
    name, client = queue
    host = REDIS_URL.split("://", 1)[1]
    databases = int(client.config_get("databases")["databases"])
    refused = [
        (f"redis://{host}/{DATABASE}?socket_timeout=3", {}),  # options of the URL's own
        (f"redis://{host}/{DATABASE}", {"global_keyprefix": "x:"}),  # transport options: Celery applies them
        (f"rediss://{host}/{DATABASE}", {}),  # TLS
        ("filesystem://", {}),  # the embedded broker
        ("amqp://guest:guest@127.0.0.1:5672//", {}),
        ("redis://127.0.0.1:1/0", {}),  # away
        (f"redis://:wrong@{host}/{DATABASE}", {}),  # a password this Redis does not take
        (f"redis://someone@{host}/{DATABASE}", {}),  # a user without a password: redis-py's own rule
        (f"redis://{host}/{databases}", {}),  # a database it does not have: nothing may land in database 0
        (f"redis://{host}/x", {}),
        ("redis://[::1/0", {}),  # not a URL
    ]
    for broker_url, options in refused:
        assert push_job(broker_url, options, "0123456789abcdef", name) is False, broker_url
    assert client.llen(name) == 0
