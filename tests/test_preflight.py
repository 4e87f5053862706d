"""The preflight (slams.preflight): disk, packages and memory, checked before any job runs."""

import calendar
import copy
import importlib.util
import os
import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
from runs import snakemake as run_snakemake
from snakemake.exceptions import WorkflowError

from slams import preflight as pf
from slams.config import analysis_sources, load_config

ROOT = Path(__file__).resolve().parents[1]
# the workflow's patterns (common.smk), under a dataset folder of the test's own
PATHS = {
    "raw": "{root}/raw/{{source}}/{{year}}.nc",
    "era5_month": "{root}/downloads/era5/{{year}}-{{month}}.nc",
    "olr_all": "{root}/downloads/olr/olr.day.mean.nc",
    "regridded": "{root}/regridded-1.5deg/{{source}}/{{year}}.nc",
}
GS_STORE = "gs://weatherbench2/datasets/era5/1959-2022-full_37-6h-0p25deg-chunk-1.zarr-v2"


@pytest.fixture(scope="module")
def paper():
    return load_config(ROOT / "config.yaml")


def paths_under(root: Path) -> dict[str, str]:
    return {key: pattern.format(root=root) for key, pattern in PATHS.items()}


def test_the_paths_are_the_workflows_own():
    common = (ROOT / "workflow/rules/common.smk").read_text()
    snakefile = (ROOT / "Snakefile").read_text()
    for name in ("RAW", "ERA5_MONTH", "OLR_ALL", "REGRIDDED"):
        assert re.search(rf"^{name} = ", common, re.M), name
    assert "raw=RAW, era5_month=ERA5_MONTH, olr_all=OLR_ALL, regridded=REGRIDDED" in snakefile


# --------------------------------------------------------------------------- disk


def test_the_papers_downloads_file_by_file(paper, tmp_path):
    planned = pf.planned_files(paper, paths_under(tmp_path))
    by_source = {}
    for item in planned:
        by_source.setdefault(item.source, []).append(item)
    years = range(2000, 2023)
    # 12 CDS months, one merged ERA5, CPC and OLR file and three regridded files a year, and
    # NOAA's one OLR file
    assert {k: len(v) for k, v in by_source.items()} == {
        "ERA5 months": 12 * 23, "ERA5": 23, "CPC": 23, "OLR": 24, "regridded": 3 * 23}  # fmt: skip
    january = next(i for i in planned if i.path.endswith("downloads/era5/2000-01.nc"))
    assert january.nbytes == 721 * 1440 * 10 * 31 * 4  # float32 at 0.25 degrees, 10 levels
    months = sum(i.nbytes for i in by_source["ERA5 months"])
    assert months == sum(721 * 1440 * 10 * (366 if calendar.isleap(y) else 365) * 4 for y in years)
    assert 340e9 < months < 360e9  # README: ~350 GB for 2000-2022
    merged = next(i for i in by_source["ERA5"] if i.year == 2001)
    assert merged.nbytes == 721 * 1440 * 10 * 365 * 4 * pf.QUANTIZED_FRACTION
    assert next(i for i in by_source["CPC"] if i.year == 2001).nbytes == 360 * 720 * 365 * 4
    regridded = next(i for i in by_source["regridded"] if "era5/2000" in i.path)
    assert regridded.nbytes == 120 * 240 * 10 * 366 * 4  # 1.5 degrees, cell-centred


def test_files_already_present_are_not_planned(paper, tmp_path):
    paths = paths_under(tmp_path)
    everything = pf.planned_files(paper, paths)
    present = [
        paths["regridded"].format(source="era5", year=2000),  # the whole year of ERA5 is done
        paths["raw"].format(source="cpc", year=2001),  # only its regridding is left
        paths["era5_month"].format(year=2002, month="03"),  # one month of a year to merge
        *(paths["raw"].format(source="olr", year=y) for y in range(2000, 2023)),
    ]
    for path in present:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).touch()
    planned = pf.planned_files(paper, paths)
    names = {i.path for i in planned}
    assert not any(re.search(r"era5/2000", name) for name in names)
    assert paths["regridded"].format(source="cpc", year=2001) in names
    assert paths["raw"].format(source="cpc", year=2001) not in names
    assert paths["era5_month"].format(year=2002, month="03") not in names
    assert paths["era5_month"].format(year=2002, month="04") in names
    assert paths["olr_all"] not in names  # every OLR year is cut already
    skipped = sum(i.nbytes for i in everything) - sum(i.nbytes for i in planned)
    era5_2000 = 721 * 1440 * 10 * 366 * 4 * (1 + pf.QUANTIZED_FRACTION) + 120 * 240 * 10 * 366 * 4
    assert skipped > era5_2000


def test_synthetic_data_download_nothing(paper, tmp_path):
    synthetic = load_config(ROOT / "config.yaml", ROOT / "presets/demo.yaml")
    assert pf.planned_files(synthetic, paths_under(tmp_path)) == []
    assert pf.check_disk(synthetic, paths_under(tmp_path), disk_usage=lambda _: 1 / 0) == []


def test_the_weatherbench2_stores_grid_and_no_months(paper, tmp_path):
    config = copy.deepcopy(paper)
    config["data"]["era5_source"] = "weatherbench2"
    coarse = "https://x/1959-2022-6h-240x121_equiangular_with_poles_conservative.zarr"
    config["download"]["era5"]["weatherbench2_url"] = coarse
    planned = pf.planned_files(config, paths_under(tmp_path))
    assert not [i for i in planned if i.source == "ERA5 months"]
    era5 = next(i for i in planned if i.source == "ERA5" and i.year == 2001)
    assert era5.nbytes == 121 * 240 * 10 * 365 * 4 * pf.QUANTIZED_FRACTION


def test_a_disk_too_small_is_one_line_with_what_to_free(paper, tmp_path):
    paths = paths_under(tmp_path)
    need = sum(i.nbytes for i in pf.planned_files(paper, paths))
    [line] = pf.check_disk(paper, paths, disk_usage=lambda _: SimpleNamespace(free=120e9))
    assert line.startswith(f"preflight: {tmp_path}/ has 120 GB free, the planned downloads need")
    assert f"need {pf.human_bytes(need)} (ERA5 2000-2022 from CDS " in line
    assert "CPC 8.7 GB" in line and "OLR " in line and "regridded " in line
    assert line.endswith(f": free {pf.human_bytes(need - 120e9)} more or set data.years")
    assert pf.check_disk(paper, paths, disk_usage=lambda _: SimpleNamespace(free=need)) == []


def test_a_run_of_some_targets_counts_only_the_files_its_jobs_make(paper, tmp_path):
    """Once the DAG is built, only the outputs of the jobs that will run count: a run of one
    CPC year fits a disk far smaller than the whole paper's downloads."""
    paths = paths_under(tmp_path)
    planned = pf.planned_files(paper, paths)
    cpc = [i for i in planned if i.source == "CPC" and i.year == 2001]
    needed = {os.path.normpath(i.path) for i in cpc}
    small = SimpleNamespace(free=sum(i.nbytes for i in cpc) + 1)
    assert pf.check_disk(paper, paths, disk_usage=lambda _: small, needed=needed) == []
    assert pf.check_disk(paper, paths, disk_usage=lambda _: small)  # every file: short


def test_the_free_space_is_that_of_the_nearest_existing_folder(paper, tmp_path):
    asked = []

    def disk_usage(path):
        asked.append(path)
        return SimpleNamespace(free=10**15)

    pf.check_disk(paper, paths_under(tmp_path / "resources" / "era5"), disk_usage=disk_usage)
    assert asked == [str(tmp_path)]


@pytest.mark.parametrize(
    ("nbytes", "text"),
    [(3e8, "0.3 GB"), (8.7e9, "8.7 GB"), (120e9, "120 GB"), (1.94e12, "1.9 TB"), (2e7, "0.02 GB")],
)
def test_sizes_read_as_df_shows_them(nbytes, text):
    assert pf.human_bytes(nbytes) == text


# --------------------------------------------------------------------------- packages


def test_a_package_that_does_not_exist_is_named_with_the_key_and_the_fix(paper, monkeypatch):
    need = pf.PackageNeed("data.era5_source cds", ("slams_no_such_package",), pf.DOWNLOAD_ENV)
    monkeypatch.setattr(pf, "package_needs", lambda config: [need])
    [line] = pf.check_packages(paper, python="/venv/bin/python")
    assert line == (
        "preflight: data.era5_source cds needs slams_no_such_package, which /venv/bin/python "
        "cannot import: pip install -e '.[workflow]', or run with --sdm conda"
    )


def test_each_route_needs_its_packages(paper):
    def needed(config):
        return {p for n in pf.package_needs(config) for p in n.packages}

    assert needed(paper) == {"requests", "cdsapi", "xesmf"}
    wb2 = copy.deepcopy(paper)
    wb2["data"].update(era5_source="weatherbench2", regrid_backend="builtin")
    assert needed(wb2) == {"requests", "zarr", "fsspec", "aiohttp"}
    wb2["download"]["era5"]["weatherbench2_url"] = GS_STORE
    assert needed(wb2) == {"requests", "zarr", "fsspec", "gcsfs"}
    assert needed(load_config(ROOT / "config.yaml", ROOT / "presets/demo.yaml")) == set()


def test_missing_packages_of_the_interpreter(paper):
    config = copy.deepcopy(paper)
    config["data"]["era5_source"] = "weatherbench2"
    config["download"]["era5"]["weatherbench2_url"] = GS_STORE
    missing = {"fsspec", "gcsfs", "xesmf"}
    lines = pf.check_packages(
        config, find_spec=lambda name: None if name in missing else object(), python="py"
    )
    assert lines == [
        "preflight: data.era5_source weatherbench2 needs fsspec, which py cannot import: "
        "pip install -e '.[workflow]', or run with --sdm conda",
        "preflight: download.era5.weatherbench2_url gs:// needs gcsfs, which py cannot import: "
        "pip install gcsfs, or read the same store over HTTPS: "
        "https://storage.googleapis.com/weatherbench2/datasets/era5/"
        "1959-2022-full_37-6h-0p25deg-chunk-1.zarr-v2",
        "preflight: data.regrid_backend xesmf needs xesmf, which py cannot import: it comes from "
        "conda-forge: run with --sdm conda (envs/data.yaml installs it) or set "
        "data.regrid_backend: builtin",
    ]
    assert pf.check_packages(config, find_spec=lambda name: object()) == []


def test_under_conda_the_rules_environments_are_checked_not_the_interpreter(paper, tmp_path):
    envs = tmp_path / "envs"
    envs.mkdir()
    (envs / "download.yaml").write_text(
        "dependencies:\n  - python=3.11\n  - cdsapi>=0.7.2,<0.8\n  - zarr\n  - pip:\n"
        "      - fsspec==2024.6\n"
    )
    (envs / "data.yaml").write_text("dependencies:\n  - conda-forge::xesmf>=0.8\n")
    config = copy.deepcopy(paper)
    assert pf.env_packages(envs / "download.yaml") == {"python", "cdsapi", "zarr", "fsspec"}
    # nothing importable here, and the paper's route (cds, xesmf) is still complete: conda has it
    nothing = lambda name: None  # noqa: E731
    assert [line.split(",")[0] for line in pf.check_packages(config, tmp_path, nothing)] == [
        "preflight: data.source real needs requests"
    ]
    config["data"]["era5_source"] = "weatherbench2"
    config["download"]["era5"]["weatherbench2_url"] = GS_STORE
    lines = pf.check_packages(config, tmp_path, nothing)
    assert lines[1].startswith(
        "preflight: download.era5.weatherbench2_url gs:// needs gcsfs, which envs/download.yaml "
        "(the conda environment of its rules) does not list: add it there, or read the same "
        "store over HTTPS: https://storage.googleapis.com/weatherbench2/"
    )


def test_the_environments_named_are_those_of_the_rules():
    data = (ROOT / "workflow/rules/data.smk").read_text()
    for rule in ("download_era5", "download_era5_weatherbench2", "download_cpc"):
        body = data.split(f"rule {rule}:")[1].split("rule ")[0]
        assert f'"../../{pf.DOWNLOAD_ENV}"' in body, rule
    assert f'"../../{pf.DATA_ENV}"' in (ROOT / "workflow/rules/regrid.smk").read_text()


# --------------------------------------------------------------------------- memory


def rule_view(name, wildcards, request_mb=32000, constraints=None, set_by_profile=False):
    return pf.RuleView(name, frozenset(wildcards), constraints or {},
                       lambda wc: request_mb, set_by_profile)  # fmt: skip


@pytest.fixture
def predictor(monkeypatch):
    """slams.memory replaced by a table: (rule, method or space) -> peak MB; records the
    calls."""
    peaks, calls = {}, []
    memory = types.ModuleType("slams.memory")

    def predicted_peak_mb(rule, wildcards, config):
        calls.append((rule, dict(wildcards)))
        return peaks.get((rule, wildcards.get("method") or wildcards.get("space")))

    memory.predicted_peak_mb = predicted_peak_mb
    memory.memory_key = lambda rule, wildcards: {
        "assimilate": "resources.assimilate_mem_mb",
        "train_score": "resources.train_mem_mb",
    }.get(rule)
    monkeypatch.setitem(sys.modules, "slams.memory", memory)
    return SimpleNamespace(peaks=peaks, calls=calls)


CELL = ("axis", "method", "protocol", "value")


def test_a_request_below_the_predicted_peak_is_one_line_per_method(paper, predictor):
    predictor.peaks[("assimilate", "pixel")] = 61000
    predictor.peaks[("assimilate", "latent-both")] = 20000  # fits its 32 GB
    [line] = pf.check_memory(paper, [rule_view("assimilate", CELL)])
    assert line == (
        "preflight: assimilate pixel (paper coarsen-4) is predicted to peak at 61 GB, "
        "resources.assimilate_mem_mb asks 32 GB: raise it to at least 74000 or lower "
        "assimilation.windows_per_call"
    )
    # every analysis computed (no copies), each asked once
    computed = [c for c in pf.analysis_cells(paper) if c not in analysis_sources(paper)]
    asked = [tuple(w[k] for k in pf.CELL_KEYS) for r, w in predictor.calls]
    assert sorted(asked) == sorted(computed)


def test_a_request_that_covers_the_peak_or_no_prediction_passes(paper, predictor):
    predictor.peaks[("assimilate", "pixel")] = 32000
    assert pf.check_memory(paper, [rule_view("assimilate", CELL)]) == []
    assert pf.check_memory(paper, [rule_view("dataset", ())]) == []  # no prediction
    unknown = rule_view("assimilate", CELL, request_mb=None)
    predictor.peaks[("assimilate", "pixel")] = 10**6
    assert pf.check_memory(paper, [unknown]) == []


def test_a_request_the_rule_or_the_profile_sets_names_set_resources(paper, predictor):
    predictor.peaks[("oi_background", "oi")] = 20000
    predictor.peaks[("train_score", "latent-both")] = 70000
    rules = [
        rule_view("oi_background", ["method"], 16000, {"method": "oi|oi-both"}),
        rule_view("train_score", ["space"], 64000, set_by_profile=True),
    ]
    lines = pf.check_memory(paper, rules)
    assert lines[0] == (
        "preflight: oi_background oi is predicted to peak at 20 GB, its mem_mb (from the rule) "
        "asks 16 GB: raise it to at least 24000 (--set-resources oi_background:mem_mb=24000, "
        "or set-resources in the profile)"
    )
    assert lines[1].startswith(
        "preflight: train_score latent-both is predicted to peak at 70 GB, its mem_mb (from "
        "set-resources) asks 64 GB: raise it to at least 84000 (--set-resources train_score:"
    )
    # the rule's constraint keeps oi_background to the oi methods
    assert {w["method"] for r, w in predictor.calls if r == "oi_background"} == {"oi", "oi-both"}


def test_kinds_short_of_one_request_make_one_line_with_the_largest_peak(paper, predictor):
    predictor.peaks.update({("train_score", "pixel"): 70000, ("train_score", "latent-none"): 90000,
                            ("train_score", "latent-both"): 60000})  # fmt: skip
    [line] = pf.check_memory(paper, [rule_view("train_score", ["space"], 64000)])
    assert line == (
        "preflight: train_score latent-none is predicted to peak at 90 GB (the largest of 2 "
        "short of it), resources.train_mem_mb asks 64 GB: raise it to at least 108000"
    )


def test_one_job_of_each_kind_from_the_config(paper):
    rules = [
        rule_view("train_autoencoder", ["modalities"]),
        rule_view("regrid", ["source", "year"]),
        rule_view("dataset", []),
        rule_view("case_figure", ["case", "figure", "protocol"]),
    ]
    jobs = [(r.name, w) for r, w in pf.memory_jobs(paper, rules)]
    assert [w["modalities"] for r, w in jobs if r == "train_autoencoder"] == [
        "none", "insitu", "exsitu", "both"]  # fmt: skip
    # a leap year: the most days
    assert [w for r, w in jobs if r == "regrid"] == [
        {"source": s, "year": "2000"} for s in ("era5", "cpc", "olr")]  # fmt: skip
    assert ("dataset", {}) in jobs
    assert not [r for r, w in jobs if r == "case_figure"]  # no values for {figure}: left out


# --------------------------------------------------------------------------- the hook


def workflow(dryrun=False, executor="local", remote=False, conda=False):
    return SimpleNamespace(
        remote_exec=remote, subprocess_exec=False, touch=False,
        output_settings=SimpleNamespace(dryrun=dryrun),
        deployment_settings=SimpleNamespace(
            deployment_method={SimpleNamespace(name="CONDA")} if conda else set()),
        executor_plugin=SimpleNamespace(name=executor), basedir=str(ROOT), rules=[],
        resource_settings=SimpleNamespace(overwrite_resources={}),
    )  # fmt: skip


@pytest.fixture
def logged(monkeypatch):
    from snakemake.logging import logger

    records = []
    monkeypatch.setattr(logger, "warning", lambda msg, *a, **k: records.append(("warning", msg)))
    monkeypatch.setattr(logger, "info", lambda msg, *a, **k: records.append(("info", msg)))
    return records


@pytest.fixture
def small_disk(monkeypatch):
    """1 GB free, every package importable: the disk is the one finding."""
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: SimpleNamespace(free=10**9))
    monkeypatch.setattr(pf.importlib.util, "find_spec", lambda name: object())


def test_a_run_stops_on_a_finding_before_anything_is_submitted(paper, tmp_path, small_disk):
    with pytest.raises(WorkflowError) as error:
        pf.preflight(workflow(), paper, paths_under(tmp_path))
    lines = str(error.value).splitlines()
    assert lines[0].startswith(f"preflight: {tmp_path}/ has 1.0 GB free")
    assert lines[-1] == (
        "preflight: nothing was submitted (--config preflight=False skips these checks)"
    )


def test_a_dry_run_warns_and_does_not_fail(paper, tmp_path, small_disk, logged):
    pf.preflight(workflow(dryrun=True), paper, paths_under(tmp_path))
    assert [kind for kind, _ in logged] == ["warning", "warning"]
    assert logged[0][1].startswith(f"preflight: {tmp_path}/ has 1.0 GB free")
    assert "a run would stop here" in logged[1][1]


def test_skipped_by_the_config_and_inside_jobs(paper, tmp_path, small_disk, logged):
    off = {**paper, "preflight": False}
    pf.preflight(workflow(), off, paths_under(tmp_path))
    pf.preflight(workflow(remote=True), paper, paths_under(tmp_path))
    assert logged == []


def test_a_run_that_has_everything_passes_with_one_short_line(paper, tmp_path, logged, monkeypatch,
                                                              predictor):  # fmt: skip
    monkeypatch.setattr(pf.shutil, "disk_usage", lambda path: SimpleNamespace(free=10**15))
    monkeypatch.setattr(pf.importlib.util, "find_spec", lambda name: object())
    pf.preflight(workflow(executor="slurm"), paper, paths_under(tmp_path))
    [(kind, line)] = logged
    assert kind == "info" and re.fullmatch(
        r"preflight: disk, packages, memory: nothing short \(\d+\.\d s\)", line
    )
    demo = load_config(ROOT / "config.yaml", ROOT / "presets/demo.yaml")
    pf.preflight(workflow(), demo, paths_under(tmp_path))  # nothing to check: silent
    assert len(logged) == 1


# --------------------------------------------------------------------------- the Snakefile

GCSFS_MISSING = pytest.mark.skipif(
    importlib.util.find_spec("gcsfs") is not None, reason="needs an interpreter without gcsfs"
)


def real_gs_overlay(tmp_path: Path) -> Path:
    overlay = tmp_path / "gs.yaml"
    overlay.write_text(
        "data: {source: real, era5_source: weatherbench2}\n"
        f"download: {{era5: {{weatherbench2_url: '{GS_STORE}'}}}}\n"
    )
    return overlay


def test_the_snakefiles_dry_run_prints_nothing_when_nothing_is_short(tmp_path):
    result = run_snakemake(ROOT, tmp_path, "-n", "--configfile", str(ROOT / "presets/smoke.yaml"))
    assert "preflight" not in result.stdout + result.stderr


@GCSFS_MISSING
def test_the_snakefiles_dry_run_warns_and_its_run_stops(tmp_path):
    args = ["--configfile", str(ROOT / "presets/smoke.yaml"), str(real_gs_overlay(tmp_path))]
    dry = run_snakemake(ROOT, tmp_path, "-n", *args)
    assert "preflight: download.era5.weatherbench2_url gs:// needs gcsfs" in dry.stdout
    assert "download_era5_weatherbench2" in dry.stdout  # the dry run went on
    run = run_snakemake(ROOT, tmp_path, "--cores", "1", *args, check=False)
    assert run.returncode != 0
    assert "preflight: nothing was submitted" in run.stderr
    assert not (tmp_path / "resources").exists()  # no job ran
