# One ensemble analysis per method and ablation setting; a setting that two axes share is
# computed once (rule assimilate) and copied under the later cell's name (rule same_analysis).


rule assimilate:
    """Guided diffusion sampling (or the climatology reference) over the test period."""
    input:
        unpack(analysis_inputs),
    output:
        ANALYSIS,
    log:
        f"{LOGS}/assimilate/{{method}}/{{axis}}-{{value}}.log",
    benchmark:
        f"{BENCHMARKS}/assimilate/{{method}}/{{axis}}-{{value}}.tsv"
    wildcard_constraints:
        axis=rf"(?!(?:{SAME_CELLS})\.nc$)(?:coarsen|noise|gap)",
    conda:
        "../../envs/torch.yaml"
    threads: config["resources"]["assimilate_threads"]
    resources:
        **gpu_resources("assimilate"),
    params:
        measurement=measurement,
        assimilation=assimilation_params,
        window=lambda wc: (
            config["score"]["window"] if wc.method not in ("oi", "climatology") else 0
        ),
        device=config["device"],
        seed=config["seed"],
    script:
        "../scripts/assimilate.py"


rule oi_background:
    """Background covariance of optimal interpolation: EOFs of the training anomalies."""
    input:
        train=DATASET.format(split="train"),
    output:
        OI_BACKGROUND,
    log:
        f"{LOGS}/oi_background.log",
    benchmark:
        f"{BENCHMARKS}/oi_background.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        rank=config["assimilation"]["oi"]["rank"],
        seed=config["seed"],
    script:
        "../scripts/oi_background.py"


rule same_analysis:
    """A cell whose observation setting repeats an earlier cell's (the paper: noise-0.1 is
    coarsen-4): that analysis, copied with the cell's own axis and value attributes."""
    input:
        lambda wc: ANALYSIS.format(
            method=wc.method, **SAME_SETTINGS[(wc.axis, wc.value)]
        ),
    output:
        ANALYSIS,
    log:
        f"{LOGS}/same_analysis/{{method}}/{{axis}}-{{value}}.log",
    wildcard_constraints:
        axis=rf"(?=(?:{SAME_CELLS})\.nc$)(?:coarsen|noise|gap)",
    localrule: True
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/same_analysis.py"
