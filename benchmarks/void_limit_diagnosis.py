"""Where the single echo's void limit (0.2 instead of 0.3) moved sim-7T-SE-z's NRMSE (test head, scored once; session 23):
the squared error of NSIDL's chi with each limit, split by the voxels the lower limit brought into the brain mask,
their 3-voxel neighbourhood and the tissue labels (``RESULTS.md``, the whole-chain table's session 23 note)::

    .venv/bin/python benchmarks/void_limit_diagnosis.py                      # the test head
    .venv/bin/python benchmarks/void_limit_diagnosis.py val-sim-7T-SE-obl    # its validation twin (session 24)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chain_benchmark as cb  # noqa: E402
import honest_heads as hh  # noqa: E402
from _common import brain_mask_with, patched  # noqa: E402


def main(case_name: str = "sim-7T-SE-z", limits=(0.3, 0.2)) -> int:
    from scipy.ndimage import binary_dilation

    from qsmprep.qsm import masking
    from qsmprep.sim.phantom import LABELS

    case = hh.load_case(case_name, 1.0)
    out = {}
    for lim in limits:
        with patched(masking, "brain_mask", brain_mask_with(lim)):
            chain = cb.chain_for(case)
            chi = cb.METHODS["nsidl"](case, chain)
        out[lim] = (chi, chain["mask"])
        sc = cb.score(chi, case)
        print(lim, {k: round(sc[k], 4) for k in ("nrmse", "xsim")}, "mask", int(chain["mask"].sum()))
    tru, b, lab = case["chi"], case["brain_mask"] > 0, case["labels"]
    (c_hi, m_hi), (c_lo, m_lo) = out[limits[0]], out[limits[1]]
    e_hi, e_lo = np.where(b, c_hi - tru, 0), np.where(b, c_lo - tru, 0)  # squared error, as NRMSE sums it
    d = e_lo ** 2 - e_hi ** 2
    print("total sq err %g %.3f %g %.3f diff %.3f" % (limits[0], (e_hi ** 2)[b].sum(), limits[1], (e_lo ** 2)[b].sum(),
                                                     d[b].sum()))
    new = m_lo & ~m_hi
    print("voxels newly in mask", int(new.sum()), "their sq-err diff %.3f" % d[new].sum())
    near = binary_dilation(new, iterations=3) & b
    print("within 3 voxels of them: %d voxels, sq-err diff %.3f" % (near.sum(), d[near].sum()))
    for i in np.unique(lab[b]):
        s = (lab == i) & b
        if abs(d[s].sum()) > 0.02 * abs(d[b].sum()):
            print("  label", LABELS.get(int(i), i), "n", int(s.sum()), "sq-err diff %.3f" % d[s].sum(),
                  "newly in mask %d" % (new & s).sum())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:2]))
