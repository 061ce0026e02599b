"""Evaluate expression trees with a recursive (tree) network: logic, and arithmetic mod 5.

Each example is an expression tree written with the operator as its first child, e.g.
``(and T (not (or F F)))`` or ``(+ 3 (* 4 2))``; its label is its value. Two tasks:

- ``logic``: constants T, F; ``and``, ``or``, ``xor``, ``implies`` (binary), ``not`` (unary);
  2 classes.
- ``mod5``: digits 0..4; ``+``, ``-``, ``*`` modulo 5; 5 classes.

Every sub-expression carries its value as a label (SST-style: one label per node; operator
tokens are unlabelled). The network composes ``h = tanh(W [h_op; h_arg1; h_arg2] + b)``
with ``max_arity=3`` (``not`` has two children and is zero-padded) and classifies h.

Training uses expressions of depth 1..4 (depth = nesting of operators); the test sets hold
unseen expressions of each depth up to 12, to measure how far the composition generalises
beyond the depths seen in training. Root labels are balanced over the classes, so the
majority baseline is 1/C. Each task is trained twice: loss on the root only, and loss on
every labelled node (mean over nodes).

    python examples/tree_expressions.py            # both tasks, about a minute on one core
    python examples/tree_expressions.py --task mod5 --json figures.json
    python examples/tree_expressions.py --quick    # a smoke run, small data
"""
import argparse
import json
import time

import numpy as np

from unrolled.data.trees import Tree, TreeVocab, batch_trees, flatten_tree, format_tree
from unrolled.layers.tree import RecursiveNet
from unrolled.optim import Adam, clip_grad_norm

# a task: leaf values and their tokens, operators (arity, function), number of classes
TASKS = {
    "logic": {
        "leaves": {0: "F", 1: "T"},
        "ops": {
            "and": (2, lambda a, b: a & b),
            "or": (2, lambda a, b: a | b),
            "xor": (2, lambda a, b: a ^ b),
            "implies": (2, lambda a, b: (1 - a) | b),
            "not": (1, lambda a: 1 - a),
        },
        "classes": 2,
    },
    "mod5": {
        "leaves": {v: str(v) for v in range(5)},
        "ops": {
            "+": (2, lambda a, b: (a + b) % 5),
            "-": (2, lambda a, b: (a - b) % 5),
            "*": (2, lambda a, b: (a * b) % 5),
        },
        "classes": 5,
    },
}


def random_expr(rng, depth: int, task) -> Tree:
    """A random expression whose operator nesting is exactly ``depth`` (0 = a constant).

    Every node is labelled with its value; operator tokens are unlabelled leaves.
    """
    if depth == 0:
        v = int(rng.integers(len(task["leaves"])))
        return Tree(token=task["leaves"][v], label=v)
    names = list(task["ops"])
    op = names[rng.integers(len(names))]
    arity, fn = task["ops"][op]
    # one argument carries the full depth, the others are shallower, at a random position
    args = [random_expr(rng, int(rng.integers(depth)), task) for _ in range(arity - 1)]
    args.insert(int(rng.integers(arity)), random_expr(rng, depth - 1, task))
    value = fn(*(a.label for a in args))
    return Tree(children=(Tree(token=op), *args), label=int(value))


def expr_key(t: Tree) -> str:
    """The plain bracketed text of an expression (format_tree without its checks)."""
    if t.is_leaf:
        return t.token
    return "(" + " ".join(expr_key(c) for c in t.children) + ")"


def make_split(rng, task, depths, n_per_depth, exclude=frozenset()):
    """Up to ``n_per_depth`` distinct expressions per depth, root labels balanced over the
    classes. Shallow depths have few distinct expressions: sampling stops after a long run
    of duplicates, so they hold fewer."""
    C = task["classes"]
    out, seen = [], set(exclude)
    for d in depths:
        want = [n_per_depth // C + (c < n_per_depth % C) for c in range(C)]
        misses = 0
        while sum(want) > 0 and misses < 2000:
            t = random_expr(rng, d, task)
            key = expr_key(t)
            if want[t.label] > 0 and key not in seen:
                seen.add(key)
                want[t.label] -= 1
                out.append((d, t))
                misses = 0
            else:
                misses += 1
    return out, seen


def train(flats, args, task, vocab, all_nodes):
    """Adam on mini-batches; ``all_nodes`` puts the loss on every labelled node."""
    net = RecursiveNet(vocab, args.hidden, num_classes=task["classes"], max_arity=3,
                       seed=args.seed)
    opt = Adam(args.lr)
    rng = np.random.default_rng(args.seed)
    n = len(flats)
    for epoch in range(args.epochs):
        perm = rng.permutation(n)
        total, count = 0.0, 0
        for s in range(0, n, args.batch):
            batch = batch_trees([flats[i] for i in perm[s:s + args.batch]], max_arity=3)
            loss, grads = net.value_and_grad(batch, all_nodes=all_nodes)
            grads, _ = clip_grad_norm(grads, 5.0)
            opt.step(net.params, grads)  # in place
            total, count = total + loss, count + 1
        print(f"  epoch {epoch + 1:2d}  loss {total / count:.4f}")
    return net


def accuracy_by_depth(net, split, vocab):
    """Root accuracy per depth, each depth's test trees as one batch."""
    res = {}
    for d in sorted({d for d, _ in split}):
        ts = [t for dd, t in split if dd == d]
        pred = net.predict(batch_trees([flatten_tree(t, vocab, 3) for t in ts], max_arity=3))
        res[d] = float((pred == np.array([t.label for t in ts])).mean())
    return res


def run_task(name, args):
    """Generate one task's data, train with both losses, return the figures."""
    task = TASKS[name]
    t0 = time.time()
    rng = np.random.default_rng(args.seed)
    train_split, seen = make_split(rng, task, range(1, args.train_depth + 1),
                                   args.train_per_depth)
    test_split, _ = make_split(rng, task, range(1, args.test_depth + 1), args.test_per_depth,
                               exclude=seen)  # no test expression was seen in training
    # shallow depths have few distinct expressions, mostly taken by training: report the
    # depths with at least 20 unseen test trees
    sizes = {d: sum(dd == d for dd, _ in test_split) for d in range(1, args.test_depth + 1)}
    depths = [d for d, n in sizes.items() if n >= 20]
    test_split = [(d, t) for d, t in test_split if d in depths]
    trees = [t for _, t in train_split]
    vocab = TreeVocab.build(trees, unk=None)
    flats = [flatten_tree(t, vocab, max_arity=3) for t in trees]
    print(f"task {name}: {len(trees)} training expressions (depth 1-{args.train_depth}, "
          f"{sum(len(f) for f in flats)} nodes), {len(test_split)} unseen test expressions; "
          f"{time.time() - t0:.1f} s to generate")
    print("  example:", format_tree(trees[-1], labelled=False), "=", trees[-1].label)
    # majority baseline: the most frequent root label of the training set
    majority = int(np.bincount([t.label for t in trees]).argmax())
    res = {"train trees": len(trees), "train nodes": int(sum(len(f) for f in flats)),
           "test trees": {d: sizes[d] for d in depths},
           "majority": {d: float(np.mean([t.label == majority for dd, t in test_split
                                          if dd == d])) for d in depths}}
    for loss_name, all_nodes in (("root loss", False), ("all-nodes loss", True)):
        print(f"  training with the {loss_name}")
        ts = time.time()
        net = train(flats, args, task, vocab, all_nodes)
        res[loss_name] = accuracy_by_depth(net, test_split, vocab)
        res["seconds, " + loss_name] = round(time.time() - ts, 1)
    return res


def print_table(name, res, args):
    depths = list(res["majority"])
    print(f"\n{name}: root accuracy on unseen expressions (depth 1-{args.train_depth} as in "
          f"training, deeper beyond)")
    print(f"{'depth':>16} " + " ".join(f"{d:>5d}" for d in depths))
    print(f"{'test trees':>16} " + " ".join(f"{res['test trees'][d]:5d}" for d in depths))
    for row in ("majority", "root loss", "all-nodes loss"):
        print(f"{row:>16} " + " ".join(f"{res[row][d]:5.3f}" for d in depths))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS) + ["all"], default="all")
    ap.add_argument("--train-depth", type=int, default=4, help="train on depths 1..this")
    ap.add_argument("--test-depth", type=int, default=12, help="test on depths 1..this")
    ap.add_argument("--train-per-depth", type=int, default=4000)
    ap.add_argument("--test-per-depth", type=int, default=500)
    ap.add_argument("--hidden", type=int, default=48)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small data, 3 epochs (a smoke run)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if args.quick:
        args.train_per_depth, args.test_per_depth, args.epochs = 500, 100, 3

    t0 = time.time()
    names = sorted(TASKS) if args.task == "all" else [args.task]
    results = {name: run_task(name, args) for name in names}
    for name in names:
        print_table(name, results[name], args)
    print(f"\ntotal {time.time() - t0:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), **results}, f, indent=1)


if __name__ == "__main__":
    main()
