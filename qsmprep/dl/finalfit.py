"""The chain's final SMV-TV fit as a differentiable function of its start (torch), for training through it.

In the default chain (:func:`qsmprep.dl.restore.invert_nsidl_chain`) the network's chi is only the *start* of
the final SMV-consistent TV fit (:func:`qsmprep.qsm.smvfit.smv_tv`), and that fit keeps of its start only what
its data term and TV do not settle in its iterations: the constant and the low frequencies that are harmonic
inside the support (``benchmarks/RESULTS.md``, "What the final fit keeps of its start").  A network trained to
the truth on its own output can therefore lose in the chain.  :class:`FinalFit` runs the same ADMM iterations
(:func:`qsmprep.qsm.smvfit.smv_tv_admm_step`, the numpy reference's updates, here on torch tensors) so that a
loss on the fit's *result* has a gradient with respect to the start, and so to the network's weights.

Memory: each iteration keeps about ``10 + 3 len(radii)`` volumes of the fit's grid for the backward pass;
``checkpoint_every`` iterations are recomputed in the backward pass instead (torch's activation checkpointing),
so the memory is that of ``checkpoint_every`` iterations plus one state per chunk.

Units as :func:`qsmprep.qsm.smvfit.smv_tv` (ppm, mm).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from qsmprep.qsm.smvfit import SMVTVProblem, smv_tv_admm_start, smv_tv_admm_step


class _Ops:
    """Functional (autograd-friendly) torch versions of :class:`qsmprep.qsm.smvfit._NumpyOps`."""

    def __init__(self, shape, vs):
        self.shape, self.vs = tuple(shape), tuple(float(v) for v in vs)

    def rfft(self, x):
        return torch.fft.rfftn(x, dim=(0, 1, 2))

    def irfft(self, xk):
        return torch.fft.irfftn(xk, s=self.shape, dim=(0, 1, 2))

    def grad(self, x):
        return [(torch.roll(x, -1, dims=a) - x) / self.vs[a] for a in range(3)]

    def grad_t(self, z):
        return sum((torch.roll(z[a], 1, dims=a) - z[a]) / self.vs[a] for a in range(3))

    @staticmethod
    def shrink(v, thr):
        # sign(v) max(|v| - thr, 0) = v - clamp(v, -thr, thr), thr a number or a tensor
        return v - torch.maximum(torch.minimum(v, thr), -thr) if torch.is_tensor(thr) else v - v.clamp(-thr, thr)

    zeros_like = staticmethod(torch.zeros_like)

    @staticmethod
    def copy(a):
        return a.clone()


class FinalFit:
    """``smv_tv``'s iterations on ``problem`` (:func:`qsmprep.qsm.smvfit.smv_tv_problem`) as a torch function.

    ``fit(start)``: ``start`` a chi volume (ppm; the problem's full shape, a tensor that may require grad) ->
    chi after ``n_iter`` ADMM iterations with over-relaxation ``relax`` (the full shape, zero outside the support),
    what :func:`qsmprep.qsm.smvfit.smv_tv` returns from that start up to float32 rounding.  ``checkpoint_every``:
    iterations per recomputed chunk in the backward pass (0: keep everything)."""

    def __init__(self, problem: SMVTVProblem, n_iter: int, relax: float = 1.0, device="cpu",
                 dtype=torch.float32, checkpoint_every: int = 10):
        dev = torch.device(device)

        def put(a):
            return torch.as_tensor(np.ascontiguousarray(a), device=dev)

        def put_real(a):
            return put(a).to(dtype)

        cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.ks = [put_real(k) for k in problem.ks]
        self.pw2 = [put_real(p) for p in problem.pw2]
        self.g_r = [put_real(g) for g in problem.g_r]
        self.denom = put_real(problem.denom)
        self.msup = put_real(problem.msup)
        self.prior_k = None if problem.prior_k is None else put(problem.prior_k).to(cdtype)
        self.consts = (float(problem.mu1), float(problem.mu2), float(problem.mu3),
                       float(problem.thr) if np.ndim(problem.thr) == 0 else put_real(problem.thr))
        self.ops = _Ops(problem.shape, problem.vs)
        self.n_iter, self.relax, self.every = int(n_iter), float(relax), int(checkpoint_every)
        self.shape, self.box, self.crop, self.dev, self.dtype = problem.shape, problem.box, problem.crop, dev, dtype
        self.sup_box = put(problem.support[problem.box]).to(dtype)
        self.full_shape = problem.support.shape

    def to_grid(self, vol: torch.Tensor) -> torch.Tensor:
        """A volume (full shape) -> the fit's padded grid, zero outside the support (``smv_tv``'s start)."""
        out = vol.new_zeros(self.shape)
        out[self.crop] = vol[self.box] * self.sup_box
        return out

    def to_volume(self, x: torch.Tensor) -> torch.Tensor:
        """The fit's grid -> a volume of the full shape, zero outside the support."""
        out = x.new_zeros(self.full_shape)
        out[self.box] = x[self.crop] * self.sup_box
        return out

    def _chunk(self, n: int, *flat):
        r = len(self.ks)
        state = (list(flat[0:3]), list(flat[3:6]), list(flat[6:6 + r]), list(flat[6 + r:6 + 2 * r]),
                 flat[6 + 2 * r], flat[7 + 2 * r])
        for _ in range(n):
            state = smv_tv_admm_step(state, self.prior_k, self.ks, self.pw2, self.g_r, self.denom, self.msup,
                                     *self.consts, self.ops, self.relax)
        z, sz, y, t, u, su = state
        return (*z, *sz, *y, *t, u, su)

    def __call__(self, start: torch.Tensor) -> torch.Tensor:
        x = self.to_grid(start.to(self.dev, self.dtype))
        z, sz, y, t, u, su = smv_tv_admm_start(x, self.ks, self.ops)
        flat = (*z, *sz, *y, *t, u, su)
        done = 0
        while done < self.n_iter:
            n = self.n_iter - done if self.every <= 0 else min(self.every, self.n_iter - done)
            if self.every > 0 and torch.is_grad_enabled() and x.requires_grad:
                flat = checkpoint(self._chunk, n, *flat, use_reentrant=False)
            else:
                flat = self._chunk(n, *flat)
            done += n
        return self.to_volume(flat[-2])


def referenced(chi: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """chi with its mean in ``support`` removed, zero outside it (the app's ``reference_mean`` in chi's mask)."""
    return (chi - (chi * support).sum() / support.sum()) * support


def chain_loss(chi: torch.Tensor, truth: torch.Tensor, brain: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Relative squared error of the chain's chi against the truth over the true brain mask: chi referenced as the
    app does (:func:`referenced` in ``support``), then both demeaned in ``brain``; ``||chi - truth||^2 /
    ||truth||^2`` there (the square of the demeaned NRMSE, as a fraction).  Masks as float tensors (0 / 1)."""
    r = referenced(chi, support)
    nb = brain.sum()
    r = (r - (r * brain).sum() / nb) * brain
    t = (truth - (truth * brain).sum() / nb) * brain
    return ((r - t) ** 2).sum() / (t ** 2).sum()
