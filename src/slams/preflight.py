"""Preflight: what would otherwise fail hours or days into a run, checked before any job runs.

Three checks, each finding one line that says what is short, by how much, and the key or
command that fixes it (:func:`run_checks`):

- **disk** (:func:`check_disk`, ``data.source: real`` only): the free space of the file system
  that will hold the downloads and regridded files under ``resources/<dataset>/`` against the
  files still to be written (:func:`planned_files`; a file that exists is not counted).
- **packages** (:func:`check_packages`): the packages the chosen routes need (``cdsapi`` for
  ``data.era5_source: cds``; ``zarr``, ``fsspec`` and ``aiohttp`` or ``gcsfs`` for
  ``weatherbench2``; ``requests`` for CPC and OLR; ``xesmf`` for ``data.regrid_backend:
  xesmf``), looked up without importing them (:func:`importlib.util.find_spec`) in the running
  interpreter, which runs the jobs' scripts, or, under ``--sdm conda``, in the conda
  environment file of the rules that use them (``envs/*.yaml``), which then provides them.
- **memory** (:func:`check_memory`, under the Slurm executor only, where ``mem_mb`` becomes
  ``--mem`` and a job above it is killed): each kind of job's memory request against the peak
  :func:`slams.memory.predicted_peak_mb` predicts for it.

:func:`preflight` is the Snakefile's hook. Snakemake 9 parses the Snakefile before it knows
the executor or builds the DAG, so the hook is called twice (Snakefile): while parsing a dry
run (``snakemake -n``: ``workflow.output_settings.dryrun``), where it prints what it finds as
warnings and fails nothing, and in ``onstart``, which Snakemake calls in a real run only, once
the DAG is built and before the first job is submitted, where a finding stops the run (a
:class:`~snakemake.exceptions.WorkflowError` listing the lines). Neither runs inside a job:
Slurm job steps re-parse the Snakefile in remote mode with ``--no-hooks``, and the hook returns
at once in remote or subprocess mode. In a real run Snakemake builds the DAG (and, under
``--sdm conda``, the missing conda environments) before ``onstart``; ``--no-hooks`` skips
``onstart`` and with it the preflight. The executor (for the memory check) is Snakemake's own in
``onstart``; while a dry run is parsed Snakemake has not set it yet, and the hook reads the
``--executor`` of the snakemake command line (:func:`_executor`). The checks take ~50 ms on the
paper's config (197 jobs asked of the memory predictor), no DAG needed.

``preflight: false`` in the config skips it; on the command line ``--config preflight=False``
(Snakemake reads a lower-case ``false`` there as text, which the schema rejects).
"""

from __future__ import annotations

import calendar
import datetime
import importlib.util
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import yaml

from slams.config import analysis_cells, analysis_sources, grid_shape
from slams.methods import METHODS

PREFIX = "preflight: "
SOURCES = ("era5", "cpc", "olr")
CELL_KEYS = ("protocol", "method", "axis", "value")
FLOAT32_BYTES = 4
# The grids the sources are served on (lat x lon): ERA5 from the CDS at 0.25 degrees with both
# poles, CPC at 0.5 degrees, NOAA's interpolated OLR at 2.5 degrees with both poles.
ERA5_GRID = (721, 1440)
CPC_GRID = (360, 720)
OLR_GRID = (73, 144)
OLR_FIRST_DAY = datetime.date(1974, 6, 1)  # NOAA's interpolated daily OLR starts here
# The yearly ERA5 files (merge_era5_year, download_era5_weatherbench2) keep 16 significant bits
# of each float32 (BitRound) before zlib: the zeroed low bits and the near-constant exponent
# compress away, about half of float32 stays (the synthetic world at the paper's grid keeps
# 22 %: docs/benchmarks.md, "The paper's size, run mechanically"; real ERA5 is rougher). An
# estimate, not a bound.
QUANTIZED_FRACTION = 0.5
# A request is short when it is below the predicted peak; the fix asks for this much more, in
# whole GB, for what the prediction does not see.
MEMORY_HEADROOM = 1.2
# The conda environments of the rules that import the packages (data.smk, regrid.smk).
DOWNLOAD_ENV = "envs/download.yaml"
DATA_ENV = "envs/data.yaml"
WORKFLOW_EXTRA = "pip install -e '.[workflow]'"
WB2_URL = "download.era5.weatherbench2_url"


# --------------------------------------------------------------------------- disk


@dataclass(frozen=True)
class PlannedFile:
    """One file the run will write under ``resources/``: its path, estimated size and source
    (``ERA5``, ``ERA5 months``, ``CPC``, ``OLR`` or ``regridded``)."""

    path: str
    nbytes: int
    source: str
    year: int | None = None


def days_in(year: int) -> int:
    return 366 if calendar.isleap(year) else 365


def planned_files(
    config: Mapping,
    paths: Mapping[str, str],
    exists: Callable[[str], bool] = os.path.exists,
) -> list[PlannedFile]:
    """The files a run still has to download or regrid, with their estimated sizes in bytes.

    ``paths`` holds the workflow's own path patterns (common.smk): ``raw`` (``{source}``,
    ``{year}``), ``era5_month`` (``{year}``, ``{month}``), ``olr_all`` and ``regridded``
    (``{source}``, ``{year}``). Snakemake makes a file only where its consumers need it, so a
    year whose regridded file exists needs nothing, one whose raw file exists needs only the
    regridded one, and NOAA's multi-year OLR file is needed only while an OLR year is missing.
    Nothing for ``data.source: synthetic`` (generated, not downloaded).

    Sizes (bytes; float32 is 4 of them), upper bounds where the format is known, an estimate
    for the quantized yearly ERA5 files:

    - ERA5 from the CDS, one netCDF per month (:func:`slams.data.download.era5_request`):
      float32 ``t`` (the CDS's netCDF4 converter writes unpacked float32, compressed without
      loss) on the 721 x 1440 grid: ``721 * 1440 * levels * days * 4``, 1.3 GB for a month of
      10 levels. They are temporary (deleted once their year is merged), but Snakemake may
      download many months of many years before it merges any, so all of them count.
    - ERA5 per year (``merge_era5`` and ``download_era5_weatherbench2``): float32 with 16
      significant bits, zlib: :data:`QUANTIZED_FRACTION` of ``lat * lon * levels * days * 4``,
      on 721 x 1440 (the CDS, WeatherBench 2's 0.25 degree store) or the store's grid where
      its name gives one (``240x121``).
    - CPC per year: float32 on 360 x 720 (NOAA's files are deflated and mostly ocean, so
      smaller on disk).
    - OLR: NOAA's one file of every day since 1974-06-01 (:data:`OLR_FIRST_DAY`, to the end of
      this year) and one cut per year (``extract_olr``, same encoding), float32 on 73 x 144
      (older copies are packed 16-bit, half that).
    - regridded: float32 on the target grid at ``data.resolution``, levels for ERA5.
    """
    data = config["data"]
    if data["source"] != "real":
        return []
    levels = len(data["levels"])
    cds = data.get("era5_source", "cds") == "cds"
    era5_grid = (
        ERA5_GRID
        if cds
        else weatherbench2_grid(
            config.get("download", {}).get("era5", {}).get("weatherbench2_url", "")
        )
    )
    rows, cols = grid_shape(data["resolution"])
    first, last = data["years"]
    planned: list[PlannedFile] = []
    olr_all_needed = False
    for source in SOURCES:
        depth = levels if source == "era5" else 1
        for year in range(first, last + 1):
            days = days_in(year)
            regridded = paths["regridded"].format(source=source, year=year)
            if exists(regridded):
                continue
            planned.append(
                PlannedFile(
                    regridded, rows * cols * depth * days * FLOAT32_BYTES, "regridded", year
                )
            )
            raw = paths["raw"].format(source=source, year=year)
            if exists(raw):
                continue
            if source == "era5":
                size = math.prod(era5_grid) * levels * days * FLOAT32_BYTES * QUANTIZED_FRACTION
                planned.append(PlannedFile(raw, int(size), "ERA5", year))
                if cds:
                    for month in range(1, 13):
                        path = paths["era5_month"].format(year=year, month=f"{month:02d}")
                        if not exists(path):
                            month_days = calendar.monthrange(year, month)[1]
                            size = math.prod(ERA5_GRID) * levels * month_days * FLOAT32_BYTES
                            planned.append(PlannedFile(path, size, "ERA5 months", year))
            elif source == "cpc":
                planned.append(
                    PlannedFile(raw, math.prod(CPC_GRID) * days * FLOAT32_BYTES, "CPC", year)
                )
            else:
                olr_all_needed = True
                planned.append(
                    PlannedFile(raw, math.prod(OLR_GRID) * days * FLOAT32_BYTES, "OLR", year)
                )
    if olr_all_needed and not exists(paths["olr_all"]):
        end = datetime.date(datetime.date.today().year, 12, 31)
        days = (end - OLR_FIRST_DAY).days + 1
        planned.append(
            PlannedFile(paths["olr_all"], math.prod(OLR_GRID) * days * FLOAT32_BYTES, "OLR")
        )
    return planned


def weatherbench2_grid(url: str) -> tuple[int, int]:
    """(lat, lon) of a WeatherBench 2 store from its name (``..._240x121_...``: lon x lat);
    ERA5's native 721 x 1440, the largest, where the name gives none."""
    name = url.rstrip("/").rsplit("/", 1)[-1]
    match = re.search(r"(\d+)x(\d+)_equiangular", name)
    return (int(match[2]), int(match[1])) if match else ERA5_GRID


def human_bytes(nbytes: float) -> str:
    """Decimal units as ``df -H`` shows them: ``0.3 GB``, ``8.7 GB``, ``120 GB``, ``1.9 TB``."""
    if nbytes >= 1e12:
        value, unit = nbytes / 1e12, "TB"
    else:
        value, unit = nbytes / 1e9, "GB"
    digits = 2 if value < 0.1 else 1 if value < 10 else 0
    return f"{value:.{digits}f} {unit}"


def _nearest_existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_disk(
    config: Mapping,
    paths: Mapping[str, str],
    exists: Callable[[str], bool] = os.path.exists,
    disk_usage: Callable[[str], object] | None = None,
    needed: set[str] | None = None,
) -> list[str]:
    """One line per file system that cannot hold the planned files (:func:`planned_files`):
    ``shutil.disk_usage`` of the nearest existing folder above each file, the files grouped by
    the device that folder is on (``resources/`` or a part of it may be a link elsewhere).
    ``needed``: the outputs of the jobs the run will execute (known once the DAG is built),
    so that a run of some targets counts only their downloads; ``None``: every planned file."""
    disk_usage = disk_usage or shutil.disk_usage
    planned = planned_files(config, paths, exists)
    if needed is not None:
        planned = [item for item in planned if os.path.normpath(item.path) in needed]
    groups: dict[int, tuple[Path, list[PlannedFile]]] = {}
    folders: dict[Path, tuple[int, Path]] = {}
    for item in planned:
        folder = Path(item.path).parent
        if folder not in folders:
            existing = _nearest_existing(folder.absolute())
            folders[folder] = (os.stat(existing).st_dev, existing)
        device, existing = folders[folder]
        groups.setdefault(device, (existing, []))[1].append(item)
    lines = []
    for existing, items in groups.values():
        free = disk_usage(str(existing)).free
        need = sum(item.nbytes for item in items)
        if need <= free:
            continue
        where = os.path.commonpath([item.path for item in items])
        lines.append(
            f"{PREFIX}{where}/ has {human_bytes(free)} free, the planned downloads need "
            f"{human_bytes(need)} ({_by_source(config, items)}): free "
            f"{human_bytes(need - free)} more or set data.years"
        )
    return lines


def _by_source(config: Mapping, items: list[PlannedFile]) -> str:
    totals: dict[str, int] = {}
    years: dict[str, set[int]] = {}
    for item in items:
        totals[item.source] = totals.get(item.source, 0) + item.nbytes
        if item.year is not None:
            years.setdefault(item.source, set()).add(item.year)
    parts = []
    era5 = totals.get("ERA5", 0) + totals.get("ERA5 months", 0)
    if era5:
        span = years.get("ERA5", set()) | years.get("ERA5 months", set())
        origin = "CDS" if config["data"].get("era5_source", "cds") == "cds" else "WeatherBench 2"
        text = f"ERA5 {min(span)}-{max(span)} from {origin} {human_bytes(era5)}"
        if totals.get("ERA5 months"):
            text += f" with {human_bytes(totals['ERA5 months'])} of monthly files until merged"
        parts.append(text)
    for source in ("CPC", "OLR", "regridded"):
        if totals.get(source):
            parts.append(f"{source} {human_bytes(totals[source])}")
    return ", ".join(parts)


# --------------------------------------------------------------------------- packages


@dataclass(frozen=True)
class PackageNeed:
    """Packages a config choice needs, the conda environment of the rules that import them, and
    what to do where they are missing: without conda (``fix``) and under ``--sdm conda``
    (``conda_fix``)."""

    choice: str  # the config key and value, as the message names it
    packages: tuple[str, ...]  # import names (the same as the pip and conda-forge names here)
    env: str
    fix: str = f"{WORKFLOW_EXTRA}, or run with --sdm conda"
    conda_fix: str = "add it there"


def package_needs(config: Mapping) -> list[PackageNeed]:
    """What the config's routes import (the download scripts, slams.data.regrid)."""
    data = config["data"]
    needs = []
    if data["source"] == "real":
        needs.append(PackageNeed("data.source real", ("requests",), DOWNLOAD_ENV))
        if data.get("era5_source", "cds") == "cds":
            needs.append(PackageNeed("data.era5_source cds", ("cdsapi",), DOWNLOAD_ENV))
        else:
            needs.append(
                PackageNeed("data.era5_source weatherbench2", ("zarr", "fsspec"), DOWNLOAD_ENV)
            )
            url = config.get("download", {}).get("era5", {}).get("weatherbench2_url", "")
            if url.startswith(("https://", "http://")):
                needs.append(PackageNeed(f"{WB2_URL} https://", ("aiohttp",), DOWNLOAD_ENV))
            elif url.startswith("gs://"):
                https = "https://storage.googleapis.com/" + url.removeprefix("gs://")
                needs.append(
                    PackageNeed(
                        f"{WB2_URL} gs://",
                        ("gcsfs",),
                        DOWNLOAD_ENV,
                        fix=f"pip install gcsfs, or read the same store over HTTPS: {https}",
                        conda_fix=f"add it there, or read the same store over HTTPS: {https}",
                    )
                )
    if data.get("regrid_backend", "builtin") == "xesmf":
        needs.append(
            PackageNeed(
                "data.regrid_backend xesmf",
                ("xesmf",),
                DATA_ENV,
                fix=f"it comes from conda-forge: run with --sdm conda ({DATA_ENV} installs it) "
                "or set data.regrid_backend: builtin",
            )
        )
    return needs


def env_packages(env_file: str | Path) -> set[str]:
    """The package names a conda environment file lists (conda and pip dependencies)."""
    spec = yaml.safe_load(Path(env_file).read_text()) or {}
    names = set()
    for dependency in spec.get("dependencies", []):
        entries = dependency.get("pip", []) if isinstance(dependency, dict) else [dependency]
        for entry in entries:
            name = re.split(r"[\s<>=!~\[;]", str(entry).split("::")[-1], maxsplit=1)[0]
            names.add(name.lower())
    return names


def _names(packages: Iterable[str]) -> str:
    packages = list(packages)
    return packages[0] if len(packages) == 1 else ", ".join(packages[:-1]) + " and " + packages[-1]


def check_packages(
    config: Mapping,
    conda_envs: str | Path | None = None,
    find_spec: Callable[[str], object] | None = None,
    python: str | None = None,
) -> list[str]:
    """One line per config choice whose packages are missing: from the running interpreter,
    which runs the jobs' scripts without conda (``find_spec``: nothing is imported), or, with
    ``conda_envs`` (the workflow's folder, under ``--sdm conda``), from the environment file of
    the rules that import them, which then provides them (xesmf only comes from conda-forge:
    not finding it in a pip venv is no finding under conda)."""
    find_spec = find_spec or importlib.util.find_spec
    python = python or sys.executable
    lines = []
    for need in package_needs(config):
        if conda_envs is not None:
            listed = env_packages(Path(conda_envs) / need.env)
            missing = [p for p in need.packages if p not in listed]
            where, fix = (
                f"{need.env} (the conda environment of its rules) does not list",
                need.conda_fix,
            )
        else:
            missing = [p for p in need.packages if find_spec(p) is None]
            where, fix = f"{python} cannot import", need.fix
        if missing:
            lines.append(f"{PREFIX}{need.choice} needs {_names(missing)}, which {where}: {fix}")
    return lines


# --------------------------------------------------------------------------- memory


@dataclass(frozen=True)
class RuleView:
    """What the memory check needs of one rule that runs as a Slurm job."""

    name: str
    wildcards: frozenset[str]
    constraints: Mapping[str, str]  # the rule's own wildcard constraints (regexes)
    request_mb: Callable[[Mapping[str, str]], int | None]  # its mem_mb for these wildcards
    set_by_profile: bool = False  # mem_mb comes from set-resources (profile or command line)


def representative_year(config: Mapping) -> int:
    """The first leap year of data.years (the most days), else the first year."""
    first, last = config["data"]["years"]
    return next((y for y in range(first, last + 1) if calendar.isleap(y)), first)


def memory_jobs(config: Mapping, rules: Iterable[RuleView]) -> list[tuple[RuleView, dict]]:
    """One job of every kind the config makes, for every rule, without building the DAG.

    Each wildcard takes the values the config gives it (``method``: assimilation.methods,
    ``space``: their score networks, ``modalities``: autoencoder.modalities, ``source``: the
    three sources, ``year``: :func:`representative_year`, ``split`` and ``protocol``: all of
    them, ``case``: assimilation.cases), kept where the rule's own constraint matches (rule
    ``oi_background`` takes only oi methods); a rule of the four analysis wildcards gets every
    analysis the run computes (the copies of rule same_analysis excluded), since its memory may
    depend on the setting. A rule with a wildcard not listed here is left out.
    """
    methods = list(config["assimilation"]["methods"])
    copies = analysis_sources(config)
    cells = [
        dict(zip(CELL_KEYS, c, strict=True)) for c in analysis_cells(config) if c not in copies
    ]
    candidates = {
        "method": methods,
        "space": list(dict.fromkeys(METHODS[m].space for m in methods if METHODS[m].space)),
        "modalities": list(config["autoencoder"]["modalities"]),
        "source": list(SOURCES),
        "year": [str(representative_year(config))],
        "split": ["train", "validation", "test"],
        "protocol": list(config["assimilation"]["protocols"]),
        "case": list(config["assimilation"].get("cases", {})),
    }
    jobs = []
    for rule in rules:
        names = sorted(rule.wildcards)
        if set(names) == set(CELL_KEYS):
            combos = cells
        elif all(name in candidates for name in names):
            combos = [
                dict(zip(names, values, strict=True))
                for values in product(*(candidates[n] for n in names))
            ]
        else:
            continue
        for wildcards in combos:
            if all(
                re.fullmatch(rule.constraints[name], str(value))
                for name, value in wildcards.items()
                if name in rule.constraints
            ):
                jobs.append((rule, wildcards))
    return jobs


def human_mb(mb: float) -> str:
    gb = mb / 1000
    return f"{gb:.1f} GB" if gb < 10 else f"{gb:.0f} GB"


def _job_label(rule: str, wildcards: Mapping[str, str]) -> str:
    if set(wildcards) == set(CELL_KEYS):
        w = wildcards
        return f"{rule} {w['method']} ({w['protocol']} {w['axis']}-{w['value']})"
    return " ".join([rule, *(str(wildcards[k]) for k in sorted(wildcards))])


def check_memory(config: Mapping, rules: Iterable[RuleView]) -> list[str]:
    """One line per request that is below a predicted peak: per rule and the setting that
    sizes its request (the config key :func:`slams.memory.memory_key` names, or the rule's own
    ``mem_mb``, or set-resources), naming the job of the largest peak and how many kinds of job
    (the rule's methods, spaces, ...) are short of it. Peaks come from
    :func:`slams.memory.predicted_peak_mb` for the jobs of :func:`memory_jobs`; jobs without a
    prediction or a known request are skipped. The fix asks for :data:`MEMORY_HEADROOM` times
    the largest peak, with ``--set-resources`` where the rule or set-resources sets the request,
    and names assimilation.windows_per_call where the worst job samples with a network."""
    try:
        from slams.memory import memory_key, predicted_peak_mb
    except ModuleNotFoundError as error:  # a checkout without the predictor: nothing to check
        if error.name != "slams.memory":
            raise
        return []

    short: dict[tuple[str, str | None], list[tuple[int, int, dict]]] = {}
    views: dict[str, RuleView] = {}
    for rule, wildcards in memory_jobs(config, rules):
        peak = predicted_peak_mb(rule.name, wildcards, config)
        if peak is None:
            continue
        request = rule.request_mb(wildcards)
        if request is None or request >= peak:
            continue
        key = None if rule.set_by_profile else memory_key(rule.name, wildcards)
        short.setdefault((rule.name, key), []).append((peak, request, wildcards))
        views[rule.name] = rule
    lines = []
    for (name, key), jobs in short.items():
        rule = views[name]
        peak, request, wildcards = max(jobs, key=lambda job: job[0])
        kinds = {_kind(w) for _, _, w in jobs}
        enough = math.ceil(peak * MEMORY_HEADROOM / 1000) * 1000
        if key is None:
            origin = "set-resources" if rule.set_by_profile else "the rule"
            where = f"its mem_mb (from {origin})"
            fix = (
                f"raise it to at least {enough} (--set-resources {name}:mem_mb={enough}, "
                "or set-resources in the profile)"
            )
        else:
            where, fix = key, f"raise it to at least {enough}"
        method = wildcards.get("method")
        if set(wildcards) == set(CELL_KEYS) and method in METHODS and METHODS[method].space:
            fix += " or lower assimilation.windows_per_call"
        more = f" (the largest of {len(kinds)} short of it)" if len(kinds) > 1 else ""
        lines.append(
            f"{PREFIX}{_job_label(name, wildcards)} is predicted to peak at {human_mb(peak)}"
            f"{more}, {where} asks {human_mb(request)}: {fix}"
        )
    return lines


def _kind(wildcards: Mapping[str, str]) -> object:
    """The kind of a job within its rule: its method (an analysis: whatever its setting), or
    all of its wildcards."""
    return wildcards.get("method") or tuple(sorted(wildcards.items()))


# --------------------------------------------------------------------------- all of it


def run_checks(
    config: Mapping,
    paths: Mapping[str, str],
    *,
    conda_envs: str | Path | None = None,
    rules: Iterable[RuleView] | None = None,
    needed: set[str] | None = None,
) -> list[str]:
    """Every finding, one line each: disk (of the ``needed`` files where given), packages,
    and memory where ``rules`` are given (the Slurm executor)."""
    lines = check_disk(config, paths, needed=needed) + check_packages(config, conda_envs)
    if rules is not None:
        lines += check_memory(config, rules)
    return lines


def _executor(workflow) -> str | None:
    """The executor of the run: Snakemake's own plugin once set (onstart), else, while the
    Snakefile is parsed (before Snakemake sets it), the ``--executor`` of the snakemake command
    line (a profile's included) that parses it; None under the Python API."""
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.name not in ("dryrun", "touch"):
        return plugin.name
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "args_to_api" and frame.f_globals.get("__name__") == (
            "snakemake.cli"
        ):
            return getattr(frame.f_locals.get("args"), "executor", None)
        frame = frame.f_back
    return None


def _rule_views(workflow) -> list[RuleView]:
    """The rules that run as Slurm jobs (not local rules), with their mem_mb as Snakemake
    evaluates it (the profile's default-resources and set-resources included)."""
    try:
        from snakemake.iocontainers import Wildcards
    except ImportError:  # Snakemake before 9.x's iocontainers
        from snakemake.io import Wildcards

    local = getattr(workflow, "_localrules", set())
    overrides = workflow.resource_settings.overwrite_resources or {}
    views = []
    for rule in workflow.rules:
        if rule.name in local or rule.norun:
            continue

        def request_mb(wildcards, rule=rule):
            resource = rule.resources.get("mem_mb")
            if resource is None or resource.name != "mem_mb":
                return None
            if resource.is_evaluable():
                try:
                    resource = resource.evaluate(Wildcards(fromdict=dict(wildcards)), attempt=1)
                except Exception:  # needs the job's input or threads: unknown before the DAG
                    return None
            value = resource.value
            return int(value) if isinstance(value, (int, float)) else None

        views.append(
            RuleView(
                rule.name,
                frozenset(rule.wildcard_names),
                dict(rule.wildcard_constraints),
                request_mb,
                set_by_profile=any(
                    key in ("mem_mb", "mem", "mem_mib") for key in overrides.get(rule.name, {})
                ),
            )
        )
    return views


def _needed_outputs(workflow) -> set[str] | None:
    """The outputs of every job the run will execute (``onstart``: the DAG is built), or None
    where Snakemake does not show them."""
    try:
        return {os.path.normpath(str(f)) for job in workflow.dag.needrun_jobs() for f in job.output}
    except Exception:  # an internal of Snakemake's: without it, plan every file
        return None


def preflight(workflow, config: Mapping, paths: Mapping[str, str]) -> None:
    """The Snakefile's hook (see the module's docstring): a dry run logs each finding as a
    warning; a real run raises a WorkflowError listing them, before any job is submitted, and
    logs one short line when there is something to check and nothing is short."""
    if not config.get("preflight", True):
        return
    if workflow.remote_exec or workflow.subprocess_exec or workflow.touch:
        return
    from snakemake.exceptions import WorkflowError
    from snakemake.logging import logger

    started = time.monotonic()
    dry_run = workflow.output_settings.dryrun
    conda = any(m.name == "CONDA" for m in workflow.deployment_settings.deployment_method)
    slurm = _executor(workflow) == "slurm"
    lines = run_checks(
        config,
        paths,
        conda_envs=workflow.basedir if conda else None,
        rules=_rule_views(workflow) if slurm else None,
        needed=None if dry_run else _needed_outputs(workflow),
    )
    skip = "--config preflight=False skips these checks"
    if dry_run:
        for line in lines:
            logger.warning(line)
        if lines:
            logger.warning(f"{PREFIX}a run would stop here, before submitting a job ({skip})")
        return
    if lines:
        raise WorkflowError("\n".join([*lines, f"{PREFIX}nothing was submitted ({skip})"]))
    checked = [
        name
        for name, done in (
            ("disk", config["data"]["source"] == "real"),
            ("packages", bool(package_needs(config))),
            ("memory", slurm),
        )
        if done
    ]
    if checked:
        logger.info(
            f"{PREFIX}{', '.join(checked)}: nothing short ({time.monotonic() - started:.1f} s)"
        )
