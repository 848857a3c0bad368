"""Issue #15: inputs that got through the BIDS checks (or failed with a traceback) are refused early.

Every case builds the small synthetic dataset of ``conftest.make_bids`` (32^3, 4 mm, three echoes)
and damages one thing; :func:`qsmprep.bids.collect_runs` must raise :class:`InputError` with ONE
sentence naming the file, before the Nipype graph runs.  Legitimate inputs next to each rule
(integer scanner phase units, 11.7 T, a multi-member gzip, a BOM in participants.tsv) must still pass.
"""

from __future__ import annotations

import gzip
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from conftest import make_bids

from qsmprep.bids import (
    MIN_AXIS_VOXELS,
    InputError,
    check_dataset_files,
    collect_runs,
    phase_units,
)
from qsmprep.qsm.constants import B0_RANGE_T, check_field_strength

ECHO = "sub-01/anat/sub-01_echo-{echo}_part-{part}_MEGRE.nii.gz"


def _one_sentence(text: str) -> None:
    assert text.endswith(".") and "\n" not in text
    assert ". " not in text.replace("e.g. ", "").replace("i.e. ", "")


def _refused(bids, pattern, name):
    """collect_runs raises one sentence matching ``pattern`` that names ``name``."""
    with pytest.raises(InputError, match=pattern) as err:
        collect_runs(bids)
    text = str(err.value)
    _one_sentence(text)
    assert name in text
    return text


def _rewrite(bids, part, fn, echoes=(1, 2, 3), dtype=None, affine=None):
    """Replace the data (and optionally the affine) of the given echoes of ``part``."""
    import nibabel as nb

    for echo in echoes:
        path = bids / ECHO.format(echo=echo, part=part)
        img = nb.load(str(path))
        data = np.asarray(fn(np.asanyarray(img.dataobj), echo)).astype(dtype or np.asanyarray(img.dataobj).dtype)
        if affine is None:
            nb.save(nb.Nifti1Image(data, img.affine), str(path))
            continue
        hdr = nb.Nifti1Header()  # sform only: nibabel cannot store a singular affine as a qform
        hdr.set_data_shape(data.shape)
        hdr.set_data_dtype(data.dtype)
        hdr.set_sform(affine, code=1)
        nb.save(nb.Nifti1Image(data, None, header=hdr), str(path))


def _wrapped(data, echo):
    """A full-turn wrapped phase in rad, different per echo (the phantom's phase barely wraps)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in data.shape[:3]], indexing="ij")
    return np.angle(np.exp(1j * (0.9 * echo * i + 0.4 * j - 0.3 * k))).astype(np.float32)


@pytest.fixture
def bids(tmp_path):
    return make_bids(tmp_path / "ds")


@pytest.fixture
def wrapped_bids(bids):
    _rewrite(bids, "phase", _wrapped)
    return bids


# --------------------------------------------------------------------------- 1. phase units


def test_phase_units_rule_known_answers():
    assert phase_units(-np.pi, np.pi, False) == "rad"
    assert phase_units(-3.16, 3.17, False) == "rad"  # within pi + 1 %
    assert phase_units(0.0, 2 * np.pi, False) == "rad"  # radians in [0, 2pi): the same phase once wrapped
    assert phase_units(-4096, 4095, True) == "scanner"  # Siemens 12-bit
    assert phase_units(0, 4095, True) == "scanner"
    assert phase_units(-3142, 3142, True) == "scanner"  # Philips mrad
    assert phase_units(-128, 127, True) == "scanner"  # signed 8-bit codes
    assert phase_units(0, 255, True) == "scanner"  # unsigned 8-bit codes
    assert phase_units(0, 359, True) == "scanner"  # whole degrees 0..359 ARE a 360-code turn: converted exactly
    assert phase_units(-179.99, 179.98, False) == "deg"
    assert phase_units(-180, 180, True) == "deg"  # whole degrees (would be taken for a 361-code turn)
    assert phase_units(0.01, 359.9, False) == "deg"
    assert phase_units(-31.4, 30.2, False) == "unknown"  # unwrapped rad
    assert phase_units(-3.5, 3.5, False) == "unknown"  # just beyond pi
    assert phase_units(-20, 20, True) == "unknown"  # integers spanning < 20 pi codes
    assert phase_units(-1000.5, 2000.25, False) == "unknown"


def test_phase_units_sidecar_known_answers():
    """Issue #14: the sidecar's Units settles what the range alone cannot, and contradicts what it must not."""
    assert phase_units(-120.0, 95.0, False, "deg") == "deg"  # a partial turn: degrees only because the sidecar says so
    assert phase_units(-120.0, 95.0, False) == "unknown"
    assert phase_units(-179.9, 179.9, False, "Degrees") == "deg"
    assert phase_units(-3.1, 3.1, False, "deg") == "conflict"  # fits radians as well: refused, not guessed
    assert phase_units(-179.9, 179.9, False, "rad") == "conflict"  # degrees-looking values declared rad
    assert phase_units(-4096, 4095, True, "rad") == "scanner"  # integer codes cannot be radians
    assert phase_units(-np.pi, np.pi, False, "arbitrary") == "rad"


def _set_units(bids, value):
    """Set (or, with None, remove) ``Units`` in the phase sidecars of every echo."""
    for echo in (1, 2, 3):
        side = bids / ECHO.format(echo=echo, part="phase").replace(".nii.gz", ".json")
        meta = json.loads(side.read_text()) if side.exists() else {}
        meta.pop("Units", None)
        if value is not None:
            meta["Units"] = value
        side.write_text(json.dumps(meta))


def _stack_phase(bids):
    """The run's phase in radians as LoadEchoes makes it (echoes last)."""
    import nibabel as nb

    from qsmprep.qsm.echoes import magnitude_phase

    (run,) = collect_runs(bids)
    ph = np.stack([np.asarray(nb.load(str(p)).dataobj, np.float32) for p in run.phase], -1)
    return run, magnitude_phase(ph, ph, run.parts, run.phase_units)[1]


@pytest.mark.parametrize("name, fn, dtype", [
    ("degrees", lambda d, e: np.rad2deg(d), None),
    ("whole degrees", lambda d, e: np.round(np.rad2deg(d)), np.int16),
    ("0..360 degrees", lambda d, e: np.mod(np.rad2deg(d), 360.0), None),
    ("radians in [0, 2pi)", lambda d, e: np.mod(d, 2 * np.pi), None),
])
def test_phase_in_degrees_or_zero_to_two_pi_converted(wrapped_bids, name, fn, dtype):
    """Issue #15 refused these; issue #14 converts them: the same radians as the canonical phase."""
    _, want = _stack_phase(wrapped_bids)
    _rewrite(wrapped_bids, "phase", fn, dtype=dtype)
    if "pi" not in name:
        _set_units(wrapped_bids, None)  # the fixture's sidecars say rad: a converter that wrote no Units
    run, got = _stack_phase(wrapped_bids)
    assert run.phase_units == ("rad" if "pi" in name else "deg")
    tol = np.deg2rad(0.5) + 1e-6 if dtype is not None else 1e-5  # whole degrees round by up to half a degree
    assert np.max(np.abs(np.angle(np.exp(1j * (got - want))))) <= tol


def test_degrees_declared_in_sidecar_converted(wrapped_bids):
    """A partial turn in degrees (the range alone cannot tell) is converted when the sidecar says Units deg."""
    _rewrite(wrapped_bids, "phase", lambda d, e: 0.6 * np.rad2deg(d))
    _set_units(wrapped_bids, None)
    _refused(wrapped_bids, "neither wrapped radians", "part-phase_MEGRE.nii.gz")
    _set_units(wrapped_bids, "deg")
    (run,) = collect_runs(wrapped_bids)
    assert run.phase_units == "deg"


def test_units_conflicting_with_sidecar_refused(wrapped_bids):
    _rewrite(wrapped_bids, "phase", lambda d, e: np.rad2deg(d))
    _set_units(wrapped_bids, "rad")
    _refused(wrapped_bids, r"sidecar says Units 'rad'", "part-phase_MEGRE.nii.gz")


def test_unwrapped_phase_refused(wrapped_bids):
    _rewrite(wrapped_bids, "phase", lambda d, e: 10.0 * d)
    _refused(wrapped_bids, "neither wrapped radians.*nor integer scanner units", "part-phase_MEGRE.nii.gz")


@pytest.mark.parametrize(
    "codes, dtype",
    [
        (lambda d: np.round(d / np.pi * 2048).clip(-2048, 2047), np.int16),  # -2048..2047
        (lambda d: np.mod(np.round(d / np.pi * 2048), 4096), np.uint16),  # 0..4095
        (lambda d: np.round(d * 1000), np.int16),  # Philips -3142..3142
        (lambda d: np.round(d / np.pi * 128).clip(-128, 127), np.int8),  # 8-bit
        (lambda d: np.round(d / np.pi * 4096).clip(-4096, 4095), np.float32),  # codes stored as floats
    ],
)
def test_integer_scanner_units_still_accepted(wrapped_bids, codes, dtype):
    _rewrite(wrapped_bids, "phase", lambda d, e: codes(d), dtype=dtype)
    (run,) = collect_runs(wrapped_bids)
    assert run.phase_units == "scanner"


def test_wrapped_radians_accepted(wrapped_bids):
    (run,) = collect_runs(wrapped_bids)
    assert run.phase_units == "rad"


# --------------------------------------------------------------------------- 1. no signal


def test_all_zero_magnitude_refused(bids):
    _rewrite(bids, "mag", lambda d, e: np.zeros_like(d), echoes=(2,))
    _refused(bids, r"holds no signal \(every voxel is 0\)", "sub-01_echo-2_part-mag_MEGRE.nii.gz")


def test_zero_volume_of_a_magnitude_stack_refused(tmp_path):
    import nibabel as nb

    bids = make_bids(tmp_path / "ds", stack=True)
    path = bids / "sub-01/anat/sub-01_part-mag_MEGRE.nii.gz"
    img = nb.load(str(path))
    data = np.asarray(img.dataobj).copy()
    data[..., 1] = 0
    nb.save(nb.Nifti1Image(data, img.affine), str(path))
    _refused(bids, r"every voxel of volume 2 is 0", "sub-01_part-mag_MEGRE.nii.gz")


@pytest.mark.parametrize("value", [0.0, 1.5])
def test_constant_phase_refused(bids, value):
    """Issue #15: an all-zero phase ran to the end and reported chi = 0 as a success."""
    _rewrite(bids, "phase", lambda d, e: np.full_like(d, value), echoes=(3,))
    _refused(bids, rf"holds no phase information \(every voxel is {value:g}\)", "sub-01_echo-3_part-phase_MEGRE.nii.gz")


# --------------------------------------------------------------------------- 1./2. geometry


@pytest.mark.parametrize("axis", [0, 2])
def test_single_slice_refused(bids, axis):
    def cut(d, e):
        return np.take(d, [16], axis=axis)

    _rewrite(bids, "mag", cut)
    _rewrite(bids, "phase", cut)
    _refused(bids, rf"only 1 voxel\(s\) along array axis {axis}.*at least {MIN_AXIS_VOXELS}", "sub-01_echo-1_part-mag")


def test_thin_slab_refused_but_minimum_accepted(bids):
    _rewrite(bids, "mag", lambda d, e: d[:, :, 12:12 + MIN_AXIS_VOXELS - 1])
    _rewrite(bids, "phase", lambda d, e: d[:, :, 12:12 + MIN_AXIS_VOXELS - 1])
    _refused(bids, "thin slab", "sub-01_echo-1_part-mag")
    _rewrite(bids, "mag", lambda d, e: np.concatenate([d, d[:, :, :1]], axis=2))
    _rewrite(bids, "phase", lambda d, e: np.concatenate([d, d[:, :, :1]], axis=2))
    (run,) = collect_runs(bids)
    assert run.shape == (32, 32, MIN_AXIS_VOXELS)


def test_zero_length_axis_refused(bids):
    """Issue #15: a (32, 32, 0) image gave a traceback in --dry-run."""
    _rewrite(bids, "mag", lambda d, e: d[:, :, :0])
    _rewrite(bids, "phase", lambda d, e: d[:, :, :0])
    _refused(bids, r"holds no voxels \(shape \(32, 32, 0\)", "sub-01_echo-1_part-mag_MEGRE.nii.gz")


def test_singular_affine_refused(bids):
    """Issue #15: collinear voxel axes (a singular affine) gave a LinAlgError traceback in --dry-run."""
    from conftest import make_affine

    aff = make_affine()
    aff[:3, 2] = aff[:3, 1]
    for part in ("mag", "phase"):
        _rewrite(bids, part, lambda d, e: d, affine=aff)
    _refused(bids, r"unusable affine \(its voxel axes are collinear", "sub-01_echo-1_part-mag_MEGRE.nii.gz")


def test_zero_voxel_size_refused(bids):
    from conftest import make_affine

    aff = make_affine()
    aff[:3, 0] = 0.0
    for part in ("mag", "phase"):
        _rewrite(bids, part, lambda d, e: d, affine=aff)
    _refused(bids, r"unusable affine \(voxel size \(0.0, 4.0, 4.0\) mm has a zero", "sub-01_echo-1_part-mag")


# --------------------------------------------------------------------------- 3. declared size


def _lying_gz(path: Path, shape, n_values=14_000):
    """A .nii.gz whose header declares ``shape`` (int16) but which holds ``n_values`` random voxels."""
    import nibabel as nb

    hdr = nb.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    hdr["vox_offset"] = 352
    data = np.random.default_rng(0).integers(0, 1000, n_values).astype(np.int16).tobytes()
    path.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + data))


@pytest.mark.parametrize("shape", [(1000, 1000, 500), (10000, 10000, 10000)])
def test_huge_declared_gz_refused_before_reading(bids, shape):
    """Issue #15: a 28 kB .nii.gz declaring 1000^2 x 500 made qsmprep allocate ~1 GB (10000^3: an empty message)."""
    path = bids / ECHO.format(echo=1, part="mag")
    _lying_gz(path, shape)
    assert path.stat().st_size < 40_000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        text = _refused(bids, r"declares .* voxels of int16 .* but the file holds a .*gzip stream", path.name)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50e6 and time.perf_counter() - t0 < 10
    assert " x ".join(str(n) for n in shape) in text


def test_gz_shorter_than_declared_refused(bids):
    """Compressible enough to pass the ratio bound, but ISIZE (and the stream) hold less than declared."""
    path = bids / ECHO.format(echo=1, part="mag")
    _lying_gz(path, (32, 32, 32), n_values=32 * 32 * 20)
    _refused(bids, r"declares 32 x 32 x 32 voxels of int16 .* but the file holds only .* once decompressed", path.name)


def test_multi_member_gz_accepted(bids):
    """A valid gzip of several members (its trailer ISIZE covers the last one only) still passes."""
    path = bids / ECHO.format(echo=1, part="mag")
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:50_000]) + gzip.compress(raw[50_000:]))
    (run,) = collect_runs(bids)
    assert run.shape == (32, 32, 32)


def test_truncated_nii_refused(bids):
    import nibabel as nb

    for echo in (1, 2, 3):
        for part in ("mag", "phase"):
            gz = bids / ECHO.format(echo=echo, part=part)
            nii = gz.with_name(gz.name[:-3])
            nb.save(nb.load(str(gz)), str(nii))
            gz.unlink()
    victim = bids / "sub-01/anat/sub-01_echo-2_part-phase_MEGRE.nii"
    victim.write_bytes(victim.read_bytes()[:100_000])
    _refused(bids, r"declares 32 x 32 x 32 voxels of float32 \(131 kB.*holds only 100 kB", victim.name)


# --------------------------------------------------------------------------- 4. JSON


@pytest.mark.parametrize(
    "content, why",
    [
        (b'{"EchoTime": 0.006,}', "Expecting property name"),
        (b"", "the file is empty"),
        (b"[0.006]", "holds a list, not an object"),
        (b"\xff\xfe{\x00}\x00", "not UTF-8 text"),
    ],
)
def test_bad_json_sidecar_named_before_pybids(bids, content, why):
    """Issue #15: a sidecar that does not parse gave a ~40-line pybids traceback."""
    side = bids / "sub-01/anat/sub-01_echo-2_part-phase_MEGRE.json"
    side.write_bytes(content)
    _refused(bids, f"is not valid JSON .*{why}", str(side))


def test_bad_json_qsmprep_does_not_need_is_named(bids):
    """A T1w sidecar of another subject (pybids reads it too, whatever --participant-label says)."""
    import shutil

    anat = bids / "sub-02/anat"
    anat.mkdir(parents=True)
    shutil.copyfile(bids / ECHO.format(echo=1, part="mag"), anat / "sub-02_T1w.nii.gz")
    (anat / "sub-02_T1w.json").write_text('{"RepetitionTime": 2.3')
    with pytest.raises(InputError, match="sub-02_T1w.json is not valid JSON"):
        collect_runs(bids, participant_label=["01"])


def test_json_in_folders_pybids_skips_is_not_read(bids):
    for rel in ("derivatives/x/dataset_description.json", "sub-01/func/sub-01_task-a_bold.json",
                "code/settings.json", ".git/x.json", "sourcedata/a.json"):
        path = bids / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{not json")
    check_dataset_files(bids)
    assert len(collect_runs(bids)) == 1


# --------------------------------------------------------------------------- 5. TSV


@pytest.mark.parametrize(
    "content, pattern",
    [
        (b"participant_id\tage\nsub-01\t31\t5\n", r"line 2 has 3 column\(s\) but the header has 2"),
        (b"subject\tage\nsub-01\t31\n", r"has no participant_id column \(header: subject, age\)"),
        (bytes(range(256)) * 4, "it is binary, not UTF-8 text"),
        (b"", "the file is empty"),
    ],
)
def test_bad_participants_tsv_refused(bids, content, pattern):
    (bids / "participants.tsv").write_bytes(content)
    _refused(bids, pattern, "participants.tsv")


@pytest.mark.parametrize("name", ["sub-01/sub-01_sessions.tsv", "sub-01/sub-01_scans.tsv"])
@pytest.mark.parametrize("content, why", [(b"", "empty"), (b"\x00\x01\x02PK\x03\x04", "binary")])
def test_empty_or_binary_tsv_refused(bids, name, content, why):
    (bids / name).write_bytes(content)
    _refused(bids, f"is not a valid BIDS table .*{why}", name.split("/")[-1])


def test_good_tsvs_accepted(bids):
    (bids / "participants.tsv").write_bytes(b"\xef\xbb\xbfparticipant_id\tage\r\nsub-01\t31\r\n\r\n")
    (bids / "sub-01/sub-01_scans.tsv").write_text("filename\tacq_time\nanat/x.nii.gz\tn/a\n")
    assert len(collect_runs(bids)) == 1


# --------------------------------------------------------------------------- 6. field strength


def test_check_field_strength_rule():
    lo, hi = B0_RANGE_T
    for ok in (lo, 0.55, 1.5, 3, "3", 7.0, 9.4, 11.7, hi):
        assert check_field_strength(ok) is None, ok
    for bad in (0.05, hi + 0.1, 63.87, 127.7, 298.0, 3000, -3, 0, float("nan"), float("inf"), "3T", None, True):
        why = check_field_strength(bad)
        assert isinstance(why, str) and why.startswith("is not ") and "." not in why.replace("0.1", ""), (bad, why)
    assert check_field_strength(300) == f"is not in tesla, expected {lo:g}-{hi:g} T"
    assert check_field_strength("3T") == "is not a number"


def test_field_strength_out_of_range_refused_naming_the_sidecar_that_sets_it(bids):
    """Issue #15: MagneticFieldStrength 300 was accepted (chi 100x too small); the top-level MEGRE.json sets it."""
    (bids / "MEGRE.json").write_text(json.dumps({"MagneticFieldStrength": 300}))
    text = _refused(bids, r"'MagneticFieldStrength' = 300 .*is not valid \(300 is not in tesla, expected 0.1-12 T\)", "MEGRE.json")
    assert text.endswith(f"fix {bids / 'MEGRE.json'}.")


def test_field_strength_in_range_accepted(bids):
    (bids / "MEGRE.json").write_text(json.dumps({"MagneticFieldStrength": 11.7}))
    (run,) = collect_runs(bids)
    assert run.b0_t == 11.7


# --------------------------------------------------------------------------- 7. session 28's bad-input audit


def test_magnitude_stored_as_phase_refused(bids):
    """A magnitude image copied over the phase (0..N integers, a valid sidecar) was read as scanner codes."""
    import nibabel as nb

    for echo in (1, 2, 3):
        mag = np.asarray(nb.load(str(bids / ECHO.format(echo=echo, part="mag"))).dataobj)
        _rewrite(bids, "phase", lambda d, e, _m=mag: np.round(_m * 4095.0 / _m.max()), echoes=(echo,), dtype=np.int16)
    _refused(bids, r"looks like a magnitude image, not a phase image .*correlation 1\.00", "part-phase_MEGRE.nii.gz")


def test_magnitude_phase_correlation_known_answers():
    from qsmprep.bids import magnitude_phase_correlation

    rng = np.random.default_rng(0)
    mag = rng.uniform(0, 1000, (30, 30, 30))
    assert magnitude_phase_correlation(mag, 3 * mag + 7) == pytest.approx(1.0)
    assert abs(magnitude_phase_correlation(mag, rng.uniform(-np.pi, np.pi, mag.shape))) < 0.05  # wrapped phase
    assert np.isnan(magnitude_phase_correlation(np.zeros((4, 4, 4)), np.ones((4, 4, 4))))


def test_four_d_phase_with_three_d_magnitude_refused_with_the_layout_fix(bids):
    _rewrite(bids, "phase", lambda d, e: np.stack([d] * 3, -1), echoes=(2,))
    _refused(bids, r"is 4-D \(shape \(32, 32, 32, 3\)\) but .*sub-01_echo-2_part-mag_MEGRE.nii.gz, the other part of "
             r"the same echo, is 3-D; give both parts the same layout", "sub-01_echo-2_part-phase_MEGRE.nii.gz")


def test_echo_time_conflict_between_parts_refused(bids):
    side = bids / ECHO.format(echo=2, part="phase").replace(".nii.gz", ".json")
    meta = json.loads(side.read_text())
    ok = dict(meta, EchoTime=meta["EchoTime"] * (1 + 1e-6))  # rounding in a converter: the same echo time
    side.write_text(json.dumps(ok))
    assert len(collect_runs(bids)) == 1
    side.write_text(json.dumps(dict(meta, EchoTime=0.015)))
    text = _refused(bids, r"disagree on 'EchoTime' \(0\.012 vs 0\.015 s\)", "sub-01_echo-2_part-phase_MEGRE.nii.gz")
    assert "sub-01_echo-2_part-mag_MEGRE" in text


def test_field_strength_conflict_between_echoes_refused(bids):
    for echo in (2, 3):
        for part in ("mag", "phase"):
            side = bids / ECHO.format(echo=echo, part=part).replace(".nii.gz", ".json")
            side.write_text(json.dumps({**json.loads(side.read_text()), "MagneticFieldStrength": 7.0}))
    _refused(bids, r"has 'MagneticFieldStrength' 7 T but .*sub-01_echo-1_part-mag_MEGRE.nii.gz of the same run has 3 T",
             "sub-01_echo-2_part-mag_MEGRE.nii.gz")


def test_field_strength_close_values_accepted(bids):
    """A Siemens '3 T' scanner reports 2.89 T: within 5 % of 3 is the same field strength."""
    side = bids / ECHO.format(echo=2, part="phase").replace(".nii.gz", ".json")
    side.write_text(json.dumps({**json.loads(side.read_text()), "MagneticFieldStrength": 2.89}))
    (run,) = collect_runs(bids)
    assert run.b0_t == 3.0


@pytest.mark.parametrize("shear, refused", [(0.2, True), (0.004, False)])
def test_sheared_affine_refused(bids, shear, refused):
    """A sheared sform (voxel axes 11 degrees from perpendicular) gave a voxel size and a B0 direction from a
    non-orthogonal matrix; a shear of 0.2 degrees (float rounding in a resampling tool) is accepted."""
    from conftest import make_affine

    aff = make_affine()
    aff[0, 2] = shear * aff[2, 2]
    for part in ("mag", "phase"):
        _rewrite(bids, part, lambda d, e: d, affine=aff)
    if refused:
        _refused(bids, r"unusable affine \(its voxel axes 0 and 2 meet at 78\.7 degrees, a sheared grid\)",
                 "sub-01_echo-1_part-mag_MEGRE.nii.gz")
    else:
        assert len(collect_runs(bids)) == 1


@pytest.mark.parametrize("units", ["rad", "arbitrary"])
def test_phase_over_pi_refused(wrapped_bids, units):
    """Phase divided by pi (values filling [-1, 1]) was read as radians covering a third of the turn."""
    def over_pi(d, e):  # phase over pi; the background's noise reaches both ends of [-1, 1]
        out = d / np.pi
        out.flat[0], out.flat[-1] = -1.0, 1.0
        return out

    _rewrite(wrapped_bids, "phase", over_pi)
    _set_units(wrapped_bids, units)
    _refused(wrapped_bids, r"looks like phase divided by pi .*multiply it by pi", "part-phase_MEGRE.nii.gz")
    assert phase_units(-1.0, 1.0, False, "rad") == "over_pi" and phase_units(-0.9, 0.7, False) == "rad"
    assert phase_units(-0.995, 0.992, False, "rad") == "rad"  # a sidecar's rad wins unless both ends are at +-1
    assert phase_units(-0.995, 0.992, False) == "over_pi"


def test_masked_integer_phase_refused_naming_the_cause(wrapped_bids):
    """12-bit codes whose background was masked to zero and that cover only part of the turn: the codes per turn
    cannot be told, and the sentence says why (not 'unwrapped phase?')."""
    _rewrite(wrapped_bids, "phase", lambda d, e: np.round(np.clip(d, -1.2, 1.2) / np.pi * 2048 + 2048), dtype=np.int16)
    _set_units(wrapped_bids, "arbitrary")
    _refused(wrapped_bids, r"only part of any scanner's turn, .*a background masked to zero", "part-phase")


def test_unwrapped_phase_as_integers_refused(wrapped_bids):
    """Unwrapped phase in integer milliradians (-21990..21990) was taken for scanner codes with that span as a turn."""
    _rewrite(wrapped_bids, "phase", lambda d, e: np.round(1000 * (d + 2 * np.pi * e)) * (1 if e % 2 else -1),
             dtype=np.int16)
    _set_units(wrapped_bids, "arbitrary")
    _refused(wrapped_bids, "only part of any scanner's turn.*or unwrapped phase", "part-phase_MEGRE.nii.gz")


def test_missing_imaginary_part_refused(bids):
    """Real/imaginary data (GE) with one part of an echo missing: one sentence naming the part to add."""
    import nibabel as nb

    anat = bids / "sub-01" / "anat"
    for e in (1, 2, 3):
        mag_p, ph_p = (anat / ECHO.format(echo=e, part=p).split("/")[-1] for p in ("mag", "phase"))
        m, p = (np.asarray(nb.load(str(x)).dataobj) for x in (mag_p, ph_p))
        for part, arr in (("real", m * np.cos(p)), ("imag", m * np.sin(p))):
            if not (part == "imag" and e == 2):
                nb.save(nb.Nifti1Image(arr.astype(np.float32), nb.load(str(mag_p)).affine),
                        str(anat / f"sub-01_echo-{e}_part-{part}_MEGRE.nii.gz"))
                (anat / f"sub-01_echo-{e}_part-{part}_MEGRE.json").write_text(json.dumps({"EchoTime": 0.006 * e}))
        for x in (mag_p, ph_p):
            x.unlink()
            x.with_name(x.name.replace(".nii.gz", ".json")).unlink()
    text = _refused(bids, r"No part-imag image matches .*sub-01_echo-2_part-real_MEGRE.nii.gz; add "
                    r"sub-01_echo-2_part-imag_MEGRE.nii.gz", "sub-01_echo-2_part-real_MEGRE.nii.gz")
    assert "remove the part-real image" in text
