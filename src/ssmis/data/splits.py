"""Labeled / unlabeled / val / test splits exactly as the published SSMIS code builds them.

Results in the field are only comparable when the labeled cases are the same ones, so the rules
are the literature's, not a re-shuffle: ACDC takes the first slices (= first patients) of
``train_slices.list``; LA takes the first ``labeled_count`` ids of ``train.list``. The split of a
run is saved as ``splits.json`` so that evaluation and resumption never recompute it.

Own data is split by *group*: the slices or frames of one patient (``<patient>_slice_<k>``,
``patientNNN_frameMM``, ``<case>_<frame>``) stay in one split (:func:`case_groups`), so that no
patient is both trained on and tested on; ``splits.json`` then records the groups.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ssmis.errors import SSMISError

SPLIT_NAMES = ("labeled", "unlabeled", "val", "test")

_SLICE_SUFFIX = re.compile(r"_slice_\d+$")
_FRAME_SUFFIX = re.compile(r"_frame\d+$")


_GROUP_KEYS = ("group_by", "groups")


@dataclass
class Split:
    """Case ids of each split; ids are file stems in the dataset's layout.

    ``groups`` (own data): group name -> its case ids, for every group of more than one case
    (cases not listed are their own group), and ``group_by`` the rule that made them
    (``data.group_by``); None for the published h5 splits, whose lists already keep patients
    together.
    """

    labeled: list[str] = field(default_factory=list)
    unlabeled: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    group_by: str | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.group_by is None and not self.groups:
            del out["group_by"], out["groups"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "split") -> Split:
        """Build from a dict, checking keys and types (``source`` names the file in errors).

        Raises:
            SSMISError: a missing or unknown key, or a value of the wrong type.
        """
        if not isinstance(data, dict):
            raise SSMISError(f"{source}: expected an object with keys {list(SPLIT_NAMES)}")
        unknown = sorted(set(data) - set(SPLIT_NAMES) - set(_GROUP_KEYS))
        if unknown:
            raise SSMISError(f"{source}: unknown key(s) {unknown}, expected "
                             f"{list(SPLIT_NAMES)} (+ optional {list(_GROUP_KEYS)})")
        lists: dict[str, list[str]] = {}
        for name in SPLIT_NAMES:
            if name not in data:
                raise SSMISError(f"{source}: missing key '{name}'")
            value = data[name]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise SSMISError(f"{source}: '{name}' must be a list of strings")
            lists[name] = list(value)
        group_by = data.get("group_by")
        if group_by is not None and not isinstance(group_by, str):
            raise SSMISError(f"{source}: 'group_by' must be a string or null")
        groups = data.get("groups") or {}
        if not isinstance(groups, dict) or not all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(c, str) for c in v)
                for k, v in groups.items()):
            raise SSMISError(f"{source}: 'groups' must map a group name to a list of case ids")
        return cls(**lists, group_by=group_by, groups={k: list(v) for k, v in groups.items()})

    def save(self, path: Path) -> None:
        """Write the split as JSON, atomically (:mod:`ssmis.atomic`)."""
        from ssmis.atomic import write_json

        write_json(Path(path), self.to_dict(), indent=1)

    @classmethod
    def load(cls, path: Path) -> Split:
        path = Path(path)
        if not path.is_file():
            raise SSMISError(f"{path}: split file not found")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SSMISError(f"{path}: not a valid split JSON file ({exc})") from None
        return cls.from_dict(data, source=str(path))

    def check_disjoint(self, val_in_unlabeled: bool = False) -> None:
        """No id may sit in two splits (a test case in training would void the results).

        ``val_in_unlabeled`` allows validation cases to be unlabeled training cases too
        (``data.val_pool: unlabeled``); every other overlap is still an error.
        """
        seen: dict[str, str] = {}
        for name in SPLIT_NAMES:
            for case in getattr(self, name):
                if val_in_unlabeled and name == "val" and seen.get(case) == "unlabeled":
                    continue
                if case in seen:
                    where = "twice in" if seen[case] == name else f"in '{seen[case]}' and"
                    raise SSMISError(f"case '{case}' is listed {where} '{name}'")
                seen[case] = name
        self.check_groups(val_in_unlabeled)

    def check_groups(self, val_in_unlabeled: bool = False) -> None:
        """No group (patient) may have cases both in training (labeled / unlabeled) and in val
        or test, or in both val and test; ``val_in_unlabeled`` allows val + unlabeled.

        Raises:
            SSMISError: naming the group and two of its cases in different splits.
        """
        where: dict[str, str] = {}
        for name in SPLIT_NAMES:
            for case in getattr(self, name):
                where.setdefault(case, name)
        side = {"labeled": "train", "unlabeled": "train", "val": "val", "test": "test"}
        for group, cases in self.groups.items():
            first: dict[str, str] = {}  # split name -> the group's first case there
            for case in cases:
                if case in where:
                    first.setdefault(where[case], case)
            for name, case in first.items():
                for other_name, other in first.items():
                    if side[name] == side[other_name] or (
                            val_in_unlabeled and {name, other_name} == {"val", "unlabeled"}):
                        continue
                    raise SSMISError(f"group '{group}': case '{case}' is in '{name}' and case "
                                     f"'{other}' of the same group in '{other_name}'")


#: ``data.group_by: auto``: the naming conventions of the readers, tried on a case's file stem
#: in this order; a stem none of them shortens is its own group.
AUTO_GROUP_RULES = (
    ("<patient>_slice_<k>", re.compile(r"^(?P<group>.+?)_slice_?\d+$")),
    ("patientNNN_frameMM", re.compile(r"^(?P<group>.+?)_frame_?\d+$")),
    ("<case>_<frame>", re.compile(r"^(?P<group>[^_]*\d[^_]*)_\d+$")),
)


def _group_of_stem(stem: str, group_by: str) -> str:
    if group_by == "auto":
        out = stem
        for _, rule in AUTO_GROUP_RULES[:2]:  # patient001_frame01_slice_3 -> patient001
            match = rule.match(out)
            if match:
                out = match["group"]
        if out == stem:
            match = AUTO_GROUP_RULES[2][1].match(stem)
            if match:
                out = match["group"]
        return out
    match = re.search(group_by, stem)
    if match is None:
        return stem
    if "group" in match.re.groupindex:
        return match["group"]
    return match.group(1) if match.re.groups else match.group(0)


#: path parts of a case id that name a training-pool subset folder, not a domain (``val/<id>``:
#: ``ssmis.data.layouts.images.SUBSET_FOLDERS``)
SUBSET_ID_PARTS = frozenset({"val"})


def case_groups(ids: Sequence[str], group_by: str = "auto") -> dict[str, str]:
    """Case id -> group (patient) id.

    ``group_by``: ``auto`` (the conventions of :data:`AUTO_GROUP_RULES`: ``p1_slice_3`` ->
    ``p1``, ``patient001_frame01`` -> ``patient001``, ``case07_2`` -> ``case07``; an id whose
    prefix has no digit, such as ``img_001``, is not grouped, and nothing is grouped when the
    names give fewer than 3 groups: ``BraTS2021_00000``), ``none`` (every case is
    its own group), or a regular expression searched in the file stem whose named group
    ``group`` (else its first group, else the whole match) is the group; a stem it does not
    match is its own group. A domain folder prefix of the id is kept (``siteA/p1``); subset
    validation folders of the training pool are not (``val/p1_slice_2`` -> ``p1``).

    Raises:
        SSMISError: ``group_by`` is not a valid regular expression, or matches none of ``ids``.
    """
    if group_by == "none":
        return {case: case for case in ids}
    if group_by != "auto":
        try:
            compiled = re.compile(group_by)
        except re.error as err:
            raise SSMISError(f"data.group_by: '{group_by}' is not a regular expression "
                             f"({err})") from None
        stems = [case.rsplit("/", 1)[-1] for case in ids]
        if ids and not any(compiled.search(s) for s in stems):
            raise SSMISError(f"data.group_by: '{group_by}' matches none of the {len(ids)} case "
                             f"ids (e.g. '{stems[0]}'); expected a pattern such as "
                             "'^(.+)_slice_\\d+$' (auto, none)")
    out: dict[str, str] = {}
    for case in ids:
        folder, _, stem = case.rpartition("/")
        group = _group_of_stem(stem, group_by) or stem
        # a shipped val/ folder joins the training pool that the split draws from: a
        # patient's files in training/ and val/ form one group (if its numbering restarts,
        # two patients merge: fewer groups, never a leak). A shipped test/ folder is a given
        # test set whose numbering may restart (SynFoC's prostate sites): kept apart.
        folder = "/".join(p for p in folder.split("/") if p and p not in SUBSET_ID_PARTS)
        out[case] = f"{folder}/{group}" if folder else group
    if group_by == "auto" and _too_few_groups(out):
        return {case: case for case in ids}  # BraTS2021_00000.. -> one 'BraTS2021': no patient
    return out


def _too_few_groups(groups: dict[str, str]) -> bool:
    """``auto`` gives up when the names give fewer than 3 groups (not patients, a prefix)."""
    return len(set(groups.values())) < min(3, len(groups))


def multi_case_groups(groups: dict[str, str]) -> dict[str, list[str]]:
    """{group: [cases]} of the groups with more than one case (what ``splits.json`` records)."""
    members: dict[str, list[str]] = {}
    for case, group in groups.items():
        members.setdefault(group, []).append(case)
    return {g: sorted(c) for g, c in sorted(members.items()) if len(c) > 1}


def grouping_note(ids: Sequence[str], group_by: str = "auto") -> str | None:
    """One line for ``ssmis data inspect`` when ``ids`` look grouped (several cases per
    patient, by ``group_by``, or by ``auto`` when ``group_by`` is ``none``), or None."""
    multi = multi_case_groups(case_groups(ids, "auto" if group_by == "none" else group_by))
    if not multi and group_by == "auto":
        raw = {case: (case.rpartition("/")[0] + "/" if "/" in case else "")
               + (_group_of_stem(case.rpartition("/")[2], "auto") or case.rpartition("/")[2])
               for case in ids}
        few = multi_case_groups(raw)
        if len(few) >= 2 and _too_few_groups(raw):  # one shared prefix: a dataset name
            return (f"{len(ids)} case ids name only {len(set(raw.values()))} group(s) (e.g. "
                    f"{next(iter(few))}): too few to be patients, so data.group_by: auto splits "
                    "by case; set data.group_by to a regex if they are patients")
    if not multi:
        return None
    name, cases = next(iter(multi.items()))
    in_groups = sum(len(c) for c in multi.values())
    found = (f"{in_groups} case ids look like several cases per patient ({len(multi)} groups, "
             f"e.g. {', '.join(cases[:2])} -> {name})")
    if group_by == "none":
        return (f"{found}, but data.group_by: none splits by case, so one patient can be in "
                "training and in test")
    return (f"{found}: splits keep each group in one split and count groups (data.group_by: "
            f"{group_by}; a regex, or none to split by case)")


def patient_of_slice(slice_id: str) -> str:
    """``patient099_frame01_slice_15`` -> ``patient099`` (also accepts volume ids)."""
    return _FRAME_SUFFIX.sub("", _SLICE_SUFFIX.sub("", slice_id))


# --------------------------------------------------------------------------- own data


def _count(n_pool: int, count: int | None, fraction: float | None, field: str) -> int:
    n = count if count is not None else max(1, round((fraction or 0.0) * n_pool))
    if n > n_pool:
        raise SSMISError(f"data.{field}: {n} cases requested, only {n_pool} available")
    return n


def _stratified(ids: list[str], domains: dict[str, str | None],
                rng: np.random.Generator) -> list[str]:
    """Ids shuffled within each domain, then interleaved in proportion to the domains' sizes,
    so that any prefix holds each domain in proportion (a domain with 10 % of the ids gets about
    10 % of the first n; equal domains alternate)."""
    groups: dict[str | None, list[str]] = {}
    for i in sorted(ids):
        groups.setdefault(domains.get(i), []).append(i)
    shuffled = [[g[j] for j in rng.permutation(len(g))]
                for _, g in sorted(groups.items(), key=lambda kv: str(kv[0]))]
    keyed = [((k + 0.5) / len(g), d, g[k]) for d, g in enumerate(shuffled) for k in range(len(g))]
    return [case for _, _, case in sorted(keyed)]


def _ssl_split_nodes(
    labeled_pool: list[str], unlabeled_pool: list[str], given_test: list[str],
    domains: dict[str, str | None], *, labeled_count: int | None = None,
    labeled_fraction: float | None = None, labeled_cases: list[str] | None = None,
    labeled_domain: str | None = None, val_count: int | None = None,
    val_fraction: float | None = None, test_count: int | None = None,
    test_fraction: float | None = None, seed: int = 0, val_domain: str = "labeled",
    labeled_pick: str = "random", val_pool: str = "held_out",
) -> Split:
    """A labeled / unlabeled / val / test split of any dataset, by case.

    ``labeled_pool``: training cases with a label, in file order (the catalog's: sorted file
    names per domain folder); ``unlabeled_pool``: cases without one; ``given_test``: labeled
    test cases the dataset ships (nnU-Net ``imagesTs``, SynFoC ``test/``). Test (when
    ``test_count``/``test_fraction`` is set, in addition to ``given_test``) and validation cases
    are carved from the labeled pool, stratified by domain; the labeled cases are an explicit
    list, or (``labeled_pick``) drawn by ``seed`` (``random``) or the first ones in file order
    (``first``: SynFoC / MiDSS ``lb_idxs = range(lb_num)`` over the sorted files of the domain,
    ``MQinghe/SynFoC`` @ ``3f3c06a`` ``code/train.py`` lines 409-415), from ``labeled_domain``
    only if given; every other training case is unlabeled (its label is never read).

    ``val_domain``: with ``labeled_domain`` set, ``"labeled"`` draws the validation cases from
    that domain too, so that no label of another domain is used at all (the mixed-domain
    setting: the user's labels come from one site); ``"all"`` stratifies them over the domains.
    ``val_pool``: ``held_out`` removes the validation cases from training; ``unlabeled`` draws
    them from the cases that stay unlabeled training cases (their labels are read for
    validation only), so training sees exactly the authors' data, even for a small domain
    (Fundus Domain1: 50 images). The labeled cases are then chosen before the validation ones.
    """
    if labeled_pick not in ("random", "first"):
        raise SSMISError(f"data.labeled_pick: '{labeled_pick}', expected random or first")
    if val_pool not in ("held_out", "unlabeled"):
        raise SSMISError(f"data.val_pool: '{val_pool}', expected held_out or unlabeled")
    rng = np.random.default_rng(seed)
    pool = sorted(labeled_pool)
    file_order = {case: k for k, case in enumerate(labeled_pool)}
    explicit = list(labeled_cases or [])
    for case in explicit:
        if case not in pool:
            where = "has no label" if case in unlabeled_pool else "is not a training case"
            raise SSMISError(f"data.labeled_cases: '{case}' {where}")
    carve = [i for i in pool if i not in set(explicit)]
    test = list(given_test)
    if test_count is not None or test_fraction is not None:
        n = _count(len(carve), test_count, test_fraction, "test_count")
        chosen = _stratified(carve, domains, rng)[:n]
        test += sorted(chosen)
        carve = [i for i in carve if i not in set(chosen)]
    if not test:
        raise SSMISError("split: no test cases; add labeled imagesTs/labelsTs or set "
                         "data.test_count / data.test_fraction")

    def pick_labeled(cases: list[str]) -> list[str]:
        candidates = cases
        if labeled_domain is not None:
            known = sorted({str(d) for d in domains.values() if d is not None})
            candidates = [i for i in cases if domains.get(i) == labeled_domain]
            if not candidates:
                raise SSMISError(f"data.labeled_domain: no labeled training case in domain "
                                 f"'{labeled_domain}' (domains: {', '.join(known) or 'none'})")
        n = _count(len(candidates), labeled_count, labeled_fraction, "labeled_count")
        if labeled_pick == "first":
            return sorted(candidates, key=lambda i: file_order.get(i, len(file_order)))[:n]
        return sorted(candidates[j] for j in rng.permutation(len(candidates))[:n])

    labeled: list[str] | None = explicit or None
    if labeled is None and (labeled_pick == "first" or val_pool == "unlabeled"):
        labeled = pick_labeled(carve)  # the authors' labeled cases, before validation
        carve = [i for i in carve if i not in set(labeled)]
    val_candidates = carve
    if labeled_domain is not None and val_domain == "labeled" and not explicit:
        val_candidates = [i for i in carve if domains.get(i) == labeled_domain]
        wanted = val_count if val_count is not None else 1
        if wanted > len(val_candidates):
            what = "unlabeled" if val_pool == "unlabeled" else "labeled"
            raise SSMISError(f"data.val_count: {wanted} validation cases requested from domain "
                             f"'{labeled_domain}', which has {len(val_candidates)} {what} "
                             "training cases (lower it, or set data.val_domain: all)")
    n_val = _count(len(val_candidates), val_count, val_fraction, "val_count")
    val = sorted(_stratified(val_candidates, domains, rng)[:n_val])
    if val_pool == "held_out":
        carve = [i for i in carve if i not in set(val)]
    if labeled is None:
        labeled = pick_labeled(carve)
    unlabeled = sorted(i for i in carve if i not in set(labeled)) + sorted(unlabeled_pool)
    split = Split(labeled=labeled, unlabeled=unlabeled, val=val, test=test)
    split.check_disjoint(val_in_unlabeled=val_pool == "unlabeled")
    return split


def ssl_split(
    labeled_pool: list[str], unlabeled_pool: list[str], given_test: list[str],
    domains: dict[str, str | None], *, groups: dict[str, str] | None = None,
    group_by: str | None = None, **options: Any,
) -> Split:
    """A labeled / unlabeled / val / test split of any dataset, by group (patient).

    ``groups``: case id -> group id (:func:`case_groups`); None or all-distinct = by case, as
    :func:`_ssl_split_nodes` documents (``options`` are its keyword arguments: labeled_count,
    val_count, test_fraction, seed, ...). With groups, every count and fraction counts groups,
    a group goes whole to one of labeled / val / test (the cases of a group that holds an
    explicit ``labeled_cases`` id, and that are not listed, stay unlabeled), and unlabeled cases
    of a val or test group are left out of training. The returned split records ``group_by``
    and its groups of more than one case.

    Raises:
        SSMISError: a training group that also has a case in ``given_test``, a count beyond
            the groups available, and every error of :func:`_ssl_split_nodes`.
    """
    groups = groups or {}
    every = list(labeled_pool) + list(unlabeled_pool) + list(given_test)
    group_of = {case: groups.get(case, case) for case in every}
    multi = multi_case_groups(group_of)
    if not multi:
        split = _ssl_split_nodes(labeled_pool, unlabeled_pool, given_test, domains, **options)
        split.group_by = group_by
        return split
    node_of = {case: group_of[case] if group_of[case] in multi else case for case in every}
    test_nodes = {node_of[c] for c in given_test}
    leaked = sorted(c for c in labeled_pool if node_of[c] in test_nodes)
    if leaked:
        raise SSMISError(f"split: training case '{leaked[0]}' is in group "
                         f"'{group_of[leaked[0]]}', which also has test cases; move the group "
                         f"to one side or set data.group_by (now '{group_by}')")
    members: dict[str, list[str]] = {}
    for case in labeled_pool:
        members.setdefault(node_of[case], []).append(case)
    explicit = list(options.pop("labeled_cases", None) or [])
    explicit_nodes = {node_of.get(c, c) for c in explicit}
    node_pool = [n for n in members if n not in explicit_nodes]
    node_domains = {n: domains.get(cases[0]) for n, cases in members.items()}
    held = [c for n in sorted(explicit_nodes) for c in members.get(n, [])
            if c not in set(explicit)]
    # explicit labeled cases are checked (and kept) by case, their groups leave the pool
    for case in explicit:
        if case not in labeled_pool:
            where = "has no label" if case in unlabeled_pool else "is not a training case"
            raise SSMISError(f"data.labeled_cases: '{case}' {where}")
    nodes = _ssl_split_nodes(
        node_pool + sorted(explicit_nodes), [], sorted(test_nodes),
        node_domains, labeled_cases=sorted(explicit_nodes) or None, **options)

    def expand(ids: list[str]) -> list[str]:
        return [c for n in ids for c in sorted(members.get(n, []))]

    test = list(given_test) + sorted(expand([n for n in nodes.test if n not in test_nodes]))
    labeled = explicit if explicit else expand(nodes.labeled)
    val = sorted(expand(nodes.val))
    out_of_training = set(nodes.test) | test_nodes
    if options.get("val_pool", "held_out") == "held_out":
        out_of_training |= set(nodes.val)
    unlabeled_nodes = [n for n in nodes.unlabeled if n not in set(explicit_nodes)]
    unlabeled = sorted(expand(unlabeled_nodes) + held) + sorted(
        c for c in unlabeled_pool if node_of[c] not in out_of_training)
    split = Split(labeled=labeled, unlabeled=unlabeled, val=val, test=test, group_by=group_by,
                  groups=multi)
    split.check_disjoint(val_in_unlabeled=options.get("val_pool") == "unlabeled")
    return split


def split_from_catalog(catalog: Any, data: Any) -> Split:
    """:func:`ssl_split` of a scanned own-data catalog with the split fields of ``data``
    (a :class:`ssmis.config.DataConfig`), by the groups of ``data.group_by`` (default auto).

    Raises:
        SSMISError: as :func:`case_groups` and :func:`ssl_split`, naming the field.
    """
    rules = data.params  # the layout's split rules (ssmis.data.layouts.params.SplitRules)
    group_by = rules.group_by
    return ssl_split(
        catalog.ids("train", labeled=True),
        catalog.ids("train", labeled=False) + catalog.ids("unlabeled"),
        catalog.ids("test", labeled=True), catalog.domains(),
        groups=case_groups(list(catalog.cases), group_by), group_by=group_by,
        labeled_count=rules.labeled_count, labeled_fraction=rules.labeled_fraction,
        labeled_cases=rules.labeled_cases, labeled_domain=rules.labeled_domain,
        val_count=rules.val_count, val_fraction=rules.val_fraction, val_domain=rules.val_domain,
        test_count=rules.test_count, test_fraction=rules.test_fraction, seed=rules.split_seed,
        labeled_pick=rules.labeled_pick,
        val_pool=rules.val_pool)
