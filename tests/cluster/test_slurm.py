"""`snakemake --profile slurm`, run for real against a single-node Slurm (tests/cluster/harness.py).

The smoke preset, cut to a lean subset of its methods and protocols (four methods under
`physical`: pixel, latent-none, oi, climatology; the whole chain from the synthetic world to
scores.csv), runs through the project's own profile with GPU requests on, and only the flags
that a site without conda or an accounting database needs. Its 8 diffusion analyses go to the
gpu partition in 2 group jobs of 4, its 8 classical ones (oi, climatology) to the cpu partition
without a GPU, one job each. The flags:

- `--sdm env-modules`: no conda here (no rule declares modules, so nothing is deployed);
- `--slurm-status-command squeue` and `--slurm-no-account`: no slurmdbd, so `sacct` knows no
  job and there are no accounts;
- `--slurm-init-seconds-before-status-checks 2`, for speed only (the default waits 40 s), and
  `--slurm-keep-successful-logs` on the lean run, whose group jobs' logs the test reads.

Then a training job is cancelled mid-run, as a preempted GPU node would be, and the profile's
retry must resume it to the weights of an uninterrupted run; and the download rules, against a
local HTTP server, must stay on the submitting node.
"""

import dataclasses
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from harness import ClusterUnavailable, SlurmCluster
from runs import snakemake

from slams.cluster import Request, dry_run, parse_dry_run, profile_limits, slurm_requests

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "slurm"
SITE_FLAGS = ("--sdm", "env-modules", "--slurm-status-command", "squeue", "--slurm-no-account",
              "--slurm-init-seconds-before-status-checks", "2")  # fmt: skip
LEAN = """\
resources: {gpu_rules_use_gpu: true}
autoencoder: {modalities: [none]}
assimilation:
  methods: [pixel, latent-none, oi, climatology]
  protocols: [physical]
"""
SCORES = "results/smoke/scores.csv"
GPU_RULES = {"train_autoencoder", "train_score", "encode", "assimilate"}
GROUPS = {"analyses": "assimilate", "classical": "assimilate_classical"}  # group -> its rule
CLASSICAL = re.compile(r"rule_assimilate_classical_wildcards_physical_(oi|climatology)_")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    except ClusterUnavailable as error:
        pytest.skip(f"no Slurm cluster here: {error}")
    yield cluster
    cluster.stop()


def profile_run(cluster, workdir: Path, *args: str, timeout: float = 900):
    started = time.monotonic()
    result = snakemake(ROOT, workdir, *args, "--cores", "8", "--profile", str(PROFILE),
                       *SITE_FLAGS, env=cluster.env, timeout=timeout)  # fmt: skip
    result.seconds = time.monotonic() - started
    return result


def _minutes(limit: str) -> int:
    days, _, clock = limit.rpartition("-")
    hours, minutes, seconds = (int(x) for x in clock.split(":"))
    return (int(days or 0) * 24 + hours) * 60 + minutes + (seconds > 0)


def _mb(memory: str) -> int:
    value, unit = float(memory[:-1]), memory[-1]
    return int(value * {"M": 1, "G": 1024, "T": 1024 * 1024}[unit])


def group_of(job: dict[str, str]) -> str | None:
    """The group of a group job (the plugin's comment: rule_<group>-<index>_<rules>), else None."""
    match = re.match(r"rule_(\w+)-\d+_", job["Comment"].strip())
    return match.group(1) if match and match.group(1) in GROUPS else None


def requested(job: dict[str, str], rules: set[str]) -> Request:
    """What a Slurm job asked for, as scontrol shows it (rule or group from the plugin's
    comment)."""
    comment = job["Comment"].strip().removeprefix("rule_")
    name = group_of(job) or max(
        (r for r in rules if comment == r or comment.startswith(f"{r}_")), key=len
    )
    gpus = re.search(r"gres:gpu:(\d+)", job.get("TresPerJob", ""))
    return Request(
        name=name,
        partition=job["Partition"].split()[0],
        cpus=int(job["NumCPUs"]),
        mem_mb=_mb(job["MinMemoryNode"]),
        gpus=int(gpus.group(1)) if gpus else 0,
        runtime_min=_minutes(job["TimeLimit"]),
    )


def scontrol_line(job: dict[str, str]) -> str:
    """The job as `scontrol show job -o` printed it."""
    return " ".join(f"{key}={value}" for key, value in job.items())


def group_sequence(log: str) -> list[str]:
    """The job events in a group job's Slurm log: the group's Snakemake starts a job ('start',
    `rule assimilate:`), runs it through srun in a Snakemake of its own ('step', `localrule
    assimilate:`), and both report it finished ('end', 'end')."""
    events = []
    for line in log.splitlines():
        if re.fullmatch(r"\s*rule \w+:", line):
            events.append("start")
        elif re.fullmatch(r"\s*localrule \w+:", line):
            events.append("step")
        elif line.startswith("Finished jobid"):
            events.append("end")
    return events


@pytest.fixture(scope="module")
def lean_run(cluster, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("slurm-run")
    (workdir / "lean.yaml").write_text(LEAN)
    configs = ("--configfile", str(ROOT / "presets/smoke.yaml"), str(workdir / "lean.yaml"))
    limits = profile_limits(PROFILE)
    predicted = slurm_requests(parse_dry_run(dry_run([SCORES, *configs], workdir=workdir)), 8,
                               limits)  # fmt: skip
    run = profile_run(cluster, workdir, SCORES, *configs, "--slurm-keep-successful-logs")
    return workdir, predicted, run, cluster.jobs()


def test_every_job_asks_for_what_the_profile_and_config_say(lean_run, cluster):
    """Every non-local rule ran as a Slurm job, with the request computed from the dry run
    (slams.cluster); local rules submitted nothing; GPU rules and the diffusion analyses' group
    jobs went to the gpu partition with one GPU, the classical analyses' group jobs to the cpu
    partition without one; no job asked for more than the node has."""
    workdir, predicted, run, jobs = lean_run
    print(f"\nthe lean smoke run took {run.seconds:.0f} s under Slurm, {len(jobs)} Slurm jobs")
    rules = {r.name for r in predicted}
    assert all(job["JobState"] == "COMPLETED" for job in jobs), [
        (job["JobId"], job["Comment"], job["JobState"]) for job in jobs
    ]
    actual = {}
    for job in jobs:
        request = requested(job, rules)
        actual[request] = actual.get(request, 0) + 1
        print(
            f"| {job['JobId']} | {request.name} | {request.partition} | {request.cpus} | "
            f"{request.mem_mb} | {request.gpus} | {request.runtime_min} | {job['JobState']} |"
        )
    # scontrol does not show how many analyses a group job holds: compared without it
    expected = Counter()
    for request, count in predicted.items():
        expected[dataclasses.replace(request, members="")] += count
    assert actual == dict(expected)
    names = {r.name for r in actual}
    assert "same_analysis" not in names  # a local rule: it ran on the submitting node
    assert "assimilate" not in names  # every diffusion analysis in a group job
    assert (workdir / "results/smoke/analysis/physical/pixel/noise-0.1.nc").exists()
    assert {"synthetic", "regrid", "dataset", "evaluate", "analyses",
            "assimilate_classical"} <= names  # fmt: skip
    for request in actual:
        on_gpu = request.name in GPU_RULES | {"analyses"}
        assert request.partition == ("gpu" if on_gpu else "cpu"), request
        assert request.gpus == (1 if on_gpu else 0), request
        assert request.cpus <= cluster.cpus and request.mem_mb <= cluster.memory_mb, request
    # 4 distinct settings: pixel and latent-none 8 analyses, 2 group jobs of 4 that run them one
    # after another on the GPU (the sum of their runtimes); oi and climatology 8 jobs
    groups = {r: n for r, n in actual.items() if r.name == "analyses"}
    assert [(r.cpus, r.mem_mb, r.runtime_min, n) for r, n in groups.items()] == [
        (1, 2000, 4 * 30, 2)]  # fmt: skip
    classical = {r: n for r, n in actual.items() if r.name == "assimilate_classical"}
    assert [(r.cpus, r.mem_mb, r.runtime_min, n) for r, n in classical.items()] == [
        (1, 2000, 60, 8)]  # fmt: skip


def test_classical_analyses_hold_no_gpu_and_no_group_holds_one_analysis(lean_run):
    """The controller's own view: the oi and climatology jobs are on the cpu partition and
    were given no GPU, the diffusion analyses' group jobs are on the gpu partition and were
    given one, and every group job ran 4 analyses (the run has 8: never a group of one).
    What a job was given is JOB_GRES (scontrol --details); TRES lists GPUs only on a cluster
    that accounts for them (AccountingStorageTRES=gres/gpu, which needs slurmdbd), so here it
    must merely not list one where none was asked for."""
    _, _, _, jobs = lean_run
    classical = [job for job in jobs if CLASSICAL.match(job["Comment"].strip())]
    assert sorted(CLASSICAL.match(j["Comment"].strip()).group(1) for j in classical) == [
        "climatology"] * 4 + ["oi"] * 4  # fmt: skip
    for job in classical:
        assert job["Partition"] == "cpu" and job["JOB_GRES"].strip() == "(null)", scontrol_line(job)
        assert "gpu" not in job["TRES"] + job.get("TresPerJob", ""), scontrol_line(job)
    groups = [job for job in jobs if group_of(job)]
    assert [group_of(job) for job in groups] == ["analyses"] * 2
    for job in groups:
        assert job["Partition"] == "gpu" and job["JOB_GRES"].strip() == "gpu:1", scontrol_line(job)
        assert job["TresPerJob"].strip() == "gres:gpu:1", scontrol_line(job)
        log = Path(job["StdOut"]).read_text()
        assert len(re.findall(r"^\s*rule assimilate:$", log, flags=re.M)) == 4, job["JobId"]
    oi = next(job for job in classical if CLASSICAL.match(job["Comment"]).group(1) == "oi")
    print(f"\nan oi job:\n{scontrol_line(oi)}\na group job:\n{scontrol_line(groups[0])}")


def test_group_jobs_run_their_analyses_one_after_another(lean_run):
    _, _, _, jobs = lean_run
    group_logs = [Path(job["StdOut"]) for job in jobs if group_of(job) == "analyses"]
    assert len(group_logs) == 2
    for path in group_logs:
        sequence = group_sequence(path.read_text())
        n = sequence.count("start")
        assert n == 4, path
        # one analysis at a time: each ends before the next starts
        assert sequence == ["start", "step", "end", "end"] * n, (path, sequence)


def test_the_order_check_tells_parallel_analyses_from_sequential_ones():
    one = "rule assimilate:\n    jobid: {0}\nlocalrule assimilate:\nFinished jobid: 0\n"
    sequential = one.format(1) + "Finished jobid: 1\n" + one.format(2) + "Finished jobid: 2\n"
    starts = "rule assimilate:\n" * 2 + "localrule assimilate:\n" * 2
    parallel = starts + "Finished jobid: 0\n" * 2 + "Finished jobid: 1\nFinished jobid: 2\n"
    assert group_sequence(sequential) == ["start", "step", "end", "end"] * 2
    assert group_sequence(parallel) != ["start", "step", "end", "end"] * 2


def test_scores_equal_the_local_runs(lean_run, smoke_run):
    workdir, *_ = lean_run
    keys = ["protocol", "method", "axis", "value", "level", "days", "metric"]
    slurm = pd.read_csv(workdir / SCORES)
    local = pd.read_csv(smoke_run / SCORES)
    assert set(slurm["method"]) == {"pixel", "latent-none", "oi", "climatology"}
    merged = slurm.merge(local, on=keys, how="left", suffixes=("_slurm", "_local"))
    assert len(merged) == len(slurm) > 100 and merged["score_local"].notna().all()
    np.testing.assert_allclose(merged["score_slurm"], merged["score_local"], rtol=1e-5,
                               atol=1e-6)  # fmt: skip


def _slurm_job_of(cluster, comment: str, timeout_s: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job in cluster.jobs(active=True):
            if job["Comment"].strip() == comment and job["JobState"] == "RUNNING":
                return job
        time.sleep(0.2)
    raise AssertionError(f"no running Slurm job {comment} after {timeout_s:.0f} s")


def test_a_cancelled_training_job_is_retried_and_resumes_to_the_same_network(
    lean_run, cluster, tmp_path
):
    """scancel a training job mid-run (a preempted GPU node): the profile's retry resubmits it,
    training resumes from last.pt, and the network equals an uninterrupted run's."""
    workdir, *_ = lean_run
    model = "results/smoke/models/autoencoder-none.pt"
    last = workdir / "results/smoke/models/checkpoints/autoencoder-none/last.pt"
    longer = workdir / "longer.yaml"
    longer.write_text(LEAN.replace("modalities: [none]}", "modalities: [none], epochs: 6}"))
    configs = ("--configfile", str(ROOT / "presets/smoke.yaml"), str(longer))
    shutil.rmtree(last.parent)  # the 1-epoch run's checkpoint (other settings: not resumed)
    before = cluster.jobs()

    result = {}
    runner = threading.Thread(target=lambda: result.update(
        run=profile_run(cluster, workdir, model, *configs, timeout=400)))  # fmt: skip
    runner.start()
    job = _slurm_job_of(cluster, "rule_train_autoencoder_wildcards_none", 240)
    deadline = time.monotonic() + 120
    epoch = 0
    while time.monotonic() < deadline and runner.is_alive():
        if last.exists():
            epoch = torch.load(last, weights_only=False)["epoch"]
            if epoch >= 1:
                break
        time.sleep(0.05)
    subprocess.run(["scancel", job["JobId"]], env=cluster.env, check=True, timeout=30)
    runner.join(timeout=420)
    assert not runner.is_alive()
    assert 1 <= epoch < 6, epoch  # cancelled inside the run, after at least one checkpoint

    mine = [j for j in cluster.jobs() if j not in before
            and j["Comment"].strip() == "rule_train_autoencoder_wildcards_none"]  # fmt: skip
    assert [j["JobState"] for j in sorted(mine, key=lambda j: int(j["JobId"]))] == [
        "CANCELLED", "COMPLETED"]  # fmt: skip
    log = (workdir / "results/smoke/logs/train_autoencoder/none.log").read_text()
    assert re.search(r"autoencoder-none: resuming after epoch [1-5] from ", log), log[-2000:]
    resumed = torch.load(workdir / model, weights_only=False)

    # the same training, uninterrupted, by the local executor
    shutil.rmtree(last.parent)
    snakemake(ROOT, workdir, model, "--cores", "1", "--forcerun", "train_autoencoder",
              *configs)  # fmt: skip
    uninterrupted = torch.load(workdir / model, weights_only=False)
    assert "resuming" not in (workdir / "results/smoke/logs/train_autoencoder/none.log").read_text()
    assert resumed["state_dict"].keys() == uninterrupted["state_dict"].keys()
    for name, value in uninterrupted["state_dict"].items():
        assert torch.equal(resumed["state_dict"][name], value), name


def test_download_rules_stay_on_the_submitting_node(cluster, tmp_path):
    """CPC and OLR from a local HTTP server (the real formats): the downloads are local rules,
    the regridding of what they fetched is a Slurm job."""
    from formats import write_cpc, write_olr

    served = tmp_path / "served"
    served.mkdir()
    write_cpc(served / "precip.2001.nc", pd.date_range("2001-01-01", periods=3))
    write_olr(served / "olr.day.mean.nc", pd.date_range("2000-12-30", "2002-01-02"))
    handler = partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "real.yaml").write_text(
        "name: realtest\n"
        "data: {dataset: realtest, years: [2000, 2002], regrid_backend: builtin}\n"
        "split: {train: [2000, 2000], validation: [2001, 2001], test: [2002, 2002]}\n"
        f"download: {{cpc: {{url: '{base}/precip.{{year}}.nc'}}, "
        f"olr: {{url: '{base}/olr.day.mean.nc'}}}}\n"
        # the files served here are a few MB, not the real sources' sizes the preflight plans
        # for (three years of ERA5 at 0.25 degrees would need 72 GB of disk)
        "preflight: false\n"
    )
    targets = [f"resources/realtest/regridded-1.5deg/{s}/2001.nc" for s in ("cpc", "olr")]
    before = {job["JobId"] for job in cluster.jobs()}
    try:
        run = profile_run(cluster, workdir, *targets, "--configfile", str(workdir / "real.yaml"))
    finally:
        server.shutdown()
    assert all((workdir / t).exists() for t in targets)
    new = [job for job in cluster.jobs() if job["JobId"] not in before]
    comments = sorted(job["Comment"].strip() for job in new)
    assert comments == ["rule_regrid_wildcards_cpc_2001", "rule_regrid_wildcards_olr_2001"]
    assert all(job["JobState"] == "COMPLETED" for job in new)
    # the local rules ran in the submitting Snakemake itself
    assert re.search(r"localrule download_cpc:", run.stdout + run.stderr)
    assert re.search(r"localrule extract_olr:", run.stdout + run.stderr)
