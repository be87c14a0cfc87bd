"""Data, splits, models, peer-weight validation, aggregation rules and training."""

from __future__ import annotations

import concurrent.futures
import gzip
import io
import pickle

import pytest
import torch

from discofl_p2p.ml.aggregation import AGGREGATORS, Candidate, make_aggregator, norm_bounded
from discofl_p2p.ml.datasets import Dataset, DatasetError, load_dataset, load_embedded_mnist, load_full_mnist, parse_idx
from discofl_p2p.ml.models import MODELS, build_model, export_initial_model, load_initial_model, parameter_count
from discofl_p2p.ml.splits import partition
from discofl_p2p.ml.training import TrainConfig, evaluate, inference_module, predict, score, train
from discofl_p2p.ml.weights import ModelRejected, decode_state, encode_state, spec_of


@pytest.fixture(scope="module")
def mnist():
    return load_embedded_mnist()


# ---------------------------------------------------------------- data


def test_embedded_mnist_is_the_real_test_split(mnist):
    assert mnist.x.shape == (10_000, 1, 28, 28) and mnist.x.dtype == torch.float32
    assert mnist.y.shape == (10_000,) and set(mnist.y.tolist()) == set(range(10))
    assert mnist.y[:5].tolist() == [7, 2, 1, 0, 4]  # the first t10k labels
    assert abs(float(mnist.x.mean())) < 0.1  # normalised


def test_embedded_mnist_is_decoded_once_and_every_caller_gets_its_own_copy():
    from discofl_p2p.ml import datasets

    load_embedded_mnist()
    decoded = datasets._embedded_tensors.cache_info().misses
    a = load_embedded_mnist()
    a.x[0].fill_(7.0)
    a.y[0] = 3
    b = load_embedded_mnist()
    assert b.y[0] == 7 and float(b.x[0].max()) < 7.0  # a's changes stay in a
    assert datasets._embedded_tensors.cache_info().misses == decoded == 1


def test_idx_parser_names_what_is_wrong():
    with pytest.raises(DatasetError, match="not an unsigned-byte IDX"):
        parse_idx(b"\x00\x00\x0d\x01", where="f.gz")
    with pytest.raises(DatasetError, match=r"f\.gz: header says 3 bytes"):
        parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x03\x01", where="f.gz")
    assert parse_idx(b"\x00\x00\x08\x02\x00\x00\x00\x01\x00\x00\x00\x02\x05\x06").tolist() == [[5, 6]]


def test_full_mnist_from_a_directory_checks_files(tmp_path):
    with pytest.raises(DatasetError, match="missing"):
        load_full_mnist(tmp_path, download=False)
    for name in (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ):
        (tmp_path / name).write_bytes(gzip.compress(b"not mnist"))
    with pytest.raises(DatasetError, match="md5 does not match"):
        load_full_mnist(tmp_path, download=False)
    with pytest.raises(DatasetError, match="unknown data set"):
        load_dataset("cifar")


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_partitions_are_deterministic_disjoint_and_split_80_20(mnist, scheme):
    p = partition(mnist.y, 6, scheme=scheme, alpha=0.5, seed=3)
    q = partition(mnist.y, 6, scheme=scheme, alpha=0.5, seed=3)
    allidx = [p.test] + [t for w in p.workers for t in (w.train, w.val)]
    cat = torch.cat(allidx)
    assert len(cat) == len(set(cat.tolist())) == len(mnist)  # disjoint, complete
    assert len(p.test) == 2000
    for a, b in zip(p.workers, q.workers):
        assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    for w in p.workers:
        n = len(w.train) + len(w.val)
        assert len(w.val) >= 1 and abs(len(w.val) - 0.2 * n) <= 1
    r = partition(mnist.y, 6, scheme=scheme, alpha=0.5, seed=4)
    assert not torch.equal(r.workers[0].train, p.workers[0].train)


def test_dirichlet_skews_labels_and_iid_does_not(mnist):
    def top_label_share(p):
        shares = []
        for w in p.workers:
            counts = torch.bincount(mnist.y[torch.cat([w.train, w.val])], minlength=10)
            shares.append(float(counts.max()) / float(counts.sum()))
        return sum(shares) / len(shares)

    assert top_label_share(partition(mnist.y, 6, scheme="iid", seed=1)) < 0.15
    assert top_label_share(partition(mnist.y, 6, scheme="dirichlet", alpha=0.1, seed=1)) > 0.4


def test_the_root_set_comes_out_of_the_test_split_and_leaves_the_workers_shares_alone(mnist):
    p = partition(mnist.y, 4, scheme="dirichlet", alpha=0.3, seed=2)
    q = partition(mnist.y, 4, scheme="dirichlet", alpha=0.3, seed=2, root=100)
    assert len(p.root) == 0 and len(q.root) == 100 and len(q.test) == len(p.test) - 100
    assert torch.equal(torch.cat([q.root, q.test]).sort().values, p.test.sort().values)
    for a, b in zip(p.workers, q.workers):
        assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert len(torch.unique(mnist.y[q.root])) == 10  # a uniform sample of the task: every class
    with pytest.raises(ValueError, match="root must be in"):
        partition(mnist.y, 4, seed=2, root=len(p.test))


def test_per_worker_cap(mnist):
    p = partition(mnist.y, 4, per_worker=500, seed=0)
    assert all(len(w.train) + len(w.val) == 500 for w in p.workers)


# ---------------------------------------------------------------- models and weights


def test_registry_models_run_and_have_the_stated_sizes():
    sizes = {name: parameter_count(build_model(name)) for name in MODELS}
    assert 10_000 <= sizes["compact_cnn"] < 100_000
    assert 1_100_000 < sizes["mnist_cnn"] < 1_300_000
    x = torch.zeros(2, 1, 28, 28)
    for name in MODELS:
        assert build_model(name)(x).shape == (2, 10)


def test_initial_model_travels_as_torchscript_without_its_class():
    m = build_model("compact_cnn", seed=5)
    blob = export_initial_model(m)
    loaded = load_initial_model(blob)
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(loaded(x), m(x))
    assert spec_of(loaded.state_dict()) == spec_of(m.state_dict())


def test_evaluate_job_reuses_one_module_per_thread_without_leaking_weights(mnist):
    # evaluate_job keeps this thread's module for w0 and loads each job's state into
    # it: scores must equal a fresh module's, whichever w0 or state came before, in
    # the pool's threads as in this one.
    from discofl_p2p.agents import jobs

    x, y = mnist.x[:300], mnist.y[:300]
    archives = {name: export_initial_model(build_model(name, seed=1)) for name in ("logreg", "compact_cnn")}
    states = {
        name: [{k: v + 0.05 * i * torch.randn_like(v) for k, v in jobs.initial_state(w0).items()} for i in range(3)]
        for name, w0 in archives.items()
    }

    def fresh(w0: bytes, state) -> float:
        model = load_initial_model(w0)
        model.load_state_dict(state)
        return score(predict(model, x), y)

    expected = {(n, i): fresh(archives[n], s) for n in archives for i, s in enumerate(states[n])}
    order = [(n, i) for _ in range(2) for n in ("logreg", "compact_cnn", "logreg") for i in (2, 0, 1)]
    assert [jobs.evaluate_job(archives[n], states[n][i], x, y, "accuracy") for n, i in order] == [
        expected[k] for k in order
    ]
    assert len(set(expected.values())) > 2  # the states differ, so a leaked state would show
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda k: jobs.evaluate_job(archives[k[0]], states[k[0]][k[1]], x, y, "accuracy"), order))
    assert got == [expected[k] for k in order]
    # a copy of w0's bytes (another object, the same archive) keeps the module
    jobs.evaluate_job(archives["logreg"], states["logreg"][0], x, y, "accuracy")
    module = jobs._evaluation.model
    jobs.evaluate_job(bytes(bytearray(archives["logreg"])), states["logreg"][1], x, y, "accuracy")
    assert jobs._evaluation.model is module


def _fresh_training(w0: bytes, state, x, y, cfg: TrainConfig, seed: int):
    torch.set_num_threads(1)  # as every job does: the float sums depend on it
    model = load_initial_model(w0)
    model.load_state_dict(state)
    train(model, Dataset(x, y, "t"), torch.arange(len(y)), cfg, seed=seed)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_train_job_reuses_one_module_per_thread_and_gives_a_fresh_modules_bits(mnist):
    # train_job keeps this thread's module for w0 and copies each job's state into it:
    # every trained tensor must equal, bit for bit, what a freshly loaded module trains
    # (TorchScript's warmed-up graphs, the last job's gradients and optimizer left
    # behind), for every model with and without dropout, in the pool's threads too.
    from discofl_p2p.agents import jobs

    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.01)
    data = [(mnist.x[i * 150 : (i + 1) * 150], mnist.y[i * 150 : (i + 1) * 150]) for i in range(3)]
    for name in ("logreg", "compact_cnn", "mnist_cnn"):
        w0 = export_initial_model(build_model(name, seed=2))
        start = state = jobs.initial_state(w0)
        expected, got = [], []
        for i, (x, y) in enumerate(data):  # a chain of jobs, each from the last one's model
            expected.append(_fresh_training(w0, state, x, y, cfg, i))
            got.append(jobs.train_job(w0, state, x, y, cfg, i))
            state = expected[-1]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            pooled = list(
                pool.map(jobs.train_job, [w0] * 2, [start] * 2, [data[0][0]] * 2, [data[0][1]] * 2, [cfg] * 2, [0] * 2)
            )
        for e, g in zip(expected, got, strict=True):
            assert e.keys() == g.keys() and all(torch.equal(e[k], g[k]) for k in e), name
        for p in pooled:
            assert all(torch.equal(p[k], expected[0][k]) for k in expected[0]), name
        assert not all(torch.equal(expected[0][k], start[k]) for k in start)  # it did train
    bad = {k: v[..., :1] for k, v in start.items()}
    with pytest.raises(RuntimeError, match=r"size mismatch"):
        jobs.train_job(w0, bad, *data[0], cfg, 0)


def test_seeding_the_cpu_generator_alone_gives_torch_manual_seeds_dropout_masks():
    # train() seeds dropout with torch.default_generator.manual_seed (torch.manual_seed
    # also seeds every accelerator, 1 ms a call): on the CPU both give the same draws.
    torch.manual_seed(1234)
    a = torch.nn.functional.dropout(torch.ones(1000), 0.5, training=True)
    torch.default_generator.manual_seed(1234)
    b = torch.nn.functional.dropout(torch.ones(1000), 0.5, training=True)
    assert torch.equal(a, b) and 300 < int((a == 0).sum()) < 700


def test_only_a_model_with_a_convolution_is_frozen_for_inference():
    for name, frozen in (("logreg", False), ("mlp", False), ("compact_cnn", True)):
        scripted = load_initial_model(export_initial_model(build_model(name)))
        assert (inference_module(scripted) is not scripted) == frozen, name


def test_predict_on_w0s_torchscript_matches_the_eager_model_and_leaves_it_untouched(mnist):
    # predict freezes and optimises a TorchScript module with a convolution (oneDNN, fused conv+ReLU): it
    # must give the eager model's classes, and the scripted module must stay trainable.
    eager = build_model("compact_cnn", seed=3)
    scripted = load_initial_model(export_initial_model(eager))
    x = mnist.x[:600]
    with torch.no_grad():
        assert torch.allclose(inference_module(scripted)(x), eager.eval()(x), atol=1e-4)
    # Classes agree but for float ties (an untrained model's logits lie close together).
    assert (predict(scripted, x) == predict(eager, x)).sum() >= 597
    assert (predict(scripted, x, batch_size=7) == predict(eager, x)).sum() >= 597
    assert all(p.requires_grad for p in scripted.parameters())


def test_safetensors_round_trip():
    state = build_model("mlp").state_dict()
    back = decode_state(encode_state(state), spec_of(state))
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_decoded_weights_come_in_w0s_tensor_order():
    """The safetensors parser returns tensors in an order of its own (it varied from
    call to call), and an aggregation flattens its candidates in dict order; so a
    decoded model must come in w0's (the spec's) order, as a trained one does."""
    state = build_model("logreg").state_dict()  # fc.weight, fc.bias: not sorted
    spec = spec_of(state)
    assert list(spec) != sorted(spec)
    blob = encode_state(state)
    for _ in range(5):
        assert list(decode_state(blob, spec)) == list(spec)


class _Boom:
    def __reduce__(self):
        return (print, ("pwned",))


def test_peer_weights_are_validated():
    state = build_model("logreg").state_dict()
    spec = spec_of(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    with pytest.raises(ModelRejected, match="pickle"):
        decode_state(buf.getvalue(), spec)
    with pytest.raises(ModelRejected, match="pickle"):
        decode_state(pickle.dumps(_Boom()), spec)
    wrong_shape = dict(state, **{"fc.bias": torch.zeros(11)})
    with pytest.raises(ModelRejected, match=r"'fc.bias' has shape \(11,\)"):
        decode_state(encode_state(wrong_shape), spec)
    wrong_dtype = dict(state, **{"fc.bias": torch.zeros(10, dtype=torch.float64)})
    with pytest.raises(ModelRejected, match=r"dtype torch\.float64"):
        decode_state(encode_state(wrong_dtype), spec)
    for bad in (float("nan"), float("inf")):
        poisoned = dict(state, **{"fc.bias": torch.full((10,), bad)})
        with pytest.raises(ModelRejected, match="NaN or infinite"):
            decode_state(encode_state(poisoned), spec)
    with pytest.raises(ModelRejected, match="unexpected"):
        decode_state(encode_state(dict(state, extra=torch.zeros(1))), spec)
    with pytest.raises(ModelRejected, match="header length"):
        decode_state(b"\xff" * 8 + b"{}", spec)
    with pytest.raises(ModelRejected, match="over the cap"):
        decode_state(encode_state(state), spec, max_bytes=100)
    with pytest.raises(ModelRejected, match="not a valid safetensors"):
        decode_state(encode_state(state)[:-4], spec)


# ---------------------------------------------------------------- aggregation


def _c(v, score=1.0, n=1):
    return Candidate({"w": torch.tensor([float(v), -float(v)]), "steps": torch.tensor(3)}, score, n)


def test_aggregation_rules_on_known_values():
    cs = [_c(1, 0.9, 10), _c(2, 0.8, 30), _c(3, 0.9, 60), _c(100, 0.1, 100)]
    agg = {name: make_aggregator(name)(cs)["w"][0].item() for name in AGGREGATORS}
    assert agg["score_weighted"] == pytest.approx((0.9 + 1.6 + 2.7 + 10) / 2.7)
    assert agg["sharpened"] == pytest.approx((0.9 + 1.6 + 2.7) / 2.6)  # 0.1 < 0.9 * 0.9: dropped
    assert agg["fedavg"] == pytest.approx((10 + 60 + 180 + 10000) / 200)
    assert agg["median"] == pytest.approx(2.5)
    assert make_aggregator("trimmed_mean", trim=0.25)(cs)["w"][0].item() == pytest.approx(2.5)
    assert agg["krum"] in (1.0, 2.0, 3.0)  # never the outlier
    assert make_aggregator("multi_krum", f=1, m=2)(cs)["w"][0].item() in (pytest.approx(1.5), pytest.approx(2.5))
    out = make_aggregator("median")(cs)
    assert out["steps"].item() == 3 and out["steps"].dtype == torch.int64  # non-float: from the first


def test_krum_with_too_few_models_falls_back_to_the_median():
    # A round can publish fewer models than the scenario has workers: Krum's bound
    # W > f + 2 fails, and both Krum rules take the coordinate-wise median instead.
    few = [_c(1), _c(2), _c(30)]
    for rule in ("krum", "multi_krum"):
        assert make_aggregator(rule, f=1)(few)["w"][0].item() == pytest.approx(2.0)
    # m larger than the models there are is capped at W: the mean of all four
    cs = [_c(1), _c(2), _c(3), _c(4)]
    assert make_aggregator("multi_krum", f=1, m=10)(cs)["w"][0].item() == pytest.approx(2.5)


def _c1(v, score=1.0):
    return Candidate({"w": torch.tensor([float(v)]), "steps": torch.tensor(3)}, score)


def test_norm_bound_pulls_a_scaled_model_back_onto_the_radius():
    # centre = the lower median 2; distances 1, 0, 1, 98, whose lower median is 1;
    # bound 2: radius 2, so 100 goes to 2 + 98 x 2/98 = 4 and the others stay.
    cs = [_c1(1), _c1(2), _c1(3), _c1(100, 0.5)]
    assert [c.state["w"].item() for c in norm_bounded(cs, 2.0)] == [1.0, 2.0, 3.0, 4.0]
    assert norm_bounded(cs, 2.0)[3].score == 0.5 and norm_bounded(cs, 2.0)[3].state["steps"].item() == 3
    plain, bounded = make_aggregator("fedavg"), make_aggregator("fedavg", norm_bound=2.0)
    assert plain(cs)["w"].item() == pytest.approx(26.5)
    assert bounded(cs)["w"].item() == pytest.approx(2.5)
    assert make_aggregator("score_weighted", norm_bound=2.0)(cs)["w"].item() == pytest.approx(8 / 3.5)
    # off, and too few models to tell an outlier: unchanged
    assert norm_bounded(cs, 0.0) == cs and norm_bounded(cs[2:], 2.0) == cs[2:]
    with pytest.raises(ValueError, match="norm bound must be >= 0"):
        make_aggregator("median", norm_bound=-1.0)


def test_norm_bound_on_vectors_keeps_the_direction_and_bounds_the_distance():
    g = torch.Generator().manual_seed(0)
    honest = [Candidate({"w": torch.randn(50, generator=g) * 0.1}) for _ in range(6)]
    scaled = Candidate({"w": honest[0].state["w"] * 40})
    out = norm_bounded([*honest, scaled], 1.5)
    flat = torch.stack([c.state["w"] for c in [*honest, scaled]])
    centre = flat.median(0).values
    dist = (flat - centre).norm(dim=1)
    radius = 1.5 * float(dist.median())
    moved = out[-1].state["w"] - centre
    assert float(moved.norm()) == pytest.approx(radius, rel=1e-5)
    assert torch.nn.functional.cosine_similarity(moved, scaled.state["w"] - centre, dim=0) > 0.9999
    for before, after, d in zip(honest, out, dist.tolist()):
        if d <= radius:
            assert torch.equal(before.state["w"], after.state["w"])


def test_aggregation_does_not_depend_on_the_order_of_a_state_dicts_keys():
    """Bit for bit, whatever order each candidate lists its tensors in (a decoded
    peer model and a worker's own trained one list them differently). The norm bound's
    distances and the weighted sums are float sums over the flattened weights, so a
    layout taken from the first candidate's dict order changed their last bits, and
    with them the round's aggregate and every model after it (issue 8: two full-stack
    runs of one scenario differed from round 2 on)."""
    g = torch.Generator().manual_seed(8)
    base = {"fc.weight": torch.randn(10, 784, generator=g) * 0.05, "fc.bias": torch.randn(10, generator=g) * 0.05}
    states = [{k: v + torch.randn(v.shape, generator=g) * 0.01 for k, v in base.items()} for _ in range(9)]
    states.append({k: torch.randn(v.shape, generator=g) for k, v in base.items()})  # garbage: clipped
    scores = [0.8 + 0.01 * i for i in range(9)] + [0.1]
    forward = [Candidate(s, sc, 100) for s, sc in zip(states, scores)]
    # Every other candidate, the first among them, lists its tensors the other way round.
    mixed = [
        Candidate(dict(reversed(s.items())) if i % 2 == 0 else s, sc, 100)
        for i, (s, sc) in enumerate(zip(states, scores))
    ]
    assert norm_bounded(forward, 2.0)[-1].state is not states[-1]  # the bound acts
    for name in AGGREGATORS:
        for rule in (make_aggregator(name), make_aggregator(name, norm_bound=2.0)):
            want, got = rule(forward), rule(mixed)
            assert list(got) == list(mixed[0].state), name  # in the first candidate's order
            assert all(torch.equal(got[k], want[k]) for k in want), name


def test_a_bounded_rule_reuses_a_threads_last_clipping_only_for_the_same_models():
    """In the plain loop every worker aggregates the same model objects with its own
    scores, so `make_aggregator(..., norm_bound=b)` reuses the thread's last clipping
    when the same objects come again. Whatever the sequence of calls (other scores, the
    same objects in another order, equal values in new objects, another bound), each
    result must equal the rule applied to `norm_bounded` of its own candidates."""
    g = torch.Generator().manual_seed(9)
    states = [{"w": torch.randn(50, generator=g) * 0.1} for _ in range(6)] + [{"w": torch.randn(50, generator=g) * 5}]
    copies = [{k: v + 0.01 for k, v in s.items()} for s in states]  # new objects, other values
    calls = [
        (states, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], 2.0),
        (states, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.9], 2.0),  # the same objects, other scores
        (states[::-1], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], 2.0),  # another order
        (copies, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], 2.0),  # new objects
        (states, [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], 1.0),  # another bound
        (states[:4] + [copies[4]] + states[5:], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3], 1.0),  # one object new
    ]
    params = {"score_weighted": {}, "median": {}, "trimmed_mean": {"trim": 0.2}, "multi_krum": {"f": 1}}
    # one aggregator per rule and bound, as a task has one, used in turn
    rules = {(n, b): make_aggregator(n, norm_bound=b, **p) for n, p in params.items() for b in (1.0, 2.0)}
    for sts, scores, bound in calls * 2:
        cands = [Candidate(s, sc, 10) for s, sc in zip(sts, scores)]
        for name, p in params.items():
            got = rules[(name, bound)](cands)
            want = AGGREGATORS[name](norm_bounded(cands, bound), **p)
            assert torch.equal(got["w"], want["w"]), (name, scores, bound)
    for sts, scores, bound in calls:  # one rule alone, its models changing under it
        cands = [Candidate(s, sc, 10) for s, sc in zip(sts, scores)]
        got = rules[("median", bound)](cands)
        assert torch.equal(got["w"], AGGREGATORS["median"](norm_bounded(cands, bound))["w"]), (scores, bound)


def test_aggregation_input_errors():
    with pytest.raises(ValueError, match="no candidate"):
        make_aggregator("median")([])
    with pytest.raises(ValueError, match="unknown aggregation rule"):
        make_aggregator("mean-ish")
    with pytest.raises(ValueError, match="m must be >= 1"):
        make_aggregator("multi_krum", m=0)([_c(1), _c(2), _c(3), _c(4)])
    # all-zero scores fall back to the plain mean rather than dividing by zero
    assert make_aggregator("score_weighted")([_c(1, 0), _c(3, 0)])["w"][0].item() == pytest.approx(2)


# ---------------------------------------------------------------- training


def test_macro_f1_on_a_known_confusion():
    y = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 1, 1, 1])
    # class 0: P=1, R=.5, F1=2/3; class 1: P=2/3, R=1, F1=.8
    assert score(pred, y, "macro_f1", num_classes=2) == pytest.approx((2 / 3 + 0.8) / 2)
    assert score(pred, y, "accuracy") == 0.75


@pytest.mark.slow
def test_compact_cnn_reaches_97_percent_centrally(mnist):
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(mnist), generator=g)
    model = build_model("compact_cnn", seed=0)
    train(model, mnist, perm[:8000], TrainConfig(epochs=6, batch_size=32, lr=1.5e-3, lr_decay=0.7), seed=0)
    assert evaluate(model, mnist, perm[8000:]) >= 0.97


def test_downloader_verifies_md5_and_falls_back_to_the_next_mirror(tmp_path):
    """The real download code, offline: a local HTTP server serves the shipped t10k files."""
    import functools
    import http.server
    import shutil
    import threading
    from importlib import resources

    from discofl_p2p.ml.datasets import MNIST_FILES, fetch_mnist

    t10k = {k: v for k, v in MNIST_FILES.items() if k.startswith("t10k")}
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir()
    bad.mkdir()
    for name in t10k:
        shutil.copy(resources.files("discofl_p2p.data") / name, good / name)
        (bad / name).write_bytes(b"tampered")
    servers = []
    for root in (bad, good):
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append((srv, f"http://127.0.0.1:{srv.server_address[1]}/{root.name}/"))
    try:
        cache = tmp_path / "cache"
        with pytest.raises(DatasetError, match=r"md5 [0-9a-f]{32} != 9fb629c4189551a2d022fa330f9573f3"):
            fetch_mnist(cache, files=t10k, mirrors=(servers[0][1],))
        assert not list(cache.glob("*.gz"))  # nothing half-downloaded is kept
        fetch_mnist(cache, files=t10k, mirrors=(servers[0][1], servers[1][1]))
        for name in t10k:
            assert (cache / name).read_bytes() == (good / name).read_bytes()
        (cache / next(iter(t10k))).write_bytes(b"corrupted later")
        fetch_mnist(cache, files=t10k, mirrors=(servers[1][1],))  # re-fetched: md5 no longer matched
        assert (cache / next(iter(t10k))).read_bytes() == (good / next(iter(t10k))).read_bytes()
    finally:
        for srv, _ in servers:
            srv.shutdown()


def test_models_with_dropout_train_the_same_on_parallel_threads():
    """The agents train in a thread pool. Dropout masks come from torch's global
    generator, which each job seeds: without the lock, two mnist_cnn jobs at once
    interleave their draws and train other models than one at a time."""
    from discofl_p2p.agents.jobs import initial_state, train_job
    from discofl_p2p.ml.training import _draws_from_global_rng

    w0 = export_initial_model(build_model("mnist_cnn", 1))
    assert _draws_from_global_rng(load_initial_model(w0))
    assert not any(_draws_from_global_rng(build_model(n, 1)) for n in ("compact_cnn", "mlp", "logreg"))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 1, 28, 28, generator=g), torch.randint(0, 10, (256,), generator=g)
    s0 = initial_state(w0)

    def job(seed: int) -> dict[str, torch.Tensor]:
        return train_job(w0, s0, x, y, TrainConfig(epochs=1), seed)

    one_at_a_time = [job(s) for s in range(4)]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        two_at_a_time = list(pool.map(job, range(4)))
    for a, b in zip(one_at_a_time, two_at_a_time, strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
