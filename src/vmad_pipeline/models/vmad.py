"""VMAD: vision tower + projector (LTC) + LLM with LoRA (or AMoE-LoRA) + [SEG]-prompted SAM, with
DSSL in training.

The model has no training loop, optimiser or logging (see ``training/``); it is assembled
from already-built components by ``models/build.py``.

Over 400 lines (545): the training forward, its mask-evidence pass and the prediction share one
embedding rule and one [SEG] rule, kept in one class; so do the reference cue's entry points
(``reference_features``, ``reference_memories``, ``reference_cue``, ``with_cue``: about 60
lines), which forward and predict both call on the features they already computed, before the
backbone's one-call cache is overwritten. The cue's own modules are in
``models/reference_cue.py``, the seeds' extra tokens and regions in ``models/extras.py``, the
records the model returns in ``models/outputs.py``. Splitting the cue's entry points out would
need a Protocol of the model's internals (vision tower, cached features) for a 60-line gain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from segment_anything.modeling import Sam
from torch import nn
from transformers import PreTrainedModel

from vmad_pipeline.configs import ModelConfig
from vmad_pipeline.losses.segmentation import mask_bce, mask_dice
from vmad_pipeline.models.anomaly_expert import AnomalyExpert
from vmad_pipeline.models.dssl import Dssl, DsslOutput
from vmad_pipeline.models.evidence import SegEvidence
from vmad_pipeline.models.extras import (
    expert_levels,
    extra_tokens,
    own_prediction,
    own_regions,
    predicted_regions,
    training_regions,
    upsample_map,
)
from vmad_pipeline.models.generation import generate_with_masks
from vmad_pipeline.models.outputs import Embedded, ImageFeatures, Prediction, VmadOutput
from vmad_pipeline.models.projectors import Projector
from vmad_pipeline.models.reference_cue import CueOutput, ReferenceCue
from vmad_pipeline.models.references import patches
from vmad_pipeline.models.region_tokens import RegionTokens
from vmad_pipeline.models.routing import balance, needs_own_mask, routed, routing_evidence
from vmad_pipeline.models.sam import MaskCue, decode_masks, sam_preprocess
from vmad_pipeline.models.vision import VisionTower
from vmad_pipeline.prompts import ImageSlots


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
        evidence: SegEvidence | None = None,
        expert: AnomalyExpert | None = None,
        region: RegionTokens | None = None,
        cue: ReferenceCue | None = None,
        adverb_ids: tuple[list[int], ...] = (),
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
        self.evidence = evidence  # mask evidence for the tokens after [SEG] (models/evidence.py)
        self.expert, self.region = expert, region  # models/extras.py
        self.cue = cue  # what the model reads of normal references (models/reference_cue.py)
        for k, ids in enumerate(adverb_ids):  # the adverbs' token ids (anomaly_expert.ADVERBS)
            self.register_buffer(
                f"adverb_{k}", torch.tensor(ids, dtype=torch.long), persistent=False
            )
        # Token ids of the normal / abnormal descriptions behind DSSL's semantic tokens.
        for name, ids in zip(("normal_phrase", "abnormal_phrase"), state_phrase_ids, strict=True):
            self.register_buffer(name, torch.tensor(ids, dtype=torch.long), persistent=False)
        self.image_token_id, self.seg_token_id = image_token_id, seg_token_id
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        # What the model was trained on (classes, sources, split hash): set by the trainer,
        # saved with every checkpoint, read back on load. Evaluation checks it.
        self.trained_on: dict = {}
        # The decision thresholds calibrated after training (image score, anomaly map), saved
        # with every checkpoint; {} until calibrated (training/calibration.py).
        self.decision: dict = {}
        # the defect-type head fitted after training (models.type_head, as JSON), or None
        self.type_head: dict | None = None

    # ------------------------------------------------------------------ pieces
    @property
    def num_image_tokens(self) -> int:
        return self.projector.num_tokens

    @property
    def image_slots(self) -> ImageSlots:
        """What a prompt's image placeholder expands to (``prompts.ImageSlots``)."""
        return ImageSlots(
            visual=self.num_image_tokens,
            expert=0 if self.expert is None else self.expert.num_tokens(self.vision.grid),
            region=0 if self.region is None else self.region.num_tokens,
        )

    @property
    def adverb_ids(self) -> list[torch.Tensor]:
        return [getattr(self, f"adverb_{k}") for k in range(3)]

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
            **({"evidence": self.evidence} if self.evidence is not None else {}),
            **({"expert": self.expert} if self.expert is not None else {}),
            **({"region": self.region} if self.region is not None else {}),
            **({"references": self.cue} if self.cue is not None else {}),
        }

    def get_image_features(self, images_clip: torch.Tensor) -> ImageFeatures:
        """images_clip: B x 3 x S x S in [0, 1] -> the visual tokens and the features the other
        parts read (:class:`ImageFeatures`)."""
        hidden, frozen = self.vision.encode(images_clip)
        features = self.vision.select(hidden)  # (B, N, C)
        levels = [hidden[i] for i in self.projector.level_indices]
        tokens = self.projector(features, levels)  # (B, T, d)
        positions = getattr(self.projector, "positions", None)  # (T, d) when configured
        visual = tokens if positions is None else tokens + positions
        return ImageFeatures(visual, features.mean(1), features, frozen)

    def reference_features(
        self, images_clip: torch.Tensor, image: ImageFeatures | None = None
    ) -> torch.Tensor:
        """N x C x g x g: the patch features the reference comparison reads, of images given as
        the vision tower reads them (``image``: their features, when already computed)."""
        if self.cue is None:
            raise ValueError("this model reads no references (train.model.references.enabled)")
        frozen = None if image is None else image.frozen
        levels = self.vision.native_levels(images_clip, frozen)
        return self.cue.features(levels, images_clip.shape[-1])

    def reference_memories(
        self, images_clip: torch.Tensor, owner: torch.Tensor, n_rows: int
    ) -> list[torch.Tensor | None]:
        """The references of a batch as one memory per row: the patches of the reference images
        (R x 3 x S x S) whose ``owner`` (R) is that row; None for a row without any."""
        feats = self.reference_features(images_clip) if len(images_clip) else None
        return [
            patches(feats[owner == i]) if feats is not None and bool((owner == i).any()) else None
            for i in range(n_rows)
        ]

    def reference_cue(
        self,
        images_clip: torch.Tensor,
        image: ImageFeatures,
        references: Sequence[torch.Tensor | None] | None = None,
        reference_images: torch.Tensor | None = None,
        reference_owner: torch.Tensor | None = None,
    ) -> CueOutput | None:
        """The cue of each row's references, None when the model reads none (visual tokens'
        dtype). The references: one memory of patches (M x C) per row, None for a row without,
        or reference images and their owners (:meth:`reference_memories`)."""
        if self.cue is None:
            return None
        query = self.reference_features(images_clip, image)  # first: the backbone's cache
        if reference_images is not None:
            references = self.reference_memories(reference_images, reference_owner, len(query))
        if references is None:
            references = [None] * len(images_clip)
        maps, has = self.cue.distance_maps(query, references)
        return self.cue(maps, has, image.visual.shape[1], image.visual.dtype)

    @staticmethod
    def with_cue(image: ImageFeatures, cue: CueOutput | None) -> ImageFeatures:
        """``image`` with the cue's evidence added to its visual tokens."""
        if cue is None or cue.tokens is None:
            return image
        return ImageFeatures(image.visual + cue.tokens, *image[1:])

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        images_clip: torch.Tensor,
        *,
        region_masks: torch.Tensor | None = None,
        region_keep: torch.Tensor | None = None,
        image: ImageFeatures | None = None,
    ) -> Embedded:
        """Token embeddings with the image placeholders (``image_slots``) filled: the visual
        tokens, then the expert's adverb and suspicious tokens and the region tokens where the
        model has them. ``region_masks`` (B x H x W in [0, 1]): the regions the region tokens
        read; rows where ``region_keep`` (B bool) is False, or all of them when it is None and
        no masks are given, take the predicted region of the expert's map (``region_tokens.source:
        expert``) or none. ``image``: the features, when already computed."""
        image = self.get_image_features(images_clip) if image is None else image
        embed = self.llm.get_input_embeddings()
        extras = extra_tokens(
            expert=self.expert,
            region=self.region,
            levels=expert_levels(image.frozen, self.config.expert.levels) if self.expert else (),
            features=image.features,
            region_masks=region_masks,
            region_keep=region_keep,
            embed=embed,
            adverb_ids=self.adverb_ids if self.expert else [],
            thresholds=self.config.expert.adverbs,
            region_from_expert=self.config.region_tokens.source == "expert",
        )
        filled = torch.cat([image.visual.to(extras.tokens.dtype), extras.tokens], 1)
        is_image = input_ids == self.image_token_id  # (B, T)
        counts = is_image.sum(1)
        if not torch.all(counts == filled.shape[1]):
            raise ValueError(
                f"each sequence needs exactly {filled.shape[1]} image tokens, got {counts.tolist()}"
            )
        ids = input_ids.masked_fill(is_image, self.pad_token_id)
        embeds = embed(ids)  # (B, T, d)
        embeds = embeds.masked_scatter(is_image.unsqueeze(-1), filled.to(embeds.dtype))
        return Embedded(embeds, image.clip_global, image.visual, extras.expert)

    def image_embeddings(self, images_sam: torch.Tensor) -> torch.Tensor:
        """images_sam: B x 3 x H x W in [0, 1] (longest side = encoder size) -> B x d_sam x h x w."""
        return self.encode_images(images_sam)[0]

    def encode_images(self, images_sam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(SAM image embedding, DSSL's visual teacher): SAM's ViT embedding is both; an encoder
        with ``encode`` (the small preset's) gives its frozen features as the teacher."""
        encoder = self.sam.image_encoder
        if getattr(encoder, "takes_unit_range", False):
            return encoder.encode(images_sam)
        embedding = encoder(sam_preprocess(self.sam, images_sam))
        return embedding, embedding

    def masks_from_states(
        self,
        states: torch.Tensor,
        images_sam: torch.Tensor,
        output_size: tuple[int, int],
        embeddings: torch.Tensor | None = None,
        cue: MaskCue | None = None,
    ) -> torch.Tensor:
        prompts = self.seg_head(states)  # (B, d_sam)
        emb = self.image_embeddings(images_sam) if embeddings is None else embeddings
        return decode_masks(
            self.sam,
            emb,
            prompts,
            input_size=tuple(images_sam.shape[-2:]),
            output_size=output_size,
            cue=cue,
        )

    def seg_masks(
        self,
        last: torch.Tensor,
        input_ids: torch.Tensor,
        images_sam: torch.Tensor,
        masks: torch.Tensor | None,
        sam_emb: torch.Tensor | None,
        size: tuple[int, int] | None = None,
        cue: MaskCue | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(indices of the samples holding [SEG], their mask logits or None) from ``last``, the
        LLM's last hidden layer (B x T x d). The [SEG] state is read at each row's first [SEG]
        input position (positions come from the actual sequence, never from a fixed image-token
        count); the masks come out at ``size``, else ``masks``' size, else the SAM input's.
        ``sam_emb``: the rows' SAM image embeddings when already computed; ``cue``: what the
        reference cue gives the rows' masks."""
        is_seg = input_ids == self.seg_token_id
        seg_index = torch.nonzero(is_seg.any(1)).flatten()
        if not len(seg_index):
            return seg_index, None
        first = is_seg[seg_index].float().argmax(1)
        states = last[seg_index, first]  # (B_seg, d)
        out_size = size or (
            tuple(masks.shape[-2:]) if masks is not None else tuple(images_sam.shape[-2:])
        )
        mask_logits = self.masks_from_states(
            states,
            images_sam[seg_index],
            out_size,
            embeddings=None if sam_emb is None else sam_emb[seg_index],
            cue=None if cue is None else cue.take(seg_index),
        )
        return seg_index, mask_logits

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
        # the visual tokens are the first of each row's placeholders (prompts.ImageSlots)
        states = last[input_ids == self.image_token_id].view(b, self.image_slots.total, -1)[:, :n]
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
        oracle: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        region_oracle: torch.Tensor | None = None,
        route_groups: Sequence[str] | None = None,
        reference_images: torch.Tensor | None = None,
        reference_owner: torch.Tensor | None = None,
    ) -> VmadOutput:
        """input_ids/attention_mask/labels: B x T (labels -100 outside answers); masks: B x H x W
        at the SAM input size; class_idx: B training-class indices (-1 unknown) for DSSL;
        oracle: B bool, the samples whose mask evidence comes from ``masks`` (the ground truth)
        instead of the drawn mask (training with evidence); boxes: B x n x 4 DSSL boxes (drawn
        here when None); region_oracle: B bool, with region tokens the samples that read the
        true region (``masks``), the others the predicted one (the expert's map, or the mask the
        model draws without a region: :func:`models.extras.own_regions`); route_groups: B labels
        of the samples in AMoE-LoRA's router statistics (``models/routing.py``);
        reference_images: R x 3 x S x S normal references (as ``images_clip``), reference_owner: R
        the row each belongs to (rows with none: zero-shot), for a model with the reference cue.

        Returns every loss term separately; how they are weighted is the trainer's business
        (``training.objective.weighted_loss``)."""
        use_dssl = self.dssl is not None and class_idx is not None and masks is not None
        own = needs_own_mask(self)
        sam_emb, teacher = self.encode_images(images_sam) if (use_dssl or own) else (None, None)
        image = self.get_image_features(images_clip)
        cue = self.reference_cue(
            images_clip, image, reference_images=reference_images, reference_owner=reference_owner
        )
        image = self.with_cue(image, cue)
        mask_cue = None if cue is None else cue.mask
        size = tuple(masks.shape[-2:]) if masks is not None else tuple(images_sam.shape[-2:])
        own = (  # the mask the model draws with no region, neutral routing, no gradient
            own_regions(
                self, input_ids, attention_mask, images_clip, images_sam, image, sam_emb, size
            )
            if own
            else None
        )
        regions, keep = training_regions(self, masks, region_oracle, own)
        embedded = self.embed_inputs(
            input_ids, images_clip, region_masks=regions, region_keep=keep, image=image
        )
        embeds, clip_global, visual = embedded.embeds, embedded.clip_global, embedded.visual
        evidence = self.evidence is not None
        route = routing_evidence(self, embedded.expert, own)
        with routed(self, route, groups=route_groups, token_mask=attention_mask):
            out = self.llm(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                labels=None if evidence else labels,
                output_hidden_states=True,
            )
        last = out.hidden_states[-1]  # (B, T, d)
        pbsd = patch_bce = dssl_valid = None
        if use_dssl:
            extra = self._dssl_terms(teacher, last, input_ids, clip_global, masks, class_idx, boxes)
            pbsd, patch_bce, dssl_valid = extra.pbsd, extra.patch_bce, extra.valid
        seg_index, mask_logits = self.seg_masks(
            last, input_ids, images_sam, masks, sam_emb, cue=mask_cue
        )
        bce = dice = None
        if mask_logits is not None and masks is not None:
            target = masks[seg_index].float()
            bce, dice = mask_bce(mask_logits, target), mask_dice(mask_logits, target)
        if evidence:  # the answer after [SEG] reads the drawn mask: a second pass with it
            drawn = None if mask_logits is None else mask_logits.detach().sigmoid()
            if drawn is not None and oracle is not None and masks is not None:
                truth = masks[seg_index].to(drawn.dtype)
                drawn = torch.where(oracle[seg_index].bool()[:, None, None], truth, drawn)
            with routed(self, route, groups=route_groups, token_mask=attention_mask, record=False):
                out = self._with_evidence(
                    embeds, attention_mask, labels, input_ids, visual, seg_index, drawn
                )
        return VmadOutput(
            ce=out.loss,
            bce=bce,
            dice=dice,
            pbsd=pbsd,
            patch_bce=patch_bce,
            dssl_valid=dssl_valid,
            logits=out.logits,
            mask_logits=mask_logits,
            seg_index=seg_index,
            expert=embedded.expert,
            balance=balance(self),
        )

    def _with_evidence(self, embeds, attention_mask, labels, input_ids, visual, seg_index, probs):
        """The LLM again, every token after a sample's first [SEG] given that sample's mask
        evidence from ``probs`` (B_seg x H x W: the drawn mask, detached so that the text does not
        train the mask, or the ground truth for oracle samples)."""
        add = torch.zeros_like(embeds)
        if probs is not None and len(seg_index):
            ev = self.evidence(probs, visual[seg_index])  # (B_seg, d)
            after = self.after_first_seg(input_ids[seg_index])
            add[seg_index] = after.unsqueeze(-1).to(embeds.dtype) * ev[:, None].to(embeds.dtype)
        return self.llm(inputs_embeds=embeds + add, attention_mask=attention_mask, labels=labels)

    def after_first_seg(self, input_ids: torch.Tensor) -> torch.Tensor:
        """B x T bool: the positions after each row's first [SEG] (they read its mask evidence)."""
        is_seg = (input_ids == self.seg_token_id).long()
        return is_seg.cumsum(1) - is_seg > 0

    def _dssl_terms(
        self, teacher, last, input_ids, clip_global, masks, class_idx, boxes
    ) -> DsslOutput:
        return self.dssl(
            boxes=boxes,
            sam_embedding=teacher,
            llm_visual=self.image_states(last, input_ids),
            clip_global=clip_global,
            state_words=self.state_words(),
            masks=masks.float(),
            class_idx=class_idx,
        )

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
        forced: tuple[int, ...] = (),
        prompt_masks: torch.Tensor | None = None,
        fallback: bool = True,
        region_masks: torch.Tensor | None = None,
        references: Sequence[torch.Tensor | None] | None = None,
    ) -> Prediction:
        """Greedy answers to left-padded prompts, each row's mask drawn at its [SEG] as it is
        generated (``models/generation.py``: one prefill, the KV cache after it), ``forced``
        tokens fed first. ``prompt_masks`` (B x H x W probabilities): the masks of a [SEG] already
        in the prompt (an earlier turn of a conversation); with mask evidence, every token after
        it reads that mask's evidence, as in training. ``fallback``: rows without [SEG] get the
        last token's mask (else zeros). ``region_masks`` (B x H x W in [0, 1]): the regions the
        region tokens read (None: the predicted ones; the model's own mask is drawn first, from
        the prompt and a [SEG], with no region). ``references``: one memory of normal reference
        patches (M x C, :meth:`reference_features`) per row, None for a row without (the
        reference cue's input; ignored by a model without one)."""
        image = self.get_image_features(images_clip)
        cue = self.reference_cue(images_clip, image, references)
        image = self.with_cue(image, cue)
        # the own mask (own-mask regions, own-mask routing evidence) is drawn first: SAM's
        # encoder runs once for it and the answer's mask
        own = needs_own_mask(self, region_given=region_masks is not None)
        sam_emb = self.image_embeddings(images_sam) if own else None
        own = (
            own_prediction(
                self,
                input_ids,
                attention_mask,
                images_clip,
                images_sam,
                image,
                output_size,
                sam_emb,
            )
            if own
            else None
        )
        regions = predicted_regions(self, region_masks, own)
        embedded = self.embed_inputs(input_ids, images_clip, region_masks=regions, image=image)
        embeds, visual = embedded.embeds, embedded.visual
        start = None
        if prompt_masks is not None and self.evidence is not None:
            after = self.after_first_seg(input_ids)  # (B, T)
            has = after.any(1)
            ev = self.evidence(prompt_masks.to(embeds.dtype), visual) * has[:, None]
            embeds = embeds + after.unsqueeze(-1).to(embeds.dtype) * ev[:, None].to(embeds.dtype)
            start = (ev, has)
        with routed(self, routing_evidence(self, embedded.expert, own)):
            gen = generate_with_masks(
                self,
                embeds,
                attention_mask,
                images_sam,
                visual,
                max_new_tokens=max_new_tokens,
                output_size=output_size,
                forced=forced,
                evidence=start,
                draw_fallback=fallback,
                sam_embeddings=sam_emb,
                mask_cue=None if cue is None else cue.mask,
            )
        return Prediction(
            mask_logits=gen.mask_logits,
            answer_ids=gen.answer_ids(),
            seg_found=gen.seg_found,
            free_logits=gen.free_logits,
            significance=None
            if embedded.expert is None
            else upsample_map(embedded.expert.significance, output_size),
            expert_score=None if embedded.expert is None else embedded.expert.score,
            regions=regions,
            reference_maps=None if cue is None else cue.maps,
        )
