"""What the Slurm jobs ask for (slams.cluster), from the profile's dry run, without a cluster.

tests/cluster/test_slurm.py checks the same computation against what a real controller shows.
"""

from pathlib import Path

import yaml

from slams.cluster import dry_run, parse_dry_run, profile_limits, slurm_requests, table

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

[Tue Dec  1 20:11:09 2026] Group job analyses (jobs in lexicogr. order):

    [Tue Dec  1 20:11:09 2026]
    rule assimilate:
        output: results/x/analysis/paper/pixel/coarsen-4.nc
        threads: 4
        resources: tmpdir=/tmp, mem_mb=32000, slurm_partition=gpu, runtime=240, gpu=1

    [Tue Dec  1 20:11:09 2026]
    rule assimilate:
        output: results/x/analysis/paper/oi/coarsen-4.nc
        threads: 4
        resources: tmpdir=/tmp, mem_mb=16000, slurm_partition=gpu, runtime=200, gpu=1

[Tue Dec  1 20:11:09 2026]
rule evaluate:
    resources: tmpdir=/tmp, mem_mb=16000, slurm_partition=cpu, runtime=60
"""  # noqa: E501


def test_dry_run_jobs_threads_resources_and_groups():
    jobs = parse_dry_run(DRY)
    assert [(j.rule, j.local, j.threads) for j in jobs] == [
        ("train_score", False, 8), ("same_analysis", True, 1), ("assimilate", False, 4),
        ("assimilate", False, 4), ("evaluate", False, 1)]  # fmt: skip
    assert jobs[0].resources["mem_mb"] == 64000 and jobs[0].resources["slurm_partition"] == "gpu"
    assert [j.group for j in jobs] == [None, None, (0, "analyses"), (0, "analyses"), None]


def test_a_group_asks_for_its_widest_layer_and_the_sum_of_runtimes():
    jobs = parse_dry_run(DRY)
    one_gpu = {(r.name, r.cpus, r.mem_mb, r.gpus, r.runtime_min): n
               for r, n in slurm_requests(jobs, 8, {"gpu": 1}).items()}  # fmt: skip
    # same_analysis is a local rule: no Slurm job
    assert one_gpu == {("train_score", 8, 64000, 1, 720): 1, ("evaluate", 1, 16000, 0, 60): 1,
                       ("analyses", 4, 32000, 1, 440): 1}  # fmt: skip
    # without a GPU limit both analyses fit one layer of 8 cores: summed, side by side
    unlimited = {r.name: r for r in slurm_requests(jobs, 8, {})}
    assert unlimited["analyses"].gpus == 2 and unlimited["analyses"].cpus == 8
    assert (unlimited["analyses"].mem_mb, unlimited["analyses"].runtime_min) == (48000, 240)


def _smoke_requests(tmp_path: Path, profile: Path) -> dict[str, object]:
    (tmp_path / "gpu.yaml").write_text(GPU_ON)
    args = ["--configfile", str(ROOT / "presets/smoke.yaml"), str(tmp_path / "gpu.yaml")]
    requests = slurm_requests(parse_dry_run(dry_run(args, profile=profile, workdir=tmp_path)),
                              8, profile_limits(profile))  # fmt: skip
    return requests


def test_the_profiles_group_jobs_take_one_gpu_each(tmp_path):
    """The smoke preset with GPU requests: 52 analyses in 9 group jobs (8 of 6, 1 of 4), each
    asking for one GPU, one CPU and one analysis's memory, and the sum of their runtimes;
    every GPU rule one GPU on the gpu partition."""
    requests = _smoke_requests(tmp_path, ROOT / "slurm")
    groups = {r: n for r, n in requests.items() if r.name == "analyses"}
    assert sorted((r.gpus, r.cpus, r.mem_mb, r.runtime_min, n) for r, n in groups.items()) == [
        (1, 1, 2000, 4 * 30, 1), (1, 1, 2000, 6 * 30, 8)]  # fmt: skip
    for request in requests:
        if request.gpus:
            assert request.gpus == 1 and request.partition == "gpu", request


def test_without_the_gpu_scope_a_group_asks_for_eight_gpus(tmp_path):
    """The control: the profile less `set-resource-scopes` and `resources` packs 8 analyses
    into a layer (`--cores 8`, 1 thread each), as a real controller showed before the fix."""
    settings = yaml.safe_load((ROOT / "slurm" / "config.yaml").read_text())
    del settings["set-resource-scopes"], settings["resources"]
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(yaml.safe_dump(settings))
    groups = [r for r in _smoke_requests(tmp_path, profile) if r.name == "analyses"]
    assert {(r.gpus, r.cpus, r.mem_mb) for r in groups} == {(6, 6, 12000), (4, 4, 8000)}


def test_the_papers_jobs_fit_one_gpu_node(tmp_path):
    requests = slurm_requests(parse_dry_run(dry_run([], workdir=tmp_path)), 8,
                              profile_limits(ROOT / "slurm"))  # fmt: skip
    by_name = {r.name for r in requests}
    # 169 analyses: 28 group jobs of 6 (24 h) and one of 1
    groups = sorted((r.runtime_min, n) for r, n in requests.items() if r.name == "analyses")
    assert groups == [(240, 1), (24 * 60, 28)]
    sizes = {(r.gpus, r.cpus, r.mem_mb) for r in requests if r.name == "analyses"}
    assert sizes == {(1, 4, 32000)}
    assert all(r.gpus <= 1 and r.cpus <= 8 and r.mem_mb <= 64000 for r in requests)
    assert {r.name for r in requests if r.gpus} == {
        "train_autoencoder", "train_score", "encode", "analyses"}  # fmt: skip
    assert not {"download_era5", "download_cpc", "download_olr", "extract_olr",
                "same_analysis"} & set(by_name)  # fmt: skip
    assert "| analyses (group of 6 assimilate) | 28 | gpu | 4 | 32000 | 1 | 1440 |" in table(
        requests
    )
