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
