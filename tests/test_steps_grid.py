"""studies/steps_grid.sh's designs: which steps.py measurements each one runs (a stand-in
for Python records the command lines; steps.py itself is tested in test_steps_*.py)."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(tmp_path, design: str, **env: str) -> list[list[str]]:
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PYTHON": str(fake), "DESIGN": design, **env}
    subprocess.run(["bash", str(ROOT / "studies/steps_grid.sh"), "RUN", str(tmp_path / "out")],
                   check=True, env=env, timeout=60)  # fmt: skip
    return [line.split() for line in log.read_text().splitlines()]


def values(command: list[str], flag: str) -> list[str]:
    """The values that follow ``flag`` in ``command``, up to the next flag."""
    start = command.index(flag) + 1
    end = next((i for i in range(start, len(command)) if command[i].startswith("--")), None)
    return command[start:end]


def test_the_seeds_design_measures_each_candidate_over_three_seeds(tmp_path):
    commands = _commands(tmp_path, "seeds", METHODS="pixel latent-none")
    measured = [c for c in commands if "--from-csv" not in c]
    assert measured and all(c[1] == "RUN" for c in measured)
    for method in ("pixel", "latent-none"):
        mine = [c for c in measured if c[c.index("--methods") + 1] == method]
        assert len(mine) == 11, method  # 6 blocks of the second round, 5 of the third
        # the candidates config.yaml's sampler_by_space picked from are among them
        picks = {
            (c[c.index("--solvers") + 1], c[c.index("--steps") + 1])
            for c in mine
            if "--tau-reference-steps" in c and "8" in c[c.index("--tau-reference-steps") :]
        }
        assert {("dpm2m", "16"), ("ddim", "16")} <= picks, method
        for c in mine:
            assert c[c.index("--seeds") + 1 : c.index("--seeds") + 4] == ["0", "1", "2"]
            assert c[c.index("--csv") + 1].endswith(f"out/{method}-seeds.csv")
            assert "--resume" in c and "512" not in c  # resumable, and no paper sampler
    # and no other method, nor the paper's 512 + 1 block
    assert {c[c.index("--methods") + 1] for c in measured} == {"pixel", "latent-none"}


def test_the_default_design_ends_with_the_papers_sampler(tmp_path):
    """Without METHODS: every method, then the paper's 512 + 1, then the table."""
    commands = _commands(tmp_path, "grid")
    paper = [c for c in commands if "latent-none-paper.csv" in " ".join(c)]
    assert len(paper) == 1 and "512" in paper[0]
    assert "--from-csv" in commands[-1]


def test_the_seeds_design_over_every_method_leaves_out_the_papers_sampler(tmp_path):
    commands = _commands(tmp_path, "seeds")
    assert not [c for c in commands if "latent-none-paper.csv" in " ".join(c)]
    methods = {c[c.index("--methods") + 1] for c in commands if "--methods" in c}
    assert methods == {"pixel", "latent-none", "latent-both"}
    assert "--from-csv" in commands[-1]


def test_the_safe_design_measures_the_grid_and_every_step_at_the_same_langevin_time(tmp_path):
    """DESIGN=safe: 16, 64 and 256 steps, 2 corrections where sigma >= 0.3, with the Langevin
    time of 40 steps (the exact goal's) and 16 (config.yaml's) on the 16-step grid, and of 40
    after every step; no paper sampler."""
    commands = _commands(tmp_path, "safe", METHODS="pixel")
    measured = [c for c in commands if "--from-csv" not in c]
    assert len(measured) == 2 and not [c for c in commands if "512" in c]

    grid, every = measured
    for c in measured:
        assert values(c, "--steps") == ["16", "64", "256"]
        assert values(c, "--corrections") == ["2"]
        assert values(c, "--correction-min-sigma") == ["0.3"]
        assert values(c, "--csv")[0].endswith("out/pixel-safe.csv") and "--resume" in c
    assert values(grid, "--correction-grid-steps") == ["16"]
    assert values(grid, "--tau-reference-steps") == ["40", "16"]
    assert values(every, "--correction-grid-steps") == ["0"]
    assert values(every, "--tau-reference-steps") == ["40"]


def test_the_final_design_measures_config_picks_and_their_rivals_over_six_seeds(tmp_path):
    """DESIGN=final: each network's pick in config.yaml and the rivals it was chosen over, over
    seeds 0-5, in one resumable CSV per method; no paper sampler."""
    commands = _commands(tmp_path, "final", METHODS="latent-both")
    measured = [c for c in commands if "--from-csv" not in c]
    assert len(measured) == 6 and not [c for c in commands if "512" in c]

    samplers = set()
    for c in measured:
        assert values(c, "--seeds") == ["0", "1", "2", "3", "4", "5"]
        assert values(c, "--csv")[0].endswith("out/latent-both-final.csv") and "--resume" in c
        assert values(c, "--guidance") == ["sda"]
        sigma = values(c, "--correction-min-sigma") if "--correction-min-sigma" in c else ["0"]
        taus = values(c, "--tau-reference-steps") if "--tau-reference-steps" in c else ["-"]
        for corrections in values(c, "--corrections"):
            for tau in taus:
                samplers.add((values(c, "--solvers")[0], values(c, "--steps")[0], corrections,
                              sigma[0], tau))  # fmt: skip
    # config.yaml's three picks (shared, pixel, latent-none) are among the candidates
    assert {("ddim", "16", "2", "0.3", "16"), ("dpm2m", "16", "1", "0", "8"),
            ("ddim", "16", "1", "0", "8")} <= samplers  # fmt: skip
    assert len(samplers) == 10
