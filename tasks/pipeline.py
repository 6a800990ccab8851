"""task=pipeline (paper Table 3 and the ablations): the arms in `pipeline.arms`, each a
task=classify stage in its own sub-dir (own metrics.json, own W&B run in the same group), tested
on the real test set; writes table3.md, table3.json and a bar chart.

An arm says what its classifier trains on (ARMS below); what an arm needs is built once, when the
first arm asks for it, from this run's own seed and real subset:
  feature net (FID features; cached across runs) -> gan -> synthesize   (synthetic, mixed, ...)
  teacher (the ImageNet transfer classifier)  -> pseudolabel_<source>   (distill_real/_gan)
`pipeline.variants` adds named variants of an arm (e.g. mixed at other ratios),
`pipeline.gan_variants` adds named GANs (another discriminator, a guiding teacher) whose images a
variant arm uses (`gan: <name>`): every GAN of a run trains on the same real subset for the same
G+D steps; `pipeline.arm_overrides` tunes any arm's classify stage."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from lightning_modules.semi_gan import check_settings as check_semi_gan
from tasks import classify, pseudolabel, synthesize
from tasks import gan as gan_task
from xfergan.errors import SelectionError, UserError, first_line
from xfergan.evaluation.table3 import write_table3
from xfergan.runtime import VOLATILE_KEYS, output_dir, run_job
from xfergan.schema import FUSED_GANS_DIR, enum_name
from xfergan.training import build_datamodule

log = logging.getLogger(__name__)

# per-arm numbers the pipeline's metrics.json carries (as <key>_<arm>) when the stage has them
ARM_KEYS = (
    "test/acc",
    "test/balanced_acc",
    "test/auroc",
    "test/kappa",
    "test/study_kappa",
    "val/acc",
    "val/auroc",
)


# the stages a pipeline runs, by their task= name
STAGES = {
    "classify": classify.run,
    "gan": gan_task.run,
    "synthesize": synthesize.run,
    "pseudolabel": pseudolabel.run,
}


def stage_cfg(cfg: DictConfig, out: Path, task: str, overrides: dict[str, Any]) -> DictConfig:
    sub = copy.deepcopy(cfg)
    with open_dict(sub):
        sub.task = task
        sub.paths.output_dir = str(out)
        for key, value in overrides.items():
            OmegaConf.update(sub, key, value, merge=False)
    return sub


# the files a finished stage hands on (a synthetic set, a GAN or classifier checkpoint)
OUTPUT_KEYS = ("synthetic_path", "gan/checkpoint", "last_checkpoint", "tested_checkpoint")


def _run(sub: DictConfig, reuse: bool = True) -> dict:
    """Run a stage, or reuse it when resume=true, it finished, and its resolved config and the
    content of its inputs are the ones asked for now (config_sha256); a stage run with other
    settings or from other inputs is run again, saying which. `reuse` False: run it whatever (a
    stage before it ran again); its own checkpoint is continued only when its settings and
    inputs match too (xfergan.training.resume_checkpoint)."""
    from xfergan.io import read_json
    from xfergan.runtime import config_digest, same_record
    from xfergan.training import why_not_same

    done = Path(sub.paths.output_dir) / "metrics.json"
    if sub.resume and reuse and done.is_file():
        try:
            m = read_json(done)
        except UserError as e:
            log.warning("resume: %s; running the stage again", e)
            m = {}
        gone = [m[k] for k in OUTPUT_KEYS if m.get(k) and not Path(str(m[k])).exists()]
        if m.get("status") == "ok" and gone:  # reused, it would hand on a file that is not there
            log.warning(
                "resume: stage %s finished, but %s is gone: running it again",
                done.parent.name,
                gone[0],
            )
        elif m.get("status") == "ok" and same_record(
            m.get("config_sha256"), m.get("inputs_sha256"), sub
        ):
            return {**m, "_reused": True}
        elif m.get("status") == "ok":
            log.warning(
                "resume: stage %s finished, but it %s: running it again",
                done.parent.name,
                why_not_same(m, sub, config_digest(sub)),
            )
    return run_job(sub, STAGES[enum_name(sub.task)])  # a failed stage raises


def foreign_uses(stage_metrics: dict[str, dict]) -> dict[str, list[str]]:
    """Every model or set a stage used under a provenance override: stage -> every reason (a
    GAN stage may have a foreign feature net and a foreign guide)."""
    out: dict[str, list[str]] = {}
    for stage, m in stage_metrics.items():
        for what in ("synthetic", "teacher", "init", "guidance/teacher", "feature_net"):
            if m.get(f"{what}_foreign"):
                out.setdefault(stage, []).append(
                    f"{what}: {m.get(f'{what}_foreign_reason') or 'foreign'}"
                )
    return out


def headline(m: dict) -> str:
    """A finished stage's number worth a log line."""
    for k in ("test/acc", "val/gan_fid", "gan/steps", "distill/n_kept", "n_images"):
        v = m.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return f"{k} {v:.4g}"
    return ""


def planned_stages(cfg: DictConfig) -> list[str]:
    """The stage dirs this pipeline will run, in order (what Context builds on demand)."""
    plan: list[str] = []

    def need(name: str) -> None:
        if name not in plan:
            plan.append(name)

    def arm_needs(name: str) -> None:
        base, gan = arm_spec(cfg, name)[0], arm_gan(cfg, name)
        if base in ("synthetic", "mixed", "distill_gan"):
            guide = gan_spec(cfg, gan)[1]
            if guide:
                arm_needs(guide)
            if gan is not None or not gan_source(cfg):
                need(gan_stage(gan))
            need("synthesize" + suffix(gan))
        if base == "finetune":
            arm_needs(synthetic_arm(cfg, gan))
        if base in ("distill_real", "distill_gan"):
            for t in cfg.pipeline.teacher_ensemble:
                arm_needs(t)
            need("pseudolabel_" + ("real" if base == "distill_real" else "synthetic" + suffix(gan)))
        need(f"classify_{name}")

    try:
        for arm in cfg.pipeline.arms:
            arm_needs(arm)
    except UserError:
        return []
    return plan


class Context:
    """What arms need, built on first use and then shared by every arm of this run."""

    def __init__(self, cfg: DictConfig, out: Path):
        self.cfg, self.out = cfg, out
        self.results: dict[str, Any] = {}
        self.stage_metrics: dict[str, dict] = {}
        self._synthetic: dict[str | None, str] = {}  # GAN variant (None: gan) -> its images
        self._pseudo: dict[str, str] = {}
        self.gans: dict[str, str] = {}  # GAN stage -> suffix of its keys in results
        self.plan = planned_stages(cfg)  # for "stage k/N" in the progress lines
        self.done: list[str] = []
        self.ran = False  # a stage actually ran (not reused): no later stage is reused

    def stage(self, name: str, task: str, overrides: dict[str, Any]) -> dict:
        from xfergan import progress

        self.done.append(name)
        arm = overrides.get("arm")
        t0 = progress.stage_started(len(self.done), max(len(self.plan), len(self.done)), f"{name}")
        try:
            m = _run(stage_cfg(self.cfg, self.out / name, task, overrides), reuse=not self.ran)
        except SelectionError:
            raise  # the same for every job: the sweep stops (run.py)
        except Exception as e:  # which stage and arm failed, in the one line a user sees
            first = first_line(e)
            where = f"stage {name}" + (f" (arm {arm})" if arm else "")
            raise UserError(
                f"pipeline {where} failed: {first} (details: {self.out / name}/error.txt)"
            ) from None
        self.stage_metrics[name] = m
        reused = bool(m.pop("_reused", False))
        self.ran = self.ran or not reused  # later stages may read what this one wrote
        progress.stage_finished(t0, headline(m), reused=reused)
        return m

    def synthetic(self, gan: str | None = None) -> str:
        """The images of the run's GAN (None) or of a pipeline.gan_variants entry."""
        if gan not in self._synthetic:
            over, guide = gan_spec(self.cfg, gan)
            source = gan_source(self.cfg) if gan is None else None
            if source:  # trained elsewhere (a fused stage): this run's own, or an error
                from tasks.gan_fused import find_gan_run
                from xfergan.io import read_json

                found = find_gan_run(self.cfg, source)
                gm = read_json(found / "metrics.json")
                self.results["gan/from"] = str(found)
                self.results["gan/samples"] = str(found / "samples_final.png")  # table3.md
                log.info("pipeline: GAN from %s (%s)", found, headline(gm))
            else:
                over.update(self.feature_net())
                if guide:  # the guiding classifier: an arm of this run (its own real subset)
                    over["gan.guidance.teacher"] = self.arm_dir(guide)
                gm = self.stage(gan_stage(gan), "gan", over)
            self.gans[gan_stage(gan)] = suffix(gan)
            self.results["gan/wall_s" + suffix(gan)] = gm.get("wall_s")
            self.results.update(
                {
                    k + suffix(gan): v
                    for k, v in gm.items()
                    if k.startswith(("gan/", "guidance/")) or "/gan_" in k
                }
            )
            sm = self.stage(
                "synthesize" + suffix(gan),
                "synthesize",
                {"synthesize.checkpoint": gm["gan/checkpoint"]},
            )
            self._synthetic[gan] = sm["synthetic_path"]
        return self._synthetic[gan]

    def feature_net(self) -> dict[str, str]:
        """gan.feature_ckpt for a stage that measures a generator: the pipeline's cached feature
        net (pipeline.feature_net), or none when gan.feature_ckpt is set or it is off."""
        if self.cfg.pipeline.feature_net and not self.cfg.gan.feature_ckpt:
            return {"gan.feature_ckpt": feature_net(self.cfg, self.results)}
        return {}

    def checkpoint(self, arm: str) -> str:
        m = self.stage_metrics.get(f"classify_{arm}")
        if m is None:
            raise UserError(f"pipeline.arms: this arm needs the {arm} arm; list {arm} before it")
        return m["last_checkpoint"]

    def arm_dir(self, arm: str) -> str:
        """The run dir of an arm, trained now if the arm list has not run it yet."""
        arm_spec(self.cfg, arm)
        if f"classify_{arm}" not in self.stage_metrics:
            run_arm(self, arm)
        return str(self.out / f"classify_{arm}")

    def teacher(self) -> list[str]:
        """The run dirs of the arms that label images (pipeline.teacher_ensemble)."""
        return [self.arm_dir(arm) for arm in self.cfg.pipeline.teacher_ensemble]

    def pseudolabelled(self, source: str, gan: str | None = None) -> str:
        name = source + suffix(gan if source == "synthetic" else None)
        if name not in self._pseudo:
            over: dict[str, Any] = {
                "distill.teacher": self.teacher(),
                "distill.source": source,
                "distill.evaluate_teacher": not self._pseudo,  # once per pipeline
            }
            if source == "synthetic":
                over["dataset.synthetic_path"] = self.synthetic(gan)
            m = self.stage(f"pseudolabel_{name}", "pseudolabel", over)
            self.results.update(
                {f"{k}_{name}": v for k, v in m.items() if k.startswith("distill/")}
            )
            self.results.update({k: v for k, v in m.items() if k.startswith("teacher/")})
            self._pseudo[name] = m["synthetic_path"]
        return self._pseudo[name]


def _distill(source: str) -> Callable[[Context, str | None], dict]:
    def arm(ctx: Context, gan: str | None) -> dict:
        return {
            "dataset.source": "mixed",
            "dataset.synthetic_path": ctx.pseudolabelled(source, gan),
            "dataset.mix_balance": 0.5,  # every batch: half real, half teacher-labelled
        }

    return arm


# arm -> (label, classify overrides built from the context and the arm's GAN variant)
ARMS: dict[str, tuple[str, Callable[[Context, str | None], dict]]] = {
    "real": ("real", lambda ctx, gan: {"dataset.source": "real"}),
    "synthetic": (
        "synthetic only",
        lambda ctx, gan: {
            "dataset.source": "synthetic",
            "dataset.synthetic_path": ctx.synthetic(gan),
        },
    ),
    "mixed": (
        "real + synthetic",
        lambda ctx, gan: {"dataset.source": "mixed", "dataset.synthetic_path": ctx.synthetic(gan)},
    ),
    "finetune": (
        "synthetic, then fine-tuned on real",
        lambda ctx, gan: {
            "dataset.source": "real",
            "model.init": ctx.checkpoint(synthetic_arm(ctx.cfg, gan)),
        },
    ),
    "teacher": (
        "teacher (ImageNet transfer) on real",
        lambda ctx, gan: {"dataset.source": "real", **dict(ctx.cfg.pipeline.teacher_overrides)},
    ),
    "distill_real": ("real + teacher soft labels on augmented real", _distill("real")),
    "distill_gan": ("real + teacher soft labels on filtered GAN images", _distill("synthetic")),
    # the unlabelled pool (dataset.unlabelled_cap): FixMatch, and the GAN whose discriminator is
    # the classifier (their settings: semi.fixmatch / semi.semi_gan)
    "semi": (
        "real + unlabelled pool (FixMatch)",
        lambda ctx, gan: {"dataset.source": "real", "semi.method": "fixmatch"},
    ),
    "semi_gan": (
        "real + unlabelled pool + its own G (semi-supervised GAN)",
        lambda ctx, gan: {
            "dataset.source": "real",
            "semi.method": "semi_gan",
            **ctx.feature_net(),  # its G's quality row
        },
    ),
}


def arm_spec(cfg: DictConfig, name: str) -> tuple[str, str, dict]:
    """(base arm, label, variant overrides) of an arm name or a pipeline.variants entry."""
    variants = OmegaConf.to_container(cfg.pipeline.variants, resolve=True) or {}
    if name in variants:
        v = variants[name] or {}
        base = v.get("arm")
        if base not in ARMS:
            raise UserError(f"pipeline.variants.{name}.arm={base!r}: use one of {', '.join(ARMS)}")
        if v.get("gan") is not None:
            if base not in GAN_ARMS:
                raise UserError(
                    f"pipeline.variants.{name}.gan: the {base} arm uses no GAN images; give "
                    f"gan: only to variants of {', '.join(GAN_ARMS)}"
                )
            gan_spec(cfg, str(v["gan"]))
        label = v.get("label") or f"{ARMS[base][0]} ({name})"
        return base, label, dict(v.get("overrides") or {})
    if name not in ARMS:
        raise UserError(
            f"pipeline.arms: unknown arm {name!r}; use one of {', '.join(ARMS)} or a name "
            "defined in pipeline.variants"
        )
    return name, ARMS[name][0], {}


GAN_ARMS = ("synthetic", "mixed", "finetune", "distill_gan")  # the arms that use GAN images
# what a GAN variant may not change: every GAN of a run trains the same G+D steps
GAN_BUDGET_KEYS = ("gan.steps", "gan.epochs", "gan.d_steps")
GAN_VARIANT_KEYS = ("discriminator", "generator", "guide", "overrides")


def arm_gan(cfg: DictConfig, name: str) -> str | None:
    """The GAN variant an arm's images come from (None: the run's own gan)."""
    v = (cfg.pipeline.variants or {}).get(name)
    gan = v.get("gan") if v is not None else None
    return None if gan is None else str(gan)


def suffix(gan: str | None) -> str:
    return f"_{gan}" if gan else ""


def gan_source(cfg: DictConfig) -> str | None:
    """Where the run's own GAN comes from when no gan stage trains it: pipeline.gan_from, or
    with pipeline.fused_gans the sweep's fused_gans/ folder (FusedGANsFirst trained it there)."""
    if cfg.pipeline.gan_from:
        return str(cfg.pipeline.gan_from)
    if not cfg.pipeline.fused_gans:
        return None
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or HydraConfig.get().mode.name != "MULTIRUN":
        raise UserError("pipeline.fused_gans=true trains a multirun's GANs first: run it with -m")
    return str(Path(HydraConfig.get().sweep.dir) / FUSED_GANS_DIR)


def gan_stage(gan: str | None) -> str:
    return "gan" + suffix(gan)


def gan_spec(cfg: DictConfig, gan: str | None) -> tuple[dict[str, Any], str | None]:
    """(the gan stage's overrides, the arm whose classifier guides G) of the run's own GAN
    (None) or of a pipeline.gan_variants entry."""
    if gan is None:
        return {}, None
    variants = cfg.pipeline.gan_variants or {}
    if gan not in variants:
        raise UserError(
            f"pipeline: unknown GAN variant {gan!r}; define it in pipeline.gan_variants "
            f"(defined: {', '.join(variants) or 'none'})"
        )
    v = variants[gan] or {}
    unknown = sorted(set(v) - set(GAN_VARIANT_KEYS))
    if unknown:
        raise UserError(
            f"pipeline.gan_variants.{gan}: unknown key(s) {unknown}; use "
            + ", ".join(GAN_VARIANT_KEYS)
        )
    over: dict[str, Any] = {}
    for net in ("discriminator", "generator"):
        if v.get(net) is not None:  # a whole network node: replaces the run's
            over[f"gan.{net}"] = OmegaConf.to_container(v[net], resolve=True)
    extra = v.get("overrides") or {}
    extra = OmegaConf.to_container(extra, resolve=True) if OmegaConf.is_config(extra) else extra
    for k in extra:
        if not str(k).startswith("gan."):
            raise UserError(
                f"pipeline.gan_variants.{gan}.overrides.{k}: a GAN variant sets gan.* keys only"
            )
        if k in GAN_BUDGET_KEYS:
            raise UserError(
                f"pipeline.gan_variants.{gan}.overrides.{k}: every GAN of a run trains for the "
                "same G+D steps; set gan.steps for the run instead"
            )
        if k == "gan.batch_size" and not cfg.gan.steps:  # epochs of other batches: other steps
            raise UserError(
                f"pipeline.gan_variants.{gan}.overrides.gan.batch_size: with an epoch budget "
                "(gan.steps=null) another batch size trains another number of G+D steps; set "
                "gan.steps for the run"
            )
    over.update(extra)
    guide = v.get("guide")
    if guide is not None:
        guide = str(guide)
        if arm_spec(cfg, guide)[0] in GAN_ARMS:
            raise UserError(
                f"pipeline.gan_variants.{gan}.guide={guide}: the guiding arm must train on real "
                "images only (e.g. teacher or real)"
            )
    return over, guide


def synthetic_arm(cfg: DictConfig, gan: str | None) -> str:
    """The synthetic-only arm trained on a GAN variant's images (what finetune starts from)."""
    if gan is None:
        return "synthetic"
    for a in cfg.pipeline.arms:
        if arm_spec(cfg, a)[0] == "synthetic" and arm_gan(cfg, a) == gan:
            return a
    raise UserError(
        f"pipeline.arms: a finetune variant with gan: {gan} needs a synthetic variant with "
        f"gan: {gan} before it"
    )


def tuned_overrides(cfg: DictConfig, name: str) -> dict[str, Any]:
    """What the user set for an arm: a variant's base arm's arm_overrides, the variant's own
    overrides, then its own arm_overrides (later ones win)."""
    base, _, variant = arm_spec(cfg, name)
    tuned = cfg.pipeline.arm_overrides or {}
    over = dict(tuned.get(base, {}) or {}) if base != name else {}
    return {**over, **variant, **dict(tuned.get(name, {}) or {})}


def run_arm(ctx: Context, name: str) -> dict:
    """A variant trains like its base arm (its arm_overrides too), then its own overrides."""
    over = dict(ARMS[arm_spec(ctx.cfg, name)[0]][1](ctx, arm_gan(ctx.cfg, name)))
    over.update(tuned_overrides(ctx.cfg, name))
    over["arm"] = name
    return ctx.stage(f"classify_{name}", "classify", over)


def feature_net_key(cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """The feature net's stage overrides and its cache key: what changes the net (its data,
    model, training, callbacks, seed), not where or how visibly it trains (VOLATILE_KEYS, the
    accelerator), nor the GAN it will measure (every GAN of a seed is measured with one net)."""
    fo = {
        "dataset.n_per_class": None,
        "dataset.source": "real",
        "checkpoint.test": "last",
        "resume": False,
        "logger.wandb": False,
        "trainer.max_steps": -1,  # epochs (feature_net_overrides), not the arms' step budget
        **dict(cfg.pipeline.feature_net_overrides),
    }
    probe = stage_cfg(cfg, Path("."), "classify", fo)
    keyed: dict[str, Any] = {"seed": int(probe.seed)}
    for k in ("dataset", "model", "trainer", "callbacks"):
        sub = OmegaConf.to_container(probe[k], resolve=True) if k in probe else {}
        drop = set(VOLATILE_KEYS.get(k) or ()) | ({"accelerator"} if k == "trainer" else set())
        keyed[k] = {kk: v for kk, v in (sub or {}).items() if kk not in drop}
    key = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()
    return fo, key[:16]


def feature_net(cfg: DictConfig, results: dict) -> str:
    """The FID feature classifier: an instrument trained on the real training split outside
    this seed's val images (the run's own seed and val settings: the val images the GAN is
    measured on are its val split), shared by every pipeline with the same settings and seed,
    trained once into paths.cache_dir and reused."""
    from filelock import FileLock

    fo, key = feature_net_key(cfg)
    cache = Path(cfg.paths.cache_dir) / "feature_nets" / key
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache.parent / f"{key}.lock")):
        done = cache / "metrics.json"
        m = json.loads(done.read_text()) if done.is_file() else {}
        if m.get("status") != "ok" or not Path(m.get("last_checkpoint") or "").is_file():
            try:
                m = run_job(stage_cfg(cfg, cache, "classify", fo), classify.run)
            except UserError as e:
                raise UserError(f"the feature net failed: {e}") from None
        else:
            log.info("feature net: reusing %s", cache)
    results["feature_net/test/acc"] = m["test/acc"]
    results["feature_net/dir"] = str(cache)
    return m["last_checkpoint"]


def run(cfg: DictConfig) -> dict:
    from xfergan import progress

    try:
        return _pipeline(cfg)
    finally:
        progress.pipeline_done()


def _pipeline(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    arms = list(cfg.pipeline.arms)
    for name in [*arms, *(cfg.pipeline.variants or {})]:
        arm_spec(cfg, name)  # every name is known before anything trains
    for variant in cfg.pipeline.gan_variants or {}:
        gan_spec(cfg, str(variant))
    if len(set(arms)) != len(arms):
        raise UserError(f"pipeline.arms lists an arm twice: {arms}")
    for p in cfg.pipeline.primary:  # what the report corrects together: checked now
        if not (OmegaConf.is_list(p) or isinstance(p, list)) or len(p) != 2:
            raise UserError(
                f"pipeline.primary: {p} is not an [arm, baseline] pair; write e.g. "
                "[[distill_gan, real], [synthetic, real]]"
            )
        for a in p:
            if a not in arms:
                raise UserError(f"pipeline.primary names {a!r}, which is not in pipeline.arms")
    tested = [k for k in ARM_KEYS if k.startswith("test/")]
    if cfg.pipeline.primary and cfg.pipeline.primary_metric not in tested:
        raise UserError(
            f"pipeline.primary_metric={cfg.pipeline.primary_metric}: use one of "
            + ", ".join(tested)
        )
    bases = {arm_spec(cfg, a)[0] for a in arms}
    if bases & {"distill_real", "distill_gan"}:  # fail before anything trains
        if not 0.0 < float(cfg.distill.min_confidence) <= 1.0:
            raise UserError(
                f"distill.min_confidence={cfg.distill.min_confidence} must be in (0, 1]"
            )
        for arm in cfg.pipeline.teacher_ensemble:
            arm_spec(cfg, arm)
    for name in arms:  # what the semi-supervised GAN cannot do: said before anything trains
        if arm_spec(cfg, name)[0] == "semi_gan":
            sub = stage_cfg(cfg, out, "classify", tuned_overrides(cfg, name))
            side = build_datamodule(sub, use_unlabelled=True).stored_side()  # nothing loaded
            check_semi_gan(sub.trainer, side)
    if any(arm_spec(cfg, a)[0] in GAN_ARMS for a in arms):  # the GAN's precision: said now
        from tasks.gan import check_precision

        check_precision(cfg)
    ctx = Context(cfg, out)
    table = {}
    for name in arms:  # an arm a distill arm already needed (the teacher) is not run twice
        m = ctx.stage_metrics.get(f"classify_{name}") or run_arm(ctx, name)
        base, label, _ = arm_spec(cfg, name)
        n_syn = m["n_train_synthetic"]
        if base == "finetune":  # it saw the synthetic set too (in pre-training)
            pre = synthetic_arm(cfg, arm_gan(cfg, name))
            pre_m = ctx.stage_metrics[f"classify_{pre}"]
            n_syn = pre_m["n_train_synthetic"]
            ctx.results[f"steps_pre_{name}"] = pre_m.get("global_step")  # the report shows it
        table[name] = {
            "label": label,
            "test/acc": m["test/acc"],
            "n_train_real": m["n_train_real"],
            "n_train_synthetic": n_syn,
            "steps": m.get("global_step"),
            "steps_pre": ctx.results.get(f"steps_pre_{name}"),  # finetune's pre-training
            "wall_s": m.get("wall_s"),
        }
        for k in ARM_KEYS:
            if isinstance(m.get(k), (int, float)):
                ctx.results[f"{k}_{name}"] = m[k]
        # what pairing and budgets are checked on: steps run, the budget, the real images
        ctx.results[f"steps_{name}"] = m.get("global_step")
        ctx.results[f"budget_{name}"] = m.get("step_budget")
        for k in ("data/train_ids_sha256", "data/test_ids_sha256", "data/seen_ids_sha256"):
            ctx.results[f"{k}_{name}"] = m.get(k)
        if base == "semi_gan":  # its G is a GAN of this run too: a GAN-quality row
            ctx.gans[f"classify_{name}"] = suffix(name)
            ctx.results[f"gan/steps_{name}"] = m.get("global_step")
            ctx.results.update({k + suffix(name): v for k, v in m.items() if "/gan_" in k})
        if "real" in table and name != "real":
            ctx.results[f"diff/test/acc_{name}-real"] = m["test/acc"] - table["real"]["test/acc"]
    ctx.results["arms"] = arms
    ctx.results["primary"] = [list(p) for p in cfg.pipeline.primary]
    ctx.results["primary_metric"] = cfg.pipeline.primary_metric
    ctx.results["unequal_budgets"] = list(cfg.pipeline.unequal_budgets)
    ctx.results["foreign"] = foreign_uses(ctx.stage_metrics)
    ctx.results["stage_wall_s"] = {k: v.get("wall_s") for k, v in ctx.stage_metrics.items()}
    ctx.results["gans"] = ctx.gans  # GAN stage -> the suffix of its gan/, val/gan_ ... keys
    write_table3(out, cfg.dataset.name, cfg.dataset.n_per_class, cfg.seed, table, ctx.results)
    return ctx.results


class FusedGANsFirst(Callback):
    """pipeline.fused_gans=true: before a multirun's pipelines start, their GANs train as one
    task=gan_fused stage per group of grid points that differ only in the seed (e.g. one per
    n_per_class), into <sweep dir>/fused_gans/<group>/seed_<s>/, each seed's GAN measured with
    that seed's own feature net as its pipeline would; every pipeline then takes its own
    (gan_source, find_gan_run) instead of training it. Sweeps over config groups (dataset=...)
    are refused: one multirun per group."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not OmegaConf.select(config, "pipeline.fused_gans", default=False):
            return
        import sys

        try:
            self._train(config)
        except UserError as e:
            print(f"xfergan: error: {e}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:  # noqa: BLE001 - Hydra would make it a warning and every job
            # would then fail on "no finished GAN run": the real cause, in one line
            where = Path(config.hydra.sweep.dir) / FUSED_GANS_DIR
            print(
                f"xfergan: error: the fused GANs failed: {type(e).__name__}: {first_line(e)} "
                f"(their runs: {where})",
                file=sys.stderr,
            )
            sys.exit(1)

    def _train(self, config: DictConfig) -> None:
        import functools

        from tasks import gan_fused

        seeds, groups = sweep_groups(config)
        root = Path(config.hydra.sweep.dir) / FUSED_GANS_DIR
        trained: set[str] = set()  # one fused stage per GAN: points that differ only in what
        for _, values in groups:  # the GAN does not read (synthesize.*, model.*) share it
            c = copy.deepcopy(config)
            with open_dict(c):
                del c["hydra"]
                for k, v in values.items():
                    OmegaConf.update(c, k, v, merge=False)
                c.task = "gan_fused"
                c.gan_fused.seeds = seeds
            ident = gan_fused.gan_identity(c)
            ident.pop("seed")
            key = json.dumps(ident, sort_keys=True, default=str)
            if key in trained:
                continue
            trained.add(key)
            # named by the swept settings the GAN reads (find_gan_run matches by identity)
            name = ",".join(f"{k}={v}" for k, v in values.items() if gan_fused.reads(k)).replace(
                "/", "_"
            )
            with open_dict(c):
                c.paths.output_dir = str(root / (name or "all"))
            Path(c.paths.output_dir).mkdir(parents=True, exist_ok=True)
            per_seed: dict[int, dict] = {}
            if c.pipeline.feature_net and not c.gan.feature_ckpt:
                for s in seeds:  # the instrument each seed's pipeline measures its GAN with
                    sc = copy.deepcopy(c)
                    with open_dict(sc):
                        sc.seed = s
                    per_seed[s] = {"gan.feature_ckpt": feature_net(sc, {})}
            log.info("fused_gans: training the GANs of seeds %s (%s) as one", seeds, name)
            run_job(c, functools.partial(gan_fused.run, per_seed=per_seed))


def sweep_groups(config: DictConfig) -> tuple[list[int], list[tuple[str, dict[str, Any]]]]:
    """A multirun's seeds, and its other swept keys' value combinations (name, {key: value}),
    from hydra.sweeper.params and the command line's sweep overrides (the latter win), as
    Hydra's basic sweeper reads them."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    lines = [f"{k}={v}" for k, v in params.items()]
    lines += list(config.hydra.overrides.task)
    swept: dict[str, list[Any]] = {}
    for o in parser.parse_overrides(lines):
        if o.is_sweep_override() or o.key_or_group in params:
            items = (
                list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_string()]
            )
            key = o.key_or_group
            missing = object()  # a key that is not in the config (null is a plain value)
            value = OmegaConf.select(config, key, default=missing)
            if key != "seed" and (o.is_add() or value is missing or OmegaConf.is_config(value)):
                raise UserError(
                    f"pipeline.fused_gans: the sweep over {key} is not a plain setting (a config "
                    f"group or a new key): run one multirun per {key}"
                )
            swept[key] = [parser.parse_override(f"{key}={i}").value() for i in items]
    from tasks.gan_fused import NOT_IDENTITY

    measuring = [
        k for k in swept if k.startswith("gan.") and k[4:] in NOT_IDENTITY and k != "gan.compile"
    ]
    if measuring:
        raise UserError(
            f"pipeline.fused_gans: the sweep over {measuring[0]} changes how the GANs are "
            "measured, not what they learn: one fused stage would be measured once and its "
            "numbers reported for every value; run this sweep without pipeline.fused_gans"
        )
    seeds = [int(s) for s in swept.pop("seed", [config.seed])]
    keys = sorted(swept)
    groups = []
    for combo in itertools.product(*(swept[k] for k in keys)):
        values = dict(zip(keys, combo))
        name = ",".join(f"{k}={v}" for k, v in values.items()).replace("/", "_") or "all"
        groups.append((name, values))
    return seeds, groups
