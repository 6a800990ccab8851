"""Long runs a user can watch, trust and pick up again (issue 19): progress lines where no bar
can be drawn, resume that says what it does, damaged files named in one line, and a pipeline
killed anywhere that resumes to the same answer."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tasks import run_task
from tests.conftest import FAST, GAN_FAST, ROOT, compose, run_py
from xfergan.errors import UserError
from xfergan.io import sha256_file

# progress on (FAST turns it off): these tests read the progress lines
SMALL = [a for a in FAST if not a.startswith("trainer.enable_progress_bar=")] + [
    "trainer.enable_progress_bar=true",
    "logger=none",
    "dataset.n_per_class=3",
    "dataset.val_per_class=2",
]


def test_a_non_interactive_pipeline_says_where_it_is(tmp_path):
    """No terminal (a pipe, as under CI, SLURM or nohup): stage k/N, steps done/total, steps/s
    and ETA while training, one line per finished stage, and the pipeline's own count."""
    r = run_py(
        SMALL
        + [
            "task=pipeline",
            "pipeline.arms=[real,teacher]",
            "+pipeline.teacher_overrides={trainer.max_steps: 6}",
            "trainer.max_steps=8",
            f"hydra.run.dir={tmp_path}",
        ],
        env={"XFERGAN_PROGRESS_EVERY_S": "0"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "stage 1/2 classify_real: started" in out
    assert re.search(
        r"stage 1/2 classify_real: \d/8 steps \(\d+%\), [\d.]+ steps/s, ETA \d:\d\d:\d\d", out
    )
    assert re.search(r"stage 1/2 classify_real: done in \d:\d\d:\d\d, test/acc 0\.\d+", out)
    assert re.search(r"pipeline: 1/2 stages done, ETA \d:\d\d:\d\d", out)
    assert re.search(r"stage 2/2 classify_teacher: \d/6 steps", out)
    assert "pipeline: 2/2 stages done, ETA 0:00:00" in out
    assert "it/s]" not in r.stderr  # no bar drawn into a pipe


def test_sweep_jobs_say_which_job_they_are(tmp_path):
    # an objective no job logs (a pipeline's metrics are per arm): only an optimizing sweeper
    # reads it, so the plain grid does not warn about it in every job
    args = ["trainer.max_steps=3", "seed=0,1", "sweep.objective=val/not_logged"]
    r = run_py(
        ["-m"] + SMALL + args + [f"hydra.sweep.dir={tmp_path / 's'}"],
        env={"XFERGAN_PROGRESS_EVERY_S": "0"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[job 1/2]" in r.stdout and "[job 2/2]" in r.stdout
    assert "is not in this job's metrics.json" not in r.stdout + r.stderr
    assert "2 jobs -- 2 ok, 0 failed, 0 missing" in r.stdout


def test_resume_without_a_checkpoint_says_so_and_starts_fresh(tmp_path, caplog):
    caplog.set_level("WARNING")
    m = run_task(compose(SMALL + ["trainer.max_steps=3", "resume=true"], tmp_path / "c"))
    assert m["global_step"] == 3
    assert "has no checkpoints/last.ckpt: starting from scratch" in caplog.text
    caplog.clear()
    g = run_task(
        compose(SMALL + GAN_FAST + ["task=gan", "gan.steps=3", "resume=true"], tmp_path / "g")
    )
    assert g["gan/steps"] == 3 and "starting from scratch" in caplog.text


def test_resume_from_a_checkpoint_of_other_settings_starts_fresh(tmp_path, caplog):
    run_task(compose(SMALL + ["trainer.max_steps=4"], tmp_path))
    caplog.set_level("WARNING")
    m = run_task(compose(SMALL + ["trainer.max_steps=6", "resume=true"], tmp_path))
    assert "was written with other settings" in caplog.text and m["global_step"] == 6


def test_a_damaged_checkpoint_or_metrics_file_is_one_line(tmp_path):
    run_task(compose(SMALL + ["trainer.max_steps=3"], tmp_path / "c"))
    last = tmp_path / "c" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:100])
    with pytest.raises(UserError, match="last.ckpt.*delete it to start this run from scratch"):
        run_task(compose(SMALL + ["trainer.max_steps=3", "resume=true"], tmp_path / "c"))
    (tmp_path / "c" / "metrics.json").write_text('{"status": "ok", "test/ac')
    r = run_py(["task=evaluate", f"run={tmp_path / 'c'}", f"hydra.run.dir={tmp_path / 'e'}"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("xfergan: error:")
    assert "metrics.json is not valid JSON" in r.stderr


def test_a_pipeline_with_a_truncated_stage_file_reruns_that_stage(tmp_path):
    args = SMALL + ["task=pipeline", "pipeline.arms=[real]", "trainer.max_steps=4"]
    first = run_task(compose(args, tmp_path))
    f = tmp_path / "classify_real" / "metrics.json"
    f.write_text(f.read_text()[:40])
    again = run_task(compose(args + ["resume=true"], tmp_path))
    assert again["test/acc_real"] == pytest.approx(first["test/acc_real"], abs=1e-9)
    assert json.loads(f.read_text())["status"] == "ok"


def test_a_finished_stage_whose_output_is_gone_runs_again_on_resume(tmp_path, caplog):
    """synthesize/synthetic.pt deleted after the run: every resume reused the synthesize stage
    on its metrics.json and then failed in the synthetic arm ("does not exist"), for ever. A
    finished stage whose recorded output is gone now runs again, saying so."""
    args = SMALL + GAN_FAST + ["task=pipeline", "pipeline.arms=[real,synthetic]"]
    args += ["pipeline.feature_net=false", "trainer.max_steps=4", "gan.steps=4"]
    args += ["synthesize.n_per_class=20", "pipeline.primary=[]"]
    run_task(compose(args, tmp_path))
    (tmp_path / "synthesize" / "synthetic.pt").unlink()
    with caplog.at_level("WARNING"):
        m = run_task(compose(args + ["resume=true"], tmp_path))
    assert "synthetic.pt is gone: running it again" in caplog.text
    assert (tmp_path / "synthesize" / "synthetic.pt").is_file() and "test/acc_synthetic" in m


def test_a_failing_stage_is_named_with_its_arm(tmp_path):
    args = SMALL + [
        "task=pipeline",
        "pipeline.arms=[real,teacher]",
        "+pipeline.teacher_overrides={model.backbone: no_such_net}",
        "trainer.max_steps=2",
    ]
    with pytest.raises(UserError, match=r"pipeline stage classify_teacher \(arm teacher\) failed"):
        run_task(compose(args, tmp_path))


# ----------------------------------------------------------------------------- kill anywhere
KILL_ARGS = (
    FAST
    + GAN_FAST
    + [
        "logger=none",
        "task=pipeline",
        "pipeline.arms=[real,synthetic,mixed]",
        "pipeline.feature_net=false",
        "dataset.n_per_class=4",
        "dataset.val_per_class=2",
        "trainer.max_steps=72",  # two epochs of 36 (plan_epochs): a checkpoint mid-arm
        "gan.steps=100",  # a checkpoint every 20: time to kill it mid-GAN
        "gan.checkpoint_every_n_steps=20",
        "gan.sample_every_n_steps=1000",
        "synthesize.n_per_class=20",
        "dataset.mix_balance=0.5",
    ]
)


def _table(d):
    t = json.loads((d / "table3.json").read_text())
    return {a: r["test/acc"] for a, r in t["arms"].items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    d = tmp_path_factory.mktemp("kill") / "full"
    run_task(compose(KILL_ARGS, d))  # in this process (no start-up): the same numbers
    return _table(d)


@pytest.mark.parametrize(
    "when",
    [
        "gan/checkpoints/last.ckpt",  # mid-GAN, after its first checkpoint (what resume reads)
        "classify_synthetic/checkpoints/last.ckpt",  # mid-arm, after its first epoch
    ],
)
def test_killed_anywhere_then_resumed_gives_the_same_table(uninterrupted, when, tmp_path):
    d = tmp_path / "run"
    p = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *KILL_ARGS, f"hydra.run.dir={d}"],
        cwd=ROOT,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (d / when).exists() and p.poll() is None:
        time.sleep(0.02)
    assert (d / when).exists(), f"never reached {when}"
    os.killpg(p.pid, signal.SIGKILL)  # kill -9, the whole job
    p.wait(timeout=30)
    assert not (d / "table3.json").exists()
    r = run_py(KILL_ARGS + [f"hydra.run.dir={d}", "resume=true"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert _table(d) == uninterrupted
    # the stage it was killed in counts the fit time of the steps it kept from the first process
    stage = when.split("/")[0]
    m = json.loads((d / stage / "metrics.json").read_text())
    key = "gan/train_s" if stage == "gan" else "train_s"
    assert 0 < m[key + "_before_resume"] < m[key]


def test_resume_follows_the_inputs_content_not_their_paths(tmp_path, caplog):
    """Issue 27.1: a resumed pipeline whose teacher retrained (other steps) rewrites the
    pseudolabelled set; the distill arm then reads the same path with other content, so it must
    start fresh (saying why), not continue its old checkpoint already at its budget."""
    import hashlib

    args = SMALL + [
        "task=pipeline",
        "pipeline.arms=[real,distill_real]",
        "pipeline.teacher_ensemble=[real]",
        "pipeline.feature_net=false",
        "trainer.max_steps=4",
        "synthesize.n_per_class=6",
    ]
    first = run_task(compose(args, tmp_path))
    pseudo = tmp_path / "pseudolabel_real" / "synthetic.pt"
    distill = tmp_path / "classify_distill_real" / "metrics.json"
    sha0 = hashlib.sha256(pseudo.read_bytes()).hexdigest()
    m0 = json.loads(distill.read_text())
    caplog.set_level("WARNING")
    again = run_task(
        compose(
            args + ["resume=true", "+pipeline.arm_overrides.real={trainer.max_steps: 8}"], tmp_path
        )
    )
    assert again["steps_real"] == 8 and first["steps_real"] == 4
    assert hashlib.sha256(pseudo.read_bytes()).hexdigest() != sha0  # the teacher's new labels
    m1 = json.loads(distill.read_text())
    assert "train_s_before_resume" not in m1 and m1["global_step"] == 4  # trained afresh
    assert m1["config_sha256"] != m0["config_sha256"]
    assert "made from other inputs (dataset.synthetic_path: other content now)" in caplog.text
    syn = "dataset.synthetic_path"
    assert m1["inputs_sha256"][syn] != m0["inputs_sha256"][syn]
    # the same command once more: every stage's settings and inputs are the same bytes now
    caplog.clear()
    caplog.set_level("INFO")
    third = run_task(
        compose(
            args + ["resume=true", "+pipeline.arm_overrides.real={trainer.max_steps: 8}"], tmp_path
        )
    )
    assert third["test/acc_distill_real"] == again["test/acc_distill_real"]
    assert "running it again" not in caplog.text and "starting from scratch" not in caplog.text


def _folder_tree(root, per_class=10):
    """A folder dataset: two classes of distinct 8x8 gray PNGs (a split by val/test fraction)."""
    from PIL import Image

    for c, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("L", (8, 8), 20 + 100 * c + i).save(root / name / f"{i:02d}.png")


def test_resume_follows_the_real_images_content_not_their_path(tmp_path, caplog, monkeypatch):
    """Real data were identified by their path alone: relabel images (move them to the other
    class folder) and resume, and the finished stage was reused with its model trained on the
    old labels. The real data's content (the listing's paths, labels, sizes, mtimes; a file's
    bytes for MNIST and MedMNIST) is now an input of every stage: it runs again, saying why,
    and a record made before it (no data digest) is still taken on its settings."""
    import xfergan.runtime as rt

    data = tmp_path / "data"
    _folder_tree(data)
    args = [a for a in SMALL if "val_per_class" not in a] + [
        "dataset=folder",
        f"dataset.root={data}",
        "dataset.val_fraction=0.3",
        "dataset.test_fraction=0.3",
        "dataset.augment.enabled=false",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "task=pipeline",
        "pipeline.arms=[real]",
        "pipeline.feature_net=false",
        "trainer.max_steps=4",
    ]
    caplog.set_level("INFO")
    with monkeypatch.context() as m:  # a record made as before: the data by its path only
        m.setattr(rt, "data_digest", lambda cfg: None)
        run_task(compose(args, tmp_path / "old"))
    old = json.loads((tmp_path / "old" / "classify_real" / "metrics.json").read_text())
    assert rt.DATA_KEY not in old["inputs_sha256"]
    run_task(compose(args + ["resume=true"], tmp_path / "old"))  # taken on its settings
    assert json.loads((tmp_path / "old/classify_real/metrics.json").read_text()) == old
    assert "before its content counted" in caplog.text

    from datamodules.files import FileImageDataModule

    listed = []  # a job lists its real data once (a MURA tree: about a second each time)
    orig = FileImageDataModule.content_digest
    monkeypatch.setattr(
        FileImageDataModule, "content_digest", lambda self: listed.append(1) or orig(self)
    )
    run_dir = tmp_path / "run"
    run_task(compose(args, run_dir))
    assert 1 <= len(listed) <= 2  # the pipeline job and its one stage (6 times before)
    stage = run_dir / "classify_real" / "metrics.json"
    m0 = json.loads(stage.read_text())
    assert rt.DATA_KEY in m0["inputs_sha256"]
    ckpt = run_dir / "classify_real" / "checkpoints" / "last.ckpt"
    trained = sha256_file(ckpt)  # (wall_s can be equal by chance: 0.42 s both times)
    caplog.clear()
    run_task(compose(args + ["resume=true"], run_dir))  # the same images: reused
    assert json.loads(stage.read_text())["wall_s"] == m0["wall_s"]
    assert sha256_file(ckpt) == trained
    assert "running it again" not in caplog.text
    for i in (7, 8, 9):  # relabelled: moved to the other class folder, same bytes
        (data / "a" / f"{i:02d}.png").rename(data / "b" / f"a{i:02d}.png")
    run_task(compose(args + ["resume=true"], run_dir))
    m1 = json.loads(stage.read_text())
    assert "made from other inputs (dataset: other content now)" in caplog.text
    assert sha256_file(ckpt) != trained and m1["config_sha256"] != m0["config_sha256"]
    assert m1["inputs_sha256"][rt.DATA_KEY] != m0["inputs_sha256"][rt.DATA_KEY]


def test_the_data_digest_follows_bytes_and_labels(tmp_path):
    """MNIST and MedMNIST: the bytes of the files they read; folders: paths, labels, sizes and
    mtimes (a copy kept with cp -p has the same; one image rewritten does not)."""
    import shutil

    from xfergan.runtime import _DATA, data_digest

    def digest(*ov):  # each call as a new job would make it (a job lists its data once)
        _DATA.clear()
        return data_digest(compose(FAST + list(ov), tmp_path / "cfg"))

    assert digest("dataset=mnist") == digest("dataset=mnist", "dataset.n_per_class=8")
    npz = tmp_path / "p.npz"
    shutil.copy2(os.environ["DATA_DIR"] + "/pneumoniamnist/pneumoniamnist.npz", npz)
    one = digest("dataset=pneumoniamnist", f"dataset.npz_path={npz}")
    with open(npz, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    assert one != digest("dataset=pneumoniamnist", f"dataset.npz_path={npz}") is not None
    _folder_tree(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b", copy_function=shutil.copy2)
    a, b = (digest("dataset=folder", f"dataset.root={tmp_path / r}") for r in "ab")
    assert a == b is not None
    from PIL import Image

    Image.new("L", (8, 8), 3).save(tmp_path / "b" / "a" / "00.png")
    assert digest("dataset=folder", f"dataset.root={tmp_path / 'b'}") != a
    assert digest("dataset=folder", f"dataset.root={tmp_path / 'none'}") is None


@pytest.mark.parametrize(
    "key",
    [
        "model.init",
        "distill.teacher",
        "gan.guidance.teacher",
        "gan.feature_ckpt",
        "synthesize.checkpoint",
        "dataset.synthetic_path",
    ],
)
def test_a_stage_identity_covers_the_content_of_every_input(tmp_path, key):
    """Issue 27.1: each input key (a file, a run dir, a synthetic set) joins config_sha256 by
    content: the same path with other bytes is another stage; the same bytes are the same."""
    from omegaconf import open_dict

    from xfergan.runtime import MEASURING_INPUTS, config_digest, input_digests

    run = tmp_path / "run"  # a finished classify run dir and a synthetic set
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"weights v1")
    (run / "metrics.json").write_text(json.dumps({"status": "ok", "tested_checkpoint": str(ckpt)}))
    syn = tmp_path / "syn"
    syn.mkdir()
    (syn / "synthetic.pt").write_bytes(b"images")
    (syn / "manifest.json").write_text('{"sha256": "a"}')
    value = {
        "model.init": str(ckpt),
        "distill.teacher": [str(run)],
        "dataset.synthetic_path": str(syn),
    }.get(key, str(run))
    cfg = compose(SMALL, tmp_path / "o")
    with open_dict(cfg):
        from omegaconf import OmegaConf

        OmegaConf.update(cfg, key, value, merge=False)
    d0, i0 = config_digest(cfg), input_digests(cfg)
    s0 = config_digest(cfg, MEASURING_INPUTS)  # the checkpoint's stamp
    assert key in i0 and "missing" not in str(i0[key])
    assert config_digest(cfg) == d0  # same bytes, same identity
    if key == "dataset.synthetic_path":
        (syn / "manifest.json").write_text('{"sha256": "b"}')
    else:
        ckpt.write_bytes(b"weights v2")
    assert input_digests(cfg)[key] != i0[key] and config_digest(cfg) != d0
    # what a checkpoint is stamped with leaves out what only measures the model (the GAN's
    # feature net): a new one re-runs the stage's evaluation, never its training
    assert (config_digest(cfg, MEASURING_INPUTS) == s0) == (key == "gan.feature_ckpt")


def test_a_gan_resumed_at_its_budget_rewrites_nothing_so_later_arms_continue(tmp_path, caplog):
    """Issue 27.1, the other side: a resume that re-runs the stages after a changed arm must not
    make new bytes out of the same model. The GAN resumed at its budget leaves last.ckpt as it
    was (its final save would add wall time to it), so the synthetic set has the same content
    and the synthetic arm continues its checkpoint instead of training again."""
    import hashlib

    args = (
        SMALL
        + GAN_FAST
        + [
            "task=pipeline",
            "pipeline.arms=[real,synthetic]",
            "pipeline.primary=[]",
            "pipeline.feature_net=false",
            "trainer.max_steps=4",
            "gan.steps=3",
            "synthesize.n_per_class=4",
        ]
    )
    run_task(compose(args, tmp_path))
    last = tmp_path / "gan" / "checkpoints" / "last.ckpt"
    sha = hashlib.sha256(last.read_bytes()).hexdigest()
    caplog.set_level("INFO")
    again = run_task(
        compose(
            args + ["resume=true", "+pipeline.arm_overrides.real={trainer.max_steps: 6}"], tmp_path
        )
    )
    assert again["steps_real"] == 6
    assert hashlib.sha256(last.read_bytes()).hexdigest() == sha
    syn = json.loads((tmp_path / "classify_synthetic" / "metrics.json").read_text())
    fresh = [line for line in caplog.text.splitlines() if "starting from scratch" in line]
    assert not [line for line in fresh if "classify_synthetic" in line], fresh
    assert fresh and "classify_real" in fresh[0]  # the arm whose settings changed
    assert f"resuming from {tmp_path / 'classify_synthetic'}" in caplog.text  # continued,
    assert syn["global_step"] == 4  # already at its budget


def test_a_feature_net_at_a_new_path_continues_the_gan_checkpoint(tmp_path):
    """The feature net only measures a GAN: README says a new one re-measures but continues the
    checkpoint. Its path still counted in the checkpoint's stamp, so the same bytes at another
    path restarted the GAN from scratch. A checkpoint stamped the old way is still continued."""
    import shutil

    import torch

    from xfergan.runtime import MEASURING_INPUTS, config_digest, input_digests
    from xfergan.training import resume_checkpoint

    a, b = tmp_path / "a" / "f.ckpt", tmp_path / "b" / "f.ckpt"
    a.parent.mkdir()
    b.parent.mkdir()
    a.write_bytes(b"the same feature net")
    shutil.copy(a, b)
    base = FAST + ["task=gan", "dataset=mnist", "resume=true"]
    ca, cb = (compose(base + [f"gan.feature_ckpt={f}"], tmp_path / "run") for f in (a, b))
    assert config_digest(ca, MEASURING_INPUTS) == config_digest(cb, MEASURING_INPUTS)
    assert config_digest(ca) != config_digest(cb)  # the stage itself runs again (re-measured)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    last.parent.mkdir(parents=True)
    inputs = input_digests(ca, MEASURING_INPUTS)
    stamps = {  # stamped at path a, resumed at path b / the old stamp, resumed at its own path
        cb: (config_digest(ca, MEASURING_INPUTS), inputs),
        ca: (config_digest(ca, MEASURING_INPUTS, legacy=True), None),
    }
    for cfg, (stamp, ins) in stamps.items():
        blob = {"xfergan_config_sha256": stamp, "xfergan_inputs_sha256": ins, "epoch": 1}
        torch.save({**blob, "global_step": 5}, last)
        assert resume_checkpoint(cfg, tmp_path / "run") == str(last)


def test_the_feature_net_cache_key_follows_what_changes_the_net(tmp_path):
    """Data loader workers or the cache folder trained a second feature net (and restarted
    the GANs it measures); early stopping, which changes the net, reused the one without it.
    The GAN's own settings never change it: every GAN of a seed is measured with one net."""
    from tasks.pipeline import feature_net_key

    base = FAST + ["task=pipeline", "dataset.n_per_class=4"]

    def key(*extra, data="dataset=mnist"):
        return feature_net_key(compose(base + [data, *extra], tmp_path / "k"))[1]

    k = key()
    assert key("dataset.num_workers=4") == k
    # a folder dataset's decode cache follows paths.cache_dir (dataset.cache_dir)
    folder = f"dataset=folder dataset.root={tmp_path}".split()
    moved = f"paths.cache_dir={tmp_path}/elsewhere"
    assert key(folder[1], moved, data=folder[0]) == key(folder[1], data=folder[0])
    assert key("gan.steps=123") == k
    assert key("callbacks=early_stopping") != k
    assert key("seed=1") != k


def test_a_measuring_setting_re_measures_a_gan_without_retraining_it(tmp_path, caplog):
    """gan.eval_n_per_class (how many samples FID uses) and the other measuring settings were
    part of a GAN checkpoint's stamp: resume=true with another value threw the finished GAN
    away and trained it again from scratch. It now continues the checkpoint (at its budget:
    nothing trains) and measures again. A checkpoint stamped the earlier way (its measuring
    settings in the stamp) still continues with the settings it was made with; with another
    value it cannot be told from another GAN and trains again."""
    import torch

    from xfergan.runtime import MEASURING_INPUTS, config_digest

    args = FAST + GAN_FAST + ["task=gan", "gan.steps=4", "dataset.n_per_class=4", "logger=none"]
    out = tmp_path / "gan"
    first = run_task(compose(args, out))
    last = out / "checkpoints" / "last.ckpt"
    w0 = torch.load(last, weights_only=True)["state_dict"]
    caplog.set_level("INFO")
    again = run_task(compose(args + ["resume=true", "gan.eval_n_per_class=5"], out))
    assert "starting from scratch" not in caplog.text and "resuming from" in caplog.text
    assert again["gan/steps"] == first["gan/steps"] == 4
    w1 = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    # a checkpoint stamped before the measuring settings were left out of the stamp, resumed
    # with the settings it was made with
    cfg = compose(args + ["resume=true"], out)
    blob = torch.load(last, weights_only=False)
    blob["xfergan_config_sha256"] = config_digest(cfg, MEASURING_INPUTS)
    torch.save(blob, last)
    caplog.clear()
    run_task(cfg)
    assert "earlier form of the stage identity" in caplog.text and "resuming from" in caplog.text


def test_a_setting_added_to_the_schema_at_its_default_leaves_old_records_the_same_stage(tmp_path):
    """semi.fixmatch.ema_decay (null) joined every resolved config, so every stage digest
    changed: every finished stage and checkpoint of an earlier version would have run again
    (a review found it). Added keys count only when set away from the default they came with."""
    from omegaconf import OmegaConf, open_dict

    from xfergan.runtime import ADDED_KEYS, config_digest

    cfg = compose(FAST + ["task=classify", "dataset=mnist"], tmp_path)
    old = OmegaConf.create(OmegaConf.to_container(cfg))  # as the schema made it before the key
    with open_dict(old):
        for key in ADDED_KEYS:
            *parents, last = key.split(".")
            node = old
            for p in parents:
                node = node[p]
            del node[last]
    assert config_digest(cfg) == config_digest(old)
    ema = compose(
        FAST + ["task=classify", "dataset=mnist", "semi.fixmatch.ema_decay=0.9"], tmp_path
    )
    assert config_digest(ema) != config_digest(cfg)
