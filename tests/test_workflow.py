"""The Snakemake workflow: DAG shape, config errors, single targets, and one full smoke run."""

import importlib.util
import os
import re
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from runs import job_counts, snakemake


def test_demo_dry_run_lists_every_job(root, tmp_path):
    result = snakemake(root, tmp_path, "-n", "--configfile", str(root / "presets/demo.yaml"))
    counts = job_counts(result.stdout)
    # physical protocol: 9 methods x 9 cells; paper protocol (named cases only): 7 methods x 4.
    # One analysis per distinct setting (noise-0.1 is coarsen-2's: noise 0.1, every 4th day)
    # and method, and pixel, oi and climatology once for both protocols: 3 x 8 + pixel-both
    # 8 + oi-both 8 + latent 4 x 8 (physical) + 4 x 4 (paper) = 88; 109 - 88 copies. The
    # diffusion methods' 64 are rule assimilate's, oi's, oi-both's and climatology's 24 rule
    # assimilate_classical's
    assert counts["assimilate"] == 8 + 8 + 4 * 8 + 4 * 4
    assert counts["assimilate_classical"] == 3 * 8 and counts["same_analysis"] == 21
    assert counts["oi_background"] == 2  # oi and oi-both
    assert counts["regrid"] == 15
    assert counts["train_autoencoder"] == 4 and counts["encode"] == 4
    assert counts["train_score"] == 6  # pixel, pixel-both and 4 latent spaces
    assert counts["case_figure"] == 8 and counts["protocol_figures"] == 2
    assert counts["synthetic"] == 5  # one job per year
    assert counts["dataset"] == counts["evaluate"] == counts["figures"] == 1


def test_single_target_builds_only_what_it_needs(root, tmp_path):
    target = "results/demo/analysis/physical/latent-both/coarsen-4.nc"
    # the target goes first: --configfile takes several values and would swallow it
    result = snakemake(
        root, tmp_path, target, "-n", "--configfile", str(root / "presets/demo.yaml")
    )
    counts = job_counts(result.stdout)
    assert counts["assimilate"] == 1
    assert counts["train_autoencoder"] == 1 and counts["encode"] == 1
    assert counts["train_score"] == 1
    assert "evaluate" not in counts and "figures" not in counts
    assert "score-pixel" not in result.stdout


def test_config_error_names_the_key(root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("assimilation:\n  axes:\n    coarsen:\n      values: [2, 3]\n")
    result = snakemake(
        root,
        tmp_path,
        "-n",
        "--configfile",
        str(root / "presets/demo.yaml"),
        str(bad),
        check=False,
    )
    assert result.returncode != 0
    assert (
        "config error at assimilation.axes.coarsen.values[1]: coarsening factor 3 does not "
        "divide the 32 x 64 grid" in result.stderr + result.stdout
    )


@pytest.mark.slow
def test_smoke_preset_runs_the_whole_dag(root, smoke_run):
    """The whole workflow on the smoke preset: every stage runs and the outputs are sane."""
    tmp_path = smoke_run
    out = tmp_path / "results" / "smoke"

    scores = pd.read_csv(out / "scores.csv")
    assert list(scores.columns) == [
        "protocol", "method", "axis", "value", "level", "days", "metric", "score"
    ]  # fmt: skip
    paper = {"pixel", "latent-none", "latent-insitu", "latent-exsitu", "latent-both", "oi",
             "climatology"}  # fmt: skip
    assert set(scores.loc[scores["protocol"] == "paper", "method"]) == paper
    physical = paper | {"pixel-both", "oi-both"}
    assert set(scores.loc[scores["protocol"] == "physical", "method"]) == physical
    assert set(scores["axis"]) == {"coarsen", "noise", "gap"}
    assert {"wasserstein", "rmse"} <= set(scores["metric"])
    assert set(scores["days"]) == {"observed", "all"}
    assert np.isfinite(scores["score"]).all()

    analyses = out / "analysis"
    ds = xr.open_dataset(analyses / "physical" / "latent-both" / "coarsen-2.nc")
    assert ds["analysis"].dims == ("member", "time", "level", "lat", "lon")
    assert ds.sizes["member"] == 2 and ds.sizes["time"] == 8
    assert ds.sizes["level"] == 5 and (ds.sizes["lat"], ds.sizes["lon"]) == (16, 32)
    assert ds["analysis"].attrs["units"] == "K"
    assert np.isfinite(ds["analysis"]).all()
    # kelvin, not standardised units: within the physical range of air temperature
    assert 150 < float(ds["analysis"].mean()) < 320
    assert 150 < float(ds["truth"].min()) and float(ds["truth"].max()) < 340
    assert ds.attrs["method"] == "latent-both" and ds.attrs["coarsen"] == 2
    # the physical protocol: every observation it used, with masks, in physical units
    assert ds.attrs["protocol"] == "physical" and ds.attrs["observations"] == "t,precip,olr"
    assert {"observation", "observation_precip", "observation_precip_mask",
            "observation_olr", "observation_olr_mask"} <= set(ds.data_vars)  # fmt: skip
    assert ds["observation_precip"].attrs["units"] == "mm day-1"
    paper_latent = xr.open_dataset(analyses / "paper" / "latent-both" / "coarsen-2.nc")
    assert paper_latent.attrs["observations"] == "z" and "observation_latent" in paper_latent

    for protocol in ("paper", "physical"):
        cases = ("fig3-ideal", "fig4-coarse", "fig5-noisy", "fig6-sparse")
        for name in (*cases, "fig7-wasserstein", "fig8-modalities", "rmse"):
            figure = out / "figures" / protocol / f"{name}.png"
            assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", figure
            assert figure.stat().st_size > 10_000
    for name in ("protocols", "training-curves", "spread-error"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "| axis | value | metric | pixel |" in summary
    assert "## Physical protocol" in summary and "## The protocols compared" in summary
    significance = pd.read_csv(out / "significance.csv")
    assert {"protocol", "axis", "value", "level", "metric", "method", "reference", "difference",
            "low", "high"} <= set(significance.columns)  # fmt: skip
    assert set(significance["reference"]) == {"pixel", "latent-none", "oi"}
    assert set(significance.loc[significance["reference"] == "oi", "method"]) == {"oi-both"}
    assert (significance["low"] <= significance["high"]).all()
    daily = pd.read_csv(out / "daily-scores.csv")
    assert set(daily["metric"]) == {"mse", "crps"} and daily["time"].nunique() == 8
    assert "### Differences on the named cases, with 95 % intervals" in summary
    ranks = pd.read_csv(out / "rank-histograms.csv")
    assert set(ranks["method"]) == set(scores["method"]) - {"climatology"}  # ensembles only
    resolved = yaml.safe_load((out / "config.resolved.yaml").read_text())
    assert resolved["name"] == "smoke" and resolved["assimilation"]["sampler"]["steps"] == 4
    assert (out / "logs" / "dataset.log").exists()
    # every job's log ends with its peak memory and CPU time (warm-start children included)
    logs = [*out.joinpath("logs").rglob("*.log"), *tmp_path.joinpath("resources").rglob("*.log")]
    assert len(logs) > 100
    for log in logs:
        last = log.read_text().strip().splitlines()[-1]
        assert re.search(r"peak resident memory \d+ MB, CPU \d+ s", last), (log, last)
    assert (out / "benchmarks" / "evaluate.tsv").exists()
    # noise-0.1 repeats coarsen-2's setting: one computation, the copy filed under its own cell
    copy = xr.open_dataset(analyses / "physical" / "latent-both" / "noise-0.1.nc")
    assert (copy.attrs["axis"], copy.attrs["value"]) == ("noise", 0.1)
    assert copy.attrs["same_setting_as"] == "coarsen-2"
    xr.testing.assert_identical(copy["analysis"], ds["analysis"])
    benchmarks = out / "benchmarks" / "assimilate"
    assert not (benchmarks / "physical" / "latent-both" / "noise-0.1.tsv").exists()
    same = scores.set_index(["protocol", "method", "axis", "value", "level", "days", "metric"])
    same = same["score"]
    np.testing.assert_array_equal(
        same.xs(("noise", 0.1), level=("axis", "value")),
        same.xs(("coarsen", 2.0), level=("axis", "value")),
    )
    # pixel observes the same way under both protocols: computed once, filed under both
    pixel = xr.open_dataset(analyses / "paper" / "pixel" / "coarsen-2.nc")
    pixel_physical = xr.open_dataset(analyses / "physical" / "pixel" / "coarsen-2.nc")
    assert pixel_physical.attrs["same_analysis_as"] == "paper/coarsen-2"
    xr.testing.assert_identical(pixel_physical["analysis"], pixel["analysis"])
    assert not (benchmarks / "physical" / "pixel").exists()
    oi = xr.open_dataset(analyses / "paper" / "oi" / "coarsen-2.nc")
    assert oi.sizes["member"] == 2 and np.isfinite(oi["analysis"]).all()
    # every method of a setting assimilates the very same temperature observations
    for method in ("oi", "pixel-both", "latent-both"):
        other = xr.open_dataset(analyses / "physical" / method / "coarsen-2.nc")
        xr.testing.assert_identical(other["observation"], pixel["observation"])

    # Changing a sampler setting reruns only the diffusion analyses (and what reads them),
    # not the climatology or OI ones, nor any training.
    overlay = tmp_path / "steps.yaml"
    overlay.write_text("assimilation:\n  sampler:\n    steps: 5\n")
    result = snakemake(root, tmp_path, "-n", "--configfile", str(root / "presets/smoke.yaml"),
                       str(overlay))  # fmt: skip
    counts = job_counts(result.stdout)
    # 4 distinct settings: pixel 4, pixel-both 4, 4 latent sets x 4 x 2 protocols
    assert counts["assimilate"] == 4 + 4 + 4 * 4 * 2 and "assimilate_classical" not in counts
    # the copies of them: pixel 6 (noise-0.1, and the 5 physical cells), pixel-both 1,
    # latent 4 x 2 (noise-0.1 in each protocol)
    assert counts["same_analysis"] == 6 + 1 + 8
    assert "train_score" not in counts and "oi_background" not in counts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_keep_freed_memory_reuses_large_blocks():
    """After keep_freed_memory, blocks of a few MB of mixed sizes allocated and freed over and
    over come from memory the process already has, not mapped afresh and zeroed by the kernel
    page by page each time (by default tens of thousands of new pages over these 20 rounds)."""
    import resource

    import numpy as np

    from slams.workflow import keep_freed_memory

    if not keep_freed_memory():
        pytest.skip("not glibc")
    sizes = [3 << 20, 5 << 20, 9 << 20, 1 << 20, 7 << 20]

    def allocate():
        blocks = [np.ones(size, dtype=np.uint8) for size in sizes]  # written in full
        del blocks

    allocate()  # the heap grows once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        allocate()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < (1 << 20) // resource.getpagesize()  # under 1 MB of new pages


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("xesmf") is None,
    reason="xesmf is not installed (ESMF comes from conda-forge; here: ../shared/esmf/install)",
)
def test_smoke_preset_regrids_with_xesmf(root, smoke_run, tmp_path):
    """The smoke preset's regrid stage run by Snakemake with `regrid_backend: xesmf`: every file
    the builtin backend wrote in the smoke run, with the same missing values and within the
    measured per-source tolerance. The smoke grids are coarser than the demo's
    (tests/test_regrid.py), and the great-circle edges depart further from latitude circles
    on larger cells: measured 0.16-0.18 K, 0.38-0.51 mm/day and 1.07-1.17 W m-2 over the 3 years."""
    tolerance = {"era5": 0.25, "cpc": 0.7, "olr": 1.5}

    overlay = tmp_path / "xesmf.yaml"
    overlay.write_text("data:\n  regrid_backend: xesmf\n")
    snakemake(root, tmp_path, "--cores", "2", "--until", "regrid", "--configfile",
              str(root / "presets/smoke.yaml"), str(overlay))  # fmt: skip
    builtin_files = sorted((smoke_run / "resources").glob("*/regridded-*/*/*.nc"))
    assert len(builtin_files) == 9  # 3 sources x 3 years
    for builtin_path in builtin_files:
        esmf_path = tmp_path / builtin_path.relative_to(smoke_run)
        with xr.open_dataset(esmf_path) as ds:
            assert ds.attrs["regridding"].endswith("(xesmf)"), esmf_path
        with xr.open_dataarray(builtin_path) as builtin, xr.open_dataarray(esmf_path) as esmf:
            assert builtin.shape == esmf.shape
            assert np.array_equal(np.isnan(builtin.values), np.isnan(esmf.values))
            difference = np.nanmax(np.abs(builtin.values - esmf.values))
            assert 0 < difference < tolerance[esmf_path.parent.name], esmf_path


@pytest.mark.slow
def test_steps_benchmark_on_the_smoke_run(root, smoke_run, tmp_path):
    """studies/steps.py on the smoke run's networks: a named case and a grid cell given as
    axis-value, network calls counted with skipped corrections, --max-calls, --resume (nothing
    measured twice), --from-csv (the choice and the plot from the rows alone) and --seeds."""
    import subprocess

    run = smoke_run / "results" / "smoke"
    out = tmp_path / "steps.csv"
    base = [sys.executable, str(root / "studies" / "steps.py"), str(run), "--methods",
            "latent-none", "--cases", "ideal", "gap-4", "--steps", "2", "4", "--corrections",
            "0", "1", "--solvers", "dpm2m", "--guidance", "sda", "--tau-reference-steps", "0",
            "2", "--max-calls", "6", "--csv", str(out)]  # fmt: skip
    bad = subprocess.run([*base[:5], "--cases", "storm"], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown case 'storm'" in bad.stderr
    first = subprocess.run(base, capture_output=True, text=True, check=True, cwd=smoke_run)
    rows = pd.read_csv(out)
    # gap-4 is not on the smoke grid's gap axis ([2]): axis-value is taken as given
    assert set(rows.case) == {"ideal", "gap-4"}
    # per case: 2 and 4 steps without corrections, with 1 correction at 2 steps for both Langevin
    # times (4 + 1 costs 8 > 6 calls); a correction-free sampler is measured once
    assert len(rows) == 2 * 4
    assert set(rows[rows.corrections == 0].calls) == {2, 4}
    assert set(rows[rows.corrections == 1].calls) == {4}
    assert np.isfinite(rows[["rmse", "crps", "spread_skill"]].to_numpy()).all()
    assert "Per method in every case measured" in first.stdout
    again = subprocess.run([*base, "--resume"], capture_output=True, text=True, check=True,
                           cwd=smoke_run)  # fmt: skip
    assert again.stdout.count("| latent-none |") == 0  # every row was already there
    pd.testing.assert_frame_equal(pd.read_csv(out)[rows.columns], rows)
    merged = subprocess.run(
        [sys.executable, str(root / "studies" / "steps.py"), "--from-csv", str(out), str(out),
         "--plot", str(tmp_path / "steps.png")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "- latent-none" in merged.stdout and (tmp_path / "steps.png").stat().st_size > 0
    # a second seed, 2 + 0 only: the run's seed (0) is kept from the CSV, seed 1 measured
    seeded = subprocess.run([*base[:-2], "--steps", "2", "--corrections", "0", "--seeds", "0",
                             "1", "--csv", str(out), "--resume"], capture_output=True, text=True,
                            check=True, cwd=smoke_run)  # fmt: skip
    assert seeded.stdout.count("| latent-none |") == 2  # ideal and gap-4 at seed 1
    rows2 = pd.read_csv(out)
    assert len(rows2) == 2 * 4 + 2 and set(rows2.seed) == {0, 1}
    pair = rows2[(rows2.steps == 2) & (rows2.corrections == 0)].set_index(["case", "seed"])
    assert (pair.crps.xs(0, level="seed") != pair.crps.xs(1, level="seed")).all()  # new draws
    assert "Means over 2 seeds" in seeded.stdout
    # the same samplers on the exact trajectory (studies/langevin_tradeoff.py), resumable
    tradeoff = [sys.executable, str(root / "studies" / "langevin_tradeoff.py"), str(out),
                "--members", "64", "--csv", str(tmp_path / "exact.csv")]  # fmt: skip
    subprocess.run([*tradeoff, "--plot", str(tmp_path / "tradeoff.png")], capture_output=True,
                   text=True, check=True)  # fmt: skip
    exact = pd.read_csv(tmp_path / "exact.csv")
    assert len(exact) == 4  # 2 + 0, 4 + 0 and 2 + 1 at both Langevin times: all in both cells
    assert exact.exact_share.between(0.05, 1.2).all() and exact.worst.ge(1.0).all()
    assert (tmp_path / "tradeoff.png").stat().st_size > 0
    resumed = subprocess.run([*tradeoff, "--resume"], capture_output=True, text=True, check=True)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "exact.csv"), exact)  # not re-measured
    assert "Samplers meeting both goals" in resumed.stdout


@pytest.mark.slow
def test_paper_scale_benchmark_measures_every_job_of_its_targets(root, tmp_path):
    """benchmarks/paper_scale.py on the smoke preset (its own targets: one analysis of each
    method family): every stage's jobs, with the peak memory their logs end with, their
    seconds and output sizes; --table-only reads the same rows again."""
    import subprocess

    script = [sys.executable, str(root / "benchmarks" / "paper_scale.py"), "--workdir",
              str(tmp_path / "run"), "--preset", str(root / "presets/smoke.yaml"), "--cell",
              "coarsen-2", "--cores", "2"]  # fmt: skip
    env = {**os.environ, "SLAMS_WARM_IDLE": "10"}
    first = subprocess.run([*script, "--csv", str(tmp_path / "a.csv")], capture_output=True,
                           text=True, env=env, timeout=600)  # fmt: skip
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    rows = pd.read_csv(tmp_path / "a.csv")
    stages = {"synthetic", "regrid", "dataset", "train_autoencoder", "encode", "train_score",
              "oi_background", "assimilate"}  # fmt: skip
    assert stages <= set(rows.stage)
    assert (rows.stage == "synthetic").sum() == 3 and (rows.stage == "regrid").sum() == 9
    assert rows.peak_mb.notna().all() and (rows.peak_mb > 50).all()
    computed = rows[rows.stage != "same_analysis"]  # copies have no benchmark
    assert computed.seconds.notna().all()
    assert (rows.loc[rows.stage.isin(["synthetic", "regrid", "dataset"]), "output_gb"] > 0).all()
    # the stage table: pixel and latent-none, oi and climatology
    assert "| assimilate | 2 |" in first.stdout and "| assimilate_classical | 2 |" in first.stdout
    again = subprocess.run([*script, "--table-only", "--csv", str(tmp_path / "b.csv")],
                           capture_output=True, text=True, check=True)  # fmt: skip
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b.csv"), rows)
    assert "0.0 min of wall time" not in again.stdout and "job-seconds" in again.stdout


@pytest.mark.slow
def test_a_sampler_for_one_network_reruns_only_its_analyses(root, smoke_run, tmp_path):
    """``assimilation.sampler_by_space`` reaches the assimilate rule's params for the methods
    sampling with that network, and for no other: Snakemake's params trigger reruns exactly
    their analyses (a dry run over the finished smoke run)."""
    from slams.config import analysis_cells, analysis_sources, load_config
    from slams.paths import analysis_path, run_dir

    overlay = tmp_path / "latent-none-sampler.yaml"
    overlay.write_text("assimilation:\n  sampler_by_space:\n    latent-none: {steps: 3}\n")
    configs = [str(root / "presets/smoke.yaml"), str(overlay)]
    result = snakemake(root, smoke_run, "-n", "--configfile", *configs)
    jobs = re.findall(r"rule assimilate:\n(?:    .*\n)*?    output: (\S+)", result.stdout)
    smoke = load_config(root / "config.yaml", root / "presets/smoke.yaml")
    copies = analysis_sources(smoke)
    expected = {
        analysis_path(run_dir(smoke["name"]), p, m, a, v)
        for p, m, a, v in analysis_cells(smoke)
        if m == "latent-none" and (p, m, a, v) not in copies
    }
    assert expected and set(jobs) == expected
    assert "params" in result.stdout  # the reason Snakemake gives
    # and without the overlay nothing reruns
    unchanged = snakemake(root, smoke_run, "-n", "--configfile", configs[0])
    assert "rule assimilate:" not in unchanged.stdout


def test_the_pixel_networks_and_only_they_train_with_score_pixel(root, smoke_run, tmp_path):
    """``score.pixel`` sets the U-Net of both pixel-space networks (``pixel``, ``pixel-both``)
    and ``score.latent`` that of the latent ones: a change of ``score.pixel`` retrains exactly
    the two pixel-space networks (a dry run over the finished smoke run)."""
    overlay = tmp_path / "wider-pixel.yaml"
    overlay.write_text("score:\n  pixel:\n    hidden: [8, 24]\n")
    configs = [str(root / "presets/smoke.yaml"), str(overlay)]
    result = snakemake(root, smoke_run, "-n", "--configfile", *configs)
    trained = re.findall(
        r"rule train_score:\n(?:    .*\n)*?    output: \S+/score-(\S+)\.pt", result.stdout
    )
    assert sorted(trained) == ["pixel", "pixel-both"]


def test_the_results_tables_from_a_finished_run(smoke_run, tmp_path):
    """The docs' results tables (slams.docgen) from a finished run's files, collected as
    studies/converged is: a row per network, named case and method, setting."""
    from slams import docgen

    study = tmp_path / "study"
    written = docgen.collect_study(smoke_run / "results" / "smoke", study)
    assert (study / "scores.csv") in written and list((study / "losses").glob("score-*.csv"))
    training = docgen.study_training(study)
    assert training.count("\n| score-") == 6 and training.count("\n| autoencoder-") == 4
    cases = docgen.study_cases(study)
    assert "| ideal | latent-both | " in cases and "| sparse | oi | " in cases
    assert "[" in cases.split("| ideal | pixel | ")[1].splitlines()[0]  # with its interval
    assert "| coarse | latent-none | " in docgen.study_protocols(study)
    assert "| gap 2 | " in docgen.study_multimodality(study)
    assert "| ideal | paper | latent-none | " in docgen.study_calibration(study)
    assert docgen.headline(study).count("**") == 2 * 4  # one best per named case
    # before and after: the same run gives no change; a run whose CRPS is far higher is worse
    # beyond every interval, and the window count follows spread/skill
    same = docgen.calibration_change(study, study).splitlines()
    diffusion = [line for line in same[2:-1] if "| oi" not in line and "climatology" not in line]
    assert len(diffusion) == len(same) - 3 and all(line.endswith("| no |") for line in diffusion)
    inside = sum(0.8 <= float(line.split(" | ")[3].split(" → ")[0]) <= 1.2 for line in diffusion)
    assert same[-1].startswith("| in 0.8–1.2 |")
    assert f"| {inside} → {inside} of {len(diffusion)} |" in same[-1]
    import shutil

    import pandas as pd

    after = tmp_path / "after"
    shutil.copytree(study, after)
    intervals = pd.read_csv(after / "intervals.csv")
    intervals.loc[intervals["metric"] == "crps", ["score", "low", "high"]] += 100.0
    intervals.to_csv(after / "intervals.csv", index=False)
    scores = pd.read_csv(after / "scores.csv")
    scores.loc[scores["metric"] == "spread_skill", "score"] = 1.0
    scores.to_csv(after / "scores.csv", index=False)
    worse = docgen.calibration_change(study, after).splitlines()
    assert all(line.endswith("| yes |") for line in worse[2:-1])
    assert f"→ {len(diffusion)} of {len(diffusion)} |" in worse[-1]
