# The tidy tables every figure reads: scores and rank histograms.

RANK_HISTOGRAMS = f"{RESULTS}/rank-histograms.csv"


rule evaluate:
    """Scores and rank histograms of every analysis, per level, on observed and on all days."""
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
