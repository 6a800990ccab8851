"""Dataclass schemas for every config group (NeMo-style), registered in Hydra's ConfigStore.

Each YAML file in conf/<group>/ starts from its schema (`defaults: [schema_<kind>, _self_]`), so a
typo'd key, in a YAML file or on the command line, fails at compose time, and enum-typed keys
(`task`, `body_part`) fail with the list of valid values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from xfergan.errors import UserError


class _NamedEnum(Enum):
    """Enum whose str() is its bare name, so `${task}` interpolates as "classify"."""

    def __str__(self) -> str:
        return self.name


class Task(_NamedEnum):
    classify = "classify"
    gan = "gan"
    gan_fused = "gan_fused"
    synthesize = "synthesize"
    pipeline = "pipeline"
    inspect = "inspect"
    report = "report"
    evaluate = "evaluate"
    pseudolabel = "pseudolabel"
    dashboard = "dashboard"
    predict = "predict"


class BodyPart(_NamedEnum):
    all = "all"
    elbow = "elbow"
    finger = "finger"
    forearm = "forearm"
    hand = "hand"
    humerus = "humerus"
    shoulder = "shoulder"
    wrist = "wrist"


BODY_PARTS = tuple(p.value for p in BodyPart if p is not BodyPart.all)  # MURA's seven


def enum_name(value: Any) -> Any:
    """`BodyPart.elbow` -> "elbow"; strings pass through."""
    return value.name if isinstance(value, Enum) else value


# ----------------------------------------------------------------------------- dataset
@dataclass
class AugmentConfig:
    enabled: bool = False
    rotation: float = 0.0  # degrees, uniform in [-rotation, rotation]
    translate: float = 0.0  # fraction of the image size
    scale_min: float = 1.0
    scale_max: float = 1.0
    hflip: bool = False
    vflip: bool = False


@dataclass
class DatasetConfig:
    _target_: str = MISSING
    name: str = MISSING
    root: str = MISSING
    n_per_class: int | None = None  # few-shot: images per class in the train split; null = all
    image_size: int = 32
    channels: int = 3  # 3 repeats grayscale for ImageNet backbones
    normalize: str = "imagenet"  # imagenet | half (to [-1, 1]) | none
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    batch_size: int = 64
    eval_batch_size: int = 500
    num_workers: int = 0
    balanced_sampler: bool = False
    source: str = "real"  # real | synthetic | mixed
    synthetic_path: str | None = None  # a synthetic.pt written by task=synthesize
    synthetic_ratio: float = 1.0  # mixed: fraction of the synthetic set added to the real one
    # check: a synthetic set must come from a GAN trained on exactly this run's real training
    # images and none of its val/test images; ignore: use it anyway (metrics.json says so)
    synthetic_provenance: str = "check"
    # the same rule for every model that feeds this run (a pseudolabel teacher or ensemble
    # member, a model.init checkpoint): check | ignore (recorded in metrics.json)
    model_provenance: str = "check"
    # mixed: the synthetic part's share of the batches, in expectation (each batch is drawn with
    # replacement by weights, so one batch's share varies around it; null: in proportion to
    # the parts' sizes)
    mix_balance: float | None = None
    # the unlabelled pool a semi-supervised arm (semi.method) learns from: the training split's
    # images outside the labelled subset and val, labels never read; at most this many (a
    # seeded draw), null = all of them
    unlabelled_cap: int | None = None
    # your own datamodule class's extra constructor arguments (a yaml starting from schema_image)
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class MnistConfig(DatasetConfig):
    val_per_class: int = 100  # held out of the 60k training pool, never the official test set
    download: bool = False


@dataclass
class MedMnistConfig(DatasetConfig):
    npz_path: str = MISSING
    class_names: list[str] = field(default_factory=list)


@dataclass
class FilesConfig(DatasetConfig):
    """Images in files (datamodules/files.py): MURA and your own folders / CSV."""

    val_fraction: float = 0.1  # of the train groups (patients), when no image is marked val
    test_fraction: float = 0.2  # of the groups, only when no image has a split at all
    on_bad_image: str = "skip"  # skip (listed in skipped_images.csv) | error
    max_bad_fraction: float = 0.05  # more unreadable images than this: stop
    cache_dir: str = MISSING
    decode_workers: int = 0  # 0 = all cores
    color: str = "gray"  # gray | rgb: what images are decoded to


@dataclass
class MuraConfig(FilesConfig):
    body_part: BodyPart = BodyPart.all


@dataclass
class FolderConfig(FilesConfig):
    # a CSV with columns path,label[,group][,split] (paths relative to the CSV's folder); null:
    # `root` holds one folder per class, or train/ [val/] [test/] folders each holding them
    csv: str | None = None
    class_names: list[str] | None = None  # the class order; null: sorted folder / label names


# ----------------------------------------------------------------------------- model
@dataclass
class SchedulerConfig:
    name: str = "cosine"  # cosine | step | none
    warmup_epochs: int = 0
    step_size: int = 10
    gamma: float = 0.1
    min_lr_ratio: float = 0.01


@dataclass
class ClassifierConfig:
    backbone: str = MISSING  # mobilenet_v2 | resnet18 | resnet50 | densenet169 | small_cnn
    init: str = "imagenet"  # imagenet | scratch | <path to a checkpoint>
    weights: str = "DEFAULT"  # torchvision weights enum name used by init=imagenet
    finetune: str = "full"  # full | head | last_n
    finetune_last_n: int = 2
    dropout: float = 0.2
    width: int = 32  # small_cnn only
    optimizer: dict[str, Any] = field(
        default_factory=lambda: {"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 1e-4}
    )
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    label_smoothing: float = 0.0
    class_weighted_loss: bool = False
    # how a prediction is decided: argmax | val_balanced_acc (two classes: the threshold on
    # P(class 1) that maximizes balanced accuracy on val -- never on test)
    decision: str = "argmax"
    channels_last: bool = False
    # false | true (torch.compile the network) | graph: the training step (forward, backward,
    # Adam/AdamW) traced as one graph (fullgraph=True; on CUDA a CUDA graph, mode=reduce-overhead;
    # torch >= 2.11, one device, no fp16 loss scaling, no gradient clipping)
    compile: Any = False


# ----------------------------------------------------------------------------- GAN
@dataclass
class GuidanceConfig:
    teacher: str | None = None
    weight: float = 0.0


@dataclass
class GANConfig:
    # the training procedure (a LightningModule); the two networks are config groups of their
    # own (conf/gan/generator/, conf/gan/discriminator/): a user's G/D is a class plus a yaml,
    # selected with gan/generator=<name>. The task passes num_classes, image_size, channels
    # (and z_dim to G).
    _target_: str = "lightning_modules.gan.ConditionalGAN"
    generator: Any = MISSING
    discriminator: Any = MISSING
    image_size: int = 32
    z_dim: int = 64
    loss: str = "hinge"  # hinge | bce
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    beta1: float = 0.0
    beta2: float = 0.99
    d_steps: int = 1
    diffaugment: str = "color,translation,cutout"  # "" disables
    label_smoothing: float = 0.0  # one-sided, bce loss only
    mode_seeking: float = 1.0  # weight of the mode-seeking term (0 = off): diversity within a class
    ema_decay: float = 0.999
    ema_start_step: int = 0
    divergence_patience: int = 200  # steps of NaN/collapse before the run stops
    # torch.compile G and D: null (eager) | default | reduce-overhead (CUDA graphs: fewer kernel
    # launches, what a launch-bound 28 px GAN step needs) | max-autotune; or step: the whole
    # update (D steps, G step, both Adam steps) compiled as one function (one device, no fp16
    # loss scaling); or graph: the whole step (D steps, G step, both Adams, the EMA, the step
    # count) traced as one graph (fullgraph=True; on CUDA a CUDA graph, mode=reduce-overhead;
    # torch >= 2.11, one device, no fp16 loss scaling; static shapes: a smaller last batch is a
    # graph of its own, none with gan.steps). Not yet measured on a GPU (README, Speed); the
    # first steps pay the compile.
    compile: str | None = None
    # ---- training loop (tasks/gan.py), not module arguments
    epochs: int = 3000  # passes over the real images; ignored when `steps` is set
    # G+D steps: the budget in steps, so small subsets are not under-trained (exactly this many,
    # in equal epochs of full batches; metrics.json reports the steps run)
    steps: int | None = None
    batch_size: int = 64
    sample_every_n_steps: int = 500
    checkpoint_every_n_steps: int = 1000
    eval_n_per_class: int = 200  # samples per class for FID/KID/precision/recall at the end
    # the real images the quality metrics compare against: val (val/gan_* keys, may be chosen
    # by) | test (test/gan_* keys: reported only, never a chooser). Never the training images.
    eval_split: str = "val"
    feature_ckpt: str | None = None  # classifier checkpoint whose penultimate layer is the feature
    knn_k: int = 3
    # a frozen classifier (a classify run dir trained on this run's own real subset) whose
    # cross-entropy toward each image's class joins G's loss with this weight (0: off)
    guidance: GuidanceConfig = field(default_factory=lambda: GuidanceConfig())


@dataclass
class DCGANGeneratorConfig:
    _target_: str = "lightning_modules.nets.gan_nets.Generator"
    width: int = 64  # channels of the last block (x2 per block towards the input, at most x8)
    embed_dim: int = 32  # class embedding concatenated to z


@dataclass
class DCGANDiscriminatorConfig:
    _target_: str = "lightning_modules.nets.gan_nets.Discriminator"
    width: int = 64
    spectral_norm: bool = True
    mbstd: bool = True  # minibatch-stddev layer against collapse inside a class


@dataclass
class ProjectedDiscriminatorConfig:
    """gan/discriminator=projected: heads on a frozen pretrained backbone (projected_d.py)."""

    _target_: str = "lightning_modules.nets.projected_d.ProjectedDiscriminator"
    backbone: str = "mobilenet_v2"  # any torchvision classification model with ImageNet weights
    weights: str | None = "IMAGENET1K_V1"  # from TORCH_HOME; null: random (a control)
    input_size: int = 64  # the backbone sees the images resized to this
    taps: list[int] | None = None  # feature depths (block indices); null: 3 spread out
    proj_channels: int = 64  # the fixed random 1x1 projection's output channels
    width: int = 64  # each head's channels


@dataclass
class FusedGANsConfig:
    """task=gan_fused: the GANs of several seeds (one dataset, n_per_class and `gan` config)
    trained as one stacked model, each written as a complete GAN run dir (seed_<s>/)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


# keys of GANConfig that are not arguments of the GAN module
GAN_LOOP_KEYS = (
    "_target_",
    "epochs",
    "steps",
    "batch_size",
    "sample_every_n_steps",
    "checkpoint_every_n_steps",
    "eval_n_per_class",
    "eval_split",
    "feature_ckpt",
    "knn_k",
    "guidance",
)


@dataclass
class SynthesizeConfig:
    checkpoint: str | None = None  # a GAN checkpoint (run dir/checkpoints/last.ckpt) or run dir
    n_per_class: int = 3200
    classes: list[int] | None = None  # null = every class; e.g. [1] to add only the rarer class
    batch_size: int = 500
    # sample z from a normal truncated to [-t, t] (fidelity for diversity); null = plain normal
    truncation: float | None = None


@dataclass
class FixMatchConfig:
    """semi.method=fixmatch (Sohn et al. 2020): pseudo-labels from a weak view of unlabelled
    images above `threshold` train the strong view (RandAugment + cutout)."""

    mu: int = 3  # unlabelled images per labelled one in a step
    threshold: float = 0.95  # confidence a weak view's prediction needs to become a label
    weight: float = 1.0  # lambda_u: the unlabelled loss's weight
    strong_ops: int = 2  # RandAugment: operations per image
    strong_magnitude: int = 10  # RandAugment: magnitude (0-30)
    cutout: float = 0.5  # cutout square side, a fraction of the image side (0: none)
    # evaluate (val, checkpoint choice, test) an exponential moving average of the weights, as
    # Sohn et al. do (0.999), warmed up as min(decay, (1+n)/(10+n)); null: the weights themselves
    ema_decay: float | None = None


@dataclass
class SemiGANConfig:
    """semi.method=semi_gan (Salimans et al. 2016): the classifier is the discriminator (K
    logits, "fake" implied), trained on labelled cross-entropy + real-vs-fake on unlabelled and
    generated images; the generator by feature matching on the classifier's features."""

    mu: int = 1  # unlabelled (and generated) images per labelled one in a step
    weight: float = 1.0  # the unsupervised real-vs-fake loss's weight
    z_dim: int = 64
    g_width: int = 32  # the generator's base channels (lightning_modules.nets.gan_nets)
    lr_g: float = 2.0e-4
    beta1: float = 0.5


@dataclass
class SemiConfig:
    """A semi-supervised classifier (arms semi and semi_gan): besides its labelled subset it
    learns from the unlabelled pool (dataset.unlabelled_cap), whose labels it never reads."""

    method: str | None = None  # null (supervised) | fixmatch | semi_gan
    fixmatch: FixMatchConfig = field(default_factory=FixMatchConfig)
    semi_gan: SemiGANConfig = field(default_factory=SemiGANConfig)


@dataclass
class DistillConfig:
    """task=pseudolabel: a teacher classifier labels extra training images with its soft
    predictions (knowledge distillation); classify then trains on real + these."""

    # a finished task=classify run dir or checkpoint, or a list of them (an ensemble: the mean
    # of their probabilities)
    teacher: Any = None
    source: str = (
        "synthetic"  # synthetic: a GAN's set (dataset.synthetic_path) | real: augmented real
    )
    min_confidence: float = (
        0.6  # synthetic: keep images the teacher puts in their class with p >= this
    )
    temperature: float = 1.0  # soften the teacher's probabilities
    n_per_class: int | None = None  # real: augmented copies per class (null: as many as synthesize)
    batch_size: int = 500
    evaluate_teacher: bool = (
        True  # report the teacher's own val/test accuracy (never used to choose)
    )


@dataclass
class PipelineConfig:
    arms: list[str] = field(default_factory=lambda: ["real", "synthetic", "mixed"])
    # per-arm dotted-key overrides for task=classify, e.g. {synthetic: {trainer.max_epochs: 3}}
    arm_overrides: dict[str, Any] = field(default_factory=dict)
    # named variants of an arm: {mixed_25: {arm: mixed, overrides: {dataset.synthetic_ratio: 0.25}}}
    variants: dict[str, Any] = field(default_factory=dict)
    # named GANs besides the run's own `gan` (each its own gan_<name> + synthesize_<name> stages,
    # on this run's seed and real subset, with the same G+D step budget):
    #   {projected: {discriminator: <gan/discriminator node>, generator: <node>,
    #                guide: <arm whose classifier guides G>, overrides: {gan.<key>: value}}}
    # an arm uses one through a variant: variants: {synthetic_projected: {arm: synthetic,
    # gan: projected}} (conf/experiment/gan_variants.yaml composes the nodes by name)
    gan_variants: dict[str, Any] = field(default_factory=dict)
    # the teacher arm's overrides of task=classify (its model, input size, schedule)
    teacher_overrides: dict[str, Any] = field(default_factory=dict)
    # the arms whose models label images for distill_real / distill_gan (mean probabilities)
    teacher_ensemble: list[str] = field(default_factory=lambda: ["teacher"])
    # train a feature classifier on the full real set first, for FID/KID/precision/recall
    feature_net: bool = True
    feature_net_overrides: dict[str, Any] = field(default_factory=dict)
    # the comparisons that answer the question: [[arm, baseline], ...], corrected together
    # (Holm) in task=report; every other comparison is labelled exploratory
    primary: list[Any] = field(default_factory=list)
    primary_metric: str = "test/acc"  # the metric the primary comparisons are judged on
    # arms allowed a different step budget from their baseline (e.g. a teacher with another
    # model): their comparisons are shown with both budgets, never silently
    unequal_budgets: list[str] = field(default_factory=list)
    # the run's own GAN from elsewhere instead of its gan stage: a GAN run dir or a folder of
    # them (a task=gan_fused dir), of which the one with this run's seed, real data and gan
    # settings is taken (tasks.gan_fused.find_gan_run)
    gan_from: str | None = None
    # a multirun trains all its pipelines' GANs first, as one task=gan_fused stage per group of
    # seeds (<sweep dir>/fused_gans/), and each pipeline takes its own from there
    fused_gans: bool = False


FUSED_GANS_DIR = "fused_gans"  # <sweep dir>/fused_gans/<group>/seed_<s>: pipeline.fused_gans


# ----------------------------------------------------------------------------- trainer, logger
@dataclass
class TrainerConfig:
    _target_: str = "pytorch_lightning.Trainer"
    accelerator: str = "auto"
    devices: Any = 1  # one device per job (a sweep shares the GPUs out); trainer=ddp: more
    strategy: Any = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    max_epochs: int = 10
    max_steps: int = -1
    min_epochs: int | None = None
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    check_val_every_n_epoch: int = 1
    val_check_interval: Any = None
    num_sanity_val_steps: int = 0
    log_every_n_steps: int = 10
    gradient_clip_val: float | None = None
    deterministic: Any = False
    benchmark: bool | None = None
    enable_progress_bar: bool = True
    enable_model_summary: bool = True
    default_root_dir: str | None = None


@dataclass
class LoggerConfig:
    csv: bool = True
    wandb: bool = True
    project: str = "xfergan"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    group: str | None = None
    job_type: str | None = None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 30.0  # seconds to wait for W&B online / MLflow before going on without
    mlflow: bool = False  # MLflow (pip install -e ".[mlflow]"): a self-hosted tracker
    # MLflow tracking URI (http://host:5000, file:..., sqlite:...); null: $MLFLOW_TRACKING_URI,
    # else a file store in outputs/mlruns
    tracking_uri: str | None = None


@dataclass
class CheckpointConfig:
    monitor: str = "val/acc"  # a val/ or train/ metric, never test/; no val set: the last epoch
    mode: str = "max"
    test: str = "best"  # best | last: which checkpoint task=classify tests
    every_n_epochs: int = 1


@dataclass
class SweepConfig:
    # what run.py returns to a sweeper (Optuna): a train/ or val/ key of metrics.json, never test/
    objective: str = "val/acc"


@dataclass
class EvaluateConfig:
    # task=evaluate: tested (the checkpoint the run tested) | best | last | <path of a .ckpt>
    checkpoint: str = "tested"


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    data_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING
    log_dir: str = MISSING


# ----------------------------------------------------------------------------- top level
@dataclass
class Config:
    task: Task = Task.classify
    seed: int = 0
    body_part: BodyPart = BodyPart.all
    resume: bool = False
    device_pool: bool = True  # multirun on a multi-GPU machine: each job gets a GPU of its own
    name: str = "default"  # experiment / sweep name: W&B group, report titles
    arm: str | None = None  # set by task=pipeline on its stages: which arm a classifier is
    smoke: bool = False  # debug=smoke: at most 1 epoch / 2 steps per stage, whatever overrides say
    dir: str | None = None  # task=report: a run or multirun dir
    run: str | None = None  # task=evaluate: a finished run dir
    group: str | None = None  # task=dashboard: the experiment (W&B group) to build it for
    input: str | None = None  # task=predict: a folder, a CSV (path[,group]) or an image
    dataset: Any = MISSING
    model: ClassifierConfig = MISSING
    gan: GANConfig = field(default_factory=GANConfig)
    gan_fused: FusedGANsConfig = field(default_factory=FusedGANsConfig)
    synthesize: SynthesizeConfig = field(default_factory=SynthesizeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # Lightning callbacks by config (conf/callbacks/): name -> {_target_, tasks: [...], ...}
    callbacks: dict[str, Any] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)


# ----------------------------------------------------------------------------- values
# what a type cannot refuse: checked before anything loads or trains (check_values)
POSITIVE = (
    "dataset.batch_size",
    "dataset.eval_batch_size",
    "gan.batch_size",
    "synthesize.batch_size",
    "distill.batch_size",
)
CHOICES = {
    "checkpoint.mode": ("max", "min"),
    "checkpoint.test": ("best", "last"),
    "model.decision": ("argmax", "val_balanced_acc"),
    "semi.method": ("fixmatch", "semi_gan"),
}


def check_values(cfg) -> None:
    """A value no job can run with is one line naming its key and what to use (UserError),
    before any data loads or anything trains."""
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise UserError(f"{key}={value}: use a batch size of at least 1")
    for key, choices in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in choices:
            raise UserError(f"{key}={value!r}: use {' or '.join(choices)}")
    seed = OmegaConf.select(cfg, "seed")
    if seed is not None and not 0 <= int(seed) < 2**32:
        raise UserError(f"seed={seed}: use a whole number from 0 to {2**32 - 1}")


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="dataset", name="schema_mnist", node=MnistConfig)
    cs.store(group="dataset", name="schema_medmnist", node=MedMnistConfig)
    cs.store(group="dataset", name="schema_mura", node=MuraConfig)
    cs.store(group="dataset", name="schema_folder", node=FolderConfig)
    cs.store(group="dataset", name="schema_image", node=DatasetConfig)  # your own datamodule
    cs.store(group="model", name="schema_classifier", node=ClassifierConfig)
    cs.store(group="gan", name="schema_gan", node=GANConfig)
    cs.store(group="gan/generator", name="schema_dcgan", node=DCGANGeneratorConfig)
    cs.store(group="gan/discriminator", name="schema_dcgan", node=DCGANDiscriminatorConfig)
    cs.store(group="gan/discriminator", name="schema_projected", node=ProjectedDiscriminatorConfig)
    cs.store(group="trainer", name="schema_trainer", node=TrainerConfig)
    cs.store(group="logger", name="schema_logger", node=LoggerConfig)
    cs.store(group="paths", name="schema_paths", node=PathsConfig)
