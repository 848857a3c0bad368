"""Simulation of heads and gradient-echo data with a known answer (tests, examples, benchmarks).

* :func:`qsmprep.sim.phantom.make_head` builds a realistic head (chi in ppm, labels, brain
  mask, M0, R1, R2*) from nilearn's MNI152 2009 tissue maps and the AAL3 deep-gray labels,
  randomly deformed per seed, with skull/air/sinus background sources and optional lesions.
* :func:`qsmprep.sim.forward.simulate_gre` turns a head into multi-echo magnitude and wrapped
  phase, with the true total and local fields.

Nothing here is used by the pipeline itself; heavy imports happen inside the functions.
"""

from __future__ import annotations

__all__ = ["make_head", "simulate_gre", "Head", "LABELS"]


def __getattr__(name):  # lazy: ``import qsmprep.sim`` stays cheap
    if name in ("make_head", "Head", "LABELS"):
        from . import phantom

        return getattr(phantom, name)
    if name == "simulate_gre":
        from .forward import simulate_gre

        return simulate_gre
    raise AttributeError(name)
