"""What the Slurm jobs ask for (slams.cluster), from the profile's dry run, without a cluster.

tests/cluster/test_slurm.py checks the same computation against what a real controller shows.
"""

from collections import Counter
from pathlib import Path

import yaml

from slams.cluster import (
    balanced_groups,
    dry_run,
    group_id,
    group_name,
    parse_dry_run,
    profile_limits,
    slurm_requests,
    table,
)
from slams.docgen import generated_block

ROOT = Path(__file__).resolve().parents[1]
GPU_ON = "resources: {gpu_rules_use_gpu: true}\n"

DRY = """\
[Tue Dec  1 20:11:09 2026]
rule train_score:
    output: results/x/models/score-pixel.pt
    threads: 8
    resources: tmpdir=/tmp, disk_mb=<TBD>, mem_mb=64000, mem=64 GB, slurm_partition=gpu, runtime=720, gpu=1
Shell command: None

[Tue Dec  1 20:11:09 2026]
rule same_analysis:
    output: results/x/analysis/physical/pixel/coarsen-4.nc
    resources: tmpdir=/tmp, mem_mb=8000, slurm_partition=cpu, runtime=60

[Tue Dec  1 20:11:09 2026] Group job analyses-0 (jobs in lexicogr. order):

    [Tue Dec  1 20:11:09 2026]
    rule assimilate:
        output: results/x/analysis/paper/pixel/coarsen-4.nc
        threads: 4
        resources: tmpdir=/tmp, mem_mb=32000, slurm_partition=gpu, runtime=240, gpu=1

    [Tue Dec  1 20:11:09 2026]
    rule assimilate:
        output: results/x/analysis/paper/latent-none/coarsen-4.nc
        threads: 4
        resources: tmpdir=/tmp, mem_mb=16000, slurm_partition=gpu, runtime=200, gpu=1

[Tue Dec  1 20:11:09 2026] Group job classical-0 (jobs in lexicogr. order):

    [Tue Dec  1 20:11:09 2026]
    rule assimilate_classical:
        output: results/x/analysis/paper/oi/coarsen-4.nc
        threads: 4
        resources: tmpdir=/tmp, mem_mb=8000, slurm_partition=cpu, runtime=60

    [Tue Dec  1 20:11:09 2026]
    rule assimilate_classical:
        output: results/x/analysis/paper/climatology/coarsen-4.nc
        threads: 4
        resources: tmpdir=/tmp, mem_mb=8000, slurm_partition=cpu, runtime=60

[Tue Dec  1 20:11:09 2026]
rule evaluate:
    resources: tmpdir=/tmp, mem_mb=16000, slurm_partition=cpu, runtime=60
"""  # noqa: E501


def test_dry_run_jobs_threads_resources_and_groups():
    jobs = parse_dry_run(DRY)
    assert [(j.rule, j.local, j.threads) for j in jobs] == [
        ("train_score", False, 8), ("same_analysis", True, 1), ("assimilate", False, 4),
        ("assimilate", False, 4), ("assimilate_classical", False, 4),
        ("assimilate_classical", False, 4), ("evaluate", False, 1)]  # fmt: skip
    assert jobs[0].resources["mem_mb"] == 64000 and jobs[0].resources["slurm_partition"] == "gpu"
    assert [j.group for j in jobs] == [None, None, (0, "analyses-0"), (0, "analyses-0"),
                                       (1, "classical-0"), (1, "classical-0"), None]  # fmt: skip


def test_a_group_asks_for_its_widest_layer_and_the_sum_of_runtimes():
    jobs = parse_dry_run(DRY)
    one_gpu = {(r.name, r.partition, r.cpus, r.mem_mb, r.gpus, r.runtime_min): n
               for r, n in slurm_requests(jobs, 8, {"gpu": 1}).items()}  # fmt: skip
    # same_analysis is a local rule: no Slurm job; a group job's row is named by its group.
    # One GPU: the analyses run one after another; the classical ones (4 threads each) side by
    # side on the 8 cores
    assert one_gpu == {("train_score", "gpu", 8, 64000, 1, 720): 1,
                       ("evaluate", "cpu", 1, 16000, 0, 60): 1,
                       ("analyses", "gpu", 4, 32000, 1, 440): 1,
                       ("classical", "cpu", 8, 16000, 0, 60): 1}  # fmt: skip
    # without a GPU limit both analyses fit one layer of 8 cores: summed, side by side
    unlimited = {r.name: r for r in slurm_requests(jobs, 8, {})}
    assert unlimited["analyses"].gpus == 2 and unlimited["analyses"].cpus == 8
    assert (unlimited["analyses"].mem_mb, unlimited["analyses"].runtime_min) == (48000, 240)


def test_balanced_groups_have_sizes_within_one_and_no_remainder():
    for n in range(1, 80):
        index = balanced_groups(list(range(n)), 6)
        assert list(index.values()) == sorted(index.values())  # consecutive items
        sizes = list(Counter(index.values()).values())
        assert len(sizes) == -(-n // 6) and max(sizes) <= 6, n
        assert max(sizes) - min(sizes) <= 1, (n, sizes)
        assert n == 1 or min(sizes) > 1, (n, sizes)
    # Snakemake's group-components alone: 6 + 6 + 1
    assert sorted(Counter(balanced_groups(list(range(13)), 6).values()).values()) == [4, 4, 5]


def test_a_group_jobs_id_names_its_group():
    assert group_id("analyses", 12) == "analyses-12"
    assert group_name("analyses-12") == "analyses" and group_name("evaluate") == "evaluate"


def _smoke_requests(tmp_path: Path, profile: Path) -> dict[str, object]:
    (tmp_path / "gpu.yaml").write_text(GPU_ON)
    args = ["--configfile", str(ROOT / "presets/smoke.yaml"), str(tmp_path / "gpu.yaml")]
    requests = slurm_requests(parse_dry_run(dry_run(args, profile=profile, workdir=tmp_path)),
                              8, profile_limits(profile))  # fmt: skip
    return requests


def _groups(requests, name: str) -> list[tuple]:
    return sorted((r.partition, r.gpus, r.cpus, r.mem_mb, r.runtime_min, r.members, n)
                  for r, n in requests.items() if r.name == name)  # fmt: skip


def test_the_profiles_group_jobs_take_one_gpu_each(tmp_path):
    """The smoke preset with GPU requests: 40 diffusion analyses in 7 group jobs (5 of 6, 2 of
    5; never a remainder group), each asking for one GPU, one CPU and one analysis's memory,
    and the sum of their runtimes; the 12 classical analyses one job each on the cpu partition,
    without a GPU; every GPU rule one GPU on the gpu partition."""
    requests = _smoke_requests(tmp_path, ROOT / "slurm")
    assert _groups(requests, "analyses") == [
        ("gpu", 1, 1, 2000, 5 * 30, "5 assimilate", 2),
        ("gpu", 1, 1, 2000, 6 * 30, "6 assimilate", 5)]  # fmt: skip
    classical = {r: n for r, n in requests.items() if r.name == "assimilate_classical"}
    assert [(r.partition, r.gpus, r.cpus, r.mem_mb, n) for r, n in classical.items()] == [
        ("cpu", 0, 1, 2000, 12)]  # fmt: skip
    assert "assimilate" not in {r.name for r in requests}
    for request in requests:
        if request.gpus:
            assert request.gpus == 1 and request.partition == "gpu", request


def _profile(tmp_path: Path, change) -> Path:
    settings = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())
    change(settings)
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump(settings))
    return profile


def test_without_the_gpu_scope_a_group_asks_for_six_gpus(tmp_path):
    """The control: the profile less `set-resource-scopes` and `resources` packs a group's
    analyses into one layer (`--cores 8`, 1 thread each), as a real controller showed before
    the fix."""

    def without_scope(settings):
        del settings["set-resource-scopes"], settings["resources"]

    groups = [r for r in _smoke_requests(tmp_path, _profile(tmp_path, without_scope))
              if r.name == "analyses"]  # fmt: skip
    assert {(r.gpus, r.cpus, r.mem_mb) for r in groups} == {(6, 6, 12000), (5, 5, 10000)}


def test_classical_analyses_group_the_same_way_where_the_profile_says(tmp_path):
    """`classical=6` in the profile's group-components: the 12 classical analyses in 2 group
    jobs of 6 on the cpu partition, without a GPU, side by side (1 thread each), asking for
    the sum of their memory (why the profile leaves them one job each)."""
    profile = _profile(tmp_path, lambda s: s["group-components"].append("classical=6"))
    requests = _smoke_requests(tmp_path, profile)
    assert _groups(requests, "classical") == [
        ("cpu", 0, 6, 6 * 2000, 60, "6 assimilate_classical", 2)]  # fmt: skip
    assert "assimilate_classical" not in {r.name for r in requests}
    assert len(_groups(requests, "analyses")) == 2  # the diffusion analyses' groups as before


def test_the_papers_jobs_fit_one_gpu_node(tmp_path):
    requests = slurm_requests(parse_dry_run(dry_run([], workdir=tmp_path)), 8,
                              profile_limits(ROOT / "slurm"))  # fmt: skip
    by_name = {r.name for r in requests}
    # 130 diffusion analyses: 20 group jobs of 6 (24 h) and 2 of 5 (20 h), one GPU each
    assert _groups(requests, "analyses") == [
        ("gpu", 1, 4, 40000, 5 * 240, "5 assimilate", 2),
        ("gpu", 1, 4, 40000, 6 * 240, "6 assimilate", 20)]  # fmt: skip
    # 39 classical analyses (13 distinct settings x oi, oi-both, climatology), one job each
    classical = {r: n for r, n in requests.items() if r.name == "assimilate_classical"}
    assert [(r.partition, r.gpus, r.cpus, r.mem_mb, n) for r, n in classical.items()] == [
        ("cpu", 0, 4, 66000, 39)]  # fmt: skip
    assert all(r.gpus <= 1 and r.cpus <= 8 and r.mem_mb <= 66000 for r in requests)
    assert {r.name for r in requests if r.gpus} == {
        "train_autoencoder", "train_score", "encode", "analyses"}  # fmt: skip
    assert not {"download_era5", "download_cpc", "download_olr", "extract_olr",
                "same_analysis"} & set(by_name)  # fmt: skip
    assert "| analyses (group of 6 assimilate) | 20 | gpu | 4 | 40000 | 1 | 1440 |" in table(
        requests
    )
    # docs/cluster.md's table is this one
    block = generated_block(ROOT / "docs/cluster.md", "python -m slams.cluster")
    assert block == table(requests), "run: python -m slams.cluster --docs"
