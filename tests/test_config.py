import copy

import pytest
import yaml

from slams.config import (
    RENAMED_KEYS,
    ConfigError,
    analysis_cells,
    analysis_sources,
    format_value,
    grid_shape,
    layer,
    load_config,
    load_schema,
    setting_parameters,
    settings,
    validate_config,
)


@pytest.fixture(scope="module")
def paper(root):
    return yaml.safe_load((root / "config.yaml").read_text())


@pytest.fixture(scope="module")
def schema(root):
    return root / "workflow" / "schemas" / "config.schema.yaml"


@pytest.mark.parametrize("preset", [None, "demo", "smoke"])
def test_shipped_configs_validate(root, preset):
    paths = [root / "config.yaml"] + ([root / "presets" / f"{preset}.yaml"] if preset else [])
    config = load_config(*paths)
    assert config["name"] == (preset or "paper")
    assert config["assimilation"]["sampler"]["steps"] >= 1


def test_the_paper_scale_preset_keeps_the_papers_grid_and_network_sizes(root):
    paper = load_config(root / "config.yaml")
    scale = load_config(root / "config.yaml", root / "presets/paper-scale.yaml")
    for key in ("levels", "resolution"):
        assert scale["data"][key] == paper["data"][key]
    for section, keys in (("autoencoder", ("latent_channels", "hidden", "layers", "kernel_size",
                                           "batch_size")),
                          ("score", ("blanket_days", "pixel", "latent"))):  # fmt: skip
        for key in keys:
            assert scale[section][key] == paper[section][key], (section, key)
    # the real sources' grids, three years for the three splits, capped training
    synthetic = scale["data"]["synthetic"]
    assert (synthetic["era5_resolution"], synthetic["cpc_resolution"],
            synthetic["olr_resolution"]) == (0.25, 0.5, 2.5)  # fmt: skip
    assert scale["data"]["years"] == [2000, 2002]
    assert scale["autoencoder"]["max_batches"] == scale["score"]["max_batches"] == 1
    assert paper["autoencoder"]["max_batches"] is None and paper["score"]["max_batches"] is None
    assert scale["resources"]["warm_start"] is False  # each job's peak memory its own
    # the whole year's pixel analysis over it (benchmarks/paper-year.yaml): the paper's
    # network, 8 members, the whole test year in one pass
    year = load_config(root / "config.yaml", root / "presets/paper-scale.yaml",
                       root / "benchmarks/paper-year.yaml")  # fmt: skip
    assert year["score"]["pixel"] == paper["score"]["pixel"]
    assert year["data"]["resolution"] == paper["data"]["resolution"]
    section = year["assimilation"]
    assert (section["members"], section["period"], section["segment_days"]) == (8, None, None)


def test_the_study_samples_each_network_as_config_yaml_does(root):
    """The converged run measures the shipped samplers: presets/study.yaml restores
    config.yaml's over the demo's, every key of every network's sampler the same."""
    from slams.config import method_assimilation

    paper = load_config(root / "config.yaml")
    study = load_config(
        root / "config.yaml", root / "presets/demo.yaml", root / "presets/study.yaml"
    )
    demo = load_config(root / "config.yaml", root / "presets/demo.yaml")
    for method in study["assimilation"]["methods"]:
        shipped = method_assimilation(paper["assimilation"], method)["sampler"]
        assert method_assimilation(study["assimilation"], method)["sampler"] == shipped, method
    assert (
        method_assimilation(demo["assimilation"], "pixel")["sampler"]
        != (method_assimilation(paper["assimilation"], "pixel")["sampler"])
    )  # the demo's own sampler, which the study must not inherit


def test_paper_config_is_the_paper(root):
    config = load_config(root / "config.yaml")
    assert config["data"]["levels"] == [10, 50, 100, 200, 300, 500, 700, 850, 925, 1000]
    assert config["split"] == {
        "train": [2000, 2015],
        "validation": [2016, 2021],
        "test": [2022, 2022],
    }
    assert config["score"]["pixel"]["hidden"] == [64, 128, 256]
    assert config["score"]["latent"]["hidden"] == [32, 64, 128]
    # the sampler chosen by measurement (docs/sampler.md); the paper's own is
    # one overlay away
    from slams.config import method_assimilation

    def chosen(method):
        s = method_assimilation(config["assimilation"], method)["sampler"]
        return (s["solver"], s["steps"], s["corrections"], s["correction_min_sigma"],
                s["tau_reference_steps"], s["correction_grid_steps"])  # fmt: skip

    # shared: dpm2m 32 + 1; pixel (the same at 16 steps) and latent-none (DDIM): 16 + 1; all at
    # the Langevin time of 8 steps, with their corrections on a grid of their own steps
    for method in ("latent-both", "latent-insitu", "latent-exsitu", "pixel-both"):
        assert chosen(method) == ("dpm2m", 32, 1, 0.0, 8, 32), method
    assert chosen("pixel") == ("dpm2m", 16, 1, 0.0, 8, 16)
    assert chosen("latent-none") == ("ddim", 16, 1, 0.0, 8, 16)
    paper = load_config(root / "config.yaml", root / "presets/paper-sampler.yaml")
    sampler = paper["assimilation"]["sampler"]
    assert (sampler["steps"], sampler["corrections"], sampler["tau"], sampler["gamma"]) == (
        512,
        1,
        0.5,
        0.01,
    )
    assert sampler["tau_reference_steps"] is None and sampler["solver"] == "ddim"
    assert sampler["correction_min_sigma"] == 0.0 and sampler["correction_grid_steps"] is None
    assert not paper["assimilation"]["sampler_by_space"]  # one sampler for every network
    assert config["assimilation"]["axes"]["coarsen"]["values"] == [4, 8, 12, 15, 20]
    assert config["assimilation"]["members"] >= 8


def test_defaults_are_filled(paper, schema):
    config = copy.deepcopy(paper)
    del config["assimilation"]["sampler"]
    del config["seed"]
    validate_config(config, schema)
    assert config["assimilation"]["sampler"] == {
        "steps": 512,
        "corrections": 1,
        "tau": 0.5,
        "gamma": 0.01,
        "guidance": "sda",
        "mmps_iterations": 3,
        "mmps_solver": "gmres",
        "solver": "ddim",
        "correction_min_sigma": 0.0,
        "tau_reference_steps": None,
        "correction_grid_steps": None,
    }
    assert config["seed"] == 0


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c["assimilation"].update(memebers=8), "assimilation"),
        (lambda c: c["assimilation"].update(members="eight"), "assimilation.members"),
        (lambda c: c["score"]["pixel"].update(hidden=[64, -1]), "score.pixel.hidden[1]"),
        (lambda c: c["score"]["latent"].update(zonal_mixing="yes"), "score.latent.zonal_mixing"),
        (lambda c: c["data"].update(source="ftp"), "data.source"),
        (
            lambda c: c["assimilation"]["axes"]["gap"].update(values=[4, 8, 4]),
            "assimilation.axes.gap.values",
        ),
        (
            lambda c: c["assimilation"]["sampler"].update(guidance="dps"),
            "assimilation.sampler.guidance",
        ),
    ],
)
def test_schema_errors_name_the_key(paper, schema, edit, key):
    config = copy.deepcopy(paper)
    edit(config)
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"config error at {key}:")


def test_zonal_mixing_is_off_unless_set(paper, schema):
    """The paper's U-Net unless a config asks (``score.<pixel|latent>.zonal_mixing``): no default
    fills the key, so the networks' params, and what Snakemake reruns on them, stay as before."""
    config = copy.deepcopy(paper)
    validate_config(config, schema)
    assert "zonal_mixing" not in config["score"]["pixel"]
    config["score"]["latent"]["zonal_mixing"] = True
    validate_config(config, schema)


def test_unknown_key_is_named(paper, schema):
    config = copy.deepcopy(paper)
    config["assimilation"]["memebers"] = 8
    with pytest.raises(ConfigError, match="memebers"):
        validate_config(config, schema)


def test_coarsening_must_divide_grid(paper, schema):
    config = copy.deepcopy(paper)
    config["assimilation"]["axes"]["coarsen"]["values"] = [4, 7]
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    assert str(info.value).startswith("config error at assimilation.axes.coarsen.values[1]:")
    assert "120 x 240" in str(info.value)


def test_latent_grid_of_a_downsampling_autoencoder_is_checked(paper, schema):
    config = copy.deepcopy(paper)
    config["autoencoder"]["downsample"] = 2  # latent grid 60 x 120: the paper's r = 8 fails
    with pytest.raises(ConfigError) as info:
        validate_config(copy.deepcopy(config), schema)
    assert str(info.value).startswith("config error at assimilation.axes.coarsen.values[1]:")
    assert "coarsening factor 8 does not divide the 60 x 120 grid" in str(info.value)
    config["assimilation"]["axes"]["coarsen"]["values"] = [4, 12, 20]
    validate_config(copy.deepcopy(config), schema)
    config["assimilation"]["methods"] = ["pixel", "climatology"]  # no latent method: r = 8 fine
    config["assimilation"]["axes"]["coarsen"]["values"] = [4, 8, 20]
    validate_config(config, schema)


def test_overlapping_splits_fail(paper, schema):
    config = copy.deepcopy(paper)
    config["split"]["test"] = [2021, 2022]
    with pytest.raises(ConfigError, match=r"split\.test: year 2021 is also in split\.validation"):
        validate_config(config, schema)


def test_grid_and_settings(paper, schema):
    assert grid_shape(1.5) == (120, 240)
    assert grid_shape(5.625) == (32, 64)
    with pytest.raises(ConfigError, match=r"data\.resolution"):
        grid_shape(7.0)
    config = validate_config(copy.deepcopy(paper), schema)
    grid = settings(config)
    assert ("coarsen", "20") in grid and ("noise", "0.1") in grid and ("gap", "16") in grid
    assert len(grid) == 5 + 5 + 4
    assert setting_parameters(config, "noise", 4.0) == {
        "coarsen": 4,
        "gap": 1,
        "noise": 4.0,
        "every": 4,
    }
    assert setting_parameters(config, "gap", 16)["coarsen"] == 1
    assert format_value(4.0) == "4" and format_value(0.5) == "0.5"


def test_cells_that_repeat_an_analysis(paper, schema):
    config = validate_config(copy.deepcopy(paper), schema)
    # the paper holds noise at 0.1 on the coarsening axis and coarsens by 4 on the noise axis
    assert setting_parameters(config, "noise", 0.1) == setting_parameters(config, "coarsen", 4)
    cells = analysis_cells(config)
    sources = analysis_sources(config)
    # 7 methods under the paper protocol, 9 (with pixel-both and oi-both) under the physical one
    assert len(cells) == (7 + 9) * 14
    assert sources[("paper", "latent-both", "noise", "0.1")] == (
        "paper", "latent-both", "coarsen", "4")  # fmt: skip
    # pixel, oi and climatology observe the same way under both protocols: computed once
    assert sources[("physical", "pixel", "gap", "16")] == ("paper", "pixel", "gap", "16")
    assert sources[("physical", "oi", "noise", "0.1")] == ("paper", "oi", "coarsen", "4")
    # latent methods differ between the protocols; pixel-both and oi-both are physical only
    assert ("physical", "latent-both", "gap", "16") not in sources
    assert not any(cell[1] in ("pixel-both", "oi-both") and cell[0] == "paper" for cell in cells)
    computed = [cell for cell in cells if cell not in sources]
    assert len(computed) == 3 * 13 + 2 * 13 + 4 * 13 * 2  # 169
    assert all(source not in sources for source in sources.values())  # one hop
    config["assimilation"]["axes"]["noise"]["fixed"]["every"] = 1  # now a setting of its own
    assert ("paper", "latent-both", "noise", "0.1") not in analysis_sources(config)


def test_protocols_cases_only_and_physical_only_methods(paper, schema):
    config = copy.deepcopy(paper)
    config["assimilation"]["cases_only"] = ["paper"]
    config = validate_config(config, schema)
    paper_cells = {c[2:] for c in analysis_cells(config) if c[0] == "paper"}
    assert paper_cells == {("coarsen", "4"), ("coarsen", "20"), ("noise", "4"), ("gap", "16")}
    bad = copy.deepcopy(paper)
    bad["assimilation"]["protocols"] = ["physical"]
    bad["assimilation"]["cases_only"] = ["paper"]
    with pytest.raises(ConfigError, match=r"assimilation\.cases_only\[0\]: paper is not in"):
        validate_config(bad, schema)
    only_paper = copy.deepcopy(paper)
    only_paper["assimilation"]["protocols"] = ["paper"]
    with pytest.raises(ConfigError, match=r"assimilation\.methods\[1\]: pixel-both is defined "
                       r"under the physical protocol only"):  # fmt: skip
        validate_config(only_paper, schema)
    unknown = copy.deepcopy(paper)
    unknown["assimilation"]["protocols"] = ["paper", "real"]
    with pytest.raises(ConfigError, match=r"assimilation\.protocols\[1\]"):
        validate_config(unknown, schema)


def test_a_sampler_per_network_overlays_the_shared_one(paper, schema):
    from slams.config import method_assimilation
    from slams.methods import METHODS

    config = copy.deepcopy(paper)
    config["assimilation"]["sampler_by_space"] = {"latent-none": {"steps": 8, "corrections": 7}}
    validate_config(config, schema)
    section = config["assimilation"]
    shared = section["sampler"]
    # no defaults filled into the overlay: only the keys given replace the shared sampler's
    assert section["sampler_by_space"] == {"latent-none": {"steps": 8, "corrections": 7}}
    mine = method_assimilation(section, "latent-none")
    assert mine["sampler"] == {**shared, "steps": 8, "corrections": 7}
    assert "sampler_by_space" not in mine
    for method in ("pixel", "pixel-both", "latent-both", "oi", "climatology"):
        assert method_assimilation(section, method)["sampler"] == shared, method
    # resolved once, a caller's change of the sampler holds (steps.py measures this way)
    resolved = method_assimilation(section, "latent-none")
    resolved["sampler"]["steps"] = 64
    assert method_assimilation(resolved, "latent-none")["sampler"]["steps"] == 64
    assert section["sampler_by_space"]["latent-none"]["steps"] == 8  # the input untouched
    # null clears it (an overlay's {} would merge into config.yaml's, not replace it)
    config["assimilation"]["sampler_by_space"] = None
    validate_config(config, schema)
    assert method_assimilation(config["assimilation"], "latent-none")["sampler"] == shared
    # the schema's keys are the score networks, every one
    spaces = load_schema(schema)["properties"]["assimilation"]["properties"]["sampler_by_space"][
        "propertyNames"
    ]["enum"]
    assert set(spaces) == {spec.space for spec in METHODS.values() if spec.space}


@pytest.mark.parametrize(
    ("overlay", "key"),
    [
        ({"latent-nil": {"steps": 8}}, "assimilation.sampler_by_space"),
        ({"pixel": {"stepz": 8}}, "assimilation.sampler_by_space.pixel"),
        ({"pixel": {"solver": "heun"}}, "assimilation.sampler_by_space.pixel.solver"),
    ],
)
def test_a_wrong_sampler_per_network_names_the_key(paper, schema, overlay, key):
    config = copy.deepcopy(paper)
    config["assimilation"]["sampler_by_space"] = overlay
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    assert str(info.value).startswith(f"config error at {key}:"), str(info.value)


def test_the_schema_takes_its_names_from_the_table_of_methods(schema, tmp_path):
    """Whatever the schema file lists, the schema used for validation names exactly the
    methods of slams.methods.METHODS, its score networks and its protocols."""
    from slams.methods import METHODS, PROTOCOLS, SCORE_NETWORKS

    def names(loaded):
        section = loaded["properties"]["assimilation"]["properties"]
        return (
            section["methods"]["items"]["enum"],
            section["sampler_by_space"]["propertyNames"]["enum"],
            section["protocols"]["items"]["enum"],
            section["cases_only"]["items"]["enum"],
        )

    expected = (list(METHODS), list(SCORE_NETWORKS), list(PROTOCOLS), list(PROTOCOLS))
    assert names(load_schema(schema)) == expected
    assert names(load_schema()) == expected  # the checkout's by default
    # a file with stale lists of its own: the table's names replace them
    stale = yaml.safe_load(schema.read_text())
    section = stale["properties"]["assimilation"]["properties"]
    section["methods"]["items"] = {"type": "string", "enum": ["pixel", "retired"]}
    section["protocols"]["items"] = {"enum": ["paper"]}
    section["sampler_by_space"]["propertyNames"] = {"enum": ["pixel"]}
    path = tmp_path / "schema.yaml"
    path.write_text(yaml.safe_dump(stale))
    assert names(load_schema(path)) == expected


def test_an_unknown_method_fails_in_one_line_naming_it(paper, schema):
    config = copy.deepcopy(paper)
    config["assimilation"]["methods"] = ["pixel", "latent-everything"]
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config error at assimilation.methods[1]: 'latent-everything'")


def _section(config: dict, path: tuple) -> dict:
    for key in path[:-1]:
        config = config.setdefault(key, {})
    return config


@pytest.mark.parametrize(("old", "new"), list(RENAMED_KEYS.items()))
def test_an_old_key_still_works_with_a_one_line_warning(paper, schema, caplog, old, new):
    value = {"window": 7, "window_days": 29, "chunk_windows": 16, "cg_iterations": 5}.get(
        old[-1], False
    )
    renamed = copy.deepcopy(paper)
    _section(renamed, new)[new[-1]] = value
    deprecated = copy.deepcopy(paper)
    _section(deprecated, new).pop(new[-1], None)
    _section(deprecated, old)[old[-1]] = value
    with caplog.at_level("WARNING", logger="slams.config"):
        validated = validate_config(deprecated, schema)
    assert validated == validate_config(renamed, schema)  # the same effective config
    assert old[-1] not in _section(validated, old)
    assert [r.getMessage() for r in caplog.records] == [
        f"config: {'.'.join(old)} is deprecated, use {'.'.join(new)}"
    ]


def test_an_old_sampler_key_is_renamed_per_network_too(paper, schema, caplog):
    config = copy.deepcopy(paper)
    config["assimilation"]["sampler_by_space"] = {"pixel": {"cg_iterations": 6}}
    with caplog.at_level("WARNING", logger="slams.config"):
        validate_config(config, schema)
    assert config["assimilation"]["sampler_by_space"]["pixel"] == {"mmps_iterations": 6}
    assert [r.getMessage() for r in caplog.records] == [
        "config: assimilation.sampler_by_space.pixel.cg_iterations is deprecated, "
        "use assimilation.sampler_by_space.pixel.mmps_iterations"
    ]


def test_an_old_and_a_new_key_together_fail_in_one_line(paper, schema):
    config = copy.deepcopy(paper)
    config["assimilation"]["windows_per_call"] = 16
    config["assimilation"]["chunk_windows"] = 8
    with pytest.raises(ConfigError) as info:
        validate_config(config, schema)
    assert str(info.value) == (
        "config error at assimilation.windows_per_call: assimilation.chunk_windows is its old "
        "name; give only assimilation.windows_per_call"
    )


def test_an_overlays_old_key_overrides_the_new_key_below_it(paper, schema, caplog):
    """An old overlay over the current config.yaml: its old key is renamed before the merge,
    so it replaces config.yaml's value instead of clashing with it."""
    with caplog.at_level("WARNING", logger="slams.config"):
        config = layer([paper, {"score": {"window": 7}, "assimilation": {"chunk_windows": 8}}])
    assert config["score"]["blanket_days"] == 7 and "window" not in config["score"]
    assert config["assimilation"]["windows_per_call"] == 8
    validate_config(config, schema)
    assert len(caplog.records) == 2


def test_the_prior_studies_sample_each_network_with_its_own_sampler(root):
    """studies/prior_spread.py and prior_levers.py draw a network's prior with the sampler its
    analyses take (assimilation.sampler_by_space over the shared one)."""
    from slams.studies.prior_spread import network_sampler

    paper = load_config(root / "config.yaml")
    by_space = paper["assimilation"]["sampler_by_space"]
    for space in ("pixel", "latent-none"):
        sampler = network_sampler(paper, space)
        assert all(sampler[key] == value for key, value in by_space[space].items()), space
    assert network_sampler(paper, "latent-both") == paper["assimilation"]["sampler"]
    assert network_sampler(paper, "pixel")["steps"] != paper["assimilation"]["sampler"]["steps"]


def test_the_eps_scale_preset_holds_the_rules_choice_and_the_defaults_leave_it_off(root):
    """presets/eps-scale.yaml sets, per network, the scale the sampler rule chose on the
    study's measurements (studies/eps-scale/, docs/sampler.md's table); without it no shipped
    config scales eps (an inflation: off by default)."""
    import pandas as pd

    from slams.docgen import calibration_rows
    from slams.studies.sampler_choice import choose_eps_scale

    rows = [r for p in sorted((root / "studies/eps-scale").glob("calibration-*.md"))
            for r in calibration_rows(p)]  # fmt: skip
    frame = pd.DataFrame(rows).drop_duplicates(["method", "case", "eps_scale"], keep="last")
    table = choose_eps_scale(frame)
    chosen = dict(zip(table[table.chosen].method, table[table.chosen].eps_scale, strict=True))
    preset = yaml.safe_load((root / "presets/eps-scale.yaml").read_text())
    by_space = preset["assimilation"]["sampler_by_space"]
    assert {k: v["eps_scale"] for k, v in by_space.items()} == {
        k: v for k, v in chosen.items() if v != 1.0
    }
    overlaid = load_config(root / "config.yaml", root / "presets/eps-scale.yaml")
    assert overlaid["assimilation"]["sampler_by_space"]["pixel"]["steps"] == 16  # merged
    for preset_name in (None, "demo", "smoke", "paper-sampler", "paper-scale"):
        paths = [root / "config.yaml"]
        paths += [root / "presets" / f"{preset_name}.yaml"] if preset_name else []
        section = load_config(*paths)["assimilation"]
        samplers = [section["sampler"], *(section["sampler_by_space"] or {}).values()]
        assert all(s.get("eps_scale", 1.0) == 1.0 for s in samplers), preset_name
