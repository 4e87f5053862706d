# Configuration checks and every output path of the workflow, in one place.

import re
from pathlib import Path

from slams.config import (
    LATENT_METHODS,
    ConfigError,
    format_value,
    same_settings,
    setting_parameters,
    settings,
    validate_config,
)
from slams.report import case_figure_stem

try:
    validate_config(
        config, Path(workflow.basedir) / "workflow/schemas/config.schema.yaml"
    )
except ConfigError as error:
    raise WorkflowError(str(error)) from None

NAME = config["name"]
DATA = config["data"]
RESOLUTION = format_value(DATA["resolution"])
YEARS = list(range(DATA["years"][0], DATA["years"][1] + 1))
SOURCES = ["era5", "cpc", "olr"]
MODALITIES = config["autoencoder"]["modalities"]
METHODS = config["assimilation"]["methods"]
SETTINGS = settings(config)
# Cells that repeat an earlier cell's setting -> that cell, as wildcards; and a regex of them.
SAME_SETTINGS = {
    cell: {"axis": axis, "value": value}
    for cell, (axis, value) in same_settings(config).items()
}
SAME_CELLS = "|".join(re.escape(f"{a}-{v}") for a, v in SAME_SETTINGS) or "(?!x)x"
SPLITS = ["train", "validation", "test"]

RESOURCES = f"resources/{DATA['dataset']}"
RESULTS = f"results/{NAME}"
RAW = f"{RESOURCES}/raw/{{source}}/{{year}}.nc"
# Real downloads (data.source real): ERA5 comes per month and is merged per year; NOAA serves
# all OLR years in one file, cut into years.
DOWNLOADS = f"{RESOURCES}/downloads"
ERA5_MONTH = f"{DOWNLOADS}/era5/{{year}}-{{month}}.nc"
OLR_ALL = f"{DOWNLOADS}/olr/olr.day.mean.nc"
REGRIDDED = f"{RESOURCES}/regridded-{RESOLUTION}deg/{{source}}/{{year}}.nc"
DATASET = f"{RESULTS}/dataset/{{split}}.nc"
STATS = f"{RESULTS}/dataset/stats.json"
CLIMATOLOGY = f"{RESULTS}/dataset/climatology.nc"
AUTOENCODER = f"{RESULTS}/models/autoencoder-{{modalities}}.pt"
AUTOENCODER_LOSSES = f"{RESULTS}/models/autoencoder-{{modalities}}-losses.csv"
LATENTS = f"{RESULTS}/latents/{{modalities}}/{{split}}.nc"
SCORE_NET = f"{RESULTS}/models/score-{{space}}.pt"
CHECKPOINTS = f"{RESULTS}/models/checkpoints/{{model}}"
OI_BACKGROUND = f"{RESULTS}/models/oi-background.pt"
SCORE_LOSSES = f"{RESULTS}/models/score-{{space}}-losses.csv"
ANALYSIS = f"{RESULTS}/analysis/{{method}}/{{axis}}-{{value}}.nc"
SCORES = f"{RESULTS}/scores.csv"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"

SPACES = ["pixel"] * ("pixel" in METHODS) + [m for m in METHODS if m in LATENT_METHODS]
LATENT_SETS = sorted(
    {m.removeprefix("latent-") for m in METHODS if m in LATENT_METHODS}
)
for _set in LATENT_SETS:
    if _set not in MODALITIES:
        raise WorkflowError(
            f"config error at autoencoder.modalities: method latent-{_set} needs "
            f"modality set '{_set}' in the list"
        )

# Every figure (PNG; each has a PDF beside it) and the summary; workflow/rules/figures.smk
# makes them. Figures 3-6 map the named cases: fig3-ideal, fig4-coarse, fig5-noisy,
# fig6-sparse, case-<name> for any other case (slams.report.case_figure_stem).
FIGURES = {
    **{
        f"case_{case}": f"{RESULTS}/figures/{case_figure_stem(case)}.png"
        for case in config["assimilation"]["cases"]
    },
    "fig7": f"{RESULTS}/figures/fig7-wasserstein.png",
    "fig8": f"{RESULTS}/figures/fig8-modalities.png",
    "rmse": f"{RESULTS}/figures/rmse.png",
    "crps": f"{RESULTS}/figures/crps.png",
    "spread_skill": f"{RESULTS}/figures/spread-skill.png",
    "rank_histograms": f"{RESULTS}/figures/rank-histograms.png",
    "spread_error": f"{RESULTS}/figures/spread-error.png",
    "curves": f"{RESULTS}/figures/training-curves.png",
    "summary": f"{RESULTS}/summary.md",
    "config": f"{RESULTS}/config.resolved.yaml",
}


wildcard_constraints:
    source="era5|cpc|olr",
    year=r"\d{4}",
    split="train|validation|test",
    modalities="none|insitu|exsitu|both",
    space=r"pixel|latent-(none|insitu|exsitu|both)",
    method=r"pixel|latent-(none|insitu|exsitu|both)|oi|climatology",
    axis="coarsen|noise|gap",
    value=r"[0-9.]+",


def analysis_files():
    return [
        ANALYSIS.format(method=method, axis=axis, value=value)
        for method in METHODS
        for axis, value in SETTINGS
    ]


def gpu_resources(kind):
    """Slurm resources of the training and assimilation rules, taken from the config."""
    res = config["resources"]
    resources = {
        "runtime": res[f"{kind}_runtime_min"],
        "mem_mb": res[f"{kind}_mem_mb"],
    }
    if res["gpu_rules_use_gpu"]:
        resources["gpu"] = 1
    return resources


def assimilation_params(wildcards):
    """The part of the assimilation config a method uses: a change elsewhere (another method's
    settings) does not rerun its analyses (Snakemake's params rerun trigger)."""
    section = config["assimilation"]
    method = wildcards.method
    params = {"period": section["period"]}
    if method != "climatology":
        params["members"] = section["members"]
    if method == "oi":
        params["oi"] = section["oi"]
    elif method != "climatology":
        params.update(window_days=section["window_days"], sampler=section["sampler"])
    return params


def analysis_inputs(wildcards):
    """The trained networks and data an analysis needs, by method."""
    method = wildcards.method
    inputs = {
        "test": DATASET.format(split="test"),
        "stats": STATS,
        "climatology": CLIMATOLOGY,
    }
    if method == "pixel":
        inputs["score"] = SCORE_NET.format(space="pixel")
    elif method == "oi":
        inputs["background"] = OI_BACKGROUND
    elif method.startswith("latent-"):
        modalities = method.removeprefix("latent-")
        inputs["score"] = SCORE_NET.format(space=method)
        inputs["autoencoder"] = AUTOENCODER.format(modalities=modalities)
        inputs["latents"] = LATENTS.format(modalities=modalities, split="test")
    return inputs


def measurement(wildcards):
    return setting_parameters(config, wildcards.axis, float(wildcards.value))


def score_inputs(wildcards):
    """Training and validation states of a score network: the dataset or stored latents."""
    if wildcards.space == "pixel":
        return {s: DATASET.format(split=s) for s in ("train", "validation")}
    modalities = wildcards.space.removeprefix("latent-")
    return {
        s: LATENTS.format(modalities=modalities, split=s)
        for s in ("train", "validation")
    }


def parent_of(name, levels=1):
    """A param holding the folder of an output (lint: no hard-coded output prefixes)."""
    return lambda wildcards, output: str(Path(output[name]).parents[levels - 1])
