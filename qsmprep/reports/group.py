"""Group-level figures (matplotlib, Agg) and the self-contained HTML group report.

Figures take the tables of :mod:`qsmprep.group_stats` (participant means in ppm, group
descriptives, covariate fits) and write one PNG atomically; the HTML embeds every image as
base64, so ``group_desc-dgm_report.html`` opens offline and can be mailed on its own.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

from qsmprep.reports.figures import STRUCTURE_COLOURS, _plt, _save

_HEMIS = ("L", "R", "bilateral")


def _panels(n, plt, w=3.6, h=3.1):
    cols = min(3, max(n, 1))
    rows = int(np.ceil(max(n, 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(w * cols, h * rows), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    return fig, axes.ravel()


def _level_legend(fig, cmap, levels, title):
    """A legend, top right, of the colour of each level (``cmap(index % 10)``, as the points are drawn)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", ls="", color=cmap(i % 10), label=str(lv)) for i, lv in enumerate(levels)]
    fig.legend(handles=handles, title=title, loc="upper right", fontsize=7, title_fontsize=7)


def _finish(fig, path, title) -> Path:
    """Title, layout (room for the legend on the right), save as PNG."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 0.95))
    return _save(fig, path)


def group_means_png(path, pm, desc, *, by, levels, value="mean_ppm", title="") -> Path:
    """One panel per structure: participant means (points) and group mean with CI (bars), per hemisphere.

    ``pm``: :func:`qsmprep.group_stats.participant_means` output with a ``by`` column (level per
    participant); ``desc``: :func:`qsmprep.group_stats.group_descriptives` output (ppm).
    """
    plt = _plt()
    structs = list(dict.fromkeys(pm["structure"]))
    hemis = [h for h in _HEMIS if h in set(pm["hemisphere"])]
    fig, axes = _panels(len(structs), plt)
    cmap = plt.get_cmap("tab10")
    rng = np.random.default_rng(0)
    width = 0.8 / max(len(levels), 1)
    for ax, s in zip(axes, structs):
        for hi, h in enumerate(hemis):
            for li, lv in enumerate(levels):
                x = hi + (li - (len(levels) - 1) / 2) * width
                vals = pm.loc[(pm["structure"] == s) & (pm["hemisphere"] == h) & (pm[by] == lv), value]
                vals = vals.to_numpy(float)
                vals = vals[np.isfinite(vals)]
                ax.scatter(x + rng.uniform(-0.25, 0.25, vals.size) * width, vals, s=10,
                           color=cmap(li % 10), alpha=0.6, zorder=2)
                row = desc[(desc["structure"] == s) & (desc["hemisphere"] == h) & (desc["level"] == lv)]
                if len(row) and np.isfinite(row["mean_ppm"].iloc[0]):
                    m = float(row["mean_ppm"].iloc[0])
                    lo, hi_ = float(row["ci_low_ppm"].iloc[0]), float(row["ci_high_ppm"].iloc[0])
                    err = [[m - lo], [hi_ - m]] if np.isfinite(lo) else None
                    ax.errorbar([x], [m], yerr=err, fmt="_", ms=14, color="k", capsize=3, zorder=3)
        ax.set_xticks(range(len(hemis)), hemis, fontsize=8)
        ax.set_title(s.replace("_", " "), fontsize=9, color=STRUCTURE_COLOURS.get(s, "k"))
        ax.set_ylabel("chi (ppm)", fontsize=8)
    _level_legend(fig, cmap, levels, by)
    return _finish(fig, path, title)


def covariate_png(path, pm, fits, *, covariate, units="", hue=None, value="mean_ppm", title="") -> Path:
    """One panel per structure: bilateral participant means (ppm) against ``covariate`` with the fitted line.

    ``pm`` holds a ``covariate`` column (and ``hue``, e.g. the group, when given); ``fits`` is
    :func:`qsmprep.group_stats.covariate_fits` output (its ``bilateral`` rows are drawn).
    """
    plt = _plt()
    structs = list(dict.fromkeys(pm["structure"]))
    hemi = "bilateral" if "bilateral" in set(pm["hemisphere"]) else pm["hemisphere"].iloc[0]
    fig, axes = _panels(len(structs), plt)
    cmap = plt.get_cmap("tab10")
    levels = [lv for lv in dict.fromkeys(pm[hue]) if isinstance(lv, str)] if hue else []
    per = f"ppm/{units}" if units else "ppm/unit"
    for ax, s in zip(axes, structs):
        sub = pm[(pm["structure"] == s) & (pm["hemisphere"] == hemi)]
        x = sub[covariate].to_numpy(float)
        y = sub[value].to_numpy(float)
        if levels:
            colours = [cmap(levels.index(v) % 10) if v in levels else "grey" for v in sub[hue]]
        else:
            colours = STRUCTURE_COLOURS.get(s, "k")
        ax.scatter(x, y, s=12, c=colours, alpha=0.8, zorder=2)
        row = fits[(fits["structure"] == s) & (fits["hemisphere"] == hemi)]
        label = s.replace("_", " ")
        if len(row) and np.isfinite(row["slope_ppm_per_unit"].iloc[0]):
            b, a = float(row["slope_ppm_per_unit"].iloc[0]), float(row["intercept_ppm"].iloc[0])
            ok = np.isfinite(x)
            xs = np.array([np.min(x[ok]), np.max(x[ok])])
            ax.plot(xs, a + b * xs, color="k", lw=1, zorder=3)
            label += f"\nslope {b:.3g} {per}, p={float(row['p'].iloc[0]):.2g}"
        ax.set_title(label, fontsize=8)
        ax.set_xlabel(f"{covariate}" + (f" ({units})" if units else ""), fontsize=8)
        ax.set_ylabel(f"chi, {hemi} (ppm)", fontsize=8)
    if levels:
        _level_legend(fig, cmap, levels, hue)
    return _finish(fig, path, title)


def section(title, *, text="", image=None, tables=(), facts=()) -> dict:
    """One report section: a heading, a paragraph, key/value ``facts``, an image path, ``(caption, DataFrame)`` tables."""
    return {"title": title, "text": text, "image": image, "tables": list(tables), "facts": list(facts)}


def _fmt(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "n/a" if not np.isfinite(v) else f"{v:.4g}"
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "n/a"
    return str(v)


def _table_html(caption, df) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return (f"<details open><summary>{html.escape(caption)}</summary><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></details>")


def _img_html(path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(Path(path).name)}" src="data:image/png;base64,{data}">'


_CSS = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;margin-top:1.6em}
table{border-collapse:collapse;font-size:0.8em;margin:0.5em 0}td,th{border:1px solid #ddd;padding:2px 6px;
text-align:right}th{background:#f3f3f3}img{max-width:100%}dt{font-weight:bold}dd{margin:0 0 0.4em 1em}
summary{cursor:pointer;font-weight:bold;font-size:0.9em}"""


def build_group_html(path, sections, *, title="qsmprep group report") -> Path:
    """Write a self-contained HTML page (inline CSS, images as base64) from :func:`section` dicts."""
    from qsmprep import __version__
    from qsmprep.utils.atomic import write_text

    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}"
             f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
             f"<p>qsmprep {html.escape(str(__version__))}</p>"]
    for sec in sections:
        parts.append(f"<h2>{html.escape(sec['title'])}</h2>")
        if sec["text"]:
            parts.append(f"<p>{html.escape(sec['text'])}</p>")
        if sec["facts"]:
            parts.append("<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                                          for k, v in sec["facts"]) + "</dl>")
        if sec["image"] is not None:
            parts.append(_img_html(sec["image"]))
        parts.extend(_table_html(cap, df) for cap, df in sec["tables"])
    parts.append("</body></html>\n")
    return write_text(path, "".join(parts))
