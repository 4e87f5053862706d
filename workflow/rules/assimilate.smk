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
        assimilation=config["assimilation"],
        window=config["score"]["window"],
        device=config["device"],
        seed=config["seed"],
    script:
        "../scripts/assimilate.py"
