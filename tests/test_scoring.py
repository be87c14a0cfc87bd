"""Contribution scoring rules (trust/scoring.py): hand-built matrices whose answer is
known, the coalition that captures BlockFlow's lower median, invariance properties,
and the `[task] scoring` key."""

from __future__ import annotations

import inspect
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discofl_p2p.scenario.config import ScenarioError, parse_scenario
from discofl_p2p.trust.anchor import anchor_of
from discofl_p2p.trust.blockflow import agreement, contribution_scores, lower_median, ranking
from discofl_p2p.trust.consensus import evaluator_distance, evaluator_weights
from discofl_p2p.trust.estimators import hodges_lehmann, trimmed_mean, weighted_lower_median
from discofl_p2p.trust.reputation import reputations
from discofl_p2p.trust.scoring import (
    DEFAULT_SCORING,
    SCORING_RULES,
    ScoringContext,
    honesty_record,
    make_scoring_rule,
    scoring_params_of,
)
from discofl_p2p.trust.settlement import audit_top_k_round

HONEST = [f"H{i}" for i in range(5)]
RING = ["X", "Y", "Z"]  # one third of the 9 workers
BIASED = "B"
WORKERS = HONEST + RING + [BIASED]
QUALITY = {**{h: 0.9 - 0.02 * i for i, h in enumerate(HONEST)}, **dict.fromkeys(RING, 0.15), BIASED: 0.8}
ANCHOR = {k: min(1.0, q + 0.01) for k, q in QUALITY.items()}  # the requester's root set: close to the truth


def _truthful(a: str, i: int) -> dict[str, float]:
    """Non-IID: each honest evaluator's view of a model is off the truth by 0, 0.05 or 0.1."""
    return {k: round(QUALITY[k] - 0.05 * ((i + j) % 3), 4) for j, k in enumerate(WORKERS) if k != a}


def _ring(a: str) -> dict[str, float]:
    return {k: (1.0 if k in RING else 0.0) for k in WORKERS if k != a}


def honest_majority() -> dict[str, dict[str, float]]:
    """5 honest and a truthful B against a ring of 3 that scores itself 1 and others 0."""
    s = {a: _truthful(a, i) for i, a in enumerate(HONEST + [BIASED])}
    return s | {a: _ring(a) for a in RING}


def captured() -> dict[str, dict[str, float]]:
    """As above, but B scores everyone 0: each honest model's 8 evaluators are 3 ring
    members and B scoring 0, 4 honest scoring high, so the lower median is 0."""
    s = honest_majority()
    s[BIASED] = {k: 0.0 for k in WORKERS if k != BIASED}
    return s


def _rule(name: str, **params):
    return make_scoring_rule(name, **params)


def _p(name: str, s, history=(), anchor=None, **params) -> dict[str, float]:
    c = _rule(name, **params)(s, WORKERS, ScoringContext(history=tuple(history), anchor=anchor))
    return {k: v.score for k, v in c.items()}


ALL = ["blockflow", "trimmed", "hodges_lehmann", "reputation", "consensus", "anchored", "informed"]


def test_registry_holds_every_rule_with_one_signature():
    assert sorted(SCORING_RULES) == sorted(ALL)
    for name, fn in SCORING_RULES.items():
        first = list(inspect.signature(fn).parameters)[:3]
        assert first == ["scores", "workers", "context"], name
    assert scoring_params_of("blockflow") == {}
    assert scoring_params_of("trimmed") == {"trim": (int, float)}
    assert scoring_params_of("reputation") == {"memory": (int, float), "prior": (int, float)}


# ---------------------------------------------------------------- estimators


def test_estimators_exact_values():
    assert trimmed_mean([0, 0.2, 0.4, 0.6, 1.0], 0.2) == pytest.approx(0.4)  # cuts one at each end
    assert trimmed_mean([0, 0, 0.9, 0.9], 0.25) == pytest.approx(0.45)
    assert trimmed_mean([0.3, 0.9], 0.0) == pytest.approx(0.6)
    # Walsh averages of 0, 0.5, 1: 0, 0.25, 0.5, 0.5, 0.75, 1 -> lower median 0.5
    assert hodges_lehmann([0, 0.5, 1]) == 0.5
    assert hodges_lehmann([0.0, 0.0, 0.0, 1.0]) == 0.0  # 6 of 10 Walsh averages are 0
    assert weighted_lower_median([0.0, 0.5, 0.9], [1, 1, 3]) == 0.9
    assert weighted_lower_median([0.0, 0.5, 0.9], [0, 0, 0]) == 0.5  # no weight: the plain lower median
    with pytest.raises(ValueError, match="trim"):
        trimmed_mean([0.5], 0.5)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12), st.integers(1, 5))
def test_weighted_lower_median_with_equal_weights_is_the_lower_median(values, w):
    assert weighted_lower_median(values, [w] * len(values)) == lower_median(values)


# ---------------------------------------------------------------- honest majority


@pytest.mark.parametrize("name", ALL)
def test_every_rule_puts_an_honest_majority_above_a_ring_of_one_third(name):
    p = _p(name, honest_majority(), anchor=ANCHOR)
    # Hodges-Lehmann (breakdown about 0.29) is pulled towards the ring's 0s on 3 of 8
    # evaluators, and the honest evaluators' worst agreement drops with it.
    assert min(p[h] for h in HONEST) > (0.3 if name == "hodges_lehmann" else 0.5)
    assert all(p[x] == 0 for x in RING)  # its self-scores of 1.0 are far from any centre


def test_blockflow_rule_is_blockflow_and_reputation_without_history_is_too():
    for s in (honest_majority(), captured()):
        bf = contribution_scores(s, WORKERS)
        assert _rule("blockflow")(s, WORKERS, ScoringContext()) == bf
        assert _rule("reputation")(s, WORKERS, ScoringContext()) == bf  # every reputation equal


# ---------------------------------------------------------------- the capture


def test_a_ring_of_one_third_and_a_biased_scorer_capture_blockflow():
    c = contribution_scores(captured(), WORKERS)
    assert all(c[h].median == 0 and c[h].score == 0 for h in HONEST)  # the lower median is the coalition's
    assert all(c[x].score == 0 for x in RING)
    assert c[BIASED].score == 1.0  # the scorer who gave everyone 0 is the only "honest" one left


@pytest.mark.parametrize(
    "name, params",
    [("trimmed", {}), ("trimmed", {"trim": 0.3}), ("hodges_lehmann", {}), ("consensus", {}), ("anchored", {})],
)
def test_robust_location_and_the_anchor_are_not_captured(name, params):
    p = _p(name, captured(), anchor=ANCHOR, **params)
    assert min(p[h] for h in HONEST) > max(p[x] for x in RING)
    assert all(p[x] == 0 for x in RING)


@pytest.mark.parametrize("name", ["trimmed", "hodges_lehmann"])
def test_robust_location_still_pays_the_biased_scorer_most(name):
    # The limit of a robust centre: dragged down by the coalition, it sits close to
    # the biased scorer's 0s, and B (whose own model is good) earns the top p.
    p = _p(name, captured())
    assert p[BIASED] > max(p[h] for h in HONEST)


@pytest.mark.parametrize("name", ["anchored", "consensus"])
def test_the_anchor_and_the_consensus_weights_also_shut_out_the_biased_scorer(name):
    p = _p(name, captured(), anchor=ANCHOR)
    assert p[BIASED] == 0 and min(p[h] for h in HONEST) > 0.8


def test_consensus_weighs_out_the_coalition_by_its_score_vectors():
    # Each ring member agrees with its 2 mates (distance 0) and B, but the lower median
    # of its 8 distances is one to an honest evaluator: weight 0. B's is 0.5 (t' = 0,
    # up to rounding). The honest agree with the 3 other honest within 0.1: weight
    # t'(about 0.07) = 0.75.
    w = evaluator_weights(captured(), WORKERS)
    assert all(w[x] == 0 for x in RING) and w[BIASED] < 1e-12
    assert min(w[h] for h in HONEST) >= 0.75
    assert evaluator_distance({"a": {"b": 0.5, "c": 0.2, "d": 0.0}, "b": {"a": 0.9, "c": 0.4, "d": 0.1}}, "a", "b") == (
        pytest.approx(0.15)
    )  # over c and d only: (0.2 + 0.1) / 2
    assert evaluator_distance({"a": {"b": 0.5}, "b": {"a": 0.9}}, "a", "b") == 1.0  # nothing in common


# ---------------------------------------------------------------- exact numbers, by hand

# Four workers; D lies: 0 for A and B, 1.0 for C. Each model's received scores, in
# roster order: A <- 0.9, 0.9, 0.0; B <- 0.8, 0.8, 0.0; C <- 0.6, 0.7, 1.0; D <- 0.0, 0.1, 0.0.
FOUR = ["A", "B", "C", "D"]
SMALL = {
    "A": {"B": 0.8, "C": 0.6, "D": 0.0},
    "B": {"A": 0.9, "C": 0.7, "D": 0.1},
    "C": {"A": 0.9, "B": 0.8, "D": 0.0},
    "D": {"A": 0.0, "B": 0.0, "C": 1.0},
}
t = agreement
EXACT = {
    # lower medians 0.9, 0.8, 0.7, 0; d: A worst on C (0.1 off), B on D (0.1), C exact, D 0.9 off
    "blockflow": {"A": 2 / 3, "B": 2 / 3, "C": 7 / 9, "D": 0.0},
    # trim 0.25 of 3 cuts nothing: means 0.6, 1.6/3, 2.3/3, 0.1/3; d: A t(0.8/3), B and C t(0.3)
    "trimmed": {"A": 1.8 / 2.3, "B": 1.6 / 2.3, "C": t(0.3) / t(0.8 / 3), "D": 0.0},
    # Walsh medians 0.45, 0.4, 0.7, 0: the liar holds a third of each model's evaluators,
    # above Hodges-Lehmann's breakdown; d: A 1/9, B C D 1/19
    "hodges_lehmann": {"A": 9 / 14, "B": 9 / 19, "C": 9 / 19, "D": 0.0},
    # weights t'(0.1) = 2/3 (A, B), t'(0.05) = 9/11 (C), t'(0.6) = 0 (D): C's centre is
    # 0.6, D's vote does not count; d: A and C exact, B 0.1 off
    "consensus": {"A": 1.0, "B": 2 / 3, "C": 2 / 3, "D": 0.0},
    # consensus's centre (0.9, 0.8, 0.6, 0) and agreements (A 1, B 2/3, C 1, D 0), times
    # each row's correlation with the centre: A and C follow it exactly (1), B's
    # (0.9, 0.7, 0.1) against (0.9, 0.6, 0) almost, D's (0, 0, 1) against (0.9, 0.8, 0.6)
    # negatively (0); B's p falls below C's quality 2/3
    "informed": {"A": 1.0, "B": 2 / 3 * statistics.correlation([0.9, 0.7, 0.1], [0.9, 0.6, 0.0]), "C": 2 / 3, "D": 0.0},
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_every_rule_on_a_small_matrix_by_hand(name):
    p = {k: c.score for k, c in _rule(name)(SMALL, FOUR, ScoringContext()).items()}
    assert p == pytest.approx(EXACT[name], abs=1e-12)


def test_a_lazy_evaluator_looks_most_honest_where_the_honest_disagree_except_under_informed():
    """Non-IID in miniature: five honest evaluators whose validation data differ score
    the models far apart; a lazy evaluator gives every model 0.5 without evaluating.
    Its constant row sits nearest the median, so blockflow and consensus give it the
    most honesty and pay it most; `informed` sees a row that follows the centre not at
    all and gives it none. The price, measured in the benchmark too: honest evaluators
    whose view runs against the centre lose their honesty as well (here 3 of 5)."""
    workers = [*HONEST, "L"]
    quality = {"H0": 0.9, "H1": 0.75, "H2": 0.6, "H3": 0.45, "H4": 0.3, "L": 0.6}
    skew = [0.3, -0.3, 0.2, -0.2, 0.0]  # each honest evaluator's view, by model
    scores: dict[str, dict[str, float]] = {
        h: {k: min(1.0, max(0.0, quality[k] + skew[(i + j) % 5])) for j, k in enumerate(workers) if k != h}
        for i, h in enumerate(HONEST)
    }
    scores["L"] = dict.fromkeys(HONEST, 0.5)
    for name in ("blockflow", "consensus"):
        c = _rule(name)(scores, workers, ScoringContext())
        assert c["L"].honesty == 1.0 and c["L"].score == max(v.score for v in c.values()), name
    c = _rule("informed")(scores, workers, ScoringContext())
    assert c["L"].honesty == 0.0 and c["L"].score == 0.0
    assert max(c[h].score for h in HONEST) == 1.0
    assert sorted(h for h in HONEST if c[h].honesty == 0) == ["H1", "H2", "H3"]


def test_reputation_and_the_anchor_on_the_small_matrix_by_hand():
    # D lost all its reputation last round (memory 0): its 1.0 for C no longer counts,
    # C's centre is 0.6 and the result is consensus's.
    c = _rule("reputation", memory=0.0)(SMALL, FOUR, ScoringContext(history=({"A": 1, "B": 1, "C": 1, "D": 0},)))
    assert {k: v.score for k, v in c.items()} == pytest.approx(EXACT["consensus"], abs=1e-12)
    # The anchor (0.9, 0.8, 0.6, 0): honesty against it, d = A 1, B t(0.1) = 2/3, C 1, D 0;
    # centres weighted by d: A 0.9, B 0.8, C 0.6, D 0
    c = _rule("anchored")(SMALL, FOUR, ScoringContext(anchor={"A": 0.9, "B": 0.8, "C": 0.6, "D": 0.0}))
    assert {k: v.score for k, v in c.items()} == pytest.approx(EXACT["consensus"], abs=1e-12)


def test_reputation_from_an_outvoted_round_survives_later_captured_rounds():
    rule = _rule("reputation")
    first = rule(honest_majority(), WORKERS, ScoringContext())  # round 1: the ring is outvoted
    history = [honesty_record(first, honest_majority())]
    assert all(history[0][x] == 0 for x in RING)
    for _ in range(4):  # rounds 2..5: B turns biased; BlockFlow would be captured in each
        s = captured()
        c = rule(s, WORKERS, ScoringContext(history=tuple(history)))
        p = {k: v.score for k, v in c.items()}
        assert min(p[h] for h in HONEST) > max(p[x] for x in RING) and min(p[h] for h in HONEST) > 0.5
        assert p[BIASED] == 0
        history.append(honesty_record(c, s))


def test_reputation_cannot_recover_from_a_capture_it_starts_in():
    # The documented limit: with no earlier round, honesty is measured against the
    # captured median, and the honest lose their reputation.
    p = _p("reputation", captured())
    assert max(p[h] for h in HONEST) == 0


def test_reputations_fold_the_history():
    rep = reputations([{"a": 0.0}, {"a": 1.0, "b": 0.0}], ["a", "b", "c"], memory=0.5, prior=1.0)
    assert rep == {"a": 0.75, "b": 0.5, "c": 1.0}  # c never scored: its prior stays


def test_the_anchor_is_the_posted_row_by_published_position():
    owner_at = ["C", "A", "B"]  # the shuffled published order
    assert anchor_of(owner_at, [0.5, 0.9, None]) == {"C": 0.5, "A": 0.9}  # B's position abstains
    with pytest.raises(ValueError, match="2 scores for 3 published models"):
        anchor_of(owner_at, [0.5, 0.9])
    # Settled with it: the ring (scoring itself 1, the others 0) is weighed by the anchor,
    # not by a median it holds half of.
    s = {"A": {"B": 0.7, "C": 0.5}, "B": {"A": 0.9, "C": 1.0}, "C": {"A": 0.0, "B": 1.0}}
    c = _rule("anchored")(s, ["A", "B", "C"], ScoringContext(anchor=anchor_of(["A", "B", "C"], [0.9, 0.7, 0.5])))
    assert c["A"].honesty == 1.0 and c["B"].honesty == c["C"].honesty == 0.0
    # A's evaluators both carry no weight: its centre is the anchor's own 0.9.
    assert {k: (v.median, v.score) for k, v in c.items()} == {"A": (0.9, 1.0), "B": (0.7, 0.0), "C": (0.5, 0.0)}


def test_a_requester_with_one_sybil_takes_the_pot_under_anchored_only():
    """Why `anchored` is not the default (docs/robustness.md): the requester funds the
    pot and posts the anchor. It registers one Sybil worker S whose model is poor
    (0.3 to every honest evaluator), has S score its own model 1 and the others 0, and
    posts that same row as the anchor: S alone agrees with the anchor, so S alone has
    weight, every model's centre is S's score, and S takes the whole pot. The audit
    cannot object (the anchor is the requester's opinion of its own root set). No
    other rule pays S anything here."""
    workers = ["h1", "h2", "h3", "h4", "h5", "S"]
    s = {a: {k: (0.3 if k == "S" else 0.9) for k in workers if k != a} for a in workers[:5]}
    s["S"] = dict.fromkeys(workers[:5], 0.0)
    anchor = {k: (1.0 if k == "S" else 0.0) for k in workers}
    got = {k: v.score for k, v in _rule("anchored")(s, workers, ScoringContext(anchor=anchor)).items()}
    assert got == {**dict.fromkeys(workers[:5], 0.0), "S": 1.0}
    for name in (n for n in ALL if n != "anchored"):
        p = {k: v.score for k, v in _rule(name)(s, workers, ScoringContext()).items()}
        assert p == {**dict.fromkeys(workers[:5], 1.0), "S": 0.0}, name


def test_anchored_needs_an_anchor():
    with pytest.raises(ValueError, match="anchor"):
        _p("anchored", honest_majority())


# ---------------------------------------------------------------- properties

matrices = st.integers(2, 7).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.one_of(st.none(), st.floats(0, 1)), min_size=n * n, max_size=n * n),
        st.lists(st.floats(0, 1), min_size=n, max_size=n),  # anchor, and one round of history
        st.randoms(use_true_random=False),
    )
)


@pytest.mark.parametrize("name", ALL)
@given(data=matrices)
def test_p_in_unit_interval_and_relabelling_permutes(name, data):
    n, flat, extra, rnd = data
    s = {a: {k: flat[a * n + k] for k in range(n) if k != a and flat[a * n + k] is not None} for a in range(n)}
    ctx = ScoringContext(history=(dict(enumerate(extra)),), anchor=dict(enumerate(extra)))
    rule = _rule(name)
    c = rule(s, list(range(n)), ctx)
    assert all(0.0 <= v.score <= 1.0 and 0.0 <= v.honesty <= 1.0 for v in c.values())
    perm = list(range(n))
    rnd.shuffle(perm)  # worker i is now called perm[i]
    s2 = {perm[a]: {perm[k]: v for k, v in row.items()} for a, row in s.items()}
    ctx2 = ScoringContext(
        history=tuple({perm[a]: h for a, h in r.items()} for r in ctx.history),
        anchor={perm[a]: v for a, v in enumerate(extra)},
    )
    c2 = rule(s2, [perm[i] for i in random.Random(0).sample(range(n), n)], ctx2)
    for i in range(n):
        assert c2[perm[i]].score == pytest.approx(c[i].score)


consensus_worlds = st.integers(5, 8).flatmap(
    lambda n: st.tuples(
        st.lists(st.floats(0, 1), min_size=n, max_size=n),  # every model's true score
        st.integers(0, n - 1),  # the liar
        st.lists(st.one_of(st.none(), st.floats(0, 1)), min_size=n, max_size=n),  # its lie (None: abstain)
    )
)


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=50)
@given(world=consensus_worlds)
def test_no_rule_pays_an_evaluator_more_for_lying(name, world):
    """Every other evaluator reports the truth (they agree, as on IID data): whatever
    one evaluator submits instead of the truth, its own p does not rise. (Where the
    honest disagree, a small lie that moves the best model's median down can raise
    the liar's quality m' = m / max m under any median-based rule; with one liar
    among 5 or more evaluators of a model that agree, no rule's centre moves.)"""
    truth, liar, lie = world
    n = len(truth)
    workers = list(range(n))
    honest = {a: {k: truth[k] for k in workers if k != a} for a in workers}
    lying = honest | {liar: {k: v for k, v in enumerate(lie) if k != liar and v is not None}}
    ctx = ScoringContext(history=(dict.fromkeys(workers, 1.0),), anchor=dict(enumerate(truth)))
    rule = _rule(name)
    assert rule(lying, workers, ctx)[liar].score <= rule(honest, workers, ctx)[liar].score + 1e-12


# ---------------------------------------------------------------- the audit


def test_the_audit_recomputes_with_the_rule_the_task_used():
    owner_at = list(WORKERS)
    rows = {a: [captured()[a].get(k) for k in owner_at] for a in WORKERS}
    rule = _rule("trimmed")
    expected = rule(captured(), WORKERS, ScoringContext())
    ranked = ranking(expected, 3)
    assert ranked == ["B", "H0", "H2"]
    default = audit_top_k_round(1, WORKERS, owner_at, rows, 3, 1000, ranked, [])
    assert default.expected_ranking == ["B", "H0", "H1"]  # BlockFlow: every honest p is 0, ties in order
    audit = audit_top_k_round(1, WORKERS, owner_at, rows, 3, 1000, ranked, [], scoring=rule)
    assert audit.expected_ranking == ranked and audit.contribution == expected


# ---------------------------------------------------------------- [task] scoring

BASE = """\
[task]
rounds = 2
top_k = 3
{task}

[[workers]]
name = "honest"
count = 3
"""


def test_the_default_is_consensus_and_a_rule_with_params_parses():
    assert parse_scenario(BASE.format(task="")).task.scoring == DEFAULT_SCORING == "consensus"
    assert parse_scenario(BASE.format(task='scoring = "blockflow"')).task.scoring == "blockflow"
    sc = parse_scenario(BASE.format(task='scoring = "reputation"\nscoring_params = { memory = 0.8, prior = 1 }'))
    assert (sc.task.scoring, sc.task.scoring_params) == ("reputation", {"memory": 0.8, "prior": 1})
    make_scoring_rule(sc.task.scoring, **sc.task.scoring_params)
    anchored = parse_scenario(BASE.format(task='scoring = "anchored"'))
    assert (anchored.task.scoring, anchored.task.root_samples) == ("anchored", 100)
    # Only a rule with an anchor uses the root set; any other leaves it unchecked (and empty).
    assert parse_scenario(BASE.format(task="root_samples = 0")).task.root_samples == 0


@pytest.mark.parametrize(
    "task, key, line, words",
    [
        ('scoring = "median"', "task.scoring", 4, "choose one of blockflow, trimmed"),
        ("scoring = 3", "task.scoring", 4, "must be str"),
        ('scoring = "anchored"\nroot_samples = 0', "task.root_samples", 5, "between 1 and 1999"),
        ('scoring = "anchored"\nroot_samples = 2000', "task.root_samples", 5, "the 2000 digits mnist-embedded"),
        ('scoring = "trimmed"\nscoring_params = { trim = 0.5 }', "task.scoring_params.trim", 5, "[0, 0.5)"),
        ('scoring = "trimmed"\nscoring_params = { cut = 0.1 }', "task.scoring_params.cut", 5, "it takes: trim"),
        ('scoring = "trimmed"\nscoring_params = { trim = "x" }', "task.scoring_params.trim", 5, "must be int or float"),
        ('scoring = "reputation"\nscoring_params = { memory = 1 }', "task.scoring_params.memory", 5, "[0, 1)"),
        ('scoring = "reputation"\nscoring_params = { prior = 0 }', "task.scoring_params.prior", 5, "(0, 1]"),
        ("scoring_params = { trim = 0.1 }", "task.scoring_params.trim", 4, "'consensus' takes no parameters"),
        ("norm_bound = 0.5", "task.norm_bound", 4, "must be 0 (off) or >= 1"),
        ('norm_bound = "x"', "task.norm_bound", 4, "must be int or float"),
    ],
)
def test_scoring_errors_name_key_and_line(task, key, line, words):
    with pytest.raises(ScenarioError) as ei:
        parse_scenario(BASE.format(task=task), "s.toml")
    e = ei.value
    assert (e.key, e.line) == (key, line), str(e)
    assert words in str(e) and str(e).startswith(f"s.toml:{line}: {key}:")


def test_make_scoring_rule_refuses_what_the_config_refuses():
    with pytest.raises(ValueError, match="unknown scoring rule"):
        make_scoring_rule("median")
    with pytest.raises(ValueError, match="no parameter"):
        make_scoring_rule("blockflow", trim=0.1)
    with pytest.raises(ValueError, match="memory"):
        make_scoring_rule("reputation", memory=1.0)


def test_anchored_honesty_is_measured_against_the_anchor_exactly():
    s = {"A": {"B": 0.9, "C": 0.5}, "B": {"A": 0.8, "C": 0.5}, "C": {"A": 0.8, "B": 0.9}}
    c = _rule("anchored")(s, ["A", "B", "C"], ScoringContext(anchor={"A": 0.8, "B": 0.7, "C": 0.5}))
    assert c["A"].honesty_raw == pytest.approx(agreement(0.2))  # its 0.9 for B against the anchor's 0.7
    assert c["B"].honesty_raw == pytest.approx(1.0)
    assert c["B"].median == 0.9  # both of B's evaluators carry weight: the weighted lower median of 0.9, 0.9


def test_the_history_records_only_the_evaluators_of_the_round():
    s = {"A": {"B": 0.9}, "B": {"A": 0.9}}  # C scored nobody this round
    c = contribution_scores(s, ["A", "B", "C"])
    assert honesty_record(c, s) == {"A": 1.0, "B": 1.0}  # C's reputation is left as it was
