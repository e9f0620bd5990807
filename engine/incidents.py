"""The incidents stage: which slice explains which finding, and incidents to act on.

A finding answers "did this metric move in this slice"; a user needs "what broke, where".
Slices overlap (the population holds every slice, ``device=ios`` part of ``country=BR``), so
one broken slice moves every slice that contains its rows. This stage (DESIGN section 6a):

1. **Explains.** A flagged finding on slice ``S`` is *explained by* an overlapping slice
   ``S'`` (flagged on the same test) when the same metric on ``S`` *without the rows of*
   ``S'`` is back within tolerance. Statistics are mergeable, so the remainder is a
   subtraction of cells: ``S - S'`` when ``S'`` lies inside ``S`` (the population, or a
   column's slice and one of its crosses), else ``S - (S ∩ S')`` with ``S ∩ S'`` the sum of
   the *atoms* (cells of the cross of the slice columns, accumulated for this) it holds. The
   remainder is measured and judged like any slice (point estimate against the tolerance,
   expected value from the baseline's same remainder when the baseline has atoms, else the
   baseline's ``S``); a remainder too small to judge counts as explained (``S'`` is nearly
   all of ``S``). Of several explaining slices the one with the largest own effect wins; two
   slices that explain each other (the problem sits in their intersection) keep the one with
   the larger effect. Chains resolve to their end: the population explained by ``device=ios``
   explained by ``country=BR`` is explained by ``country=BR``.
2. **Global changes.** A change no slice explains stays on the population; a slice whose
   own value is within tolerance of the population's (the same change, not a worse one) is
   explained by the population. A global change is never blamed on a large slice, and the
   36 per-slice ``label_coverage`` alerts of ordinary label delay are one incident.
3. **Incidents** = (culprit slice, kind): the culprit's unexplained findings and the findings
   they explain, in two kinds: data quality (coverage, duplicates, invalid values) and the
   model's behaviour, whose cause is decided from all its findings together: serving skew
   when the served scores disagree with the replay (flips, deltas), else data drift when
   inputs or scores drifted, else concept drift. Severity: the largest of its findings'
   (effect over tolerance x traffic share), times persistence when windows are on.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.catalogue import METRICS, Tolerance
from engine.compare import Finding, Judge, tolerance_p_values
from engine.config import Config
from engine.encode import Layout, stable_key
from engine import measure as ME
from engine.measure import Grids
from kernels.cpu_fused import add_selected_rows

FLAGGED = ("alert", "warn")
#: Order in which the causes of a model incident's findings decide its cause.
MODEL_CAUSES = ("serving_skew", "data_drift", "concept_drift")
STATUS_RANK = {"warn": 1, "alert": 2}
#: The metric family that shows each cause best (an incident's headline).
SIGNATURE = {"serving_skew": "skew", "data_drift": "drift", "concept_drift": "performance", "data_quality": "data_quality"}


def test_key(f: Finding) -> tuple:
    """What makes two findings on different slices "the same test"."""
    return (f.metric, f.scores, f.feature, f.threshold, json.dumps(f.window, sort_keys=True))


def slice_json(s: dict[str, str]) -> str:
    return json.dumps(s, sort_keys=True)


def effect(f: Finding) -> float:
    """``|diff|`` over the tolerance's scale (the severity before the traffic share)."""
    if f.diff is None:
        return 0.0
    scale = float(Tolerance.from_dict(f.tolerance).scale(f.expected or 0.0))
    return abs(f.diff) / scale if scale > 0 else 0.0


# ---------------------------------------------------------------------- slice algebra
@dataclass
class SliceCells:
    """The judged slices' grids and the atoms' grids of one side (online or baseline)."""

    judged: Grids
    atoms: Grids | None


def _combine(judged, atoms, plus: np.ndarray, minus_judged: np.ndarray, minus_atoms: np.ndarray | None):
    """``judged[plus] - minus_judged @ judged - minus_atoms @ atoms`` on every array of a grid
    (slice axis first), leaving ``None`` where there is nothing."""
    if judged is None:
        return None
    if isinstance(judged, dict):
        return {k: _combine(judged[k], None if atoms is None else atoms[k], plus, minus_judged, minus_atoms) for k in judged}
    if isinstance(judged, (list, tuple)):
        parts = [
            _combine(a, None if atoms is None else atoms[i], plus, minus_judged, minus_atoms)
            for i, a in enumerate(judged)
        ]
        return type(judged)(parts)
    a = np.asarray(judged)
    out = a[plus] - _sum_rows(minus_judged, a)
    if minus_atoms is not None and atoms is not None:
        out = out - _sum_rows(minus_atoms, np.asarray(atoms))
    return out


def _sum_rows(selection: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``selection @ a`` over the first axis, for a 0/1 ``selection`` (a remainder takes out
    a few slices or atoms of hundreds): the selected rows added in ``a``'s type, exact for
    the integer sums at any size (a float64 matrix product was exact only below 2**53)."""
    out = np.zeros((selection.shape[0], int(np.prod(a.shape[1:], dtype=np.int64))), dtype=a.dtype)
    rows, cols = np.nonzero(selection)
    if rows.size:
        add_selected_rows(rows, cols, np.ascontiguousarray(a).reshape(a.shape[0], -1), out)
    return out.reshape((selection.shape[0],) + a.shape[1:])


def derive(cells: SliceCells, plus: np.ndarray, minus_judged: np.ndarray, minus_atoms: np.ndarray | None) -> Grids:
    """The grids of derived slices ``judged[plus] - ...`` (one per row of the matrices)."""
    g, a = cells.judged, cells.atoms
    fields = {}
    for name in g.__dataclass_fields__:
        fields[name] = _combine(
            getattr(g, name), None if a is None else getattr(a, name), plus, minus_judged, minus_atoms
        )
    return Grids(**fields)


class Remainders:
    """Slices without the rows of other slices: which pairs can be derived, and how.

    ``labels`` are the judged slices' ``{column: value}``; ``atom_labels`` the atoms'.
    """

    def __init__(self, labels: list[dict[str, str]], layout: Layout) -> None:
        self.labels = labels
        self.index = {slice_json(s): i for i, s in enumerate(labels)}
        self.atom_columns = tuple(layout.atoms)
        values = [layout.slice_codes[c].labels for c in self.atom_columns]
        self.atom_labels = [
            {c: values[k][code] for k, (c, code) in enumerate(zip(self.atom_columns, row))}
            for row in layout.atom_codes()
        ]
        # each atom column's value per atom, and the atoms of each slice asked about (made once)
        self._atom_values = {c: np.array([a[c] for a in self.atom_labels], dtype=object) for c in self.atom_columns}
        self._atoms_in: dict[str, np.ndarray] = {}

    @staticmethod
    def overlap(a: dict[str, str], b: dict[str, str]) -> bool:
        return all(b.get(k, v) == v for k, v in a.items())

    def atoms_in(self, s: dict[str, str]) -> np.ndarray:
        """Which atoms lie inside slice ``s`` (a boolean mask over the atoms)."""
        key = slice_json(s)
        mask = self._atoms_in.get(key)
        if mask is None:
            mask = np.ones(len(self.atom_labels), dtype=bool)
            for column, value in s.items():
                mask &= self._atom_values[column] == value
            self._atoms_in[key] = mask
        return mask

    def plan(self, s: dict[str, str], culprits: list[dict[str, str]]) -> tuple[int | None, list[int]] | None:
        """How to take the rows of ``culprits`` out of ``s``: ``(judged slice to subtract,
        atoms to subtract)``, or None when it cannot be derived or nothing would remain."""
        if any(not self.overlap(s, c) or set(c.items()) <= set(s.items()) for c in culprits):
            return None  # disjoint, or a culprit contains s: nothing would remain
        if len(culprits) == 1 and set(s.items()) <= set(culprits[0].items()):
            return self.index[slice_json(culprits[0])], []  # inside s: subtract it whole
        cols = set(s).union(*culprits)
        if not cols <= set(self.atom_columns):
            return None
        in_culprits = np.logical_or.reduce([self.atoms_in(c) for c in culprits])
        return None, np.flatnonzero(self.atoms_in(s) & in_culprits).tolist()


# ---------------------------------------------------------------------- localisation
@dataclass
class Localisation:
    """``explained_by[finding id] = culprit slice``; ``pairs`` how many remainders were judged."""

    explained_by: dict[str, dict[str, str]]
    pairs: int


#: Most slices one finding's explanation may take together (the greedy search's rounds).
MAX_CULPRITS = 4


def localise(
    findings: list[Finding],
    online: SliceCells,
    baseline: SliceCells,
    layout: Layout,
    config: Config,
    evidence_for: Any,
) -> Localisation:
    """Decide which flagged findings overlapping slices (or the population) explain.

    ``evidence_for(on, base, slice_keys, need)`` builds the :class:`Evidence` of derived grids
    (the pipeline's own recipe, with a smaller bootstrap keyed by the remainders' meaning),
    so remainders are measured and judged as slices are.

    For each flagged finding on ``S``, the candidates are the other slices flagged on the
    same test that overlap ``S``. Round ``r`` judges ``S`` without the rows of the ``r - 1``
    slices chosen so far plus each remaining candidate; when some remainder is within
    tolerance the finding is explained (by the chosen slices and the best such candidate);
    otherwise the candidate that removes the most excess per row removed (the most
    concentrated) is chosen, and the next round goes on, up to ``MAX_CULPRITS`` slices.
    """
    flagged = [f for f in findings if f.status in FLAGGED and f.window is None and not _table_level(f)]
    # each flagged finding's slice (as JSON) and test key, made once (the rounds read them often)
    sj = {f.id: slice_json(f.slice) for f in flagged}
    tk = {f.id: test_key(f) for f in flagged}
    by_test: dict[tuple, dict[str, Finding]] = {}
    for f in flagged:
        by_test.setdefault(tk[f.id], {})[sj[f.id]] = f
    # A performance metric moved on the replay's scores in S may be explained by a slice
    # where it moved on the served scores: there the replay's finding is often the served
    # one's byte-identical twin, which is not emitted.
    for key, same in list(by_test.items()):
        if key[1] in ("online", "offline"):
            twin = by_test.get((key[0], "offline" if key[1] == "online" else "online", *key[2:]), {})
            by_test[key] = {**{k: f for k, f in twin.items()}, **same}
    # A finding may also be explained by a slice not flagged on the same test (the
    # population's AUC moves when one country's scores shift, though that country's own AUC
    # does not): any slice flagged on something of the same kind is a candidate, standing by
    # its most severe finding.
    by_kind: dict[str, dict[str, Finding]] = {}
    for f in flagged:
        if f.slice:
            best = by_kind.setdefault(_kind(f), {}).get(sj[f.id])
            if best is None or (f.severity, f.id) > (best.severity, best.id):
                by_kind[_kind(f)][sj[f.id]] = f
    rem = Remainders(layout.slice_labels(), layout)
    chosen: dict[str, list[Finding]] = {f.id: [] for f in flagged}
    excess_now = {f.id: _excess(f) for f in flagged}
    removed_now = {f.id: 0.0 for f in flagged}
    explained: dict[str, list[Finding]] = {}
    judged_pairs = 0
    for _ in range(MAX_CULPRITS):
        queries: dict[tuple, tuple[int | None, list[int]]] = {}
        asks: list[tuple[Finding, Finding, tuple]] = []
        for key, same in by_test.items():
            for f in same.values():
                if tk[f.id] != key or f.id in explained or len(chosen[f.id]) >= MAX_CULPRITS:
                    continue
                pool = {**by_kind.get(_kind(f), {}), **{k: c for k, c in same.items() if c.slice}}
                pool.pop(sj[f.id], None)
                taken = {x.id for x in chosen[f.id]}
                for c in pool.values():
                    if c.id in taken:
                        continue
                    q = (sj[f.id], tuple(sorted([sj[x.id] for x in chosen[f.id]] + [sj[c.id]])))
                    if q not in queries:
                        plan = rem.plan(f.slice, [x.slice for x in chosen[f.id]] + [c.slice])
                        if plan is None:
                            continue
                        queries[q] = plan
                    asks.append((f, c, q))
        if not asks:
            break
        judged_pairs += len(queries)
        # the tests asked of each remainder, and nothing else, are measured and judged
        asked = {(q, tk[f.id]) for f, _, q in asks}
        excess, quiet, removed = _judge_remainders(queries, asked, rem, online, baseline, layout, config, evidence_for)
        options: dict[str, list[tuple[Finding, float, float, bool]]] = {}
        for f, c, q in asks:
            e = excess.get((q, tk[f.id]))
            if e is not None:
                options.setdefault(f.id, []).append((c, e, removed.get(q, 0.0), quiet[(q, tk[f.id])]))
        for fid, opts in options.items():
            within = [c for c, _, _, ok in opts if ok]
            if within:
                explained[fid] = chosen[fid] + [max(within, key=lambda c: (effect(c), c.id))]
                continue

            def concentration(opt):
                c, e, share, _ = opt
                return ((excess_now[fid] - e) / max(share - removed_now[fid], 1e-12), c.id)

            c, e, share, _ = max(opts, key=concentration)
            if e >= excess_now[fid]:
                continue  # nothing helps: the finding stays its own
            chosen[fid].append(c)
            excess_now[fid], removed_now[fid] = e, share
    by_id = {f.id: f for f in flagged}
    # two slices that explain each other alone: the problem is in their intersection; the
    # larger effect stays the culprit
    for fid, culprits in list(explained.items()):
        if len(culprits) != 1:
            continue
        f2 = culprits[0]
        back = explained.get(f2.id)
        if back is not None and len(back) == 1 and back[0].id == fid:
            f = by_id[fid]
            keeper = f2 if (effect(f2), f.id) > (effect(f), f2.id) else f
            explained.pop(keeper.id, None)
    # a change on the population that no slice explains is global: a slice showing the same
    # change (its difference from its expectation within tolerance of the population's) is
    # explained by the population, whatever else seemed to explain it
    for key, same in by_test.items():
        pop = same.get(slice_json({}))
        if pop is None or test_key(pop) != key or pop.id in explained or pop.diff is None:
            continue
        tol = Tolerance.from_dict(pop.tolerance)
        for f in same.values():
            if f is pop or test_key(f) != key or f.diff is None:
                continue
            # the same change: the differences within one tolerance (a floor: its room)
            if abs(f.diff - pop.diff) <= float(tol.scale(f.expected)):
                explained[f.id] = [pop]
    # the first (most concentrated) culprit names the explanation; chains end at a finding
    # nothing explains
    culprit: dict[str, dict[str, str]] = {}
    for fid, culprits in explained.items():
        seen, cur = {fid}, culprits[0]
        while cur.id in explained and cur.id not in seen:
            seen.add(cur.id)
            cur = explained[cur.id][0]
        if cur.id in explained:  # a cycle: stop at the largest effect
            cur = max((by_id[i] for i in seen), key=lambda x: (effect(x), x.id))
            if cur.id == fid:
                continue
        culprit[fid] = cur.slice
    return Localisation(culprit, judged_pairs)


def _excess(f: Finding) -> float:
    """How far a finding lies beyond its tolerance, in units of the margin (> 0: beyond)."""
    if f.diff is None or f.expected is None:
        return math.inf
    return _scaled_excess(Tolerance.from_dict(f.tolerance), f.diff, f.expected)


def _scaled_excess(tol: Tolerance, diff: float, expected: float) -> float:
    scale = float(tol.scale(expected))
    return float(tol.excess(diff, expected)) / (scale if scale > 0 else 1.0)


def _table_level(f: Finding) -> bool:
    """Facts of a whole table (duplicates in the replay, conflicting labels): no slices."""
    return f.metric in ("duplicate_key_rate", "conflicting_label_rate")


def _grid_group(test: tuple) -> tuple:
    """The grids a test's metric is measured from (what a remainder must be drawn and
    measured on to judge it): the data-quality counts, a score source's performance grids,
    the skew grids, or one column's drift grids."""
    metric, scores, feature = test[:3]
    if METRICS[metric].family == "data_quality":
        return ("data_quality",)
    if scores is not None:
        return ("performance", scores)
    return ("skew",) if feature is None else ("drift", feature)


#: The population's row of every remainders' evidence (see :func:`_judge_remainders`).
_POPULATION_KEY = stable_key(json.dumps(["remainder", "population"]))


def _judge_remainders(
    queries,
    asked: set[tuple],
    rem: Remainders,
    online: SliceCells,
    baseline: SliceCells,
    layout,
    config,
    evidence_for,
):
    """Judge each planned remainder, like a slice, on the tests ``asked`` of it ((query,
    test key) pairs).

    The remainders are derived together, then measured grid group by grid group (a score
    source's performance, the skew, one column's drift, the data-quality counts), each group
    on the remainders asked about it alone: most remainders are asked about a few metrics of
    one group. Each measurement's first slice is the population, as in a judged layout (the
    drift statistics' null and the features' quantile scale are the population baseline's),
    so a remainder's numbers do not depend on which others it is measured with.

    Returns ``excess[(query, test key)]``, the point estimate's excess over the tolerance in
    margin units (-inf when too small to judge: the culprits hold nearly all of the slice);
    ``quiet[(query, test key)]``, whether the remainder is back within tolerance as a slice
    is judged: its interval not wholly beyond the tolerance and no significant excess over
    half of it (one-sided, at ``fdr_q``), or too small to judge; and ``removed[query]``, the
    share of the slice's rows taken out.
    """
    keys = list(queries)
    on, base, keyed = _derive_remainders(queries, keys, rem, online, baseline)
    rows_all = np.asarray(online.judged.dq[:, 0], dtype=np.float64)
    rows_left = np.asarray(on.dq[:, 0], dtype=np.float64)
    removed = {}
    for r, k in enumerate(keys, start=1):
        whole = rows_all[rem.index[k[0]]]
        removed[k] = float(1.0 - rows_left[r] / whole) if whole > 0 else 1.0
    row = {k: r for r, k in enumerate(keys, start=1)}
    by_group: dict[tuple, dict[tuple, set]] = {}  # group -> query -> its metric keys there
    for q, test in asked:
        by_group.setdefault(_grid_group(test), {}).setdefault(q, set()).add(test[:3])
    excess: dict[tuple, float] = {}
    quiet: dict[tuple, bool] = {}
    judged: list[tuple] = []  # (test, its key, excess, margin, ci beyond): p-values in one call
    judge = Judge(layout, config)
    for group, of_query in sorted(by_group.items()):
        members = sorted(of_query, key=row.get)
        index = np.array([0] + [row[q] for q in members], dtype=np.int64)
        dq = group == ("data_quality",)
        need = ME.Need(frozenset() if dq else frozenset().union(*of_query.values()))
        ev = evidence_for(ME.select_slices(on, index), ME.select_slices(base, index), keyed[index], need)
        if not dq:  # the group's metrics nobody asked about are measured (together), not judged
            ev.online = {k: v for k, v in ev.online.items() if k in need.keys}
        for t in judge._dq_tests(ev) if dq else judge._metric_tests(ev):
            if t.s == 0:
                continue  # the population's row
            name, scores, feature = t.key
            key = (members[t.s - 1], (name, scores, feature, t.threshold, "null"))  # test_key's, whole period
            if key not in asked:
                continue  # measured for another remainder of the group
            if t.insufficient:
                excess[key], quiet[key] = -math.inf, True
                continue
            tol = t.spec.tolerance_spec
            e = _scaled_excess(tol, t.diff, t.expected)
            if not math.isfinite(e):
                continue
            margin = 0.0 if tol.kind == "floor" else float(tol.margin(t.expected))
            ci_beyond = bool(tol.ci_beyond(t.lo, t.hi, t.expected)) if math.isfinite(t.lo) else e > 0
            judged.append((t, key, e, margin, ci_beyond))
    if judged:
        column = lambda get: np.array([get(j) for j in judged], dtype=np.float64)  # noqa: E731
        p_warn = tolerance_p_values(
            column(lambda j: j[0].diff),
            column(lambda j: j[3] / 2),
            column(lambda j: j[0].se),
            np.array([j[0].spec.tolerance_spec.bad for j in judged], dtype=object),
        )
        for (t, key, e, _, ci_beyond), p in zip(judged, p_warn):
            excess[key] = e
            quiet[key] = not ci_beyond and not (p < config.fdr_q) if math.isfinite(p) else e <= 0
    return excess, quiet, removed


def _derive_remainders(queries, keys: list[tuple], rem: Remainders, online: SliceCells, baseline: SliceCells):
    """Online and baseline grids of the population (row 0) and of the remainders ``keys`` (of
    ``queries``: their plans), and the rows' bootstrap keys."""
    S, J = len(rem.labels), len(keys) + 1
    A = len(rem.atom_labels)
    plus = np.array([0] + [rem.index[k[0]] for k in keys], dtype=np.int64)
    minus_j = np.zeros((J, S), dtype=np.int64)
    minus_a = np.zeros((J, max(A, 1)), dtype=np.int64)
    for r, k in enumerate(keys, start=1):
        judged, atoms = queries[k]
        if judged is not None:
            minus_j[r, judged] = 1
        minus_a[r, atoms] = 1
    on = derive(online, plus, minus_j, minus_a if online.atoms is not None else None)
    if baseline.atoms is not None:
        base = derive(baseline, plus, minus_j, minus_a)
    else:
        # without the baseline's atoms, an intersection cannot be taken out of it: the
        # remainder is compared with the baseline's whole slice (documented approximation)
        base = derive(baseline, plus, minus_j, None)
    keyed = np.array(
        [_POPULATION_KEY] + [stable_key(json.dumps(["remainder", *k])) for k in keys], dtype=np.uint64
    )
    return on, base, keyed


# ---------------------------------------------------------------------- incidents
def incident_id(slice_: dict[str, str], kind: str) -> str:
    """Stable across runs: the same culprit and kind is the same incident."""
    return "inc-" + hashlib.sha1(json.dumps([sorted(slice_.items()), kind]).encode()).hexdigest()[:12]


def _kind(f: Finding) -> str:
    return "data_quality" if METRICS[f.metric].family == "data_quality" else "model"


def _describe(f: Finding) -> str:
    detail = ", ".join(
        x for x in (f.scores and f"scores={f.scores}", f.feature and f"feature={f.feature}",
                    f.threshold is not None and f"t={f.threshold:g}") if x
    )
    fmt = lambda x: "-" if x is None else f"{x:.4g}"  # noqa: E731
    return f"{f.metric}{' (' + detail + ')' if detail else ''} {fmt(f.value)} vs {fmt(f.expected)} expected"


def build_incidents(
    findings: list[Finding], explained_by: dict[str, dict[str, str]], shares: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Group flagged findings into incidents, most severe first (see the module docstring).

    ``shares[slice json]`` is each slice's share of the online rows. Sets each explained
    finding's ``explained_by``.
    """
    own: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        if f.status in FLAGGED and f.id not in explained_by:
            own.setdefault((slice_json(f.slice), _kind(f)), []).append(f)
    explained: dict[tuple[str, str], list[Finding]] = {}
    for f in findings:
        if f.status in FLAGGED and f.id in explained_by:
            key = (slice_json(explained_by[f.id]), _kind(f))
            if key not in own:  # explained by a slice whose own finding is of the other kind
                key = next((k for k in own if k[0] == key[0]), key)
            explained.setdefault(key, []).append(f)
    incidents = []
    for key, mine in own.items():
        slice_ = json.loads(key[0])
        kind = key[1]
        if kind == "data_quality":
            cause = "label_delay" if all(f.cause == "label_delay" for f in mine) else "data_quality"
        else:
            causes = {f.cause for f in mine}
            cause = next((c for c in MODEL_CAUSES if c in causes), sorted(c for c in causes if c)[0] if any(causes) else "concept_drift")
        members = mine + explained.get(key, [])
        # the headline: a finding of the incident's own signature (flips for serving skew,
        # drift for data drift, ...), the most severe
        family = SIGNATURE.get(cause)
        top = max(mine, key=lambda f: (METRICS[f.metric].family == family, f.cause == cause, f.severity, f.id))
        incidents.append({
            "id": incident_id(slice_, kind),
            "cause": cause,
            "slice": slice_,
            "status": max((f.status for f in members), key=lambda s: STATUS_RANK[s]),
            "severity": max(f.severity for f in mine),
            "share": None if shares is None else shares.get(key[0]),
            "owner": None,
            "escalation": None,
            "started": None,
            "last_seen": None,
            "ongoing": None,
            "windows": [],
            "metrics": sorted({f.metric for f in mine}),
            "finding_ids": sorted(f.id for f in mine),
            "explained_finding_ids": sorted(f.id for f in explained.get(key, [])),
            "headline": _describe(top),
        })
    for f in findings:
        if f.id in explained_by:
            f.explained_by = explained_by[f.id]
    incidents.sort(key=lambda i: (-STATUS_RANK[i["status"]], -i["severity"], i["id"]))
    return incidents
