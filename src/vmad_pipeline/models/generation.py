"""Greedy decoding that draws the mask as it goes: one prefill per image.

The prompt is encoded once (KV cache); at the step where a row's input token is [SEG], that
token's last-layer state is its [SEG] state: the mask is decoded from it there, and with mask
evidence (``models/evidence.py``) the tokens after it read what the mask shows. No second pass
over the sequence. A row that never emits [SEG] falls back to the state of its last token (its
end-of-sequence token or the last one generated; LISA users meet this after fine-tuning), and
says so in ``seg_found``.

``forced`` tokens are fed first whatever the model would say (teacher forcing a shared prefix,
e.g. the " [SEG] " both "Yes" and "No" answers start with): the distribution at the first free
step is returned, from which P(yes) is read.

Written here because transformers' ``generate`` cannot call back into the model between steps
(the mask has to be drawn, and the evidence added, before the next token is embedded).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedModel

from vmad_pipeline.models.evidence import SegEvidence
from vmad_pipeline.models.sam import MaskCue


@dataclass
class Generation:
    tokens: torch.Tensor  # B x G generated (forced ones included); pad after end of sequence
    lengths: torch.Tensor  # B: tokens up to and including the end of sequence (or G)
    mask_logits: torch.Tensor  # B x H x W
    seg_found: torch.Tensor  # B bool
    free_logits: torch.Tensor  # B x V: the next-token logits at the first step not forced

    def answer_ids(self) -> list[list[int]]:
        return [row[:n].tolist() for row, n in zip(self.tokens, self.lengths.tolist(), strict=True)]


@runtime_checkable
class GeneratingModel(Protocol):
    """What decoding reads of a model, public names only (``VmadModel`` is one)."""

    llm: PreTrainedModel
    evidence: SegEvidence | None  # mask evidence for the tokens after [SEG] (None: off)
    seg_token_id: int
    pad_token_id: int
    eos_token_id: int

    def masks_from_states(
        self,
        states: torch.Tensor,
        images_sam: torch.Tensor,
        output_size: tuple[int, int],
        embeddings: torch.Tensor | None = None,
        cue: MaskCue | None = None,
    ) -> torch.Tensor: ...


def _cache_name(llm) -> str:
    """The forward argument holding the KV cache: ``cache`` since transformers 5.x (which
    deprecates ``past_key_values``), ``past_key_values`` before."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _step(llm, name, x, mask, positions, past):
    """One forward with the KV cache passed as ``name`` (:func:`_cache_name`)."""
    out = llm(
        inputs_embeds=x,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        output_hidden_states=True,
        **{name: past},
    )
    return out.logits[:, -1], out.hidden_states[-1][:, -1], getattr(out, name)


@torch.no_grad()
def generate_with_masks(
    model: GeneratingModel,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    images_sam: torch.Tensor,
    visual: torch.Tensor,
    *,
    max_new_tokens: int,
    output_size: tuple[int, int],
    forced: tuple[int, ...] = (),
    evidence: tuple[torch.Tensor, torch.Tensor] | None = None,
    draw_fallback: bool = True,
    sam_embeddings: torch.Tensor | None = None,
    mask_cue: MaskCue | None = None,
) -> Generation:
    """Greedy answers to left-padded prompts (``embeds`` B x T x d with their ``attention_mask``),
    the mask of each row's first [SEG] (at ``output_size``) and the logits of the first free
    step. ``visual``: the rows' visual tokens (mask evidence pools them). ``evidence``: (B x d, B bool)
    what the generated tokens read from a [SEG] already in the prompt, and the rows holding one.
    ``draw_fallback``: draw the last token's mask for rows that never said [SEG] (else they stay 0:
    a follow-up needs no map it did not ask for, and SAM's encoder is not run for it).
    ``sam_embeddings``: the rows' SAM image embeddings when already computed (else encoded for the
    rows that draw a mask, when they do). ``mask_cue``: what the reference cue gives the rows'
    masks (``models.sam.MaskCue``), when there is one."""

    def draw(states, rows):
        emb = None if sam_embeddings is None else sam_embeddings[rows]
        cue = None if mask_cue is None else mask_cue.take(rows)
        return model.masks_from_states(
            states, images_sam[rows], output_size, embeddings=emb, cue=cue
        )

    b, device = len(embeds), embeds.device
    positions = (attention_mask.cumsum(1) - 1).clamp(min=0)
    cache = _cache_name(model.llm)  # once, not per step
    logits, state, past = _step(model.llm, cache, embeds, attention_mask, positions, None)
    mask, next_pos = attention_mask, positions[:, -1:] + 1
    embed = model.llm.get_input_embeddings()
    # (B, d): added after a row's first [SEG], in the prompt or generated
    had_seg = torch.zeros(b, dtype=torch.bool, device=device)
    if evidence is None:
        evidence = torch.zeros_like(embeds[:, 0])
    else:
        evidence, had_seg = evidence[0].to(embeds.dtype), evidence[1]
    masks = torch.zeros((b, *output_size), device=device, dtype=torch.float32)
    seg_found = torch.zeros(b, dtype=torch.bool, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    fallback = state
    tokens, free_logits = [], None
    for step in range(len(forced) + max_new_tokens):
        if step < len(forced):
            token = torch.full((b,), forced[step], dtype=torch.long, device=device)
        else:
            free_logits = logits if free_logits is None else free_logits
            token = logits.argmax(-1).masked_fill(done, model.pad_token_id)
        tokens.append(token)
        x = (embed(token) + evidence.to(embeds.dtype))[:, None]
        mask = torch.cat([mask, (~done).long()[:, None]], 1)
        logits, state, past = _step(model.llm, cache, x, mask, next_pos, past)
        next_pos = next_pos + 1
        fallback = torch.where(done[:, None], fallback, state)
        new = (token == model.seg_token_id) & ~seg_found & ~done
        if new.any():
            rows = torch.nonzero(new).flatten()
            drawn = draw(state[rows], rows)
            masks[rows] = drawn.float()
            seg_found[rows] = True
            if model.evidence is not None:  # only a row's first [SEG] gives evidence
                keep = rows[~had_seg[rows]]
                fresh = model.evidence(drawn.sigmoid(), visual[rows]).to(evidence.dtype)
                evidence[keep] = fresh[~had_seg[rows]]
        done = done | (token == model.eos_token_id)
        if step >= len(forced) and bool(done.all()):
            break
    stacked = torch.stack(tokens, 1)
    if draw_fallback and not seg_found.all():
        rows = torch.nonzero(~seg_found).flatten()
        masks[rows] = draw(fallback[rows], rows).float()
    is_end = stacked == model.eos_token_id
    lengths = torch.where(is_end.any(1), is_end.float().argmax(1) + 1, stacked.shape[1])
    return Generation(
        tokens=stacked,
        lengths=lengths,
        mask_logits=masks,
        seg_found=seg_found,
        free_logits=free_logits if free_logits is not None else logits,
    )
