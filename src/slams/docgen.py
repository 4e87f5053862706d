"""The documentation that is generated, never typed: the configuration reference from the
config schema's descriptions, and every results table from the CSVs it summarises.

``python -m slams.docgen`` rewrites them all (``docs/configuration.md`` whole, and each table
block that names its generator, see :mod:`slams.generated`); ``--check`` rewrites nothing and
exits 1 when one is stale. The tests run the check.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/config.schema.yaml"
CONFIG_PAGE = ROOT / "docs/configuration.md"
COMMAND = "python -m slams.docgen"


# --- the configuration reference -------------------------------------------------------------


def _resolve(node: Mapping, schema: Mapping) -> dict:
    """``node`` with a local ``$ref`` replaced by what it points to; keys beside the ``$ref``
    (a description of this use of a shared definition) win over the definition's."""
    node = dict(node)
    while "$ref" in node:
        target: Mapping = schema
        for part in node.pop("$ref").removeprefix("#/").split("/"):
            target = target[part]
        node = {**target, **node}
    return node


def _type(node: Mapping) -> str:
    if "enum" in node:
        return " \\| ".join(f"`{_plain(v)}`" for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(_type(option) for option in node["oneOf"])
    kind = node.get("type", "")
    kinds = kind if isinstance(kind, list) else [kind]
    names = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean",
             "array": "list", "object": "mapping", "null": "null"}  # fmt: skip
    text = " or ".join(names.get(k, k) for k in kinds if k)
    items = node.get("items")
    if "array" in kinds and isinstance(items, Mapping) and "enum" in items:
        text += " of " + _type(items)
    return text


def _plain(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _default(node: Mapping) -> str:
    if "default" not in node:
        return "required" if node.get("_required") else "–"
    value = node["default"]
    if isinstance(value, Mapping | list):
        if not value:
            return "`{}`" if isinstance(value, Mapping) else "`[]`"
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
        return f"`{text}`"
    return f"`{_plain(value)}`"


def schema_keys(schema: Mapping, node: Mapping | None = None, prefix: str = "") -> Iterator[tuple]:
    """Every key of the config, depth first: ``(dotted key, resolved node)``. A mapping with
    free keys (``sampler_by_space``, ``cases``) appears as ``<name>``."""
    node = _resolve(schema if node is None else node, schema)
    required = set(node.get("required", ()))
    for name, child in node.get("properties", {}).items():
        child = _resolve(child, schema)
        child["_required"] = name in required
        key = f"{prefix}{name}"
        yield key, child
        yield from _children(schema, child, key)


def _children(schema: Mapping, child: Mapping, key: str) -> Iterator[tuple]:
    if "properties" in child:
        yield from schema_keys(schema, child, key + ".")
    free = child.get("additionalProperties")
    if isinstance(free, Mapping):
        free = _resolve(free, schema)
        placeholder = "<network>" if "sampler_by_space" in key else "<name>"
        free.setdefault("description", child.get("description", ""))
        if "properties" in free:
            yield from schema_keys(schema, free, f"{key}.{placeholder}.")


def missing_descriptions(schema: Mapping) -> list[str]:
    """The keys of ``schema`` without a description (the reference needs one for each)."""
    return [key for key, node in schema_keys(schema)
            if not str(node.get("description", "")).strip()]  # fmt: skip


def _cell(text: str) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text.replace("<", "&lt;").replace(">", "&gt;")


def configuration_reference(schema: Mapping) -> str:
    """The page ``docs/configuration.md``: one table per top-level section of the config, a row
    per key with its type, default and the schema's description."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- written by {COMMAND} from workflow/schemas/config.schema.yaml; do not edit -->",
        "",
        "`config.yaml` is the paper's experiment; each `--configfile` overlays it in the order",
        "given, then `--config`. The run validates the result against",
        "`workflow/schemas/config.schema.yaml` at start-up and stops with one line naming the key",
        "of any error. This page is generated from that schema's descriptions.",
        "",
        _cell(schema.get("description", "")),
    ]
    top = _resolve(schema, schema)
    scalars = []
    for name, node in top["properties"].items():
        node = _resolve(node, schema)
        if "properties" not in node:
            node["_required"] = name in top.get("required", ())
            scalars.append((name, node))
    sections = [("General", scalars)]
    for name, node in top["properties"].items():
        node = _resolve(node, schema)
        if "properties" in node:
            node["_required"] = name in top.get("required", ())
            rows = [(name, node), *_children(schema, node, name)]
            sections.append((f"`{name}`", rows))
    for title, rows in sections:
        lines += ["", f"## {title}", "", "| key | type | default | what it does |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        for key, node in rows:
            lines.append(f"| `{key}` | {_type(node)} | {_default(node)} | "
                         f"{_cell(node.get('description', ''))} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def load_reference_schema() -> dict:
    """The schema the run validates against (the method and protocol names filled in from
    :data:`slams.methods.METHODS`)."""
    from slams.config import load_schema

    return load_schema(SCHEMA)


# --- the converged run's tables (studies/converged) --------------------------------------------

STUDY = ROOT / "studies/converged"
PAIRS = (("oi-both", "oi"), ("latent-both", "latent-none"), ("pixel-both", "pixel"))


def _study_config(study: Path) -> dict:
    return yaml.safe_load((study / "config.resolved.yaml").read_text())


def _read(study: Path, name: str):
    import pandas as pd

    frame = pd.read_csv(study / name)
    if "value" in frame:
        frame["value"] = frame["value"].astype(float)
    if "level" in frame:
        frame["level"] = frame["level"].astype(str)
    return frame


def _methods(frame) -> list[str]:
    from slams.figures.summary import ordered_methods

    return ordered_methods(list(frame["method"].unique()))


def _cases(config: Mapping) -> list[tuple[str, str, float]]:
    """The named cases as ``(name, axis, value)``."""
    cases = []
    for name, cell in config["assimilation"]["cases"].items():
        axis, value = cell.split("-", 1)
        cases.append((name, axis, float(value)))
    return cases


def _markdown(header: list[str], rows: list[list[str]], text_columns: int) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * text_columns + ["---:"] * (len(header) - text_columns))
             + "|"]  # fmt: skip
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _with_interval(row, digits: int = 2, sign: str = "") -> str:
    return (f"{row['score']:{sign}.{digits}f} [{row['low']:{sign}.{digits}f}, "
            f"{row['high']:{sign}.{digits}f}]")  # fmt: skip


def study_training(study: Path = STUDY) -> str:
    """Every network of the run: epochs run (of the most), the exported (best) epoch, its
    validation loss, how it stopped, minutes of training (from ``losses/<network>.csv``)."""
    import pandas as pd

    config = _study_config(study)
    rows = []
    for path in sorted((study / "losses").glob("*.csv")):
        history = pd.read_csv(path)
        section = config["autoencoder" if path.stem.startswith("autoencoder") else "score"]
        best = int(history["val_loss"].idxmin())
        ran = len(history)
        stopped = "at the maximum" if ran >= section["epochs"] else "early (patience)"
        rows.append([path.stem, stopped, f"{ran} of {section['epochs']}", str(best + 1),
                     f"{history['val_loss'].iloc[best]:.4f}",
                     f"{history['seconds'].sum() / 60:.1f}"])  # fmt: skip
    return _markdown(["network", "stopped", "epochs run", "best epoch", "validation loss",
                      "minutes"], rows, 2)  # fmt: skip


def _level_mean(frame, metric: str, days: str = "observed"):
    """Level-mean ``metric`` per protocol, method, axis and value (the mean over levels)."""
    pick = frame[(frame["metric"] == metric) & (frame["days"] == days)]
    return pick.groupby(["protocol", "method", "axis", "value"])["score"].mean()


def study_cases(study: Path = STUDY, protocol: str = "physical") -> str:
    """The named cases under ``protocol``: RMSE and CRPS (level mean, observed days) with their
    95 % bootstrap intervals, and spread/skill, per method."""
    config = _study_config(study)
    intervals = _read(study, "intervals.csv")
    spread = _level_mean(_read(study, "scores.csv"), "spread_skill")
    mean = intervals[(intervals["level"] == "mean") & (intervals["days"] == "observed")]
    rows = []
    for case, axis, value in _cases(config):
        cell = mean[(mean["protocol"] == protocol) & (mean["axis"] == axis)
                    & (mean["value"] == value)]  # fmt: skip
        for method in _methods(cell):
            one = cell[cell["method"] == method].set_index("metric")
            ratio = spread.get((protocol, method, axis, value))
            cells = [_with_interval(one.loc[m]) if m in one.index else "–"
                     for m in ("rmse", "crps")]  # fmt: skip
            cells.append("–" if ratio is None else f"{ratio:.2f}")
            rows.append([case, method, *cells])
    return _markdown(["case", "method", "RMSE (K)", "CRPS (K)", "spread/skill"], rows, 2)


def study_protocols(study: Path = STUDY) -> str:
    """The latent methods on the named cases under each protocol: RMSE (level mean, observed
    days) and spread/skill."""
    config = _study_config(study)
    scores = _read(study, "scores.csv")
    rmse, spread = _level_mean(scores, "rmse"), _level_mean(scores, "spread_skill")
    latent = [m for m in _methods(scores) if m.startswith("latent-")]
    rows = []
    for case, axis, value in _cases(config):
        for method in latent:
            cells = []
            for protocol in ("paper", "physical"):
                key = (protocol, method, axis, value)
                cells += ["–" if key not in rmse else f"{rmse[key]:.2f}",
                          "–" if key not in spread else f"{spread[key]:.2f}"]  # fmt: skip
            rows.append([case, method, *cells])
    header = ["case", "method", "RMSE (K), paper", "spread/skill, paper", "RMSE (K), physical",
              "spread/skill, physical"]  # fmt: skip
    return _markdown(header, rows, 2)


def study_multimodality(study: Path = STUDY, days: str = "all") -> str:
    """What precipitation and OLR add, per setting of the grid (physical protocol): the
    level-mean RMSE difference of each method with them minus its twin without, with its 95 %
    interval; bold where the interval excludes zero."""
    significance = _read(study, "significance.csv")
    frame = significance
    pick = frame[(frame["protocol"] == "physical") & (frame["level"] == "mean")
                 & (frame["days"] == days) & (frame["metric"] == "rmse")]  # fmt: skip
    settings = pick[["axis", "value"]].drop_duplicates()
    from slams.figures.summary import AXIS_ORDER

    rank = {axis: i for i, axis in enumerate(AXIS_ORDER)}
    settings = settings.sort_values(
        ["axis", "value"], key=lambda column: column.map(rank) if column.name == "axis" else column
    )
    rows = []
    for axis, value in settings.itertuples(index=False):
        cells = []
        for method, reference in PAIRS:
            row = pick[(pick["axis"] == axis) & (pick["value"] == value)
                       & (pick["method"] == method) & (pick["reference"] == reference)]  # fmt: skip
            if row.empty:
                cells.append("–")
                continue
            row = row.iloc[0]
            text = _with_interval(
                {"score": row["difference"], "low": row["low"], "high": row["high"]}, sign="+"
            )
            cells.append(f"**{text}**" if bool(row["significant"]) else text)
        rows.append([f"{axis} {value:g}", *cells])
    return _markdown(["setting", *[f"`{m} − {r}`" for m, r in PAIRS]], rows, 1)


def rank_end_excess(counts) -> float:
    """How U-shaped a rank histogram is: the mean share of the two outermost ranks over the
    share of a flat histogram (1: flat; above 1: the truth falls outside the ensemble too
    often, under-dispersion; below 1: over-dispersion)."""
    import numpy as np

    counts = np.asarray(counts, dtype=float)
    shares = counts / counts.sum()
    return float((shares[0] + shares[-1]) / 2 * len(shares))


def study_calibration(study: Path = STUDY) -> str:
    """Spread/skill (level mean, observed days) and the rank histograms' end-bin excess
    (:func:`rank_end_excess`, counts summed over levels, observed days) per named case,
    protocol and method."""
    config = _study_config(study)
    spread = _level_mean(_read(study, "scores.csv"), "spread_skill")
    ranks = _read(study, "rank-histograms.csv")
    ranks = ranks[ranks["days"] == "observed"]
    summed = ranks.groupby(["protocol", "method", "axis", "value", "rank"])["count"].sum()
    rows = []
    for protocol in ("physical", "paper"):
        for case, axis, value in _cases(config):
            for method in _methods(ranks):
                key = (protocol, method, axis, value)
                if key not in spread:
                    continue
                ratio = round(float(spread[key]), 2)
                flag = "" if 0.8 <= ratio <= 1.2 else " ✗"
                excess = rank_end_excess(summed.loc[key].to_numpy())
                rows.append([case, protocol, method, f"{ratio:.2f}{flag}", f"{excess:.2f}"])
    header = ["case", "protocol", "method", "spread/skill (✗ outside 0.8–1.2)",
              "rank histogram end-bin excess (1 flat)"]  # fmt: skip
    return _markdown(header, rows, 3)


def headline(study: Path = STUDY) -> str:
    """The README's findings table: CRPS (K, level mean, observed days) of every method on the
    named cases under the physical protocol, the lowest in bold, and the latent methods under
    the paper's protocol beside them."""
    config = _study_config(study)
    crps = _level_mean(_read(study, "scores.csv"), "crps")
    methods = _methods(crps.reset_index())
    physical = [m for m in methods if ("physical", m) in {k[:2] for k in crps.index}]
    paper = [m for m in methods if m.startswith("latent-")
             and ("paper", m) in {k[:2] for k in crps.index}]  # fmt: skip
    rows = []
    for case, axis, value in _cases(config):
        values = {m: crps.get(("physical", m, axis, value)) for m in physical}
        best = min((v, m) for m, v in values.items() if v is not None)[1]
        cells = [("–" if v is None else (f"**{v:.2f}**" if m == best else f"{v:.2f}"))
                 for m, v in values.items()]  # fmt: skip
        cells += [f"{crps[('paper', m, axis, value)]:.2f}"
                  if ("paper", m, axis, value) in crps else "–" for m in paper]  # fmt: skip
        rows.append([case, *cells])
    header = ["case", *physical, *[f"{m} (paper protocol)" for m in paper]]
    return _markdown(header, rows, 1)


# --- the sampler choice (studies/sampler/final-choice) -----------------------------------------

SAMPLER_CHOICE = ROOT / "studies/sampler/final-choice"


def sampler_choice(folder: Path = SAMPLER_CHOICE) -> str:
    """The sampler the rule chooses for each network measured (``<network>-final.csv``: every
    candidate sampler in the ideal and sparse cases over several seeds), with its share of each
    case's best mean CRPS and its spread/skill, and whether it meets the rule or is its
    fallback (:mod:`slams.studies.sampler_choice`)."""
    from slams.studies.sampler_choice import one_choice, read_rows, sampler_name, scored

    rows = []
    for path in sorted(folder.glob("*-final.csv")):
        frame = scored(read_rows([path]))
        frame = frame.assign(cell=frame.method + "/" + frame.case)
        choice, met = one_choice(frame)
        network = path.stem.removesuffix("-final")
        chosen = frame.merge(
            choice.to_frame().T[
                [
                    "solver",
                    "corrections",
                    "guidance",
                    "min_sigma",
                    "tau_reference_steps",
                    "grid_steps",
                    "steps",
                ]
            ]
        )
        by_case = chosen.set_index("case")
        cells = []
        for case in ("ideal", "sparse"):
            row = by_case.loc[case]
            cells.append(f"{row['crps_share_of_best']:.3f} / {row['spread_skill']:.2f}")
        how = "the rule" if met else "the fallback"
        rows.append([f"`{network}`", sampler_name(choice), str(int(choice["calls"])), *cells,
                     how, str(int(frame["seeds"].max()))])  # fmt: skip
    header = ["network", "sampler", "network calls", "ideal: CRPS / best, spread/skill",
              "sparse: CRPS / best, spread/skill", "chosen by", "seeds"]  # fmt: skip
    return _markdown(header, rows, 2)


# --- benchmark tables (benchmarks/results) --------------------------------------------------

BENCHMARK_RESULTS = ROOT / "benchmarks/results"


def memory_check(results: Path = BENCHMARK_RESULTS) -> str:
    """Predicted against measured peak memory per kind of job (``benchmarks/memory.py --check``
    of a cold run: ``memory-<run>.csv``, one row per job log), for each run measured."""
    import pandas as pd

    rows = []
    for path in sorted(results.glob("memory-*.csv")):
        run = path.stem.removeprefix("memory-")
        frame = pd.read_csv(path).dropna(subset=["predicted_mb"])
        frame = frame.assign(ratio=frame["predicted_mb"] / frame["measured_mb"])
        for kind, group in frame.groupby("kind", sort=True):
            peak = group.loc[group["measured_mb"].idxmax()]
            low, high = group["ratio"].min(), group["ratio"].max()
            spread = f"{low:.2f}" if round(low, 2) == round(high, 2) else f"{low:.2f}–{high:.2f}"
            rows.append([run, kind, str(len(group)), f"{peak['measured_mb']:.0f}",
                         f"{peak['predicted_mb']:.0f}", spread])  # fmt: skip
    return _markdown(["run", "job", "jobs", "largest measured peak (MB)", "its prediction (MB)",
                      "predicted / measured"], rows, 2)  # fmt: skip


def paper_scale(results: Path = BENCHMARK_RESULTS) -> str:
    """Every stage of the paper-size run (``benchmarks/paper_scale.py --csv``: one row per job):
    jobs, wall seconds, the largest peak memory and what the stage wrote."""
    import pandas as pd

    frame = pd.read_csv(results / "paper-scale.csv")
    rows = []
    for stage, group in frame.groupby("stage", sort=False):
        low, high = group["seconds"].min(), group["seconds"].max()
        seconds = f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}–{high:.0f}"
        written = group["output_gb"].sum()
        rows.append([stage, str(len(group)), seconds, f"{group['peak_mb'].max() / 1000:.1f}",
                     "–" if pd.isna(written) or written < 0.005 else f"{written:.2f}"])  # fmt: skip
    return _markdown(["stage", "jobs", "seconds per job", "largest peak (GB)", "written (GB)"],
                     rows, 1)  # fmt: skip


# --- the generated files and blocks ----------------------------------------------------------


def _pages() -> dict[Path, Callable[[], str]]:
    return {CONFIG_PAGE: lambda: configuration_reference(load_reference_schema())}


def _blocks() -> dict[str, Callable[[], str]]:
    """Table name -> the function that writes it (``<!-- generated by: python -m slams.docgen
    NAME -->`` blocks in README.md and docs/)."""
    return {
        "study-training": study_training,
        "study-cases": study_cases,
        "study-protocols": study_protocols,
        "study-multimodality": study_multimodality,
        "study-calibration": study_calibration,
        "headline": headline,
        "sampler-choice": sampler_choice,
        "memory-check": memory_check,
        "paper-scale": paper_scale,
    }


def _block_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def stale(write: bool) -> list[str]:
    """What differs from its generator (and, with ``write``, is rewritten)."""
    from slams.generated import generated_block, write_block

    found = []
    for path, make in _pages().items():
        text = make()
        if not path.exists() or path.read_text() != text:
            found.append(str(path.relative_to(ROOT)))
            if write:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    for name, make in _blocks().items():
        command = f"{COMMAND} {name}"
        for path in _block_files():
            block = generated_block(path, command)
            if block is None:
                continue
            try:
                text = make().rstrip("\n")
            except FileNotFoundError as error:
                found.append(f"{path.relative_to(ROOT)}: {name} (no data: {error.filename})")
                continue
            if block != text:
                found.append(f"{path.relative_to(ROOT)}: {name}")
                if write:
                    write_block(path, command, text)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    found = stale(write=not args.check)
    for item in found:
        if "(no data:" in item:
            print("cannot generate: " + item)
        else:
            print(("stale: " if args.check else "rewrote: ") + item)
    return 1 if args.check and found else 0


if __name__ == "__main__":
    sys.exit(main())
