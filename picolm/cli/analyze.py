"""`picolm analyze`: embedding PCA, attention maps and neuron statistics of a trained model."""

from __future__ import annotations

from picolm.cli.common import Formatter, count, device, output_folder


def register(verbs) -> None:
    p = verbs.add_parser("analyze", formatter_class=Formatter, help="look inside a model: embeddings, attention, neurons",
                         description="Report-ready plots of what a model learned, written to --out: embedding_pca.png "
                                     "(token embeddings on their first two principal components, coloured by token "
                                     "kind), attention.png (attention weights per layer and head for --text; for "
                                     "linear attention, the normalised kernel weights), and neurons.png with "
                                     "neurons.json (which MLP units respond to which numeric sequence kind; numeric "
                                     "data only).")
    p.add_argument("target", metavar="RUN_DIR", help="run directory (best checkpoint) or checkpoint file")
    p.add_argument("--what", default="pca,attention,neurons", help="comma-separated: pca, attention, neurons")
    p.add_argument("--text", default=None,
                   help="attention: the input to show (default: the first validation document of the run's data)")
    p.add_argument("--data", default=None, help="neurons: a numeric data directory (default: the run's)")
    p.add_argument("--out", type=output_folder, default=None, help="folder for the plots (default: RUN_DIR/analysis)")
    p.add_argument("--max-windows", type=count(1), default=256,
                   help="neurons: at most this many validation windows to average over, evenly spread")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.set_defaults(run=run)


def run(args) -> int:
    from picolm.analysis.interpret import analyze_run

    for path in analyze_run(args.target, args.what, args.text, args.data, args.out, args.max_windows,
                            device(args.device)):
        print(f"wrote {path}")
    return 0
