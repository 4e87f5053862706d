# The paper's figures, regenerated from scores.csv and the training logs.


rule figures:
    """Figure 7 (distance against degradation) and the training curves."""
    input:
        scores=SCORES,
        losses=expand(AUTOENCODER_LOSSES, modalities=LATENT_SETS)
        + expand(SCORE_LOSSES, space=SPACES),
    output:
        **FIGURES,
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
    script:
        "../scripts/figures.py"
