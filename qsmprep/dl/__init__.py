"""qsmprep.dl: NSIDL, the nonlinear-model-driven unrolled dipole-inversion network.

* :mod:`qsmprep.dl.physics` -- torch dipole kernel / convolution / NDI gradient / TKD (fp32).
* :mod:`qsmprep.dl.model` -- ``NSIDL`` (TKD + Nesterov NDI start, K learned prox steps, 3-D U-Net).
* :mod:`qsmprep.dl.synthetic` -- on-the-fly brain-like / random-shape training volumes.
* :mod:`qsmprep.dl.train` -- the training loop, checkpoints and export (config in its docstring).
* :mod:`qsmprep.dl.train_cli` -- ``qsmprep-train`` / ``python -m qsmprep.dl.train``.
* :mod:`qsmprep.dl.metrics` -- torch XSIM, demeaned NRMSE and the training loss.
* :mod:`qsmprep.dl.validation` -- validation heads, inference presets, ``validate``.
* :mod:`qsmprep.dl.weights` -- shipped weights (sha256-checked), ``weights_info``.
* :mod:`qsmprep.dl.inference` -- ``invert_nsidl(local_ppm, mask, voxel_size, b0_dir, ...)``.

torch is imported lazily by the submodules; importing this package is cheap.
"""


def invert_nsidl(*args, **kwargs):
    """See :func:`qsmprep.dl.inference.invert_nsidl`."""
    from qsmprep.dl.inference import invert_nsidl as _f

    return _f(*args, **kwargs)


def weights_info(*args, **kwargs):
    """See :func:`qsmprep.dl.weights.weights_info`."""
    from qsmprep.dl.weights import weights_info as _f

    return _f(*args, **kwargs)
