"""The log tells the truth after any interruption (issue 12, item 6): metrics.jsonl has every step once, with
the uninterrupted run's values, after a crash or a kill -9 anywhere, including inside the first checkpoint."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
from helpers_fs import cli_env, run_cli

from rankscope.training import checkpoint as ckpt
from rankscope.training.logging import read_metrics
from rankscope.training.loop import train


def _log(run_dir):
    """(kind, step, value) of every record: the loss of train records, the validation loss of eval ones."""
    return [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in read_metrics(run_dir)]


def _config(make_smoke_config, name, **kw):
    # Logs every 3 updates, checkpoints every 4: a resume from step 4 starts inside a loss-averaging window.
    base = dict(steps=8, log_every=3, save_every=4, eval_every=4)
    base.update(kw)
    return make_smoke_config(name, **base)


def test_resume_inside_a_logging_window_logs_the_straight_values(make_smoke_config, one_thread):
    straight = _config(make_smoke_config, "straight")
    train(straight, progress=False)
    split = _config(make_smoke_config, "split")
    train(split, progress=False, stop_after=5)  # step 5 is logged nowhere but was trained past checkpoint 4
    train(split, resume=True, progress=False)
    assert _log(split.run_dir) == _log(straight.run_dir)
    steps = [s for k, s, _ in _log(split.run_dir) if k == "train"]
    assert steps == [3, 6, 8]


def test_crash_inside_the_first_checkpoint_write(make_smoke_config, monkeypatch, one_thread):
    """A crash half-way through writing checkpoint 4 (model file written, the rest not): the resume restarts
    from step 0, drops the 4 steps logged before, removes the temp folder, and logs the straight values."""
    straight = _config(make_smoke_config, "straight")
    train(straight, progress=False)
    crashy = _config(make_smoke_config, "crashy")
    calls = []
    real = ckpt.save_file

    def dying_save_file(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a signal would, mid-write
        return real(tensors, path, metadata)

    monkeypatch.setattr(ckpt, "save_file", dying_save_file)
    with pytest.raises(KeyboardInterrupt):
        train(crashy, progress=False)
    monkeypatch.setattr(ckpt, "save_file", real)
    temp = [p.name for p in (crashy.run_dir / "checkpoints").iterdir()]
    assert ckpt.list_checkpoints(crashy.run_dir) == [] and len(temp) == 1 and temp[0].startswith(".tmp_step_000004")
    assert [s for k, s, _ in _log(crashy.run_dir)] == [3, 4]  # logged before the checkpoint
    train(crashy, resume=True, progress=False)
    assert _log(crashy.run_dir) == _log(straight.run_dir)
    assert sorted(p.name for p in (crashy.run_dir / "checkpoints").iterdir()) == ["step_000004", "step_000008"]


def test_cut_last_line_is_dropped(make_smoke_config, one_thread):
    """A kill during a log write can leave half a line; the resume must neither crash on it nor keep it."""
    cfg = _config(make_smoke_config, "cut")
    train(cfg, progress=False, stop_after=4)
    with (cfg.run_dir / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "step": 6, "lo')
    train(cfg, resume=True, progress=False)
    assert [s for _, s, _ in _log(cfg.run_dir)] == [3, 4, 6, 8, 8]


def test_stale_temp_folders_are_cleaned_on_resume(make_smoke_config, one_thread):
    cfg = _config(make_smoke_config, "stale")
    train(cfg, progress=False, stop_after=4)
    root = cfg.run_dir / "checkpoints"
    (root / ".tmp_step_000008_999999").mkdir()
    # Killed between the two renames of a re-save: only the .old_ copy of step 4 exists.
    (root / "step_000004").rename(root / ".old_step_000004_999999")
    (cfg.run_dir / ".meta.json.999999.tmp").write_text("{")
    assert ckpt.remove_stale_temp(cfg.run_dir) == [".meta.json.999999.tmp", ".old_step_000004_999999",
                                                   ".tmp_step_000008_999999"]
    assert not (cfg.run_dir / ".meta.json.999999.tmp").exists()
    assert sorted(p.name for p in root.iterdir()) == ["step_000004"]


# --- kill -9 through the console script ------------------------------------------------------------

def _start(config_path, name, pause_in_checkpoint: bool):
    """``rankscope train --resume`` in a subprocess; optionally pausing inside its first checkpoint write
    (after the model file) so that the test can kill it there."""
    code = textwrap.dedent(f"""
        import sys, time
        from rankscope.training import checkpoint as ckpt
        if {pause_in_checkpoint!r}:
            real, calls = ckpt.save_file, []
            def paused(tensors, path, metadata=None):
                calls.append(path)
                if len(calls) == 2:
                    print("inside-checkpoint", flush=True)
                    time.sleep(300)
                return real(tensors, path, metadata)
            ckpt.save_file = paused
        from rankscope.cli import main
        main(["train", "--config", {str(config_path)!r}, "--name", {name!r}, "--resume", "--quiet"])
    """)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env())


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _check_log(run_dir, straight_log):
    log = _log(run_dir)
    keys = [(k, s) for k, s, _ in log]
    assert len(keys) == len(set(keys)), f"duplicate steps: {keys}"
    assert log == straight_log


def test_kill_9_inside_the_first_checkpoint_then_resume(make_smoke_config, tmp_path, one_thread):
    straight = _config(make_smoke_config, "straight")
    train(straight, progress=False)
    config = tmp_path / "run.json"
    config.write_text(json.dumps(straight.to_dict()))
    proc = _start(config, "killed", pause_in_checkpoint=True)
    assert proc.stdout.readline().strip() == "inside-checkpoint", proc.stderr.read()
    _kill(proc)
    run = tmp_path / "killed"
    assert ckpt.list_checkpoints(run) == [] and (run / "train.lock").exists()
    result = run_cli("train", "--config", config, "--name", "killed", "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    _check_log(run, _log(straight.run_dir))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_000004", "step_000008"]


def _last_logged_step(run_dir) -> int:
    try:
        return max((s for _, s, _ in _log(run_dir)), default=0)
    except (OSError, ValueError):  # a line being written
        return 0


@pytest.mark.slow
def test_kill_9_at_random_moments(make_smoke_config, tmp_path, one_thread):
    """Five kills at random moments of training (a random logged step, then up to 0.3 s more: often inside
    a checkpoint write), each followed by a resume; the final log equals the uninterrupted run's."""
    straight = make_smoke_config("straight", steps=60, log_every=3, save_every=5, eval_every=10)
    train(straight, progress=False)
    config = tmp_path / "run.json"
    config.write_text(json.dumps(replace(straight, name="killed").to_dict()))
    run, rng, kills = tmp_path / "killed", random.Random(12), []
    for _ in range(5):
        last = _last_logged_step(run)
        if last >= 54:
            break
        target = rng.randint(last + 1, min(last + 12, 57))
        proc = _start(config, "killed", pause_in_checkpoint=False)
        while proc.poll() is None and _last_logged_step(run) < target:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:
            break
        _kill(proc)
        kills.append((_last_logged_step(run), ckpt.list_checkpoints(run)[-1:]))
    print("kills (last logged step, last checkpoint):", kills)
    assert len(kills) >= 4, kills
    result = run_cli("train", "--config", config, "--name", "killed", "--resume", "--quiet")
    assert result.returncode == 0, result.stderr
    _check_log(run, _log(straight.run_dir))
