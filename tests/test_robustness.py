"""`bench robustness`: the metric functions on known values, the matrix's cells, and a
tiny sweep end to end (results.csv, cache, heatmap, summary.md)."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from discofl_p2p.agents.behaviors import PARTICIPATION_BEHAVIOURS, SCORING_BEHAVIOURS, TRAINING_BEHAVIOURS
from discofl_p2p.bench.robustness import run_robustness
from discofl_p2p.bench.robustness.cell import marginal_contributions
from discofl_p2p.bench.robustness.matrix import (
    HONEST,
    MatrixError,
    builtin,
    cells,
    has_scoring_axis,
    load_matrix,
    runnable_scorings,
)
from discofl_p2p.bench.robustness.metrics import (
    adversary_share,
    average_ranks,
    breakdown_point,
    gini,
    spearman,
)
from discofl_p2p.bench.robustness.report import COLUMNS
from discofl_p2p.ml.aggregation import Candidate

ROOT = Path(__file__).resolve().parents[1]

TINY = """
workers = 6
seeds = [1]
threshold = 0.05
[base.task]
rounds = 2
top_k = 3
[base.data]
samples_per_worker = 40
test_fraction = 0.1
[base.model]
name = "logreg"
lr = 0.01
[axes]
fractions = ["0", "1/3"]
splits = [{ split = "iid" }, { split = "dirichlet", alpha = 0.3 }]
[attacks.garbage]
train = "garbage"
[attacks.collusion]
score = "collusion"
score_params = { ring = "r1", shares_cids = true }
"""

# ---------------------------------------------------------------------- metrics


def test_average_ranks_share_ties():
    assert average_ranks([10, 20, 20, 5]) == [2, 3.5, 3.5, 1]


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    # ranks x = 1,2,3,4 and y = 1,3,2,4: 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # with ties: ranks y = 1.5, 1.5, 3, 4; Pearson on ranks = 0.9486833
    assert spearman([1, 2, 3, 4], [7, 7, 8, 9]) == pytest.approx(3 / math.sqrt(10))


def test_spearman_is_nan_when_undefined():
    assert math.isnan(spearman([1], [2]))
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]))
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


def test_gini_known_values():
    assert gini([3, 3, 3]) == 0
    assert gini([0, 0, 1]) == pytest.approx(2 / 3)  # one holds everything: (n - 1) / n
    assert gini([1, 2, 3, 4]) == pytest.approx(0.25)  # sum |a_i - a_j| = 20, 2 n total = 80
    assert math.isnan(gini([0, 0])) and math.isnan(gini([]))
    with pytest.raises(ValueError):
        gini([1, -1])


def test_adversary_share():
    assert adversary_share({"a": 1, "b": 3, "c": 0}, {"b"}) == 0.75
    assert adversary_share({"a": 0, "b": 0}, {"b"}) == 0.0


def test_breakdown_point_is_the_first_failing_fraction():
    third, half = Fraction(1, 3), Fraction(1, 2)
    held = {Fraction(0): (0.0, 0.0), third: (0.01, 0.2), half: (0.03, 0.4)}
    assert breakdown_point(held, 0.05) is None
    by_loss = {**held, half: (0.2, 0.1)}
    assert breakdown_point(by_loss, 0.05) == (half, "accuracy loss 20.0 points > 5")
    by_share = {**by_loss, third: (0.0, 0.34)}
    assert breakdown_point(by_share, 0.05) == (third, "adversary share 34.0% > 33.3%")
    # fraction 0 never breaks a defence, whatever its figures
    assert breakdown_point({Fraction(0): (0.5, 0.5)}, 0.05) is None


def test_marginal_contribution_is_leave_one_out_of_the_final_set():
    # each model's "accuracy" is its value; an aggregate's is the sum of its members'
    last = {n: {"w": torch.tensor([v])} for n, v in (("a", 0.5), ("b", 0.25), ("c", -0.125))}

    def accuracy(cands: list[Candidate]) -> float:
        return float(sum(c.state["w"].item() for c in cands))

    # c scores below half the best: not in the final set, and adding it would cost 0.125
    final, marginal = marginal_contributions(last, {"a": 1.0, "b": 0.6, "c": 0.4}, accuracy)
    assert final == 0.75
    assert marginal == {"a": 0.5, "b": 0.25, "c": -0.125}


# ---------------------------------------------------------------------- matrix


def test_tiny_matrix_cells_share_the_honest_cell(tmp_path):
    (tmp_path / "m.toml").write_text(TINY)
    m = load_matrix(tmp_path / "m.toml")
    cs = cells(m)
    # per split: one all-honest cell, and each attack at 1/3 (2 of 6 workers)
    assert [(c.attack, c.adversaries) for c in cs if c.split == "iid"] == [
        (HONEST, 0),
        ("garbage", 2),
        ("collusion", 2),
    ]
    assert {c.split for c in cs} == {"iid", "dirichlet(0.3)"}
    assert len({c.key for c in cs}) == len(cs) == 6
    # defence by defence, split by split: a sweep cut short leaves whole ones behind
    two = load_matrix(builtin("policies"))
    order = [(c.defence, c.split) for c in cells(two)]
    runs = [g for i, g in enumerate(order) if i == 0 or g != order[i - 1]]
    assert len(runs) == len(set(order)) == 4
    sc = cs[1].scenario()
    assert sc.n_workers == 6 and sc.workers[1].train == "garbage" and sc.data.samples_per_worker == 40


def test_matrix_errors_name_the_key(tmp_path):
    p = tmp_path / "m.toml"
    p.write_text(TINY + "\n[extra]\n")
    with pytest.raises(MatrixError, match="extra: unknown key"):
        load_matrix(p)
    p.write_text(TINY.replace("[attacks.garbage]\ntrain", "[attacks.garbage]\ntrian"))
    with pytest.raises(MatrixError, match=r"attacks\.garbage"):
        load_matrix(p)
    p.write_text(TINY.replace('"1/3"', '"3/2"'))
    with pytest.raises(MatrixError, match=r"axes.fractions: each must be in \[0, 1\)"):
        load_matrix(p)


def test_shipped_matrices_cover_every_attack_and_every_scoring_rule():
    attacks = {n for reg in (TRAINING_BEHAVIOURS, SCORING_BEHAVIOURS) for n in reg if n != "honest"}
    attacks |= {n for n in PARTICIPATION_BEHAVIOURS if n != "always"}
    for name in ("default", "quick", "breakdown", "aggregations", "policies", "rules"):
        m = load_matrix(builtin(name))
        used = {k.get("train") or k.get("score") or k.get("participation") for k in m.attacks.values()}
        assert used == attacks, name
        for c in cells(m)[:: max(1, len(cells(m)) // 50)]:
            c.scenario()  # valid scenarios
    default, quick = load_matrix(builtin("default")), load_matrix(builtin("quick"))
    assert default.fractions == [Fraction(0), Fraction(1, 6), Fraction(1, 3), Fraction(4, 9), Fraction(1, 2)]
    assert all((f * default.workers).denominator == 1 for f in default.fractions)
    assert len(default.seeds) >= 3 and {s.label for s in default.splits} == {"iid", "dirichlet(0.3)"}
    if has_scoring_axis():
        assert [s.label for s in default.scorings] == runnable_scorings() != []
    assert quick.fractions == [Fraction(0), Fraction(1, 3)] and len(quick.seeds) == 1
    assert len(quick.aggregations) == len(quick.policies) == len(quick.scorings) == 1
    # breakdown, aggregations, policies and rules.toml are the default matrix for some defences:
    # their cells are default cells (the same scenario texts, so a default run with
    # their --out reuses them).
    aggregations = ("score_weighted", "median", "trimmed_mean(trim=0.2)", "multi_krum(f=8)")
    for name, defences in (
        ("breakdown", {("score_weighted", "top_k", s) for s in ("consensus", "blockflow")}),
        ("aggregations", {(a, "top_k", "consensus") for a in aggregations}),
        ("policies", {("score_weighted", p, "consensus") for p in ("top_k", "proportional")}),
        ("rules", {("score_weighted", "top_k", s.label) for s in default.scorings}),
    ):
        part = cells(load_matrix(builtin(name)))
        assert {c.defence for c in part} == defences, name
        assert {c.key for c in part} <= {c.key for c in cells(default)}, name
        assert len(part) == len({c.key for c in cells(default) if c.defence in defences}), name
    informed = cells(load_matrix(builtin("informed")))  # fewer attacks and fractions: a subset only
    assert {c.key for c in informed} <= {c.key for c in cells(default)} and len(informed) == 300


# ---------------------------------------------------------------------- end to end


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_tiny_sweep_end_to_end_and_cached(tmp_path):
    (tmp_path / "m.toml").write_text(TINY)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "discofl_p2p", "bench", "robustness", "--matrix", str(tmp_path / "m.toml"),
         "--out", str(out), "--jobs", "2"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"computed 6 cells in [\d.]+ s: [\d.]+ cells/min", proc.stdout), proc.stdout
    assert len(list((out / "cells").glob("*.json"))) == 6

    table = _csv(out / "results.csv")
    # 2 splits x (the honest cell, once per attack, + 2 attacks at 1/3)
    assert len(table) == 8
    assert {(r["attack"], r["fraction"], r["adversaries"]) for r in table} == {
        ("garbage", "0.0", "0"),
        ("collusion", "0.0", "0"),
        ("garbage", str(1 / 3), "2"),
        ("collusion", str(1 / 3), "2"),
    }
    for r in table:
        assert 0 <= float(r["final_accuracy"]) <= 1
        assert -1 <= float(r["accuracy_loss"]) <= 1
        assert 0 <= float(r["adversary_share"]) <= 1
        assert r["attack_success"] == ""  # no targeted attack in this matrix
        assert r["fairness_spearman"] == "" or -1 <= float(r["fairness_spearman"]) <= 1
        assert r["gini"] == "" or 0 <= float(r["gini"]) < 1
        assert (r["scoring"] != "") == has_scoring_axis()
        if r["fraction"] == "0.0":
            assert float(r["accuracy_loss"]) == 0 and float(r["adversary_share"]) == 0

    png = list(out.glob("heatmap-*.png"))
    assert len(png) == 1 and png[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (out / "summary.md").read_text()
    lines = [line for line in summary.splitlines() if line.startswith("- breakdown ")]
    assert len(lines) == 2, summary
    for line, split in zip(sorted(lines), ("dirichlet(0.3)", "iid")):
        assert re.fullmatch(
            rf"- breakdown score_weighted \+ top_k( \+ \w+)?, {re.escape(split)}: "
            r"(holds at every fraction|breaks at 1/3 \((garbage|collusion): .+\))",
            line,
        ), line

    # a second run computes nothing new and writes the same table
    before = (out / "results.csv").read_text()
    again = run_robustness(tmp_path / "m.toml", out, progress=False, say=lambda _: None)
    assert again.sweep.computed == 0
    assert _csv(out / "results.csv") == table and (out / "results.csv").read_text() == before

    # --cached-only runs nothing and reports only the split whose cells are all cached
    victim = sorted((out / "cells").glob("garbage-*-dirichlet*.json"))[0]
    victim.unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "discofl_p2p", "bench", "robustness", "--matrix", str(tmp_path / "m.toml"),
         "--out", str(out), "--cached-only"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "6 cells, 5 cached; 1 not run (--cached-only)" in proc.stdout and "computed 0 cells" in proc.stdout
    assert not victim.exists()
    assert _csv(out / "results.csv") == [r for r in table if r["split"] == "iid"]
    summary = (out / "summary.md").read_text()
    assert re.search(
        r"Not reported: 1 defence.*\n\n- dirichlet\(0\.3\): score_weighted \+ top_k.* \(2 of 3 cells\)", summary
    )
    assert [line for line in summary.splitlines() if line.startswith("- breakdown ")] == [
        line for line in lines if ", iid: " in line
    ]
    for cell in (out / "cells").glob("*-iid-*.json"):
        cell.unlink()  # no split complete: nothing to report, and it says why
    proc = subprocess.run(
        [sys.executable, "-m", "discofl_p2p", "bench", "robustness", "--matrix", str(tmp_path / "m.toml"),
         "--out", str(out), "--cached-only"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 2 and "no defence has all its cells in" in " ".join(proc.stdout.split()), proc.stdout


def test_cached_only_refuses_what_would_run_cells(tmp_path, capsys):
    from discofl_p2p.commands.bench import bench_robustness

    assert bench_robustness(None, str(tmp_path), cached_only=True, paper=True) == 2
    assert bench_robustness(None, str(tmp_path), cached_only=True, full_stack_sample=3) == 2
    out = " ".join(capsys.readouterr().out.split())
    assert "--cached-only runs nothing, so it cannot go with --paper" in out
    assert "cannot go with --full-stack-sample" in out
    assert not any(tmp_path.iterdir())  # nothing ran, nothing written


def test_a_cut_short_cell_file_is_run_again(tmp_path):
    (tmp_path / "m.toml").write_text(TINY.replace('splits = [{ split = "iid" }, { split = "dirichlet", alpha = 0.3 }]',
                                                  'splits = [{ split = "iid" }]'))  # fmt: skip
    out = tmp_path / "out"
    first = run_robustness(tmp_path / "m.toml", out, progress=False, say=lambda _: None)
    assert first.sweep.computed == 3
    victim = sorted((out / "cells").glob("garbage-*.json"))[0]
    victim.write_text(victim.read_text()[:20])  # interrupted mid-write
    second = run_robustness(tmp_path / "m.toml", out, progress=False, say=lambda _: None)
    assert second.sweep.computed == 1


@pytest.mark.slow
def test_quick_matrix_runs_every_attack(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "discofl_p2p", "bench", "robustness", "--quick", "--out", str(out), "--jobs", "2"],
        capture_output=True, text=True, timeout=900, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = _csv(out / "results.csv")
    assert {r["attack"] for r in table} == set(load_matrix(builtin("quick")).attacks)
    assert len(table) == 2 * 2 * len(load_matrix(builtin("quick")).attacks)


def test_the_rings_matrix_reaches_beyond_half_of_the_evaluators():
    m = load_matrix(builtin("rings"))
    assert Fraction(1, 2) < max(m.fractions) and Fraction(5, 9) in m.fractions
    ring_cells = [c for c in cells(m) if c.fraction == Fraction(2, 3)]
    assert {c.attack for c in ring_cells} == {"collusion", "guessing_ring", "stealthy_ring", "ring_promotes_poison"}
    for c in ring_cells[:4]:
        sc = c.scenario()
        assert c.adversaries == 6 and [g.count for g in sc.workers] == [3, 6]


def test_full_stack_sample_picks_distinct_cells_and_names_each_difference(tmp_path):
    from discofl_p2p.bench.robustness.fullstack import differences, pick
    from discofl_p2p.scenario.plain import PlainRound

    (tmp_path / "m.toml").write_text(TINY)
    all_cells = cells(load_matrix(tmp_path / "m.toml"))
    sample = pick(all_cells, 3, seed=1)
    assert len({c.key for c in sample}) == 3 and [c.key for c in pick(all_cells, 3, seed=1)] == [c.key for c in sample]
    assert len(pick(all_cells, 100)) == len({c.key for c in all_cells})
    a = PlainRound(1, scores={"a": {"b": 0.5}}, contribution={"a": 0.5}, ranking=["a"], rewards_wei={"a": 3})
    b = PlainRound(1, scores={"a": {"b": 0.5}}, contribution={"a": 0.5}, ranking=["a"], rewards_wei={"a": 4})
    assert differences({1: a}, {1: a}, 0.9, 0.9) == []
    assert differences({1: a}, {1: b, 2: b}, 0.9, 0.8) == [
        "round 1 rewards_wei: plain {'a': 3} full {'a': 4}",
        "round 2: only in full stack",
        "final accuracy: plain 0.9 full 0.8",
    ]
    # Bit for bit: a model whose CID differs is named even when every score agrees.
    c = PlainRound(1, models={"a": "bafy1", "b": "bafy2"}, scores=a.scores, contribution=a.contribution)
    d = PlainRound(1, models={"a": "bafy1", "b": "bafy3"}, scores=a.scores, contribution=a.contribution)
    assert differences({1: c}, {1: d}, 0.9, 0.9) == ["round 1 models: the CIDs of b differ"]


@pytest.mark.slow
def test_paper_preset_writes_its_figures_and_table(tmp_path):
    """The paper's experiment as `--paper` runs it, on a small model and data (the
    preset itself trains a CNN on all of MNIST's shipped digits: a documented command)."""
    from discofl_p2p.bench.robustness.paper import PAPER, run_paper

    small = PAPER.replace('name = "compact_cnn"', 'name = "logreg"').replace("epochs = 4", "epochs = 1")
    small = small.replace('split = "iid"', 'split = "iid"\nsamples_per_worker = 30').replace("rounds = 5", "rounds = 2")
    text = run_paper(tmp_path, seeds=(1,), text=small, say=lambda _: None)
    for name in ("paper.md", "paper.json", "paper-accuracy.png", "paper-rewards.png", "paper-cumulative.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = [line for line in text.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 1 and "paper: about 92 %" in text
    honest_share, garbage_share = (float(c.split("±")[0]) for c in rows[0].split("|")[4:6])
    assert honest_share + garbage_share == pytest.approx(1.0, abs=1e-6) and garbage_share < honest_share


def test_breakdown_table_names_each_attacks_breaking_fraction_and_flags_noise(tmp_path, capsys):
    """tools/breakdown_table.py on a hand-made results.csv: defence A breaks at 1/3 on
    accuracy, clearly (every seed 10 points down); defence B breaks at 1/6 on the share
    with one seed far off the others (within noise: "*"); at 1/2 nothing is run."""
    import importlib.util

    path = Path(__file__).parents[1] / "tools" / "breakdown_table.py"
    spec = importlib.util.spec_from_file_location("breakdown_table", path)
    assert spec is not None and spec.loader is not None
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    values = {  # (defence scoring, fraction) -> per seed (accuracy loss, adversary share)
        ("a", "0"): [(0.0, 0.0)] * 3,
        ("a", "1/6"): [(0.01, 0.1), (0.02, 0.1), (0.0, 0.1)],
        ("a", "1/3"): [(0.10, 0.1), (0.11, 0.1), (0.09, 0.1)],
        ("b", "0"): [(0.0, 0.0)] * 3,
        ("b", "1/6"): [(0.0, 0.0), (0.0, 0.0), (0.0, 0.9)],
        ("b", "1/3"): [(0.0, 0.0)] * 3,
    }
    lines = [",".join(COLUMNS)]
    for (scoring, frac), seeds in values.items():
        for seed, (loss, share) in enumerate(seeds, 1):
            row = dict.fromkeys(COLUMNS, "")
            row |= {"attack": "x", "fraction": str(float(Fraction(frac))), "split": "iid", "scoring": scoring}
            row |= {
                "aggregation": "sw",
                "policy": "top_k",
                "seed": str(seed),
                "adversaries": "0" if frac == "0" else "3",
            }
            row |= {"accuracy_loss": str(loss), "adversary_share": str(share), "final_accuracy": str(0.8 - loss)}
            lines.append(",".join(row[c] for c in COLUMNS))
    for frac in ("0", "1/3"):  # defence c, run on the other split only (a sweep in progress)
        row = dict.fromkeys(COLUMNS, "") | {"attack": "x", "fraction": str(float(Fraction(frac))), "seed": "1"}
        row |= {"split": "dirichlet(0.3)", "scoring": "c", "aggregation": "sw", "policy": "top_k"}
        row |= {"adversaries": "0" if frac == "0" else "3", "accuracy_loss": "0.0", "adversary_share": "0.0"}
        lines.append(",".join(row[c] for c in COLUMNS))
    (tmp_path / "results.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "cells").mkdir()  # defence a's cached cells: who was paid nothing
    for frac, seed in [(f, s) for f in ("0", "1/6", "1/3") for s in (1, 2, 3)]:
        attacked = frac != "0"
        name = f"{'x' if attacked else 'none'}-a{3 if attacked else 0}-iid-sw-top_k-a-s{seed}-0123456789ab.json"
        cell = {"adversaries": ["adv-1"], "rewards": {"h-1": 0, "h-2": 5, "adv-1": 0}}
        honest = {"adversaries": [], "rewards": {"h-1": 0, "h-2": 0, "h-3": 1}}
        (tmp_path / "cells" / name).write_text(json.dumps(cell if attacked else honest))
    tool.main([str(tmp_path)])
    out = capsys.readouterr().out
    assert "| x | 1/3 (acc) | 1/6 (share*) |" in out, out
    assert "| sw+top_k+a | 0 | 1 | 0 | 10.00 | 0.100 | 0.800 | 0.700 | 2.00 | 1.00 |" in out, out
    assert "| sw+top_k+b | 1 | 0 | 0 | 0.00 | 0.000 | 0.800 | 0.800 | - | - |" in out, out
    # each split lists the defences it holds, and no other
    assert "| attack | sw+top_k+a | sw+top_k+b |" in out and "| attack | sw+top_k+c |" in out, out
    assert out.count("\n| sw+top_k+c |") == 1 and out.count("\n| sw+top_k+a |") == 1, out  # one summary row each
