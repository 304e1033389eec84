"""`protloc expert ...` (the human-expert comparison) and `protloc finetune-multiclass RUN_DIR`.

A study is a folder (STUDY/study.json, answers.db, predictions.json, views/, report/); see
protloc.expert.study. Every STUDY argument takes the folder or its study.json.
"""

from __future__ import annotations

import sys


def register(subparsers) -> None:
    finetune = subparsers.add_parser(
        "finetune-multiclass",
        help="fine-tune a trained model's last layer for single-label samples (softmax)",
        description="Keep the multi-task network, retrain its last layer as a softmax classifier on the "
        "single-label training samples (paper section 3.2). Writes RUN_DIR/multiclass/model.pt.",
    )
    finetune.add_argument("run_dir", metavar="RUN_DIR", help="a training run folder (or a model file)")
    finetune.add_argument("--data", help="the data set (default: the one the run was trained on)")
    finetune.add_argument("--out", help="model file to write (default RUN_DIR/multiclass/model.pt)")
    finetune.add_argument("--whole-image", action="store_true",
                          help="features of the whole image in one pass instead of averaged over covering patches")
    finetune.add_argument("--steps", type=int, default=300, help="full-batch optimisation steps (default 300)")
    finetune.add_argument("--lr", type=float, default=0.05, help="Adam learning rate (default 0.05)")
    finetune.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty (default 1e-4)")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.set_defaults(handler=run_finetune)

    parser = subparsers.add_parser(
        "expert",
        help="human-expert comparison: select samples, serve annotation pages, report statistics",
        description="Run the paper's human-expert comparison with your own experts: "
        "select -> finetune-multiclass -> predict -> serve/export/import -> report.",
    )
    commands = parser.add_subparsers(dest="expert_command", metavar="STEP")
    parser.set_defaults(handler=lambda args: (parser.print_help(), 2)[1])

    select = commands.add_parser("select", help="draw the study samples from the test split's single-label samples")
    select.add_argument("--data", required=True, help="data set folder (or its index.json)")
    select.add_argument("--n", type=int, default=200, help="number of samples (default 200, as the paper)")
    select.add_argument("--seed", type=int, default=0, help="seed of the draw")
    select.add_argument("--split-seed", type=int,
                        help="make the splits with this seed instead of using the data set's saved splits.json")
    select.add_argument("--splits", metavar="SPLITS.json",
                        help="splits file to draw the test split from, e.g. RUN_DIR/splits.json of the model's training run "
                        "(default: the data set's .protloc/splits.json)")
    select.add_argument("--out", required=True, metavar="STUDY", help="study folder to create (or STUDY/study.json)")
    select.set_defaults(handler=run_select)

    predict = commands.add_parser("predict", help="the model's answer (argmax) for every study sample")
    predict.add_argument("study", metavar="STUDY")
    predict.add_argument("--model", required=True, metavar="RUN_DIR|FILE",
                         help="a run folder (its multiclass/model.pt is used when present) or a model file")
    predict.add_argument("--whole-image", action="store_true", help="whole-image features instead of covering patches")
    predict.set_defaults(handler=run_predict)

    export = commands.add_parser("export", help="write the four expert views of every sample as PNG files")
    export.add_argument("study", metavar="STUDY")
    export.add_argument("--out", required=True, metavar="DIR")
    export.set_defaults(handler=run_export)

    serve = commands.add_parser("serve", help="annotation pages for the experts (web server)")
    serve.add_argument("study", metavar="STUDY")
    serve.add_argument("--db", help="SQLAlchemy URL of the answer database (default sqlite:///STUDY/answers.db)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8010)
    serve.set_defaults(handler=run_serve)

    importer = commands.add_parser("import", help="import answers from a CSV with columns id,expert,label")
    importer.add_argument("study", metavar="STUDY")
    importer.add_argument("csv", metavar="ANSWERS.csv")
    importer.add_argument("--db", help="SQLAlchemy URL of the answer database (default sqlite:///STUDY/answers.db)")
    importer.set_defaults(handler=run_import)

    report = commands.add_parser("report", help="accuracy/F1 (Table 3), McNemar (Table 4), confusion matrices, kappa")
    report.add_argument("study", metavar="STUDY")
    report.add_argument("--db", help="SQLAlchemy URL of the answer database (default sqlite:///STUDY/answers.db)")
    report.add_argument("--out", metavar="DIR", help="report folder (default STUDY/report)")
    report.set_defaults(handler=run_report)


def run_finetune(args) -> int:
    from protloc.expert.finetune import finetune_multiclass

    result = finetune_multiclass(args.run_dir, args.data, whole_image=args.whole_image, steps=args.steps, lr=args.lr,
                                 weight_decay=args.weight_decay, seed=args.seed, out=args.out)
    val = f", validation accuracy {result.val_accuracy:.3f} on {result.val_samples}" if result.val_accuracy is not None else ""
    print(f"fine-tuned on {result.train_samples} single-label samples (training accuracy {result.train_accuracy:.3f}"
          f"{val}) in {result.seconds:.1f} s -> {result.path}")
    return 0


def run_select(args) -> int:
    from protloc.expert.study import select_study

    study = select_study(args.data, args.out, n=args.n, seed=args.seed, split_seed=args.split_seed,
                         splits_file=args.splits)
    per_class = ", ".join(f"{name} {count}" for name, count in study.extra["per_class"].items())
    short = "" if len(study.samples) == args.n else f" (only {len(study.samples)} single-label test samples exist)"
    print(f"study {study.study_id}: {len(study.samples)} samples{short} -> {study.path}")
    print(f"per class: {per_class}")
    return 0


def run_predict(args) -> int:
    from protloc.expert.finetune import predict_study
    from protloc.expert.study import load_study

    study = load_study(args.study)
    record = predict_study(study, args.model, whole_image=args.whole_image)
    if record["task"] != "multiclass":
        print("warning: the model is not fine-tuned for single labels (run protloc finetune-multiclass); "
              "using the argmax of its multi-task outputs", file=sys.stderr)
    if record["training_overlap"]:
        print(f"warning: {len(record['training_overlap'])} study sample(s) were in the fine-tuning's training split "
              f"(e.g. {record['training_overlap'][0]}); the study and the model use different splits", file=sys.stderr)
    if record["training_overlap_unchecked"]:
        print(f"warning: could not check that the study's samples were not used to train the model: "
              f"{record['training_overlap_unchecked']}", file=sys.stderr)
    truth = study.truth()
    correct = sum(study.label_set.index(p["label"]) == truth[s] for s, p in record["predictions"].items())
    print(f"predicted {len(record['predictions'])} samples (accuracy {correct / len(truth):.3f}) -> {study.predictions_path}")
    return 0


def run_export(args) -> int:
    from protloc.expert.render import export_study
    from protloc.expert.study import load_study

    count = export_study(load_study(args.study), args.out)
    print(f"wrote 4 views of {count} samples to {args.out} (samples.csv, answers-template.csv for offline labels)")
    return 0


def run_serve(args) -> int:
    from protloc.expert.study import load_study
    from protloc.expert.web import serve

    serve(load_study(args.study), args.db, args.host, args.port)
    return 0


def run_import(args) -> int:
    from protloc.expert.db import AnswerStore, import_answers_csv
    from protloc.expert.study import load_study

    study = load_study(args.study)
    store = AnswerStore(args.db or study.default_db_url, study.study_id)
    try:
        counts = import_answers_csv(study, store, args.csv)
    finally:
        store.close()
    print("imported " + ", ".join(f"{n} answers of {name}" for name, n in sorted(counts.items())))
    return 0


def run_report(args) -> int:
    from pathlib import Path

    from protloc.expert.report import build_report
    from protloc.expert.study import load_study

    study = load_study(args.study)
    result = build_report(study, args.db, Path(args.out) if args.out else None)
    print(result["markdown"])
    print(f"report: {Path(result['folder']) / 'report.md'} (+ report.json, confusion-*.png)")
    return 0
