"""qsmprep: a BIDS-App for quantitative susceptibility mapping (QSM).

Multi-echo gradient-echo magnitude + phase in, susceptibility maps (ppm) and
deep-gray-matter ROI tables out.  The dipole inversion is NSIDL, an unrolled
proximal-gradient network with the nonlinear (NDI) data term.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
