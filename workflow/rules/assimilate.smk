# One ensemble analysis per protocol, method and ablation setting. An analysis that two cells
# share (a setting two axes meet in; a method that observes the same way under both protocols)
# is computed once (rule assimilate: the diffusion methods, on a GPU; assimilate_classical:
# optimal interpolation and the climatology, on CPUs) and copied under the later cell's name
# (same_analysis). Under a cluster profile each rule's analyses are bundled into group jobs of
# near-equal size (analysis_group).

# the protocol of a computed cell: not one of the copied cells
COMPUTED_PROTOCOL = rf"(?!(?:{COPIED_CELLS})$)(?:{one_of(ALL_PROTOCOLS)})"


rule assimilate:
    """One analysis of the test period under one observation protocol: guided diffusion
    sampling (rule assimilate), or optimal interpolation or the climatology (rule
    assimilate_classical, this rule on CPUs)."""
    input:
        unpack(analysis_inputs),
    output:
        ANALYSIS,
    log:
        f"{LOGS}/assimilate/{{protocol}}/{{method}}/{{axis}}-{{value}}.log",
    benchmark:
        f"{BENCHMARKS}/assimilate/{{protocol}}/{{method}}/{{axis}}-{{value}}.tsv"
    wildcard_constraints:
        protocol=COMPUTED_PROTOCOL,
        method=one_of(DIFFUSION_METHODS),
    group:
        analysis_group("analyses", DIFFUSION_METHODS)
    conda:
        "../../envs/torch.yaml"
    threads: config["resources"]["assimilate_threads"]
    resources:
        **gpu_resources("assimilate"),
    params:
        measurement=measurement,
        assimilation=assimilation_params,
        blanket_days=lambda wc: (
            config["score"]["blanket_days"] if METHOD_SPECS[wc.method].space else 0
        ),
        device=config["device"],
        seed=config["seed"],
    script:
        "../scripts/assimilate.py"


# Optimal interpolation and the climatology: no network, no GPU.
use rule assimilate as assimilate_classical with:
    wildcard_constraints:
        protocol=COMPUTED_PROTOCOL,
        method=one_of(CLASSICAL_METHODS),
    group:
        analysis_group("classical", CLASSICAL_METHODS)
    resources:
        mem_mb=config["resources"]["classical_mem_mb"],
        runtime=60,


rule oi_background:
    """Background covariance of optimal interpolation: EOFs of the training days, of the
    temperature anomaly (oi) or of the joint stack with precipitation and OLR (oi-both).
    """
    input:
        train=DATASET.format(split="train"),
    output:
        OI_BACKGROUND,
    log:
        f"{LOGS}/oi_background/{{method}}.log",
    benchmark:
        f"{BENCHMARKS}/oi_background/{{method}}.tsv"
    wildcard_constraints:
        method=one_of(OI_METHODS),
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    params:
        rank=config["assimilation"]["oi"]["rank"],
        variables=lambda wc: list(METHOD_SPECS[wc.method].observes),
        seed=config["seed"],
    script:
        "../scripts/oi_background.py"


rule same_analysis:
    """A cell whose analysis another cell computes (the paper: noise-0.1 is coarsen-4; pixel,
    oi and climatology observe the same way under both protocols): that analysis, copied
    with the cell's own protocol, axis and value attributes."""
    input:
        lambda wc: analysis_path(
            RESULTS, **SAME_ANALYSIS[tuple(wc[k] for k in CELL_KEYS)]
        ),
    output:
        ANALYSIS,
    log:
        f"{LOGS}/same_analysis/{{protocol}}/{{method}}/{{axis}}-{{value}}.log",
    wildcard_constraints:
        protocol=rf"(?=(?:{COPIED_CELLS})$)(?:{one_of(ALL_PROTOCOLS)})",
    localrule: True
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/same_analysis.py"
