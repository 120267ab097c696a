"""The tutorial's training step (Net, CrossEntropyLoss, SGD with momentum) written out by hand.

Why: at batch 4 the step is ~12 MFLOP, and autograd, the optimizer's Python and the conv and
pool kernels' per-call setup cost several times the arithmetic. torch.profiler on a 2-core Xeon
(AVX-512), per step: oneDNN conv backward 2 x 290 us, conv forward 2 x 150 us, max-pool 2 x 90 us,
SGD.step 175 us of Python. Here the forward and backward are ~45 plain tensor ops and no
autograd graph:

- activations are kept channel-major, (C, n, H, W), so each conv is one im2col copy of
  strided views + one `addmm` with the bias, and its weight gradient one `mm`;
- a 2x2 max-pool is two `maximum`s of strided halves (pool before ReLU: they commute) that
  also keep where each maximum came from, ties to the first as in max_pool2d; its backward is
  two multiplies and two interleaves;
- conv2's input gradient is `fold` (col2im) of one `mm`;
- SGD with momentum is one fused op (`_fused_sgd_`) on the optimizer's own momentum buffers.

The math is the tutorial's, the same gradients up to float rounding (tests/test_training.py
checks the weights against the autograd loop), so the same accuracy. The step allocates nothing
that depends on the host and reads nothing back, so on CUDA it can be captured whole in a CUDA
graph (worker/train.py does that for full batches).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from worker.model import Net

threshold_backward = torch.ops.aten.threshold_backward  # grad * (x > 0): ReLU's backward, one op


class TutorialStep:
    """One SGD step of `Net` on a batch, updating the model's parameters in place.

    `optimizer` is the job's torch.optim.SGD: its momentum buffers are used (created when
    missing, as SGD itself does), so its state_dict() stays the checkpoint's optimizer state.
    """

    # The tensors a compiled step takes as inputs and updates in place (worker/aot_step.py).
    TENSORS = ("params", "buffers", "lr_tensor", "momentum_tensor")

    def __init__(self, model: Net, optimizer: torch.optim.SGD):
        (group,) = optimizer.param_groups
        if group["weight_decay"] or group["dampening"] or group["nesterov"] or group["maximize"]:
            raise ValueError("TutorialStep does plain SGD with momentum only")
        self.lr, self.momentum = group["lr"], group["momentum"]
        # The compiled step reads lr and momentum from tensors: a float would be baked into the
        # graph, and every job of a sweep over lr compiled anew (10.5 s each on 2 cores, measured).
        device = model.conv1.weight.device
        self.lr_tensor = torch.tensor(self.lr, device=device)
        self.momentum_tensor = torch.tensor(self.momentum, device=device)
        self.uses_momentum = bool(self.momentum)
        self.width = model.conv1.out_channels
        self.params = [model.conv1.weight, model.conv1.bias, model.conv2.weight, model.conv2.bias,
                       model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias,
                       model.fc3.weight, model.fc3.bias]
        if [id(p) for p in self.params] != [id(p) for p in group["params"]]:
            raise ValueError("the optimizer does not hold Net's parameters in Net's order")
        self.buffers = []
        if self.momentum:
            for p in self.params:
                state = optimizer.state[p]
                if state.get("momentum_buffer") is None:
                    # SGD's first step sets buf = grad; 0.9 * 0 + grad is exactly that.
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                self.buffers.append(state["momentum_buffer"])

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x: normalised float, channel-major (3, n, 32, 32); y: int64 (n,). Returns the mean loss
        as a 0-d tensor on the device."""
        w1, b1, w2, b2, w3, b3, w4, b4, w5, b5 = self.params
        c, n = self.width, x.shape[1]
        # -- forward; shapes for the default width c=6 --
        cols1 = im2col(x)                                             # (75, n*784)
        z1 = torch.addmm(b1.view(c, 1), w1.view(c, -1), cols1)        # (c, n*784) = conv1
        m1, route1 = max_pool(z1.view(c, n, 28, 28))                  # (c, n, 14, 14)
        h1 = m1.relu()
        cols2 = im2col(h1)                                            # (25c, n*100)
        z2 = torch.addmm(b2.view(16, 1), w2.view(16, -1), cols2)      # (16, n*100) = conv2
        m2, route2 = max_pool(z2.view(16, n, 10, 10))                 # (16, n, 5, 5)
        f = m2.relu().transpose(0, 1).reshape(n, 400)                 # torch.flatten's order
        h3 = torch.addmm(b3, f, w3.t()).relu_()                       # (n, 120)
        h4 = torch.addmm(b4, h3, w4.t()).relu_()                      # (n, 84)
        logits = torch.addmm(b5, h4, w5.t())                          # (n, 10)
        log_p = logits.log_softmax(dim=1)
        picked = log_p.gather(1, y.view(n, 1))
        loss = picked.mean().neg()
        # -- backward: d(mean CE)/d logits = (softmax - onehot) / n --
        g5 = log_p.exp_().scatter_add_(1, y.view(n, 1), torch.full_like(picked, -1.0)).div_(n)
        g4 = threshold_backward(g5.mm(w5), h4, 0)
        g3 = threshold_backward(g4.mm(w4), h3, 0)
        gm2 = threshold_backward(g3.mm(w3).view(n, 16, 5, 5).transpose(0, 1), m2, 0)
        gz2 = max_pool_backward(gm2, route2).view(16, n * 100)
        cols_grad = w2.view(16, -1).t().mm(gz2).view(25 * c, n, 100).transpose(0, 1).contiguous()
        gh1 = F.fold(cols_grad, (14, 14), 5)                         # (n, c, 14, 14): col2im
        gm1 = threshold_backward(gh1.transpose(0, 1), m1, 0)        # (c, n, 14, 14)
        gz1 = max_pool_backward(gm1, route1).view(c, n * 784)
        grads = [gz1.mm(cols1.t()).view_as(w1), gz1.sum(1), gz2.mm(cols2.t()).view_as(w2), gz2.sum(1),
                 g3.t().mm(f), g3.sum(0), g4.t().mm(h3), g4.sum(0), g5.t().mm(h4), g5.sum(0)]
        # -- SGD with momentum, as torch.optim.SGD does it: buf = m * buf + g; p -= lr * buf --
        if torch.compiler.is_compiling():  # torch.export traces this: _fused_sgd_ cannot be; inductor fuses these
            if self.uses_momentum:
                torch._foreach_mul_(self.buffers, self.momentum_tensor)
                torch._foreach_add_(self.buffers, grads)
                grads = self.buffers
            torch._foreach_sub_(self.params, torch._foreach_mul(grads, self.lr_tensor))
        elif self.momentum:  # one fused kernel for all ten tensors (SGD(fused=True) without its Python)
            torch._fused_sgd_(self.params, grads, self.buffers, weight_decay=0.0, momentum=self.momentum,
                              lr=self.lr, dampening=0.0, nesterov=False, maximize=False, is_first_step=False)
        else:
            torch._foreach_add_(self.params, grads, alpha=-self.lr)
        return loss


def im2col(x: torch.Tensor) -> torch.Tensor:
    """(..., C, n, H, W) -> (..., C*25, n*(H-4)*(W-4)): the 5x5 patches of a valid conv, one copy.
    Leading dimensions (a pack's points, worker/recipes/packed_step.py) are kept."""
    *lead, c, n, h, w = x.shape
    k = len(lead)
    patches = x.unfold(-2, 5, 1).unfold(-2, 5, 1)                     # (..., C, n, H-4, W-4, 5, 5)
    order = [*range(k), k, k + 4, k + 5, k + 1, k + 2, k + 3]         # (..., C, 5, 5, n, H-4, W-4)
    return patches.permute(order).reshape(*lead, c * 25, n * (h - 4) * (w - 4))


def max_pool(z: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """2x2 max-pool, stride 2, of (..., H, W), plus where each maximum came from.

    Within each row pair of columns first, then between the two rows: with "the second only if
    strictly greater" at both stages, a tie goes to the first maximum in row-major order, the one
    max_pool2d's backward picks (ties are common: saturated pixels give equal activations).
    The routes are float 0/1 masks, so the backward is multiplies, not casts or `where`s."""
    left, right = z[..., 0::2], z[..., 1::2]                           # (..., H, W/2)
    take_right = (right > left).to(z.dtype)
    rows = torch.maximum(left, right)
    top, bottom = rows[..., 0::2, :], rows[..., 1::2, :]              # (..., H/2, W/2)
    take_bottom = (bottom > top).to(z.dtype)
    return torch.maximum(top, bottom), (take_right, take_bottom)


def max_pool_backward(grad: torch.Tensor, route: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The gradient of max_pool: each window's gradient to the position its maximum came from."""
    take_right, take_bottom = route
    *lead, h2, w2 = grad.shape
    to_bottom = grad * take_bottom
    rows = torch.stack((grad - to_bottom, to_bottom), dim=-2).view(*lead, 2 * h2, w2)
    to_right = rows * take_right
    return torch.stack((rows - to_right, to_right), dim=-1).view(*lead, 2 * h2, 2 * w2)
