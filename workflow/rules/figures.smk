# The paper's figures 3-8 and the figures beyond it, from the analyses, the score tables and
# the training logs. `snakemake --report` bundles them with their captions
# (workflow/report/*.rst) and the config files.

import re

from slams.config import cases as named_cases
from slams.figures.summary import (
    case_figure_label,
    case_files,
    case_level,
    case_map_methods,
    case_map_missing,
    map_methods,
    spread_error_rows,
    spread_map_methods,
)


report: "../report/workflow.rst"


CASES = named_cases(config)  # {"ideal": ("coarsen", "4"), ...}
CASE_FIGURE = f"{RESULTS}/figures/{{protocol}}/{{figure}}-{{case}}"
# the PDF written beside each figure's PNG
PDFS = {
    key: str(Path(path).with_suffix(".pdf"))
    for key, path in FIGURES.items()
    if path.endswith(".png")
}
SPREAD_ERROR_ROWS = spread_error_rows(
    METHODS, CASES, config["data"]["levels"], RESULTS, MAIN_PROTOCOL
)
PAPER = "1. Paper figures"
BEYOND = "2. Beyond the paper"


rule case_figure:
    """Paper figures 3-6: truth, observation, pixel and latent analyses of a case, and errors,
    under one protocol."""
    input:
        lambda wc: case_files(METHODS, CASES[wc.case], RESULTS, wc.protocol),
    output:
        png=report(
            f"{CASE_FIGURE}.png",
            caption="../report/case.rst",
            category=PAPER,
            subcategory="{protocol} protocol",
            labels=lambda wc: {
                "figure": case_figure_label(wc.figure),
                "shows": f"{wc.case} case maps, {wc.protocol} protocol",
            },
        ),
        pdf=f"{CASE_FIGURE}.pdf",
    log:
        f"{LOGS}/figures/{{protocol}}/{{figure}}-{{case}}.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{protocol}}/{{figure}}-{{case}}.tsv"
    wildcard_constraints:
        figure="fig[3-6]|case",
        case="|".join(re.escape(case) for case in CASES) or "(?!x)x",
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        methods=lambda wc: case_map_methods(METHODS, wc.protocol),
        show=lambda wc: [m for m in map_methods(METHODS, wc.protocol).values() if m],
        level=lambda wc: case_level(wc.case, config["data"]["levels"]),
        label=lambda wc: case_figure_label(wc.figure),
        missing=lambda wc: case_map_missing(METHODS, wc.protocol),
        setting=lambda wc: "-".join(CASES[wc.case]),
    script:
        "../scripts/case_figure.py"


rule spread_error_maps:
    """Ensemble spread beside the RMSE of the ensemble mean, as maps, for every case."""
    input:
        [path for _, _, files in SPREAD_ERROR_ROWS for path in files.values()],
    output:
        png=report(
            FIGURES["spread_error"],
            caption="../report/spread-error.rst",
            category=BEYOND,
            labels={"figure": "spread/error maps", "shows": "calibration, where"},
        ),
        pdf=PDFS["spread_error"],
    log:
        f"{LOGS}/figures/spread-error.log",
    benchmark:
        f"{BENCHMARKS}/figures/spread-error.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        cases=SPREAD_ERROR_ROWS,
        methods=spread_map_methods(METHODS, MAIN_PROTOCOL),
        protocol=MAIN_PROTOCOL,
        days="observed",
    script:
        "../scripts/spread_error_maps.py"


rule protocol_figures:
    """Figures 7 and 8, scores against degradation and rank histograms of one protocol."""
    input:
        scores=SCORES,
        rank_histograms=RANK_HISTOGRAMS,
        intervals=INTERVALS,
    output:
        fig7=report(
            protocol_figure("fig7"),
            caption="../report/fig7.rst",
            category=PAPER,
            subcategory="{protocol} protocol",
            labels=lambda wc: {
                "figure": "Figure 7",
                "shows": f"Wasserstein against degradation, {wc.protocol} protocol",
            },
        ),
        fig7_pdf=protocol_pdf("fig7"),
        fig8=report(
            protocol_figure("fig8"),
            caption="../report/fig8.rst",
            category=PAPER,
            subcategory="{protocol} protocol",
            labels=lambda wc: {
                "figure": "Figure 8",
                "shows": f"modality ablation, {wc.protocol} protocol",
            },
        ),
        fig8_pdf=protocol_pdf("fig8"),
        rmse=report(
            protocol_figure("rmse"),
            caption="../report/rmse.rst",
            category=BEYOND,
            subcategory="{protocol} protocol",
            labels=lambda wc: {
                "figure": "RMSE",
                "shows": f"RMSE against degradation, {wc.protocol} protocol",
            },
        ),
        rmse_pdf=protocol_pdf("rmse"),
        crps=report(
            protocol_figure("crps"),
            caption="../report/crps.rst",
            category=BEYOND,
            subcategory="{protocol} protocol",
            labels=lambda wc: {
                "figure": "CRPS",
                "shows": f"CRPS against degradation, {wc.protocol} protocol",
            },
        ),
        crps_pdf=protocol_pdf("crps"),
        spread_skill=report(
            protocol_figure("spread_skill"),
            caption="../report/spread-skill.rst",
            category=BEYOND,
            subcategory="{protocol} protocol",
            labels=lambda wc: {
                "figure": "spread/skill",
                "shows": f"spread/skill against degradation, {wc.protocol} protocol",
            },
        ),
        spread_skill_pdf=protocol_pdf("spread_skill"),
        rank_histograms=report(
            protocol_figure("rank_histograms"),
            caption="../report/rank-histograms.rst",
            category=BEYOND,
            subcategory="{protocol} protocol",
            labels=lambda wc: {
                "figure": "rank histograms",
                "shows": f"calibration, the cases, {wc.protocol} protocol",
            },
        ),
        rank_histograms_pdf=protocol_pdf("rank_histograms"),
    log:
        f"{LOGS}/figures/{{protocol}}/scores.log",
    benchmark:
        f"{BENCHMARKS}/figures/{{protocol}}/scores.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        cases=CASES,
        days="observed",
    script:
        "../scripts/protocol_figures.py"


rule figures:
    """The protocols compared, training curves and the summary."""
    input:
        scores=SCORES,
        daily=DAILY_SCORES,
        significance=SIGNIFICANCE,
        losses=expand(AUTOENCODER_LOSSES, modalities=LATENT_SETS)
        + expand(SCORE_LOSSES, space=SPACES),
    output:
        protocols=report(
            FIGURES["protocols"],
            caption="../report/protocols.rst",
            category=BEYOND,
            labels={"figure": "protocols", "shows": "paper against physical protocol"},
        ),
        protocols_pdf=PDFS["protocols"],
        curves=report(
            FIGURES["curves"],
            caption="../report/training-curves.rst",
            category="3. Training",
            labels={"figure": "training curves", "shows": "losses per epoch"},
        ),
        curves_pdf=PDFS["curves"],
        summary=report(
            FIGURES["summary"],
            caption="../report/summary.rst",
            category="4. Summary",
            labels={"table": "summary"},
        ),
    log:
        f"{LOGS}/figures.log",
    benchmark:
        f"{BENCHMARKS}/figures.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        name=NAME,
        cases=CASES,
        protocols=PROTOCOLS,
        days="observed",
        # the most epochs of each network: the curves mark those that stopped early
        max_epochs={
            **{
                autoencoder_name(m): config["autoencoder"]["epochs"]
                for m in LATENT_SETS
            },
            **{score_name(s): config["score"]["epochs"] for s in SPACES},
        },
    script:
        "../scripts/figures.py"


rule report_config:
    """The config the run used, defaults filled in: the report's record of the experiment."""
    output:
        report(
            FIGURES["config"],
            caption="../report/config.rst",
            category="6. Configuration",
            labels={"table": "config"},
        ),
    log:
        f"{LOGS}/report_config.log",
    conda:
        "../../envs/data.yaml"
    threads: 1
    params:
        config=config,
        configfiles=[str(path) for path in workflow.configfiles],
    script:
        "../scripts/report_config.py"
