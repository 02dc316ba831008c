"""Build VMAD from a ``ModelConfig``: each preset's backbone (random-initialised for ``tiny``,
loaded from local files for ``llava7b_sam_h``), then the projector, [SEG] head, DSSL and LoRA,
assembled like ``segment_anything/build_sam.py`` assembles ``Sam``. Checkpoints are
``checkpoint.py``'s."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from vmad_pipeline.configs import ConfigError, ModelConfig
from vmad_pipeline.models.anomaly_expert import ADVERBS, AnomalyExpert, ExpertShape
from vmad_pipeline.models.dssl import Dssl
from vmad_pipeline.models.efficientnet import (
    LEVEL_CHANNELS,
    FrozenEfficientNet,
    load_efficientnet_lite0,
)
from vmad_pipeline.models.evidence import SegEvidence
from vmad_pipeline.models.extras import chosen_levels
from vmad_pipeline.models.llm import add_adapter, build_tiny_llm
from vmad_pipeline.models.mask_encoder import EfficientNetMaskEncoder
from vmad_pipeline.models.pretrained import load_llava, load_sam
from vmad_pipeline.models.projectors import MlpProjector, build_projector
from vmad_pipeline.models.reference_cue import ReferenceCue
from vmad_pipeline.models.region_tokens import RegionTokens
from vmad_pipeline.models.sam import build_sam
from vmad_pipeline.models.vision import EfficientNetTower, VisionTower, build_vision_tower
from vmad_pipeline.models.vmad import SegHead, VmadModel
from vmad_pipeline.prompts import IMAGE_TOKEN, SEG_TOKEN, STATE_PHRASES

log = logging.getLogger(__name__)


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    ids = {
        "image_token_id": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "seg_token_id": tokenizer.convert_tokens_to_ids(SEG_TOKEN),
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    missing = [k for k, v in ids.items() if v is None or v == tokenizer.unk_token_id]
    if missing:
        raise ConfigError(f"tokenizer lacks the special tokens for {missing}")
    return ids


@dataclass
class Backbone:
    """The pre-built pieces of a preset: random-initialised (tiny) or loaded from local files."""

    cfg: ModelConfig  # with the sizes the pieces really have
    vision: VisionTower
    llm: PreTrainedModel  # the base LLM, before LoRA
    sam: Sam
    projector_state: dict[str, torch.Tensor] | None = None  # LLaVA's pretrained mlp projector


def _random_llm(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype, llm):
    if llm is None:
        llm = build_tiny_llm(
            cfg.llm,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return llm.to(dtype)


def _tiny_backbone(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype, llm=None
) -> Backbone:
    return Backbone(
        cfg=cfg,
        vision=build_vision_tower(cfg.vision),
        llm=_random_llm(cfg, tokenizer, dtype, llm),
        sam=build_sam(cfg.sam),
    )


def _small_backbone(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype, llm=None
) -> Backbone:
    """One frozen, ImageNet-trained EfficientNet-Lite0 (installed with the package) feeds both
    image branches: the LLM's tower (an adaptor per level) and SAM's decoder (a trainable neck
    in place of SAM's ViT); the LLM is the tiny one, trained here."""
    backbone = FrozenEfficientNet(load_efficientnet_lite0()).to(dtype)
    vision = EfficientNetTower(
        backbone=backbone,
        channels=LEVEL_CHANNELS,
        grid=cfg.vision.grid,
        width=cfg.vision.hidden_size,
        select_layer=cfg.vision.select_layer,
    )
    encoder = EfficientNetMaskEncoder(
        backbone=backbone,
        channels=LEVEL_CHANNELS,
        img_size=cfg.sam.image_size,
        grid=cfg.sam.grid,
        out_chans=cfg.sam.prompt_dim,
    )
    return Backbone(
        cfg=cfg,
        vision=vision,
        llm=_random_llm(cfg, tokenizer, dtype, llm),
        sam=build_sam(cfg.sam, image_encoder=encoder),
    )


def _llava_sam_backbone(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, dtype: torch.dtype, llm=None
) -> Backbone:
    """LLaVA-1.5 (CLIP tower, LLaMA, its mlp projector) + SAM from ``cfg.weights``."""
    parts = load_llava(cfg.weights.llava_dir, dtype=dtype)
    if parts.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"weights.llava_dir: the tokenizer given ({len(tokenizer)} tokens) is not the one of "
            f"{cfg.weights.llava_dir} plus [SEG] ({len(parts.tokenizer)} tokens)"
        )
    cfg = dataclasses.replace(cfg, vision=parts.vision_config, llm=parts.llm_config)
    return Backbone(
        cfg=cfg,
        vision=VisionTower(clip=parts.vision, select_layer=parts.vision_feature_layer),
        llm=parts.llm,
        sam=load_sam(cfg.sam, cfg.weights.sam_checkpoint).to(dtype),
        projector_state=parts.projector_state,
    )


# preset -> how its backbone is made (configs.PRESETS)
BACKBONES = {
    "tiny": _tiny_backbone,
    "small": _small_backbone,
    "llava7b_sam_h": _llava_sam_backbone,
}
# Presets whose LLM is random-initialised and trained here: its base weights are saved.
RANDOM_LLM = ("tiny", "small")
# Presets whose frozen parts are rebuilt from local weight files named in `weights`.
FROM_WEIGHT_FILES = ("llava7b_sam_h",)


def assemble(bb: Backbone, tokenizer: PreTrainedTokenizerBase, llm) -> VmadModel:
    cfg = bb.cfg
    projector = build_projector(
        cfg.projector,
        in_dim=cfg.vision.hidden_size,
        out_dim=cfg.llm.hidden_size,
        grid=cfg.vision.grid,
    )
    if cfg.projector.positions:  # one learned position per visual token (ViT-style init)
        projector.positions = torch.nn.Parameter(
            0.02 * torch.randn(projector.num_tokens, cfg.llm.hidden_size)
        )
    if bb.projector_state is not None and isinstance(projector, MlpProjector):
        # LLaVA's multi_modal_projector is the same Linear-GELU-Linear: start from it.
        projector.mlp.load_state_dict(
            {
                k.replace("linear_1.", "0.").replace("linear_2.", "2."): v
                for k, v in bb.projector_state.items()
            }
        )
    n_hidden = bb.vision.num_hidden_states
    bad = [i for i in projector.level_indices if not -n_hidden <= i < n_hidden]
    if bad:
        raise ConfigError(
            f"train.model.projector.ltc.levels: {bad} out of range; the vision tower has "
            f"{n_hidden} hidden states (0 .. {n_hidden - 1})"
        )
    dssl = None
    if cfg.dssl.enabled:
        dssl = Dssl(
            cfg=cfg.dssl,
            d_sam=getattr(bb.sam.image_encoder, "teacher_dim", cfg.sam.prompt_dim),
            d_llm=cfg.llm.hidden_size,
            d_clip=cfg.vision.hidden_size,
        )
    model = VmadModel(
        config=cfg,
        expert=build_expert(cfg, bb.vision),
        cue=build_cue(cfg, bb.vision),
        region=RegionTokens(
            cfg.vision.hidden_size,
            cfg.llm.hidden_size,
            grid=cfg.region_tokens.grid,
            threshold=cfg.region_tokens.threshold,
        )
        if cfg.region_tokens.enabled
        else None,
        adverb_ids=tuple(tokenizer.encode(" " + a, add_special_tokens=False) for a in ADVERBS),
        vision=bb.vision,
        projector=projector,
        llm=llm,
        sam=bb.sam,
        seg_head=SegHead(d_llm=cfg.llm.hidden_size, d_sam=cfg.sam.prompt_dim),
        dssl=dssl,
        evidence=SegEvidence(d_llm=cfg.llm.hidden_size) if cfg.seg_evidence else None,
        state_phrase_ids=tuple(
            tokenizer.encode(p, add_special_tokens=False) for p in STATE_PHRASES
        ),
        **_token_ids(tokenizer),
    )
    apply_freezing(model)
    return model


def build_cue(cfg: ModelConfig, vision) -> ReferenceCue | None:
    """The reference cue (``train.model.references``) on the tower's frozen levels, or None."""
    r = cfg.references
    if not r.enabled:
        return None
    n = vision.num_hidden_states
    bad = [i for i in r.levels if not -n <= i < n]
    if bad:
        raise ConfigError(
            f"train.model.references.levels: {bad} out of range; the vision tower has {n} "
            f"levels (0 .. {n - 1})"
        )
    return ReferenceCue(
        r, d_sam=cfg.sam.prompt_dim, d_llm=cfg.llm.hidden_size, sam_grid=cfg.sam.grid
    )


def build_expert(cfg: ModelConfig, vision) -> AnomalyExpert | None:
    """Anomaly-OV's expert on the tower's frozen levels (``train.model.expert``), or None. It is
    trained before the rest (stage 1), so it reads features stage 2 does not change: a tower
    trained from scratch (the tiny preset's CLIP) must be frozen for it."""
    e = cfg.expert
    if not e.enabled:
        return None
    if isinstance(vision, VisionTower) and cfg.preset == "tiny" and "vision" not in cfg.frozen:
        raise ConfigError(
            "train.model.expert: the tiny preset trains its vision tower from scratch, which "
            "would move the features the frozen expert was trained on; add 'vision' to "
            "train.model.frozen or use the small preset"
        )
    widths = vision.expert_widths
    levels = chosen_levels(len(widths), e.levels)
    bad = [i for i in levels if not -len(widths) <= i < len(widths)]
    if bad:
        raise ConfigError(
            f"train.model.expert.levels: {bad} out of range; the vision tower has "
            f"{len(widths)} levels (0 .. {len(widths) - 1})"
        )
    if vision.grid % e.pool:
        raise ConfigError(
            f"train.model.expert.pool: {e.pool} does not divide the {vision.grid} x "
            f"{vision.grid} token grid"
        )
    shape = ExpertShape(
        level_widths=tuple(widths[i] for i in levels),
        width=e.width,
        llm_width=cfg.llm.hidden_size,
        pool=e.pool,
        heads=e.heads,
        temperature=e.temperature,
        top_fraction=e.top_fraction,
    )
    return AnomalyExpert(shape)


def always_frozen(module: torch.nn.Module) -> set[int]:
    """ids of the parameters of submodules that never train (a pretrained backbone installed
    with a package, ``always_frozen = True``), whatever the preset's ``frozen`` says."""
    return {
        id(p)
        for m in module.modules()
        if getattr(m, "always_frozen", False)
        for p in m.parameters()
    }


def apply_freezing(model: VmadModel) -> None:
    """Freeze the preset's frozen parts; the LLM trains only through LoRA + embeddings/head."""
    for name, part in model.parts().items():
        if name == "llm":
            continue  # peft already set requires_grad: LoRA and modules_to_save only
        fixed = always_frozen(part)
        for p in part.parameters():
            p.requires_grad_(name not in model.config.frozen and id(p) not in fixed)
    if "llm" in model.config.frozen:
        for p in model.llm.parameters():
            p.requires_grad_(False)


def build_vmad(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    seed: int = 0,
    train_classes: Sequence[str] = (),
    dtype: torch.dtype = torch.float32,
) -> VmadModel:
    """A fresh model for training: the preset's backbone (random for ``tiny``, the installed
    ImageNet EfficientNet-Lite0 for ``small``, local checkpoints named in ``cfg.weights`` for
    ``llava7b_sam_h``) with new LoRA adapters,
    projector, [SEG] head and DSSL. ``train_classes`` become DSSL's memory-queue rows."""
    torch.manual_seed(seed)
    cfg = dataclasses.replace(
        cfg,
        vocab_size=len(tokenizer),
        dssl=dataclasses.replace(cfg.dssl, classes=tuple(sorted(train_classes))),
    )
    bb = BACKBONES[cfg.preset](cfg, tokenizer, dtype)
    return assemble(bb, tokenizer, add_adapter(bb.llm, bb.cfg))
