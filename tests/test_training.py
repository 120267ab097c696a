"""The tutorial recipe's fast step (worker/recipes/tutorial_step.py) against the tutorial's own
autograd loop: same weights to float rounding, the last short batch, resume bit for bit."""
from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from shared.jobspec import TrainConfig
from tests.fakedata import write_cifar10
from tests.recording_hooks import Recorder
from worker.data import Split, load_split
from worker.model import Net, normalize
from worker.recipes.tutorial_step import TutorialStep
from worker.loop import Resume
from worker.train import train

CPU = torch.device("cpu")




@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"))  # 200 training images


def reference_loop(config: TrainConfig, split, epochs: int) -> Net:
    """The tutorial's loop (autograd, torch.optim.SGD) on the batches cifarq's loop sees."""
    torch.manual_seed(config.seed)
    model = Net(config.width)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    n = len(split)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch))
        for step in range(math.ceil(n / config.batch_size)):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            optimizer.zero_grad()
            criterion(model(normalize(split.images[batch])), split.labels[batch]).backward()
            optimizer.step()
    return model


def max_difference(a: nn.Module, b: nn.Module) -> float:
    return max((p - q).abs().max().item() for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("width, momentum", [(6, 0.9), (9, 0.0)])
def test_step_matches_autograd_for_a_few_steps(width, momentum):
    generator = torch.Generator().manual_seed(3)
    xs = torch.rand(8, 4, 3, 32, 32, generator=generator) * 2 - 1
    ys = torch.randint(0, 10, (8, 4), generator=generator)
    torch.manual_seed(0)
    reference = Net(width)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.01, momentum=momentum)
    torch.manual_seed(0)
    fast = Net(width)
    fast_opt = torch.optim.SGD(fast.parameters(), lr=0.01, momentum=momentum)
    step = TutorialStep(fast, fast_opt)
    for x, y in zip(xs, ys):
        ref_opt.zero_grad()
        ref_loss = nn.CrossEntropyLoss()(reference(x), y)
        ref_loss.backward()
        ref_opt.step()
        loss = step(x.transpose(0, 1), y)  # the step takes channel-major input
        assert loss.item() == pytest.approx(ref_loss.item(), abs=1e-5)
    assert max_difference(reference, fast) < 1e-6
    assert max_difference(reference, Net(width)) > 1e-3, "the weights did move"
    # The optimizer's state is the one torch.optim.SGD keeps: a checkpoint is interchangeable.
    if momentum:
        for p, q in zip(reference.parameters(), fast.parameters()):
            assert torch.allclose(ref_opt.state[p]["momentum_buffer"], fast_opt.state[q]["momentum_buffer"], atol=1e-6)


def test_train_matches_the_tutorial_loop_with_a_short_last_batch(data_dir):
    # 200 images at batch 3: 66 full batches and a last one of 2.
    config = TrainConfig(epochs=2, batch_size=3, lr=0.01, seed=5, log_every=1000)
    split = load_split(data_dir, train=True)
    hooks = Recorder()
    model = train(config, data_dir=data_dir, device=CPU, hooks=hooks)
    assert max_difference(model, reference_loop(config, split, epochs=2)) < 1e-5
    assert [e["epoch"] for e in hooks.epochs] == [1, 2] and all(math.isfinite(e["loss"]) for e in hooks.epochs)


def test_resume_is_bit_identical(data_dir):
    config = TrainConfig(epochs=2, batch_size=4, lr=0.01, seed=2, log_every=1000)
    straight = Recorder()
    train(config, data_dir=data_dir, device=CPU, hooks=straight)
    first = Recorder()
    train(config.model_copy(update={"epochs": 1}), data_dir=data_dir, device=CPU, hooks=first)
    state = torch.load(io.BytesIO(first.epochs[0]["train_state"]), weights_only=True)
    assert state["epochs_done"] == 1 and state["config"]["recipe"] == "tutorial"
    resume = Resume(model_state=torch.load(io.BytesIO(first.epochs[0]["weights"]), weights_only=True),
                    optimizer_state=state["optimizer"], epochs_done=1)
    resumed = Recorder()
    train(config, data_dir=data_dir, device=CPU, hooks=resumed, resume=resume)
    assert first.epochs[0]["weights"] == straight.epochs[0]["weights"]
    straight_final = torch.load(io.BytesIO(straight.epochs[1]["weights"]), weights_only=True)
    resumed_final = torch.load(io.BytesIO(resumed.epochs[0]["weights"]), weights_only=True)
    assert all(torch.equal(straight_final[k], resumed_final[k]) for k in straight_final)


def test_cpu_threads_are_restored(data_dir):
    before = torch.get_num_threads()
    train(TrainConfig(epochs=1, log_every=1000), data_dir=data_dir, device=CPU, hooks=Recorder())
    assert torch.get_num_threads() == before


def test_cuda_graph_capture_falls_back_to_eager_and_keeps_the_weights():
    """Where capture fails (here: no CUDA at all), the loop runs eagerly on the same weights."""
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = Recorder()
    from worker.recipes.tutorial import capture_step

    assert capture_step(TutorialStep(model, optimizer), 4, torch.device("cpu"), hooks) is None
    assert any("CUDA graph capture failed" in line for line in hooks.lines)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_max_pool_and_its_gradient_match_max_pool2d_with_ties():
    from worker.recipes.tutorial_step import max_pool, max_pool_backward

    generator = torch.Generator().manual_seed(0)
    z = torch.randint(0, 3, (5, 4, 10, 10), generator=generator).float()  # ties everywhere
    grad = torch.randn(5, 4, 5, 5, generator=generator)
    reference_in = z.clone().requires_grad_()
    reference = torch.nn.functional.max_pool2d(reference_in, 2)
    reference.backward(grad)
    pooled, route = max_pool(z)
    assert torch.equal(pooled, reference.detach())
    assert torch.equal(max_pool_backward(grad, route), reference_in.grad)


def test_compiled_cpu_step_matches_the_tutorial_loop(data_dir):
    # Batch 4 (the default's shapes, so the compile is shared with a real-data job through the
    # session's cache) over 198 images: 49 compiled steps and one short eager step per epoch.
    config = TrainConfig(epochs=2, lr=0.01, seed=5, log_every=1000)
    full = load_split(data_dir, train=True)
    split = Split(full.images[:198], full.labels[:198], full.classes)
    hooks = Recorder()
    model = train(config, data_dir=data_dir, device=CPU, hooks=hooks, train_set=split, cpu_compile="always")
    # Built here, or loaded where the session's cache has the package of this shape already.
    assert any(line.startswith(("step compiled in", "step compiled ahead of time, loaded in"))
               for line in hooks.lines), hooks.lines
    # Compiled ahead, in a phase of its own, on zeros whose step is undone: the weights match.
    assert hooks.phases == ["compiling", "training"] and hooks.compile_seconds > 0
    assert max_difference(model, reference_loop(config, split, epochs=2)) < 1e-5


def test_a_job_that_started_eagerly_takes_the_warm_up_s_step_once_it_is_in(data_dir, monkeypatch, tmp_path):
    """A fresh host's first job runs eagerly while its worker's warm-up builds the step beside it;
    once the warm-up's package and figures are in, the job loads the package for its steps left."""
    import os
    import shutil

    from worker.compile_cache import package_path, shape_key, write_figures
    from worker.recipes.tutorial import CompiledStep

    session_cache = os.environ["TORCHINDUCTOR_CACHE_DIR"]
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # no figures yet: the job starts eagerly

    class WarmUpDoneAfterTheFirstEpoch(Recorder):
        def epoch_done(self, **report):
            super().epoch_done(**report)
            if report["epoch"] != 1:
                return
            # What the warm-up leaves, package first and figures last: the package is built (or
            # loaded) in the session's cache, where other tests share it, and copied into this one.
            net = Net()
            step = TutorialStep(net, torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9))
            key = shape_key(step, 4)  # in the job's own thread count
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = session_cache
            try:
                assert CompiledStep(step, Recorder(), wait_for_warm_up=False).compile_now(4, CPU) > 0
                built = package_path(key)
            finally:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp_path)
            package_path(key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(built, package_path(key))
            self.lines.append("(the warm-up is done)")
            write_figures(key, {"first_compile_seconds": 30.0, "cached_compile_seconds": 0.01,
                                "eager_seconds_per_step": 0.001, "compiled_seconds_per_step": 0.0005})

    config = TrainConfig(epochs=3, lr=0.01, seed=5, log_every=1000)
    full = load_split(data_dir, train=True)
    split = Split(full.images[:198], full.labels[:198], full.classes)
    hooks = WarmUpDoneAfterTheFirstEpoch()
    model = train(config, data_dir=data_dir, device=CPU, hooks=hooks, train_set=split, cpu_compile="auto")
    done = hooks.lines.index("(the warm-up is done)")
    assert not any(line.startswith("step compiled") for line in hooks.lines[:done])  # epoch 1: eager
    assert hooks.lines[done + 1].startswith("step compiled ahead of time, loaded in")
    assert hooks.lines[done + 2] == ("the worker's warm-up has compiled the step: it runs compiled from epoch 2, "
                                     "step 1 on")
    assert hooks.compile_seconds > 0
    # The load ran a step on zeros and put the weights back: the same weights as the tutorial's loop.
    assert max_difference(model, reference_loop(config, split, epochs=3)) < 1e-5


def test_the_step_is_compiled_only_where_it_pays_and_can(monkeypatch, tmp_path):
    from worker.recipes.tutorial import COMPILE_MIN_STEPS, compile_step
    from worker.compile_cache import package_path, shape_key, write_figures

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # no warm-up figures yet
    torch.manual_seed(0)
    model = Net()
    step = TutorialStep(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    hooks = Recorder()
    assert compile_step(step, hooks, mode="auto", batch_size=4, steps=COMPILE_MIN_STEPS - 1) is None
    assert compile_step(step, hooks, mode="never", batch_size=4, steps=10 * COMPILE_MIN_STEPS) is None
    assert compile_step(step, hooks, mode="auto", batch_size=4, steps=COMPILE_MIN_STEPS) is not None
    # With the warm-up's figures for this shape: where the steps' saving repays the cached
    # compile 1.5 times (0.1 ms a step, 2 s: from 30,000 steps on), and for this shape only.
    write_figures(shape_key(step, 4), {"first_compile_seconds": 20.0, "cached_compile_seconds": 2.0,
                                        "eager_seconds_per_step": 0.0006, "compiled_seconds_per_step": 0.0005})
    assert compile_step(step, hooks, mode="auto", batch_size=4, steps=30_001) is not None
    assert compile_step(step, hooks, mode="auto", batch_size=4, steps=29_999) is None
    assert hooks.lines.pop() == ("the step runs eagerly: compiled, its 29999 steps would save 3.0 s, less than 1.5x "
                                 "the 2.0 s its compile takes (this worker's warm-up figures)")
    assert compile_step(step, hooks, mode="auto", batch_size=8, steps=30_001) is None  # no figures: cold rule
    write_figures(shape_key(step, 4), {"first_compile_seconds": 20.0, "cached_compile_seconds": 2.0,
                                        "eager_seconds_per_step": 0.0005, "compiled_seconds_per_step": 0.0006})
    assert compile_step(step, hooks, mode="auto", batch_size=4, steps=10 * COMPILE_MIN_STEPS) is None  # slower
    assert hooks.lines.pop().startswith("the step runs eagerly: compiled, its 1000000 steps would save 0.0 s")
    assert compile_step(step, hooks, mode="always", batch_size=4, steps=1) is not None
    monkeypatch.setenv("CXX", "no-such-compiler")
    assert compile_step(step, hooks, mode="always", batch_size=4, steps=1) is None
    assert hooks.lines == ["no C++ compiler (no-such-compiler) to compile the step on this worker; it runs eagerly"]
    # A package built before (a worker image carries one) loads without a compiler.
    package_path(shape_key(step, 4)).parent.mkdir(parents=True)
    package_path(shape_key(step, 4)).write_bytes(b"built elsewhere")
    assert compile_step(step, hooks, mode="always", batch_size=4, steps=1) is not None


def test_a_package_that_does_not_load_runs_the_step_eagerly_and_is_built_again_next_time(monkeypatch, tmp_path):
    from worker.compile_cache import package_path, shape_key
    from worker.recipes.tutorial import CompiledStep

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model, twin = Net(), Net()
    twin.load_state_dict(model.state_dict())
    step = TutorialStep(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    reference = TutorialStep(twin, torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9))
    package = package_path(shape_key(step, 4))
    package.parent.mkdir(parents=True)
    package.write_bytes(b"not a package: a disk that filled, a copy cut short")
    hooks = Recorder()
    inputs, targets = torch.randn(3, 4, 32, 32), torch.randint(0, 10, (4,))
    compiled = CompiledStep(step, hooks, wait_for_warm_up=False)
    assert torch.equal(compiled(inputs, targets), reference(inputs, targets))  # the eager step, once
    assert compiled.state == "failed" and hooks.lines[0].startswith("compiling the step failed (")
    assert hooks.lines[0].endswith("running it eagerly")
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    assert not package.exists()  # the next compile of this shape builds it anew


def test_a_load_only_step_never_builds(monkeypatch, tmp_path):
    """What a job that took the warm-up's step mid-run does where the package went missing (a
    cleared cache): it runs on eagerly rather than building for a minute in the middle of the job."""
    from worker.compile_cache import package_path, shape_key
    from worker.recipes.tutorial import CompiledStep

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = Net()
    step = TutorialStep(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    hooks = Recorder()
    compiled = CompiledStep(step, hooks, wait_for_warm_up=False, build_missing=False)
    compiled.compile_now(4, CPU)
    assert compiled.state == "failed" and hooks.lines[0].startswith("compiling the step failed (FileNotFoundError")
    assert not package_path(shape_key(step, 4)).exists()


def test_the_package_called_through_its_loader_is_the_package_called_through_its_own_call():
    """worker/aot_step.bound_step hands the loader the flat list that the package's __call__
    would make: same losses and same weights, to the bit, step after step."""
    import torch._inductor

    from worker.aot_step import bound_step, load_or_build, step_tensors
    from worker.compile_cache import package_path, shape_key

    torch.manual_seed(0)
    models = [Net(), Net()]
    models[1].load_state_dict(models[0].state_dict())
    initial = [p.detach().clone() for p in models[0].parameters()]
    steps = [TutorialStep(m, torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)) for m in models]
    inputs, targets = torch.randn(5, 3, 4, 32, 32), torch.randint(0, 10, (5, 4))
    load_or_build(steps[0], inputs[0], targets[0])  # built where this session's cache has none yet
    package = torch._inductor.aoti_load_package(str(package_path(shape_key(steps[0], 4))))
    assert callable(package.loader.run)  # the path under test, not the fallback

    class OwnCallOnly:  # what bound_step falls back to where a package has no loader
        def __call__(self, *args):
            return package(*args)

    direct, own_call = bound_step(package, step_tensors(steps[0])), bound_step(OwnCallOnly(), step_tensors(steps[1]))
    for x, y in zip(inputs, targets):
        assert torch.equal(direct(x, y), own_call(x, y))
    assert all(torch.equal(a, b) for a, b in zip(models[0].parameters(), models[1].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(models[0].parameters(), initial))  # they did train


def test_the_compiled_step_s_key_follows_the_code_it_is_built_from(tmp_path, monkeypatch):
    """A cache kept across an upgrade (a volume at CIFARQ_HOME) must not hand a job a package
    built from another version of the step: each file it is built from is in the key."""
    import shutil

    import worker
    from worker import compile_cache
    from worker.compile_cache import STEP_CODE, STEP_SOURCES, shape_key, step_code

    here = Path(worker.__file__).parent
    for name in STEP_SOURCES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(here / name, tmp_path / name)
    assert step_code(tmp_path) == STEP_CODE
    for name in STEP_SOURCES:
        before = step_code(tmp_path)
        with open(tmp_path / name, "a") as f:
            f.write("# a change\n")
        assert step_code(tmp_path) != before, name
    # ... and the digest is in the key.
    model = Net()
    step = TutorialStep(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    key = shape_key(step, 4)
    monkeypatch.setattr(compile_cache, "STEP_CODE", step_code(tmp_path))
    assert shape_key(step, 4) != key


def test_cpu_compile_setting_is_checked():
    from shared.errors import CifarqError
    from shared.settings import Settings

    assert Settings.from_env({}).cpu_compile == "auto"
    assert Settings.from_env({"CIFARQ_CPU_COMPILE": "never"}).cpu_compile == "never"
    assert Settings.from_env({}).cpu_warm_up == "auto"
    assert Settings.from_env({"CIFARQ_CPU_WARM_UP": "never"}).cpu_warm_up == "never"
    with pytest.raises(CifarqError, match=r"^invalid CIFARQ_CPU_COMPILE 'sometimes': expected one of auto, always, never$"):
        Settings.from_env({"CIFARQ_CPU_COMPILE": "sometimes"})
