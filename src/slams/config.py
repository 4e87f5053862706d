"""Configuration: JSON-schema validation with defaults, and the checks a schema cannot express.

Every error is one line that names the offending key, e.g.
``config error at assimilation.axes.coarsen.values[1]: 7 does not divide the 32 x 64 grid``.
The names the code defines (methods, score networks, protocols: :mod:`slams.methods`) are
written into the schema as it is loaded (:func:`load_schema`), so the schema file never lists
them itself. Keys renamed since (:data:`RENAMED_KEYS`) still work, each with a one-line
warning, mapped to their new name before validation.
"""

from __future__ import annotations

import copy
import itertools
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from slams.data.weatherbench2 import check_levels
from slams.methods import METHODS, PROTOCOLS, SCORE_NETWORKS
from slams.paths import resolved_config_path
from slams.paths import schema_path as checkout_schema

log = logging.getLogger(__name__)

AXES = ("coarsen", "noise", "gap")
# Old key -> new key, each as its path of section names. The old key is read as the new one,
# with a warning; both in one config is an error.
RENAMED_KEYS = {
    ("score", "window"): ("score", "blanket_days"),
    ("assimilation", "window_days"): ("assimilation", "segment_days"),
    ("assimilation", "chunk_windows"): ("assimilation", "windows_per_call"),
    ("assimilation", "decoder_error"): ("assimilation", "decoder_error_in_likelihood"),
    ("assimilation", "decoder_residuals"): ("assimilation", "decoder_residuals_in_members"),
    ("assimilation", "sampler", "cg_iterations"): ("assimilation", "sampler", "mmps_iterations"),
}


class ConfigError(ValueError):
    """A configuration value is wrong; the message is one line naming the key."""


def _resolve(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        pointer = schema["$ref"].removeprefix("#/").split("/")
        schema = root
        for part in pointer:
            schema = schema[part]
    return schema


def _fill_defaults(instance: Any, schema: dict, root: dict) -> None:
    schema = _resolve(schema, root)
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        sub = _resolve(sub, root)
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill_defaults(instance[key], sub, root)


def _key_path(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "<top level>"


def load_schema(path: str | Path | None = None) -> dict:
    """The config's JSON schema as :func:`validate_config` uses it: the schema file (default:
    the checkout's, :func:`slams.paths.schema_path`) with the names the code defines written
    in as enums, replacing whatever the file lists: the methods of
    ``assimilation.methods`` (:data:`slams.methods.METHODS`), the score networks that key
    ``assimilation.sampler_by_space`` and the protocols of ``assimilation.protocols`` and
    ``assimilation.cases_only``."""
    schema = yaml.safe_load(Path(path or checkout_schema()).read_text())
    section = schema["properties"]["assimilation"]["properties"]
    for key, names in (("methods", METHODS), ("protocols", PROTOCOLS), ("cases_only", PROTOCOLS)):
        section[key]["items"] = {**section[key].get("items", {}), "enum": list(names)}
    by_space = section["sampler_by_space"]
    by_space["propertyNames"] = {"enum": list(SCORE_NETWORKS)}
    by_space.pop("properties", None)  # a file that names the networks itself: the code's hold
    return schema


def _get(config: dict, path: tuple[str, ...]):
    for key in path[:-1]:
        config = config.get(key)
        if not isinstance(config, dict):
            return None
    return config


def rename_deprecated(config: dict) -> dict:
    """Move each old key of :data:`RENAMED_KEYS` that ``config`` sets to its new name (in
    place), logging one line per key; raise :class:`ConfigError` where a config sets both.
    A sampler key is renamed in ``assimilation.sampler_by_space.<network>`` too."""
    renames = dict(RENAMED_KEYS)
    by_space = _get(config, ("assimilation", "sampler_by_space", "")) or {}
    for network, section in by_space.items():
        if not isinstance(section, dict):
            continue
        place = ("assimilation", "sampler_by_space", network)
        for old, new in RENAMED_KEYS.items():
            if old[:-1] == ("assimilation", "sampler") and new[:-1] == old[:-1]:
                renames[(*place, old[-1])] = (*place, new[-1])
    for old, new in renames.items():
        section = _get(config, old)
        if section is None or old[-1] not in section:
            continue
        old_name, new_name = ".".join(old), ".".join(new)
        if new[-1] in section:
            raise ConfigError(
                f"config error at {new_name}: {old_name} is its old name; give only {new_name}"
            )
        log.warning("config: %s is deprecated, use %s", old_name, new_name)
        section[new[-1]] = section.pop(old[-1])
    return config


def validate_config(config: dict, schema_path: str | Path | None = None) -> dict:
    """Rename deprecated keys (:func:`rename_deprecated`), fill defaults from the schema
    (:func:`load_schema`) into ``config`` (in place), validate, and check consistency.

    Raises :class:`ConfigError` with a one-line message naming the key.
    """
    import jsonschema

    schema = load_schema(schema_path)
    rename_deprecated(config)
    _fill_defaults(config, schema, schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        error = jsonschema.exceptions.best_match(errors)
        raise ConfigError(f"config error at {_key_path(error.absolute_path)}: {error.message}")
    check_consistency(config)
    return config


def grid_shape(resolution: float) -> tuple[int, int]:
    """(n_lat, n_lon) of the cell-centred grid; the resolution must divide 180 degrees."""
    n_lat = 180.0 / resolution
    if abs(n_lat - round(n_lat)) > 1e-6:
        raise ConfigError(
            f"config error at data.resolution: {resolution} does not divide 180 degrees "
            "into whole grid rows"
        )
    return round(n_lat), 2 * round(n_lat)


def check_consistency(config: dict) -> None:
    """Checks across keys that the JSON schema cannot express."""
    data, split = config["data"], config["split"]
    n_lat, n_lon = grid_shape(data["resolution"])
    first, last = data["years"]
    if first > last:
        raise ConfigError(f"config error at data.years: first year {first} is after {last}")
    spans = {}
    for name in ("train", "validation", "test"):
        a, b = split[name]
        if a > b:
            raise ConfigError(f"config error at split.{name}: first year {a} is after {b}")
        if a < first or b > last:
            raise ConfigError(
                f"config error at split.{name}: years {a}-{b} lie outside data.years {first}-{last}"
            )
        spans[name] = set(range(a, b + 1))
    if data["source"] == "real" and data.get("era5_source") == "weatherbench2":
        problem = check_levels(config["download"]["era5"]["weatherbench2_url"], data["levels"])
        if problem:
            raise ConfigError(f"config error at data.levels: {problem}")
    for one, two in itertools.combinations(spans, 2):
        common = spans[one] & spans[two]
        if common:
            raise ConfigError(
                f"config error at split.{two}: year {min(common)} is also in split.{one}"
            )
    blanket = config["score"]["blanket_days"]
    if blanket % 2 == 0:
        raise ConfigError(f"config error at score.blanket_days: {blanket} must be odd")
    if (config["assimilation"]["segment_days"] or blanket) < blanket:
        raise ConfigError(
            "config error at assimilation.segment_days: "
            f"{config['assimilation']['segment_days']} is shorter than score.blanket_days "
            f"{blanket}"
        )
    _check_period(config, blanket)
    factor = config["autoencoder"]["downsample"]
    if n_lat % factor or n_lon % factor:
        raise ConfigError(
            f"config error at autoencoder.downsample: {factor} does not divide the "
            f"{n_lat} x {n_lon} grid"
        )
    grids = {"pixel": (n_lat, n_lon), "latent": (n_lat // factor, n_lon // factor)}
    for space in ("pixel", "latent"):
        net = config["score"][space]
        if len(net["hidden"]) != len(net["blocks"]):
            raise ConfigError(
                f"config error at score.{space}.blocks: {len(net['blocks'])} entries "
                f"but score.{space}.hidden has {len(net['hidden'])}"
            )
        levels = 2 ** (len(net["hidden"]) - 1)
        height, width = grids[space]
        if height % levels or width % levels:
            raise ConfigError(
                f"config error at score.{space}.hidden: {len(net['hidden'])} U-Net levels need "
                f"grid sides divisible by {levels}, the {space} grid is {height} x {width}"
            )
    for axis, spec in config["assimilation"]["axes"].items():
        for i, value in enumerate(spec["values"]):
            params = setting_parameters(config, axis, value)
            if params["coarsen"] != int(params["coarsen"]) or params["gap"] != int(params["gap"]):
                raise ConfigError(
                    f"config error at assimilation.axes.{axis}.values[{i}]: {value} must be "
                    "a whole number"
                )
            r = int(params["coarsen"])
            latent = any(m.startswith("latent-") for m in config["assimilation"]["methods"])
            checked = [grids["pixel"]] + [grids["latent"]] * latent
            for height, width in checked:
                if height % r or width % r:
                    where = (
                        f"assimilation.axes.{axis}.values[{i}]"
                        if axis == "coarsen"
                        else f"assimilation.axes.{axis}.fixed.coarsen"
                    )
                    raise ConfigError(
                        f"config error at {where}: coarsening factor {r} does not divide "
                        f"the {height} x {width} grid"
                        + (" (the latent grid of autoencoder.downsample)" if factor > 1 else "")
                    )

    section = config["assimilation"]
    for i, protocol in enumerate(section["cases_only"]):
        if protocol not in section["protocols"]:
            raise ConfigError(
                f"config error at assimilation.cases_only[{i}]: {protocol} is not in "
                "assimilation.protocols"
            )
    for i, method in enumerate(section["methods"]):
        defined = METHODS[method].protocols
        if not set(defined) & set(section["protocols"]):
            raise ConfigError(
                f"config error at assimilation.methods[{i}]: {method} is defined under the "
                f"{' and '.join(defined)} protocol only; add it to assimilation.protocols"
            )

    grid = {f"{axis}-{value}" for axis, value in settings(config)}
    for name, cell in config["assimilation"]["cases"].items():
        if cell not in grid:
            raise ConfigError(
                f"config error at assimilation.cases.{name}: {cell} is not a cell of the "
                f"ablation grid ({', '.join(sorted(grid))})"
            )


def _check_period(config: dict, blanket: int) -> None:
    """``assimilation.period``: two real dates, in order, inside the test split, at least one
    Markov-blanket window (``blanket`` days) long."""
    period = config["assimilation"].get("period")
    if not period:
        return
    where = "config error at assimilation.period"
    if len(period) != 2:
        raise ConfigError(f"{where}: give [first, last], got {len(period)} dates")
    try:
        first, last = (pd.Timestamp(day) for day in period)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    if first > last:
        raise ConfigError(f"{where}: {period[0]} is after {period[1]}")
    a, b = config["split"]["test"]
    if first.year < a or last.year > b:
        split = f"{a}" if a == b else f"{a}-{b}"
        raise ConfigError(
            f"{where}: {period[0]}..{period[1]} is not inside the test split ({split}); "
            "analyses are scored against the test years only"
        )
    if (last - first).days + 1 < blanket:
        raise ConfigError(
            f"{where}: {(last - first).days + 1} days are fewer than score.blanket_days {blanket}"
        )


def cases(config: dict) -> dict[str, tuple[str, str]]:
    """Named cells of the ablation grid: ``{"ideal": ("coarsen", "4"), ...}``."""
    named = {}
    for name, cell in config["assimilation"]["cases"].items():
        axis, value = cell.split("-", 1)
        named[name] = (axis, format_value(float(value)))
    return named


def setting_parameters(config: dict, axis: str, value: float) -> dict[str, float]:
    """Measurement parameters of one ablation setting: the axis value over the axis' fixed values.

    Returns ``{"coarsen": r, "gap": g, "noise": sigma^2, "every": n}``.
    """
    params = {"coarsen": 1, "gap": 1, "noise": 0.0, "every": 1}
    params.update(config["assimilation"]["axes"][axis].get("fixed", {}))
    params[axis] = value
    return params


def format_value(value: float) -> str:
    """The text of an axis value in file names: 4 -> '4', 0.5 -> '0.5', 4.0 -> '4'."""
    return f"{float(value):g}"


def settings(config: dict) -> list[tuple[str, str]]:
    """All (axis, value text) pairs of the ablation grid, in config order."""
    return [
        (axis, format_value(value))
        for axis, spec in config["assimilation"]["axes"].items()
        for value in spec["values"]
    ]


def protocol_settings(config: dict, protocol: str) -> list[tuple[str, str]]:
    """The (axis, value text) cells a protocol runs: the whole grid, or only the named cases
    for a protocol in ``assimilation.cases_only``."""
    grid = settings(config)
    if protocol in config["assimilation"].get("cases_only", []):
        named = set(cases(config).values())
        return [cell for cell in grid if cell in named]
    return grid


def protocol_methods(config: dict, protocol: str) -> list[str]:
    """The configured methods defined under ``protocol``, in config order."""
    return [m for m in config["assimilation"]["methods"] if protocol in METHODS[m].protocols]


def analysis_cells(config: dict) -> list[tuple[str, str, str, str]]:
    """Every analysis file of the run as ``(protocol, method, axis, value)``, in config order."""
    return [
        (protocol, method, axis, value)
        for protocol in config["assimilation"]["protocols"]
        for method in protocol_methods(config, protocol)
        for axis, value in protocol_settings(config, protocol)
    ]


def analysis_sources(config: dict) -> dict[tuple, tuple]:
    """Analysis cells that repeat an earlier cell's analysis -> that cell.

    Two cells share one analysis when they have the same observation setting (two axes can
    meet in one setting: the paper's ``noise-0.1`` is ``coarsen-4``) and the same method under
    the same protocol, or under any protocol for a method that observes the same way under
    every one (``pixel``, ``oi``, ``climatology``). The first such cell is computed; the later
    ones are relabelled copies.
    """
    first: dict[tuple, tuple] = {}
    sources = {}
    for cell in analysis_cells(config):
        protocol, method, axis, value = cell
        setting = tuple(sorted(setting_parameters(config, axis, float(value)).items()))
        key = (method, setting) if METHODS[method].protocol_free else (protocol, method, setting)
        if key in first:
            sources[cell] = first[key]
        else:
            first[key] = cell
    return sources


def merge(base: dict, overlay: dict) -> dict:
    """Deep merge as Snakemake merges --configfile overlays: dicts merge, the rest replaces."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def layer(layers: list[dict]) -> dict:
    """The config the layers give, each merged over the ones before (:func:`merge`).

    The Snakefile rebuilds its config this way from ``config.yaml``, each ``--configfile`` in
    order and ``--config``: Snakemake itself merges the overlays among themselves first, then
    over ``config.yaml``, so a key one overlay sets to null (``presets/smoke.yaml``'s
    ``sampler_by_space``) and a later one fills with a mapping would get ``config.yaml``'s
    entries back.
    Each layer's deprecated keys are renamed first (:func:`rename_deprecated`), so that an
    overlay's old key overrides the new key of a layer below it."""
    config: dict = {}
    for overlay in layers:
        config = merge(config, rename_deprecated(copy.deepcopy(overlay or {})))
    return config


def method_assimilation(section: dict, method: str) -> dict:
    """The ``assimilation`` section ``section`` as ``method`` samples it: a copy whose
    ``sampler`` is the shared one with the keys of ``sampler_by_space[<its network>]`` in
    place, and without ``sampler_by_space`` (so that a caller's later change of ``sampler`` is
    the one that holds). A section already resolved comes back as it is."""
    out = copy.deepcopy(section)
    by_space = out.pop("sampler_by_space", None) or {}
    space = METHODS[method].space
    if space in by_space:
        out["sampler"] = {**out.get("sampler", {}), **by_space[space]}
    return out


def load_config(*paths: str | Path, schema_path: str | Path | None = None) -> dict:
    """Load config.yaml and overlays in order, then validate (as the Snakefile does)."""
    config = layer([yaml.safe_load(Path(path).read_text()) for path in paths])
    if schema_path is None:
        schema_path = checkout_schema(Path(paths[0]).parent)
    return validate_config(config, schema_path)


def run_config(run: str | Path) -> dict:
    """The validated config a finished run wrote (``results/<name>/config.resolved.yaml``),
    against the checkout's schema."""
    return load_config(resolved_config_path(run), schema_path=checkout_schema())
