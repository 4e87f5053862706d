"""How well each trained autoencoder reconstructs every field it encodes, on a split.

The ``physical`` protocol observes precipitation and OLR through the decoder (``y_p ~ D_p(z)``,
``y_olr ~ D_olr(z)``), so a modality helps a latent method only as far as its decoder
reproduces it. For every ``models/autoencoder-<set>.pt`` of a finished run this prints, per
decoded field, the RMSE of the reconstruction in the dataset's standardised units (valid points
only) and the fraction of the field's variance it explains (1 - MSE / variance), and, as a
reference for what the modalities could tell about temperature, the correlation of each
modality with the temperature anomaly at each level. Usage::

    python studies/reconstruction.py [results/demo] [--split validation]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import xarray as xr

from slams.methods import MODALITY_SETS
from slams.models import autoencoder_inputs, load_model
from slams.paths import autoencoder_name, dataset_path, model_path


def reconstruction(run: Path, split: str) -> list[dict]:
    with xr.open_dataset(dataset_path(run, split)) as ds:
        ds = ds.load()
    rows = []
    for modality_set in MODALITY_SETS:
        path = Path(model_path(run, autoencoder_name(modality_set)))
        if not path.exists():
            continue
        model, meta = load_model(path)
        modalities = meta["modalities"]
        inputs = torch.from_numpy(autoencoder_inputs(ds, modalities))
        with torch.no_grad():
            decoded = torch.cat([model(inputs[i : i + 64]) for i in range(0, len(inputs), 64)])
        levels = len(meta["levels"])
        names = meta.get("decodes", ["t"])
        for k, name in enumerate(names):
            if name == "t":
                truth, out = inputs[:, :levels], decoded[:, :levels]
                mask = torch.ones_like(truth, dtype=torch.bool)
            else:
                column = levels + 2 * (k - 1)
                truth, out = inputs[:, column], decoded[:, levels + k - 1]
                mask = inputs[:, column + 1] > 0.5
            error = (out - truth)[mask]
            variance = truth[mask].var()
            rows.append(
                {
                    "autoencoder": modalities,
                    "field": name,
                    "rmse": float(error.square().mean().sqrt()),
                    "explained": float(1 - error.square().mean() / variance),
                }
            )
    return rows


def modality_correlations(run: Path, split: str) -> list[dict]:
    """Pointwise correlation of each modality with the temperature anomaly, per level."""
    rows = []
    with xr.open_dataset(dataset_path(run, split)) as ds:
        for name in ("precip", "olr"):
            mask = ds[f"{name}_mask"].values > 0.5
            values = ds[name].values[mask]
            for level in ds["level"].values:
                t = ds["t"].sel(level=level).values[mask]
                rows.append(
                    {
                        "modality": name,
                        "level": float(level),
                        "correlation": float(np.corrcoef(values, t)[0, 1]),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="results/demo", type=Path)
    parser.add_argument("--split", default="validation")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"run {args.run}, {args.split} split: reconstruction (standardised units)\n")
    print("| autoencoder | field | RMSE | variance explained |")
    print("|---|---|---:|---:|")
    for row in reconstruction(args.run, args.split):
        print(f"| {row['autoencoder']} | {row['field']} | {row['rmse']:.3f} | "
              f"{row['explained']:.3f} |")  # fmt: skip
    print("\nCorrelation of each modality with the temperature anomaly (valid points)\n")
    table = modality_correlations(args.run, args.split)
    levels = sorted({row["level"] for row in table})
    print("| modality | " + " | ".join(f"{level:g} hPa" for level in levels) + " |")
    print("|---|" + "---:|" * len(levels))
    for name in ("precip", "olr"):
        values = {row["level"]: row["correlation"] for row in table if row["modality"] == name}
        print(f"| {name} | " + " | ".join(f"{values[level]:+.2f}" for level in levels) + " |")


if __name__ == "__main__":
    main()
