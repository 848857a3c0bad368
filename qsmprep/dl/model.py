"""NSIDL: unrolled proximal gradient with the nonlinear (NDI) data term and a learned prox.

Iteration (LPCNN's unrolled proximal gradient, Lai et al. 2020, with NDI's nonlinear data term, Polak et al.
2020; MODEL_CARD.md), chi in ppm:

    chi_0   = M * TKD(f)                                         (init="tkd"; or 0)
              then n_pre fixed steps: Nesterov-accelerated NDI steps (step 4/(s^2 max W^2),
              pre_solver="nesterov") or conjugate-gradient iterations on the linearised
              data term ||W (D chi - f)||^2 (pre_solver="cg", about twice as fast per step)
    z_k     = M * (chi_k - alpha_k * s * D[W^2 sin(s D chi_k - phi)])
    chi_k+1 = M * (z_k + sigma * U([z_k / sigma, W, M, k/K]))

with ``phi = s f`` (rad), ``alpha_k = a_k / (s^2 max W^2)`` and ``a_k = 4.4 sigmoid(p_k)``
(always below the stability bound 9/2 of plain gradient descent, so one set of weights
serves any field strength and echo time), ``sigma = 0.1`` ppm, and U a small 3-D U-Net
shared by all iterations (the iteration index is an input channel).  The U-Net's last
layer starts at zero, so an untrained net is exactly TKD + K NDI gradient steps.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from qsmprep.dl import physics

SIGMA_PPM = 0.1

#: Pre-solvers run before the unrolled steps (``NSIDL(pre_solver=...)``).
PRE_SOLVERS = ("nesterov", "cg")


def _check_pre_solver(name: str) -> str:
    if name not in PRE_SOLVERS:
        raise ValueError(f"pre_solver must be one of {', '.join(map(repr, PRE_SOLVERS))}, not {name!r}.")
    return name


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv3d(cin, cout, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Conv3d(cout, cout, 3, padding=1),
            nn.LeakyReLU(0.1, inplace=True),
        )


class UNet3d(nn.Module):
    """3- or 4-level 3-D U-Net (no normalisation layers), residual-ready (zero-initialised output).

    ``widths`` = channels per level, e.g. ``(8, 16, 32)`` or ``(16, 32, 64, 128)``.  A fourth level
    (``enc4``, ``up3``, ``dec3``) doubles the receptive field for a few per cent more compute (it runs
    at 1/8 resolution).  Its decoder is residual with a zero-initialised last layer
    (``d3 = e3 + dec3([up3(e4), e3])``), so a 4-level net that loads a 3-level net's weights
    (``load_state_dict(strict=False)``: the 3-level keys are shared) computes exactly what the
    3-level net did, and training starts from there.  Any input size works: the volume is
    zero-padded to a multiple of 2^(levels-1) internally and cropped back.
    """

    #: On CPU, run the convolutions channels-last (oneDNN's 3-D convolutions are about twice as fast
    #: that way on 2 cores; the numbers agree to float32 rounding).  GPUs keep the default layout.
    cpu_channels_last = True

    def __init__(self, in_ch: int = 4, widths: Sequence[int] = (8, 16, 32)):
        super().__init__()
        if len(widths) not in (3, 4):
            raise ValueError(f"U-Net widths must list 3 or 4 levels, got {list(widths)}.")
        c1, c2, c3 = widths[:3]
        self.levels = len(widths)
        self.enc1 = _Block(in_ch, c1)
        self.enc2 = _Block(c1, c2)
        self.enc3 = _Block(c2, c3)
        if self.levels == 4:
            c4 = widths[3]
            self.enc4 = _Block(c3, c4)
            self.up3 = nn.ConvTranspose3d(c4, c3, 2, stride=2)
            self.dec3 = nn.Sequential(_Block(2 * c3, c3), nn.Conv3d(c3, c3, 1))
            nn.init.zeros_(self.dec3[-1].weight)
            nn.init.zeros_(self.dec3[-1].bias)
        self.up2 = nn.ConvTranspose3d(c3, c2, 2, stride=2)
        self.dec2 = _Block(2 * c2, c2)
        self.up1 = nn.ConvTranspose3d(c2, c1, 2, stride=2)
        self.dec1 = _Block(2 * c1, c1)
        self.out = nn.Conv3d(c1, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shp = x.shape[-3:]
        mult = 2 ** (self.levels - 1)
        pad = [(-n) % mult for n in shp]
        if any(pad):
            x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
        if self.cpu_channels_last and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool3d(e1, 2))
        e3 = self.enc3(F.max_pool3d(e2, 2))
        if self.levels == 4:
            e4 = self.enc4(F.max_pool3d(e3, 2))
            e3 = e3 + self.dec3(torch.cat([self.up3(e4), e3], dim=1))
            del e4
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        del e2, e3
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        del e1, d2
        y = self.out(d1)
        return y[..., : shp[0], : shp[1], : shp[2]]


class NSIDL(nn.Module):
    """The unrolled network; see the module docstring for the maths.

    Parameters
    ----------
    n_iter : K, number of unrolled steps.
    widths : U-Net channels per level (3 or 4 levels, see :class:`UNet3d`).
    init : "tkd" (chi_0 = masked TKD, threshold ``tkd_threshold``) or "zero".
    """

    def __init__(self, n_iter: int = 4, widths: Sequence[int] = (8, 16, 32), init: str = "tkd",
                 tkd_threshold: float = 0.2, a_init: float = 2.0, n_pre: int = 0, pre_step: float = 4.0,
                 pre_solver: str = "nesterov"):
        super().__init__()
        self.pre_solver = _check_pre_solver(pre_solver)
        if init not in ("tkd", "zero"):
            raise ValueError(f"init must be 'tkd' or 'zero', not {init!r}.")
        self.n_iter = int(n_iter)
        self.widths = tuple(int(w) for w in widths)
        self.init = init
        self.tkd_threshold = float(tkd_threshold)
        self.n_pre = int(n_pre)
        self.pre_step = float(pre_step)
        if not 0 < self.pre_step < 4.5:
            raise ValueError(f"pre_step must be in (0, 4.5) (the NDI stability bound), not {pre_step}.")
        p0 = math.log(a_init / (4.4 - a_init))  # inverse of 4.4*sigmoid
        self.step_logit = nn.Parameter(torch.full((self.n_iter,), p0))
        self.prox = UNet3d(in_ch=4, widths=self.widths)

    def config(self) -> dict:
        return {"n_iter": self.n_iter, "widths": list(self.widths), "init": self.init,
                "tkd_threshold": self.tkd_threshold, "n_pre": self.n_pre, "pre_step": self.pre_step,
                "pre_solver": self.pre_solver}

    def step_sizes(self) -> torch.Tensor:
        """The unit-free a_k (alpha_k = a_k / (s^2 max W^2))."""
        return 4.4 * torch.sigmoid(self.step_logit)

    def forward(self, field, mask, weight, s, kernel, padded, return_all: bool = False, cnn_dtype=None,
                n_pre: int | None = None, pre_solver: str | None = None):
        """Run the K steps.

        field : (B,1,X,Y,Z) local field, ppm.  mask : same, {0,1}.  weight : same, in [0,1]
        (multiplied by the mask here).  s : (B,) or float, rad/ppm.  kernel : half-spectrum
        dipole kernel(s) on the ``padded`` grid, (B or 1, 1, X', Y', Z'//2+1).
        cnn_dtype : e.g. torch.bfloat16 to autocast the U-Net only (physics stays fp32).
        n_pre, pre_solver : override the model's pre-solver for this call (inference presets,
            ``qsmprep.dl.inference.DATA_FIT``); None keeps the configured ones.
        Returns chi (B,1,X,Y,Z) in ppm, or the list of all K iterates.
        """
        n_pre = self.n_pre if n_pre is None else int(n_pre)
        pre_solver = self.pre_solver if pre_solver is None else _check_pre_solver(pre_solver)
        mask = mask.float()
        w = weight.float() * mask
        w2 = w * w
        B = field.shape[0]
        s_t = torch.as_tensor(s, dtype=torch.float32, device=field.device).reshape(-1)
        if s_t.numel() == 1:
            s_t = s_t.expand(B)
        s_b = s_t.reshape(B, 1, 1, 1, 1)
        wmax2 = w2.reshape(B, -1).amax(dim=1).clamp_min(1e-6).reshape(B, 1, 1, 1, 1)
        phi = s_b * field
        if self.init == "tkd":
            chi = physics.tkd_t(field, kernel, padded, self.tkd_threshold) * mask
        else:
            chi = torch.zeros_like(field)
        if n_pre and pre_solver == "cg":
            chi = cg_linearised(chi, field, w2, mask, kernel, padded, n_pre)
        elif n_pre:
            chi = ndi_nesterov(chi, phi, w2, mask, kernel, padded, s_b, self.pre_step / (s_b * s_b * wmax2), n_pre)
        a = self.step_sizes()
        outs = []
        for k in range(self.n_iter):
            alpha = a[k] / (s_b * s_b * wmax2)
            g = physics.ndi_gradient(chi, phi, w2, kernel, padded, s_b)
            z = (chi - alpha * g) * mask
            kin = torch.full_like(z, k / max(1, self.n_iter - 1))
            inp = torch.cat([z / SIGMA_PPM, w, mask, kin], dim=1)
            if cnn_dtype is not None:
                with torch.autocast(device_type=z.device.type, dtype=cnn_dtype):
                    r = self.prox(inp)
                r = r.float()
            else:
                r = self.prox(inp)
            chi = (z + SIGMA_PPM * r) * mask
            outs.append(chi)
        return outs if return_all else chi


@torch.no_grad()
def ndi_nesterov(chi, phi, w2, mask, kernel, padded, s, alpha, n_steps: int):
    """``n_steps`` Nesterov-accelerated NDI gradient steps (FISTA momentum), masked, no learning.

    ``alpha`` = step (ppm^2/rad^2 scale, e.g. ``a / (s^2 max W^2)`` with a < 4.5).  20 such steps
    from TKD reach what ~100 plain NDI steps reach (measured on held-out heads).
    """
    x = chi.clone()
    xp = x.clone()
    t = 1.0
    for _ in range(int(n_steps)):
        tn = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        y = x + ((t - 1.0) / tn) * (x - xp)
        t = tn
        xp = x
        x = (y - alpha * physics.ndi_gradient(y, phi, w2, kernel, padded, s)) * mask
    return x


@torch.no_grad()
def cg_linearised(chi, field, w2, mask, kernel, padded, n_steps: int):
    """``n_steps`` conjugate-gradient iterations on ``min ||W (D chi - f)||^2`` over chi in the mask.

    The linearised NDI data term (``sin r ~ r`` for small residuals ``r = s D chi - phi``;
    ``s`` cancels): CG on the normal equations ``M D W^2 D M chi = M D W^2 f`` (CGNR), started
    from ``chi``.  The weighted residual decreases monotonically; each iteration costs two FFT
    pairs, like one NDI gradient step, and 30 of them reach what ~60 Nesterov NDI steps reach
    (validation heads).  chi, field in ppm; ``w2`` = W^2; per-sample inner products.
    """
    def A(x):
        return mask * physics.convolve(w2 * physics.convolve(x, kernel, padded), kernel, padded)

    dims = (1, 2, 3, 4)
    x = chi.clone()
    r = mask * physics.convolve(w2 * field, kernel, padded) - A(x)
    p = r.clone()
    rr = (r * r).sum(dim=dims, keepdim=True)
    for _ in range(int(n_steps)):
        ap = A(p)
        pap = (p * ap).sum(dim=dims, keepdim=True)
        a = torch.where(pap > 0, rr / pap.clamp_min(1e-30), torch.zeros_like(pap))
        x = x + a * p
        r = r - a * ap
        rn = (r * r).sum(dim=dims, keepdim=True)
        p = r + torch.where(rr > 0, rn / rr.clamp_min(1e-30), torch.zeros_like(rn)) * p
        rr = rn
    return x


def build_model(cfg: dict | None = None) -> NSIDL:
    """NSIDL from a config dict (keys of :meth:`NSIDL.config`)."""
    cfg = dict(cfg or {})
    return NSIDL(n_iter=cfg.get("n_iter", 4), widths=cfg.get("widths", (8, 16, 32)),
                 init=cfg.get("init", "tkd"), tkd_threshold=cfg.get("tkd_threshold", 0.2),
                 n_pre=cfg.get("n_pre", 0), pre_step=cfg.get("pre_step", 4.0),
                 pre_solver=cfg.get("pre_solver", "nesterov"))


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
