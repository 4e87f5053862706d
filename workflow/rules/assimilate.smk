# One ensemble analysis per method and ablation setting.


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
