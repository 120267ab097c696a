"""`cifarq submit train|evaluate`: validate, write the job row, then send the message."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from api_cli.options import DeviceOption, JsonOption, QueueOption
from api_cli.output import print_json, say
from shared.errors import CifarqError, shown
from shared.recipes import DEFAULT_RECIPE, DEFAULT_SEED, RECIPE_DEFAULTS
from shared.states import JobKind, JobStatus


# Job.queue is 64 characters; Celery and Redis take any name, but a queue is typed on command lines.
QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")


def _default(name: str) -> str:
    """'tutorial: 2, fast: 10': each recipe's default, for --help ('fast: 0.2' where only fast has one)."""
    tutorial, fast = RECIPE_DEFAULTS["tutorial"].get(name), RECIPE_DEFAULTS["fast"].get(name)
    return f"tutorial: {tutorial}, fast: {fast}" if tutorial is not None else f"fast: {fast}"


def train(
    recipe: Annotated[str, typer.Option(
        help="tutorial (the PyTorch tutorial's Net and SGD) or fast (airbench94-style ResNet-ish net, "
             "whitening, label smoothing, lookahead, test-time augmentation; built for a GPU: "
             "on a 2-core CPU one of its epochs takes about 8 minutes).")] = DEFAULT_RECIPE,
    epochs: Annotated[Optional[int], typer.Option(
        help=f"Passes over the training set (default {_default('epochs')}).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help=f"Images per mini-batch (default {_default('batch_size')}).", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option(
        help=f"SGD learning rate; fast: per 1024 examples (default {_default('lr')}).", show_default=False)] = None,
    momentum: Annotated[Optional[float], typer.Option(
        help=f"SGD momentum; fast: Nesterov (default {_default('momentum')}).", show_default=False)] = None,
    width: Annotated[Optional[int], typer.Option(
        help=f"tutorial: channels of the first conv (its exercise); fast: of the first block "
             f"(default {_default('width')}).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seeds the weights and the shuffling.")] = DEFAULT_SEED,
    log_every: Annotated[Optional[int], typer.Option(
        help=f"Mini-batches between log lines (default {_default('log_every')}).", show_default=False)] = None,
    label_smoothing: Annotated[Optional[float], typer.Option(
        help=f"Label smoothing of the loss, fast only (default {_default('label_smoothing')}).", show_default=False)] = None,
    tta_level: Annotated[Optional[int], typer.Option(
        help=f"Test-time augmentation, fast only: 0 none, 1 mirror, 2 mirror + 1-pixel shifts "
             f"(default {_default('tta_level')}).", show_default=False)] = None,
    device: DeviceOption = "auto",
    queue: QueueOption = None,
    json_output: JsonOption = False,
) -> None:
    """Train on CIFAR-10 (the tutorial's Net by default), then evaluate on the test set.

    Example: cifarq submit train --epochs 2 --json; cifarq submit train --recipe fast
    """
    from shared.jobspec import TrainConfig, parse_config

    config = parse_config(TrainConfig, dict(recipe=recipe, epochs=epochs, batch_size=batch_size, lr=lr,
                                            momentum=momentum, width=width, seed=seed, log_every=log_every,
                                            label_smoothing=label_smoothing, tta_level=tta_level, device=device))
    # Read before the job exists: a worker can start it, and record an epoch, before this process
    # gets to the estimate, which would then cite the very job it warns about.
    warning = _fast_on_a_cpu_warning(config, queue) if config.recipe == "fast" else None
    job_id = submit(JobKind.train, config, queue)
    if warning:
        say(warning)
    _report(job_id, json_output)


def _fast_on_a_cpu_warning(config: Any, queue: Optional[str]) -> Optional[str]:
    """The fast recipe is built for a GPU: on a 2-core CPU one epoch of it took 8 minutes, against
    under 2 for the whole default job. Said when the job is for the CPU, or when every live worker
    that could take it is a CPU worker; with an estimate when such a job was recorded here."""
    from api_cli.progress import format_duration
    from shared.db import session_scope
    from shared.registry import live_workers
    from shared.results import recorded_epoch_seconds
    from shared.states import queue_for_device

    with session_scope() as session:
        if config.device != "cpu":
            devices = {w.device for w in live_workers(session=session, queue=queue or queue_for_device(config.device))}
            if config.device != "auto" or devices != {"cpu"}:
                return None
        recorded = recorded_epoch_seconds(session=session, recipe="fast", device="cpu")
    if recorded:
        job_id, per_epoch = recorded
        estimate = (f"about {format_duration(config.epochs * per_epoch)} for {config.epochs} epochs "
                    f"({per_epoch:.0f} s each, as job {job_id} took on a CPU here)")
    else:
        estimate = "minutes per epoch on a few cores (8 min on 2 cores), against under 2 min for the default job"
    return (f"warning: --recipe fast is built for a GPU; on a CPU it takes {estimate}. "
            "For a quick CPU run, leave out --recipe fast")


def evaluate(
    checkpoint: Annotated[Optional[str], typer.Option(
        help="JOB[:EPOCH]: a train job's checkpoint (its latest when no epoch is given).")] = None,
    weights: Annotated[Optional[Path], typer.Option(
        help="A state dict saved as the tutorial does: torch.save(net.state_dict(), PATH).")] = None,
    device: DeviceOption = "auto",
    queue: QueueOption = None,
    json_output: JsonOption = False,
) -> None:
    """Test-set accuracy, per class, of a stored checkpoint or of a weights file.

    Example: cifarq submit evaluate --checkpoint 3f2a9c1e:2
    """
    from shared.jobspec import EvaluateConfig, parse_config

    if (checkpoint is None) == (weights is None):
        raise CifarqError("give exactly one of --checkpoint JOB[:EPOCH] or --weights FILE")
    parse_config(EvaluateConfig, dict(device=device))  # a bad flag is reported before any look-up
    if checkpoint is not None:
        from shared.db import session_scope
        from shared.jobs import find_checkpoint

        source_job, epoch = parse_checkpoint_ref(checkpoint)
        with session_scope() as session:
            found = find_checkpoint(session=session, job_id=source_job, epoch=epoch)
            config = parse_config(EvaluateConfig, dict(source_job=found.job_id, source_epoch=found.epoch, device=device))
        job_id = submit(JobKind.evaluate, config, queue)
    else:
        from shared.weights_file import read_weights_file

        data = read_weights_file(weights)
        config = parse_config(EvaluateConfig, dict(weights_file=weights.name, device=device))
        job_id = submit(JobKind.evaluate, config, queue, upload=data)
    _report(job_id, json_output)


def parse_checkpoint_ref(ref: str) -> tuple[str, Optional[int]]:
    job_id, _, epoch = ref.partition(":")
    if not job_id:
        raise CifarqError(f"invalid --checkpoint {ref!r}: expected JOB or JOB:EPOCH")
    if not epoch:
        return job_id, None
    if not (epoch.isascii() and epoch.isdigit()):  # "²".isdigit() is True, int("²") fails
        raise CifarqError(f"invalid --checkpoint {ref!r}: EPOCH must be a whole number")
    return job_id, int(epoch)


def queue_of(config: Any, queue: Optional[str]) -> str:
    """The queue a job goes to: the one given, checked, or the one its device implies."""
    from shared.states import queue_for_device

    queue = queue or queue_for_device(config.device)
    if not QUEUE_NAME.match(queue):
        raise CifarqError(f"invalid --queue {shown(queue)}: up to 64 letters, digits and . _ - :, "
                          "starting with a letter or digit")
    return queue


def submit(kind: JobKind, config: Any, queue: Optional[str], upload: Optional[bytes] = None,
           sweep_id: Optional[str] = None) -> str:
    """The job row is written (status queued, owing its message) before the message is sent: a
    worker that takes the message always finds its row; a message that cannot be sent takes the
    row back; a submitter killed in between leaves the debt to a reaper (shared/jobs.py).

    A plain job (no upload, no sweep) is written through the database's own driver where it can
    be (shared/job_write.py), and its message pushed without Celery where the broker is a plain
    Redis (shared/broker_push.py): importing the ORM, Celery and redis-py was over half of the
    call's wall time (docs/benchmarks.md, "The client's own time")."""
    from shared.settings import get_settings

    settings = get_settings()
    queue = queue_of(config, queue)
    quick = None
    if upload is None and sweep_id is None:
        from shared.job_write import insert_queued_job

        quick = insert_queued_job(settings.database, kind=kind, params=config.model_dump(), queue=queue,
                                  lease_seconds=settings.send_lease_seconds)
    if quick is not None:
        job_id, lease = quick
    else:
        from shared.db import session_scope
        from shared.jobs import create_job, store_uploaded_weights

        with session_scope() as session:
            job = create_job(session=session, kind=kind, params=config.model_dump(), queue=queue, sweep_id=sweep_id)
            if upload is not None:
                store_uploaded_weights(session=session, job_id=job.id, weights=upload)
            job_id, lease = job.id, job.resend_after
    _send_and_settle([(job_id, lease)], lambda: _send_job(settings, job_id, queue), queue)
    return job_id


def _send_job(settings: Any, job_id: str, queue: str) -> None:
    """Straight onto Redis where the broker is a plain redis:// one (shared/broker_push.py), else
    (or where that fails) through Celery, which retries and explains."""
    from shared.broker_push import push_job

    if not push_job(settings.broker, settings.broker_transport_options, job_id, queue):
        from shared.celery_app import send_job

        send_job(job_id, queue)


def submit_pack(configs: list[Any], queue: Optional[str], *, sweep_id: str, pack_id: str) -> list[str]:
    """The points of a pack: their rows in one transaction (each owing its message), then one
    message for them all. A pack that cannot be sent takes all its rows back; a point whose
    debt a reaper pays later runs alone (shared/jobs.py), which is correct, only not packed."""
    from shared.celery_app import send_pack
    from shared.db import session_scope
    from shared.jobs import create_job

    queue = queue_of(configs[0], queue)
    with session_scope() as session:
        jobs = [create_job(session=session, kind=JobKind.train, params=config.model_dump(), queue=queue,
                           sweep_id=sweep_id, pack_id=pack_id) for config in configs]
        leases = [(job.id, job.resend_after) for job in jobs]
    job_ids = [job_id for job_id, _ in leases]
    _send_and_settle(leases, lambda: send_pack(job_ids, queue), queue)
    return job_ids


def _send_and_settle(leases: list[tuple[str, Any]], send, queue: str) -> None:
    """Send the message of rows already written (each owing it, under `lease`), then settle what
    the sending left. If it cannot be sent, nothing was queued: the rows are taken back, so that
    nothing half-done is left behind. Once sent, the debts are cleared (a failure there is
    harmless: a reaper's second message), and a word is said where no live worker consumes the queue."""
    from shared.job_write import messages_sent
    from shared.settings import get_settings, redact_url

    try:
        send()
    except Exception as exc:
        from shared.db import session_scope
        from shared.jobs import delete_job

        with session_scope() as session:
            for job_id, _ in leases:
                delete_job(session=session, job_id=job_id)
        broker = redact_url(get_settings().broker)
        raise CifarqError(f"broker unreachable at {broker}: {exc}; nothing was queued") from exc
    consumers = messages_sent(get_settings().database, leases, queue)  # None: the ORM's way
    if consumers is None:
        _orm_messages_sent(leases)
    _warn_if_no_worker_consumes(queue, consumers)


def _orm_messages_sent(leases: list[tuple[str, Any]]) -> None:
    from shared.db import session_scope
    from shared.jobs import message_sent

    try:
        with session_scope() as session:
            for job_id, lease in leases:
                message_sent(session=session, job_id=job_id, lease=lease)
    except Exception:  # queued and sent; a reaper's second message is harmless
        pass


_WARNED: set[str] = set()  # the queues warned about in this process


def _warn_if_no_worker_consumes(queue: str, consumers: Optional[int]) -> None:
    """A job on a queue that no live worker consumes (a --device cuda job where every worker is a
    CPU worker, a queue of the user's own naming, no worker started yet) would wait without a
    word. It is queued all the same: a worker may be on its way. Said once per queue and process
    (a sweep sends many jobs to one queue). `consumers`: counted already, or None."""
    if queue in _WARNED:
        return
    if consumers is None:
        from shared.db import session_scope
        from shared.registry import live_workers

        with session_scope() as session:
            consumers = len(live_workers(session=session, queue=queue))
    _WARNED.add(queue)
    if not consumers:
        from shared.states import nobody_serves

        say(f"warning: {nobody_serves(queue)}; the job waits until one does")


def _report(job_id: str, json_output: bool) -> None:
    if json_output:
        print_json({"id": job_id, "status": JobStatus.queued.value})
    else:
        typer.echo(job_id)
        say(f"queued; follow it with: cifarq wait {job_id}")
