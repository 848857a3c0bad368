"""Where the chain's chi of a haemorrhage goes (session 24, diagnosis only, validation heads): the app's ``nsidl``
through the whole chain, then, over the haemorrhage label, the share in the chain's brain mask, in chi's support and
in the local field's mask, the magnitude against the brain's median, chi's mean and spread against the truth's
(both mean-referenced in the true brain), the one-voxel ring and chi by depth inside the lesion
(``RESULTS.md``, "The edge map where the data are weak")::

    .venv/bin/python benchmarks/haemorrhage_diagnosis.py val-sim-7T-SE-obl val-qf-7T-ME-obl
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


def main(names) -> int:
    from scipy import ndimage

    from qsmprep.dl.restore import support_mask
    from qsmprep.qsm.echoes import combine_magnitude

    for name in names:
        case = hh.load_case(name, 1.0)
        ch = cb.chain_for(case)
        chi = cb.METHODS["nsidl"](case, ch)
        sc = cb.score(chi, case)
        lab, b = case["labels"], case["brain_mask"] > 0
        h = lab == 18
        ring = ndimage.binary_dilation(h) & b & ~h
        r = np.where(b, chi - chi[b].mean(), 0)
        t = np.where(b, case["chi"] - case["chi"][b].mean(), 0)
        mag = combine_magnitude(np.asarray(case["mag"]))
        w = np.asarray(ch["weight"], np.float32)
        print(name, {k: round(sc[k], 4) for k in ("xsim", "nrmse", "haem_dnrmse", "haem_mean_ratio")})
        print("  haemorrhage %d voxels: in the brain mask %.2f, in chi's support %.2f, in the local field's mask %.2f; "
              "magnitude / brain median p10/50/90 %s; data weight / its median in the mask %.2f"
              % (h.sum(), ch["mask"][h].mean(), support_mask(ch["mask"])[h].mean(), (ch["eroded"][h] > 0).mean(),
                 np.round(np.percentile(mag[h] / np.median(mag[b]), [10, 50, 90]), 3),
                 w[h].mean() / np.median(w[ch["mask"] > 0])))
        print("  truth mean %.3f sd %.3f | chi mean %.3f sd %.3f | ring: truth %.3f chi %.3f"
              % (t[h].mean(), t[h].std(), r[h].mean(), r[h].std(), t[ring].mean(), r[ring].mean()))
        depth = ndimage.distance_transform_edt(h)
        for lo, hi in ((0, 1.5), (1.5, 3), (3, np.inf)):
            s = h & (depth > lo) & (depth <= hi)
            if s.any():
                print("  depth (%g, %g] voxels: n %d, truth %.3f, chi %.3f" % (lo, hi, s.sum(), t[s].mean(), r[s].mean()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or ["val-sim-7T-SE-obl", "val-qf-7T-ME-obl"]))
