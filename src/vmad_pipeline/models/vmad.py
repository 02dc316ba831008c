"""VMAD: vision tower + projector (LTC) + LoRA LLM + [SEG]-prompted SAM, with DSSL in training.

The model has no training loop, optimiser or logging (see ``training/``); it is assembled
from already-built components by ``models/build.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.modeling import Sam
from torch import nn
from transformers import PreTrainedModel

from vmad_pipeline.configs import ModelConfig
from vmad_pipeline.losses.segmentation import mask_bce, mask_dice
from vmad_pipeline.models.dssl import Dssl, DsslOutput
from vmad_pipeline.models.projectors import Projector
from vmad_pipeline.models.sam import decode_masks, sam_preprocess
from vmad_pipeline.models.vision import VisionTower


@dataclass
class VmadOutput:
    ce: torch.Tensor | None  # causal-LM loss on answer tokens
    bce: torch.Tensor | None
    dice: torch.Tensor | None
    pbsd: torch.Tensor | None  # DSSL: KL(p_v || p_t), None when DSSL is off
    patch_bce: torch.Tensor | None  # DSSL: the visual head's box BCE
    logits: torch.Tensor  # B x T x V
    mask_logits: torch.Tensor | None  # B_seg x H x W, one per sample that holds [SEG]
    seg_index: torch.Tensor  # indices (into the batch) of the samples with a mask prediction


@dataclass
class Prediction:
    mask_logits: torch.Tensor  # B x H x W
    answer_ids: list[list[int]]  # generated tokens per image
    seg_found: (
        torch.Tensor
    )  # B bool: the model emitted [SEG] (else the last token's state was used)


class SegHead(nn.Module):
    """Hidden state of [SEG] -> SAM sparse prompt (d_llm -> d_llm -> d_sam, ReLU)."""

    def __init__(self, *, d_llm: int, d_sam: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_llm, d_llm), nn.ReLU(inplace=True), nn.Linear(d_llm, d_sam)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class VmadModel(nn.Module):
    def __init__(
        self,
        *,
        config: ModelConfig,
        vision: VisionTower,
        projector: Projector,
        llm: PreTrainedModel,
        sam: Sam,
        seg_head: SegHead,
        dssl: Dssl | None,
        state_phrase_ids: tuple[list[int], list[int]],
        image_token_id: int,
        seg_token_id: int,
        pad_token_id: int,
        eos_token_id: int,
    ) -> None:
        super().__init__()
        self.config = config
        self.vision, self.projector, self.llm, self.sam, self.seg_head = (
            vision,
            projector,
            llm,
            sam,
            seg_head,
        )
        self.dssl = dssl
        # Token ids of the normal / abnormal descriptions behind DSSL's semantic tokens.
        for name, ids in zip(("normal_phrase", "abnormal_phrase"), state_phrase_ids, strict=True):
            self.register_buffer(name, torch.tensor(ids, dtype=torch.long), persistent=False)
        self.image_token_id, self.seg_token_id = image_token_id, seg_token_id
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        # What the model was trained on (classes, sources, split hash): set by the trainer,
        # saved with every checkpoint, read back on load. Evaluation checks it.
        self.trained_on: dict = {}

    # ------------------------------------------------------------------ pieces
    @property
    def num_image_tokens(self) -> int:
        return self.projector.num_tokens

    def parts(self) -> dict[str, nn.Module]:
        """The named parts that presets freeze or train (configs.MODEL_PARTS)."""
        return {
            "vision": self.vision,
            "projector": self.projector,
            "llm": self.llm,
            "sam_encoder": self.sam.image_encoder,
            "sam_decoder": nn.ModuleList([self.sam.prompt_encoder, self.sam.mask_decoder]),
            "seg_head": self.seg_head,
            **({"dssl": self.dssl} if self.dssl is not None else {}),
        }

    def get_image_features(self, images_clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images_clip: B x 3 x S x S in [0, 1] -> (visual tokens B x T x d_llm, the selected
        CLIP layer's mean feature B x C, which DSSL's Meta-Net reads)."""
        hidden = self.vision(images_clip)
        features = self.vision.select(hidden)  # (B, N, C)
        levels = [hidden[i] for i in self.projector.level_indices]
        return self.projector(features, levels), features.mean(1)

    def embed_inputs(
        self, input_ids: torch.Tensor, images_clip: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token embeddings with the image placeholder positions replaced by visual tokens,
        and the CLIP global feature (B x C)."""
        visual, clip_global = self.get_image_features(images_clip)  # (B, T_img, d)
        is_image = input_ids == self.image_token_id  # (B, T)
        counts = is_image.sum(1)
        if not torch.all(counts == visual.shape[1]):
            raise ValueError(
                f"each sequence needs exactly {visual.shape[1]} image tokens, got {counts.tolist()}"
            )
        ids = input_ids.masked_fill(is_image, self.pad_token_id)
        embeds = self.llm.get_input_embeddings()(ids)  # (B, T, d)
        return embeds.masked_scatter(is_image.unsqueeze(-1), visual.to(embeds.dtype)), clip_global

    def image_embeddings(self, images_sam: torch.Tensor) -> torch.Tensor:
        """images_sam: B x 3 x H x W in [0, 1] (longest side = encoder size) -> B x d_sam x h x w."""
        return self.sam.image_encoder(sam_preprocess(self.sam, images_sam))

    def masks_from_states(
        self,
        states: torch.Tensor,
        images_sam: torch.Tensor,
        output_size: tuple[int, int],
        embeddings: torch.Tensor | None = None,
    ) -> torch.Tensor:
        prompts = self.seg_head(states)  # (B, d_sam)
        emb = self.image_embeddings(images_sam) if embeddings is None else embeddings
        return decode_masks(
            self.sam, emb, prompts, input_size=tuple(images_sam.shape[-2:]), output_size=output_size
        )

    def state_words(self) -> torch.Tensor:
        """Mean input embedding of the normal and abnormal descriptions: 2 x d_llm."""
        embed = self.llm.get_input_embeddings()
        return torch.stack([embed(self.normal_phrase).mean(0), embed(self.abnormal_phrase).mean(0)])

    def image_states(self, last: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The LLM's last hidden layer at the image positions on their grid: B x d x s x s."""
        b, n = len(last), self.num_image_tokens
        side = int(round(n**0.5))
        if side * side != n:
            raise ValueError(f"DSSL needs a square grid of visual tokens, got {n}")
        states = last[input_ids == self.image_token_id].view(b, n, -1)  # (B, T_img, d)
        return states.transpose(1, 2).reshape(b, -1, side, side)

    # ------------------------------------------------------------------ training
    def forward(
        self,
        *,
        images_clip: torch.Tensor,
        images_sam: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        class_idx: torch.Tensor | None = None,
    ) -> VmadOutput:
        """input_ids/attention_mask/labels: B x T (labels -100 outside answers); masks: B x H x W
        at the SAM input size; class_idx: B training-class indices (-1 unknown) for DSSL.

        Returns every loss term separately; how they are weighted is the trainer's business
        (``training.objective.weighted_loss``)."""
        embeds, clip_global = self.embed_inputs(input_ids, images_clip)
        out = self.llm(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            labels=labels,
            output_hidden_states=True,
        )
        last = out.hidden_states[-1]  # (B, T, d)
        use_dssl = self.dssl is not None and class_idx is not None and masks is not None
        sam_emb = self.image_embeddings(images_sam) if use_dssl else None
        pbsd = patch_bce = None
        if use_dssl:
            extra = self._dssl_terms(sam_emb, last, input_ids, clip_global, masks, class_idx)
            pbsd, patch_bce = extra.pbsd, extra.patch_bce
        seg_index, mask_logits = self._seg_masks(last, input_ids, images_sam, masks, sam_emb)
        bce = dice = None
        if mask_logits is not None and masks is not None:
            target = masks[seg_index].float()
            bce, dice = mask_bce(mask_logits, target), mask_dice(mask_logits, target)
        return VmadOutput(
            ce=out.loss,
            bce=bce,
            dice=dice,
            pbsd=pbsd,
            patch_bce=patch_bce,
            logits=out.logits,
            mask_logits=mask_logits,
            seg_index=seg_index,
        )

    def _dssl_terms(self, sam_emb, last, input_ids, clip_global, masks, class_idx) -> DsslOutput:
        return self.dssl(
            sam_embedding=sam_emb,
            llm_visual=self.image_states(last, input_ids),
            clip_global=clip_global,
            state_words=self.state_words(),
            masks=masks.float(),
            class_idx=class_idx,
        )

    def _seg_masks(
        self,
        last: torch.Tensor,
        input_ids: torch.Tensor,
        images_sam: torch.Tensor,
        masks: torch.Tensor | None,
        sam_emb: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(indices of the samples holding [SEG], their mask logits or None). The [SEG] state is
        read at the [SEG] token's own input position (positions come from the actual sequence,
        never from a fixed image-token count)."""
        is_seg = input_ids == self.seg_token_id
        seg_index = torch.nonzero(is_seg.any(1)).flatten()
        if not len(seg_index):
            return seg_index, None
        first = is_seg[seg_index].float().argmax(1)
        states = last[seg_index, first]  # (B_seg, d)
        out_size = tuple(masks.shape[-2:]) if masks is not None else tuple(images_sam.shape[-2:])
        mask_logits = self.masks_from_states(
            states,
            images_sam[seg_index],
            out_size,
            embeddings=None if sam_emb is None else sam_emb[seg_index],
        )
        return seg_index, mask_logits

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(
        self,
        *,
        images_clip: torch.Tensor,
        images_sam: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        output_size: tuple[int, int],
        max_new_tokens: int = 8,
    ) -> Prediction:
        """Greedy answer, then the mask from the [SEG] state (prompts left-padded)."""
        embeds, _ = self.embed_inputs(input_ids, images_clip)
        generated = self.llm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.pad_token_id,
            eos_token_id=self.eos_token_id,
        )  # (B, G): only new tokens when generating from embeddings
        gen_mask = torch.ones_like(generated)
        ended = (
            torch.cumsum((generated == self.eos_token_id).long(), 1)
            - (generated == self.eos_token_id).long()
        )
        gen_mask[ended > 0] = 0  # tokens after the first EOS are padding
        full_embeds = torch.cat([embeds, self.llm.get_input_embeddings()(generated)], 1)
        full_mask = torch.cat([attention_mask, gen_mask], 1)
        # Prompts are left-padded: positions count real tokens only, as generate() counted them
        # (a rotary LLaMA is invariant to the shift up to rounding; absolute positions are not).
        positions = (full_mask.cumsum(1) - 1).clamp(min=0)
        out = self.llm(
            inputs_embeds=full_embeds,
            attention_mask=full_mask,
            position_ids=positions,
            output_hidden_states=True,
        )
        last = out.hidden_states[-1][:, input_ids.shape[1] :]  # states of the generated tokens
        is_seg = (generated == self.seg_token_id) & gen_mask.bool()
        seg_found = is_seg.any(1)
        last_valid = gen_mask.sum(1).clamp(min=1) - 1
        pos = torch.where(seg_found, is_seg.float().argmax(1), last_valid)
        states = last[torch.arange(len(pos)), pos]
        masks = self.masks_from_states(states, images_sam, output_size)
        answers = [g[m.bool()].tolist() for g, m in zip(generated, gen_mask, strict=True)]
        return Prediction(mask_logits=masks, answer_ids=answers, seg_found=seg_found)
