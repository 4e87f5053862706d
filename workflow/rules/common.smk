# Configuration checks and every output path of the workflow, in one place.

import dataclasses
import re
from pathlib import Path

from snakemake.common.configfile import load_configfile

from slams.cluster import balanced_groups, group_id
from slams.config import (
    ConfigError,
    analysis_cells,
    analysis_sources,
    format_value,
    layer,
    method_assimilation,
    setting_parameters,
    validate_config,
)
from slams.methods import DIFFUSION_METHODS
from slams.methods import METHODS as METHOD_SPECS
from slams.report import case_figure_stem
from slams.sampling import SamplerSettings

# config.yaml, then each --configfile over the one before, then --config, as load_config reads
# them (slams.config.layer): Snakemake merges the overlays among themselves first, which would
# undo a null in an earlier one (presets/smoke.yaml's sampler_by_space) by a later one's mapping.
# Remote jobs get the same --configfiles and --config, so they rebuild the same config.
if workflow.config_settings.configfiles:
    _LAYERS = (
        []
        if workflow.config_settings.replace_workflow_config
        else [load_configfile(f"{workflow.basedir}/config.yaml")]
    )
    _LAYERS += [load_configfile(path) for path in workflow.config_settings.configfiles]
    _LAYERS.append(dict(workflow.config_settings.config))
    _LAYERED = layer(_LAYERS)
    config.clear()
    config.update(_LAYERED)

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
PROTOCOLS = config["assimilation"]["protocols"]
# The protocol whose results the single-protocol figures show: the one we recommend.
MAIN_PROTOCOL = "physical" if "physical" in PROTOCOLS else PROTOCOLS[0]
CELL_KEYS = ("protocol", "method", "axis", "value")
CELLS = analysis_cells(
    config
)  # every analysis file, as (protocol, method, axis, value)
# Cells whose analysis another cell already computes -> that cell, as wildcards; a regex of
# their paths (<protocol>/<method>/<axis>-<value>) keeps them from assimilate(_classical).
SAME_ANALYSIS = {
    cell: dict(zip(CELL_KEYS, source))
    for cell, source in analysis_sources(config).items()
}
COPIED_CELLS = (
    "|".join(re.escape("{}/{}/{}-{}".format(*cell)) for cell in SAME_ANALYSIS)
    or "(?!x)x"
)
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
OI_BACKGROUND = f"{RESULTS}/models/{{method}}-background.pt"  # oi, oi-both
SCORE_LOSSES = f"{RESULTS}/models/score-{{space}}-losses.csv"
ANALYSIS = f"{RESULTS}/analysis/{{protocol}}/{{method}}/{{axis}}-{{value}}.nc"
SCORES = f"{RESULTS}/scores.csv"
RANK_HISTOGRAMS = f"{RESULTS}/rank-histograms.csv"
DAILY_SCORES = f"{RESULTS}/daily-scores.csv"
SIGNIFICANCE = f"{RESULTS}/significance.csv"
INTERVALS = f"{RESULTS}/intervals.csv"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"

SPACES = [METHOD_SPECS[m].space for m in METHODS if METHOD_SPECS[m].space]
# The methods that sample with a score network (DIFFUSION_METHODS: rule assimilate, on a GPU)
# and those that need none: optimal interpolation and the climatology (rule
# assimilate_classical, on CPUs). Their alternations are the two rules' `method` constraints:
# exactly one rule makes each analysis.
CLASSICAL_METHODS = tuple(m for m in METHOD_SPECS if m not in DIFFUSION_METHODS)
# The analyses a rule computes (the rest are copies, rule same_analysis), method by method.
COMPUTED_CELLS = sorted(
    (cell for cell in CELLS if cell not in SAME_ANALYSIS),
    key=lambda cell: list(METHOD_SPECS).index(cell[1]),
)
LATENT_SETS = sorted({METHOD_SPECS[m].modalities for m in METHODS} - {None})
for _set in LATENT_SETS:
    if _set not in MODALITIES:
        raise WorkflowError(
            f"config error at autoencoder.modalities: method latent-{_set} needs "
            f"modality set '{_set}' in the list"
        )

# Every figure (PNG; each has a PDF beside it) and the summary; workflow/rules/figures.smk
# makes them. Per protocol, in figures/<protocol>/: figures 3-6 map the named cases (fig3-ideal,
# fig4-coarse, fig5-noisy, fig6-sparse, case-<name> for any other case:
# slams.report.case_figure_stem), figures 7 and 8 and the scores against degradation.
PROTOCOL_FIGURE = f"{RESULTS}/figures/{{protocol}}/{{name}}.png"
PROTOCOL_FIGURE_NAMES = {
    "fig7": "fig7-wasserstein",
    "fig8": "fig8-modalities",
    "rmse": "rmse",
    "crps": "crps",
    "spread_skill": "spread-skill",
    "rank_histograms": "rank-histograms",
}
FIGURES = {
    **{
        f"case_{case}_{protocol}": PROTOCOL_FIGURE.format(
            protocol=protocol, name=case_figure_stem(case)
        )
        for protocol in PROTOCOLS
        for case in config["assimilation"]["cases"]
    },
    **{
        f"{key}_{protocol}": PROTOCOL_FIGURE.format(protocol=protocol, name=name)
        for protocol in PROTOCOLS
        for key, name in PROTOCOL_FIGURE_NAMES.items()
    },
    "protocols": f"{RESULTS}/figures/protocols.png",
    "spread_error": f"{RESULTS}/figures/spread-error.png",
    "curves": f"{RESULTS}/figures/training-curves.png",
    "summary": f"{RESULTS}/summary.md",
    "config": f"{RESULTS}/config.resolved.yaml",
}


def protocol_figure(key):
    """The path template (with {protocol}) of one per-protocol figure."""
    return PROTOCOL_FIGURE.replace("{name}", PROTOCOL_FIGURE_NAMES[key])


def protocol_pdf(key):
    """The PDF written beside a per-protocol figure."""
    return str(Path(protocol_figure(key)).with_suffix(".pdf"))


wildcard_constraints:
    source="era5|cpc|olr",
    year=r"\d{4}",
    split="train|validation|test",
    modalities="none|insitu|exsitu|both",
    space=r"pixel|pixel-both|latent-(none|insitu|exsitu|both)",
    method=r"pixel|pixel-both|latent-(none|insitu|exsitu|both)|oi|oi-both|climatology",
    protocol="paper|physical",
    axis="coarsen|noise|gap",
    value=r"[0-9.]+",


def analysis_files(protocol=None):
    """Every analysis file of the run, or of one protocol."""
    return [
        ANALYSIS.format(**dict(zip(CELL_KEYS, cell)))
        for cell in CELLS
        if protocol is None or cell[0] == protocol
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


def one_of(names):
    """A wildcard constraint that matches exactly one of ``names``."""
    return "|".join(re.escape(name) for name in names)


def analysis_group(name, methods):
    """The `group:` of the analyses of ``methods``: group jobs ``<name>-0``, ``<name>-1``, ...
    of near-equal size (slams.cluster.balanced_groups over the run's analyses of these
    methods, in COMPUTED_CELLS' order), each of at most the cluster profile's
    `group-components: <name>=n`; no group where the profile sets none. Balanced over every
    analysis of the config: a run that computes only some of them groups what is left of each
    group job."""
    cells = [cell for cell in COMPUTED_CELLS if cell[1] in methods]

    def group_of(wildcards):
        # the profile's settings reach the workflow after the Snakefile is read: look now
        settings = workflow.group_settings
        largest = settings.group_components.get(name) if settings is not None else None
        cell = tuple(wildcards[key] for key in CELL_KEYS)
        if not largest or cell not in cells:
            return None
        group = group_id(name, balanced_groups(cells, largest)[cell])
        # group-components finds a group id's size under its parent's name, as it does for a
        # group named with wildcards
        workflow.parent_groupids[group] = name
        return group

    return group_of


def assimilation_params(wildcards):
    """The part of the assimilation config a method uses: a change elsewhere (another method's
    settings) does not rerun its analyses (Snakemake's params rerun trigger)."""
    section = config["assimilation"]
    method = wildcards.method
    spec = METHOD_SPECS[method]
    params = {"period": section["period"]}
    if method != "climatology":
        params["members"] = section["members"]
    if spec.family == "oi":
        params["oi"] = section["oi"]
    elif spec.space is not None:
        # in SamplerSettings' field order (the schema's keys, additionalProperties false),
        # whatever order the config files give them in: Snakemake compares params as text, so
        # an overlay listing them otherwise would rerun every analysis with the same sampler
        # its network's sampler (assimilation.sampler_by_space over assimilation.sampler)
        sampler = method_assimilation(section, method)["sampler"]
        fields = [f.name for f in dataclasses.fields(SamplerSettings)]
        params.update(
            window_days=section["window_days"],
            sampler={k: sampler[k] for k in fields if k in sampler},
        )
    if wildcards.protocol == "physical":
        # the error variances of the precipitation and OLR it observes, if any
        params["observation_variance"] = {
            k: v
            for k, v in section["observation_variance"].items()
            if k in spec.observes
        }
        if spec.modalities is not None:
            params["decoder_error"] = section["decoder_error"]
    if spec.modalities is not None:
        params["decoder_residuals"] = section["decoder_residuals"]
    return params


def analysis_inputs(wildcards):
    """The trained networks and data an analysis needs, by protocol and method."""
    spec = METHOD_SPECS[wildcards.method]
    inputs = {
        "test": DATASET.format(split="test"),
        "stats": STATS,
        "climatology": CLIMATOLOGY,
    }
    if spec.space is not None:
        inputs["score"] = SCORE_NET.format(space=spec.space)
    if spec.family == "oi":
        inputs["background"] = OI_BACKGROUND.format(method=wildcards.method)
    if spec.modalities is not None:
        inputs["autoencoder"] = AUTOENCODER.format(modalities=spec.modalities)
        # the training split's latent statistics (z_mean, z_std)
        inputs["latent_stats"] = LATENTS.format(
            modalities=spec.modalities, split="train"
        )
        if wildcards.protocol == "paper":
            # the paper protocol observes the encoded truth of the test days
            inputs["latents"] = LATENTS.format(modalities=spec.modalities, split="test")
        section = config["assimilation"]
        if section["decoder_residuals"] or (
            wildcards.protocol == "physical" and section["decoder_error"]
        ):
            # the decoder's own error, measured on validation days
            inputs["validation"] = DATASET.format(split="validation")
    return inputs


def measurement(wildcards):
    return setting_parameters(config, wildcards.axis, float(wildcards.value))


def score_inputs(wildcards):
    """Training and validation states of a score network: the dataset or stored latents."""
    if wildcards.space.startswith("pixel"):
        return {s: DATASET.format(split=s) for s in ("train", "validation")}
    modalities = wildcards.space.removeprefix("latent-")
    return {
        s: LATENTS.format(modalities=modalities, split=s)
        for s in ("train", "validation")
    }


def parent_of(name, levels=1):
    """A param holding the folder of an output (lint: no hard-coded output prefixes)."""
    return lambda wildcards, output: str(Path(output[name]).parents[levels - 1])
