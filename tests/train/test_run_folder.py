"""RunFolder (issue 15): the one owner of a run's file names and of the checks on its folder."""

from __future__ import annotations

import os

import pytest

from rnnkit.train import RunFolder

from .test_trainer import trainer_for


def touch(path, mtime=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def test_names_of_everything_a_run_writes(tmp_path):
    run = RunFolder(tmp_path / "r")
    assert (run.latest.name, run.best.name, run.config.name, run.curves.name) == (
        "latest.safetensors",
        "best.safetensors",
        "config.json",
        "curves.png",
    )
    assert (
        run.log("csv").name == "metrics.csv"
        and run.kept(400, "bpc", 2.1134).name == "step-000400-bpc-2.113.safetensors"
    )
    run.path.mkdir()
    assert RunFolder.of(run.latest) == run and RunFolder.of(run.path) == run


def test_a_new_run_takes_the_first_free_folder_and_resume_the_newest(tmp_path):
    root = tmp_path / "runs"
    assert RunFolder.free("digits", root).path == root / "digits"
    touch(root / "digits" / "latest.safetensors", mtime=2_000)
    touch(root / "digits-2" / "latest.safetensors", mtime=3_000)
    touch(root / "digits-3" / "best.safetensors", mtime=4_000)  # no latest: nothing to resume
    touch(root / "digitsx" / "latest.safetensors", mtime=5_000)  # another name
    assert RunFolder.free("digits", root).path == root / "digits-4"
    assert [r.path.name for r in RunFolder.runs_of("digits", root)] == ["digits", "digits-2"]
    assert RunFolder.to_resume("digits", root).path == root / "digits-2"
    assert RunFolder.choose("digits", resume=True, root=root).path == root / "digits-2"
    with pytest.raises(FileNotFoundError, match="no 'charlm' run to resume"):
        RunFolder.to_resume("charlm", root)


def test_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(ValueError, match="out must be a folder"):
        RunFolder(tmp_path / "afile").check_writable()
    with pytest.raises(NotADirectoryError, match="is a file"):
        RunFolder(tmp_path / "afile" / "run").check_writable()
    RunFolder(tmp_path / "new" / "deeper").check_writable()  # creatable: fine, and nothing is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_bound_methods_object_state_still_saves_with_a_deprecation_warning(tmp_path):
    class Stateful:
        def __init__(self, step):
            self.inner, self.calls = step, 0

        def step(self, model, batch):
            self.calls += 1
            return self.inner(model, batch)

        def state_dict(self):
            return {"calls": self.calls}

        def load_state_dict(self, saved):
            self.calls = saved["calls"]

    trainer = trainer_for(tmp_path, max_steps=10)
    owner = Stateful(trainer.step_fn)
    trainer.step_fn = owner.step  # the old way: the trainer reached the object through the method
    with pytest.warns(DeprecationWarning, match="pass the stateful object itself as step_fn"):
        trainer.fit()
    again = trainer_for(tmp_path, max_steps=12)
    other = Stateful(again.step_fn)
    again.step_fn = other.step
    with pytest.warns(DeprecationWarning):
        again.fit(resume_from=RunFolder(tmp_path).latest)
    assert other.calls == 12
