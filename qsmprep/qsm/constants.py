"""Physical constants, with units."""

#: Proton gyromagnetic ratio over 2*pi, in Hz per tesla (CODATA 2018).
GAMMA_BAR_HZ_PER_T = 42.577478518e6

#: Proton gyromagnetic ratio, in rad per second per tesla.
GAMMA_RAD_PER_S_PER_T = 2.6752218744e8


def hz_per_ppm(b0_t: float) -> float:
    """Frequency shift in Hz that corresponds to 1 ppm at field strength ``b0_t`` (T).

    Example: 127.73 Hz/ppm at 3 T, 298.04 Hz/ppm at 7 T.
    """
    return GAMMA_BAR_HZ_PER_T * float(b0_t) * 1e-6


def rad_per_ppm(b0_t: float, te_s: float) -> float:
    """Phase in radians accumulated at echo time ``te_s`` (s) by a 1 ppm field at ``b0_t`` (T).

    ``s = 2*pi * gamma_bar * B0 * TE * 1e-6``; e.g. 16.05 rad/ppm at 3 T and TE = 20 ms.
    """
    return 2.0 * 3.141592653589793 * hz_per_ppm(b0_t) * float(te_s)


#: Field strengths accepted as ``MagneticFieldStrength`` / ``--b0``, in T (inclusive): clinical and
#: research MRI from 0.1 T to the 11.7 T human scanners.  Values outside are unit mistakes
#: (e.g. 127.7 or 298 = the Larmor frequency in MHz at 3 T / 7 T; 3000 = mT), which would scale chi
#: by the wrong factor (chi ~ 1 / B0), so both the app and ``qsmprep invert`` refuse them
#: (:func:`check_field_strength`).
B0_RANGE_T = (0.1, 12.0)


def check_field_strength(b0_t) -> str | None:
    """Why ``b0_t`` is not a usable main-field strength in tesla, or None when it is.

    The reason is a predicate to follow the value in a message, ``f"{b0_t} {why}"``, e.g.
    ``"field strength 300 is not in tesla, expected 0.1-12 T"``.  The rule is
    :data:`B0_RANGE_T` (inclusive).  Pure: no imports, no I/O.  Accepts ints, floats and
    numeric strings (JSON values); bools, None and other strings are not numbers.

    >>> check_field_strength(3.0) is None
    True
    >>> check_field_strength(300)
    'is not in tesla, expected 0.1-12 T'
    """
    lo, hi = B0_RANGE_T
    if isinstance(b0_t, bool):
        return "is not a number"
    try:
        value = float(b0_t)
    except (TypeError, ValueError):
        return "is not a number"
    if value != value or value in (float("inf"), float("-inf")):
        return "is not a finite number"
    if not lo <= value <= hi:
        return f"is not in tesla, expected {lo:g}-{hi:g} T"
    return None
