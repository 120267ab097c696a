"""`cifarq submit train`'s message, pushed onto Redis as Celery's Redis transport puts it, without
importing Celery, kombu or redis-py: their imports, the app, the connection pool and the queue's
declaration were ~165 ms of a submit against PostgreSQL + Redis on 2 cores (0.85 s then, with
the ORM's write; 0.33 s now without either, docs/benchmarks.md).

Only the plain case: a `redis://` broker URL (host, port, database number, a password with or
without a user name) and no transport options of the user's (a key prefix, other priority
steps). Anything else, and any failure before Redis answers the push, returns False, and the
caller sends through Celery (shared/celery_app.py), which retries and explains; a push that
Redis took and whose answer was lost is then sent twice, which is harmless (a delivery of a job
already claimed does nothing).

The message is Celery's task protocol 2 ("Message Protocol" in Celery's docs) in kombu's
envelope, as `send_task` writes it for the anonymous exchange: an LPUSH onto the list named
after the queue (kombu's key for priority 0), where a worker's BRPOP finds it. Celery's send also
records the queue's binding (`_kombu.binding.<queue>`); the push does not, as nothing reads it
for the anonymous exchange, and a worker declares its own queues.
tests/test_broker_push.py compares it with Celery's own message field by field; every job the
tests submit against Redis reaches its worker this way.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from typing import Any
from urllib.parse import unquote, urlsplit

from shared.states import RUN_JOB_TASK

TIMEOUT_SECONDS = 5.0


def push_job(broker_url: str, transport_options: dict[str, Any], job_id: str, queue: str) -> bool:
    """Push the message that runs `job_id` onto `queue`; False where it was not pushed this way."""
    address = _plain_redis(broker_url)
    if address is None or transport_options:
        return False
    host, port, db, user, password = address
    commands = []
    if password is not None:
        commands.append(("AUTH", user, password) if user else ("AUTH", password))
    if db:
        commands.append(("SELECT", str(db)))
    commands.append(("LPUSH", queue, json.dumps(job_message(RUN_JOB_TASK, [job_id], queue))))
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT_SECONDS) as connection:
            replies = connection.makefile("rb")
            for command in commands:  # one at a time: after a failed SELECT, no push to database 0
                connection.sendall(_encode(command))
                if not _reply_ok(replies):
                    return False
            return True
    except (OSError, ValueError):
        return False


def job_message(task: str, args: list, queue: str) -> dict[str, Any]:
    """Celery 5's protocol-2 message for `task(*args)` on `queue`, in kombu's JSON envelope."""
    task_id = str(uuid.uuid4())
    body = json.dumps([args, {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
            "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
            "root_id": task_id, "parent_id": None, "argsrepr": repr(args), "kwargsrepr": "{}",
            "origin": f"gen{os.getpid()}@{socket.gethostname()}", "ignore_result": None,
            "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
        },
        "properties": {
            "correlation_id": task_id, "reply_to": "", "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
            "body_encoding": "base64", "delivery_tag": str(uuid.uuid4()),
        },
    }


def _plain_redis(url: str):
    """(host, port, db, user, password) of a plain redis:// URL, else None. A user name without a
    password is not plain: redis-py then authenticates as that user with an empty password."""
    try:
        parts = urlsplit(url)
        if parts.scheme != "redis" or parts.query or parts.fragment:
            return None
        port = parts.port or 6379
        db = int(parts.path.lstrip("/") or 0)
    except ValueError:  # a bad port, database number or IPv6 address
        return None
    if parts.username and parts.password is None:
        return None
    password = unquote(parts.password) if parts.password is not None else None
    return parts.hostname or "localhost", port, db, unquote(parts.username or ""), password


def _encode(command: tuple[str, ...]) -> bytes:
    """A command in RESP, Redis's protocol: an array of bulk strings."""
    items = [item.encode() for item in command]
    return b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(item), item) for item in items)


def _reply_ok(replies) -> bool:
    """One reply: "+OK" or an integer (LPUSH's new length) is success; an error ("-NOAUTH ...")
    or a closed connection is not."""
    line = replies.readline()
    if not line.endswith(b"\r\n"):
        raise ValueError("connection closed")
    return line[:1] in (b"+", b":")
