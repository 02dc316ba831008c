"""Format name -> reader: the one table that ``ingest.sources[].format`` is looked up in.

MPDD, WFDD and MAD-Sim are the MVTec layout (the MVTec reader already pairs ``<stem>_mask.png`` or
``<stem>.png`` masks by stem within the mirrored folder), so they are registered on it; they differ
in their taxonomy map only.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmad_pipeline.datasets.btad import list_btad
from vmad_pipeline.datasets.coco import list_coco
from vmad_pipeline.datasets.folder import list_folder
from vmad_pipeline.datasets.manifest import mask_root_key
from vmad_pipeline.datasets.mvtec import list_mvtec
from vmad_pipeline.datasets.mvtec3d import list_mvtec3d
from vmad_pipeline.datasets.realiad import list_realiad
from vmad_pipeline.datasets.scan import Listing
from vmad_pipeline.datasets.visa import list_visa, list_visa_1cls
from vmad_pipeline.datasets.vision import list_vision

# keys of a source entry that are not reader options
SOURCE_KEYS = ("name", "format", "root", "defect_map")


@dataclass(frozen=True)
class Format:
    lister: Callable[..., Listing]
    taxonomy: str = ""  # the dataset key of its raw-name map in conf/base/taxonomy.yml
    options: Mapping[str, Any] = field(default_factory=dict)  # fixed options of this format
    rasterises: bool = (
        False  # writes masks under <masks_dir>/<source> (dataset_roots "<source>:masks")
    )

    def option_names(self) -> list[str]:
        """Options a source entry may set: the lister's keyword arguments."""
        fixed = {"source", "mask_root", *self.options}
        params = inspect.signature(self.lister).parameters.values()
        return [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in fixed]


FORMATS: dict[str, Format] = {
    "mvtec": Format(list_mvtec, "mvtec"),
    "mpdd": Format(list_mvtec, "mpdd"),
    "wfdd": Format(list_mvtec, "wfdd"),
    "madsim": Format(list_mvtec, "madsim"),
    "visa": Format(list_visa, "visa"),
    "visa_1cls": Format(list_visa_1cls, "visa"),
    "btad": Format(list_btad, "btad"),
    "realiad": Format(list_realiad, "realiad"),
    "mvtec3d": Format(list_mvtec3d, "mvtec3d"),
    "folder": Format(list_folder),
    "vision": Format(list_vision, "vision", rasterises=True),
    "coco": Format(list_coco, rasterises=True),
}


def source_options(spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A source entry's reader options; ValueError naming ``where`` and the allowed ones."""
    fmt = FORMATS[spec["format"]]
    options = {k: v for k, v in spec.items() if k not in SOURCE_KEYS}
    allowed = fmt.option_names()
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"{where}: unknown option(s) {unknown} for format {spec['format']!r}; "
            f"allowed: {', '.join(allowed) or 'none'}"
        )
    return {**options, **fmt.options}


def list_source(
    spec: Mapping[str, Any], root: str, masks_dir: str | Path, where: str = "source"
) -> tuple[Listing, dict[str, str]]:
    """The listing of one configured source, and its ``dataset_roots`` entries (name -> root,
    and "<name>:masks" -> its mask root for formats that rasterise masks)."""
    fmt = FORMATS[spec["format"]]
    options = source_options(spec, where)
    roots = {spec["name"]: str(root)}
    if fmt.rasterises:
        mask_root = Path(masks_dir) / spec["name"]
        options["mask_root"] = mask_root
        roots[mask_root_key(spec["name"])] = str(mask_root)
    return fmt.lister(root, source=spec["name"], **options), roots
