"""The local multi-process launcher fails cleanly, and runs take their mesh from the CLI."""

import argparse

import pytest

from experiments import launch_local
from zorro_jax.cli import add_config_args, config_from_args
from zorro_jax.rl.pipeline import RunConfig


def test_launcher_exits_nonzero_with_the_failing_process_lines(tmp_path, capsys, monkeypatch):
    # A module that process 1 cannot import fails at once; process 0 would run for a minute.
    (tmp_path / "slow_or_broken.py").write_text(
        "import os, time\n"
        "if os.environ['ZORRO_PROCESS_ID'] == '1':\n"
        "    raise SystemExit('process one gives up: ' + os.environ['XLA_FLAGS'])\n"
        "time.sleep(60)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    code = launch_local.launch(2, 3, "slow_or_broken", [])
    err = capsys.readouterr().err
    assert code == 1
    assert "process 1 died (exit code 1)" in err
    assert "process one gives up: --xla_force_host_platform_device_count=3" in err


def test_mesh_options_on_the_command_line():
    ap = argparse.ArgumentParser()
    add_config_args(ap, RunConfig)
    cfg = config_from_args(RunConfig, ap.parse_args(["--mesh.data", "2", "--mesh.fsdp", "-1", "--mesh.tensor", "2"]))
    assert cfg.mesh.sizes == (2, -1, 2) and cfg.mesh.resolve(8) == (2, 2, 2)
    assert RunConfig().mesh.single_device and not cfg.mesh.single_device
    with pytest.raises(ValueError, match="at most one mesh axis"):
        config_from_args(RunConfig, ap.parse_args(["--mesh.data", "-1", "--mesh.fsdp", "-1"]))
