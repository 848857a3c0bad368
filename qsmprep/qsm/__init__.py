"""Pure-numpy QSM numerics.

Conventions shared by every module here (and by ``qsmprep.dl``):

* Arrays are float32 volumes indexed ``[i, j, k]`` in the NIfTI array order.
* ``voxel_size`` is a 3-tuple in millimetres, ``b0_dir`` a unit 3-vector in
  *array* axes (see :func:`qsmprep.qsm.geometry.b0_direction_from_affine`).
* Phase is in radians, echo times in seconds, field strength in tesla, the total
  field in Hz, the local field in ppm, susceptibility (chi) in ppm.
* The dipole kernel sets ``D(k=0) = 0``: the mean of chi is not recoverable and
  chi is referenced afterwards (:mod:`qsmprep.qsm.reference`).
* No module here imports nipype or nibabel, or reads or writes files.
"""
