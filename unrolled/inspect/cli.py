"""``unrolled inspect MODEL --input TEXT --out DIR``: the inspection report of a model."""
from ..cli import register_command


def _add_inspect(sub):
    p = sub.add_parser(
        "inspect", help="write an HTML report of what a model does with one input",
        description="Write DIR/index.html with drawings of the network, its states and gates "
                    "over the input, the gradient flow over time (||dL/dh_t||, per-step "
                    "shares of the weight gradients, Jacobian singular values), the pictures "
                    "as PNG and SVG and the raw arrays (arrays.npz).")
    p.add_argument("model", help="model directory (the --out of train) or .npz file")
    p.add_argument("--input", required=True,
                   help="one record in the task's own form: a name (names), a text prime "
                        "(text), 64 comma-separated values (digits), or a window of numbers "
                        "with one row per step, rows separated by ';' (series)")
    p.add_argument("--out", required=True, help="folder for the report")
    return p


def _run_inspect(args):
    from .report import cli_inspect

    path = cli_inspect(args.model, args.input, args.out)
    print(f"report: {path}", flush=True)
    return 0


register_command("inspect", _add_inspect, _run_inspect)
