"""Split: a cross-category or cross-dataset zero-shot split, seeded and stored, leak-checked.

The node is :func:`vmad_pipeline.splitting.make_split` (``manifest``, ``params:split`` ->
``splits``); the rules (what a class is, which rows each side holds, the leak check) live in
:mod:`vmad_pipeline.splitting`, with no Kedro in them.
"""

from vmad_pipeline.splitting import SplitLeakError, check_no_leak, make_split, split_rows

__all__ = ["SplitLeakError", "check_no_leak", "make_split", "split_rows"]
