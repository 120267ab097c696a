"""The tutorial's step for a pack: P copies of `Net`, each with its own weights, batch, learning
rate and momentum, trained by one sequence of batched ops (HFTA's "horizontal fusion").

It is worker/recipes/tutorial_step.py with a leading "point" dimension: each `addmm` becomes a
`baddbmm`, each `mm` a `bmm`, the im2col, pooling and col2im helpers are the same functions. Per
point the arithmetic is the standalone step's, so a packed point follows its standalone job up to
float rounding (tests/test_packed_training.py). At batch 4 a step of one net is bound by per-op
overhead; P nets cost those ~45 ops once.

The pack's weights live in stacked (P, ...) tensors while it trains. Each point keeps its own `Net`
and `torch.optim.SGD` (made exactly as its standalone job makes them); `write_back` copies the
point's slice into them, so its checkpoint is the standalone job's, byte for byte in layout.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from worker.model import Net
from worker.recipes.tutorial_step import TutorialStep, im2col, max_pool, max_pool_backward, threshold_backward


class PackedStep:
    """One SGD step of every point of the pack, on a batch per point.

    `points`: (model, optimizer) pairs of the same width; their momentum buffers are created as
    TutorialStep creates them. lr and momentum may differ from point to point.
    """

    # The tensors a compiled step takes as inputs and updates in place (worker/aot_step.py).
    TENSORS = ("params", "buffers", "lr", "momentum")

    def __init__(self, points: Sequence[tuple[Net, torch.optim.SGD]]):
        self.steps = [TutorialStep(model, optimizer) for model, optimizer in points]
        widths = {step.width for step in self.steps}
        if len(widths) != 1:
            raise ValueError(f"a pack's points share one width; got {sorted(widths)}")
        (self.width,) = widths
        device = self.steps[0].params[0].device
        self.size = len(self.steps)
        # (P, ...) copies of each of the ten parameters and of their momentum buffers.
        self.params = [torch.stack([step.params[i].detach() for step in self.steps]) for i in range(10)]
        self.buffers = [torch.stack([_buffer(step, i) for step in self.steps]) for i in range(10)]
        self.lr = torch.tensor([step.lr for step in self.steps], device=device)
        self.momentum = torch.tensor([step.momentum for step in self.steps], device=device)

    def write_back(self) -> None:
        """Each point's slice into its own Net and SGD state: what its checkpoint is made from."""
        with torch.no_grad():
            for p, step in enumerate(self.steps):
                for i, param in enumerate(step.params):
                    param.copy_(self.params[i][p])
                for i, buffer in enumerate(step.buffers):
                    buffer.copy_(self.buffers[i][p])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: normalised float, (P, 3, n, 32, 32), channel-major per point; y: int64 (P, n).
        Returns each point's mean loss, (P,), on the device."""
        w1, b1, w2, b2, w3, b3, w4, b4, w5, b5 = self.params
        P, c, n = self.size, self.width, x.shape[2]
        # -- forward; shapes for the default width c=6 --
        cols1 = im2col(x)                                                  # (P, 75, n*784)
        z1 = torch.baddbmm(b1.view(P, c, 1), w1.view(P, c, -1), cols1)     # (P, c, n*784) = conv1
        m1, route1 = max_pool(z1.view(P, c, n, 28, 28))                    # (P, c, n, 14, 14)
        h1 = m1.relu()
        cols2 = im2col(h1)                                                 # (P, 25c, n*100)
        z2 = torch.baddbmm(b2.view(P, 16, 1), w2.view(P, 16, -1), cols2)   # (P, 16, n*100) = conv2
        m2, route2 = max_pool(z2.view(P, 16, n, 10, 10))                   # (P, 16, n, 5, 5)
        f = m2.relu().transpose(1, 2).reshape(P, n, 400)                   # torch.flatten's order
        h3 = torch.baddbmm(b3.view(P, 1, -1), f, w3.transpose(1, 2)).relu_()    # (P, n, 120)
        h4 = torch.baddbmm(b4.view(P, 1, -1), h3, w4.transpose(1, 2)).relu_()   # (P, n, 84)
        logits = torch.baddbmm(b5.view(P, 1, -1), h4, w5.transpose(1, 2))      # (P, n, 10)
        log_p = logits.log_softmax(dim=2)
        picked = log_p.gather(2, y.view(P, n, 1))
        loss = picked.view(P, n).mean(1).neg()
        # -- backward: d(mean CE)/d logits = (softmax - onehot) / n --
        g5 = log_p.exp_().scatter_add_(2, y.view(P, n, 1), torch.full_like(picked, -1.0)).div_(n)
        g4 = threshold_backward(g5.bmm(w5), h4, 0)
        g3 = threshold_backward(g4.bmm(w4), h3, 0)
        gm2 = threshold_backward(g3.bmm(w3).view(P, n, 16, 5, 5).transpose(1, 2), m2, 0)
        gz2 = max_pool_backward(gm2, route2).view(P, 16, n * 100)
        cols_grad = w2.view(P, 16, -1).transpose(1, 2).bmm(gz2)            # (P, 25c, n*100)
        cols_grad = cols_grad.view(P, 25 * c, n, 100).transpose(1, 2).reshape(P * n, 25 * c, 100)
        gh1 = F.fold(cols_grad, (14, 14), 5).view(P, n, c, 14, 14)          # col2im
        gm1 = threshold_backward(gh1.transpose(1, 2), m1, 0)               # (P, c, n, 14, 14)
        gz1 = max_pool_backward(gm1, route1).view(P, c, n * 784)
        grads = [gz1.bmm(cols1.transpose(1, 2)).view_as(w1), gz1.sum(2), gz2.bmm(cols2.transpose(1, 2)).view_as(w2),
                 gz2.sum(2), g3.transpose(1, 2).bmm(f), g3.sum(1), g4.transpose(1, 2).bmm(h3), g4.sum(1),
                 g5.transpose(1, 2).bmm(h4), g5.sum(1)]
        # -- SGD with momentum per point, as torch.optim.SGD does it: buf = m * buf + g; p -= lr * buf --
        for param, buffer, grad in zip(self.params, self.buffers, grads):
            shape = (P,) + (1,) * (param.dim() - 1)
            buffer.mul_(self.momentum.view(shape)).add_(grad)
            param.addcmul_(self.lr.view(shape), buffer, value=-1.0)
        return loss


def _buffer(step: TutorialStep, i: int) -> torch.Tensor:
    # A point without momentum has no buffers (SGD keeps none); its stacked buffer stays a zero
    # that momentum 0 turns into the gradient itself at every step: p -= lr * g, as SGD does.
    return step.buffers[i].detach() if step.buffers else torch.zeros_like(step.params[i])
