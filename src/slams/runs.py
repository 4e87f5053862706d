"""Where a finished run keeps the inputs of an analysis: for the benchmark scripts that
assimilate again on a run's networks (the workflow itself gets these paths from its rules,
``workflow/rules/common.smk``)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cell_paths(run: str | Path, method: str, protocol: str) -> dict[str, str]:
    """The files ``slams.assimilate.run_cell`` reads for ``method`` under ``protocol`` in the
    run directory ``run`` (e.g. ``results/demo``)."""
    run = Path(run)
    paths = {
        "test": run / "dataset/test.nc",
        "stats": run / "dataset/stats.json",
        "climatology": run / "dataset/climatology.nc",
        "validation": run / "dataset/validation.nc",
    }
    if method.startswith(("pixel", "latent-")):
        paths["score"] = run / f"models/score-{method}.pt"
    if method.startswith("latent-"):
        modalities = method.removeprefix("latent-")
        paths["autoencoder"] = run / f"models/autoencoder-{modalities}.pt"
        paths["latent_stats"] = run / f"latents/{modalities}/train.nc"
        if protocol == "paper":
            paths["latents"] = run / f"latents/{modalities}/test.nc"
    if method in ("oi", "oi-both"):
        paths["background"] = run / f"models/{method}-background.pt"
    return {k: str(v) for k, v in paths.items()}


def assimilate_case(
    run, config: dict, protocol: str, method: str, case: str, assimilation: dict,
    seed: int | None = None,
):  # fmt: skip
    """Assimilate the named ``case`` of ``config`` (``assimilation.cases``) again with
    ``method`` under ``protocol``, on the networks of the finished run ``run``, with the
    ``assimilation`` section given (a variant of the config's; its ``sampler_by_space``, if
    any, applied); returns the analysis dataset.
    ``case`` may also be a cell of the grid itself, as ``axis-value`` (``gap-2``). ``seed``
    (default: the config's) draws the observations' noise and the sampler's."""
    from slams.assimilate import run_cell
    from slams.config import method_assimilation, setting_parameters

    cell = config["assimilation"]["cases"].get(case, case)
    if "-" not in cell or cell.split("-", 1)[0] not in config["assimilation"]["axes"]:
        named = ", ".join(config["assimilation"]["cases"])
        raise ValueError(f"unknown case {case!r}: a named case ({named}) or a cell as axis-value")
    axis, value = cell.split("-", 1)
    return run_cell(
        protocol, method, axis, value, setting_parameters(config, axis, float(value)),
        method_assimilation(assimilation, method), config["score"]["window"],
        cell_paths(run, method, protocol),
        seed=config["seed"] if seed is None else seed, progress=False,
    )  # fmt: skip
