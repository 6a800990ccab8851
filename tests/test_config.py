from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from tests.conftest import DATA_DIR, ROOT, compose, run_py

EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment, tmp_path):
    cfg = compose([f"experiment={experiment}"], tmp_path)
    assert cfg.name, "every experiment names its W&B group / report"
    assert cfg.dataset._target_.startswith("datamodules.")
    assert str(cfg.paths.data_dir) == str(DATA_DIR)


def test_paper_table1_is_few_shot_mobilenet(tmp_path):
    cfg = compose(["experiment=paper_table1"], tmp_path)
    assert cfg.dataset.n_per_class == 32 and cfg.model.backbone == "mobilenet_v2"
    assert cfg.model.init == "imagenet"


def test_unknown_group_option_lists_choices(tmp_path):
    with pytest.raises(ConfigCompositionException, match="mnist"):
        compose(["dataset=mnsit"], tmp_path)


@pytest.mark.parametrize(
    "override", ["dataset.n_per_clas=3", "model.lr=0.1", "trainer.max_epoch=2"]
)
def test_typo_in_key_fails_at_compose(override, tmp_path):
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose([override], tmp_path)


def test_wrong_type_fails_at_compose(tmp_path):
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose(["dataset.n_per_class=many"], tmp_path)


def test_unknown_body_part_lists_valid_ones(tmp_path):
    with pytest.raises(ConfigCompositionException) as e:
        compose(["body_part=knee"], tmp_path)
    msg = str(e.value) + str(e.value.__cause__)
    for part in ("elbow", "finger", "forearm", "hand", "humerus", "shoulder", "wrist"):
        assert part in msg


def test_cfg_job_prints_composed_config():
    r = run_py(["--cfg", "job"])
    assert r.returncode == 0, r.stderr
    assert "dataset:" in r.stdout and "_target_: datamodules.mnist.MNISTDataModule" in r.stdout
    assert "model:" in r.stdout and "trainer:" in r.stdout


def test_typo_on_command_line_fails_cleanly():
    r = run_py(["dataset=mnsit"])
    assert r.returncode != 0
    assert "mnist" in r.stderr  # Hydra lists the available options


def test_missing_data_dir_is_one_clear_line(tmp_path):
    r = run_py(["logger=none", f"hydra.run.dir={tmp_path}/o"], env={"DATA_DIR": "/nonexistent"})
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("xfergan: error: MNIST not found in /nonexistent/mnist"), r.stderr
    assert "DATA_DIR" in lines[-1]
    assert "Traceback" not in r.stderr
    metrics = Path(tmp_path / "o" / "metrics.json").read_text()
    assert '"status": "failed"' in metrics


SWEEPS = sorted(p.stem for p in (ROOT / "conf" / "sweep").glob("*.yaml"))


@pytest.mark.parametrize("sweep", SWEEPS)
def test_every_sweep_composes_with_its_params(sweep, tmp_path):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from xfergan.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hcompose(config_name="config", overrides=[f"sweep={sweep}"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params, f"sweep={sweep} sweeps nothing"
    if sweep == "optuna":
        assert "OptunaSweeper" in cfg.hydra.sweeper._target_
