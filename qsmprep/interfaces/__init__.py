"""Nipype interfaces: thin adapters that load files, call one numerical function and save.

:mod:`qsmprep.interfaces.io` (echo stacking, the derivatives writer, figures) and
:mod:`qsmprep.interfaces.qsm` (mask, unwrap, echo fit, V-SHARP, inversion, referencing).
Import the submodules directly; nothing is imported here so ``qsmprep --help`` stays fast.
"""
