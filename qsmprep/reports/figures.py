"""Report figures (matplotlib, Agg backend): arrays in, a PNG file out (written atomically).

Every function takes plain numpy arrays in NIfTI ``[i, j, k]`` order (RAS assumed, axial
slices along ``k``) and writes one PNG; they return the path.  Units in the colour bars.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: Display colours of the 6 structures (left and right share a colour).
STRUCTURE_COLOURS = {
    "caudate": "#1f77b4", "putamen": "#ff7f0e", "pallidum": "#2ca02c",
    "thalamus": "#d62728", "substantia_nigra": "#9467bd", "red_nucleus": "#8c564b",
}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    from qsmprep.utils.atomic import atomic_path

    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return Path(path)


def pick_slices(mask: np.ndarray | None, shape, n: int = 8, axis: int = 2) -> list[int]:
    """``n`` evenly spaced slice indices along ``axis`` inside the mask's extent (10-90 %).

    >>> m = np.zeros((4, 4, 20), bool); m[:, :, 5:15] = True
    >>> pick_slices(m, m.shape, n=3)
    [6, 10, 13]
    """
    if mask is not None and np.any(mask):
        idx = np.where(np.any(mask, axis=tuple(a for a in range(3) if a != axis)))[0]
        lo, hi = idx[0], idx[-1]
    else:
        lo, hi = 0, shape[axis] - 1
    span = hi - lo
    pos = np.linspace(lo + 0.1 * span, lo + 0.9 * span, n)
    return sorted(dict.fromkeys(int(round(p)) for p in pos))


def robust_limits(data: np.ndarray, mask=None, symmetric=False, pct=(1.0, 99.0)) -> tuple[float, float]:
    """Display limits from percentiles inside the mask (symmetric about 0 if asked).

    >>> robust_limits(np.array([-2.0, 0.0, 1.0]), symmetric=True, pct=(0, 100))
    (-2.0, 2.0)
    """
    vals = data[mask > 0] if mask is not None and np.any(mask) else data.ravel()
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return (0.0, 1.0)
    lo, hi = (float(v) for v in np.percentile(vals, pct))
    if symmetric:
        m = max(abs(lo), abs(hi)) or 1.0
        return (-m, m)
    return (lo, hi if hi > lo else lo + 1.0)


def _axial(vol, k):
    return np.rot90(np.asarray(vol)[:, :, k])


def _grid(n):
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    return rows, cols


def mosaic_png(path, data, *, mask=None, title="", cmap="gray", symmetric=False, units="",
               n_slices=8, overlay_mask=None, contours=None) -> Path:
    """Axial mosaic of ``data``; optional red mask outline and coloured label contours.

    ``contours`` is an integer label array (DGM indices) drawn as coloured outlines.
    """
    plt = _plt()
    data = np.asarray(data, dtype=np.float32)
    slices = pick_slices(mask if mask is not None else overlay_mask, data.shape, n_slices)
    vmin, vmax = robust_limits(data, mask, symmetric=symmetric)
    rows, cols = _grid(len(slices))
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    im = None
    for ax, k in zip(axes.ravel(), slices):
        im = ax.imshow(_axial(data, k), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        if overlay_mask is not None:
            ax.contour(_axial(overlay_mask > 0, k).astype(float), levels=[0.5], colors="r",
                       linewidths=0.8)
        if contours is not None:
            _draw_label_contours(ax, _axial(contours, k))
        ax.set_title(f"k={k}", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    if im is not None:
        cb = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7)
        if units:
            cb.set_label(units)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _draw_label_contours(ax, sl):
    from qsmprep.atlas.labels import DGM_LABELS

    for lab in DGM_LABELS:
        m = sl == lab.index
        if m.any():
            ax.contour(m.astype(float), levels=[0.5], colors=STRUCTURE_COLOURS.get(lab.structure, "y"),
                       linewidths=0.9)


def fields_png(path, total_hz, local_ppm, *, mask=None, title="") -> Path:
    """Two rows of 4 axial slices: total field (Hz) above, local field (ppm) below."""
    plt = _plt()
    ref = mask if mask is not None else None
    slices = pick_slices(ref, np.shape(total_hz if total_hz is not None else local_ppm), 4)
    rows = [(total_hz, "total field", "Hz"), (local_ppm, "local field", "ppm")]
    rows = [r for r in rows if r[0] is not None]
    fig, axes = plt.subplots(len(rows), len(slices), figsize=(2.6 * len(slices), 2.9 * len(rows)),
                             squeeze=False)
    for r, (vol, name, units) in enumerate(rows):
        vol = np.asarray(vol, np.float32)
        vmin, vmax = robust_limits(vol, mask, symmetric=True)
        im = None
        for c, k in enumerate(slices):
            im = axes[r, c].imshow(_axial(vol, k), cmap="RdBu_r", vmin=vmin, vmax=vmax)
            axes[r, c].axis("off")
            axes[r, c].set_title(f"{name}, k={k}", fontsize=8)
        cb = fig.colorbar(im, ax=axes[r].tolist(), shrink=0.8)
        cb.set_label(units)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def roi_bar_png(path, df, *, title="") -> Path:
    """Bar chart of ROI mean chi (ppm) per structure, left/right side by side, IQR error bars.

    ``df`` is a :func:`qsmprep.atlas.rois.roi_table` frame (one run).
    """
    plt = _plt()
    structs = list(dict.fromkeys(df["structure"]))
    x = np.arange(len(structs))
    fig, ax = plt.subplots(figsize=(7.5, 3.4))
    for off, hemi, alpha in ((-0.2, "L", 1.0), (0.2, "R", 0.55)):
        sub = df[df["hemisphere"] == hemi].set_index("structure").reindex(structs)
        mean = sub["mean_ppm"].to_numpy(float)
        err = np.vstack([mean - sub["p25_ppm"].to_numpy(float), sub["p75_ppm"].to_numpy(float) - mean])
        err = np.clip(np.nan_to_num(err), 0, None)
        ax.bar(x + off, np.nan_to_num(mean), width=0.4, yerr=err, alpha=alpha, label=hemi, capsize=2,
               color=[STRUCTURE_COLOURS.get(s, "grey") for s in structs])
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, [s.replace("_", " ") for s in structs], rotation=20)
    ax.set_ylabel("mean chi (ppm)")
    ax.legend(title="hemisphere (bars: mean; whiskers: IQR)", fontsize=7, title_fontsize=7)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def group_png(path, long_df, *, value="mean_ppm", hue=None, title="") -> Path:
    """One panel per structure: ``value`` of every run, left and right, box + points.

    ``hue``: optional column (e.g. ``group``) colouring the points.
    """
    plt = _plt()
    structs = list(dict.fromkeys(long_df["structure"]))
    cols = min(3, len(structs))
    rows = int(np.ceil(len(structs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False)
    rng = np.random.default_rng(0)
    levels = list(dict.fromkeys(long_df[hue].astype(str))) if hue and hue in long_df else []
    cmap = plt.get_cmap("tab10")
    for ax, s in zip(axes.ravel(), structs):
        sub = long_df[long_df["structure"] == s]
        data = [sub.loc[sub["hemisphere"] == h, value].dropna().to_numpy(float) for h in ("L", "R")]
        ax.boxplot(data, positions=[0, 1], widths=0.5, showfliers=False)
        for pos, h in enumerate(("L", "R")):
            hs = sub[sub["hemisphere"] == h]
            vals = hs[value].to_numpy(float)
            jit = pos + rng.uniform(-0.12, 0.12, vals.size)
            if levels:
                cols_ = [cmap(levels.index(str(v)) % 10) for v in hs[hue]]
            else:
                cols_ = [STRUCTURE_COLOURS.get(s, "k")] * vals.size
            ax.scatter(jit, vals, s=12, c=cols_, zorder=3)
        ax.set_xticks([0, 1], ["L", "R"])
        ax.set_title(s.replace("_", " "), fontsize=9)
        ax.set_ylabel("chi (ppm)" if value.endswith("ppm") else value, fontsize=8)
    for ax in axes.ravel()[len(structs):]:
        ax.axis("off")
    if levels:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", ls="", color=cmap(i % 10), label=lv)
                   for i, lv in enumerate(levels)]
        fig.legend(handles=handles, title=hue, loc="upper right", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
