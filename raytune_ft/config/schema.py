"""The typed shape of a raytune_ft job: one ``JobConfig`` with a section per pipeline stage.

Validated once at the edge (``load_config``); after that every function receives only the
section it needs. Each field is documented once, by its attribute docstring, and that text is
what ``raytune-ft validate --explain`` and the dashboard show.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from .template_names import TEMPLATE_NAMES, TOOL_FORMAT_NAMES, unknown_template, unknown_tool_format

__all__ = [
    "PBT_KEYS",
    "REFERENCE_FREE_LOSSES",
    "ROW_FORMATS",
    "SEARCH_FORMS",
    "SERVED_NAME",
    "SWEEP_DATA_KEYS",
    "SWEEP_FROZEN",
    "AdapterConfig",
    "ApolloConfig",
    "AutoscalingConfig",
    "DataConfig",
    "ExportConfig",
    "GaLoreConfig",
    "JobConfig",
    "JudgeConfig",
    "MethodConfig",
    "ModelConfig",
    "RolloutConfig",
    "ScalingConfig",
    "SearchDimension",
    "Section",
    "ServeConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


CommaList = Annotated[list[str], BeforeValidator(_split_commas)]
"""A list of names that also accepts LLaMA-Factory's comma-separated string form."""


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, fields carry their docstrings."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


class ModelConfig(Section):
    source: str = "builtin:smollm2-135m-instruct"
    """Where the base model comes from: ``builtin:NAME`` (shipped with raytune_ft), a local Hugging Face
    folder (config.json + safetensors + tokenizer), a Hugging Face Hub id ``org/name`` with an optional
    ``@revision`` (branch, tag or commit), or a ModelScope id ``modelscope:org/name[@revision]`` (plain ids
    go to ModelScope when ``USE_MODELSCOPE_HUB=1``). A local folder of the same spelling wins over a Hub id.
    Hub models are downloaded once per node into the hub's cache (``model.cache_dir``); with
    ``HF_HUB_OFFLINE=1`` only the cache is read. The driver pins a Hugging Face revision to its commit, so
    every worker, replica and checkpoint loads the same weights (checkpoints record ``org/name@<commit>``),
    and a restarted run keeps its checkpoints' commit when the config names a branch or nothing (ModelScope
    ids are pinned to a revision name, as its cache records them). A local folder is recorded as an
    absolute path."""

    trust_remote_code: bool = False
    """Let transformers (and vLLM) run the Python code a model folder or Hub repository ships for its
    architecture, tokenizer or config (``auto_map`` in config.json). Applies to every load: training,
    chat, serve, export and eval. Only for repositories you trust."""

    cache_dir: str | None = None
    """Cache folder for Hub models (Hugging Face and ModelScope) instead of each hub's default
    (``HF_HUB_CACHE`` / ``MODELSCOPE_CACHE``): a folder shared by every node lets a cluster download a
    model once."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Storage dtype of the base weights in training (trainable weights stay float32 unless
    ``train.precision`` is pure_bf16) and of a full-tuning checkpoint. float32 is fastest on CPUs
    without bf16 units; bfloat16 halves a frozen base's memory."""

    attn_implementation: Literal[
        "auto", "sdpa", "eager", "flex_attention", "flash_attention_2", "flash_attention_3"
    ] = "auto"
    """Attention kernel (docs/training.md#attention). ``sdpa``: PyTorch's fused attention, run on each sample of a
    packed row, so no seq x seq mask is built; ``flash_attention_2`` / ``flash_attention_3``: the FlashAttention
    packages' varlen kernels (CUDA); ``flex_attention``: torch's block-sparse kernel (trains on CUDA only);
    ``eager``: plain matmuls with a dense mask. ``auto``: on CUDA FlashAttention-3 (Hopper), then -2 when
    installed, else sdpa; on CPU sdpa."""

    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of keeping them:
    much less activation memory for about a third more compute. (LLaMA-Factory turns it on unless
    ``disable_gradient_checkpointing``.)"""

    quantization_bit: Literal[4, 8] | None = None
    """QLoRA: quantize the frozen base to 4 or 8 bits while it loads (``quantization_method``) and train a
    LoRA adapter on it. Needs ``adapter.type: lora`` and ``scaling.strategy: ddp``. Chat, serve and export of
    the run load the full-precision base with the adapter (export merges into it). A base that is already
    quantized (GPTQ, AWQ, torchao... in its config.json) loads as it is, without this key."""

    quantization_method: Literal["bnb", "torchao"] = "bnb"
    """How ``quantization_bit`` quantizes: ``bnb`` (bitsandbytes: NF4 with double quantization computing in
    ``dtype``, or LLM.int8; CUDA, and CPU through its CPU backend) or ``torchao`` (weight-only int8, CPU and
    CUDA; weight-only int4, CUDA)."""

    compile: bool = False
    """Compile the model's forward with ``torch.compile`` (inductor) at its first step: faster steps
    after a compile of a minute or more (longer on CPU, which also needs a C++ compiler). Opt-in."""

    liger_kernel: bool = False
    """On CUDA workers, patch Liger's Triton kernels (RMSNorm, RoPE, SwiGLU/GeGLU) into the model for training
    (the ``liger-kernel`` package, extra ``gpu``). The LM head and loss stay our chunked loss, which already never
    holds the whole logits. Needs ``scaling.use_gpu``; a model type Liger does not cover trains unpatched."""


class DataConfig(Section):
    dataset: CommaList = Field(default_factory=lambda: ["identity"])
    """Datasets to train on: names from ``dataset_dir/dataset_info.json``, bundled names (``identity``,
    ``alpaca_300``), or paths to .json/.jsonl/.parquet/.csv/.arrow files (.txt for ``stage: pt``, one row
    per line) or folders of them. A comma-separated string is accepted, as in LLaMA-Factory. See
    docs/datasets.md for the registry keys (hub datasets, subsets, splits, ``num_samples``)."""

    dataset_dir: str = "data"
    """Folder holding a LLaMA-Factory ``dataset_info.json``; its entries are looked up first and
    their ``file_name`` is relative to this folder. Ignored when the file does not exist.
    ``REMOTE:org/name`` reads the file and its data from a Hugging Face dataset repository (through
    the hub cache); ``ONLINE`` takes every dataset name as a hub dataset repository."""

    placeholders: dict[str, str] = Field(default_factory=lambda: {"name": "Raytune", "author": "the raytune_ft team"})
    """Values substituted for ``{{key}}`` in the data, e.g. the identity set's name and author."""

    cutoff_len: int = Field(default=1024, ge=8)
    """Maximum tokens per sample. Longer samples are truncated from the end of the conversation;
    a sample whose first answer does not fit at all is dropped."""

    image_max_pixels: int = Field(default=768 * 768, ge=1)
    """Images with more pixels are scaled down, keeping their aspect, before the model's processor (which may
    resize them again); fewer pixels mean fewer image tokens."""

    image_min_pixels: int = Field(default=32 * 32, ge=1)
    """Images with fewer pixels are scaled up, keeping their aspect, before the model's processor."""

    train_on_prompt: bool = False
    """Compute the loss on prompt tokens too (normally only assistant answers are learned)."""

    mask_history: bool = False
    """In multi-turn rows, learn only the last assistant answer; earlier turns are context only."""

    max_samples: int | None = Field(default=None, ge=1)
    """Use at most this many rows from each dataset file: the first N (handy for smoke runs). For a
    registry entry with ``num_samples``, at most N of its drawn rows, as in LLaMA-Factory."""

    template: str | None = None
    """A LLaMA-Factory chat template name (``qwen3``, ``qwen3_nothink``, ``llama3``, ``mistral``, ``gemma3``,
    ``chatml``, ``default``, ... every name of its registry; docs/templates.md), encoded token for token as
    LLaMA-Factory encodes it, tool-call rows included. Default: the tokenizer's own chat template (rows
    without tool turns only). The template used is saved with every checkpoint, so chat, serve and export
    render prompts exactly as trained."""

    enable_thinking: bool | None = True
    """Thinking templates (``qwen3``, ``deepseekr1``, ...): true learns each answer's thought block (an empty
    one where the answer has none); false drops thought blocks and puts an empty one in the prompt; null
    keeps the thoughts that are there and puts an empty block in the prompt of answers without one."""

    preserve_thinking: bool = False
    """Thinking templates: keep earlier turns' thought blocks where LLaMA-Factory drops them (the history
    of pairs, KTO rows and inference prompts; with ``mask_history``, of supervised rows)."""

    tool_format: str | None = None
    """Write tool definitions and function calls in this tool format (``default``, ``qwen``, ``llama3``,
    ``mistral``, ``glm4``, ...) instead of the template's own. Default: the template's."""

    default_system: str | None = None
    """System message for rows without one, instead of the template's default system message."""

    packing: bool = False
    """Pack several samples into each ``cutoff_len`` row. Position ids restart at every sample and
    attention cannot cross samples, so the loss equals unpacked training with far less padding."""

    padding_free: bool = True
    """Pack the rows of each micro-batch into as few ``cutoff_len`` rows as hold them instead of padding
    each to the longest: the same samples and loss with little or no padding to compute. Applies to
    architectures checked to keep attention inside each sample (``raytune_ft.models.PACKED_ATTENTION``:
    llama, qwen2/3, mistral, gemma, phi3, mixtral and more); others are padded. Set false to always pad."""

    balance_micro_batches: bool = True
    """With ``padding_free`` micro-batches and more than one worker: each worker reads 32 micro-batches'
    rows at a time and regroups them so that every micro-batch holds about the same number of tokens.
    Workers wait for the slowest one at every step, so even micro-batches keep all of them busy. Every
    row is still used once per epoch, in the same shuffled order of windows; only which rows share a
    micro-batch changes. Set false to batch rows as they come."""

    mix_strategy: Literal["concat", "interleave_under", "interleave_over"] = "concat"
    """How several datasets combine: ``concat`` uses every row once; ``interleave_under`` draws rows
    with ``interleave_probs`` until the first dataset runs out (smaller datasets are subsampled);
    ``interleave_over`` until the last runs out (smaller datasets are repeated)."""

    interleave_probs: list[float] | None = None
    """Share of each dataset in the mix for the interleave strategies, in ``dataset`` order; a
    comma-separated string is accepted. Default: equal shares."""

    val_size: float = Field(default=0.0, ge=0)
    """Rows held out for validation, reported as ``eval_loss`` (online stages: ``eval_reward`` of one greedy
    answer per prompt): a fraction (< 1) or a row count (>= 1). Rows are chosen by a seeded hash of file and row
    number, so the split is stable."""

    eval_dataset: CommaList | None = None
    """Datasets used for validation instead of a ``val_size`` split (same forms as ``dataset``)."""

    tokenized_path: str | None = None
    """Folder for the tokenized dataset (parquet). The first run writes it, later runs (sweeps,
    restarts) read it instead of tokenizing again; a folder written under other data settings or
    another tokenizer is refused, never overwritten."""

    on_bad_rows: Literal["error", "skip"] = "error"
    """What a malformed row does: ``error`` stops with the file, row number and problem; ``skip``
    leaves it out and logs it (with a running count)."""

    shuffle: bool = True
    """Shuffle the data (seeded by ``train.seed``): block order once, globally, and rows within a
    streaming buffer of ``shuffle_buffer_size`` rows on each worker, re-seeded every epoch."""

    shuffle_buffer_size: int = Field(default=1024, ge=1)
    """Rows each worker holds for shuffling. Larger mixes more; the first batch waits until the buffer fills."""

    preserve_order: bool = True
    """Keep the order in which rows reach each worker fixed from run to run (Ray Data's
    ``preserve_order``), so a resumed run skips exactly the micro-batches it had consumed. Off, Ray Data
    may route blocks by locality and emit them as they finish (a little faster on large clusters), and a
    resumed run skips the right number of rows but not necessarily the same ones."""

    tokenize_concurrency: int | None = Field(default=None, ge=1)
    """Number of Ray Data tokenizer actors. Default: follows the cluster's free CPUs."""

    @field_validator("interleave_probs", mode="before")
    @classmethod
    def _split_probs(cls, value: object) -> object:
        return _split_commas(value)

    @field_validator("template")
    @classmethod
    def _check_template(cls, name: str | None) -> str | None:
        if name is not None and name not in TEMPLATE_NAMES:
            raise ValueError(unknown_template(name))
        return name

    @field_validator("tool_format")
    @classmethod
    def _check_tool_format(cls, name: str | None) -> str | None:
        if name is not None and name not in TOOL_FORMAT_NAMES:
            raise ValueError(unknown_tool_format(name))
        return name

    @model_validator(mode="after")
    def _check_mixing(self) -> DataConfig:
        probs = self.interleave_probs
        if probs is not None:
            if len(probs) != len(self.dataset):
                raise ValueError(
                    f"interleave_probs has {len(probs)} values for {len(self.dataset)} datasets; give one per dataset"
                )
            if any(p <= 0 for p in probs):
                raise ValueError("interleave_probs must all be > 0")
            if self.mix_strategy == "concat":
                raise ValueError("interleave_probs needs mix_strategy interleave_under or interleave_over")
        if self.eval_dataset and self.val_size:
            raise ValueError("set either val_size (a split of dataset) or eval_dataset, not both")
        return self


ROW_FORMATS = {
    "sft": "sft", "pt": "pt", "rm": "preference", "dpo": "preference", "kto": "kto", "grpo": "prompt", "ppo": "prompt",
}  # fmt: skip
"""The data row format each ``method.stage`` trains on."""

REFERENCE_FREE_LOSSES = frozenset({"simpo", "orpo"})

PAIR_LOSS_NAMES = ("sigmoid", "ipo", "hinge", "simpo", "orpo")
"""``method.loss`` values of ``stage: dpo``."""

POLICY_LOSS_NAMES = ("grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp")
"""``method.loss`` values of ``stage: grpo``."""

ONLINE_STAGES = frozenset({"grpo", "ppo"})
"""Stages that generate their own answers with rollout engines while they train."""


JUDGE_PROMPT = (
    "You grade answers. Question (as the model saw it):\n{question}\n\nReference answer: {reference}\n\n"
    "Answer to grade:\n{answer}\n\nHow correct and helpful is the answer, from 0 (wrong) to 10 (perfect)? "
    "Reply with the number only."
)


class JudgeConfig(Section):
    """An LLM behind an OpenAI-compatible endpoint that grades answers: the ``judge`` reward."""

    base_url: str | None = None
    """The endpoint's base URL, e.g. ``http://judge-host:8000/v1`` (``raytune-ft serve`` gives one); needed
    when ``method.reward`` names ``judge``."""

    model: str = ""
    """The model the endpoint serves that grades (``GET /v1/models`` lists them)."""

    api_key_env: str = "OPENAI_API_KEY"
    """The environment variable holding the endpoint's key (set it in the job's ``runtime_env`` on a cluster);
    a key itself never goes in a config, which every checkpoint saves."""

    prompt: str = JUDGE_PROMPT
    """What the judge is asked, with ``{question}`` (the rendered prompt), ``{answer}`` and ``{reference}``
    (the row's ground truth). The reply's last fraction ("7/10") on its own scale, else its last number over
    ``max_score``, is the reward (clamped to 0..1); a reply without a number is not judged (None)."""

    max_score: float = Field(default=10.0, gt=0)
    """The top of the judge's scale."""

    max_tokens: int = Field(default=16, ge=1)
    """Longest reply of the judge, in tokens."""

    concurrency: int = Field(default=8, ge=1)
    """Requests each training worker keeps in flight."""

    timeout_s: float = Field(default=60.0, gt=0)
    """Per request; a request that fails after two retries leaves its answer not judged."""


class MethodConfig(Section):
    stage: Literal["sft", "pt", "rm", "dpo", "kto", "grpo", "ppo"] = "sft"
    """Training objective. ``sft``: supervised fine-tuning on chat/instruction data (answers are
    learned). ``pt``: continued pre-training on plain text (a ``text`` column, or the column a
    dataset_info.json entry maps as ``prompt``); every token is learned and documents longer than
    ``data.cutoff_len`` are split into several rows. ``rm``: a reward model (a scalar value head on
    the LM) trained on preference pairs. ``dpo``: preference optimisation on pairs with ``loss``.
    ``kto``: KTO on answers labelled desirable or undesirable. Pairs are prompt + chosen + rejected
    rows (LLaMA-Factory's ``ranking: true`` datasets); KTO rows carry a boolean ``label`` (``kto_tag``).
    ``grpo``: online RL: rollout engines (``rollout``) answer each prompt ``group_size`` times, the
    ``reward`` functions score the answers, and the policy learns from the advantages ``loss`` derives.
    Its rows are conversations whose last answer is left out, plus a ground-truth ``answer`` column
    (else the left-out answer is the ground truth). ``ppo``: online RL with a learned critic on the same
    rows: one answer per prompt (``group_size`` 1 unless set), a value head on the policy (as ``rm`` builds
    it) estimates each token's return, and the advantages come from GAE over per-token rewards (the
    answer's reward at its last token, minus ``kl_coef`` x the KL to the reference at every token, the
    coefficient adapted towards ``ppo_target``); the value loss joins the clipped policy loss."""

    loss: Literal[
        "sigmoid", "ipo", "hinge", "simpo", "orpo", "grpo", "dr_grpo", "dapo", "rloo", "reinforce_pp", "ppo"
    ] = "sigmoid"  # fmt: skip
    """Preference loss of ``stage: dpo``: ``sigmoid`` (DPO), ``ipo``, ``hinge`` (SLiC), or the
    reference-free ``simpo`` and ``orpo`` (which need no reference model at all). Objective of
    ``stage: grpo`` (``grpo`` when unset): ``grpo`` (group-normalised advantages, each answer's mean
    token loss), ``dr_grpo`` (advantages not divided by the group's std; token sum over answers x
    ``max_new_tokens``), ``dapo`` (clip-higher with ``epsilon_high`` 0.28 unless set, token-level
    mean, groups whose answers all scored the same left out), ``rloo`` (leave-one-out baseline) or
    ``reinforce_pp`` (group mean baseline, batch-normalised). ``stage: ppo`` has one loss, ``ppo``."""

    beta: float = Field(default=0.1, gt=0)
    """Preference temperature beta of dpo/ipo/hinge/simpo/kto; for ``orpo`` the weight lambda of
    the odds-ratio term."""

    label_smoothing: float = Field(default=0.0, ge=0, lt=0.5)
    """Conservative DPO (cDPO): the assumed probability that a pair's preference label is flipped
    (``sigmoid`` and ``simpo`` losses)."""

    ftx: float = Field(default=0.0, ge=0)
    """Weight of an added SFT term on the chosen answer (its length-averaged NLL) in ``dpo``; keeps
    the policy close to the chosen answers."""

    simpo_gamma: float = Field(default=0.5, ge=0)
    """SimPO's target reward margin gamma."""

    kto_desirable_weight: float = Field(default=1.0, gt=0)
    """KTO weight lambda_D of desirable answers' losses."""

    kto_undesirable_weight: float = Field(default=1.0, gt=0)
    """KTO weight lambda_U of undesirable answers' losses."""

    reference: Literal["live", "precomputed"] = "live"
    """Where the reference model's log-probabilities come from (dpo with sigmoid/ipo/hinge, kto).
    ``live``: computed each step, for LoRA by the same model with its adapters switched off (no
    second copy), for freeze/full tuning by a frozen copy of the base model. ``precomputed``: one
    Ray Data pass over the tokenized data before training computes them with the base model and
    joins them to the rows, so the training workers hold no reference and run one forward less."""

    group_size: int = Field(default=4, ge=1)
    """Answers generated per prompt: ``grpo`` compares them with each other (TRL's ``num_generations``; at
    least 2); ``ppo`` needs no group (1 unless set)."""

    reward: CommaList = Field(default_factory=lambda: ["exact_match"])
    """``grpo`` and ``ppo``: reward functions, by name (exact_match, math_verify, answer_format, or overlong:
    DAPO's soft length penalty) or import path ``module:function``, called as TRL calls its reward functions;
    or a reward model trained with ``stage: rm``, as ``rm:<checkpoint or run directory>``, which the run
    serves from a Ray actor of its own."""

    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    """The LLM judge of the ``judge`` reward."""

    reward_weights: list[float] | None = None
    """One weight per ``reward`` (all 1 when unset); the reward is their weighted sum."""

    epsilon: float = Field(default=0.2, gt=0, lt=1)
    """``grpo``: lower clip range of the policy ratio, 1 - epsilon (and the upper one unless ``epsilon_high``)."""

    epsilon_high: float | None = Field(default=None, gt=0)
    """``grpo``: upper clip range, 1 + epsilon_high (DAPO's clip-higher); None means ``epsilon``, or 0.28 for dapo."""

    kl: Literal["none", "k1", "k2", "k3"] = "none"
    """Estimator of the per-token KL to the reference model (Schulman's k1, k2 or k3), or ``none`` (no
    reference is held). ``grpo`` adds it to the loss (GRPO's paper uses k3); ``ppo`` subtracts it from each
    token's reward (k1 unless set, as InstructGPT and TRL's PPO)."""

    kl_coef: float = Field(default=0.04, ge=0)
    """Weight beta of the KL term when ``kl`` is not none; for ``ppo`` the starting value of the adaptive
    coefficient (0.2 unless set, TRL's ``init_kl_coef``)."""

    temperature: float = Field(default=1.0, gt=0)
    """``grpo``: sampling temperature of the answers; the policy's log-probs are taken at the same temperature."""

    max_new_tokens: int = Field(default=256, ge=1)
    """``grpo``: longest generated answer, in tokens (also the constant length of ``dr_grpo``'s normaliser)."""

    max_refills: int = Field(default=4, ge=0)
    """``dapo``'s dynamic sampling (Yu et al. 2025, sec. 3.2): when fewer of a step's groups have answers
    that scored differently than the step has prompts, generate for up to this many more batches of prompts
    and fill the step with their informative groups (verl's ``max_num_gen_batches``); 0 trains on the groups
    kept. A step that still falls short trains on what it found (``rollout/refills`` counts the rounds)."""

    ppo_epochs: int = Field(default=1, ge=1)
    """Optimizer passes over each generated batch (TRL's ``num_iterations``; 4 for ``ppo`` unless set, as
    LLaMA-Factory's). With more than one, the ratio to the generating policy departs from 1 and the clip
    ranges bound the update."""

    ppo_buffer_size: int = Field(default=1, ge=1)
    """``ppo``: mini-batches each generated batch is split into, one optimizer step each, so a batch makes
    ``ppo_epochs`` x ``ppo_buffer_size`` steps (LLaMA-Factory's ``ppo_buffer_size``)."""

    ppo_target: float | None = Field(default=6.0, gt=0)
    """``ppo``: the KL (summed over an answer's tokens) the adaptive KL controller steers towards (Ziegler
    et al. 2019, sec. 2.2; horizon 10000 answers, as TRL's); None keeps ``kl_coef`` fixed."""

    ppo_score_norm: bool = False
    """``ppo``: normalise each answer's reward by the running mean and std of all rewards so far."""

    ppo_whiten_rewards: bool = False
    """``ppo``: whiten the per-token rewards of each batch (keeping their mean) before GAE."""

    vf_coef: float = Field(default=0.1, ge=0)
    """``ppo``: weight of the value loss beside the policy loss."""

    value_clip: float | None = Field(default=0.2, gt=0)
    """``ppo``: value clipping range around the generating critic's values; None leaves the value loss plain."""

    gamma: float = Field(default=1.0, ge=0, le=1)
    """``ppo``: discount of GAE."""

    lam: float = Field(default=0.95, ge=0, le=1)
    """``ppo``: lambda of GAE (bias-variance trade-off of the advantage)."""

    @property
    def rows(self) -> str:
        """The data row format of this stage (``ROW_FORMATS``)."""
        return ROW_FORMATS[self.stage]

    @property
    def online(self) -> bool:
        """Whether this stage generates its own answers while it trains (``ONLINE_STAGES``)."""
        return self.stage in ONLINE_STAGES

    @property
    def needs_reference(self) -> bool:
        """Whether the objective compares against a reference model."""
        if self.online:
            return self.kl != "none"
        return self.stage == "kto" or (self.stage == "dpo" and self.loss not in REFERENCE_FREE_LOSSES)

    @property
    def clip_high(self) -> float:
        """The upper clip range actually used."""
        if self.epsilon_high is not None:
            return self.epsilon_high
        return 0.28 if self.loss == "dapo" else self.epsilon

    @model_validator(mode="after")
    def _check_loss(self) -> MethodConfig:
        if self.online and "loss" not in self.model_fields_set:
            object.__setattr__(self, "loss", self.stage)  # unset: the stage's own default, not dpo's
        if self.stage == "ppo":
            self._ppo_defaults()
        allowed = ("ppo",) if self.stage == "ppo" else POLICY_LOSS_NAMES if self.online else PAIR_LOSS_NAMES
        if self.loss not in allowed:
            raise ValueError(
                f"method.loss {self.loss!r} is not a loss of stage {self.stage}; use one of {', '.join(allowed)}"
            )
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward):
            raise ValueError(
                f"method.reward_weights has {len(self.reward_weights)} values for {len(self.reward)} rewards; "
                "give one per reward"
            )
        if self.stage == "grpo" and self.group_size < 2:
            raise ValueError(
                f"method.group_size {self.group_size}: grpo compares answers to the same prompt; use 2 or more"
            )
        if "judge" in self.reward and not self.judge.base_url:
            raise ValueError(
                "method.reward names judge but method.judge.base_url is not set: give the judge's OpenAI-compatible "
                "endpoint (e.g. http://host:8000/v1) and method.judge.model"
            )
        if self.ppo_buffer_size > 1 and self.stage != "ppo":
            raise ValueError("method.ppo_buffer_size applies to stage ppo; for more steps per batch use ppo_epochs")
        return self

    def _ppo_defaults(self) -> None:
        """PPO's own defaults for the keys a config leaves unset (LLaMA-Factory's and TRL's)."""
        for name, value in (("group_size", 1), ("kl", "k1"), ("kl_coef", 0.2), ("ppo_epochs", 4)):
            if name not in self.model_fields_set:
                object.__setattr__(self, name, value)


class AdapterConfig(Section):
    type: Literal["lora", "freeze", "full"] = "lora"
    """What is trained: ``lora`` adapters (base frozen), ``freeze`` (only some decoder layers, see
    ``freeze_trainable_layers``), or every weight (``full``)."""

    rank: int = Field(default=8, ge=1)
    """LoRA rank r."""

    alpha: int = Field(default=16, ge=1)
    """LoRA scaling numerator; the update is scaled by alpha / rank."""

    dropout: float = Field(default=0.0, ge=0, lt=1)
    """Dropout on the LoRA input."""

    target: CommaList = Field(default_factory=lambda: ["all"])
    """Modules that get adapters: ``all`` (every linear layer but the LM head) or module names such
    as ``q_proj,v_proj``. A comma-separated string is accepted."""

    use_rslora: bool = False
    """Scale LoRA updates by alpha / sqrt(rank) (rsLoRA, Kalajdzievski 2023), which keeps high ranks stable."""

    use_dora: bool = False
    """DoRA (Liu et al. 2024): learn a magnitude vector per output feature on top of the LoRA direction."""

    pissa_init: bool = False
    """PiSSA (Meng et al. 2024): start the adapter from each target weight's top-``rank`` singular
    vectors and train on the residual weight, which converges faster than LoRA's zero start.
    Checkpoints hold it converted to a plain LoRA of rank 2 x ``rank`` on the original base, so
    chat, serve and export load it like any adapter. Runs with ``scaling.strategy: ddp``."""

    pissa_iter: int = Field(default=16, ge=-1)
    """Iterations of the fast randomised SVD behind ``pissa_init``; -1 computes the exact SVD."""

    freeze_trainable_layers: int = 2
    """For ``type: freeze``: train the last N decoder layers (a negative N trains the first |N|)."""

    freeze_trainable_modules: CommaList = Field(default_factory=lambda: ["all"])
    """For ``type: freeze``: which modules inside those layers train, e.g. ``mlp,self_attn``;
    ``all`` trains the layers whole."""

    freeze_extra_modules: CommaList = Field(default_factory=list)
    """For ``type: freeze``: more modules outside the decoder layers that train, e.g. ``embed_tokens,norm``."""

    freeze_vision_tower: bool = True
    """Vision-language models: keep the vision tower (Qwen's ``visual``, LLaVA's and Gemma 3's ``vision_tower``)
    frozen, whatever ``type`` trains."""

    freeze_multi_modal_projector: bool = True
    """Vision-language models: keep the projector from image features to the language model's embeddings
    (``multi_modal_projector``, Qwen's ``visual.merger``) frozen."""

    freeze_language_model: bool = False
    """Vision-language models: keep the language model frozen (train the tower or projector alone, with
    ``type`` full or lora). The three flags only freeze: under ``type: freeze`` the chosen language-model layers
    train, and nothing else does."""

    init_from: CommaList = Field(default_factory=list)
    """Start from existing LoRA adapters (LLaMA-Factory's ``adapter_name_or_path``; a comma-separated string
    is accepted): each a raytune_ft checkpoint, a run directory (its newest checkpoint), any PEFT adapter
    folder (``adapter_config.json`` + weights) or a Hub id. All but the last are merged into the base model;
    the last is loaded and training continues it with its own rank, alpha and target modules (they win over
    the fields above). Chat, serve, export and eval of the run's checkpoints load the same base. Needs
    ``type: lora``."""

    new_adapter: bool = False
    """With ``init_from``: merge every listed adapter into the base and train a fresh LoRA adapter (this
    section's rank, alpha, target) on top, instead of continuing the last (LLaMA-Factory's
    ``create_new_adapter``)."""

    @model_validator(mode="after")
    def _check_init_from(self) -> AdapterConfig:
        if self.new_adapter and not self.init_from:
            raise ValueError("new_adapter trains a fresh adapter on top of init_from's merged adapters: set init_from")
        if self.init_from and self.type != "lora":
            raise ValueError(f"init_from starts from LoRA adapters: it needs type lora, not {self.type!r}")
        if self.init_from and self.pissa_init:
            raise ValueError("init_from continues existing adapters; pissa_init initialises new ones: choose one")
        return self


class GaLoreConfig(Section):
    """GaLore (Zhao et al. 2024): AdamW on gradients projected to a low rank, refreshed every few steps."""

    target: CommaList = Field(default_factory=lambda: ["all"])
    """Linear modules whose weight matrices get projected gradients: ``all`` (every linear layer but the LM
    head) or names such as ``mlp,self_attn``; the other trainable weights get plain AdamW."""

    rank: int = Field(default=16, ge=1)
    """Rank of the projected gradients."""

    update_interval: int = Field(default=200, ge=1)
    """Optimizer steps between refreshes of the projection (an SVD of the current gradient)."""

    scale: float = Field(default=2.0, gt=0)
    """Scale of the projected-back update."""

    proj_type: Literal["std", "reverse_std", "right", "left", "full"] = "std"
    """Which side of each matrix is projected (``std``: the smaller one)."""


class ApolloConfig(Section):
    """APOLLO (Zhu et al. 2025): AdamW moments kept for a low-rank projection, used to scale the full gradient
    per channel or per tensor; SGD-like memory with AdamW-like steps."""

    target: CommaList = Field(default_factory=lambda: ["all"])
    """Linear modules whose weight matrices use APOLLO: ``all`` (every linear layer but the LM head) or names;
    the other trainable weights get plain AdamW."""

    rank: int = Field(default=16, ge=1)
    """Rank of the auxiliary projection."""

    update_interval: int = Field(default=200, ge=1)
    """Optimizer steps between refreshes of the projection."""

    scale: float = Field(default=32.0, gt=0)
    """Scale of the update (APOLLO's alpha)."""

    proj: Literal["svd", "random"] = "random"
    """How the projection is made: a seeded random matrix, or the gradient's SVD."""

    proj_type: Literal["std", "right", "left"] = "std"
    """Which side of each matrix is projected (``std``: the smaller one)."""

    scale_type: Literal["channel", "tensor"] = "channel"
    """Gradient scaling per channel (APOLLO) or per tensor (APOLLO-Mini)."""

    scale_front: bool = False
    """Apply the norm-growth limiter before scaling the gradient instead of after."""


class TrainConfig(Section):
    run_name: str = Field(default="default", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    """Name of the run; checkpoints go to ``storage_path/run_name``. Starting a run with the same
    name again resumes it from its latest checkpoint."""

    storage_path: str = "./saves"
    """Directory (or pyarrow/fsspec URI) that holds runs. Must be reachable by every node."""

    learning_rate: float = Field(default=1e-4, gt=0)
    """Peak learning rate."""

    weight_decay: float = Field(default=0.0, ge=0)
    """Decoupled weight decay (not used by ``sgd``, which has none; ``muon`` applies it to its matrices too)."""

    precision: Literal["auto", "fp32", "bf16", "fp16", "pure_bf16"] = "auto"
    """Compute precision, apart from the storage dtype ``model.dtype`` (docs/training.md#precision). ``bf16`` /
    ``fp16``: the forward pass runs under autocast while the trainable weights (LoRA matrices, or the whole
    model in full tuning) and the optimizer state stay float32; ``fp16`` adds dynamic loss scaling and skips a
    step whose gradients overflow. ``pure_bf16``: weights, gradients and optimizer state all in bf16 without
    autocast (least memory; small updates round away). ``fp32``: no autocast. ``auto``: the precision of a
    half-precision ``model.dtype``; for float32, bf16 on GPUs and fp32 on CPUs (faster there)."""

    optimizer: Literal[
        "adamw", "adamw_fused", "adamw_8bit", "paged_adamw_8bit", "adafactor", "galore_adamw", "apollo_adamw",
        "muon", "sgd",
    ] = "adamw"  # fmt: skip
    """The optimizer (see docs/optimizers.md): ``adamw`` (torch, foreach), ``adamw_fused`` (torch's fused
    kernel), ``adamw_8bit`` / ``paged_adamw_8bit`` (bitsandbytes, moments in 8 bits; paged spills them to CPU
    memory on CUDA), ``adafactor`` (factored second moments), ``galore_adamw`` / ``apollo_adamw`` (low-rank
    gradient projection for full or freeze tuning, settings in ``galore`` / ``apollo``), ``muon`` (orthogonalised
    momentum for 2-D hidden weights, AdamW for the rest) or ``sgd``. LLaMA-Factory's ``optim``, ``use_galore``,
    ``use_apollo`` and ``use_muon`` map here."""

    adam_beta1: float = Field(default=0.9, ge=0, lt=1)
    """First-moment decay of the Adam family (``muon``'s momentum too)."""

    adam_beta2: float = Field(default=0.999, ge=0, lt=1)
    """Second-moment decay of the Adam family."""

    adam_epsilon: float = Field(default=1e-8, gt=0)
    """Denominator epsilon of the Adam family."""

    loraplus_lr_ratio: float | None = Field(default=None, gt=0)
    """LoRA+ (Hayou et al. 2024): the LoRA B matrices learn at ``learning_rate`` x this ratio (16 is the paper's
    choice), the A matrices at ``learning_rate``. Needs ``adapter.type: lora``."""

    loraplus_lr_embedding: float = Field(default=1e-6, gt=0)
    """With ``loraplus_lr_ratio``: the learning rate of LoRA embedding B matrices."""

    galore: GaLoreConfig = Field(default_factory=GaLoreConfig)
    """Settings of ``optimizer: galore_adamw``."""

    apollo: ApolloConfig = Field(default_factory=ApolloConfig)
    """Settings of ``optimizer: apollo_adamw``."""

    per_device_batch_size: int = Field(default=4, ge=1)
    """Samples per worker per micro-batch."""

    gradient_accumulation_steps: int = Field(default=1, ge=1)
    """Micro-batches accumulated before each optimizer step."""

    max_tokens_per_forward: Annotated[int, Field(ge=1)] | Literal["auto"] | None = "auto"
    """Run each micro-batch of text rows (padding-free, padded or packed) as forward/backward passes of whole
    rows holding at most this many tokens (padding not counted; a longer row runs alone), and accumulate their
    gradients before the step: the same update (with dropout, the same in expectation), with activation memory
    held to one pass's tokens. ``auto``: 256 on CPU workers, where a pass of a couple of hundred tokens already
    keeps the cores busy and each token's activations take over a megabyte; no split on GPUs, where bigger
    passes run faster. ``null``: no split. Preference and KTO rows, image rows, and fsdp2 and ZeRO-2/3 (whose
    workers must run the same number of passes) always run whole."""

    num_epochs: float = Field(default=1.0, gt=0)
    """Passes over the data, used when ``max_steps`` is not set."""

    max_steps: int | None = Field(default=None, ge=1)
    """Total optimizer steps. Overrides ``num_epochs``; set it for large streamed datasets so
    the data need not be counted before training."""

    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup."""

    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Fraction of the steps spent warming the learning rate up linearly from 0."""

    warmup_steps: int | None = Field(default=None, ge=0)
    """Warmup in optimizer steps; when set it wins over ``warmup_ratio`` (as in Hugging Face's Trainer)."""

    max_grad_norm: float | None = Field(default=1.0, gt=0)
    """Clip the global gradient norm to this value; null disables clipping."""

    logging_steps: int = Field(default=5, ge=1)
    """Report loss, learning rate and throughput every N optimizer steps."""

    eval_steps: int | None = Field(default=None, ge=1)
    """Compute ``eval_loss`` (online stages: ``eval_reward``) on the validation split every N optimizer steps
    (and at the end).
    Default: at every checkpoint (``save_steps``). Only used when ``data.val_size`` or
    ``data.eval_dataset`` gives a validation split."""

    save_steps: int = Field(default=500, ge=1)
    """Write a checkpoint every N optimizer steps (and always at the end)."""

    save_total_limit: int | None = Field(default=None, ge=1)
    """Keep only the newest N checkpoints; null keeps all."""

    seed: int = 42
    """Seed for model init of new weights, data shuffling and dropout."""

    @property
    def eval_every(self) -> int:
        """Optimizer steps between evaluations of the validation split: ``eval_steps``, else ``save_steps``."""
        return self.eval_steps or self.save_steps


def _yaml_off(value: object) -> object:
    return "off" if value is False else value  # YAML 1.1 reads a bare `off` as false


class RolloutConfig(Section):
    """How an online stage (``method.stage: grpo`` or ``ppo``) generates: vLLM engines running as Ray actors."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, validate_by_name=True,
        validate_by_alias=True, serialize_by_alias=True,
    )  # fmt: skip

    async_: Annotated[Literal["off", "one_step"], BeforeValidator(_yaml_off)] = Field(default="off", alias="async")
    """``one_step``: each worker asks its engine for the next step's answers before it trains on this step's,
    so generation overlaps training; those answers come from the weights one update older, and the
    engine's log-probs serve as the old policy's in the clipped ratio (off-policy by one step).
    ``off``: generate, then train."""

    num_engines: int = Field(default=1, ge=1)
    """vLLM engines; training worker r generates on engine r mod num_engines."""

    placement: Literal["colocated", "separate"] = "colocated"
    """``colocated``: the engines share the training workers' nodes and take no CPUs of their own
    (generation and training alternate); vLLM's KV cache is sized by ``kv_cache_gib``. ``separate``:
    each engine reserves ``cpus_per_engine`` CPUs (and ``gpus_per_engine`` GPUs with ``scaling.use_gpu``)
    plus ``resources``, so Ray places it on nodes or bundles of its own."""

    cpus_per_engine: float = Field(default=1.0, ge=0)
    """CPUs each engine reserves with ``placement: separate``."""

    gpus_per_engine: float = Field(default=1.0, ge=0)
    """GPUs each engine reserves with ``placement: separate`` and ``scaling.use_gpu``."""

    resources: dict[str, float] = Field(default_factory=dict)
    """Custom Ray resources each engine reserves with ``placement: separate``, e.g. ``{rollout_node: 1}``
    for nodes started with ``ray start --resources '{"rollout_node": 4}'``."""

    prompts_per_step: int = Field(default=8, ge=1)
    """Prompts per optimizer step over all workers (each worker takes an equal share); every prompt is
    answered ``method.group_size`` times."""

    top_p: float = Field(default=1.0, gt=0, le=1)
    """Nucleus sampling of the rollouts."""

    kv_cache_gib: int = Field(default=1, ge=1)
    """KV cache of each engine on CPU (``VLLM_CPU_KVCACHE_SPACE``), in whole GiB."""

    max_restarts: int = Field(default=3, ge=0)
    """How often a failed engine actor is restarted; its unfinished generation is run again."""

    weight_sync: Literal["auto", "store", "broadcast"] = "auto"
    """How the policy's weights reach the engines after each update. ``store``: rank 0 puts them (a LoRA run's
    adapter, else the whole model as safetensors) in Ray's object store and each engine pulls the newest when
    it needs them; a restarted engine catches up by itself. ``broadcast``: rank 0 and the engines form a
    process group of their own (NCCL on GPUs, gloo on CPU) and the whole model's tensors go straight to every
    engine, with no copy in the object store; a restarted engine cannot catch up, so the step that finds it
    fails and the workers resume from their newest checkpoint (set ``scaling.max_failures``). Whole weights
    only (``adapter.type`` full or freeze), a whole GPU per engine on GPUs, ``tensor_parallel_size`` 1.
    ``auto``: broadcast for whole weights with a whole GPU per engine, else store."""

    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """More ``vllm.LLM`` arguments (e.g. ``gpu_memory_utilization``, ``tensor_parallel_size``)."""


class ScalingConfig(Section):
    num_workers: int = Field(default=1, ge=1)
    """Ray Train workers (one process each; one GPU each when ``use_gpu``)."""

    use_gpu: bool = False
    """Give each worker a GPU (NCCL); otherwise train on CPU (gloo)."""

    strategy: Literal["ddp", "fsdp2", "deepspeed"] = "ddp"
    """How workers share the model: ``ddp`` replicates it and all-reduces gradients; ``fsdp2`` shards
    parameters, gradients and optimizer state (torch ``fully_shard`` per decoder layer), gathers the
    full weights for each checkpoint's export and saves resume state shard by shard; ``deepspeed``
    runs DeepSpeed ZeRO (``deepspeed``, ``deepspeed_offload``)."""

    deepspeed: int | dict[str, Any] | None = None
    """For ``strategy: deepspeed``: a ZeRO stage (0-3; default 2), or a DeepSpeed config: the path of its JSON
    file, such as LLaMA-Factory's ``ds_z3_config.json``, or the mapping itself. A file is read where the config
    is loaded and travels inside it, so workers on every node use it. Its ``"auto"`` values are filled from
    this config; batch size, accumulation, clipping and precision always come from this config."""

    deepspeed_offload: Literal["none", "optimizer", "all"] = "none"
    """With a ZeRO stage number: keep optimizer state (stages 1-3), or also parameters (stage 3), in
    CPU memory."""

    cpus_per_worker: float | None = Field(default=None, gt=0)
    """CPUs reserved per worker. Default: 1, lowered on a small local machine so the Ray Data
    tokenizers keep at least one CPU (otherwise the data stream can starve); unset on one node, the
    workers still compute on all the node's free CPUs between them. Set, each computes on what it reserves."""

    max_failures: int = Field(default=0, ge=-1)
    """Times Ray Train restarts the workers from the latest checkpoint after a worker or node is lost
    (Ray Train's ``FailureConfig``; -1: forever). Steps after that checkpoint are trained again."""

    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    """How Ray places the workers' resource bundles: ``PACK`` fills nodes first (fewer cross-node
    all-reduces), ``SPREAD`` puts them on as many nodes as it can; ``STRICT_*`` fail instead of bending."""

    collective_timeout_s: int = Field(default=1800, ge=1)
    """Seconds a collective (an all-reduce, a barrier) may wait for the other workers before the process
    group fails (Ray Train's ``TorchConfig.timeout_s``; LLaMA-Factory's ``ddp_timeout``)."""

    ray_init: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments for ``ray.init`` when raytune-ft starts or joins Ray, e.g. ``runtime_env: {env_vars:
    {...}, pip: [...]}`` or ``namespace`` (LLaMA-Factory's ``ray_init_kwargs``). raytune_ft's own worker
    environment variables are added to ``runtime_env.env_vars``; yours win."""

    @field_validator("deepspeed", mode="before")
    @classmethod
    def _read_deepspeed_file(cls, value: object) -> object:
        return _read_deepspeed_file(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_deepspeed(self) -> ScalingConfig:
        if self.strategy != "deepspeed":
            if self.deepspeed is not None or self.deepspeed_offload != "none":
                raise ValueError("deepspeed and deepspeed_offload need strategy: deepspeed")
            return self
        if isinstance(self.deepspeed, int):
            _check_zero(self.deepspeed, self.deepspeed_offload, "deepspeed")
        elif isinstance(self.deepspeed, dict):
            if self.deepspeed_offload != "none":
                raise ValueError("deepspeed_offload applies to a ZeRO stage number; set offload in the JSON file")
            _check_deepspeed_mapping(self.deepspeed, "deepspeed")
        return self


def _check_zero(stage: object, offload: str, where: str) -> None:
    if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage <= 3:
        raise ValueError(f"{where}: the ZeRO stage must be 0, 1, 2 or 3, not {stage!r}")
    if offload == "all" and stage != 3:
        raise ValueError(f"{where}: parameter offload (deepspeed_offload: all) needs ZeRO stage 3, not {stage}")
    if offload == "optimizer" and stage == 0:
        raise ValueError(f"{where}: optimizer offload needs ZeRO stage 1, 2 or 3")


def _read_deepspeed_file(path: str) -> object:
    """The mapping in a DeepSpeed JSON file (a digit string stays a ZeRO stage, as overrides give it)."""
    import json
    from pathlib import Path

    if path.strip().isdigit():
        return int(path)
    file = Path(path)
    if not file.is_file():
        raise ValueError(f"deepspeed: {path} is not a file; give a ZeRO stage (0-3) or a DeepSpeed JSON config path")
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"deepspeed: {path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(config, dict):
        raise ValueError(f"deepspeed: {path} must hold a JSON object")
    _check_deepspeed_mapping(config, f"deepspeed: {path}")
    return config


def _check_deepspeed_mapping(config: dict[str, Any], where: str) -> None:
    """A DeepSpeed config that names a ZeRO stage and leaves the optimizer to us."""
    taken = sorted({"optimizer", "scheduler"} & set(config))
    if taken:
        raise ValueError(
            f"{where} has {' and '.join(taken)} sections; raytune_ft builds the optimizer and schedule "
            "from train.* (learning_rate, weight_decay, lr_scheduler, warmup_ratio): remove them"
        )
    zero = config.get("zero_optimization", {})
    offload = "all" if "offload_param" in zero else "optimizer" if "offload_optimizer" in zero else "none"
    _check_zero(zero.get("stage", 0), offload, f"{where}: zero_optimization")


class SearchDimension(Section):
    """How one config key varies across a sweep's trials: exactly one of these forms."""

    choice: list[Any] | None = None
    """Each trial draws one of these values at random."""

    grid: list[Any] | None = None
    """Every value is tried: each of the ``num_samples`` samples runs once per grid value (per
    combination, with several grid keys)."""

    uniform: tuple[float, float] | None = None
    """A float drawn uniformly from ``[low, high]``."""

    loguniform: tuple[float, float] | None = None
    """A float drawn uniformly in log space from ``[low, high]`` (learning rates, betas); both > 0."""

    randint: tuple[int, int] | None = None
    """An integer drawn from ``low`` to ``high``, both included."""

    @model_validator(mode="after")
    def _one_form(self) -> SearchDimension:
        given = [name for name in SEARCH_FORMS if getattr(self, name) is not None]
        if len(given) != 1:
            shown = ", ".join(given) if given else "none"
            raise ValueError(f"give exactly one of {', '.join(SEARCH_FORMS)} (got {shown})")
        values = getattr(self, given[0])
        if given[0] in ("choice", "grid") and not values:
            raise ValueError(f"{given[0]} needs at least one value")
        if given[0] in ("uniform", "loguniform", "randint") and not values[0] < values[1]:
            raise ValueError(f"{given[0]} needs [low, high] with low < high (got {list(values)})")
        if given[0] == "loguniform" and values[0] <= 0:
            raise ValueError(f"loguniform needs low > 0 (got {values[0]})")
        return self

    @property
    def form(self) -> str:
        """The form given: one of ``SEARCH_FORMS``."""
        return next(name for name in SEARCH_FORMS if getattr(self, name) is not None)

    @property
    def values(self) -> list[Any]:
        """The listed values (choice, grid) or the two bounds, the values checked against the config."""
        return list(getattr(self, self.form))


SEARCH_FORMS = ("choice", "grid", "uniform", "loguniform", "randint")
"""The forms of a ``tune.space`` entry."""

SWEEP_FROZEN = ("tune.", "scaling.", "train.run_name", "train.storage_path", "model.source", "method.stage",
                "method.reference", "data.")  # fmt: skip
"""Keys a sweep cannot vary: its own settings, the trials' resources, where runs go, and whatever
shapes the tokenized rows that all trials share (``SWEEP_DATA_KEYS`` are the exceptions)."""

SWEEP_DATA_KEYS = ("data.padding_free", "data.balance_micro_batches", "data.preserve_order")
"""Data keys that only change how the shared tokenized rows are batched, so a sweep may vary them."""

PBT_KEYS = ("train.", "method.")
"""PBT continues a trial from another's checkpoint with new values; only these sections leave the
saved weights usable (the model and adapter must stay what the checkpoint holds)."""


class TuneConfig(Section):
    space: dict[str, SearchDimension] = Field(default_factory=dict)
    """The search space of ``raytune-ft tune``: dotted config keys mapped to how they vary, e.g.
    ``train.learning_rate: {loguniform: [1.0e-5, 1.0e-3]}`` or ``adapter.rank: {choice: [8, 16]}``.
    Every other key keeps this file's value in every trial."""

    scheduler: Literal["asha", "pbt", "fifo"] = "asha"
    """Trial scheduler: ``asha`` stops trials whose ``metric`` trails the others' at the same step
    (asynchronous successive halving), ``pbt`` (population based training) periodically restarts the
    worst trials from the best ones' checkpoints with perturbed values, ``fifo`` runs every trial to
    the end."""

    num_samples: int | None = Field(default=None, ge=1)
    """Trials drawn from the space; with ``grid`` keys, each draw runs every grid value. Default: 1 when
    every key is a grid, else 4."""

    metric: str = "eval_loss"
    """Reported metric that ranks trials: ``eval_loss`` (needs ``data.val_size`` or
    ``data.eval_dataset``), another ``eval_*`` metric of the objective, or the training ``loss``; for an
    online stage, ``reward`` (the mean reward of each step's answers) or ``eval_reward`` (of the validation
    split's greedy answers), with ``mode: max``."""

    mode: Literal["min", "max"] = "min"
    """Whether lower (``min``) or higher (``max``, e.g. ``eval_accuracy``) ``metric`` is better."""

    max_concurrent_trials: int | None = Field(default=None, ge=1)
    """Trials running at once. Default: as many as the cluster's CPUs (GPUs with ``use_gpu``) hold,
    each trial taking its workers' share."""

    grace_period: int | None = Field(default=None, ge=1)
    """ASHA: optimizer steps every trial trains before it may be stopped. Default: its first
    evaluation (``train.eval_steps``, else ``train.save_steps``)."""

    reduction_factor: float = Field(default=3.0, gt=1)
    """ASHA: at each rung (``grace_period`` x ``reduction_factor``^k steps) only the best
    1/``reduction_factor`` of trials continue."""

    perturbation_interval: int | None = Field(default=None, ge=1)
    """PBT: optimizer steps between exploit/explore rounds. Default: ``train.save_steps``, the
    checkpoint interval (a trial restarts from the other's newest checkpoint)."""

    scaling: ScalingConfig | None = None
    """Workers, CPUs and strategy of each trial, a ``scaling`` section of its own. Default: the
    top-level ``scaling``. The best trial's config file carries the scaling it ran with."""

    @field_validator("space")
    @classmethod
    def _check_keys(cls, space: dict[str, SearchDimension]) -> dict[str, SearchDimension]:
        for key in space:
            frozen = [p for p in SWEEP_FROZEN if key == p or (p.endswith(".") and key.startswith(p))]
            if frozen and key not in SWEEP_DATA_KEYS:
                raise ValueError(
                    f"{key!r} cannot be swept: trials share one tokenized dataset, one storage folder and the "
                    "resources in tune.scaling. Sweep train.*, adapter.*, method.* (not stage/reference) or model.* "
                    "keys, or run separate sweeps"
                )
        return space


SERVED_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
"""What a served model or adapter name may be: letters, digits, ``.``, ``_``, ``-`` (no ``:`` or ``/``)."""


class AutoscalingConfig(Section):
    min_replicas: int = Field(default=1, ge=0)
    """Fewest engine replicas kept running (0 lets an idle app scale to zero)."""

    max_replicas: int = Field(default=2, ge=1)
    """Most engine replicas Serve starts under load."""

    target_ongoing_requests: float = Field(default=16, gt=0)
    """Requests in flight per replica that Serve aims for; more adds replicas, fewer removes them."""

    @model_validator(mode="after")
    def _check_bounds(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}")
        return self


class ServeConfig(Section):
    model_name: str | None = Field(default=None, pattern=SERVED_NAME)
    """The base model's name in the API (``model=`` of a request, ``/v1/models``). Default: the
    builtin model's name, else the model folder's name (for ``--checkpoint`` of a full fine-tune, the
    run's name)."""

    adapters: dict[str, str] = Field(default_factory=dict)
    """LoRA adapters served on top of ``model.source``: a name mapped to a run directory (every
    checkpoint in it) or one checkpoint folder. Request ``model: BASE:NAME`` for the newest checkpoint,
    ``BASE:NAME:STEP`` for one step. Loaded on first use; a checkpoint written later (by a run still
    training) is servable at once, without a restart."""

    adapter_root: str | None = None
    """A folder of run directories (like ``saves``): each run in it is servable as ``BASE:RUN``, also
    runs started after the app."""

    engine: Literal["auto", "vllm", "hf"] = "auto"
    """What generates: ``vllm`` (vLLM replicas through Ray Serve LLM: continuous batching, the fast
    path), ``hf`` (Hugging Face ``generate``, one request at a time per replica: a fallback), or
    ``auto``: vLLM when it is installed, else hf."""

    host: str = "127.0.0.1"
    """Address the HTTP endpoint binds to; ``0.0.0.0`` exposes it to the network."""

    port: int = Field(default=8000, ge=1, le=65535)
    """HTTP port of the endpoint."""

    ingress: Literal["auto", "haproxy", "proxy"] = "auto"
    """How requests reach the replicas. ``haproxy``: Ray Serve's direct ingress, where each replica answers
    HTTP itself and HAProxy (the binary Ray installs) balances over them; all of HAProxy's listeners bind
    ``host``. ``proxy``: Ray Serve's HTTP proxy, a Python actor that relays every streamed token, which
    costs the engine CPU and adds time to first token. ``auto``: haproxy where Ray finds an HAProxy
    binary, else proxy. Applies to the local Ray ``raytune-ft serve`` starts; a cluster serves as its own
    environment says (``RAY_SERVE_ENABLE_DIRECT_INGRESS=1`` and ``RAY_SERVE_ENABLE_HA_PROXY=1`` for
    haproxy, see cluster/serve.yaml)."""

    api_key: str | None = None
    """A key every request must send as ``Authorization: Bearer KEY`` (all routes but ``/health``).
    Default: ``$RAYTUNE_FT_API_KEY``; with neither, the endpoint is open."""

    num_replicas: int = Field(default=1, ge=1)
    """Engine replicas, each holding the model (ignored with ``autoscaling``)."""

    autoscaling: AutoscalingConfig | None = None
    """Scale engine replicas with load instead of a fixed ``num_replicas``."""

    cpus_per_replica: float = Field(default=1.0, gt=0)
    """CPUs reserved for each engine replica."""

    use_gpu: bool = False
    """Run each engine replica on a GPU (the ``vllm`` package); off runs vLLM's CPU backend
    (``vllm-cpu``)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Engine weights and activations dtype; ``auto`` takes the model's own."""

    max_model_len: int | None = Field(default=None, ge=16)
    """Longest prompt plus completion in tokens. Default: the model's context length. Longer prompts
    get HTTP 400."""

    max_tokens_limit: int = Field(default=2048, ge=1)
    """Most tokens one request may generate: a larger ``max_tokens`` gets HTTP 400, and a request
    without one generates at most this many."""

    max_adapters_per_replica: int = Field(default=4, ge=1)
    """LoRA adapters each replica holds at once; the least recently used one is evicted for a new one."""

    max_lora_rank: int | None = Field(default=None, ge=1)
    """Largest LoRA rank served. Default: the largest rank among the adapters found at start, at least 16."""

    enforce_eager: bool = False
    """Skip vLLM's graph compilation: starts faster (about 30 s instead of 90 s on CPU), runs a little slower."""

    stream_batch_ms: float = Field(default=0.0, ge=0)
    """How long a replica gathers streamed tokens before sending them on to the client. 0 sends each at
    once (lowest time to first token and inter-token latency); tens of ms (Ray Serve LLM's default is 50)
    cut the per-message overhead when replicas stream thousands of tokens a second."""

    kv_cache_gib: float = Field(default=1.0, gt=0)
    """CPU engines: memory for the KV cache in GiB (``VLLM_CPU_KVCACHE_SPACE``)."""

    isolate_engine_cores: bool = True
    """CPU engines: move the endpoint's other processes (Ray's own, HAProxy, each replica's HTTP frontend
    and engine scheduler) off the cores vLLM binds its compute threads to, so none of them stalls a
    decode step. Off leaves placement to the OS."""

    @property
    def isolates_cpu_engine(self) -> bool:
        """``isolate_engine_cores`` where it applies: CPU engines only."""
        return self.isolate_engine_cores and not self.use_gpu

    engine_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Further vLLM engine arguments, passed as given (e.g. ``tensor_parallel_size``,
    ``gpu_memory_utilization``); they win over the fields above."""

    @field_validator("adapters")
    @classmethod
    def _check_adapter_names(cls, adapters: dict[str, str]) -> dict[str, str]:
        for name in adapters:
            if not re.match(SERVED_NAME, name):
                raise ValueError(
                    f"adapter name {name!r}: use letters, digits, '.', '_' and '-' (at most 64, no ':' or '/'); "
                    "it becomes part of the model name BASE:NAME"
                )
        return adapters


SHARD_SIZE = r"^[1-9][0-9]*(\.[0-9]+)?(B|KB|MB|GB|KiB|MiB|GiB)$"


class ExportConfig(Section):
    """Merging and export of trained weights (``raytune-ft export``)."""

    format: Literal["hf", "gguf"] = "hf"
    """``hf``: Hugging Face safetensors with tokenizer and chat template (transformers, vLLM, ``serve``).
    ``gguf``: one GGUF file for llama.cpp, Ollama and LM Studio (llama, mistral and qwen2 models)."""

    out_dir: str | None = None
    """Destination folder, when ``--out`` is not given. It must be empty or absent (or pass ``--overwrite``)."""

    max_shard_size: str = Field(default="5GB", pattern=SHARD_SIZE)
    """Largest safetensors shard of an ``hf`` export, e.g. ``500MB`` or ``5GB``."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype of an ``hf`` export; ``auto`` keeps the base model's own. The merge runs in float32."""

    gguf_type: Literal["f16", "q8_0"] = "f16"
    """Matrix encoding of a ``gguf`` export: ``f16``, or ``q8_0`` (8-bit, about half the size). Norms stay float32."""


class TrackingConfig(Section):
    """Experiment trackers, fed by the first training worker with every logged record."""

    backends: list[Literal["wandb", "mlflow", "tensorboard"]] = Field(default_factory=list)
    """Trackers to log to: loss, lr, tokens/s and eval metrics per logged step, and the resolved config.
    ``wandb`` (offline files under the run directory unless ``WANDB_API_KEY`` is set), ``mlflow`` (a local
    file store, ``storage_path/mlruns``, unless ``mlflow_uri``), ``tensorboard`` (``run_dir/tensorboard``)."""

    project: str = "raytune-ft"
    """wandb project and MLflow experiment name; runs are named after ``train.run_name``."""

    wandb_mode: Literal["online", "offline", "disabled"] | None = None
    """Overrides wandb's mode; by default online only when ``WANDB_API_KEY`` is set, so it never prompts."""

    mlflow_uri: str | None = None
    """MLflow tracking URI (``http://host:5000``, ``file:///path``); default a file store beside the runs."""

    plot_loss: bool = True
    """Write ``loss.png`` (loss and eval loss against step) to the run directory when training ends."""

    @field_validator("backends")
    @classmethod
    def _unique(cls, backends: list[str]) -> list[str]:
        if len(set(backends)) != len(backends):
            raise ValueError(f"tracking.backends lists a tracker twice: {backends}")
        return backends


EvalTask = Literal["loss", "generation", "choice"]


def _default_eval_tasks() -> list[EvalTask]:
    return ["loss"]


class EvalConfig(Section):
    """Evaluation of a model or checkpoint (``raytune-ft eval``), run on Ray Data actors."""

    tasks: Annotated[list[EvalTask], BeforeValidator(_split_commas)] = Field(default_factory=_default_eval_tasks)
    """``loss``: token loss and perplexity on ``dataset``. ``generation``: BLEU-4 and ROUGE-1/2/L of the
    model's answers against the dataset's. ``choice``: multiple-choice accuracy by log-likelihood on
    ``choice_file``."""

    dataset: CommaList = Field(default_factory=list)
    """Datasets for ``loss`` and ``generation`` (names or paths, as ``data.dataset``); default
    ``data.eval_dataset``, else ``data.dataset``. Rendered and tokenized as training does."""

    choice_file: str = "builtin:mc_basic"
    """MMLU-style JSONL/JSON/CSV: ``question``, ``choices`` (a list, or columns A, B, C, D) and ``answer``
    (a letter or an index). ``builtin:mc_basic`` is 40 general questions bundled with raytune_ft."""

    max_samples: int | None = Field(default=200, gt=0)
    """At most this many rows per task (None: all)."""

    batch_size: int = Field(default=8, gt=0)
    """Rows per forward or ``generate`` call."""

    max_new_tokens: int = Field(default=128, gt=0)
    """Longest generated answer."""

    temperature: float = Field(default=0.0, ge=0)
    """0 is greedy decoding."""

    engine: Literal["hf", "vllm"] = "hf"
    """Generation engine: ``hf`` (transformers ``generate``, batched) or ``vllm`` (continuous batching; worth
    its start-up time on large predict sets and GPUs)."""

    kv_cache_gib: float = Field(default=1.0, gt=0)
    """vLLM's KV cache per actor on CPU (``VLLM_CPU_KVCACHE_SPACE``)."""

    num_workers: int = Field(default=1, gt=0)
    """Ray actors scoring in parallel, each with its own copy of the model."""

    cpus_per_worker: float = Field(default=1.0, gt=0)
    """CPUs each actor reserves."""

    output_dir: str | None = None
    """Where ``eval_results.json`` (and ``generated_predictions.jsonl``) go; default ``eval/`` in the run
    directory of an evaluated checkpoint, else ``./eval_results``."""


class JobConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The base model and how it is loaded."""

    data: DataConfig = Field(default_factory=DataConfig)
    """Datasets and how they are rendered and tokenized."""

    method: MethodConfig = Field(default_factory=MethodConfig)
    """The training objective."""

    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    """Answer generation of online stages (``grpo``, ``ppo``)."""

    adapter: AdapterConfig = Field(default_factory=AdapterConfig)
    """Which weights are trained."""

    train: TrainConfig = Field(default_factory=TrainConfig)
    """Optimisation, schedule, logging and checkpoints."""

    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    """Ray Train workers and the distributed strategy."""

    tune: TuneConfig = Field(default_factory=TuneConfig)
    """Hyperparameter sweeps."""

    serve: ServeConfig = Field(default_factory=ServeConfig)
    """The OpenAI-compatible endpoint."""

    export: ExportConfig = Field(default_factory=ExportConfig)
    """Merging and export of trained weights."""

    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """Experiment tracking."""

    eval: EvalConfig = Field(default_factory=EvalConfig)
    """Evaluation (``raytune-ft eval``)."""

    @model_validator(mode="after")
    def _check_sweep(self) -> JobConfig:
        space = self.tune.space
        if self.tune.scheduler == "pbt" and (outside := [k for k in space if not k.startswith(PBT_KEYS)]):
            raise ValueError(
                "tune.scheduler pbt continues trials from other trials' checkpoints, so it can vary only train.* "
                f"and method.* keys, not {', '.join(outside)}; sweep those with asha or fifo"
            )
        base = self.model_dump(mode="json", exclude={"tune"})
        for key, dimension in space.items():
            _check_swept_key(key)
            values = dimension.values
            if dimension.form in ("uniform", "loguniform"):
                values.append(values[0] + 0.37 * (values[1] - values[0]))  # a typical draw, not a bound
            for value in values:
                _check_swept_value(base, key, value)
        return self

    @model_validator(mode="after")
    def _check_gpu_dtype(self) -> JobConfig:
        if self.model.dtype == "float16" and not self.scaling.use_gpu:
            raise ValueError("model.dtype float16 needs scaling.use_gpu: true; use float32 on CPU")
        return self

    @model_validator(mode="after")
    def _check_liger(self) -> JobConfig:
        if self.model.liger_kernel and not self.scaling.use_gpu:
            raise ValueError(
                "model.liger_kernel patches Triton kernels, which run on CUDA only: set scaling.use_gpu: true"
            )
        return self

    @model_validator(mode="after")
    def _check_attention(self) -> JobConfig:
        kernel = self.model.attn_implementation
        if kernel.startswith("flash_attention") and not self.scaling.use_gpu:
            raise ValueError(
                f"model.attn_implementation {kernel} runs on CUDA only: set scaling.use_gpu: true, or use auto or sdpa"
            )
        if kernel == "flex_attention" and not self.scaling.use_gpu:
            raise ValueError(
                "model.attn_implementation flex_attention has no backward pass on CPU in torch: set "
                "scaling.use_gpu: true, or use auto or sdpa (which keeps packed samples apart without a mask)"
            )
        return self

    @model_validator(mode="after")
    def _check_precision(self) -> JobConfig:
        precision, dtype = self.train.precision, self.model.dtype
        fits = {"fp32": ("float32",), "bf16": ("float32", "bfloat16"), "fp16": ("float32", "float16"),
                "pure_bf16": ("bfloat16",)}  # fmt: skip
        if precision != "auto" and dtype not in fits[precision]:
            raise ValueError(
                f"train.precision {precision} does not compute on model.dtype {dtype} weights: use model.dtype "
                f"{' or '.join(fits[precision])}, or train.precision auto (the precision of model.dtype)"
            )
        if precision == "pure_bf16" and self.scaling.strategy == "deepspeed":
            raise ValueError(
                "train.precision pure_bf16 does not apply under scaling.strategy deepspeed: its bf16 section "
                "always keeps float32 master weights; use train.precision bf16"
            )
        return self

    @model_validator(mode="after")
    def _check_stage(self) -> JobConfig:
        if self.method.rows in ("preference", "kto") and self.data.packing:
            raise ValueError(
                f"data.packing does not apply to method.stage {self.method.stage}: its rows are scored as whole "
                "sequences (pairs or labelled answers); set data.packing: false"
            )
        if self.method.stage == "rm" and self.adapter.pissa_init:
            raise ValueError("adapter.pissa_init is not supported with method.stage rm; use plain LoRA")
        if self.adapter.pissa_init and self.method.needs_reference and self.method.reference == "live":
            raise ValueError(
                "adapter.pissa_init trains on a residual base, so switching its adapters off does not give the "
                "reference model; set method.reference: precomputed (scored with the original base)"
            )
        return self

    @model_validator(mode="after")
    def _check_online(self) -> JobConfig:
        if not self.method.online:
            return self
        stage, workers = self.method.stage, self.scaling.num_workers
        if self.rollout.prompts_per_step % workers:
            raise ValueError(
                f"rollout.prompts_per_step {self.rollout.prompts_per_step} does not split evenly over "
                f"scaling.num_workers {workers}; make it a multiple of {workers}"
            )
        share, buffer = self.rollout.prompts_per_step // workers, self.method.ppo_buffer_size
        if share % buffer:
            raise ValueError(
                f"method.ppo_buffer_size {buffer} does not split each worker's {share} prompts of a step into equal "
                f"mini-batches; make rollout.prompts_per_step a multiple of {buffer * workers}"
            )
        if self.train.gradient_accumulation_steps != 1:
            raise ValueError(
                f"train.gradient_accumulation_steps does not apply to stage {stage}: each optimizer step learns from "
                "one generated batch (rollout.prompts_per_step x method.group_size answers); set it to 1"
            )
        if self.data.packing:
            raise ValueError(
                f"data.packing does not apply to stage {stage}: its rows are prompts; set data.packing: false"
            )
        if self.method.needs_reference and self.method.reference == "precomputed":
            raise ValueError(
                f"method.reference: precomputed does not apply to stage {stage}: the answers it scores are generated "
                "during training; use live"
            )
        if self.rollout.weight_sync == "broadcast":
            self._check_broadcast()
        if self.scaling.use_gpu and self.rollout.placement == "colocated":
            raise ValueError(
                "rollout.placement: colocated is not available on GPUs yet (the engines would need a share of each "
                "training worker's GPU); use placement: separate with rollout.gpus_per_engine"
            )
        return self

    def _check_broadcast(self) -> None:
        if self.adapter.type == "lora":
            raise ValueError(
                "rollout.weight_sync: broadcast sends whole weights (adapter.type full or freeze); a LoRA run's "
                "adapter is small and goes through the object store: use weight_sync: store or auto"
            )
        if self.scaling.use_gpu and self.rollout.gpus_per_engine < 1:
            raise ValueError(
                f"rollout.weight_sync: broadcast goes over NCCL, which takes one whole GPU per engine, but "
                f"rollout.gpus_per_engine is {self.rollout.gpus_per_engine:g}; give each engine a GPU or use store"
            )
        if int(self.rollout.engine_kwargs.get("tensor_parallel_size", 1)) > 1:
            raise ValueError(
                "rollout.weight_sync: broadcast loads the weights into an engine's own process, which holds the whole "
                "model only with tensor_parallel_size 1; use weight_sync: store with tensor parallel engines"
            )

    @model_validator(mode="after")
    def _check_pissa(self) -> JobConfig:
        if not self.adapter.pissa_init:
            return self
        if self.adapter.type != "lora" or self.adapter.use_dora:
            raise ValueError(
                "adapter.pissa_init initialises LoRA adapters: it needs adapter.type lora without use_dora"
            )
        if self.scaling.strategy != "ddp":
            raise ValueError(
                f"adapter.pissa_init runs with scaling.strategy ddp, not {self.scaling.strategy!r}: converting "
                "its checkpoints to plain LoRA needs the whole adapter in one process"
            )
        if self.model.quantization_bit:
            raise ValueError("adapter.pissa_init with model.quantization_bit is not supported; choose one")
        return self

    @model_validator(mode="after")
    def _check_optimizer(self) -> JobConfig:
        name, adapter, strategy = self.train.optimizer, self.adapter.type, self.scaling.strategy
        if name in ("galore_adamw", "apollo_adamw") and adapter == "lora":
            raise ValueError(
                f"train.optimizer {name} projects the gradients of whole weight matrices: it needs adapter.type full "
                "or freeze (LoRA is already low-rank; use adamw)"
            )
        if self.train.loraplus_lr_ratio is not None and adapter != "lora":
            raise ValueError("train.loraplus_lr_ratio sets the LoRA B learning rate: it needs adapter.type lora")
        if strategy in _SHARDED_OPTIMIZERS and name not in _SHARDED_OPTIMIZERS[strategy][0]:
            takes, why = _SHARDED_OPTIMIZERS[strategy]
            raise ValueError(
                f"train.optimizer {name} runs with scaling.strategy ddp, not {strategy!r}: {why}; "
                f"use {' or '.join(takes)} there"
            )
        return self

    @model_validator(mode="after")
    def _check_quantization(self) -> JobConfig:
        bits = self.model.quantization_bit
        if bits is None:
            return self
        if self.adapter.type != "lora":
            raise ValueError(f"model.quantization_bit needs adapter.type lora (QLoRA), not {self.adapter.type!r}")
        if self.adapter.init_from:
            raise ValueError(
                "adapter.init_from with model.quantization_bit is not supported: merge the adapters into the base "
                "first (raytune-ft export) and train QLoRA on the exported model"
            )
        if self.scaling.strategy != "ddp":
            raise ValueError(f"model.quantization_bit runs with scaling.strategy ddp, not {self.scaling.strategy!r}")
        if self.model.quantization_method == "torchao" and bits == 4 and not self.scaling.use_gpu:
            raise ValueError(
                "model.quantization_method torchao with quantization_bit 4 (int4 weight-only) runs on CUDA only: "
                "use quantization_bit 8, or quantization_method bnb, on CPU"
            )
        return self


_SHARDED_OPTIMIZERS = {
    "fsdp2": (
        ("adamw", "adamw_fused", "sgd"),
        "FSDP2 gives each worker a slice of every weight, and only element-wise optimizers step slices as they "
        "would step the whole",
    ),
    "deepspeed": (
        ("adamw", "adamw_fused"),
        "DeepSpeed ZeRO flattens the weights into one-dimensional partitions and steps them with the AdamW family",
    ),
}
"""Sharded strategy -> (the optimizers it runs, why only those)."""


def _check_swept_key(key: str) -> None:
    section, _, name = key.partition(".")
    model = JobConfig.model_fields.get(section)
    fields = model.annotation.model_fields if model is not None and isinstance(model.annotation, type) else {}
    if name in fields and "." not in name:
        return
    sections = JobConfig.model_fields.items()
    known = [f"{s}.{f}" for s, info in sections for f in getattr(info.annotation, "model_fields", {})]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "; give section.key, e.g. train.learning_rate"
    raise ValueError(f"tune.space: {key!r} is not a config key{hint}")


def _check_swept_value(base: dict[str, Any], key: str, value: Any) -> None:
    section, name = key.split(".")
    trial = {**base, section: {**base[section], name: value}}
    try:
        JobConfig.model_validate(trial)
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(str(p) for p in problem["loc"])
        raise ValueError(
            f"tune.space.{key}: a trial with {key}={value!r} is not a valid config: {where}: {problem['msg']}"
        ) from None
