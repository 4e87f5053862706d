"""The conda environments (envs/*.yaml) as `--sdm conda` creates them.

conda-forge cannot be reached from the development machines, so no environment is solved here.
What is checked is what breaks an environment without solving it: Snakemake copies each env file
to `.snakemake/conda/<hash>.yaml` and runs `conda env create --file` on that copy, and conda runs
a `pip:` section in the copy's folder, so a relative path there names `.snakemake/`, not the
project. The scripts therefore import slams from their own folder (`workflow/scripts/slams`, a
link to `src/slams`), and each environment must carry what its rules' code imports, within the
bounds that pyproject.toml declares.
"""

import hashlib
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

from slams.cluster import rule_blocks

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
ENVS = sorted((ROOT / "envs").glob("*.yaml"))
# conda-forge's names for the PyPI distributions that differ
CONDA_NAMES = {"torch": "pytorch", "pyyaml": "pyyaml", "netcdf4": "netcdf4"}
GPU_BUILDS = {"pytorch-gpu": "pytorch"}


def snakemake_copy(env: Path, workdir: Path) -> Path:
    """Where Snakemake puts the env file it hands to conda: .snakemake/conda/<hash>.yaml."""
    content = env.read_bytes()
    copy = workdir / ".snakemake" / "conda" / f"{hashlib.sha256(content).hexdigest()[:32]}.yaml"
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(env, copy)
    return copy


def pip_entries(env: Path) -> list[str]:
    dependencies = yaml.safe_load(env.read_text())["dependencies"]
    return [entry for d in dependencies if isinstance(d, dict) for entry in d.get("pip", [])]


def local_path(entry: str) -> str | None:
    """The local path a pip requirement line installs from, if it names one."""
    entry = re.sub(r"^(-e|--editable)\s+", "", entry.strip())
    entry = entry.removeprefix("file:")
    return entry if entry.startswith((".", "/", "~")) else None


def resolved_as_conda_runs_pip(entry: str, copy: Path) -> Path:
    """conda runs `pip install -r` in the folder of the env file it was given."""
    return (copy.parent / Path(local_path(entry)).expanduser()).resolve()


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_no_pip_path_resolves_outside_the_project_from_snakemakes_copy(env, tmp_path):
    copy = snakemake_copy(env, tmp_path)
    for entry in pip_entries(copy):
        if local_path(entry) is not None:
            assert resolved_as_conda_runs_pip(entry, copy) == ROOT, (env.name, entry)


def test_the_check_catches_a_path_relative_to_the_env_file(tmp_path):
    """What the env files said before: `-e ../`, right beside envs/, wrong beside the copy."""
    bad = tmp_path / "project" / "envs" / "bad.yaml"
    bad.parent.mkdir(parents=True)
    bad.write_text("dependencies:\n  - pip\n  - pip:\n      - -e ../\n")
    copy = snakemake_copy(bad, tmp_path / "project")
    (entry,) = pip_entries(copy)
    assert (bad.parent / "..").resolve() == tmp_path / "project"
    assert resolved_as_conda_runs_pip(entry, copy) == tmp_path / "project" / ".snakemake"


def _rule_environments() -> dict[str, set[str]]:
    """env file name -> the scripts of the rules that run in it (from workflow/rules/*.smk)."""
    scripts: dict[str, set[str]] = {}
    for _, block in rule_blocks():
        env = re.search(r'conda:\s*"\.\./\.\./envs/([\w-]+\.yaml)"', block)
        script = re.search(r'script:\s*"\.\./scripts/(\w+\.py)"', block)
        if env and script:
            scripts.setdefault(env.group(1), set()).add(script.group(1))
    return scripts


def _slams_imports(script: str) -> set[str]:
    text = (ROOT / "workflow" / "scripts" / script).read_text()
    return set(re.findall(r"^(?:from|import) (slams[\w.]*)", text, flags=re.M))


def test_every_rule_with_a_script_has_an_environment():
    covered = set().union(*_rule_environments().values())
    scripts = {p.name for p in (ROOT / "workflow" / "scripts").glob("*.py")}
    assert scripts - covered == set()


def test_scripts_import_slams_from_their_own_folder_without_an_install():
    """As in a conda environment without slams installed: no site customisation (-S, so no
    .pth of an editable install), the dependencies' folder, and the scripts' folder, which
    Snakemake's preamble puts on sys.path."""
    modules = sorted(set().union(*(_slams_imports(s) for s in
                                   set().union(*_rule_environments().values()))))  # fmt: skip
    assert "slams.assimilation" in modules and "slams.data.download" in modules
    code = (
        "import sys\n"
        f"sys.path += [{sysconfig.get_paths()['purelib']!r}, "
        f"{str(ROOT / 'workflow' / 'scripts')!r}]\n"
        f"for m in {modules!r}: __import__(m)\n"
        "import slams; print(slams.__file__)\n"
    )
    done = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                          timeout=120, cwd="/")  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert Path(done.stdout.strip()).parent == ROOT / "workflow" / "scripts" / "slams"
    assert (ROOT / "workflow" / "scripts" / "slams").resolve() == ROOT / "src" / "slams"


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = [*project["dependencies"], *project["optional-dependencies"]["workflow"]]
    return {CONDA_NAMES.get(r.name.lower(), r.name.lower()): r for r in map(Requirement, lines)}


def _conda_requirements(env: Path) -> dict[str, Requirement]:
    specs = {}
    for entry in yaml.safe_load(env.read_text())["dependencies"]:
        if not isinstance(entry, str) or entry.startswith(("python=", "pip")):
            continue
        requirement = Requirement(entry.replace(" ", ""))
        specs[GPU_BUILDS.get(requirement.name, requirement.name)] = requirement
    return specs


def _bounds(requirement: Requirement) -> tuple[Version | None, Version | None]:
    lower = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
    upper = [Version(s.version) for s in requirement.specifier if s.operator == "<"]
    return (max(lower) if lower else None, min(upper) if upper else None)


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_environment_bounds_lie_inside_pyprojects(env):
    """Every version conda may install is one that pip would accept, and the lower ends (what
    the development machines test) are the same."""
    pyproject = _pyproject_requirements()
    shared = sorted(set(_conda_requirements(env)) & set(pyproject))
    assert shared, env.name
    for name in shared:
        (env_low, env_high), (py_low, py_high) = (
            _bounds(_conda_requirements(env)[name]),
            _bounds(pyproject[name]),
        )
        assert env_low == py_low, (env.name, name, str(env_low), str(py_low))
        if py_high is not None:
            assert env_high is not None and env_high <= py_high, (env.name, name)
        assert env_high is None or env_low is None or env_low < env_high, (env.name, name)


@pytest.mark.parametrize("env", ENVS, ids=lambda p: p.name)
def test_each_environment_has_what_its_rules_import(env):
    """The third-party packages (declared in pyproject.toml) that the slams modules of the
    env's scripts import are in the env file."""
    modules = sorted(set().union(*(_slams_imports(s) for s in _rule_environments()[env.name])))
    code = (
        "import sys, importlib.metadata as md\n"
        f"for m in {modules!r}: __import__(m)\n"
        "owners = md.packages_distributions()\n"
        "print(' '.join(sorted({d for m in list(sys.modules) if '.' not in m "
        "for d in owners.get(m, [])})))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    imported = {CONDA_NAMES.get(d.lower(), d.lower()) for d in done.stdout.split()}
    declared = set(_pyproject_requirements())
    needed = imported & declared
    assert needed, env.name
    assert needed - set(_conda_requirements(env)) == set(), env.name
