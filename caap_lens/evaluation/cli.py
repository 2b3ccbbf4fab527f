"""``caap-lens evaluate``: the evaluation harness from the command line.

    caap-lens evaluate runs/cmp                                   # bundled model, bundled scenes, default plan
    caap-lens evaluate runs/cmp --plan plan.toml                  # a plan file (see `caap_lens.evaluation.plan`)
    caap-lens evaluate runs/cmp --methods caap,rollout,random --metrics deletion,pointing --limit 20
    caap-lens evaluate runs/in --data photos/ --labels labels.csv --model vit_small_patch16_224
    torchrun --nproc_per_node 2 -m caap_lens evaluate runs/cmp    # 2 ranks (gloo on CPU, one GPU each)
    caap-lens evaluate runs/cmp --merge                           # tables of whatever the store holds

Resuming is the default: run the same command again after a kill and it skips every committed item.
Flags given with ``--plan`` override the file's values. Tables go to ``results.md``, ``results.html``
and ``results.json`` in the store (or ``--out``). Bad input — an unknown method, metric or policy, a
missing data folder or plan file, a store of another plan — exits with status 2 and one line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

DEFAULT_STORE = "caap_lens_eval"


def default_methods() -> list[str]:
    """Every method in `caap_lens.baselines.METHODS`, then the ``random`` reference row."""
    from caap_lens.baselines import METHODS

    return [*METHODS, "random"]


ModelLoader = Callable[[argparse.Namespace], tuple[Any, str, Any]]  # args -> (model, description, bundled name)


def add_parser(sub: Any, load_model: ModelLoader) -> argparse.ArgumentParser:
    """Registers ``evaluate`` on the ``caap-lens`` subparsers.

    ``load_model`` turns ``--model`` and friends into a model (``caap_lens.cli.load_model``): the
    main CLI hands it over, so this module never imports the layer above it.
    """
    ev = sub.add_parser("evaluate", help="score attribution methods over a data set (resumable, sharded)",
                        description=__doc__.split("\n\n")[0].strip() + " Runs a plan of methods x metrics "
                        "into a results store, resumably, on one process or under torchrun.",
                        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    ev.add_argument("store", nargs="?", default=DEFAULT_STORE, metavar="STORE",
                    help=f"results store directory (default: ./{DEFAULT_STORE})")
    p = ev.add_argument_group("plan")
    p.add_argument("--plan", metavar="FILE.toml", help="plan file (TOML)")
    p.add_argument("--methods", metavar="A,B,...", help="method rows (default: every method in caap_lens.baselines.METHODS, then random)")
    p.add_argument("--metrics", metavar="A,B,...", help="metrics (default: the curves and the localisation metrics)")
    p.add_argument("--targets", metavar="POLICY", help="predicted | labelled | all_present (default: all_present)")
    p.add_argument("--split", metavar="SPLIT", help="all | dev | test (default: all)")
    p.add_argument("--score", metavar="NAME", help="score of the curves (default: sigmoid for the bundled model, else prob)")
    p.add_argument("--curve-steps", type=int, metavar="N", help="deletion/insertion steps (default: one per patch)")
    p.add_argument("--reference", metavar="ROW", help="row the paired differences are taken against")
    p.add_argument("--chunk", type=int, metavar="N", help="items per committed chunk (default: 16)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per forward pass in the metrics")
    p.add_argument("--limit", type=int, metavar="N", help="first N items of the split")
    p.add_argument("--save-maps", action="store_true", help="also save every map (npz shards)")
    d = ev.add_argument_group("data")
    d.add_argument("--data", metavar="bundled|FOLDER|hf:PATH",
                   help="bundled (the bundled model's held-out scenes; default for a bundled model), an image "
                        "folder, or a Hugging Face dataset (hf:DIR or hf:NAME)")
    d.add_argument("--masks", metavar="DIR", help="masks folder for an image folder (matching stems)")
    d.add_argument("--labels", metavar="CSV", help="labels CSV for an image folder (columns file, labels)")
    d.add_argument("--hf-split", default="test", help="split of a Hugging Face dataset (default: test)")
    d.add_argument("--image-column", default="image")
    d.add_argument("--label-column", default="label")
    m = ev.add_argument_group("model")
    m.add_argument("--model", default="fashion-scenes-vit", metavar="NAME|FILE",
                   help="bundled model name, timm model name, or checkpoint file with --arch")
    m.add_argument("--arch", metavar="TIMM_NAME")
    m.add_argument("--num-classes", type=int, metavar="N")
    m.add_argument("--class-names", metavar="FILE|A,B,...")
    m.add_argument("--timm-arg", action="append", default=[], metavar="KEY=VALUE")
    r = ev.add_argument_group("running")
    r.add_argument("--merge", action="store_true", help="only merge the store into tables (no model needed)")
    r.add_argument("--no-resume", action="store_true", help="refuse a store that already has results")
    r.add_argument("--out", metavar="DIR", help="where results.md/.html/.json go (default: the store)")
    r.add_argument("--device", default="cpu", help="torch device (default: cpu; 'cuda' = one GPU per rank)")
    r.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    ev.set_defaults(func=run, load_model=load_model)
    return ev


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


def build_plan(args: argparse.Namespace, bundled: bool) -> Any:
    from caap_lens.evaluation.plan import MethodSpec, Plan

    data: dict[str, Any] = {}
    if args.plan:
        base = Plan.from_toml(args.plan)
        data = base.to_dict()
        data["methods"] = [{"name": m["name"], "method": m["method"], "options": m["options"]} for m in data["methods"]]
    else:
        data["methods"] = [{"name": m} for m in default_methods()]
        data["score"] = "sigmoid" if bundled else "prob"
    if args.methods is not None:
        data["methods"] = [{"name": m} for m in _split(args.methods)]
    for key, value in (("metrics", _split(args.metrics)), ("targets", args.targets), ("split", args.split),
                       ("score", args.score), ("curve_steps", args.curve_steps), ("reference", args.reference),
                       ("chunk", args.chunk), ("batch_size", args.batch_size), ("limit", args.limit)):
        if value is not None:
            data[key] = value
    if args.save_maps:
        data["save_maps"] = True
    plan = Plan.from_dict(data)
    if not args.plan and args.methods is None:  # the default rows: RISE scored like the curves
        plan = Plan.from_dict({**plan.to_dict(), "methods": [
            m.to_dict() if m.name != "rise" else {"name": "rise", "method": "rise", "options": {"score": plan.score}}
            for m in plan.methods]})
    return plan.validate()


def build_source(args: argparse.Namespace, bundled_name: str | None) -> Any:
    from caap_lens.evaluation.sources import HFDatasetSource, ImageFolderSource, bundled_scenes

    spec = args.data or ("bundled" if bundled_name else None)
    if spec is None:
        raise ValueError("--data is required for a model that is not bundled (an image folder or hf:PATH)")
    if spec == "bundled":
        if not bundled_name:
            raise ValueError("--data bundled needs a bundled --model")
        return bundled_scenes(bundled_name)
    if spec.startswith("hf:"):
        return HFDatasetSource(spec[3:], split=args.hf_split, image_column=args.image_column,
                               label_column=args.label_column or None)
    if not Path(spec).is_dir():
        raise FileNotFoundError(f"--data {spec}: no such folder")
    return ImageFolderSource(spec, masks=args.masks, labels=args.labels)


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """The ``evaluate`` subcommand; returns the exit status."""
    from caap_lens.evaluation.plan import PlanError
    from caap_lens.evaluation.store import StoreError

    try:
        return _run(args)
    except (PlanError, StoreError) as err:
        raise ValueError(str(err)) from err


def _write(results: Any, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(results.to_markdown())
    results.to_html(out / "results.html")
    results.to_json(out / "results.json")


def _run(args: argparse.Namespace) -> int:
    store = Path(args.store)
    if args.merge:
        from caap_lens.evaluation.tables import merge

        if not (store / "manifest.json").exists():
            raise FileNotFoundError(f"{store} is not a results store (no manifest.json)")
        results = merge(store)
        out = Path(args.out) if args.out else store
        _write(results, out)
        m = results.meta
        print(f"merged {m['parts']} part(s): {m['units']} units from {m['items_done']} of {m['items_expected']} "
              f"items -> {out / 'results.md'}, results.html, results.json")
        return 0
    if args.plan and not Path(args.plan).is_file():
        raise FileNotFoundError(f"plan file {args.plan} does not exist")
    if args.data and not args.data.startswith("hf:") and args.data != "bundled" and not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data}: no such folder")
    from caap_lens.converters.bundled import list_bundled

    bundled = args.model in list_bundled()
    plan = build_plan(args, bundled)  # bad plans fail before the model loads
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from caap_lens.evaluation.distributed import Distributed
    from caap_lens.evaluation.execution import evaluate

    model, desc, bundled_name = args.load_model(args)  # the main CLI's model loading (cli.load_model)
    dist = Distributed.setup(device=args.device)
    device = dist.device(args.device)
    if device is not None:
        model = model.to(device)
    source = build_source(args, bundled_name)
    try:
        summary = evaluate(model, source, plan, store, resume=not args.no_resume, progress=not args.no_progress)
    finally:
        dist.close()
    if summary.results is not None:
        out = Path(args.out) if args.out else store
        if args.out:
            _write(summary.results, out)
        print(f"{desc}: {summary.results.meta['units']} units -> {out / 'results.md'}, results.html, results.json")
    return 0
