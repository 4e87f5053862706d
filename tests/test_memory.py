"""The memory model (slams.memory): its arithmetic, the requests of config.yaml against it, and
the table of them in docs/cluster.md, which must be what `python -m slams.memory` prints."""

import pytest

from slams.config import load_config
from slams.docgen import generated_block
from slams.memory import (
    Sizes,
    analysis,
    graph_windows,
    memory_key,
    predicted,
    predicted_peak_mb,
    requests_table,
)


@pytest.fixture(scope="module")
def paper(root):
    return load_config(root / "config.yaml")


def test_one_call_holds_the_graph_of_the_windows_that_own_observed_days(paper):
    sizes = Sizes.of(paper)
    assert sizes.test_days == 365 and sizes.grid == 120 * 240
    # 361 windows a member: more than a chunk, so a member at a time, a chunk at most
    assert graph_windows(sizes, every=1) == sizes.windows_per_call
    every_fourth = Sizes(**{**sizes.__dict__, "windows_per_call": 512})
    assert graph_windows(every_fourth, every=4) == 91 + 1
    # a short period: whole members per call, as many as fit in a chunk
    short = Sizes(**{**sizes.__dict__, "test_days": 16, "windows_per_call": 64, "members": 4})
    assert graph_windows(short, every=1) == 4 * 12


def test_the_state_term_is_three_copies_of_the_ensemble(paper):
    one = analysis({**paper, "assimilation": {**paper["assimilation"], "members": 4}}, "pixel")
    two = analysis({**paper, "assimilation": {**paper["assimilation"], "members": 8}}, "pixel")
    state = 4 * 365 * 10 * 120 * 240 * 4 / 2**20  # four more members' state, MB
    assert two.host_mb - one.host_mb == pytest.approx(3 * state, rel=1e-3)


def test_a_cell_observed_every_fourth_day_needs_less_than_every_day(paper):
    every_day = predicted_peak_mb("assimilate", {"method": "pixel", "axis": "gap",
                                                 "value": "16"}, paper)  # fmt: skip
    fourth = predicted_peak_mb("assimilate", {"method": "pixel", "axis": "coarsen",
                                              "value": "4"}, paper)  # fmt: skip
    assert fourth <= every_day


def test_rules_without_a_prediction_say_so(paper):
    assert predicted_peak_mb("download_era5", {}, paper) is None
    assert memory_key("dataset") is None
    assert memory_key("assimilate_classical") == "resources.classical_mem_mb"


def test_config_requests_cover_every_predicted_peak_with_a_fifth_to_spare(paper):
    """Every job kind whose request config.yaml sets asks for at least 1.2 x its peak."""
    short = []
    for row in requests_table(paper).splitlines()[2:]:
        name, peak, request, key = (cell.strip(" `") for cell in row.strip("|").split("|")[:4])
        if int(request) < 1.2 * int(peak):
            short.append(f"{name}: {request} MB for a peak of {peak} MB ({key})")
    assert not short, short


def test_the_docs_table_is_what_slams_memory_prints(root, paper):
    block = generated_block(root / "docs/cluster.md", "python -m slams.memory")
    assert block is not None, "docs/cluster.md lacks the generated memory table"
    assert block == requests_table(paper), "run: python -m slams.memory --docs"


def test_every_gpu_job_states_its_device_memory(paper):
    prediction = predicted("assimilate", {"method": "latent-both"}, paper)
    assert 0 < prediction.gpu_mb
