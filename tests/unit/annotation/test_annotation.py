"""RIAD annotation: taxonomy (and its per-dataset maps), geometry words, the COCO dict, templates,
and assembly on a tiny tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers.trees import TAXONOMY_YAML, taxonomy_params, write_widget_tree
from PIL import Image

from vmad_pipeline.annotation import (
    Taxonomy,
    assemble_riad,
    build_coco,
    location_phrase,
    mask_geometry,
    normal_answer,
    size_phrase,
    template_qa,
)
from vmad_pipeline.configs.ingest import SyntheticConfig
from vmad_pipeline.datasets.masks import mask_to_rle, rle_to_mask
from vmad_pipeline.datasets.synthetic import class_defects


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return Taxonomy.from_yaml(TAXONOMY_YAML)


# --- taxonomy ---------------------------------------------------------------------------------


def test_taxonomy_has_15_types_with_ids_in_order(taxonomy: Taxonomy) -> None:
    assert [t.id for t in taxonomy.types] == list(range(15))
    assert taxonomy.by_id(5).name == "missing_part"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scratch", "scratch"),
        ("SCRATCHES", "scratch"),
        ("missing part", "missing_part"),
        ("Missing_Part", "missing_part"),
        ("missing-part", "missing_part"),
        ("cut_inner_insulation", "cut"),
        ("Foreign Body", "foreign_object"),
        ("  bent ", "deformation"),
    ],
)
def test_lookup_names_synonyms_and_separators(taxonomy: Taxonomy, text: str, expected: str) -> None:
    found = taxonomy.lookup(text)
    assert found is not None and found.name == expected


def test_lookup_unknown_is_none(taxonomy: Taxonomy) -> None:
    assert taxonomy.lookup("good") is None
    assert taxonomy.lookup("scratc") is None


def test_names_in_free_text(taxonomy: Taxonomy) -> None:
    text = "Yes: a deep Crack near the top, and a missing-part at the bottom right; no holes-like marks."
    assert [t.name for t in taxonomy.names_in(text)] == ["crack", "missing_part", "hole"]
    assert taxonomy.names_in("The part looks fine.") == []
    assert taxonomy.names_in("scratchy") == []  # whole words only


def test_taxonomy_maps_every_dataset_and_the_synthetic_names() -> None:
    params = taxonomy_params()
    tax = Taxonomy.from_dict(params)
    assert tax.resolve("broken_large", "mvtec")[1].name == "broken"
    assert tax.resolve("thread", "mvtec")[1].name == "foreign_object"
    assert tax.resolve("thread", "mvtec3d")[1].name == "broken"  # same word, other dataset
    assert tax.resolve("ZW", "realiad")[1].name == "contamination"
    assert tax.resolve("ko", "btad") == (True, None)
    assert tax.resolve("wobbly", "mvtec") == (False, None)
    cfg = SyntheticConfig()
    for cls in cfg.classes:
        for name in class_defects(cfg, cls):
            assert tax.resolve(name, "mvtec")[0], name
    with pytest.raises(ValueError, match=r"sources.x.foo: 'nosuch' is not a defect type"):
        Taxonomy.from_dict({**params, "sources": {"x": {"foo": "nosuch"}}})


def _entries(*pairs: tuple[int, str]) -> dict:
    return {"defect_types": [{"id": i, "name": n, "synonyms": []} for i, n in pairs]}


def test_from_dict_rejects_duplicate_id() -> None:
    with pytest.raises(ValueError, match=r"defect_types\[1\].*'crack'.*duplicate id 0"):
        Taxonomy.from_dict(_entries((0, "scratch"), (0, "crack")))


def test_from_dict_rejects_duplicate_name_after_normalisation() -> None:
    with pytest.raises(ValueError, match=r"'Missing Part'.*duplicate name"):
        Taxonomy.from_dict(_entries((0, "missing_part"), (1, "Missing Part")))


def test_from_dict_rejects_gap_in_ids() -> None:
    with pytest.raises(ValueError, match=r"0\.\.1.*\[2\].*crack"):
        Taxonomy.from_dict(_entries((0, "scratch"), (2, "crack")))


def test_from_yaml_rejects_broken_and_wrong_shape(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("defect_types: [ {id: 0, name: scratch\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        Taxonomy.from_yaml(broken)
    wrong = tmp_path / "wrong.yml"
    wrong.write_text("types: []\n")
    with pytest.raises(ValueError, match=r"wrong\.yml.*defect_types"):
        Taxonomy.from_yaml(wrong)


# --- geometry ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cy", "cx", "phrase"),
    [
        (5, 5, "top left"),
        (5, 45, "top"),
        (5, 85, "top right"),
        (45, 5, "left"),
        (45, 45, "center"),
        (45, 85, "right"),
        (85, 5, "bottom left"),
        (85, 45, "bottom"),
        (85, 85, "bottom right"),
    ],
)
def test_location_phrase_grid(cy: float, cx: float, phrase: str) -> None:
    assert location_phrase(cy, cx, 90, 90) == phrase


def test_location_phrase_edges_stay_in_grid() -> None:
    assert location_phrase(90, 90, 90, 90) == "bottom right"
    assert location_phrase(0, 0, 90, 90) == "top left"


def test_size_phrase_thresholds() -> None:
    assert [size_phrase(f) for f in (0.0049, 0.005, 0.0199, 0.02, 0.0799, 0.08, 0.5)] == [
        "tiny",
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]


def test_mask_geometry() -> None:
    mask = np.zeros((30, 30), dtype=np.uint8)
    mask[2:5, 24:28] = 255  # 12 px, top right
    mask[5, 28] = 255  # diagonal neighbour: same 8-connected region
    mask[20, 2] = 255  # a second region
    g = mask_geometry(mask)
    assert g["n_regions"] == 2
    assert g["bbox"] == [2, 2, 27, 19]
    assert g["area_fraction"] == pytest.approx(14 / 900)
    assert g["size"] == "small"
    assert g["location"] == "top right"
    assert mask_geometry(np.zeros((4, 4)))["n_regions"] == 0


# --- COCO -------------------------------------------------------------------------------------


def test_build_coco(taxonomy: Taxonomy) -> None:
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[3:6, 4:9] = 1
    records = [
        {
            "image_id": 0,
            "file_name": "s/a.png",
            "width": 12,
            "height": 10,
            "category": "bottle",
            "defect_id": -1,
            "mask": None,
        },
        {
            "image_id": 1,
            "file_name": "s/b.png",
            "width": 12,
            "height": 10,
            "category": "bottle",
            "defect_id": 3,
            "mask": mask,
        },
    ]
    coco = build_coco(records, taxonomy)
    assert [im["id"] for im in coco["images"]] == [0, 1]
    (ann,) = coco["annotations"]
    assert ann["image_id"] == 1 and ann["category_id"] == 3 and ann["iscrowd"] == 0
    assert ann["bbox"] == [4, 3, 5, 3]
    assert ann["area"] == 15
    np.testing.assert_array_equal(rle_to_mask(ann["segmentation"]), mask)
    assert [c["id"] for c in coco["categories"]] == list(range(15))
    assert coco["categories"][5] == {"id": 5, "name": "missing_part", "supercategory": "defect"}
    assert "RLE" in coco["info"]["description"]
    as_rle = [{**r, "mask": None if r["mask"] is None else mask_to_rle(r["mask"])} for r in records]
    assert build_coco(as_rle, taxonomy) == coco  # a record may carry its mask as RLE


# --- templates --------------------------------------------------------------------------------

GEOMETRY = {"location": "bottom left", "size": "small", "n_regions": 2}


def test_template_is_deterministic_and_names_type_and_location(taxonomy: Taxonomy) -> None:
    defect = taxonomy.lookup("missing part")
    a = template_qa(category="metal_nut", defect=defect, geometry=GEOMETRY, seed=7)
    b = template_qa(category="metal_nut", defect=defect, geometry=GEOMETRY, seed=7)
    assert a == b
    assert set(a) == {"description", "impact", "suggestion"}
    for seed in range(20):
        d = template_qa(category="metal_nut", defect=defect, geometry=GEOMETRY, seed=seed)[
            "description"
        ]
        assert "missing part" in d and "bottom left" in d and "metal nut" in d and "two" in d
        assert taxonomy.names_in(d)[0].name == "missing_part"


def test_template_phrasing_varies_with_seed_and_family(taxonomy: Taxonomy) -> None:
    scratch = taxonomy.lookup("scratch")
    texts = {
        template_qa(category="bottle", defect=scratch, geometry=GEOMETRY, seed=s)["description"]
        for s in range(30)
    }
    assert len(texts) > 1
    crack_impact = template_qa(
        category="bottle", defect=taxonomy.lookup("crack"), geometry=GEOMETRY, seed=0
    )["impact"]
    scratch_impact = template_qa(category="bottle", defect=scratch, geometry=GEOMETRY, seed=0)[
        "impact"
    ]
    assert crack_impact != scratch_impact


def test_normal_answer() -> None:
    assert normal_answer("metal_nut").startswith("No") and "metal nut" in normal_answer("metal_nut")


# --- assembly ---------------------------------------------------------------------------------


def test_assemble_riad_counts_and_content(
    tmp_path: Path, taxonomy: Taxonomy, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = write_widget_tree(tmp_path)
    with caplog.at_level("WARNING"):
        coco, qa = assemble_riad(
            manifest, {"synthetic": str(tmp_path)}, taxonomy, seed=1, progress=False
        )
    assert len(coco["images"]) == 5
    assert coco["images"][2]["file_name"] == "synthetic/widget/test/scratch_0.png"
    assert [(a["image_id"], a["category_id"]) for a in coco["annotations"]] == [(2, 0), (3, 3)]
    assert coco["annotations"][0]["bbox"] == [1, 1, 5, 3]
    assert [r["image_id"] for r in qa] == [2, 3, 4]
    assert [r["location"] for r in qa] == ["top left", "bottom right", "center"]
    assert "scratch" in qa[0]["description"] and "top left" in qa[0]["description"]
    assert "anomaly" in qa[2]["description"] and qa[2]["defect_id"] == -1
    assert "odd_0" in caplog.text
    again = assemble_riad(manifest, {"synthetic": str(tmp_path)}, taxonomy, seed=1, progress=False)
    assert again[1] == qa


def test_assemble_riad_hands_each_anomalous_image_to_the_answerer(
    tmp_path: Path, taxonomy: Taxonomy
) -> None:
    manifest = write_widget_tree(tmp_path)
    seen: list = []

    def answerer(items):
        seen.extend(items)
        return [
            {"description": f"d{it.image_id}", "impact": "i", "suggestion": "s"} for it in items
        ]

    coco, qa = assemble_riad(
        manifest,
        {"synthetic": str(tmp_path)},
        taxonomy,
        progress=False,
        answerer=answerer,
        annotator="fake",
    )
    assert [it.file_name for it in seen] == [
        "synthetic/widget/test/scratch_0.png",
        "synthetic/widget/test/stain_0.png",
        "synthetic/widget/test/odd_0.png",
    ]
    assert all(it.image.is_file() for it in seen)
    assert [it.defect.name for it in seen] == ["scratch", "stain", "anomaly"]
    assert seen[2].defect_type == "weird" and seen[0].geometry["bbox"] == [1, 1, 5, 3]
    assert [(r["description"], r["annotator"]) for r in qa] == [
        ("d2", "fake"),
        ("d3", "fake"),
        ("d4", "fake"),
    ]
    assert len(coco["annotations"]) == 2
    default = assemble_riad(manifest, {"synthetic": str(tmp_path)}, taxonomy, progress=False)[1]
    assert {r["annotator"] for r in default} == {"template"}
    with pytest.raises(RuntimeError, match="2 answers for 3 images"):
        assemble_riad(
            manifest,
            {"synthetic": str(tmp_path)},
            taxonomy,
            progress=False,
            answerer=lambda items: answerer(items)[:2],
        )


def test_assemble_riad_missing_mask_names_file(tmp_path: Path, taxonomy: Taxonomy) -> None:
    manifest = write_widget_tree(tmp_path)
    (tmp_path / "widget" / "ground_truth" / "stain_0_mask.png").unlink()
    with pytest.raises(ValueError, match="stain_0_mask.png"):
        assemble_riad(manifest, {"synthetic": str(tmp_path)}, taxonomy, progress=False)


@pytest.mark.parametrize(
    ("dtype", "value", "channels"),
    [(np.uint8, 3, 3), (np.uint16, 1, 1), (np.uint16, 40000, 1)],
    ids=["faint-blue-rgb", "16-bit-one", "16-bit-high"],
)
def test_assemble_riad_reads_mask_raw_values(
    tmp_path: Path, taxonomy: Taxonomy, dtype: type, value: int, channels: int
) -> None:
    """A mask pixel is positive iff its raw value is > 0, whatever the bit depth or channels
    (the rule of images.load_mask and the ingest bbox): a faint colour counts too."""
    manifest = write_widget_tree(tmp_path)
    path = tmp_path / "widget/ground_truth/scratch_0_mask.png"
    mask = np.zeros((16, 16, channels), dtype)
    mask[1:4, 1:6, -1] = value  # the scratch box, in the last channel only
    Image.fromarray(mask.squeeze(axis=2) if channels == 1 else mask).save(path)
    coco, qa = assemble_riad(manifest, {"synthetic": str(tmp_path)}, taxonomy, progress=False)
    assert coco["annotations"][0]["bbox"] == [1, 1, 5, 3]
    assert qa[0]["location"] == "top left"
