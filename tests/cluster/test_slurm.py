"""`snakemake --profile slurm`, run for real against a single-node Slurm (tests/cluster/harness.py).

The smoke preset, cut to a lean subset of its methods and protocols (four methods under
`physical`: pixel, latent-none, oi, climatology; the whole chain from the synthetic world to
scores.csv), runs through the project's own profile with GPU requests on, and only the flags
that a site without conda or an accounting database needs:

- `--sdm env-modules`: no conda here (no rule declares modules, so nothing is deployed);
- `--slurm-status-command squeue` and `--slurm-no-account`: no slurmdbd, so `sacct` knows no
  job and there are no accounts;
- `--slurm-init-seconds-before-status-checks 2`, for speed only (the default waits 40 s), and
  `--slurm-keep-successful-logs` on the lean run, whose group jobs' logs the test reads.

Then a training job is cancelled mid-run, as a preempted GPU node would be, and the profile's
retry must resume it to the weights of an uninterrupted run; and the download rules, against a
local HTTP server, must stay on the submitting node.
"""

import re
import shutil
import subprocess
import threading
import time
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


def requested(job: dict[str, str], rules: set[str]) -> Request:
    """What a Slurm job asked for, as scontrol shows it (rule from the plugin's comment)."""
    comment = job["Comment"].strip().removeprefix("rule_")
    name = max((r for r in rules if comment == r or comment.startswith(f"{r}_")), key=len)
    gpus = re.search(r"gres:gpu:(\d+)", job.get("TresPerJob", ""))
    return Request(
        name=name,
        partition=job["Partition"].split()[0],
        cpus=int(job["NumCPUs"]),
        mem_mb=_mb(job["MinMemoryNode"]),
        gpus=int(gpus.group(1)) if gpus else 0,
        runtime_min=_minutes(job["TimeLimit"]),
    )


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
    (slams.cluster); local rules submitted nothing; GPU rules went to the gpu partition with
    one GPU; no job asked for more than the node has."""
    workdir, predicted, run, jobs = lean_run
    print(f"\nthe lean smoke run took {run.seconds:.0f} s under Slurm, {len(jobs)} Slurm jobs")
    rules = {r.name for r in predicted} | {"analyses"}
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
    assert actual == dict(predicted)
    names = {r.name for r in actual}
    assert "same_analysis" not in names  # a local rule: it ran on the submitting node
    assert (workdir / "results/smoke/analysis/physical/pixel/noise-0.1.nc").exists()
    assert {"synthetic", "regrid", "dataset", "evaluate", "analyses"} <= names
    for request in actual:
        on_gpu = request.name in GPU_RULES | {"analyses"}
        assert request.partition == ("gpu" if on_gpu else "cpu"), request
        assert request.gpus == (1 if on_gpu else 0), request
        assert request.cpus <= cluster.cpus and request.mem_mb <= cluster.memory_mb, request
    groups = [r for r in actual if r.name == "analyses"]
    # 4 methods x 4 distinct settings = 16 analyses, 6 to a group job: 6 + 6 + 4
    assert sum(actual[r] for r in groups) == 3
    assert {r.runtime_min for r in groups} == {6 * 30, 4 * 30}  # the sum of their runtimes
    assert {(r.cpus, r.mem_mb) for r in groups} == {(1, 2000)}  # the largest, not the sum


def test_group_jobs_run_their_analyses_one_after_another(lean_run):
    _, _, _, jobs = lean_run
    group_logs = [Path(job["StdOut"]) for job in jobs if job["Comment"].startswith("rule_analyses")]
    assert len(group_logs) == 3
    for path in group_logs:
        sequence = group_sequence(path.read_text())
        n = sequence.count("start")
        assert n in (4, 6), path
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
