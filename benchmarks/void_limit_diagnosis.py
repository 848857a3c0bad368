"""Where the single echo's void limit (0.2 instead of 0.3) moved sim-7T-SE-z's NRMSE (test head, scored once; session 23):
the squared error of NSIDL's chi with each limit, split by the voxels the lower limit brought into the brain mask,
their 3-voxel neighbourhood and the tissue labels (``RESULTS.md``, the whole-chain table's session 23 note)::

    .venv/bin/python benchmarks/void_limit_diagnosis.py
"""
import sys, numpy as np
from pathlib import Path
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE)); sys.path.insert(0, str(HERE.parent))
import chain_benchmark as cb, honest_heads as hh
from qsmprep.qsm import masking
from qsmprep.sim.phantom import LABELS
case = hh.load_case("sim-7T-SE-z", 1.0)
out = {}
orig = masking.brain_mask
for lim in (0.3, 0.2):
    masking.brain_mask = lambda *a, _l=lim, **k: orig(*a, **{**k, "min_signal": _l})
    try:
        chain = cb.chain_for(case)
        chi = cb.METHODS["nsidl"](case, chain)
    finally:
        masking.brain_mask = orig
    out[lim] = (chi, chain["mask"])
    print(lim, {k: round(v, 4) for k, v in cb.score(chi, case).items() if k in ("xsim", "nrmse")}, "mask", int(chain["mask"].sum()))
tru, b, lab = case["chi"], case["brain_mask"] > 0, case["labels"]
(c3, m3), (c2, m2) = out[0.3], out[0.2]
# error energy (squared error, mean-referenced as NRMSE would be roughly)
e3 = np.where(b, c3 - tru, 0); e2 = np.where(b, c2 - tru, 0)
d = e2 ** 2 - e3 ** 2
print("total sq err 0.3 %.3f 0.2 %.3f diff %.3f" % ((e3**2)[b].sum(), (e2**2)[b].sum(), d[b].sum()))
new = m2 & ~m3
print("voxels newly in mask", int(new.sum()), "their sq-err diff %.3f" % d[new].sum())
from scipy.ndimage import binary_dilation
near = binary_dilation(new, iterations=3) & b
print("within 3 voxels of them: %d voxels, sq-err diff %.3f" % (near.sum(), d[near].sum()))
for i in np.unique(lab[b]):
    s = (lab == i) & b
    if abs(d[s].sum()) > 0.02 * abs(d[b].sum()):
        print("  label", LABELS.get(int(i), i), "n", int(s.sum()), "sq-err diff %.3f" % d[s].sum(), "newly in mask %d" % (new & s).sum())
