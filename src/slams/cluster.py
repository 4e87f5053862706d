"""What each Slurm job of a run asks for, computed from Snakemake's dry run.

    python -m slams.cluster [snakemake options]    # e.g. --configfile presets/smoke.yaml
    python -m slams.cluster --docs                 # rewrite docs/cluster.md's table

runs `snakemake -n --profile slurm --cores 8 ...` and prints one row per kind of Slurm job
(a rule, or a group job), with what `sbatch` gets: partition, CPUs (`--cpus-per-task`: the
rule's threads), memory (`--mem`), GPUs (`--gpus`) and time limit (`-t`). Group jobs are sized
by Snakemake's own rule (snakemake.resources.GroupResources.basic_layered): the jobs are
packed into layers that fit the run's `--resources` and `--cores`, a layer's jobs run side by
side, the group asks for its widest layer and the sum of the layers' runtimes. A group job's
row is named by its group (`analyses` for the group jobs `analyses-0`, `analyses-1`, ...: see
:func:`balanced_groups`). The test against a real Slurm controller (tests/cluster/test_slurm.py)
checks these rows against what `scontrol` shows.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from slams.paths import PROJECT_ROOT as ROOT

# the site flag of a cluster without conda: no rule declares modules, so nothing is deployed
NO_CONDA = ("--sdm", "env-modules")
GROUP_INDEX = re.compile(r"-(\d+)$")  # the index a group job's id ends with: analyses-3


@dataclass(frozen=True)
class Request:
    """What one Slurm job asks for."""

    name: str  # the rule, or the group's id
    partition: str
    cpus: int
    mem_mb: int
    gpus: int
    runtime_min: int
    members: str = ""  # a group job's: e.g. "6 assimilate" (scontrol does not show it)


@dataclass
class DryJob:
    rule: str
    local: bool
    threads: int
    resources: dict[str, int | str]
    group: tuple[int, str] | None  # the group block it was listed in: (index, group id)


def balanced_groups(items: Sequence[Hashable], largest: int) -> dict[Hashable, int]:
    """Each of ``items`` -> the index of its group: ``ceil(n / largest)`` groups of consecutive
    items whose sizes differ by at most one, so none is a remainder (Snakemake's
    ``group-components`` alone cuts 13 jobs into 6 + 6 + 1; these are 5 + 4 + 4)."""
    if largest < 1:
        raise ValueError(f"a group holds at least one job, got largest={largest}")
    count = -(-len(items) // largest)
    return {item: i * count // len(items) for i, item in enumerate(items)}


def group_id(name: str, index: int) -> str:
    """The id of group job ``index`` of group ``name`` (the profile's ``group-components`` key)."""
    return f"{name}-{index}"


def group_name(groupid: str) -> str:
    """The group a group job's id belongs to: ``analyses`` for ``analyses-3``."""
    return GROUP_INDEX.sub("", groupid)


def rule_blocks(rules_dir: Path = ROOT / "workflow" / "rules"):
    """``(name, body)`` of every rule in the workflow's rule files, the body as written."""
    for rules in sorted(rules_dir.glob("*.smk")):
        yield from re.findall(r"\n\s*rule (\w+):(.*?)(?=\n\s*rule \w+:|\Z)",
                              rules.read_text(), flags=re.S)  # fmt: skip


def local_rules(rules_dir: Path = ROOT / "workflow" / "rules") -> set[str]:
    """The rules marked `localrule: True` (a dry run does not say which they are)."""
    return {name for name, body in rule_blocks(rules_dir)
            if re.search(r"^\s*localrule: True", body, flags=re.M)}  # fmt: skip


def parse_dry_run(text: str) -> list[DryJob]:
    """Every job of `snakemake -n` output, with its threads, resources and group block."""
    local = local_rules()
    jobs: list[DryJob] = []
    group: tuple[int, str] | None = None
    groups = -1
    for line in text.splitlines():
        header = re.search(r"\] Group job (\S+) \(jobs in lexicogr\. order\):", line)
        if header:
            groups += 1
            group = (groups, header.group(1))
            continue
        match = re.fullmatch(r"( *)(local)?rule (\w+):", line)
        if match:
            indented = len(match.group(1)) > 0
            if not indented:
                group = None
            rule = match.group(3)
            jobs.append(DryJob(rule, bool(match.group(2)) or rule in local, 1, {}, group))
            continue
        if not jobs:
            continue
        entry = re.fullmatch(r" +(threads|resources): (.*)", line)
        if entry and entry.group(1) == "threads":
            jobs[-1].threads = int(entry.group(2))
        elif entry:
            for item in entry.group(2).split(", "):
                key, _, value = item.partition("=")
                jobs[-1].resources[key] = int(value) if value.isdigit() else value
    return jobs


class _Limits:
    """The constraints object GroupResources expects: `.get(name).value`, None = unlimited."""

    def __init__(self, limits: dict[str, int]):
        self.limits = limits

    def get(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(value=self.limits.get(name))


SIZED = ("mem_mb", "gpu", "runtime", "cpus_per_task")  # what sbatch gets, besides threads


def _scheduled(job: DryJob) -> dict[str, int | str]:
    numbers = {k: v for k, v in job.resources.items() if isinstance(v, int) and k in SIZED}
    return {**numbers, "_cores": job.threads,
            "slurm_partition": job.resources.get("slurm_partition", "")}  # fmt: skip


def _request(name: str, resources: dict[str, int | str], members: str = "") -> Request:
    return Request(
        name=name,
        partition=str(resources.get("slurm_partition", "")),
        cpus=int(resources.get("cpus_per_task") or resources["_cores"]),
        mem_mb=int(resources.get("mem_mb", 0)),
        gpus=int(resources.get("gpu", 0)),
        runtime_min=int(resources.get("runtime", 0)),
        members=members,
    )


def slurm_requests(jobs: list[DryJob], cores: int, limits: dict[str, int]) -> Counter:
    """Request -> how many Slurm jobs ask for it (local rules and `all` submit nothing)."""
    from snakemake.resources import GroupResources

    requests: Counter = Counter()
    grouped: dict[tuple[int, str], list[DryJob]] = {}
    for job in jobs:
        if job.local or job.rule == "all":
            continue
        if job.group is None:
            requests[_request(job.rule, _scheduled(job))] += 1
        else:
            grouped.setdefault(job.group, []).append(job)
    for (_, groupid), members in grouped.items():
        fake = [SimpleNamespace(resources=_scheduled(j), pipe_group=None) for j in members]
        sized = GroupResources.basic_layered(
            toposorted_jobs=[fake],  # an analysis never needs another one of its group
            constraints=_Limits({**limits, "_cores": cores}),
            run_local=False,
            additive_resources=["runtime"],
            sortby=["runtime"],
        )
        rules = "+".join(sorted({j.rule for j in members}))
        requests[_request(group_name(groupid), sized, f"{len(members)} {rules}")] += 1
    return requests


def table(requests: Counter) -> str:
    rows = ["| Slurm job | jobs | partition | CPUs | memory (MB) | GPUs | time limit (min) |",
            "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for request, count in sorted(requests.items(), key=lambda item: item[0].name):
        name = f"{request.name} (group of {request.members})" if request.members else request.name
        rows.append(f"| {name} | {count} | {request.partition} | {request.cpus} | "
                    f"{request.mem_mb} | {request.gpus} | {request.runtime_min} |")  # fmt: skip
    return "\n".join(rows)


def profile_limits(profile: Path) -> dict[str, int]:
    """The profile's `resources` (Snakemake's --resources), e.g. gpu=1."""
    import yaml

    settings = yaml.safe_load((profile / "config.yaml").read_text())
    pairs = (item.split("=") for item in settings.get("resources", []))
    return {name.strip(): int(value) for name, value in pairs}


def dry_run(args: list[str], cores: int = 8, profile: Path = ROOT / "slurm",
            workdir: Path | None = None) -> str:  # fmt: skip
    # the caller's arguments first: a target after an option of several values would be
    # taken for one of them
    command = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", *args,
               "--cores", str(cores), "--profile", str(profile), *NO_CONDA]  # fmt: skip
    if workdir is not None:
        command += ["--directory", str(workdir)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=workdir or ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"snakemake -n failed: {(done.stderr or done.stdout)[-2000:]}")
    return done.stdout


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    profile = ROOT / "slurm"
    docs = "--docs" in argv  # docs/cluster.md: config.yaml's jobs
    text = dry_run([a for a in argv if a != "--docs"], profile=profile)
    rows = table(slurm_requests(parse_dry_run(text), 8, profile_limits(profile)))
    if docs:
        from slams.docgen import write_block

        write_block(ROOT / "docs/cluster.md", "python -m slams.cluster", rows)
    print(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
