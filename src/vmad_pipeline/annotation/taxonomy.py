"""The 15-type defect taxonomy of RIAD (``conf/base/taxonomy.yml``): ids, names, synonyms, and
per-dataset maps from each source's raw defect names onto the types.

A raw name resolves, in order, through the source's own map (``ingest.sources[].defect_map``),
the dataset's map in the YAML (``sources: {<dataset>: {<raw name>: <type name> or null}}``), then
the types' names and synonyms (exact after normalising case and separators; nothing fuzzy). A map
entry of null says, explicitly, that the name has no type (VisA's "anomaly", BTAD's "ko"): the
row keeps ``defect_id`` -1. A name that resolves nowhere is unknown: ingestion reports it
(:func:`resolve_defects`), and :func:`apply_taxonomy` refuses it.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from vmad_pipeline.configs.base import ConfigError
from vmad_pipeline.datasets.listing import Problem, raise_problems

__all__ = ["DefectType", "Taxonomy", "apply_taxonomy", "normalise_name", "resolve_defects"]


def normalise_name(text: str) -> str:
    """Lower case, ``_``/``-``/runs of whitespace collapsed to single spaces, stripped."""
    return re.sub(r"[\s_\-]+", " ", text.strip().lower()).strip()


@dataclass(frozen=True)
class DefectType:
    id: int
    name: str  # canonical, snake_case ("missing_part")
    synonyms: tuple[str, ...] = ()

    @property
    def phrase(self) -> str:
        """The name as words ("missing part")."""
        return normalise_name(self.name)


class Taxonomy:
    """Defect types with ids 0..N-1; name/synonym lookup, case- and separator-insensitive; and
    per-dataset raw-name maps (:meth:`resolve`)."""

    def __init__(
        self,
        types: list[DefectType],
        sources: Mapping[str, Mapping[str, DefectType | None]] | None = None,
    ) -> None:
        self._types = tuple(sorted(types, key=lambda t: t.id))
        self._by_id = {t.id: t for t in self._types}
        self._by_name = {normalise_name(t.name): t for t in self._types}
        self._sources = {
            key: {normalise_name(raw): t for raw, t in mapping.items()}
            for key, mapping in (sources or {}).items()
        }
        self._lookup: dict[str, DefectType] = {}
        for t in self._types:  # names first: a name always wins over another type's synonym
            self._lookup[normalise_name(t.name)] = t
        for t in self._types:
            for s in t.synonyms:
                self._lookup.setdefault(normalise_name(s), t)
        # Longest phrases first so "broken part" matches before "broken".
        phrases = sorted(self._lookup, key=len, reverse=True)
        self._phrase_re = re.compile(
            r"\b(" + "|".join(re.escape(p).replace(r"\ ", r"[\s_\-]+") for p in phrases) + r")\b"
        )

    @classmethod
    def from_yaml(cls, path: str | Path) -> Taxonomy:
        """Load ``{defect_types: [{id, name, synonyms}, ...]}``."""
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ValueError(f"taxonomy file {path} is not valid YAML: {err}") from err
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"taxonomy file {path}: {err}") from err

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Taxonomy:
        """Validate and build: ids are exactly 0..N-1 (unique), names unique; errors name the entry."""
        if not isinstance(data, Mapping) or not isinstance(data.get("defect_types"), list):
            raise ValueError("taxonomy must be a mapping with a list under 'defect_types'")
        types: list[DefectType] = []
        seen_ids: dict[int, str] = {}
        seen_names: dict[str, int] = {}
        for i, entry in enumerate(data["defect_types"]):
            if not isinstance(entry, Mapping) or "id" not in entry or "name" not in entry:
                raise ValueError(f"defect_types[{i}] ({entry!r}) needs 'id' and 'name'")
            tid, name = entry["id"], entry["name"]
            if not isinstance(tid, int) or isinstance(tid, bool):
                raise ValueError(f"defect_types[{i}] ({entry!r}): id must be an integer")
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"defect_types[{i}] ({entry!r}): name must be a non-empty string")
            if tid in seen_ids:
                raise ValueError(
                    f"defect_types[{i}] ({name!r}): duplicate id {tid} (also {seen_ids[tid]!r})"
                )
            key = normalise_name(name)
            if key in seen_names:
                raise ValueError(
                    f"defect_types[{i}] ({name!r}): duplicate name (also id {seen_names[key]})"
                )
            synonyms = entry.get("synonyms") or []
            if not isinstance(synonyms, list) or not all(isinstance(s, str) for s in synonyms):
                raise ValueError(
                    f"defect_types[{i}] ({name!r}): synonyms must be a list of strings"
                )
            seen_ids[tid], seen_names[key] = name, tid
            types.append(DefectType(id=tid, name=name, synonyms=tuple(synonyms)))
        expected = set(range(len(types)))
        if set(seen_ids) != expected:
            bad = sorted(set(seen_ids) - expected)
            raise ValueError(
                f"defect ids must be 0..{len(types) - 1}; out of range: {bad} ({[seen_ids[b] for b in bad]})"
            )
        plain = cls(types)
        sources = data.get("sources") or {}
        if not isinstance(sources, Mapping):
            raise ValueError("sources must map dataset names to {raw name: type name or null}")
        return cls(types, {str(k): plain.source_map(v, f"sources.{k}") for k, v in sources.items()})

    def source_map(self, mapping: object, where: str) -> dict[str, DefectType | None]:
        """Validate ``{raw name: type name or null}`` (``where`` names it in errors)."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{where} must map raw defect names to a type name or null")
        out: dict[str, DefectType | None] = {}
        for raw, target in mapping.items():
            if target is None:
                out[str(raw)] = None
                continue
            hit = self._by_name.get(normalise_name(target)) if isinstance(target, str) else None
            if hit is None:
                raise ValueError(
                    f"{where}.{raw}: {target!r} is not a defect type name; "
                    f"names: {', '.join(t.name for t in self._types)}"
                )
            out[str(raw)] = hit
        return out

    @property
    def datasets(self) -> tuple[str, ...]:
        """Datasets that have a raw-name map."""
        return tuple(self._sources)

    def resolve(
        self,
        name: str,
        dataset: str = "",
        extra: Mapping[str, DefectType | None] | None = None,
    ) -> tuple[bool, DefectType | None]:
        """(known, type) of a raw defect name: through ``extra`` (a :meth:`source_map`), the
        dataset's map, then names and synonyms. (True, None) means mapped to no type on purpose;
        (False, None) means unknown."""
        key = normalise_name(name)
        for mapping in (
            {normalise_name(k): v for k, v in (extra or {}).items()},
            self._sources.get(dataset, {}),
        ):
            if key in mapping:
                return True, mapping[key]
        hit = self.lookup(name)
        return hit is not None, hit

    @property
    def types(self) -> tuple[DefectType, ...]:
        """All types, ordered by id."""
        return self._types

    def __len__(self) -> int:
        return len(self._types)

    def by_id(self, defect_id: int) -> DefectType:
        """The type with this id; KeyError naming the id and the valid range."""
        try:
            return self._by_id[int(defect_id)]
        except KeyError:
            raise KeyError(
                f"no defect type with id {defect_id}; ids are 0..{len(self._types) - 1}"
            ) from None

    def lookup(self, name: str) -> DefectType | None:
        """Type whose name or synonym equals ``name`` (case/``_``/``-``/space-insensitive), else None."""
        return self._lookup.get(normalise_name(name))

    def names_in(self, text: str) -> list[DefectType]:
        """Types whose name or a synonym occurs in ``text`` as a whole word/phrase, by first occurrence."""
        found: list[DefectType] = []
        for match in self._phrase_re.finditer(text.lower()):
            t = self._lookup[normalise_name(match.group(1))]
            if t not in found:
                found.append(t)
        return found


def _source_maps(
    tax: Taxonomy, defect_maps: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, DefectType | None]]:
    """Each source's own ``defect_map``, validated (ConfigError naming the source's entry)."""
    extra = {}
    for source, mapping in (defect_maps or {}).items():
        try:
            extra[source] = tax.source_map(mapping, f"ingest.sources[{source}].defect_map")
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return extra


def _unknown_problems(unknown: Mapping[tuple[str, str], list[str]]) -> list[dict[str, str]]:
    """One ``unknown_defect`` problem (as a dict) per file whose defect name resolves nowhere."""
    problems = []
    for (source, name), files in unknown.items():
        shown = ", ".join(files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
        for path in files:
            problems.append(
                Problem(
                    source,
                    "unknown_defect",
                    path,
                    f"defect name {name!r} of source {source!r} maps to no taxonomy type "
                    f"({len(files)} file(s): {shown}); add it to conf/base/taxonomy.yml sources "
                    f"or to the source's defect_map (null = no type)",
                    path,
                ).as_dict()
            )
    return problems


def resolve_defects(
    manifest: pd.DataFrame,
    taxonomy: Mapping[str, Any],
    datasets: Mapping[str, str] | None = None,
    defect_maps: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """``manifest`` with ``defect_id`` / ``defect_type`` (the taxonomy type of each anomalous
    row's defect name, -1 / "" otherwise), and an ``unknown_defect`` problem (as a dict) per row
    whose name resolves nowhere. ``taxonomy`` is the YAML's mapping; ``datasets``: source -> its
    dataset key in the taxonomy's maps (default: the source name); ``defect_maps``: source -> its
    own ``{raw name: type name or null}``."""
    tax = Taxonomy.from_dict(taxonomy)
    extra = _source_maps(tax, defect_maps)
    ids, names = [], []
    unknown: dict[tuple[str, str], list[str]] = defaultdict(list)
    for source, name, label, path in zip(
        manifest["source"],
        manifest["defect_name"],
        manifest["label"],
        manifest["image_path"],
        strict=True,
    ):
        hit = None
        if label == 1:
            dataset = (datasets or {}).get(source, source)
            known, hit = tax.resolve(name, dataset, extra.get(source))
            if not known:
                unknown[(source, name)].append(path)
        ids.append(hit.id if hit else -1)
        names.append(hit.name if hit else "")
    out = manifest.copy()
    out["defect_id"] = pd.Series(ids, dtype="int64", index=out.index)
    out["defect_type"] = pd.Series(names, dtype="str", index=out.index)
    return out, _unknown_problems(unknown)


def apply_taxonomy(
    manifest: pd.DataFrame,
    taxonomy: Mapping[str, Any],
    datasets: Mapping[str, str] | None = None,
    defect_maps: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Add ``defect_id`` and ``defect_type`` (the 15-type taxonomy) from each defect name;
    IngestError naming source, name and files for a name that maps nowhere. ``datasets``: source
    -> its dataset key in the taxonomy's maps (default: the source name)."""
    out, problems = resolve_defects(manifest, taxonomy, datasets, defect_maps)
    raise_problems(problems)
    return out
