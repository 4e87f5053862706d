"""Where every file of a run lives: one function per kind of file, for the workflow's rules
(``workflow/rules/common.smk``) and the library alike.

Each builder takes the run's folder (``results/<name>``, :func:`run_dir`) and the parts that
name the file. Called with Snakemake's wildcard placeholders instead of values it returns the
rule's pattern: ``analysis_path(run, "{protocol}", "{method}", "{axis}", "{value}")``. Nothing
else spells these paths, so a rule and a script that rereads a finished run cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from slams.methods import METHODS

# The checkout this package lives in (src/slams/paths.py): config.yaml, the Snakefile and the
# schema are found from it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def schema_path(root: str | Path = PROJECT_ROOT) -> Path:
    """The config's JSON schema in the checkout ``root``."""
    return Path(root) / "workflow" / "schemas" / "config.schema.yaml"


def run_dir(name: str) -> str:
    """Every output of the experiment ``name`` (the config's ``name``)."""
    return f"results/{name}"


def resolved_config_path(run: str | Path) -> str:
    """The config a run used, defaults filled in."""
    return f"{run}/config.resolved.yaml"


def resources_dir(dataset: str) -> str:
    """The downloaded and regridded inputs of a dataset (the config's ``data.dataset``)."""
    return f"resources/{dataset}"


def table_path(run: str | Path, table: str) -> str:
    """One of a run's tidy tables: ``scores``, ``rank-histograms``, ``daily-scores``,
    ``significance``, ``intervals``."""
    return f"{run}/{table}.csv"


def benchmarks_dir(folder: str | Path) -> str:
    """Snakemake's per-job benchmark files (seconds, peak memory) of a run's or a dataset's
    jobs (:func:`run_dir`, :func:`resources_dir`)."""
    return f"{folder}/benchmarks"


def dataset_path(run: str | Path, split: str) -> str:
    """The normalised states of one split (``train``, ``validation``, ``test``)."""
    return f"{run}/dataset/{split}.nc"


def stats_path(run: str | Path) -> str:
    """The normalisation statistics of the training years."""
    return f"{run}/dataset/stats.json"


def climatology_path(run: str | Path) -> str:
    """The day-of-year climatology of the training years (K)."""
    return f"{run}/dataset/climatology.nc"


def autoencoder_name(modalities: str) -> str:
    """The name of the autoencoder of a modality set: its model file's, losses' and
    checkpoints' stem."""
    return f"autoencoder-{modalities}"


def score_name(space: str) -> str:
    """The name of the score network of a space (``pixel``, ``latent-both``, ...)."""
    return f"score-{space}"


def model_path(run: str | Path, name: str) -> str:
    """A trained network's model file (:func:`autoencoder_name`, :func:`score_name`)."""
    return f"{run}/models/{name}.pt"


def losses_path(run: str | Path, name: str) -> str:
    """A trained network's losses per epoch."""
    return f"{run}/models/{name}-losses.csv"


def checkpoints_dir(run: str | Path, name: str) -> str:
    """A network's training checkpoints (last and best epoch), from which a job resumes."""
    return f"{run}/models/checkpoints/{name}"


def latents_path(run: str | Path, modalities: str, split: str) -> str:
    """The latent codes of one split by the encoder of a modality set."""
    return f"{run}/latents/{modalities}/{split}.nc"


def background_path(run: str | Path, method: str) -> str:
    """The background covariance of an optimal-interpolation method (``oi``, ``oi-both``)."""
    return f"{run}/models/{method}-background.pt"


def analysis_path(
    run: str | Path, protocol: str, method: str, axis: str, value: str | float
) -> str:
    """One analysis: ``method`` in the ablation setting ``axis``-``value`` under ``protocol``
    (``value`` as the file names write it, :func:`slams.config.format_value`)."""
    return f"{run}/analysis/{protocol}/{method}/{axis}-{value}.nc"


def cell_paths(
    run: str | Path, method: str, protocol: str, assimilation: Mapping | None = None
) -> dict[str, str]:
    """The files :func:`slams.assimilation.run_cell` reads for ``method`` under ``protocol``
    in the run folder ``run``, by the name it reads them under: the test split, statistics
    and climatology; the score network a diffusion method samples with; an OI method's
    background; a latent method's autoencoder and the training codes' statistics, under
    ``paper`` the encoded truth of the test days, and the validation split where the
    decoder's own error is measured (``assimilation``'s ``decoder_residuals_in_members``,
    or under ``physical`` its ``decoder_error_in_likelihood``; both default to true)."""
    spec = METHODS[method]
    paths = {
        "test": dataset_path(run, "test"),
        "stats": stats_path(run),
        "climatology": climatology_path(run),
    }
    if spec.space is not None:
        paths["score"] = model_path(run, score_name(spec.space))
    if spec.family == "oi":
        paths["background"] = background_path(run, method)
    if spec.modalities is not None:
        paths["autoencoder"] = model_path(run, autoencoder_name(spec.modalities))
        paths["latent_stats"] = latents_path(run, spec.modalities, "train")
        if protocol == "paper":
            paths["latents"] = latents_path(run, spec.modalities, "test")
        section = assimilation or {}
        if section.get("decoder_residuals_in_members", True) or (
            protocol == "physical" and section.get("decoder_error_in_likelihood", True)
        ):
            paths["validation"] = dataset_path(run, "validation")
    return paths
