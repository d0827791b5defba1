"""Read a catalog (a file or a directory of YAML files) keeping where each key was written.

Mappings and lists come back as :class:`Marked` and :class:`MarkedList`, plain
``dict``/``list`` subclasses that also remember the file and line of each key or
item, so that a refusal can say where the offending value stands.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from .errors import CatalogError, CatalogRefused

#: Sections whose entries are named objects; a name defined in two files is an error.
NAMED_SECTIONS = ("nodes", "peers", "clusters", "templates", "services", "contacts")
#: Sections that are mappings of settings; a key set in two files is an error.
SETTING_SECTIONS = ("bgp", "defaults", "firewall", "monitoring", "limits", "tenants", "acme")
#: Sections that are lists; the lists of several files are joined.
LIST_SECTIONS = ("vip_pools", "management")
SECTIONS = SETTING_SECTIONS + LIST_SECTIONS + NAMED_SECTIONS


class Marked(dict):
    """A mapping that remembers the file, and the line of each key."""

    file: str = ""
    line: int | None = None
    marks: dict[Any, int | None]
    key_files: dict[Any, str]  # set by compiler.deep_merge: which file each key came from

    def __init__(self, *args: Any, file: str = "", line: int | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.file = file
        self.line = line
        self.marks = {}


class MarkedList(list):
    """A list that remembers the file, and the line of each item."""

    file: str = ""
    line: int | None = None
    marks: list[int | None]

    def __init__(self, items: Iterable[Any] = (), file: str = "", line: int | None = None,
                 marks: list[int | None] | None = None):
        super().__init__(items)
        self.file = file
        self.line = line
        self.marks = list(marks) if marks is not None else [None] * len(self)


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader (libyaml's where available) that builds Marked containers and refuses duplicate keys."""

    def __init__(self, stream: Any, filename: str):
        super().__init__(stream)
        self.filename = filename
        self.duplicates: list[CatalogError] = []


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> Marked:
    loader.flatten_mapping(node)
    out = Marked(file=loader.filename, line=node.start_mark.line + 1)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, (str, int, float, bool)) and key is not None:
            key = str(key)
        if key in out:
            loader.duplicates.append(CatalogError(
                loader.filename, key_node.start_mark.line + 1, "yaml", "", str(key),
                f"key {key!r} is written twice in one mapping (first on line {out.marks[key]})"))
        out[key] = loader.construct_object(value_node, deep=True)
        out.marks[key] = key_node.start_mark.line + 1
    return out


def _construct_sequence(loader: _Loader, node: yaml.SequenceNode) -> MarkedList:
    items = [loader.construct_object(child, deep=True) for child in node.value]
    return MarkedList(items, file=loader.filename, line=node.start_mark.line + 1,
                      marks=[child.start_mark.line + 1 for child in node.value])


#: Longest integer or float written in a catalog (an ASN has 10 digits).
MAX_NUMBER_CHARS = 20


def _construct_number(loader: _Loader, node: yaml.ScalarNode) -> Any:
    if len(node.value) > MAX_NUMBER_CHARS:
        raise yaml.constructor.ConstructorError(
            None, None, f"a number of {len(node.value)} characters (at most {MAX_NUMBER_CHARS})", node.start_mark)
    if node.tag.endswith(":int"):
        return _BaseLoader.construct_yaml_int(loader, node)
    return _BaseLoader.construct_yaml_float(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_number)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_number)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


# ------------------------------------------------------------------ limits
# A catalog is input from many hands: a hostile file must be refused in well under a
# second, by lint and by the ext_pillar alike, before anything is built from it.
#: Largest catalog file.
MAX_FILE_BYTES = 4 * 1024 * 1024
#: Most files in a directory catalog.
MAX_FILES = 10_000
#: Deepest nesting of mappings and lists.
MAX_DEPTH = 32
#: Most nodes a file may stand for once its aliases (and merge keys) are expanded.
MAX_EXPANDED_NODES = 1_000_000
#: Most alias uses (``*name``, ``<<: *name``) in one file.
MAX_ALIASES = 10_000


def _limit_error(filename: str, mark: Any, message: str) -> CatalogRefused:
    line = mark.line + 1 if mark is not None else None
    return CatalogRefused([CatalogError(filename, line, "yaml", "", "", message)])


def check_limits(text: str, filename: str = "<catalog>") -> None:
    """Refuse a file that is too big, too deep, expands too far through aliases, or has complex keys.

    Walks the parser's events (libyaml's where available) without building anything:
    each anchor remembers how many nodes it stands for, so an alias bomb is measured,
    never expanded.
    """
    if len(text) > MAX_FILE_BYTES:
        raise CatalogRefused([CatalogError(filename, None, "file", "", "",
                                           f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")])
    sizes: dict[str, int] = {}
    # one frame per open collection: [size so far, anchor, is mapping, next node is a key]
    stack: list[list[Any]] = []
    total = aliases = 0

    def add(size: int, event: Any, is_collection: bool) -> None:
        nonlocal total
        total += size
        if total > MAX_EXPANDED_NODES:
            raise _limit_error(filename, event.start_mark, f"the file stands for more than {MAX_EXPANDED_NODES} "
                               "values once its aliases are expanded (an alias bomb?)")
        if stack:
            frame = stack[-1]
            if frame[2]:
                if frame[3] and is_collection:
                    raise _limit_error(filename, event.start_mark, "a mapping key must be a plain value, "
                                       "not a list or a mapping")
                frame[3] = not frame[3]
            frame[0] += size

    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        for event in yaml.parse(text, Loader=loader_cls):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                if stack and stack[-1][2] and stack[-1][3]:
                    raise _limit_error(filename, event.start_mark, "a mapping key must be a plain value, "
                                       "not a list or a mapping")
                if len(stack) >= MAX_DEPTH:
                    raise _limit_error(filename, event.start_mark, f"values nest deeper than {MAX_DEPTH} levels")
                stack.append([1, event.anchor, isinstance(event, yaml.MappingStartEvent), True])
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                size, anchor, _, _ = stack.pop()
                if anchor:
                    sizes[anchor] = size
                add(size, event, True)
            elif isinstance(event, yaml.ScalarEvent):
                if event.anchor:
                    sizes[event.anchor] = 1
                add(1, event, False)
            elif isinstance(event, yaml.AliasEvent):
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise _limit_error(filename, event.start_mark, f"more than {MAX_ALIASES} aliases")
                size = sizes.get(event.anchor or "", 1)
                if stack and stack[-1][2] and stack[-1][3] and size > 1:
                    raise _limit_error(filename, event.start_mark, "a mapping key must be a plain value, "
                                       "not a list or a mapping")
                add(size, event, False)
    except yaml.YAMLError:
        return   # the loader reports syntax errors with their line


def load_file(path: str | os.PathLike[str], display: str | None = None) -> Marked:
    """Parse one YAML file into a :class:`Marked` mapping (empty file → empty mapping)."""
    name = display or str(path)
    try:
        if os.stat(path).st_size > MAX_FILE_BYTES:
            raise CatalogRefused([CatalogError(name, None, "file", "", "",
                                               f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")])
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CatalogRefused([CatalogError(name, None, "file", "", "", f"cannot read: {exc.strerror}")])
    except UnicodeDecodeError as exc:
        raise CatalogRefused([CatalogError(name, None, "file", "", "", f"not UTF-8 text ({exc.reason} at byte "
                                           f"{exc.start})")])
    return load_text(text, name)


def load_text(text: str, filename: str = "<catalog>") -> Marked:
    """Parse YAML text into a :class:`Marked` mapping, refusing syntax errors with their line."""
    check_limits(text, filename)
    try:
        loader = _Loader(text, filename)
    except yaml.YAMLError as exc:
        raise CatalogRefused([CatalogError(filename, None, "yaml", "", "", f"not valid YAML: {exc}")])
    try:
        data = loader.get_single_data()
    except yaml.reader.ReaderError as exc:
        raise CatalogRefused([CatalogError(filename, None, "yaml", "", "", f"not valid YAML: {exc.reason}")])
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        raise CatalogRefused([CatalogError(filename, line, "yaml", "", "", f"not valid YAML: {exc.problem}")])
    finally:
        loader.dispose()
    if loader.duplicates:
        raise CatalogRefused(loader.duplicates)
    if data is None:
        return Marked(file=filename, line=1)
    if not isinstance(data, Marked):
        raise CatalogRefused([CatalogError(filename, 1, "file", "", "", "the catalog must be a mapping of sections")])
    return data


def catalog_files(path: str | os.PathLike[str]) -> list[Path]:
    """The YAML files that make up a catalog: the file itself, or every *.yaml/*.yml below a directory."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.suffix in (".yaml", ".yml") and f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise CatalogRefused([CatalogError(str(p), None, "file", "", "", "the directory holds no .yaml files")])
        if len(files) > MAX_FILES:
            raise CatalogRefused([CatalogError(str(p), None, "file", "", "",
                                               f"the directory holds more than {MAX_FILES} .yaml files")])
        return files
    if not p.exists():
        raise CatalogRefused([CatalogError(str(p), None, "file", "", "", "no such file or directory")])
    return [p]


#: What a tenant's file may define; every other section is fleet-wide (root files only).
TENANT_SECTIONS = ("services", "templates")


def assign_tenants(docs: list[Marked], base: Path) -> tuple[dict[str, str], list[CatalogError]]:
    """``{file: tenant}`` for the files a root file's ``tenants.*.files`` globs match.

    Globs are relative to the catalog directory and matched against each file's whole
    relative path (``*`` also crosses ``/``). A file two tenants claim, a root file that
    declares tenants and is claimed, and a fleet-wide section in a tenant's file are errors.
    """
    owners: dict[str, str] = {}
    errors: list[CatalogError] = []
    globs: list[tuple[str, str, str, int | None]] = []   # tenant, glob, declaring file, line
    for doc in docs:
        tenants = doc.get("tenants")
        if not isinstance(tenants, dict):
            continue
        for tname, body in tenants.items():
            files = body.get("files") if isinstance(body, dict) else None
            for i, g in enumerate(files if isinstance(files, list) else [files] if isinstance(files, str) else []):
                if isinstance(g, str):
                    line = files.marks[i] if isinstance(files, MarkedList) else None
                    marks = getattr(tenants, "marks", {})
                    globs.append((str(tname), g, doc.file, line or marks.get(tname)))
    if not globs:
        return owners, errors
    for doc in docs:
        try:
            rel = Path(doc.file).relative_to(base).as_posix()
        except ValueError:
            rel = Path(doc.file).name
        hits = sorted({(t, f, ln) for t, g, f, ln in globs if fnmatch.fnmatchcase(rel, g)})
        tenants_hit = sorted({t for t, _, _ in hits})
        if not tenants_hit:
            continue
        if len(tenants_hit) > 1:
            errors.append(CatalogError(doc.file, None, "tenant", tenants_hit[0], "files",
                                       f"this file is claimed by the globs of tenants {', '.join(tenants_hit)} "
                                       f"({', '.join(f'{f}:{ln}' for _, f, ln in hits)}): one file, one tenant"))
            continue
        tenant = tenants_hit[0]
        owners[doc.file] = tenant
        for section in doc:
            if section not in TENANT_SECTIONS:
                t, f, ln = hits[0]
                errors.append(CatalogError(
                    doc.file, doc.marks.get(section), "tenant", tenant, str(section),
                    f"section {section!r} is fleet-wide and belongs in a root file: a tenant's file "
                    f"(tenant {tenant!r}, files declared in {f}:{ln}) may define only "
                    f"{' and '.join(TENANT_SECTIONS)}"))
    return owners, errors


def merge_documents(docs: list[Marked], defer: bool = False) -> Marked:
    """Merge the sections of several files; a name or key defined twice is an error naming both files.

    With ``defer`` the errors are kept in the result's ``load_errors`` (the compiler reports
    them with its own, in one round) instead of being raised.
    """
    errors: list[CatalogError] = []
    merged = Marked(file=docs[0].file if docs else "<catalog>", line=1)
    where: dict[tuple[str, Any], tuple[str, int | None]] = {}
    for doc in docs:
        for section, value in doc.items():
            line = doc.marks.get(section)
            if section not in SECTIONS:
                errors.append(CatalogError(doc.file, line, "catalog", "", str(section),
                                           f"unknown section {section!r} (known: {', '.join(SECTIONS)})"))
                continue
            if value is None:
                continue
            if section in LIST_SECTIONS:
                if not isinstance(value, list):
                    value = MarkedList([value], file=doc.file, line=line, marks=[line])
                cur = merged.setdefault(section, MarkedList(file=doc.file, line=line))
                merged.marks.setdefault(section, line)
                cur.extend(value)
                cur.marks.extend(getattr(value, "marks", [line] * len(value)))
                continue
            if not isinstance(value, dict):
                errors.append(CatalogError(doc.file, line, "catalog", "", str(section),
                                           f"section {section!r} must be a mapping"))
                continue
            kind = "key" if section in SETTING_SECTIONS else "name"
            cur = merged.get(section)
            if cur is None:
                cur = merged[section] = Marked(file=doc.file, line=line)
                merged.marks[section] = line
            for name, item in value.items():
                item_line = value.marks.get(name) if isinstance(value, Marked) else line
                first = where.get((section, name))
                if first is not None:
                    errors.append(CatalogError(
                        doc.file, item_line, section.rstrip("s") if section in NAMED_SECTIONS else section,
                        str(name) if section in NAMED_SECTIONS else "", "" if section in NAMED_SECTIONS else str(name),
                        f"{kind} {name!r} is defined twice: in {first[0]}:{first[1]} and in {doc.file}:{item_line}"))
                    continue
                where[(section, name)] = (doc.file, item_line)
                cur[name] = item
                cur.marks[name] = item_line
                # Items of one section may come from several files: remember each item's file.
                _item_files(cur)[name] = doc.file
    if errors and not defer:
        raise CatalogRefused(errors)
    merged.load_errors = errors  # type: ignore[attr-defined]
    return merged


def _item_files(m: Marked) -> dict[Any, str]:
    files = getattr(m, "item_files", None)
    if files is None:
        files = {}
        m.item_files = files  # type: ignore[attr-defined]
    return files


def file_of(section: Marked, name: Any) -> str:
    """The file in which ``section[name]`` was written."""
    files = getattr(section, "item_files", {})
    value = section.get(name)
    return files.get(name) or getattr(value, "file", "") or section.file


def load_catalog(path: str | os.PathLike[str]) -> Marked:
    """Load a catalog file or directory into one marked mapping of sections."""
    files = catalog_files(path)
    base = Path(path)
    errors: list[CatalogError] = []
    docs: list[Marked] = []
    for f in files:
        display = str(f) if not base.is_dir() else str(base / f.relative_to(base))
        try:
            docs.append(load_file(f, display))
        except CatalogRefused as exc:
            errors.extend(exc.errors)
    if errors:
        raise CatalogRefused(errors)
    merged = merge_documents(docs, defer=True)
    owners, tenant_errors = assign_tenants(docs, base if base.is_dir() else base.parent)
    merged.file_tenants = owners  # type: ignore[attr-defined]
    merged.files = [d.file for d in docs]  # type: ignore[attr-defined]
    merged.load_errors.extend(tenant_errors)  # type: ignore[attr-defined]
    return merged


def line_of(root: Any, path: Iterable[Any]) -> tuple[str | None, int | None]:
    """The file and line of the deepest key along ``path`` that has a mark."""
    file = getattr(root, "file", None) or None
    line = getattr(root, "line", None)
    cur = root
    for key in path:
        if isinstance(cur, Marked) and key in cur:
            line = cur.marks.get(key, line)
            file = getattr(cur, "file", file) or file
            cur = cur[key]
            if getattr(cur, "file", None):
                file = cur.file
        elif isinstance(cur, MarkedList) and isinstance(key, int) and 0 <= key < len(cur):
            line = cur.marks[key] or line
            file = cur.file or file
            cur = cur[key]
        else:
            break
    return file, line
