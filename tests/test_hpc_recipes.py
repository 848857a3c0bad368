"""Container recipes, plugin files and batch scripts, checked without Docker, Apptainer or SLURM.

* the Dockerfile and the Apptainer definition parse, have the stages/sections a BIDS-App needs
  (multi-stage, CPU default + CUDA build argument, non-root user, ``ENTRYPOINT qsmprep``,
  one BLAS/OpenMP thread per process, the data check) and install exactly the locked
  requirement files that CI installs;
* the lock covers every dependency in ``pyproject.toml`` and is what this environment has;
* the Nipype plugin files load with qsmprep's own reader and Nipype's plugin classes, and the
  NSIDL inversion node asks for a GPU through per-node ``sbatch_args``;
* the sbatch scripts are valid bash, read participants.tsv or a label list, and submit.sh
  submits the array and an ``afterok``-dependent group job (against a stub ``sbatch``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DEFFILE = ROOT / "workflows" / "apptainer" / "qsmprep.def"
REQ = ROOT / "requirements"
PLUGINS = ROOT / "workflows" / "plugins"
SLURM = ROOT / "workflows" / "slurm"


# ------------------------------------------------------------------------------------ parsers


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]`` with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if buf and stripped.startswith("#"):  # comment lines inside a continuation are skipped
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        instr, _, args = buf.partition(" ")
        assert instr.isalpha(), f"Dockerfile: cannot parse {buf[:60]!r}"
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a continuation line"
    return out


def docker_stages(instrs) -> list[list[tuple[str, str]]]:
    stages = []
    for ins, args in instrs:
        if ins == "FROM":
            stages.append([])
        if stages:
            stages[-1].append((ins, args))
    return stages


def parse_deffile(text: str) -> list[dict]:
    """Stages of an Apptainer definition: ``{"header": {...}, "sections": {name: text}}``."""
    stages, cur, section = [], None, None
    for line in text.splitlines():
        m = re.match(r"^(Bootstrap|From|Stage)\s*:\s*(\S+)\s*$", line)
        if m:
            if m.group(1) == "Bootstrap":
                cur = {"header": {}, "sections": {}}
                stages.append(cur)
                section = None
            assert cur is not None, "the definition must start with a Bootstrap line"
            cur["header"][m.group(1)] = m.group(2)
            continue
        m = re.match(r"^%(\w+)(.*)$", line)
        if m:
            assert cur is not None, f"section %{m.group(1)} before any Bootstrap header"
            section = m.group(1) + m.group(2).rstrip()
            cur["sections"][section] = ""
            continue
        if section is not None:
            cur["sections"][section] += line + "\n"
        else:
            assert not line.strip() or line.lstrip().startswith("#"), f"stray line outside a section: {line!r}"
    return stages


def requirement_files(command_text: str) -> list[str]:
    """The ``-r FILE`` arguments of the ``pip install`` commands in ``command_text``, in order."""
    files = []
    for cmd in re.findall(r"pip3? install[^&;|\n]*", command_text.replace("\\\n", " ")):
        files += re.findall(r"(?:-r|--requirement)[ =]\s*([^\s\"']+)", cmd)
    return files


def resolve_requirements(files, base=ROOT) -> set[str]:
    """The requirement files reached from ``files`` (following ``-r`` includes), relative to ROOT."""
    seen, todo = set(), [(base / f).resolve() for f in files]
    while todo:
        p = todo.pop()
        rel = str(p.relative_to(ROOT))
        if rel in seen:
            continue
        assert p.is_file(), f"{rel} is installed by a recipe but does not exist"
        seen.add(rel)
        for line in p.read_text().splitlines():
            m = re.match(r"^\s*(?:-r|--requirement)\s*=?\s*(\S+)", line)
            if m:
                todo.append((p.parent / m.group(1)).resolve())
    return seen


def pins(path: Path) -> dict[str, str]:
    from packaging.utils import canonicalize_name

    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$", line)
        assert m, f"{path.name}: {line!r} is not pinned with =="
        out[canonicalize_name(m.group(1))] = m.group(2)
    return out


# ------------------------------------------------------------------------------- Dockerfile


@pytest.fixture(scope="module")
def docker():
    return parse_dockerfile(DOCKERFILE.read_text())


def test_dockerfile_is_multistage_with_cpu_default_and_cuda_variant(docker):
    stages = docker_stages(docker)
    assert len(stages) >= 2, "the Dockerfile must be multi-stage (build + runtime)"
    # global ARGs (before the first FROM) carry the defaults; the stages re-declare them bare
    first_from = next(n for n, (i, _) in enumerate(docker) if i == "FROM")
    args = dict(a.split("=", 1) for i, a in docker[:first_from] if i == "ARG" and "=" in a)
    assert args.get("VARIANT") == "cpu", "CPU image by default: ARG VARIANT=cpu"
    runs = " ".join(a for i, a in docker if i == "RUN")
    assert re.search(r"cuda\)\s*TORCH_INDEX=https://download\.pytorch\.org/whl/\$\{CUDA_TAG\}", runs)
    assert re.search(r"cpu\)\s*TORCH_INDEX=https://download\.pytorch\.org/whl/cpu", runs)
    final = stages[-1]
    assert any(i == "COPY" and a.startswith("--from=build") for i, a in final), "runtime stage copies the built venv"


def test_dockerfile_runtime_stage_entrypoint_user_threads(docker):
    final = docker_stages(docker)[-1]
    entry = [a for i, a in final if i == "ENTRYPOINT"]
    assert entry, "no ENTRYPOINT in the runtime stage"
    argv = json.loads(entry[-1])
    assert argv[-1] == "qsmprep", f"ENTRYPOINT must end in qsmprep (exec form), not {argv}"
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must run as a non-root user"
    assert any(i == "RUN" and "useradd" in a and users[-1] in a for i, a in final)
    env = " ".join(a for i, a in final if i == "ENV")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        assert re.search(rf"\b{var}=1\b", env), f"{var} must be set (one thread per process)"
    assert "NIPYPE_NO_ET=1" in env, "no network at run time: Nipype's version check must be off"
    # the data a run needs is checked at build time: weights, template, AAL3
    check = " ".join(a for i, a in final if i == "RUN")
    for needle in ("weights_info()", "load_mni152_template", "AAL3.nii", "qsmprep --version"):
        assert needle in check, f"the runtime stage does not check {needle}"


def test_dockerignore_keeps_everything_the_dockerfile_copies(docker):
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "**", ".dockerignore should start by excluding everything"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    for ins, args in docker:
        if ins != "COPY" or args.startswith("--from"):
            continue
        for src in args.split()[:-1]:
            if src.startswith("--"):
                continue
            top = src.split("/")[0]
            assert top in allowed or src.rstrip("/") in allowed, f".dockerignore drops {src}, which the Dockerfile copies"
            assert (ROOT / src).exists() or src == "README.md", f"the Dockerfile copies {src}, which does not exist"


# ------------------------------------------------------------------------ Apptainer definition


@pytest.fixture(scope="module")
def deffile():
    return parse_deffile(DEFFILE.read_text())


def test_deffile_sections(deffile):
    assert len(deffile) == 2, "two stages: build and final"
    build, final = deffile
    assert build["header"] == {"Bootstrap": "docker", "From": build["header"]["From"], "Stage": "build"}
    assert final["header"]["Stage"] == "final"
    assert build["header"]["From"] == final["header"]["From"], "same base: the venv's python must exist in both"
    assert "VARIANT=cpu" in build["sections"]["arguments"]
    assert "/opt/venv /opt/venv" in final["sections"]["files from build"]
    for needed in ("post", "environment", "runscript", "test", "labels", "help"):
        assert needed in final["sections"], f"%{needed} missing from the final stage"
    assert re.search(r'exec qsmprep "\$@"', final["sections"]["runscript"])
    env = final["sections"]["environment"]
    for var in ("OMP_NUM_THREADS=1", "MKL_NUM_THREADS=1", "NIPYPE_NO_ET=1"):
        assert var in env
    assert "weights_info()" in final["sections"]["post"] and "AAL3.nii" in final["sections"]["post"]
    # %files sources exist (relative to the repository root, where the build runs)
    for line in build["sections"]["files"].splitlines():
        if line.strip():
            src = line.split()[0]
            assert (ROOT / src).exists() or src == "README.md", f"%files source {src} does not exist"


def test_deffile_variant_matches_dockerfile(deffile, docker):
    post = deffile[0]["sections"]["post"]
    assert re.search(r"cuda\)\s*TORCH_INDEX=https://download\.pytorch\.org/whl/\{\{ CUDA_TAG \}\}", post)
    docker_tag = [a for i, a in docker if i == "ARG" and a.startswith("CUDA_TAG=")][0].split("=", 1)[1]
    assert f"CUDA_TAG={docker_tag}" in deffile[0]["sections"]["arguments"], "same CUDA wheel tag in both recipes"


# ------------------------------------------------------------ locked requirements: same for all


def _ci_requirement_files() -> list[str]:
    """What ``make venv`` (CI's install step, .ci/run -> make test) installs."""
    make = (ROOT / "Makefile").read_text()
    recipe = make.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    return requirement_files(recipe.replace("$(PIP)", "pip"))


def test_recipes_install_the_same_locked_requirements_as_ci(docker, deffile):
    docker_files = requirement_files(" && ".join(a for i, a in docker if i == "RUN"))
    def_files = requirement_files(deffile[0]["sections"]["post"])
    assert docker_files == ["requirements/torch.txt", "requirements/runtime.txt"], docker_files
    assert def_files == docker_files, "the Apptainer recipe must install the same files, in the same order"
    ci = resolve_requirements(_ci_requirement_files())
    assert resolve_requirements(docker_files) <= ci, (
        f"CI (Makefile venv target) installs {sorted(ci)}, not the containers' {docker_files}: "
        "install requirements/torch.txt and requirements/test.txt (which includes runtime.txt) in make venv")
    # qsmprep itself never re-resolves the locked dependencies
    runs = " ".join(a for i, a in docker if i == "RUN")
    assert "pip install --no-deps ." in runs and "pip install --no-deps ." in deffile[0]["sections"]["post"]


def test_lock_covers_every_pyproject_dependency():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = pins(REQ / "runtime.txt") | pins(REQ / "torch.txt")
    test = runtime | pins(REQ / "test.txt")
    for spec, locked in [(project["dependencies"], runtime),
                         (project.get("optional-dependencies", {}).get("test", []), test)]:
        for text in spec:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            assert name in locked, f"{req.name} (pyproject.toml) is not in requirements/; run .ci/lock_requirements.py"
            assert req.specifier.contains(locked[name], prereleases=True), (
                f"requirements pin {req.name}=={locked[name]}, outside pyproject's {req.specifier}")
    assert "torch" not in pins(REQ / "runtime.txt"), "torch goes in torch.txt only (its index differs by variant)"


def test_environment_matches_the_lock():
    """CI's environment is the locked one (the containers get the same versions)."""
    from packaging.utils import canonicalize_name

    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    wrong = {}
    for f in ("torch.txt", "runtime.txt", "test.txt"):
        for name, version in pins(REQ / f).items():
            have = installed.get(name)
            if have is None or have.split("+")[0] != version:
                wrong[name] = (version, have)
    assert not wrong, f"installed versions differ from requirements/ (locked, installed): {wrong}"


# ------------------------------------------------------------------------------ plugin files


@pytest.mark.parametrize("name", ["multiproc.yml", "slurm.yml", "slurmgraph.yml"])
def test_plugin_files_load_in_qsmprep_and_nipype(name):
    import yaml

    from qsmprep.cli.parser import read_plugin_file
    from qsmprep.config import PLUGINS as QSMPREP_PLUGINS

    path = PLUGINS / name
    data = yaml.safe_load(path.read_text())
    assert set(data) <= {"plugin", "plugin_args", "node_plugin_args"}, set(data)
    assert data["plugin"] in QSMPREP_PLUGINS
    parsed = read_plugin_file(path)  # qsmprep's own --use-plugin reader accepts it
    assert parsed["plugin"] == data["plugin"]
    from nipype.pipeline import plugins

    klass = getattr(plugins, f"{data['plugin']}Plugin")
    plugin = klass(plugin_args=dict(data["plugin_args"]))
    if data["plugin"].startswith("SLURM"):
        assert plugin._sbatch_args == data["plugin_args"]["sbatch_args"]
        sbatch = shlex.split(data["plugin_args"]["sbatch_args"])
        assert all(a.startswith("--") for a in sbatch)


@pytest.mark.parametrize("name", ["slurm.yml", "slurmgraph.yml"])
def test_inversion_node_gets_the_gpu_through_per_node_sbatch_args(name):
    """Nipype's graph plugin appends a node's ``sbatch_args`` with NO separator; check what sbatch sees."""
    import yaml
    from nipype.pipeline import engine as pe
    from nipype.interfaces.utility import IdentityInterface
    from nipype.pipeline import plugins

    data = yaml.safe_load((PLUGINS / name).read_text())
    node_args = data["node_plugin_args"]["inversion"]
    assert "--gres=gpu:1" in node_args["sbatch_args"]
    node = pe.Node(IdentityInterface(fields=["a"]), name="inversion")
    node.plugin_args = dict(node_args)
    plugin = getattr(plugins, f"{data['plugin']}Plugin")(plugin_args=dict(data["plugin_args"]))
    if name == "slurmgraph.yml":
        (sbatch_args,) = plugin._get_args(node, ["sbatch_args"])
    else:  # SLURMPlugin._submit_batchtask joins with a space; mirror it
        sbatch_args = plugin._sbatch_args + " " + node.plugin_args["sbatch_args"]
    words = shlex.split(sbatch_args)
    assert "--gres=gpu:1" in words, f"sbatch would see {words}"
    assert all(w.startswith("--") and w.count("--") == 1 for w in words), f"options run together: {words}"
    # later options win in sbatch: the node's memory request overrides the default
    mems = [w for w in words if w.startswith("--mem=")]
    assert mems[-1] == "--mem=16G"


# ------------------------------------------------------------------------------ batch scripts


@pytest.mark.parametrize("script", ["qsmprep_array.sbatch", "qsmprep_group.sbatch", "submit.sh"])
def test_batch_scripts_are_valid_bash(script):
    path = SLURM / script
    assert path.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    if script.endswith(".sbatch"):
        directives = [ln for ln in path.read_text().splitlines() if ln.startswith("#SBATCH")]
        assert directives and all(re.match(r"^#SBATCH --[a-z-]+=\S+$", d) for d in directives), directives


def _bids_with_participants(tmp_path, ids=("sub-01", "sub-02", "sub-10")) -> Path:
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("age\tparticipant_id\tsex\n" + "".join(f"30\t{i}\tF\n" for i in ids))
    return bids


def test_array_script_lists_participants_from_tsv_and_list(tmp_path):
    bids = _bids_with_participants(tmp_path)
    run = lambda *a: subprocess.run(["bash", str(SLURM / "qsmprep_array.sbatch"), "--list", *map(str, a)],
                                    capture_output=True, text=True)
    assert run(bids).stdout.split() == ["01", "02", "10"]  # participant_id not in the first column
    lst = tmp_path / "subjects.txt"
    lst.write_text("# pilot\nsub-03\n\n04  \n05 # later\n")
    assert run(bids, lst).stdout.split() == ["03", "04", "05"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("subject\tage\n01\t3\n")
    assert run(bids, bad).returncode != 0


def test_array_task_runs_its_participant_with_task_resources(tmp_path):
    bids = _bids_with_participants(tmp_path)
    env = dict(os.environ, SLURM_ARRAY_TASK_ID="2", SLURM_CPUS_PER_TASK="4", SLURM_MEM_PER_NODE="16384",
               SLURM_JOB_ID="77", QSMPREP_CMD="echo qsmprep-stub", QSMPREP_WORK=str(tmp_path / "w"))
    proc = subprocess.run(["bash", str(SLURM / "qsmprep_array.sbatch"), str(bids), str(tmp_path / "out"),
                           "--", "--skip-atlas"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    argv = proc.stdout.strip().splitlines()[-1].split()
    assert argv[:4] == ["qsmprep-stub", str(bids), str(tmp_path / "out"), "participant"]
    assert argv[argv.index("--participant-label") + 1] == "02"
    assert argv[argv.index("-w") + 1] == str(tmp_path / "w" / "sub-02")
    assert argv[argv.index("--nprocs") + 1] == "4"
    assert argv[argv.index("--omp-nthreads") + 1] == "4"
    assert argv[argv.index("--mem-gb") + 1] == "14.4"  # 90 % of 16 GiB
    assert argv[-1] == "--skip-atlas"
    # outside 1..N: a clear error, no run
    env["SLURM_ARRAY_TASK_ID"] = "4"
    proc = subprocess.run(["bash", str(SLURM / "qsmprep_array.sbatch"), str(bids), str(tmp_path / "out")],
                          env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "outside 1-3" in proc.stderr and "qsmprep-stub" not in proc.stdout


def test_submit_script_chains_group_job_after_array(tmp_path):
    """Against a stub ``sbatch`` that records its arguments (the real cluster is in test_slurm.py)."""
    bids = _bids_with_participants(tmp_path)
    stub = tmp_path / "bin" / "sbatch"
    stub.parent.mkdir()
    log = tmp_path / "sbatch.log"
    stub.write_text(f'#!/bin/bash\necho "$@" >> {log}\nn=$(wc -l < {log}); echo $((100 + n))\n')
    stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{stub.parent}:{os.environ['PATH']}", QSMPREP_MAX_PARALLEL="2",
               QSMPREP_SBATCH_ARGS="--account=lab --cpus-per-task=2")
    proc = subprocess.run(["bash", str(SLURM / "submit.sh"), str(bids), str(tmp_path / "out"), "--", "--skip-atlas"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "array=101 group=102"
    array_call, group_call = log.read_text().splitlines()
    assert "--array=1-3%2" in array_call and "--account=lab" in array_call
    assert array_call.split().index("--account=lab") < array_call.split().index(str(SLURM / "qsmprep_array.sbatch"))
    assert array_call.endswith("-- --skip-atlas")
    assert "--dependency=afterok:101" in group_call and "qsmprep_group.sbatch" in group_call
    assert "--account=lab" in group_call
