# The tidy tables every figure reads: scores, rank histograms, daily scores, and the bootstrap
# intervals of scores and of differences between methods.


rule evaluate:
    """Scores and rank histograms of every analysis, per level, on observed and on all days, and
    every day's MSE and CRPS."""
    input:
        analysis_files(),
    output:
        scores=report(
            SCORES,
            caption="../report/scores.rst",
            category="5. Tables",
            labels={"table": "scores"},
        ),
        rank_histograms=report(
            RANK_HISTOGRAMS,
            caption="../report/rank-histograms-table.rst",
            category="5. Tables",
            labels={"table": "rank histograms"},
        ),
        daily=DAILY_SCORES,
    log:
        f"{LOGS}/evaluate.log",
    benchmark:
        f"{BENCHMARKS}/evaluate.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=60,
    script:
        "../scripts/evaluate.py"


rule significance:
    """95 % intervals of every score and of the differences between methods: a paired
    moving-block bootstrap over days."""
    input:
        daily=DAILY_SCORES,
    output:
        significance=report(
            SIGNIFICANCE,
            caption="../report/significance.rst",
            category="5. Tables",
            labels={"table": "significance"},
        ),
        intervals=INTERVALS,
    log:
        f"{LOGS}/significance.log",
    benchmark:
        f"{BENCHMARKS}/significance.tsv"
    conda:
        "../../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        samples=config["evaluation"]["bootstrap_samples"],
        block=config["evaluation"]["block_days"],
        seed=config["seed"],
    script:
        "../scripts/significance.py"
