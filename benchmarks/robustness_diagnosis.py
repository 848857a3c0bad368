"""Diagnoses of the robustness matrix's misses (issue #14; validation heads by default, numbers in ``RESULTS.md``).

``nuclei``: per deep-gray label, the share of its true voxels outside the local field's mask (the chain's ``eroded``:
signal voids and the band background removal erodes around them), the app's chi there and inside against the truth,
what put them outside (the void rule's magnitude limit, phase coherence, or neither: the eroded band), and the ROI
slope over the inside parts alone ("Where the qsm-forward
SE 7T slope goes, per nucleus"; its numbers are from before the single echo's void limit 0.2, hence
``--min-signal 0.3``: the brain mask's void limit for the run, default the app's).  ``slab``: the linear trend along the slab's cut axis of the truth, of the app's chi,
of its final fit and of the network's start, and the score after removing the chi's own trend ("The slab's error is
a linear ramp along the cut axis").  ``passes``: the pieces the brain mask's split (``masking.brain_pieces`` at
``--depths``, on the coarse grid the app selects on) cuts each head into, with each piece's top, its pass to the brain's
piece, how far the brain's top rises above that pass, its volume and its share inside the true brain ("The split
depth 6 -> 4 mm with the hemispheres merged back").  ``slabtrend``: a prior on the slab's trend from the subject's own
images (session 28, not adopted): the linear trend along the cut axis common to every tissue class (quantile classes
of the combined magnitude or of an R2* fit), removed from the app's chi, with the magnitude under a receive-bias
ramp along the cut axis and after N4 correction (antspyx), on the app's chi without its slab-trend step ("A trend
prior from the magnitude")::

    .venv/bin/python benchmarks/robustness_diagnosis.py nuclei --seeds 10 11 --min-signal 0.3
    .venv/bin/python benchmarks/robustness_diagnosis.py slab --seeds 10 11
    .venv/bin/python benchmarks/robustness_diagnosis.py slabtrend --seeds 10 11
    .venv/bin/python benchmarks/robustness_diagnosis.py passes --seeds 10 11 12 13 14 15 --depths 2 3 4 \
        --rows 'SE 7T offset' 'ME 3T' 'ME 3T 1x1x2 mm' 'SE 3T offset'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import robustness as rb  # noqa: E402
from _common import brain_mask_with, final_fit_recorded  # noqa: E402


def nuclei(seeds, cache, rows=("SE 7T offset, qsm-forward", "SE 7T offset"), min_signal=None) -> None:
    from qsmprep.qsm import masking
    from qsmprep.qsm.echoes import combine_magnitude
    from qsmprep.qsm.geometry import voxel_sizes
    from qsmprep.sim.phantom import DGM_INDICES, LABELS

    for row in rows:
        for seed in seeds:
            d = rb.data_for(rb.case_for(row, seed), cache)
            lim = masking.default_min_signal(d["mag"], d["phase"]) if min_signal is None else float(min_signal)
            app, _ = rb.run_variant(d, masking, "brain_mask", brain_mask_with(lim))
            chi, tru, b, lab, em = app["chi"], d["chi"], d["brain"], d["labels"], app["chain"]["eroded"]
            brain_mask = app["chain"]["mask"]
            vs = voxel_sizes(d["affine"])
            mag = combine_magnitude(d["mag"])
            rel = mag / float(np.median(mag[brain_mask]))
            ph = d["phase"][..., 0] if d["phase"].ndim == 4 else d["phase"]
            coh_lim = masking.default_coherence_threshold(d["phase"])
            coh = masking.phase_coherence(ph, vs, masking.coherence_sigma_mm(vs))
            r, t = np.where(b, chi - chi[b].mean(), 0), np.where(b, tru - tru[b].mean(), 0)
            print(f"{row}, head {seed} (void limit {lim:g}, coherence limit {coh_lim:g}): "
                  f"ROI slope {rb.dgm_slope(chi, tru, lab, b):.3f}")
            inside = []
            for i in DGM_INDICES:
                s = (lab == i) & b
                if s.sum() < 3:
                    continue
                inm, vo = s & em, s & ~em
                f = lambda a, m: float(a[m].mean()) if m.any() else float("nan")  # noqa: E731
                print(f"  {LABELS[i]:20s} n {int(s.sum()):5d} outside {vo.sum() / s.sum():.2f} (in the brain mask "
                      f"{f(brain_mask, vo):.2f}, under the void limit {f(rel < lim, vo):.2f}, under the coherence limit "
                      f"{f(coh < coh_lim, vo):.2f}) | all: chi {f(r, s):.3f} truth {f(t, s):.3f} | inside: {f(r, inm):.3f} / "
                      f"{f(t, inm):.3f} | outside: {f(r, vo):.3f} / {f(t, vo):.3f}")
                if inm.any():
                    inside.append((f(t, inm), f(r, inm)))
            a = np.asarray(inside)
            print(f"  ROI slope over the inside parts alone: {np.polyfit(a[:, 0], a[:, 1], 1)[0]:.3f}")


def slab(seeds, cache, row="ME 3T slab 64 mm") -> None:
    for seed in seeds:
        d = rb.data_for(rb.case_for(row, seed), cache)
        with final_fit_recorded(then="run") as got:
            app = rb.run_app(rb.stored_inputs(d, "canonical"), d, qc=False)
        tru, b = d["chi"], d["brain"]
        sup = np.asarray(got["kwargs"]["support"]) > 0
        m = b & sup
        axis = next(a for a in range(3) if b.any(axis=tuple(i for i in range(3) if i != a))[[0, -1]].all())
        shape = [1, 1, 1]
        shape[axis] = b.shape[axis]
        z = np.broadcast_to(np.arange(b.shape[axis], dtype=np.float64).reshape(shape), b.shape)
        trend = lambda c: float(np.polyfit(z[m], c[m], 1)[0])  # noqa: E731
        print(f"{row}, head {seed}: cut axis {axis}, truth's trend {trend(tru):+.2e} ppm per slice")
        for name, c in (("network's start", np.asarray(got["kwargs"]["chi_prior"])), ("final fit", got["result"]),
                        ("app", app["chi"])):
            err = (c - c[m].mean()) - (tru - tru[m].mean())
            print(f"  {name:16s} trend {trend(c):+.2e}, error's trend {trend(err):+.2e} ppm per slice")
        chi = app["chi"]
        cm = chi != 0
        coef = np.polyfit(z[cm], chi[cm], 1)
        det = np.where(cm, chi - (coef[0] * z + coef[1]), 0).astype(np.float32)
        det = np.where(cm, det - det[cm].mean(), 0).astype(np.float32)
        print(f"  score {rb.score(chi, d)} -> with chi's trend removed {rb.score(det, d)}")


def passes(seeds, cache, rows, depths) -> None:
    from qsmprep.qsm import masking

    for row in rows:
        for seed in seeds:
            d = rb.data_for(rb.case_for(row, seed), cache)
            vs = [float(v) for v in d["voxel_size"]]
            fg, vs_c, _ = masking.coarse_foreground(masking.head_foreground(d["mag"], vs)[0], vs, masking.SELECT_MM)
            brain = masking.coarse_foreground(np.asarray(d["brain"]) > 0, vs, masking.SELECT_MM)[0]
            for h in depths:
                pieces, depth, deepest = masking.brain_pieces(fg, vs_c, h)
                top, k0 = float(depth[deepest]), int(pieces[deepest])
                pas = masking.piece_passes(pieces, depth)
                out = []
                for j in range(1, int(pieces.max()) + 1):
                    if j == k0:
                        continue
                    p = pieces == j
                    join = (f"pass {pas[k0, j]:.1f} rise {top - pas[k0, j]:.1f}" if np.isfinite(pas[k0, j])
                            else "not touching the brain's piece")
                    out.append(f"[top {float(depth[p].max()):.1f} {join} vol {int(p.sum())} "
                               f"in brain {(p & brain).sum() / p.sum():.2f}]")
                print(f"{row}, head {seed}, depth {h:g} mm: brain's top {top:.1f} mm; other pieces "
                      + (" ".join(out) or "none"), flush=True)


def slabtrend(seeds, cache, row="ME 3T slab 64 mm", n_classes=6) -> None:
    import ants

    from _common import patched

    from qsmprep.qsm import slab
    from qsmprep.qsm.echoes import combine_magnitude
    from qsmprep.qsm.slab import r2star_loglinear, slab_trend

    for seed in seeds:
        d = rb.data_for(rb.case_for(row, seed), cache)
        with patched(slab, "cut_axis", lambda *a, **k: None):  # the app without its slab-trend step (the diagnosis' subject)
            chi = rb.run_app(rb.stored_inputs(d, "canonical"), d, qc=False)["chi"]
        m = chi != 0
        nz, vs = chi.shape[2], tuple(float(v) for v in d["voxel_size"])  # crop_slab cuts the third axis
        t = np.broadcast_to((np.arange(nz, dtype=np.float64) / (nz - 1))[None, None, :], chi.shape)
        across = (nz - 1) * vs[2]  # mm from the first slice to the last: a trend in ppm per mm -> ppm over the slab

        def trend(x, feat, n):  # slab.slab_trend: the slope x shares across n quantile classes of feat
            return slab_trend(x, m, feat, 2, vs, n) * across

        err = trend(chi - d["chi"], np.zeros(chi.shape), 1)
        print(f"{row}, head {seed}: app XSIM {rb.score(chi, d)['xsim']:.4f}; the error's trend {err * 1e3:+.2f}e-3 ppm "
              f"over the slab; with it removed (oracle) XSIM "
              f"{rb.score(np.where(m, chi - err * t, 0).astype(np.float32), d)['xsim']:.4f}", flush=True)
        rss = combine_magnitude(np.asarray(d["mag"]))
        feats = [("R2* fit, 16 classes", r2star_loglinear(d["mag"], d["te_s"]), 16)]
        for amp in (0.0, 0.3, -0.3, 0.6):
            biased = rss * (1 + amp * (t - 0.5))
            n4 = ants.n4_bias_field_correction(ants.from_numpy(biased.astype(np.float32), spacing=vs),
                                               mask=ants.from_numpy(m.astype(np.float32), spacing=vs)).numpy()
            feats += [(f"magnitude, bias {amp:+.1f}", biased, n_classes), (f"magnitude, bias {amp:+.1f}, N4", n4, n_classes)]
        for name, feat, n in feats:
            est, tru = trend(chi, feat, n), trend(d["chi"], feat, n)
            fixed = np.where(m, chi - est * t, 0).astype(np.float32)
            print(f"  {name:28s}: the truth's within-class trend {tru * 1e3:+.2f}e-3, the app's {est * 1e3:+.2f}e-3 -> "
                  f"XSIM {rb.score(fixed, d)['xsim']:.4f}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("nuclei", "slab", "passes", "slabtrend"))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(rb.VALIDATION_SEEDS[:2]))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qsmprep-robustness"))
    ap.add_argument("--min-signal", type=float, default=None, help="nuclei: the brain mask's void limit (default: the app's)")
    ap.add_argument("--rows", nargs="+", default=["SE 7T offset", "ME 3T"], help="passes: the matrix rows")
    ap.add_argument("--depths", type=float, nargs="+", default=[2.0, 3.0, 4.0], help="passes: split depths (mm)")
    args = ap.parse_args(argv)
    if args.what == "nuclei":
        nuclei(args.seeds, args.cache, min_signal=args.min_signal)
    elif args.what == "slab":
        slab(args.seeds, args.cache)
    elif args.what == "slabtrend":
        slabtrend(args.seeds, args.cache)
    else:
        passes(args.seeds, args.cache, args.rows, args.depths)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
