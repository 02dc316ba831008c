"""The detector with normal references: none, shots and batch are one code path (one memory of
patches per image read by the model's reference cue); the references-only threshold; the model
evaluated with references."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.models import cue_detector, random_images

from vmad_pipeline.configs.evaluate import parse_evaluate_params
from vmad_pipeline.inference.references import batch_references, reference_set, row_memories


@pytest.fixture(scope="module")
def detector():
    return cue_detector()


_images = random_images


def test_the_three_modes_are_one_code_path(detector):
    """Shots and batch both end as one memory per image; a memory built by hand from the same
    images gives the same prediction as the mode's."""
    p = detector.predictor
    images, refs = _images(4), _images(3, seed=1)
    cats = ["screw"] * 4
    sets = {"screw": reference_set(p, refs, "screw", rule="loo_max")}
    shots = p.predict(images, cats, output_size=16, references=row_memories(cats, sets))
    feats = p.reference_features(refs)
    by_hand = [feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])] * 4
    same = p.predict(images, cats, output_size=16, references=by_hand)
    np.testing.assert_allclose(shots.scores, same.scores, rtol=1e-5)
    none = p.predict(images, cats, output_size=16)
    assert np.abs(shots.maps - none.maps).max() > 1e-4
    keys = ["a", "b", "c", "d"]
    batch = batch_references(p, keys, cats, lambda ks: (ks, images[[keys.index(k) for k in ks]]))
    memories = batch.memories(keys, cats)
    assert all(m is not None and len(m) == 3 * feats.shape[-2] ** 2 for m in memories)  # no flips


def test_a_reference_set_thresholds_from_its_leave_one_out_scores(detector):
    p = detector.predictor
    refs = _images(4, seed=2)
    got = reference_set(p, refs, "screw", rule="loo_max")
    assert len(got.loo_scores) == 4 and got.threshold == max(got.loo_scores)
    assert got.n_images == 4 and got.memory.shape[1] > 0
    with pytest.raises(ValueError, match="no reference images"):
        reference_set(p, refs[:0], "screw", rule="loo_max")


def test_one_reference_thresholds_from_its_views_against_each_other(detector, monkeypatch):
    """One reference read with its flips: each view scored against the other three views only
    (never itself), the threshold their loo_max, never below the floor; no "normal distance"
    (views are not references). Without flips, one reference has no threshold."""
    p = detector.predictor
    ref = _images(1, seed=3)
    one = reference_set(p, ref, "screw", rule="loo_max")
    assert len(one.loo_scores) == 4 and one.threshold == max(one.loo_scores)
    assert one.normal_distance is None and one.left_out == []
    feats = p.reference_features(ref)  # 1 x C x g x 4g: the four views side by side
    parts = feats.split(feats.shape[-2], dim=-1)
    assert len(parts) == 4
    memory = torch.cat([parts[0], parts[2], parts[3]], -1).permute(0, 2, 3, 1)
    by_hand = p.predict(
        ref.flip(-1),
        ["screw"],
        references=[memory.reshape(-1, memory.shape[-1])],
        output_size=p.image_size,
        max_new_tokens=1,
    )  # the left-right view against the other three
    assert one.loo_scores[1] == pytest.approx(float(by_hand.scores[0]), rel=1e-5)
    floored = reference_set(p, ref, "screw", rule="loo_max", floor=2.0)
    assert floored.threshold == 2.0
    cfg = p.model.config
    no_flips = dataclasses.replace(cfg, references=dataclasses.replace(cfg.references, flips=False))
    monkeypatch.setattr(p.model, "config", no_flips)
    alone = reference_set(p, ref, "screw", rule="loo_max")
    assert alone.threshold is None and alone.loo_scores == []


def test_batch_mode_never_compares_an_image_with_itself_or_another_product(detector):
    p = detector.predictor
    images = _images(3)
    images[1] = images[0]  # a duplicate: only it can explain image 0's patches
    keys, cats = ["x", "y", "z"], ["a", "a", "b"]
    memories = batch_references(p, keys, cats, lambda ks: (ks, images[[keys.index(k) for k in ks]]))
    memories = memories.memories(keys, cats)
    assert memories[2] is None  # alone with its product
    feats = p.reference_features(images, flips=False)  # batch pools hold no flips
    own = feats[0].permute(1, 2, 0).reshape(-1, feats.shape[1])
    torch.testing.assert_close(memories[0], own)  # image 1 == image 0, nothing else


def test_the_model_is_evaluated_with_references(detector):
    from vmad_pipeline.inference.shot_evaluation import model_shot_report

    n = 6
    eval_set = pd.DataFrame(
        {
            "category": ["screw"] * n,
            "label": [0, 1] * 3,
            "image_path": [f"{i}.png" for i in range(n)],
            "source": "s",
            "split": "test",
            "mask_path": "",
        }
    )
    masks = [np.zeros((16, 16), np.uint8) for _ in range(n)]
    for i in range(1, n, 2):
        masks[i][4:8, 4:8] = 1
    images = _images(n)
    pool = pd.DataFrame(
        {
            "category": ["screw"] * 5,
            "label": 0,
            "split": "train",
            "source": "s",
            "image_path": [f"r{i}.png" for i in range(5)],
        }
    )
    refs = {f"r{i}.png": _images(1, seed=10 + i)[0] for i in range(5)}

    def load(rows):
        return torch.stack([refs[p] for p in rows["image_path"]])

    cfg = parse_evaluate_params(
        {
            "max_new_tokens": 3,
            "progress": False,
            "follow_ups": False,
            "hierarchy": {"enabled": False},
            "shots": [0, 2, 4],
            "eval_size": 16,
            "references": {"threshold": "loo_max"},
        }
    )
    report, flat = model_shot_report(detector, eval_set, images, masks, load, pool, cfg, None)
    assert set(report) == {"2", "4", "batch"}
    for k in ("2", "4"):
        assert set(report[k]["references"]["screw"]) <= set(refs)
        assert len(report[k]["references"]["screw"]) == int(k)
        assert report[k]["decision"]["classes"] == 1
        assert 0 <= report[k]["mean"]["image_auroc"] <= 1
    # a larger k holds the smaller k's references (one permutation per class)
    assert report["4"]["references"]["screw"][:2] == report["2"]["references"]["screw"]
    assert report["batch"]["decision"] is None
    assert "4/image_auroc" in flat and "batch/pixel_auroc" in flat


def test_batch_pools_stay_bounded_and_seeded(detector, monkeypatch):
    import vmad_pipeline.inference.references as references

    monkeypatch.setattr(references, "BATCH_REFERENCES", 2)
    monkeypatch.setattr(references, "BATCH_CANDIDATES", 5)
    monkeypatch.setattr(references, "BATCH_MIN_TO_PRUNE", 4)
    p = detector.predictor
    images = _images(6)
    keys, cats = [str(i) for i in range(6)], ["a"] * 6
    calls = []

    def load(ks):
        calls.append(list(ks))
        return ks, images[[int(k) for k in ks]]

    one = batch_references(p, keys, cats, load, seed=1)
    two = batch_references(p, keys, cats, load, seed=1)
    assert len(calls[0]) == 5 and calls[0] == calls[1]  # 5 candidates read, the same draw
    assert len(one.pools["a"][0]) == 3  # the most normal half of them, at most 2 + 1
    memories = one.memories(keys, cats)
    per_image = one.pools["a"][1].shape[-1] ** 2
    for key, memory in zip(keys, memories, strict=True):
        in_pool = key in one.pools["a"][0]
        assert len(memory) == (2 if in_pool else 3) * per_image  # never itself
    assert two.pools["a"][0] == one.pools["a"][0]


def test_many_references_are_scored_against_the_memory_without_their_own_patches(
    detector, monkeypatch
):
    import vmad_pipeline.inference.references as references

    p = detector.predictor
    refs = _images(3, seed=4)
    exact = reference_set(p, refs, "screw", rule="loo_max")
    monkeypatch.setattr(references, "EXACT_LOO", 2)
    approx = reference_set(p, refs, "screw", rule="loo_max")
    # no coreset at this size: the memory holds every patch, so both ways agree
    np.testing.assert_allclose(approx.loo_scores, exact.loo_scores, rtol=1e-5)


def test_the_score_does_not_depend_on_the_answers_budget(detector):
    p = detector.predictor
    images = _images(3, seed=5)
    full = p.predict(images, ["screw"] * 3, output_size=16)
    short = p.predict(images, ["screw"] * 3, output_size=16, max_new_tokens=1)
    np.testing.assert_allclose(short.scores, full.scores, rtol=1e-6)


def test_an_image_far_from_its_references_is_reported_unlike_them(detector):
    from vmad_pipeline.inference.references import FAR, unlike

    assert unlike(FAR * 1.01, 1.0) and not unlike(FAR * 0.99, 1.0)
    assert not unlike(None, 1.0) and not unlike(5.0, None)  # zero-shot, or one reference
    p = detector.predictor
    base = _images(1, seed=8).repeat(3, 1, 1, 1)  # one product: a texture, photographed thrice
    gen = torch.Generator().manual_seed(0)
    refs = (base.int() + torch.randint(-8, 9, base.shape, generator=gen)).clamp(0, 255)
    refs = refs.to(torch.uint8)
    shots = reference_set(p, refs, "x", rule="loo_max")
    same = detector.inspect(
        [base[0].permute(1, 2, 0).numpy()],
        ["x"],
        memories=[shots.memory],
        normal_distance=shots.normal_distance,
    )[0]
    other = _images(1, seed=9)[0].permute(1, 2, 0).numpy()  # noise: another product
    far = detector.inspect(
        [other], ["x"], memories=[shots.memory], normal_distance=shots.normal_distance
    )[0]
    assert not same.unlike_references and far.unlike_references
    assert far.reference_distance > same.reference_distance


def test_a_reference_anomalous_against_the_others_is_left_out():
    from vmad_pipeline.inference.references import OUTLIER_RATIO, outliers

    normal = [0.30, 0.32, 0.28, 0.31]
    assert outliers(normal, 0.5) == []
    assert outliers([*normal, 0.9], 0.5) == [4]  # past the model's threshold and the others'
    assert outliers([*normal, 0.45], 0.5) == []  # past the others', not the model's threshold
    assert outliers([0.1, 0.1, 0.1, 0.12], 0.05) == []  # past the threshold, like the others
    assert outliers([0.30, 0.9], 0.5) == []  # two: either could be the odd one
    assert outliers([0.3, 0.3, 0.9, 0.9], 0.5) == []  # half: they disagree, none is dropped
    assert outliers([*normal, 0.3 * OUTLIER_RATIO * 1.1], None) == [4]  # uncalibrated model
    # a normal reference of a texture with holes: far past the others, yet the model scores it
    # below 0.5 (the transfer tree's perforated sheet): kept
    assert outliers([0.017, 0.408, 0.02, 0.209, 0.03], 0.17) == []
    # fewer than five: a normal pcb of another layout among three others (the default split's
    # k = 4 draw, seed 0) is past every test, and cannot be told from a defective one: kept
    assert outliers([0.121, 0.674, 0.173, 0.113], 0.169) == []
    assert outliers([0.121, 0.674, 0.173, 0.113, 0.15], 0.169) == [1]  # five: judged


def test_left_out_references_leave_the_memory_and_the_threshold(detector, monkeypatch):
    import vmad_pipeline.inference.references as references

    p = detector.predictor
    refs = _images(5, seed=9)
    whole = reference_set(p, refs, "screw", rule="loo_max")
    monkeypatch.setattr(references, "outliers", lambda scores, floor: [2])
    kept = reference_set(p, refs, "screw", rule="loo_max")
    assert kept.left_out == [2] and kept.loo_scores == whole.loo_scores  # reported, all scored
    assert len(kept.memory) == 4 * len(whole.memory) // 5  # its patches are gone
    assert kept.threshold == max(s for i, s in enumerate(whole.loo_scores) if i != 2)
    shots = references.shots_from_images(
        detector, [r.permute(1, 2, 0).numpy() for r in refs], "screw", rule="loo_max", label="up"
    )
    assert shots.label == "up (#3 of 5 left out: anomalous against the others)"


def test_with_flips_a_mirrored_image_matches_its_reference_and_without_it_does_not(detector):
    from vmad_pipeline.models.references import nearest_distance, patches

    p = detector.predictor
    ref = _images(1, seed=7)
    mirrored = p.reference_features(ref.flip(-1), flips=False)
    with_flips = p.reference_features(ref)
    assert with_flips.shape[-1] == 4 * with_flips.shape[-2]  # 4 views side by side
    near = nearest_distance(patches(mirrored), patches(with_flips))
    far = nearest_distance(patches(mirrored), patches(p.reference_features(ref, flips=False)))
    assert near.max() < 1e-3 < far.max()


def test_a_reference_is_scored_against_the_other_references_views_never_its_own(detector):
    p = detector.predictor
    refs = _images(2, seed=8)
    loo = reference_set(p, refs, "screw", rule="loo_max").loo_scores
    feats = p.reference_features(refs)  # each with its flips
    by_hand = [feats[1 - i].permute(1, 2, 0).reshape(-1, feats.shape[1]) for i in range(2)]
    pred = p.predict(
        refs, ["screw"] * 2, output_size=p.image_size, references=by_hand, max_new_tokens=1
    )
    np.testing.assert_allclose(loo, pred.scores, rtol=1e-5)


def test_batch_pools_keep_the_images_the_model_finds_most_normal(detector, monkeypatch):
    """An anomalous image in the batch would lend its defect's patches to every other image's
    memory: the pool keeps the half that the model, each image against the others, scores
    lowest; a product of fewer than BATCH_MIN_TO_PRUNE images keeps them all."""
    from types import SimpleNamespace

    p = detector.predictor
    images = _images(8)
    scores = np.array([0.2, 0.9, 0.1, 0.8, 0.3, 0.95, 0.25, 0.7])  # what the model finds
    seen = []

    def predict(batch, categories, output_size, references, max_new_tokens):
        seen.append([len(m) for m in references])
        return SimpleNamespace(scores=scores[: len(batch)])

    monkeypatch.setattr(p, "predict", predict)
    keys, cats = [str(i) for i in range(8)], ["a"] * 8
    refs = batch_references(p, keys, cats, lambda ks: (ks, images[[int(k) for k in ks]]))
    assert refs.pools["a"][0] == ["0", "2", "4", "6"]
    per_image = refs.pools["a"][1].shape[-1] ** 2
    assert seen == [[7 * per_image] * 8]  # each scored against the 7 others, never itself
    few = batch_references(p, keys[:3], cats[:3], lambda ks: (ks, images[[int(k) for k in ks]]))
    assert few.pools["a"][0] == ["0", "1", "2"] and len(seen) == 1  # too few to prune


def test_the_answer_says_the_references_decision(detector):
    """With a references-only threshold the answer's Yes / No is the decision's (0: every image
    is decided anomalous; above 1: none), the scores and maps untouched; without one, or None for
    an image, the model's own word."""
    p = detector.predictor
    images, cats = _images(4, seed=3), ["screw"] * 4
    y, k = p.yes_no, len(p.yes_no.prefix)
    own = p.predict(images, cats, output_size=16)
    for cut, word in ((0.0, y.yes), (1.5, y.no)):
        said = p.predict(images, cats, output_size=16, thresholds=[cut] * 4)
        assert [ids[k] for ids in said.answer_ids] == [word] * 4
        np.testing.assert_array_equal(said.scores, own.scores)
        np.testing.assert_array_equal(said.maps, own.maps)
        assert said.answers[0].startswith(p.tokenizer.decode([word]).strip())
    mixed = p.predict(images, cats, output_size=16, thresholds=[None, None, 0.0, 1.5])
    assert mixed.answer_ids[:2] == own.answer_ids[:2]
    assert [ids[k] for ids in mixed.answer_ids[2:]] == [y.yes, y.no]
    with pytest.raises(ValueError, match="4 images but 3 thresholds"):
        p.predict(images, cats, output_size=16, thresholds=[0.5] * 3)
    (seen,) = detector.inspect([images[0].permute(1, 2, 0).numpy()], ["screw"], threshold=1.5)
    assert not seen.anomalous and seen.answer_ids[k] == y.no


def test_only_images_read_against_references_are_named_by_the_gated_rule(detector, monkeypatch):
    """The type head's gated rule is for regions drawn against references: in one batch, the
    image with a memory is gated, the one without (zero-shot) is not."""
    p = detector.predictor
    seen = {}

    class Head:
        def classify(self, descriptors, *, abstain=True, gated=None):
            seen["gated"] = list(gated)
            return [None] * len(descriptors), np.zeros(len(descriptors))

    monkeypatch.setattr(p, "type_head", Head())
    monkeypatch.setattr(p, "ground", True)
    monkeypatch.setattr(p, "_descriptors", lambda images, masks: np.zeros((len(images), 2)))
    monkeypatch.setattr(
        p, "_text", lambda ids: ["Yes. There is a crack at the top left."] * len(ids)
    )
    images = _images(2)
    memory = reference_set(p, _images(2, seed=5), "screw", rule="loo_max").memory
    p.predict(images, ["screw"] * 2, output_size=16, references=[memory, None])
    assert seen["gated"] == [True, False]
    p.predict(images, ["screw"] * 2, output_size=16)
    assert seen["gated"] == [False, False]


def test_only_images_without_references_are_compared_with_themselves(detector, monkeypatch):
    """With the model's self-comparison on, a zero-shot map is the model's times its
    comparison with itself (never above it; somewhere below it), and a map drawn against
    references is the model's own; the answers' words stay those of the model's own mask."""
    from vmad_pipeline.configs.model import SelfComparisonConfig

    p = detector.predictor
    images, cats = _images(3), ["screw"] * 3
    memories = [None, p.reference_features(_images(2, seed=3)), None]
    memories[1] = memories[1].permute(0, 2, 3, 1).reshape(-1, memories[1].shape[1])
    off = p.predict(images, cats, output_size=16, references=memories)
    own = SelfComparisonConfig(enabled=True, stride=8, radius=1)
    monkeypatch.setattr(p.model, "config", dataclasses.replace(p.model.config, self_comparison=own))
    on = p.predict(images, cats, output_size=16, references=memories)
    np.testing.assert_allclose(on.maps[1], off.maps[1], rtol=1e-5)
    for i in (0, 2):
        assert np.all(on.maps[i] <= off.maps[i] + 1e-6)
        assert np.abs(on.maps[i] - off.maps[i]).max() > 1e-3
    np.testing.assert_allclose(on.map_max, on.maps.reshape(3, -1).max(1), rtol=1e-6)
    # the words and the follow-ups read the mask the [SEG] drew, which the comparison leaves
    assert on.drawn_locations == off.drawn_locations and on.answers == off.answers
    assert off.drawn_maps is None and off.seg_maps() is off.maps
    np.testing.assert_allclose(on.seg_maps(), off.maps, rtol=1e-5)
    inspection = detector.inspect([images[0].permute(1, 2, 0).numpy()], ["screw"])[0]
    whole = p.predict(images[:1], cats[:1], output_size=p.image_size)
    assert whole.drawn_maps is not None
    np.testing.assert_allclose(inspection.square_map, whole.drawn_maps[0], rtol=1e-4, atol=1e-6)
