"""Reader for BTAD (beanTech Anomaly Detection): the MVTec layout with other folder names, listed
by :func:`~vmad_pipeline.datasets.mvtec.list_mvtec`.

Layout::

    <root>/{01,02,03}/train/ok/0000.bmp        (bmp or png)
    <root>/{01,02,03}/test/ok/0000.bmp
    <root>/{01,02,03}/test/ko/0000.bmp
    <root>/{01,02,03}/ground_truth/ko/0000.png (mask; its extension may differ from the image's)

``ok`` is normal, ``ko`` anomalous (``defect_name`` "ko"). The category is the product folder's own
name ("01", "02", "03"). File stems repeat between ``ok`` and ``ko``, so a mask is only ever looked
up in ``ground_truth/<folder>`` for an image in ``test/<folder>``, by stem (``<stem>_mask.*`` first,
then ``<stem>.*``); a mask there whose stem names no image in ``test/<folder>`` is reported
(``mask_without_image``), and a missing mask is expected at ``<stem>.png``.
"""

from __future__ import annotations

import os

from vmad_pipeline.datasets.listing import Listing
from vmad_pipeline.datasets.manifest import IngestError
from vmad_pipeline.datasets.mvtec import list_mvtec

NORMAL_FOLDER = "ok"


def list_btad(root: str | os.PathLike[str], *, source: str = "btad") -> Listing:
    """The items of a BTAD tree (layout in the module docstring)."""
    listing = list_mvtec(root, source=source, normal_folder=NORMAL_FOLDER, mask_name="{stem}.png")
    if not listing.items:
        raise IngestError(f"no BTAD products (<id>/{{train,test}}/{{ok,ko}}/) under {root}")
    return listing
