"""Which device a torch step runs on: resolved in one place.

``cuda_status()`` asks torch whether a CUDA GPU is visible *on this machine*; ``resolve_device``
turns a user's ``auto`` / ``cpu`` / ``cuda`` into the device a step runs on.  Whether the
scheduler should *reserve* a GPU for a node (MultiProc's GPU slots, SLURM's ``--gres``) is a
different question, answered by :func:`qsmprep.config.Config.schedules_gpu` from what the user
asked for, never from the hardware of the machine that builds the graph.
"""

from __future__ import annotations

DEVICES = ("auto", "cpu", "cuda")


class DeviceUnavailableError(RuntimeError):
    """``cuda`` was asked for but torch sees no CUDA GPU here."""


def cuda_status() -> tuple[bool, str]:
    """``(available, why)`` for a CUDA GPU as torch sees it on this machine (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch {torch.__version__} with CUDA {torch.version.cuda}"
        return False, f"torch.cuda.is_available() is False, {build}"
    return True, torch.cuda.get_device_name(0)


def resolve_device(device: str | None = "auto") -> str:
    """``"cpu"`` or ``"cuda"``: ``auto`` (or None) is ``cuda`` when torch sees a GPU here, else ``cpu``.

    ``cuda`` (or ``cuda:N``) without a visible GPU raises :class:`DeviceUnavailableError`; an
    unknown name raises ValueError.  Imports torch only for ``auto`` and ``cuda``.
    """
    name = "auto" if device is None else str(device)
    if name == "cpu":
        return "cpu"
    if name != "auto" and not name.startswith("cuda"):
        raise ValueError(f"Unknown device {device!r}; use one of {DEVICES}.")
    ok, why = cuda_status()
    if name == "auto":
        return "cuda" if ok else "cpu"
    if not ok:
        raise DeviceUnavailableError(
            f"device {name!r} was requested but PyTorch sees no CUDA GPU on this machine ({why}); use the CPU "
            "(--device cpu) or run where a GPU is visible (docker --gpus all, apptainer --nv, a GPU node).")
    return name
