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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _binding(v) -> bool:
    """An interpolation (a value bound to another key), or a list of them."""
    if isinstance(v, list):
        return bool(v) and all(_binding(x) for x in v)
    return isinstance(v, str) and "${" in v


def _schema_differences(path: Path, group: str | None = None) -> tuple[dict, set[str]]:
    """(the values of a schema-backed YAML that differ from its schema's defaults, the keys its
    `# differs from the schema: a, b` comment lists). A value the schema leaves to the YAML
    (MISSING) and an interpolation (a binding to another key) are not differences."""
    import re

    import yaml
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from xfergan.schema import register_configs

    register_configs()
    text = path.read_text()
    y = yaml.safe_load(text) or {}
    schema = [d for d in y.get("defaults") or [] if isinstance(d, str) and d.startswith("schema_")]
    group = group or path.parent.relative_to(ROOT / "conf").as_posix()
    node = ConfigStore.instance().load(f"{group}/{schema[0]}.yaml").node
    want = _flat(OmegaConf.to_container(node, resolve=False))
    got = _flat({k: v for k, v in y.items() if k != "defaults"})
    diff = {
        k: (v, want.get(k, "<not in the schema>"))
        for k, v in got.items()
        if want.get(k, "<not in the schema>") not in (v, "???") and not _binding(v)
    }
    listed = {
        k.strip()
        for m in re.findall(r"^# differs from the schema: (.+)$", text, re.M)
        for k in m.split(",")
    }
    return diff, listed


def test_every_yaml_default_is_its_schemas_or_listed_as_an_override():
    """The schemas (xfergan/schema.py) are the one source of defaults: a group YAML that differs
    from its schema says so in a `# differs from the schema: ...` comment (a listed key covers
    its sub-keys), so a schema default changed later never hides behind a stale YAML copy."""
    import yaml
    from hydra.core.config_store import ConfigStore

    from xfergan.schema import register_configs

    register_configs()
    used = set()
    for path in sorted((ROOT / "conf").rglob("*.yaml")):
        y = yaml.safe_load(path.read_text()) or {}
        schemas = [str(d) for d in y.get("defaults") or [] if str(d).startswith("schema_")]
        if not schemas:
            continue
        used |= {(str(path.parent.relative_to(ROOT / "conf")), s) for s in schemas}
        diff, listed = _schema_differences(path)
        unlisted = {
            k: v
            for k, v in diff.items()
            if not any(k == key or k.startswith(key + ".") for key in listed)
        }
        assert not unlisted, f"{path.relative_to(ROOT)}: {unlisted} (yaml value, schema default)"
        stale = {
            key for key in listed if not any(k == key or k.startswith(key + ".") for k in diff)
        }
        assert not stale, f"{path.relative_to(ROOT)} lists {stale}, which equal the schema"
    # every registered group schema backs at least one shipped YAML (schema_image is the base
    # for a user's own datamodule: tests/test_own_data.py)
    repo, registered = ConfigStore.instance().repo, set()

    def walk(node, group):
        for name, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{group}/{name}".strip("/"))
            elif name.startswith("schema_"):
                registered.add((group, name.removesuffix(".yaml")))

    walk(repo, "")
    assert registered - used == {("dataset", "schema_image")}, registered - used


def test_the_schema_check_sees_a_difference(tmp_path):
    d = tmp_path / "probe.yaml"
    d.write_text("defaults: [schema_trainer, _self_]\ndevices: 4\nmax_epochs: 10\n")
    diff, listed = _schema_differences(d, "trainer")
    assert diff == {"devices": (4, 1)} and not listed
    d.write_text("# differs from the schema: devices\n" + d.read_text())
    assert _schema_differences(d, "trainer")[1] == {"devices"}
