"""The Slurm harness's own decisions, without starting a cluster: where it cannot run, it says
why in one line (the Slurm tests skip with that reason)."""

import harness
import pytest
from harness import ClusterUnavailable, ensure_installed


def test_not_root_is_a_reason(monkeypatch):
    monkeypatch.setattr(harness.sys, "platform", "linux")
    monkeypatch.setattr(harness, "missing_binaries", lambda: [])
    monkeypatch.setattr(harness.os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterUnavailable, match="need root"):
        ensure_installed()


def test_missing_packages_without_root_or_apt_are_named(monkeypatch):
    monkeypatch.setattr(harness.sys, "platform", "linux")
    monkeypatch.setattr(harness, "missing_binaries", lambda: ["slurmctld", "sbatch"])
    monkeypatch.setattr(harness.os, "geteuid", lambda: 1000)
    with pytest.raises(ClusterUnavailable, match="slurmctld, sbatch missing, and not root"):
        ensure_installed()
    monkeypatch.setattr(harness.os, "geteuid", lambda: 0)
    monkeypatch.setattr(harness.shutil, "which", lambda name: None)
    with pytest.raises(ClusterUnavailable, match="missing, and no apt-get"):
        ensure_installed()


def test_another_clusters_configuration_is_a_reason(monkeypatch, tmp_path):
    system = tmp_path / "slurm.conf"
    system.write_text("ClusterName=site\n")
    monkeypatch.setattr(harness, "ensure_installed", lambda: None)
    monkeypatch.setattr(harness, "SYSTEM_CONF", system)
    with pytest.raises(ClusterUnavailable, match="jobs would read that cluster's configuration"):
        harness.SlurmCluster(tmp_path / "cluster").start()
