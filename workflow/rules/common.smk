# Configuration checks and every output path of the workflow, in one place.

import dataclasses
import re
from pathlib import Path

from snakemake.common.configfile import load_configfile

from slams.assimilation import SamplerSettings
from slams.cluster import balanced_groups, group_id
from slams.config import (
    AXES,
    ConfigError,
    analysis_cells,
    analysis_sources,
    format_value,
    layer,
    method_assimilation,
    setting_parameters,
    validate_config,
)
from slams.figures.summary import case_figure_stem
from slams.methods import DIFFUSION_METHODS, MODALITY_SETS, SCORE_NETWORKS
from slams.methods import METHODS as METHOD_SPECS
from slams.methods import PROTOCOLS as ALL_PROTOCOLS
from slams.methods import score_network
from slams.paths import (
    analysis_path,
    autoencoder_name,
    background_path,
    benchmarks_dir,
    cell_paths,
    checkpoints_dir,
    climatology_path,
    dataset_path,
    latents_path,
    losses_path,
    model_path,
    resolved_config_path,
    resources_dir,
    run_dir,
    schema_path,
    score_name,
    stats_path,
    table_path,
)

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
    validate_config(config, schema_path(workflow.basedir))
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
# Cells whose analysis another cell already computes -> that cell, as wildcards.
SAME_ANALYSIS = {
    cell: dict(zip(CELL_KEYS, source))
    for cell, source in analysis_sources(config).items()
}
SPLITS = ["train", "validation", "test"]

RESOURCES = resources_dir(DATA["dataset"])
RESULTS = run_dir(NAME)
RESOURCE_BENCHMARKS = benchmarks_dir(RESOURCES)
RAW = f"{RESOURCES}/raw/{{source}}/{{year}}.nc"
# Real downloads (data.source real): ERA5 comes per month and is merged per year; NOAA serves
# all OLR years in one file, cut into years.
DOWNLOADS = f"{RESOURCES}/downloads"
ERA5_MONTH = f"{DOWNLOADS}/era5/{{year}}-{{month}}.nc"
OLR_ALL = f"{DOWNLOADS}/olr/olr.day.mean.nc"
REGRIDDED = f"{RESOURCES}/regridded-{RESOLUTION}deg/{{source}}/{{year}}.nc"
# The run's files (slams.paths), as patterns: the same functions with wildcard placeholders.
DATASET = dataset_path(RESULTS, "{split}")
STATS = stats_path(RESULTS)
CLIMATOLOGY = climatology_path(RESULTS)
AUTOENCODER = model_path(RESULTS, autoencoder_name("{modalities}"))
AUTOENCODER_LOSSES = losses_path(RESULTS, autoencoder_name("{modalities}"))
LATENTS = latents_path(RESULTS, "{modalities}", "{split}")
SCORE_NET = model_path(RESULTS, score_name("{space}"))
OI_BACKGROUND = background_path(RESULTS, "{method}")  # oi, oi-both
SCORE_LOSSES = losses_path(RESULTS, score_name("{space}"))
ANALYSIS = analysis_path(RESULTS, "{protocol}", "{method}", "{axis}", "{value}")
# A regex of the copied cells' paths from their {protocol} on (paper/pixel/coarsen-4.nc): the
# rules' protocol constraints look ahead with it, so that exactly one rule makes each analysis.
_FROM_PROTOCOL = len(ANALYSIS.split("{protocol}")[0])
COPIED_CELLS = (
    "|".join(
        re.escape(analysis_path(RESULTS, *cell)[_FROM_PROTOCOL:])
        for cell in SAME_ANALYSIS
    )
    or "(?!x)x"
)
SCORES = table_path(RESULTS, "scores")
RANK_HISTOGRAMS = table_path(RESULTS, "rank-histograms")
DAILY_SCORES = table_path(RESULTS, "daily-scores")
SIGNIFICANCE = table_path(RESULTS, "significance")
INTERVALS = table_path(RESULTS, "intervals")
LOGS = f"{RESULTS}/logs"
BENCHMARKS = benchmarks_dir(RESULTS)

SPACES = [METHOD_SPECS[m].space for m in METHODS if METHOD_SPECS[m].space]
# The methods that sample with a score network (DIFFUSION_METHODS: rule assimilate, on a GPU)
# and those that need none: optimal interpolation and the climatology (rule
# assimilate_classical, on CPUs). Their alternations are the two rules' `method` constraints:
# exactly one rule makes each analysis.
CLASSICAL_METHODS = tuple(m for m in METHOD_SPECS if m not in DIFFUSION_METHODS)
# The methods of optimal interpolation, each with its background covariance (rule oi_background).
OI_METHODS = tuple(m for m, spec in METHOD_SPECS.items() if spec.family == "oi")
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
# slams.figures.summary.case_figure_stem), figures 7 and 8 and the scores against degradation.
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
    "config": resolved_config_path(RESULTS),
}


def one_of(names):
    """A wildcard constraint that matches exactly one of ``names``."""
    return "|".join(re.escape(name) for name in names)


def protocol_figure(key):
    """The path template (with {protocol}) of one per-protocol figure."""
    return PROTOCOL_FIGURE.replace("{name}", PROTOCOL_FIGURE_NAMES[key])


def protocol_pdf(key):
    """The PDF written beside a per-protocol figure."""
    return str(Path(protocol_figure(key)).with_suffix(".pdf"))


# Method, network and protocol names from slams.methods.METHODS, the one table of them.
wildcard_constraints:
    source="era5|cpc|olr",
    year=r"\d{4}",
    split="train|validation|test",
    modalities=one_of(MODALITY_SETS),
    space=one_of(SCORE_NETWORKS),
    method=one_of(METHOD_SPECS),
    protocol=one_of(ALL_PROTOCOLS),
    axis=one_of(AXES),
    value=r"[0-9.]+",


def analysis_files(protocol=None):
    """Every analysis file of the run, or of one protocol."""
    return [
        analysis_path(RESULTS, *cell)
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
        # Only the keys of the guidance it uses: a change of mmps_solver does not rerun the
        # sda analyses, nor one of gamma the mmps ones.
        sampler = method_assimilation(section, method)["sampler"]
        unused = {"sda": ("mmps_iterations", "mmps_solver"), "mmps": ("gamma",)}
        fields = [
            f.name
            for f in dataclasses.fields(SamplerSettings)
            if f.name not in unused[sampler["guidance"]]
        ]
        params.update(
            segment_days=section["segment_days"],
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
            params["decoder_error_in_likelihood"] = section[
                "decoder_error_in_likelihood"
            ]
    if spec.modalities is not None:
        params["decoder_residuals_in_members"] = section["decoder_residuals_in_members"]
    return params


def analysis_inputs(wildcards):
    """The trained networks and data an analysis reads (slams.paths.cell_paths)."""
    return cell_paths(
        RESULTS, wildcards.method, wildcards.protocol, config["assimilation"]
    )


def measurement(wildcards):
    return setting_parameters(config, wildcards.axis, float(wildcards.value))


def score_inputs(wildcards):
    """Training and validation states of a score network: the dataset (pixel space) or the
    stored latents of its methods' autoencoder."""
    spec = next(s for s in METHOD_SPECS.values() if s.space == wildcards.space)
    splits = ("train", "validation")
    if spec.modalities is None:
        return {s: dataset_path(RESULTS, s) for s in splits}
    return {s: latents_path(RESULTS, spec.modalities, s) for s in splits}


def parent_of(name, levels=1):
    """A param holding the folder of an output (lint: no hard-coded output prefixes)."""
    return lambda wildcards, output: str(Path(output[name]).parents[levels - 1])
