"""Every user-facing message of the qsmprep command line, in one place.

Each input error is ONE sentence that names the offending file (or folder) and
says how to fix it.  Messages are ``str.format`` templates; callers fill them
with keyword arguments.  Keeping them here (MRIQC's ``messages.py`` habit) keeps
the wording consistent and lets the tests match on it.
"""

# --- exit codes -------------------------------------------------------------
#: The workflow (or a subject's report) failed.
EXIT_WORKFLOW_FAILED = 1
#: Bad command line or bad input dataset: nothing was run, nothing was written.
EXIT_INPUT_ERROR = 2
#: A requested resource (the GPU) is not usable on this machine.
EXIT_CANNOT_EXECUTE = 126
#: Interrupted (Ctrl-C), as shells report SIGINT.
EXIT_INTERRUPTED = 130

# --- input dataset ----------------------------------------------------------
BIDS_DIR_MISSING = "The input dataset {path} does not exist; give the path to a BIDS dataset folder."
BIDS_NO_DESCRIPTION = (
    "The input dataset {path} has no dataset_description.json; point qsmprep at the root of a BIDS "
    "dataset (the folder that holds dataset_description.json and the sub-* folders)."
)
BIDS_INVALID = (
    "{summary}; fix the dataset (run bids-validator-deno on it for the details) or pass --skip-bids-validation."
)
BIDS_EMPTY = (
    "No multi-echo gradient-echo data (anat/*_part-mag_MEGRE or *_part-mag_T2starw images with "
    "matching part-phase images) were found in {path}; check the file names against the BIDS "
    "specification."
)
BIDS_UNKNOWN_PARTICIPANT = (
    "Participant label(s) {labels} not found in {path} (available: {available}); fix "
    "--participant-label."
)
BIDS_UNKNOWN_SESSION = (
    "Session label(s) {labels} not found for the selected participants in {path} (available: "
    "{available}); fix --session-label."
)
MISSING_PHASE = (
    "No phase image matches {path}; add the part-phase image {expected} (same entities, "
    "part-phase) or remove the magnitude."
)
MISSING_MAGNITUDE = (
    "No magnitude image matches {path}; add the part-mag image {expected} (same entities, "
    "part-mag) or remove the phase."
)
MISSING_METADATA = (
    "Missing '{key}' ({unit}) in the JSON sidecar of {path}; add it to {sidecar} (or to a "
    "sidecar it inherits from)."
)
BAD_METADATA = "'{key}' = {value!r} in the JSON sidecar of {path} is not valid ({why}); fix {sidecar}."
ECHO_COUNT_MISMATCH = (
    "{path} has {n_vol} echo volume(s) but 'EchoTime' lists {n_te} value(s); make the sidecar's "
    "EchoTime list one echo time (s) per volume."
)
DUPLICATE_ECHO_TIME = (
    "Two echoes of {path} share EchoTime {te} s; give each echo its own EchoTime in its sidecar."
)
GRID_MISMATCH = (
    "{path} is on a different voxel grid ({what}) than {reference}; reslice it onto the same grid "
    "(same shape and affine) before running qsmprep."
)
NOT_3D = "{path} has {ndim} dimension(s) where a 3-D image (or a 4-D echo stack) was expected; fix the file."
NAN_VALUES = (
    "{path} contains {n} NaN/Inf value(s); replace them (e.g. with 0) in a copy of the dataset and "
    "run qsmprep on that copy."
)
UNREADABLE_IMAGE = "{path} cannot be read as a NIfTI image ({why}); re-export it from the scanner data."

# --- output / work folders --------------------------------------------------
OUT_INSIDE_BIDS = (
    "The output folder {out} is inside the input dataset {bids}, which qsmprep never modifies; "
    "choose an output folder outside it, e.g. {suggestion}."
)
OUT_EQUALS_BIDS = (
    "The output folder {out} is the input dataset itself; choose an output folder outside it, e.g. "
    "{suggestion}."
)
OUT_NOT_WRITABLE = (
    "The output folder {out} cannot be created or written ({why}); choose a folder you can write "
    "to or fix its permissions."
)
WORK_INSIDE_BIDS = (
    "The work folder {work} is inside the input dataset {bids}, which qsmprep never modifies; pass "
    "-w/--work-dir outside it."
)
PLUGIN_FILE_BAD = (
    "The plugin file {path} is not valid ({why}); write YAML with 'plugin' (one of {choices}) and "
    "optional 'plugin_args'."
)
CONFIG_FILE_BAD = "The config file {path} cannot be read ({why}); pass a qsmprep.toml written by an earlier run."

CLUSTER_PATH_UNSAFE = (
    "The work folder {path} holds {chars}, which the {plugin} plugin would pass unquoted to the "
    "scheduler's shell; choose a work folder (-w) of letters, digits and ._-/+,:@%=~ only."
)

NSIDL_WEIGHTS_MISSING = "{why}, or choose a classical inversion with --inversion tkd, cgl2 or ndi."

# --- devices ---------------------------------------------------------------
NO_CUDA = (
    "--device cuda was requested but PyTorch sees no CUDA GPU on this machine ({why}); run with "
    "--device cpu, or expose the GPU (docker --gpus all, apptainer --nv, or a GPU node)."
)

# --- group level -------------------------------------------------------------
GROUP_NO_OUTPUT_DIR = (
    "The output folder {out} does not exist; run the participant level first "
    "(qsmprep {bids} {out} participant)."
)
GROUP_UNAVAILABLE = "The group level needs qsmprep.group, which is not installed in this build; update qsmprep."

# --- progress / milestones -------------------------------------------------
STARTED = "qsmprep {version} started (run {run_uuid}): {n_runs} run(s) of {n_subjects} participant(s)."
FINISHED = "qsmprep finished successfully; results are in {out}."
SUBMITTED = ("qsmprep submitted the graph with {plugin}; the jobs write the results and the subject reports to "
             "{out} as they finish.")
FAILED = "qsmprep failed; see the crash files in {crash_dir} and rerun the same command to resume."
INTERRUPTED = ("qsmprep was interrupted; no output is left half-written under its final name, so rerun the same "
               "command (with the same work folder) to resume.")

# --- input checks of issue #15 (qsmprep/bids.py) ----------------------------
# Dataset files read before pybids indexes the dataset.
JSON_INVALID = (
    "{path} is not valid JSON ({why}); fix the file (a BIDS .json file holds one JSON object, e.g. "
    '{{"EchoTime": 0.02}}) or remove it.'
)
TSV_INVALID = (
    "{path} is not a valid BIDS table ({why}); fix it (UTF-8 text, tab-separated, a header row and "
    "the same number of columns on every row) or remove it."
)
PARTICIPANTS_NO_ID = (
    "{path} has no participant_id column (header: {header}); make the first column participant_id "
    "with sub-<label> values, as BIDS requires, or remove the file."
)
# Image headers, checked before the data are read.
IMAGE_EMPTY_AXIS = "{path} holds no voxels (shape {shape} has a zero-length axis); re-export it from the scanner data."
AXIS_TOO_SHORT = (
    "{path} has only {n} voxel(s) along array axis {axis} (shape {shape}) where qsmprep needs at "
    "least {minimum} along each spatial axis (a 3-D volume, not a single slice or a thin slab); "
    "give the whole 3-D acquisition."
)
BAD_AFFINE = (
    "{path} has an unusable affine ({why}), so its voxel size and B0 direction are undefined; fix "
    "the qform/sform of the header (e.g. re-convert the DICOMs with dcm2niix)."
)
IMAGE_SIZE_MISMATCH = (
    "{path} declares {shape} voxels of {dtype} ({declared}) but the file holds {holds}, so its header "
    "is wrong or the file is truncated; re-export (or copy again) the image."
)
# Image contents.
MAG_NO_SIGNAL = (
    "{path} holds no signal (every voxel{where} is {value:g}); check that it is the magnitude "
    "image of this run and re-export it from the scanner data."
)
PHASE_CONSTANT = (
    "{path} holds no phase information (every voxel{where} is {value:g}); check that it is the "
    "phase image of this run and re-export it from the scanner data."
)
PHASE_IN_DEGREES = (
    "The phase of {path} ranges from {lo:.4g} to {hi:.4g}, which looks like degrees; convert it to "
    "radians in [-pi, pi) (multiply by pi/180, then subtract 2pi above pi) in a copy of the dataset "
    "and run qsmprep on that copy."
)
PHASE_ZERO_TO_TWO_PI = (
    "The phase of {path} ranges from {lo:.4g} to {hi:.4g}, which looks like radians in [0, 2pi); "
    "wrap it to [-pi, pi) (subtract 2pi above pi) in a copy of the dataset and run qsmprep on that copy."
)
PHASE_OVER_PI = (
    "The phase of {path} ranges from {lo:.4g} to {hi:.4g}, which looks like phase divided by pi (normalised "
    "to [-1, 1]) rather than radians, which would use only a third of the turn; multiply it by pi in a copy "
    "of the dataset and run qsmprep on that copy."
)
PHASE_PARTIAL_TURN = (
    "The phase of {path} holds integer codes from {lo:.0f} to {hi:.0f}, only part of any scanner's turn, so the codes "
    "per turn cannot be told (a background masked to zero, or unwrapped phase?); give the scanner's wrapped phase with "
    "its background noise, or convert it to radians in a copy of the dataset and run qsmprep on that copy."
)
PHASE_LOOKS_LIKE_MAGNITUDE = (
    "{path} looks like a magnitude image, not a phase image (its values follow those of {reference}: "
    "correlation {r:.2f} in the bright voxels, where a phase image scores about 0); check that the "
    "part-phase file holds this echo's phase and re-export it from the scanner data."
)
PART_LAYOUT_MISMATCH = (
    "{path} is {ndim}-D (shape {shape}) but {reference}, the other part of the same echo, is {ref_ndim}-D; "
    "give both parts the same layout (one 3-D image per echo, or one 4-D stack of all echoes per part "
    "with 'EchoTime' listing them)."
)
ECHO_TIME_CONFLICT = (
    "The sidecars of {mag} and {phase} disagree on 'EchoTime' ({te_mag} vs {te_phase} s); fix the wrong one "
    "({sidecar_mag} or {sidecar_phase}) so that both parts of an echo give its echo time."
)
FIELD_STRENGTH_CONFLICT = (
    "{path} has 'MagneticFieldStrength' {b0:g} T but {reference} of the same run has {b0_ref:g} T; fix the "
    "wrong sidecar ({sidecar} or {sidecar_ref}): one run is acquired at one field strength."
)
PHASE_UNITS_UNKNOWN = (
    "The phase of {path} ranges from {lo:.4g} to {hi:.4g}, neither wrapped radians within [-pi, pi] "
    "nor integer scanner units (unwrapped or rescaled phase?); give the scanner's wrapped phase, in "
    "radians or in its integer units."
)
