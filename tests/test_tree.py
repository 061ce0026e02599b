"""Recursive (tree) networks: parsing, batching, BPTS gradients, PyTorch oracle."""
import helpers
import numpy as np
import pytest

import unrolled.layers.tree as tree_mod
from unrolled.data.trees import (
    Tree,
    TreeVocab,
    as_tree,
    batch_trees,
    binarize,
    flatten_tree,
    format_tree,
    parse_tree,
    parse_trees,
    to_tuples,
)
from unrolled.layers.tree import RecursiveNet, softmax_cross_entropy
from unrolled.tree import tree_flatten

SST = "(3 (2 It) (4 (2 's) (3 (2 very) (3 good))))"


# ----------------------------------------------------------------------------- helpers

def random_tree(rng, depth, vocab_size, max_arity, num_classes):
    """A random labelled tree of int tokens, at most ``depth`` levels, arity 1..max_arity."""
    label = int(rng.integers(num_classes))
    if depth == 0 or rng.random() < 0.25:
        return Tree(token=int(rng.integers(vocab_size)), label=label)
    arity = int(rng.integers(1, max_arity + 1))
    kids = tuple(random_tree(rng, depth - 1, vocab_size, max_arity, num_classes)
                 for _ in range(arity))
    return Tree(children=kids, label=label)


def random_forest(seed, n=5, depth=4, vocab_size=7, max_arity=2, num_classes=3):
    rng = np.random.default_rng(seed)
    trees = [random_tree(rng, depth, vocab_size, max_arity, num_classes) for _ in range(n)]
    # one single-leaf tree and one deep left spine, so both extremes are always covered
    trees.append(Tree(token=1, label=0))
    spine = Tree(token=2, label=1)
    for k in range(5):
        spine = Tree(children=(spine, Tree(token=k % vocab_size, label=2)), label=k % 3)
    return trees + [spine]


def flat_grads(tree):
    """``{"embedding", "W", "b", "out/weight", "out/bias"}``: leaves of params or grads."""
    return tree_flatten(tree)


def numeric_grads(net, loss_fn, eps=1e-6):
    """Central differences of ``loss_fn()`` on every entry of every parameter."""
    flat = flat_grads(net.params)  # views: helpers.numeric_grads nudges them in place
    return dict(zip(flat, helpers.numeric_grads(loss_fn, list(flat.values()), eps)))


def rel_error(a, n):
    """|a - n| / (|a| + |n|), on the whole array (2-norms): robust to zero entries."""
    return np.linalg.norm(a - n) / max(np.linalg.norm(a) + np.linalg.norm(n), 1e-30)


def max_rel_error(analytic, numeric):
    return max(rel_error(analytic[k], numeric[k]) for k in numeric)


# ----------------------------------------------------------------------------- parsing

def test_parse_sst_labels_and_round_trip():
    t = parse_tree(SST, labelled=True)
    assert t.label == 3 and len(t.children) == 2
    assert t.children[0] == Tree(token="It", label=2)
    assert t.leaves() == ["It", "'s", "very", "good"]
    assert [n.label for n in t.nodes()] == [2, 2, 2, 3, 3, 4, 3]  # post-order, root last
    assert format_tree(t) == SST
    assert format_tree(t, labelled=False) == "(It ('s (very good)))"


def test_parse_plain_penn_style_and_tuples():
    t = parse_tree("((a b) c)")
    assert to_tuples(t) == (("a", "b"), "c")
    assert as_tree((("a", "b"), "c")) == t
    penn = parse_tree("(S (NP (DT the) (NN cat)) (VP (VBZ sleeps)))", labelled=True)
    assert penn.label == "S" and penn.leaves() == ["the", "cat", "sleeps"]
    assert len(penn.children[1].children) == 1  # unary VP kept
    assert parse_tree("word") == Tree(token="word")
    assert format_tree(parse_tree("  (a\n\t(b c)  d )")) == "(a (b c) d)"


@pytest.mark.parametrize("text, where", [
    ("((a b) c", "position 0"),
    ("(a (b c)", "position 0"),
    ("(a b))", "position 5"),
    (")a(", "position 0"),
])
def test_unbalanced_brackets_report_position(text, where):
    with pytest.raises(ValueError, match="unbalanced") as e:
        parse_tree(text)
    assert where in str(e.value)


def test_parse_errors_name_the_problem():
    with pytest.raises(ValueError, match="empty bracket"):
        parse_tree("(a ())")
    with pytest.raises(ValueError, match="after the end of the tree"):
        parse_tree("(a b) (c d)")
    with pytest.raises(ValueError, match="starts with a bracket, not a label"):
        parse_tree("((a b) c)", labelled=True)
    with pytest.raises(ValueError, match="line 2"):
        parse_trees("(1 (0 a) (1 b))\n(1 (0 a)\n", labelled=True)
    with pytest.raises(ValueError, match="cannot be written"):
        format_tree(("a b", "c"))
    with pytest.raises(TypeError, match="parse_tree"):
        parse_tree(("a", "b"))


def test_vocab_and_unknown_tokens():
    trees = [parse_tree("((a b) a)"), parse_tree("(b c)")]
    v = TreeVocab.build(trees)
    assert v.tokens[0] == "<unk>" and set(v.tokens) == {"<unk>", "a", "b", "c"}
    assert v.index("zzz") == 0
    strict = TreeVocab.build(trees, unk=None)
    with pytest.raises(ValueError, match="unknown leaf token 'zzz'"):
        strict.index("zzz")
    assert TreeVocab.build(trees, min_count=2).tokens == ["<unk>", "a", "b"]


def test_binarize_and_arity_error():
    t = parse_tree("(a b c d)")
    assert format_tree(binarize(t)) == "(a (b (c d)))"
    assert format_tree(binarize(t, right=False)) == "(((a b) c) d)"
    with pytest.raises(ValueError, match="max_arity=2"):
        flatten_tree(t, TreeVocab.build([t]), max_arity=2)


def test_shared_subtree_object_becomes_two_nodes():
    leaf, pair = Tree(token=1, label=0), Tree(children=(Tree(token=2), Tree(token=3)))
    shared = Tree(children=(pair, pair, leaf, leaf))
    fresh = as_tree(((2, 3), (2, 3), 1, 1))
    a, b = flatten_tree(shared, max_arity=4), flatten_tree(fresh, max_arity=4)
    np.testing.assert_array_equal(a.children, b.children)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    net = RecursiveNet(vocab=4, hidden_size=3, max_arity=4, dtype="float64")
    out_s, cache_s = net.forward([shared], all_nodes=True)
    out_f, cache_f = net.forward([fresh], all_nodes=True)
    np.testing.assert_array_equal(out_s, out_f)
    dY = np.ones_like(out_s)
    np.testing.assert_array_equal(net.backward(cache_s, dY)["embedding"],
                                  net.backward(cache_f, dY)["embedding"])


def test_batch_levels_are_sorted_by_height():
    trees = random_forest(0, n=8, max_arity=3)
    b = batch_trees(trees, max_arity=3)
    assert b.num_nodes == sum(len(t) for t in trees) and b.depth == max(t.height() for t in trees)
    for start, stop, kids in b.levels:  # every child row is computed before its parent
        assert ((kids < start) | (kids == b.num_nodes)).all()
    real = np.concatenate([k[k < b.num_nodes] for _, _, k in b.levels])
    assert len(real) == b.num_nodes - b.num_trees == len(np.unique(real))  # one parent each
    assert list(b.root_labels) == [t.label for t in trees]


# ----------------------------------------------------------------------------- layer basics

def test_params_dtype_seed_and_assignment():
    net = RecursiveNet(vocab=6, hidden_size=4, num_classes=3, max_arity=3, seed=1)
    p = net.params
    assert p["embedding"].shape == (6, 4) and p["W"].shape == (4, 12) and p["b"].shape == (4,)
    assert p["out"]["weight"].shape == (3, 4) and p["out"]["bias"].shape == (3,)
    assert all(a.dtype == np.float32 for a in (p["embedding"], p["W"], p["out"]["weight"]))
    logits, _ = net.forward([((0, 1), 2)])
    assert logits.dtype == np.float32
    same = RecursiveNet(vocab=6, hidden_size=4, num_classes=3, max_arity=3, seed=1)
    other = RecursiveNet(vocab=6, hidden_size=4, num_classes=3, max_arity=3, seed=2)
    assert np.array_equal(same.params["W"], p["W"]) and not np.allclose(other.params["W"], p["W"])
    new = {**other.params}
    net.params = new
    assert np.array_equal(net.params["W"], other.params["W"])
    with pytest.raises(ValueError, match="shape"):
        net.params = {**new, "W": np.zeros((4, 8))}
    with pytest.raises(ValueError, match="structure"):
        net.params = {k: v for k, v in new.items() if k != "b"}
    with pytest.raises(ValueError, match="outside 0..5"):
        net.forward([(0, 9)])
    with pytest.raises(ValueError, match="max_arity"):
        net.forward([(0, 1, 2, 3)])


def test_config_round_trip_rebuilds_the_same_network():
    trees = [parse_tree("(1 (0 a) (1 (1 b) (0 c)))", labelled=True)]
    v = TreeVocab.build(trees)
    net = RecursiveNet(v, hidden_size=3, num_classes=2, activation="relu", seed=4)
    assert repr(RecursiveNet.from_config(net.get_config())) == repr(net)
    twin = RecursiveNet.from_config({**net.get_config(), "seed": 9})
    assert twin.vocab.tokens == v.tokens and twin.activation == "relu"
    assert not np.allclose(twin(trees, all_nodes=True), net(trees, all_nodes=True))
    twin.params = net.params
    np.testing.assert_array_equal(twin(trees, all_nodes=True), net(trees, all_nodes=True))
    assert net.num_params() == 4 * 3 + 3 * 6 + 3 + 2 * 3 + 2


def test_tanh_inner_node_by_hand():
    net = RecursiveNet(vocab=3, hidden_size=2, dtype="float64")
    E, W, b = net.params["embedding"], net.params["W"], net.params["b"]
    h, _ = net.forward([((0, 1), 2), (2,)])
    h01 = np.tanh(W @ np.concatenate([E[0], E[1]]) + b)
    assert np.allclose(h[0], np.tanh(W @ np.concatenate([h01, E[2]]) + b), atol=1e-14)
    # a unary node reads only the first D columns of W: the missing child is a zero state
    assert np.allclose(h[1], np.tanh(W[:, :2] @ E[2] + b), atol=1e-14)


def test_leaf_only_trees_and_chains():
    net = RecursiveNet(vocab=4, hidden_size=3, max_arity=1, dtype="float64")
    E, W, b = net.params["embedding"], net.params["W"], net.params["b"]
    h, _ = net.forward([0, 2])  # single-leaf trees: the root state is the embedding
    np.testing.assert_array_equal(h, E[[0, 2]])
    h, _ = net.forward([((3,),)])  # a unary chain of two inner nodes
    np.testing.assert_allclose(h[0], np.tanh(W @ np.tanh(W @ E[3] + b) + b), atol=1e-14)


def test_softmax_cross_entropy_matches_definition():
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(4, 3)), np.array([0, 2, 1, 2])
    loss, d = softmax_cross_entropy(z, y)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert np.isclose(loss, -np.log(p[np.arange(4), y]).mean())
    assert np.allclose(d, (p - np.eye(3)[y]) / 4)


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("all_nodes", [False, True])
@pytest.mark.parametrize("max_arity, activation", [(2, "tanh"), (3, "tanh"), (2, "relu")])
def test_finite_differences_every_parameter(all_nodes, max_arity, activation):
    trees = random_forest(1, n=4, max_arity=max_arity)
    net = RecursiveNet(vocab=7, hidden_size=4, num_classes=3, max_arity=max_arity,
                       activation=activation, dtype="float64", seed=3)
    batch = net.compile(trees)
    _, grads = net.value_and_grad(batch, all_nodes=all_nodes)
    num = numeric_grads(net, lambda: net.value_and_grad(batch, all_nodes=all_nodes)[0])
    for k, n in num.items():
        assert np.abs(n).max() > 0, f"{k}: the numeric gradient is all zero"
        a = flat_grads(grads)[k]
        assert rel_error(a, n) <= 1e-6, k
        # entry by entry too, with a floor so that entries that are 0 compare absolutely
        assert (np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), 1e-6)).max() <= 1e-6, k


def test_finite_differences_hidden_states_without_classifier():
    """Loss sum(H * R) with random R on every node state: the hash-like check of backward."""
    trees = random_forest(2, n=3, max_arity=3)
    net = RecursiveNet(vocab=7, hidden_size=3, max_arity=3, dtype="float64", seed=4)
    batch = net.compile(trees)
    R = np.random.default_rng(5).normal(size=(batch.num_nodes, 3))
    loss = lambda: float((net.forward(batch, all_nodes=True)[0] * R).sum())
    _, cache = net.forward(batch, all_nodes=True)
    grads = net.backward(cache, R)
    num = numeric_grads(net, loss)
    assert max_rel_error(flat_grads(grads), num) <= 1e-6


def test_negative_controls_fail_the_check(monkeypatch):
    """The check is sharp: plausible BPTS bugs give errors far above the tolerance."""
    trees = random_forest(1, n=4)
    net = RecursiveNet(vocab=7, hidden_size=4, num_classes=3, dtype="float64", seed=3)
    batch = net.compile(trees)
    num = numeric_grads(net, lambda: net.value_and_grad(batch, all_nodes=True)[0])
    good = flat_grads(net.value_and_grad(batch, all_nodes=True)[1])
    assert max_rel_error(good, num) <= 1e-6
    # 1) left and right children swapped in dW
    swapped = {**good, "W": np.concatenate([good["W"][:, 4:], good["W"][:, :4]], axis=1)}
    assert max_rel_error(swapped, num) > 1e-2
    # 2) the tanh derivative forgotten when passing error terms down the tree
    monkeypatch.setattr(tree_mod, "_act_grad", lambda name, h: np.ones_like(h))
    forgot = flat_grads(net.value_and_grad(batch, all_nodes=True)[1])
    assert max_rel_error(forgot, num) > 1e-2
    # 3) a tiny perturbation of one entry is already visible
    monkeypatch.undo()
    nudged = {k: v.copy() for k, v in good.items()}
    nudged["W"][0, 0] += 1e-4
    assert rel_error(nudged["W"], num["W"]) > 1e-6


# ----------------------------------------------------------------------------- batching

@pytest.mark.parametrize("has_classifier", [True, False])
def test_batched_equals_one_tree_at_a_time(has_classifier):
    trees = random_forest(3, n=6, max_arity=3)
    C = 3 if has_classifier else None
    net = RecursiveNet(vocab=7, hidden_size=5, num_classes=C, max_arity=3, dtype="float64",
                       seed=6)
    out, cache = net.forward(trees, all_nodes=True)
    dY = np.random.default_rng(7).normal(size=out.shape)
    grads = net.backward(cache, dY)
    total = {k: np.zeros_like(v) for k, v in flat_grads(grads).items()}
    rows, i = [], 0
    for t in trees:
        o, c = net.forward([t], all_nodes=True)
        rows.append(o)
        for k, g in flat_grads(net.backward(c, dY[i:i + len(t)])).items():
            total[k] += g
        i += len(t)
    np.testing.assert_allclose(out, np.concatenate(rows), atol=1e-13)
    for k, g in total.items():
        np.testing.assert_allclose(flat_grads(grads)[k], g, atol=1e-12, err_msg=k)
    roots, _ = net.forward(trees)
    np.testing.assert_allclose(roots, np.concatenate([r[-1:] for r in rows]), atol=1e-13)


def test_batched_loss_is_mean_of_tree_losses():
    trees = random_forest(4, n=5)
    net = RecursiveNet(vocab=7, hidden_size=4, num_classes=3, dtype="float64", seed=8)
    loss, grads = net.value_and_grad(trees)
    per = [net.value_and_grad([t]) for t in trees]
    assert np.isclose(loss, np.mean([lo for lo, _ in per]), atol=1e-13)
    np.testing.assert_allclose(grads["W"], np.mean([g["W"] for _, g in per], axis=0), atol=1e-13)


def test_unlabelled_nodes_are_skipped_in_all_nodes_loss():
    t = parse_tree("(1 (0 a) (1 b))", labelled=True)
    plain = Tree(children=(Tree(token="a"), Tree(token="b", label=1)), label=1)
    v = TreeVocab.build([t])
    net = RecursiveNet(v, hidden_size=3, num_classes=2, dtype="float64")
    full, _ = net.value_and_grad([t], all_nodes=True)
    part, _ = net.value_and_grad([plain], all_nodes=True)
    logits, _ = net.forward([t], all_nodes=True)
    each = [softmax_cross_entropy(logits[i:i + 1], np.array([y]))[0]
            for i, y in enumerate([0, 1, 1])]
    assert np.isclose(full, np.mean(each)) and np.isclose(part, np.mean(each[1:]))
    with pytest.raises(ValueError, match="no root label"):
        net.value_and_grad([t, parse_tree("(a b)")])


def test_string_labels_through_label_map():
    t = parse_tree("(S (NP (DT the) (NN cat)) (VP (VBZ sleeps)))", labelled=True)
    classes = {k: i for i, k in enumerate(["S", "NP", "VP", "DT", "NN", "VBZ"])}
    net = RecursiveNet(TreeVocab.build([t]), hidden_size=3, num_classes=6, label_map=classes,
                       dtype="float64")
    batch = net.compile([t])
    assert list(batch.labels) == [3, 4, 1, 5, 2, 0]  # post-order: DT NN NP VBZ VP S
    loss, _ = net.value_and_grad(batch, all_nodes=True)
    assert np.isfinite(loss)
    with pytest.raises(TypeError, match="label_map"):
        RecursiveNet(TreeVocab.build([t]), hidden_size=3, num_classes=6).compile([t])


# ----------------------------------------------------------------------------- oracle

@pytest.mark.parametrize("all_nodes", [False, True])
@pytest.mark.parametrize("max_arity, activation", [(2, "tanh"), (3, "relu")])
def test_matches_torch_autograd_over_the_same_tree(all_nodes, max_arity, activation):
    torch = pytest.importorskip("torch")
    trees = random_forest(5, n=6, max_arity=max_arity)
    net = RecursiveNet(vocab=7, hidden_size=5, num_classes=3, max_arity=max_arity,
                       activation=activation, dtype="float64", seed=9)
    loss, grads = net.value_and_grad(trees, all_nodes=all_nodes)

    P = {k: torch.tensor(v, requires_grad=True) for k, v in flat_grads(net.params).items()}
    act = torch.tanh if activation == "tanh" else torch.relu
    D = net.hidden_size
    logits, labels = [], []

    def run(node):  # one node at a time, recursively: independent of the level batching
        if node.is_leaf:
            h = P["embedding"][node.token]
        else:
            kids = [run(c) for c in node.children]
            kids += [torch.zeros(D, dtype=torch.float64)] * (max_arity - len(kids))
            h = act(P["W"] @ torch.cat(kids) + P["b"])
        if all_nodes and node.label is not None:
            logits.append(P["out/weight"] @ h + P["out/bias"])
            labels.append(node.label)
        return h

    for t in trees:
        h = run(t)
        if not all_nodes:
            logits.append(P["out/weight"] @ h + P["out/bias"])
            labels.append(t.label)
    tloss = torch.nn.functional.cross_entropy(torch.stack(logits), torch.tensor(labels))
    tloss.backward()
    assert abs(loss - tloss.item()) <= 1e-9
    for k, g in flat_grads(grads).items():
        np.testing.assert_allclose(g, P[k].grad.numpy(), rtol=0, atol=1e-9, err_msg=k)


# ----------------------------------------------------------------------------- learning

def test_learns_a_small_tree_task():
    """A few hundred steps of SGD fit the parity of a few tiny trees (loss falls 10x)."""
    trees = [((0, 1), 1), (0, (0, 0)), ((1, 1), (1, 0)), (1, 0), ((0, 0), 1), (0, 1)]
    labels = [sum(as_tree(t).leaves()) % 2 for t in trees]  # parity of the ones
    net = RecursiveNet(vocab=2, hidden_size=8, num_classes=2, dtype="float64", seed=0)
    batch = net.compile(trees)
    first, _ = net.value_and_grad(batch, labels)
    for _ in range(300):
        loss, g = net.value_and_grad(batch, labels)
        for k in ("embedding", "W", "b"):
            net.params[k] -= 0.5 * g[k]
        for k in ("weight", "bias"):
            net.params["out"][k] -= 0.5 * g["out"][k]
    assert loss < first / 10
    assert (net.predict(batch) == labels).all()


def test_expression_example_runs_and_labels_are_values():
    """The example's generator labels every node with its value; a tiny run completes."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "examples" / "tree_expressions.py"
    spec = importlib.util.spec_from_file_location("tree_expressions", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    rng = np.random.default_rng(0)
    task = ex.TASKS["mod5"]
    for t in (ex.random_expr(rng, 3, task) for _ in range(20)):
        for node in t.nodes():  # recompute each operator node's value from its children
            if not node.is_leaf:
                op, *args = node.children
                assert node.label == task["ops"][op.token][1](*(a.label for a in args))
    old_argv = sys.argv
    sys.argv = ["x", "--task", "logic", "--train-per-depth", "40", "--test-per-depth", "20",
                "--test-depth", "5", "--epochs", "1"]
    try:
        ex.main()
    finally:
        sys.argv = old_argv
